"""Helpers for the end-to-end install tests against a real (sandboxed) systemd.

The test service ``device-api.service`` runs ``/bin/sh <root>/versions/current/bin/device-api``,
so it always runs whatever version ``current`` names at the moment it starts. Each version's
script reports itself by writing ``"<version> <pid>"`` to a status file and then ``exec``\\ s
``sleep`` (same PID, so the status names the unit's ``MainPID``). Flag files steer it:

* ``<flags>/broken-<version>``: that version refuses to start (exit 1), which is how a test
  breaks a version that is already installed (the previous or the factory one);
* ``<flags>/ignore-term``: the service ignores SIGTERM (``trap '' TERM`` survives ``exec``);
* ``<flags>/slow-start``: the unit's ``ExecStartPre`` holds each start for 1.5 s.

A "broken" package's script exits 1 at once, or after a delay (a crash after the start was
confirmed, which only the health check can notice).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
from pathlib import Path
from typing import Any

import attrs

from tests.support.package_server import PackageServer
from tests.support.packages import make_package
from tests.support.systemd_sandbox import SystemdSandbox
from updater_fsm.config import Config
from updater_fsm.core import events as ev
from updater_fsm.core.table import State
from updater_fsm.engine import Engine
from updater_fsm.ops import snapshot_store
from updater_fsm.ops.services import ServiceController
from updater_fsm.ops.verify import hash_file

UNIT = "device-api.service"
SCRIPT = "bin/device-api"


def good_script(version: str) -> bytes:
    """A healthy service: report ``version`` and the PID, then run until stopped."""
    return (
        "#!/bin/sh\n"
        f"V={version}\n"
        'if [ -e "$FLAGS/broken-$V" ]; then echo "v$V: broken flag set" >&2; exit 1; fi\n'
        "if [ -e \"$FLAGS/ignore-term\" ]; then trap '' TERM; fi\n"
        'echo "$V $$" > "$STATUS.tmp" && mv "$STATUS.tmp" "$STATUS"\n'
        "exec sleep 600\n"
    ).encode()


def order_script(name: str, version: str) -> bytes:
    """A service that logs ``start``/``stop <name> <version>`` lines to ``$LOG``."""
    return (
        "#!/bin/sh\n"
        f'echo "start {name} {version}" >> "$LOG"\n'
        f'trap \'echo "stop {name} {version}" >> "$LOG"; exit 0\' TERM\n'
        "sleep 600 &\nwait\n"
    ).encode()


def broken_script(version: str, delay_s: float = 0.0) -> bytes:
    """A broken service: exits 1 at once, or after ``delay_s`` (a late crash)."""
    pause = f"sleep {delay_s}\n" if delay_s else ""
    return f'#!/bin/sh\n{pause}echo "v{version}: cannot start" >&2\nexit 1\n'.encode()


@attrs.define
class Rig:
    """One test's world: install root, state dir, flag dir, status file, sandbox, server."""

    tmp: Path
    sandbox: SystemdSandbox
    server: PackageServer
    stop_timeout_s: float = 5.0

    @property
    def root(self) -> Path:
        return self.tmp / "root"

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    @property
    def flags(self) -> Path:
        return self.tmp / "flags"

    @property
    def status(self) -> Path:
        return self.tmp / "status" / "device-api"

    @property
    def config(self) -> Config:
        return Config(
            root=self.root,
            state_dir=self.tmp / "state",
            systemctl=tuple(self.sandbox.systemctl_prefix),
            settle_s=1.0,
            stop_timeout_s=self.stop_timeout_s,
            start_timeout_s=5.0,
            post_cmd_timeout_s=5.0,
        )

    def controller(self) -> ServiceController:
        """A controller with test-sized timeouts and fast polling."""
        return ServiceController(
            self.sandbox.systemctl_prefix,
            stop_timeout=self.stop_timeout_s,
            start_timeout=5.0,
            kill_wait=2.0,
            start_confirm_s=0.3,
            poll_s=0.05,
        )

    def setup(self, *, restart: bool = False, extra: dict[str, bytes] | None = None) -> None:
        """Create the factory root (v1.0.0), install the unit and start it on v1.0.0.

        Args:
            restart: give the unit ``Restart=on-failure`` (a crash loops, as on devices).
            extra: more factory files (``{relative path: content}``, made executable).
        """
        factory = self.tmp / "factory-tree"
        (factory / "bin").mkdir(parents=True)
        (factory / "lib").mkdir()
        (factory / "lib" / "data.txt").write_text("factory data\n")
        for rel, data in {SCRIPT: good_script("1.0.0"), **(extra or {})}.items():
            (factory / rel).write_bytes(data)
            (factory / rel).chmod(0o755)
        snapshot_store.init_layout(self.root, "1.0.0", from_dir=factory)
        self.flags.mkdir(exist_ok=True)  # a test may set flags before the first start
        self.status.parent.mkdir()
        service = (
            f"Environment=STATUS={self.status} FLAGS={self.flags}\n"
            f"ExecStart=/bin/sh {self.versions}/current/{SCRIPT}\n"
        )
        if restart:
            service += "Restart=on-failure\nRestartSec=0.2\n"
        # <flags>/slow-start holds every start in `activating` for 1.5 s.
        slow = self.flags / "slow-start"
        service += f"ExecStartPre=/bin/sh -c 'if [ -e {slow} ]; then sleep 1.5; fi'\n"
        self.sandbox.install_unit(UNIT, f"[Unit]\nDescription=tope e2e\n[Service]\n{service}")
        self.sandbox.daemon_reload()
        self.sandbox.systemctl("start", UNIT, check=True)
        deadline = time.monotonic() + 5
        while not self.status.exists():
            assert time.monotonic() < deadline, "device-api did not report in 5 s"
            time.sleep(0.02)

    def add_unit(self, name: str, rel: str) -> None:
        """Install and start ``<name>.service`` running ``current/<rel>`` (LOG in its env)."""
        self.sandbox.install_unit(
            f"{name}.service",
            "[Service]\n"
            f"Environment=LOG={self.tmp / 'order.log'}\n"
            f"ExecStart=/bin/sh {self.versions}/current/{rel}\n",
        )
        self.sandbox.daemon_reload()
        self.sandbox.systemctl("start", f"{name}.service", check=True)

    def flag(self, name: str) -> None:
        (self.flags / name).touch()

    def links(self) -> dict[str, str | None]:
        """``os.readlink`` of current/previous/factory (None when missing)."""
        out: dict[str, str | None] = {}
        for name in ("current", "previous", "factory"):
            link = self.versions / name
            out[name] = os.readlink(link) if os.path.lexists(link) else None
        return out

    def listing(self) -> list[str]:
        return sorted(os.listdir(self.versions))

    def unit_props(self) -> dict[str, str]:
        result = self.sandbox.systemctl(
            "show", "-p", "ActiveState,MainPID,NRestarts,ActiveEnterTimestampMonotonic", UNIT
        )
        return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)

    def running_version(self) -> str:
        """The version the unit's live main process reported (checked against MainPID)."""
        props = self.unit_props()
        assert props["ActiveState"] == "active", props
        version, pid = self.status.read_text().split()
        assert pid == props["MainPID"], (self.status.read_text(), props)
        return version

    def leftovers(self) -> list[str]:
        """Staging/trash dirs in versions/ and partial downloads (must be empty)."""
        found = [n for n in os.listdir(self.versions) if n.endswith((".staging", ".trash"))]
        downloads = self.config.downloads_dir
        if downloads.is_dir():
            found += [n for n in os.listdir(downloads) if n.endswith(".part")]
        return found

    async def request(self, version: str, path: Path) -> ev.DownloadRequest:
        data = path.read_bytes()
        url = self.server.add(path.name, data)
        digests = await hash_file(path)
        return ev.DownloadRequest(version, url, path.name, len(data), digests.md5, digests.sha256)

    def package(self, version: str, script: bytes | None = None, **kwargs: Any) -> Path:
        """A package replacing ``bin/device-api`` (healthy unless ``script`` is given)."""
        return make_package(
            self.tmp / f"pkg-{version}-{time.monotonic_ns()}.zip",
            version,
            {SCRIPT: (script if script is not None else good_script(version), 0o755)},
            root=self.root,
            process_name="device-api",
            **kwargs,
        )


def tree_digest(path: Path) -> str:
    """Hash of a directory tree: names, modes, file contents and link targets."""
    h = hashlib.sha256()
    for dirpath, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted([*dirs, *files]):
            full = Path(dirpath, name)
            st = os.lstat(full)
            h.update(f"{full.relative_to(path)}\0{st.st_mode:o}\0".encode())
            if stat.S_ISREG(st.st_mode):
                h.update(full.read_bytes())
            elif stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(full).encode())
    return h.hexdigest()


class Timeline:
    """Records every published snapshot of an engine (from a background task).

    ``events`` holds ``(time, state)`` at each state change; ``stages`` every snapshot's
    ``(stage, progress)`` so a test can check the contract's "progress never decreases
    within one stage".
    """

    def __init__(self, engine: Engine) -> None:
        snap = engine.snapshot
        self.events: list[tuple[float, State]] = [(time.monotonic(), snap.state)]
        self.stages: list[tuple[str, int]] = [(snap.stage.value, snap.progress)]
        self._sub = engine.subscribe()
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        while True:
            snap = await self._sub.get()
            self.stages.append((snap.stage.value, snap.progress))
            if snap.state != self.events[-1][1]:
                self.events.append((time.monotonic(), snap.state))

    def states(self) -> list[str]:
        return [str(s) for _, s in self.events]

    def first(self, state: State) -> float:
        return next(t for t, s in self.events if s is state)

    def progress_regressions(self) -> list[tuple[str, int, int]]:
        """``(stage, before, after)`` wherever progress fell within one stage."""
        return [
            (stage, p0, p1)
            for (s0, p0), (stage, p1) in zip(self.stages, self.stages[1:], strict=False)
            if s0 == stage and p1 < p0
        ]

    async def close(self) -> None:
        self._task.cancel()
        self._sub.close()
        await asyncio.gather(self._task, return_exceptions=True)
        assert self.progress_regressions() == [], self.stages


async def wait_for(engine: Engine, *states: State, timeout: float = 20.0) -> dict[str, Any]:
    """Wait until the engine is in one of ``states``; return the snapshot's ``data()``."""
    deadline = time.monotonic() + timeout
    while engine.snapshot.state not in states:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"still {engine.snapshot.state} after {timeout} s, wanted {states}: "
                f"{engine.snapshot.data()}"
            )
        await asyncio.sleep(0.02)
    return engine.snapshot.data()
