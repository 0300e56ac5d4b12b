"""Extracting a module's file from real ZIPs: content verified, size bounded, modes, symlinks."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pytest

from tests.support.packages import (
    DEFAULT_ROOT,
    EXTRACT_HOSTILE_CASES,
    Entry,
    make_package,
    write_zip,
)
from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.package.archive import entry_mode, open_package
from updater_fsm.package.extraction import extract_module
from updater_fsm.package.manifest import read_package

ROOT = DEFAULT_ROOT


@pytest.mark.parametrize("case", sorted(EXTRACT_HOSTILE_CASES))
def test_extraction_verifies_content(tmp_path: Path, case: str) -> None:
    spec = EXTRACT_HOSTILE_CASES[case]
    pkg = spec.build(tmp_path / "p.zip", "1.2.3")
    manifest = read_package(pkg, expected_version="1.2.3", root=ROOT)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UpdaterError) as info, open_package(pkg) as zf:
        extract_module(zf, manifest.modules[0], out / "app", label="modules[0] (bin/app)")
    assert info.value.code == ErrorCode.INVALID_MANIFEST
    assert spec.expect in info.value.detail
    assert "modules[0] (bin/app)" in info.value.detail
    assert list(out.iterdir()) == []  # no file, no temp file left behind


def test_declared_size_limits_extraction(tmp_path: Path) -> None:
    """A central directory that understates an entry's size never yields more bytes."""

    def tamper(zf: zipfile.ZipFile) -> None:
        zf.filelist[1].file_size = 4

    manifest = {"version": "1.0.0", "modules": [{"name": "a", "src": "a", "dst": "/opt/tope/a"}]}
    pkg = write_zip(tmp_path / "p.zip", [Entry("a", b"x" * 5000)], manifest=manifest, tamper=tamper)
    parsed = read_package(pkg, expected_version="1.0.0", root=ROOT)
    with pytest.raises(UpdaterError, match="INVALID_MANIFEST"), open_package(pkg) as zf:
        extract_module(zf, parsed.modules[0], tmp_path / "a")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (0o755, 0o755),
        (0o644, 0o644),
        (0o4755, 0o755),
        (0o2777, 0o775),
        (0o000, 0o400),
        (None, 0o644),
    ],
)
def test_extract_modes(tmp_path: Path, stored: int | None, expected: int) -> None:
    manifest = {"version": "1.0.0", "modules": [{"name": "a", "src": "a", "dst": "/opt/tope/a"}]}
    pkg = write_zip(tmp_path / "p.zip", [Entry("a", b"data", stored)], manifest=manifest)
    parsed = read_package(pkg, expected_version="1.0.0", root=ROOT)
    with open_package(pkg) as zf:
        assert entry_mode(zf.getinfo("a")) == expected
        assert extract_module(zf, parsed.modules[0], tmp_path / "out") == 4
    assert stat.S_IMODE(os.lstat(tmp_path / "out").st_mode) == expected
    assert (tmp_path / "out").read_bytes() == b"data"


def test_extract_replaces_symlink_instead_of_following(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "out").symlink_to(victim)
    pkg = make_package(tmp_path / "p.zip", "1.0.0", {"bin/a": b"new"})
    parsed = read_package(pkg, expected_version="1.0.0", root=ROOT)
    with open_package(pkg) as zf:
        extract_module(zf, parsed.modules[0], tmp_path / "out")
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "out").is_symlink()
    assert (tmp_path / "out").read_bytes() == b"new"
