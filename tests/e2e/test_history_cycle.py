"""The device's history through the real HTTP app: GET /history after an install, a broken
update rolled back and a cancel, newest first; kept across a restart; limits validated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from http_shell.api.app import create_app
from http_shell.daemon.assembly import running_updater
from tests.e2e.test_sandbox_cycle import (
    API,
    hello_package,
    install_over_http,
    request_for,
    sandbox,
    wait_for,
)
from tests.support.package_server import PackageServer
from updater_fsm.core.table import State


async def test_history_lists_jobs_newest_first_and_survives_a_restart(
    tmp_path: Path, package_server: PackageServer, aiohttp_client: Any
) -> None:
    config = sandbox(tmp_path)
    root = config.root
    good = hello_package(tmp_path, root, "1.1.0", b"#!/bin/sh\necho hello 1.1.0\n")
    bad = hello_package(tmp_path, root, "1.2.0", b"#!/bin/sh\nexit 1\n")
    async with running_updater(config, report=False) as u:
        client = await aiohttp_client(create_app(config, u.engine))
        empty = await (await client.get(f"{API}/history")).json()
        assert empty == {"code": 200, "msg": "success", "data": {"entries": []}}

        assert (await install_over_http(client, package_server, good, "1.1.0", u))["code"] == 200
        envelope = await install_over_http(client, package_server, bad, "1.2.0", u)
        assert envelope["data"]["error"].startswith("ROLLBACK_LEVEL_1_SUCCESS"), envelope
        # A third download, cancelled while it is verified or ready.
        req = await request_for(package_server, good, "1.1.0")
        body = {k: v for k, v in attrs.asdict(req).items() if v is not None}
        assert (await (await client.post(f"{API}/download", json=body)).json())["code"] == 200
        await wait_for(u.engine, State.READY)
        assert (await (await client.post(f"{API}/cancel")).json())["code"] == 200
        await u.runner.idle()
        got = await (await client.get(f"{API}/history")).json()

    assert got["code"] == 200, got
    entries = got["data"]["entries"]
    assert [(e["job_id"], e["outcome"]) for e in entries] == [
        (3, "cancelled"),
        (2, "rolled_back"),
        (1, "success"),
    ]
    cancelled, rolled_back, success = entries
    assert success["kind"] == "update" and success["source"] == "api"
    assert (success["from_version"], success["to_version"]) == ("1.0.0", "1.1.0")
    assert success["file"] == good.name and success["error_code"] is None
    assert success["rollback_level"] == 0
    assert success["started_at"] <= success["ended_at"] <= rolled_back["started_at"]
    assert (rolled_back["from_version"], rolled_back["to_version"]) == ("1.1.0", "1.2.0")
    assert rolled_back["error_code"] == "ROLLBACK_LEVEL_1_SUCCESS"
    assert rolled_back["rollback_level"] == 1
    assert cancelled["error_code"] == "CANCELLED" and cancelled["to_version"] == "1.1.0"

    # A restart keeps them (and adds nothing: the cancelled job is kept once).
    async with running_updater(config, report=False) as u:
        await u.runner.idle()
        client = await aiohttp_client(create_app(config, u.engine))
        again = await (await client.get(f"{API}/history?limit=2")).json()
        assert again["data"]["entries"] == entries[:2]
        every = await (await client.get(f"{API}/history")).json()
        assert every["data"]["entries"] == entries
        for bad_limit in ("0", "101", "-1", "x", "1.5", "", "+3", "01"):
            refused = await (await client.get(f"{API}/history?limit={bad_limit}")).json()
            assert refused["code"] == 400, (bad_limit, refused)
            assert refused["msg"].startswith("VALIDATION_ERROR: limit"), refused
        twice = await (await client.get(f"{API}/history?limit=1&limit=2")).json()
        assert twice["code"] == 400 and twice["msg"].startswith("VALIDATION_ERROR: limit")
