"""Builders that drive the pure machine to a given state (no I/O)."""

from __future__ import annotations

from updater_fsm.core import events as ev
from updater_fsm.core.machine import Decision, UpdaterMachine
from updater_fsm.core.manifest import ServiceUnit
from updater_fsm.core.progress import Snapshot
from updater_fsm.core.table import STAGE_OF, State

T0 = 1_800_000_000.0
MD5 = "0" * 32
SHA = "1" * 64
UNITS = (ServiceUnit("device-api.service", 1), ServiceUnit("web-server.service", 2))
LINKS = ev.LinkVersions(current="1.0.0", previous="0.9.0", factory="0.9.0")


def request(
    version: str = "1.2.3", name: str = "update.zip", size: int = 1000
) -> ev.DownloadRequest:
    return ev.DownloadRequest(version, f"http://127.0.0.1:1/{name}", name, size, MD5)


def drive(machine: UpdaterMachine, *events: ev.Event, now: float = T0) -> Decision:
    """Feed events, asserting each is accepted; return the last decision."""
    decision = None
    for event in events:
        decision = machine.handle(event, now)
        assert decision.accepted, (event, decision.reply, machine.state)
    assert decision is not None
    return decision


def at_ready(req: ev.DownloadRequest | None = None, now: float = T0) -> UpdaterMachine:
    m = UpdaterMachine()
    req = req or request()
    drive(
        m,
        ev.DownloadRequested(req),
        ev.DownloadDone(1, req.package_size, MD5, SHA),
        ev.Verified(1),
        now=now,
    )
    return m


def at_health_check(links: ev.LinkVersions = LINKS) -> UpdaterMachine:
    m = at_ready()
    drive(m, ev.UpdateRequested("1.2.3"), ev.Staged(1, UNITS, links), ev.Switched(1))
    return m


def snap(
    state: State, progress: int = 0, *, error: str | None = None, version: str | None = "1.2.3"
) -> Snapshot:
    """A snapshot as the engine would publish it (for the reporter's policy: only what
    reports show matters; the message tells the state, progress and error apart)."""
    return Snapshot(
        stage=STAGE_OF[state],
        progress=progress,
        message=f"{state.value} {progress} {error}",
        error=error,
        state=state,
        version=version,
        bytes_downloaded=progress,
        total_bytes=100,
        speed_bps=0.0,
        eta_s=None,
        current_version="1.0.0",
        previous_version=None,
        factory_version="1.0.0",
        rollback_level=0,
        seq=0,
    )
