"""Delta packages: the builder, the reader and staging from the running snapshot + patches.

Real trees, real ZIPs, real zstd (pyzstd), real snapshot stores under tmp_path.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest
import pyzstd

from tests.ops.test_snapshots import tree_digest
from tests.support.fresh_interpreter import run_measured
from tests.support.packages import Entry, write_zip
from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.core.manifest import DeltaKind
from updater_fsm.ops.snapshot_staging import stage_snapshot
from updater_fsm.ops.snapshot_store import Layout, init_layout, read_links
from updater_fsm.package import delta
from updater_fsm.package.builder import BuildError, build_package
from updater_fsm.package.limits import PackageLimits
from updater_fsm.package.manifest import read_package

REPO = Path(__file__).resolve().parents[2]


def _blob(seed: int, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def _write(tree: Path, files: dict[str, bytes], exe: tuple[str, ...] = ()) -> Path:
    for rel, data in files.items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755 if rel in exe else 0o644)
    return tree


LIB_V1 = _blob(1, 200_000)
LIB_V2 = LIB_V1[:50_000] + b"a small change" + LIB_V1[50_100:]
V1 = {
    "bin/app": b"#!/bin/sh\necho 1.1.0\n",
    "lib/core.so": LIB_V1,
    "lib/same.py": b"print('unchanged')\n" * 50,
    "lib/gone.py": b"removed in 1.2.0\n",
}
V2 = {
    "bin/app": b"#!/bin/sh\necho 1.2.0\n",
    "lib/core.so": LIB_V2,
    "lib/same.py": V1["lib/same.py"],
    "lib/new.py": _blob(2, 3000),
}


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(root, v1 tree, v2 tree); root's store has v1.1.0 as factory and current."""
    v1 = _write(tmp_path / "v1", V1, exe=("bin/app",))
    v2 = _write(tmp_path / "v2", V2, exe=("bin/app",))
    root = tmp_path / "root"
    init_layout(root, "1.1.0", from_dir=v1)
    return root, v1, v2


def _kinds(pkg: Path, root: Path) -> dict[str, DeltaKind]:
    manifest = read_package(pkg, expected_version="1.2.0", root=root)
    return {m.name: m.kind for m in manifest.modules}


def test_builder_classifies_kept_patched_added_removed(
    tmp_path: Path, trees: tuple[Path, Path, Path]
) -> None:
    root, v1, v2 = trees
    out = tmp_path / "delta.zip"
    result = build_package(
        v2, version="1.2.0", output=out, root=root, delta_from=v1, base_version="1.1.0"
    )
    manifest = result.manifest
    assert manifest.base_version == "1.1.0"
    assert manifest.removed == (f"{root}/lib/gone.py",)
    assert _kinds(out, root) == {
        "bin/app": DeltaKind.ADDED,  # its 24-byte patch is not smaller than the 21 bytes
        "lib/core.so": DeltaKind.PATCHED,
        "lib/new.py": DeltaKind.ADDED,
        "lib/same.py": DeltaKind.KEPT,
    }
    core = next(m for m in manifest.modules if m.name == "lib/core.so")
    assert core.base_sha256 == hashlib.sha256(LIB_V1).hexdigest()
    assert core.sha256 == hashlib.sha256(LIB_V2).hexdigest()
    assert core.size == len(LIB_V2)
    assert core.md5 is None and core.base is None  # sha256 is the result's check
    same = next(m for m in manifest.modules if m.name == "lib/same.py")
    assert (same.src, same.md5, same.size) == (None, None, None)  # name, dst, sha256 only
    assert same.sha256 == hashlib.sha256(V1["lib/same.py"]).hexdigest()
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        assert core.src is not None and core.src.startswith("patches/")
        assert core.src in names
        assert "files/lib/same.py" not in names
        assert zf.getinfo(core.src).compress_type == zipfile.ZIP_STORED
    full = build_package(v2, version="1.2.0", output=tmp_path / "full.zip", root=root)
    assert result.size < full.size / 5


def test_builder_from_the_base_package_matches_the_tree(
    tmp_path: Path, trees: tuple[Path, Path, Path]
) -> None:
    root, v1, v2 = trees
    base = build_package(v1, version="1.1.0", output=tmp_path / "base.zip", root=root)
    from_pkg = build_package(
        v2, version="1.2.0", output=tmp_path / "a.zip", root=root, delta_from=base.path
    )
    from_tree = build_package(
        v2,
        version="1.2.0",
        output=tmp_path / "b.zip",
        root=root,
        delta_from=v1,
        base_version="1.1.0",
    )
    assert from_pkg.md5 == from_tree.md5  # deterministic, whatever form the base takes
    with pytest.raises(BuildError, match=r"not v1\.0\.0"):
        build_package(
            v2,
            version="1.2.0",
            output=tmp_path / "c.zip",
            root=root,
            delta_from=base.path,
            base_version="1.0.0",
        )
    with pytest.raises(BuildError, match="base-version"):
        build_package(v2, version="1.2.0", output=tmp_path / "d.zip", root=root, delta_from=v1)
    with pytest.raises(BuildError, match="cannot be a base"):
        build_package(
            v2, version="1.3.0", output=tmp_path / "e.zip", root=root, delta_from=from_pkg.path
        )


def test_large_files_ship_in_full(tmp_path: Path, trees: tuple[Path, Path, Path]) -> None:
    root, v1, v2 = trees
    small = PackageLimits(max_patch_bytes=100_000)
    out = tmp_path / "delta.zip"
    build_package(
        v2,
        version="1.2.0",
        output=out,
        root=root,
        delta_from=v1,
        base_version="1.1.0",
        limits=small,
    )
    assert _kinds(out, root)["lib/core.so"] is DeltaKind.ADDED


#: Changed files too short to be a zstd dictionary (``delta.MIN_PREFIX_BYTES``) or empty:
#: every release's ``VERSION``. The builder crashed on them ("Zstandard dictionary content
#: too short").
TINY_V1 = {
    "VERSION": b"1.0.0\n",
    "etc/seven": b"7 bytes",
    "etc/eight": b"8 bytes!",
    "etc/emptied": b"was not empty\n",
    "etc/filled": b"",
    "etc/still-empty": b"",
    "lib/core.so": LIB_V1,
}
TINY_V2 = {
    "VERSION": b"1.1.0\n",
    "etc/seven": b"7 bytes, then some more",
    "etc/eight": b"8 bytes! then some more",
    "etc/emptied": b"",
    "etc/filled": b"now filled\n",
    "etc/still-empty": b"",
    "etc/new-empty": b"",
    "lib/v2/VERSION": b"1.1.0\n",  # no base at its path: tried against the tiny VERSION
    "lib/core.so": LIB_V2,
}


def test_tiny_and_empty_changed_files_ship_added(tmp_path: Path) -> None:
    assert len(TINY_V1["etc/seven"]) == delta.MIN_PREFIX_BYTES - 1
    assert len(TINY_V1["etc/eight"]) == delta.MIN_PREFIX_BYTES
    v1 = _write(tmp_path / "v1", TINY_V1)
    v2 = _write(tmp_path / "v2", TINY_V2)
    root = tmp_path / "root"
    init_layout(root, "1.1.0", from_dir=v1)
    out = _delta(tmp_path, root, v1, v2)
    assert _kinds(out, root) == {
        "VERSION": DeltaKind.ADDED,
        "etc/seven": DeltaKind.ADDED,
        "etc/eight": DeltaKind.ADDED,  # a patch would not be smaller than the file
        "etc/emptied": DeltaKind.ADDED,
        "etc/filled": DeltaKind.ADDED,
        "etc/still-empty": DeltaKind.KEPT,
        "etc/new-empty": DeltaKind.ADDED,
        "lib/v2/VERSION": DeltaKind.ADDED,
        "lib/core.so": DeltaKind.PATCHED,  # the rest of the delta is still a delta
    }
    layout = Layout(root)
    staged = stage_snapshot(layout, read_package(out, expected_version="1.2.0", root=root), out)
    got = {
        p.relative_to(staged).as_posix(): p.read_bytes() for p in staged.rglob("*") if p.is_file()
    }
    assert got == TINY_V2


def test_a_patch_zstd_refuses_ships_the_file_added(
    tmp_path: Path, trees: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, v1, v2 = trees

    def refuse(base: bytes, new: bytes) -> bytes:
        raise delta.PatchError("zstd said no")

    monkeypatch.setattr(delta, "make_patch", refuse)
    out = _delta(tmp_path, root, v1, v2)
    assert _kinds(out, root)["lib/core.so"] is DeltaKind.ADDED
    assert _kinds(out, root)["bin/app"] is DeltaKind.ADDED


def test_delta_stages_the_same_tree_as_the_new_release(
    tmp_path: Path, trees: tuple[Path, Path, Path]
) -> None:
    root, v1, v2 = trees
    out = tmp_path / "delta.zip"
    build_package(v2, version="1.2.0", output=out, root=root, delta_from=v1, base_version="1.1.0")
    layout = Layout(root)
    running = tree_digest(layout.snapshot_dir("1.1.0"))
    manifest = read_package(out, expected_version="1.2.0", root=root)
    staged = stage_snapshot(layout, manifest, out)
    assert tree_digest(layout.snapshot_dir("1.1.0")) == running  # only read
    got = {
        p.relative_to(staged).as_posix(): p.read_bytes() for p in staged.rglob("*") if p.is_file()
    }
    assert got == V2
    assert os.stat(staged / "bin/app").st_mode & 0o777 == 0o755
    assert os.stat(staged / "lib/core.so").st_mode & 0o777 == 0o644


#: A release that renames a directory (as a wheel's ``<name>-<version>.dist-info`` does):
#: the moved files have no base at their own path.
MOVED_V1 = {
    "lib/app-1.1.0.dist-info/RECORD": b"".join(
        b"app/m%d.py,sha256=%d\n" % (i, i) for i in range(3000)
    ),
    "lib/app-1.1.0.dist-info/LICENSE": _blob(4, 20_000),
    "lib/app/__init__.py": b"VERSION = '1.1.0'\n",
}
MOVED_V2 = {
    "lib/app-1.2.0.dist-info/RECORD": MOVED_V1["lib/app-1.1.0.dist-info/RECORD"].replace(
        b"m7.py,sha256=7", b"m7.py,sha256=77"
    ),
    "lib/app-1.2.0.dist-info/licenses/LICENSE": MOVED_V1["lib/app-1.1.0.dist-info/LICENSE"],
    "lib/app/__init__.py": b"VERSION = '1.2.0'\n",
}


def test_a_moved_file_is_patched_from_its_old_path(tmp_path: Path) -> None:
    v1 = _write(tmp_path / "v1", MOVED_V1)
    v2 = _write(tmp_path / "v2", MOVED_V2)
    root = tmp_path / "root"
    init_layout(root, "1.1.0", from_dir=v1)
    out = tmp_path / "delta.zip"
    result = build_package(
        v2, version="1.2.0", output=out, root=root, delta_from=v1, base_version="1.1.0"
    )
    by_name = {m.name: m for m in result.manifest.modules}
    record = by_name["lib/app-1.2.0.dist-info/RECORD"]
    license_ = by_name["lib/app-1.2.0.dist-info/licenses/LICENSE"]
    assert record.kind is license_.kind is DeltaKind.PATCHED
    assert record.base == f"{root}/lib/app-1.1.0.dist-info/RECORD"
    assert license_.base == f"{root}/lib/app-1.1.0.dist-info/LICENSE"  # same content
    # 18 bytes changed in place: its 25-byte patch is not smaller, so it ships whole.
    assert by_name["lib/app/__init__.py"].kind is DeltaKind.ADDED
    assert sorted(result.manifest.removed) == [
        f"{root}/lib/app-1.1.0.dist-info/LICENSE",
        f"{root}/lib/app-1.1.0.dist-info/RECORD",
    ]
    with zipfile.ZipFile(out) as zf:
        assert [n for n in zf.namelist() if n.startswith("files/")] == ["files/lib/app/__init__.py"]
    assert result.size < 2000
    layout = Layout(root)
    running = tree_digest(layout.snapshot_dir("1.1.0"))
    staged = stage_snapshot(layout, read_package(out, expected_version="1.2.0", root=root), out)
    assert tree_digest(layout.snapshot_dir("1.1.0")) == running
    got = {
        p.relative_to(staged).as_posix(): p.read_bytes() for p in staged.rglob("*") if p.is_file()
    }
    assert got == MOVED_V2


def test_a_moved_files_base_is_checked_at_its_old_path(tmp_path: Path) -> None:
    v1 = _write(tmp_path / "v1", MOVED_V1)
    v2 = _write(tmp_path / "v2", MOVED_V2)
    root = tmp_path / "root"
    init_layout(root, "1.1.0", from_dir=v1)
    out = tmp_path / "delta.zip"
    build_package(v2, version="1.2.0", output=out, root=root, delta_from=v1, base_version="1.1.0")
    old = Layout(root).snapshot_dir("1.1.0") / "lib/app-1.1.0.dist-info/RECORD"
    old.parent.chmod(0o755)
    old.chmod(0o644)
    old.write_bytes(old.read_bytes() + b"edited\n")
    detail = _refused(Layout(root), out, ErrorCode.DELTA_BASE_MISMATCH)
    assert detail.startswith("lib/app-1.1.0.dist-info/RECORD: sha256 is ")


def _delta(tmp_path: Path, root: Path, v1: Path, v2: Path) -> Path:
    out = tmp_path / "delta.zip"
    build_package(v2, version="1.2.0", output=out, root=root, delta_from=v1, base_version="1.1.0")
    return out


def _refused(
    layout: Layout, pkg: Path, code: ErrorCode, limits: PackageLimits = PackageLimits()
) -> str:
    before = tree_digest(layout.versions)
    manifest = read_package(pkg, expected_version="1.2.0", root=layout.root, limits=limits)
    with pytest.raises(UpdaterError) as err:
        stage_snapshot(layout, manifest, pkg, limits=limits)
    assert err.value.code == code, err.value.error
    assert tree_digest(layout.versions) == before  # nothing touched, no staging left
    return err.value.detail


def test_wrong_base_version_is_refused_before_anything(
    tmp_path: Path, trees: tuple[Path, Path, Path]
) -> None:
    root, v1, v2 = trees
    out = tmp_path / "delta.zip"
    build_package(v2, version="1.2.0", output=out, root=root, delta_from=v1, base_version="1.0.5")
    detail = _refused(Layout(root), out, ErrorCode.DELTA_BASE_MISMATCH)
    assert detail == "the delta is against v1.0.5, the device runs v1.1.0"


@pytest.mark.parametrize("victim", ["lib/same.py", "lib/core.so"])
def test_a_hand_edited_base_file_is_refused_naming_it(
    tmp_path: Path, trees: tuple[Path, Path, Path], victim: str
) -> None:
    root, v1, v2 = trees
    out = _delta(tmp_path, root, v1, v2)
    target = Layout(root).snapshot_dir("1.1.0") / victim
    target.chmod(0o644)
    target.write_bytes(target.read_bytes() + b"# edited on the device\n")
    detail = _refused(Layout(root), out, ErrorCode.DELTA_BASE_MISMATCH)
    assert detail.startswith(f"{victim}: sha256 is ")


def test_a_missing_or_symlinked_base_file_is_a_mismatch(
    tmp_path: Path, trees: tuple[Path, Path, Path]
) -> None:
    root, v1, v2 = trees
    out = _delta(tmp_path, root, v1, v2)
    snap = Layout(root).snapshot_dir("1.1.0")
    (snap / "lib").chmod(0o755)
    outside = tmp_path / "outside.so"
    outside.write_bytes(LIB_V1)  # the right content, but outside the snapshot
    (snap / "lib/core.so").unlink()
    (snap / "lib/core.so").symlink_to(outside)
    detail = _refused(Layout(root), out, ErrorCode.DELTA_BASE_MISMATCH)
    assert detail == "lib/core.so: reached through a symlink in the running snapshot"
    (snap / "lib/core.so").unlink()
    detail = _refused(Layout(root), out, ErrorCode.DELTA_BASE_MISMATCH)
    assert detail == "lib/core.so: missing from the running snapshot"


# --------------------------------------------------------------------------- hostile


def _hostile(
    tmp_path: Path, root: Path, patch: bytes, *, size: int, extra: dict[str, object] | None = None
) -> Path:
    module = {
        "name": "lib/core.so",
        "src": "patches/core.zst",
        "dst": f"{root}/lib/core.so",
        "delta": "patched",
        "size": size,
        "sha256": hashlib.sha256(LIB_V2).hexdigest(),
        "base_sha256": hashlib.sha256(LIB_V1).hexdigest(),
        **(extra or {}),
    }
    manifest = {"version": "1.2.0", "base_version": "1.1.0", "modules": [module]}
    return write_zip(
        tmp_path / "hostile.zip",
        [Entry("patches/core.zst", patch, compress=zipfile.ZIP_STORED)],
        manifest=manifest,
    )


def test_a_patch_expanding_past_its_declared_size_is_refused(
    tmp_path: Path, trees: tuple[Path, Path, Path]
) -> None:
    root, _v1, _v2 = trees
    patch = delta.make_patch(LIB_V1, LIB_V2)
    pkg = _hostile(tmp_path, root, patch, size=len(LIB_V2) - 1)
    detail = _refused(Layout(root), pkg, ErrorCode.INVALID_MANIFEST)
    assert "expands beyond the declared" in detail


def test_a_bomb_is_stopped_at_the_declared_size(
    tmp_path: Path, trees: tuple[Path, Path, Path]
) -> None:
    """1 GiB of zeros in a ~32 KiB frame: decoding stops one byte past the declared size."""
    root, _v1, _v2 = trees
    bomb = pyzstd.compress(b"\0" * (1 << 30), {pyzstd.CParameter.windowLog: 20})
    assert len(bomb) < 100_000
    pkg = _hostile(tmp_path, root, bomb, size=len(LIB_V2))
    detail = _refused(Layout(root), pkg, ErrorCode.INVALID_MANIFEST)
    assert "expands beyond the declared" in detail


def test_a_frame_asking_for_a_huge_window_is_refused(
    tmp_path: Path, trees: tuple[Path, Path, Path]
) -> None:
    root, _v1, _v2 = trees
    # Streamed, so the size is unknown and the frame keeps its 1 GiB window.
    compressor = pyzstd.ZstdCompressor({pyzstd.CParameter.windowLog: 30})
    big_window = compressor.compress(_blob(3, 1000)) + compressor.flush()
    assert pyzstd.get_frame_info(big_window).decompressed_size is None
    pkg = _hostile(tmp_path, root, big_window, size=len(LIB_V2))
    detail = _refused(Layout(root), pkg, ErrorCode.INVALID_MANIFEST)
    assert "corrupt patch" in detail


def test_a_patch_against_a_base_too_short_for_a_dictionary_applies(tmp_path: Path) -> None:
    """``zstd --patch-from`` ignores a base under ``MIN_PREFIX_BYTES`` (its frame is an
    ordinary one); the device decodes it so too (it refused the package as INVALID_MANIFEST,
    "corrupt or unsupported ZIP (ValueError: Zstandard dictionary content too short …)")."""
    v1 = _write(tmp_path / "v1", {"VERSION": b"1.0.0\n"})
    root = tmp_path / "root"
    init_layout(root, "1.1.0", from_dir=v1)
    patch = pyzstd.compress(b"1.2.0\n")  # what `zstd --patch-from=VERSION` writes
    module = {
        "name": "VERSION",
        "dst": f"{root}/VERSION",
        "size": 6,
        "sha256": hashlib.sha256(b"1.2.0\n").hexdigest(),
        "base_sha256": hashlib.sha256(b"1.0.0\n").hexdigest(),
    }
    pkg = _hostile(tmp_path, root, patch, size=6, extra=module)
    layout = Layout(root)
    staged = stage_snapshot(layout, read_package(pkg, expected_version="1.2.0", root=root), pkg)
    assert (staged / "VERSION").read_bytes() == b"1.2.0\n"


def test_garbage_and_truncated_patches_are_refused(
    tmp_path: Path, trees: tuple[Path, Path, Path]
) -> None:
    root, _v1, _v2 = trees
    patch = delta.make_patch(LIB_V1, LIB_V2)
    for bad in (b"not zstd at all", patch[: len(patch) // 2], patch + b"trailing"):
        pkg = _hostile(tmp_path, root, bad, size=len(LIB_V2))
        _refused(Layout(root), pkg, ErrorCode.INVALID_MANIFEST)


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        ({"dst": "/opt/tope/../etc/passwd"}, "must not contain '..'"),
        ({"size": (16 << 20) + 1}, "exceeds the limit of 16777216"),
        ({"base_sha256": None}, "base_sha256: required for a patched file"),
        ({"delta": "kept"}, "a kept file comes from the base, it has no src"),
        ({"delta": "moved"}, "must be one of kept, patched, added"),
        ({"base": "/etc/shadow"}, "base: /etc/shadow is outside the install root"),
        ({"base": "/opt/tope/../etc/shadow"}, "base: must not contain '..'"),
        ({"base": "{root}/versions/v1.1.0/lib/core.so"}, "base: must not be under"),
        ({"base": "lib/core.so"}, "base: must be an absolute path"),
        ({"delta": "added", "base": "{root}/lib/x"}, "only a patched file has a base"),
    ],
)
def test_hostile_delta_manifests_are_refused_by_the_reader(
    tmp_path: Path, trees: tuple[Path, Path, Path], extra: dict[str, object], expect: str
) -> None:
    root, _v1, _v2 = trees
    extra = {k: v.format(root=root) if isinstance(v, str) else v for k, v in extra.items()}
    pkg = _hostile(tmp_path, root, b"x", size=10, extra=extra)
    with pytest.raises(UpdaterError) as err:
        read_package(pkg, expected_version="1.2.0", root=root)
    assert err.value.code == ErrorCode.INVALID_MANIFEST
    assert expect in err.value.detail


def test_delta_fields_need_a_base_version_and_removed_paths_stay_in_the_root(
    tmp_path: Path, trees: tuple[Path, Path, Path]
) -> None:
    root, _v1, _v2 = trees
    entry = [Entry("files/a", b"a")]
    mod = {"name": "a", "src": "files/a", "dst": f"{root}/a"}
    cases = [
        ({"modules": [{**mod, "delta": "added"}]}, "only a delta package"),
        ({"modules": [{**mod, "base": f"{root}/b"}]}, r"\.base: only a delta package"),
        ({"removed": [f"{root}/x"], "modules": [mod]}, "removed: only a delta package"),
        (
            {"base_version": "1.1.0", "removed": ["/etc/passwd"], "modules": [mod]},
            "removed[0]: /etc/passwd is outside the install root",
        ),
        (
            {"base_version": "1.1.0", "removed": [f"{root}/versions/v1.1.0/x"], "modules": [mod]},
            "removed[0]: must not be under",
        ),
        ({"base_version": "1.2.0", "modules": [mod]}, "base_version: a delta from 1.2.0"),
    ]
    for doc, expect in cases:
        pkg = write_zip(tmp_path / "m.zip", entry, manifest={"version": "1.2.0", **doc})
        with pytest.raises(UpdaterError, match=expect.replace("[", r"\[").replace("]", r"\]")):
            read_package(pkg, expected_version="1.2.0", root=root)


# --------------------------------------------------------------------------- memory


def test_applying_a_16_mib_patch_stays_far_below_memory_max(tmp_path: Path) -> None:
    """The largest patch the device accepts, applied in a fresh process: peak RSS (VmHWM)."""
    size = 16 << 20
    base_tree = _write(tmp_path / "v1", {"lib/big.bin": _blob(7, size)})
    new = bytearray((base_tree / "lib/big.bin").read_bytes())
    for offset in range(0, size, 1 << 20):
        new[offset : offset + 64] = _blob(offset, 64)
    new_tree = _write(tmp_path / "v2", {"lib/big.bin": bytes(new)})
    root = tmp_path / "root"
    init_layout(root, "1.1.0", from_dir=base_tree)
    pkg = tmp_path / "delta.zip"
    build_package(
        new_tree,
        version="1.2.0",
        output=pkg,
        root=root,
        delta_from=base_tree,
        base_version="1.1.0",
    )
    assert _kinds(pkg, root)["lib/big.bin"] is DeltaKind.PATCHED
    figures = run_measured(
        f"""
        import json, sys
        from pathlib import Path
        from updater_fsm.package.manifest import read_package
        from updater_fsm.ops.snapshot_staging import stage_snapshot
        from updater_fsm.ops.snapshot_store import Layout

        before = peak_kb()
        root = Path({str(root)!r})
        pkg = Path({str(pkg)!r})
        manifest = read_package(pkg, expected_version="1.2.0", root=root)
        stage_snapshot(Layout(root), manifest, pkg)
        json.dump({{"before_kb": before, "after_kb": peak_kb()}}, sys.stdout)
        """,
        timeout=120,
    )
    assert (root / "versions/v1.2.0/lib/big.bin").read_bytes() == bytes(new)
    grown_mb = (figures["after_kb"] - figures["before_kb"]) / 1024
    print("delta apply peak", figures)
    # The base as the dictionary (16 MiB, one copy) + the decoder's buffer (<= the result,
    # 16 MiB) + a chunk or two: measured 35 MB over the interpreter's 33 MB. MemoryMax: 128M.
    assert grown_mb < 40, figures
    assert figures["after_kb"] / 1024 < 80, figures
    assert read_links(Layout(root)).current == "1.1.0"


async def test_a_delta_is_signed_and_verified_like_any_package(
    tmp_path: Path, trees: tuple[Path, Path, Path]
) -> None:
    """One URL, one MD5/SHA-256, one signature: the device checks a delta as any package."""
    from updater_fsm.ops import verify
    from updater_fsm.package.builder import generate_keypair

    root, v1, v2 = trees
    private, public = tmp_path / "sign.pem", tmp_path / "sign.pub"
    generate_keypair(private, public)
    out = tmp_path / "delta.zip"
    result = build_package(
        v2,
        version="1.2.0",
        output=out,
        root=root,
        delta_from=v1,
        base_version="1.1.0",
        sign_key=private,
    )
    assert result.signature is not None
    key = verify.load_public_key(public.read_bytes())
    digests = await verify.hash_file(out)
    assert (digests.md5, digests.sha256) == (result.md5, result.sha256)
    verify.verify_digests(
        out,
        digests,
        size=result.size,
        md5=result.md5,
        sha256=result.sha256,
        signature_b64=result.signature,
        trusted_keys=(key,),
    )
    other_private, other_public = tmp_path / "other.pem", tmp_path / "other.pub"
    generate_keypair(other_private, other_public)
    with pytest.raises(UpdaterError) as info:
        verify.verify_digests(
            out,
            digests,
            size=result.size,
            md5=result.md5,
            sha256=result.sha256,
            signature_b64=result.signature,
            trusted_keys=(verify.load_public_key(other_public.read_bytes()),),
        )
    assert info.value.code is ErrorCode.SIGNATURE_INVALID
