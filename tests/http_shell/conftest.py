"""Fixtures for the HTTP shell: a real engine (real machine, real journal on disk) with a
runner that records effects instead of downloading or installing, and the real app served
by pytest-aiohttp's ``aiohttp_client``.

The recording runner stands in for the effect executors only; results that a test needs
(download done, verified, staged…) are fed back through the engine like real executors do.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestClient

from http_shell.api.app import create_app
from http_shell.daemon.reporter import Reporter
from updater_fsm.config import Config
from updater_fsm.core import effects as fx
from updater_fsm.core import events as ev
from updater_fsm.core.errors import ErrorCode, Failure
from updater_fsm.core.machine import Decision
from updater_fsm.core.record import Record
from updater_fsm.engine import Engine
from updater_fsm.journal import Journal
from updater_fsm.ops import snapshot_store

E = TypeVar("E", bound=fx.Effect)
API = "/api/v1.0"
T0 = 1_800_000_000.0
MD5 = "0123456789abcdef0123456789abcdef"
SHA = "ab" * 32


class FakeClock:
    """A settable UNIX clock for the engine (expiry tests move it forward)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingRunner:
    """Records every effect; forwards ``Report`` effects to the reporter like the real one."""

    def __init__(self) -> None:
        self.effects: list[fx.Effect] = []
        self.reporter: Reporter | None = None

    def execute(self, effects: Sequence[fx.Effect]) -> None:
        self.effects.extend(effects)
        for effect in effects:
            if isinstance(effect, fx.Report) and self.reporter is not None:
                self.reporter.kick(effect.terminal)

    async def aclose(self) -> None:
        pass

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.effects if isinstance(e, kind)]


def body(version: str = "1.2.3", name: str = "tope-1.2.3.zip", **extra: Any) -> dict[str, Any]:
    """A valid ``POST /download`` body."""
    data: dict[str, Any] = {
        "version": version,
        "package_url": f"http://127.0.0.1:9/{name}",
        "package_name": name,
        "package_size": 1000,
        "package_md5": MD5,
    }
    data.update(extra)
    return data


def request_of(data: dict[str, Any]) -> ev.DownloadRequest:
    return ev.DownloadRequest(
        data["version"],
        data["package_url"],
        data["package_name"],
        data["package_size"],
        data["package_md5"].lower(),
    )


class Rig:
    """Engine + runner + clock + install root, with helpers to drive the engine."""

    def __init__(self, engine: Engine, runner: RecordingRunner, clock: FakeClock, root: Path):
        self.engine = engine
        self.runner = runner
        self.clock = clock
        self.root = root

    @property
    def job_id(self) -> int:
        job = self.engine.record.job
        assert job is not None
        return job.job_id

    async def ok(self, event: ev.Event) -> Decision:
        decision = await self.engine.submit(event)
        assert decision.accepted, (event, decision.reply)
        return decision

    async def to_downloading(self, data: dict[str, Any] | None = None) -> None:
        await self.ok(ev.DownloadRequested(request_of(data or body())))

    async def to_ready(self, data: dict[str, Any] | None = None) -> None:
        data = data or body()
        await self.to_downloading(data)
        await self.ok(ev.DownloadDone(self.job_id, data["package_size"], MD5, SHA))
        await self.ok(ev.Verified(self.job_id))

    async def to_failed(self) -> None:
        await self.to_downloading()
        await self.ok(
            ev.DownloadFailed(self.job_id, Failure(ErrorCode.DOWNLOAD_FAILED, "connection refused"))
        )


def make_layout(root: Path, *, previous: bool = True) -> None:
    """``versions/`` with factory v1.0.0 and (when ``previous``) current v1.1.0."""
    snapshot_store.init_layout(root, "1.0.0")
    if previous:
        new = root / "versions" / "v1.1.0"
        (new / "bin").mkdir(parents=True)
        (new / "bin" / "device-api").write_bytes(b"x" * 3000)
        os.symlink("v1.0.0", root / "versions" / "previous")
        os.replace(_tmp_link(root, "v1.1.0"), root / "versions" / "current")


def _tmp_link(root: Path, target: str) -> Path:
    tmp = root / "versions" / ".current.tmp"
    os.symlink(target, tmp)
    return tmp


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    make_layout(path)
    return path


@pytest.fixture
async def rig(tmp_path: Path, clock: FakeClock, root: Path) -> AsyncIterator[Rig]:
    layout = snapshot_store.Layout(root)
    engine = Engine(
        Record(),
        Journal(tmp_path / "state"),
        read_links=lambda: snapshot_store.read_links(layout),
        clock=clock,
    )
    runner = RecordingRunner()
    engine.attach(runner)
    await engine.start(ev.DiskFacts(links=engine.links))
    yield Rig(engine, runner, clock, root)
    await engine.stop()


ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
#: ``make_client`` keywords that go to ``create_app``, not to ``Config``.
_APP_KWARGS = ("reporter", "sse_heartbeat_s", "max_event_streams")


@pytest.fixture
async def make_client(rig: Rig, aiohttp_client: Any) -> ClientFactory:
    """Build the real app around the rig's engine (kwargs go to ``Config``)."""

    async def make(**config: Any) -> TestClient[Any, Any]:
        app_kwargs = {k: config.pop(k) for k in _APP_KWARGS if k in config}
        app = create_app(Config(root=rig.root, **config), rig.engine, **app_kwargs)
        client: TestClient[Any, Any] = await aiohttp_client(app)
        return client

    return make


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient[Any, Any]:
    return await make_client()


async def call(client: TestClient[Any, Any], method: str, path: str, **kw: Any) -> dict[str, Any]:
    """Make a request; assert HTTP 200 and a well-formed envelope; return the envelope."""
    resp = await client.request(method, API + path, **kw)
    assert resp.status == 200, await resp.text()
    env = await resp.json()
    assert set(env) == {"code", "msg", "data"}
    assert isinstance(env["code"], int) and isinstance(env["msg"], str)
    return dict(env)
