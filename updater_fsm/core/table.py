"""The single source of truth: every transition of the updater, one row each.

Read this file top to bottom to know everything the updater can do. The runtime machine
(:mod:`updater_fsm.core.machine`), the statechart renderer (:mod:`statecharts.render`) and the
property-based fuzzer all consume :data:`TRANSITIONS` as-is; ``transitions`` evaluates it at
run time.

Each row is ``(trigger, sources, dest, conditions, action)``:

* ``dest`` ``None`` means an *internal* transition: the state stays, the action still runs
  (idempotent re-requests, download checkpoints, restart resumption in place).
* ``conditions`` are guards of :class:`~updater_fsm.core.decisions.Decisions` (pure
  predicates on the record and the event); the first row whose guards all pass wins, so
  rows for the same trigger and source are ordered from specific to general.
* ``action`` is the :class:`~updater_fsm.core.decisions.Decisions` method that collects the
  transition's effects (pure: it only appends effect objects and edits the job record).

Guards and actions are referenced as functions, not names, so "find references" and
renames reach every row. Each takes the event of its row's trigger
(``tests/updater_fsm/test_machine.py`` checks the annotations against the table).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import attrs
from transitions import EventData

from updater_fsm.core.decisions import Decisions
from updater_fsm.core.states import (
    BUSY_STATES,
    INITIAL,
    INSTALL_STATES,
    STAGE_OF,
    TERMINAL_STATES,
    Stage,
    State,
    Trigger,
)

__all__ = [
    "BUSY_STATES",
    "CANCELLABLE_STATES",
    "INITIAL",
    "INSTALL_STATES",
    "STAGE_OF",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Action",
    "Guard",
    "Stage",
    "State",
    "Transition",
    "Trigger",
]

#: A guard: ``(decisions, event) -> bool``; the event is the one of the row's trigger.
Guard = Callable[[Decisions, Any], bool]
#: An action: ``(decisions, event) -> None``; it edits the record and appends effects.
Action = Callable[[Decisions, Any], None]


def _bound(fn: Callable[[Decisions, Any], Any]) -> Callable[[EventData], Any]:
    """``fn`` in the form ``transitions`` calls (``send_event=True``): one ``EventData``."""

    def call(data: EventData) -> Any:
        return fn(cast(Decisions, data.model), data.kwargs["event"])

    call.__name__ = fn.__name__
    call.__qualname__ = fn.__qualname__
    return call


@attrs.frozen
class Transition:
    """One row of the table."""

    trigger: Trigger
    sources: tuple[State, ...]
    dest: State | None
    conditions: tuple[Guard, ...] = ()
    action: Action | None = None

    def as_transitions_kwargs(self) -> dict[str, object]:
        """The row in the dict form ``transitions.Machine`` accepts."""
        row: dict[str, object] = {
            "trigger": self.trigger.value,
            "source": [s.value for s in self.sources],
            "dest": self.dest.value if self.dest else None,
        }
        if self.conditions:
            row["conditions"] = [_bound(guard) for guard in self.conditions]
        if self.action is not None:
            row["after"] = _bound(self.action)
        return row


S = State
T = Trigger
D = Decisions
_NEW_DOWNLOAD_FROM = (S.IDLE, S.READY, S.SUCCESS, S.FAILED)
_CANCELLABLE = (S.DOWNLOADING, S.VERIFYING, S.READY, S.DEPLOYING)

TRANSITIONS: tuple[Transition, ...] = (
    # --- download -------------------------------------------------------------------
    # Same package again while it downloads, verifies or waits verified: 200, no restart.
    Transition(
        T.DOWNLOAD_REQUESTED, (S.DOWNLOADING, S.VERIFYING), None, (D.same_package,), D.join_request
    ),
    Transition(
        T.DOWNLOAD_REQUESTED,
        (S.READY, S.WAITING_IDLE),
        None,
        (D.same_package, D.package_fresh),
        D.join_request,
    ),
    # A verified package kept after a full disk while staging: no new download.
    Transition(
        T.DOWNLOAD_REQUESTED,
        (S.FAILED,),
        S.VERIFYING,
        (D.same_package, D.package_kept, D.package_fresh),
        D.reverify_kept_package,
    ),
    # A new package replaces whatever was verified, installed or failed before.
    Transition(T.DOWNLOAD_REQUESTED, _NEW_DOWNLOAD_FROM, S.DOWNLOADING, (), D.begin_download),
    Transition(T.DOWNLOAD_CHECKPOINT, (S.DOWNLOADING,), None, (D.current_job,), D.checkpoint),
    Transition(T.DOWNLOAD_DONE, (S.DOWNLOADING,), S.VERIFYING, (D.current_job,), D.begin_verify),
    Transition(T.DOWNLOAD_FAILED, (S.DOWNLOADING,), S.FAILED, (D.current_job,), D.fail_download),
    Transition(T.VERIFIED, (S.VERIFYING,), S.READY, (D.current_job,), D.mark_verified),
    Transition(T.VERIFY_FAILED, (S.VERIFYING,), S.FAILED, (D.current_job,), D.fail_download),
    # --- install --------------------------------------------------------------------
    # With a busy probe and `busy_policy = wait`, an install first waits for the printer:
    # nothing is stopped, staged or switched until the probe says it is free.
    Transition(
        T.UPDATE_REQUESTED,
        (S.READY,),
        S.WAITING_IDLE,
        (D.requested_version, D.package_fresh, D.gate_waits),
        D.begin_waiting,
    ),
    # Without a probe, or with `refuse` and a free printer, it starts at once (busy and
    # `refuse`: no row matches, the answer is 409 PRINTER_BUSY).
    Transition(
        T.UPDATE_REQUESTED,
        (S.READY,),
        S.DEPLOYING,
        (D.requested_version, D.package_fresh, D.printer_not_busy),
        D.begin_deploy,
    ),
    Transition(
        T.UPDATE_REQUESTED,
        (S.FAILED,),
        S.WAITING_IDLE,
        (D.requested_version, D.package_kept, D.package_fresh, D.gate_waits),
        D.rewait_kept_package,
    ),
    Transition(
        T.UPDATE_REQUESTED,
        (S.FAILED,),
        S.DEPLOYING,
        (D.requested_version, D.package_kept, D.package_fresh, D.printer_not_busy),
        D.redeploy_kept_package,
    ),
    # An expired package is deleted and the request answered 410 (contract §1).
    Transition(
        T.UPDATE_REQUESTED, (S.READY,), S.IDLE, (D.requested_version, D.package_expired), D.expire
    ),
    # The same install asked again while it waits: 200, it keeps waiting.
    Transition(T.UPDATE_REQUESTED, (S.WAITING_IDLE,), None, (D.requested_version,)),
    Transition(
        T.PRINTER_FREE,
        (S.WAITING_IDLE,),
        S.DEPLOYING,
        (D.current_job, D.package_fresh),
        D.begin_deploy,
    ),
    # The first answer after entering (or resuming) the wait is journaled once: the updater
    # survived the probe, so the restarts of a long print do not trip the crash-loop breaker.
    Transition(T.PRINTER_ANSWERED, (S.WAITING_IDLE,), None, (D.current_job,), D.note_printer),
    # The trust window closed while waiting: ends as any expiry does.
    Transition(T.PRINTER_FREE, (S.WAITING_IDLE,), S.IDLE, (D.current_job,), D.expire),
    Transition(T.WAIT_EXPIRED, (S.WAITING_IDLE,), S.IDLE, (D.current_job,), D.expire),
    # The busy gate itself broke down: fail before anything is stopped, keeping the package.
    Transition(T.WAIT_FAILED, (S.WAITING_IDLE,), S.FAILED, (D.current_job,), D.fail_wait),
    Transition(
        T.STAGED, (S.DEPLOYING,), S.SWITCHING, (D.current_job, D.printer_not_busy), D.begin_switch
    ),
    # A print started while the snapshot was being built: do not stop it. `wait` waits
    # again (the snapshot is built again once the printer is free); `refuse` fails, keeping
    # the verified package for a later POST /update.
    Transition(
        T.STAGED,
        (S.DEPLOYING,),
        S.WAITING_IDLE,
        (D.current_job, D.gate_waits),
        D.wait_again_before_switch,
    ),
    Transition(T.STAGED, (S.DEPLOYING,), S.FAILED, (D.current_job,), D.refuse_switch),
    Transition(T.STAGE_FAILED, (S.DEPLOYING,), S.FAILED, (D.current_job,), D.fail_stage),
    # Each finished post_cmd is journaled, so a resumed switch runs only the ones left.
    Transition(T.POST_CMD_DONE, (S.SWITCHING,), None, (D.current_job,), D.note_post_cmd),
    Transition(T.SWITCHED, (S.SWITCHING,), S.HEALTH_CHECK, (D.current_job,), D.begin_health),
    # A package that carries a new updater: only a device healthy on its new version lets
    # the updater switch itself.
    Transition(
        T.HEALTHY,
        (S.HEALTH_CHECK,),
        S.UPDATER_STAGING,
        (D.current_job, D.carries_updater),
        D.begin_updater_stage,
    ),
    Transition(T.HEALTHY, (S.HEALTH_CHECK,), S.SUCCESS, (D.current_job,), D.finish_success),
    # Any failure once the switch has begun climbs the rollback ladder (contract §4).
    Transition(
        T.SWITCH_FAILED,
        (S.SWITCHING,),
        S.ROLLBACK_PREVIOUS,
        (D.current_job, D.can_roll_back),
        D.begin_rollback,
    ),
    Transition(
        T.UNHEALTHY,
        (S.HEALTH_CHECK,),
        S.ROLLBACK_PREVIOUS,
        (D.current_job, D.can_roll_back),
        D.begin_rollback,
    ),
    Transition(T.SWITCH_FAILED, (S.SWITCHING,), S.FAILED, (D.current_job,), D.give_up),
    Transition(T.UNHEALTHY, (S.HEALTH_CHECK,), S.FAILED, (D.current_job,), D.give_up),
    # --- the updater updates itself (device healthy; a guard outside this code) -------
    Transition(
        T.UPDATER_STAGED,
        (S.UPDATER_STAGING,),
        S.UPDATER_SWITCHING,
        (D.current_job,),
        D.begin_updater_switch,
    ),
    Transition(
        T.UPDATER_STAGE_FAILED,
        (S.UPDATER_STAGING,),
        S.FAILED,
        (D.current_job,),
        D.fail_updater_stage,
    ),
    Transition(
        T.UPDATER_STARTED,
        (S.UPDATER_SWITCHING,),
        S.UPDATER_PROBATION,
        (D.current_job,),
        D.begin_probation,
    ),
    Transition(
        T.UPDATER_CONFIRMED, (S.UPDATER_PROBATION,), S.SUCCESS, (D.current_job,), D.finish_updater
    ),
    # The new updater did not prove itself and the guard put the old one back.
    Transition(
        T.UPDATER_ROLLED_BACK,
        (S.UPDATER_SWITCHING, S.UPDATER_PROBATION),
        S.FAILED,
        (D.current_job,),
        D.fail_updater_rollback,
    ),
    # --- rollback ladder ------------------------------------------------------------
    Transition(
        T.ROLLBACK_REQUESTED,
        (S.IDLE, S.SUCCESS, S.FAILED),
        S.ROLLBACK_PREVIOUS,
        (D.to_previous, D.printer_not_busy),
        D.begin_manual_rollback,
    ),
    Transition(
        T.ROLLBACK_REQUESTED,
        (S.IDLE, S.SUCCESS, S.FAILED),
        S.ROLLBACK_FACTORY,
        (D.to_factory, D.printer_not_busy),
        D.begin_manual_rollback,
    ),
    Transition(
        T.ROLLBACK_OK,
        (S.ROLLBACK_PREVIOUS, S.ROLLBACK_FACTORY),
        S.FAILED,
        (D.current_job, D.automatic),
        D.finish_rollback,
    ),
    # A manual rollback that worked is not a failure: back to idle, the device is healthy.
    Transition(
        T.ROLLBACK_OK,
        (S.ROLLBACK_PREVIOUS, S.ROLLBACK_FACTORY),
        S.IDLE,
        (D.current_job,),
        D.finish_rollback,
    ),
    Transition(
        T.ROLLBACK_FAILED,
        (S.ROLLBACK_PREVIOUS,),
        S.ROLLBACK_FACTORY,
        (D.current_job, D.has_factory),
        D.escalate_rollback,
    ),
    Transition(T.ROLLBACK_FAILED, (S.ROLLBACK_PREVIOUS,), S.FAILED, (D.current_job,), D.give_up),
    Transition(T.ROLLBACK_FAILED, (S.ROLLBACK_FACTORY,), S.FAILED, (D.current_job,), D.give_up),
    # --- operator -------------------------------------------------------------------
    Transition(T.CANCEL, _CANCELLABLE, S.IDLE, (), D.cancel_job),
    # A waiting install is cancelled back to its verified package (kept, still installable).
    Transition(T.CANCEL, (S.WAITING_IDLE,), S.READY, (), D.stop_waiting),
    Transition(T.RESET, (S.IDLE, S.SUCCESS, S.FAILED), S.IDLE, (), D.clear),
    # --- crash-loop breaker ----------------------------------------------------------
    # A step that took the process down `resume_limit` times in a row (no progress in
    # between) has failed: before the switch the job fails cleanly, after it the rollback
    # ladder takes over, a rollback level that keeps dying escalates.
    Transition(
        T.RESUME,
        (S.DOWNLOADING, S.VERIFYING, S.WAITING_IDLE, S.DEPLOYING, S.UPDATER_STAGING),
        S.FAILED,
        (D.resume_limit_reached,),
        D.fail_interrupted,
    ),
    Transition(
        T.RESUME,
        (S.SWITCHING, S.HEALTH_CHECK),
        S.ROLLBACK_PREVIOUS,
        (D.resume_limit_reached, D.can_roll_back),
        D.roll_back_interrupted,
    ),
    Transition(
        T.RESUME,
        (S.ROLLBACK_PREVIOUS,),
        S.ROLLBACK_FACTORY,
        (D.resume_limit_reached, D.has_factory),
        D.escalate_interrupted,
    ),
    Transition(
        T.RESUME,
        (S.SWITCHING, S.HEALTH_CHECK, S.ROLLBACK_PREVIOUS, S.ROLLBACK_FACTORY),
        S.FAILED,
        (D.resume_limit_reached,),
        D.give_up_interrupted,
    ),
    # A finished outcome whose clean-up keeps dying is only reported.
    Transition(T.RESUME, (S.SUCCESS, S.FAILED), None, (D.resume_limit_reached,), D.report_only),
    # --- restart recovery (contract §6; one rule per state, see recovery.py) ---------
    Transition(T.RESUME, (S.IDLE,), None, (), D.resume_idle),
    Transition(T.RESUME, (S.DOWNLOADING,), None, (), D.resume_download),
    Transition(T.RESUME, (S.VERIFYING,), None, (D.package_on_disk,), D.resume_verify),
    Transition(T.RESUME, (S.VERIFYING,), S.DOWNLOADING, (), D.resume_download),
    Transition(T.RESUME, (S.READY,), None, (D.package_on_disk, D.package_fresh), D.resume_ready),
    Transition(T.RESUME, (S.READY,), S.IDLE, (), D.expire),
    # A restart while waiting keeps waiting (and asks the probe again at once).
    Transition(
        T.RESUME,
        (S.WAITING_IDLE,),
        None,
        (D.package_on_disk, D.package_fresh),
        D.resume_waiting,
    ),
    Transition(T.RESUME, (S.WAITING_IDLE,), S.IDLE, (), D.expire),
    Transition(T.RESUME, (S.DEPLOYING,), None, (), D.resume_deploy),
    Transition(T.RESUME, (S.SWITCHING,), None, (), D.resume_switch),
    Transition(T.RESUME, (S.HEALTH_CHECK,), None, (), D.resume_health),
    Transition(T.RESUME, (S.UPDATER_STAGING,), None, (), D.resume_updater_stage),
    # Every start of the updater passes here once during a self-update (the new one too);
    # the guard, not the crash-loop breaker, judges an updater that keeps dying.
    Transition(T.RESUME, (S.UPDATER_SWITCHING,), None, (), D.resume_updater_switch),
    Transition(T.RESUME, (S.UPDATER_PROBATION,), None, (), D.resume_probation),
    Transition(T.RESUME, (S.ROLLBACK_PREVIOUS, S.ROLLBACK_FACTORY), None, (), D.resume_rollback),
    Transition(T.RESUME, (S.SUCCESS, S.FAILED), None, (), D.resume_terminal),
)

#: The states a ``cancel`` is accepted in (from the table: every source of a cancel row).
CANCELLABLE_STATES = frozenset(
    state for row in TRANSITIONS if row.trigger is T.CANCEL for state in row.sources
)
