"""The engine: the one place that changes state.

Every event — an API call, an effect's result, a restart — goes through one asyncio queue
to one task that asks the machine for a decision, journals the new record (fsynced) and only
then hands the effects to the runner. Nothing else writes state, so no locks are needed and
a late result can never race an API call. Live download figures bypass the machine (they
are not transitions) and are folded into the published :class:`~updater_fsm.core.progress.Snapshot`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import attrs
import structlog

from updater_fsm.core.effects import Effect
from updater_fsm.core.errors import RequestError
from updater_fsm.core.events import (
    DiskFacts,
    Event,
    LinkVersions,
    Resume,
    RollbackRequested,
    UpdateRequested,
)
from updater_fsm.core.machine import Decision, Reply, UpdaterMachine
from updater_fsm.core.printer import PrinterGate, PrinterStatus
from updater_fsm.core.progress import Snapshot, Transfer, build_snapshot
from updater_fsm.core.record import Record
from updater_fsm.core.table import STAGE_OF, Stage, State
from updater_fsm.faults import crash_point
from updater_fsm.journal import Journal

_log = structlog.get_logger(__name__)
#: Delay before an effect result whose journal write failed is processed again.
_RESULT_RETRY_S = 1.0


class EffectRunner(Protocol):
    """Executes effects; reports results by calling :meth:`Engine.post`."""

    def execute(self, effects: Sequence[Effect]) -> None:
        """Start executing ``effects`` in order, in the background; must not block."""

    async def aclose(self) -> None:
        """Cancel running work (keeping everything resumable) and wait for it."""


class Subscription:
    """A bounded stream of snapshots for one listener (SSE client, reporter).

    Holds at most ``maxsize`` snapshots; when a slow listener falls behind, the oldest are
    dropped so memory stays bounded and the newest state always arrives.
    """

    def __init__(self, engine: Engine, maxsize: int) -> None:
        self._engine = engine
        self._queue: asyncio.Queue[Snapshot] = asyncio.Queue(maxsize)

    def push(self, snapshot: Snapshot) -> None:
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(snapshot)

    async def get(self) -> Snapshot:
        return await self._queue.get()

    def close(self) -> None:
        self._engine._subscribers.discard(self)

    async def __aiter__(self) -> AsyncIterator[Snapshot]:
        try:
            while True:
                yield await self.get()
        finally:
            self.close()


@attrs.define
class _Item:
    event: Event
    reply: asyncio.Future[Decision] | None


class Engine:
    """Run the machine: queue → decide → journal → effects → snapshot.

    Args:
        record: the journaled record to resume from (a fresh ``Record()`` on a new device);
            the engine builds the decision core from it.
        journal: where every accepted record is saved before its effects run.
        resume_limit: the crash-loop breaker's limit (config ``resume_limit``).
        read_links: returns the versions the symlinks name (cheap; called after decisions).
        clock: UNIX time source (tests pass a fake one to exercise expiry).
        gate: how installs and manual rollbacks treat a busy printer.
        ask_printer: runs the busy probe (never on the event loop); required unless
            ``gate`` is ``NONE``. Commands that would stop the printer's services at once
            carry its answer into the machine (see :meth:`submit`).
    """

    def __init__(
        self,
        record: Record,
        journal: Journal,
        *,
        resume_limit: int = 3,
        read_links: Callable[[], LinkVersions] = LinkVersions,
        clock: Callable[[], float] = time.time,
        gate: PrinterGate = PrinterGate.NONE,
        ask_printer: Callable[[], Awaitable[PrinterStatus]] | None = None,
    ) -> None:
        if gate is not PrinterGate.NONE and ask_printer is None:
            raise ValueError("a printer gate needs a busy probe to ask")
        machine = UpdaterMachine(record, resume_limit=resume_limit, gate=gate)
        self._gate = gate
        self._ask_printer = ask_printer
        self._printer: PrinterStatus | None = None
        self._machine = machine
        self._journal = journal
        self._read_links = read_links
        self._clock = clock
        self._runner: EffectRunner | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._subscribers: set[Subscription] = set()
        self._transfer: Transfer | None = None
        self._links = read_links()
        self._snapshot = build_snapshot(machine.record, None, self._links)
        self._floor_key: tuple[int, Stage] = (0, STAGE_OF[machine.record.state])

    # ---- lifecycle -------------------------------------------------------------------
    def attach(self, runner: EffectRunner) -> None:
        """Give the engine its effect runner (before :meth:`start`)."""
        self._runner = runner

    async def start(self, facts: DiskFacts) -> Decision:
        """Start processing events and resume whatever the journal says was running."""
        if self._task is None:
            self._writer = _journal_writer()
            self._task = asyncio.create_task(self._run(), name="updater-engine")
        return await self.submit(Resume(facts))

    async def stop(self) -> None:
        """Finish the event in progress, stop the loop and the runner (work stays resumable)."""
        if self._task is not None:
            self._queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._writer is not None:
            self._writer.shutdown(wait=False)  # idle: the loop above awaited every save
            self._writer = None
        if self._runner is not None:
            await self._runner.aclose()

    # ---- inputs ----------------------------------------------------------------------
    async def submit(self, event: Event) -> Decision:
        """Queue ``event`` and wait for its decision (journaled, effects started).

        A command that would stop the printer's services at once — a manual rollback, or
        an install under ``busy_policy = refuse`` — first asks the busy probe and carries
        its answer, so the (pure) machine can refuse it while the printer is busy. An
        install under ``wait`` asks nothing here: it enters ``waiting_idle`` and the
        runner asks.
        """
        if self._ask_printer is not None and self._asks_printer_first(event):
            status = await self._ask_printer()
            event = attrs.evolve(event, printer=status)  # type: ignore[misc]
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(event, future))
        return await future

    def post(self, event: Event) -> None:
        """Queue ``event`` without waiting (effect results)."""
        self._queue.put_nowait(_Item(event, None))

    def _asks_printer_first(self, event: Event) -> bool:
        if isinstance(event, RollbackRequested):
            return self._gate is not PrinterGate.NONE
        return isinstance(event, UpdateRequested) and self._gate is PrinterGate.REFUSE

    def update_printer(self, status: PrinterStatus) -> None:
        """Fold the busy probe's latest answer into the snapshot (no journal write)."""
        self._printer = status
        self._publish()

    def update_transfer(self, transfer: Transfer) -> None:
        """Fold live download figures into the snapshot (no journal write)."""
        self._transfer = transfer
        self._publish()

    def refresh_links(self) -> None:
        """Re-read the symlinks (executors call this right after they move one)."""
        self._links = self._read_links()
        self._publish()

    # ---- outputs ---------------------------------------------------------------------
    @property
    def record(self) -> Record:
        return self._machine.record

    @property
    def snapshot(self) -> Snapshot:
        """The latest snapshot; a plain attribute read, safe to serve at any rate."""
        return self._snapshot

    @property
    def links(self) -> LinkVersions:
        return self._links

    def subscribe(self, maxsize: int = 256) -> Subscription:
        """A new listener that receives every snapshot published from now on."""
        sub = Subscription(self, maxsize)
        self._subscribers.add(sub)
        return sub

    # ---- the loop --------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            try:
                decision = await self._process(item.event)
            except Exception as exc:  # never let one event kill the only writer
                _log.exception("event processing failed", trigger=str(item.event.trigger))
                decision = Decision(
                    False,
                    self._machine.state,
                    self._machine.record,
                    (),
                    Reply(500, f"{RequestError.INTERNAL_ERROR}: {exc}"),
                )
            if item.reply is not None and not item.reply.done():
                item.reply.set_result(decision)

    async def _process(self, event: Event) -> Decision:
        before = self._machine.record
        decision = self._machine.handle(event, self._clock())
        if not decision.accepted:
            if _is_result(event):
                _log.info("ignored stale event", ignored=repr(event), state=str(before.state))
            return decision
        assert self._writer is not None, "events are processed between start() and stop()"
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self._journal.save, decision.record)
        except OSError as exc:
            # Not durable means not decided: restore the old record, run nothing.
            _log.error("journal write failed; event rejected", error=str(exc))
            self._machine = UpdaterMachine(
                before, resume_limit=self._machine.resume_limit, gate=self._gate
            )
            if _is_result(event):
                # An effect's result has nobody to retry it: losing it would leave the
                # state (e.g. downloading) waiting forever for a task that has ended.
                loop.call_later(_RESULT_RETRY_S, self.post, event)
            return attrs.evolve(
                decision,
                accepted=False,
                record=before,
                effects=(),
                reply=Reply(500, f"{RequestError.JOURNAL_WRITE_FAILED}: {exc.strerror or exc}"),
            )
        # Journaled but no effect started yet: the crash tests kill here too.
        crash_point("engine:journaled")
        if decision.state_changed and decision.record.state is State.WAITING_IDLE:
            self._printer = None  # a new wait: the last one's answer is not this one's
        if decision.state_changed:
            _log.info(
                "transition",
                trigger=str(event.trigger),
                src=str(decision.before),
                dst=str(decision.record.state),
                seq=decision.record.seq,
                effects=[type(e).__name__ for e in decision.effects],
            )
        self._links = self._read_links()
        self._publish()
        if decision.effects and self._runner is not None:
            self._runner.execute(decision.effects)
        return decision

    def _publish(self) -> None:
        record = self._machine.record
        key = (record.job.job_id if record.job else 0, STAGE_OF[record.state])
        floor = self._snapshot.progress if key == self._floor_key else 0
        snap = build_snapshot(
            record, self._transfer, self._links, floor=floor, printer=self._printer
        )
        self._floor_key = key
        if snap == self._snapshot:
            return
        self._snapshot = snap
        for sub in tuple(self._subscribers):
            sub.push(snap)


def _journal_writer() -> ThreadPoolExecutor:
    """The journal's own thread: a save never queues behind other blocking work.

    Not the default executor, which ``asyncio.to_thread`` callers share (``GET /versions``
    measuring snapshots, executors' file work): with a few dozen of those queued, a
    transition waited seconds for a free thread before its fsync (issue 21). One thread,
    since the engine saves one record at a time.
    """
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-write")


def _is_result(event: Event) -> bool:
    """Effect results carry a ``job_id``; API events do not."""
    return hasattr(event, "job_id")
