"""The package's ZIP structure, judged before and while it is opened.

:func:`open_package` is the one way to open a package: it first judges the central
directory from the end records (:func:`judge_central_directory`, below), then lets
``zipfile`` parse it and turns every archive-level failure into ``INVALID_MANIFEST``.
:func:`check_entries` judges every entry (names, types, sizes, compression ratios,
overlaps); :func:`entry_mode` says which mode bits an extracted file keeps.

Policy decisions (documented here because packages in the field rely on them):

* Mode bits from the ZIP are kept for user/group/other read and execute, owner write and
  group write; setuid, setgid, sticky and world-write are always dropped, and the owner can
  always read. Entries without Unix mode bits get ``0644``.
* Compression ratio is only checked for entries (and archives) larger than
  ``PackageLimits.ratio_min_bytes``: small, highly compressible files (zero-padded tables)
  are legitimate and cannot do harm; the total-size limit still bounds them.

Why the end records are judged first: ``zipfile.ZipFile`` reads the whole central directory
into memory and builds one ``ZipInfo`` per record before anyone can look at the entry
count: a package of 1 000 000 empty entries (86 MB) takes a Python process from 49 MB to
575 MB of RSS and holds the GIL for seconds. Worse, ``zipfile`` never uses the entry count
the end record declares: it parses records until it has consumed the declared
central-directory *size*, so a lying end record ("3 entries") in front of a huge directory
gets the same treatment.

:func:`judge_central_directory` therefore reads only the end of the file and the central
directory's bytes, and refuses (``INVALID_MANIFEST``) before ``zipfile`` is called when:

* the end-of-central-directory record (or its ZIP64 locator and record) is missing,
  malformed, spans disks, or points somewhere the central directory cannot be;
* it declares more entries than the limit;
* the central directory is larger than the byte limit;
* walking the directory's records (headers only, no objects) finds more entries than the
  limit, or another count than the end record declares.

The end record is found exactly as CPython 3.11's ``zipfile._EndRecData`` finds it (the
last 22 bytes when there is no comment, else the last signature in the final 64 KiB), and
the central directory is read from where ``zipfile`` reads it (right before the end
records), so the two cannot be made to judge different directories. Archives with data
prepended (self-extracting) or a ZIP64 record away from its locator are refused: no
package builder makes them, and they are where readers disagree.

Memory: at most 64 KiB of tail plus the central directory itself (bounded by the limit);
time: one pass over at most ``max_entries + 1`` record headers.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NoReturn

import attrs

from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.package.destinations import has_control_character
from updater_fsm.package.limits import PackageLimits

# signature, disk, disk of the directory, entries here, entries, size, offset, comment length
_EOCD = struct.Struct("<4s4H2LH")
_EOCD_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # signature, cd disk, record offset, disks
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # signature, size, versions, disks, counts, size, offset
_ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"
_CENTRAL_HEADER_SIZE = 46
_CENTRAL_SIGNATURE = b"PK\x01\x02"
_NAME_LENGTH_AT = 28  # name, extra and comment lengths: three uint16 from here
_MAX_COMMENT = 0xFFFF


_KEEP_MODE_BITS = 0o775  # drop setuid/setgid/sticky (not in 0o777) and world-write
_DEFAULT_MODE = 0o644
# Smallest possible local file header (30 bytes); used to detect overlapping entries.
_LOCAL_HEADER_MIN = 30


def _invalid(detail: str) -> NoReturn:
    raise UpdaterError(ErrorCode.INVALID_MANIFEST, detail)


@attrs.frozen
class CentralDirectory:
    """What a ZIP's end records declare, once judged acceptable.

    Attributes:
        entries: the number of entries (checked against the records themselves).
        size: bytes of the central directory.
        start: file offset of its first record.
        zip64: whether the ZIP64 end records were used.
    """

    entries: int
    size: int
    start: int
    zip64: bool


def _refuse(detail: str) -> NoReturn:
    raise UpdaterError(ErrorCode.INVALID_MANIFEST, f"archive: {detail}")


def _read_at(fh: BinaryIO, offset: int, size: int) -> bytes:
    fh.seek(offset)
    return fh.read(size)


def _find_end_record(fh: BinaryIO, file_size: int) -> int:
    """Offset of the end-of-central-directory record, found as CPython's zipfile finds it."""
    if file_size < _EOCD.size:
        _refuse(f"not a valid ZIP file ({file_size} bytes, no end of central directory)")
    tail = _read_at(fh, file_size - _EOCD.size, _EOCD.size)
    if tail[:4] == _EOCD_SIGNATURE and tail[-2:] == b"\x00\x00":
        return file_size - _EOCD.size
    window_start = max(file_size - _MAX_COMMENT - 1 - _EOCD.size, 0)
    window = _read_at(fh, window_start, file_size - window_start)
    found = window.rfind(_EOCD_SIGNATURE)
    if found < 0 or found + _EOCD.size > len(window):
        _refuse("not a valid ZIP file (no end of central directory record)")
    return window_start + found


def _zip64_record(fh: BinaryIO, end_at: int) -> tuple[int, int, int, int] | None:
    """``(entries, size, offset, record offset)`` from the ZIP64 end records, if present."""
    locator_at = end_at - _ZIP64_LOCATOR.size
    if locator_at < 0:
        return None
    locator = _read_at(fh, locator_at, _ZIP64_LOCATOR.size)
    signature, cd_disk, record_offset, disks = _ZIP64_LOCATOR.unpack(locator)
    if signature != _ZIP64_LOCATOR_SIGNATURE:
        return None
    if cd_disk != 0 or disks > 1:
        _refuse("ZIP archives spanning several disks are not supported")
    record_at = locator_at - _ZIP64_EOCD.size
    if record_at < 0 or record_offset != record_at:
        _refuse(
            f"ZIP64 end record is not where its locator points (offset {record_offset},"
            f" expected {max(record_at, 0)})"
        )
    fields = _ZIP64_EOCD.unpack(_read_at(fh, record_at, _ZIP64_EOCD.size))
    signature, _size, _made_by, _needed, disk, disk_of_cd, here, total, size, offset = fields
    if signature != _ZIP64_EOCD_SIGNATURE:
        _refuse("ZIP64 end locator without a ZIP64 end record")
    if disk != 0 or disk_of_cd != 0:
        _refuse("ZIP archives spanning several disks are not supported")
    return max(here, total), size, offset, record_at


def _count_records(directory: bytes, limit: int) -> int:
    """Walk the central-directory record headers; stop once more than ``limit`` are seen."""
    count = 0
    position = 0
    while position < len(directory):
        if position + _CENTRAL_HEADER_SIZE > len(directory):
            _refuse("not a valid ZIP file (truncated central directory)")
        if directory[position : position + 4] != _CENTRAL_SIGNATURE:
            _refuse(f"not a valid ZIP file (bad central directory record at +{position})")
        name, extra, comment = struct.unpack_from("<3H", directory, position + _NAME_LENGTH_AT)
        position += _CENTRAL_HEADER_SIZE + name + extra + comment
        count += 1
        if count > limit:
            break
    return count


def judge_central_directory(
    fh: BinaryIO, *, max_entries: int, max_directory_bytes: int
) -> CentralDirectory:
    """Check a ZIP's end records and central directory against the limits, cheaply.

    Args:
        fh: the package, opened for binary reading (seekable); its position is undefined
            afterwards.
        max_entries: most entries accepted (files and directories).
        max_directory_bytes: largest central directory accepted, in bytes.

    Returns:
        What the end records declare (consistent with the records).

    Raises:
        UpdaterError: ``INVALID_MANIFEST`` with ``archive: …`` naming the count or size and
            the limit, or why the end records are unusable.
    """
    file_size = fh.seek(0, 2)
    end_at = _find_end_record(fh, file_size)
    fields = _EOCD.unpack(_read_at(fh, end_at, _EOCD.size))
    _sig, disk, disk_of_cd, here, total, size, offset, _comment = fields
    zip64 = _zip64_record(fh, end_at)
    if zip64 is not None:
        entries, size, offset, records_at = zip64
    else:
        if disk != 0 or disk_of_cd != 0:
            _refuse("ZIP archives spanning several disks are not supported")
        entries, records_at = max(here, total), end_at
    if entries > max_entries:
        _refuse(f"{entries} entries, limit is {max_entries}")
    if size > max_directory_bytes:
        _refuse(
            f"central directory of {size} bytes exceeds the limit of {max_directory_bytes}"
            f" bytes ({entries} entries declared)"
        )
    start = records_at - size
    if start < 0:
        _refuse(f"not a valid ZIP file (central directory of {size} bytes does not fit)")
    if offset != start:
        _refuse(
            f"central directory found at offset {start}, its end record says {offset}"
            " (data prepended to the archive?)"
        )
    directory = _read_at(fh, start, size)
    if len(directory) != size:
        _refuse("not a valid ZIP file (truncated central directory)")
    found = _count_records(directory, max_entries)
    if found > max_entries:
        _refuse(
            f"more than {max_entries} entries in the central directory (its end record"
            f" declares {entries}), limit is {max_entries}"
        )
    if found != entries:
        _refuse(f"end record declares {entries} entries, the central directory holds {found}")
    return CentralDirectory(entries=entries, size=size, start=start, zip64=zip64 is not None)


# --------------------------------------------------------------------------- entries


def entry_name_problem(name: str, limits: PackageLimits) -> str | None:
    """Why a ZIP entry name (or a manifest's ``src``) is unsafe, or None when it is fine."""
    if not name:
        return "empty name"
    if len(name) > limits.max_name_length:
        return "name too long"
    if has_control_character(name):
        return "control character in name"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    parts = re.split(r"[/\\]", name.rstrip("/"))
    if any(part == ".." for part in parts):
        return "contains '..'"
    return None


def _unix_mode(info: zipfile.ZipInfo) -> int:
    """The full Unix ``st_mode`` stored in an entry (0 when the builder stored none)."""
    return (info.external_attr >> 16) & 0xFFFF


def entry_mode(info: zipfile.ZipInfo) -> int:
    """The permission bits a file extracted from ``info`` gets (see module docstring)."""
    mode = _unix_mode(info)
    if not mode:
        return _DEFAULT_MODE
    return (mode & _KEEP_MODE_BITS) | stat.S_IRUSR


def check_entries(
    zf: zipfile.ZipFile, limits: PackageLimits
) -> tuple[dict[str, zipfile.ZipInfo], set[str]]:
    """Validate every central-directory entry; return file entries by name and dir names."""
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        _invalid(f"archive: {len(infos)} entries, limit is {limits.max_entries}")
    seen: set[str] = set()
    files: dict[str, zipfile.ZipInfo] = {}
    dirs: set[str] = set()
    total = 0
    total_compressed = 0
    for info in infos:
        name = info.filename
        where = f"archive entry {name!r}"
        problem = entry_name_problem(name, limits)
        if problem:
            _invalid(f"{where}: {problem}")
        # "a//b", "a/./b" and "a/b/" would alias "a/b" for a naive extractor.
        key = posixpath.normpath(name.replace("\\", "/"))
        if key in seen:
            _invalid(f"{where}: duplicate entry")
        seen.add(key)
        mode = _unix_mode(info)
        fmt = stat.S_IFMT(mode)
        if stat.S_ISLNK(mode):
            _invalid(f"{where}: symbolic links are not allowed")
        if fmt not in (0, stat.S_IFREG, stat.S_IFDIR):
            _invalid(f"{where}: not a regular file or directory")
        if info.flag_bits & 0x1:
            _invalid(f"{where}: encrypted entries are not supported")
        if info.file_size < 0 or info.compress_size < 0:
            _invalid(f"{where}: negative size")
        total += info.file_size
        total_compressed += info.compress_size
        if info.file_size >= limits.ratio_min_bytes:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > limits.max_ratio:
                _invalid(
                    f"{where}: compression ratio {ratio:.0f} exceeds {limits.max_ratio:.0f}"
                    " (zip bomb?)"
                )
        if info.is_dir() or fmt == stat.S_IFDIR:
            dirs.add(name.rstrip("/"))
        else:
            files[name] = info
            parts = name.split("/")
            dirs.update("/".join(parts[:n]) for n in range(1, len(parts)))
    if total > limits.max_total_uncompressed:
        _invalid(
            f"archive: {total} bytes uncompressed exceeds the limit of"
            f" {limits.max_total_uncompressed} (zip bomb?)"
        )
    if total >= limits.ratio_min_bytes:
        ratio = total / max(total_compressed, 1)
        if ratio > limits.max_ratio:
            _invalid(f"archive: compression ratio {ratio:.0f} exceeds {limits.max_ratio:.0f}")
    _check_overlap(zf, infos)
    return files, dirs


def _check_overlap(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
    """Reject entries whose data overlaps another's (the "overlapping files" zip bomb)."""
    ordered = sorted(infos, key=lambda i: i.header_offset)
    end_of_data: int = getattr(zf, "start_dir", 0) or 0
    for cur, nxt in zip(ordered, [*ordered[1:], None], strict=True):
        limit = nxt.header_offset if nxt is not None else end_of_data
        if limit and cur.header_offset + _LOCAL_HEADER_MIN + cur.compress_size > limit:
            _invalid(f"archive entry {cur.filename!r}: overlaps another entry")


@contextlib.contextmanager
def open_package(
    zip_path: Path, limits: PackageLimits = PackageLimits()
) -> Iterator[zipfile.ZipFile]:
    """Open a package ZIP, turning every archive-level failure into ``INVALID_MANIFEST``.

    The entry count and the central directory's size are judged from the end records
    (:func:`judge_central_directory`) before ``zipfile``
    parses the directory, so a hostile archive costs neither memory nor time. Blocks on
    file I/O: async callers run it in a worker thread.
    """
    try:
        fh = zip_path.open("rb")
    except FileNotFoundError:
        _invalid(f"archive: {zip_path} does not exist")
    except IsADirectoryError:
        _invalid(f"archive: {zip_path} is a directory")
    with fh:
        try:
            judge_central_directory(
                fh,
                max_entries=limits.max_entries,
                max_directory_bytes=limits.max_central_directory_bytes,
            )
            fh.seek(0)
            zf = zipfile.ZipFile(fh)
        except UpdaterError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
            _invalid(f"archive: not a valid ZIP file ({exc})")
        with zf:
            try:
                yield zf
            except UpdaterError:
                raise
            except (
                zipfile.BadZipFile,
                zipfile.LargeZipFile,
                zlib.error,
                EOFError,
                NotImplementedError,
                RuntimeError,
                ValueError,
                UnicodeDecodeError,
                KeyError,
            ) as exc:
                _invalid(f"archive: corrupt or unsupported ZIP ({type(exc).__name__}: {exc})")
