"""Benchmark: state-change latency while ``GET /versions`` readers flood a real updater.

Issue 21, item 2: ``/versions`` walked every snapshot tree in the default thread pool,
where the journal's writes (fsync) ran too; with a 30,000-file snapshot and a few dozen
concurrent readers a ``POST /download`` took 24 s to answer instead of 14 ms.

Seeds a sandbox whose current (and factory) snapshot holds ``--files`` files, starts
``tope-updater serve --sandbox`` (a child process) and, for each reader count of
``--readers`` (default 0, 16, 64):

1. starts that many readers in this process, each asking ``GET /api/v1.0/versions`` in a
   closed loop (the next request once the answer is read), and waits until each was
   answered once (the flood is on);
2. times ``--changes`` state changes, alternately ``POST /download`` (idle → downloading;
   the package URL is a port nobody listens on, so the download keeps retrying) and
   ``POST /cancel`` (→ idle), each journaled and fsynced before it answers; a phase stops
   after ``--phase-s`` seconds whatever it measured;
3. samples the updater's ``VmRSS`` every 50 ms throughout; its ``VmHWM`` at the end.

The baseline is the row with 0 readers and the contract's 100 ms for any answer.

Usage::

    .venv/bin/python bench/read_flood.py [--files 30000] [--readers 0,16,64] [--changes 40]
        [--phase-s 60] [--dir D]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from _util import (
    SandboxUpdater,
    device_api_stub,
    free_port,
    machine,
    percentile,
    print_table,
    proc_status_mb,
    temp_dir,
)

LIMIT_MS = 100.0


def seed(sandbox: Path, files: int) -> None:
    """A sandbox whose factory (and current) v1.0.0 holds ``files`` small files.

    Written in place (no fsync per file, unlike ``init --from``); ``init_layout`` then
    finds the snapshot, makes it read-only and points the links at it.
    """
    from updater_fsm.ops import snapshot_store

    snap = sandbox / "root" / "versions" / "v1.0.0"
    for i in range(files):
        if i % 100 == 0:
            folder = snap / "lib" / f"d{i // 100:04d}"
            folder.mkdir(parents=True)
        (folder / f"f{i:05d}").write_bytes(b"x" * (i % 7 + 1))
    snapshot_store.init_layout(sandbox / "root", "1.0.0")


async def flood(url: str, readers: int) -> None:
    """The readers' process: ``readers`` closed loops of ``GET url`` until stdin closes;
    prints ``flooding`` once each was answered, then the count of answers."""
    reads = 0
    stop = asyncio.Event()
    answered = asyncio.Barrier(readers + 1)

    async def reader(session: aiohttp.ClientSession) -> None:
        nonlocal reads
        first = True
        while not stop.is_set():
            async with session.get(url) as resp:
                await resp.read()
            reads += 1
            if first:
                first = False
                await answered.wait()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=readers)) as session:
        tasks = [asyncio.create_task(reader(session)) for _ in range(readers)]
        await answered.wait()
        print("flooding", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(reads, flush=True)


async def phase(base: str, pid: int, readers: int, changes: int, phase_s: float) -> list[object]:
    """One row: ``readers`` flooding ``/versions`` while state changes are timed."""
    dead_port = free_port()
    download = {
        "version": "1.1.0",
        "package_url": f"http://127.0.0.1:{dead_port}/pkg.zip",
        "package_name": "pkg.zip",
        "package_size": 1000,
        "package_md5": "0" * 32,
    }
    stop = asyncio.Event()
    rss: list[float] = []

    async def sample() -> None:
        while not stop.is_set():
            rss.append(proc_status_mb(pid)["VmRSS"])
            await asyncio.sleep(0.05)

    latencies: list[float] = []
    unanswered = 0.0
    sampler = asyncio.create_task(sample())
    readers_proc = None
    first_round_s = float("nan")
    flood_started = time.perf_counter()
    deadline = flood_started + phase_s
    if readers:
        readers_proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--flood",
            f"{base}/versions",
            str(readers),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert readers_proc.stdout is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(phase_s):
                await readers_proc.stdout.readline()
        first_round_s = time.perf_counter() - flood_started
    async with aiohttp.ClientSession() as session:
        for i in range(changes):
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            path, body = ("/download", download) if i % 2 == 0 else ("/cancel", None)
            started = time.perf_counter()
            try:
                async with asyncio.timeout(left):
                    async with session.post(f"{base}{path}", json=body) as resp:
                        env = await resp.json()
            except TimeoutError:
                unanswered = time.perf_counter() - started  # still waiting at the phase's end
                break
            latencies.append((time.perf_counter() - started) * 1000)
            if env["code"] != 200:
                raise RuntimeError(f"POST {path}: {env}")
        # Leave it idle for the next phase (a 409 when it already is).
        async with session.post(f"{base}/cancel") as resp:
            await resp.read()
    stop.set()
    await sampler
    reads = 0
    if readers_proc is not None:
        assert readers_proc.stdin is not None
        readers_proc.stdin.close()
        try:
            async with asyncio.timeout(phase_s):
                out, _ = await readers_proc.communicate()
            reads = int(out.split()[-1])
        except (TimeoutError, ValueError, IndexError):
            readers_proc.kill()
            await readers_proc.wait()
    reads_per_s = reads / (time.perf_counter() - flood_started)
    return [
        readers,
        f"{first_round_s:.2f}" if readers else "-",
        len(latencies),
        f"{percentile(latencies, 50):.1f}",
        f"{percentile(latencies, 99):.1f}",
        f"{max(latencies, default=float('nan')):.1f}",
        f"1 (after {unanswered:.1f} s)" if unanswered else "0",
        f"{reads_per_s:.0f}",
        f"{max(rss, default=float('nan')):.1f}",
        f"{proc_status_mb(pid)['VmHWM']:.1f}",
    ]


async def run(args: argparse.Namespace, updater: SandboxUpdater) -> list[list[object]]:
    return [
        await phase(updater.base, updater.pid, n, args.changes, args.phase_s) for n in args.readers
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=30_000)
    parser.add_argument(
        "--readers", type=lambda s: [int(x) for x in s.split(",")], default=[0, 16, 64]
    )
    parser.add_argument("--changes", type=int, default=40, help="state changes per phase")
    parser.add_argument("--phase-s", type=float, default=60.0, help="bound of each phase")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--flood", nargs=2, metavar=("URL", "READERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood:
        asyncio.run(flood(args.flood[0], int(args.flood[1])))
        return 0

    print(machine())
    with temp_dir(args.dir, "read-flood-") as sandbox, device_api_stub() as device_api:
        started = time.perf_counter()
        seed(sandbox, args.files)
        print(f"seeded {args.files} files in {time.perf_counter() - started:.1f} s")
        with SandboxUpdater(sandbox, device_api_url=device_api) as updater:
            idle = proc_status_mb(updater.pid)["VmRSS"]
            print(f"updater pid {updater.pid}, VmRSS idle {idle:.1f} MB\n")
            rows = asyncio.run(run(args, updater))
    print_table(
        [
            "readers",
            "first answer to all s",
            "state changes",
            "p50 ms",
            "p99 ms",
            "max ms",
            "unanswered at the phase's end",
            "reads/s",
            "VmRSS peak MB",
            "VmHWM MB",
        ],
        rows,
    )
    print(f"\nlimit: every answer within {LIMIT_MS:.0f} ms (contract); cwd {os.getcwd()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
