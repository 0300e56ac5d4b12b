"""Benchmark: a real updater held by thousands of idle TCP connections (issue 22).

Starts ``tope-updater serve --sandbox`` with the unit's descriptor limit (``LimitNOFILE``,
16384 by default) and a process of its own that opens ``--connections`` connections that
never send a byte (``tests/support/idle_flood.py``) and holds them for ``--hold`` seconds.
Meanwhile ``GET /progress`` is asked ``--rate`` times a second (each on a new connection,
as a polling client does) and the updater's ``VmRSS`` and open descriptors are sampled
every 100 ms; its ``VmHWM`` is reset (``clear_refs``, root) before the flood.

Before the bounds (issue 22): 16,400 such connections were held for an hour at ~5 KB each,
at ``LimitNOFILE`` the API stopped answering and every watchdog ping failed with EMFILE.
Goals: not over ``MemoryMax=128M``, ``/progress`` within 1 s throughout.

Usage::

    .venv/bin/python bench/connection_flood.py [--connections 16400] [--hold 10]
        [--nofile 16384] [--rate 10] [--dir D]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import (
    REPO,
    SandboxUpdater,
    get_json,
    machine,
    percentile,
    print_table,
    proc_status_mb,
    temp_dir,
)


class Sampler(threading.Thread):
    """``/progress`` latencies (with the time each was asked), ``VmRSS`` and descriptors."""

    def __init__(self, updater: SandboxUpdater, rate: float) -> None:
        super().__init__(daemon=True)
        self.updater = updater
        self.period = 1.0 / rate
        self.took: list[tuple[float, float]] = []
        self.rss_mb: list[float] = []
        self.fds: list[int] = []
        self.halt = threading.Event()

    def run(self) -> None:
        url = f"{self.updater.base}/progress"
        next_ask = time.monotonic()
        while not self.halt.is_set():
            now = time.monotonic()
            if now >= next_ask:
                try:
                    ok = get_json(url, timeout=5.0).get("code") == 200
                    took = time.monotonic() - now if ok else float("inf")
                except OSError:
                    took = float("inf")
                self.took.append((now, took))
                next_ask = now + self.period
            self.rss_mb.append(proc_status_mb(self.updater.pid, ("VmRSS",))["VmRSS"])
            self.fds.append(len(os.listdir(f"/proc/{self.updater.pid}/fd")))
            self.halt.wait(0.1)


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.0f}" if values else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=16_400)
    parser.add_argument("--hold", type=float, default=10.0, help="seconds the flood is held")
    parser.add_argument("--nofile", type=int, default=16_384, help="the updater's RLIMIT_NOFILE")
    parser.add_argument("--rate", type=float, default=10.0, help="/progress requests per second")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the sandbox")
    args = parser.parse_args()
    print(machine())
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, hard))  # the child inherits it
    with temp_dir(args.dir, "flood-") as sandbox, SandboxUpdater(sandbox / "sb") as updater:
        time.sleep(1.0)
        idle = proc_status_mb(updater.pid, ("VmRSS", "VmHWM"))
        peak_reset = _reset_peak(updater.pid)
        sampler = Sampler(updater, args.rate)
        sampler.start()
        started = time.monotonic()
        flood = subprocess.Popen(
            [sys.executable, "-m", "tests.support.idle_flood", "127.0.0.1", str(updater.port),
             str(args.connections)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert flood.stdin is not None and flood.stdout is not None
        holding_line = flood.stdout.readline().strip()
        holding = time.monotonic()
        time.sleep(args.hold)
        released = time.monotonic()
        out, _ = flood.communicate("", timeout=60)
        time.sleep(1.0)
        sampler.halt.set()
        sampler.join(10)
        after = get_json(f"{updater.base}/progress", timeout=1.0).get("code")
        status = proc_status_mb(updater.pid, ("VmRSS", "VmHWM"))
    connecting = [t for at, t in sampler.took if started <= at < holding]
    held = [t for at, t in sampler.took if holding <= at < released]
    closed = out.strip().rsplit(" ", 1)[-1]
    print(
        f"\n{args.connections} idle connections from a process of their own, updater at"
        f" RLIMIT_NOFILE {args.nofile}; {holding_line} after {holding - started:.1f} s,"
        f" held {args.hold:g} s; closed by the updater meanwhile: {closed}\n"
    )
    rows = [
        ["VmRSS idle before the flood (MB)", f"{idle['VmRSS']:.1f}", "-"],
        ["VmRSS peak, sampled (MB)", f"{max(sampler.rss_mb):.1f}", "≤ 128 (MemoryMax)"],
        [
            "VmHWM during the flood (MB)" if peak_reset else "VmHWM since start (MB)",
            f"{status['VmHWM']:.1f}",
            "≤ 128 (MemoryMax)",
        ],
        ["open descriptors, peak", max(sampler.fds), f"< {args.nofile}"],
        ["/progress while connecting: n / p50 / p99 / max ms", f"{len(connecting)} / "
         f"{_ms(connecting, 50)} / {_ms(connecting, 99)} / {_ms(connecting, 100)}", "< 1000"],
        ["/progress while held: n / p50 / p99 / max ms", f"{len(held)} / {_ms(held, 50)} / "
         f"{_ms(held, 99)} / {_ms(held, 100)}", "< 1000"],
        ["/progress after the flood", f"code {after}", "200"],
    ]  # fmt: skip
    print_table(["metric", "value", "goal"], rows)
    print(
        "\nbefore (issue 22): the connections were held (an hour, ~5 KB each: ~82 MB for"
        " 16,400); at LimitNOFILE the API stopped answering and watchdog pings failed"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
