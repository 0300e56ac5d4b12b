"""Ship it: ``systemd/install.sh`` → ``tope-updater.service`` under a real systemd → an OTA
update through the HTTP API → ``systemd/uninstall.sh``.

Everything is the shipped artefact: install.sh builds a real venv from this checkout with
``/usr/bin/python3`` (pip install, ~8 s), the unit file is the hardened one from
``systemd/`` (``Type=notify``, watchdog, ``ProtectSystem=strict`` …), the device service
is ``systemd/examples/device-api.service`` with its paths moved into the test's root, the
package is built by ``tope-updater package build``. The sandboxed systemd shares the
host's filesystem and network, so the test reaches the API on 127.0.0.1 and reads the
install root directly.

The install lives under ``/var/lib/tope-e2e-*``, not pytest's ``tmp_path``: the unit's
``PrivateTmp=yes`` hides the host's ``/tmp`` from the service (and ``ProtectHome=yes``
hides ``/root``), which is exactly what the shipped unit must be tested with.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import stat
import time

import pytest

from tests.e2e.deploy_site import (
    EXAMPLE_UNIT,
    INSTALL,
    SYSTEM_PYTHON,
    UNINSTALL,
    UNIT,
    Api,
    DeviceApiStub,
    Site,
    device_script,
    free_port,
    run,
    show,
    write_exe,
)
from tests.support.package_server import Behaviour, ThreadedPackageServer
from tests.support.systemd_sandbox import SystemdSandbox

pytestmark = pytest.mark.systemd

PAYLOAD_BYTES = 3 * 1024 * 1024  # random, so the ZIP is as big: ~3 s at the throttled rate
THROTTLE_BPS = 1_000_000
WATCHDOG_S = 3  # the test's drop-in: a missed ping would show up within the test


def mount_options(sandbox: SystemdSandbox, pid: str) -> dict[str, str]:
    """Mount point → options of the (sandbox) process ``pid``, as it sees its mounts."""
    out = run([*sandbox.nsenter_prefix, "cat", f"/proc/{pid}/mountinfo"])
    mounts = {}
    for line in out.splitlines():
        fields = line.split(" ")
        mounts[fields[4]] = fields[5]  # later mounts shadow earlier ones
    return mounts


def test_install_serve_update_restart_and_uninstall(
    systemd_sandbox: SystemdSandbox, site: Site, device_api: DeviceApiStub
) -> None:
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"needs {SYSTEM_PYTHON} (outside /root: the unit has ProtectHome=yes)")
    sandbox = systemd_sandbox
    port = free_port()

    # ---- factory content and the device service (the shipped example unit) ----------------
    factory = site.base / "factory"
    write_exe(factory / "bin" / "device-api", device_script("1.0.0", site.status))
    (factory / "services" / "device-api").mkdir(parents=True)
    (factory / "services" / "device-api" / "settings.json").write_text("{}\n")
    example = EXAMPLE_UNIT.read_text()
    assert "ExecStart=/usr/local/bin/device-api" in example
    sandbox.install_unit(
        "device-api.service",
        example.replace("/usr/local/bin/", f"{site.bin_links}/").replace(
            "/opt/tope/", f"{site.root}/"
        ),
    )
    # A short watchdog: if pings did not arrive, systemd would kill the updater mid-test.
    dropin = sandbox.unit_dir / f"{UNIT}.d"
    dropin.mkdir()
    (dropin / "test.conf").write_text(f"[Service]\nWatchdogSec={WATCHDOG_S}\n")

    # ---- install.sh, twice: the second run must change nothing it should keep ---------------
    systemctl = " ".join(sandbox.systemctl_prefix)
    install = [
        str(INSTALL),
        *("--root", str(site.root), "--prefix", str(site.prefix)),
        *("--config-dir", str(site.config_dir), "--unit-dir", str(sandbox.unit_dir)),
        *("--bin-links", str(site.bin_links), "--from", str(factory), "--version", "1.0.0"),
        *("--port", str(port), "--device-api-url", device_api.url),
        *("--python", str(SYSTEM_PYTHON), "--systemctl", systemctl),
        *("--unit", "device-api"),
        "--no-enable",  # enable would write links into the host's /etc
    ]
    run([*install, "--no-start"])
    assert show(sandbox, UNIT)["ActiveState"] == "inactive"
    config = site.config_dir / "config.toml"
    assert f"port = {port}" in config.read_text()
    assert '\nunits = ["device-api"]\n' in config.read_text()
    with config.open("a") as fh:
        fh.write("settle_s = 1.0\n")  # a local edit install.sh must keep
    out = run(install)
    assert "config.toml (kept)" in out and "setup OK" in out, out
    assert config.read_text().endswith("settle_s = 1.0\n")
    # The Moonraker busy probe ships beside the venv, named (commented out) in the config.
    assert os.access(site.prefix / "busy-probe-moonraker.sh", os.X_OK)
    assert f'# busy_probe = "{site.prefix}/busy-probe-moonraker.sh' in config.read_text()
    # The progress display's unit, with this install's paths, known to systemd, not enabled.
    screen_unit = (sandbox.unit_dir / "tope-updater-screen.service").read_text()
    current_updater = site.prefix / "current" / "bin" / "tope-updater"
    assert f"ExecStart={current_updater} screen --config {config}" in screen_unit
    # The updater's own slot: current -> versions/<its version>, the guard before each start.
    version = importlib.metadata.version("tope-updater")
    assert os.readlink(site.prefix / "current") == f"versions/{version}"
    assert not (site.prefix / "previous").exists() and not (site.prefix / "venv").exists()
    assert (site.prefix / "versions" / version / ".tope-slot-complete").is_file()
    unit_text = (sandbox.unit_dir / UNIT).read_text()
    assert f"ExecStart={site.prefix}/current/bin/tope-updater serve" in unit_text
    assert f"ExecStartPre=+{site.prefix}/updater-guard.sh {site.prefix} {UNIT}" in unit_text
    assert os.access(site.prefix / "updater-guard.sh", os.X_OK)
    screen = show(sandbox, "tope-updater-screen.service")
    assert (screen["LoadState"], screen["ActiveState"]) == ("loaded", "inactive"), screen

    # Type=notify: "active" means READY=1 arrived, i.e. the API listens.
    props = show(sandbox, UNIT)
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    assert props["WatchdogUSec"] == f"{WATCHDOG_S}s", props
    updater_pid = props["MainPID"]
    link = site.bin_links / "device-api"
    assert os.readlink(link) == f"{site.root}/versions/current/bin/device-api"

    # The hardening is in force: / is read-only for the updater, its root is writable.
    mounts = mount_options(sandbox, updater_pid)
    assert "ro" in mounts["/"].split(","), mounts["/"]
    assert "rw" in mounts[str(site.root)].split(","), mounts.get(str(site.root))
    # …and so is its prefix: a self-update writes a slot there and moves `current`.
    assert "rw" in mounts[str(site.prefix)].split(","), mounts.get(str(site.prefix))
    status = run([*sandbox.nsenter_prefix, "cat", f"/proc/{updater_pid}/status"])
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2", fields
    assert not int(fields["CapBnd"], 16) & (1 << 19), fields["CapBnd"]  # no CAP_SYS_PTRACE

    sandbox.systemctl("start", "device-api.service", check=True)
    api = Api(port, site)
    data = api.progress()
    assert data["stage"] == "idle" and data["current_version"] == "1.0.0", data

    # ---- a package, built by the shipped CLI ------------------------------------------------
    src = site.base / "pkg-src"
    write_exe(src / "bin" / "device-api", device_script("1.1.0", site.status))
    (src / "lib").mkdir()
    (src / "lib" / "payload.bin").write_bytes(os.urandom(PAYLOAD_BYTES))
    (src / "tope-package.toml").write_text(
        '[modules."bin/device-api"]\nprocess_name = "device-api"\nrestart_order = 1\n'
    )
    pkg = site.base / "update-1.1.0.zip"
    build = [str(site.updater), "package", "build", str(src), "--version", "1.1.0"]
    built = json.loads(run([*build, "-o", str(pkg), "--root", str(site.root), "--json"]))

    with ThreadedPackageServer() as srv:
        url = srv.call(srv.server.add_file, pkg.name, pkg, Behaviour(rate_bps=THROTTLE_BPS))
        body = {k: built[k] for k in ("version", "package_name", "package_size", "package_md5")}
        body |= {"package_url": url, "package_sha256": built["package_sha256"]}
        reply = api.call("POST", "/download", body)
        assert reply["code"] == 200 and reply["data"]["status"] == "downloading", reply

        # ---- restart the service mid-download: it must resume with a Range request ---------
        api.wait(
            lambda d: d["stage"] == "downloading" and d["bytes_downloaded"] >= 1_500_000,
            "1.5 MB downloaded",
        )
        srv.call(srv.server.set_behaviour, pkg.name, Behaviour())  # full speed from now on
        sandbox.systemctl("restart", UNIT, check=True)  # returns after the new READY=1
        props = show(sandbox, UNIT)
        assert props["ActiveState"] == "active" and props["MainPID"] != updater_pid, props
        data = api.wait(lambda d: d["stage"] == "toInstall", "verified", timeout=20)
        requests = srv.server.requests(pkg.name)

    size = built["package_size"]
    assert len(requests) == 2, requests
    first, second = requests
    assert first.range is None and 0 < first.bytes_sent < size, first
    assert second.range is not None and second.range.startswith("bytes="), second
    resumed_at = int(second.range.removeprefix("bytes=").split("-")[0])
    assert resumed_at >= 1_000_000, second  # a durable checkpoint, not a restart from 0
    assert second.if_range is not None, second  # guarded: a changed file is never spliced
    assert second.status == 206 and second.bytes_sent == size - resumed_at, second

    # ---- install: stop/switch/start device-api from inside the hardened unit ---------------
    reply = api.call("POST", "/update", {"version": "1.1.0"})
    assert reply["code"] == 200 and reply["data"]["status"] == "installing", reply
    data = api.wait(lambda d: d["stage"] == "success", "installed", timeout=40)
    assert (data["current_version"], data["previous_version"], data["factory_version"]) == (
        "1.1.0", "1.0.0", "1.0.0",
    ), data  # fmt: skip
    device = show(sandbox, "device-api.service")
    assert device["ActiveState"] == "active", device
    assert site.status.read_text().split() == ["1.1.0", device["MainPID"]]
    assert link.resolve() == site.root / "versions" / "v1.1.0" / "bin" / "device-api"
    factory_mode = stat.S_IMODE((site.root / "versions" / "v1.0.0").stat().st_mode)
    assert factory_mode == 0o555
    # device-api heard it all, through both updater processes, ending with the outcome.
    stages = [r["stage"] for r in device_api.reports]
    assert {"downloading", "toInstall", "installing"} <= set(stages), stages
    deadline = time.monotonic() + 5
    while device_api.reports[-1]["stage"] != "success" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert device_api.reports[-1] == {
        "stage": "success", "progress": 100, "message": device_api.reports[-1]["message"],
        "error": None, "version": "v1.1.0",
    }, device_api.reports[-1]  # fmt: skip

    # The watchdog never fired (NRestarts counts automatic restarts, not ours).
    props = show(sandbox, UNIT)
    assert props["ActiveState"] == "active" and props["NRestarts"] == "0", props

    # ---- manual rollback with the journal gone: the configured `units` are restarted -------
    sandbox.systemctl("stop", UNIT, check=True)
    for name in ("journal.json", "journal.prev.json"):  # both: prev would be resumed
        journal = site.root / ".updater" / name
        journal.rename(journal.with_name(f"{name}.lost"))
    sandbox.systemctl("start", UNIT, check=True)
    api = Api(port, site)
    assert api.progress()["stage"] == "idle"
    reply = api.call("POST", "/rollback", {"target": "previous"})
    assert reply["code"] == 200 and reply["data"]["status"] == "rolling_back", reply
    data = api.wait(
        lambda d: d["stage"] == "idle" and d["current_version"] == "1.0.0", "rolled back"
    )
    assert data["error"] is None and data["previous_version"] == "1.1.0", data
    device = show(sandbox, "device-api.service")
    assert device["ActiveState"] == "active", device
    assert site.status.read_text().split() == ["1.0.0", device["MainPID"]]  # restarted

    # ---- uninstall: the updater goes, the device's versions stay ----------------------------
    out = run([
        str(UNINSTALL), "--root", str(site.root), "--prefix", str(site.prefix),
        "--config-dir", str(site.config_dir), "--unit-dir", str(sandbox.unit_dir),
        "--bin-links", str(site.bin_links), "--systemctl", systemctl, "--no-disable",
    ])  # fmt: skip
    props = show(sandbox, UNIT)
    assert props["LoadState"] == "not-found" and props["ActiveState"] == "inactive", props
    assert not (sandbox.unit_dir / "tope-updater-screen.service").exists()
    assert not site.prefix.exists() and not link.is_symlink(), out
    assert os.readlink(site.root / "versions" / "current") == "v1.0.0"
    assert os.readlink(site.root / "versions" / "previous") == "v1.1.0"
    assert os.readlink(site.root / "versions" / "factory") == "v1.0.0"
    assert config.exists()
