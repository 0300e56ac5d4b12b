"""The single source of truth: states, triggers and transitions of the updater.

Read this file top to bottom to know everything the updater can do. The runtime machine
(:mod:`updater_fsm.core.machine`), the statechart renderer (:mod:`statecharts.render`) and the
property-based fuzzer all consume :data:`TRANSITIONS` as-is.

Each row is ``(trigger, sources, dest, conditions, action)``:

* ``dest`` ``None`` means an *internal* transition: the state stays, the action still runs
  (idempotent re-requests, download checkpoints, restart resumption in place).
* ``conditions`` name guard methods of the machine model; the first row whose guards all
  pass wins, so rows for the same trigger and source are ordered from specific to general.
* ``action`` names the model method that collects the transition's effects (pure: it only
  appends effect objects and edits the job record).
"""

from __future__ import annotations

import enum

import attrs


class State(enum.StrEnum):
    """Fine-grained FSM states."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    READY = "ready"
    DEPLOYING = "deploying"
    SWITCHING = "switching"
    HEALTH_CHECK = "health_check"
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
    State.DEPLOYING: Stage.INSTALLING,
    State.SWITCHING: Stage.INSTALLING,
    State.HEALTH_CHECK: Stage.INSTALLING,
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
        State.DEPLOYING,
        State.SWITCHING,
        State.HEALTH_CHECK,
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
    STAGED = "staged"
    STAGE_FAILED = "stage_failed"
    SWITCHED = "switched"
    SWITCH_FAILED = "switch_failed"
    POST_CMD_DONE = "post_cmd_done"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    ROLLBACK_REQUESTED = "rollback_requested"
    ROLLBACK_OK = "rollback_ok"
    ROLLBACK_FAILED = "rollback_failed"
    CANCEL = "cancel"
    RESUME = "resume"
    RESET = "reset"


@attrs.frozen
class Transition:
    """One row of the table."""

    trigger: Trigger
    sources: tuple[State, ...]
    dest: State | None
    conditions: tuple[str, ...] = ()
    action: str = ""

    def as_transitions_kwargs(self) -> dict[str, object]:
        """The row in the dict form ``transitions.Machine`` accepts."""
        row: dict[str, object] = {
            "trigger": self.trigger.value,
            "source": [s.value for s in self.sources],
            "dest": self.dest.value if self.dest else None,
        }
        if self.conditions:
            row["conditions"] = list(self.conditions)
        if self.action:
            row["after"] = self.action
        return row


S = State
T = Trigger
_NEW_DOWNLOAD_FROM = (S.IDLE, S.READY, S.SUCCESS, S.FAILED)
_CANCELLABLE = (S.DOWNLOADING, S.VERIFYING, S.READY, S.DEPLOYING)

TRANSITIONS: tuple[Transition, ...] = (
    # --- download -------------------------------------------------------------------
    # Same package again while it downloads, verifies or waits verified: 200, no restart.
    Transition(T.DOWNLOAD_REQUESTED, (S.DOWNLOADING, S.VERIFYING), None, ("same_package",)),
    Transition(T.DOWNLOAD_REQUESTED, (S.READY,), None, ("same_package", "package_fresh")),
    # A verified package kept after a full disk while staging: no new download.
    Transition(
        T.DOWNLOAD_REQUESTED,
        (S.FAILED,),
        S.VERIFYING,
        ("same_package", "package_kept", "package_fresh"),
        "reverify_kept_package",
    ),
    # A new package replaces whatever was verified, installed or failed before.
    Transition(T.DOWNLOAD_REQUESTED, _NEW_DOWNLOAD_FROM, S.DOWNLOADING, (), "begin_download"),
    Transition(T.DOWNLOAD_CHECKPOINT, (S.DOWNLOADING,), None, ("current_job",), "checkpoint"),
    Transition(T.DOWNLOAD_DONE, (S.DOWNLOADING,), S.VERIFYING, ("current_job",), "begin_verify"),
    Transition(T.DOWNLOAD_FAILED, (S.DOWNLOADING,), S.FAILED, ("current_job",), "fail_download"),
    Transition(T.VERIFIED, (S.VERIFYING,), S.READY, ("current_job",), "mark_verified"),
    Transition(T.VERIFY_FAILED, (S.VERIFYING,), S.FAILED, ("current_job",), "fail_download"),
    # --- install --------------------------------------------------------------------
    Transition(
        T.UPDATE_REQUESTED,
        (S.READY,),
        S.DEPLOYING,
        ("requested_version", "package_fresh"),
        "begin_deploy",
    ),
    Transition(
        T.UPDATE_REQUESTED,
        (S.FAILED,),
        S.DEPLOYING,
        ("requested_version", "package_kept", "package_fresh"),
        "redeploy_kept_package",
    ),
    # An expired package is deleted and the request answered 410 (contract §1).
    Transition(T.UPDATE_REQUESTED, (S.READY,), S.IDLE, ("requested_version",), "expire"),
    Transition(T.STAGED, (S.DEPLOYING,), S.SWITCHING, ("current_job",), "begin_switch"),
    Transition(T.STAGE_FAILED, (S.DEPLOYING,), S.FAILED, ("current_job",), "fail_stage"),
    # Each finished post_cmd is journaled, so a resumed switch runs only the ones left.
    Transition(T.POST_CMD_DONE, (S.SWITCHING,), None, ("current_job",), "note_post_cmd"),
    Transition(T.SWITCHED, (S.SWITCHING,), S.HEALTH_CHECK, ("current_job",), "begin_health"),
    Transition(T.HEALTHY, (S.HEALTH_CHECK,), S.SUCCESS, ("current_job",), "finish_success"),
    # Any failure once the switch has begun climbs the rollback ladder (contract §4).
    Transition(
        T.SWITCH_FAILED,
        (S.SWITCHING,),
        S.ROLLBACK_PREVIOUS,
        ("current_job", "can_roll_back"),
        "begin_rollback",
    ),
    Transition(
        T.UNHEALTHY,
        (S.HEALTH_CHECK,),
        S.ROLLBACK_PREVIOUS,
        ("current_job", "can_roll_back"),
        "begin_rollback",
    ),
    Transition(T.SWITCH_FAILED, (S.SWITCHING,), S.FAILED, ("current_job",), "give_up"),
    Transition(T.UNHEALTHY, (S.HEALTH_CHECK,), S.FAILED, ("current_job",), "give_up"),
    # --- rollback ladder ------------------------------------------------------------
    Transition(
        T.ROLLBACK_REQUESTED,
        (S.IDLE, S.SUCCESS, S.FAILED),
        S.ROLLBACK_PREVIOUS,
        ("to_previous",),
        "begin_manual_rollback",
    ),
    Transition(
        T.ROLLBACK_REQUESTED,
        (S.IDLE, S.SUCCESS, S.FAILED),
        S.ROLLBACK_FACTORY,
        ("to_factory",),
        "begin_manual_rollback",
    ),
    Transition(
        T.ROLLBACK_OK,
        (S.ROLLBACK_PREVIOUS, S.ROLLBACK_FACTORY),
        S.FAILED,
        ("current_job", "automatic"),
        "finish_rollback",
    ),
    # A manual rollback that worked is not a failure: back to idle, the device is healthy.
    Transition(
        T.ROLLBACK_OK,
        (S.ROLLBACK_PREVIOUS, S.ROLLBACK_FACTORY),
        S.IDLE,
        ("current_job",),
        "finish_rollback",
    ),
    Transition(
        T.ROLLBACK_FAILED,
        (S.ROLLBACK_PREVIOUS,),
        S.ROLLBACK_FACTORY,
        ("current_job", "has_factory"),
        "escalate_rollback",
    ),
    Transition(T.ROLLBACK_FAILED, (S.ROLLBACK_PREVIOUS,), S.FAILED, ("current_job",), "give_up"),
    Transition(T.ROLLBACK_FAILED, (S.ROLLBACK_FACTORY,), S.FAILED, ("current_job",), "give_up"),
    # --- operator -------------------------------------------------------------------
    Transition(T.CANCEL, _CANCELLABLE, S.IDLE, (), "cancel_job"),
    Transition(T.RESET, (S.IDLE, S.SUCCESS, S.FAILED), S.IDLE, (), "clear"),
    # --- crash-loop breaker ----------------------------------------------------------
    # A step that took the process down `resume_limit` times in a row (no progress in
    # between) has failed: before the switch the job fails cleanly, after it the rollback
    # ladder takes over, a rollback level that keeps dying escalates.
    Transition(
        T.RESUME,
        (S.DOWNLOADING, S.VERIFYING, S.DEPLOYING),
        S.FAILED,
        ("resume_limit_reached",),
        "fail_interrupted",
    ),
    Transition(
        T.RESUME,
        (S.SWITCHING, S.HEALTH_CHECK),
        S.ROLLBACK_PREVIOUS,
        ("resume_limit_reached", "can_roll_back"),
        "roll_back_interrupted",
    ),
    Transition(
        T.RESUME,
        (S.ROLLBACK_PREVIOUS,),
        S.ROLLBACK_FACTORY,
        ("resume_limit_reached", "has_factory"),
        "escalate_interrupted",
    ),
    Transition(
        T.RESUME,
        (S.SWITCHING, S.HEALTH_CHECK, S.ROLLBACK_PREVIOUS, S.ROLLBACK_FACTORY),
        S.FAILED,
        ("resume_limit_reached",),
        "give_up_interrupted",
    ),
    # A finished outcome whose clean-up keeps dying is only reported.
    Transition(T.RESUME, (S.SUCCESS, S.FAILED), None, ("resume_limit_reached",), "report_only"),
    # --- restart recovery (contract §6; one rule per state, see recovery.py) ---------
    Transition(T.RESUME, (S.IDLE,), None, (), "resume_idle"),
    Transition(T.RESUME, (S.DOWNLOADING,), None, (), "resume_download"),
    Transition(T.RESUME, (S.VERIFYING,), None, ("package_on_disk",), "resume_verify"),
    Transition(T.RESUME, (S.VERIFYING,), S.DOWNLOADING, (), "resume_download"),
    Transition(T.RESUME, (S.READY,), None, ("package_on_disk", "package_fresh"), "resume_ready"),
    Transition(T.RESUME, (S.READY,), S.IDLE, (), "expire"),
    Transition(T.RESUME, (S.DEPLOYING,), None, (), "resume_deploy"),
    Transition(T.RESUME, (S.SWITCHING,), None, (), "resume_switch"),
    Transition(T.RESUME, (S.HEALTH_CHECK,), None, (), "resume_health"),
    Transition(T.RESUME, (S.ROLLBACK_PREVIOUS, S.ROLLBACK_FACTORY), None, (), "resume_rollback"),
    Transition(T.RESUME, (S.SUCCESS, S.FAILED), None, (), "resume_terminal"),
)

#: Initial state of a device that has never run an update.
INITIAL = State.IDLE
