"""The engine's public surface: everything a source of commands may use.

A source of commands — the HTTP API (``http_shell.api``) and the hawkBit poller
(``fleet_ddi``) — does three things and nothing else: it **submits** an event (and gets the
machine's decision back), it **reads** the latest progress snapshot (and the links), and it
**subscribes** to snapshots as they change. The ``tope-updater`` CLI and the progress
screen are not sources of their own: they are clients of the HTTP API.
:class:`UpdaterControl` is that interface; :class:`~updater_fsm.engine.Engine` implements
it. The values a source needs to build commands and read answers are re-exported here, so
neither ``http_shell`` nor ``fleet_ddi`` imports the decision core directly (import
contracts in ``pyproject.toml`` check it) — so is the device-api reporter's delivery policy
(:class:`ReportOutbox`), which the reporter (``http_shell.daemon.reporter``) only drives.
"""

from __future__ import annotations

from typing import Protocol

from updater_fsm.core.errors import ErrorCode, RequestError, UpdaterError
from updater_fsm.core.events import (
    Cancel,
    DownloadRequest,
    DownloadRequested,
    Event,
    LinkVersions,
    Reset,
    RollbackRequested,
    RollbackTarget,
    UpdateRequested,
)
from updater_fsm.core.machine import Decision, Reply
from updater_fsm.core.manifest import units_named
from updater_fsm.core.outside_text import visible
from updater_fsm.core.printer import BusyPolicy, PrinterStatus
from updater_fsm.core.progress import Snapshot
from updater_fsm.core.report_outbox import OutgoingReport, ReportOutbox, worth_reporting
from updater_fsm.core.table import BUSY_STATES, CANCELLABLE_STATES, Stage, State
from updater_fsm.core.urls import redact_url
from updater_fsm.core.versions import (
    TYPED_VERSION_PATTERN,
    VERSION_MAX_LENGTH,
    VERSION_PATTERN,
    Version,
    bare_version,
)
from updater_fsm.engine import Subscription

__all__ = [
    "BUSY_STATES",
    "CANCELLABLE_STATES",
    "TYPED_VERSION_PATTERN",
    "VERSION_MAX_LENGTH",
    "VERSION_PATTERN",
    "BusyPolicy",
    "Cancel",
    "Decision",
    "DownloadRequest",
    "DownloadRequested",
    "ErrorCode",
    "Event",
    "LinkVersions",
    "OutgoingReport",
    "PrinterStatus",
    "Reply",
    "ReportOutbox",
    "RequestError",
    "Reset",
    "RollbackRequested",
    "RollbackTarget",
    "Snapshot",
    "Stage",
    "State",
    "Subscription",
    "UpdateRequested",
    "UpdaterControl",
    "UpdaterError",
    "Version",
    "bare_version",
    "redact_url",
    "units_named",
    "visible",
    "worth_reporting",
]


class UpdaterControl(Protocol):
    """What every source of commands needs of the engine (the engine implements it)."""

    async def submit(self, event: Event) -> Decision:
        """Queue ``event``; return the machine's decision once it is journaled."""

    @property
    def snapshot(self) -> Snapshot:
        """The latest progress snapshot (a plain read, safe at any rate)."""

    @property
    def links(self) -> LinkVersions:
        """The versions ``current``/``previous``/``factory`` name right now."""

    def subscribe(self, maxsize: int = 256) -> Subscription:
        """A bounded stream of every snapshot published from now on."""
