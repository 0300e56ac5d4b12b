"""Per-file binary patches of delta packages: zstd with the base file as a raw prefix.

A ``patched`` module's ``src`` is one zstd frame made like ``zstd --patch-from=BASE``: the
base file is referenced as a raw-content prefix dictionary, so everything the new file
shares with the old one costs a few bytes. pyzstd (libzstd) does the compression; nothing
here is hand-written compression.

Memory while applying is bounded by :attr:`PackageLimits.max_patch_bytes`
(:func:`apply_patch`): the base file is read whole (it is the dictionary, at most
``max_patch_bytes``), the patch is streamed in ``chunk_size`` pieces, the output is drained
in ``chunk_size`` pieces and never exceeds the declared result size, and the decoder refuses
a frame whose window exceeds ``2**patch_window_log_max`` instead of allocating it. The
decoder's own buffer is at most min(window, frame content size) plus two blocks.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from typing import IO, Any, NoReturn

import pyzstd
from pyzstd import ZstdDict

from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.package.limits import PackageLimits

#: zstd level the builder uses (``--patch-from`` runs are small: the slow levels pay off).
PATCH_LEVEL = 19
_MIN_WINDOW_LOG = 10
#: The shortest base that serves as a zstd prefix dictionary. The binding refuses shorter
#: content (``ZstdDict``: "Zstandard dictionary content too short (must have at least
#: eight bytes)") and libzstd ignores a dictionary that short when it compresses (``zstd
#: --patch-from`` against it writes an ordinary frame), so :func:`prefix_dict` leaves it out.
MIN_PREFIX_BYTES = 8


class PatchError(Exception):
    """zstd cannot make a patch between these two files."""


def _invalid(detail: str) -> NoReturn:
    raise UpdaterError(ErrorCode.INVALID_MANIFEST, detail)


def window_log_for(base_size: int, new_size: int) -> int:
    """The window (log2) a patch needs so the whole base stays referenceable.

    As ``zstd --patch-from`` does: the window covers the larger of the two files.
    """
    return max(_MIN_WINDOW_LOG, max(base_size, new_size, 1).bit_length())


def make_patch(base: bytes, new: bytes, *, level: int = PATCH_LEVEL) -> bytes:
    """One zstd frame that turns ``base`` into ``new`` (``zstd --patch-from`` semantics).

    The frame records the content size, so the device's decoder buffer is at most the
    result's size. A base shorter than :data:`MIN_PREFIX_BYTES` is not referenced.

    Raises:
        PatchError: zstd refused these files (the builder ships such a file in full).
    """
    options: dict[int, int] = {
        pyzstd.CParameter.compressionLevel: level,
        pyzstd.CParameter.windowLog: window_log_for(len(base), len(new)),
        pyzstd.CParameter.enableLongDistanceMatching: 1,
        pyzstd.CParameter.contentSizeFlag: 1,
        pyzstd.CParameter.checksumFlag: 1,
    }
    try:
        zdict = prefix_dict(base)
        if zdict is None:
            return pyzstd.compress(new, options)
        compressor = pyzstd.ZstdCompressor(options, zdict.as_prefix)
        return compressor.compress(new, pyzstd.ZstdCompressor.FLUSH_FRAME)
    except (ValueError, pyzstd.ZstdError) as exc:
        raise PatchError(str(exc)) from exc


__all__ = [
    "MIN_PREFIX_BYTES",
    "PatchError",
    "ZstdDict",
    "apply_patch",
    "make_patch",
    "prefix_dict",
    "read_base",
    "write_all",
]


def prefix_dict(base: bytes) -> ZstdDict | None:
    """The base as a raw-content zstd dictionary (None for a base shorter than
    :data:`MIN_PREFIX_BYTES`, which zstd does not take as one: its frames never refer to it).

    The dictionary holds its own copy: callers drop ``base`` afterwards, so a large base is
    in memory once.
    """
    return pyzstd.ZstdDict(base, is_raw=True) if len(base) >= MIN_PREFIX_BYTES else None


def _decompressor(
    base: bytes | pyzstd.ZstdDict | None, window_log_max: int
) -> pyzstd.ZstdDecompressor:
    options: dict[int, int] = {pyzstd.DParameter.windowLogMax: window_log_max}
    zdict = prefix_dict(base) if isinstance(base, bytes) else base
    if zdict is None:
        return pyzstd.ZstdDecompressor(option=options)
    return pyzstd.ZstdDecompressor(zdict.as_prefix, options)


def apply_patch(
    base: bytes | pyzstd.ZstdDict | None,
    patch: IO[bytes],
    write: Callable[[bytes], None],
    *,
    declared: int,
    what: str,
    chunk_size: int,
    window_log_max: int,
    digests: tuple[Any, ...] = (),
) -> int:
    """Decode ``patch`` against ``base`` and write the result to ``fd``, bounded.

    Args:
        base: the verified base file, or its :func:`prefix_dict` (None: empty base).
        patch: the patch entry, read in ``chunk_size`` pieces.
        write: takes the result, piece by piece, in order.
        declared: the result's declared size; one byte more is refused as soon as it is
            produced ("expands past its declared size"), fewer is refused at the end.
        what: how errors name the module.
        chunk_size: read size of the patch and largest output piece held at once.
        window_log_max: largest window the frame may ask for (else refused).
        digests: hashlib objects updated with every output byte.

    Returns:
        The number of bytes written (= ``declared``).

    Raises:
        UpdaterError: ``INVALID_MANIFEST`` for a corrupt, truncated, oversized or
            over-windowed patch, or trailing data after its frame.
    """
    decoder = _decompressor(base, window_log_max)
    written = 0
    try:
        while not decoder.eof:
            if decoder.needs_input:
                data = patch.read(chunk_size)
                if not data:
                    _invalid(f"{what}: patch ends before its zstd frame does (truncated)")
            else:
                data = b""
            # Ask for one byte more than the declared size can still hold.
            want = min(chunk_size, declared - written + 1)
            out = decoder.decompress(data, max_length=want)
            written += len(out)
            if written > declared:
                _invalid(f"{what}: patch expands beyond the declared {declared} bytes")
            for digest in digests:
                digest.update(out)
            if out:
                write(out)
        if decoder.unused_data or patch.read(1):
            _invalid(f"{what}: data after the patch's zstd frame")
    except pyzstd.ZstdError as exc:
        _invalid(f"{what}: corrupt patch ({exc})")
    if written != declared:
        _invalid(f"{what}: patch gives {written} bytes, the manifest declares {declared}")
    return written


def write_all(fd: int) -> Callable[[bytes], None]:
    """A ``write`` for :func:`apply_patch` that writes everything to ``fd``."""

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    return write


def decode_in_memory(base: bytes, patch: bytes, size: int, limits: PackageLimits) -> bytes:
    """The result of ``patch`` on ``base`` (the builder's proof that a patch is right)."""
    pieces: list[bytes] = []
    apply_patch(
        base,
        io.BytesIO(patch),
        pieces.append,
        declared=size,
        what="patch",
        chunk_size=limits.chunk_size,
        window_log_max=limits.patch_window_log_max,
    )
    return b"".join(pieces)


def read_base(path: os.PathLike[str] | str, *, limit: int) -> tuple[bytes, str] | None:
    """Read a base file (never more than ``limit`` + 1 bytes); return it and its SHA-256.

    Returns None when the file is larger than ``limit`` (it cannot be the base of a patch
    the reader accepted, so the caller reports a mismatch). Symlinks are not followed.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        return None
    return data, hashlib.sha256(data).hexdigest()
