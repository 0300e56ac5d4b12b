"""``tope-updater serve``: assemble the updater and run it until SIGTERM.

Order of start: take the single-instance lock, open the journal and recover the record,
build machine → engine → runner → reporter → HTTP app, sweep stale downloads, resume what
the journal says was running, then listen. On SIGTERM/SIGINT the listener closes first,
the engine finishes the event in hand (its record is journaled), running effects are
cancelled — downloads keep their durable ``.part`` — and the reporter gets a moment to
deliver what is pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import structlog
from aiohttp import web

from updater_fsm.config import Config
from updater_fsm.control import State
from updater_fsm.durable import open_state_file
from updater_fsm.engine import Engine
from updater_fsm.journal import Journal
from updater_fsm.ops import snapshot_store
from updater_fsm.ops.printer_probe import configured_probe
from updater_fsm.ops.rollback_floor import start_floor
from updater_fsm.ops.self_update import EXIT_SWITCHED
from updater_fsm.ops.services import ServiceController
from updater_fsm.recovery import disk_facts, load_record, sweep_downloads
from updater_fsm.runner import OpsRunner

if TYPE_CHECKING:
    from fleet_ddi.poller import FleetPoller
    from http_shell.daemon.idle import IdleWatch
    from http_shell.daemon.reporter import Reporter

_log = structlog.get_logger(__name__)
#: How long a stop waits for HTTP requests still in flight (API calls take milliseconds).
_SHUTDOWN_TIMEOUT_S = 3.0


class AlreadyRunning(RuntimeError):
    """Another updater holds the lock of this state directory."""


class CannotListen(RuntimeError):
    """The API's address cannot be bound (port in use, no such address, no permission)."""


@contextlib.contextmanager
def instance_lock(state_dir: Path) -> Iterator[None]:
    """Hold ``<state_dir>/updater.lock`` (flock) for the life of the process.

    The kernel drops the lock when the process dies, even by SIGKILL, so a crash never
    leaves a stale lock behind.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "updater.lock"
    # Never through a link: it would truncate whatever file the link names.
    fd = open_state_file(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise AlreadyRunning(
                f"another tope-updater (pid {holder}) is already using {state_dir}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@attrs.define
class Updater:
    """A running updater: the parts tests and the CLI need to reach."""

    config: Config
    engine: Engine
    runner: OpsRunner
    reporter: Reporter | None
    poller: FleetPoller | None = None


#: States in which ``current`` names a version that runs for good (not one on trial).
_SETTLED = frozenset({State.IDLE, State.SUCCESS, State.FAILED})


@contextlib.asynccontextmanager
async def running_updater(
    config: Config,
    *,
    controller: ServiceController | None = None,
    report: bool = True,
    clock: Callable[[], float] | None = None,
    restart_self: Callable[[], None] | None = None,
) -> AsyncIterator[Updater]:
    """Build, recover and start the updater (without an HTTP listener); stop it on exit.

    ``restart_self`` ends the process for its supervisor to start the updater again (a
    self-update's hand-over; see :class:`~updater_fsm.runner.OpsRunner`)."""
    layout = snapshot_store.Layout(config.root)
    journal = Journal(config.state_path)
    recovered = load_record(journal)
    config.downloads_dir.mkdir(parents=True, exist_ok=True)
    sweep_downloads(recovered.record, config.downloads_dir)
    engine = Engine(
        recovered.record,
        journal,
        resume_limit=config.resume_limit,
        read_links=lambda: snapshot_store.read_links(layout),
        clock=clock or time.time,
        gate=config.printer_gate,
        ask_printer=configured_probe(config.busy_probe, timeout_s=config.busy_probe_timeout_s),
    )
    reporter = None
    if report:
        from http_shell.daemon.reporter import Reporter

        reporter = Reporter(config.device_api_url)
    runner = OpsRunner(
        engine, config, reporter=reporter, controller=controller, restart_self=restart_self
    )
    engine.attach(runner)
    if reporter is not None:
        reporter.start(engine)
    if recovered.record.state in _SETTLED:  # never from a version still on trial
        await asyncio.to_thread(start_floor, config.state_path, engine.links.current)
    facts = disk_facts(recovered.record, config.downloads_dir, engine.links)
    decision = await engine.start(facts)
    _log.info(
        "updater started",
        state=str(decision.record.state),
        root=str(config.root),
        journal_rebuilt=recovered.rebuilt,
        links=attrs.asdict(engine.links),
    )
    poller = None
    poller_task = None
    if config.ddi_url is not None:
        from fleet_ddi.poller import FleetPoller

        poller = FleetPoller(engine, config)
        poller_task = asyncio.create_task(poller.run(), name="fleet-poller")
    try:
        yield Updater(config, engine, runner, reporter, poller)
    finally:
        if poller_task is not None:
            poller_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller_task
        await engine.stop()
        if reporter is not None:
            await reporter.stop()


async def serve(
    config: Config,
    *,
    ready: Callable[[], None] | None = None,
    listen_socket: socket.socket | None = None,
) -> int:
    """Run the updater and its HTTP API until SIGTERM or SIGINT; returns the exit status.

    0 after a signal or an idle exit; :data:`~updater_fsm.ops.self_update.EXIT_SWITCHED`
    when a self-update moved the updater's ``current`` link and hands over (systemd starts
    the unit again, from the new slot: ``Restart=on-failure``).

    ``listen_socket`` is the listening socket systemd passed (socket activation, see
    :mod:`http_shell.daemon.listen_fds`): the API serves on it, and the updater exits after
    ``idle_exit_s`` seconds with nothing in progress (:mod:`http_shell.daemon.idle`), the
    socket unit starting it again on the next connection. Without one it binds
    ``host``:``port`` itself and stays until stopped.

    Under systemd (``Type=notify``) it sends ``READY=1`` once the API listens,
    ``STOPPING=1`` when it begins to stop, and pings the watchdog from the event loop at
    half of ``WatchdogSec`` (see :mod:`http_shell.daemon.sd_notify`); elsewhere these are
    no-ops.
    """
    from http_shell.daemon import sd_notify

    with instance_lock(config.state_path):
        # Pinging starts before recovery: systemd runs the watchdog from the unit's start.
        watchdog = asyncio.create_task(sd_notify.watchdog_loop(), name="sd-watchdog")
        try:
            return await _serve_locked(config, ready, listen_socket)
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog


async def _serve_locked(
    config: Config, ready: Callable[[], None] | None, listen_socket: socket.socket | None
) -> int:
    from http_shell.daemon import sd_notify

    stop = asyncio.Event()
    exit_status = 0

    def restart_self() -> None:
        nonlocal exit_status
        _log.info("exiting to hand over to the new updater", exit_status=EXIT_SWITCHED)
        exit_status = EXIT_SWITCHED
        stop.set()

    async with running_updater(config, restart_self=restart_self) as updater:
        from http_shell.api.app import create_app
        from http_shell.api.low_level import EnvelopeAppRunner

        app = create_app(
            config,
            updater.engine,
            reporter=updater.reporter,
            fleet=updater.poller.stats if updater.poller is not None else None,
        )
        # Hostile or stalled clients must not hold up a SIGTERM stop (found by
        # tests/crash/test_faults.py): after refusing an oversized body aiohttp keeps reading
        # it for lingering_time (default 10 s), and it waits shutdown_timeout (default 60 s)
        # for requests still in flight, e.g. a body trickling in at a byte a second.
        runner = EnvelopeAppRunner(
            app,
            access_log=None,
            handle_signals=False,
            lingering_time=1.0,
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        )
        idle = _idle_watch(config, updater, app) if listen_socket is not None else None
        await runner.setup()
        site: web.BaseSite
        if listen_socket is not None:
            site = web.SockSite(runner, listen_socket)
            where = _address(listen_socket)
        else:
            site = web.TCPSite(runner, config.host, config.port)
            where = f"{config.host}:{config.port}"
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise CannotListen(f"cannot listen on {where}: {_reason(exc)}") from None
        _log.info(
            "listening",
            url=f"http://{where}/api/v1.0",
            socket_activated=listen_socket is not None,
            idle_exit_s=idle.idle_s if idle is not None else None,
            fleet_wake=idle is not None and idle.fleet is not None,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sd_notify.notify(f"READY=1\nSTATUS=listening on {where}")
        if ready is not None:
            ready()
        idle_task = asyncio.create_task(idle.run(), name="idle-exit") if idle else None
        if idle_task is not None:
            idle_task.add_done_callback(lambda _: stop.set())
        try:
            await stop.wait()
            _log.info("stopping", idle_exit=idle_task is not None and idle_task.done())
        finally:
            if idle_task is not None:
                idle_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await idle_task
            sd_notify.notify("STOPPING=1")
            await runner.cleanup()
    return exit_status


def _idle_watch(config: Config, updater: Updater, app: web.Application) -> IdleWatch | None:
    """The idle exit of a socket-activated updater; None when it stays resident: with
    ``idle_exit_s = 0``, or with ``ddi_url`` set when it cannot exit between polls
    (``ddi_wake_min_s = 0``, or no systemd service to wake: :mod:`http_shell.daemon.wake`)."""
    if config.idle_exit_s <= 0:
        return None
    from http_shell.api.events import SLOTS
    from http_shell.daemon.idle import IdleWatch
    from updater_fsm.ops.self_update import find_slots

    fleet = None
    if updater.poller is not None:
        from http_shell.daemon.wake import FleetWake, wake_unit

        unit = wake_unit() if config.ddi_wake_min_s > 0 else None
        if unit is None:
            _log.info("fleet device stays resident", ddi_wake_min_s=config.ddi_wake_min_s)
            return None
        fleet = FleetWake(
            updater.poller, unit=unit, systemctl=config.systemctl, min_s=config.ddi_wake_min_s
        )

    reporter = updater.reporter
    slots = find_slots(config.updater_prefix)
    watch = IdleWatch(
        config.idle_exit_s,
        engine=updater.engine,
        runner_busy=lambda: updater.runner.busy,
        pending_reports=(lambda: reporter.pending) if reporter is not None else None,
        streams=app[SLOTS],
        probation=slots.probation if slots is not None else None,
        fleet=fleet,
    )

    async def touch(request: web.BaseRequest, response: web.StreamResponse) -> None:
        watch.touch()

    app.on_response_prepare.append(touch)
    return watch


def _address(sock: socket.socket) -> str:
    """``127.0.0.1:12315`` or ``[::1]:12315``: where a passed socket listens."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: OSError) -> str:
    """``Address already in use`` rather than asyncio's wrapped bind message."""
    return os.strerror(exc.errno) if exc.errno else str(exc)
