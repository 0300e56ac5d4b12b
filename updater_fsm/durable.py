"""Every durable write the updater makes goes through this module.

A write "matters" when a power cut right after it must not lose or tear it. The recipe is
always the same: write a temporary sibling, ``fsync`` it, ``rename`` it over the target and
``fsync`` the directory so the rename itself is on disk. ``rename`` is atomic on POSIX, so a
reader (or a restarted updater) sees either the old or the new content, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from updater_fsm import faults


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a regular file's data and metadata to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Flags of every file the updater opens under its own directories: never through a link.
NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class StateFileRefused(Exception):
    """A file of the state directory (the lock, the log) is a symlink or not a regular
    file: the updater never follows a link there, it says so and stops."""

    def __init__(self, path: Path, exc: OSError) -> None:
        why = "is a symbolic link" if exc.errno == errno.ELOOP else f"cannot be used ({exc})"
        super().__init__(f"{path} {why}: remove it (tope-updater never follows links there)")
        self.path = path


def open_state_file(path: Path, flags: int, mode: int) -> int:
    """Open the regular file ``path`` of the state directory (the lock, the log) with
    ``flags``, never through a link and never a FIFO or device: the blocking descriptor,
    or :class:`StateFileRefused` naming the file."""
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | NO_FOLLOW, mode)
    except OSError as exc:
        raise StateFileRefused(path, exc) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StateFileRefused(path, OSError(errno.EINVAL, "not a regular file"))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_new(path: Path, mode: int) -> int:
    """Open ``path`` as a new, empty file for writing and return its descriptor.

    Whatever was there — a stale temp file, or a symlink or FIFO planted in its place — is
    removed first, and the file is created with ``O_EXCL | O_NOFOLLOW``: a write never goes
    through a link to somewhere else, nor truncates the file a link names.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NO_FOLLOW, mode)


def read_no_follow(path: Path) -> bytes:
    """The content of the regular file ``path``; ``OSError`` (ELOOP) when it is a symlink,
    ``OSError`` (EINVAL) when it is not a regular file (a FIFO would block a read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | NO_FOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644, point: str = "") -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Args:
        path: the target file; its directory must exist.
        data: the complete new content.
        mode: permission bits of the new file.
        point: name of this write for fault injection (``faults.crash_point``); empty = none.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = create_new(tmp, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    if point:
        faults.crash_point(f"{point}:before_rename")
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if point:
        faults.crash_point(f"{point}:after_rename")


def atomic_symlink(link: Path, target: str, *, point: str = "") -> None:
    """Point the symlink ``link`` at ``target`` atomically (temp link + rename + dir fsync).

    ``target`` is stored verbatim, so pass a relative name (e.g. ``"v1.2.3"``) to keep the
    tree relocatable.
    """
    tmp = link.with_name(f".{link.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    if point:
        faults.crash_point(f"{point}:before_rename")
    os.replace(tmp, link)
    fsync_dir(link.parent)
    if point:
        faults.crash_point(f"{point}:after_rename")


def remove_file(path: Path) -> bool:
    """Unlink ``path`` if it exists and make the removal durable. Returns True if removed."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True
