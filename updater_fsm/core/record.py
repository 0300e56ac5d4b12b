"""The journaled record: the state plus everything needed to resume after a restart.

This is exactly what :mod:`updater_fsm.journal` writes to disk after every accepted
transition, and what the machine is rebuilt from on start.
"""

from __future__ import annotations

import enum

import attrs

from updater_fsm.core.errors import ErrorCode
from updater_fsm.core.events import DownloadRequest, ResumePoint
from updater_fsm.core.manifest import ServiceUnit
from updater_fsm.core.states import INITIAL, State

#: A verified package may be installed for this long (contract §1: 410 after 24 h).
PACKAGE_TTL_S = 24 * 3600.0
#: A verified_at this far in the future means the clock jumped back: trust nothing.
CLOCK_SKEW_TOLERANCE_S = 300.0


class JobKind(enum.StrEnum):
    """What a job does."""

    UPDATE = "update"
    MANUAL_ROLLBACK = "manual_rollback"


@attrs.frozen
class Job:
    """One download-and-install job (or one manual rollback).

    Attributes:
        job_id: unique, increasing; results of other jobs are ignored.
        kind: an install (``update``) or a rollback asked for by hand.
        request: the download request (None for a manual rollback).
        durable: the fsynced prefix of the ``.part`` file and the server's validators for
            resuming it with If-Range.
        md5, sha256: digests computed while streaming (None until the download is done).
        verified_at: UNIX time the package passed verification.
        package_kept: the job failed but its verified package stays on disk (staging ran
            out of space): the same request again re-uses it instead of downloading.
        from_version: the version running when the install began (level-1 target).
        factory_version: the version ``factory`` names (level-2 target).
        previous_before: what ``previous`` named before the switch (restored on rollback).
        units: the systemd units this job stops, starts and checks.
        rollback_level: 0, then 1 (previous) or 2 (factory).
        rollback_target: the version the current rollback level points ``current`` at.
        printer_reason: why the busy probe last said the printer is busy, while an
            install waits for it (journaled with the first answer of each wait).
        updater_version: the updater version the package carries a bundle of (None: the
            package does not update the updater).
        post_cmds_done: how many of the switch's post_cmds (all units, in order) finished;
            a resumed switch runs only the rest.
        cause: the failure that started the rollback ladder.
        error: the contract ``error`` string once the job failed.
        error_code: the code of ``error``, what the machine decides on (it never parses
            ``error``).
        fleet_action: the fleet server's action this job carries out (None: device-api's).
    """

    job_id: int
    kind: JobKind = JobKind.UPDATE
    request: DownloadRequest | None = None
    durable: ResumePoint = attrs.field(factory=ResumePoint)
    md5: str | None = None
    sha256: str | None = None
    verified_at: float | None = None
    package_kept: bool = False
    from_version: str | None = None
    factory_version: str | None = None
    previous_before: str | None = None
    units: tuple[ServiceUnit, ...] = ()
    rollback_level: int = 0
    rollback_target: str | None = None
    post_cmds_done: int = 0
    updater_version: str | None = None
    printer_reason: str | None = None
    cause: str | None = None
    error: str | None = None
    error_code: ErrorCode | None = None
    fleet_action: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def version(self) -> str | None:
        """The version this job installs (None for a manual rollback)."""
        return self.request.version if self.request else None

    def is_expired(self, now: float) -> bool:
        """True when the verified package is too old to install, or the clock is untrustworthy."""
        if self.verified_at is None:
            return False
        age = now - self.verified_at
        return age > PACKAGE_TTL_S or age < -CLOCK_SKEW_TOLERANCE_S


@attrs.frozen
class Record:
    """The machine's whole persistent state.

    Attributes:
        state: the FSM state.
        job: the current (or last finished) job; None before the first one.
        last_job_id: highest job id ever issued (so ids never repeat across restarts).
        last_units: units of the last successful install (what a manual rollback restarts).
        last_version: the version that install put in place; its ``last_units`` carry the
            health probes a rollback *to* that version can judge it by.
        interruptions: how many restarts in a row found the current step unfinished with
            no progress since (reset by every other accepted event); the crash-loop
            breaker fails the step when it reaches the configured ``resume_limit``.
        seq: incremented on every accepted event; the journal's sequence number.
    """

    state: State = INITIAL
    job: Job | None = None
    last_job_id: int = 0
    last_units: tuple[ServiceUnit, ...] = ()
    last_version: str | None = None
    interruptions: int = 0
    seq: int = 0
