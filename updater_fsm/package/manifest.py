"""``manifest.json`` read from a package, normalised, typed and validated (contract §3).

:func:`read_package` opens the package (:func:`~updater_fsm.package.archive.open_package`),
judges its entries (:func:`~updater_fsm.package.archive.check_entries`), reads the manifest
(bounded), undoes its own notations, structures it with the strict
converter (:mod:`updater_fsm.strict_converter`) into
:class:`~updater_fsm.core.manifest.Manifest` and validates every field against the
archive; it only reads.

Every rejection is ``UpdaterError(INVALID_MANIFEST, "<field path>: <reason>")`` (or
``VERSION_MISMATCH``, ``UPDATER_ARCH_MISMATCH``), never another exception type, so callers
need one ``except``.

Policy decisions (documented here because packages in the field rely on them):

* Unknown keys at the top level, in a module or in ``health`` are *tolerated* and logged
  (``manifest_unknown_keys``): newer builders may add fields, older agents must still
  install their packages. Known keys are typed strictly: ``"10"`` is not an int, ``1`` is
  not a string, ``true`` is not an int, ``null`` is only accepted for optional fields.
* ``dest`` is an alias of ``dst``; giving both with different values is an error.
* A UTF-8 byte-order mark at the start of ``manifest.json`` is skipped (Windows editors);
  any other non-UTF-8 byte, duplicate JSON keys, ``NaN``/``Infinity`` are rejected.
"""

from __future__ import annotations

import json
import platform
import posixpath
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import cattrs
import structlog

from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.core.manifest import UPDATER_ARCHS, DeltaKind, Manifest, Module, UpdaterBundle
from updater_fsm.core.versions import InvalidVersion, Version
from updater_fsm.package.archive import check_entries, entry_name_problem, open_package
from updater_fsm.package.destinations import check_dst, has_control_character, is_internal
from updater_fsm.package.limits import PackageLimits
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
_TOP_KEYS = frozenset({"version", "modules", "base_version", "removed", "updater", "compatible"})
#: Longest device model name (``compatible``).
COMPATIBLE_MAX_LENGTH = 64
_COMPATIBLE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 ._+-]*[A-Za-z0-9._+-])?")
_HEALTH_KEYS = frozenset({"http", "command", "timeout_s"})


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
    compatible = doc.get("compatible")
    if compatible is not None and not is_model_name(compatible):
        _invalid(
            "compatible: must be a device model name (letters, digits, spaces inside,"
            f" . _ + -, at most {COMPATIBLE_MAX_LENGTH}), got {compatible!r:.80}"
        )
    return Manifest(
        version=version,
        modules=tuple(_structure_module(m, f"modules[{i}]") for i, m in enumerate(modules)),
        base_version=base_version,
        removed=removed_paths,
        updater=None if updater is None else _structure_updater(updater),
        compatible=compatible,
    )


def is_model_name(value: object) -> bool:
    """Whether ``value`` is a device model name ``compatible`` may hold."""
    return (
        isinstance(value, str)
        and len(value) <= COMPATIBLE_MAX_LENGTH
        and _COMPATIBLE.fullmatch(value) is not None
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
    problem = entry_name_problem(bundle.src, limits)
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


# --------------------------------------------------------------------------- reading


def _read_bounded(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """Read one entry into memory, never more than ``limit`` bytes whatever headers say."""
    with zf.open(info) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        _invalid(f"{MANIFEST_NAME}: larger than {limit} bytes")
    return data


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


# --------------------------------------------------------------------------- validating


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
    if not module.name.strip() or has_control_character(module.name) or len(module.name) > 255:
        _invalid(f"{at}.name: must be 1-255 printable characters")
    if module.src is not None:
        problem = entry_name_problem(module.src, limits)
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
        files, dirs = check_entries(zf, limits)
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


def peek_version(zip_path: Path, limits: PackageLimits = PackageLimits()) -> str:
    """The version a package's manifest names, read with the same bounds as
    :func:`read_package` but judging nothing else (``tope-updater install FILE`` asks for
    that version; the device judges the whole package when it verifies it).

    Raises:
        UpdaterError: ``INVALID_MANIFEST``: not a package, or no valid version in it.
        OSError: the file cannot be read.
    """
    with open_package(zip_path, limits) as zf:
        info = zf.NameToInfo.get(MANIFEST_NAME)
        if info is None:
            _invalid(f"{MANIFEST_NAME}: missing at the archive root")
        if info.file_size > limits.max_manifest_bytes:
            _invalid(f"{MANIFEST_NAME}: larger than {limits.max_manifest_bytes} bytes")
        doc = parse_manifest_json(_read_bounded(zf, info, limits.max_manifest_bytes))
    version = doc.get("version")
    try:
        Version.parse(version)
    except InvalidVersion as exc:
        _invalid(f"version: {exc}")
    return str(version)


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
