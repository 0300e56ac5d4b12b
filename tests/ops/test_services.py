"""ServiceController against a real systemd (the sandbox), and the sandbox's own safety."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from tests.ops.svc_helpers import add_service, controller, sleeper, write_script
from tests.support.systemd_sandbox import SystemdSandbox, unavailable_reason
from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.core.manifest import ServiceUnit
from updater_fsm.ops.services import ServiceController

pytestmark = pytest.mark.systemd


def _alive(host_pid: int) -> bool:
    try:
        stat = Path(f"/proc/{host_pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return ") Z " not in stat


# -- the sandbox itself --------------------------------------------------------------------


def test_sandbox_runs_unit_and_teardown_leaves_no_process(tmp_path: Path) -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    pidfile = tmp_path / "demo.pid"
    script = tmp_path / "demo.sh"
    write_script(script, sleeper(pidfile))
    sandbox = SystemdSandbox()
    started = time.monotonic()
    sandbox.boot({"demo.service": f"[Service]\nExecStart={script}\n"})
    try:
        assert time.monotonic() - started < 5
        init_pid = sandbox.pid
        assert os.readlink(f"/proc/{init_pid}/exe").endswith("/systemd")
        assert sandbox.systemctl("start", "demo.service").returncode == 0
        assert sandbox.systemctl("is-active", "demo.service").stdout.strip() == "active"
        members = sandbox.members()
        assert init_pid in members and len(members) >= 3  # unshare, systemd, the service
    finally:
        sandbox.shutdown()
    assert pidfile.read_text().split()[1] == "v1"
    assert not [pid for pid in members if _alive(pid)], "sandbox processes survived teardown"


def test_sandbox_boot_does_not_touch_host_tmp(tmp_path: Path) -> None:
    """The masking test: a default tmpfiles run would empty /tmp; the file must survive."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    fd, name = tempfile.mkstemp(prefix="tope-sandbox-canary-", dir="/tmp")
    canary = Path(name)
    os.write(fd, b"still here")
    os.close(fd)
    old = time.time() - 40 * 86400  # old enough for any tmpfiles age-based cleanup
    os.utime(canary, (old, old))
    try:
        with SystemdSandbox() as sandbox:
            sandbox.boot()
            for dangerous in (
                "systemd-tmpfiles-setup.service",
                "systemd-tmpfiles-clean.service",
                "systemd-journald.service",
                "dbus.service",
                "tmp.mount",
            ):
                props = sandbox.systemctl("show", dangerous, "-p", "LoadState,ActiveState")
                assert "LoadState=masked" in props.stdout, (dangerous, props.stdout)
                assert "ActiveState=inactive" in props.stdout, (dangerous, props.stdout)
            # Nothing but the boot target and the stubs it needs is started.
            listed = sandbox.systemctl(
                "list-units", "--state=active", "--type=service,socket,timer,path", "--plain"
            ).stdout
            assert ".service" not in listed and ".socket" not in listed, listed
            assert ".timer" not in listed, listed
            with pytest.raises(ValueError, match="not allowed"):
                sandbox.systemctl("enable", "demo.service")
        assert canary.read_bytes() == b"still here"
        assert tmp_path.is_dir()
    finally:
        canary.unlink(missing_ok=True)


# -- start / stop --------------------------------------------------------------------------


async def test_start_stop_is_active(systemd_sandbox: SystemdSandbox, tmp_path: Path) -> None:
    pidfile = tmp_path / "app.pid"
    add_service(systemd_sandbox, tmp_path, "app", sleeper(pidfile, "v1.2.3"))
    ctl = controller(systemd_sandbox)
    assert await ctl.is_active("app.service") == "inactive"
    await ctl.start("app.service")
    assert await ctl.is_active("app.service") == "active"
    pid, version = pidfile.read_text().split()
    props = await ctl.show("app.service", "MainPID", "NRestarts", "SubState")
    assert props == {"MainPID": pid, "NRestarts": "0", "SubState": "running"}
    assert version == "v1.2.3"

    started = time.monotonic()
    await ctl.stop("app.service")
    assert time.monotonic() - started < 1.5, "a unit honouring SIGTERM stops at once"
    assert await ctl.is_active("app.service") == "inactive"
    await ctl.stop("app.service")  # idempotent


async def test_start_restarts_on_new_version(
    systemd_sandbox: SystemdSandbox, tmp_path: Path
) -> None:
    pidfile = tmp_path / "app.pid"
    script = add_service(systemd_sandbox, tmp_path, "app", sleeper(pidfile, "v1"))
    ctl = controller(systemd_sandbox)
    await ctl.start("app.service")
    old_pid = pidfile.read_text().split()[0]
    await ctl.stop("app.service")
    write_script(script, sleeper(pidfile, "v2"))
    await ctl.start("app.service")
    new_pid, version = pidfile.read_text().split()
    assert (version, new_pid != old_pid) == ("v2", True)


async def test_stop_kills_unit_ignoring_sigterm(
    systemd_sandbox: SystemdSandbox, tmp_path: Path
) -> None:
    pidfile = tmp_path / "stubborn.pid"
    # SIG_IGN survives exec: the sleep itself ignores SIGTERM.
    add_service(systemd_sandbox, tmp_path, "stubborn", "trap '' TERM\n" + sleeper(pidfile))
    ctl = controller(systemd_sandbox, stop_timeout=1.0)
    await ctl.start("stubborn.service")
    started = time.monotonic()
    await ctl.stop("stubborn.service")
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 4, elapsed
    props = await ctl.show("stubborn.service", "ActiveState", "Result", "ExecMainStatus")
    assert props["ActiveState"] in {"inactive", "failed"}
    assert props["ExecMainStatus"] == "9", props  # it died of SIGKILL, not SIGTERM


async def test_stop_timeout_when_unit_outlives_sigkill(
    systemd_sandbox: SystemdSandbox, tmp_path: Path
) -> None:
    # After SIGKILL ends the main process, the hanging ExecStopPost keeps it deactivating.
    add_service(
        systemd_sandbox,
        tmp_path,
        "wedged",
        "trap '' TERM\nexec sleep 300\n",
        service="ExecStopPost=/bin/sleep 60\n",
    )
    ctl = controller(systemd_sandbox, stop_timeout=0.5, kill_wait=0.7)
    await ctl.start("wedged.service")
    with pytest.raises(UpdaterError) as info:
        await ctl.stop("wedged.service")
    assert info.value.code is ErrorCode.SERVICE_STOP_TIMEOUT
    assert info.value.detail == (
        "wedged.service: did not stop within 0.5 s; still deactivating 0.7 s after SIGKILL"
    )


async def test_stop_unknown_or_inactive_unit_is_noop(systemd_sandbox: SystemdSandbox) -> None:
    ctl = controller(systemd_sandbox)
    await ctl.stop("introduced-by-update.service")
    await ctl.stop_units([ServiceUnit("also-missing.service"), ServiceUnit("nope.service", 2)])


async def test_stop_reports_systemctl_errors(systemd_sandbox: SystemdSandbox) -> None:
    with pytest.raises(UpdaterError) as info:
        await controller(systemd_sandbox).stop("template@.service")
    assert info.value.code is ErrorCode.SERVICE_STOP_FAILED
    assert info.value.detail.startswith("template@.service: systemctl show")
    assert "neither a valid invocation ID nor unit name" in info.value.detail
    broken = ServiceController(["/nonexistent/systemctl"])
    with pytest.raises(UpdaterError) as info:
        await broken.stop("app.service")
    assert info.value.code is ErrorCode.SERVICE_STOP_FAILED
    assert "/nonexistent/systemctl" in info.value.detail


async def test_start_failure_reports_reason(
    systemd_sandbox: SystemdSandbox, tmp_path: Path
) -> None:
    script = add_service(systemd_sandbox, tmp_path, "broken", "echo 'boom' >&2\nexit 1\n")
    ctl = controller(systemd_sandbox)
    with pytest.raises(UpdaterError) as info:
        await ctl.start("broken.service")
    err = info.value
    assert err.code is ErrorCode.SERVICE_START_FAILED
    assert err.detail.startswith("broken.service: exited right after start (failed/failed")
    assert "Result=exit-code" in err.detail and "ExecMainStatus=1" in err.detail
    assert "; last log: " in err.detail and "status=1/FAILURE" in err.detail

    # Fixed by the next version: the failed state and start limit must not block it.
    pidfile = tmp_path / "broken.pid"
    write_script(script, sleeper(pidfile))
    await ctl.start("broken.service")
    assert await ctl.is_active("broken.service") == "active"


async def test_start_restart_loop_is_a_start_failure(
    systemd_sandbox: SystemdSandbox, tmp_path: Path
) -> None:
    add_service(
        systemd_sandbox, tmp_path, "loop", "exit 2\n", service="Restart=always\nRestartSec=1\n"
    )
    with pytest.raises(UpdaterError) as info:
        await controller(systemd_sandbox).start("loop.service")
    assert info.value.code is ErrorCode.SERVICE_START_FAILED
    assert "systemd restarts it" in info.value.detail


async def test_start_unknown_unit_fails(systemd_sandbox: SystemdSandbox) -> None:
    with pytest.raises(UpdaterError) as info:
        await controller(systemd_sandbox).start("ghost.service")
    assert info.value.code is ErrorCode.SERVICE_START_FAILED
    assert info.value.detail.startswith("ghost.service: ")
    assert "not found" in info.value.detail


async def test_start_timeout(systemd_sandbox: SystemdSandbox, tmp_path: Path) -> None:
    # Type=notify without ever notifying: stays "activating" until our timeout.
    add_service(systemd_sandbox, tmp_path, "slow", "exec sleep 300\n", service="Type=notify\n")
    with pytest.raises(UpdaterError) as info:
        await controller(systemd_sandbox, start_timeout=1.0).start("slow.service")
    assert info.value.code is ErrorCode.SERVICE_START_FAILED
    assert info.value.detail.startswith("slow.service: not active within 1 s (still activating)")


async def test_oneshot_start_succeeds(systemd_sandbox: SystemdSandbox, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    add_service(systemd_sandbox, tmp_path, "once", f"touch {marker}\n", service="Type=oneshot\n")
    await controller(systemd_sandbox).start("once.service")
    assert marker.exists()


async def test_units_start_ascending_and_stop_descending(
    systemd_sandbox: SystemdSandbox, tmp_path: Path
) -> None:
    order = tmp_path / "order"
    for name in ("db", "api", "gui"):
        add_service(
            systemd_sandbox,
            tmp_path,
            name,
            f"echo start-{name} >> {order}\nexec sleep 300\n",
            service=f"ExecStopPost=/bin/sh -c 'echo stop-{name} >> {order}'\n",
            reload=False,
        )
    systemd_sandbox.daemon_reload()
    units = [
        ServiceUnit("gui.service", restart_order=3),
        ServiceUnit("db.service", restart_order=1),
        ServiceUnit("api.service", restart_order=2),
    ]
    ctl = controller(systemd_sandbox)
    await ctl.start_units(units)
    await ctl.stop_units(units)
    assert order.read_text().split() == [
        "start-db",
        "start-api",
        "start-gui",
        "stop-gui",
        "stop-api",
        "stop-db",
    ]


async def test_stop_prevents_restart_always(
    systemd_sandbox: SystemdSandbox, tmp_path: Path
) -> None:
    pidfile = tmp_path / "keep.pid"
    add_service(
        systemd_sandbox,
        tmp_path,
        "keep",
        sleeper(pidfile),
        service="Restart=always\nRestartSec=0.1\n",
    )
    ctl = controller(systemd_sandbox)
    await ctl.start("keep.service")
    await ctl.stop("keep.service")
    time.sleep(0.3)  # let a (wrong) auto-restart happen
    assert await ctl.is_active("keep.service") == "inactive"
