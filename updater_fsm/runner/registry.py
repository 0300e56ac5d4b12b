"""The one table of executors: every effect type, what runs it, how, and how it fails.

In the spirit of RAUC's ``image_type_map``: the scheduler (:mod:`updater_fsm.runner.scheduler`)
knows no effect by name; it looks each one up here. An entry says

* ``run``: the executor, ``async def x(ctx: ExecutorContext, effect) -> None``;
* ``long_running``: the effect runs as a task of its own, tracked by its ``job_id`` so that
  ``StopJob`` cancels it (and waits for it); a short one runs in its batch's order;
* ``fails_with``: ``(job_id, detail) -> Event``, the result event that ends the effect's
  step when its executor raises what it should not (a bug, an unforeseen error): without
  it the machine would wait in that state until a restart or a cancel. Required for a
  long-running effect; a short one answers with no event, so its failure is only logged.

``tests/updater_fsm/test_executor_registry.py`` checks that every effect class has an entry
and every long-running one a ``job_id`` and a failure event, and that the failure event ends
each long-running step in a decided state.
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import attrs

from updater_fsm.core import effects as fx
from updater_fsm.core import events as ev
from updater_fsm.core.errors import ErrorCode, Failure
from updater_fsm.runner import device, fetch, install, self_update
from updater_fsm.runner.context import ExecutorContext

__all__ = ["REGISTRY", "Entry", "FailureEvent", "Registry", "failure_event"]

_E = TypeVar("_E", bound=fx.Effect)

#: ``(job_id, detail) -> Event``: the result event of a step whose executor raised.
FailureEvent = Callable[[int, str], ev.Event]


@attrs.frozen
class Entry:
    """How one effect type is executed (see the module's docstring)."""

    run: Callable[[ExecutorContext, Any], Awaitable[None]]
    long_running: bool = False
    fails_with: FailureEvent | None = None

    def __attrs_post_init__(self) -> None:
        if self.long_running and self.fails_with is None:
            raise ValueError(f"{self.run.__qualname__}: a long-running effect needs a failure")


#: Effect type → its entry.
Registry = Mapping[type[fx.Effect], Entry]


def failure_event(
    event: Callable[[int, Failure], ev.Event], code: ErrorCode, what: str = ""
) -> FailureEvent:
    """A :data:`FailureEvent` posting ``event(job_id, Failure(code, what + detail))``."""

    def make(job_id: int, detail: str) -> ev.Event:
        return event(job_id, Failure(code, f"{what}{detail}"))

    return make


def _short(
    effect: type[_E], run: Callable[[ExecutorContext, _E], Awaitable[None]]
) -> tuple[type[fx.Effect], Entry]:
    return effect, Entry(run)


def _job(
    effect: type[_E],
    run: Callable[[ExecutorContext, _E], Awaitable[None]],
    fails_with: FailureEvent,
) -> tuple[type[fx.Effect], Entry]:
    return effect, Entry(run, long_running=True, fails_with=fails_with)


async def _stop_job(ctx: ExecutorContext, effect: fx.StopJob) -> None:
    """The scheduler's own effect: cancel the job's tasks and wait for them."""
    await ctx.stop_job(effect.job_id)


def _table(*rows: tuple[type[fx.Effect], Entry]) -> Registry:
    table: dict[type[fx.Effect], Entry] = {}
    for effect, entry in rows:
        if effect in table:
            raise ValueError(f"{effect.__name__} has two entries")
        table[effect] = entry
    return types.MappingProxyType(table)


C = ErrorCode

#: Every effect the machine can ask for, and how it is executed.
REGISTRY: Registry = _table(
    # --- the package ------------------------------------------------------------
    _job(
        fx.StartDownload,
        fetch.start_download,
        failure_event(ev.DownloadFailed, C.DOWNLOAD_FAILED),
    ),
    _job(
        fx.VerifyPackage,
        fetch.verify_package,
        failure_event(ev.VerifyFailed, C.DOWNLOAD_FAILED),
    ),
    _short(fx.DiscardPackage, fetch.discard_package),
    _short(fx.StopJob, _stop_job),
    # --- the busy gate, the display, the reports --------------------------------
    # The printer keeps printing; the job fails keeping its verified package.
    _job(
        fx.WaitForPrinter,
        device.wait_for_printer,
        failure_event(ev.WaitFailed, C.PRINTER_BUSY),
    ),
    _short(fx.ShowScreen, device.show_screen),
    _short(fx.Report, device.report),
    _short(fx.RecordHistory, device.record_history),
    # --- the device's install ---------------------------------------------------
    _job(
        fx.StageSnapshot,
        install.stage_snapshot,
        failure_event(ev.StageFailed, C.DEPLOYMENT_FAILED),
    ),
    _short(fx.DiscardStaging, install.discard_staging),
    _job(
        fx.SwitchVersion,
        install.switch_version,
        failure_event(ev.SwitchFailed, C.DEPLOYMENT_FAILED),
    ),
    _job(
        fx.CheckHealth,
        install.check_health_of,
        failure_event(ev.Unhealthy, C.HEALTH_CHECK_FAILED),
    ),
    _job(
        fx.RollBack,
        install.roll_back,
        failure_event(ev.RollbackFailed, C.ROLLBACK_FAILED),
    ),
    _short(fx.RaiseRollbackFloor, install.raise_rollback_floor),
    _short(fx.RemoveSnapshot, install.remove_snapshot),
    _short(fx.CollectGarbage, install.collect_garbage),
    # --- the updater updates itself ---------------------------------------------
    _job(
        fx.StageUpdater,
        self_update.stage_updater,
        failure_event(ev.UpdaterStageFailed, C.UPDATER_INSTALL_FAILED),
    ),
    _job(
        fx.SwitchUpdater,
        self_update.switch_updater,
        failure_event(ev.UpdaterRolledBack, C.UPDATER_ROLLBACK, "the switch failed: "),
    ),
    _job(
        fx.ConfirmUpdater,
        self_update.confirm_updater,
        failure_event(ev.UpdaterRolledBack, C.UPDATER_ROLLBACK, "the probation check failed: "),
    ),
    _short(fx.CollectUpdaterSlots, self_update.collect_updater_slots),
)
