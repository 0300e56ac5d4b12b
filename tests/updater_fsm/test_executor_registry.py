"""The executor registry: every effect has an entry, and no long-running step can hang.

The first tests read :mod:`updater_fsm.core.effects` by introspection (not a hand list), so
an effect added without an executor, or a long-running one without a failure event, fails
here. The others run a real engine and :class:`~updater_fsm.runner.OpsRunner` on a temp
root, restored from a journal in the state where each long-running effect runs (the
engine's ``Resume`` asks for the effect again, as after any restart), make an ops function
the executor calls raise what it should not, and check the machine leaves that state for
the one the registry's failure event decides.
"""

from __future__ import annotations

import asyncio
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from updater_fsm.config import Config
from updater_fsm.core import effects as fx
from updater_fsm.core import events as ev
from updater_fsm.core.errors import ErrorCode, Failure
from updater_fsm.core.machine import UpdaterMachine
from updater_fsm.core.manifest import HealthProbe, ServiceUnit
from updater_fsm.core.printer import PrinterGate
from updater_fsm.core.record import Record
from updater_fsm.core.table import TRANSITIONS, State
from updater_fsm.engine import Engine
from updater_fsm.journal import Journal
from updater_fsm.ops import download, printer_probe, self_update, snapshot_store, verify
from updater_fsm.recovery import disk_facts, load_record
from updater_fsm.runner import REGISTRY, OpsRunner
from updater_fsm.runner import context as runner_context
from updater_fsm.runner import install as runner_install
from updater_fsm.runner.scheduler import UNEXPECTED

from .helpers import MD5, SHA, drive, request


def _effect_classes() -> list[type[fx.Effect]]:
    found = [
        value
        for value in vars(fx).values()
        if isinstance(value, type) and issubclass(value, fx.Effect) and value is not fx.Effect
    ]
    assert len(found) > 10, found  # the introspection itself works
    return found


EFFECTS = _effect_classes()
LONG_RUNNING = [effect for effect in EFFECTS if REGISTRY[effect].long_running]


@pytest.mark.parametrize("effect", EFFECTS, ids=lambda e: e.__name__)
def test_every_effect_has_an_entry_whose_executor_takes_it(effect: type[fx.Effect]) -> None:
    assert effect in REGISTRY, f"{effect.__name__} has no entry in updater_fsm/runner/registry"
    run = REGISTRY[effect].run
    assert typing.get_type_hints(run)["effect"] is effect, run.__qualname__


def test_the_registry_names_only_effects() -> None:
    assert set(REGISTRY) == set(EFFECTS)


@pytest.mark.parametrize("effect", EFFECTS, ids=lambda e: e.__name__)
def test_a_long_running_effect_has_a_job_and_a_failure_event(effect: type[fx.Effect]) -> None:
    entry = REGISTRY[effect]
    if not entry.long_running:
        return
    assert entry.fails_with is not None, f"{effect.__name__} is long-running with no failure"
    assert "job_id" in attrs.fields_dict(effect), f"{effect.__name__} carries no job_id"
    event = entry.fails_with(7, "detail")
    assert getattr(event, "job_id", None) == 7
    # Its trigger ends a step somewhere: some row leaves a state on it.
    assert any(row.trigger is event.trigger and row.dest is not None for row in TRANSITIONS)


def test_the_long_running_effects_are_the_steps_that_answer() -> None:
    """What runs as a job (cancellable by StopJob) is exactly this list: a change is seen."""
    assert {e.__name__ for e in LONG_RUNNING} == {
        "StartDownload",
        "VerifyPackage",
        "WaitForPrinter",
        "StageSnapshot",
        "SwitchVersion",
        "CheckHealth",
        "RollBack",
        "StageUpdater",
        "SwitchUpdater",
        "ConfirmUpdater",
    }


def test_an_entry_cannot_be_long_running_without_a_failure_event() -> None:
    with pytest.raises(ValueError, match="needs a failure"):
        attrs.evolve(REGISTRY[fx.StartDownload], fails_with=None)


# ---- an executor that raises ends its step -------------------------------------------

PROBED = (ServiceUnit("app.service", 1, health=HealthProbe("command", "true")),)
LINKS = ev.LinkVersions(current="1.0.0", previous=None, factory="1.0.0")
FAILED_HEALTH = Failure(ErrorCode.HEALTH_CHECK_FAILED, "x")


@attrs.frozen
class Case:
    """A long-running effect, the state it runs in, and how its step must end."""

    effect: type[fx.Effect]
    #: events that bring a fresh machine to the state (with the package on disk)
    events: tuple[ev.Event, ...]
    state: State
    #: (module, attribute) of the ops function made to raise
    breaks: tuple[object, str]
    then: State
    code: ErrorCode | None
    gate: PrinterGate = PrinterGate.NONE

    @property
    def id(self) -> str:
        return self.effect.__name__


_TO_READY = (ev.DownloadRequested(request()), ev.DownloadDone(1, 1000, MD5, SHA), ev.Verified(1))
_TO_HEALTH = (
    *_TO_READY,
    ev.UpdateRequested("1.2.3"),
    ev.Staged(1, PROBED, LINKS, None, "0.2.0"),
    ev.Switched(1),
)
_TO_UPDATER = (*_TO_HEALTH, ev.Healthy(1))

CASES = [
    Case(
        fx.StartDownload,
        (ev.DownloadRequested(request()),),
        State.DOWNLOADING,
        (download, "download_package"),
        State.FAILED,
        ErrorCode.DOWNLOAD_FAILED,
    ),
    Case(
        fx.VerifyPackage,
        _TO_READY[:2],
        State.VERIFYING,
        (verify, "verify_digests"),
        State.FAILED,
        ErrorCode.DOWNLOAD_FAILED,
    ),
    Case(
        fx.WaitForPrinter,
        (*_TO_READY, ev.UpdateRequested("1.2.3")),
        State.WAITING_IDLE,
        (printer_probe, "probe_printer"),
        State.FAILED,
        ErrorCode.PRINTER_BUSY,
        gate=PrinterGate.WAIT,
    ),
    Case(
        fx.StageSnapshot,
        (*_TO_READY, ev.UpdateRequested("1.2.3")),
        State.DEPLOYING,
        (runner_context, "read_package"),  # the name the context calls
        State.FAILED,
        ErrorCode.DEPLOYMENT_FAILED,
    ),
    Case(
        fx.SwitchVersion,
        _TO_HEALTH[:-1],
        State.SWITCHING,
        (snapshot_store, "switch_links"),
        State.ROLLBACK_PREVIOUS,  # the ladder takes over, as after any failed switch
        None,
    ),
    Case(
        fx.CheckHealth,
        _TO_HEALTH,
        State.HEALTH_CHECK,
        (runner_install, "probe_once"),  # the name the executor calls
        State.ROLLBACK_PREVIOUS,
        None,
    ),
    Case(
        fx.RollBack,
        (*_TO_HEALTH, ev.Unhealthy(1, FAILED_HEALTH)),
        State.ROLLBACK_PREVIOUS,
        (snapshot_store, "point_current"),
        State.ROLLBACK_FACTORY,  # the next rung
        None,
    ),
    Case(
        fx.StageUpdater,
        _TO_UPDATER,
        State.UPDATER_STAGING,
        (self_update, "forget_rollback_record"),
        State.FAILED,
        ErrorCode.UPDATER_INSTALL_FAILED,
    ),
    Case(
        fx.SwitchUpdater,
        (*_TO_UPDATER, ev.UpdaterStaged(1)),
        State.UPDATER_SWITCHING,
        (self_update, "running_version"),
        State.FAILED,
        ErrorCode.UPDATER_ROLLBACK,
    ),
    Case(
        fx.ConfirmUpdater,
        (*_TO_UPDATER, ev.UpdaterStaged(1), ev.UpdaterStarted(1)),
        State.UPDATER_PROBATION,
        (self_update, "running_version"),
        State.FAILED,
        ErrorCode.UPDATER_ROLLBACK,
    ),
]


def test_every_long_running_effect_has_a_case() -> None:
    assert {case.effect for case in CASES} == set(LONG_RUNNING)


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Config]:
    root = tmp_path / "root"
    snapshot_store.init_layout(root, "1.0.0")
    yield Config(
        root=root,
        state_dir=tmp_path / "state",
        service_control="none",
        updater_prefix=tmp_path / "updater",
        busy_probe="exit 1",
    )


def _journal_at(case: Case, config: Config) -> None:
    """Journal the record of a machine driven to ``case.state``, the package on disk."""
    machine = UpdaterMachine(gate=case.gate)
    drive(machine, *case.events, now=time.time())
    assert machine.state is case.state
    Journal(config.state_path).save(machine.record)
    config.downloads_dir.mkdir(parents=True, exist_ok=True)
    (config.downloads_dir / "update.zip").write_bytes(b"x" * 1000)


async def _run_until_it_leaves(case: Case, config: Config) -> tuple[list[State], Record]:
    """Start an engine and a runner on the journal; the states entered, up to the first
    one after ``case.state``."""
    journal = Journal(config.state_path)
    record = load_record(journal).record
    layout = snapshot_store.Layout(config.root)
    engine = Engine(
        record,
        journal,
        read_links=lambda: snapshot_store.read_links(layout),
        gate=case.gate,
        ask_printer=printer_probe.configured_probe(config.busy_probe, timeout_s=5),
    )
    runner = OpsRunner(engine, config)
    engine.attach(runner)
    updates = engine.subscribe()
    seen = [record.state]
    try:
        await engine.start(disk_facts(record, config.downloads_dir, engine.links))
        async with asyncio.timeout(20):
            while seen[-1] is case.state:
                seen.append((await updates.get()).state)
        return seen, engine.record
    finally:
        await engine.stop()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_an_executor_that_raises_ends_its_step(
    case: Case, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    called: list[str] = []

    def broken(*args: Any, **kwargs: Any) -> Any:
        called.append(case.breaks[1])
        raise RuntimeError("an executor bug")

    _journal_at(case, config)
    monkeypatch.setattr(*case.breaks, broken)
    seen, record = await _run_until_it_leaves(case, config)

    assert called, f"{case.breaks[1]} was never called: the case does not test {case.id}"
    assert seen[-1] is case.then, seen
    job = record.job
    assert job is not None
    if case.code is not None:  # the step's job failed with the registry's failure
        assert job.error_code is case.code, job.error
        assert job.error is not None and UNEXPECTED in job.error, job.error
    else:  # the ladder took over: the failure is the cause it climbs for
        assert job.cause is not None and job.cause.endswith(UNEXPECTED), job.cause


async def test_a_broken_wait_keeps_the_package_and_stops_nothing(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = next(c for c in CASES if c.effect is fx.WaitForPrinter)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("an executor bug")

    _journal_at(case, config)
    monkeypatch.setattr(*case.breaks, broken)
    _, record = await _run_until_it_leaves(case, config)
    job = record.job
    assert job is not None and job.package_kept
    assert job.error == f"PRINTER_BUSY: the busy gate failed: {UNEXPECTED}"
    assert (config.downloads_dir / "update.zip").is_file()
    assert snapshot_store.read_links(snapshot_store.Layout(config.root)).current == "1.0.0"


@pytest.mark.parametrize(
    ("effect", "what"),
    [
        (fx.SwitchUpdater, "the switch failed: "),
        (fx.ConfirmUpdater, "the probation check failed: "),
    ],
)
def test_the_updaters_failures_say_what_failed(effect: type[fx.Effect], what: str) -> None:
    fails_with = REGISTRY[effect].fails_with
    assert fails_with is not None
    assert fails_with(3, "boom") == ev.UpdaterRolledBack(
        3, Failure(ErrorCode.UPDATER_ROLLBACK, f"{what}boom")
    )
