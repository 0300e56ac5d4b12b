"""The updater's slots (updater_fsm/ops/self_update.py) on real directories: a bundle is
checked before anything is installed (each bad one refused with a stable code and a
message naming the problem), slots are collected, the guard's files read and written."""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from updater_fsm import journal
from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.ops import self_update
from updater_fsm.ops.self_update import SLOT_MARK, Slots

MACHINE = platform.machine()
WHEEL = b"not really a wheel"


def make_bundle(
    path: Path,
    *,
    manifest: dict[str, Any] | None = None,
    extra: list[tarfile.TarInfo] | None = None,
    wheel: bytes = WHEEL,
) -> Path:
    top = "tope-updater-0.2.0-x"
    meta: dict[str, Any] = {
        "name": "tope-updater",
        "version": "0.2.0",
        "arch": MACHINE,
        "python": self_update.python_tag(),
        "journal_schema": journal.SCHEMA_VERSION,
        "missing": [],
        "wheels": [{"file": "w.whl", "sha256": hashlib.sha256(WHEEL).hexdigest()}],
    }
    meta |= manifest or {}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in ((f"{top}/manifest.json", json.dumps(meta).encode()),
                           (f"{top}/wheels/w.whl", wheel)):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def refused(tmp_path: Path, bundle: Path) -> UpdaterError:
    slots = Slots(tmp_path / "prefix")
    with pytest.raises(UpdaterError) as err:
        self_update.build_slot(slots, bundle, "0.2.0", tmp_path / "work")
    assert not slots.slot("0.2.0").exists()  # refused before anything was installed
    return err.value


def entry(name: str, kind: bytes = tarfile.REGTYPE, size: int = 1) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    return info


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"version": "0.9.0"}, ErrorCode.UPDATER_INSTALL_FAILED,
         "the bundle is tope-updater 0.9.0, the package says 0.2.0"),
        ({"name": "other"}, ErrorCode.UPDATER_INSTALL_FAILED, "the bundle is other 0.2.0"),
        ({"arch": "sparc"}, ErrorCode.UPDATER_ARCH_MISMATCH,
         f"the bundle is for sparc, this device is {MACHINE}"),
        ({"python": "cp39"}, ErrorCode.UPDATER_INSTALL_FAILED,
         "the bundle's wheels are for cp39"),
        ({"journal_schema": journal.SCHEMA_VERSION + 1}, ErrorCode.UPDATER_INSTALL_FAILED,
         f"writes journal schema {journal.SCHEMA_VERSION + 1}, this one reads up to"),
        ({"journal_schema": None}, ErrorCode.UPDATER_INSTALL_FAILED, "journal schema None"),
        ({"missing": [{"name": "cffi"}]}, ErrorCode.UPDATER_INSTALL_FAILED, "lacks wheels"),
        ({"built": [{"name": "cffi", "version": "2.1.1", "needs": ["libtope-absent.so.9"]}]},
         ErrorCode.UPDATER_INSTALL_FAILED,
         "cffi 2.1.1 (built from source) needs libtope-absent.so.9, which this device lacks"),
        ({"built": [{"name": "cffi", "version": "2.1.1", "glibc": "99.0"}]},
         ErrorCode.UPDATER_INSTALL_FAILED, "cffi 2.1.1 (built from source) needs glibc >= 99.0"),
        ({"built": "cffi"}, ErrorCode.UPDATER_INSTALL_FAILED, "built must be a list"),
        ({"built": [{"name": "x", "version": "1", "needs": ["/tmp/evil.so"]}]},
         ErrorCode.UPDATER_INSTALL_FAILED, "'/tmp/evil.so' is not a library's soname"),
        ({"wheels": [{"file": "w.whl", "sha256": "0" * 64}]}, ErrorCode.UPDATER_INSTALL_FAILED,
         "w.whl: SHA-256 does not match"),
        ({"wheels": [{"file": "../w.whl", "sha256": "0" * 64}]},
         ErrorCode.UPDATER_INSTALL_FAILED, "no wheel '../w.whl'"),
        ({"wheels": None}, ErrorCode.UPDATER_INSTALL_FAILED, "manifest.json is unusable"),
    ],
)  # fmt: skip
def test_a_bad_bundle_manifest_is_refused(
    tmp_path: Path, change: dict[str, Any], code: ErrorCode, message: str
) -> None:
    err = refused(tmp_path, make_bundle(tmp_path / "b.tar.gz", manifest=change))
    assert err.code is code and message in err.detail, err.detail


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([entry("../evil")], "unsafe entry '../evil'"),
        ([entry("/abs")], "unsafe entry '/abs'"),
        ([entry("tope-updater-0.2.0-x/link", tarfile.SYMTYPE)], "not a file or directory"),
        ([entry("second-top/file")], "exactly one top directory"),
    ],
)
def test_unsafe_or_odd_archives_are_refused(
    tmp_path: Path, extra: list[tarfile.TarInfo], message: str
) -> None:
    err = refused(tmp_path, make_bundle(tmp_path / "b.tar.gz", extra=extra))
    assert err.code is ErrorCode.UPDATER_INSTALL_FAILED and message in err.detail, err.detail
    assert not (tmp_path.parent / "evil").exists() and not Path("/abs").exists()


def test_not_a_tarball_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "b.tar.gz"
    junk.write_bytes(b"junk")
    err = refused(tmp_path, junk)
    assert "cannot unpack the bundle" in err.detail


def test_a_complete_slot_is_kept_and_a_half_built_one_is_built_again(tmp_path: Path) -> None:
    slots = Slots(tmp_path / "prefix")
    done = slots.slot("0.2.0")
    done.mkdir(parents=True)
    (done / SLOT_MARK).write_text("0.2.0\n")
    self_update.build_slot(slots, tmp_path / "absent.tar.gz", "0.2.0", tmp_path / "work")
    assert (done / SLOT_MARK).is_file()  # not rebuilt: the bundle was never opened
    (done / SLOT_MARK).unlink()
    # Half-built (no mark): replaced, so the bad bundle below is what decides.
    with pytest.raises(UpdaterError):
        self_update.build_slot(
            slots, make_bundle(tmp_path / "b.tar.gz", manifest={"arch": "sparc"}), "0.2.0",
            tmp_path / "work",
        )  # fmt: skip


def test_switch_links_probation_and_collection(tmp_path: Path) -> None:
    slots = Slots(tmp_path / "prefix")
    for version in ("0.1.0", "0.2.0", "0.0.9"):
        (slots.slot(version) / "bin").mkdir(parents=True)
    os.symlink("versions/0.1.0", slots.current)
    slots.record.write_text("version=0.0.9\nprevious=0.1.0\nreason=stale\n")
    deadline = time.time() + 60
    self_update.write_probation(slots, "0.2.0", "0.1.0", deadline=deadline, max_starts=3)
    assert slots.probation.read_text() == (
        f"version=0.2.0\nprevious=0.1.0\ndeadline={int(deadline)}\nmax_starts=3\n"
    )
    self_update.switch_current(slots, "0.2.0", "0.1.0")
    assert (os.readlink(slots.current), os.readlink(slots.previous)) == (
        "versions/0.2.0", "versions/0.1.0",
    )  # fmt: skip
    assert slots.link_version(slots.current) == "0.2.0"
    record = self_update.read_rollback_record(slots)
    assert record == self_update.RollbackRecord("0.0.9", "0.1.0", "stale")
    self_update.end_probation(slots)
    assert not slots.probation.exists()
    assert self_update.collect_slots(slots) == ["0.0.9"]
    assert sorted(os.listdir(slots.versions)) == ["0.1.0", "0.2.0"]
    assert self_update.read_rollback_record(slots) is None


def test_find_slots(tmp_path: Path) -> None:
    assert self_update.find_slots(tmp_path) == Slots(tmp_path)
    # The test runner's own venv is not a slot (<prefix>/versions/<version>).
    assert self_update.find_slots(None) is None


# ---- a bundle is judged from its headers before anything is unpacked -------------------
def _nothing_unpacked(tmp_path: Path) -> bool:
    unpacked = tmp_path / "work" / "unpacked"
    return not unpacked.exists() or not any(unpacked.iterdir())


def test_too_many_entries_are_refused_before_unpacking(tmp_path: Path) -> None:
    many = [entry(f"tope-updater-0.2.0-x/f{i}", size=0) for i in range(2001)]
    err = refused(tmp_path, make_bundle(tmp_path / "b.tar.gz", extra=many))
    assert "more than 2000 entries" in err.detail, err.detail
    assert _nothing_unpacked(tmp_path)


def test_a_bundle_larger_than_the_limit_is_refused_before_unpacking(tmp_path: Path) -> None:
    bundle = make_bundle(
        tmp_path / "b.tar.gz", extra=[entry("tope-updater-0.2.0-x/big", size=3_000_000)]
    )
    slots = Slots(tmp_path / "prefix")
    limits = self_update.BundleLimits(max_bytes=2_000_000)
    with pytest.raises(UpdaterError) as err:
        self_update.build_slot(slots, bundle, "0.2.0", tmp_path / "work", limits)
    assert "unpacks to more than 1.9 MiB" in err.value.detail, err.value.detail
    assert _nothing_unpacked(tmp_path) and not slots.slot("0.2.0").exists()


def test_a_bundle_bomb_is_refused_by_its_ratio(tmp_path: Path) -> None:
    """32 MiB of one byte repeated, in a gzip of ~33 KB: 1000 times its size."""
    bomb = [entry("tope-updater-0.2.0-x/xxx", size=32 * 1024**2)]
    err = refused(tmp_path, make_bundle(tmp_path / "b.tar.gz", extra=bomb))
    assert "unpacks to 32.0 MiB from" in err.detail and "more than 50 times" in err.detail
    assert _nothing_unpacked(tmp_path)


def test_a_bundle_larger_than_the_free_space_is_refused_before_unpacking(tmp_path: Path) -> None:
    from tests.ops.test_download import tiny_fs

    with tiny_fs(tmp_path / "small", "1m") as small:
        bundle = make_bundle(
            tmp_path / "b.tar.gz", extra=[entry("tope-updater-0.2.0-x/data", size=2_000_000)]
        )
        slots = Slots(tmp_path / "prefix")
        limits = self_update.BundleLimits(headroom_bytes=0)
        with pytest.raises(UpdaterError) as err:
            self_update.build_slot(slots, bundle, "0.2.0", small / "work", limits)
        assert f"{small / 'work'} has " in err.value.detail and " free" in err.value.detail
        unpacked = small / "work" / "unpacked"
        assert not unpacked.exists() or not any(unpacked.iterdir())
