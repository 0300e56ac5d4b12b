"""Health check against real units in the sandbox systemd and real HTTP/command probes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.ops.svc_helpers import add_service, controller, sleeper
from tests.support.systemd_sandbox import SystemdSandbox
from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.core.manifest import HealthProbe, ServiceUnit
from updater_fsm.ops.health import check_health, probe_once

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
SEEN = web.AppKey("seen", list[int])


async def _status_server(aiohttp_server: ServerFactory, statuses: list[int]) -> TestServer:
    """A server whose ``/health`` answers the given statuses in turn (the last one repeats)."""
    seen: list[int] = []

    async def health(request: web.Request) -> web.Response:
        status = statuses[min(len(seen), len(statuses) - 1)]
        seen.append(status)
        return web.Response(status=status, text="ok" if status < 300 else "sick")

    app = web.Application()
    app.router.add_get("/health", health)
    app[SEEN] = seen
    return await aiohttp_server(app)


# -- probes alone (no systemd needed) ------------------------------------------------------


async def test_http_probe_2xx_passes_other_fails(aiohttp_server: ServerFactory) -> None:
    good = await _status_server(aiohttp_server, [204])
    bad = await _status_server(aiohttp_server, [500])
    assert await probe_once(HealthProbe("http", str(good.make_url("/health")), 2)) is None
    assert await probe_once(HealthProbe("http", str(bad.make_url("/health")), 2)) == "HTTP 500"


async def test_http_probe_timeout_and_refused(aiohttp_server: ServerFactory) -> None:
    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    app = web.Application()
    app.router.add_get("/health", stall)
    server = await aiohttp_server(app)
    url = str(server.make_url("/health"))
    assert await probe_once(HealthProbe("http", url, 0.3)) == "no answer within 0.3 s"
    port = server.port
    await server.close()
    refused = await probe_once(HealthProbe("http", f"http://127.0.0.1:{port}/health", 1))
    assert refused is not None and "ClientConnectorError" in refused


async def test_command_probe(tmp_path: Path) -> None:
    marker = tmp_path / "ready"
    probe = HealthProbe("command", f"test -f {marker}", 2)
    assert await probe_once(probe) == "exit 1"
    marker.touch()
    assert await probe_once(probe) is None
    assert await probe_once(HealthProbe("command", "echo bad >&2; exit 4", 2)) == "exit 4: bad"
    slow = await probe_once(HealthProbe("command", "sleep 5", 0.3))
    assert slow == "timed out after 0.3 s"
    assert await probe_once(HealthProbe("smoke", "x")) == "unknown probe kind 'smoke'"


# -- unit health in the sandbox ------------------------------------------------------------


@pytest.mark.systemd
async def test_healthy_unit_passes_after_settle(
    systemd_sandbox: SystemdSandbox, tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    server = await _status_server(aiohttp_server, [503, 503, 200])  # warms up
    add_service(systemd_sandbox, tmp_path, "api", sleeper(tmp_path / "api.pid"))
    add_service(systemd_sandbox, tmp_path, "gui", sleeper(tmp_path / "gui.pid"))
    ctl = controller(systemd_sandbox)
    units = [
        ServiceUnit("api.service", 1, health=HealthProbe("http", str(server.make_url("/health")))),
        ServiceUnit("gui.service", 2, health=HealthProbe("command", "true")),
    ]
    await ctl.start_units(units)
    started = time.monotonic()
    await check_health(ctl, units, settle_s=1.0, poll_s=0.1, probe_retries=3)
    assert 1.0 <= time.monotonic() - started < 3
    assert server.app[SEEN] == [503, 503, 200]


@pytest.mark.systemd
async def test_restart_loop_fails_on_nrestarts(
    systemd_sandbox: SystemdSandbox, tmp_path: Path
) -> None:
    add_service(
        systemd_sandbox,
        tmp_path,
        "crashy",
        "sleep 1\nexit 1\n",
        service="Restart=always\nRestartSec=0.1\n",
    )
    ctl = controller(systemd_sandbox)
    await ctl.start("crashy.service")  # up for the 0.3 s start confirmation
    started = time.monotonic()
    with pytest.raises(UpdaterError) as info:
        await check_health(ctl, [ServiceUnit("crashy.service")], settle_s=2.0, poll_s=0.1)
    assert time.monotonic() - started < 2.0
    err = info.value
    assert err.code is ErrorCode.HEALTH_CHECK_FAILED
    assert err.detail.startswith("crashy.service: restarted by systemd during the health check")
    assert "NRestarts 0 -> 1" in err.detail


@pytest.mark.systemd
async def test_crash_waiting_for_slow_restart_fails(
    systemd_sandbox: SystemdSandbox, tmp_path: Path
) -> None:
    # The unit runs until the test tells it to crash; systemd restarts it only after 300 s,
    # so throughout the check it waits in auto-restart. (Crashing on a timer raced the start
    # confirmation and the settle period on a loaded machine.)
    trigger = tmp_path / "crash-now"
    add_service(
        systemd_sandbox,
        tmp_path,
        "lazy",
        f"while [ ! -e {trigger} ]; do sleep 0.05; done\nexit 1\n",
        service="Restart=on-failure\nRestartSec=300\n",
    )
    ctl = controller(systemd_sandbox)
    await ctl.start("lazy.service")
    show, crashed = ctl.show, False

    async def show_then_crash(unit: str, *props: str) -> dict[str, str]:
        """The check's first query (its baseline) is answered only once the unit crashed
        (it was up when asked): the crash falls inside the check whatever the load."""
        nonlocal crashed
        answer = await show(unit, *props)
        if not crashed:
            crashed = True
            assert answer["ActiveState"] == "active", answer
            trigger.touch()
            deadline = time.monotonic() + 30
            while (await show(unit, "SubState"))["SubState"] != "auto-restart":
                assert time.monotonic() < deadline, "the unit never crashed"
                await asyncio.sleep(0.05)
        return answer

    ctl.show = show_then_crash  # type: ignore[method-assign]
    with pytest.raises(UpdaterError) as info:
        await check_health(ctl, [ServiceUnit("lazy.service")], settle_s=1.0, poll_s=0.1)
    assert crashed
    assert info.value.detail == (
        "lazy.service: crashed, systemd is about to restart it "
        "(activating/auto-restart, Result=exit-code)"
    )


@pytest.mark.systemd
async def test_unit_dying_during_settle_fails(
    systemd_sandbox: SystemdSandbox, tmp_path: Path
) -> None:
    add_service(systemd_sandbox, tmp_path, "fragile", "sleep 0.6\nexit 3\n")
    ctl = controller(systemd_sandbox)
    await ctl.start("fragile.service")
    with pytest.raises(UpdaterError) as info:
        await check_health(ctl, [ServiceUnit("fragile.service")], settle_s=2.0, poll_s=0.1)
    assert info.value.code is ErrorCode.HEALTH_CHECK_FAILED
    assert info.value.detail == (
        "fragile.service: no longer active (failed/failed, Result=exit-code)"
    )


@pytest.mark.systemd
async def test_replaced_main_process_fails(systemd_sandbox: SystemdSandbox, tmp_path: Path) -> None:
    add_service(systemd_sandbox, tmp_path, "app", sleeper(tmp_path / "app.pid"))
    ctl = controller(systemd_sandbox)
    await ctl.start("app.service")

    async def restart_soon() -> None:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(systemd_sandbox.systemctl, "restart", "app.service")

    restarter = asyncio.create_task(restart_soon())
    with pytest.raises(UpdaterError) as info:
        await check_health(ctl, [ServiceUnit("app.service")], settle_s=2.0, poll_s=0.1)
    await restarter
    assert info.value.code is ErrorCode.HEALTH_CHECK_FAILED
    assert "main process replaced during the health check" in info.value.detail


@pytest.mark.systemd
async def test_inactive_or_unknown_unit_fails_at_once(
    systemd_sandbox: SystemdSandbox, tmp_path: Path
) -> None:
    add_service(systemd_sandbox, tmp_path, "idle", sleeper(tmp_path / "idle.pid"))
    ctl = controller(systemd_sandbox)
    started = time.monotonic()
    with pytest.raises(UpdaterError) as info:
        await check_health(ctl, [ServiceUnit("idle.service")], settle_s=5.0)
    assert info.value.detail == "idle.service: not active (inactive/dead)"
    with pytest.raises(UpdaterError) as info:
        await check_health(ctl, [ServiceUnit("ghost.service")], settle_s=5.0)
    assert info.value.detail == "ghost.service: unit not loaded (LoadState=not-found)"
    assert time.monotonic() - started < 2


@pytest.mark.systemd
async def test_failing_probes_fail_health(
    systemd_sandbox: SystemdSandbox, tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    server = await _status_server(aiohttp_server, [500])
    url = str(server.make_url("/health"))
    add_service(systemd_sandbox, tmp_path, "api", sleeper(tmp_path / "api.pid"))
    ctl = controller(systemd_sandbox)
    await ctl.start("api.service")
    unit = ServiceUnit("api.service", health=HealthProbe("http", url, 1))
    with pytest.raises(UpdaterError) as info:
        await check_health(ctl, [unit], settle_s=0.6, poll_s=0.1, probe_retries=3)
    assert info.value.code is ErrorCode.HEALTH_CHECK_FAILED
    assert info.value.detail == f"api.service: http probe {url} failed 3 times: HTTP 500"
    assert server.app[SEEN] == [500, 500, 500]

    unit = ServiceUnit("api.service", health=HealthProbe("command", "exit 4", 1))
    with pytest.raises(UpdaterError) as info:
        await check_health(ctl, [unit], settle_s=0.4, poll_s=0.1, probe_retries=2)
    assert info.value.detail == "api.service: command probe exit 4 failed 2 times: exit 4"


async def test_no_units_is_healthy() -> None:
    from updater_fsm.ops.services import ServiceController

    # No systemctl call is made for an empty unit list (this binary does not exist).
    await check_health(ServiceController(["/nonexistent/systemctl"]), [])
