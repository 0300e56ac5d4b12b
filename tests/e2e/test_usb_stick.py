"""A USB stick with a signed package, mounted on a device installed by ``install.sh``.

The shipped artefacts end to end under a real systemd: ``install.sh --usb-mount DIR``
installs ``tope-updater-usb@.service`` and lists DIR in ``local_package_dirs``; the test
enables the instance for DIR (at runtime: the sandbox never writes the host's /etc), builds
an ext4 image holding a signed package (and an unsigned one that must be ignored), and
loop-mounts it at DIR inside the sandbox. systemd sees the mount unit appear and starts
the instance, which installs the package through the running ``tope-updater.service``;
mounting again installs nothing (that version runs); unmounting stops the instance.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.deploy_site import (
    INSTALL,
    SYSTEM_PYTHON,
    UNINSTALL,
    UNIT,
    Api,
    DeviceApiStub,
    Site,
    free_port,
    run,
    show,
    write_exe,
)
from tests.support.systemd_sandbox import SystemdSandbox
from updater_fsm.package import builder

pytestmark = pytest.mark.systemd


def _escaped(path: Path) -> str:
    return run(["systemd-escape", "--path", str(path)]).strip()


def _stick_image(site: Site, files: dict[str, Path]) -> Path:
    """An ext4 filesystem image holding ``files`` (name on the stick → source file)."""
    top = site.base / "stick-content"
    top.mkdir()
    for name, source in files.items():
        shutil.copyfile(source, top / name)
    image = site.base / "stick.img"
    run(["mkfs.ext4", "-q", "-F", "-d", str(top), str(image), "16M"])
    return image


def _invocation(sandbox: SystemdSandbox, unit: str) -> str:
    out = sandbox.systemctl("show", unit, "-p", "InvocationID", check=True).stdout
    return out.strip().split("=", 1)[-1]


def _wait_run(
    sandbox: SystemdSandbox, unit: str, before: str, timeout: float = 60
) -> dict[str, str]:
    """Wait until ``unit`` ran again (another invocation than ``before``) and ended."""
    deadline = time.monotonic() + timeout
    props = show(sandbox, unit)
    while time.monotonic() < deadline:
        props = show(sandbox, unit)
        again = _invocation(sandbox, unit) not in ("", before)
        if again and props["ActiveState"] in ("inactive", "failed"):
            return props
        time.sleep(0.1)
    raise AssertionError(f"{unit} did not run to its end in {timeout} s: {props}")


def test_a_signed_package_on_a_mounted_stick_is_installed_once(
    systemd_sandbox: SystemdSandbox,
    site: Site,
    device_api: DeviceApiStub,
) -> None:
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"needs {SYSTEM_PYTHON} (outside /root: the unit has ProtectHome=yes)")
    if not (shutil.which("mkfs.ext4") and Path("/dev/loop-control").exists()):
        pytest.skip("needs mkfs.ext4 and loop devices (/dev/loop-control) for the stick")
    sandbox = systemd_sandbox
    port = free_port()
    mount_point = site.base / "media" / "usb"
    mount_point.mkdir(parents=True)
    factory = site.base / "factory"
    write_exe(factory / "bin" / "hello", "#!/bin/sh\necho 1.0.0\n")

    systemctl = " ".join(sandbox.systemctl_prefix)
    run([
        str(INSTALL),
        *("--root", str(site.root), "--prefix", str(site.prefix)),
        *("--config-dir", str(site.config_dir), "--unit-dir", str(sandbox.unit_dir)),
        *("--bin-links", str(site.bin_links), "--from", str(factory), "--version", "1.0.0"),
        *("--port", str(port), "--device-api-url", device_api.url),
        *("--python", str(SYSTEM_PYTHON), "--systemctl", systemctl),
        *("--usb-mount", str(mount_point)),
        "--no-enable", "--no-start",
    ])  # fmt: skip
    config = site.config_dir / "config.toml"
    assert f'local_package_dirs = ["{mount_point}"]' in config.read_text()
    template = (sandbox.unit_dir / "tope-updater-usb@.service").read_text()
    assert f"ExecStart={site.updater} usb-install --config {config} %f" in template
    private, public = site.base / "signing.pem", site.base / "signing.pub.pem"
    builder.generate_keypair(private, public)
    with config.open("a") as fh:
        fh.write(f'trusted_key = "{public}"\n')
    # The sandbox has no journal: the instance's lines go to a file the test reads.
    usb_log = site.base / "usb-install.log"
    dropin = sandbox.unit_dir / "tope-updater-usb@.service.d"
    dropin.mkdir()
    (dropin / "log.conf").write_text(
        f"[Service]\nStandardOutput=append:{usb_log}\nStandardError=append:{usb_log}\n"
    )
    sandbox.daemon_reload()
    # On a device systemd makes every mount shared at boot, so a stick mounted later shows
    # in the updater's own mount namespace (PrivateMounts=yes: a slave of the host's). The
    # sandbox was unshared with private propagation: share it again inside, before the
    # updater starts (the host's mounts are not touched).
    run([*sandbox.nsenter_prefix, "mount", "--make-rshared", "/"])
    sandbox.systemctl("start", UNIT, check=True)
    instance = f"tope-updater-usb@{_escaped(mount_point)}.service"
    sandbox.systemctl("enable", "--runtime", instance, check=True)

    # ---- the stick: a signed 1.1.0 and an unsigned 1.2.0, which must be ignored -----------
    packages = {}
    for version, key in (("1.1.0", private), ("1.2.0", None)):
        src = site.base / f"src-{version}"
        write_exe(src / "bin" / "hello", f"#!/bin/sh\necho {version}\n")
        out = site.base / f"tope-{version}.zip"
        builder.build_package(src, version=version, output=out, root=site.root, sign_key=key)
        packages[out.name] = out
        if key is not None:
            packages[f"{out.name}.sig"] = builder.signature_path(out)
    image = _stick_image(site, packages)
    mount = [*sandbox.nsenter_prefix, "mount", "-o", "ro,nosuid,nodev,noexec"]
    umount = [*sandbox.nsenter_prefix, "umount", str(mount_point)]
    api = Api(port, site)
    try:
        before = _invocation(sandbox, instance)
        run([*mount, str(image), str(mount_point)])
        try:
            data = api.wait(
                lambda d: d["stage"] == "success" and d["current_version"] == "1.1.0",
                "installed from the stick",
                timeout=90,
            )
        except AssertionError as exc:
            status = sandbox.systemctl("status", "--lines=0", instance).stdout
            said = usb_log.read_text() if usb_log.exists() else "(no output)"
            raise AssertionError(f"{exc}\n{status}\n{said}") from None
        assert data["previous_version"] == "1.0.0", data
        props = _wait_run(sandbox, instance, before)
        assert props["Result"] == "success", props
        current = site.root / "versions" / "current" / "bin" / "hello"
        assert subprocess.run([current], capture_output=True, text=True).stdout == "1.1.0\n"
        history = api.call("GET", "/history")["data"]["entries"]
        assert [(e["to_version"], e["outcome"]) for e in history] == [("1.1.0", "success")]

        # ---- the stick stays in, the printer restarts it: nothing is installed again -------
        run(umount)
        before = _invocation(sandbox, instance)
        run([*mount, str(image), str(mount_point)])
        props = _wait_run(sandbox, instance, before)
        assert props["Result"] == "success", props
        history = api.call("GET", "/history")["data"]["entries"]
        assert len(history) == 1, history
        assert api.progress()["current_version"] == "1.1.0"
    finally:
        subprocess.run(umount, capture_output=True, check=False)
    # unmounted: the instance is stopped with its mount (BindsTo)
    assert show(sandbox, instance)["ActiveState"] in ("inactive", "failed")

    run([
        str(UNINSTALL), "--root", str(site.root), "--prefix", str(site.prefix),
        "--config-dir", str(site.config_dir), "--unit-dir", str(sandbox.unit_dir),
        "--bin-links", str(site.bin_links), "--systemctl", systemctl, "--no-disable",
    ])  # fmt: skip
    assert not (sandbox.unit_dir / "tope-updater-usb@.service").exists()
    assert not list(sandbox.unit_dir.glob("*.mount.wants/tope-updater-usb@*"))
    assert os.readlink(site.root / "versions" / "current") == "v1.1.0"
