"""Replacing files outside the install root in place, with durable backups and rollback."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.packages import make_package
from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.core.manifest import Manifest
from updater_fsm.ops.external_files import (
    INDEX_NAME,
    apply_external,
    drop_backups,
    restore_external,
)
from updater_fsm.package.destinations import external_modules
from updater_fsm.package.manifest import read_package

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def extra(tmp_path: Path) -> Path:
    """An extra root with an existing config file and a symlink."""
    root = tmp_path / "etc-tope"
    root.mkdir()
    (root / "app.conf").write_bytes(b"old conf\n")
    (root / "app.conf").chmod(0o640)
    (root / "link").symlink_to("app.conf")
    return root


def _package(
    tmp_path: Path, extra: Path, overrides: dict[str, dict[str, object]] | None = None
) -> tuple[Path, Manifest]:
    files: dict[str, bytes | tuple[bytes, int]] = {
        f"{extra}/app.conf": b"new conf\n",
        f"{extra}/link": (b"was a link\n", 0o755),
        f"{extra}/new/dir/fresh": b"fresh\n",
    }
    pkg = make_package(
        tmp_path / "p.zip", "1.1.0", files, root=tmp_path / "root", module_overrides=overrides
    )
    manifest = read_package(
        pkg, expected_version="1.1.0", root=tmp_path / "root", extra_roots=[extra]
    )
    return pkg, manifest


def _state(extra: Path) -> list[tuple[str, str, int]]:
    out = []
    for p in sorted(extra.rglob("*")):
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            out.append((str(p), "->" + os.readlink(p), 0))
        elif stat.S_ISREG(st.st_mode):
            out.append((str(p), p.read_text(), stat.S_IMODE(st.st_mode)))
        else:
            out.append((str(p), "dir", stat.S_IMODE(st.st_mode)))
    return out


def test_apply_then_restore(tmp_path: Path, extra: Path) -> None:
    pkg, manifest = _package(tmp_path, extra)
    before = _state(extra)
    backups = tmp_path / "backups"
    modules = external_modules(manifest, tmp_path / "root")
    written = apply_external(modules, pkg, backups, extra_roots=[extra])
    assert len(written) == 3
    assert (extra / "app.conf").read_bytes() == b"new conf\n"
    assert not (extra / "link").is_symlink()
    assert stat.S_IMODE(os.lstat(extra / "link").st_mode) == 0o755
    assert (extra / "new/dir/fresh").read_bytes() == b"fresh\n"
    assert (backups / INDEX_NAME).exists()

    assert len(restore_external(backups)) == 3
    assert _state(extra) == before
    restore_external(backups)  # idempotent
    assert _state(extra) == before
    drop_backups(backups)
    drop_backups(backups)
    assert not backups.exists()


def test_apply_then_drop_keeps_new_files(tmp_path: Path, extra: Path) -> None:
    pkg, manifest = _package(tmp_path, extra)
    backups = tmp_path / "backups"
    apply_external(external_modules(manifest, tmp_path / "root"), pkg, backups)
    drop_backups(backups)
    assert restore_external(backups) == []
    assert (extra / "app.conf").read_bytes() == b"new conf\n"


def test_failure_midway_is_fully_restorable(tmp_path: Path, extra: Path) -> None:
    pkg, manifest = _package(tmp_path, extra, {f"{extra}/link": {"md5": "0" * 32}})
    before = _state(extra)
    backups = tmp_path / "backups"
    with pytest.raises(UpdaterError, match="md5 mismatch") as info:
        apply_external(external_modules(manifest, tmp_path / "root"), pkg, backups)
    assert info.value.code == ErrorCode.INVALID_MANIFEST
    assert (extra / "app.conf").read_bytes() == b"new conf\n"  # first one went through
    restore_external(backups)
    assert _state(extra) == before


def test_crash_after_first_replace_resumes_without_retaking_backups(
    tmp_path: Path, extra: Path
) -> None:
    pkg, _ = _package(tmp_path, extra)
    before = _state(extra)
    backups = tmp_path / "backups"
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from updater_fsm.ops.external_files import apply_external
        from updater_fsm.package.destinations import external_modules
        from updater_fsm.package.manifest import read_package
        root = Path({str(tmp_path / "root")!r})
        m = read_package(Path({str(pkg)!r}), expected_version="1.1.0", root=root,
                         extra_roots=[Path({str(extra)!r})])
        apply_external(external_modules(m, root), Path({str(pkg)!r}), Path({str(backups)!r}))
        """
    )
    env = {
        **os.environ,
        "TOPE_UPDATER_CRASH_AT": "external:after_replace",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run([sys.executable, "-c", script], env=env, check=False, timeout=60)
    assert proc.returncode == -9
    assert (extra / "app.conf").read_bytes() == b"new conf\n"
    # the resumed run must not back up the already-replaced file
    manifest = read_package(
        pkg, expected_version="1.1.0", root=tmp_path / "root", extra_roots=[extra]
    )
    apply_external(external_modules(manifest, tmp_path / "root"), pkg, backups)
    restore_external(backups)
    assert _state(extra) == before


def test_crash_before_index_means_nothing_to_restore(tmp_path: Path, extra: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    (backups / "0.bak").write_bytes(b"partial")  # backups taken, index never written
    assert restore_external(backups) == []
    assert (extra / "app.conf").read_bytes() == b"old conf\n"


def test_stale_backups_of_another_install_are_refused(tmp_path: Path, extra: Path) -> None:
    pkg, manifest = _package(tmp_path, extra)
    backups = tmp_path / "backups"
    modules = external_modules(manifest, tmp_path / "root")
    apply_external(modules[:1], pkg, backups)
    with pytest.raises(UpdaterError, match="holds backups of another install"):
        apply_external(modules, pkg, backups)


def test_symlinked_dir_escaping_extra_root_is_refused(tmp_path: Path, extra: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (extra / "sub").symlink_to(elsewhere)
    pkg = make_package(
        tmp_path / "p.zip", "1.1.0", {f"{extra}/sub/x": b"x"}, root=tmp_path / "root"
    )
    manifest = read_package(
        pkg, expected_version="1.1.0", root=tmp_path / "root", extra_roots=[extra]
    )
    with pytest.raises(UpdaterError, match="outside the extra roots"):
        apply_external(manifest.modules, pkg, tmp_path / "b", extra_roots=[extra])
    assert list(elsewhere.iterdir()) == []


def test_dst_that_is_a_directory_is_refused(tmp_path: Path, extra: Path) -> None:
    (extra / "adir").mkdir()
    pkg = make_package(tmp_path / "p.zip", "1.1.0", {f"{extra}/adir": b"x"}, root=tmp_path / "r")
    manifest = read_package(pkg, expected_version="1.1.0", root=tmp_path / "r", extra_roots=[extra])
    with pytest.raises(UpdaterError, match="is not a file or symlink"):
        apply_external(manifest.modules, pkg, tmp_path / "b")
    assert (extra / "adir").is_dir()
