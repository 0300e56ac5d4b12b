"""Benchmark: cold start of ``tope-updater serve`` until the API answers, and its idle RSS.

Each run spawns ``tope-updater serve --sandbox DIR --port P`` (a fresh process: interpreter
start, imports, journal recovery, listener) and polls ``GET /api/v1.0/healthz`` every
5 ms until it answers code 200. The time from ``fork`` to that answer is the start time;
the process's ``VmRSS`` right then, and again after ``--settle`` seconds of idling, is its
idle memory. The sandbox is seeded once before the timed runs (a device's install root
already exists); the first, seeding start is reported on its own row.

Goals: start to API ready < 1 s (p50), idle RSS ≤ 38 MB. ``RssAnon`` (the process's own
heap) and ``RssFile`` (interpreter, shared libraries, C extensions: shareable) are shown
apart, and a fresh interpreter then shows what each import stage adds, and how much of
it the stack (the interpreter and the libraries) costs before any updater module.

``--drop-caches`` (root only) drops the page cache before every run, so imports come from
the disk as after a power cycle; it slows everything else on the machine for a moment.

Usage::

    .venv/bin/python bench/startup.py [--runs 10] [--settle 1.0] [--drop-caches] [--dir D]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import (
    REPO,
    SandboxUpdater,
    device_api_stub,
    machine,
    percentile,
    print_table,
    proc_status_mb,
    temp_dir,
)

GOAL_START_S = 1.0
GOAL_RSS_MB = 38.0
_MEM_KEYS = ("VmRSS", "RssAnon", "RssFile")

#: Import stages of the daemon, in the order ``tope-updater serve`` reaches them.
#: Everything through :data:`_LAST_STACK_STAGE` is the stack (the interpreter and the design
#: card's libraries); what follows is the updater's own code.
_STAGES = (
    "asyncio",
    "attrs",
    "cattrs",
    "structlog",
    "aiohttp",
    "aiohttp.web",
    "transitions",
    "updater_fsm.engine",
    "updater_fsm.runner",
    "http_shell.api.app",
    "http_shell.daemon.assembly",
    "http_shell.cli.main",
)
_LAST_STACK_STAGE = "transitions"
_BREAKDOWN = """
import importlib, sys
def rss():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024 / 1e6
print("python", rss())
for name in sys.argv[1:]:
    importlib.import_module(name)
    print(name, rss())
heavy = ("rich", "pygments", "cryptography", "ssl")
print("loaded", " ".join(n for n in heavy if n in sys.modules))
"""


def _drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as fh:
        fh.write("3\n")


def _one_run(
    sandbox: Path, settle_s: float, drop: bool, device_api: str
) -> tuple[float, dict[str, float], dict[str, float]]:
    """Start, wait for ``/healthz``, measure; returns ``(seconds, mem_ready, mem_settled)``."""
    if drop:
        _drop_caches()
    updater = SandboxUpdater(sandbox, device_api_url=device_api)
    updater.spawn()
    try:
        seconds = updater.wait_ready()
        ready = proc_status_mb(updater.pid, _MEM_KEYS)
        time.sleep(settle_s)
        settled = proc_status_mb(updater.pid, _MEM_KEYS)
    finally:
        updater.stop()
    return seconds, ready, settled


def _import_breakdown() -> None:
    """Print the RSS growth of each import stage, measured in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", _BREAKDOWN, *_STAGES],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    rows, last, floor, loaded = [], 0.0, 0.0, ""
    for line in out:
        name, _, value = line.partition(" ")
        if name == "loaded":
            loaded = value
            continue
        mb = float(value)
        rows.append([name, f"+{mb - last:.1f}", f"{mb:.1f}"])
        last = mb
        if name == _LAST_STACK_STAGE:
            floor = mb
    print("\nVmRSS after each import stage (fresh interpreter, no updater running):\n")
    print_table(["import", "Δ MB", "VmRSS MB"], rows)
    print(f"\noptional heavy modules loaded by these imports: {loaded or 'none'}")
    verdict = "above" if floor > GOAL_RSS_MB else "below"
    print(
        f"the stack alone (python … {_LAST_STACK_STAGE}, no updater module): {floor:.1f} MB,"
        f" {verdict} the idle goal of {GOAL_RSS_MB:.0f} MB; the updater's own modules:"
        f" +{last - floor:.1f} MB"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the bench and print its table; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed starts (default 10)")
    parser.add_argument("--settle", type=float, default=1.0, help="idle seconds before 2nd RSS")
    parser.add_argument("--drop-caches", action="store_true", help="root: cold page cache")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temp sandbox")
    args = parser.parse_args(argv)
    if args.drop_caches and os.geteuid() != 0:
        parser.error("--drop-caches needs root")
    runs = max(1, min(args.runs, 100))

    print(f"machine: {machine()}")
    with temp_dir(args.dir, "bench-startup-") as tmp, device_api_stub() as device_api:
        sandbox = tmp / "sandbox"
        # The first start seeds factory v1.0.0.
        first = _one_run(sandbox, args.settle, args.drop_caches, device_api)
        results = [
            _one_run(sandbox, args.settle, args.drop_caches, device_api) for _ in range(runs)
        ]

    times = [r[0] for r in results]
    cache = "cold page cache" if args.drop_caches else "warm page cache"
    print(f"\n{runs} starts on a seeded sandbox ({cache}):\n")
    print_table(
        ["metric", "p50", "p90", "max", "goal"],
        [
            [
                "start → /healthz 200 (ms)",
                f"{statistics.median(times) * 1000:.0f}",
                f"{percentile(times, 90) * 1000:.0f}",
                f"{max(times) * 1000:.0f}",
                f"< {GOAL_START_S * 1000:.0f}",
            ],
            *_memory_rows("when ready", [r[1] for r in results]),
            *_memory_rows(f"after {args.settle:g} s idle", [r[2] for r in results]),
        ],
    )
    print(
        f"\nfirst start (seeds the sandbox): {first[0] * 1000:.0f} ms,"
        f" VmRSS {first[1]['VmRSS']:.1f} MB when ready"
    )
    _import_breakdown()
    return 0


def _memory_rows(when: str, samples: list[dict[str, float]]) -> list[list[str]]:
    rows = []
    for key in _MEM_KEYS:
        values = [s[key] for s in samples]
        rows.append(
            [
                f"{key} {when} (MB)",
                f"{statistics.median(values):.1f}",
                f"{percentile(values, 90):.1f}",
                f"{max(values):.1f}",
                f"≤ {GOAL_RSS_MB:.0f}" if key == "VmRSS" else "-",
            ]
        )
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
