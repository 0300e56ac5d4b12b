"""Benchmark: the version switch, alone and with the services around it.

1. ``snapshot_store.switch_links`` on a realistic snapshot store (factory + two snapshots of
   ``--files`` files each), alternating between two versions ``--reps`` times. Each call
   reads the links, replaces ``previous`` and ``current`` (temp link + rename + directory
   fsync, twice) and reads them back. Goal: < 1 ms (p50).
2. When running as root with systemd available: the install's service sequence against a
   real systemd (``tests.support.systemd_sandbox.SystemdSandbox``) with two small units
   running from ``versions/current``: stop (descending ``restart_order``) → switch → start
   (ascending) → health check, as the runner does it, ``--cycles`` times. The units' own
   start and stop (bare ``systemctl start``/``stop``, measured separately) are subtracted
   to give the updater's overhead. The deliberate waits of the product defaults
   (``start_confirm_s`` 0.5 s per unit, ``settle_s`` 5 s) are set to ``--confirm`` and
   ``--settle`` (default 0) so they do not hide the mechanism's cost.

Usage::

    .venv/bin/python bench/switch.py [--reps 500] [--files 300] [--cycles 20] [--dir D]
        [--confirm 0] [--settle 0] [--no-systemd]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import REPO, machine, percentile, print_table, temp_dir

sys.path.insert(0, str(REPO))

from updater_fsm.core.manifest import ServiceUnit
from updater_fsm.log_setup import configure_logging
from updater_fsm.ops import snapshot_store

GOAL_SWITCH_MS = 1.0
_VERSIONS = ("1.1.0", "1.2.0")
_UNITS = (("svc-a", 1), ("svc-b", 2))


def _ms(values: list[float]) -> list[str]:
    return [
        f"{statistics.median(values) * 1000:.3f}",
        f"{percentile(values, 99) * 1000:.3f}",
        f"{max(values) * 1000:.3f}",
    ]


def build_store(root: Path, files: int) -> None:
    """Factory v1.0.0 (read-only) with ``files`` files, plus copies v1.1.0 and v1.2.0."""
    tree = root.parent / "factory-tree"
    for sub in ("bin", "lib", "services"):
        (tree / sub).mkdir(parents=True)
    for i in range(files):
        sub = ("bin", "lib", "services")[i % 3]
        path = tree / sub / f"file-{i:04d}"
        path.write_bytes(os.urandom(4096 + (i % 16) * 1024))
        if sub == "bin":
            path.chmod(0o755)
    for name, _ in _UNITS:  # the systemd part's services: report nothing, just run
        script = tree / "bin" / name
        script.write_text("#!/bin/sh\nexec sleep 600\n")
        script.chmod(0o755)
    snapshot_store.init_layout(root, "1.0.0", from_dir=tree)
    layout = snapshot_store.Layout(root)
    for version in _VERSIONS:
        shutil.copytree(tree, layout.snapshot_dir(version), symlinks=True)
    shutil.rmtree(tree)


def bench_links(root: Path, reps: int) -> list[float]:
    """Time ``switch_links`` alternating between the two versions; seconds per call."""
    layout = snapshot_store.Layout(root)
    times = []
    for i in range(reps):
        version = _VERSIONS[i % 2]
        t0 = time.perf_counter()
        snapshot_store.switch_links(layout, version)
        times.append(time.perf_counter() - t0)
    return times


def bench_steps(root: Path, reps: int) -> dict[str, list[float]]:
    """Time the steps a switch is made of, one by one, in the same ``versions/`` directory.

    ``symlink+rename`` is the atomic part (what a service can observe); ``fsync(dir)`` is
    what makes it survive a power cut. A switch does each twice (``previous``, ``current``).
    """
    from updater_fsm import durable

    versions = snapshot_store.Layout(root).versions
    link, tmp = versions / ".bench-link", versions / ".bench-link.tmp"
    steps: dict[str, list[float]] = {"read_links": [], "symlink+rename": [], "fsync(dir)": []}
    layout = snapshot_store.Layout(root)
    try:
        for i in range(reps):
            t0 = time.perf_counter()
            snapshot_store.read_links(layout)
            t1 = time.perf_counter()
            os.symlink(f"v{_VERSIONS[i % 2]}", tmp)
            os.replace(tmp, link)
            t2 = time.perf_counter()
            durable.fsync_dir(versions)
            t3 = time.perf_counter()
            steps["read_links"].append(t1 - t0)
            steps["symlink+rename"].append(t2 - t1)
            steps["fsync(dir)"].append(t3 - t2)
    finally:
        for path in (link, tmp):
            if os.path.lexists(path):
                os.unlink(path)
    return steps


# ---- with systemd -----------------------------------------------------------------------
def _timed_ctl(sandbox: object, *args: str) -> float:
    """Seconds one ``systemctl ARGS`` in the sandbox takes (process start to exit)."""
    t0 = time.perf_counter()
    _ctl(sandbox, *args)
    return time.perf_counter() - t0


async def _cycles(
    sandbox: object, root: Path, cycles: int, confirm_s: float, settle_s: float
) -> dict[str, list[float]]:
    from tests.support.systemd_sandbox import SystemdSandbox
    from updater_fsm.ops.commands import CommandResult
    from updater_fsm.ops.health import check_health
    from updater_fsm.ops.services import ServiceController

    assert isinstance(sandbox, SystemdSandbox)

    class CountingController(ServiceController):
        """Counts the systemctl processes the updater spawns (each one costs a fork+exec)."""

        calls = 0

        async def _run(self, *args: str, limit_s: float | None = None) -> CommandResult:
            CountingController.calls += 1
            return await super()._run(*args, limit_s=limit_s)

    ctl = CountingController(
        sandbox.systemctl_prefix, start_confirm_s=confirm_s, poll_s=0.02, start_timeout=10
    )
    units = [ServiceUnit(f"{name}.service", order) for name, order in _UNITS]
    layout = snapshot_store.Layout(root)
    phases: dict[str, list[float]] = {k: [] for k in ("stop", "switch", "start", "health")}
    phases["total"] = []
    for i in range(cycles):
        t0 = time.perf_counter()
        await ctl.stop_units(units)
        t1 = time.perf_counter()
        await asyncio.to_thread(snapshot_store.switch_links, layout, _VERSIONS[i % 2])
        t2 = time.perf_counter()
        await ctl.start_units(units)
        t3 = time.perf_counter()
        await check_health(ctl, units, settle_s=settle_s, poll_s=0.02)
        t4 = time.perf_counter()
        for key, value in zip(
            ("stop", "switch", "start", "health", "total"),
            (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0),
            strict=True,
        ):
            phases[key].append(value)
    phases["calls"] = [CountingController.calls / cycles]
    return phases


def bench_systemd(root: Path, cycles: int, confirm_s: float, settle_s: float) -> None:
    """Boot a sandboxed systemd, install two units and time the service sequence."""
    from tests.support.systemd_sandbox import (
        SandboxUnavailable,
        SystemdSandbox,
        unavailable_reason,
    )

    reason = unavailable_reason()
    if reason is not None:
        print(f"\nsystemd part skipped: {reason}")
        return
    versions = snapshot_store.Layout(root).versions
    sandbox = SystemdSandbox()
    try:
        sandbox.boot()
    except SandboxUnavailable as exc:
        print(f"\nsystemd part skipped: sandbox unavailable: {exc}")
        return
    try:
        names = [f"{name}.service" for name, _ in _UNITS]
        for name, _ in _UNITS:
            sandbox.install_unit(
                f"{name}.service",
                f"[Unit]\nDescription=bench {name}\n[Service]\n"
                f"ExecStart=/bin/sh {versions}/current/bin/{name}\n",
            )
        sandbox.daemon_reload()
        # The units' own start and stop, as systemctl reports them done (Type=simple:
        # started once forked; stopped once the process is gone).
        bare_start: list[float] = []
        bare_stop: list[float] = []
        show: list[float] = []
        for _ in range(cycles):
            bare_start.append(sum(_timed_ctl(sandbox, "start", n) for n in names))
            show.append(_timed_ctl(sandbox, "show", "-p", "ActiveState", names[0]))
            bare_stop.append(sum(_timed_ctl(sandbox, "stop", n) for n in names))
        for name in names:
            _ctl(sandbox, "start", name)
        phases = asyncio.run(_cycles(sandbox, root, cycles, confirm_s, settle_s))
    finally:
        sandbox.shutdown()
    print(
        f"\nstop → switch → start → healthy with 2 units under a real systemd, {cycles} cycles"
        f" (start_confirm_s={confirm_s:g}, settle_s={settle_s:g}):\n"
    )
    calls = phases.pop("calls")[0]
    rows = [[f"updater: {k}", *_ms(v)] for k, v in phases.items()]
    rows.append(["bare `systemctl start` x 2", *_ms(bare_start)])
    rows.append(["bare `systemctl stop` x 2", *_ms(bare_stop)])
    rows.append(["one `systemctl show -p ActiveState`", *_ms(show)])
    overhead = statistics.median(phases["total"]) - statistics.median(bare_start)
    overhead_both = overhead - statistics.median(bare_stop)
    print_table(["step", "p50 ms", "p99 ms", "max ms"], rows)
    print(
        f"\noverhead (p50): total - bare starts = {overhead * 1000:.1f} ms;"
        f" total - bare starts - bare stops = {overhead_both * 1000:.1f} ms"
    )
    print(
        f"the updater ran {calls:.0f} systemctl processes per cycle"
        f" (≈ {calls * statistics.median(show) * 1000:.0f} ms at the p50 of one call)"
    )
    print(
        "product defaults add deliberate waits on top: start_confirm_s 0.5 s per unit"
        " (0.5 s x 2 here) and settle_s 5 s"
    )


def _ctl(sandbox: object, *args: str) -> None:
    from tests.support.systemd_sandbox import SystemdSandbox

    assert isinstance(sandbox, SystemdSandbox)
    sandbox.systemctl(*args, check=True)


def main(argv: list[str] | None = None) -> int:
    """Run both parts and print their tables; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=500, help="switch_links calls")
    parser.add_argument("--files", type=int, default=300, help="files per snapshot")
    parser.add_argument("--cycles", type=int, default=20, help="systemd cycles")
    parser.add_argument("--confirm", type=float, default=0.0, help="start_confirm_s")
    parser.add_argument("--settle", type=float, default=0.0, help="health settle_s")
    parser.add_argument("--no-systemd", action="store_true", help="skip the systemd part")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temp dir")
    args = parser.parse_args(argv)
    reps = max(2, min(args.reps, 10_000))
    cycles = max(1, min(args.cycles, 200))
    configure_logging(None, level="warning")  # switch_links logs every switch at info

    print(f"machine: {machine()}")
    with temp_dir(args.dir, "bench-switch-") as tmp:
        root = tmp / "root"
        build_store(root, max(0, min(args.files, 100_000)))
        fs = os.statvfs(root)
        print(f"store: {root} (f_fsid {fs.f_fsid:x}), 3 snapshots x {args.files} files")
        times = bench_links(root, reps)
        print(f"\nsnapshots.switch_links, {reps} calls alternating v1.1.0 / v1.2.0:\n")
        steps = bench_steps(root, reps)
        print_table(
            ["call", "p50 ms", "p99 ms", "max ms", "goal"],
            [
                ["switch_links", *_ms(times), f"< {GOAL_SWITCH_MS:g} ms"],
                *[[f"  step: {k}", *_ms(v), "-"] for k, v in steps.items()],
            ],
        )
        print("(switch_links = 3 x read_links + 2 x (symlink+rename + fsync(dir)))")
        if args.no_systemd:
            print("\nsystemd part skipped (--no-systemd)")
        else:
            bench_systemd(root, cycles, args.confirm, args.settle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
