"""The pure decision core: every path of the table, with its effects and answers."""

from __future__ import annotations

import typing

import pytest

from updater_fsm.core import effects as fx
from updater_fsm.core import events as ev
from updater_fsm.core.decisions import Decisions
from updater_fsm.core.errors import ErrorCode, Failure
from updater_fsm.core.history import HistoryEntry, Outcome, Source
from updater_fsm.core.machine import UpdaterMachine
from updater_fsm.core.manifest import HealthProbe, ServiceUnit
from updater_fsm.core.progress import build_snapshot
from updater_fsm.core.record import PACKAGE_TTL_S, JobKind
from updater_fsm.core.table import TRANSITIONS, State, Trigger

from .helpers import LINKS, MD5, SHA, T0, UNITS, at_health_check, at_ready, drive, request


def kinds(decision: object) -> list[str]:
    return [type(e).__name__ for e in decision.effects]  # type: ignore[attr-defined]


def _event_classes() -> dict[Trigger, type[ev.Event]]:
    found: dict[Trigger, type[ev.Event]] = {}
    todo = list(ev.Event.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        found[cls.trigger] = cls
    return found


def test_every_guard_and_action_takes_the_event_of_its_row() -> None:
    """What the asserts inside every action used to check at run time, checked once for the
    whole table: each guard and action is a Decisions method whose ``event`` parameter is
    annotated with (a union including) the event class of its row's trigger."""
    classes = _event_classes()
    assert set(classes) == set(Trigger)
    for row in TRANSITIONS:
        event_cls = classes[row.trigger]
        for fn in (*row.conditions, *([row.action] if row.action else [])):
            assert getattr(Decisions, fn.__name__) is fn, fn
            accepted = typing.get_type_hints(fn)["event"]
            options = typing.get_args(accepted) or (accepted,)
            assert any(issubclass(event_cls, option) for option in options), (
                f"{row.trigger}: {fn.__name__} takes {accepted}, not {event_cls.__name__}"
            )


def test_every_state_is_reachable_and_every_trigger_used() -> None:
    reached = {State.IDLE}
    changed = True
    while changed:
        changed = False
        for row in TRANSITIONS:
            if row.dest and row.dest not in reached and set(row.sources) & reached:
                reached.add(row.dest)
                changed = True
    assert reached == set(State)
    assert {row.trigger for row in TRANSITIONS} == set(Trigger)


def test_happy_path_effects_in_order() -> None:
    m = UpdaterMachine()
    req = request()
    d = drive(m, ev.DownloadRequested(req))
    assert kinds(d) == ["StartDownload", "Report"]
    assert d.effects[0] == fx.StartDownload(1, req, ev.ResumePoint())
    drive(m, ev.DownloadCheckpoint(1, ev.ResumePoint(400, '"e1"')))
    assert m.record.job is not None and m.record.job.durable.offset == 400
    d = drive(m, ev.DownloadDone(1, 1000, MD5, SHA))
    assert d.effects[0] == fx.VerifyPackage(1, req, MD5, SHA)
    d = drive(m, ev.Verified(1))
    assert m.state is State.READY and m.record.job.verified_at == T0  # type: ignore[union-attr]
    d = drive(m, ev.UpdateRequested("1.2.3"))
    assert d.effects[0] == fx.StageSnapshot(1, "1.2.3", "update.zip")
    d = drive(m, ev.Staged(1, UNITS, LINKS))
    assert d.effects[0] == fx.SwitchVersion(1, "1.2.3", "update.zip", "1.0.0", UNITS)
    d = drive(m, ev.Switched(1))
    assert d.effects[0] == fx.CheckHealth(1, UNITS)
    d = drive(m, ev.Healthy(1), now=T0 + 60)
    assert m.state is State.SUCCESS
    assert kinds(d) == [
        "RaiseRollbackFloor",
        "DiscardPackage",
        "CollectGarbage",
        "Report",
        "RecordHistory",
    ]
    assert d.effects[0] == fx.RaiseRollbackFloor("1.2.3")
    assert d.effects[-2] == fx.Report(terminal=True)
    # The job's end is kept in the history, stamped with the time it ended.
    assert d.effects[-1] == fx.RecordHistory(
        HistoryEntry(
            job_id=1,
            kind=JobKind.UPDATE,
            from_version="1.0.0",
            to_version="1.2.3",
            source=Source.API,
            fleet_action=None,
            file="update.zip",
            started_at=T0,
            ended_at=T0 + 60,
            outcome=Outcome.SUCCESS,
            error_code=None,
            error=None,
            rollback_level=0,
        )
    )
    assert m.record.job is not None and m.record.job.updated_at == T0 + 60
    assert m.record.last_units == UNITS


def test_same_download_is_idempotent_other_is_409() -> None:
    m = UpdaterMachine()
    drive(m, ev.DownloadRequested(request()))
    again = m.handle(ev.DownloadRequested(request()), T0)
    assert again.accepted and again.effects == () and m.record.job.job_id == 1  # type: ignore[union-attr]
    other = m.handle(ev.DownloadRequested(request("1.2.4")), T0)
    assert not other.accepted and other.reply.code == 409
    assert other.reply.msg.startswith("OPERATION_IN_PROGRESS")


def test_verified_same_package_is_idempotent_new_package_replaces() -> None:
    m = at_ready()
    again = m.handle(ev.DownloadRequested(request()), T0)
    assert again.accepted and again.effects == () and m.state is State.READY
    d = drive(m, ev.DownloadRequested(request("1.3.0", name="new.zip")))
    assert m.state is State.DOWNLOADING
    assert kinds(d)[:2] == ["DiscardPackage", "StartDownload"]
    assert d.effects[0] == fx.DiscardPackage("update.zip")


@pytest.mark.parametrize(
    ("setup", "version", "code"),
    [
        ("idle", "1.2.3", 404),
        ("ready", "9.9.9", 404),
        ("downloading", "1.2.3", 409),
        ("installing", "1.2.3", 409),
        ("success", "1.2.3", 404),
    ],
)
def test_update_rejections(setup: str, version: str, code: int) -> None:
    m = UpdaterMachine()
    if setup == "ready":
        m = at_ready()
    elif setup == "downloading":
        drive(m, ev.DownloadRequested(request()))
    elif setup == "installing":
        m = at_health_check()
    elif setup == "success":
        m = at_health_check()
        drive(m, ev.Healthy(1))
    before = m.record
    d = m.handle(ev.UpdateRequested(version), T0)
    assert not d.accepted and d.reply.code == code and m.record == before
    if code == 404:
        assert d.reply.msg == f"PACKAGE_NOT_FOUND: {version}"


def test_expired_package_answers_410_and_is_deleted() -> None:
    m = at_ready()
    d = m.handle(ev.UpdateRequested("1.2.3"), T0 + PACKAGE_TTL_S + 1)
    assert d.accepted and d.reply.code == 410 and m.state is State.IDLE
    assert d.reply.msg.startswith("PACKAGE_EXPIRED: ")
    assert fx.DiscardPackage("update.zip") in d.effects


def test_clock_jumping_back_expires_the_package() -> None:
    m = at_ready()
    d = m.handle(ev.UpdateRequested("1.2.3"), T0 - 3600)
    assert d.reply.code == 410


def test_stale_results_of_an_old_job_are_ignored() -> None:
    m = at_ready()
    drive(m, ev.DownloadRequested(request("2.0.0", name="b.zip")))
    before = m.record
    d = m.handle(ev.DownloadDone(1, 1000, MD5, SHA), T0)
    assert not d.accepted and m.record == before and m.state is State.DOWNLOADING


def test_download_failure_keeps_part_and_same_request_resumes() -> None:
    m = UpdaterMachine()
    drive(m, ev.DownloadRequested(request()), ev.DownloadCheckpoint(1, ev.ResumePoint(600, '"x"')))
    drive(
        m,
        ev.DownloadFailed(
            1, Failure(ErrorCode.DOWNLOAD_FAILED, "connection reset after 8 attempts")
        ),
    )
    assert m.state is State.FAILED
    d = drive(m, ev.DownloadRequested(request()))
    assert d.effects[0] == fx.StartDownload(2, request(), ev.ResumePoint(600, '"x"'))


def test_verify_failure_discards_the_package() -> None:
    m = UpdaterMachine()
    drive(m, ev.DownloadRequested(request()), ev.DownloadDone(1, 1000, MD5, SHA))
    d = drive(m, ev.VerifyFailed(1, Failure(ErrorCode.MD5_MISMATCH, "expected 00…, got ff…")))
    assert m.state is State.FAILED and fx.DiscardPackage("update.zip") in d.effects
    assert m.record.job.error.startswith("MD5_MISMATCH")  # type: ignore[union-attr]


def test_stage_failure_discards_staging_and_fails() -> None:
    m = at_ready()
    drive(m, ev.UpdateRequested("1.2.3"))
    d = drive(
        m,
        ev.StageFailed(1, Failure(ErrorCode.INVALID_MANIFEST, "modules[0].dst: must be absolute")),
    )
    assert m.state is State.FAILED
    assert kinds(d)[:2] == ["DiscardStaging", "DiscardPackage"]


def _disk_full_while_staging() -> UpdaterMachine:
    m = at_ready()
    drive(m, ev.UpdateRequested("1.2.3"))
    d = drive(m, ev.StageFailed(1, Failure(ErrorCode.DISK_FULL, "staging needs 9 MB, 2 free")))
    assert m.state is State.FAILED
    assert kinds(d)[:1] == ["DiscardStaging"] and "DiscardPackage" not in kinds(d)
    return m


def test_disk_full_while_staging_keeps_the_verified_package() -> None:
    m = _disk_full_while_staging()
    # The same download request re-hashes the kept file instead of fetching it again.
    d = drive(m, ev.DownloadRequested(request()))
    assert m.state is State.VERIFYING
    assert d.effects[0] == fx.VerifyPackage(2, request())
    assert not any(isinstance(e, fx.StartDownload | fx.DiscardPackage) for e in d.effects)
    drive(m, ev.Verified(2), now=T0 + 60)
    assert m.state is State.READY
    job = m.record.job
    assert job is not None and job.error is None and job.verified_at == T0  # window kept
    drive(m, ev.UpdateRequested("1.2.3"))
    assert m.state is State.DEPLOYING


def test_update_again_after_disk_full_stages_from_the_kept_package() -> None:
    m = _disk_full_while_staging()
    d = drive(m, ev.UpdateRequested("1.2.3"))
    assert m.state is State.DEPLOYING
    assert d.effects[0] == fx.StageSnapshot(2, "1.2.3", "update.zip")


def test_a_kept_package_past_its_window_is_downloaded_again() -> None:
    m = _disk_full_while_staging()
    assert not m.handle(ev.UpdateRequested("1.2.3"), T0 + PACKAGE_TTL_S + 1).accepted
    d = drive(m, ev.DownloadRequested(request()), now=T0 + PACKAGE_TTL_S + 1)
    assert m.state is State.DOWNLOADING
    assert fx.DiscardPackage("update.zip") in d.effects


def test_other_stage_failures_do_not_keep_the_package() -> None:
    m = at_ready()
    drive(
        m,
        ev.UpdateRequested("1.2.3"),
        ev.StageFailed(1, Failure(ErrorCode.DEPLOYMENT_FAILED, "EIO")),
    )
    assert m.record.job is not None and not m.record.job.package_kept
    assert m.handle(ev.UpdateRequested("1.2.3"), T0).reply.code == 404


def test_manual_rollback_after_disk_full_drops_the_kept_package() -> None:
    m = _disk_full_while_staging()
    d = drive(m, ev.RollbackRequested("previous", LINKS))
    assert fx.DiscardPackage("update.zip") in d.effects


def test_level1_rollback_restores_previous_link_and_reports() -> None:
    m = at_health_check()
    d = drive(
        m, ev.Unhealthy(1, Failure(ErrorCode.HEALTH_CHECK_FAILED, "device-api.service: exited"))
    )
    assert m.state is State.ROLLBACK_PREVIOUS
    assert d.effects[0] == fx.RollBack(1, 1, "1.0.0", "1.2.3", UNITS, previous_after="0.9.0")
    d = drive(m, ev.RollbackOk(1))
    assert m.state is State.FAILED
    assert m.record.job.error.startswith("ROLLBACK_LEVEL_1_SUCCESS: v1.0.0")  # type: ignore[union-attr]
    assert fx.RemoveSnapshot("1.2.3") in d.effects and d.effects[-2] == fx.Report(terminal=True)
    assert isinstance(d.effects[-1], fx.RecordHistory)
    entry = d.effects[-1].entry
    assert (entry.outcome, entry.rollback_level, entry.from_version, entry.to_version) == (
        Outcome.ROLLED_BACK,
        1,
        "1.0.0",
        "1.2.3",
    )
    assert entry.error_code is ErrorCode.ROLLBACK_LEVEL_1_SUCCESS


def test_level2_rollback_after_level1_fails() -> None:
    m = at_health_check()
    drive(m, ev.Unhealthy(1, Failure(ErrorCode.HEALTH_CHECK_FAILED, "x")))
    d = drive(
        m,
        ev.RollbackFailed(1, Failure(ErrorCode.HEALTH_CHECK_FAILED, "device-api.service: exited")),
    )
    assert m.state is State.ROLLBACK_FACTORY
    assert d.effects[0] == fx.RollBack(1, 2, "0.9.0", "1.2.3", UNITS, previous_after="0.9.0")
    d = drive(m, ev.RollbackOk(1))
    assert m.record.job.error.startswith("ROLLBACK_LEVEL_2_SUCCESS: v0.9.0")  # type: ignore[union-attr]
    # v1.0.0 (running before the update, broken since) is named by no link any more.
    assert kinds(d) == [
        "RemoveSnapshot",
        "DiscardPackage",
        "CollectGarbage",
        "Report",
        "RecordHistory",
    ]
    entry = d.effects[-1].entry  # type: ignore[attr-defined]
    assert (entry.outcome, entry.rollback_level) == (Outcome.ROLLED_BACK, 2)


def test_the_snapshot_says_which_version_the_update_started_from() -> None:
    """After a factory rollback no link names the version the update left: ``from_version``
    does (the screen says which update failed with it)."""
    factory = ev.LinkVersions(current="0.9.0", previous="0.9.0", factory="0.9.0")
    m = at_ready()
    assert build_snapshot(m.record, None, LINKS).data()["from_version"] is None
    m = at_health_check()
    assert build_snapshot(m.record, None, LINKS).data()["from_version"] == "1.0.0"
    drive(
        m,
        ev.Unhealthy(1, Failure(ErrorCode.HEALTH_CHECK_FAILED, "x")),
        ev.RollbackFailed(1, Failure(ErrorCode.SERVICE_START_FAILED, "y")),
        ev.RollbackOk(1),
    )
    data = build_snapshot(m.record, None, factory).data()
    assert data["error"].startswith("ROLLBACK_LEVEL_2_SUCCESS: v0.9.0")
    assert (data["from_version"], data["version"], data["current_version"]) == (
        "1.0.0",
        "1.2.3",
        "0.9.0",
    )
    assert list(data)[-2:] == ["from_version", "retry"]  # extra fields, after the contract's


def test_rollback_judges_the_target_by_the_probes_it_was_installed_with() -> None:
    """1.2.3 installed with a probe, then 1.3.0 fails: level 1 to 1.2.3 applies 1.2.3's own
    probe; level 2 to factory (never installed by us) and a manual rollback away from
    1.2.3 know none."""
    probe = HealthProbe("command", "/opt/tope/versions/current/bin/selftest", 5)
    installed = (ServiceUnit("device-api.service", 1, health=probe),)
    m = at_ready()
    drive(m, ev.UpdateRequested("1.2.3"), ev.Staged(1, installed, LINKS))
    drive(m, ev.Switched(1), ev.Healthy(1))
    assert (m.record.last_version, m.record.last_units) == ("1.2.3", installed)
    links = ev.LinkVersions(current="1.2.3", previous="1.0.0", factory="0.9.0")
    drive(m, ev.DownloadRequested(request("1.3.0", "u2.zip")))
    drive(m, ev.DownloadDone(2, 1000, MD5, SHA), ev.Verified(2), ev.UpdateRequested("1.3.0"))
    drive(m, ev.Staged(2, UNITS, links), ev.Switched(2))
    d = drive(m, ev.Unhealthy(2, Failure(ErrorCode.HEALTH_CHECK_FAILED, "x")))
    level1 = d.effects[0]
    assert isinstance(level1, fx.RollBack) and level1.target_version == "1.2.3"
    assert level1.units == UNITS and level1.target_units == installed
    d = drive(
        m,
        ev.RollbackFailed(
            2, Failure(ErrorCode.HEALTH_CHECK_FAILED, "device-api.service: selftest")
        ),
    )
    level2 = d.effects[0]
    assert isinstance(level2, fx.RollBack) and level2.target_version == "0.9.0"
    assert level2.target_units == ()
    drive(m, ev.RollbackOk(2), ev.Reset())
    d = drive(m, ev.RollbackRequested("previous", links))
    assert isinstance(d.effects[0], fx.RollBack) and d.effects[0].target_units == ()


def test_both_rollbacks_fail_needs_manual_intervention() -> None:
    m = at_health_check()
    drive(m, ev.Unhealthy(1, Failure(ErrorCode.HEALTH_CHECK_FAILED, "device-api.service: exited")))
    drive(
        m,
        ev.RollbackFailed(1, Failure(ErrorCode.ROLLBACK_FAILED, "a")),
        ev.RollbackFailed(1, Failure(ErrorCode.ROLLBACK_FAILED, "b")),
    )
    assert m.state is State.FAILED
    assert m.record.job.error.startswith(  # type: ignore[union-attr]
        "ROLLBACK_FAILED: manual intervention required"
    )


def test_switch_failure_enters_the_ladder_too() -> None:
    m = at_ready()
    drive(m, ev.UpdateRequested("1.2.3"), ev.Staged(1, UNITS, LINKS))
    drive(m, ev.SwitchFailed(1, Failure(ErrorCode.SERVICE_STOP_TIMEOUT, "device-api.service")))
    assert m.state is State.ROLLBACK_PREVIOUS


def test_manual_rollback_to_previous_and_factory() -> None:
    m = at_health_check()
    drive(m, ev.Healthy(1))
    links = ev.LinkVersions("1.2.3", "1.0.0", "0.9.0")
    d = drive(m, ev.RollbackRequested("previous", links))
    assert m.state is State.ROLLBACK_PREVIOUS
    assert d.effects[0] == fx.RollBack(2, 1, "1.0.0", None, UNITS, previous_after="1.2.3")
    drive(m, ev.RollbackOk(2))
    assert m.state is State.IDLE and m.record.job.error is None  # type: ignore[union-attr]
    d = drive(m, ev.RollbackRequested("factory", ev.LinkVersions("1.0.0", "1.2.3", "0.9.0")))
    assert m.state is State.ROLLBACK_FACTORY and d.effects[0].target_version == "0.9.0"  # type: ignore[attr-defined]


def test_manual_rollback_without_previous_is_404_and_busy_is_409() -> None:
    m = UpdaterMachine()
    d = m.handle(ev.RollbackRequested("previous", ev.LinkVersions("1.0.0", None, "1.0.0")), T0)
    assert d.reply.code == 404
    drive(m, ev.DownloadRequested(request()))
    d = m.handle(ev.RollbackRequested("factory", LINKS), T0)
    assert d.reply.code == 409


def test_cancel_download_and_staging() -> None:
    m = UpdaterMachine()
    drive(m, ev.DownloadRequested(request()))
    d = drive(m, ev.Cancel())
    assert m.state is State.IDLE
    assert d.effects[:2] == (fx.StopJob(1), fx.DiscardPackage("update.zip"))
    assert m.record.job.error.startswith("CANCELLED")  # type: ignore[union-attr]
    assert isinstance(d.effects[-1], fx.RecordHistory)
    entry = d.effects[-1].entry
    assert (entry.outcome, entry.error_code, entry.to_version, entry.from_version) == (
        Outcome.CANCELLED,
        ErrorCode.CANCELLED,
        "1.2.3",
        None,  # ended before the switch: what ran was not looked at yet
    )
    m = at_ready()
    drive(m, ev.UpdateRequested("1.2.3"))
    d = drive(m, ev.Cancel())
    assert kinds(d) == [
        "StopJob",
        "DiscardPackage",
        "DiscardStaging",
        "CollectGarbage",
        "Report",
        "RecordHistory",
    ]
    assert fx.DiscardStaging("1.2.3") in d.effects


def test_cancel_is_refused_once_the_switch_began() -> None:
    m = at_health_check()
    d = m.handle(ev.Cancel(), T0)
    assert not d.accepted and d.reply.code == 409


def test_reset_clears_a_finished_job() -> None:
    m = at_health_check()
    drive(
        m,
        ev.Unhealthy(1, Failure(ErrorCode.HEALTH_CHECK_FAILED, "x")),
        ev.RollbackOk(1),
        ev.Reset(),
    )
    assert m.state is State.IDLE and m.record.job is None


def test_rejection_leaves_the_record_identical() -> None:
    m = at_ready()
    before = m.record
    for event in (ev.Switched(1), ev.Healthy(1), ev.RollbackOk(1), ev.Reset()):
        d = m.handle(event, T0)
        assert not d.accepted and d.effects == () and m.record == before


def test_restore_runs_nothing_until_resume() -> None:
    m = at_health_check()
    restored = UpdaterMachine(m.record)
    assert restored.state is State.HEALTH_CHECK and restored.record == m.record
