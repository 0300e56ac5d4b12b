"""The package builder: build -> read_package -> stage round trips, signing, config errors."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from updater_fsm.core.manifest import HealthProbe, units_of
from updater_fsm.ops.snapshot_staging import stage_snapshot
from updater_fsm.ops.snapshot_store import Layout, init_layout
from updater_fsm.package.builder import (
    BuildError,
    build_package,
    generate_keypair,
    load_public_key,
    verify_file_signature,
)
from updater_fsm.package.manifest import read_package

CONFIG = """
[modules."services/device-api/*"]
process_name = "device-api"
restart_order = 1
post_cmds = ["/bin/true"]
health = { http = "http://127.0.0.1:9080/healthz", timeout_s = 3 }

[modules."bin/*"]
process_name = "printerd.service"
restart_order = 2
"""


@pytest.fixture
def src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "services/device-api").mkdir(parents=True)
    (src / "bin").mkdir()
    (src / "share").mkdir()
    (src / "services/device-api/device-api").write_bytes(b"#!/bin/sh\necho api\n")
    (src / "services/device-api/device-api").chmod(0o755)
    (src / "bin/printerd").write_bytes(b"\x7fELF fake")
    (src / "bin/printerd").chmod(0o750)
    (src / "share/readme.txt").write_bytes(b"hello\n")
    (src / "tope-package.toml").write_text(CONFIG)
    return src


def test_build_round_trip(src: Path, tmp_path: Path) -> None:
    result = build_package(src, version="1.4.0", output=tmp_path / "out/pkg.zip")
    data = result.path.read_bytes()
    assert result.size == len(data)
    assert result.md5 == hashlib.md5(data).hexdigest()
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.signature is None

    manifest = read_package(result.path, expected_version="1.4.0", root=Path("/opt/tope"))
    assert manifest == result.manifest
    by_name = {m.name: m for m in manifest.modules}
    assert set(by_name) == {"bin/printerd", "services/device-api/device-api", "share/readme.txt"}
    api = by_name["services/device-api/device-api"]
    assert api.dst == "/opt/tope/services/device-api/device-api"
    assert api.src == "files/services/device-api/device-api"
    assert api.process_name == "device-api"
    assert api.post_cmds == ("/bin/true",)
    assert api.health == HealthProbe("http", "http://127.0.0.1:9080/healthz", 3.0)
    assert api.sha256 == hashlib.sha256(b"#!/bin/sh\necho api\n").hexdigest()
    assert by_name["share/readme.txt"].process_name is None
    assert [u.unit for u in units_of(manifest)] == ["device-api.service", "printerd.service"]


def test_built_package_stages_with_modes(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    init_layout(root, "1.0.0")
    result = build_package(src, version="1.1.0", output=tmp_path / "p.zip", root=root)
    manifest = read_package(result.path, expected_version="1.1.0", root=root)
    snap = stage_snapshot(Layout(root), manifest, result.path)
    assert (snap / "services/device-api/device-api").read_bytes() == b"#!/bin/sh\necho api\n"
    assert stat.S_IMODE(os.stat(snap / "services/device-api/device-api").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(snap / "bin/printerd").st_mode) == 0o750
    assert not (snap / "tope-package.toml").exists()
    assert (snap / "VERSION").read_text() == "1.0.0\n"  # carried over from the base snapshot


def test_build_is_deterministic(src: Path, tmp_path: Path) -> None:
    first = build_package(src, version="1.4.0", output=tmp_path / "a.zip")
    os.utime(src / "share/readme.txt", (1, 1))
    second = build_package(src, version="1.4.0", output=tmp_path / "b.zip")
    assert first.sha256 == second.sha256


def test_download_request_names_the_package_and_its_signature_when_signed(
    src: Path, tmp_path: Path
) -> None:
    plain = build_package(src, version="1.4.0", output=tmp_path / "a.zip")
    assert plain.download_request("http://h/a.zip") == {
        "version": "1.4.0",
        "package_url": "http://h/a.zip",
        "package_name": "a.zip",
        "package_size": (tmp_path / "a.zip").stat().st_size,
        "package_md5": hashlib.md5((tmp_path / "a.zip").read_bytes()).hexdigest(),
        "package_sha256": hashlib.sha256((tmp_path / "a.zip").read_bytes()).hexdigest(),
    }
    priv = tmp_path / "k.pem"
    generate_keypair(priv, tmp_path / "k.pub")
    signed = build_package(src, version="1.4.0", output=tmp_path / "b.zip", sign_key=priv)
    body = signed.download_request("http://h/b.zip")
    assert signed.signature is not None
    assert body["package_signature"] == signed.signature
    assert body["package_name"] == "b.zip"


def test_signature_verifies_with_public_key(src: Path, tmp_path: Path) -> None:
    priv, pub = tmp_path / "k.pem", tmp_path / "k.pub"
    generate_keypair(priv, pub)
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    result = build_package(src, version="1.4.0", output=tmp_path / "p.zip", sign_key=priv)
    assert result.signature is not None
    key = load_public_key(pub)
    assert isinstance(key, Ed25519PublicKey)
    # the contract: Ed25519 over the RAW sha256 digest
    key.verify(base64.b64decode(result.signature), bytes.fromhex(result.sha256))
    assert verify_file_signature(result.path, result.signature, pub)
    with open(result.path, "ab") as fh:
        fh.write(b"tampered")
    assert not verify_file_signature(result.path, result.signature, pub)
    with pytest.raises(BuildError, match="refusing to overwrite"):
        generate_keypair(priv, tmp_path / "other.pub")


def test_explicit_config_overrides_default(src: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text('[modules."share/*"]\nprocess_name = "docs"\n')
    result = build_package(src, version="1.4.0", output=tmp_path / "p.zip", modules_config=other)
    names = {m.name: m.process_name for m in result.manifest.modules}
    assert names == {
        "bin/printerd": None,
        "services/device-api/device-api": None,
        "share/readme.txt": "docs",
    }


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('[modules."nothing/*"]\nprocess_name = "x"\n', "matches no file"),
        ('[modules."bin/*"]\nrestart_order = "1"\n', "restart_order: must be an integer"),
        ('[modules."bin/*"]\nfoo = 1\n', "unknown keys"),
        ("[other]\n", "unknown top-level keys"),
        ("not toml = = =", "cannot read modules config"),
        ('[modules."bin/*"]\nprocess_name = "--bad"\n', "device would reject"),
        ('[modules."bin/*"]\nhealth = { tcp = "x" }\n', "device would reject"),
        ('[modules."bin/*"]\npost_cmds = ["true"]\n', "post_cmds: .* has no process_name"),
    ],
)
def test_bad_config_is_reported(src: Path, tmp_path: Path, config: str, message: str) -> None:
    (src / "tope-package.toml").write_text(config)
    with pytest.raises(BuildError, match=message):
        build_package(src, version="1.4.0", output=tmp_path / "p.zip")
    assert not (tmp_path / "p.zip").exists()
    assert list(tmp_path.glob(".p.zip*")) == []


def test_bad_source_trees(src: Path, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="version must look like"):
        build_package(src, version="1.4", output=tmp_path / "p.zip")
    (src / "bin/link").symlink_to("printerd")
    with pytest.raises(BuildError, match="symlinks cannot be packaged"):
        build_package(src, version="1.4.0", output=tmp_path / "p.zip")
    (src / "bin/link").unlink()
    (src / "versions").mkdir()
    (src / "versions/x").write_bytes(b"x")
    with pytest.raises(BuildError, match="snapshot store"):
        build_package(src, version="1.4.0", output=tmp_path / "p.zip")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BuildError, match="no files"):
        build_package(empty, version="1.4.0", output=tmp_path / "p.zip")


def test_wrong_key_type_is_reported(src: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(BuildError, match="cannot load private key"):
        build_package(src, version="1.4.0", output=tmp_path / "p.zip", sign_key=bad)
    assert not (tmp_path / "p.zip").exists()


def test_compatible_names_the_device_model_in_the_manifest(src: Path, tmp_path: Path) -> None:
    result = build_package(src, version="1.4.0", output=tmp_path / "x1.zip", compatible="tope-x1")
    assert result.manifest.compatible == "tope-x1"
    again = read_package(result.path, expected_version="1.4.0", root=Path("/opt/tope"))
    assert again.compatible == "tope-x1"
    plain = build_package(src, version="1.4.0", output=tmp_path / "any.zip")
    assert plain.manifest.compatible is None
    for bad in ("", " x1", "x1 ", "tope/x1", "x" * 65, "a\x00b"):
        with pytest.raises(BuildError, match="a device model name"):
            build_package(src, version="1.4.0", output=tmp_path / "bad.zip", compatible=bad)
