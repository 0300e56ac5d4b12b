"""Issue 23: a download that cannot reach its server says so in words, and its retries are
visible in ``/progress`` while they happen (a real updater: engine, download executor, API)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path
from typing import Any

from http_shell.api.app import create_app
from http_shell.daemon.assembly import running_updater
from updater_fsm.config import Config
from updater_fsm.core.table import State
from updater_fsm.ops import snapshot_store

API = "/api/v1.0"
DASH = "\N{EM DASH}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens on it


async def test_nothing_listening_at_the_package_url_is_said_in_words(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    root = tmp_path / "root"
    snapshot_store.init_layout(root, "1.0.0")
    config = Config(
        root=root,
        state_dir=tmp_path / "state",
        service_control="none",
        device_api_url="http://127.0.0.1:9",
        download_attempts=3,
    )
    port = _free_port()
    request = {
        "version": "1.2.3",
        "package_url": f"http://127.0.0.1:{port}/p.zip",
        "package_name": "p.zip",
        "package_size": 100,
        "package_md5": "0" * 32,
    }
    async with running_updater(config) as u:
        client = await aiohttp_client(create_app(config, u.engine, reporter=u.reporter))
        events = await client.get(API + "/events")
        answer = await (await client.post(API + "/download", json=request)).json()
        assert answer["code"] == 200, answer
        snapshots: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            while not snapshots or snapshots[-1]["stage"] != "failed":
                line = await events.content.readline()
                assert line, "stream ended"
                if line.startswith(b"data:"):
                    snapshots.append(json.loads(line[5:]))
        events.close()
        progress = await (await client.get(API + "/progress")).json()
        assert u.engine.snapshot.state is State.FAILED

    refused = f"cannot connect to 127.0.0.1:{port}: connection refused"
    retrying = [s["message"] for s in snapshots if s["state"] == "downloading"]
    for attempt in (2, 3):
        assert any(
            re.fullmatch(
                rf"Downloading package\.\.\. 0\.0 MB / 0\.0 MB \({re.escape(refused)};"
                rf" retrying in [0-9.]+ s, attempt {attempt} of 3\)",
                message,
            )
            for message in retrying
        ), retrying
    # the same, as values a screen can show in its own words
    retries = [s["retry"] for s in snapshots if s["state"] == "downloading" and s["retry"]]
    assert {(r["reason"], r["attempt"], r["attempts"]) for r in retries} == {
        (refused, 2, 3),
        (refused, 3, 3),
    }, retries
    assert all(r["in_s"] >= 0 for r in retries)
    assert progress["data"]["retry"] is None  # failed: nothing is retried any more
    error = progress["data"]["error"]
    assert re.fullmatch(
        rf"DOWNLOAD_FAILED: {re.escape(refused)} {DASH} 3 attempts over [0-9.]+ s", error
    ), error
    assert progress["msg"] == f"Update failed: {error}"
