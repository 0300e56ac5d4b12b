"""Every durable write the updater makes goes through this module.

A write "matters" when a power cut right after it must not lose or tear it. The recipe is
always the same: write a temporary sibling, ``fsync`` it, ``rename`` it over the target and
``fsync`` the directory so the rename itself is on disk. ``rename`` is atomic on POSIX, so a
reader (or a restarted updater) sees either the old or the new content, never a mix.
"""

from __future__ import annotations

import contextlib
import os
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


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644, point: str = "") -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Args:
        path: the target file; its directory must exist.
        data: the complete new content.
        mode: permission bits of the new file.
        point: name of this write for fault injection (``faults.crash_point``); empty = none.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
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
