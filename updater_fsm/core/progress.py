"""The progress snapshot: what ``/progress``, ``/events`` and device-api reports show.

Built from the journaled record, the live transfer figures and the link versions by one
pure function, :func:`build_snapshot`, so every consumer tells the same story — and none
shows a URL's credentials (the error goes through :func:`~updater_fsm.core.urls.redact_url`).
The legacy ``stage`` comes from :data:`updater_fsm.core.table.STAGE_OF` and nowhere else.
"""

from __future__ import annotations

from typing import Any

import attrs

from updater_fsm.core.events import LinkVersions
from updater_fsm.core.printer import PrinterStatus
from updater_fsm.core.record import JobKind, Record
from updater_fsm.core.states import STAGE_OF, Stage, State
from updater_fsm.core.urls import redact_url

#: Fixed progress of the install states, increasing so ``installing`` never goes backwards.
_INSTALL_PROGRESS = {
    State.DEPLOYING: 10,
    State.SWITCHING: 40,
    State.HEALTH_CHECK: 70,
    State.UPDATER_STAGING: 72,
    State.UPDATER_SWITCHING: 74,
    State.UPDATER_PROBATION: 76,
    State.ROLLBACK_PREVIOUS: 80,
    State.ROLLBACK_FACTORY: 90,
}


@attrs.frozen
class Retry:
    """A download attempt failed and another follows: why, when, which of how many."""

    reason: str
    delay_s: float
    next_attempt: int
    max_attempts: int

    def words(self) -> str:
        """``cannot connect to h:80: connection refused; retrying in 4 s, attempt 3 of 8``."""
        return (
            f"{self.reason}; retrying in {said_seconds(self.delay_s)},"
            f" attempt {self.next_attempt} of {self.max_attempts}"
        )


@attrs.frozen
class Transfer:
    """Live download figures, updated by the download executor (not journaled).

    ``retry`` is set while the download waits to try again (and until bytes flow again):
    ``/progress``'s message shows it, so a retry is visible without a journal write."""

    job_id: int
    bytes_done: int
    total: int
    speed_bps: float = 0.0
    eta_s: float | None = None
    retry: Retry | None = None


def said_seconds(seconds: float) -> str:
    """A duration for people: ``45 s``, ``0.3 s`` below one second."""
    return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.1f} s"


@attrs.frozen
class Snapshot:
    """One consistent view of the updater. ``data()`` is the contract's ``/progress`` body."""

    stage: Stage
    progress: int
    message: str
    error: str | None
    state: State
    version: str | None
    bytes_downloaded: int
    total_bytes: int
    speed_bps: float
    eta_s: float | None
    current_version: str | None
    previous_version: str | None
    factory_version: str | None
    rollback_level: int
    seq: int
    job_id: int = 0
    fleet_action: str | None = None
    #: the version that ran when the job's install (or manual rollback) began; None before
    #: the switch of an install and with no job
    from_version: str | None = None
    #: while a download waits to try again: why, when, which attempt of how many
    retry: Retry | None = None

    def data(self) -> dict[str, Any]:
        """The ``data`` object of ``GET /progress`` (contract fields first, then extras)."""
        return {
            "stage": self.stage.value,
            "progress": self.progress,
            "message": self.message,
            "error": self.error,
            "state": self.state.value,
            "version": self.version,
            "bytes_downloaded": self.bytes_downloaded,
            "total_bytes": self.total_bytes,
            "speed_bps": round(self.speed_bps, 1),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "current_version": self.current_version,
            "previous_version": self.previous_version,
            "factory_version": self.factory_version,
            "rollback_level": self.rollback_level,
            "from_version": self.from_version,
            "retry": None
            if self.retry is None
            else {
                "reason": self.retry.reason,
                "in_s": round(self.retry.delay_s, 1),
                "attempt": self.retry.next_attempt,
                "attempts": self.retry.max_attempts,
            },
        }

    def report(self) -> dict[str, Any]:
        """The device-api report body (contract §2): ``version`` spelled ``v1.2.3``."""
        return {
            "stage": self.stage.value,
            "progress": self.progress,
            "message": self.message,
            "error": self.error,
            "version": f"v{self.version}" if self.version else None,
        }


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


def build_snapshot(
    record: Record,
    transfer: Transfer | None,
    links: LinkVersions,
    *,
    floor: int = 0,
    printer: PrinterStatus | None = None,
) -> Snapshot:
    """Compose the snapshot.

    Args:
        record: the machine's record.
        transfer: live download figures (ignored unless they belong to the current job).
        links: the versions the symlinks name now.
        floor: the last progress shown in this stage; the result never goes below it, so a
            download that resumes from its last durable byte does not make the bar jump back.
        printer: the busy probe's latest answer while an install waits for the printer
            (live, like ``transfer``: not journaled).
    """
    state = record.state
    stage = STAGE_OF[state]
    job = record.job
    version = job.version if job else None
    if job is not None and job.kind is JobKind.MANUAL_ROLLBACK:
        version = job.rollback_target
    total = job.request.package_size if job and job.request else 0
    done = job.durable.offset if job else 0
    speed, eta, retry = 0.0, None, None
    if transfer is not None and job is not None and transfer.job_id == job.job_id:
        done, speed, eta = max(done, transfer.bytes_done), transfer.speed_bps, transfer.eta_s
        retry = transfer.retry
    if state in (State.VERIFYING, State.READY, State.WAITING_IDLE) or state in _INSTALL_PROGRESS:
        done = total
    error = job.error if job is not None and state in (State.FAILED, State.IDLE) else None
    if error is not None:
        error = redact_url(error)  # download errors name the URL; never show its credentials

    if state is State.DOWNLOADING:
        progress = min(99, done * 100 // total) if total else 0
        message = f"Downloading package... {_mb(done)} / {_mb(total)}"
        if retry is not None:
            message += f" ({retry.words()})"
    elif state is State.VERIFYING:
        progress, message = 50, f"Verifying package v{version}..."
    elif state is State.READY:
        progress, message = 100, f"Package v{version} verified, ready to install"
    elif state is State.WAITING_IDLE:
        progress = 100
        if printer is not None and printer.free:
            message = "The printer is free: starting the install"
        else:
            reason = printer.reason if printer is not None else job.printer_reason if job else ""
            message = f"Waiting for the printer to be free: {reason or 'asking the printer'}"
    elif state is State.DEPLOYING:
        progress, message = _INSTALL_PROGRESS[state], f"Staging v{version}..."
    elif state is State.SWITCHING:
        progress, message = _INSTALL_PROGRESS[state], f"Switching services to v{version}..."
    elif state is State.HEALTH_CHECK:
        progress, message = _INSTALL_PROGRESS[state], f"Checking health of v{version}..."
    elif state is State.UPDATER_STAGING:
        updater = job.updater_version if job else None
        progress = _INSTALL_PROGRESS[state]
        message = f"v{version} is healthy; installing the updater {updater}..."
    elif state is State.UPDATER_SWITCHING:
        updater = job.updater_version if job else None
        progress, message = _INSTALL_PROGRESS[state], f"Restarting into the updater {updater}..."
    elif state is State.UPDATER_PROBATION:
        updater = job.updater_version if job else None
        progress, message = _INSTALL_PROGRESS[state], f"Confirming the updater {updater}..."
    elif state in (State.ROLLBACK_PREVIOUS, State.ROLLBACK_FACTORY):
        target = job.rollback_target if job else None
        which = "factory version" if state is State.ROLLBACK_FACTORY else "previous version"
        progress, message = _INSTALL_PROGRESS[state], f"Rolling back to {which} v{target}..."
    elif state is State.SUCCESS:
        progress, message = 100, f"Update to v{version} complete"
    elif state is State.FAILED:
        progress, message = 0, f"Update failed: {error}"
    elif job is not None and job.kind is JobKind.MANUAL_ROLLBACK and job.rollback_target:
        progress, message = 0, f"Rolled back to v{job.rollback_target}"
        if not job.units:  # say so: the links moved, but nothing was restarted onto them
            message += " (no units known: none restarted)"
    elif error:
        progress, message = 0, f"Idle ({error})"
    else:
        progress, message = 0, "Idle, waiting for an update"
    return Snapshot(
        stage=stage,
        progress=max(progress, floor),
        message=message,
        error=error,
        state=state,
        version=version,
        bytes_downloaded=done,
        total_bytes=total,
        speed_bps=speed,
        eta_s=eta,
        current_version=links.current,
        previous_version=links.previous,
        factory_version=links.factory,
        rollback_level=job.rollback_level if job else 0,
        seq=record.seq,
        job_id=job.job_id if job else 0,
        fleet_action=job.fleet_action if job else None,
        from_version=job.from_version if job else None,
        retry=retry if state is State.DOWNLOADING else None,
    )
