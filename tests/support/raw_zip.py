"""A tiny raw ZIP writer for archives ``zipfile`` will not write: millions of entries,
lying end records, ZIP64 end records on small archives.

Every entry is *stored* (no compression); the first may be a real ``manifest.json``, the
rest are empty files named by a hex counter. The bytes are exactly what the ZIP format
(APPNOTE 4.3) says, so ``zipfile`` itself reads the honest variants back.

Typical use::

    from tests.support.raw_zip import write_raw_zip
    write_raw_zip(tmp_path / "m.zip", 1_000_000, manifest=b'{"version": "1.1.0", ...}')
    write_raw_zip(tmp_path / "lie.zip", 20_000, declared_entries=3)   # end record lies
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

_LOCAL = struct.Struct("<4s5H3L2H")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_DOS_DATE_1980 = (0 << 9) | (1 << 5) | 1
_REGULAR_0644 = 0o100644 << 16


def write_raw_zip(
    path: Path,
    empty_entries: int,
    *,
    manifest: bytes | None = None,
    declared_entries: int | None = None,
    zip64: bool | None = None,
    zip64_record_offset: int | None = None,
) -> Path:
    """Write a stored ZIP of ``manifest.json`` (when given) plus ``empty_entries`` empty files.

    Args:
        path: output file.
        empty_entries: how many empty entries (named ``e/<hex>``) follow the manifest.
        manifest: content of a first ``manifest.json`` entry, or None.
        declared_entries: the entry count the end records state (default: the truth).
        zip64: write the ZIP64 end record and locator (default: only when the count needs
            them, as ``zipfile`` does).
        zip64_record_offset: the offset the ZIP64 locator states (default: the truth).

    Returns:
        ``path``.
    """
    local = bytearray()
    central = bytearray()

    def add(name: bytes, data: bytes) -> None:
        crc = zlib.crc32(data)
        offset = len(local)
        local.extend(
            _LOCAL.pack(
                b"PK\x03\x04", 20, 0, 0, 0, _DOS_DATE_1980, crc, len(data), len(data), len(name), 0
            )
        )
        local.extend(name)
        local.extend(data)
        central.extend(
            _CENTRAL.pack(
                b"PK\x01\x02",
                (3 << 8) | 20,
                20,
                0,
                0,
                0,
                _DOS_DATE_1980,
                crc,
                len(data),
                len(data),
                len(name),
                0,
                0,
                0,
                0,
                _REGULAR_0644,
                offset,
            )
        )
        central.extend(name)

    if manifest is not None:
        add(b"manifest.json", manifest)
    for index in range(empty_entries):
        add(b"e/%x" % index, b"")
    total = empty_entries + (manifest is not None)
    count = total if declared_entries is None else declared_entries
    cd_offset, cd_size = len(local), len(central)
    use_zip64 = count > 0xFFFE if zip64 is None else zip64
    with path.open("wb") as fh:
        fh.write(local)
        fh.write(central)
        if use_zip64:
            record_at = cd_offset + cd_size
            fh.write(
                _ZIP64_EOCD.pack(
                    b"PK\x06\x06",
                    _ZIP64_EOCD.size - 12,
                    45,
                    45,
                    0,
                    0,
                    count,
                    count,
                    cd_size,
                    cd_offset,
                )
            )
            located = record_at if zip64_record_offset is None else zip64_record_offset
            fh.write(_ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, located, 1))
        short_count = min(count, 0xFFFF) if not use_zip64 else 0xFFFF
        fh.write(_EOCD.pack(b"PK\x05\x06", 0, 0, short_count, short_count, cd_size, cd_offset, 0))
    return path
