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
    return (
        f"nproc {os.cpu_count()}, {model}, {mem_gib:.0f} GiB RAM, Linux {platform.release()},"
        f" Python {platform.python_version()}"
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


class SandboxUpdater:
    """``tope-updater serve --sandbox DIR --port P`` as a child process.

    Device-api reports go to a port nobody listens on (the reporter retries with backoff,
    as it does on a device whose device-api is down), so the bench needs no mock.

    Args:
        sandbox: the sandbox directory (seeded with factory v1.0.0 on first start).
        port: the API port; 0 picks a free one.
        log_level: the updater's log level (``warning`` keeps the console quiet).
    """

    def __init__(self, sandbox: Path, *, port: int = 0, log_level: str = "warning") -> None:
        self.sandbox = sandbox
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
        argv = [
            *updater_argv(),
            "serve",
            "--sandbox",
            str(self.sandbox),
            "--port",
            str(self.port),
            "--device-api-url",
            f"http://127.0.0.1:{free_port()}",
            "--log-level",
            self.log_level,
        ]
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
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

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the child (SIGKILL if it does not exit within ``timeout``) and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
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
