"""Shared helpers of the benches: a sandbox updater subprocess, /proc memory, statistics.

Not a test helper: nothing here asserts, it only measures. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
API = "/api/v1.0"
MiB = 1024 * 1024


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_size(text: str) -> int:
    """``1G``, ``512M``, ``4096`` → bytes (binary units)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 to 100) by the nearest-rank method; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def proc_status_mb(pid: int, keys: Sequence[str] = ("VmRSS", "VmHWM")) -> dict[str, float]:
    """Memory fields of ``/proc/<pid>/status`` in MB (10^6 bytes); NaN once ``pid`` is gone.

    ``VmRSS`` = ``RssAnon`` (the process's own heap) + ``RssFile`` (mapped files: the
    interpreter, shared libraries, C extensions; shareable) + ``RssShmem``.
    """
    fields = dict.fromkeys(keys, float("nan"))
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in fields:
                    fields[key] = int(value.split()[0]) * 1024 / 1e6
    except OSError:
        pass
    return fields


def proc_memory_mb(pid: int) -> tuple[float, float]:
    """``(VmRSS, VmHWM)`` of ``pid`` in MB (10^6 bytes); ``(nan, nan)`` once it is gone."""
    fields = proc_status_mb(pid)
    return fields["VmRSS"], fields["VmHWM"]


def machine() -> str:
    """One line describing the machine: CPUs, CPU model, RAM, kernel, Python."""
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"nproc {os.cpu_count()}, {model}, {mem_gib:.0f} GiB RAM, Linux {platform.release()},"
        f" Python {platform.python_version()}; load average now {load}"
    )


def updater_argv() -> list[str]:
    """The ``tope-updater`` console script next to this interpreter (else ``-m``)."""
    script = Path(sys.executable).with_name("tope-updater")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "http_shell.cli"]


def get_json(url: str, timeout: float = 2.0) -> dict[str, Any]:
    """GET ``url`` and decode its JSON body (blocking; for setup, not for measuring)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        result: dict[str, Any] = json.load(resp)
        return result


def post_json(url: str, body: Any, timeout: float = 5.0) -> dict[str, Any]:
    """POST ``body`` as JSON to ``url`` and decode the JSON answer (blocking)."""
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        result: dict[str, Any] = json.load(resp)
        return result


_DEVICE_API_STUB = """
import sys
from aiohttp import web
async def report(request):
    await request.read()
    return web.json_response({"code": 200, "msg": "ok", "data": None})
app = web.Application()
app.router.add_post("/api/v1.0/ota/report", report)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


@contextlib.contextmanager
def device_api_stub() -> Iterator[str]:
    """A minimal device-api in its own process that accepts every report; yields its URL.

    With device-api present (as on a device) the updater's reporter has nothing pending,
    so the updater also exits promptly on SIGTERM.
    """
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _DEVICE_API_STUB, str(port)], cwd=REPO, stdout=subprocess.DEVNULL
    )
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


class SandboxUpdater:
    """``tope-updater serve --sandbox DIR --port P`` as a child process.

    Device-api reports go to ``device_api_url``; when None, to a port nobody listens on
    (the reporter retries with backoff, as on a device whose device-api is down).

    Args:
        sandbox: the sandbox directory (seeded with factory v1.0.0 on first start).
        port: the API port; 0 picks a free one.
        log_level: the updater's log level (``warning`` keeps the console quiet).
        switch_interval_s: run the updater with this ``sys.setswitchinterval`` (an
            experiment: how long a thread may keep the GIL while another waits; the
            default is 5 ms). None: the console script, unchanged.
        device_api_url: where reports go (see :func:`device_api_stub`).
    """

    def __init__(
        self,
        sandbox: Path,
        *,
        port: int = 0,
        log_level: str = "warning",
        switch_interval_s: float | None = None,
        device_api_url: str | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.device_api_url = device_api_url or f"http://127.0.0.1:{free_port()}"
        self.killed = False
        self.switch_interval_s = switch_interval_s
        self.port = port or free_port()
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def base(self) -> str:
        """``http://127.0.0.1:<port>/api/v1.0``."""
        return f"http://127.0.0.1:{self.port}{API}"

    @property
    def pid(self) -> int:
        """The child's PID (the Python process itself: the console script is not a shell)."""
        assert self.proc is not None, "not started"
        return self.proc.pid

    def spawn(self) -> None:
        """Start the child; returns at once (see :meth:`wait_ready`)."""
        launcher = updater_argv()
        if self.switch_interval_s is not None:
            launcher = [
                sys.executable,
                "-c",
                f"import sys; sys.setswitchinterval({self.switch_interval_s!r});"
                " from http_shell.cli.main import main; sys.argv[0] = 'tope-updater';"
                " sys.exit(main())",
            ]
        argv = [
            *launcher,
            "serve",
            "--sandbox",
            str(self.sandbox),
            "--port",
            str(self.port),
            "--device-api-url",
            self.device_api_url,
            "--log-level",
            self.log_level,
        ]
        self.started_at = time.perf_counter()
        # The checkout this bench is in, not whatever tree the venv's editable install maps.
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}
        self.proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def wait_ready(self, timeout: float = 20.0, poll_s: float = 0.005) -> float:
        """Poll ``/healthz`` until it answers code 200; returns seconds since spawn."""
        assert self.proc is not None, "not started"
        url = f"{self.base}/healthz"
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"updater exited with {self.proc.returncode}: {err[-2000:]}")
            try:
                if get_json(url, timeout=1.0).get("code") == 200:
                    return time.perf_counter() - self.started_at
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(poll_s)
        raise RuntimeError(f"updater not ready within {timeout} s")

    def stop(self, timeout: float = 6.0) -> None:
        """SIGTERM the child (SIGKILL if it does not exit within ``timeout``) and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(
                    f"warning: updater pid {self.proc.pid} ignored SIGTERM for {timeout:g} s;"
                    " SIGKILLed",
                    file=sys.stderr,
                )
                self.killed = True
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def __enter__(self) -> SandboxUpdater:
        self.spawn()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def temp_dir(parent: Path | None, prefix: str) -> Iterator[Path]:
    """A fresh directory under ``parent`` (system default when None), removed afterwards.

    Snapshots are read-only (factory dirs 0555), so removal first makes dirs writable.
    """
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)  # nginx workers run as an unprivileged user and must read the files
    try:
        yield path
    finally:
        for dirpath, dirnames, _ in os.walk(path):
            for name in dirnames:
                with contextlib.suppress(OSError):
                    full = os.path.join(dirpath, name)
                    if not os.path.islink(full):
                        os.chmod(full, 0o755)
        shutil.rmtree(path, ignore_errors=True)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a Markdown table (pastes straight into docs/PERFORMANCE.md)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print(line(row))


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM ``proc``; SIGKILL it when it has not exited 10 s later."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def make_random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; returns their MD5 (hex)."""
    import hashlib

    md5 = hashlib.md5(usedforsecurity=False)
    with path.open("wb") as fh:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MiB))
            md5.update(block)
            fh.write(block)
            left -= len(block)
    return md5.hexdigest()


@contextlib.contextmanager
def file_server(
    root: Path, work: Path, kind: str = "auto", rate_bps: int | None = None
) -> Iterator[tuple[str, str]]:
    """Serve the files of ``root`` at full speed on 127.0.0.1 from a separate process.

    Args:
        root: directory whose regular files are served by name.
        work: scratch directory for the server's configuration and temp files.
        kind: ``nginx`` (sendfile, 1 worker), ``aiohttp`` (``tests.support.package_server``)
            or ``auto`` (nginx when installed).
        rate_bps: throttle each response to about this many bytes/s (None: full speed).

    Yields:
        ``(base_url, kind)``: the URL of a file is ``f"{base_url}/{name}"``.
    """
    if kind == "auto":
        kind = "nginx" if shutil.which("nginx") else "aiohttp"
    port = free_port()
    if kind == "nginx":
        conf = work / "nginx.conf"
        limit = f"limit_rate {rate_bps};" if rate_bps else ""
        conf.write_text(
            f"daemon off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/error.log;\n"
            "events { worker_connections 64; }\n"
            f"http {{ access_log off; sendfile on; tcp_nopush on; client_body_temp_path {work};\n"
            f"  proxy_temp_path {work}; fastcgi_temp_path {work}; uwsgi_temp_path {work};\n"
            f"  scgi_temp_path {work};\n"
            f"  server {{ listen 127.0.0.1:{port}; root {root}; {limit} }} }}\n"
        )
        argv = ["nginx", "-c", str(conf), "-p", str(work)]
        base = f"http://127.0.0.1:{port}"
    else:
        files = sorted(str(p) for p in root.iterdir() if p.is_file())
        argv = [sys.executable, "-m", "tests.support.package_server", *files, "--port", str(port)]
        if rate_bps:
            argv += ["--rate", str(rate_bps)]
        base = f"http://127.0.0.1:{port}/files"
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield base, kind
    finally:
        stop_process(proc)


def schedstat(pid: int, tid: int | None = None) -> tuple[float, float]:
    """``(seconds on a CPU, seconds runnable but waiting for a CPU)`` of a thread so far.

    From ``/proc/<pid>/task/<tid>/schedstat`` (tid defaults to the main thread, i.e. the
    event loop of an asyncio program); ``(nan, nan)`` when unavailable.
    """
    try:
        with open(f"/proc/{pid}/task/{tid or pid}/schedstat", encoding="ascii") as fh:
            run_ns, wait_ns, _ = fh.read().split()
    except (OSError, ValueError):
        return float("nan"), float("nan")
    return int(run_ns) / 1e9, int(wait_ns) / 1e9


def cpu_busy() -> tuple[float, float]:
    """``(busy, total)`` jiffies of all CPUs together, from ``/proc/stat``."""
    with open("/proc/stat", encoding="ascii") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return float(sum(values) - idle), float(sum(values))


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of the whole process (all threads) so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
