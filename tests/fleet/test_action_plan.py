"""fleet_ddi.action_plan: the pure decisions, for every engine state by owned or not by
deployment mode, and the texts a fleet operator reads."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_ddi.action_plan import (
    STEPS,
    Step,
    answer_cancel,
    downloaded_feedback,
    final_feedback,
    next_step,
    owns,
    progress_feedback,
)
from fleet_ddi.ddi_protocol import (
    Deployment,
    Execution,
    Finished,
    Handling,
    MaintenanceWindow,
)
from updater_fsm.control import DownloadRequest, Snapshot, State
from updater_fsm.core.table import STAGE_OF

ACTION = "3"
BEFORE_SWITCH = (
    State.DOWNLOADING,
    State.VERIFYING,
    State.READY,
    State.WAITING_IDLE,
    State.DEPLOYING,
)
AFTER_SWITCH = (
    State.SWITCHING,
    State.HEALTH_CHECK,
    State.ROLLBACK_PREVIOUS,
    State.ROLLBACK_FACTORY,
    # the device is healthy on its new version; the updater switches itself (issue 15)
    State.UPDATER_STAGING,
    State.UPDATER_SWITCHING,
    State.UPDATER_PROBATION,
)
ENDED = (State.IDLE, State.SUCCESS, State.FAILED)
BUSY = (*(s for s in BEFORE_SWITCH if s is not State.READY), *AFTER_SWITCH)
assert set(BEFORE_SWITCH) | set(AFTER_SWITCH) | set(ENDED) == set(State)


def snap(
    state: State,
    *,
    fleet_action: str | None = ACTION,
    error: str | None = None,
    version: str | None = "1.1.0",
    current: str | None = "1.0.0",
    job_id: int = 1,
) -> Snapshot:
    """A snapshot as the engine publishes it (like tests/updater_fsm/helpers.py ``snap``)."""
    return Snapshot(
        stage=STAGE_OF[state],
        progress=0,
        message=f"{state.value} message",
        error=error,
        state=state,
        version=version,
        bytes_downloaded=0,
        total_bytes=100,
        speed_bps=0.0,
        eta_s=None,
        current_version=current,
        previous_version=None,
        factory_version="1.0.0",
        rollback_level=0,
        seq=0,
        job_id=job_id,
        fleet_action=fleet_action,
    )


def deployment(
    update: Handling = Handling.FORCED,
    window: MaintenanceWindow | None = None,
    download: Handling = Handling.FORCED,
) -> Deployment:
    request = DownloadRequest(
        version="1.1.0",
        package_url="http://h/a.zip",
        package_name="ddi-3-1.1.0.zip",
        package_size=10,
        package_md5="0" * 32,
        package_sha256="1" * 64,
    )
    return Deployment(ACTION, download, update, window, request)


MODES = {
    "forced": deployment(),
    "attempt": deployment(Handling.ATTEMPT),
    "window open": deployment(Handling.FORCED, MaintenanceWindow.AVAILABLE),
    "window closed": deployment(Handling.FORCED, MaintenanceWindow.UNAVAILABLE),
    "download only": deployment(Handling.SKIP),
    "skip in window": deployment(Handling.SKIP, MaintenanceWindow.AVAILABLE),
    "download skip": deployment(download=Handling.SKIP),
}


def expected_step(state: State, owned: bool, dep: Deployment) -> Step:
    """The table, spelled out independently of the code's sets."""
    if not owned:
        return Step.WAIT_FOR_DEVICE if state in BUSY else Step.DOWNLOAD
    if state in ENDED:
        return Step.CLOSE
    if state is State.READY:
        installable = dep.update is not Handling.SKIP and (
            dep.maintenance_window is not MaintenanceWindow.UNAVAILABLE
        )
        return Step.INSTALL if installable else Step.REPORT_DOWNLOADED
    return Step.REPORT_PROGRESS


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("owner", [ACTION, "4", None])
@pytest.mark.parametrize("state", list(State))
def test_next_step_table(state: State, owner: str | None, mode: str) -> None:
    dep = MODES[mode]
    s = snap(state, fleet_action=owner)
    assert owns(s, ACTION) == (owner == ACTION)
    assert next_step(dep, s) is expected_step(state, owner == ACTION, dep)


def test_next_step_spot_checks() -> None:
    # The cases the poller's behaviour hinges on, written out.
    assert next_step(MODES["forced"], snap(State.IDLE, fleet_action=None)) is Step.DOWNLOAD
    assert (
        next_step(MODES["forced"], snap(State.DOWNLOADING, fleet_action=None))
        is Step.WAIT_FOR_DEVICE
    )
    assert next_step(MODES["forced"], snap(State.READY, fleet_action="9")) is Step.DOWNLOAD
    assert next_step(MODES["forced"], snap(State.READY)) is Step.INSTALL
    assert next_step(MODES["download only"], snap(State.READY)) is Step.REPORT_DOWNLOADED
    assert next_step(MODES["window closed"], snap(State.READY)) is Step.REPORT_DOWNLOADED
    assert next_step(MODES["forced"], snap(State.HEALTH_CHECK)) is Step.REPORT_PROGRESS
    assert next_step(MODES["forced"], snap(State.FAILED)) is Step.CLOSE


@pytest.mark.parametrize("state", [s for s in State if s not in ENDED])
def test_progress_feedback(state: State) -> None:
    fb = progress_feedback(ACTION, snap(state))
    assert (fb.action_id, fb.execution, fb.finished) == (
        ACTION,
        Execution.PROCEEDING,
        Finished.NONE,
    )
    assert fb.details == (f"{state.value} message",)
    assert fb.progress is not None
    cnt, of = fb.progress
    assert of == STEPS and 1 <= cnt < STEPS
    assert not fb.final


def test_progress_never_goes_back_along_the_way() -> None:
    way = [State.DOWNLOADING, State.VERIFYING, State.READY, State.DEPLOYING, State.HEALTH_CHECK]
    counts = [progress_feedback(ACTION, snap(s)).progress for s in way]
    assert counts == sorted(counts)


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("download only", "download only: not installed"),
        ("window closed", "waiting for the maintenance window to install"),
    ],
)
def test_downloaded_feedback(mode: str, why: str) -> None:
    fb = downloaded_feedback(MODES[mode], snap(State.READY))
    assert (fb.execution, fb.finished, fb.progress) == (Execution.DOWNLOADED, Finished.NONE, (3, 6))
    assert fb.details == (f"Package v1.1.0 downloaded and verified; {why}",)


# ---- final feedback ----------------------------------------------------------------------


def test_final_feedback_success() -> None:
    s = attrs.evolve(snap(State.SUCCESS, current="1.1.0"), message="Update to v1.1.0 done")
    fb = final_feedback(ACTION, s)
    assert fb.final and fb.finished is Finished.SUCCESS
    assert fb.details == ("Update to v1.1.0 done", "running 1.1.0")
    assert fb.progress == (STEPS, STEPS)


def test_final_feedback_failure_carries_our_error() -> None:
    error = "ROLLBACK_LEVEL_1_SUCCESS: health check failed, back on v1.0.0"
    fb = final_feedback(ACTION, snap(State.FAILED, error=error))
    assert fb.final and fb.finished is Finished.FAILURE
    assert fb.details == (error, "running 1.0.0")
    assert fb.progress is None


def test_final_feedback_without_error_nor_version() -> None:
    # IDLE after our job: it was cancelled on the device (device-api's /cancel).
    fb = final_feedback(ACTION, snap(State.IDLE, current=None))
    assert fb.finished is Finished.FAILURE
    assert fb.details == (
        "the job ended without installing (cancelled on the device)",
        "running no version",
    )


@given(st.sampled_from(list(State)), st.text(max_size=30) | st.none())
def test_final_feedback_is_final_and_success_only_on_success(
    state: State, error: str | None
) -> None:
    fb = final_feedback(ACTION, snap(state, error=error))
    assert fb.execution is Execution.CLOSED and fb.action_id == ACTION
    assert (fb.finished is Finished.SUCCESS) == (state is State.SUCCESS)
    assert fb.details[-1] == "running 1.0.0"


# ---- cancel ------------------------------------------------------------------------------


@pytest.mark.parametrize("state", BEFORE_SWITCH)
def test_cancel_before_the_switch_stops_the_job(state: State) -> None:
    answer = answer_cancel("11", ACTION, snap(state))
    assert answer is not None and answer.stop_job
    fb = answer.feedback
    assert (fb.action_id, fb.execution, fb.finished) == ("11", Execution.CLOSED, Finished.SUCCESS)
    assert fb.details == (f"cancelled in {state.value}: v1.1.0 not installed",)


@pytest.mark.parametrize("state", AFTER_SWITCH)
def test_cancel_after_the_switch_is_rejected(state: State) -> None:
    answer = answer_cancel("11", ACTION, snap(state))
    assert answer is not None and not answer.stop_job
    fb = answer.feedback
    assert (fb.action_id, fb.execution, fb.finished) == ("11", Execution.REJECTED, Finished.NONE)
    assert fb.details[0].startswith("cannot cancel: the switch to v1.1.0 has begun")
    assert state.value in fb.details[0]
    assert not fb.final


@pytest.mark.parametrize("state", ENDED)
def test_cancel_after_our_job_ended_waits_for_the_final_feedback(state: State) -> None:
    assert answer_cancel("11", ACTION, snap(state)) is None


@pytest.mark.parametrize("owner", ["4", None])
@pytest.mark.parametrize("state", list(State))
def test_cancel_of_an_unknown_action_is_confirmed_without_stopping(
    state: State, owner: str | None
) -> None:
    # Another job (device-api's, or another action's) is never stopped by this cancel.
    answer = answer_cancel("11", ACTION, snap(state, fleet_action=owner))
    assert answer is not None and not answer.stop_job
    fb = answer.feedback
    assert (fb.action_id, fb.execution, fb.finished) == ("11", Execution.CLOSED, Finished.SUCCESS)
    assert fb.details == ("not started: cancelled",)
