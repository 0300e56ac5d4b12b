"""Runs *inside* the emulated armv7l interpreter (tests/e2e/test_armv7l.py): proves the
bundle's wheels work there. Prints one JSON line; exits non-zero on the first failure.

    qemu-arm-static -L SYSROOT SYSROOT/usr/bin/python3.11 tests/e2e/armv7l_probe.py

(with ``PYTHONPATH`` at the bundle's wheels installed by the emulated pip).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import platform
import sys
import tempfile
from pathlib import Path


def main() -> int:
    import _cffi_backend
    import backports.zstd
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from updater_fsm.ops.verify import hash_file, load_public_key, verify_digests
    from updater_fsm.package.delta import decode_in_memory, make_patch
    from updater_fsm.package.limits import PackageLimits

    result: dict[str, object] = {
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "cffi_backend": _cffi_backend.__file__,
        "backports_zstd": backports.zstd.__file__,
    }
    # Signatures: Ed25519 over the raw SHA-256 of a package, as the updater checks them.
    key = Ed25519PrivateKey.generate()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "package.zip"
        package.write_bytes(os.urandom(1 << 16))
        digests = asyncio.run(hash_file(package))
        raw = hashlib.sha256(package.read_bytes()).digest()
        signature = base64.b64encode(key.sign(raw)).decode()
        verify_digests(
            package, digests, size=digests.size, md5=digests.md5, sha256=digests.sha256,
            signature_b64=signature, trusted_keys=[load_public_key(public_pem)],
        )  # fmt: skip
        result["signature"] = "verified"
        bad = base64.b64encode(Ed25519PrivateKey.generate().sign(raw)).decode()
        try:
            verify_digests(
                package, digests, size=digests.size, md5=digests.md5, sha256=digests.sha256,
                signature_b64=bad, trusted_keys=[load_public_key(public_pem)],
            )  # fmt: skip
        except Exception as exc:
            result["wrong_signature"] = type(exc).__name__
        else:
            raise SystemExit("a wrong signature was accepted")
    # Deltas: a zstd --patch-from patch made and applied here.
    base = os.urandom(1 << 17)
    new = base[:50_000] + b"changed" * 100 + base[50_000:]
    patch = make_patch(base, new)
    assert decode_in_memory(base, patch, len(new), PackageLimits()) == new
    result["delta"] = f"{len(new)} bytes from a {len(patch)}-byte patch"
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
