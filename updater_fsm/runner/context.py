"""What every executor gets: the engine-facing port and the world the effects act on.

An executor is ``async def run(ctx: ExecutorContext, effect: fx.Something) -> None``: it
does the effect's I/O with ``ctx`` and answers through ``ctx.engine`` (a result event, live
figures, a link refresh). The context holds no state of a job; everything needed to redo an
effect is in the effect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import attrs

from updater_fsm.config import Config, ServiceControl
from updater_fsm.core import events as ev
from updater_fsm.core.manifest import Manifest
from updater_fsm.core.printer import PrinterStatus
from updater_fsm.core.progress import Transfer
from updater_fsm.ops import self_update, snapshot_store, verify
from updater_fsm.ops.printer_probe import configured_probe
from updater_fsm.ops.services import ServiceController
from updater_fsm.package.limits import PackageLimits
from updater_fsm.package.manifest import read_package
from updater_fsm.state_layout import package_path

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "EnginePort",
    "ExecutorContext",
    "ReportSink",
    "ScreenHolder",
    "in_thread_to_the_end",
    "package_limits",
]


class EnginePort(Protocol):
    """What executors may do to the engine (:class:`updater_fsm.engine.Engine` is one)."""

    def post(self, event: ev.Event) -> None:
        """Queue a result event without waiting."""

    async def submit(self, event: ev.Event) -> object:
        """Queue an event and wait until it is journaled (checkpoints, post_cmds)."""

    def update_transfer(self, transfer: Transfer) -> None:
        """Fold live download figures into the snapshot."""

    def update_printer(self, status: PrinterStatus) -> None:
        """Fold the busy probe's latest answer into the snapshot."""

    def refresh_links(self) -> None:
        """Re-read the symlinks (right after an executor moved one)."""


class ReportSink(Protocol):
    """Where ``Report`` effects go (the device-api reporter)."""

    def kick(self, terminal: bool) -> None:
        """Send the current snapshot soon; ``terminal`` ones must never be dropped."""


@attrs.define
class ScreenHolder:
    """The progress display started by ``screen_command`` (None: none started yet)."""

    process: asyncio.subprocess.Process | None = None


def package_limits(config: Config) -> PackageLimits:
    return PackageLimits(
        max_total_uncompressed=config.max_package_bytes, max_ratio=config.max_zip_ratio
    )


@attrs.frozen
class ExecutorContext:
    """The engine port and the device as configured: all an executor may use.

    Attributes:
        engine: receives result events, transfer figures, printer answers, link refreshes.
        config: paths, timeouts and the service-control mode.
        layout: the version snapshots under ``config.root``.
        limits: the package's size and ratio bounds.
        controller: the systemctl client; None with ``service_control = "none"``.
        trusted_keys: the keys a package's signature may verify against (empty: unsigned).
        slots: the updater's own slots (None: this updater runs from no slot).
        ask_printer: the busy probe (None: no ``busy_probe`` configured).
        restart_self: ends this process for its supervisor to start the updater again
            (a self-update's hand-over); None: nobody can (tests in-process).
        reporter: receives ``Report`` effects (None = no device-api reporting).
        screen: the progress display a ``screen_command`` started.
        stop_job: cancels the tasks of a job and waits for them (the scheduler's).
    """

    engine: EnginePort
    config: Config
    layout: snapshot_store.Layout
    limits: PackageLimits
    controller: ServiceController | None
    trusted_keys: tuple[Ed25519PublicKey, ...]
    slots: self_update.Slots | None
    ask_printer: Callable[[], Awaitable[PrinterStatus]] | None
    restart_self: Callable[[], None] | None
    reporter: ReportSink | None
    stop_job: Callable[[int], Awaitable[None]]
    screen: ScreenHolder = attrs.field(factory=ScreenHolder)

    @classmethod
    def create(
        cls,
        engine: EnginePort,
        config: Config,
        *,
        stop_job: Callable[[int], Awaitable[None]],
        reporter: ReportSink | None = None,
        controller: ServiceController | None = None,
        restart_self: Callable[[], None] | None = None,
    ) -> ExecutorContext:
        """The context ``config`` describes (a systemctl client unless service control is
        ``none``, the trusted key read, the updater's slots found, the busy probe built)."""
        if controller is None and config.service_control is ServiceControl.SYSTEMD:
            controller = ServiceController(
                config.systemctl,
                stop_timeout=config.stop_timeout_s,
                start_timeout=config.start_timeout_s,
            )
        trusted_keys = verify.load_trusted_keys(config.trusted_key)
        return cls(
            engine=engine,
            config=config,
            layout=snapshot_store.Layout(config.root),
            limits=package_limits(config),
            controller=controller,
            trusted_keys=trusted_keys,
            slots=self_update.find_slots(config.updater_prefix),
            ask_printer=configured_probe(config.busy_probe, timeout_s=config.busy_probe_timeout_s),
            restart_self=restart_self,
            reporter=reporter,
            stop_job=stop_job,
        )

    def package_path(self, name: str) -> Path:
        return package_path(self.config.downloads_dir, name)

    def backup_dir(self, version: str) -> Path:
        return self.config.backups_dir / f"v{version}"

    def read_manifest(self, version: str, package_name: str) -> Manifest:
        return read_package(
            self.package_path(package_name),
            expected_version=version,
            root=self.config.root,
            extra_roots=self.config.extra_roots,
            limits=self.limits,
        )


_T = TypeVar("_T")


async def in_thread_to_the_end(work: Callable[[], _T]) -> _T:
    """Run ``work`` in a worker thread; a cancel waits for it to finish (or fail) first.

    A thread cannot be interrupted: a cancel's clean-up (discarding a staging directory, a
    half-built slot) would otherwise race the thread still writing there.
    """
    thread = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(thread)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await thread
        raise
