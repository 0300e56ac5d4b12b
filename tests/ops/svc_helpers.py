"""Helpers shared by the service and health tests: real units running real scripts."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.support.systemd_sandbox import SystemdSandbox
from updater_fsm.ops.services import ServiceController


def add_service(
    sandbox: SystemdSandbox,
    tmp_path: Path,
    name: str,
    script: str,
    *,
    service: str = "",
    unit: str = "",
    reload: bool = True,
) -> Path:
    """Install ``<name>.service`` whose ExecStart is a shell script with body ``script``.

    The script lives in ``tmp_path`` (the sandbox shares the host's filesystem). Returns the
    script's path so a test can rewrite it (a "new version").
    """
    path = tmp_path / f"{name}.sh"
    write_script(path, script)
    sandbox.install_unit(
        f"{name}.service",
        f"[Unit]\nDescription=test {name}\n{unit}\n[Service]\nExecStart={path}\n{service}\n",
    )
    if reload:
        sandbox.daemon_reload()
    return path


def write_script(path: Path, body: str) -> None:
    """Write an executable ``/bin/sh`` script with ``body``."""
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body).lstrip())
    path.chmod(0o755)


def sleeper(pidfile: Path, version: str = "v1") -> str:
    """Script body: record ``"<pid> <version>"`` and run as a long-lived service."""
    return f'echo "$$ {version}" > {pidfile}\nexec sleep 300\n'


def controller(
    sandbox: SystemdSandbox,
    *,
    stop_timeout: float = 1.5,
    start_timeout: float = 5.0,
    kill_wait: float = 2.0,
    start_confirm_s: float = 0.3,
) -> ServiceController:
    """A controller for the sandbox with test-sized timeouts and fast polling."""
    return ServiceController(
        sandbox.systemctl_prefix,
        stop_timeout=stop_timeout,
        start_timeout=start_timeout,
        kill_wait=kill_wait,
        start_confirm_s=start_confirm_s,
        poll_s=0.05,
    )
