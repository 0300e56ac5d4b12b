"""What the device's history keeps of a finished job: one :class:`HistoryEntry`.

Pure: the entry is derived from the journaled job and the state it ended in, so the
decision that ends a job and the restart that finds it ended build the very same entry
(the history file, :mod:`updater_fsm.history`, keeps one entry per job id). When a job
ends is decided here too (:func:`ended_job`), in one place for every row of the table.
"""

from __future__ import annotations

import enum

import attrs

from updater_fsm.core.errors import ErrorCode
from updater_fsm.core.record import Job, JobKind
from updater_fsm.core.states import State

#: How many jobs the history keeps (the oldest go first).
HISTORY_LIMIT = 100

#: The states a job rests in once it ended.
RESTING_STATES = frozenset({State.IDLE, State.SUCCESS, State.FAILED})


class Outcome(enum.StrEnum):
    """How a job ended."""

    SUCCESS = "success"
    FAILED = "failed"
    #: An install that failed and whose rollback put a working version back.
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"
    #: The verified package was not installed within its trust window.
    EXPIRED = "expired"
    #: A verified package nobody installed, replaced by a new download.
    REPLACED = "replaced"


class Source(enum.StrEnum):
    """Who asked for the job."""

    #: The HTTP API: device-api, or the ``tope-updater`` CLI (a client of the same API).
    API = "api"
    #: A fleet server's action (``fleet_action`` says which).
    FLEET = "fleet"
    #: A package file of the device (a ``file://`` URL: ``tope-updater install``, a USB
    #: stick), whoever asked for it.
    FILE = "file"


def source_of(job: Job) -> Source:
    """Who asked for ``job``: the fleet, a package file of the device, else the API."""
    if job.fleet_action is not None:
        return Source.FLEET
    if job.request is not None and job.request.package_url[:7].lower() == "file://":
        return Source.FILE
    return Source.API


_ROLLED_BACK = frozenset({ErrorCode.ROLLBACK_LEVEL_1_SUCCESS, ErrorCode.ROLLBACK_LEVEL_2_SUCCESS})


@attrs.frozen
class HistoryEntry:
    """One finished job.

    Attributes:
        job_id: the job's id (the history keeps one entry per id).
        kind: ``update`` or ``manual_rollback``.
        from_version: the version running when the install began (None when the job
            ended before the switch, where it was not yet looked at).
        to_version: the version installed, or rolled back to by hand.
        source: who asked (:class:`Source`); ``fleet_action`` names the fleet's action.
        file: the package's file name (None for a manual rollback).
        started_at, ended_at: UNIX times.
        outcome: how it ended.
        error_code, error: the failure (None on success).
        rollback_level: 0, 1 (previous) or 2 (factory).
    """

    job_id: int
    kind: JobKind
    from_version: str | None
    to_version: str | None
    source: Source
    fleet_action: str | None
    file: str | None
    started_at: float
    ended_at: float
    outcome: Outcome
    error_code: ErrorCode | None
    error: str | None
    rollback_level: int


def outcome_of(job: Job, state: State) -> Outcome:
    """How ``job`` ended, resting in ``state``."""
    if state is State.SUCCESS:
        return Outcome.SUCCESS
    code = job.error_code
    if code is ErrorCode.CANCELLED:
        return Outcome.CANCELLED
    if code is ErrorCode.PACKAGE_EXPIRED:
        return Outcome.EXPIRED
    if code in _ROLLED_BACK:
        return Outcome.ROLLED_BACK
    if code is None and job.kind is JobKind.MANUAL_ROLLBACK and state is State.IDLE:
        return Outcome.SUCCESS  # a manual rollback that worked rests in idle
    return Outcome.FAILED


def entry_for(job: Job, state: State, *, outcome: Outcome | None = None) -> HistoryEntry:
    """The history entry of ``job``, ended in ``state`` at ``job.updated_at``."""
    manual = job.kind is JobKind.MANUAL_ROLLBACK
    return HistoryEntry(
        job_id=job.job_id,
        kind=job.kind,
        from_version=job.from_version,
        to_version=job.rollback_target if manual else job.version,
        source=source_of(job),
        fleet_action=job.fleet_action,
        file=job.request.package_name if job.request is not None else None,
        started_at=job.created_at,
        ended_at=job.updated_at,
        outcome=outcome or outcome_of(job, state),
        error_code=job.error_code,
        error=job.error,
        rollback_level=job.rollback_level,
    )


def ended_job(before: Job | None, source: State, after: Job | None, dest: State) -> Job | None:
    """The job that a transition ``source → dest`` ended, if any.

    A job ends when the machine leaves a working state for a resting one (success, failed,
    idle: done, failed, cancelled, expired, rolled back), or when a new job replaces one
    that was still working (a verified package replaced by a new download).
    """
    if before is None or source in RESTING_STATES:
        return None  # nothing was running: a finished job was recorded when it finished
    if after is not None and after.job_id == before.job_id:
        return after if dest in RESTING_STATES else None
    return before
