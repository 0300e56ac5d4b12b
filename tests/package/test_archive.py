"""Hostile ZIP structure judged from the end records, before ``zipfile`` parses anything.

Real archives written byte by byte (:mod:`tests.support.raw_zip`): a million entries, end
records that lie about the count or the directory's size, ZIP64 end records. The memory a
refusal costs is measured in a fresh interpreter (``ru_maxrss`` of that process).
"""

from __future__ import annotations

import json
import struct
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.fresh_interpreter import run_measured
from tests.support.packages import make_manifest, make_package
from tests.support.raw_zip import write_raw_zip
from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.ops.external_files import apply_external
from updater_fsm.package.archive import open_package
from updater_fsm.package.destinations import external_modules
from updater_fsm.package.extraction import extract_module
from updater_fsm.package.limits import PackageLimits
from updater_fsm.package.manifest import read_package

REPO = Path(__file__).resolve().parents[2]
ROOT = Path("/opt/tope")
MILLION = 1_000_000
#: A refusal may cost this much memory beyond the interpreter and the imports.
REFUSAL_BUDGET_KB = 8 * 1024


def _manifest(version: str = "1.1.0") -> bytes:
    return json.dumps(make_manifest(version, {})).encode()


@pytest.fixture(scope="session")
def million_entry_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """manifest.json + 999 999 empty entries (86 MB), written once per session (~1 s)."""
    path = tmp_path_factory.mktemp("hostile") / "million.zip"
    started = time.perf_counter()
    write_raw_zip(path, MILLION - 1, manifest=_manifest())
    print(
        f"million-entry zip: {path.stat().st_size} bytes in {time.perf_counter() - started:.2f} s"
    )
    return path


def _judge_in_fresh_process(package: Path) -> dict[str, Any]:
    """``read_package`` in a new interpreter; returns its error and memory/time figures.

    Memory is that process's ``VmHWM`` before and after the judging
    (see :mod:`tests.support.fresh_interpreter`).
    """
    return run_measured(
        f"""
        import json, sys, time
        from pathlib import Path
        from updater_fsm.core.errors import UpdaterError
        from updater_fsm.package.manifest import read_package

        before = peak_kb()
        started = time.perf_counter()
        try:
            read_package(Path({str(package)!r}), expected_version="1.1.0", root=Path("/opt/tope"))
            error = None
        except UpdaterError as exc:
            error = exc.error
        seconds = time.perf_counter() - started
        json.dump({{"error": error, "seconds": seconds, "before_kb": before,
                   "after_kb": peak_kb()}}, sys.stdout)
        """,
        timeout=60,
    )


def test_million_entries_refused_from_the_end_record_in_little_memory(
    million_entry_zip: Path,
) -> None:
    result = _judge_in_fresh_process(million_entry_zip)
    assert result["error"] == "INVALID_MANIFEST: archive: 1000000 entries, limit is 10000"
    grown_kb = int(str(result["after_kb"])) - int(str(result["before_kb"]))
    assert grown_kb < REFUSAL_BUDGET_KB, result
    assert float(str(result["seconds"])) < 0.5, result


def test_million_entries_refused_by_every_opener(million_entry_zip: Path, tmp_path: Path) -> None:
    """The snapshot stage and the extra-root writer open the ZIP themselves: same refusal."""
    with (
        pytest.raises(UpdaterError, match=r"archive: 1000000 entries, limit is 10000"),
        open_package(million_entry_zip),
    ):
        pass
    # A good package was read; a hostile file stands in its place when the files are written.
    extra = tmp_path / "etc-tope"
    extra.mkdir()
    (extra / "app.conf").write_bytes(b"old\n")
    good = make_package(tmp_path / "good.zip", "1.1.0", {f"{extra}/app.conf": b"new\n"})
    manifest = read_package(good, expected_version="1.1.0", root=ROOT, extra_roots=[extra])
    with pytest.raises(UpdaterError, match="1000000 entries") as info:
        apply_external(
            external_modules(manifest, ROOT),
            million_entry_zip,
            tmp_path / "backups",
            extra_roots=[extra],
        )
    assert info.value.code is ErrorCode.INVALID_MANIFEST
    assert (extra / "app.conf").read_bytes() == b"old\n"
    assert sorted(p.name for p in extra.iterdir()) == ["app.conf"]  # no temp file left


def test_end_record_understating_the_count_is_caught_by_walking_the_records(
    tmp_path: Path,
) -> None:
    lying = write_raw_zip(tmp_path / "lie.zip", 20_000, manifest=_manifest(), declared_entries=3)
    with pytest.raises(UpdaterError) as info:
        read_package(lying, expected_version="1.1.0", root=ROOT)
    assert info.value.code is ErrorCode.INVALID_MANIFEST
    assert info.value.detail == (
        "archive: more than 10000 entries in the central directory"
        " (its end record declares 3), limit is 10000"
    )


def test_end_record_with_a_huge_directory_is_refused_before_reading_it(tmp_path: Path) -> None:
    """Count small, directory 10 MB: ``zipfile`` would parse all 200 001 records."""
    lying = write_raw_zip(tmp_path / "huge.zip", 200_000, manifest=_manifest(), declared_entries=3)
    result = _judge_in_fresh_process(lying)
    assert str(result["error"]).startswith("INVALID_MANIFEST: archive: central directory of 10"), (
        result
    )
    assert "bytes exceeds the limit of 8388608 bytes (3 entries declared)" in str(result["error"])
    grown_kb = int(str(result["after_kb"])) - int(str(result["before_kb"]))
    assert grown_kb < REFUSAL_BUDGET_KB, result


def test_end_record_overstating_the_count_is_refused(tmp_path: Path) -> None:
    lying = write_raw_zip(tmp_path / "more.zip", 2, manifest=_manifest(), declared_entries=9)
    with pytest.raises(UpdaterError, match="end record declares 9 entries, the central directory"):
        read_package(lying, expected_version="1.1.0", root=ROOT)


def test_zip64_end_record_of_a_good_package_is_accepted_and_extracts(tmp_path: Path) -> None:
    manifest = {
        "version": "1.1.0",
        "modules": [{"name": "first", "src": "e/0", "dst": "/opt/tope/bin/first", "size": 0}],
    }
    package = write_raw_zip(
        tmp_path / "z64.zip", 2, manifest=json.dumps(manifest).encode(), zip64=True
    )
    with zipfile.ZipFile(package) as zf:  # the reference reader agrees it is a fine ZIP
        assert zf.testzip() is None
    parsed = read_package(package, expected_version="1.1.0", root=ROOT)
    with open_package(package) as zf:
        assert extract_module(zf, parsed.modules[0], tmp_path / "first") == 0


def test_zip64_end_record_count_is_judged(tmp_path: Path) -> None:
    package = write_raw_zip(tmp_path / "z64.zip", 30, manifest=_manifest(), zip64=True)
    with pytest.raises(UpdaterError, match=r"^INVALID_MANIFEST: archive: 31 entries, limit is 20$"):
        read_package(
            package, expected_version="1.1.0", root=ROOT, limits=PackageLimits(max_entries=20)
        )


def test_zip64_locator_pointing_elsewhere_is_refused(tmp_path: Path) -> None:
    package = write_raw_zip(
        tmp_path / "z64.zip", 2, manifest=_manifest(), zip64=True, zip64_record_offset=0
    )
    with pytest.raises(UpdaterError, match="ZIP64 end record is not where its locator points"):
        read_package(package, expected_version="1.1.0", root=ROOT)


def test_data_prepended_to_the_archive_is_refused(tmp_path: Path) -> None:
    plain = write_raw_zip(tmp_path / "plain.zip", 1, manifest=_manifest())
    prepended = tmp_path / "sfx.zip"
    prepended.write_bytes(b"#!/bin/sh\nexit 0\n" + plain.read_bytes())
    with pytest.raises(UpdaterError, match="data prepended to the archive"):
        read_package(prepended, expected_version="1.1.0", root=ROOT)


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (b"", "no end of central directory"),
        (b"PK\x05\x06", "no end of central directory"),
        # one entry in a 1000-byte directory that would start before the file does
        (b"x" * 100 + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, 1000, 0, 0), "not fit"),
        (b"x" * 100 + b"PK\x05\x06" + b"\xff" * 18, "spanning several disks"),
    ],
)
def test_truncated_or_garbage_end_records(tmp_path: Path, content: bytes, expect: str) -> None:
    path = tmp_path / "bad.zip"
    path.write_bytes(content)
    with pytest.raises(UpdaterError, match=expect) as info:
        read_package(path, expected_version="1.1.0", root=ROOT)
    assert info.value.code is ErrorCode.INVALID_MANIFEST


def test_archive_comment_is_fine(tmp_path: Path) -> None:
    """With a comment the end record is not the last 22 bytes; it is found as zipfile does."""
    package = make_package(tmp_path / "p.zip", "1.1.0", {"bin/a": b"a"})
    with zipfile.ZipFile(package, "a") as zf:
        zf.comment = b"built by CI run 42; PK\x01\x02 in a comment is only text"
    assert read_package(package, expected_version="1.1.0", root=ROOT).modules[0].name == "bin/a"
