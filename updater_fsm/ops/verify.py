"""Package verification: size, MD5, SHA-256 and an optional Ed25519 signature.

The download engine already hashes while streaming, so verification normally compares the
digests it returned (no second pass). :func:`hash_file` exists for the cases where that is not
possible (a package found on disk after a restart). Whatever the failure, the package file is
removed durably before the error is raised: a package that failed verification must never be
installed by a later request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import structlog

from updater_fsm import durable
from updater_fsm.core.errors import ErrorCode, UpdaterError

if TYPE_CHECKING:
    # Imported lazily at run time: `cryptography` costs ~8 MB of RSS, and the download
    # process (which imports this module for hash_file) needs it only when signing is on.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

_log = structlog.get_logger(__name__)

_HASH_BUFFER = 1024 * 1024


@attrs.frozen
class Digests:
    """Digests of a file's whole content (lower-case hex) and its size in bytes."""

    md5: str
    sha256: str
    size: int


def _hash_file_sync(path: Path, buffer_size: int) -> Digests:
    md5 = hashlib.md5(usedforsecurity=False)
    sha256 = hashlib.sha256()
    size = 0
    buf = bytearray(buffer_size)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            md5.update(view[:n])
            sha256.update(view[:n])
            size += n
    return Digests(md5=md5.hexdigest(), sha256=sha256.hexdigest(), size=size)


async def hash_file(path: Path, *, buffer_size: int = _HASH_BUFFER) -> Digests:
    """MD5, SHA-256 and size of ``path``, computed in a worker thread with one fixed buffer.

    Args:
        path: the file to hash.
        buffer_size: bytes read per step (memory use is bounded by this).
    """
    return await asyncio.to_thread(_hash_file_sync, path, buffer_size)


def load_public_key(pem_or_raw_b64: str | bytes) -> Ed25519PublicKey:
    """Load an Ed25519 public key from PEM (SubjectPublicKeyInfo) or base64 of the raw 32 bytes.

    Raises:
        ValueError: the text is neither, or the key is not Ed25519.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = pem_or_raw_b64.encode() if isinstance(pem_or_raw_b64, str) else pem_or_raw_b64
    data = data.strip()
    if data.startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"not an Ed25519 public key: {type(key).__name__}")
        return key
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"public key is neither PEM nor base64: {exc}") from exc
    if len(raw) != 32:
        raise ValueError(f"raw Ed25519 public key must be 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def load_trusted_keys(entries: Sequence[str]) -> tuple[Ed25519PublicKey, ...]:
    """The keyring ``trusted_key`` names: each entry a PEM file (an absolute path or a name
    ending ``.pem``), a directory whose ``*.pem`` files are each a key, or a base64 raw key.

    Raises:
        UpdaterError: ``SIGNATURE_INVALID`` naming an entry that cannot be read, a directory
            without any ``.pem``, or a key that is not Ed25519.
    """
    keys: list[Ed25519PublicKey] = []
    for entry in entries:
        path = Path(entry)
        try:
            if entry.startswith("/") and path.is_dir():
                files = sorted(p for p in path.glob("*.pem") if p.is_file())
                if not files:
                    raise ValueError("a directory with no .pem file")
                keys += [load_public_key(file.read_bytes()) for file in files]
            elif entry.startswith("/") or entry.endswith(".pem"):
                keys.append(load_public_key(path.read_bytes()))
            else:
                keys.append(load_public_key(entry))
        except OSError as exc:
            raise UpdaterError(
                ErrorCode.SIGNATURE_INVALID, f"cannot read trusted key {entry}: {exc.strerror}"
            ) from None
        except ValueError as exc:
            raise UpdaterError(ErrorCode.SIGNATURE_INVALID, f"trusted key {entry}: {exc}") from None
    return tuple(keys)


def _reject(path: Path, code: ErrorCode, detail: str) -> UpdaterError:
    """Delete the package durably and build the error to raise."""
    try:
        durable.remove_file(path)
    except OSError as exc:  # the error to report is the verification failure, not this
        _log.warning("verify.remove_failed", path=str(path), error=str(exc))
    _log.warning("verify.rejected", path=str(path), code=code.value, detail=detail)
    return UpdaterError(code, detail)


def verify_digests(
    path: Path,
    digests: Digests,
    *,
    size: int,
    md5: str,
    sha256: str | None,
    signature_b64: str | None,
    trusted_keys: Sequence[Ed25519PublicKey],
) -> None:
    """Check a downloaded package against what the request promised.

    Checks in order: size, MD5 (case-insensitive), SHA-256 if given, then the signature. The
    signature is Ed25519 over the RAW 32-byte SHA-256 digest of the package; it is required
    when ``trusted_keys`` holds any key, and valid when any one of them verifies it (a
    keyring: a release signed by a new key installs while the old key is still trusted).

    Args:
        path: the package file; deleted durably on any failure.
        digests: what was measured (from the download or :func:`hash_file`).
        size: expected size in bytes.
        md5: expected MD5, hex.
        sha256: expected SHA-256, hex, or None if the request gave none.
        signature_b64: base64 signature from the request, or None.
        trusted_keys: the configured signing keys; empty if signatures are not enforced.

    Raises:
        UpdaterError: ``PACKAGE_SIZE_MISMATCH``, ``MD5_MISMATCH``, ``SHA256_MISMATCH``,
            ``SIGNATURE_REQUIRED`` or ``SIGNATURE_INVALID`` (never retryable).
    """
    if digests.size != size:
        raise _reject(
            path,
            ErrorCode.PACKAGE_SIZE_MISMATCH,
            f"expected {size} bytes, got {digests.size} in {path.name}",
        )
    want_md5, got_md5 = md5.lower(), digests.md5.lower()
    if not hmac.compare_digest(want_md5, got_md5):
        raise _reject(path, ErrorCode.MD5_MISMATCH, f"expected {want_md5}, got {got_md5}")
    if sha256 is not None:
        want_sha, got_sha = sha256.lower(), digests.sha256.lower()
        if not hmac.compare_digest(want_sha, got_sha):
            raise _reject(path, ErrorCode.SHA256_MISMATCH, f"expected {want_sha}, got {got_sha}")
    if not trusted_keys:
        return
    if not signature_b64:
        raise _reject(
            path,
            ErrorCode.SIGNATURE_REQUIRED,
            f"a signing key is configured; {path.name} is unsigned",
        )
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _reject(path, ErrorCode.SIGNATURE_INVALID, f"signature is not base64: {exc}") from exc
    from cryptography.exceptions import InvalidSignature

    digest = bytes.fromhex(digests.sha256)
    for key in trusted_keys:
        try:
            key.verify(signature, digest)
            break
        except InvalidSignature:
            continue
    else:
        which = "the key" if len(trusted_keys) == 1 else f"any of the {len(trusted_keys)} keys"
        raise _reject(
            path, ErrorCode.SIGNATURE_INVALID, f"signature of {path.name} does not match {which}"
        ) from None
    _log.info("verify.ok", path=str(path), size=size, signed=True)


__all__ = ["Digests", "hash_file", "load_public_key", "load_trusted_keys", "verify_digests"]
