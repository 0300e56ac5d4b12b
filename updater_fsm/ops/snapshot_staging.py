"""Building a new snapshot in the ``versions/`` store (contract §4): staging.

Rules this module keeps (the store's layout and links are :mod:`updater_fsm.ops.snapshot_store`):

* Nothing ever writes into an existing snapshot. A new one is built as
  ``v<version>.staging`` (a real copy of the current snapshot - never hardlinks, which would
  let a service writing its file write into another snapshot - plus the package files),
  fsynced file by file and directory by directory, then renamed to ``v<version>``.
* What may not be installed at all (the running version, the factory version, a downgrade
  when they are off) is the core's pure rule,
  :func:`updater_fsm.core.install_refusal.refuse_install`, asked before anything is
  touched. Re-installing a version that exists but is neither (e.g. ``previous``) replaces
  it: the old dir is set aside as ``v<version>.trash`` (one rename) just before the staged
  one is renamed in, then deleted.
* A delta package is staged only on the base it was made from: the running version and
  every kept or patched file's digest are checked first (:func:`check_delta_base`).

The package format is asked three times per stage: where every file goes
(:func:`~updater_fsm.package.destinations.plan_snapshot`), the package opened once
(:func:`~updater_fsm.package.archive.open_package`), and each module's file written
(:func:`~updater_fsm.package.extraction.write_module`).

All functions block on file I/O; async callers run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import structlog

from updater_fsm import durable
from updater_fsm.core.errors import ErrorCode, UpdaterError, error_for_os_error
from updater_fsm.core.install_refusal import refuse_install
from updater_fsm.core.manifest import DeltaKind, Manifest
from updater_fsm.core.versions import Version
from updater_fsm.faults import crash_point
from updater_fsm.ops.snapshot_store import Layout, read_links, remove_leftovers, snapshot_size
from updater_fsm.ops.snapshot_trees import copy_tree, remove_tree
from updater_fsm.package.archive import open_package
from updater_fsm.package.destinations import SnapshotPlan, plan_snapshot
from updater_fsm.package.extraction import write_module
from updater_fsm.package.limits import PackageLimits

log = structlog.get_logger(__name__)

_SPACE_MARGIN = 1 << 20


def _ensure_parents(staging: Path, rel: PurePosixPath, where: str) -> Path:
    """Create ``rel``'s parent dirs inside ``staging`` without following any symlink."""
    cur = staging
    for part in rel.parent.parts:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise UpdaterError(
                ErrorCode.INVALID_MANIFEST,
                f"{where}.dst: {cur.relative_to(staging)} is a symlink in the current"
                " snapshot; refusing to write through it",
            )
        if not stat.S_ISDIR(st.st_mode):
            raise UpdaterError(
                ErrorCode.INVALID_MANIFEST,
                f"{where}.dst: {cur.relative_to(staging)} is a file in the current snapshot",
            )
    target = staging / rel
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.lstat(target).st_mode):
            raise UpdaterError(
                ErrorCode.INVALID_MANIFEST,
                f"{where}.dst: {rel} is a directory in the current snapshot",
            )
    return target


def _check_space(layout: Layout, current_dir: Path, incoming: int) -> None:
    need = snapshot_size(current_dir) + incoming + _SPACE_MARGIN
    free = shutil.disk_usage(layout.versions).free
    if free < need:
        raise UpdaterError(
            ErrorCode.DISK_FULL,
            f"staging needs about {need} bytes in {layout.versions}, {free} free",
        )


def _mismatch(detail: str) -> UpdaterError:
    return UpdaterError(ErrorCode.DELTA_BASE_MISMATCH, detail)


def _base_file(current_dir: Path, rel: PurePosixPath) -> Path:
    """``current_dir/rel`` when it is a regular file reached without leaving the snapshot.

    Raises ``DELTA_BASE_MISMATCH`` otherwise (missing, a directory, a symlink, or a
    component that resolves outside the running snapshot).
    """
    path = current_dir / rel
    real_dir = os.path.realpath(current_dir)
    real = os.path.realpath(path)
    if os.path.commonpath([real_dir, real]) != real_dir or real != os.path.join(
        real_dir, *rel.parts
    ):
        raise _mismatch(f"{rel}: reached through a symlink in the running snapshot")
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise _mismatch(f"{rel}: missing from the running snapshot") from None
    if not stat.S_ISREG(st.st_mode):
        raise _mismatch(f"{rel}: not a regular file in the running snapshot")
    return path


def _sha256_of(path: Path) -> str:
    sha = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def check_delta_base(
    manifest: Manifest, current: str, current_dir: Path, plan: SnapshotPlan, root: Path
) -> dict[int, PurePosixPath]:
    """Refuse a delta whose base is not the running snapshot, before anything is touched.

    The running version must be ``base_version``; every ``kept`` file must have its
    ``sha256`` and every ``patched`` file's base (at its ``base`` path, default ``dst``)
    its ``base_sha256`` in the running snapshot (read only, never through a symlink).

    Returns:
        The relative path of every kept or patched module, by module index.

    Raises:
        UpdaterError: ``DELTA_BASE_MISMATCH: <file>: …`` (or naming the versions).
    """
    if manifest.base_version != current:
        raise _mismatch(
            f"the delta is against v{manifest.base_version}, the device runs v{current}"
        )
    based: dict[int, PurePosixPath] = {}
    for index, (module, rel) in enumerate(zip(manifest.modules, plan.bases, strict=True)):
        if module.kind is DeltaKind.ADDED:
            continue
        # A patched file's base may be another path of the base release (a renamed file).
        if rel is None:  # the reader refuses this; never read outside the snapshot
            raise UpdaterError(
                ErrorCode.INVALID_MANIFEST, f"modules[{index}].dst: not under {root}"
            )
        want = module.sha256 if module.kind is DeltaKind.KEPT else module.base_sha256
        assert want is not None  # the reader requires it
        got = _sha256_of(_base_file(current_dir, rel))
        if got != want.lower():
            raise _mismatch(f"{rel}: sha256 is {got}, the delta's base has {want.lower()}")
        based[index] = rel
    return based


def _remove_paths(staging: Path, plan: SnapshotPlan, root: Path) -> set[Path]:
    """Delete a delta's ``removed`` files from the staging copy; return the dirs touched."""
    touched: set[Path] = set()
    for i, rel in enumerate(plan.removed):
        if rel is None:
            raise UpdaterError(ErrorCode.INVALID_MANIFEST, f"removed[{i}]: not under {root}")
        target = staging / rel
        real_parent = os.path.realpath(target.parent)
        if real_parent != os.path.join(os.path.realpath(staging), *rel.parent.parts):
            raise UpdaterError(
                ErrorCode.INVALID_MANIFEST,
                f"removed[{i}]: {rel.parent} is a symlink in the current snapshot",
            )
        try:
            st = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            continue  # already gone: the result is the same
        if stat.S_ISDIR(st.st_mode):
            raise UpdaterError(ErrorCode.INVALID_MANIFEST, f"removed[{i}]: {rel} is a directory")
        target.unlink()
        touched.add(target.parent)
    return touched


def stage_snapshot(
    layout: Layout,
    manifest: Manifest,
    package_path: Path,
    *,
    extra_roots: Sequence[Path] = (),
    limits: PackageLimits = PackageLimits(),
    allow_downgrade: bool = True,
    floor: str | None = None,
) -> Path:
    """Build ``versions/v<version>/`` = current snapshot + the package's files under R.

    Steps: refuse what :func:`~updater_fsm.core.install_refusal.refuse_install` refuses
    (the running or factory version and, unless ``allow_downgrade``, one older than the
    running version); remove crash leftovers; check free
    space; copy the current snapshot to ``v<version>.staging`` (owner-writable copies);
    extract every module whose ``dst`` is under the root to the same relative path
    (verified, modes from the ZIP, never through a symlink); fsync; crash point
    ``stage:before_rename``; rename into place (replacing a non-current, non-factory
    snapshot of the same version); fsync ``versions/``. Modules outside the root are left
    to :mod:`updater_fsm.ops.external_files`, but their destinations are judged here
    already (:func:`~updater_fsm.package.destinations.plan_snapshot`: no escape through a
    symlink), so such a package fails before any service is stopped. On failure the
    staging dir is removed.

    Args:
        layout: the snapshot store.
        manifest: as returned by :func:`updater_fsm.package.manifest.read_package`.
        package_path: the package ZIP.
        extra_roots: allowed roots outside R (every ``dst`` is re-checked).
        limits: extraction limits.
        allow_downgrade: False = refuse a version older than the running one, or than
            ``floor``.
        floor: the rollback floor (:mod:`updater_fsm.ops.rollback_floor`), or None.

    Returns:
        The new snapshot directory.

    Raises:
        UpdaterError: ``DEPLOYMENT_FAILED`` (no current snapshot, running/factory version,
            I/O error), ``DOWNGRADE_REFUSED``, ``DISK_FULL``, ``INVALID_MANIFEST`` (digest
            mismatch, bad dst).
    """
    version = Version.parse(manifest.version).text
    links = read_links(layout)
    if links.current is None:
        raise UpdaterError(ErrorCode.DEPLOYMENT_FAILED, f"{layout.current} is missing or dangling")
    refusal = refuse_install(version, links, allow_downgrade, floor)
    if refusal is not None:
        raise UpdaterError(refusal.code, refusal.detail)
    # Destinations outside the root are written at the switch, after the units were
    # stopped: the plan judges them on disk (through symlinks) now, while nothing is stopped.
    plan = plan_snapshot(manifest, layout.root, extra_roots)
    rels = plan.targets
    current_dir = layout.snapshot_dir(links.current)
    based: dict[int, PurePosixPath] = {}
    if manifest.is_delta:
        based = check_delta_base(manifest, links.current, current_dir, plan, layout.root)
    started = time.monotonic()
    staging = layout.staging_dir(version)
    try:
        remove_leftovers(layout)
        incoming = sum(m.size or 0 for m, rel in zip(manifest.modules, rels, strict=True) if rel)
        _check_space(layout, current_dir, incoming)
        copy_tree(current_dir, staging, writable=True)
        crash_point("stage:copied")
        touched: set[Path] = _remove_paths(staging, plan, layout.root)
        if manifest.removed:
            crash_point("stage:delta_removed")
        with open_package(package_path, limits) as zf:
            for index, (module, rel) in enumerate(zip(manifest.modules, rels, strict=True)):
                if rel is None or module.kind is DeltaKind.KEPT:
                    continue  # kept: the copy of the running snapshot, checked above
                where = f"modules[{index}]"
                target = _ensure_parents(staging, rel, where)
                base_file = current_dir / based[index] if index in based else None
                label = f"{where} ({module.name})"
                write_module(zf, module, target, base_file=base_file, label=label, limits=limits)
                if module.kind is DeltaKind.PATCHED:
                    crash_point("stage:delta_patched")
                parent = target.parent
                while parent != staging:
                    touched.add(parent)
                    parent = parent.parent
                touched.add(staging)
        for directory in sorted(touched, key=lambda p: len(p.parts), reverse=True):
            durable.fsync_dir(directory)
    except UpdaterError:
        remove_tree(staging)
        raise
    except OSError as exc:
        remove_tree(staging)
        raise error_for_os_error(
            exc, f"cannot stage {staging.name}", ErrorCode.DEPLOYMENT_FAILED
        ) from exc
    crash_point("stage:before_rename")
    target_dir = layout.snapshot_dir(version)
    trash = layout.trash_dir(version)
    if os.path.lexists(target_dir):
        os.rename(target_dir, trash)
        durable.fsync_dir(layout.versions)
        crash_point("stage:set_aside")
    os.rename(staging, target_dir)
    durable.fsync_dir(layout.versions)
    crash_point("stage:after_rename")
    remove_tree(trash)
    log.info(
        "snapshot_staged",
        version=version,
        base=links.current,
        modules=sum(1 for r in rels if r is not None),
        seconds=round(time.monotonic() - started, 3),
    )
    return target_dir


def discard_staging(layout: Layout, version: str) -> None:
    """Remove ``v<version>.staging`` (a failed or abandoned stage), if present."""
    remove_tree(layout.staging_dir(version))
