"""Benchmark: ``tope-updater screen`` — start to first frame, memory, CPU static and moving.

Against a real ``tope-updater serve --sandbox`` (its own child process) and under a private
Xvfb, for each scenario (default: ``--window 800x480`` on a 1920x1080 Xvfb, full-screen on
a 1920x1080 Xvfb, full-screen on an 800x480 Xvfb):

1. **start → first frame**, ``--runs`` times: from ``fork`` of ``tope-updater screen`` to
   the moment its ``first frame after …`` line (printed right after the first
   ``display.flip()``) reaches this process on its stderr. This includes the interpreter,
   the imports, SDL's video init, the fonts (a ``fc-match`` call) and the first snapshot
   from the updater. The screen's own figure (from :func:`screen.app.run`, so after the
   interpreter and the CLI's imports) is shown beside it.
2. **static**: one screen showing the idle updater for ``--static`` s: CPU % of the whole
   process (all threads: the drawing loop and the follower's event loop), ``VmRSS``,
   ``VmHWM``.
3. **download**: the updater downloads a real package from a file server throttled to
   ``--rate`` bytes/s, so the bar, the percentage, the size, speed and time left change on
   every ``/events`` message: CPU % over ``--moving`` s.
4. **moving segment**: the verified package is installed while a busy probe says the
   printer prints, so the install waits (``waiting_idle``) and the bar is an indeterminate
   moving segment, drawn at the animation frame rate: CPU % over ``--moving`` s. The wait
   is then cancelled (the package is kept; nothing is installed).

Targets (the predecessor's): first frame < 2 s, RSS < 50 MB, CPU < 5 % while static.

CPU % is the process's user + system time over the wall time (100 % = one core). Xvfb
draws in software in its own process; its CPU is reported apart (a real display's
compositor or the KMS driver does that work on a device).

Usage::

    .venv/bin/python bench/screen.py [--runs 5] [--static 10] [--moving 10] [--dir D]
    .venv/bin/python -m bench.screen --scenarios window-800x480
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from _util import (
    REPO,
    SandboxUpdater,
    device_api_stub,
    file_server,
    get_json,
    machine,
    percentile,
    post_json,
    print_table,
    proc_status_mb,
    process_cpu_s,
    temp_dir,
)

GOAL_FIRST_FRAME_S = 2.0
GOAL_RSS_MB = 50.0
GOAL_STATIC_CPU = 5.0
_MEM_KEYS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")
_NOTCP = ("-nolisten", "tcp")
_FIRST = re.compile(r"first frame after ([0-9.]+) s")


@attrs.frozen
class Scenario:
    """One way to show the screen: an Xvfb of ``display`` size, a window or full-screen."""

    name: str
    display: tuple[int, int]
    window: tuple[int, int] | None

    def argv(self) -> list[str]:
        return ["--window", f"{self.window[0]}x{self.window[1]}"] if self.window else []


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("window-800x480", (1920, 1080), (800, 480)),
        Scenario("full-1920x1080", (1920, 1080), None),
        Scenario("full-800x480", (800, 480), None),
    )
}


@contextlib.contextmanager
def xvfb(size: tuple[int, int]) -> Iterator[tuple[str, int]]:
    """A private Xvfb of ``size``; yields ``(DISPLAY, pid)``."""
    read, write = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", f"{size[0]}x{size[1]}x24", *_NOTCP],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    try:
        with os.fdopen(read, "rb") as pipe:
            number = pipe.readline().decode().strip()
        if not number:
            raise RuntimeError("Xvfb did not start")
        yield f":{number}", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


class Screen:
    """``python -m http_shell.cli screen`` (this checkout) as a child; its stderr is read
    in a thread so the first-frame line is timed when it arrives."""

    def __init__(self, display: str, url: str, scenario: Scenario) -> None:
        env = {**os.environ, "DISPLAY": display, "SDL_VIDEODRIVER": "x11"}
        env.pop("WAYLAND_DISPLAY", None)
        argv = [sys.executable, "-m", "http_shell.cli", "screen", "--url", url]
        self.spawned = time.perf_counter()
        self.proc = subprocess.Popen(
            [*argv, *scenario.argv(), "--close-after", "600"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.first_at: float | None = None
        self.own_s: float | None = None
        self.lines: list[str] = []
        self._first = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            found = _FIRST.search(line)
            if found and self.first_at is None:
                self.first_at = time.perf_counter()
                self.own_s = float(found.group(1))
                self._first.set()
            self.lines.append(line)
        self._first.set()

    def wait_first(self, timeout: float = 30.0) -> float:
        """Seconds from spawn to the first frame."""
        self._first.wait(timeout)
        if self.first_at is None:
            raise RuntimeError(f"no first frame; screen said: {self.lines[-10:]}")
        return self.first_at - self.spawned

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def cpu_percent(pids: Sequence[int], seconds: float) -> list[float]:
    """CPU % of each of ``pids`` over the next ``seconds`` (100 = one core)."""
    before = [process_cpu_s(p) for p in pids]
    started = time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - started
    return [(process_cpu_s(p) - b) / wall * 100 for p, b in zip(pids, before, strict=True)]


def wait_state(updater: SandboxUpdater, *states: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    snap: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            snap = get_json(f"{updater.base}/progress")["data"] or {}
            if snap.get("state") in states:
                return snap
        time.sleep(0.05)
    raise RuntimeError(f"the updater never reached {states}: {snap}")


def build_package(directory: Path, version: str, root: Path, size: int) -> Path:
    """A real, installable package of about ``size`` bytes (random, incompressible)."""
    from tests.support.packages import make_package

    path = directory / f"bench-screen-{version}.zip"
    return make_package(
        path,
        version,
        {"bin/hello": (b"#!/bin/sh\necho hello\n", 0o755), "share/blob": os.urandom(size)},
        root=root,
        process_name="hello",
    )


@attrs.define
class Result:
    scenario: str
    first: list[float] = attrs.Factory(list)
    own: list[float] = attrs.Factory(list)
    rss_first: list[float] = attrs.Factory(list)
    static_cpu: float = float("nan")
    static_xvfb: float = float("nan")
    rss: float = float("nan")
    hwm: float = float("nan")
    anon: float = float("nan")
    file: float = float("nan")
    shmem: float = float("nan")
    download_cpu: float = float("nan")
    download_xvfb: float = float("nan")
    moving_cpu: float = float("nan")
    moving_xvfb: float = float("nan")
    hwm_end: float = float("nan")


def run_scenario(
    scenario: Scenario,
    updater: SandboxUpdater,
    url: str,
    package: Path,
    version: str,
    base_url: str,
    args: argparse.Namespace,
) -> Result:
    result = Result(scenario.name)
    with xvfb(scenario.display) as (display, xvfb_pid):
        for _ in range(args.runs):
            screen = Screen(display, url, scenario)
            try:
                result.first.append(screen.wait_first())
                result.own.append(screen.own_s or float("nan"))
                result.rss_first.append(proc_status_mb(screen.proc.pid)["VmRSS"])
            finally:
                screen.stop()
        screen = Screen(display, url, scenario)
        try:
            screen.wait_first()
            time.sleep(args.settle)
            result.static_cpu, result.static_xvfb = cpu_percent(
                [screen.proc.pid, xvfb_pid], args.static
            )
            mem = proc_status_mb(screen.proc.pid, _MEM_KEYS)
            result.rss, result.hwm = mem["VmRSS"], mem["VmHWM"]
            result.anon, result.file, result.shmem = mem["RssAnon"], mem["RssFile"], mem["RssShmem"]

            data = package.read_bytes()
            answer = post_json(
                f"{updater.base}/download",
                {
                    "version": version,
                    "package_url": f"{base_url}/{package.name}",
                    "package_name": package.name,
                    "package_size": len(data),
                    "package_md5": hashlib.md5(data).hexdigest(),
                    "package_sha256": hashlib.sha256(data).hexdigest(),
                },
            )
            if answer.get("code") != 200:
                raise RuntimeError(f"POST /download: {answer}")
            wait_state(updater, "downloading")
            time.sleep(0.5)
            result.download_cpu, result.download_xvfb = cpu_percent(
                [screen.proc.pid, xvfb_pid], args.moving
            )
            if get_json(f"{updater.base}/progress")["data"]["state"] != "downloading":
                print(f"warning: {scenario.name}: the download ended before the window did")
            wait_state(updater, "ready")
            answer = post_json(f"{updater.base}/update", {"version": version})
            if answer.get("code") != 200:
                raise RuntimeError(f"POST /update: {answer}")
            wait_state(updater, "waiting_idle")
            time.sleep(0.5)
            result.moving_cpu, result.moving_xvfb = cpu_percent(
                [screen.proc.pid, xvfb_pid], args.moving
            )
            result.hwm_end = proc_status_mb(screen.proc.pid)["VmHWM"]
            post_json(f"{updater.base}/cancel", None)
            wait_state(updater, "ready")
        finally:
            screen.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the bench and print its tables; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed starts per scenario")
    parser.add_argument("--static", type=float, default=10.0, help="seconds of static CPU")
    parser.add_argument("--moving", type=float, default=10.0, help="seconds of moving CPU")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--rate", type=int, default=1_000_000, help="download bytes/s")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, of: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temp sandbox")
    args = parser.parse_args(argv)
    scenarios = [SCENARIOS[name] for name in args.scenarios.split(",") if name]
    if shutil.which("Xvfb") is None:
        print("Xvfb is not installed (Debian: apt-get install xvfb)", file=sys.stderr)
        return 2
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
    except ImportError:
        print("pygame-ce is not installed (pip install '.[screen]')", file=sys.stderr)
        return 2
    args.runs = max(1, min(args.runs, 50))
    # this checkout's code for every child, whatever the venv's editable install points at
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    # the install waits for a printer that is always printing: a moving segment
    os.environ["TOPE_UPDATER_BUSY_PROBE"] = "echo 'printing benchy.gcode, 42 %'; exit 1"
    os.environ["TOPE_UPDATER_BUSY_POLL_S"] = "2"

    print(f"machine: {machine()}")

    print(f"pygame-ce {pygame.version.ver}, SDL {'.'.join(map(str, pygame.get_sdl_version()))}")
    results = []
    with (
        temp_dir(args.dir, "bench-screen-") as tmp,
        device_api_stub() as device_api,
        SandboxUpdater(tmp / "sandbox", device_api_url=device_api) as updater,
    ):
        url = f"http://127.0.0.1:{updater.port}"
        files = tmp / "files"
        files.mkdir()
        root = (tmp / "sandbox" / "root").resolve()
        size = int(args.rate * (args.moving + 6))
        # a version of its own for each scenario: the same request again would not restart
        versions = [f"1.{n + 1}.0" for n in range(len(scenarios))]
        packages = [build_package(files, v, root, size) for v in versions]
        with file_server(files, tmp, kind="aiohttp", rate_bps=args.rate) as (base_url, _):
            for scenario, package, version in zip(scenarios, packages, versions, strict=True):
                print(f"… {scenario.name}", flush=True)
                results.append(
                    run_scenario(scenario, updater, url, package, version, base_url, args)
                )
    report(results, args)
    return 0


def _stats(values: Sequence[float], scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    if not values:
        return "-"
    return (
        f"{fmt.format(statistics.median(values) * scale)}"
        f" / {fmt.format(percentile(values, 90) * scale)}"
        f" / {fmt.format(max(values) * scale)}"
    )


def report(results: Sequence[Result], args: argparse.Namespace) -> None:
    print(f"\nstart → first frame ({args.runs} starts each, idle updater): p50 / p90 / max\n")
    print_table(
        ["scenario", "spawn → first frame (s)", "inside run() (s)", "VmRSS then (MB)", "goal"],
        [
            [
                r.scenario,
                _stats(r.first),
                _stats(r.own),
                _stats(r.rss_first, fmt="{:.1f}"),
                f"< {GOAL_FIRST_FRAME_S:g} s",
            ]
            for r in results
        ],
    )
    print(
        f"\nCPU % (100 = one core) of the screen process; Xvfb's in brackets."
        f" static: {args.static:g} s idle; download: {args.moving:g} s of a download at"
        f" {args.rate / 1e6:g} MB/s; moving: {args.moving:g} s of the indeterminate bar."
        " Memory (MB) after the static phase: VmRSS = RssAnon (own heap) + RssFile (mapped"
        " interpreter and libraries, shareable) + RssShmem (the X shared-memory image)\n"
    )
    print_table(
        ["scenario", "static", "download", "moving", "VmRSS", "VmHWM", "anon/file/shm", "goal"],
        [
            [
                r.scenario,
                f"{r.static_cpu:.1f} ({r.static_xvfb:.1f})",
                f"{r.download_cpu:.1f} ({r.download_xvfb:.1f})",
                f"{r.moving_cpu:.1f} ({r.moving_xvfb:.1f})",
                f"{r.rss:.1f} MB",
                f"{max(r.hwm, r.hwm_end):.1f} MB",
                f"{r.anon:.1f} / {r.file:.1f} / {r.shmem:.1f}",
                f"static < {GOAL_STATIC_CPU:g} %, RSS < {GOAL_RSS_MB:g} MB",
            ]
            for r in results
        ],
    )


if __name__ == "__main__":
    raise SystemExit(main())
