"""Benchmark: what judging a hostile input costs a real ``tope-updater serve``.

For each case of :data:`CASES` the bench builds the hostile input, serves it from a file
server on 127.0.0.1 and — the measured window — has the updater download it (``POST
/download``), judge it (a hostile archive is refused when it is verified) and, once
verified, install it (``POST /update``), and waits for the outcome. Meanwhile:

* the updater's peak RSS: ``VmHWM`` of ``/proc/<pid>/status``, reset just before the
  window (``echo 5 > /proc/<pid>/clear_refs``; where that is not permitted, the highest
  ``VmRSS`` sampled every 5 ms is reported instead, marked ``~``);
* ``GET /api/v1.0/progress`` latency, open loop at ``--rate`` requests/s over at most 4
  keep-alive connections, for the whole window and at least ``--window`` seconds.

The baseline is the unit's ``MemoryMax=128M`` (``systemd/tope-updater.service``): above
it the kernel kills the updater, systemd restarts it, it resumes ``deploying``, judges the
same package and dies again — a crash loop. The contract allows every answer 100 ms.

Cases are entries of :data:`CASES` (name, how to build the input, expected outcome); add
more there. A case's ``build`` writes its package into a directory and returns it with
the version to request.

Usage::

    .venv/bin/python bench/hostile_inputs.py [--rate 200] [--window 2] [--dir D]
    .venv/bin/python -m bench.hostile_inputs
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from _util import (
    SandboxUpdater,
    device_api_stub,
    file_server,
    machine,
    percentile,
    print_table,
    proc_status_mb,
    temp_dir,
)

MEMORY_MAX_MB = 128 * 1024 * 1024 / 1e6  # the unit's MemoryMax=128M (MiB), in MB
MEMORY_MAX_LABEL = "128M"
PROGRESS_LIMIT_MS = 100.0


@attrs.frozen
class HostileCase:
    """One hostile input.

    Attributes:
        name: shown in the table.
        build: writes the package into the given directory for the given install root;
            returns ``(path, version)``.
        expected: the prefix the job's ``error`` must start with (``success`` when the
            install must succeed).
    """

    name: str
    build: Callable[[Path, Path], tuple[Path, str]]
    expected: str


@attrs.frozen
class Outcome:
    """What one case cost and how it ended."""

    case: str
    rss_before_mb: float
    peak_rss_mb: float
    peak_is_sampled: bool
    progress_p99_ms: float
    progress_max_ms: float
    requests: int
    judged_s: float
    error: str
    as_expected: bool

    def row(self) -> list[str]:
        """The table row."""
        mark = "~" if self.peak_is_sampled else ""
        return [
            self.case,
            f"{self.rss_before_mb:.1f}",
            f"{mark}{self.peak_rss_mb:.1f}",
            f"{MEMORY_MAX_MB:.1f} ({MEMORY_MAX_LABEL})",
            f"{self.progress_p99_ms:.1f}",
            f"{self.progress_max_ms:.1f}",
            str(self.requests),
            f"{self.judged_s:.2f}",
            ("as expected: " if self.as_expected else "UNEXPECTED: ") + self.error[:90],
        ]


HEADERS = [
    "case",
    "RSS before MB",
    "peak RSS MB",
    "MemoryMax MB",
    "/progress p99 ms",
    "max ms",
    "requests",
    "judged in s",
    "outcome",
]


def build_million_entries(directory: Path, root: Path) -> tuple[Path, str]:
    """manifest.json + 999 999 empty entries: 90 MB, ZIP64 end records (~1 s to write)."""
    from tests.support.raw_zip import write_raw_zip

    manifest = {"version": "1.1.0", "modules": []}
    path = directory / "million-entries.zip"
    write_raw_zip(path, 999_999, manifest=json.dumps(manifest).encode())
    return path, "1.1.0"


def build_post_cmd_flood(directory: Path, root: Path) -> tuple[Path, str]:
    """A good package whose post_cmd prints 400 MB (it was buffered whole: OOM at 128M)."""
    from tests.support.packages import make_package

    flood = "head -c 400000000 /dev/zero | tr '\\0' x; echo; echo done"
    path = make_package(
        directory / "post-cmd-flood.zip",
        "1.1.0",
        {"bin/app": (b"#!/bin/sh\necho app\n", 0o755)},
        root=root,
        process_name="app",
        post_cmds=[flood],
    )
    return path, "1.1.0"


CASES: tuple[HostileCase, ...] = (
    HostileCase(
        "zip with 1,000,000 entries",
        build_million_entries,
        "INVALID_MANIFEST: archive: 1000000 entries, limit is 10000",
    ),
    HostileCase("post_cmd printing 400 MB", build_post_cmd_flood, "success"),
)


def _digests(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def _reset_peak_rss(pid: int) -> bool:
    """Reset ``VmHWM`` of ``pid`` (Linux ≥ 4.0); False when not permitted."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


async def _progress(session: aiohttp.ClientSession, url: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    async with session.get(url) as resp:
        body: dict[str, Any] = await resp.json()
    return (time.perf_counter() - started) * 1000, body.get("data") or {}


async def _wait_stage(
    session: aiohttp.ClientSession, url: str, stages: Sequence[str], timeout: float
) -> dict[str, Any]:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        _, data = await _progress(session, url)
        if data.get("stage") in stages:
            return data
        await asyncio.sleep(0.05)
    raise RuntimeError(f"stage not in {stages} within {timeout} s (last: {data})")


async def run_case(
    case: HostileCase,
    updater: SandboxUpdater,
    base_url: str,
    package: Path,
    version: str,
    *,
    rate: float,
    window_s: float,
) -> Outcome:
    """Download the case's package and install it, measuring from the download on: what a
    package holds is judged when it is verified (a hostile archive is refused there) or,
    once verified, by the install (a post_cmd's output)."""
    md5, sha256 = _digests(package)
    progress_url = f"{updater.base}/progress"
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=4)
    ) as session:
        body = {
            "version": version,
            "package_url": f"{base_url}/{package.name}",
            "package_name": package.name,
            "package_size": package.stat().st_size,
            "package_md5": md5,
            "package_sha256": sha256,
        }
        await asyncio.sleep(0.2)
        rss_before = proc_status_mb(updater.pid)["VmRSS"]
        exact_peak = _reset_peak_rss(updater.pid)
        sampled_peak = rss_before
        latencies: list[float] = []
        final: dict[str, Any] = {}
        judged_s = float("nan")
        update_asked = False
        stop = asyncio.Event()

        async def sample_memory() -> None:
            nonlocal sampled_peak
            while not stop.is_set():
                rss = proc_status_mb(updater.pid)["VmRSS"]
                if rss == rss:
                    sampled_peak = max(sampled_peak, rss)
                await asyncio.sleep(0.005)

        async def ask_update() -> None:
            async with session.post(f"{updater.base}/update", json={"version": version}) as r:
                answer = await r.json()
            if answer.get("code") != 200:
                raise RuntimeError(f"POST /update refused: {answer}")

        async def one_request() -> None:
            nonlocal final, judged_s, update_asked
            ms, data = await _progress(session, progress_url)
            latencies.append(ms)
            if data.get("stage") == "toInstall" and not update_asked:
                update_asked = True
                await ask_update()
            if data.get("stage") in ("failed", "success") and not final:
                judged_s = time.perf_counter() - asked
                final = data

        sampler = asyncio.create_task(sample_memory())
        asked = time.perf_counter()
        async with session.post(f"{updater.base}/download", json=body) as resp:
            answer = await resp.json()
        if answer.get("code") != 200:
            raise RuntimeError(f"POST /download refused: {answer}")
        requests: list[asyncio.Task[None]] = []
        for i in range(int(rate * 180)):
            due = asked + i / rate
            now = time.perf_counter()
            if now - asked >= window_s and final:
                break
            if due > now:
                await asyncio.sleep(due - now)
            requests.append(asyncio.create_task(one_request()))
        await asyncio.gather(*requests)
        stop.set()
        await sampler
    peak = proc_status_mb(updater.pid)["VmHWM"] if exact_peak else sampled_peak
    error = str(final.get("error") or final.get("stage") or "no outcome within 180 s")
    return Outcome(
        case=case.name,
        rss_before_mb=rss_before,
        peak_rss_mb=peak,
        peak_is_sampled=not exact_peak,
        progress_p99_ms=percentile(latencies, 99),
        progress_max_ms=max(latencies, default=float("nan")),
        requests=len(latencies),
        judged_s=judged_s,
        error=error,
        as_expected=error.startswith(case.expected),
    )


def measure(
    cases: Sequence[HostileCase] = CASES,
    *,
    rate: float = 200.0,
    window_s: float = 2.0,
    parent: Path | None = None,
) -> list[Outcome]:
    """Run ``cases`` against one fresh sandbox updater each; returns their outcomes."""
    outcomes = []
    with temp_dir(parent, "bench-hostile-") as tmp:
        files, work = tmp / "files", tmp / "server"
        files.mkdir()
        work.mkdir()
        sandboxes = [tmp / f"sandbox-{index}" for index in range(len(cases))]
        built = [
            case.build(files, (sandbox / "root").resolve())
            for case, sandbox in zip(cases, sandboxes, strict=True)
        ]
        with file_server(files, work) as (base_url, _kind), device_api_stub() as device_api:
            for index, (case, (package, version)) in enumerate(zip(cases, built, strict=True)):
                with SandboxUpdater(sandboxes[index], device_api_url=device_api) as u:
                    outcome = asyncio.run(
                        run_case(case, u, base_url, package, version, rate=rate, window_s=window_s)
                    )
                outcomes.append(outcome)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    """Run every case and print the table; exit 1 when an outcome was not the expected one."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="/progress requests per s")
    parser.add_argument("--window", type=float, default=2.0, help="least measured seconds")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temp dir")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    outcomes = measure(rate=args.rate, window_s=min(args.window, 30.0), parent=args.dir)
    print(
        f"\nPOST /download (and /update) of each hostile package; GET /progress at"
        f" {args.rate:g}/s during"
        f" the judging (≥ {args.window:g} s); limits: RSS under MemoryMax, /progress"
        f" {PROGRESS_LIMIT_MS:g} ms\n"
    )
    print_table(HEADERS, [o.row() for o in outcomes])
    return 0 if all(o.as_expected for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
