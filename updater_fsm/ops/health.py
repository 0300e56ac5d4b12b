"""The post-install health check: units up and staying up, and their probes answering.

A unit passes when it is ``active`` now, stays ``active`` for the whole settle period
without systemd restarting it (``NRestarts`` unchanged) and without its main process being
replaced (``MainPID`` / ``ActiveEnterTimestampMonotonic`` unchanged: a crash followed by a
quick restart), and when its optional :class:`~updater_fsm.core.manifest.HealthProbe` succeeds
at least once within ``probe_retries`` attempts spread over the settle period.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import aiohttp
import structlog

from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.core.manifest import HealthProbe, ServiceUnit
from updater_fsm.ops.commands import CommandTimeout, describe_exit, run_command
from updater_fsm.ops.services import ServiceController

log = structlog.get_logger(__name__)

_WATCHED = (
    "LoadState",
    "ActiveState",
    "SubState",
    "Type",
    "Result",
    "NRestarts",
    "MainPID",
    "ActiveEnterTimestampMonotonic",
    "ExecMainCode",
    "ExecMainStatus",
)


def _fail(unit: str, reason: str) -> UpdaterError:
    return UpdaterError(ErrorCode.HEALTH_CHECK_FAILED, f"{unit}: {reason}")


def _is_done_oneshot(props: dict[str, str]) -> bool:
    return (
        props.get("Type") == "oneshot"
        and props.get("ActiveState") == "inactive"
        and props.get("Result") == "success"
    )


def _state(props: dict[str, str]) -> str:
    text = f"{props.get('ActiveState', '?')}/{props.get('SubState', '?')}"
    if props.get("Result") not in (None, "", "success"):
        text += f", Result={props['Result']}"
    return text


def _compare(unit: str, before: dict[str, str], now: dict[str, str], *, final: bool) -> None:
    """Raise if ``unit`` restarted, was replaced or went down between two snapshots.

    A unit waiting for its automatic restart (``auto-restart``) is left to the next poll,
    which then sees ``NRestarts`` grow and names the restart loop; only the ``final`` check
    fails on it directly.
    """
    if now.get("NRestarts") != before.get("NRestarts"):
        raise _fail(
            unit,
            f"restarted by systemd during the health check (NRestarts "
            f"{before.get('NRestarts')} -> {now.get('NRestarts')}; restart loop?)",
        )
    if _is_done_oneshot(before):
        if not _is_done_oneshot(now):
            raise _fail(unit, f"oneshot unit changed state to {_state(now)}")
        return
    if now.get("SubState") == "auto-restart":
        if final:
            raise _fail(unit, f"crashed, systemd is about to restart it ({_state(now)})")
        return
    if now.get("ActiveState") != "active":
        raise _fail(unit, f"no longer active ({_state(now)})")
    if now.get("MainPID") != before.get("MainPID") or now.get(
        "ActiveEnterTimestampMonotonic"
    ) != before.get("ActiveEnterTimestampMonotonic"):
        raise _fail(
            unit,
            f"main process replaced during the health check (MainPID "
            f"{before.get('MainPID')} -> {now.get('MainPID')}; crashed and restarted?)",
        )


async def _snapshot(controller: ServiceController, unit: str) -> dict[str, str]:
    try:
        return await controller.show(unit, *_WATCHED)
    except UpdaterError as exc:
        raise _fail(unit, f"cannot query systemd: {exc.detail}") from exc


async def _initial(controller: ServiceController, unit: str) -> dict[str, str]:
    props = await _snapshot(controller, unit)
    if props.get("LoadState") != "loaded":
        raise _fail(unit, f"unit not loaded (LoadState={props.get('LoadState', '?')})")
    if props.get("ActiveState") != "active" and not _is_done_oneshot(props):
        raise _fail(unit, f"not active ({_state(props)})")
    return props


async def probe_once(probe: HealthProbe) -> str | None:
    """Run one probe attempt; return ``None`` on success, else why it failed."""
    if probe.kind == "http":
        timeout = aiohttp.ClientTimeout(total=probe.timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(probe.target, allow_redirects=False) as response,
            ):
                # Only the status counts; the body is not read (a probe answering with an
                # endless body must not cost memory), the connection is simply closed.
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except TimeoutError:
            return f"no answer within {probe.timeout_s:g} s"
        except (aiohttp.ClientError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
    if probe.kind == "command":
        try:
            result = await run_command(probe.target, timeout_s=probe.timeout_s)
        except CommandTimeout:
            return f"timed out after {probe.timeout_s:g} s"
        except OSError as exc:
            return f"cannot run: {exc}"
        return None if result.returncode == 0 else describe_exit(result)
    return f"unknown probe kind {probe.kind!r}"


async def _run_probe(unit: str, probe: HealthProbe, attempts: int, spacing: float) -> None:
    reason = "not run"
    for attempt in range(1, attempts + 1):
        started = time.monotonic()
        reason_or_ok = await probe_once(probe)
        if reason_or_ok is None:
            log.info("health.probe.ok", unit=unit, kind=probe.kind, attempt=attempt)
            return
        reason = reason_or_ok
        log.warning("health.probe.failed", unit=unit, attempt=attempt, reason=reason)
        if attempt < attempts:
            await asyncio.sleep(max(0.0, spacing - (time.monotonic() - started)))
    raise _fail(unit, f"{probe.kind} probe {probe.target} failed {attempts} times: {reason}")


async def _watch(
    controller: ServiceController,
    baselines: dict[str, dict[str, str]],
    settle_s: float,
    poll_s: float,
) -> None:
    deadline = time.monotonic() + settle_s
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        await asyncio.sleep(min(poll_s, deadline - now))
        await _check_all(controller, baselines, final=False)


async def _check_all(
    controller: ServiceController, baselines: dict[str, dict[str, str]], *, final: bool
) -> None:
    names = list(baselines)
    snaps = await asyncio.gather(*(_snapshot(controller, u) for u in names))
    for unit, snap in zip(names, snaps, strict=True):
        _compare(unit, baselines[unit], snap, final=final)


async def check_health(
    controller: ServiceController,
    units: Sequence[ServiceUnit],
    *,
    settle_s: float = 5.0,
    poll_s: float = 0.5,
    probe_retries: int = 3,
) -> None:
    """Check that every unit in ``units`` is up, stays up and answers its probe.

    The units are polled every ``poll_s`` for ``settle_s`` seconds while the probes run
    alongside: each probe gets ``probe_retries`` attempts spread over the settle period
    (it may take longer if single attempts are slow) and must succeed once. The units are
    checked one last time after the probes.

    Args:
        controller: how to reach systemd.
        units: the units the install (re)started.
        settle_s: how long each unit must stay active without restarting.
        poll_s: interval of the state polling.
        probe_retries: attempts per probe (at least 1).

    Raises:
        UpdaterError: ``HEALTH_CHECK_FAILED`` with ``"<unit>: <reason>"`` for the first
            problem found.
    """
    if not units:
        return
    attempts = max(1, probe_retries)
    spacing = max(poll_s, settle_s / attempts)
    log.info("health.start", units=[u.unit for u in units], settle_s=settle_s)
    initial = await asyncio.gather(*(_initial(controller, u.unit) for u in units))
    baselines = {u.unit: props for u, props in zip(units, initial, strict=True)}
    tasks = [asyncio.create_task(_watch(controller, baselines, settle_s, poll_s))]
    tasks += [
        asyncio.create_task(_run_probe(u.unit, u.health, attempts, spacing))
        for u in units
        if u.health is not None
    ]
    try:
        # First failure wins; the rest is cancelled.
        for next_done in asyncio.as_completed(tasks):
            await next_done
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await _check_all(controller, baselines, final=True)
    log.info("health.ok", units=[u.unit for u in units])
