"""Issue 10: a ``package_url`` with credentials never shows them outside the request itself.

A real updater (real download executor, real journal, logging to its real log file) is
given ``http://updater:<secret>@127.0.0.1:<port>/files/p.zip``; the real package server
answers 404, so the URL ends up in the failure. The secret must appear in none of:
``/progress``, the ``/events`` stream, the reports a real device-api stand-in receives,
the log file. The journal keeps it (a resume needs it) and is readable by root only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from http_shell.api.app import create_app
from http_shell.daemon.assembly import running_updater
from tests.support.device_api import DeviceApi, device_api
from tests.support.package_server import Behaviour, PackageServer
from updater_fsm.config import Config
from updater_fsm.core.table import State
from updater_fsm.log_setup import configure_logging
from updater_fsm.ops import snapshot_store

__all__ = ["device_api"]

API = "/api/v1.0"
SECRET = "s3cr3t-Pa55"


@pytest.fixture
def file_logging() -> Iterator[None]:
    """Let the updater configure its real logging; put the test's logging back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


async def _events_until_failed(resp: Any) -> str:
    """Everything the stream sent up to the first ``failed`` event."""
    text = ""
    async with asyncio.timeout(20):
        while '"stage":"failed"' not in text:
            line = await resp.content.readline()
            assert line, "stream ended"
            text += line.decode()
    return text


async def test_url_credentials_appear_nowhere_but_the_journal(
    tmp_path: Path,
    package_server: PackageServer,
    device_api: DeviceApi,
    aiohttp_client: Any,
    file_logging: None,
) -> None:
    root = tmp_path / "root"
    snapshot_store.init_layout(root, "1.0.0")
    config = Config(
        root=root,
        state_dir=tmp_path / "state",
        service_control="none",
        device_api_url=device_api.url,
        download_attempts=1,
    )
    configure_logging(config.logs_dir, level="debug", console=False)
    package_server.add("p.zip", b"x" * 100, Behaviour(status=404))
    plain = package_server.url("p.zip")
    url = plain.replace("http://", f"http://updater:{SECRET}@")
    shown = plain.replace("http://", "http://***@")
    request = {
        "version": "1.2.3",
        "package_url": url,
        "package_name": "p.zip",
        "package_size": 100,
        "package_md5": "0" * 32,
    }

    async with running_updater(config) as u:
        assert u.reporter is not None
        client = await aiohttp_client(create_app(config, u.engine, reporter=u.reporter))
        events = await client.get(API + "/events")
        answer = await (await client.post(API + "/download", json=request)).json()
        assert answer["code"] == 200, answer
        streamed = await _events_until_failed(events)
        events.close()
        progress = await (await client.get(API + "/progress")).json()
        reports = await device_api.wait_for(
            lambda got: any(r["stage"] == "failed" for r in got), timeout=20
        )
        assert u.engine.snapshot.state is State.FAILED
        journal = config.state_path / "journal.json"
        journal_text = journal.read_text()
        journal_mode = stat.S_IMODE(journal.stat().st_mode)

    error = f"DOWNLOAD_FAILED: HTTP 404 Not Found for {shown}"
    assert progress["msg"] == f"Update failed: {error}", progress
    assert progress["data"]["error"] == error
    assert SECRET not in json.dumps(progress)
    assert error in streamed and SECRET not in streamed
    assert any(r["error"] == error for r in reports), reports
    assert SECRET not in json.dumps(device_api.reports)
    for handler in logging.getLogger().handlers:
        handler.flush()
    log = (config.logs_dir / "updater.log").read_text()
    assert shown in log  # the download's own log lines name the (masked) URL
    assert SECRET not in log
    # The journal keeps the real URL (a restarted updater resumes the download with it),
    # so it must be readable by its owner (root) only.
    assert url in journal_text
    assert journal_mode == 0o600, oct(journal_mode)
