"""Contract §1 behaviour of the endpoints, through the real app and a real engine."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from http_shell.api.app import create_app
from tests.http_shell.conftest import (
    API,
    MD5,
    ClientFactory,
    RecordingRunner,
    Rig,
    body,
    call,
)
from updater_fsm.config import Config
from updater_fsm.core import effects as fx
from updater_fsm.core import events as ev
from updater_fsm.core.errors import ErrorCode, Failure
from updater_fsm.core.manifest import ServiceUnit
from updater_fsm.core.progress import Transfer
from updater_fsm.core.record import Record
from updater_fsm.engine import Engine
from updater_fsm.journal import Journal
from updater_fsm.ops import snapshot_store

Client = TestClient[Any, Any]


# ---- POST /download ------------------------------------------------------------------------
async def test_download_starts_once_and_is_idempotent(client: Client, rig: Rig) -> None:
    env = await call(client, "POST", "/download", json=body())
    assert env == {
        "code": 200,
        "msg": "success",
        "data": {"status": "downloading", "state": "downloading"},
    }
    again = await call(client, "POST", "/download", json=body(package_md5=MD5.upper()))
    assert again["code"] == 200
    assert len(rig.runner.of(fx.StartDownload)) == 1
    assert rig.engine.record.state == "downloading"


async def test_same_package_after_verification_is_idempotent(client: Client, rig: Rig) -> None:
    await rig.to_ready()
    env = await call(client, "POST", "/download", json=body())
    assert env["code"] == 200
    assert len(rig.runner.of(fx.StartDownload)) == 1
    assert rig.engine.record.state == "ready"


async def test_different_package_while_downloading_is_409(client: Client, rig: Rig) -> None:
    await call(client, "POST", "/download", json=body())
    env = await call(client, "POST", "/download", json=body("1.2.4", "tope-1.2.4.zip"))
    assert env["code"] == 409
    assert env["msg"].startswith("OPERATION_IN_PROGRESS: ")
    assert env["data"] is None
    assert len(rig.runner.of(fx.StartDownload)) == 1


@pytest.mark.parametrize("where", ["ready", "failed"])
async def test_new_download_replaces_a_finished_package(
    client: Client, rig: Rig, where: str
) -> None:
    await (rig.to_ready() if where == "ready" else rig.to_failed())
    env = await call(client, "POST", "/download", json=body("1.2.4", "tope-1.2.4.zip"))
    assert env["code"] == 200
    starts = rig.runner.of(fx.StartDownload)
    assert [s.request.version for s in starts] == ["1.2.3", "1.2.4"]
    assert fx.DiscardPackage("tope-1.2.3.zip") in rig.runner.effects
    assert rig.engine.snapshot.version == "1.2.4"


# ---- POST /update ----------------------------------------------------------------------------
async def test_update_without_package_is_404(client: Client) -> None:
    env = await call(client, "POST", "/update", json={"version": "1.2.3"})
    assert env == {"code": 404, "msg": "PACKAGE_NOT_FOUND: 1.2.3", "data": None}


async def test_update_of_another_version_is_404(client: Client, rig: Rig) -> None:
    await rig.to_ready()
    env = await call(client, "POST", "/update", json={"version": "9.9.9"})
    assert env["code"] == 404 and env["msg"] == "PACKAGE_NOT_FOUND: 9.9.9"
    assert rig.engine.record.state == "ready"


async def test_update_while_downloading_is_409(client: Client, rig: Rig) -> None:
    await rig.to_downloading()
    env = await call(client, "POST", "/update", json={"version": "1.2.3"})
    assert env["code"] == 409 and env["msg"].startswith("OPERATION_IN_PROGRESS")


async def test_update_installs_then_a_second_one_is_409(client: Client, rig: Rig) -> None:
    await rig.to_ready()
    env = await call(client, "POST", "/update", json={"version": "1.2.3"})
    assert env == {"code": 200, "msg": "success", "data": {"status": "installing"}}
    assert rig.runner.of(fx.StageSnapshot) == [fx.StageSnapshot(1, "1.2.3", "tope-1.2.3.zip")]
    again = await call(client, "POST", "/update", json={"version": "1.2.3"})
    assert again["code"] == 409


async def test_update_of_expired_package_is_410_and_deletes_it(client: Client, rig: Rig) -> None:
    await rig.to_ready()
    rig.clock.now += 25 * 3600
    env = await call(client, "POST", "/update", json={"version": "1.2.3"})
    assert env["code"] == 410
    assert env["msg"].startswith("PACKAGE_EXPIRED: ")
    assert rig.runner.effects[-3:-1] == [fx.DiscardPackage("tope-1.2.3.zip"), fx.Report(False)]
    (kept,) = rig.runner.of(fx.RecordHistory)  # the job's end, in the history
    assert (kept.entry.outcome.value, kept.entry.error_code) == ("expired", "PACKAGE_EXPIRED")
    assert rig.runner.of(fx.StageSnapshot) == []
    assert rig.engine.record.state == "idle"


# ---- GET /progress ---------------------------------------------------------------------------
async def test_progress_uses_legacy_stage_names(client: Client, rig: Rig) -> None:
    env = await call(client, "GET", "/progress")
    assert env["code"] == 200 and env["msg"] == "success"
    assert env["data"]["stage"] == "idle" and env["data"]["current_version"] == "1.1.0"
    await rig.to_ready()
    data = (await call(client, "GET", "/progress"))["data"]
    assert (data["stage"], data["state"], data["progress"]) == ("toInstall", "ready", 100)
    await rig.ok(ev.UpdateRequested("1.2.3"))
    data = (await call(client, "GET", "/progress"))["data"]
    assert (data["stage"], data["state"]) == ("installing", "deploying")
    units = (ServiceUnit("device-api.service", 1),)
    await rig.ok(ev.Staged(rig.job_id, units, rig.engine.links))
    data = (await call(client, "GET", "/progress"))["data"]
    assert (data["stage"], data["state"]) == ("installing", "switching")
    assert {"stage", "progress", "message", "error"} <= set(data)


async def test_progress_of_a_failure_is_code_500(client: Client, rig: Rig) -> None:
    await rig.to_failed()
    env = await call(client, "GET", "/progress")
    assert env["code"] == 500
    assert env["msg"] == "Update failed: DOWNLOAD_FAILED: connection refused"
    assert env["data"]["stage"] == "failed"
    assert env["data"]["error"] == "DOWNLOAD_FAILED: connection refused"


async def test_progress_stays_fast_while_transfer_figures_stream_in(
    client: Client, rig: Rig
) -> None:
    await rig.to_downloading()
    stop = asyncio.Event()

    async def download_figures() -> None:
        done = 0
        while not stop.is_set():
            done = (done + 7) % 1000
            rig.engine.update_transfer(Transfer(rig.job_id, done, 1000, speed_bps=1e7))
            await asyncio.sleep(0)

    feeder = asyncio.create_task(download_figures())
    timings = []
    try:
        for _ in range(300):
            t0 = time.perf_counter()
            env = await call(client, "GET", "/progress")
            timings.append(time.perf_counter() - t0)
            assert env["data"]["stage"] == "downloading"
    finally:
        stop.set()
        await feeder
    timings.sort()
    assert timings[int(len(timings) * 0.99)] < 0.1, timings[-5:]


# ---- extensions ------------------------------------------------------------------------------
async def test_cancel(client: Client, rig: Rig) -> None:
    env = await call(client, "POST", "/cancel")
    assert env["code"] == 409 and env["msg"].startswith("NOTHING_TO_CANCEL")
    await call(client, "POST", "/download", json=body())
    env = await call(client, "POST", "/cancel")
    assert env == {"code": 200, "msg": "success", "data": {"status": "cancelled"}}
    assert fx.StopJob(1) in rig.runner.effects
    progress = (await call(client, "GET", "/progress"))["data"]
    assert progress["stage"] == "idle" and progress["error"].startswith("CANCELLED")


@pytest.mark.parametrize(
    ("payload", "target", "level"),
    [(None, "1.0.0", 1), ({}, "1.0.0", 1), ({"target": "factory"}, "1.0.0", 2)],
)
async def test_rollback(client: Client, rig: Rig, payload: Any, target: str, level: int) -> None:
    kwargs = {} if payload is None else {"json": payload}
    env = await call(client, "POST", "/rollback", **kwargs)
    assert env["code"] == 200, env
    assert env["data"]["status"] == "rolling_back"
    (rollback,) = rig.runner.of(fx.RollBack)
    assert (rollback.level, rollback.target_version) == (level, target)
    assert rollback.previous_after == "1.1.0"  # the version we left
    assert (await call(client, "GET", "/progress"))["data"]["stage"] == "installing"


async def test_manual_rollback_restarts_configured_units_when_journal_names_none(
    make_client: ClientFactory, rig: Rig
) -> None:
    """A journal set aside (or a fresh device) knows no units: the configured list is used,
    in its order, so a manual rollback still restarts the device services."""
    client = await make_client(units=("device-api", "web-server.service"))
    assert rig.engine.record.last_units == ()
    assert (await call(client, "POST", "/rollback"))["code"] == 200
    (rollback,) = rig.runner.of(fx.RollBack)
    assert [(u.unit, u.restart_order) for u in rollback.units] == [
        ("device-api.service", 0),
        ("web-server.service", 1),
    ]


async def test_manual_rollback_prefers_the_last_installs_units(
    tmp_path: Path, root: Path, aiohttp_client: Any
) -> None:
    journaled = (ServiceUnit("printer.service", restart_order=3),)
    layout = snapshot_store.Layout(root)
    engine = Engine(
        Record(last_units=journaled),
        Journal(tmp_path / "state"),
        read_links=lambda: snapshot_store.read_links(layout),
    )
    runner = RecordingRunner()
    engine.attach(runner)
    await engine.start(ev.DiskFacts(links=engine.links))
    try:
        client = await aiohttp_client(create_app(Config(root=root, units=("device-api",)), engine))
        assert (await call(client, "POST", "/rollback"))["code"] == 200
        (rollback,) = runner.of(fx.RollBack)
        assert rollback.units == journaled
    finally:
        await engine.stop()


async def test_rollback_is_refused_while_busy_or_without_target(
    make_client: ClientFactory, rig: Rig
) -> None:
    client = await make_client()
    await rig.to_downloading()
    env = await call(client, "POST", "/rollback", json={"target": "previous"})
    assert env["code"] == 409
    await call(client, "POST", "/cancel")
    (rig.root / "versions" / "previous").unlink()
    rig.engine.refresh_links()
    env = await call(client, "POST", "/rollback")
    assert env["code"] == 404 and env["msg"].startswith("VERSION_NOT_FOUND")


async def test_reset(client: Client, rig: Rig) -> None:
    await rig.to_downloading()
    assert (await call(client, "POST", "/reset"))["code"] == 409
    await rig.ok(ev.DownloadFailed(rig.job_id, Failure(ErrorCode.DOWNLOAD_FAILED, "x")))
    env = await call(client, "POST", "/reset")
    assert env == {"code": 200, "msg": "success", "data": {"status": "idle"}}
    progress = (await call(client, "GET", "/progress"))["data"]
    assert (progress["stage"], progress["error"]) == ("idle", None)


async def test_versions_lists_snapshots_with_sizes(client: Client) -> None:
    data = (await call(client, "GET", "/versions"))["data"]
    assert (data["current"], data["previous"], data["factory"]) == ("1.1.0", "1.0.0", "1.0.0")
    by_version = {v["version"]: v for v in data["installed"]}
    assert set(by_version) == {"1.0.0", "1.1.0"}
    assert by_version["1.1.0"] == {"version": "1.1.0", "size_bytes": 3000, "links": ["current"]}
    assert by_version["1.0.0"]["links"] == ["previous", "factory"]
    assert by_version["1.0.0"]["size_bytes"] == len("1.0.0\n")  # the VERSION file


async def test_statechart_highlights_the_current_state(client: Client, rig: Rig) -> None:
    resp = await client.get(API + "/statechart")
    assert resp.status == 200 and resp.content_type == "text/plain"
    text = await resp.text()
    assert "stateDiagram-v2" in text and "class idle s_active" in text
    await rig.to_ready()
    text = await (await client.get(API + "/statechart")).text()
    assert "class ready s_active" in text and "class idle s_default" in text


async def test_healthz(client: Client, rig: Rig) -> None:
    env = await call(client, "GET", "/healthz")
    assert env["data"] == {
        "state": "idle",
        "stage": "idle",
        "updater_version": importlib.metadata.version("tope-updater"),
        "reporter": None,
        "fleet": None,
    }
    await rig.to_failed()
    env = await call(client, "GET", "/healthz")
    assert env["code"] == 200 and env["data"]["state"] == "failed"


async def test_openapi_lists_every_route(client: Client) -> None:
    resp = await client.get(API + "/openapi.json")
    doc = json.loads(await resp.text())
    assert doc["openapi"].startswith("3.0")
    documented = {
        (method.upper(), API + path) for path, ops in doc["paths"].items() for method in ops
    }
    served = {
        (r.method, r.resource.canonical)
        for r in client.app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    assert documented == served
    download = doc["components"]["schemas"]["DownloadBody"]
    assert download["additionalProperties"] is False
    assert "security" not in doc["paths"]["/download"]["post"]


async def test_unexpected_exception_becomes_code_500(rig: Rig, aiohttp_client: Any) -> None:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("kaboom")

    app = create_app(Config(root=rig.root), rig.engine)
    app.router.add_get("/boom", boom)
    client = await aiohttp_client(app)
    resp = await client.get("/boom")
    assert resp.status == 200
    assert await resp.json() == {
        "code": 500,
        "msg": "INTERNAL_ERROR: RuntimeError: kaboom",
        "data": None,
    }


async def test_journal_failure_is_code_500(client: Client, rig: Rig) -> None:
    state_dir = rig.root.parent / "state"
    (state_dir / "journal.json.tmp").mkdir()  # the journal cannot write its temp file
    env = await call(client, "POST", "/download", json=body())
    assert env["code"] == 500 and env["msg"].startswith("JOURNAL_WRITE_FAILED")
    assert rig.runner.of(fx.StartDownload) == []


# ---- auth --------------------------------------------------------------------------------------
async def test_bearer_token_guards_mutating_endpoints(make_client: ClientFactory) -> None:
    client = await make_client(api_token="s3cret")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        resp = await client.post(API + "/download", json=body(), headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        env = await resp.json()
        assert env["code"] == 401 and env["msg"].startswith("UNAUTHORIZED")
    good = {"Authorization": "Bearer s3cret"}
    env = await call(client, "POST", "/download", json=body(), headers=good)
    assert env["code"] == 200
    assert (await call(client, "GET", "/progress"))["data"]["stage"] == "downloading"
    doc = await (await client.get(API + "/openapi.json")).json()
    assert doc["paths"]["/download"]["post"]["security"] == [{"bearerAuth": []}]
    assert "401" in doc["paths"]["/cancel"]["post"]["responses"]
    assert "security" not in doc["paths"]["/progress"]["get"]


@pytest.mark.parametrize("raw", [b"\t", b" ", b"\r\n"])
async def test_a_whitespace_body_is_not_an_empty_one(client: Client, raw: bytes) -> None:
    """Found by schemathesis: whitespace is not JSON, and must not start a rollback."""
    headers = {"Content-Type": "application/json"}
    env = await call(client, "POST", "/rollback", data=raw, headers=headers)
    assert env["code"] == 400 and env["msg"].startswith("VALIDATION_ERROR"), env
