"""A package that carries an updater bundle: ``package build --updater-bundle``, the
manifest's ``updater`` key validated like a module (path, size, SHA-256) plus its version
and architecture, and the bundle extracted with its digest checked."""

from __future__ import annotations

import hashlib
import io
import json
import platform
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.packages import Entry, make_manifest, write_zip
from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.package import builder
from updater_fsm.package.extraction import extract_updater_bundle
from updater_fsm.package.limits import PackageLimits
from updater_fsm.package.manifest import read_package

ROOT = Path("/opt/tope")
MACHINE = platform.machine()
OTHER_ARCH = "armv7l" if MACHINE != "armv7l" else "aarch64"


def fake_bundle(path: Path, version: str = "0.2.0", arch: str = MACHINE) -> Path:
    """A tar.gz shaped like systemd/bundle.py's (top dir, manifest.json; no wheels)."""
    top = f"tope-updater-{version}-{arch}"
    meta = {"name": "tope-updater", "version": version, "arch": arch, "python": "cp311"}
    raw = json.dumps(meta).encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(f"{top}/manifest.json")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    return path


def package_with(tmp_path: Path, bundle: bytes, **updater: Any) -> Path:
    manifest = make_manifest("1.1.0", {"bin/app": b"app"}, root=ROOT)
    entry = updater.pop("src", "updater/bundle.tar.gz")
    manifest["updater"] = {
        "src": entry,
        "version": "0.2.0",
        "arch": MACHINE,
        "sha256": hashlib.sha256(bundle).hexdigest(),
        "size": len(bundle),
        **updater,
    }
    entries = [Entry("modules/bin/app", b"app"), Entry("updater/bundle.tar.gz", bundle)]
    return write_zip(tmp_path / "pkg.zip", entries, manifest=manifest)


def test_build_carries_the_bundle_and_the_reader_accepts_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "app").write_text("app\n")
    bundle = fake_bundle(tmp_path / f"tope-updater-0.2.0-{MACHINE}.tar.gz")
    out = tmp_path / "pkg.zip"
    result = builder.build_package(
        src, version="1.1.0", output=out, root=ROOT, updater_bundle=bundle
    )
    updater = result.manifest.updater
    assert updater is not None
    assert (updater.src, updater.version, updater.arch) == (
        f"updater/{bundle.name}", "0.2.0", MACHINE,
    )  # fmt: skip
    assert updater.sha256 == hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert [m.dst for m in result.manifest.modules] == ["/opt/tope/bin/app"]  # not a module
    extracted = tmp_path / "extracted.tar.gz"
    extract_updater_bundle(out, updater, extracted, PackageLimits())
    assert extracted.read_bytes() == bundle.read_bytes()


def test_a_bundle_for_another_arch_builds_but_the_device_refuses_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "app").write_text("app\n")
    bundle = fake_bundle(tmp_path / "b.tar.gz", arch=OTHER_ARCH)
    out = tmp_path / "pkg.zip"
    builder.build_package(src, version="1.1.0", output=out, root=ROOT, updater_bundle=bundle)
    with pytest.raises(UpdaterError) as err:
        read_package(out, expected_version="1.1.0", root=ROOT)
    assert err.value.code is ErrorCode.UPDATER_ARCH_MISMATCH
    assert f"built for {OTHER_ARCH}, this device is {MACHINE}" in err.value.detail


def test_not_a_bundle_is_refused_by_the_builder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "app").write_text("app\n")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    with pytest.raises(builder.BuildError, match="--updater-bundle"):
        builder.build_package(
            src, version="1.1.0", output=tmp_path / "p.zip", root=ROOT, updater_bundle=junk
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"src": "updater/missing.tar.gz"}, "updater.src: 'updater/missing.tar.gz' is not in"),
        ({"src": "../evil.tar.gz"}, "updater.src:"),
        ({"size": 1}, "updater.size: manifest says 1 bytes"),
        ({"sha256": "abc"}, "updater.sha256: must be 64 hex characters"),
        ({"version": "latest"}, "updater.version:"),
        ({"arch": "sparc"}, "updater.arch: must be one of x86_64, aarch64, armv7l"),
        ({"size": "10"}, "updater.size"),
        ({"extra": 1}, "updater"),
    ],
)
def test_bad_updater_entries_are_invalid_manifests(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    pkg = package_with(tmp_path, b"bundle bytes", **change)
    with pytest.raises(UpdaterError) as err:
        read_package(pkg, expected_version="1.1.0", root=ROOT)
    assert err.value.code is ErrorCode.INVALID_MANIFEST
    assert message in err.value.detail


def test_a_tampered_bundle_fails_its_digest_on_extraction(tmp_path: Path) -> None:
    pkg = package_with(tmp_path, b"bundle bytes", sha256="0" * 64)
    manifest = read_package(pkg, expected_version="1.1.0", root=ROOT)
    assert manifest.updater is not None
    with pytest.raises(UpdaterError) as err:
        extract_updater_bundle(pkg, manifest.updater, tmp_path / "out", PackageLimits())
    assert err.value.code is ErrorCode.INVALID_MANIFEST and "sha256" in err.value.detail.lower()
    assert not (tmp_path / "out").exists()
