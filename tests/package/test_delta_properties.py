"""Deltas between random pairs of trees: the builder never fails, the device gets the new tree.

Random file names in a few nested directories (names shared between directories, so moved
files meet the rename search), random contents: empty, shorter than zstd's smallest
dictionary (``delta.MIN_PREFIX_BYTES``), text, incompressible blobs shared between files,
edits that grow or shrink a file, mode changes, files kept, removed and added. Each delta is
built with the builder's function and applied as the device does
(:func:`~updater_fsm.ops.snapshot_staging.stage_snapshot` on a real layout whose running
snapshot is the old tree); once, with tiny and empty files, through the real command line.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.package.test_delta import REPO, _blob
from updater_fsm.core.manifest import DeltaKind
from updater_fsm.ops.snapshot_staging import stage_snapshot
from updater_fsm.ops.snapshot_store import Layout, init_layout
from updater_fsm.package import delta
from updater_fsm.package.builder import build_package
from updater_fsm.package.manifest import read_package

#: root-relative path -> (content, mode)
Tree = dict[str, tuple[bytes, int]]

_DIRS = ("", "etc/", "lib/", "lib/app/", "lib/app-1.0.dist-info/")
_NAMES = st.builds(
    lambda d, n: d + n,
    st.sampled_from(_DIRS),
    st.one_of(
        st.sampled_from(["VERSION", "RECORD", "A.py", "C.so", "empty"]),
        st.text("ABCDEF0123", min_size=1, max_size=3),
    ),
)
_CONTENT = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=delta.MIN_PREFIX_BYTES + 1),  # around zstd's minimum
    st.binary(max_size=64),
    st.builds(
        lambda n: b"".join(b"value_%d = %d\n" % (i, i * n) for i in range(n)), st.integers(1, 200)
    ),
    st.builds(_blob, st.integers(0, 5), st.integers(0, 4000)),  # shared between files by seed
)
_MODES = st.sampled_from([0o644, 0o755])


@st.composite
def _tree_pairs(draw: st.DrawFn) -> tuple[Tree, Tree]:
    old: Tree = draw(st.dictionaries(_NAMES, st.tuples(_CONTENT, _MODES), min_size=1, max_size=8))
    new: Tree = {}
    for rel, (data, mode) in old.items():
        change = draw(st.sampled_from(["same", "removed", "edited", "replaced", "mode"]))
        if change == "same":
            new[rel] = (data, mode)
        elif change == "edited":  # a few bytes replaced, inserted or cut: the size may change
            i = draw(st.integers(0, len(data)))
            j = draw(st.integers(i, len(data)))
            new[rel] = (data[:i] + draw(st.binary(max_size=16)) + data[j:], mode)
        elif change == "replaced":
            new[rel] = (draw(_CONTENT), mode)
        elif change == "mode":
            new[rel] = (data, 0o644 if mode == 0o755 else 0o755)
    added = draw(st.dictionaries(_NAMES, st.tuples(_CONTENT, _MODES), max_size=4))
    new.update({rel: entry for rel, entry in added.items() if rel not in old})
    if not new:
        new["VERSION"] = (b"1.1.0\n", 0o644)  # a package holds at least one file
    return old, new


def _write(tree: Path, files: Tree) -> Path:
    for rel, (data, mode) in files.items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    tree.mkdir(parents=True, exist_ok=True)
    return tree


def _files(snapshot: Path) -> Tree:
    return {
        p.relative_to(snapshot).as_posix(): (p.read_bytes(), stat.S_IMODE(os.lstat(p).st_mode))
        for p in snapshot.rglob("*")
        if p.is_file()
    }


def _staged(root: Path, pkg: Path) -> Tree:
    """What the device's next snapshot holds after staging ``pkg`` (a delta to 1.1.0)."""
    layout = Layout(root)
    manifest = read_package(pkg, expected_version="1.1.0", root=root)
    return _files(stage_snapshot(layout, manifest, pkg))


def _check_manifest(pkg: Path, root: Path, old: Tree, new: Tree) -> None:
    manifest = read_package(pkg, expected_version="1.1.0", root=root)
    assert sorted(m.name for m in manifest.modules) == sorted(new)
    assert sorted(manifest.removed) == sorted(f"{root}/{rel}" for rel in old if rel not in new)
    with zipfile.ZipFile(pkg) as zf:
        for module in manifest.modules:
            kept = old.get(module.name) == new[module.name]
            assert (module.kind is DeltaKind.KEPT) == kept, module.name
            if module.kind is DeltaKind.PATCHED:
                base = module.base or f"{root}/{module.name}"
                assert len(old[base.removeprefix(f"{root}/")][0]) >= delta.MIN_PREFIX_BYTES
                assert module.src is not None and module.size is not None
                assert zf.getinfo(module.src).file_size < module.size, module.name


@settings(max_examples=60)
@given(pair=_tree_pairs(), from_package=st.booleans())
def test_any_delta_builds_and_stages_the_new_tree(
    pair: tuple[Tree, Tree], from_package: bool
) -> None:
    old, new = pair
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        v1, v2 = _write(work / "v1", old), _write(work / "v2", new)
        root = work / "root"
        init_layout(root, "1.0.0", from_dir=v1)
        out = work / "delta.zip"
        if from_package:
            base = build_package(v1, version="1.0.0", output=work / "base.zip", root=root)
            build_package(v2, version="1.1.0", output=out, root=root, delta_from=base.path)
        else:
            build_package(
                v2, version="1.1.0", output=out, root=root, delta_from=v1, base_version="1.0.0"
            )
        _check_manifest(out, root, old, new)
        assert _staged(root, out) == new


def test_the_command_line_builds_a_delta_of_tiny_and_empty_files(tmp_path: Path) -> None:
    """The reported crash, through ``tope-updater package build --delta-from``."""
    old: Tree = {
        "VERSION": (b"1.0.0\n", 0o644),
        "etc/emptied": (b"something\n", 0o644),
        "etc/filled": (b"", 0o644),
        "bin/run": (b"#!/bin/sh\n", 0o755),
    }
    new: Tree = {
        "VERSION": (b"1.1.0\n", 0o644),
        "etc/emptied": (b"", 0o644),
        "etc/filled": (b"x\n", 0o644),
        "etc/appeared": (b"", 0o644),
        "bin/run": (b"#!/bin/sh\nexit 0\n", 0o755),
    }
    v1, v2 = _write(tmp_path / "v1", old), _write(tmp_path / "v2", new)
    root = tmp_path / "root"
    init_layout(root, "1.0.0", from_dir=v1)
    base, out = tmp_path / "base.zip", tmp_path / "delta.zip"
    cli = [sys.executable, "-m", "http_shell.cli", "package", "build"]
    full = subprocess.run(
        [*cli, str(v1), "--version", "1.0.0", "--root", str(root), "-o", str(base)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert full.returncode == 0, full.stderr
    built = subprocess.run(
        [*cli, str(v2), "--version", "1.1.0", "--root", str(root), "--delta-from", str(base),
         "-o", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert "base_version: 1.0.0" in built.stdout
    manifest = read_package(out, expected_version="1.1.0", root=root)
    kinds = {m.name: m.kind for m in manifest.modules}
    assert kinds == dict.fromkeys(new, DeltaKind.ADDED)
    assert _staged(root, out) == new
