"""Packages on the device's own disks: ``file://`` URLs under ``local_package_dirs``.

A printer serviced from a USB stick, or offline, installs a package file that is already
on the device. The same download → verify → install path takes it: the download copies the
file into the download area (hashing it on the way, resumable after a crash), so a stick
pulled out after the copy changes nothing.

What a ``file://`` URL may name is judged here, once when the request comes
(:func:`judge`, answered ``VALIDATION_ERROR``) and again when the copy opens it
(:func:`open_package_file`), as anything on the device may have changed in between:

* only under a configured directory (``local_package_dirs``; none by default, so every
  ``file://`` URL is refused), judged after every symbolic link is resolved — a link on
  the stick pointing at ``/etc/shadow`` is outside;
* only a regular file: a FIFO would block the copy forever, a device node (``/dev/zero``,
  a watchdog) never ends or has effects when opened, so the kind is judged before opening;
* never larger than any package may be (``max_package_bytes`` plus the archive's own
  records), so a 10 GB sparse file is refused before a byte is copied.
"""

from __future__ import annotations

import os
import stat
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from updater_fsm.package.limits import PackageLimits

SCHEME = "file"

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


class LocalPackageRefused(Exception):
    """A ``file://`` package URL names something that may not be installed.

    ``str()`` is the problem, a clause that follows the field name (``package_url …``).
    """


def is_file_url(url: str) -> bool:
    """True for a ``file://`` URL (any letter case)."""
    return url[: len(SCHEME) + 3].lower() == f"{SCHEME}://"


def largest_file(max_package_bytes: int, limits: PackageLimits = PackageLimits()) -> int:
    """The largest file that can be a package: what it may unpack to (a ZIP that stores its
    entries is as large as they are) plus its central directory and as much again of local
    headers."""
    return max_package_bytes + 2 * limits.max_central_directory_bytes


def path_of(url: str) -> Path:
    """The absolute path a ``file:///…`` (or ``file://localhost/…``) URL names.

    Raises:
        LocalPackageRefused: another host, a query or fragment, a path that is not absolute,
            or one that does not decode to text.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise LocalPackageRefused(
            f"names the host {parts.netloc!r}: a file:// URL names a file on this device"
            " (file:///path)"
        )
    if parts.query or parts.fragment:
        raise LocalPackageRefused("is a file:// URL with a query or fragment")
    try:
        path = urllib.parse.unquote(parts.path, errors="strict")
    except UnicodeDecodeError:
        raise LocalPackageRefused("is a file:// URL whose path is not UTF-8") from None
    if not path.startswith("/") or "\x00" in path:
        raise LocalPackageRefused("is a file:// URL without an absolute path (file:///path)")
    return Path(path)


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    return next((words for test, words in _KINDS if test(mode)), "not a regular file")


def _inside(path: Path, dirs: Sequence[Path]) -> bool:
    return any(path == d or d in path.parents for d in dirs)


def _said(dirs: Sequence[Path]) -> str:
    return ", ".join(str(d) for d in dirs)


def _resolve(url: str, allowed_dirs: Sequence[Path]) -> tuple[Path, list[Path]]:
    """The file a URL names with every link resolved, and the allowed directories likewise."""
    if not allowed_dirs:
        raise LocalPackageRefused(
            "is a file:// URL: those are accepted only under local_package_dirs,"
            " and none is configured"
        )
    path = path_of(url)
    roots = [Path(os.path.realpath(d)) for d in allowed_dirs]
    try:
        real = Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:
        raise LocalPackageRefused(f"names {path}, which does not exist") from None
    except OSError as exc:
        raise LocalPackageRefused(f"names {path}, which cannot be read: {exc.strerror}") from None
    if not _inside(real, roots):
        where = f"resolves to {real}, " if real != path else "is "
        raise LocalPackageRefused(
            f"names {path}, which {where}outside local_package_dirs ({_said(allowed_dirs)})"
        )
    return real, roots


def _judge_stat(path: Path, st: os.stat_result, max_bytes: int) -> None:
    kind = _kind(st.st_mode)
    if kind is not None:
        raise LocalPackageRefused(f"names {path}, which is {kind}, not a regular file")
    if st.st_size > max_bytes:
        raise LocalPackageRefused(
            f"names {path}, {st.st_size} bytes: larger than any package may be"
            f" ({max_bytes} bytes, from max_package_bytes)"
        )


def _judged(url: str, allowed_dirs: Sequence[Path], max_bytes: int) -> tuple[Path, list[Path]]:
    real, roots = _resolve(url, allowed_dirs)
    try:
        st = os.stat(real, follow_symlinks=False)
    except OSError as exc:
        raise LocalPackageRefused(f"names {real}, which cannot be read: {exc.strerror}") from None
    _judge_stat(real, st, max_bytes)
    return real, roots


def judge(url: str, allowed_dirs: Sequence[Path], max_bytes: int) -> Path:
    """Judge a ``file://`` package URL without opening anything; returns the resolved path.

    Raises:
        LocalPackageRefused: see the module docstring.
    """
    return _judged(url, allowed_dirs, max_bytes)[0]


def open_package_file(
    url: str, allowed_dirs: Sequence[Path], max_bytes: int
) -> tuple[int, Path, os.stat_result]:
    """Open the file a ``file://`` URL names for reading, judged again as it is opened.

    The kind is judged before the open (opening a device node may act), and the open file
    itself after it: if a link was swapped in between, what was opened is judged, never
    what was looked at.

    Returns:
        The open descriptor (the caller closes it), the resolved path and the file's status.

    Raises:
        LocalPackageRefused: see the module docstring.
    """
    real, roots = _judged(url, allowed_dirs, max_bytes)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        raise LocalPackageRefused(f"names {real}, which cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        _judge_stat(real, st, max_bytes)
        opened = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if not _inside(opened, roots):
            raise LocalPackageRefused(
                f"names {real}, which was replaced by {opened} while it was opened,"
                f" outside local_package_dirs ({_said(allowed_dirs)})"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, real, st


def validator(st: os.stat_result) -> str:
    """What identifies this very content for a resumed copy (an ETag's role): the same file,
    size and modification time."""
    return f'"file-{st.st_dev}-{st.st_ino}-{st.st_size}-{st.st_mtime_ns}"'


__all__ = [
    "SCHEME",
    "LocalPackageRefused",
    "is_file_url",
    "judge",
    "largest_file",
    "open_package_file",
    "path_of",
    "validator",
]
