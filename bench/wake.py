"""Benchmark: what socket activation and the fleet wake-up cost, against staying resident.

(a) **Activation.** ``systemd-socket-activate`` (systemd's own tool: it binds the port and,
    on the first connection, execs the updater with the listening socket, as
    ``tope-updater.socket`` does) in front of ``tope-updater serve --sandbox``: the time from
    a connection to the inactive socket to the first ``/progress`` answer, median of
    ``--runs``, beside ``python -c pass`` (same interpreter); and each activation's cost
    until its idle exit: CPU seconds (``wait4``) and RSS integrated over its life (MB·s).
(b) **Pieces under a real systemd** (root: ``tests/support/systemd_sandbox.py``), the
    shipped units installed by install.sh, talking to a real hawkBit through a recording
    proxy (``tests/support/recording_proxy.py``): a device-api check (connection → answer →
    idle exit), one update (a ~1 MB package: download, verify, install), the resident
    updater's idle RSS and CPU without and with the fleet poller (per poll), and the fleet
    wake-up's cycle (the timer starts the service → poll → exit), each measured on the
    unit's cgroup: the RSS of all its processes sampled every 10 ms, integrated (MB·s), and
    the CPU of everything it ran (the guard, Python, systemd-run, the stop's reset).
(c) **Per poll**: the wake-up's cycle against a resident poll plus 5 minutes of resident
    memory.
(d) **A simulated month** (30 days: one update, 4 device-api checks a day, a fleet poll
    every 5 min) computed from those measured pieces, for the resident daemon, socket
    activation with idle exit (``idle_exit_s`` = 300), and socket activation with the
    fleet wake-up: MB·h and CPU seconds side by side.

Usage::

    .venv/bin/python bench/wake.py [--runs 10] [--wakes 6] [--no-systemd]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _util import (
    REPO,
    device_api_stub,
    free_port,
    machine,
    post_json,
    print_table,
    temp_dir,
    updater_argv,
)

from tests.e2e.deploy_site import INSTALL, SYSTEM_PYTHON, UNIT, Site, run, show, write_exe
from tests.support.hawkbit import HawkbitServer
from tests.support.package_server import ThreadedPackageServer
from tests.support.recording_proxy import RecordingProxy
from tests.support.systemd_sandbox import SystemdSandbox
from updater_fsm.package import builder

ACTIVATE = shutil.which("systemd-socket-activate")
MONTH_H = 30 * 24
CHECKS = 4 * 30
POLL_EVERY_S = 300.0
POLLS = int(MONTH_H * 3600 / POLL_EVERY_S)
IDLE_EXIT_S = 300.0  # the default the month assumes
_SAMPLE_S = 0.01


# ------------------------------------------------------------------------------ (a) activation
def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, without connecting (a connection would
    start the updater)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp", encoding="ascii") as fh:
        return any(
            line.split()[1] == want and line.split()[3] == "0A" for line in fh.readlines()[1:]
        )


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return 0.0


def _one_activation(
    sandbox: Path, port: int, device_api: str, idle_exit_s: float
) -> tuple[float, float, float, float]:
    """(connection → answer s, CPU s, MB·s, life s) of one activation until its idle exit."""
    assert ACTIVATE is not None
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TOPE_UPDATER_DEVICE_API_URL": device_api,
        "TOPE_UPDATER_IDLE_EXIT_S": str(idle_exit_s),
    }
    argv = [
        ACTIVATE, "-l", f"127.0.0.1:{port}",
        *(arg for name in ("PYTHONPATH", "TOPE_UPDATER_DEVICE_API_URL",
                           "TOPE_UPDATER_IDLE_EXIT_S") for arg in ("-E", name)),
        *updater_argv(), "serve", "--sandbox", str(sandbox), "--log-level", "warning",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while not _listening(port):
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("systemd-socket-activate never listened")
        time.sleep(0.005)
    samples: list[tuple[float, float]] = []
    began = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1.0/progress", timeout=30) as r:
        r.read()
    answered = time.perf_counter() - began
    # The updater is the tool's exec'd self: same pid. Sample its RSS until it exits.
    result: list[tuple[int, int, resource.struct_rusage]] = []
    waiter = threading.Thread(target=lambda: result.append(os.wait4(proc.pid, 0)))
    waiter.start()
    while waiter.is_alive():
        samples.append((time.perf_counter(), _rss_mb(proc.pid)))
        time.sleep(_SAMPLE_S)
    waiter.join()
    proc.returncode = os.waitstatus_to_exitcode(result[0][1])
    usage = result[0][2]
    ended = time.perf_counter()
    return answered, usage.ru_utime + usage.ru_stime, _integrate(samples), ended - began


def _integrate(samples: list[tuple[float, float]]) -> float:
    """∫ MB dt over (time, MB) samples."""
    return sum((t1 - t0) * m0 for (t0, m0), (t1, _) in itertools.pairwise(samples))


def activation(runs: int) -> dict[str, float]:
    print(f"\n## (a) connection → first /progress answer, socket activation ({runs} runs)\n")
    if ACTIVATE is None:
        print("systemd-socket-activate not found: skipped")
        return {}
    with temp_dir(None, "bench-wake-") as tmp, device_api_stub() as device_api:
        sandbox, port = tmp / "sb", free_port()
        _one_activation(sandbox, port, device_api, 0.5)  # seeds factory v1.0.0
        runs_ = [_one_activation(sandbox, port, device_api, 0.5) for _ in range(runs)]
    baseline = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        baseline.append(time.perf_counter() - t0)
    answer = statistics.median(r[0] for r in runs_)
    base = statistics.median(baseline)
    print_table(
        ["what", "median", "min", "max"],
        [
            [
                "connection → first /progress answer (s)",
                f"{answer:.3f}",
                f"{min(r[0] for r in runs_):.3f}",
                f"{max(r[0] for r in runs_):.3f}",
            ],
            [
                f"`{Path(sys.executable).name} -c pass` (s)",
                f"{base:.3f}",
                f"{min(baseline):.3f}",
                f"{max(baseline):.3f}",
            ],
            ["ratio", f"{answer / base:.1f}x", "", ""],
            [
                "activation → idle exit (idle_exit_s 0.5): CPU s",
                f"{statistics.median(r[1] for r in runs_):.2f}",
                f"{min(r[1] for r in runs_):.2f}",
                f"{max(r[1] for r in runs_):.2f}",
            ],
            [
                "… RSS·time (MB·s) over a life of (s)",
                f"{statistics.median(r[2] for r in runs_):.0f} / "
                f"{statistics.median(r[3] for r in runs_):.2f}",
                "",
                "",
            ],
        ],
    )
    print("\ngoal: ≤ 1.0 s")
    return {"answer_s": answer, "baseline_s": base}


# ----------------------------------------------------------------------- (b) under systemd
class UnitSampler:
    """RSS of every process in a unit's cgroup, sampled every 10 ms (host pids)."""

    def __init__(self, cgroup: Path) -> None:
        self.cgroup = cgroup
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pids = (self.cgroup / "cgroup.procs").read_text().split()
            except OSError:
                pids = []
            self.samples.append((time.monotonic(), sum(_rss_mb(int(p)) for p in pids)))
            time.sleep(_SAMPLE_S)

    def mb_s(self, t0: float, t1: float) -> float:
        return _integrate([s for s in self.samples if t0 <= s[0] <= t1])

    def mean_mb(self, t0: float, t1: float) -> float:
        inside = [m for t, m in self.samples if t0 <= t <= t1]
        return statistics.fmean(inside) if inside else float("nan")

    def __enter__(self) -> UnitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _cpu_s(slice_dir: Path) -> float:
    """CPU seconds used so far by everything in ``slice_dir`` (kept after a unit stops)."""
    for line in (slice_dir / "cpu.stat").read_text().splitlines():
        if line.startswith("usage_usec"):
            return int(line.split()[1]) / 1e6
    raise RuntimeError(f"no usage_usec in {slice_dir}/cpu.stat")


def _wait(what: str, until: Callable[[], bool], timeout: float, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not {what} after {timeout} s")
        time.sleep(step)


@contextlib.contextmanager
def _installed(base: Path, device_api: str) -> Iterator[tuple[SystemdSandbox, Site, int]]:
    """The sandbox systemd with the shipped units installed (not started)."""
    site = Site(base)
    factory = base / "factory"
    write_exe(factory / "bin" / "hello", "#!/bin/sh\necho 1.0.0\n")
    port = free_port()
    with SystemdSandbox() as sandbox:
        sandbox.boot()
        install = [
            str(INSTALL),
            *("--root", str(site.root), "--prefix", str(site.prefix)),
            *("--config-dir", str(site.config_dir), "--unit-dir", str(sandbox.unit_dir)),
            *("--bin-links", str(site.bin_links), "--from", str(factory)),
            *("--version", "1.0.0", "--port", str(port), "--device-api-url", device_api),
            *("--python", str(SYSTEM_PYTHON), "--systemctl", " ".join(sandbox.systemctl_prefix)),
            "--no-enable", "--no-start",
        ]  # fmt: skip
        run(install, timeout=300)
        yield sandbox, site, port


def under_systemd(wakes: int) -> dict[str, float]:
    fig: dict[str, float] = {}
    with (
        temp_dir(Path("/var/lib"), "bench-wake-") as base,
        device_api_stub() as device_api,
        HawkbitServer() as hb,
        RecordingProxy(hb.base_url) as proxy,
        _installed(base, device_api) as (sandbox, site, port),
    ):
        config = site.config_dir / "config.toml"
        original = config.read_text()
        cid, token = f"bench-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
        hb.create_target(cid, token)
        ddi = (
            f'ddi_url = "{proxy.url}"\nddi_controller_id = "{cid}"\nddi_token = "{token}"\n'
            "ddi_poll_min_s = 1\n"
        )
        api = f"http://127.0.0.1:{port}/api/v1.0"
        cgroup_root = sandbox._cgroup
        assert cgroup_root is not None
        slice_dir = cgroup_root / "system.slice"
        unit_cg = slice_dir / UNIT

        def state() -> str:
            return show(sandbox, UNIT)["ActiveState"]

        def configure(extra: str) -> None:
            config.write_text(original + extra)
            sandbox.systemctl("stop", UNIT)
            sandbox.systemctl("start", "tope-updater.socket", UNIT)

        def polls() -> int:
            path = f"/DEFAULT/controller/v1/{cid}"
            return sum(1 for p in proxy.passed() if p.method == "GET" and p.path == path)

        def get(path: str) -> None:
            with urllib.request.urlopen(api + path, timeout=30) as resp:
                resp.read()

        configure("idle_exit_s = 2\n")
        with UnitSampler(unit_cg) as sampler:
            # ---- a device-api check: connection → answer → idle exit (idle_exit_s 2)
            checks = []
            for _ in range(5):
                _wait("inactive", lambda: state() == "inactive", 60, 0.1)
                time.sleep(0.5)
                cpu0, t0 = _cpu_s(slice_dir), time.monotonic()
                get("/progress")
                answered = time.monotonic()
                _wait("inactive", lambda: state() == "inactive", 60, 0.02)
                t1 = time.monotonic()
                time.sleep(0.3)
                checks.append(
                    (answered - t0, _cpu_s(slice_dir) - cpu0, sampler.mb_s(t0, t1), t1 - answered)
                )
            fig["check_answer_s"] = statistics.median(c[0] for c in checks)
            fig["check_cpu_s"] = statistics.median(c[1] for c in checks)
            fig["check_mbs"] = statistics.median(c[2] for c in checks)
            fig["check_idle_s"] = statistics.median(c[3] for c in checks)

            # ---- one update: a ~1 MB package, download → verify → install → idle exit
            src = base / "src-1.1.0"
            write_exe(src / "bin" / "hello", "#!/bin/sh\necho 1.1.0\n")
            (src / "lib").mkdir()
            (src / "lib" / "payload.bin").write_bytes(os.urandom(1_000_000))
            pkg = base / "update-1.1.0.zip"
            built = builder.build_package(
                src,
                version="1.1.0",
                output=pkg,
                root=site.root,
            )
            with ThreadedPackageServer() as srv:
                url = srv.call(srv.server.add_file, pkg.name, pkg)
                time.sleep(0.5)
                cpu0, t0 = _cpu_s(slice_dir), time.monotonic()
                post_json(api + "/download", built.download_request(url), timeout=30)
                _wait("downloaded", lambda: _stage(api) == "toInstall", 60, 0.1)
                post_json(api + "/update", {"version": "1.1.0"}, timeout=30)
                _wait("installed", lambda: _stage(api) == "success", 60, 0.1)
                done = time.monotonic()
                _wait("inactive", lambda: state() == "inactive", 60, 0.02)
                t1 = time.monotonic()
            time.sleep(0.3)
            fig["update_s"] = done - t0
            fig["update_cpu_s"] = _cpu_s(slice_dir) - cpu0
            fig["update_mbs"] = sampler.mb_s(t0, t1)
            fig["update_idle_s"] = t1 - done

            # ---- resident, no fleet: idle RSS and CPU per hour
            configure("idle_exit_s = 0\n")
            _wait("active", lambda: state() == "active", 60)
            time.sleep(3)
            cpu0, t0 = _cpu_s(slice_dir), time.monotonic()
            time.sleep(30)
            t1 = time.monotonic()
            fig["idle_cpu_per_h"] = (_cpu_s(slice_dir) - cpu0) / (t1 - t0) * 3600
            fig["rss_resident"] = sampler.mean_mb(t0, t1)

            # ---- resident with the fleet poller: per-poll CPU (hawkBit asks every 2 s)
            hb.set_polling("00:00:02")
            configure("ddi_wake_min_s = 0\n" + ddi)
            _wait("polling", lambda: polls() >= 2, 60)
            time.sleep(2)
            n0, cpu0, t0 = polls(), _cpu_s(slice_dir), time.monotonic()
            time.sleep(40)
            n1, cpu1, t1 = polls(), _cpu_s(slice_dir), time.monotonic()
            background = fig["idle_cpu_per_h"] / 3600 * (t1 - t0)
            fig["poll_cpu_s"] = max(0.0, cpu1 - cpu0 - background) / max(1, n1 - n0)
            fig["rss_resident_fleet"] = sampler.mean_mb(t0, t1)

            # ---- the fleet wake-up: timer → start → poll → exit (hawkBit asks every 20 s)
            hb.set_polling("00:00:20")
            configure("ddi_wake_min_s = 5\n" + ddi)
            cycles = []
            for _ in range(wakes + 1):
                _wait("asleep", lambda: state() == "inactive", 90, 0.02)
                time.sleep(0.2)
                cpu0, n0 = _cpu_s(slice_dir), polls()
                _wait("woken", lambda: state() != "inactive", 90, 0.01)
                t0 = time.monotonic() - 0.02
                _wait("asleep", lambda: state() == "inactive", 90, 0.02)
                t1 = time.monotonic()
                time.sleep(0.3)
                cycles.append(
                    (_cpu_s(slice_dir) - cpu0, sampler.mb_s(t0, t1), t1 - t0, polls() - n0)
                )
            cycles = cycles[1:]  # the first follows the restart above
            assert all(c[3] == 1 for c in cycles), cycles
            fig["wake_cpu_s"] = statistics.median(c[0] for c in cycles)
            fig["wake_mbs"] = statistics.median(c[1] for c in cycles)
            fig["wake_s"] = statistics.median(c[2] for c in cycles)
            wake_rows = [
                [f"{c[0]:.2f}", f"{c[1]:.0f}", f"{c[2]:.2f}", f"{c[1] / c[2]:.1f}"] for c in cycles
            ]
        hb.set_polling("00:00:01")
        sandbox.systemctl("stop", "tope-updater.timer", "tope-updater.socket", UNIT)

    print("\n## (b) the pieces, under a real systemd (the unit's cgroup: every process)\n")
    print_table(
        ["piece", "figure"],
        [
            ["device-api check: connection → answer (s)", f"{fig['check_answer_s']:.2f}"],
            [
                f"… its whole life, idle_exit_s 2 (answer → exit {fig['check_idle_s']:.1f} s):"
                " CPU s / MB·s",
                f"{fig['check_cpu_s']:.2f} / {fig['check_mbs']:.0f}",
            ],
            [
                f"one update (~1 MB package), POST /download → success {fig['update_s']:.1f} s,"
                f" then exit after {fig['update_idle_s']:.1f} s: CPU s / MB·s",
                f"{fig['update_cpu_s']:.2f} / {fig['update_mbs']:.0f}",
            ],
            ["resident, no fleet: idle RSS (MB)", f"{fig['rss_resident']:.1f}"],
            ["resident, no fleet: idle CPU (s per hour)", f"{fig['idle_cpu_per_h']:.2f}"],
            ["resident with the poller: idle RSS (MB)", f"{fig['rss_resident_fleet']:.1f}"],
            ["resident with the poller: CPU per poll (ms)", f"{fig['poll_cpu_s'] * 1000:.1f}"],
            [
                f"fleet wake-up: timer → start → poll → exit, {fig['wake_s']:.2f} s:"
                f" CPU s / MB·s (median of {len(cycles)})",
                f"{fig['wake_cpu_s']:.2f} / {fig['wake_mbs']:.0f}",
            ],
        ],
    )
    print("\nfleet wake-up cycles (CPU s, MB·s, seconds running, mean MB):\n")
    print_table(["CPU s", "MB·s", "running s", "mean MB"], wake_rows)
    return fig


def _stage(api: str) -> str:
    with urllib.request.urlopen(api + "/progress", timeout=30) as resp:
        stage: str = json.load(resp)["data"]["stage"]
        return stage


# ----------------------------------------------------------------------------- (c), (d)
def per_poll(fig: dict[str, float]) -> None:
    print(f"\n## (c) one fleet poll every {POLL_EVERY_S:.0f} s: staying resident vs the wake-up\n")
    resident_mbs = fig["rss_resident_fleet"] * POLL_EVERY_S
    resident_cpu = fig["poll_cpu_s"] + fig["idle_cpu_per_h"] / 3600 * POLL_EVERY_S
    print_table(
        ["per poll", "resident", "fleet wake-up", "wake-up / resident"],
        [
            [
                "CPU (s)",
                f"{resident_cpu:.4f}",
                f"{fig['wake_cpu_s']:.2f}",
                f"{fig['wake_cpu_s'] / resident_cpu:.0f}x",
            ],
            [
                "RSS·time (MB·s)",
                f"{resident_mbs:.0f}",
                f"{fig['wake_mbs']:.0f}",
                f"{fig['wake_mbs'] / resident_mbs:.3f}",
            ],
            ["time running (s)", f"{POLL_EVERY_S:.0f}", f"{fig['wake_s']:.2f}", ""],
        ],
    )
    # The interval at which a start per poll costs as much memory·time as staying.
    even = fig["wake_mbs"] / fig["rss_resident_fleet"]
    print(
        f"\nmemory·time breaks even at a poll every {even:.1f} s; each wake-up costs"
        f" {fig['wake_cpu_s']:.2f} CPU s, i.e. {fig['wake_cpu_s'] / 120 * 100:.2f} % of one"
        f" core at a poll every 120 s (ddi_wake_min_s), {fig['wake_cpu_s'] / 300 * 100:.2f} %"
        " every 300 s"
    )


def month(fig: dict[str, float]) -> None:
    """The month from the measured pieces (see the module docstring)."""
    rate = fig["idle_cpu_per_h"] / 3600
    seconds = MONTH_H * 3600

    def check(rss: float) -> tuple[float, float]:  # a check with idle_exit_s = 300
        extra = IDLE_EXIT_S - fig["check_idle_s"]
        return fig["check_mbs"] + rss * extra, fig["check_cpu_s"] + rate * extra

    def update(rss: float) -> tuple[float, float]:  # started by the request, then 300 s idle
        extra = IDLE_EXIT_S - fig["update_idle_s"]
        return fig["update_mbs"] + rss * extra, fig["update_cpu_s"] + rate * extra

    rss_f = fig["rss_resident_fleet"]
    # Resident: idle memory all month; the update's CPU beyond a start's, its memory beyond idle.
    resident_mbs = rss_f * seconds + max(0.0, fig["update_mbs"] - rss_f * fig["update_s"])
    resident_cpu = (
        rate * seconds
        + POLLS * fig["poll_cpu_s"]
        + max(0.0, fig["update_cpu_s"] - fig["check_cpu_s"])
    )
    # Socket activation without the fleet (device-api only): a start per check and update.
    c_mbs, c_cpu = check(fig["rss_resident"])
    u_mbs, u_cpu = update(fig["rss_resident"])
    alone_mbs, alone_cpu = CHECKS * c_mbs + u_mbs, CHECKS * c_cpu + u_cpu
    # The fleet wake-up: a wake per poll, except the polls that fall in the 300 s a check or
    # the update keeps the updater up (one each), which cost a resident poll.
    c_mbs, c_cpu = check(rss_f)
    u_mbs, u_cpu = update(rss_f)
    covered = CHECKS + 1
    wake_mbs = (POLLS - covered) * fig["wake_mbs"] + CHECKS * c_mbs + u_mbs
    wake_cpu = (
        (POLLS - covered) * fig["wake_cpu_s"] + covered * fig["poll_cpu_s"] + CHECKS * c_cpu + u_cpu
    )
    print(
        f"\n## (d) a simulated month: {MONTH_H} h, 1 update, {CHECKS} device-api checks,"
        f" {POLLS} fleet polls\n"
    )
    print_table(
        ["mode", "MB·h", "CPU s", "vs resident MB·h", "vs resident CPU"],
        [
            ["resident daemon", f"{resident_mbs / 3600:,.0f}", f"{resident_cpu:,.0f}", "1", "1"],
            [
                "socket activation + idle exit (ddi_url keeps it resident: main before this)",
                f"{resident_mbs / 3600:,.0f}",
                f"{resident_cpu:,.0f}",
                "1",
                "1",
            ],
            [
                "socket activation + idle exit, without the fleet (device-api only)",
                f"{alone_mbs / 3600:,.0f}",
                f"{alone_cpu:,.0f}",
                f"{alone_mbs / resident_mbs:.3f}",
                f"{alone_cpu / resident_cpu:.2f}",
            ],
            [
                "socket activation + fleet wake-up",
                f"{wake_mbs / 3600:,.0f}",
                f"{wake_cpu:,.0f}",
                f"{wake_mbs / resident_mbs:.3f}",
                f"{wake_cpu / resident_cpu:.1f}",
            ],
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="activations timed (default 10)")
    parser.add_argument("--wakes", type=int, default=6, help="wake-up cycles (default 6)")
    parser.add_argument("--no-systemd", action="store_true", help="(a) only: no root needed")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    activation(max(1, min(args.runs, 50)))
    if args.no_systemd:
        return 0
    if os.geteuid() != 0:
        print("\n(b)-(d) need root (a systemd sandbox): skipped")
        return 0
    fig = under_systemd(max(2, min(args.wakes, 30)))
    per_poll(fig)
    month(fig)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
