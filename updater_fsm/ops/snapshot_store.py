"""The ``versions/`` snapshot store under the install root (contract §4): its layout and links.

::

    R/versions/v1.0.0/  R/versions/v1.1.0/   complete snapshots (bin/, lib/, services/ ...)
    R/versions/current  -> v1.1.0            relative symlinks, switched atomically
    R/versions/previous -> v1.0.0
    R/versions/factory  -> v1.0.0            read-only (dirs 0555, files 0444/0555)

Rules this module keeps (building a new snapshot is :mod:`updater_fsm.ops.snapshot_staging`):

* Links are switched with :func:`updater_fsm.durable.atomic_symlink` (temp link, rename,
  directory fsync); ``previous`` first, then ``current``, so the two links always tell how
  far a switch got.
* ``previous`` means "the version that was running before the last forward switch". A
  rollback moves ``current`` with :func:`point_current` and then sets ``previous`` with
  :func:`point_previous` to what the machine decided (the ``previous`` of before the failed
  update, so it stays meaningful); either way the failed snapshot ends up unreferenced.
* A snapshot any link names is never removed; the factory snapshot is never modified.
* Leftovers from a crash (``*.staging``, ``*.trash``) are removed before staging and by
  :func:`collect_garbage`.

All functions block on file I/O; async callers run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import attrs
import structlog

from updater_fsm import durable
from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.core.events import LinkVersions
from updater_fsm.core.versions import Version
from updater_fsm.faults import crash_point
from updater_fsm.ops.snapshot_trees import copy_tree, make_read_only, remove_tree

log = structlog.get_logger(__name__)

STAGING_SUFFIX = ".staging"
TRASH_SUFFIX = ".trash"
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
        remove_tree(staging)
        if from_dir is not None:
            copy_tree(from_dir, staging, writable=True)
        else:
            _default_content(staging, version)
        crash_point("init:before_rename")
        os.rename(staging, target)
        durable.fsync_dir(layout.versions)
    make_read_only(target)
    if links.current is None:
        durable.atomic_symlink(layout.current, target.name, point="init:current")
    if links.factory is None:
        durable.atomic_symlink(layout.factory, target.name, point="init:factory")
        log.info("layout_initialised", root=str(root), version=version)


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
    remove_tree(trash)
    os.rename(target, trash)
    durable.fsync_dir(layout.versions)
    remove_tree(trash)
    log.info("snapshot_removed", version=version)


def remove_leftovers(layout: Layout, keep: Iterable[str] = ()) -> list[str]:
    """Remove crash leftovers (``*.trash``, ``*.staging`` but those of ``keep``).

    Returns:
        The names of the removed entries of ``versions/``.
    """
    kept = {f"v{v}{STAGING_SUFFIX}" for v in keep}
    removed = []
    with os.scandir(layout.versions) as it:
        names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    for name in names:
        if (name.endswith(STAGING_SUFFIX) and name not in kept) or name.endswith(TRASH_SUFFIX):
            remove_tree(layout.versions / name)
            removed.append(name)
    return removed


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
    removed = remove_leftovers(layout, keep)
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
