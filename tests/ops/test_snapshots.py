"""The versions/ store on real directories, files and symlinks under tmp_path."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.packages import make_package
from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.ops.snapshot_staging import discard_staging, stage_snapshot
from updater_fsm.ops.snapshot_store import (
    Layout,
    LinkState,
    collect_garbage,
    init_layout,
    list_snapshots,
    point_current,
    read_links,
    remove_snapshot,
    snapshot_size,
    switch_links,
    verify_setup,
)
from updater_fsm.package.manifest import read_package

REPO = Path(__file__).resolve().parents[2]


def tree_digest(path: Path) -> str:
    """Hash of names, types, modes, contents and link targets of a whole tree."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        st = os.lstat(p)
        h.update(f"{p.relative_to(path)}|{st.st_mode:o}|{st.st_ino}\n".encode())
        if stat.S_ISREG(st.st_mode):
            h.update(p.read_bytes())
        elif stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(p).encode())
    h.update(f"{os.lstat(path).st_mode:o}".encode())
    return h.hexdigest()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    src = tmp_path / "seed"
    (src / "bin").mkdir(parents=True)
    (src / "services/device-api").mkdir(parents=True)
    (src / "etc").mkdir()
    (src / "bin/device-api").write_bytes(b"old api\n")
    (src / "bin/device-api").chmod(0o755)
    (src / "services/device-api/device-api").write_bytes(b"old service\n")
    (src / "services/device-api/device-api").chmod(0o755)
    (src / "etc/config").write_bytes(b"a=1\n")
    (src / "bin/alias").symlink_to("device-api")
    return src


@pytest.fixture
def layout(tmp_path: Path, seed: Path) -> Layout:
    root = tmp_path / "root"
    init_layout(root, "1.0.0", from_dir=seed)
    return Layout(root)


def install(layout: Layout, version: str, files: dict[str, bytes | tuple[bytes, int]]) -> Path:
    pkg = make_package(layout.root.parent / f"p{version}.zip", version, files, root=layout.root)
    manifest = read_package(pkg, expected_version=version, root=layout.root)
    stage_snapshot(layout, manifest, pkg)
    switch_links(layout, version)
    return pkg


# --------------------------------------------------------------------------- init


def test_init_default_content(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "r")
    init_layout(layout.root, "1.0.0")
    assert read_links(layout) == LinkState(current="1.0.0", previous=None, factory="1.0.0")
    assert os.readlink(layout.current) == "v1.0.0"
    assert os.readlink(layout.factory) == "v1.0.0"
    snap = layout.snapshot_dir("1.0.0")
    assert (snap / "VERSION").read_text() == "1.0.0\n"
    assert {p.name for p in snap.iterdir()} == {"VERSION", "bin", "lib", "services"}
    assert verify_setup(layout) == []


def test_init_from_dir_makes_factory_read_only(layout: Layout) -> None:
    snap = layout.snapshot_dir("1.0.0")
    assert (snap / "etc/config").read_bytes() == b"a=1\n"
    assert mode(snap / "bin/device-api") == 0o555
    assert mode(snap / "etc/config") == 0o444
    assert mode(snap) == mode(snap / "bin") == 0o555
    assert os.readlink(snap / "bin/alias") == "device-api"
    assert verify_setup(layout) == []


def test_init_is_idempotent_and_refuses_another_version(layout: Layout) -> None:
    before = tree_digest(layout.versions)
    init_layout(layout.root, "1.0.0")
    assert tree_digest(layout.versions) == before
    with pytest.raises(UpdaterError, match=r"already initialised with factory v1\.0\.0"):
        init_layout(layout.root, "2.0.0")


def test_init_completes_an_interrupted_run(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "r")
    init_layout(layout.root, "1.0.0")
    layout.factory.unlink()  # as if killed before the factory link was made
    layout.snapshot_dir("1.0.0").chmod(0o755)
    init_layout(layout.root, "1.0.0")
    assert read_links(layout).factory == "1.0.0"
    assert verify_setup(layout) == []


# --------------------------------------------------------------------------- staging


def test_stage_copies_current_and_overlays_package(layout: Layout) -> None:
    factory_before = tree_digest(layout.snapshot_dir("1.0.0"))
    pkg = make_package(
        layout.root.parent / "p.zip",
        "1.1.0",
        {
            "services/device-api/device-api": (b"new service\n", 0o755),
            "share/new/data.txt": b"fresh\n",
        },
        root=layout.root,
    )
    manifest = read_package(pkg, expected_version="1.1.0", root=layout.root)
    snap = stage_snapshot(layout, manifest, pkg)
    assert snap == layout.snapshot_dir("1.1.0")
    assert (snap / "services/device-api/device-api").read_bytes() == b"new service\n"
    assert mode(snap / "services/device-api/device-api") == 0o755
    assert (snap / "share/new/data.txt").read_bytes() == b"fresh\n"
    assert mode(snap / "share/new/data.txt") == 0o644
    # the rest is the current snapshot's content, made owner-writable again
    assert (snap / "etc/config").read_bytes() == b"a=1\n"
    assert mode(snap / "etc/config") == 0o644
    assert mode(snap / "bin/device-api") == 0o755
    assert mode(snap / "bin") == 0o755
    assert os.readlink(snap / "bin/alias") == "device-api"
    # real copies, not hardlinks
    factory = layout.snapshot_dir("1.0.0")
    assert os.stat(snap / "etc/config").st_ino != os.stat(factory / "etc/config").st_ino
    assert tree_digest(factory) == factory_before
    assert not layout.staging_dir("1.1.0").exists()
    assert read_links(layout).current == "1.0.0"  # staging does not switch


def test_stage_ignores_external_modules(layout: Layout, tmp_path: Path) -> None:
    extra = tmp_path / "etc-tope"
    pkg = make_package(
        tmp_path / "p.zip", "1.1.0", {"bin/x": b"x", f"{extra}/a.conf": b"c"}, root=layout.root
    )
    manifest = read_package(pkg, expected_version="1.1.0", root=layout.root, extra_roots=[extra])
    with pytest.raises(UpdaterError, match=r"modules\[1\]\.dst"):
        stage_snapshot(layout, manifest, pkg)  # extra root not configured here
    snap = stage_snapshot(layout, manifest, pkg, extra_roots=[extra])
    assert (snap / "bin/x").read_bytes() == b"x"
    assert not extra.exists()


@pytest.mark.parametrize("link", ["to_a_dir", "dangling", "via_parent"])
def test_stage_refuses_extra_root_dst_escaping_through_a_symlink(
    layout: Layout, tmp_path: Path, link: str
) -> None:
    """Files outside the root are written at the switch, after the units stopped: a dst
    whose directory really lies outside the extra root must fail the stage instead."""
    extra = tmp_path / "etc-tope"
    extra.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if link == "to_a_dir":
        (extra / "sub").symlink_to(elsewhere)
        dst, shown = f"{extra}/sub/x.conf", f"{extra}/sub"
    elif link == "dangling":  # a directory would be created at the link's target
        (extra / "sub").symlink_to(elsewhere / "not-yet")
        dst, shown = f"{extra}/sub/x.conf", f"{extra}/sub"
    else:  # a link higher up, with directories still to be created below it
        (extra / "sub").symlink_to("../elsewhere")
        dst, shown = f"{extra}/sub/new/dir/x.conf", f"{extra}/sub/new/dir"
    pkg = make_package(tmp_path / "p.zip", "1.1.0", {"bin/x": b"x", dst: b"c"}, root=layout.root)
    manifest = read_package(pkg, expected_version="1.1.0", root=layout.root, extra_roots=[extra])
    before = tree_digest(layout.versions)
    with pytest.raises(UpdaterError) as info:
        stage_snapshot(layout, manifest, pkg, extra_roots=[extra])
    assert info.value.code is ErrorCode.INVALID_MANIFEST
    assert info.value.detail.startswith(f"modules[1].dst: {shown} resolves to ")
    assert info.value.detail.endswith(f", outside the extra roots ({extra})")
    assert tree_digest(layout.versions) == before  # nothing staged, links untouched
    assert list(elsewhere.iterdir()) == []


def test_stage_accepts_extra_root_reached_through_a_symlink(layout: Layout, tmp_path: Path) -> None:
    """A link that stays inside the extra root (or the root itself being a link) is fine."""
    real_extra = tmp_path / "data/etc-tope"
    (real_extra / "conf.d").mkdir(parents=True)
    extra = tmp_path / "etc-tope"
    extra.symlink_to(real_extra)
    (real_extra / "current").symlink_to("conf.d")
    pkg = make_package(
        tmp_path / "p.zip", "1.1.0", {f"{extra}/current/a.conf": b"c"}, root=layout.root
    )
    manifest = read_package(pkg, expected_version="1.1.0", root=layout.root, extra_roots=[extra])
    assert stage_snapshot(layout, manifest, pkg, extra_roots=[extra]).is_dir()


def test_stage_removes_leftovers_first(layout: Layout) -> None:
    for name in ("v1.1.0.staging", "v0.9.0.staging", "v0.8.0.trash"):
        junk = layout.versions / name / "half"
        junk.mkdir(parents=True)
        (junk / "f").write_bytes(b"torn")
    install(layout, "1.1.0", {"bin/x": b"x"})
    assert sorted(p.name for p in layout.versions.iterdir()) == [
        "current",
        "factory",
        "previous",
        "v1.0.0",
        "v1.1.0",
    ]
    assert not (layout.snapshot_dir("1.1.0") / "half").exists()


def test_crash_before_rename_leaves_no_snapshot(layout: Layout, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "p.zip", "1.1.0", {"bin/x": b"x"}, root=layout.root)
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from updater_fsm.package.manifest import read_package
        from updater_fsm.ops.snapshot_staging import stage_snapshot
        from updater_fsm.ops.snapshot_store import Layout
        layout = Layout(Path({str(layout.root)!r}))
        m = read_package(Path({str(pkg)!r}), expected_version="1.1.0", root=layout.root)
        stage_snapshot(layout, m, Path({str(pkg)!r}))
        """
    )
    env = {**os.environ, "TOPE_UPDATER_CRASH_AT": "stage:before_rename", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, check=False, timeout=60)
    assert proc.returncode == -9  # SIGKILL at the crash point
    assert layout.staging_dir("1.1.0").is_dir()
    assert not os.path.lexists(layout.snapshot_dir("1.1.0"))
    assert any("leftover staging" in p for p in verify_setup(layout))
    manifest = read_package(pkg, expected_version="1.1.0", root=layout.root)
    stage_snapshot(layout, manifest, pkg)  # restaging after the "reboot" works
    assert (layout.snapshot_dir("1.1.0") / "bin/x").read_bytes() == b"x"
    assert verify_setup(layout) == []


def test_stage_failure_discards_staging(layout: Layout, tmp_path: Path) -> None:
    pkg = make_package(
        tmp_path / "p.zip",
        "1.1.0",
        {"bin/x": b"x"},
        root=layout.root,
        module_overrides={"bin/x": {"sha256": "0" * 64}},
    )
    manifest = read_package(pkg, expected_version="1.1.0", root=layout.root)
    with pytest.raises(UpdaterError, match=r"modules\[0\] \(bin/x\): sha256 mismatch"):
        stage_snapshot(layout, manifest, pkg)
    assert sorted(p.name for p in layout.versions.iterdir()) == ["current", "factory", "v1.0.0"]


def test_stage_never_writes_through_symlinks(tmp_path: Path, seed: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (seed / "lib").symlink_to(outside)
    layout = Layout(tmp_path / "root")
    init_layout(layout.root, "1.0.0", from_dir=seed)
    pkg = make_package(tmp_path / "p.zip", "1.1.0", {"lib/evil": b"x"}, root=layout.root)
    manifest = read_package(pkg, expected_version="1.1.0", root=layout.root)
    with pytest.raises(UpdaterError, match="lib is a symlink in the current snapshot"):
        stage_snapshot(layout, manifest, pkg)
    assert list(outside.iterdir()) == []
    assert not layout.staging_dir("1.1.0").exists()


def test_stage_refuses_running_and_factory_versions(layout: Layout) -> None:
    install(layout, "1.1.0", {"bin/x": b"x"})
    for version, reason in [("1.1.0", "already the running version"), ("1.0.0", "factory")]:
        pkg = make_package(layout.root.parent / "q.zip", version, {"bin/x": b"y"}, root=layout.root)
        manifest = read_package(pkg, expected_version=version, root=layout.root)
        with pytest.raises(UpdaterError, match=reason) as info:
            stage_snapshot(layout, manifest, pkg)
        assert info.value.code == ErrorCode.DEPLOYMENT_FAILED
    assert (layout.snapshot_dir("1.1.0") / "bin/x").read_bytes() == b"x"


def test_stage_refuses_a_downgrade_only_when_configured(layout: Layout) -> None:
    install(layout, "1.1.0", {"bin/x": b"one"})
    install(layout, "1.10.0", {"bin/x": b"ten"})  # numerically newer than 1.9.0
    listing = sorted(p.name for p in layout.versions.iterdir())
    for version in ("1.9.0", "1.1.0"):
        pkg = make_package(
            layout.root.parent / "d.zip", version, {"bin/x": b"old"}, root=layout.root
        )
        manifest = read_package(pkg, expected_version=version, root=layout.root)
        with pytest.raises(
            UpdaterError, match=f"v{version} is older than the running v1.10.0"
        ) as e:
            stage_snapshot(layout, manifest, pkg, allow_downgrade=False)
        assert e.value.code == ErrorCode.DOWNGRADE_REFUSED
        assert sorted(p.name for p in layout.versions.iterdir()) == listing  # nothing written
    # Newer is fine with the policy on; older is fine with it off (the default).
    pkg = make_package(layout.root.parent / "n.zip", "1.10.1", {"bin/x": b"new"}, root=layout.root)
    manifest = read_package(pkg, expected_version="1.10.1", root=layout.root)
    stage_snapshot(layout, manifest, pkg, allow_downgrade=False)
    pkg = make_package(layout.root.parent / "o.zip", "1.9.0", {"bin/x": b"old"}, root=layout.root)
    stage_snapshot(layout, read_package(pkg, expected_version="1.9.0", root=layout.root), pkg)
    assert (layout.snapshot_dir("1.9.0") / "bin/x").read_bytes() == b"old"


def test_stage_replaces_a_non_current_snapshot(layout: Layout) -> None:
    install(layout, "1.1.0", {"bin/x": b"one"})
    install(layout, "1.2.0", {"bin/y": b"two"})  # previous is now 1.1.0
    pkg = make_package(layout.root.parent / "r.zip", "1.1.0", {"bin/x": b"ONE"}, root=layout.root)
    stage_snapshot(layout, read_package(pkg, expected_version="1.1.0", root=layout.root), pkg)
    snap = layout.snapshot_dir("1.1.0")
    assert (snap / "bin/x").read_bytes() == b"ONE"
    assert (snap / "bin/y").read_bytes() == b"two"  # built from current (1.2.0)
    assert not layout.trash_dir("1.1.0").exists()


def test_discard_staging(layout: Layout) -> None:
    layout.staging_dir("1.1.0").mkdir()
    (layout.staging_dir("1.1.0") / "f").write_bytes(b"x")
    discard_staging(layout, "1.1.0")
    discard_staging(layout, "1.1.0")
    assert not layout.staging_dir("1.1.0").exists()


# --------------------------------------------------------------------------- switching


def test_switch_links(layout: Layout) -> None:
    install(layout, "1.1.0", {"bin/x": b"x"})
    assert read_links(layout) == LinkState(current="1.1.0", previous="1.0.0", factory="1.0.0")
    assert os.readlink(layout.current) == "v1.1.0"
    assert os.readlink(layout.previous) == "v1.0.0"
    # services resolve through the link
    assert (layout.current / "bin/x").read_bytes() == b"x"
    again = switch_links(layout, "1.1.0")
    assert again == read_links(layout)
    assert os.readlink(layout.previous) == "v1.0.0"  # untouched by the re-run


def test_switch_resumes_after_crash_between_links(layout: Layout) -> None:
    install(layout, "1.1.0", {"bin/x": b"x"})
    pkg = make_package(layout.root.parent / "q.zip", "1.2.0", {"bin/x": b"y"}, root=layout.root)
    stage_snapshot(layout, read_package(pkg, expected_version="1.2.0", root=layout.root), pkg)
    os.unlink(layout.previous)
    os.symlink("v1.1.0", layout.previous)  # crash after "previous" was moved, before "current"
    state = switch_links(layout, "1.2.0")
    assert state == LinkState(current="1.2.0", previous="1.1.0", factory="1.0.0")


def test_switch_to_missing_snapshot_fails(layout: Layout) -> None:
    with pytest.raises(UpdaterError, match=r"v9\.9\.9 does not exist"):
        switch_links(layout, "9.9.9")
    assert read_links(layout).current == "1.0.0"


def test_point_current_keeps_previous(layout: Layout) -> None:
    install(layout, "1.1.0", {"bin/x": b"x"})
    install(layout, "1.2.0", {"bin/x": b"y"})
    point_current(layout, "1.1.0")  # level-1 rollback
    assert read_links(layout) == LinkState(current="1.1.0", previous="1.1.0", factory="1.0.0")
    point_current(layout, "1.0.0")  # level-2 rollback
    point_current(layout, "1.0.0")
    assert read_links(layout) == LinkState(current="1.0.0", previous="1.1.0", factory="1.0.0")
    with pytest.raises(UpdaterError) as info:
        point_current(layout, "7.0.0")
    assert info.value.code == ErrorCode.ROLLBACK_FAILED


# --------------------------------------------------------------------------- cleanup


def test_collect_garbage_keeps_linked_snapshots(layout: Layout) -> None:
    factory_before = tree_digest(layout.snapshot_dir("1.0.0"))
    for version in ("1.1.0", "1.2.0", "1.3.0"):
        install(layout, version, {"bin/x": version.encode()})
    (layout.versions / "v1.4.0.staging").mkdir()
    (layout.versions / "v1.5.0.staging").mkdir()
    removed = collect_garbage(layout, keep=["1.4.0"])
    assert sorted(removed) == ["v1.1.0", "v1.5.0.staging"]
    assert list_snapshots(layout) == ["1.0.0", "1.2.0", "1.3.0"]
    assert layout.staging_dir("1.4.0").exists()
    assert collect_garbage(layout, keep=["1.4.0"]) == []
    assert tree_digest(layout.snapshot_dir("1.0.0")) == factory_before


def test_collect_garbage_does_nothing_without_current(layout: Layout) -> None:
    install(layout, "1.1.0", {"bin/x": b"x"})
    install(layout, "1.2.0", {"bin/x": b"y"})
    os.unlink(layout.current)
    assert collect_garbage(layout) == []
    assert list_snapshots(layout) == ["1.0.0", "1.1.0", "1.2.0"]


def test_remove_snapshot_refuses_linked(layout: Layout) -> None:
    install(layout, "1.1.0", {"bin/x": b"x"})
    for version in ("1.0.0", "1.1.0"):
        with pytest.raises(UpdaterError, match="refusing to remove"):
            remove_snapshot(layout, version)
    point_current(layout, "1.0.0")
    os.unlink(layout.previous)
    remove_snapshot(layout, "1.1.0")
    assert list_snapshots(layout) == ["1.0.0"]


def test_verify_setup_finds_each_problem(layout: Layout) -> None:
    install(layout, "1.1.0", {"bin/x": b"x"})
    assert verify_setup(layout) == []
    factory_file = layout.snapshot_dir("1.0.0") / "etc/config"
    factory_file.chmod(0o644)
    os.unlink(layout.previous)
    os.symlink("v0.0.1", layout.previous)
    os.unlink(layout.current)
    os.symlink(str(layout.snapshot_dir("1.1.0")), layout.current)
    (layout.versions / "v2.0.0.staging").mkdir()
    problems = verify_setup(layout)
    assert any(p.startswith("current: target") and "absolute" in p for p in problems)
    assert any(p.startswith("previous: dangling") for p in problems)
    assert any(p.startswith("factory: 1 entries are not read-only") for p in problems)
    assert "leftover staging dir v2.0.0.staging" in problems
    os.unlink(layout.factory)
    layout.factory.mkdir()
    assert "factory: is not a symlink" in verify_setup(layout)
    os.rmdir(layout.factory)
    assert "factory: link is missing" in verify_setup(layout)


def test_snapshot_size(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d/a").write_bytes(b"x" * 10)
    (tmp_path / "d/b").hardlink_to(tmp_path / "d/a")
    (tmp_path / "d/c").symlink_to("a")
    (tmp_path / "d/e").write_bytes(b"y" * 5)
    assert snapshot_size(tmp_path / "d") == 15
