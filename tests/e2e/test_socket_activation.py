"""Never off the air, nothing resident when idle: ``tope-updater.socket`` under a real
systemd (issue 22).

install.sh installs both shipped units (the socket's ``ListenStream=`` rendered from the
port) into the sandbox's systemd, which holds the port from then on. The test checks, on
that one install:

* the idle exit: the updater exits 0 after ``idle_exit_s`` with nothing in progress, the
  unit ends ``inactive`` (not failed, no automatic restart) and the socket stays;
* activation on the first connection: that connection is answered by the new updater;
* idle exits never count toward ``StartLimitBurst`` (a drop-in lowers it to 2: without
  the shipped unit's reset, the third start would be refused and the socket would fail);
* a kill -9 mid-download with a poller of ``/progress`` every 200 ms: no connection is ever
  refused while systemd restarts the updater, the download resumes and completes, and a
  bind to the port attempted during the restart fails (``EADDRINUSE``);
* a job outside a final state (a verified package waiting for ``/update``) keeps it running;
* uninstall.sh removes the socket and frees the port.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.e2e.deploy_site import (
    INSTALL,
    SYSTEM_PYTHON,
    UNINSTALL,
    UNIT,
    Api,
    DeviceApiStub,
    Poller,
    Site,
    bind_fails,
    free_port,
    run,
    show,
    write_exe,
)
from tests.support.package_server import Behaviour, ThreadedPackageServer
from tests.support.systemd_sandbox import SystemdSandbox
from updater_fsm.package import builder

pytestmark = pytest.mark.systemd

SOCKET = "tope-updater.socket"
IDLE_EXIT_S = 2.0
PAYLOAD_BYTES = 3 * 1024 * 1024
THROTTLE_BPS = 1_000_000


def wait_inactive(sandbox: SystemdSandbox, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    props = show(sandbox, UNIT)
    while time.monotonic() < deadline:
        props = show(sandbox, UNIT)
        if props["ActiveState"] in ("inactive", "failed"):
            return props
        time.sleep(0.1)
    raise AssertionError(f"{UNIT} still {props} after {timeout} s")


def test_socket_activation_idle_exit_and_a_kill_mid_download(
    systemd_sandbox: SystemdSandbox, site: Site, device_api: DeviceApiStub
) -> None:
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"needs {SYSTEM_PYTHON} (outside /root: the unit has ProtectHome=yes)")
    sandbox = systemd_sandbox
    port = free_port()
    factory = site.base / "factory"
    write_exe(factory / "bin" / "hello", "#!/bin/sh\necho 1.0.0\n")
    # Two starts in 5 minutes at most: the install's and one more. Only the reset after each
    # clean exit lets the idle cycles below go on.
    dropin = sandbox.unit_dir / f"{UNIT}.d"
    dropin.mkdir()
    (dropin / "test.conf").write_text("[Unit]\nStartLimitIntervalSec=300\nStartLimitBurst=2\n")

    systemctl = " ".join(sandbox.systemctl_prefix)
    install = [
        str(INSTALL),
        *("--root", str(site.root), "--prefix", str(site.prefix)),
        *("--config-dir", str(site.config_dir), "--unit-dir", str(sandbox.unit_dir)),
        *("--bin-links", str(site.bin_links), "--from", str(factory), "--version", "1.0.0"),
        *("--port", str(port), "--device-api-url", device_api.url),
        *("--python", str(SYSTEM_PYTHON), "--systemctl", systemctl),
        "--no-enable",  # enable would write links into the host's /etc
    ]
    run([*install, "--no-start"])
    socket_unit = (sandbox.unit_dir / SOCKET).read_text()
    assert f"\nListenStream=127.0.0.1:{port}\n" in socket_unit
    assert "\nAccept=no\n" in socket_unit
    config = site.config_dir / "config.toml"
    with config.open("a") as fh:
        fh.write(f"idle_exit_s = {IDLE_EXIT_S}\n")
    out = run(install)
    assert f"(re)start {SOCKET}" in out, out
    assert show(sandbox, SOCKET)["ActiveState"] == "active"
    assert show(sandbox, UNIT)["ActiveState"] == "active"
    api = Api(port, site)

    # ---- idle exit, then activation on the first connection, three times over ------------
    last_request: float | None = None
    for cycle in range(3):
        props = wait_inactive(sandbox, timeout=IDLE_EXIT_S + 20)
        assert props["ActiveState"] == "inactive" and props["Result"] == "success", props
        assert props["NRestarts"] == "0", props  # an idle exit is not restarted
        if last_request is not None:  # quiet for idle_exit_s since the last request
            assert time.monotonic() - last_request >= IDLE_EXIT_S, cycle
        sock_props = show(sandbox, SOCKET)
        assert sock_props["ActiveState"] == "active", (cycle, sock_props)
        assert bind_fails(port), "the port was free while the updater was not running"
        began = time.monotonic()
        data = api.progress()  # starts the updater; answered by it
        last_request = time.monotonic()
        activation_s = last_request - began
        assert data["stage"] == "idle" and data["current_version"] == "1.0.0", data
        assert show(sandbox, UNIT)["ActiveState"] == "active"
        print(f"cycle {cycle}: activation answered in {activation_s:.2f} s")
    log = site.log.read_text()
    assert log.count('"event": "idle exit"') >= 3, log[-3000:]

    # ---- a kill -9 mid-download, polled every 200 ms ---------------------------------------
    src = site.base / "pkg-src"
    write_exe(src / "bin" / "hello", "#!/bin/sh\necho 1.1.0\n")
    (src / "lib").mkdir()
    (src / "lib" / "payload.bin").write_bytes(os.urandom(PAYLOAD_BYTES))
    pkg = site.base / "update-1.1.0.zip"
    built = builder.build_package(src, version="1.1.0", output=pkg, root=site.root)
    poller = Poller(port)
    with ThreadedPackageServer() as srv:
        url = srv.call(srv.server.add_file, pkg.name, pkg, Behaviour(rate_bps=THROTTLE_BPS))
        reply = api.call("POST", "/download", built.download_request(url))
        assert reply["code"] == 200, reply
        poller.start()
        try:
            api.wait(
                lambda d: d["stage"] == "downloading" and d["bytes_downloaded"] >= 1_500_000,
                "1.5 MB downloaded",
            )
            killed_pid = show(sandbox, UNIT)["MainPID"]
            sandbox.systemctl("kill", "--signal=SIGKILL", UNIT, check=True)
            binds = 0
            deadline = time.monotonic() + 30
            while True:  # while systemd restarts it (RestartSec=2): nobody else gets the port
                props = show(sandbox, UNIT)
                if props["ActiveState"] == "active" and props["MainPID"] != killed_pid:
                    break
                assert bind_fails(port), f"the port was free during the restart: {props}"
                binds += 1
                assert time.monotonic() < deadline, props
                time.sleep(0.1)
            assert binds >= 5, binds  # the restart took a while: tried all along
            srv.call(srv.server.set_behaviour, pkg.name, Behaviour())
            api.wait(lambda d: d["stage"] == "toInstall", "downloaded", timeout=60)
        finally:
            poller.stop()
        requests = srv.server.requests(pkg.name)
    assert show(sandbox, UNIT)["NRestarts"] == "1"
    assert poller.refused == [], poller.refused
    # The request in flight at the kill may be reset by the dying process (at most one).
    assert len(poller.other_errors) <= 1, poller.other_errors
    assert poller.answers >= 5, poller
    # At least one request waited in the socket's queue through the restart (RestartSec=2)
    # and was answered by the next updater.
    assert poller.slowest_s >= 1.0, poller
    # Resumed from its durable checkpoint, not from 0.
    assert len(requests) == 2 and requests[1].range is not None, requests
    print(f"poller: {poller.answers} answers, slowest {poller.slowest_s:.2f} s, {binds} binds")

    # ---- a job outside a final state (toInstall: waiting for /update) keeps it running ------
    holding = show(sandbox, UNIT)["MainPID"]
    time.sleep(3 * IDLE_EXIT_S)  # no request meanwhile
    props = show(sandbox, UNIT)
    assert props["ActiveState"] == "active" and props["MainPID"] == holding, props
    assert api.progress()["stage"] == "toInstall"

    # ---- uninstall: the socket goes, and the port is free -----------------------------------
    run([
        str(UNINSTALL), "--root", str(site.root), "--prefix", str(site.prefix),
        "--config-dir", str(site.config_dir), "--unit-dir", str(sandbox.unit_dir),
        "--bin-links", str(site.bin_links), "--systemctl", systemctl, "--no-disable",
    ])  # fmt: skip
    assert not (sandbox.unit_dir / SOCKET).exists()
    assert show(sandbox, SOCKET)["LoadState"] == "not-found"
    assert not bind_fails(port)
