"""verify: digests, signatures, and that every rejected package is deleted."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.ops.verify import (
    Digests,
    hash_file,
    load_public_key,
    load_trusted_keys,
    verify_digests,
)

DATA = bytes(range(256)) * 5000 + b"tail"
MD5 = hashlib.md5(DATA).hexdigest()
SHA = hashlib.sha256(DATA).hexdigest()
PRIVATE = Ed25519PrivateKey.generate()
PUBLIC = PRIVATE.public_key()
SIGNATURE = base64.b64encode(PRIVATE.sign(hashlib.sha256(DATA).digest())).decode()


@pytest.fixture
def package(tmp_path: Path) -> Path:
    path = tmp_path / "pkg.zip"
    path.write_bytes(DATA)
    return path


async def test_hash_file_matches_hashlib(package: Path) -> None:
    assert await hash_file(package, buffer_size=4096) == Digests(MD5, SHA, len(DATA))


async def test_hash_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e").write_bytes(b"")
    d = await hash_file(tmp_path / "e")
    assert d == Digests(hashlib.md5(b"").hexdigest(), hashlib.sha256(b"").hexdigest(), 0)


def test_all_checks_pass_and_file_stays(package: Path) -> None:
    verify_digests(
        package,
        Digests(MD5, SHA, len(DATA)),
        size=len(DATA),
        md5=MD5.upper(),  # case-insensitive
        sha256=SHA.upper(),
        signature_b64=SIGNATURE,
        trusted_keys=(PUBLIC,),
    )
    assert package.read_bytes() == DATA


def test_signature_ignored_without_a_key(package: Path) -> None:
    verify_digests(
        package,
        Digests(MD5, SHA, len(DATA)),
        size=len(DATA),
        md5=MD5,
        sha256=None,
        signature_b64="not even base64!",
        trusted_keys=(),
    )
    assert package.exists()


OTHER_SIG = base64.b64encode(PRIVATE.sign(b"\0" * 32)).decode()


@pytest.mark.parametrize(
    ("change", "code", "detail"),
    [
        ({"size": len(DATA) + 1}, ErrorCode.PACKAGE_SIZE_MISMATCH, "expected"),
        ({"md5": "0" * 32}, ErrorCode.MD5_MISMATCH, f"expected {'0' * 32}, got {MD5}"),
        ({"sha256": "f" * 64}, ErrorCode.SHA256_MISMATCH, f"expected {'f' * 64}, got {SHA}"),
        ({"signature_b64": None}, ErrorCode.SIGNATURE_REQUIRED, "unsigned"),
        ({"signature_b64": ""}, ErrorCode.SIGNATURE_REQUIRED, "unsigned"),
        ({"signature_b64": "%%%"}, ErrorCode.SIGNATURE_INVALID, "not base64"),
        ({"signature_b64": OTHER_SIG}, ErrorCode.SIGNATURE_INVALID, "does not match"),
        (
            {"trusted_keys": (Ed25519PrivateKey.generate().public_key(),)},
            ErrorCode.SIGNATURE_INVALID,
            "does not match",
        ),
    ],
)
def test_each_failure_deletes_the_package(
    package: Path, change: dict[str, object], code: ErrorCode, detail: str
) -> None:
    kwargs: dict[str, object] = {
        "size": len(DATA),
        "md5": MD5,
        "sha256": SHA,
        "signature_b64": SIGNATURE,
        "trusted_keys": (PUBLIC,),
        **change,
    }
    with pytest.raises(UpdaterError) as err:
        verify_digests(package, Digests(MD5, SHA, len(DATA)), **kwargs)  # type: ignore[arg-type]
    assert err.value.code is code
    assert detail in err.value.detail
    assert not err.value.retryable
    assert not package.exists()


def test_digests_of_a_tampered_file_are_caught(package: Path) -> None:
    """The measured digests, not the file name, decide: a corrupted download fails."""
    bad = hashlib.md5(DATA[:-1] + b"X").hexdigest()
    with pytest.raises(UpdaterError) as err:
        verify_digests(
            package,
            Digests(bad, SHA, len(DATA)),
            size=len(DATA),
            md5=MD5,
            sha256=None,
            signature_b64=None,
            trusted_keys=(),
        )
    assert str(err.value) == f"MD5_MISMATCH: expected {MD5}, got {bad}"
    assert not package.exists()


def test_load_public_key_from_pem_and_raw_base64() -> None:
    pem = PUBLIC.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    raw = PUBLIC.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for text in (pem, pem.decode(), base64.b64encode(raw), base64.b64encode(raw).decode() + "\n"):
        key = load_public_key(text)
        key.verify(base64.b64decode(SIGNATURE), hashlib.sha256(DATA).digest())


@pytest.mark.parametrize(
    "text",
    ["not a key", base64.b64encode(b"short").decode(), "-----BEGIN PUBLIC KEY-----\nxx\n"],
)
def test_load_public_key_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        load_public_key(text)


def test_load_public_key_rejects_other_key_types() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match="not an Ed25519"):
        load_public_key(pem)


def test_a_signature_by_any_key_of_the_keyring_verifies(package: Path) -> None:
    """Key rotation: a release signed by the new key installs while the old one is trusted
    too; one signed by neither is refused naming the keyring."""
    other = Ed25519PrivateKey.generate().public_key()
    for keyring in ((PUBLIC, other), (other, PUBLIC)):
        verify_digests(
            package,
            Digests(MD5, SHA, len(DATA)),
            size=len(DATA),
            md5=MD5,
            sha256=SHA,
            signature_b64=SIGNATURE,
            trusted_keys=keyring,
        )
    with pytest.raises(UpdaterError) as err:
        verify_digests(
            package,
            Digests(MD5, SHA, len(DATA)),
            size=len(DATA),
            md5=MD5,
            sha256=SHA,
            signature_b64=SIGNATURE,
            trusted_keys=(other, Ed25519PrivateKey.generate().public_key()),
        )
    assert err.value.code is ErrorCode.SIGNATURE_INVALID
    assert err.value.detail.endswith("does not match any of the 2 keys")


def test_the_keyring_from_files_a_directory_and_base64(tmp_path: Path) -> None:
    def pem(key: Ed25519PublicKey) -> bytes:
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    keys = [Ed25519PrivateKey.generate().public_key() for _ in range(4)]
    ring = tmp_path / "keys.d"
    ring.mkdir()
    (ring / "a.pem").write_bytes(pem(keys[0]))
    (ring / "b.pem").write_bytes(pem(keys[1]))
    (ring / "README").write_text("not a key")
    single = tmp_path / "c.pem"
    single.write_bytes(pem(keys[2]))
    raw = base64.b64encode(
        keys[3].public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
    loaded = load_trusted_keys([str(ring), str(single), raw])
    assert [pem(k) for k in loaded] == [pem(k) for k in keys]
    (tmp_path / "empty.d").mkdir()
    for entry, says in (
        (str(tmp_path / "empty.d"), "a directory with no .pem file"),
        (str(tmp_path / "missing.pem"), "cannot read trusted key"),
        ("bm90IGEga2V5", "raw Ed25519 public key must be 32 bytes"),
    ):
        with pytest.raises(UpdaterError) as err:
            load_trusted_keys([str(single), entry])
        assert err.value.code is ErrorCode.SIGNATURE_INVALID and says in err.value.detail
