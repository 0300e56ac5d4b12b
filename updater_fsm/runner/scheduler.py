"""The effect scheduler: runs the machine's effects, in order, with the registry's executors.

Each decision's effects run in order, and after the short effects of every earlier
decision (so a clean-up never overtakes, or is overtaken by, the work of the next job).
Long-running effects (download, verify, wait, stage, switch, health, rollback, the
updater's steps; the registry says which) run as tasks of their own, which ``StopJob``
cancels; a result becomes an event posted back to the engine. Blocking file work runs in
worker threads, subprocesses and HTTP are awaited, so the event loop — and with it
``/progress`` — is never held. The scheduler keeps no state of its own beyond the tasks it
runs: everything needed to redo an effect is in the effect, and every effect is safe to run
again after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import structlog

from updater_fsm.config import Config
from updater_fsm.core import effects as fx
from updater_fsm.ops.services import ServiceController
from updater_fsm.runner.context import EnginePort, ExecutorContext, ReportSink
from updater_fsm.runner.registry import REGISTRY, Entry, Registry

_log = structlog.get_logger(__name__)

#: The detail of the failure event an executor's unexpected exception becomes.
UNEXPECTED = "unexpected internal error (see log)"


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class OpsRunner:
    """Runs effects against the real world described by ``config``.

    Args:
        engine: receives result events, transfer figures and link refreshes.
        config: paths, timeouts and the service-control mode.
        reporter: receives ``Report`` effects (None = no device-api reporting).
        controller: the systemctl client; None with ``service_control = "none"``.
        restart_self: ends this process so that its supervisor starts the updater again
            (``serve`` exits with :data:`~updater_fsm.ops.self_update.EXIT_SWITCHED`); how a
            self-update hands over to the new updater. None: nobody can (tests in-process).
        registry: the executors (tests replace one to make it fail).
    """

    def __init__(
        self,
        engine: EnginePort,
        config: Config,
        *,
        reporter: ReportSink | None = None,
        controller: ServiceController | None = None,
        restart_self: Callable[[], None] | None = None,
        registry: Registry = REGISTRY,
    ) -> None:
        self._engine = engine
        self._registry = registry
        self._context = ExecutorContext.create(
            engine,
            config,
            stop_job=self._stop_job,
            reporter=reporter,
            controller=controller,
            restart_self=restart_self,
        )
        self._tasks: dict[asyncio.Task[None], int | None] = {}
        self._tail: asyncio.Future[None] | None = None

    # ---- EffectRunner protocol -------------------------------------------------------
    def execute(self, effects: Sequence[fx.Effect]) -> None:
        """Run ``effects`` after the short effects of every earlier batch have finished.

        Batches are sequenced so that, say, the package deletion of a cancel can never
        run after (and destroy) the ``.part`` of the download that replaced it. Job
        effects — the ones that take long and answer with an event — are spawned as tasks
        of their own, tracked by job id so ``StopJob`` can cancel them.
        """
        previous = self._tail
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tail = done
        task = asyncio.create_task(self._run_batch(tuple(effects), previous))
        # Released however the batch ends: done, failed, or cancelled (even before it ran).
        task.add_done_callback(lambda _: _settle(done))
        self._track(task, None)

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @property
    def busy(self) -> bool:
        """Whether an effect is running (``serve``'s idle exit waits for none)."""
        return bool(self._tasks)

    async def idle(self) -> None:
        """Wait until no effect is running (tests and the demo use it)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- plumbing ------------------------------------------------------------------
    def _track(self, task: asyncio.Task[None], job_id: int | None) -> None:
        self._tasks[task] = job_id
        task.add_done_callback(self._tasks.pop)

    async def _run_batch(
        self,
        effects: tuple[fx.Effect, ...],
        previous: asyncio.Future[None] | None,
    ) -> None:
        if previous is not None:
            await previous
        for effect in effects:
            entry = self._registry.get(type(effect))
            if entry is None:
                _log.error("effect has no executor", effect=repr(effect))
                continue
            if entry.long_running:
                task = asyncio.create_task(self._guarded(effect, entry), name=type(effect).__name__)
                self._track(task, getattr(effect, "job_id", None))
            else:
                await self._guarded(effect, entry)

    async def _guarded(self, effect: fx.Effect, entry: Entry) -> None:
        """Run ``effect``; an unexpected exception becomes its entry's failure event."""
        try:
            await entry.run(self._context, effect)
        except asyncio.CancelledError:
            raise
        except Exception:  # an executor bug must not leave the machine waiting forever
            _log.exception("effect failed unexpectedly", effect=type(effect).__name__)
            job_id = getattr(effect, "job_id", None)
            if entry.fails_with is not None and isinstance(job_id, int):
                self._engine.post(entry.fails_with(job_id, UNEXPECTED))

    async def _stop_job(self, job_id: int) -> None:
        """Cancel the tasks of ``job_id`` and wait until they have ended."""
        victims = [t for t, job in self._tasks.items() if job == job_id]
        for task in victims:
            task.cancel()
        for task in victims:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
