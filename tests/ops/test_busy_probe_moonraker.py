"""systemd/busy-probe-moonraker.sh against a local server answering like Moonraker.

The script is run for real (``/bin/sh``, curl, python3), against an aiohttp server on
127.0.0.1 that serves Moonraker's ``GET /printer/objects/query`` answers, both directly
(exit status, first line) and as the updater runs it (:func:`probe_printer`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from updater_fsm.ops.printer_probe import probe_printer

SCRIPT = Path(__file__).resolve().parents[2] / "systemd" / "busy-probe-moonraker.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("python3") is None,
    reason="the Moonraker probe needs curl and python3",
)

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


def _query_answer(state: str, filename: str = "benchy.gcode", progress: Any = 0.4321) -> Any:
    """What Moonraker answers over HTTP: the query result wrapped in ``result``."""
    return {
        "result": {
            "eventtime": 578243.57,
            "status": {
                "print_stats": {"state": state, "filename": filename},
                "virtual_sdcard": {"progress": progress},
            },
        }
    }


class FakeMoonraker:
    """Serves one configurable answer and records the requests it got."""

    def __init__(self) -> None:
        self.body: bytes = b""
        self.status = 200
        self.delay_s = 0.0
        self.requests: list[web.Request] = []

    def answer(self, payload: Any) -> None:
        self.body = json.dumps(payload).encode()

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.Response(body=self.body, status=self.status, content_type="application/json")


@pytest.fixture
async def moonraker(aiohttp_server: ServerFactory) -> tuple[FakeMoonraker, str]:
    fake = FakeMoonraker()
    app = web.Application()
    app.router.add_get("/printer/objects/query", fake.handle)
    server = await aiohttp_server(app)
    return fake, f"http://127.0.0.1:{server.port}"


async def _run(url: str, **env: str) -> tuple[int, str]:
    """Run the script without blocking the loop the fake server runs in."""
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def test_script_is_executable_posix_sh() -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/bin/sh\n")


@pytest.mark.parametrize("state", ["printing", "paused"])
async def test_printing_or_paused_is_busy_with_file_and_progress(
    moonraker: tuple[FakeMoonraker, str], state: str
) -> None:
    fake, url = moonraker
    fake.answer(_query_answer(state))
    code, out = await _run(url)
    assert code == 1
    assert out == f"{state} benchy.gcode, 43 %\n"
    # It asks for exactly the fields it reads.
    (request,) = fake.requests
    assert request.query["print_stats"] == "state,filename"
    assert request.query["virtual_sdcard"] == "progress"


@pytest.mark.parametrize("state", ["standby", "complete", "cancelled", "error"])
async def test_idle_states_are_free(moonraker: tuple[FakeMoonraker, str], state: str) -> None:
    fake, url = moonraker
    fake.answer(_query_answer(state, filename="", progress=0.0))
    code, out = await _run(url)
    assert (code, out) == (0, f"printer {state}\n")


async def test_printing_without_progress_still_names_the_file(
    moonraker: tuple[FakeMoonraker, str],
) -> None:
    fake, url = moonraker
    payload = _query_answer("printing")
    del payload["result"]["status"]["virtual_sdcard"]  # no [virtual_sdcard] in printer.cfg
    fake.answer(payload)
    assert await _run(url) == (1, "printing benchy.gcode\n")


async def test_file_name_cannot_break_the_reason_line(
    moonraker: tuple[FakeMoonraker, str],
) -> None:
    fake, url = moonraker
    fake.answer(_query_answer("printing", filename="evil\nname.gcode", progress=1.7))
    code, out = await _run(url)
    assert (code, out) == (1, "printing evil?name.gcode, 100 %\n")


async def test_server_down_is_busy_with_a_clear_first_line() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out = await _run(f"http://127.0.0.1:{port}")
    assert code == 2
    first = out.splitlines()[0]
    assert first.startswith(f"cannot ask Moonraker at http://127.0.0.1:{port} (curl exit 7): ")
    assert len(out.splitlines()) == 1


async def test_garbage_answer_is_busy(moonraker: tuple[FakeMoonraker, str]) -> None:
    fake, url = moonraker
    fake.body = b"<html>not moonraker</html>"
    code, out = await _run(url)
    assert code == 2
    assert out == "Moonraker answered something that is not JSON; treating the printer as busy\n"


@pytest.mark.parametrize(
    "payload",
    [
        {"error": {"code": 400, "message": "bad"}},
        {"result": {"status": {}}},  # print_stats missing (not loaded)
        {"result": {"status": {"print_stats": {"state": None}}}},
        [1, 2, 3],
    ],
)
async def test_json_of_another_shape_is_busy(
    moonraker: tuple[FakeMoonraker, str], payload: Any
) -> None:
    fake, url = moonraker
    fake.answer(payload)
    code, out = await _run(url)
    assert code == 2
    assert out.startswith("Moonraker answered without result.status.print_stats.state (")


async def test_unknown_state_is_busy(moonraker: tuple[FakeMoonraker, str]) -> None:
    fake, url = moonraker
    fake.answer(_query_answer("heating_up"))
    code, out = await _run(url)
    assert code == 2
    assert out == "unknown print state 'heating_up' from Moonraker; treating the printer as busy\n"


async def test_http_error_is_busy(moonraker: tuple[FakeMoonraker, str]) -> None:
    fake, url = moonraker
    fake.status = 503  # Moonraker while Klippy is not connected
    fake.answer({"error": {"code": 503, "message": "Klippy Host not connected"}})
    code, out = await _run(url)
    assert code == 2
    assert out.startswith(f"cannot ask Moonraker at {url} (curl exit 22): ")


async def test_slow_server_is_busy_within_max_time(moonraker: tuple[FakeMoonraker, str]) -> None:
    fake, url = moonraker
    fake.answer(_query_answer("standby"))
    fake.delay_s = 5
    started = time.monotonic()
    code, out = await _run(url, MOONRAKER_MAX_TIME="0.5")
    assert time.monotonic() - started < 4
    assert code == 2
    assert out.startswith(f"cannot ask Moonraker at {url} (curl exit 28): ")


async def test_api_key_is_sent_when_set(moonraker: tuple[FakeMoonraker, str]) -> None:
    fake, url = moonraker
    fake.answer(_query_answer("standby"))
    assert (await _run(url, MOONRAKER_API_KEY="k3y"))[0] == 0
    assert fake.requests[-1].headers.get("X-Api-Key") == "k3y"
    assert (await _run(url))[0] == 0
    assert "X-Api-Key" not in fake.requests[-1].headers


async def test_url_from_environment(moonraker: tuple[FakeMoonraker, str]) -> None:
    fake, url = moonraker
    fake.answer(_query_answer("complete"))
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "MOONRAKER_URL": url + "/"},
    )
    out, _ = await proc.communicate()
    assert (proc.returncode, out) == (0, b"printer complete\n")


# ---- as the updater runs it ----------------------------------------------------------
async def test_updater_reads_busy_and_free(moonraker: tuple[FakeMoonraker, str]) -> None:
    fake, url = moonraker
    command = f"{SCRIPT} {url}"
    fake.answer(_query_answer("printing", progress=0.43))
    status = await probe_printer(command, timeout_s=10)
    assert (status.free, status.reason) == (False, "printing benchy.gcode, 43 %")
    fake.answer(_query_answer("complete"))
    status = await probe_printer(command, timeout_s=10)
    assert (status.free, status.reason) == (True, "printer complete")


async def test_updater_treats_an_unreachable_moonraker_as_busy() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    status = await probe_printer(f"{SCRIPT} http://127.0.0.1:{port}", timeout_s=10)
    assert not status.free
    assert status.reason.startswith(f"cannot ask Moonraker at http://127.0.0.1:{port}")
