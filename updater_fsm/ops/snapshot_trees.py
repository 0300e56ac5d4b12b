"""Directory trees of the snapshot store, copied, protected, removed and measured durably.

* Copies use a reflink (``FICLONE``) when the filesystem offers one, else
  ``copy_file_range``; both give independent files (never hardlinks, which would let a
  service writing its file write into another snapshot). Every file and directory is
  fsynced.
* A read-only tree (the factory snapshot) has dirs 0555 and files 0444 (0555 when
  executable); :func:`remove_tree` deletes one all the same.

All functions block on file I/O; async callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
from pathlib import Path

import structlog

from updater_fsm import durable

log = structlog.get_logger(__name__)

_FICLONE = 0x40049409  # linux/fs.h _IOW(0x94, 9, int)


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


def copy_tree(src: Path, dst: Path, *, writable: bool) -> None:
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
            copy_tree(s, d, writable=writable)
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


def make_read_only(path: Path) -> None:
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


def remove_tree(path: Path) -> None:
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
