"""What the device does about a fleet action, given what the engine shows: pure decisions.

The poller asks these functions, then does what they say (submit an event, send a
feedback). They read only the deployment the server offers and the engine's
:class:`~updater_fsm.control.Snapshot` — the journaled job names its fleet action
(``snapshot.fleet_action``) — so a restarted updater decides exactly as the one that died.
"""

from __future__ import annotations

import enum

import attrs

from fleet_ddi.ddi_protocol import Deployment, Execution, Feedback, Finished
from updater_fsm.control import BUSY_STATES, CANCELLABLE_STATES, Snapshot, State

#: hawkBit's progress is ``cnt`` of ``of`` steps: where each state is on the way.
_STEP = {
    State.DOWNLOADING: 1,
    State.VERIFYING: 2,
    State.READY: 3,
    State.WAITING_IDLE: 3,
    State.DEPLOYING: 4,
    State.SWITCHING: 4,
    State.HEALTH_CHECK: 5,
    State.ROLLBACK_PREVIOUS: 5,
    State.ROLLBACK_FACTORY: 5,
    State.UPDATER_STAGING: 5,
    State.UPDATER_SWITCHING: 5,
    State.UPDATER_PROBATION: 5,
}
STEPS = 6


class Step(enum.Enum):
    """The next thing to do for an open deployment."""

    #: ask the machine to download it (``DownloadRequested`` with the action id)
    DOWNLOAD = "download"
    #: another job runs (device-api's): say so once, try again at the next poll
    WAIT_FOR_DEVICE = "wait_for_device"
    #: our job runs: report its progress
    REPORT_PROGRESS = "report_progress"
    #: verified and the update is wanted now: ``UpdateRequested``
    INSTALL = "install"
    #: verified; the update is skipped (download only) or its window is closed
    REPORT_DOWNLOADED = "report_downloaded"
    #: our job ended: the final feedback
    CLOSE = "close"


def owns(snapshot: Snapshot, action_id: str) -> bool:
    """The engine's current (or last) job carries out ``action_id``."""
    return snapshot.fleet_action == action_id


def next_step(deployment: Deployment, snapshot: Snapshot) -> Step:
    """What to do about ``deployment`` now."""
    if not owns(snapshot, deployment.action_id):
        return Step.WAIT_FOR_DEVICE if snapshot.state in BUSY_STATES else Step.DOWNLOAD
    state = snapshot.state
    if state in (State.SUCCESS, State.FAILED, State.IDLE):
        return Step.CLOSE
    if state is State.READY:
        return Step.INSTALL if deployment.may_install_now else Step.REPORT_DOWNLOADED
    return Step.REPORT_PROGRESS


def progress_feedback(action_id: str, snapshot: Snapshot) -> Feedback:
    """``proceeding``: the step reached and the updater's own message."""
    step = _STEP.get(snapshot.state, 1)
    return Feedback(
        action_id,
        Execution.PROCEEDING,
        Finished.NONE,
        (snapshot.message,),
        progress=(step, STEPS),
    )


def downloaded_feedback(deployment: Deployment, snapshot: Snapshot) -> Feedback:
    """``downloaded``: closes a download-only action; otherwise the install waits."""
    why = (
        "download only: not installed"
        if deployment.download_only
        else "waiting for the maintenance window to install"
    )
    return Feedback(
        deployment.action_id,
        Execution.DOWNLOADED,
        Finished.NONE,
        (f"Package v{deployment.request.version} downloaded and verified; {why}",),
        progress=(3, STEPS),
    )


def final_feedback(action_id: str, snapshot: Snapshot) -> Feedback:
    """``closed`` with ``success`` or ``failure``, in words a fleet operator reads: our error
    (with its code) and the version the device runs now."""
    running = f"running {snapshot.current_version or 'no version'}"
    if snapshot.state is State.SUCCESS:
        return Feedback(
            action_id,
            Execution.CLOSED,
            Finished.SUCCESS,
            (snapshot.message, running),
            progress=(STEPS, STEPS),
        )
    error = snapshot.error or "the job ended without installing (cancelled on the device)"
    return Feedback(action_id, Execution.CLOSED, Finished.FAILURE, (error, running))


@attrs.frozen
class CancelAnswer:
    """How to answer a ``cancelAction``: ``stop_job`` means submit ``Cancel`` first."""

    feedback: Feedback
    stop_job: bool = False


def answer_cancel(cancel_id: str, stop_id: str, snapshot: Snapshot) -> CancelAnswer | None:
    """Confirm a cancel before the switch, reject it after; None: nothing to say yet (our job
    for the action has ended and its final feedback goes first)."""
    if not owns(snapshot, stop_id):
        return CancelAnswer(
            Feedback(cancel_id, Execution.CLOSED, Finished.SUCCESS, ("not started: cancelled",))
        )
    state = snapshot.state
    if state in CANCELLABLE_STATES:
        return CancelAnswer(
            Feedback(
                cancel_id,
                Execution.CLOSED,
                Finished.SUCCESS,
                (f"cancelled in {state.value}: v{snapshot.version} not installed",),
            ),
            stop_job=True,
        )
    if state in BUSY_STATES:
        return CancelAnswer(
            Feedback(
                cancel_id,
                Execution.REJECTED,
                Finished.NONE,
                (
                    f"cannot cancel: the switch to v{snapshot.version} has begun ({state.value});"
                    " the action finishes and reports its outcome",
                ),
            )
        )
    return None
