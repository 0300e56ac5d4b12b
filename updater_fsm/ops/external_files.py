"""Package files outside the install root (contract §4: "extra roots").

A module whose ``dst`` lies under a configured extra root (say ``/etc/tope``) cannot live
in a snapshot, so it is replaced in place - temp file, fsync, rename, fsync dir - after its
old state has been saved durably in a backup directory:

* ``backup_dir/<n>.bak``: a copy of the old regular file (mode and owner recorded);
* the old symlink's target, or "did not exist" (plus which parent dirs we had to create);
* ``backup_dir/index.json``: all of the above, written atomically *after* every backup is
  on disk and *before* the first file is replaced.

So the index is the commit point: without it nothing was replaced yet (a re-run takes the
backups again); with it, the backups are complete and are never retaken (the originals may
already be overwritten). :func:`restore_external` (rollback) and :func:`drop_backups`
(success) are idempotent. All functions block; run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from updater_fsm import durable
from updater_fsm.core.errors import ErrorCode, UpdaterError, error_for_os_error
from updater_fsm.core.manifest import Module
from updater_fsm.faults import crash_point
from updater_fsm.package.archive import open_package
from updater_fsm.package.destinations import dst_relative_to, real_dst_problem
from updater_fsm.package.extraction import extract_module
from updater_fsm.package.limits import PackageLimits

log = structlog.get_logger(__name__)

INDEX_NAME = "index.json"
_INDEX_FORMAT = 1


def _check_under_extra_roots(modules: Sequence[Module], extra_roots: Sequence[Path]) -> None:
    """Every dst (and the real path of its parent) must stay inside an extra root."""
    for module in modules:
        if not any(dst_relative_to(module.dst, r) is not None for r in extra_roots):
            raise UpdaterError(
                ErrorCode.INVALID_MANIFEST,
                f"module {module.name}: dst {module.dst} is not under an extra root",
            )
        problem = real_dst_problem(module.dst, extra_roots)
        if problem:
            raise UpdaterError(ErrorCode.INVALID_MANIFEST, f"module {module.name}: {problem}")


def _copy_durably(src: Path, dst: Path, mode: int, uid: int, gid: int) -> None:
    """Copy ``src`` to ``dst`` via a temp sibling + fsync + rename (dir not fsynced)."""
    tmp = dst.with_name(f".{dst.name}.copy-tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    with open(src, "rb") as fin:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(os.dup(fd), "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            os.fchmod(fd, mode)
            if os.geteuid() == 0:
                with contextlib.suppress(OSError):
                    os.fchown(fd, uid, gid)
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(tmp, dst)


def _missing_parents(dst: Path) -> list[str]:
    """Ancestors of ``dst`` that do not exist yet, outermost first."""
    missing = []
    parent = dst.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        missing.append(str(parent))
        parent = parent.parent
    return missing[::-1]


def _take_backups(modules: Sequence[Module], backup_dir: Path) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    created: list[str] = []
    for index, module in enumerate(modules):
        dst = Path(module.dst)
        entry: dict[str, Any] = {"dst": module.dst}
        try:
            st = os.lstat(dst)
        except FileNotFoundError:
            entry["kind"] = "absent"
            created.extend(d for d in _missing_parents(dst) if d not in created)
        else:
            if stat.S_ISREG(st.st_mode):
                name = f"{index}.bak"
                _copy_durably(dst, backup_dir / name, stat.S_IMODE(st.st_mode), 0, 0)
                entry.update(
                    kind="file",
                    backup=name,
                    mode=stat.S_IMODE(st.st_mode),
                    uid=st.st_uid,
                    gid=st.st_gid,
                )
            elif stat.S_ISLNK(st.st_mode):
                entry.update(kind="link", target=os.readlink(dst))
            else:
                raise UpdaterError(
                    ErrorCode.INVALID_MANIFEST,
                    f"module {module.name}: {dst} exists and is not a file or symlink",
                )
        entries.append(entry)
    durable.fsync_dir(backup_dir)
    return {"format": _INDEX_FORMAT, "entries": entries, "created_dirs": created}


def _load_index(backup_dir: Path) -> dict[str, Any] | None:
    try:
        raw = (backup_dir / INDEX_NAME).read_bytes()
    except FileNotFoundError:
        return None
    try:
        index: dict[str, Any] = json.loads(raw)
        if index.get("format") != _INDEX_FORMAT or not isinstance(index.get("entries"), list):
            raise ValueError("unknown format")
    except ValueError as exc:
        raise UpdaterError(
            ErrorCode.ROLLBACK_FAILED, f"{backup_dir / INDEX_NAME} is unreadable ({exc})"
        ) from exc
    return index


def apply_external(
    modules: Sequence[Module],
    package_path: Path,
    backup_dir: Path,
    limits: PackageLimits = PackageLimits(),
    *,
    extra_roots: Sequence[Path] | None = None,
) -> list[str]:
    """Back up, then replace in place, every module's ``dst`` (files outside the root).

    Resumable: after a crash, call it again with the same arguments; completed backups are
    reused and files are (re)extracted.

    Args:
        modules: the external modules (``package.external_modules(manifest, root)``).
        package_path: the package ZIP.
        backup_dir: where backups and ``index.json`` go (created; one install at a time).
        limits: extraction limits.
        extra_roots: when given, every ``dst`` is re-checked to lie (really, through
            symlinks) inside one of them.

    Returns:
        The destinations written.

    Raises:
        UpdaterError: ``INVALID_MANIFEST`` (digest mismatch, dst is a directory),
            ``DISK_FULL``, ``DEPLOYMENT_FAILED``. Call :func:`restore_external` to undo.
    """
    if not modules:
        return []
    if extra_roots is not None:
        _check_under_extra_roots(modules, extra_roots)
    try:
        backup_dir.mkdir(parents=True, exist_ok=True)
        durable.fsync_dir(backup_dir.parent)
        index = _load_index(backup_dir)
        if index is None:
            index = _take_backups(modules, backup_dir)
            crash_point("external:backed_up")
            durable.atomic_write_bytes(
                backup_dir / INDEX_NAME, json.dumps(index).encode(), point="external:index"
            )
        elif sorted(e["dst"] for e in index["entries"]) != sorted(m.dst for m in modules):
            raise UpdaterError(
                ErrorCode.DEPLOYMENT_FAILED,
                f"{backup_dir} holds backups of another install; restore or drop them first",
            )
        owners = {e["dst"]: (e.get("uid"), e.get("gid")) for e in index["entries"]}
        for directory in index.get("created_dirs", []):
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o755)
                durable.fsync_dir(Path(directory).parent)
        written = []
        with open_package(package_path, limits) as zf:
            for module in modules:
                dst = Path(module.dst)
                crash_point("external:before_replace")
                extract_module(zf, module, dst, label=f"module {module.name}", limits=limits)
                uid, gid = owners.get(module.dst, (None, None))
                if uid is not None and gid is not None and os.geteuid() == 0:
                    os.chown(dst, uid, gid)
                durable.fsync_dir(dst.parent)
                crash_point("external:after_replace")
                written.append(module.dst)
    except OSError as exc:
        raise error_for_os_error(
            exc, "cannot replace files outside the install root", ErrorCode.DEPLOYMENT_FAILED
        ) from exc
    log.info("external_files_applied", files=written, backup_dir=str(backup_dir))
    return written


def restore_external(backup_dir: Path) -> list[str]:
    """Put every backed-up file back as it was (rollback). Idempotent; keeps the backups.

    Returns:
        The destinations restored (empty when no index exists: nothing was replaced).

    Raises:
        UpdaterError: ``ROLLBACK_FAILED`` when the index is unreadable or a restore fails.
    """
    index = _load_index(backup_dir)
    if index is None:
        return []
    restored = []
    try:
        for entry in reversed(index["entries"]):
            dst = Path(entry["dst"])
            kind = entry["kind"]
            if kind == "file":
                _copy_durably(
                    backup_dir / entry["backup"], dst, entry["mode"], entry["uid"], entry["gid"]
                )
                durable.fsync_dir(dst.parent)
            elif kind == "link":
                durable.atomic_symlink(dst, entry["target"])
            elif kind == "absent" and os.path.lexists(dst):
                durable.remove_file(dst)
            crash_point("external:restored_one")
            restored.append(str(dst))
        for directory in reversed(index.get("created_dirs", [])):
            with contextlib.suppress(OSError):  # not empty (someone added files) or gone
                os.rmdir(directory)
                durable.fsync_dir(Path(directory).parent)
    except OSError as exc:
        raise UpdaterError(
            ErrorCode.ROLLBACK_FAILED, f"cannot restore files outside the install root: {exc}"
        ) from exc
    log.info("external_files_restored", files=restored)
    return restored


def drop_backups(backup_dir: Path) -> None:
    """Delete the backups after a successful install (index first, so it is atomic)."""
    if not backup_dir.exists():
        return
    durable.remove_file(backup_dir / INDEX_NAME)
    shutil.rmtree(backup_dir)
    durable.fsync_dir(backup_dir.parent)
