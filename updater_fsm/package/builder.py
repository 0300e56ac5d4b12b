"""Build update packages (the ZIPs :mod:`updater_fsm.package.manifest` reads).

``SRC_DIR`` mirrors the install root: ``SRC/bin/device-api`` becomes a module with
``dst = <root>/bin/device-api``, stored in the ZIP as ``files/bin/device-api`` with its
mode bits. One module per regular file (empty directories are not carried; symlinks and
special files are refused - a package cannot hold them). Each module's ``name`` is its
path relative to ``SRC_DIR``; the manifest lists its size, md5 and sha256.

Service metadata comes from a TOML file (``--modules-config`` or ``SRC/tope-package.toml``,
which is never packaged)::

    [modules."services/device-api/*"]      # fnmatch glob on the relative path; * spans /
    process_name = "device-api"
    restart_order = 1
    post_cmds = ["/opt/tope/versions/current/bin/migrate"]
    health = { http = "http://127.0.0.1:9080/healthz", timeout_s = 5 }

    [modules."bin/printerd"]
    process_name = "printerd"

The first table whose pattern matches a file wins; a pattern that matches no file is an
error (it is almost always a typo). Output is deterministic: sorted entries, fixed
timestamps, ``manifest.json`` first. The finished ZIP is re-read with the device's own
reader, so a package the device would reject is never produced.

Signing: Ed25519 over the *raw* 32-byte SHA-256 digest of the finished ZIP, base64 encoded
(what ``POST /download``'s ``package_signature`` carries).
"""

from __future__ import annotations

import base64
import difflib
import fnmatch
import hashlib
import json
import os
import posixpath
import stat
import tarfile
import tomllib
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from updater_fsm import durable
from updater_fsm.core.errors import UpdaterError
from updater_fsm.core.manifest import DeltaKind, Manifest
from updater_fsm.core.versions import InvalidVersion, Version
from updater_fsm.package import delta as zdelta
from updater_fsm.package.archive import entry_mode, open_package
from updater_fsm.package.destinations import dst_relative_to
from updater_fsm.package.limits import PackageLimits
from updater_fsm.package.manifest import (
    MANIFEST_NAME,
    is_model_name,
    parse_manifest_json,
    read_package,
)

CONFIG_NAME = "tope-package.toml"
PAYLOAD_PREFIX = "files/"
PATCH_PREFIX = "patches/"
PATCH_SUFFIX = ".zst"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_META_KEYS = frozenset({"process_name", "restart_order", "post_cmds", "health"})
_CHUNK = 1 << 20


class BuildError(Exception):
    """The source tree, config, version or key cannot make a valid package."""


@attrs.frozen
class BuildResult:
    """What :func:`build_package` produced.

    Attributes:
        path: the ZIP.
        size: its size in bytes (``package_size``).
        md5: hex md5 of the ZIP (``package_md5``).
        sha256: hex sha256 of the ZIP (``package_sha256``).
        signature: base64 Ed25519 signature of the raw sha256 digest, or None if unsigned.
        manifest: the manifest written into the ZIP.
    """

    path: Path
    size: int
    md5: str
    sha256: str
    signature: str | None
    manifest: Manifest

    def download_request(self, package_url: str) -> dict[str, Any]:
        """The body of ``POST /api/v1.0/download`` for this package served at ``package_url``
        (``package_signature`` only when it is signed)."""
        body: dict[str, Any] = {
            "version": self.manifest.version,
            "package_url": package_url,
            "package_name": self.path.name,
            "package_size": self.size,
            "package_md5": self.md5,
            "package_sha256": self.sha256,
        }
        if self.signature is not None:
            body["package_signature"] = self.signature
        return body


@attrs.frozen
class _File:
    rel: str
    path: Path
    mode: int
    size: int
    md5: str
    sha256: str


def _load_config(path: Path | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BuildError(f"{path}: cannot read modules config ({exc})") from exc
    unknown = set(doc) - {"modules"}
    if unknown:
        raise BuildError(f"{path}: unknown top-level keys {sorted(unknown)}")
    modules = doc.get("modules", {})
    if not isinstance(modules, dict):
        raise BuildError(f"{path}: [modules] must be a table of patterns")
    for pattern, meta in modules.items():
        _check_meta(f"{path}: modules.{pattern!r}", meta)
    return modules


def _check_meta(where: str, meta: object) -> None:
    if not isinstance(meta, dict):
        raise BuildError(f"{where}: must be a table")
    unknown = set(meta) - _META_KEYS
    if unknown:
        raise BuildError(f"{where}: unknown keys {sorted(unknown)}")
    if "process_name" in meta and not isinstance(meta["process_name"], str):
        raise BuildError(f"{where}.process_name: must be a string")
    if "restart_order" in meta and type(meta["restart_order"]) is not int:
        raise BuildError(f"{where}.restart_order: must be an integer")
    cmds = meta.get("post_cmds", [])
    if not isinstance(cmds, list) or not all(isinstance(c, str) for c in cmds):
        raise BuildError(f"{where}.post_cmds: must be a list of strings")
    if "health" in meta and not isinstance(meta["health"], dict):
        raise BuildError(f"{where}.health: must be a table like {{ http = 'http://...' }}")


def _hash_file(path: Path) -> tuple[int, str, str]:
    md5 = hashlib.md5(usedforsecurity=False)
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            size += len(chunk)
            md5.update(chunk)
            sha.update(chunk)
    return size, md5.hexdigest(), sha.hexdigest()


def _scan(src_dir: Path, skip: Path | None) -> list[_File]:
    files = []
    for dirpath, dirnames, filenames in os.walk(src_dir):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]):
            full = Path(dirpath, name)
            if skip is not None and full == skip:
                continue
            rel = full.relative_to(src_dir).as_posix()
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                raise BuildError(f"{rel}: symlinks cannot be packaged (package the file)")
            if not stat.S_ISREG(st.st_mode):
                raise BuildError(f"{rel}: not a regular file")
            if rel.split("/")[0] == "versions":
                raise BuildError(f"{rel}: versions/ is the device's snapshot store")
            size, md5, sha = _hash_file(full)
            files.append(_File(rel, full, stat.S_IMODE(st.st_mode) & 0o775, size, md5, sha))
    return sorted(files, key=lambda f: f.rel)


def _module(file: _File, root: Path, config: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    mod: dict[str, Any] = {
        "name": file.rel,
        "src": PAYLOAD_PREFIX + file.rel,
        "dst": f"{root.as_posix().rstrip('/')}/{file.rel}",
    }
    for pattern, meta in config.items():
        if fnmatch.fnmatchcase(file.rel, pattern):
            mod.update(meta)
            break
    mod.update(size=file.size, md5=file.md5, sha256=file.sha256)
    return mod


def _zinfo(name: str, mode: int, compress: int = zipfile.ZIP_DEFLATED) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
    info.compress_type = compress
    info.create_system = 3  # Unix, so readers honour the mode bits
    info.external_attr = (stat.S_IFREG | mode) << 16
    return info


def _write_zip(
    tmp: Path,
    manifest: dict[str, Any],
    files: list[_File],
    patches: Mapping[str, tuple[bytes, int]] | None = None,
) -> None:
    raw = json.dumps(manifest, indent=2).encode() + b"\n"
    entries = sorted(
        [(PAYLOAD_PREFIX + f.rel, f) for f in files] + [(name, None) for name in (patches or {})],
        key=lambda item: item[0],
    )
    with open(tmp, "wb") as fh:
        with zipfile.ZipFile(fh, "w") as zf:
            zf.writestr(_zinfo(MANIFEST_NAME, 0o644), raw)
            for name, file in entries:
                if file is None:
                    data, mode = (patches or {})[name]
                    # A zstd frame does not deflate: stored, so the reader's ratio check
                    # and the download size are the patch's own.
                    zf.writestr(_zinfo(name, mode, zipfile.ZIP_STORED), data)
                    continue
                info = _zinfo(PAYLOAD_PREFIX + file.rel, file.mode)
                info.file_size = file.size
                with (
                    open(file.path, "rb") as src,
                    zf.open(info, "w", force_zip64=file.size >= zipfile.ZIP64_LIMIT) as out,
                ):
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())


def build_package(
    src_dir: Path,
    *,
    version: str,
    output: Path,
    root: Path = Path("/opt/tope"),
    modules_config: Path | None = None,
    sign_key: Path | None = None,
    delta_from: Path | None = None,
    base_version: str | None = None,
    limits: PackageLimits = PackageLimits(),
    updater_bundle: Path | None = None,
    compatible: str | None = None,
) -> BuildResult:
    """Build, self-check and optionally sign a package from a tree mirroring the root.

    Args:
        src_dir: the tree (``SRC/bin/x`` -> ``<root>/bin/x``).
        version: ``X.Y.Z``.
        output: the ZIP to write (replaced atomically).
        root: the device's install root the ``dst`` paths are built on.
        modules_config: TOML with service metadata (default ``SRC/tope-package.toml``
            when it exists; that file is never packaged).
        sign_key: PEM Ed25519 private key (see :func:`generate_keypair`); the signature is
            also written beside the package (:func:`signature_path`).
        delta_from: build a delta package against this base: the previous release's
            (full) package, or its unpacked tree (then ``base_version`` is required).
            Unchanged files become ``kept``, changed ones ``patched`` (when both sides
            are at most ``limits.max_patch_bytes``, the base is long enough to be a zstd
            dictionary and the patch is smaller than the file and its deflated payload)
            or ``added``; files gone from the base are ``removed``.
        base_version: the base's version (checked against a base package's manifest).
        compatible: the device model the package is for (the manifest's ``compatible``;
            a device naming another model refuses it, ``INCOMPATIBLE_DEVICE``).
        limits: the device's limits (``max_patch_bytes``).
        updater_bundle: a release bundle ``tope-updater-<version>-<arch>.tar.gz``
            (systemd/bundle.py) the package carries as ``updater/<name>``: the device's
            updater switches to it once the device is healthy on ``version``.

    Raises:
        BuildError: bad source tree, config, version, key, or a package the device would
            reject (the reader's message is included).
    """
    try:
        Version.parse(version)
    except InvalidVersion as exc:
        raise BuildError(f"version {exc}") from None
    if not src_dir.is_dir():
        raise BuildError(f"{src_dir} is not a directory")
    default_config = src_dir / CONFIG_NAME
    if modules_config is None and default_config.is_file():
        modules_config = default_config
    config = _load_config(modules_config)
    key = load_private_key(sign_key) if sign_key is not None else None  # fail before building
    files = _scan(src_dir, default_config)
    if not files:
        raise BuildError(f"{src_dir} holds no files to package")
    for pattern in config:
        if not any(fnmatch.fnmatchcase(f.rel, pattern) for f in files):
            raise BuildError(f"modules config pattern {pattern!r} matches no file")
    patches: dict[str, tuple[bytes, int]] = {}
    if delta_from is None:
        manifest: dict[str, Any] = {
            "version": version,
            "modules": [_module(f, root, config) for f in files],
        }
        payload = files
    else:
        base = _load_base(delta_from, base_version, root)
        if base.version == version:
            raise BuildError(f"the base {delta_from} is already v{version}")
        manifest, payload, patches = _delta_manifest(version, files, base, root, config, limits)
    if compatible is not None:
        if not is_model_name(compatible):
            raise BuildError(
                f"--compatible {compatible!r}: a device model name is letters, digits,"
                " spaces inside, . _ + - (at most 64)"
            )
        manifest["compatible"] = compatible
    if updater_bundle is not None:
        entry, data, manifest["updater"] = _updater_entry(updater_bundle)
        patches[entry] = (data, 0o644)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        _write_zip(tmp, manifest, payload, patches)
        parsed = read_package(tmp, expected_version=version, root=root, check_updater_arch=False)
    except UpdaterError as exc:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"the device would reject this package: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, output)
    durable.fsync_dir(output.parent)
    size, md5, sha = _hash_file(output)
    signature = base64.b64encode(key.sign(_sha256_raw(output))).decode("ascii") if key else None
    sidecar = signature_path(output)
    if signature is not None:
        durable.atomic_write_bytes(sidecar, f"{signature}\n".encode("ascii"))
    else:  # a signature of an earlier build would not verify this one
        durable.remove_file(sidecar)
    return BuildResult(output, size, md5, sha, signature, parsed)


def signature_path(package: Path) -> Path:
    """Where a signed package's signature is written beside it: ``PACKAGE.sig``, base64
    (what ``tope-updater install`` and a USB stick's install read)."""
    return package.with_name(package.name + ".sig")


def _updater_entry(bundle: Path) -> tuple[str, bytes, dict[str, Any]]:
    """The ZIP entry name, bytes and manifest ``updater`` value of a release bundle."""
    try:
        data = bundle.read_bytes()
        with tarfile.open(bundle, "r:gz") as tar:
            member = next(
                (m for m in tar.getmembers() if m.name.count("/") == 1
                 and m.name.endswith("/manifest.json")),
                None,
            )  # fmt: skip
            raw = tar.extractfile(member).read() if member is not None else None  # type: ignore[union-attr]
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise BuildError(f"--updater-bundle {bundle}: {exc}") from None
    if raw is None:
        raise BuildError(f"--updater-bundle {bundle}: no manifest.json (not a release bundle)")
    try:
        meta = json.loads(raw)
        info = {"version": str(meta["version"]), "arch": str(meta["arch"])}
    except (ValueError, KeyError, TypeError) as exc:
        raise BuildError(f"--updater-bundle {bundle}: unusable manifest.json ({exc!r})") from None
    entry = f"updater/{bundle.name}"
    digest = hashlib.sha256(data).hexdigest()
    return entry, data, {"src": entry, **info, "sha256": digest, "size": len(data)}


# --------------------------------------------------------------------------- delta


@attrs.frozen
class _BaseFile:
    mode: int
    size: int
    sha256: str
    read: Callable[[], bytes]


@attrs.frozen
class _Base:
    version: str
    dst: str
    files: Mapping[str, _BaseFile]


def _load_base(base: Path, base_version: str | None, root: Path) -> _Base:
    """The base release's files under the root, from its package or its unpacked tree."""
    if base.is_dir():
        if base_version is None:
            raise BuildError(f"{base} is a tree: give its version (--base-version)")
        try:
            Version.parse(base_version)
        except InvalidVersion as exc:
            raise BuildError(f"base version {exc}") from None
        scanned = _scan(base, base / CONFIG_NAME)
        return _Base(
            base_version,
            str(base),
            {f.rel: _BaseFile(f.mode, f.size, f.sha256, f.path.read_bytes) for f in scanned},
        )
    try:
        with open_package(base) as zf:
            doc = parse_manifest_json(zf.read(MANIFEST_NAME))
        found = doc.get("version")
        manifest = read_package(base, expected_version=str(found), root=root)
    except (UpdaterError, KeyError) as exc:
        raise BuildError(f"{base}: not a readable base package ({exc})") from exc
    if manifest.is_delta:
        raise BuildError(f"{base}: a delta package cannot be a base (use the full package)")
    if base_version is not None and base_version != manifest.version:
        raise BuildError(f"{base} is v{manifest.version}, not v{base_version}")
    files: dict[str, _BaseFile] = {}
    with open_package(base) as zf:
        for module in manifest.modules:
            rel = dst_relative_to(module.dst, root)
            if rel is None or module.src is None:
                continue
            info = zf.getinfo(module.src)
            size, sha = info.file_size, module.sha256
            if sha is None:
                sha = hashlib.sha256(zf.read(info)).hexdigest()

            def read(src: str = module.src) -> bytes:
                with open_package(base) as again:
                    return again.read(src)

            files[rel.as_posix()] = _BaseFile(entry_mode(info) & 0o775, size, sha.lower(), read)
    return _Base(manifest.version, str(base), files)


def _delta_manifest(
    version: str,
    files: list[_File],
    base: _Base,
    root: Path,
    config: Mapping[str, dict[str, Any]],
    limits: PackageLimits,
) -> tuple[dict[str, Any], list[_File], dict[str, tuple[bytes, int]]]:
    """The delta manifest, the files shipped in full, and the patch entries.

    Kept and patched modules carry no ``md5`` (their ``sha256`` is required and is what the
    device checks) and kept ones no ``size`` (the file is the base's, already checked): each
    kept module costs its name, dst and one digest. A file with no base at its own path is
    patched from a base file of the same name elsewhere when that beats deflate (a renamed
    directory: ``OctoPrint-1.10.2.dist-info/RECORD`` → ``OctoPrint-1.10.3.dist-info/RECORD``),
    its manifest ``base`` naming that path. Patch entries are named by number
    (``patches/<n>.zst``): a ZIP holds each name twice, and the manifest maps them.
    """
    prefix = root.as_posix().rstrip("/")
    renames = _RenameIndex(base)
    modules: list[dict[str, Any]] = []
    full: list[_File] = []
    patches: dict[str, tuple[bytes, int]] = {}
    for file in files:
        mod = _module(file, root, config)
        old = base.files.get(file.rel)
        if old is not None and old.sha256 == file.sha256 and old.mode == file.mode:
            for key in ("src", "md5", "size"):
                del mod[key]
            mod["delta"] = DeltaKind.KEPT.value
            modules.append(mod)
            continue
        found: tuple[str, bytes] | None = None
        if old is not None:
            patch = _patch_for(file, old, limits)
            found = (file.rel, patch) if patch is not None else None
        else:
            found = _renamed_patch(file, renames, limits)
        if found is None:
            mod["delta"] = DeltaKind.ADDED.value
            full.append(file)
        else:
            base_rel, patch = found
            name = f"{PATCH_PREFIX}{len(patches)}{PATCH_SUFFIX}"
            del mod["md5"]
            mod.update(
                src=name,
                delta=DeltaKind.PATCHED.value,
                base_sha256=base.files[base_rel].sha256,
            )
            if base_rel != file.rel:
                mod["base"] = f"{prefix}/{base_rel}"
            patches[name] = (patch, file.mode)
        modules.append(mod)
    new_rels = {f.rel for f in files}
    removed = [f"{prefix}/{rel}" for rel in sorted(base.files) if rel not in new_rels]
    manifest = {
        "version": version,
        "base_version": base.version,
        "removed": removed,
        "modules": modules,
    }
    return manifest, full, patches


#: How many same-named base files a file without a base at its own path is patched against.
_RENAME_CANDIDATES = 3


class _RenameIndex:
    """Base files by digest and by file name, to patch a file the new release moved."""

    def __init__(self, base: _Base) -> None:
        self.base = base
        self.by_sha: dict[str, str] = {}
        self.by_name: dict[str, list[str]] = {}
        for rel, old in sorted(base.files.items()):
            self.by_sha.setdefault(old.sha256, rel)
            self.by_name.setdefault(posixpath.basename(rel), []).append(rel)

    def candidates(self, file: _File) -> list[str]:
        """Base paths to try, best first: the same content anywhere, else the same file
        name at the most similar paths."""
        same = self.by_sha.get(file.sha256)
        if same is not None:
            return [same]
        named = self.by_name.get(posixpath.basename(file.rel), [])
        ranked = sorted(
            named, key=lambda rel: -difflib.SequenceMatcher(None, rel, file.rel).ratio()
        )
        return ranked[:_RENAME_CANDIDATES]


def _renamed_patch(
    file: _File, renames: _RenameIndex, limits: PackageLimits
) -> tuple[str, bytes] | None:
    """The smallest patch of ``file`` against a moved base file, or None (ship it whole)."""
    best: tuple[str, bytes] | None = None
    for rel in renames.candidates(file):
        patch = _patch_for(file, renames.base.files[rel], limits)
        if patch is not None and (best is None or len(patch) < len(best[1])):
            best = (rel, patch)
    return best


def _deflated_size(data: bytes) -> int:
    """The size of ``data`` as an ``added`` entry's payload (raw deflate, as ``zipfile``)."""
    deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return len(deflate.compress(data)) + len(deflate.flush())


def _patch_for(file: _File, old: _BaseFile, limits: PackageLimits) -> bytes | None:
    """A checked patch from ``old`` to ``file``, or None when shipping it whole is better.

    None (the file is ``added``) when either side is over ``max_patch_bytes``, the base is
    shorter than zstd's smallest dictionary (:data:`~updater_fsm.package.delta.MIN_PREFIX_BYTES`:
    an agent that predates the rule cannot decode against it), zstd refuses the pair, or the
    patch is not smaller than both the file and its deflated form.
    """
    if max(old.size, file.size) > limits.max_patch_bytes:
        return None  # the device holds the base in memory: bounded by max_patch_bytes
    if old.size < zdelta.MIN_PREFIX_BYTES:
        return None  # too short to be a dictionary: a patch would only compress the file
    if zdelta.window_log_for(old.size, file.size) > limits.patch_window_log_max:
        return None
    base = old.read()
    new = file.path.read_bytes()
    if hashlib.sha256(base).hexdigest() != old.sha256 or hashlib.sha256(new).hexdigest() != (
        file.sha256
    ):
        raise BuildError(f"{file.rel}: changed while the delta was being built")
    try:
        patch = zdelta.make_patch(base, new)
    except zdelta.PatchError:
        return None
    if len(patch) >= min(len(new), _deflated_size(new)):
        return None
    # Prove the patch with the device's own decoder before shipping it.
    check = zdelta.decode_in_memory(base, patch, len(new), limits)
    if check != new:
        raise BuildError(f"{file.rel}: the zstd patch does not reproduce the file")
    return patch


# --------------------------------------------------------------------------- signing


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load a PEM (PKCS#8, unencrypted) Ed25519 private key."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise BuildError(f"{path}: cannot load private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise BuildError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load a PEM (SubjectPublicKeyInfo) Ed25519 public key."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise BuildError(f"{path}: cannot load public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise BuildError(f"{path}: not an Ed25519 public key")
    return key


def _sha256_raw(path: Path) -> bytes:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
    return sha.digest()


def sign_file(path: Path, key_path: Path) -> str:
    """Base64 Ed25519 signature over the raw SHA-256 digest of ``path``."""
    key = load_private_key(key_path)
    return base64.b64encode(key.sign(_sha256_raw(path))).decode("ascii")


def verify_file_signature(path: Path, signature_b64: str, public_key: Path) -> bool:
    """Whether ``signature_b64`` is a valid :func:`sign_file` signature of ``path``."""
    key = load_public_key(public_key)
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), _sha256_raw(path))
    except (InvalidSignature, ValueError):
        return False
    return True


def generate_keypair(private_out: Path, public_out: Path) -> None:
    """Write a new Ed25519 key pair as PEM (private 0600, public 0644); never overwrites."""
    for path in (private_out, public_out):
        if path.exists():
            raise BuildError(f"{path} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    durable.atomic_write_bytes(private_out, private, mode=0o600)
    durable.atomic_write_bytes(public_out, public, mode=0o644)
