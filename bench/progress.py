"""Benchmark: ``GET /progress`` latency, idle and while a download saturates the loopback.

Starts ``tope-updater serve --sandbox`` (a child process) and a file server (nginx, else the
aiohttp package server, in its own process) serving one random file under two names. Then:

1. **idle**: fires ``GET /api/v1.0/progress`` at ``--rate`` requests/s for ``--idle`` s;
2. **loaded**: ``POST /download`` of that file at full speed and, while it runs, the same
   request stream for ``--duration`` s. Each time a download is verified (``toInstall``)
   the bench asks for the other name with another version, which replaces the package and
   starts a new download, so the whole phase runs under download (or verification) load.

Requests are open-loop (sent on a fixed schedule, not when the previous one returns) over
at most ``--concurrency`` keep-alive connections; each latency is from sending the request
to having read the whole body, measured in this process. Every sample is classed by the
``stage`` its own response names. Meanwhile the updater's ``VmRSS`` is sampled every 50 ms.

Goals: p99 < 5 ms while downloading (contract limit: every answer within 100 ms).

Usage::

    .venv/bin/python bench/progress.py [--size 512M] [--duration 20] [--idle 5] [--rate 200]
        [--concurrency 8] [--max-requests 4000] [--server auto|nginx|aiohttp] [--dir D]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import (
    SandboxUpdater,
    cpu_busy,
    device_api_stub,
    file_server,
    machine,
    make_random_file,
    parse_size,
    percentile,
    print_table,
    proc_status_mb,
    process_cpu_s,
    schedstat,
    temp_dir,
)

GOAL_P99_MS = 5.0
LIMIT_MS = 100.0
_NAMES = ("bench-a.bin", "bench-b.bin")
_VERSIONS = ("1.1.0", "1.2.0")


@attrs.define
class CpuWindow:
    """CPU accounting of one phase: the machine, the updater, its event-loop thread."""

    pid: int
    start: tuple[float, float, float, float, float, float] = (0, 0, 0, 0, 0, 0)
    result: dict[str, float] = attrs.field(factory=dict)

    def _now(self) -> tuple[float, float, float, float, float, float]:
        busy, total = cpu_busy()
        run, wait = schedstat(self.pid)
        return time.perf_counter(), busy, total, process_cpu_s(self.pid), run, wait

    def open(self) -> None:
        """Start the window."""
        self.start = self._now()

    def close(self) -> None:
        """End the window and compute the shares (% of wall time; machine % of all CPUs)."""
        end = self._now()
        wall = end[0] - self.start[0]
        d = [b - a for a, b in zip(self.start, end, strict=True)]
        self.result = {
            "machine_busy_pct": 100 * d[1] / d[2] if d[2] else float("nan"),
            "updater_cpu_pct": 100 * d[3] / wall,
            "loop_run_pct": 100 * d[4] / wall,
            "loop_wait_pct": 100 * d[5] / wall,
        }


@attrs.define
class Samples:
    """Latencies (ms) by class, error counts, and the last ``/progress`` data seen."""

    latency: dict[str, list[float]] = attrs.field(factory=lambda: collections.defaultdict(list))
    errors: collections.Counter[str] = attrs.field(factory=collections.Counter)
    last: dict[str, Any] = attrs.field(factory=dict)
    speeds: list[float] = attrs.field(factory=list)
    #: How late a 5 ms timer fired in this (the client's) event loop, ms.
    client_lag: list[float] = attrs.field(factory=list)
    cpu: CpuWindow | None = None


async def _one(session: aiohttp.ClientSession, url: str, label: str | None, out: Samples) -> None:
    t0 = time.perf_counter()
    try:
        async with session.get(url) as resp:
            body = await resp.json()
        ms = (time.perf_counter() - t0) * 1000
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        out.errors[type(exc).__name__] += 1
        return
    data = body.get("data") or {}
    if resp.status != 200 or body.get("code") not in (200, 500):
        out.errors[f"HTTP {resp.status} code {body.get('code')}"] += 1
    out.last = data
    if data.get("speed_bps"):
        out.speeds.append(float(data["speed_bps"]))
    out.latency[label or str(data.get("stage", "?"))].append(ms)


async def fire(
    session: aiohttp.ClientSession,
    url: str,
    *,
    rate: float,
    duration: float,
    limit: int,
    concurrency: int,
    out: Samples,
    label: str | None = None,
) -> None:
    """Send ``GET url`` at ``rate``/s for ``duration`` s (at most ``limit`` requests)."""
    gate = asyncio.Semaphore(concurrency)
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()

    async def bounded() -> None:
        async with gate:
            await _one(session, url, label, out)

    for i in range(limit):
        due = start + i / rate
        if due - start >= duration:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(bounded()))
    await asyncio.gather(*tasks)


async def keep_downloading(
    updater: SandboxUpdater,
    session: aiohttp.ClientSession,
    base_url: str,
    size: int,
    md5: str,
    out: Samples,
    stats: collections.Counter[str],
) -> None:
    """Start a download, and a new one (other name and version) each time one is verified."""
    turn = 0

    async def request() -> None:
        nonlocal turn
        name, version = _NAMES[turn % 2], _VERSIONS[turn % 2]
        turn += 1
        body = {
            "version": version,
            "package_url": f"{base_url}/{name}",
            "package_name": name,
            "package_size": size,
            "package_md5": md5,
        }
        async with session.post(f"{updater.base}/download", json=body) as resp:
            answer = await resp.json()
        stats[f"POST /download code {answer.get('code')}"] += 1

    await request()
    asked = time.perf_counter()
    while True:
        await asyncio.sleep(0.02)
        stage = out.last.get("stage")
        if stage in ("toInstall", "failed") and time.perf_counter() - asked > 0.1:
            if stage == "toInstall":
                stats["downloads verified"] += 1
            else:
                stats[f"download failed: {out.last.get('error')}"] += 1
            await request()
            asked = time.perf_counter()


async def probe_lag(out: Samples) -> None:
    """Record how late a 5 ms timer fires in this process: the client's own delay."""
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(0.005)
        out.client_lag.append((loop.time() - t - 0.005) * 1000)


async def sample_memory(pid: int, phase: list[str], peaks: dict[str, float]) -> None:
    """Keep the highest ``VmRSS`` seen per phase (``phase[0]`` names the current one)."""
    while True:
        rss = proc_status_mb(pid)["VmRSS"]
        if rss == rss:  # not NaN
            peaks[phase[0]] = max(peaks.get(phase[0], 0.0), rss)
        await asyncio.sleep(0.05)


async def run(args: argparse.Namespace, updater: SandboxUpdater, base_url: str, md5: str) -> int:
    """Both phases; prints the tables."""
    url = f"{updater.base}/progress"
    timeout = aiohttp.ClientTimeout(total=LIMIT_MS * 10 / 1000)
    connector = aiohttp.TCPConnector(limit=args.concurrency + 2)
    idle, loaded = Samples(), Samples()
    stats: collections.Counter[str] = collections.Counter()
    phase: list[str] = ["idle"]
    peaks: dict[str, float] = {}
    sampler = asyncio.create_task(sample_memory(updater.pid, phase, peaks))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        # Warm up: open the keep-alive connections and let the updater settle.
        await fire(session, url, rate=50, duration=0.5, limit=25, concurrency=4, out=Samples())
        idle_limit = min(args.max_requests, int(args.rate * args.idle))
        lag = asyncio.create_task(probe_lag(idle))
        idle.cpu = CpuWindow(updater.pid)
        idle.cpu.open()
        await fire(
            session,
            url,
            rate=args.rate,
            duration=args.idle,
            limit=idle_limit,
            concurrency=args.concurrency,
            out=idle,
            label="idle",
        )
        lag.cancel()
        idle.cpu.close()
        idle_rss = proc_status_mb(updater.pid)["VmRSS"]
        phase[0] = "loaded"
        lag = asyncio.create_task(probe_lag(loaded))
        mover = asyncio.create_task(
            keep_downloading(updater, session, base_url, args.size, md5, loaded, stats)
        )
        t0 = time.perf_counter()
        loaded.cpu = CpuWindow(updater.pid)
        loaded.cpu.open()
        try:
            await fire(
                session,
                url,
                rate=args.rate,
                duration=args.duration,
                limit=args.max_requests,
                concurrency=args.concurrency,
                out=loaded,
            )
        finally:
            mover.cancel()
            lag.cancel()
            await asyncio.gather(mover, lag, return_exceptions=True)
        loaded_s = time.perf_counter() - t0
        loaded.cpu.close()
    sampler.cancel()
    await asyncio.gather(sampler, return_exceptions=True)
    hwm = proc_status_mb(updater.pid)["VmHWM"]
    _report(args, idle, loaded, loaded_s, stats, idle_rss, peaks, hwm)
    return 0


def _row(label: str, values: list[float], errors: int) -> list[str]:
    over = sum(v > LIMIT_MS for v in values)
    return [
        label,
        str(len(values)),
        f"{percentile(values, 50):.2f}",
        f"{percentile(values, 90):.2f}",
        f"{percentile(values, 99):.2f}",
        f"{max(values) if values else float('nan'):.2f}",
        str(over),
        str(errors),
    ]


def _report(
    args: argparse.Namespace,
    idle: Samples,
    loaded: Samples,
    loaded_s: float,
    stats: collections.Counter[str],
    idle_rss: float,
    peaks: dict[str, float],
    hwm: float,
) -> None:
    print(
        f"\nGET /progress at {args.rate:g}/s, ≤ {args.concurrency} connections;"
        f" file {args.size / 2**20:.0f} MiB"
        f" ({_server_speed(args)});"
        f" goal p99 < {GOAL_P99_MS:g} ms,"
        f" limit {LIMIT_MS:g} ms\n"
    )
    rows = [_row("idle", idle.latency["idle"], sum(idle.errors.values()))]
    everything: list[float] = []
    for stage in ("downloading", "verifying", "toInstall", "failed"):
        values = loaded.latency.get(stage, [])
        everything += values
        if values:
            rows.append(_row(f"loaded: stage {stage}", values, 0))
    rows.append(_row("loaded: all", everything, sum(loaded.errors.values())))
    print_table(
        ["phase", "requests", "p50 ms", "p90 ms", "p99 ms", "max ms", "> 100 ms", "errors"], rows
    )
    for name, count in (idle.errors + loaded.errors).items():
        print(f"  error {name}: {count}")
    speed = percentile(loaded.speeds, 50) / 1e6 if loaded.speeds else float("nan")
    print(
        f"\nloaded phase {loaded_s:.1f} s: {dict(stats)}; median reported download speed"
        f" {speed:.0f} MB/s"
    )
    print(
        "client's own event-loop lag (5 ms timer lateness, ms) p50/p99/max:"
        f" idle {_lag(idle)}, loaded {_lag(loaded)}"
    )
    print("\nCPU during each phase (% of wall time; machine: % of all CPUs busy):\n")
    print_table(
        ["phase", "machine busy", "updater CPU", "loop thread on CPU", "loop thread waiting"],
        [_cpu_row("idle", idle), _cpu_row("loaded", loaded)],
    )
    print("\nupdater memory (MB):\n")
    print_table(
        ["when", "VmRSS"],
        [
            ["idle, after the idle phase", f"{idle_rss:.1f}"],
            ["highest sample while idle", f"{peaks.get('idle', float('nan')):.1f}"],
            ["highest sample while downloading", f"{peaks.get('loaded', float('nan')):.1f}"],
            ["VmHWM (peak) at the end", f"{hwm:.1f}"],
        ],
    )


def _cpu_row(label: str, s: Samples) -> list[str]:
    r = s.cpu.result if s.cpu else {}
    keys = ("machine_busy_pct", "updater_cpu_pct", "loop_run_pct", "loop_wait_pct")
    return [label, *(f"{r.get(k, float('nan')):.0f} %" for k in keys)]


def _server_speed(args: argparse.Namespace) -> str:
    if not args.server_rate:
        return "server at full speed"
    return f"server throttled to {args.server_rate / 1e6:.0f} MB/s"


def _lag(s: Samples) -> str:
    v = s.client_lag
    return f"{percentile(v, 50):.2f}/{percentile(v, 99):.2f}/{max(v, default=float('nan')):.2f}"


def main(argv: list[str] | None = None) -> int:
    """Set up the file, the server and the updater, run, clean up; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("512M"))
    parser.add_argument("--duration", type=float, default=20.0, help="loaded phase, s")
    parser.add_argument("--idle", type=float, default=5.0, help="idle phase, s")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=4000, help="per phase")
    parser.add_argument(
        "--server-rate", type=parse_size, default=None, help="throttle the server, bytes/s"
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="experiment: run the updater with sys.setswitchinterval(S) (default 0.005)",
    )
    parser.add_argument("--server", choices=("auto", "nginx", "aiohttp"), default="auto")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temp dir")
    args = parser.parse_args(argv)
    args.duration = min(args.duration, 120.0)
    args.idle = min(args.idle, 60.0)

    print(f"machine: {machine()}")
    with temp_dir(args.dir, "bench-progress-") as tmp:
        files, work = tmp / "files", tmp / "server"
        files.mkdir()
        work.mkdir()
        md5 = make_random_file(files / _NAMES[0], args.size)
        (files / _NAMES[1]).hardlink_to(files / _NAMES[0])
        with (
            file_server(files, work, args.server, args.server_rate) as (base_url, kind),
            device_api_stub() as device_api,
            SandboxUpdater(
                tmp / "sandbox", switch_interval_s=args.switch_interval, device_api_url=device_api
            ) as updater,
        ):
            print(f"file server: {kind} at {base_url}; updater pid {updater.pid}")
            if args.switch_interval is not None:
                print(
                    f"experiment: updater runs with sys.setswitchinterval({args.switch_interval})"
                )
            return asyncio.run(run(args, updater, base_url, md5))


if __name__ == "__main__":
    raise SystemExit(main())
