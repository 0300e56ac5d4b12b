"""The updater's states, the legacy stages device-api knows, and the triggers.

Plain enums and sets, shared by the transition table (:mod:`.table`), the guards and
actions (:mod:`.decisions`) and everything that shows a state.
"""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    """Fine-grained FSM states."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    READY = "ready"
    WAITING_IDLE = "waiting_idle"
    DEPLOYING = "deploying"
    SWITCHING = "switching"
    HEALTH_CHECK = "health_check"
    #: The device is healthy on the new version; the package's updater bundle is installed
    #: into a new slot of the updater itself.
    UPDATER_STAGING = "updater_staging"
    #: The updater journals that it switches itself, moves its ``current`` link and exits
    #: for systemd to start the new one (which resumes here and proves itself).
    UPDATER_SWITCHING = "updater_switching"
    #: The new updater runs and has not confirmed itself yet (the guard may still put the
    #: old one back).
    UPDATER_PROBATION = "updater_probation"
    ROLLBACK_PREVIOUS = "rollback_previous"
    ROLLBACK_FACTORY = "rollback_factory"
    SUCCESS = "success"
    FAILED = "failed"


class Stage(enum.StrEnum):
    """The legacy ``stage`` names device-api and the GUI know (contract §1)."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    TO_INSTALL = "toInstall"
    INSTALLING = "installing"
    SUCCESS = "success"
    FAILED = "failed"


#: The only place the fine states are mapped onto the legacy ``stage`` (contract §1).
STAGE_OF: dict[State, Stage] = {
    State.IDLE: Stage.IDLE,
    State.DOWNLOADING: Stage.DOWNLOADING,
    State.VERIFYING: Stage.VERIFYING,
    State.READY: Stage.TO_INSTALL,
    State.WAITING_IDLE: Stage.TO_INSTALL,
    State.DEPLOYING: Stage.INSTALLING,
    State.SWITCHING: Stage.INSTALLING,
    State.HEALTH_CHECK: Stage.INSTALLING,
    State.UPDATER_STAGING: Stage.INSTALLING,
    State.UPDATER_SWITCHING: Stage.INSTALLING,
    State.UPDATER_PROBATION: Stage.INSTALLING,
    State.ROLLBACK_PREVIOUS: Stage.INSTALLING,
    State.ROLLBACK_FACTORY: Stage.INSTALLING,
    State.SUCCESS: Stage.SUCCESS,
    State.FAILED: Stage.FAILED,
}

#: States in which a download or install job is running (a different job must wait: 409).
BUSY_STATES = frozenset(
    {
        State.DOWNLOADING,
        State.VERIFYING,
        State.WAITING_IDLE,
        State.DEPLOYING,
        State.SWITCHING,
        State.HEALTH_CHECK,
        State.UPDATER_STAGING,
        State.UPDATER_SWITCHING,
        State.UPDATER_PROBATION,
        State.ROLLBACK_PREVIOUS,
        State.ROLLBACK_FACTORY,
    }
)

#: States from which the services may already be running a different version.
INSTALL_STATES = frozenset(s for s, stage in STAGE_OF.items() if stage is Stage.INSTALLING)

TERMINAL_STATES = frozenset({State.SUCCESS, State.FAILED})


class Trigger(enum.StrEnum):
    """Every event the machine understands."""

    DOWNLOAD_REQUESTED = "download_requested"
    DOWNLOAD_CHECKPOINT = "download_checkpoint"
    DOWNLOAD_DONE = "download_done"
    DOWNLOAD_FAILED = "download_failed"
    VERIFIED = "verified"
    VERIFY_FAILED = "verify_failed"
    UPDATE_REQUESTED = "update_requested"
    PRINTER_FREE = "printer_free"
    PRINTER_ANSWERED = "printer_answered"
    WAIT_EXPIRED = "wait_expired"
    WAIT_FAILED = "wait_failed"
    STAGED = "staged"
    STAGE_FAILED = "stage_failed"
    SWITCHED = "switched"
    SWITCH_FAILED = "switch_failed"
    POST_CMD_DONE = "post_cmd_done"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UPDATER_STAGED = "updater_staged"
    UPDATER_STAGE_FAILED = "updater_stage_failed"
    UPDATER_STARTED = "updater_started"
    UPDATER_CONFIRMED = "updater_confirmed"
    UPDATER_ROLLED_BACK = "updater_rolled_back"
    ROLLBACK_REQUESTED = "rollback_requested"
    ROLLBACK_OK = "rollback_ok"
    ROLLBACK_FAILED = "rollback_failed"
    CANCEL = "cancel"
    RESUME = "resume"
    RESET = "reset"


#: Initial state of a device that has never run an update.
INITIAL = State.IDLE
