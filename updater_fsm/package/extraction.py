"""A module's file (or the package's updater bundle) written out of the package, verified.

:func:`extract_module` streams an added file out of the ZIP; :func:`write_module` also
writes a delta's patched file (its base, re-read and checked, plus the patch:
:mod:`updater_fsm.package.delta`). Either way the bytes go to a temporary sibling
(``O_EXCL | O_NOFOLLOW``), are counted (never more than declared), checked against the
manifest's size/md5/sha256, get their mode from the ZIP entry
(:func:`~updater_fsm.package.archive.entry_mode`), are fsynced and renamed over the
destination; on any failure the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

from updater_fsm.core.errors import ErrorCode, UpdaterError, error_for_os_error
from updater_fsm.core.manifest import DeltaKind, Module, UpdaterBundle
from updater_fsm.package.archive import entry_mode, open_package
from updater_fsm.package.limits import PackageLimits

if TYPE_CHECKING:
    # zstd (pyzstd, backports.zstd: ~3 MB resident) is imported by the first patched
    # module, not by every updater that never sees a delta package (issue 22).
    from updater_fsm.package.delta import ZstdDict


def _invalid(detail: str) -> NoReturn:
    raise UpdaterError(ErrorCode.INVALID_MANIFEST, detail)


def extract_module(
    zf: zipfile.ZipFile,
    module: Module,
    dest_file: Path,
    *,
    label: str | None = None,
    limits: PackageLimits = PackageLimits(),
) -> int:
    """Stream ``module.src`` into ``dest_file``, verified, durable and atomic.

    Writes a temporary sibling (``O_EXCL | O_NOFOLLOW``), counts bytes (never more than the
    entry's declared size), checks size/md5/sha256 against the manifest when present, sets
    the mode from the ZIP (:func:`~updater_fsm.package.archive.entry_mode`), fsyncs and
    renames over ``dest_file``. A symlink at ``dest_file`` is replaced, never followed. The
    directory is *not* fsynced (callers batch that). On any failure the temporary file is
    removed.

    Args:
        zf: the open package (see :func:`~updater_fsm.package.archive.open_package`).
        module: a module of a manifest returned by
            :func:`~updater_fsm.package.manifest.read_package`.
        dest_file: where the file goes; its parent directory must exist.
        label: how errors name the module, e.g. ``"modules[1] (web-server)"``.
        limits: ``chunk_size`` is used.

    Returns:
        The number of bytes written.

    Raises:
        UpdaterError: ``INVALID_MANIFEST`` on a size/digest mismatch or a corrupt entry;
            ``DISK_FULL`` when the disk fills up.
    """
    what = label or f"module {module.name}"
    if module.src is None or module.kind is not DeltaKind.ADDED:
        _invalid(f"{what}: a {module.kind} file is not extracted")
    info = _entry_info(zf, module.src, what)
    declared = info.file_size
    return _write_entry(
        zf,
        info,
        module,
        dest_file,
        what,
        lambda src, fd, md5, sha: _copy_counted(
            src, fd, declared, md5, sha, what, limits.chunk_size
        ),
    )


def _entry_info(zf: zipfile.ZipFile, src: str, what: str) -> zipfile.ZipInfo:
    try:
        return zf.getinfo(src)
    except KeyError:
        _invalid(f"{what}: {src!r} is not in the archive")


def _write_entry(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    module: Module,
    dest_file: Path,
    what: str,
    fill: Callable[[IO[bytes], int, Any, Any], int],
) -> int:
    """Write ``dest_file`` from the entry ``info`` through ``fill``, verified and atomic.

    ``fill(src, fd, md5, sha)`` writes the file's bytes to ``fd`` (feeding both hashes) and
    returns how many it wrote. The rest is shared by plain and patched files: a temporary
    sibling (``O_EXCL | O_NOFOLLOW``), the mode from the ZIP entry, fsync, the manifest's
    size/digest check, the rename, and removing the temporary file on any failure.
    """
    mode = entry_mode(info)
    tmp = dest_file.with_name(f".{dest_file.name}.extract-tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    md5 = hashlib.md5(usedforsecurity=False)
    sha = hashlib.sha256()
    written = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with zf.open(info) as src:
                written = fill(src, fd, md5, sha)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        _verify_digests(module, what, written, md5.hexdigest(), sha.hexdigest())
        os.replace(tmp, dest_file)
    except UpdaterError:
        _remove_quietly(tmp)
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        _remove_quietly(tmp)
        _invalid(f"{what}: corrupt archive entry {module.src!r} ({exc})")
    except OSError as exc:
        _remove_quietly(tmp)
        raise error_for_os_error(
            exc, f"{what}: cannot write {dest_file}", ErrorCode.DEPLOYMENT_FAILED
        ) from exc
    return written


def write_module(
    zf: zipfile.ZipFile,
    module: Module,
    dest_file: Path,
    *,
    base_file: Path | None = None,
    label: str | None = None,
    limits: PackageLimits = PackageLimits(),
) -> int:
    """Write an added module's file (:func:`extract_module`) or a patched one's result.

    A ``patched`` module's result is ``base_file`` + its zstd patch: the base is read again
    (bounded by ``max_patch_bytes``, never through a symlink) and checked against
    ``module.base_sha256`` (this is the copy the patch is applied to), then ``module.src``
    is decoded with it as the prefix dictionary
    (:func:`updater_fsm.package.delta.apply_patch`), bounded by the declared ``size``; the
    rest is as :func:`extract_module` (temporary sibling, verified, mode from the ZIP entry,
    fsynced, renamed over ``dest_file``). Only one copy of the base is held in memory.

    Args:
        zf: the open package (see :func:`~updater_fsm.package.archive.open_package`).
        module: an added or patched module of a manifest the reader accepted.
        dest_file: where the file goes; its parent directory must exist.
        base_file: a patched module's base (the caller checked its digest once already).
        label: how errors name the module, e.g. ``"modules[1] (web-server)"``.
        limits: ``chunk_size``, ``max_patch_bytes`` and ``patch_window_log_max`` are used.

    Returns:
        The number of bytes written.

    Raises:
        UpdaterError: ``DELTA_BASE_MISMATCH`` when the base changed since it was checked;
            ``INVALID_MANIFEST`` for a size/digest mismatch, a corrupt entry or a corrupt,
            oversized or mismatching patch; ``DISK_FULL`` when the disk fills up.
    """
    if module.kind is DeltaKind.ADDED:
        return extract_module(zf, module, dest_file, label=label, limits=limits)
    what = label or f"module {module.name}"
    if module.src is None or module.kind is not DeltaKind.PATCHED or module.size is None:
        _invalid(f"{what}: not a patched file")
    assert base_file is not None and module.base_sha256 is not None
    from updater_fsm.package.delta import prefix_dict, read_base

    found = read_base(base_file, limit=limits.max_patch_bytes)
    if found is None or found[1] != module.base_sha256.lower():
        raise UpdaterError(
            ErrorCode.DELTA_BASE_MISMATCH,
            f"{base_file.name}: changed in the running snapshot while staging",
        )
    zdict = prefix_dict(found[0])
    del found  # the dictionary holds its own copy: keep one base in memory, not two
    return _patch_module(zf, module, zdict, dest_file, what, limits)


def _patch_module(
    zf: zipfile.ZipFile,
    module: Module,
    base: ZstdDict | None,
    dest_file: Path,
    what: str,
    limits: PackageLimits,
) -> int:
    """Write a ``patched`` module's result to ``dest_file``: ``base`` + its zstd patch."""
    from updater_fsm.package.delta import apply_patch, write_all

    assert module.src is not None and module.size is not None
    info = _entry_info(zf, module.src, what)
    size = module.size
    return _write_entry(
        zf,
        info,
        module,
        dest_file,
        what,
        lambda src, fd, md5, sha: apply_patch(
            base,
            src,
            write_all(fd),
            declared=size,
            what=what,
            chunk_size=limits.chunk_size,
            window_log_max=limits.patch_window_log_max,
            digests=(md5, sha),
        ),
    )


def _copy_counted(
    src: IO[bytes], fd: int, declared: int, md5: Any, sha: Any, what: str, chunk: int
) -> int:
    written = 0
    while True:
        # Ask for one byte more than the declared size can still hold, so an entry that
        # inflates beyond its header is caught without writing the excess.
        want = min(chunk, declared - written + 1)
        data = src.read(want)
        if not data:
            break
        written += len(data)
        if written > declared:
            _invalid(f"{what}: entry inflates beyond its declared {declared} bytes")
        md5.update(data)
        sha.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    if written != declared:
        _invalid(f"{what}: entry holds {written} bytes, header declares {declared}")
    return written


def _verify_digests(module: Module, what: str, size: int, md5: str, sha: str) -> None:
    if module.size is not None and module.size != size:
        _invalid(f"{what}: size mismatch: manifest {module.size}, extracted {size}")
    if module.md5 is not None and module.md5.lower() != md5:
        _invalid(f"{what}: md5 mismatch: manifest {module.md5.lower()}, extracted {md5}")
    if module.sha256 is not None and module.sha256.lower() != sha:
        _invalid(f"{what}: sha256 mismatch: manifest {module.sha256.lower()}, extracted {sha}")


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def extract_updater_bundle(
    zip_path: Path, bundle: UpdaterBundle, dest_file: Path, limits: PackageLimits
) -> None:
    """Stream the package's updater bundle into ``dest_file``, its size and SHA-256 checked
    as a module's are (``INVALID_MANIFEST`` on a mismatch)."""
    as_module = Module(
        name="updater", dst=str(dest_file), src=bundle.src, sha256=bundle.sha256, size=bundle.size
    )
    with open_package(zip_path, limits) as zf:
        extract_module(zf, as_module, dest_file, label="updater", limits=limits)
