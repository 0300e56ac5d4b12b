"""Strict, hostile-input-proof reader for update packages (contract §3).

A package is a ZIP with ``manifest.json`` at its root. :func:`read_package` checks the
archive's structure (entry names, types, sizes, compression ratios), parses the manifest
with the strict converter (:mod:`updater_fsm.strict_converter`) into
:class:`~updater_fsm.core.manifest.Manifest` and validates every field; it only reads.
:func:`extract_module` streams one module's file out of the ZIP into a destination, counting
bytes and verifying size/md5/sha256 as it goes.

Every rejection is ``UpdaterError(INVALID_MANIFEST, "<field path>: <reason>")`` (or
``VERSION_MISMATCH``), never another exception type, so callers need one ``except``.

Policy decisions (documented here because packages in the field rely on them):

* Unknown keys at the top level, in a module or in ``health`` are *tolerated* and logged
  (``manifest_unknown_keys``): newer builders may add fields, older agents must still
  install their packages. Known keys are typed strictly: ``"10"`` is not an int, ``1`` is
  not a string, ``true`` is not an int, ``null`` is only accepted for optional fields.
* ``dest`` is an alias of ``dst``; giving both with different values is an error.
* A UTF-8 byte-order mark at the start of ``manifest.json`` is skipped (Windows editors);
  any other non-UTF-8 byte, duplicate JSON keys, ``NaN``/``Infinity`` are rejected.
* Mode bits from the ZIP are kept for user/group/other read and execute, owner write and
  group write; setuid, setgid, sticky and world-write are always dropped, and the owner can
  always read. Entries without Unix mode bits get ``0644``.
* Compression ratio is only checked for entries (and archives) larger than
  ``PackageLimits.ratio_min_bytes``: small, highly compressible files (zero-padded tables)
  are legitimate and cannot do harm; the total-size limit still bounds them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import posixpath
import re
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any, NoReturn

import attrs
import cattrs
import structlog

from updater_fsm.core.errors import ErrorCode, UpdaterError, code_for_os_error
from updater_fsm.core.manifest import UPDATER_ARCHS, DeltaKind, Manifest, Module, UpdaterBundle
from updater_fsm.core.versions import InvalidVersion, Version
from updater_fsm.ops.delta import ZstdDict, apply_patch, write_all
from updater_fsm.ops.zip_bounds import judge_central_directory
from updater_fsm.strict_converter import STRICT_CONVERTER, ValueRefused, json_type_name

log = structlog.get_logger(__name__)

MANIFEST_NAME = "manifest.json"
_MD5_RE = re.compile(r"^[0-9a-fA-F]{32}$")
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
# systemd unit names: letters, digits and ":-_.\@"; must not start with "-" (would be an option).
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.\\@][A-Za-z0-9:_.\\@-]{0,254}$")
_MODULE_KEYS = frozenset(
    {"name", "src", "dst", "dest", "process_name", "restart_order", "md5", "sha256", "size"}
    | {"post_cmds", "health", "delta", "base_sha256", "base"}
)
_TOP_KEYS = frozenset({"version", "modules", "base_version", "removed", "updater"})
_HEALTH_KEYS = frozenset({"http", "command", "timeout_s"})
_KEEP_MODE_BITS = 0o775  # drop setuid/setgid/sticky (not in 0o777) and world-write
_DEFAULT_MODE = 0o644
# Smallest possible local file header (30 bytes); used to detect overlapping entries.
_LOCAL_HEADER_MIN = 30


@attrs.frozen
class PackageLimits:
    """Bounds that keep a hostile package from exhausting memory, disk or time.

    Attributes:
        max_manifest_bytes: largest accepted ``manifest.json``.
        max_entries: most entries (files and directories) in the archive; judged from the
            end-of-central-directory record and the record headers before ``zipfile``
            parses anything (:mod:`updater_fsm.ops.zip_bounds`).
        max_central_directory_bytes: largest central directory, in bytes (``zipfile``
            reads it whole into memory): 10 000 entries averaging 838 bytes of header and
            name, where a real package needs about 100 per entry.
        max_total_uncompressed: largest sum of declared uncompressed sizes.
        max_ratio: largest uncompressed/compressed ratio, per entry and for the archive.
        ratio_min_bytes: entries (and archives) smaller than this skip the ratio check.
        max_name_length: longest accepted entry name / path string, in characters.
        max_modules: most modules in a manifest.
        chunk_size: read size while extracting.
        max_patch_bytes: largest base file and largest result of a ``patched`` module of a
            delta package. Applying a patch holds the base file (the zstd dictionary) and,
            at most, a decoding window in memory; this bounds both (docs/PACKAGE_FORMAT.md
            §7). The builder ships larger files in full.
        patch_window_log_max: largest zstd window (log2 bytes) a patch may declare; a
            frame asking for more is refused instead of allocated.
    """

    max_manifest_bytes: int = 1 << 20
    max_entries: int = 10_000
    max_central_directory_bytes: int = 8 << 20
    max_total_uncompressed: int = 2 << 30
    max_ratio: float = 200.0
    ratio_min_bytes: int = 1 << 20
    max_name_length: int = 1024
    max_modules: int = 10_000
    chunk_size: int = 1 << 20
    max_patch_bytes: int = 16 << 20
    patch_window_log_max: int = 25


def _invalid(detail: str) -> NoReturn:
    raise UpdaterError(ErrorCode.INVALID_MANIFEST, detail)


# --------------------------------------------------------------------------- structuring


def _format_exc(exc: BaseException, _type: object) -> str:
    if isinstance(exc, ValueRefused):
        return str(exc)
    if isinstance(exc, KeyError):
        return "required field missing"
    return "invalid value"


def _structure_module(value: object, where: str) -> Module:
    try:
        return STRICT_CONVERTER.structure(value, Module)
    except ValueRefused as exc:  # raised by the top-level "must be an object" check
        _invalid(f"{where}: {exc}")
    except Exception as exc:  # cattrs wraps hook errors in (nested) exception groups
        messages = cattrs.transform_error(exc, path=where, format_exception=_format_exc)
        first = messages[0] if messages else "invalid value @ " + where
        reason, _, path = first.rpartition(" @ ")
        _invalid(f"{path}: {reason}")


def _structure_manifest(version: str, doc: dict[str, Any]) -> Manifest:
    """Build the Manifest; the version was checked by the caller, the rest is typed here."""
    modules = doc.get("modules")
    if not isinstance(modules, list):
        _invalid(f"modules: must be an array of objects, got {json_type_name(modules)}")
    base_version = doc.get("base_version")
    if base_version is not None:
        try:
            Version.parse(base_version)
        except InvalidVersion as exc:
            _invalid(f"base_version: {exc}")
        if base_version == version:
            _invalid(f"base_version: a delta from {version} to itself")
    removed = doc.get("removed")
    if removed is not None and base_version is None:
        _invalid("removed: only a delta package (with base_version) removes files")
    try:
        removed_paths = STRICT_CONVERTER.structure(removed or [], tuple[str, ...])
    except ValueRefused as exc:
        _invalid(f"removed: {exc}")
    updater = doc.get("updater")
    return Manifest(
        version=version,
        modules=tuple(_structure_module(m, f"modules[{i}]") for i, m in enumerate(modules)),
        base_version=base_version,
        removed=removed_paths,
        updater=None if updater is None else _structure_updater(updater),
    )


def _structure_updater(value: object) -> UpdaterBundle:
    try:
        return STRICT_CONVERTER.structure(value, UpdaterBundle)
    except ValueRefused as exc:
        _invalid(f"updater: {exc}")
    except Exception as exc:
        messages = cattrs.transform_error(exc, path="updater", format_exception=_format_exc)
        first = messages[0] if messages else "invalid value @ updater"
        reason, _, path = first.rpartition(" @ ")
        _invalid(f"{path}: {reason}")


def _validate_updater(
    bundle: UpdaterBundle,
    files: dict[str, zipfile.ZipInfo],
    limits: PackageLimits,
    check_arch: bool,
) -> None:
    """The path, size and digest rules of modules, plus a version and a known arch; a
    bundle for another architecture than this machine's is ``UPDATER_ARCH_MISMATCH``."""
    problem = _entry_name_problem(bundle.src, limits)
    if problem:
        _invalid(f"updater.src: {problem}")
    info = files.get(bundle.src)
    if info is None:
        _invalid(f"updater.src: {bundle.src!r} is not in the archive")
    if bundle.size != info.file_size:
        _invalid(f"updater.size: manifest says {bundle.size} bytes, entry holds {info.file_size}")
    if not _SHA256_RE.match(bundle.sha256):
        _invalid("updater.sha256: must be 64 hex characters")
    try:
        Version.parse(bundle.version)
    except InvalidVersion as exc:
        _invalid(f"updater.version: {exc}")
    if bundle.arch not in UPDATER_ARCHS:
        _invalid(f"updater.arch: must be one of {', '.join(UPDATER_ARCHS)}")
    machine = platform.machine()
    if check_arch and bundle.arch != machine:
        raise UpdaterError(
            ErrorCode.UPDATER_ARCH_MISMATCH,
            f"the package's updater {bundle.version} is built for {bundle.arch}, this device"
            f" is {machine}: use tope-updater-{bundle.version}-{machine}.tar.gz",
        )


# --------------------------------------------------------------------------- paths


def _bad_chars(text: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


def _entry_name_problem(name: str, limits: PackageLimits) -> str | None:
    """Why a ZIP entry name (or ``src``) is unsafe, or None when it is fine."""
    if not name:
        return "empty name"
    if len(name) > limits.max_name_length:
        return "name too long"
    if _bad_chars(name):
        return "control character in name"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    parts = re.split(r"[/\\]", name.rstrip("/"))
    if any(part == ".." for part in parts):
        return "contains '..'"
    return None


def dst_relative_to(dst: str, root: Path) -> PurePosixPath | None:
    """Return ``dst`` relative to ``root`` when it lies strictly inside it, else None.

    Both are compared lexically after normalisation (``dst`` is validated to contain no
    ``..`` before this is used); ``root`` itself is not "inside".
    """
    norm = PurePosixPath(posixpath.normpath(dst))
    base = PurePosixPath(posixpath.normpath(str(root)))
    if norm == base or not norm.is_relative_to(base):
        return None
    return norm.relative_to(base)


def is_internal(module: Module, root: Path) -> bool:
    """Whether ``module.dst`` lands inside the snapshot (under ``root``) rather than outside."""
    return dst_relative_to(module.dst, root) is not None


def internal_modules(manifest: Manifest, root: Path) -> tuple[Module, ...]:
    """Modules whose ``dst`` is under the install root (they go into the new snapshot)."""
    return tuple(m for m in manifest.modules if is_internal(m, root))


def external_modules(manifest: Manifest, root: Path) -> tuple[Module, ...]:
    """Modules whose ``dst`` is outside the install root (replaced in place, with backup)."""
    return tuple(m for m in manifest.modules if not is_internal(m, root))


def check_dst(dst: str, root: Path, extra_roots: Sequence[Path]) -> str | None:
    """Why ``dst`` is not an acceptable destination, or None when it is.

    Acceptable: an absolute path without ``..`` strictly inside ``root`` but not inside
    ``root/versions``, or strictly inside one of ``extra_roots``.
    """
    if not dst.startswith("/"):
        return "must be an absolute path"
    if "\x00" in dst or _bad_chars(dst):
        return "control character in path"
    if any(part == ".." for part in dst.split("/")):
        return "must not contain '..'"
    if dst.endswith("/") or posixpath.normpath(dst) == "/":
        return "must name a file, not a directory"
    rel = dst_relative_to(dst, root)
    if rel is not None:
        if rel.parts[0] == "versions":
            return f"must not be under {root}/versions (the snapshot store)"
        return None
    if any(dst_relative_to(dst, extra) is not None for extra in extra_roots):
        return None
    allowed = ", ".join(str(p) for p in (root, *extra_roots))
    return f"{dst} is outside the install root and the allowed extra roots ({allowed})"


def real_dst_problem(dst: str, extra_roots: Sequence[Path]) -> str | None:
    """Why ``dst`` (lexically under an extra root) would really be written elsewhere.

    :func:`check_dst` judges the text; this judges the disk *now*: the directory ``dst``
    goes into is resolved through every symlink that exists (dangling ones included: a
    directory created there would land at their target; components that do not exist yet
    are taken as they are, they will be created as plain directories) and must stay inside
    the real path of one of ``extra_roots``. ``dst`` itself may be a symlink: it is
    replaced, never followed. Run at staging (before any service is stopped) and again at
    the switch (the links may have changed meanwhile).

    Returns:
        None when acceptable, else ``"<dir> resolves to <real>, outside the extra roots
        (<roots>)"``.
    """
    real_roots = [Path(os.path.realpath(root)) for root in extra_roots]
    parent = Path(dst).parent
    real = Path(os.path.realpath(parent))
    if any(real == root or real.is_relative_to(root) for root in real_roots):
        return None
    allowed = ", ".join(str(root) for root in extra_roots)
    return f"{parent} resolves to {real}, outside the extra roots ({allowed})"


# --------------------------------------------------------------------------- archive


def _unix_mode(info: zipfile.ZipInfo) -> int:
    """The full Unix ``st_mode`` stored in an entry (0 when the builder stored none)."""
    return (info.external_attr >> 16) & 0xFFFF


def entry_mode(info: zipfile.ZipInfo) -> int:
    """The permission bits a file extracted from ``info`` gets (see module docstring)."""
    mode = _unix_mode(info)
    if not mode:
        return _DEFAULT_MODE
    return (mode & _KEEP_MODE_BITS) | stat.S_IRUSR


def _check_entries(
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
        problem = _entry_name_problem(name, limits)
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
    (:func:`~updater_fsm.ops.zip_bounds.judge_central_directory`) before ``zipfile``
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


def _read_bounded(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """Read one entry into memory, never more than ``limit`` bytes whatever headers say."""
    with zf.open(info) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        _invalid(f"{MANIFEST_NAME}: larger than {limit} bytes")
    return data


# --------------------------------------------------------------------------- manifest


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def parse_manifest_json(raw: bytes) -> dict[str, Any]:
    """Decode ``manifest.json`` bytes into a dict (strict UTF-8 and strict JSON)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        _invalid(f"{MANIFEST_NAME}: not valid UTF-8 (byte {exc.start})")
    text = text.removeprefix("\ufeff")
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_reject_duplicate_keys,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError) as exc:
        _invalid(f"{MANIFEST_NAME}: malformed JSON ({str(exc)[:200]})")
    if not isinstance(doc, dict):
        _invalid(f"manifest: must be a JSON object, got {json_type_name(doc)}")
    return doc


def _known(doc: dict[str, Any], keys: frozenset[str], where: str) -> dict[str, Any]:
    """``doc`` without the keys this agent does not know, which are logged (tolerated, see
    the module docstring) so that the strict converter, which refuses them, never sees them."""
    unknown = sorted(set(doc) - keys)
    if unknown:
        log.warning("manifest_unknown_keys", where=where, keys=unknown)
    return {key: value for key, value in doc.items() if key in keys}


def _normalise(doc: dict[str, Any]) -> dict[str, Any]:
    """The manifest's own notations, undone before strict structuring: unknown keys are
    dropped (and logged), ``dest`` becomes ``dst``."""
    doc = _known(doc, _TOP_KEYS, "manifest")
    modules = doc.get("modules")
    if not isinstance(modules, list):
        return doc
    out = []
    for index, mod in enumerate(modules):
        if not isinstance(mod, dict):
            out.append(mod)
            continue
        mod = _known(mod, _MODULE_KEYS, f"modules[{index}]")
        if "dest" in mod:
            dest = mod.pop("dest")
            if "dst" in mod and mod["dst"] != dest:
                _invalid(f"modules[{index}].dest: differs from dst (give one of them)")
            mod.setdefault("dst", dest)
        if isinstance(mod.get("health"), dict):
            mod["health"] = _known(mod["health"], _HEALTH_KEYS, f"modules[{index}].health")
        out.append(mod)
    return {**doc, "modules": out}


def _validate_module(
    index: int,
    module: Module,
    files: dict[str, zipfile.ZipInfo],
    dirs: set[str],
    root: Path,
    extra_roots: Sequence[Path],
    limits: PackageLimits,
    is_delta: bool,
) -> None:
    at = f"modules[{index}]"
    if not module.name.strip() or _bad_chars(module.name) or len(module.name) > 255:
        _invalid(f"{at}.name: must be 1-255 printable characters")
    if module.src is not None:
        problem = _entry_name_problem(module.src, limits)
        if problem:
            _invalid(f"{at}.src: {problem}")
        if module.src not in files:
            if module.src.rstrip("/") in dirs:
                _invalid(f"{at}.src: {module.src!r} is a directory, not a file")
            _invalid(f"{at}.src: {module.src!r} is not in the archive")
    if len(module.dst) > limits.max_name_length:
        _invalid(f"{at}.dst: path too long")
    problem = check_dst(module.dst, root, extra_roots)
    if problem:
        _invalid(f"{at}.dst: {problem}")
    _validate_delta_fields(at, module, root, is_delta, limits)
    if module.process_name is not None and not _UNIT_RE.match(module.process_name):
        _invalid(f"{at}.process_name: not a valid systemd unit name")
    if module.process_name is None:
        # post_cmds and probes run per unit; a module without one would lose them silently.
        for field, given in (("post_cmds", bool(module.post_cmds)), ("health", module.health)):
            if given:
                _invalid(
                    f"{at}.{field}: module {module.name!r} has no process_name; {field} run"
                    " for the module's unit (set process_name or remove them)"
                )
    if module.md5 is not None and not _MD5_RE.match(module.md5):
        _invalid(f"{at}.md5: must be 32 hex characters")
    if module.sha256 is not None and not _SHA256_RE.match(module.sha256):
        _invalid(f"{at}.sha256: must be 64 hex characters")
    if module.size is not None and module.size < 0:
        _invalid(f"{at}.size: must not be negative")
    if module.size is not None and module.kind is DeltaKind.ADDED:
        info = files[module.src or ""]
        if module.size != info.file_size:
            _invalid(
                f"{at}.size: manifest says {module.size} bytes,"
                f" archive entry holds {info.file_size}"
            )
    if not -1_000_000 <= module.restart_order <= 1_000_000:
        _invalid(f"{at}.restart_order: out of range")
    for i, cmd in enumerate(module.post_cmds):
        if not cmd.strip() or "\x00" in cmd:
            _invalid(f"{at}.post_cmds[{i}]: must be a non-empty command line")


def _validate_delta_fields(
    at: str, module: Module, root: Path, is_delta: bool, limits: PackageLimits
) -> None:
    """The rules of a module's ``delta``, ``base_sha256`` and (per kind) ``src``."""
    kind = module.kind
    if not is_delta:
        for field in ("delta", "base_sha256", "base"):
            if getattr(module, field) is not None:
                _invalid(f"{at}.{field}: only a delta package (with base_version) has one")
    if module.base is not None:
        if kind is not DeltaKind.PATCHED:
            _invalid(f"{at}.base: only a patched file has a base path")
        if len(module.base) > limits.max_name_length:
            _invalid(f"{at}.base: path too long")
        problem = check_dst(module.base, root, ())
        if problem:
            _invalid(f"{at}.base: {problem}")
    if kind is not DeltaKind.ADDED and not is_internal(module, root):
        _invalid(f"{at}.delta: a {kind} file must be under the install root ({root})")
    if kind is DeltaKind.KEPT:
        if module.src is not None:
            _invalid(f"{at}.src: a kept file comes from the base, it has no src")
        if module.sha256 is None:
            _invalid(f"{at}.sha256: required for a kept file (the base file's digest)")
        if module.base_sha256 is not None and module.base_sha256.lower() != module.sha256.lower():
            _invalid(f"{at}.base_sha256: a kept file's must equal its sha256")
        return
    if module.src is None:
        _invalid(f"{at}.src: required field missing")
    if kind is DeltaKind.ADDED:
        if module.base_sha256 is not None:
            _invalid(f"{at}.base_sha256: an added file has no base")
        return
    for field, value in (("base_sha256", module.base_sha256), ("sha256", module.sha256)):
        if value is None:
            _invalid(f"{at}.{field}: required for a patched file")
        if not _SHA256_RE.match(value):
            _invalid(f"{at}.{field}: must be 64 hex characters")
    if module.size is None:
        _invalid(f"{at}.size: required for a patched file (the result's size)")
    if module.size > limits.max_patch_bytes:
        _invalid(
            f"{at}.size: a patched file of {module.size} bytes exceeds the limit of"
            f" {limits.max_patch_bytes} (ship it in full)"
        )


def _check_removed(manifest: Manifest, root: Path, dsts: dict[str, int]) -> None:
    seen: set[str] = set()
    for i, path in enumerate(manifest.removed):
        problem = check_dst(path, root, ())
        if problem:
            _invalid(f"removed[{i}]: {problem}")
        norm = posixpath.normpath(path)
        if norm in dsts:
            _invalid(f"removed[{i}]: {path} is also the dst of modules[{dsts[norm]}]")
        if norm in seen:
            _invalid(f"removed[{i}]: {path} is listed twice")
        seen.add(norm)


def read_package(
    zip_path: Path,
    *,
    expected_version: str,
    root: Path,
    extra_roots: Sequence[Path] = (),
    limits: PackageLimits = PackageLimits(),
    check_updater_arch: bool = True,
) -> Manifest:
    """Validate a package ZIP and return its manifest. Reads only; writes nothing.

    Args:
        zip_path: the downloaded, digest-verified package.
        expected_version: the version the install request names (``VERSION_MISMATCH``
            when the manifest says otherwise).
        root: the install root (``/opt/tope``); ``dst`` under it goes into the snapshot.
        extra_roots: directories outside ``root`` where a ``dst`` may also point.
        limits: archive and manifest bounds.
        check_updater_arch: an updater bundle for another architecture than this machine's
            is ``UPDATER_ARCH_MISMATCH`` (off for the builder, which builds for devices).

    Raises:
        UpdaterError: ``INVALID_MANIFEST`` naming the offending field or entry,
            ``VERSION_MISMATCH`` or ``UPDATER_ARCH_MISMATCH``.
    """
    with open_package(zip_path, limits) as zf:
        files, dirs = _check_entries(zf, limits)
        info = files.get(MANIFEST_NAME)
        if info is None:
            _invalid(f"{MANIFEST_NAME}: missing at the archive root")
        if info.file_size > limits.max_manifest_bytes:
            _invalid(f"{MANIFEST_NAME}: larger than {limits.max_manifest_bytes} bytes")
        doc = _normalise(parse_manifest_json(_read_bounded(zf, info, limits.max_manifest_bytes)))
    version = doc.get("version")
    try:
        Version.parse(version)
    except InvalidVersion as exc:
        _invalid(f"version: {exc}")
    if version != expected_version:
        raise UpdaterError(
            ErrorCode.VERSION_MISMATCH,
            f"package is {version}, requested {expected_version}",
        )
    modules = doc.get("modules")
    if isinstance(modules, list) and not modules:
        _invalid("modules: at least one module is required")
    if isinstance(modules, list) and len(modules) > limits.max_modules:
        _invalid(f"modules: {len(modules)} modules, limit is {limits.max_modules}")
    manifest = _structure_manifest(version, doc)
    names: dict[str, int] = {}
    dsts: dict[str, int] = {}
    for index, module in enumerate(manifest.modules):
        _validate_module(index, module, files, dirs, root, extra_roots, limits, manifest.is_delta)
        if module.name in names:
            _invalid(f"modules[{index}].name: duplicate of modules[{names[module.name]}]")
        names[module.name] = index
        dst = posixpath.normpath(module.dst)
        if dst in dsts:
            _invalid(f"modules[{index}].dst: same destination as modules[{dsts[dst]}]")
        dsts[dst] = index
    _check_nested_dsts(dsts)
    _check_removed(manifest, root, dsts)
    if manifest.updater is not None:
        _validate_updater(manifest.updater, files, limits, check_updater_arch)
        used = {m.src for m in manifest.modules}
        if manifest.updater.src in used:
            _invalid("updater.src: also the src of a module")
    return manifest


def _check_nested_dsts(dsts: dict[str, int]) -> None:
    """A file cannot also be a parent directory of another module's file."""
    for dst, index in dsts.items():
        parent = posixpath.dirname(dst)
        while parent not in ("/", ""):
            if parent in dsts:
                _invalid(
                    f"modules[{index}].dst: its parent {parent} is the file of"
                    f" modules[{dsts[parent]}]"
                )
            parent = posixpath.dirname(parent)


# --------------------------------------------------------------------------- extraction


def module_label(manifest: Manifest | None, module: Module) -> str:
    """``"modules[1] (web-server)"`` when the index is known, else ``"module web-server"``."""
    if manifest is not None:
        for index, candidate in enumerate(manifest.modules):
            if candidate is module:
                return f"modules[{index}] ({module.name})"
    return f"module {module.name}"


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
    the mode from the ZIP (:func:`entry_mode`), fsyncs and renames over ``dest_file``. A
    symlink at ``dest_file`` is replaced, never followed. The directory is *not* fsynced
    (callers batch that). On any failure the temporary file is removed.

    Args:
        zf: the open package (see :func:`open_package`).
        module: a module of a manifest returned by :func:`read_package`.
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
        raise os_error(exc, f"{what}: cannot write {dest_file}") from exc
    return written


def patch_module(
    zf: zipfile.ZipFile,
    module: Module,
    base: bytes | ZstdDict | None,
    dest_file: Path,
    *,
    label: str | None = None,
    limits: PackageLimits = PackageLimits(),
) -> int:
    """Write a ``patched`` module's result to ``dest_file``: ``base`` + its zstd patch.

    Like :func:`extract_module` (temporary sibling, verified, mode from the ZIP entry,
    fsynced, renamed over ``dest_file``), but the bytes come from decoding ``module.src``
    with ``base`` as the prefix dictionary (:func:`updater_fsm.ops.delta.apply_patch`),
    bounded by the declared ``size``. The caller has checked ``base`` against
    ``module.base_sha256`` (and may pass it as :func:`~updater_fsm.ops.delta.prefix_dict`,
    so that only one copy of it is in memory).

    Raises:
        UpdaterError: ``INVALID_MANIFEST`` for a corrupt, oversized or mismatching patch;
            ``DISK_FULL`` when the disk fills up.
    """
    what = label or f"module {module.name}"
    if module.src is None or module.kind is not DeltaKind.PATCHED or module.size is None:
        _invalid(f"{what}: not a patched file")
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


def os_error(exc: OSError, detail: str) -> UpdaterError:
    """Map an ``OSError`` to ``DISK_FULL`` (ENOSPC/EDQUOT) or ``DEPLOYMENT_FAILED``."""
    if code_for_os_error(exc.errno, ErrorCode.DEPLOYMENT_FAILED) is ErrorCode.DISK_FULL:
        return UpdaterError(ErrorCode.DISK_FULL, f"{detail}: {exc.strerror}", retryable=True)
    return UpdaterError(ErrorCode.DEPLOYMENT_FAILED, f"{detail}: {exc}")


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
