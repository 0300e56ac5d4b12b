"""Effects: what the machine asks the outside world to do, as frozen attrs classes.

The machine returns a list of these from every accepted event; the effect runner
(:mod:`updater_fsm.runner`) executes them in order, after the new state is journaled, and
feeds each result back as an event. An effect carries everything its executor needs, so
executors never read the machine's state.
"""

from __future__ import annotations

import attrs

from updater_fsm.core.events import DownloadRequest, ResumePoint
from updater_fsm.core.history import HistoryEntry
from updater_fsm.core.manifest import ServiceUnit


class Effect:
    """Base of all effects."""


@attrs.frozen
class StartDownload(Effect):
    """Download (or resume) the package into the downloads directory."""

    job_id: int
    request: DownloadRequest
    resume: ResumePoint = attrs.field(factory=ResumePoint)


@attrs.frozen
class StopJob(Effect):
    """Cancel whatever task is still running for ``job_id`` (download, staging…)."""

    job_id: int


@attrs.frozen
class DiscardPackage(Effect):
    """Delete ``downloads/<name>`` and its ``.part`` (cancel, failure, expiry, success)."""

    package_name: str


@attrs.frozen
class VerifyPackage(Effect):
    """Check size, MD5, SHA-256 and signature; ``md5``/``sha256`` None = hash the file again."""

    job_id: int
    request: DownloadRequest
    md5: str | None = None
    sha256: str | None = None


@attrs.frozen
class WaitForPrinter(Effect):
    """Ask the busy probe every ``busy_poll_s`` until the printer is free (``PrinterFree``),
    or until ``expires_at`` (UNIX time, the package's trust window: ``WaitExpired``).
    Nothing is stopped, staged or switched meanwhile; each answer only updates /progress."""

    job_id: int
    expires_at: float


@attrs.frozen
class ShowScreen(Effect):
    """Open the progress display at the printer (``screen_unit`` or ``screen_command``).

    Asked when an install or a rollback begins; never waited for, and whatever happens to
    the display changes nothing in the update. Asking while it is open is harmless.
    """


@attrs.frozen
class StageSnapshot(Effect):
    """Build ``versions/v<version>/`` from the current snapshot plus the package."""

    job_id: int
    version: str
    package_name: str


@attrs.frozen
class DiscardStaging(Effect):
    """Remove a half-built ``versions/v<version>.staging`` (and an unused ``v<version>``)."""

    version: str


@attrs.frozen
class SwitchVersion(Effect):
    """Stop units, point ``previous``→old and ``current``→new, start units, run post_cmds.

    Idempotent, so a restart in ``switching`` simply runs it again; ``post_cmds_done`` (all
    units' post_cmds, in order) are skipped: their completion was journaled.
    """

    job_id: int
    version: str
    package_name: str
    from_version: str | None
    units: tuple[ServiceUnit, ...]
    post_cmds_done: int = 0


@attrs.frozen
class CheckHealth(Effect):
    """Units active and stable for the settle period; probes pass."""

    job_id: int
    units: tuple[ServiceUnit, ...]


@attrs.frozen
class StageUpdater(Effect):
    """Install the package's updater bundle into the slot ``<prefix>/versions/<version>``
    (offline, from the bundle's wheels; a half-built slot is built again). Idempotent."""

    job_id: int
    version: str
    package_name: str
    package_version: str


@attrs.frozen
class SwitchUpdater(Effect):
    """Make the updater ``version`` run, idempotently, judging by what runs and the disk:

    * the guard's record says ``version`` failed: ``UpdaterRolledBack``;
    * this process is ``version``: ``UpdaterStarted``;
    * else write the probation for the guard, point ``<prefix>/previous`` at this slot and
      ``<prefix>/current`` at ``version``, and exit for systemd to start the new updater.
    """

    job_id: int
    version: str


@attrs.frozen
class ConfirmUpdater(Effect):
    """End the new updater's probation once it answers ``/healthz`` with its version
    (``UpdaterConfirmed``); ``UpdaterRolledBack`` when the old one runs instead."""

    job_id: int
    version: str


@attrs.frozen
class CollectUpdaterSlots(Effect):
    """Delete the updater slots no link names and the guard's record (once journaled)."""


@attrs.frozen
class RollBack(Effect):
    """Stop units, point ``current`` at ``target_version``, restore external files, start
    units and check their health. Idempotent.

    Attributes:
        level: 1 (previous) or 2 (factory).
        failed_version: the version being abandoned (None for a manual rollback).
        previous_after: what ``previous`` names once the rollback is done.
        target_units: the units ``target_version`` was installed with, when known: their
            health probes (not those of the version left behind) judge the rollback.
    """

    job_id: int
    level: int
    target_version: str
    failed_version: str | None
    units: tuple[ServiceUnit, ...]
    previous_after: str | None = None
    target_units: tuple[ServiceUnit, ...] = ()


@attrs.frozen
class RaiseRollbackFloor(Effect):
    """``version`` was installed successfully: the rollback floor becomes the higher of it
    and what it was. Kept in a file of its own beside the journal, so that neither a
    factory rollback, nor a self-update's way back to an older updater, nor a journal set
    aside can lower it. Idempotent."""

    version: str


@attrs.frozen
class RemoveSnapshot(Effect):
    """Delete a failed snapshot (never one a link names)."""

    version: str


@attrs.frozen
class CollectGarbage(Effect):
    """Delete snapshots beyond current, previous and factory; drop external-file backups."""


@attrs.frozen
class Report(Effect):
    """Push the current progress snapshot to device-api now (``terminal`` = never drop)."""

    terminal: bool = False


@attrs.frozen
class RecordHistory(Effect):
    """Keep ``entry`` in the device's history (``<state dir>/history.json``, the last 100
    jobs). Idempotent by ``entry.job_id``: a restart that finds the outcome journaled asks
    again, and a job already kept is not written twice."""

    entry: HistoryEntry
