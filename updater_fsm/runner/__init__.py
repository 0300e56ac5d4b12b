"""The effect runner: executes the machine's effects and answers with result events.

* :mod:`~updater_fsm.runner.scheduler` — :class:`OpsRunner`: the order of batches, a task
  per long-running effect, ``StopJob``, and an executor's unexpected exception turned into
  its step's failure event;
* :mod:`~updater_fsm.runner.registry` — the one table: effect type → executor, whether it
  runs long, its failure event;
* :mod:`~updater_fsm.runner.context` — what executors get (:class:`ExecutorContext`: the
  engine port, the configuration, the layout, the service controller, …);
* the executors by concern: :mod:`~updater_fsm.runner.fetch` (download, verify),
  :mod:`~updater_fsm.runner.install` (stage, switch, health, rollback, clean-up),
  :mod:`~updater_fsm.runner.self_update` (the updater's own slot, switch, probation),
  :mod:`~updater_fsm.runner.device` (the busy gate, the display, reports).
"""

from updater_fsm.runner.context import EnginePort, ExecutorContext, ReportSink, package_limits
from updater_fsm.runner.registry import REGISTRY, Entry
from updater_fsm.runner.scheduler import OpsRunner

__all__ = [
    "REGISTRY",
    "EnginePort",
    "Entry",
    "ExecutorContext",
    "OpsRunner",
    "ReportSink",
    "package_limits",
]
