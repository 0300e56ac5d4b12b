"""Events: everything that can happen to the updater, as frozen attrs classes.

API calls, effect results and restarts all become one of these and enter the machine
through :meth:`updater_fsm.core.machine.UpdaterMachine.handle`. Results of effects carry the
``job_id`` they belong to, so a late result of a cancelled or replaced job is ignored
instead of steering the current one.
"""

from __future__ import annotations

import enum
from typing import ClassVar

import attrs

from updater_fsm.core.errors import Failure
from updater_fsm.core.manifest import ServiceUnit
from updater_fsm.core.printer import PrinterStatus
from updater_fsm.core.states import Trigger


@attrs.frozen
class DownloadRequest:
    """The validated body of ``POST /download`` (contract §1)."""

    version: str
    package_url: str
    package_name: str
    package_size: int
    package_md5: str
    package_sha256: str | None = None
    package_signature: str | None = None

    def same_package(self, other: DownloadRequest) -> bool:
        """True when ``other`` asks for the very same bytes (an idempotent re-request)."""
        return (
            self.version == other.version
            and self.package_url == other.package_url
            and self.package_name == other.package_name
            and self.package_size == other.package_size
            and self.package_md5 == other.package_md5
            and (other.package_sha256 is None or self.package_sha256 == other.package_sha256)
        )


class RollbackTarget(enum.StrEnum):
    """Where a rollback asked for by hand goes."""

    PREVIOUS = "previous"
    FACTORY = "factory"


@attrs.frozen
class ResumePoint:
    """How far a download is durable, and the validators to continue it with.

    One type from the download loop to the journal: the downloader reports it after each
    fsync of the ``.part``, the machine journals it in the job, and a resumed download
    starts from it (``Range`` from ``offset``, ``If-Range`` with ``etag`` or
    ``last_modified``). ``offset`` 0 means from the start.
    """

    offset: int = 0
    etag: str | None = None
    last_modified: str | None = None


@attrs.frozen
class LinkVersions:
    """Which versions the ``current``/``previous``/``factory`` links name (None = missing)."""

    current: str | None = None
    previous: str | None = None
    factory: str | None = None


@attrs.frozen
class DiskFacts:
    """What a restarted updater finds on disk; input of the recovery rules.

    Attributes:
        part_size: size of ``downloads/<package>.part``, None when absent.
        package_present: the completed ``downloads/<package>`` exists.
        links: the versions the symlinks name right now.
    """

    part_size: int | None = None
    package_present: bool = False
    links: LinkVersions = LinkVersions()


class Event:
    """Base of all events. ``trigger`` names the table's trigger this event fires."""

    trigger: ClassVar[Trigger]


@attrs.frozen
class DownloadRequested(Event):
    """``POST /download``, or a fleet server's deployment.

    ``fleet_action``: the id of the fleet server's action this download carries out (hawkBit
    DDI), journaled with the job so a restart resumes the action and its feedback; None for
    device-api's downloads.
    """

    trigger = Trigger.DOWNLOAD_REQUESTED
    request: DownloadRequest
    fleet_action: str | None = None


@attrs.frozen
class DownloadCheckpoint(Event):
    """The first ``point.offset`` bytes of the ``.part`` file are fsynced."""

    trigger = Trigger.DOWNLOAD_CHECKPOINT
    job_id: int
    point: ResumePoint


@attrs.frozen
class DownloadDone(Event):
    trigger = Trigger.DOWNLOAD_DONE
    job_id: int
    size: int
    md5: str
    sha256: str


@attrs.frozen
class DownloadFailed(Event):
    trigger = Trigger.DOWNLOAD_FAILED
    job_id: int
    failure: Failure


@attrs.frozen
class Verified(Event):
    trigger = Trigger.VERIFIED
    job_id: int


@attrs.frozen
class VerifyFailed(Event):
    trigger = Trigger.VERIFY_FAILED
    job_id: int
    failure: Failure


@attrs.frozen
class UpdateRequested(Event):
    """``POST /update``; ``printer`` is the busy probe's answer when the engine asked it
    (``busy_policy = refuse``), None when nobody asked (no probe, or an install that waits)."""

    trigger = Trigger.UPDATE_REQUESTED
    version: str
    printer: PrinterStatus | None = None


@attrs.frozen
class PrinterFree(Event):
    """The busy probe said the printer is free: the waiting install may start."""

    trigger = Trigger.PRINTER_FREE
    job_id: int


@attrs.frozen
class PrinterAnswered(Event):
    """The busy probe answered (busy) and the updater survived it: waiting is progress, so
    restarts during a long print are not counted by the crash-loop breaker, and the reason is
    journaled and reported to device-api. Posted once per wait (per start of the updater), not
    per poll."""

    trigger = Trigger.PRINTER_ANSWERED
    job_id: int
    status: PrinterStatus


@attrs.frozen
class WaitExpired(Event):
    """The printer stayed busy until the package's trust window closed."""

    trigger = Trigger.WAIT_EXPIRED
    job_id: int


@attrs.frozen
class WaitFailed(Event):
    """Waiting for the printer broke down (the busy gate raised what it should not): the
    job fails, keeping its verified package; nothing was stopped, the printer prints on."""

    trigger = Trigger.WAIT_FAILED
    job_id: int
    failure: Failure


@attrs.frozen
class Staged(Event):
    """The new snapshot is complete on disk; ``links`` as they were before the switch.

    ``printer``: with a busy probe configured, its answer right after staging — the switch
    stops the printer's services, and a print may have started while the snapshot was built.
    ``updater_version``: the updater the package carries a bundle of (None: none).
    """

    trigger = Trigger.STAGED
    job_id: int
    units: tuple[ServiceUnit, ...]
    links: LinkVersions
    printer: PrinterStatus | None = None
    updater_version: str | None = None


@attrs.frozen
class StageFailed(Event):
    """Staging failed (a full disk keeps the package, see the machine)."""

    trigger = Trigger.STAGE_FAILED
    job_id: int
    failure: Failure


@attrs.frozen
class Switched(Event):
    trigger = Trigger.SWITCHED
    job_id: int


@attrs.frozen
class SwitchFailed(Event):
    trigger = Trigger.SWITCH_FAILED
    job_id: int
    failure: Failure


@attrs.frozen
class PostCmdDone(Event):
    """The first ``done`` post_cmds of the switch (all units, in order) have finished."""

    trigger = Trigger.POST_CMD_DONE
    job_id: int
    done: int


@attrs.frozen
class Healthy(Event):
    trigger = Trigger.HEALTHY
    job_id: int


@attrs.frozen
class Unhealthy(Event):
    trigger = Trigger.UNHEALTHY
    job_id: int
    failure: Failure


@attrs.frozen
class UpdaterStaged(Event):
    """The new updater's slot is complete (``<prefix>/versions/<version>``)."""

    trigger = Trigger.UPDATER_STAGED
    job_id: int


@attrs.frozen
class UpdaterStageFailed(Event):
    trigger = Trigger.UPDATER_STAGE_FAILED
    job_id: int
    failure: Failure


@attrs.frozen
class UpdaterStarted(Event):
    """The updater that resumed the switch is the new one: its probation begins."""

    trigger = Trigger.UPDATER_STARTED
    job_id: int


@attrs.frozen
class UpdaterConfirmed(Event):
    """The new updater proved itself (journal read, /healthz answered with its version,
    settled) and ended its probation."""

    trigger = Trigger.UPDATER_CONFIRMED
    job_id: int


@attrs.frozen
class UpdaterRolledBack(Event):
    """The old updater runs again: the guard found the new one failing and switched back
    (``failure`` says why, from the guard's record)."""

    trigger = Trigger.UPDATER_ROLLED_BACK
    job_id: int
    failure: Failure


@attrs.frozen
class RollbackRequested(Event):
    """Operator asks to go back by hand (``POST /rollback``).

    Attributes:
        target: the version ``previous`` names, or the factory version.
        links: the versions the symlinks name right now.
        units: the configured units (config ``units``); restarted only when the journal
            knows none from a successful install, whose units (with their probes) win.
        printer: the busy probe's answer (None without a probe): a rollback stops the
            printer's services too, so it is refused while the printer is busy.
    """

    trigger = Trigger.ROLLBACK_REQUESTED
    target: RollbackTarget = attrs.field(converter=RollbackTarget)
    links: LinkVersions
    units: tuple[ServiceUnit, ...] = ()
    printer: PrinterStatus | None = None


@attrs.frozen
class RollbackOk(Event):
    trigger = Trigger.ROLLBACK_OK
    job_id: int


@attrs.frozen
class RollbackFailed(Event):
    trigger = Trigger.ROLLBACK_FAILED
    job_id: int
    failure: Failure


@attrs.frozen
class Cancel(Event):
    trigger = Trigger.CANCEL


@attrs.frozen
class Resume(Event):
    """First event after a (re)start: continue whatever the journal says was running."""

    trigger = Trigger.RESUME
    facts: DiskFacts


@attrs.frozen
class Reset(Event):
    trigger = Trigger.RESET
