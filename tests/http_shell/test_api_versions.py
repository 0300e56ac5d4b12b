"""Versions in request bodies may carry the ``v`` people type (``v1.2.3``): the updater
takes them in the bare form (issue 23)."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.http_shell.conftest import MD5, SHA, Rig, body, call
from updater_fsm.core import effects as fx
from updater_fsm.core import events as ev

Client = TestClient[Any, Any]


async def test_a_v_version_downloads_and_installs_as_the_bare_one(client: Client, rig: Rig) -> None:
    env = await call(client, "POST", "/download", json=body(version="v1.2.3"))
    assert env["code"] == 200, env
    assert [e.request.version for e in rig.runner.of(fx.StartDownload)] == ["1.2.3"]
    await rig.ok(ev.DownloadDone(rig.job_id, 1000, MD5, SHA))
    await rig.ok(ev.Verified(rig.job_id))
    env = await call(client, "POST", "/update", json={"version": "v1.2.3"})
    assert env == {"code": 200, "msg": "success", "data": {"status": "installing"}}
    assert rig.runner.of(fx.StageSnapshot) == [fx.StageSnapshot(1, "1.2.3", "tope-1.2.3.zip")]
    progress = await call(client, "GET", "/progress")
    assert progress["data"]["version"] == "1.2.3"


async def test_what_is_not_a_version_is_still_refused(client: Client) -> None:
    for bad in ("vv1.2.3", "V1.2.3", "v", "v1.2", "1.2.3v", "v" + "1" * 60 + ".0.0"):
        env = await call(client, "POST", "/update", json={"version": bad})
        assert env["code"] == 400, bad
        assert "1.2.3 or v1.2.3" in env["msg"], env
