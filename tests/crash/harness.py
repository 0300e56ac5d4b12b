"""Crash-test harness: a real ``tope-updater serve`` subprocess, killed and restarted.

A :class:`Rig` is one device: an install root with a factory snapshot, a state dir, a port,
a package on a :class:`~tests.support.package_server.ThreadedPackageServer` and a mock
device-api (:class:`ThreadedDeviceApi`). :func:`run_trial` starts the updater with
``TOPE_UPDATER_CRASH_AT=<point>#<n>`` (or kills it itself after a delay), drives the update
like device-api would, waits for the process to die, restarts it without the variable,
drives it to the end and checks every invariant with :func:`check_invariants`.

What the "client" does (:func:`drive`), in every phase and after every restart — it only
looks at ``GET /progress``, as device-api does:

* ``idle`` (nothing journaled yet, or the request was lost with the process), or the
  end of an earlier update (another version): ``POST /download`` again;
* ``toInstall``: ``POST /update`` (the install request may have died with the process);
* ``downloading``/``verifying``/``installing``: wait;
* ``success``/``failed`` for the scenario's version: done.

Invariants after the last restart (:func:`check_invariants`): ``current`` names a complete
snapshot equal, file by file (content and executable bit), to the expected tree; the
factory tree is byte-for-byte and mode-for-mode unchanged; no ``*.staging``/``*.trash`` dir,
no ``.tmp`` link or journal temp file, no ``.part``; only linked snapshots remain; the
journal decodes; the outcome is the scenario's (``success``, or ``failed`` with
``ROLLBACK_LEVEL_1_SUCCESS``); device-api received a terminal report for the version.
Kills mid-download additionally prove the download resumed: a ``Range`` request from the
journaled offset after the restart and fewer than two package sizes sent in total.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from tests.support.device_api import DeviceApi
from tests.support.package_server import Behaviour, RequestRecord, ThreadedPackageServer
from tests.support.packages import make_package
from updater_fsm import history as history_mod
from updater_fsm import journal as journal_mod
from updater_fsm.core.record import Record
from updater_fsm.ops import snapshot_store
from updater_fsm.ops.rollback_floor import read_floor

# Ports for updaters and device-api mocks come from below the kernel's ephemeral range, one
# process-wide counter, never reused: a killed updater frees its port until it is restarted,
# and a port picked with bind(0) by a parallel trial in that window would be stolen.
_PORT_LOCK = threading.Lock()
_PORT_RANGE = (20000, 32000)
_next_port = _PORT_RANGE[0] + (os.getpid() * 97) % (_PORT_RANGE[1] - _PORT_RANGE[0])


def free_port() -> int:
    """A loopback port nobody listens on now, outside the ephemeral range, and not handed out
    again by this process until its 12000-port range wraps."""
    global _next_port
    with _PORT_LOCK:
        for _ in range(_PORT_RANGE[1] - _PORT_RANGE[0]):
            port = _next_port
            _next_port = port + 1 if port + 1 < _PORT_RANGE[1] else _PORT_RANGE[0]
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port in the harness range")


REPO = Path(__file__).resolve().parents[2]
API = "/api/v1.0"
FACTORY_VERSION = "1.0.0"
GOOD_VERSION = "1.1.0"
BAD_VERSION = "1.2.0"
TERMINAL_STAGES = ("success", "failed")
FileTree = dict[str, tuple[bytes, bool]]  # relative path -> (content, executable)

#: Every (point, hits) a full update reaches, per scenario: found by :func:`discover` and
#: checked against a fresh discovery by tests/crash/test_crash_points.py. ``download:*`` and
#: the per-save points (``journal:*``, ``engine:journaled``) depend on how many download
#: checkpoints a run makes; with the small unthrottled package that is 2.
KILL_POINTS: dict[str, dict[str, int]] = {
    "good": {
        "download:after_rename": 1,
        "download:before_rename": 1,
        "download:checkpoint": 2,
        "engine:journaled": 12,
        "floor:after_rename": 2,
        "floor:before_rename": 2,
        "history:after_rename": 1,
        "history:before_rename": 1,
        "journal:prev_moved": 12,
        "journal:tmp_written": 12,
        "stage:after_rename": 1,
        "stage:before_rename": 1,
        "stage:copied": 1,
        "switch:current:after_rename": 1,
        "switch:current:before_rename": 1,
        "switch:links_switched": 1,
        "switch:post_cmd_journaled": 2,
        "switch:previous:after_rename": 1,
        "switch:previous:before_rename": 1,
        "switch:units_stopped": 1,
    },
    "bad": {
        "download:after_rename": 1,
        "download:before_rename": 1,
        "download:checkpoint": 2,
        "engine:journaled": 11,
        "floor:after_rename": 1,
        "floor:before_rename": 1,
        "history:after_rename": 1,
        "history:before_rename": 1,
        "journal:prev_moved": 11,
        "journal:tmp_written": 11,
        "rollback:current:after_rename": 1,
        "rollback:current:before_rename": 1,
        "rollback:links_switched": 1,
        "stage:after_rename": 1,
        "stage:before_rename": 1,
        "stage:copied": 1,
        "switch:current:after_rename": 1,
        "switch:current:before_rename": 1,
        "switch:links_switched": 1,
        "switch:previous:after_rename": 1,
        "switch:previous:before_rename": 1,
        "switch:units_stopped": 1,
    },
}
#: Points whose hit counts vary with the number of download checkpoints.
CHECKPOINT_DEPENDENT: tuple[str, ...] = (
    "download:checkpoint",
    "engine:journaled",
    "journal:prev_moved",
    "journal:tmp_written",
)

#: Files of the factory snapshot every rig starts from.
FACTORY_FILES: dict[str, tuple[bytes, int]] = {
    "VERSION": (b"1.0.0\n", 0o644),
    "bin/hello": (b'#!/bin/sh\n[ "$1" = serve ] && exec sleep 600\necho factory\n', 0o755),
    "lib/data.txt": (b"factory data\n", 0o644),
    "services/hello/config.toml": (b"level = 1\n", 0o644),
}


class TrialFailure(AssertionError):
    """An invariant did not hold (the message says which and why)."""


# --------------------------------------------------------------------------- device-api


class ThreadedDeviceApi:
    """The mock device-api (:class:`tests.support.device_api.DeviceApi`) in its own thread.

    Args:
        port: port to listen on (0 = any free one); :meth:`start` may be called later than
            construction to simulate a device-api that comes up late.
    """

    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api: DeviceApi | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> ThreadedDeviceApi:
        """Start listening on :attr:`port`."""

        async def go() -> DeviceApi:
            api = DeviceApi()
            await api.start(self.port)
            return api

        self.api = self._run(go())
        return self

    @property
    def reports(self) -> list[dict[str, Any]]:
        """Reports accepted so far (a copy)."""
        return list(self.api.accepted) if self.api is not None else []

    def terminal_reports(self, version: str) -> list[dict[str, Any]]:
        """Accepted ``success``/``failed`` reports about ``version`` (``v1.2.3`` form)."""
        return [
            r
            for r in self.reports
            if r.get("stage") in TERMINAL_STAGES and r.get("version") in (f"v{version}", version)
        ]

    def close(self) -> None:
        """Stop the server and the thread."""
        if self.api is not None:
            self._run(self.api.stop())
            self.api = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


# --------------------------------------------------------------------------- packages


@attrs.frozen
class Scenario:
    """One update to attempt and the outcome it must reach.

    Attributes:
        name: ``good`` (installs) or ``bad`` (fails health, rolls back to level 1).
        version: the package version.
        files: package files (root-relative key -> (data, mode)).
        outcome: final stage, ``success`` or ``failed``.
        error_prefix: the final ``error`` must start with this (``""`` = must be null).
        final_version: the version ``current`` must name at the end.
        post_cmds: the module's post_cmds (each completion is a journaled step).
        base_files: files installed on top of the factory before this update (a delta's
            base release; root-relative key -> (data, mode)).
        removed: root-relative files the update deletes (a delta's ``removed``).
    """

    name: str
    version: str
    files: dict[str, tuple[bytes, int]]
    outcome: str
    error_prefix: str
    final_version: str
    post_cmds: tuple[str, ...] = ()
    base_files: Mapping[str, tuple[bytes, int]] = attrs.field(factory=dict)
    removed: tuple[str, ...] = ()


def scenario(name: str, blob_size: int = 64 * 1024, seed: int = 0) -> Scenario:
    """The ``good`` or ``bad`` scenario with a payload blob of ``blob_size`` random bytes."""
    blob = random.Random(seed).randbytes(blob_size)
    if name == "good":
        hello = b'#!/bin/sh\n[ "$1" = serve ] && exec sleep 600\necho hello 1.1.0\n'
        files = {"bin/hello": (hello, 0o755), "lib/blob.bin": (blob, 0o644)}
        return Scenario(name, GOOD_VERSION, files, "success", "", GOOD_VERSION, post_cmds=("true",))
    if name == "bad":
        files = {"bin/hello": (b"#!/bin/sh\nexit 1\n", 0o755), "lib/blob.bin": (blob, 0o644)}
        return Scenario(
            name, BAD_VERSION, files, "failed", "ROLLBACK_LEVEL_1_SUCCESS", FACTORY_VERSION
        )
    raise ValueError(f"unknown scenario {name!r}")


def tree_of(files: Mapping[str, tuple[bytes, int]]) -> FileTree:
    return {k: (data, bool(mode & 0o111)) for k, (data, mode) in files.items()}


def expected_tree(sc: Scenario) -> FileTree:
    """What ``current`` must contain once ``sc`` is over."""
    tree = tree_of(FACTORY_FILES)
    tree.update(tree_of(sc.base_files))
    if sc.outcome == "success":
        tree.update(tree_of(sc.files))
        for rel in sc.removed:
            tree.pop(rel, None)
    return tree


def read_tree(path: Path) -> FileTree:
    """Every regular file under ``path`` (following the top link) as content + exec bit."""
    out: FileTree = {}
    base = path.resolve()
    for dirpath, _dirs, files in os.walk(base):
        for name in files:
            full = Path(dirpath, name)
            st = full.lstat()
            rel = full.relative_to(base).as_posix()
            out[rel] = (full.read_bytes(), bool(st.st_mode & 0o111))
    return out


def tree_digest(path: Path) -> str:
    """SHA-256 over names, types, modes and contents of everything under ``path``."""
    h = hashlib.sha256()
    base = path.resolve()
    for dirpath, dirs, files in os.walk(base):
        dirs.sort()
        for name in sorted([*dirs, *files]):
            full = Path(dirpath, name)
            st = full.lstat()
            h.update(f"{full.relative_to(base)}\0{st.st_mode:o}\0".encode())
            if full.is_file() and not full.is_symlink():
                h.update(full.read_bytes())
            elif full.is_symlink():
                h.update(os.readlink(full).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- the device


class Rig:
    """One simulated device: root, state dir, package, device-api, updater port.

    Args:
        base: an empty directory for this rig.
        sc: the scenario whose package is served.
        server: the shared package server.
        device_api: the rig's device-api mock (None = make and start one).
        behaviour: the package server's default behaviour for this package.
        service_control: ``none`` (probes only) or ``systemd``.
        systemctl: the systemctl command line (with ``systemd``).
        env: extra environment for the updater (e.g. ``TOPE_UPDATER_SETTLE_S``).
        health: the manifest health probe (default: run ``<current>/bin/hello``).
        post_cmds: the module's post_cmds (default: the scenario's).
    """

    def __init__(
        self,
        base: Path,
        sc: Scenario,
        server: ThreadedPackageServer,
        *,
        device_api: ThreadedDeviceApi | None = None,
        behaviour: Behaviour | None = None,
        service_control: str = "none",
        systemctl: str | None = None,
        env: Mapping[str, str] | None = None,
        health: dict[str, Any] | None = None,
        process_name: str = "hello",
        post_cmds: list[str] | None = None,
    ) -> None:
        self.base = base
        self.sc = sc
        self.server = server
        self.root = base / "root"
        self.state = base / "state"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{API}"
        self.service_control = service_control
        self.systemctl = systemctl
        self.env = dict(env or {})
        self.device_api = device_api or ThreadedDeviceApi().start()
        self._own_device_api = device_api is None
        self.procs: list[UpdaterProcess] = []
        factory_src = base / "factory-src"
        for rel, (data, mode) in FACTORY_FILES.items():
            p = factory_src / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            p.chmod(mode)
        self.init_root(factory_src)
        shutil.rmtree(factory_src)
        self.factory_digest = tree_digest(self.root / "versions" / "factory")
        self.process_name = process_name
        self.health = health or {"command": f"{self.root}/versions/current/bin/hello"}
        self.post_cmds = post_cmds
        self.serve(self.package_for(sc), sc, behaviour)

    def init_root(self, factory_src: Path) -> None:
        """Lay out :attr:`root` with ``factory_src`` as the factory version (a subclass may
        have the updater under test do it: tests/support/emulation.py)."""
        snapshot_store.init_layout(self.root, FACTORY_VERSION, factory_src)

    def package_for(self, sc: Scenario) -> Path:
        """The package of ``sc`` for this rig (its modules: the rig's process name, health
        probe and post_cmds, or the scenario's)."""
        return make_package(
            self.base / f"{self.base.name}-{sc.name}.zip",
            sc.version,
            sc.files,
            root=self.root,
            process_name=self.process_name,
            health=self.health,
            post_cmds=self.post_cmds if self.post_cmds is not None else list(sc.post_cmds),
        )

    def serve(self, pkg: Path, sc: Scenario, behaviour: Behaviour | None = None) -> None:
        """Serve ``pkg`` as the rig's package and make ``sc`` the update to drive and check
        (e.g. a delta built against the package installed before)."""
        data = pkg.read_bytes()
        self.sc = sc
        self.package_file = pkg
        self.local_source = False
        self.package_name = pkg.name
        self.package_size = len(data)
        self.package_url = str(
            self.server.call(self.server.server.add, self.package_name, data, behaviour)
        )
        self.request = {
            "version": sc.version,
            "package_url": self.package_url,
            "package_name": self.package_name,
            "package_size": len(data),
            "package_md5": hashlib.md5(data).hexdigest(),
            "package_sha256": hashlib.sha256(data).hexdigest(),
        }

    def install_from_file(self, directory: Path) -> None:
        """Take the package from a file under ``directory`` (a ``file://`` URL, as
        ``tope-updater install`` and a USB stick do) instead of the package server."""
        directory.mkdir(parents=True, exist_ok=True)
        copy = directory / self.package_name
        shutil.copyfile(self.package_file, copy)
        self.env["TOPE_UPDATER_LOCAL_PACKAGE_DIRS"] = str(directory)
        self.request = {**self.request, "package_url": copy.as_uri()}
        self.local_source = True

    # -- process -----------------------------------------------------------------------
    def start(
        self, *, crash_at: str | None = None, trace: Path | None = None, wait: bool = True
    ) -> UpdaterProcess:
        """Start ``tope-updater serve`` for this rig (waits until ``/progress`` answers)."""
        proc = UpdaterProcess(self, crash_at=crash_at, trace=trace)
        self.procs.append(proc)
        if wait:
            proc.wait_ready()
        return proc

    def close(self) -> None:
        """Stop every process still running and the rig's own device-api."""
        for proc in self.procs:
            proc.kill()
        if self._own_device_api:
            self.device_api.close()

    # -- HTTP --------------------------------------------------------------------------
    def call(self, method: str, path: str, body: Any = None, timeout: float = 5.0) -> Any:
        """One API call; returns the JSON envelope (raises ``OSError`` when unreachable)."""
        return http_json(method, self.url + path, body, timeout)

    def progress(self) -> dict[str, Any]:
        data = self.call("GET", "/progress")["data"]
        assert isinstance(data, dict)
        return data

    # -- disk --------------------------------------------------------------------------
    @property
    def journal_path(self) -> Path:
        return self.state / "journal.json"

    def journal_record(self) -> Record | None:
        """The newest valid record the updater would load (None if none)."""
        best = None
        for name in ("journal.json", "journal.prev.json", "journal.json.tmp"):
            with contextlib.suppress(OSError, ValueError):
                rec = journal_mod.decode((self.state / name).read_bytes())
                if best is None or rec.seq > best.seq:
                    best = rec
        return best

    def links(self) -> snapshot_store.LinkState:
        return snapshot_store.read_links(snapshot_store.Layout(self.root))

    def package_requests(self) -> list[RequestRecord]:
        return list(self.server.server.requests(self.package_name))


def http_json(method: str, url: str, body: Any = None, timeout: float = 5.0) -> Any:
    """Send ``body`` as JSON (if not None) and parse the JSON answer (any HTTP status)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"null")


def updater_env(
    rig: Rig, *, crash_at: str | None = None, trace: Path | None = None
) -> dict[str, str]:
    """The environment of a rig's updater: short timeouts, the rig's own settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOPE_UPDATER_")}
    env.update(
        {
            "TOPE_UPDATER_SETTLE_S": "0.2",
            "TOPE_UPDATER_STOP_TIMEOUT_S": "3",
            "TOPE_UPDATER_START_TIMEOUT_S": "5",
            "TOPE_UPDATER_READ_TIMEOUT_S": "5",
            "TOPE_UPDATER_CONNECT_TIMEOUT_S": "2",
            "PYTHONPATH": str(REPO),
        }
    )
    env.update(rig.env)
    if crash_at:
        env["TOPE_UPDATER_CRASH_AT"] = crash_at
    if trace is not None:
        env["TOPE_UPDATER_CRASH_TRACE"] = str(trace)
    return env


def serve_argv(rig: Rig, root: Path) -> list[str]:
    """``python -m http_shell.cli serve`` for ``rig``, with its install root at ``root``."""
    return [
        sys.executable,
        "-m",
        "http_shell.cli",
        "serve",
        "--root",
        str(root),
        "--state-dir",
        str(rig.state),
        "--port",
        str(rig.port),
        "--service-control",
        rig.service_control,
        "--device-api-url",
        rig.device_api.url,
        "--log-level",
        "info",
    ]


class UpdaterProcess:
    """One ``python -m http_shell.cli serve`` subprocess of a rig."""

    def __init__(self, rig: Rig, *, crash_at: str | None = None, trace: Path | None = None) -> None:
        argv = serve_argv(rig, rig.root)
        if rig.systemctl:
            argv += ["--systemctl", rig.systemctl]
        self._spawn(rig, argv, updater_env(rig, crash_at=crash_at, trace=trace))

    def _spawn(self, rig: Rig, argv: list[str], env: dict[str, str], cwd: Path = REPO) -> None:
        self.rig = rig
        self.log_path = rig.base / f"updater-{len(rig.procs)}.log"
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self.started = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, timeout: float = 15.0) -> bool:
        """Wait until ``/progress`` answers; False when the process died first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                return False
            with contextlib.suppress(OSError, ValueError):
                self.rig.call("GET", "/progress", timeout=1.0)
                return True
            time.sleep(0.03)
        raise TrialFailure(f"updater not answering after {timeout} s ({self.log_tail()})")

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None if still running after ``timeout``."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL (a power cut, as far as the process is concerned)."""
        if self.alive:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
        code = self.wait_exit(timeout)
        if code is None:
            self.kill()
            raise TrialFailure(f"updater ignored SIGTERM for {timeout} s")
        return code

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


# --------------------------------------------------------------------------- driving


def drive(
    rig: Rig,
    proc: UpdaterProcess,
    *,
    timeout: float = 30.0,
    on_poll: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any] | None:
    """Act as device-api until the scenario's terminal stage or the process's death.

    Returns the final ``/progress`` data, or None when the process died on the way.
    """
    deadline = time.monotonic() + timeout
    version = rig.sc.version
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if not proc.alive:
            return None
        try:
            data = rig.progress()
        except (OSError, ValueError):
            time.sleep(0.02)
            continue
        last = data
        if on_poll is not None:
            on_poll(data)
        stage = data["stage"]
        with contextlib.suppress(OSError, ValueError):
            if stage in TERMINAL_STAGES and data.get("version") in (version, f"v{version}"):
                return data
            if stage == "idle" or stage in TERMINAL_STAGES:  # (a previous update's end)
                rig.call("POST", "/download", rig.request)
            elif stage == "toInstall":
                rig.call("POST", "/update", {"version": version})
        time.sleep(0.03)
    raise TrialFailure(f"no terminal stage after {timeout} s; last /progress: {last}")


def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


# --------------------------------------------------------------------------- invariants


def disk_problems(rig: Rig) -> list[str]:
    """Invariant violations visible on disk (empty = fine). Safe to call repeatedly."""
    problems: list[str] = []
    versions = rig.root / "versions"
    links = rig.links()
    if links.current != rig.sc.final_version:
        problems.append(f"current is v{links.current}, expected v{rig.sc.final_version}")
    elif (got := read_tree(versions / "current")) != (want := expected_tree(rig.sc)):
        diff = sorted(set(got) ^ set(want)) or [k for k in want if got.get(k) != want[k]]
        problems.append(f"current snapshot differs from v{rig.sc.final_version}: {diff}")
    if links.factory != FACTORY_VERSION:
        problems.append(f"factory is v{links.factory}")
    elif tree_digest(versions / "factory") != rig.factory_digest:
        problems.append("factory tree changed")
    linked = {f"v{v}" for v in (links.current, links.previous, links.factory) if v}
    for entry in sorted(os.listdir(versions)):
        if entry in ("current", "previous", "factory"):
            continue
        if entry.endswith((".staging", ".trash", ".tmp")):
            problems.append(f"leftover versions/{entry}")
        elif entry not in linked:
            problems.append(f"unreferenced snapshot versions/{entry}")
    downloads = rig.state / "downloads"
    if downloads.is_dir():
        parts = [p.name for p in downloads.iterdir() if p.name.endswith(".part")]
        if parts:
            problems.append(f"leftover downloads {parts}")
    if (rig.state / "journal.json.tmp").exists():
        problems.append("leftover journal.json.tmp")
    return problems


def check_invariants(
    rig: Rig, final: dict[str, Any], *, settle_s: float = 5.0, floor: str | None = None
) -> None:
    """Assert the end state of a trial (see the module docstring). Raises TrialFailure.

    ``floor``: the rollback floor expected after a failed update (default: the factory
    version, right for a rig whose first update this is)."""
    sc = rig.sc
    if final["stage"] != sc.outcome:
        raise TrialFailure(f"stage {final['stage']!r}, expected {sc.outcome!r}: {final}")
    error = final.get("error") or ""
    if sc.error_prefix and not error.startswith(sc.error_prefix):
        raise TrialFailure(f"error {error!r}, expected {sc.error_prefix}…")
    if not sc.error_prefix and final.get("error"):
        raise TrialFailure(f"unexpected error {error!r}")
    # The terminal state is journaled before the clean-up effects finish: give them a moment.
    if not wait_until(lambda: not disk_problems(rig), settle_s):
        raise TrialFailure("; ".join(disk_problems(rig)))
    if not wait_until(lambda: bool(rig.device_api.terminal_reports(sc.version)), settle_s):
        raise TrialFailure(f"device-api got no terminal report: {rig.device_api.reports[-3:]}")
    report = rig.device_api.terminal_reports(sc.version)[-1]
    if report["stage"] != sc.outcome:
        raise TrialFailure(f"terminal report says {report['stage']!r}, expected {sc.outcome!r}")
    try:
        record = journal_mod.decode(rig.journal_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise TrialFailure(f"journal does not decode: {exc}") from None
    if str(record.state) != sc.outcome:
        raise TrialFailure(f"journal state {record.state}, expected {sc.outcome}")
    # The rollback floor: the highest version that succeeded, never a failed one.
    want_floor = sc.version if sc.outcome == "success" else (floor or FACTORY_VERSION)
    if not wait_until(lambda: read_floor(rig.state) == want_floor, settle_s):
        raise TrialFailure(f"rollback floor {read_floor(rig.state)!r}, expected {want_floor}")
    # The history: the job's outcome kept exactly once, even when the kill came between the
    # journaled outcome and the history write.
    want_outcome = "success" if sc.outcome == "success" else "rolled_back"

    def history_kept() -> bool:
        entries = history_mod.read_history(rig.state)
        ids = [e["job_id"] for e in entries]
        return (
            bool(entries)
            and len(ids) == len(set(ids))
            and (entries[0]["to_version"], entries[0]["outcome"]) == (sc.version, want_outcome)
        )

    if not wait_until(history_kept, settle_s):
        kept = history_mod.read_history(rig.state)
        raise TrialFailure(f"history {kept}, expected {want_outcome} for v{sc.version}")


# --------------------------------------------------------------------------- trials


@attrs.frozen
class KillPoint:
    """Where to kill: a crash point and which hit, or (``point == "delay"``) after a delay.

    Attributes:
        point: a ``crash_point`` name, or ``"delay"`` for a harness SIGKILL mid-download.
        hit: kill on the ``hit``-th time the point is reached (1-based).
        delay_s: with ``point == "delay"``: seconds after the download started.
    """

    point: str
    hit: int = 1
    delay_s: float = 0.0

    @property
    def env_value(self) -> str | None:
        return None if self.point == "delay" else f"{self.point}#{self.hit}"

    def __str__(self) -> str:
        if self.point == "delay":
            return f"delay:{self.delay_s:.2f}s"
        return f"{self.point}#{self.hit}"


@attrs.define
class TrialResult:
    """What one trial did and whether all invariants held."""

    kill: KillPoint
    scenario: str
    killed: bool = False
    state_at_kill: str | None = None
    resumed_from: int | None = None
    bytes_sent: int = 0
    package_size: int = 0
    final: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def run_trial(
    rig: Rig,
    kill: KillPoint,
    *,
    timeout: float = 40.0,
    after_kill: Callable[[Rig], None] | None = None,
) -> TrialResult:
    """Kill the updater at ``kill``, restart it, finish the update, check the invariants.

    Args:
        rig: a fresh device.
        kill: where to kill the first process.
        timeout: per phase.
        after_kill: called between the kill and the restart, to damage the disk the way a
            power cut could (drop un-fsynced writes); see tests/crash/test_power_loss.py.

    Never raises for an invariant failure: the result's ``error`` says what went wrong.
    """
    result = TrialResult(kill, rig.sc.name, package_size=rig.package_size)
    t0 = time.monotonic()
    try:
        _run_trial(rig, kill, result, timeout, after_kill)
    except TrialFailure as exc:
        result.error = str(exc)
    finally:
        for proc in rig.procs:
            if proc.alive:
                proc.kill()
        result.seconds = time.monotonic() - t0
    return result


def _run_trial(
    rig: Rig,
    kill: KillPoint,
    result: TrialResult,
    timeout: float,
    after_kill: Callable[[Rig], None] | None,
) -> None:
    proc = rig.start(crash_at=kill.env_value, wait=False)
    ready = proc.wait_ready()
    if kill.point == "delay":
        timer_started: list[float] = []

        def on_poll(data: dict[str, Any]) -> None:
            if data["stage"] == "downloading" and not timer_started:
                timer_started.append(time.monotonic())
            if timer_started and time.monotonic() - timer_started[0] >= kill.delay_s:
                proc.kill()

        final = drive(rig, proc, timeout=timeout, on_poll=on_poll) if ready else None
    else:
        final = drive(rig, proc, timeout=timeout) if ready else None
    if final is not None:
        # Reached the end: the point may still come (clean-up effects after the terminal
        # state is journaled).
        code = proc.wait_exit(1.5)
        if code is None:
            proc.terminate()
            result.error = f"kill point {kill} never reached (run ended {final['stage']})"
            return
    else:
        code = proc.wait_exit(10)
    if code != -signal.SIGKILL:
        raise TrialFailure(f"updater exited with {code}, expected SIGKILL: {proc.log_tail()}")
    result.killed = True
    if after_kill is not None:
        after_kill(rig)
    record = rig.journal_record()
    result.state_at_kill = str(record.state) if record else None
    durable_offset = (
        record.job.durable.offset
        if record and record.job and str(record.state) == "downloading"
        else 0
    )
    part = rig.state / "downloads" / f"{rig.package_name}.part"
    on_disk = part.stat().st_size if part.exists() else 0
    expect_range_from = min(durable_offset, on_disk)
    if expect_range_from >= rig.package_size:
        expect_range_from = 0  # all bytes are durable: nothing left to fetch
    n_requests = len(rig.package_requests())

    proc2 = rig.start()
    final = drive(rig, proc2, timeout=timeout)
    if final is None:
        raise TrialFailure(f"restarted updater died: {proc2.log_tail()}")
    result.final = final
    check_invariants(rig, final)
    requests = rig.package_requests()
    result.bytes_sent = sum(r.bytes_sent for r in requests)
    # Only a journaled offset is a promise: killed before the first one, a full refetch is
    # correct (nothing durable to continue from).
    if durable_offset > 0 and result.bytes_sent >= 2 * rig.package_size:
        raise TrialFailure(f"sent {result.bytes_sent} bytes for a {rig.package_size}-byte package")
    if expect_range_from > 0 and not rig.local_source:
        after = requests[n_requests:]
        ranged = [r.range for r in after if r.range]
        result.resumed_from = expect_range_from
        if f"bytes={expect_range_from}-" not in ranged:
            raise TrialFailure(
                f"download did not resume from {expect_range_from}: requests after restart"
                f" {[(r.status, r.range, r.bytes_sent) for r in after]}"
            )
    code = proc2.terminate()
    if code != 0:
        raise TrialFailure(f"clean stop exited {code}: {proc2.log_tail()}")


# --------------------------------------------------------------------------- discovery


def trace_run(
    rig: Rig, trace: Path, *, timeout: float = 40.0
) -> tuple[dict[str, Any], Counter[str]]:
    """One uninterrupted run with ``TOPE_UPDATER_CRASH_TRACE``; returns the final data and
    how often each point was reached (after the terminal state's clean-up settled)."""
    proc = rig.start(trace=trace)
    final = drive(rig, proc, timeout=timeout)
    if final is None:
        raise TrialFailure(f"updater died in the trace run: {proc.log_tail()}")
    check_invariants(rig, final)
    proc.terminate()
    lines = trace.read_text().split() if trace.exists() else []
    return final, Counter(lines)


def kill_list(counts: Mapping[str, int], *, skip: Sequence[str] = ()) -> list[KillPoint]:
    """Every (point, hit) of a trace: each point at each of its hits, in name order."""
    out: list[KillPoint] = []
    for point in sorted(counts):
        if point in skip:
            continue
        out.extend(KillPoint(point, n) for n in range(1, counts[point] + 1))
    return out


def discover(base: Path, server: ThreadedPackageServer) -> dict[str, dict[str, int]]:
    """Trace one good and one bad update; per scenario, ``{point: hits}``."""
    found: dict[str, dict[str, int]] = {}
    for name in ("good", "bad"):
        rig_dir = base / f"discover-{name}"
        rig_dir.mkdir(parents=True)
        rig = Rig(rig_dir, scenario(name), server)
        try:
            _final, counts = trace_run(rig, rig_dir / "trace.txt")
        finally:
            rig.close()
        found[name] = dict(sorted(counts.items()))
    return found


@contextlib.contextmanager
def package_server() -> Iterator[ThreadedPackageServer]:
    """A threaded package server for the duration of the block."""
    with ThreadedPackageServer() as srv:
        yield srv


# --------------------------------------------------------------------------- systemd


HELLO_UNIT = "hello.service"


def hello_unit_text(root: Path) -> str:
    """A unit running whatever ``current`` names: ``<root>/versions/current/bin/hello serve``."""
    return (
        "[Unit]\nDescription=crash-test service\n\n"
        "[Service]\nType=simple\n"
        f"ExecStart=/bin/sh {root}/versions/current/bin/hello serve\n"
        "Restart=no\nTimeoutStopSec=3\n"
    )


def random_mid_download(rng: random.Random, n: int) -> list[KillPoint]:
    """``n`` seeded harness SIGKILLs at a random moment of a throttled ~3 s download.

    The updater journals a checkpoint right after the response headers (offset 0) and then
    about once a second, so most of these kills find a data offset to resume from.
    """
    return [KillPoint("delay", delay_s=round(rng.uniform(0.2, 2.6), 2)) for _ in range(n)]


#: The 3rd checkpoint of the throttled download: the 2nd (a data offset) is journaled.
CHECKPOINT_KILL = KillPoint("download:checkpoint", 3)

#: Payload size and server rate of the mid-download trials (about 3 s per download).
MID_DOWNLOAD_BLOB = 2_400_000
MID_DOWNLOAD_RATE = Behaviour(rate_bps=800_000)
