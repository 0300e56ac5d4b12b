"""The shipped unit under a real systemd: ``serve`` on a root ``init`` never ran on exits 2,
and systemd leaves it stopped instead of restarting it every 2 s (RestartPreventExitStatus).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tests.support.serve_port import free_port
from tests.support.systemd_sandbox import SystemdSandbox

REPO = Path(__file__).resolve().parents[2]
UNIT = "tope-updater.service"
SHIPPED = REPO / "systemd" / UNIT
SOCKET = "tope-updater.socket"


def test_serve_on_a_root_never_initialised_is_not_restarted(
    systemd_sandbox: SystemdSandbox, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    port = free_port()
    serve = (
        f"ExecStart=/usr/bin/env PYTHONPATH={REPO} {sys.executable} -m http_shell.cli serve"
        f" --root {root} --port {port}"
    )
    # The shipped socket (the service Requires= it), on the test's port as install.sh does.
    socket_unit = (REPO / "systemd" / SOCKET).read_text()
    systemd_sandbox.install_unit(
        SOCKET,
        socket_unit.replace("ListenStream=127.0.0.1:12315", f"ListenStream=127.0.0.1:{port}"),
    )
    # The shipped unit as install.sh writes it, but this checkout's serve and no guard (an
    # install's paths); its restart policy and everything else as shipped.
    lines = [
        serve if line.startswith("ExecStart=") else line
        for line in SHIPPED.read_text().splitlines()
        if not line.startswith("ExecStartPre=")
    ]
    systemd_sandbox.install_unit(UNIT, "\n".join(lines) + "\n")
    # The test's Python lives under /root (ProtectHome) or /tmp (a CI checkout: PrivateTmp),
    # as does tmp_path, and there is no /opt/tope here.
    dropin = systemd_sandbox.unit_dir / f"{UNIT}.d"
    dropin.mkdir()
    (dropin / "test.conf").write_text("[Service]\nProtectHome=no\nPrivateTmp=no\nReadWritePaths=\n")
    systemd_sandbox.daemon_reload()

    start = systemd_sandbox.systemctl("start", UNIT)
    assert start.returncode != 0, start
    time.sleep(5)  # RestartSec=2: two restarts would have happened by now
    props = dict(
        line.split("=", 1)
        for line in systemd_sandbox.systemctl(
            "show", UNIT, "-p", "ActiveState,NRestarts,ExecMainStatus,Result"
        ).stdout.splitlines()
    )
    assert props == {
        "ActiveState": "failed",
        "NRestarts": "0",
        "ExecMainStatus": "2",
        "Result": "exit-code",
    }, props
    assert not root.exists()
