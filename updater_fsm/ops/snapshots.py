"""The ``versions/`` snapshot store under the install root (contract §4).

::

    R/versions/v1.0.0/  R/versions/v1.1.0/   complete snapshots (bin/, lib/, services/ ...)
    R/versions/current  -> v1.1.0            relative symlinks, switched atomically
    R/versions/previous -> v1.0.0
    R/versions/factory  -> v1.0.0            read-only (dirs 0555, files 0444/0555)

Rules this module keeps:

* Nothing ever writes into an existing snapshot. A new one is built as
  ``v<version>.staging`` (a real copy of the current snapshot - never hardlinks, which would
  let a service writing its file write into another snapshot - plus the package files),
  fsynced file by file and directory by directory, then renamed to ``v<version>``.
* Copies use a reflink (``FICLONE``) when the filesystem offers one, else
  ``copy_file_range``; both give independent files.
* Links are switched with :func:`updater_fsm.durable.atomic_symlink` (temp link, rename,
  directory fsync); ``previous`` first, then ``current``, so the two links always tell how
  far a switch got.
* ``previous`` means "the version that was running before the last forward switch". A
  rollback moves ``current`` with :func:`point_current` and then sets ``previous`` with
  :func:`point_previous` to what the machine decided (the ``previous`` of before the failed
  update, so it stays meaningful); either way the failed snapshot ends up unreferenced.
* Re-installing the running version is refused (``DEPLOYMENT_FAILED: v1.2.3 is already the
  running version``), so is installing over the factory version (the factory snapshot is
  never modified). Re-installing a version that exists but is neither (e.g. ``previous``)
  replaces it: the old dir is set aside as ``v<version>.trash`` (one rename) just before the
  staged one is renamed in, then deleted.
* Leftovers from a crash (``*.staging``, ``*.trash``) are removed before staging and by
  :func:`collect_garbage`.

All functions block on file I/O; async callers run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import time
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import attrs
import structlog

from updater_fsm import durable
from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.core.events import LinkVersions
from updater_fsm.core.manifest import DeltaKind, Manifest, Module
from updater_fsm.core.versions import Version
from updater_fsm.faults import crash_point
from updater_fsm.ops.delta import prefix_dict, read_base
from updater_fsm.ops.package import (
    PackageLimits,
    check_dst,
    dst_relative_to,
    extract_module,
    open_package,
    os_error,
    patch_module,
    real_dst_problem,
)

log = structlog.get_logger(__name__)

STAGING_SUFFIX = ".staging"
TRASH_SUFFIX = ".trash"
_FICLONE = 0x40049409  # linux/fs.h _IOW(0x94, 9, int)
_SPACE_MARGIN = 1 << 20
_LINKS = ("current", "previous", "factory")


def _check_version(version: str) -> str:
    """``version`` itself, once :meth:`Version.parse` accepts it (else ``InvalidVersion``)."""
    return Version.parse(version).text


def version_key(version: str) -> tuple[int, int, int]:
    """Sort key of a ``1.2.3`` version: numeric, so 1.10.0 sorts after 1.9.0."""
    return Version.parse(version).key


def snapshot_version(name: str) -> str | None:
    """The version a snapshot directory name (``v1.2.3``) holds, or None for other names."""
    if not name.startswith("v") or not Version.is_valid(name[1:]):
        return None
    return name[1:]


@attrs.frozen
class Layout:
    """Paths of the snapshot store under an install root.

    Attributes:
        root: the install root (``/opt/tope`` on a device).
    """

    root: Path

    @property
    def versions(self) -> Path:
        """``R/versions``: snapshots and links."""
        return self.root / "versions"

    @property
    def current(self) -> Path:
        """The ``current`` link."""
        return self.versions / "current"

    @property
    def previous(self) -> Path:
        """The ``previous`` link."""
        return self.versions / "previous"

    @property
    def factory(self) -> Path:
        """The ``factory`` link."""
        return self.versions / "factory"

    def snapshot_dir(self, version: str) -> Path:
        """``versions/v<version>``."""
        return self.versions / f"v{_check_version(version)}"

    def staging_dir(self, version: str) -> Path:
        """``versions/v<version>.staging``: a snapshot being built."""
        return self.versions / f"v{_check_version(version)}{STAGING_SUFFIX}"

    def trash_dir(self, version: str) -> Path:
        """``versions/v<version>.trash``: a snapshot set aside for deletion."""
        return self.versions / f"v{_check_version(version)}{TRASH_SUFFIX}"


#: Versions the three links point at; None when a link is missing, dangling or odd.
LinkState = LinkVersions


def _link_version(layout: Layout, link: Path) -> str | None:
    try:
        target = PurePosixPath(os.readlink(link))
    except OSError:
        return None
    if target.parent not in (PurePosixPath("."), PurePosixPath(layout.versions)):
        return None
    version = snapshot_version(target.name)
    if version is None:
        return None
    try:
        if not stat.S_ISDIR(os.lstat(layout.versions / target.name).st_mode):
            return None
    except OSError:
        return None
    return version


def read_links(layout: Layout) -> LinkState:
    """What ``current``, ``previous`` and ``factory`` point at (see :class:`LinkState`)."""
    return LinkState(
        current=_link_version(layout, layout.current),
        previous=_link_version(layout, layout.previous),
        factory=_link_version(layout, layout.factory),
    )


def _raw_target_names(layout: Layout) -> set[str]:
    """Snapshot dir names any link names, dangling or not (never delete those)."""
    names = set()
    for name in _LINKS:
        with contextlib.suppress(OSError):
            names.add(PurePosixPath(os.readlink(layout.versions / name)).name)
    return names


def list_snapshots(layout: Layout) -> list[str]:
    """Versions with a complete snapshot dir, oldest first."""
    found = []
    with contextlib.suppress(FileNotFoundError), os.scandir(layout.versions) as it:
        for entry in it:
            version = snapshot_version(entry.name)
            if version is not None and entry.is_dir(follow_symlinks=False):
                found.append(version)
    return sorted(found, key=version_key)


# --------------------------------------------------------------------------- copying


def _copy_file(src: Path, dst: Path, st: os.stat_result, mode: int) -> None:
    """Copy one regular file into a new independent file; fsync it."""
    sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            _clone_or_copy(sfd, dfd, st.st_size)
            os.fchmod(dfd, mode)
            if os.geteuid() == 0:
                with contextlib.suppress(OSError):
                    os.fchown(dfd, st.st_uid, st.st_gid)
            os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def _clone_or_copy(sfd: int, dfd: int, size: int) -> None:
    try:
        fcntl.ioctl(dfd, _FICLONE, sfd)  # reflink: shares blocks copy-on-write
        return
    except OSError:
        pass
    copied = 0
    try:
        while copied < size:
            n = os.copy_file_range(sfd, dfd, size - copied)
            if n == 0:
                break
            copied += n
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    os.lseek(sfd, copied, os.SEEK_SET)
    os.lseek(dfd, copied, os.SEEK_SET)
    while chunk := os.read(sfd, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dfd, view) :]


def _copy_tree(src: Path, dst: Path, *, writable: bool) -> None:
    """Copy a directory tree (symlinks as symlinks), fsyncing every file and directory.

    Args:
        src: existing directory.
        dst: must not exist.
        writable: give the owner write permission on every copy (so a copy of the
            read-only factory can be changed and later deleted).
    """
    st = os.lstat(src)
    os.mkdir(dst, 0o700)
    with os.scandir(src) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        s, d = Path(entry.path), dst / entry.name
        est = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(est.st_mode):
            _copy_tree(s, d, writable=writable)
        elif stat.S_ISREG(est.st_mode):
            mode = (est.st_mode & 0o777) | (stat.S_IWUSR if writable else 0)
            _copy_file(s, d, est, mode)
        elif stat.S_ISLNK(est.st_mode):
            os.symlink(os.readlink(s), d)
            if os.geteuid() == 0:
                with contextlib.suppress(OSError):
                    os.chown(d, est.st_uid, est.st_gid, follow_symlinks=False)
        else:
            log.warning("snapshot_copy_skipped", path=str(s), reason="not a file/dir/symlink")
    mode = (st.st_mode & 0o777) | (stat.S_IRWXU if writable else 0)
    os.chmod(dst, mode)
    if os.geteuid() == 0:
        with contextlib.suppress(OSError):
            os.chown(dst, st.st_uid, st.st_gid)
    durable.fsync_dir(dst)


def _make_read_only(path: Path) -> None:
    """Factory protection: dirs 0555, files 0444 (0555 if any execute bit), fsynced."""
    for dirpath, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                continue  # symlinks have no own mode on Linux
            mode = 0o555 if st.st_mode & 0o111 else 0o444
            if stat.S_IMODE(st.st_mode) != mode:
                os.chmod(full, mode)
                durable.fsync_file(Path(full))
        os.chmod(dirpath, 0o555)
        durable.fsync_dir(Path(dirpath))


def _rmtree(path: Path) -> None:
    """Delete a tree even if it was made read-only; durable (parent fsynced)."""
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        for dirpath, _dirs, _files in os.walk(path):
            with contextlib.suppress(OSError):
                os.chmod(dirpath, 0o700)
        shutil.rmtree(path)
    else:
        path.unlink()
    durable.fsync_dir(path.parent)


def snapshot_size(path: Path) -> int:
    """Apparent size in bytes of the regular files under ``path`` (hardlinks counted once)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


# --------------------------------------------------------------------------- init


def _default_content(dst: Path, version: str) -> None:
    os.mkdir(dst, 0o755)
    for sub in ("bin", "lib", "services"):
        os.mkdir(dst / sub, 0o755)
        durable.fsync_dir(dst / sub)
    durable.atomic_write_bytes(dst / "VERSION", f"{version}\n".encode(), mode=0o644)
    durable.fsync_dir(dst)


def init_layout(root: Path, version: str, from_dir: Path | None = None) -> None:
    """Create the snapshot store with its first (factory) snapshot.

    Creates ``versions/v<version>`` (a copy of ``from_dir``, or a minimal tree with a
    ``VERSION`` file and empty ``bin/``, ``lib/``, ``services/`` when None), makes it
    read-only, then points ``current`` and ``factory`` at it. Re-running with the same
    version is a no-op (it also completes an interrupted earlier run).

    Raises:
        UpdaterError: ``DEPLOYMENT_FAILED`` when the root is already initialised with
            another factory version or has a broken ``factory`` link.
    """
    _check_version(version)
    layout = Layout(root)
    layout.versions.mkdir(parents=True, exist_ok=True)
    links = read_links(layout)
    if links.factory is not None and links.factory != version:
        raise UpdaterError(
            ErrorCode.DEPLOYMENT_FAILED,
            f"{root} is already initialised with factory v{links.factory}, not v{version}",
        )
    if links.factory is None and os.path.lexists(layout.factory):
        raise UpdaterError(
            ErrorCode.DEPLOYMENT_FAILED,
            f"{layout.factory} exists but does not point at a snapshot; fix it by hand",
        )
    target = layout.snapshot_dir(version)
    if not target.is_dir():
        staging = layout.staging_dir(version)
        _rmtree(staging)
        if from_dir is not None:
            _copy_tree(from_dir, staging, writable=True)
        else:
            _default_content(staging, version)
        crash_point("init:before_rename")
        os.rename(staging, target)
        durable.fsync_dir(layout.versions)
    _make_read_only(target)
    if links.current is None:
        durable.atomic_symlink(layout.current, target.name, point="init:current")
    if links.factory is None:
        durable.atomic_symlink(layout.factory, target.name, point="init:factory")
        log.info("layout_initialised", root=str(root), version=version)


# --------------------------------------------------------------------------- staging


def _remove_leftovers(layout: Layout, keep: Iterable[str] = ()) -> list[str]:
    kept = {f"v{v}{STAGING_SUFFIX}" for v in keep}
    removed = []
    with os.scandir(layout.versions) as it:
        names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    for name in names:
        if (name.endswith(STAGING_SUFFIX) and name not in kept) or name.endswith(TRASH_SUFFIX):
            _rmtree(layout.versions / name)
            removed.append(name)
    return removed


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
    manifest: Manifest, current: str, current_dir: Path, root: Path
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
    for index, module in enumerate(manifest.modules):
        if module.kind is DeltaKind.ADDED:
            continue
        # A patched file's base may be another path of the base release (a renamed file).
        rel = dst_relative_to(module.base_path, root)
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


def _remove_paths(staging: Path, manifest: Manifest, root: Path) -> set[Path]:
    """Delete a delta's ``removed`` files from the staging copy; return the dirs touched."""
    touched: set[Path] = set()
    for i, path in enumerate(manifest.removed):
        rel = dst_relative_to(path, root)
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


def _write_module(
    zf: zipfile.ZipFile,
    module: Module,
    target: Path,
    base_path: Path | None,
    where: str,
    limits: PackageLimits,
) -> None:
    label = f"{where} ({module.name})"
    if module.kind is DeltaKind.ADDED:
        extract_module(zf, module, target, label=label, limits=limits)
        return
    assert base_path is not None and module.base_sha256 is not None
    # Read again (bounded) and re-check: this is the copy the patch is applied to.
    found = read_base(base_path, limit=limits.max_patch_bytes)
    if found is None or found[1] != module.base_sha256.lower():
        raise _mismatch(f"{base_path.name}: changed in the running snapshot while staging")
    zdict = prefix_dict(found[0])
    del found  # the dictionary holds its own copy: keep one base in memory, not two
    patch_module(zf, module, zdict, target, label=label, limits=limits)
    crash_point("stage:delta_patched")


def stage_snapshot(
    layout: Layout,
    manifest: Manifest,
    package_path: Path,
    *,
    extra_roots: Sequence[Path] = (),
    limits: PackageLimits = PackageLimits(),
    allow_downgrade: bool = True,
) -> Path:
    """Build ``versions/v<version>/`` = current snapshot + the package's files under R.

    Steps: refuse the running or factory version (and, unless ``allow_downgrade``, one
    older than the running version); remove crash leftovers; check free
    space; copy the current snapshot to ``v<version>.staging`` (owner-writable copies);
    extract every module whose ``dst`` is under the root to the same relative path
    (verified, modes from the ZIP, never through a symlink); fsync; crash point
    ``stage:before_rename``; rename into place (replacing a non-current, non-factory
    snapshot of the same version); fsync ``versions/``. Modules outside the root are left
    to :mod:`updater_fsm.ops.external_files`, but their destinations are judged here
    already (:func:`~updater_fsm.ops.package.real_dst_problem`: no escape through a
    symlink), so such a package fails before any service is stopped. On failure the
    staging dir is removed.

    Args:
        layout: the snapshot store.
        manifest: as returned by :func:`updater_fsm.ops.package.read_package`.
        package_path: the package ZIP.
        extra_roots: allowed roots outside R (every ``dst`` is re-checked).
        limits: extraction limits.
        allow_downgrade: False = refuse a version older than the running one.

    Returns:
        The new snapshot directory.

    Raises:
        UpdaterError: ``DEPLOYMENT_FAILED`` (no current snapshot, running/factory version,
            I/O error), ``DOWNGRADE_REFUSED``, ``DISK_FULL``, ``INVALID_MANIFEST`` (digest
            mismatch, bad dst).
    """
    version = _check_version(manifest.version)
    links = read_links(layout)
    if links.current is None:
        raise UpdaterError(ErrorCode.DEPLOYMENT_FAILED, f"{layout.current} is missing or dangling")
    if version == links.current:
        raise UpdaterError(
            ErrorCode.DEPLOYMENT_FAILED, f"v{version} is already the running version"
        )
    if not allow_downgrade and Version.parse(version).is_older_than(Version.parse(links.current)):
        raise UpdaterError(
            ErrorCode.DOWNGRADE_REFUSED,
            f"v{version} is older than the running v{links.current} (allow_downgrade is off)",
        )
    if version == links.factory:
        raise UpdaterError(
            ErrorCode.DEPLOYMENT_FAILED,
            f"v{version} is the factory snapshot, which is never modified"
            " (roll back to factory instead)",
        )
    rels = []
    for index, module in enumerate(manifest.modules):
        rel = dst_relative_to(module.dst, layout.root)
        # Destinations outside the root are written at the switch, after the units were
        # stopped: judge them on disk (through symlinks) now, while nothing is stopped.
        problem = check_dst(module.dst, layout.root, extra_roots) or (
            real_dst_problem(module.dst, extra_roots) if rel is None else None
        )
        if problem:
            raise UpdaterError(ErrorCode.INVALID_MANIFEST, f"modules[{index}].dst: {problem}")
        rels.append(rel)
    current_dir = layout.snapshot_dir(links.current)
    based: dict[int, PurePosixPath] = {}
    if manifest.is_delta:
        based = check_delta_base(manifest, links.current, current_dir, layout.root)
    started = time.monotonic()
    staging = layout.staging_dir(version)
    try:
        _remove_leftovers(layout)
        incoming = sum(m.size or 0 for m, rel in zip(manifest.modules, rels, strict=True) if rel)
        _check_space(layout, current_dir, incoming)
        _copy_tree(current_dir, staging, writable=True)
        crash_point("stage:copied")
        touched: set[Path] = _remove_paths(staging, manifest, layout.root)
        if manifest.removed:
            crash_point("stage:delta_removed")
        with open_package(package_path, limits) as zf:
            for index, (module, rel) in enumerate(zip(manifest.modules, rels, strict=True)):
                if rel is None or module.kind is DeltaKind.KEPT:
                    continue  # kept: the copy of the running snapshot, checked above
                where = f"modules[{index}]"
                target = _ensure_parents(staging, rel, where)
                base_path = current_dir / based[index] if index in based else None
                _write_module(zf, module, target, base_path, where, limits)
                parent = target.parent
                while parent != staging:
                    touched.add(parent)
                    parent = parent.parent
                touched.add(staging)
        for directory in sorted(touched, key=lambda p: len(p.parts), reverse=True):
            durable.fsync_dir(directory)
    except UpdaterError:
        _rmtree(staging)
        raise
    except OSError as exc:
        _rmtree(staging)
        raise os_error(exc, f"cannot stage {staging.name}") from exc
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
    _rmtree(trash)
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
    _rmtree(layout.staging_dir(version))


# --------------------------------------------------------------------------- switching


def switch_links(layout: Layout, new_version: str) -> LinkState:
    """Make ``new_version`` current: ``previous -> old current``, then ``current -> new``.

    Idempotent and resumable: when ``current`` already names ``new_version`` nothing is
    touched (so re-running after a crash between the two renames, or after both, is safe).

    Raises:
        UpdaterError: ``DEPLOYMENT_FAILED`` when ``v<new_version>`` does not exist.
    """
    target = layout.snapshot_dir(new_version)
    state = read_links(layout)
    if state.current == new_version:
        return state
    if not stat.S_ISDIR(_lstat_mode(target)):
        raise UpdaterError(ErrorCode.DEPLOYMENT_FAILED, f"snapshot {target.name} does not exist")
    started = time.perf_counter()
    if state.current is not None:
        durable.atomic_symlink(layout.previous, f"v{state.current}", point="switch:previous")
    durable.atomic_symlink(layout.current, target.name, point="switch:current")
    elapsed_ms = (time.perf_counter() - started) * 1000
    new_state = read_links(layout)
    log.info(
        "links_switched",
        current=new_state.current,
        previous=new_state.previous,
        switch_ms=round(elapsed_ms, 3),
    )
    return new_state


def point_current(layout: Layout, version: str) -> None:
    """Rollback: point ``current`` at ``version``; ``previous`` is left unchanged.

    (See the module docstring for why ``previous`` keeps naming the version that ran before
    the last forward switch.) Idempotent.

    Raises:
        UpdaterError: ``ROLLBACK_FAILED`` when ``v<version>`` does not exist.
    """
    target = layout.snapshot_dir(version)
    if not stat.S_ISDIR(_lstat_mode(target)):
        raise UpdaterError(ErrorCode.ROLLBACK_FAILED, f"snapshot {target.name} does not exist")
    if _link_version(layout, layout.current) == version:
        return
    started = time.perf_counter()
    durable.atomic_symlink(layout.current, target.name, point="rollback:current")
    log.info(
        "current_repointed",
        current=version,
        switch_ms=round((time.perf_counter() - started) * 1000, 3),
    )


def point_previous(layout: Layout, version: str) -> None:
    """Point ``previous`` at ``version`` (after a rollback). Idempotent.

    Raises:
        UpdaterError: ``ROLLBACK_FAILED`` when ``v<version>`` does not exist.
    """
    target = layout.snapshot_dir(version)
    if not stat.S_ISDIR(_lstat_mode(target)):
        raise UpdaterError(ErrorCode.ROLLBACK_FAILED, f"snapshot {target.name} does not exist")
    if _link_version(layout, layout.previous) != version:
        durable.atomic_symlink(layout.previous, target.name, point="rollback:previous")


def _lstat_mode(path: Path) -> int:
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0


# --------------------------------------------------------------------------- cleanup


def remove_snapshot(layout: Layout, version: str) -> None:
    """Delete ``v<version>`` (set aside by one rename first, so it vanishes atomically).

    Raises:
        UpdaterError: ``DEPLOYMENT_FAILED`` when any link points at it.
    """
    target = layout.snapshot_dir(version)
    if target.name in _raw_target_names(layout):
        raise UpdaterError(
            ErrorCode.DEPLOYMENT_FAILED,
            f"refusing to remove {target.name}: current, previous or factory points at it",
        )
    if not os.path.lexists(target):
        return
    trash = layout.trash_dir(version)
    _rmtree(trash)
    os.rename(target, trash)
    durable.fsync_dir(layout.versions)
    _rmtree(trash)
    log.info("snapshot_removed", version=version)


def collect_garbage(layout: Layout, keep: Iterable[str] = ()) -> list[str]:
    """Remove snapshots no link points at (and not in ``keep``), plus crash leftovers.

    Does nothing when ``current`` or ``factory`` cannot be read (then it cannot tell what
    is safe to delete). ``keep`` also keeps that version's ``.staging`` dir.

    Returns:
        Names of the removed entries of ``versions/`` (e.g. ``["v1.0.1", "v1.1.0.staging"]``).
    """
    keep = set(keep)
    links = read_links(layout)
    if links.current is None or links.factory is None:
        log.warning("gc_skipped", reason="current or factory link unreadable")
        return []
    protected = {f"v{v}" for v in keep} | _raw_target_names(layout)
    removed = _remove_leftovers(layout, keep)
    for version in list_snapshots(layout):
        name = f"v{version}"
        if name not in protected:
            remove_snapshot(layout, version)
            removed.append(name)
    if removed:
        log.info("gc_done", removed=removed)
    return removed


def verify_setup(layout: Layout) -> list[str]:
    """Check the store; return human-readable problems (an empty list means healthy).

    Finds: missing ``versions/``; ``current``/``factory`` missing; any link that is not a
    symlink, is absolute, names no snapshot, or dangles; a factory that is not read-only;
    leftover staging/trash dirs.
    """
    if not layout.versions.is_dir():
        return [f"{layout.versions} does not exist (run init)"]
    problems = []
    for name in _LINKS:
        link = layout.versions / name
        if not os.path.lexists(link):
            if name != "previous":  # a fresh install has no previous yet
                problems.append(f"{name}: link is missing")
            continue
        if not link.is_symlink():
            problems.append(f"{name}: is not a symlink")
            continue
        target = os.readlink(link)
        if os.path.isabs(target):
            problems.append(f"{name}: target {target} is absolute (must be relative)")
        if snapshot_version(PurePosixPath(target).name) is None:
            problems.append(f"{name}: target {target} is not a snapshot name")
        elif _link_version(layout, link) is None:
            problems.append(f"{name}: dangling link to {target}")
    factory = _link_version(layout, layout.factory)
    if factory is not None:
        problems.extend(_read_only_problems(layout.snapshot_dir(factory)))
    with os.scandir(layout.versions) as it:
        for entry in sorted(it, key=lambda e: e.name):
            if entry.name.endswith(STAGING_SUFFIX):
                problems.append(f"leftover staging dir {entry.name}")
            elif entry.name.endswith(TRASH_SUFFIX):
                problems.append(f"leftover trash dir {entry.name}")
    return problems


def _read_only_problems(path: Path, max_listed: int = 5) -> list[str]:
    bad = []
    for dirpath, _dirs, files in os.walk(path):
        if stat.S_IMODE(os.lstat(dirpath).st_mode) != 0o555:
            bad.append(dirpath)
        for name in files:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) not in (0o444, 0o555):
                bad.append(full)
    if not bad:
        return []
    listed = ", ".join(bad[:max_listed]) + (" ..." if len(bad) > max_listed else "")
    return [f"factory: {len(bad)} entries are not read-only ({listed})"]
