"""Kill -9 a hawkBit device mid-action and restart it: the action completes, and hawkBit
records exactly one final feedback (issue 14, crash safety).

A trace of one uninterrupted fleet install lists the points it passes: every journaled
transition of the engine (``engine:journaled``, one hit per transition of the action) and
the poller's own (``fleet:*``: the final feedback journaled, about to be sent, sent, the
action closed, the attributes sent after it). Each trial kills a fresh device at one of
them, restarts it, and checks the action's history in hawkBit, the target's attributes and
the device's invariants.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crash import harness as h
from tests.fleet.devices import final_statuses, fleet_device, release_for, wait_action_end
from tests.support.hawkbit import HawkbitServer
from tests.support.package_server import ThreadedPackageServer

#: The poller's points: journal written (before/after its rename), about to send the final
#: feedback, sent but not yet marked closed, closed (before/after its rename), the
#: attributes that follow it sent and no longer due (before/after its rename).
FLEET_POINTS = (
    "fleet:final_held:before_rename",
    "fleet:final_held:after_rename",
    "fleet:final_sending",
    "fleet:final_sent",
    "fleet:action_closed:before_rename",
    "fleet:action_closed:after_rename",
    "fleet:attributes_sent:before_rename",
    "fleet:attributes_sent:after_rename",
)


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedPackageServer]:
    with h.package_server() as srv:
        yield srv


def _trace(base: Path, hb: HawkbitServer, server: ThreadedPackageServer) -> Counter[str]:
    device = fleet_device(base, hb, server, "good")
    trace = base / "trace.txt"
    try:
        proc = device.start(trace=trace)
        action = hb.assign_action(release_for(hb, device), device.controller_id)
        assert wait_action_end(hb, device.controller_id, action)["type"] == "finished"
        assert h.wait_until(lambda: "fleet:attributes_sent:after_rename" in trace.read_text(), 10)
        proc.terminate()
    finally:
        device.rig.close()
    return Counter(trace.read_text().split())


def _trial(
    base: Path,
    hb: HawkbitServer,
    server: ThreadedPackageServer,
    kill: h.KillPoint,
    scenario: str,
    *,
    stale_attributes: bool = False,
) -> str | None:
    """One kill and restart; None when every check held, else what went wrong.

    ``stale_attributes``: the target's attributes are set beforehand as a device would have
    left them, so hawkBit does not ask for them again — only the device's own attributes
    after the outcome (due in its journal across the kill) can correct them."""
    device = fleet_device(base, hb, server, scenario)
    cid = device.controller_id
    running = "1.1.0" if scenario == "good" else h.FACTORY_VERSION
    try:
        if stale_attributes:
            hb.ddi_put_attributes(cid, device.token, {"current_version": "0.9.0"})
        proc = device.start(crash_at=kill.env_value)
        action = hb.assign_action(release_for(hb, device), cid)
        if not h.wait_until(lambda: not proc.alive, 40):
            return f"{kill}: never reached ({device.rig.progress()})"
        if proc.popen.returncode != -9:
            return f"{kill}: exited {proc.popen.returncode}: {proc.log_tail()}"
        proc2 = device.start()
        final = wait_action_end(hb, cid, action)
        want = "finished" if scenario == "good" else "error"
        if final["type"] != want:
            return f"{kill}: action ended {final}"
        # hawkBit's history: one final status, never two (and never a lost one).
        h.wait_until(lambda: False, 1.5)  # a duplicate would arrive within a poll or two
        finals = final_statuses(hb, cid, action)
        if len(finals) != 1:
            return f"{kill}: {len(finals)} final statuses: {finals}"
        # ... because the device never sent one twice: a final feedback found pending after
        # the restart is sent only while hawkBit still has the action open.
        restarted_log = proc2.log_path.read_text()
        if '"status": 410' in restarted_log:
            return f"{kill}: the restarted device sent a final feedback hawkBit had already"
        # The target's attributes show the version running, whatever hawkBit asked for.
        if not h.wait_until(
            lambda: hb.target_attributes(cid).get("current_version") == running, 10
        ):
            return f"{kill}: target attributes {hb.target_attributes(cid)}, running {running}"
        h.check_invariants(device.rig, device.rig.progress())
        if proc2.terminate() != 0:
            return f"{kill}: clean stop failed"
    except (AssertionError, h.TrialFailure) as exc:
        return f"{kill}: {exc}"
    finally:
        device.rig.close()
    return None


def test_kill_at_every_journaled_step_of_an_action(
    tmp_path: Path, hawkbit: HawkbitServer, server: ThreadedPackageServer
) -> None:
    counts = _trace(tmp_path / "trace", hawkbit, server)
    for point in FLEET_POINTS:
        assert counts[point] == 1, (point, counts)
    kills = [h.KillPoint("engine:journaled", n) for n in range(1, counts["engine:journaled"] + 1)]
    kills += [h.KillPoint(p) for p in FLEET_POINTS]
    assert len(kills) >= 14, counts
    failures = [
        problem
        for i, kill in enumerate(kills)
        if (problem := _trial(tmp_path / f"good-{i}", hawkbit, server, kill, "good"))
    ]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("point", ["fleet:final_held:after_rename", "fleet:final_sent"])
def test_kill_around_the_final_feedback_of_a_failed_action(
    tmp_path: Path, hawkbit: HawkbitServer, server: ThreadedPackageServer, point: str
) -> None:
    assert _trial(tmp_path, hawkbit, server, h.KillPoint(point), "bad") is None


@pytest.mark.parametrize(
    "point",
    [
        "fleet:final_sent",
        "fleet:action_closed:after_rename",
        "fleet:attributes_sent:before_rename",
    ],
)
def test_kill_between_a_failed_outcome_and_the_attributes_still_updates_them(
    tmp_path: Path, hawkbit: HawkbitServer, server: ThreadedPackageServer, point: str
) -> None:
    """hawkBit holds stale attributes and never asks after a failure: the restarted device
    sends them because its journal says they are due."""
    kill = h.KillPoint(point)
    assert _trial(tmp_path, hawkbit, server, kill, "bad", stale_attributes=True) is None
