"""Issue 10, the HTTP edges: cross-site requests, foreign Host/Origin, the JSON-only rule.

Every request goes over a real loopback socket to the real app; the "browser" requests are
built exactly as a browser would send them (``text/plain`` simple requests, a foreign
``Origin``, a re-bound ``Host``), and the device-api request byte for byte as device-api
sends it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.http_shell.conftest import API, ClientFactory, Rig, body, call
from updater_fsm.core import effects as fx

Client = TestClient[Any, Any]


async def _refused(client: Client, method: str, path: str, **kw: Any) -> str:
    """Send a request that must be refused with HTTP 403; return the envelope's msg."""
    resp = await client.request(method, API + path, **kw)
    if resp.status != 403:
        resp.close()  # it may be an endless /events stream: do not read it
        pytest.fail(f"{method} {path} answered HTTP {resp.status}, not 403")
    env = await resp.json()
    assert env["code"] == 403 and env["data"] is None, env
    assert env["msg"].startswith("FORBIDDEN: "), env
    return str(env["msg"])


def _assert_nothing_happened(rig: Rig) -> None:
    assert rig.runner.effects == []
    assert rig.engine.record.state == "idle"
    assert rig.engine.record.job is None


# ---- the JSON-only rule ------------------------------------------------------------------
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",  # the CORS "simple" request a web page can send with no preflight
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "application/json-patch+json",
    ],
)
async def test_body_not_declared_json_is_refused_and_nothing_happens(
    client: Client, rig: Rig, content_type: str
) -> None:
    raw = json.dumps(body()).encode()
    for path in ("/download", "/update", "/rollback"):
        env = await call(client, "POST", path, data=raw, headers={"Content-Type": content_type})
        assert env["code"] == 400, env
        assert env["msg"].startswith(
            "VALIDATION_ERROR: body must be sent with Content-Type: application/json (got "
        ), env
        assert env["data"] is None
    _assert_nothing_happened(rig)
    progress = (await call(client, "GET", "/progress"))["data"]
    assert (progress["stage"], progress["state"]) == ("idle", "idle")


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
async def test_json_with_parameters_or_any_case_is_accepted(
    client: Client, rig: Rig, content_type: str
) -> None:
    raw = json.dumps(body()).encode()
    env = await call(client, "POST", "/download", data=raw, headers={"Content-Type": content_type})
    assert env["code"] == 200, env
    assert len(rig.runner.of(fx.StartDownload)) == 1


async def test_post_without_a_body_needs_no_content_type(client: Client, rig: Rig) -> None:
    """``curl -X POST …/reset`` sends no Content-Type; aiohttp labels an empty body
    ``application/octet-stream``: both pass (nothing is parsed), the Origin check guards."""
    await rig.to_failed()
    env = await call(client, "POST", "/reset", skip_auto_headers=["Content-Type"])
    assert env["code"] == 200, env
    env = await call(client, "POST", "/rollback", headers={"Content-Type": "text/plain"})
    assert env["code"] == 200, env  # an empty rollback body means "previous"


# ---- Host ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/download"), ("GET", "/progress"), ("GET", "/versions"), ("GET", "/events")],
)
async def test_rebound_host_is_refused_for_reads_and_writes(
    client: Client, rig: Rig, method: str, path: str
) -> None:
    """DNS rebinding: evil.example resolves to 127.0.0.1, the page is then same-origin with
    the updater and could read /progress or POST anything; only the Host header tells."""
    port = client.port
    for host in (f"evil.example:{port}", "evil.example", "127.0.0.1.evil.example", "0.0.0.0"):
        kw: dict[str, Any] = {"headers": {"Host": host}}
        if method == "POST":
            kw["json"] = body()
        msg = await _refused(client, method, path, **kw)
        assert msg.startswith(f"FORBIDDEN: Host {host!r} is not a name this updater serves"), msg
    _assert_nothing_happened(rig)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.1:12315", "localhost:1", "LOCALHOST.", "[::1]:12315"]
)
async def test_loopback_names_are_served_on_any_port(client: Client, host: str) -> None:
    env = await call(client, "GET", "/progress", headers={"Host": host})
    assert env["code"] == 200


async def test_allowed_hosts_and_the_configured_host_are_accepted(
    make_client: ClientFactory, rig: Rig
) -> None:
    client = await make_client(host="10.1.2.3", allowed_hosts=("printer.local", "[fd00::5]"))
    for host in ("printer.local:12315", "Printer.Local", "10.1.2.3:80", "[fd00::5]:12315"):
        env = await call(client, "GET", "/progress", headers={"Host": host})
        assert env["code"] == 200, (host, env)
    env = await call(
        client, "POST", "/download", json=body(), headers={"Host": "printer.local:12315"}
    )
    assert env["code"] == 200
    await _refused(client, "GET", "/progress", headers={"Host": "other.local"})


async def test_a_wildcard_bind_is_not_a_host_name(make_client: ClientFactory) -> None:
    """``host = "0.0.0.0"`` listens everywhere; it does not make ``Host: 0.0.0.0`` (the
    "0.0.0.0 day" browser trick) or any other name acceptable."""
    client = await make_client(host="0.0.0.0")
    await _refused(client, "GET", "/progress", headers={"Host": "0.0.0.0:12315"})
    await _refused(client, "GET", "/progress", headers={"Host": "192.168.1.20"})
    assert (await call(client, "GET", "/progress"))["code"] == 200


# ---- Origin -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "null", "http://127.0.0.1", "http://localhost:8080", "file://"],
)
async def test_foreign_origin_is_refused_before_anything_happens(
    client: Client, rig: Rig, origin: str
) -> None:
    """A page in a browser on the device (or anywhere) posting to the updater: text/plain
    would already be refused; application/json needs a preflight the updater never answers;
    a body-less POST (/cancel, /reset, /rollback) is stopped by its Origin alone."""
    for path in ("/download", "/cancel", "/reset", "/rollback"):
        kw: dict[str, Any] = {"headers": {"Origin": origin}}
        if path == "/download":
            kw["json"] = body()
        msg = await _refused(client, "POST", path, **kw)
        assert msg.startswith(f"FORBIDDEN: cross-origin request from Origin {origin!r}"), msg
    await _refused(client, "GET", "/progress", headers={"Origin": origin})
    _assert_nothing_happened(rig)


async def test_text_plain_from_an_evil_origin_is_refused_as_forbidden(
    client: Client, rig: Rig
) -> None:
    """The exact request of the issue: a simple cross-site POST, parsed as JSON before."""
    raw = json.dumps(body()).encode()
    headers = {"Content-Type": "text/plain", "Origin": "http://evil.example"}
    await _refused(client, "POST", "/download", data=raw, headers=headers)
    await _refused(client, "POST", "/update", data=b'{"version": "1.2.3"}', headers=headers)
    _assert_nothing_happened(rig)


async def test_own_origin_is_accepted(client: Client, rig: Rig) -> None:
    origin = f"http://127.0.0.1:{client.port}"
    env = await call(client, "POST", "/download", json=body(), headers={"Origin": origin})
    assert env["code"] == 200, env
    assert len(rig.runner.of(fx.StartDownload)) == 1


async def test_refused_even_with_the_right_token(make_client: ClientFactory, rig: Rig) -> None:
    client = await make_client(api_token="s3cret")
    headers = {"Authorization": "Bearer s3cret", "Origin": "http://evil.example"}
    await _refused(client, "POST", "/download", json=body(), headers=headers)
    headers = {"Authorization": "Bearer s3cret", "Host": "evil.example"}
    await _refused(client, "POST", "/download", json=body(), headers=headers)
    _assert_nothing_happened(rig)


# ---- device-api, byte for byte ------------------------------------------------------------
async def _raw_request(port: int, request: bytes) -> tuple[str, dict[str, Any]]:
    """Send ``request`` on a fresh loopback socket; return the status line and the JSON."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(5):
            raw = await reader.read()  # Connection: close
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), json.loads(payload)


async def test_device_api_style_request_still_works(client: Client, rig: Rig) -> None:
    """device-api: a plain JSON POST, no Origin, ``Host: 127.0.0.1:12315`` (the updater's
    real port; here the test server listens elsewhere, and the port is not compared)."""
    payload = json.dumps(body()).encode()
    request = (
        b"POST /api/v1.0/download HTTP/1.1\r\n"
        b"Host: 127.0.0.1:12315\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\n"
        b"Connection: close\r\n\r\n" + payload
    )
    status, env = await _raw_request(client.port, request)
    assert status == "HTTP/1.1 200 OK"
    assert env == {
        "code": 200,
        "msg": "success",
        "data": {"status": "downloading", "state": "downloading"},
    }
    request = (
        b"GET /api/v1.0/progress HTTP/1.1\r\nHost: 127.0.0.1:12315\r\nConnection: close\r\n\r\n"
    )
    status, env = await _raw_request(client.port, request)
    assert env["data"]["stage"] == "downloading"


async def test_http_1_0_request_without_host_is_served(client: Client) -> None:
    """No Host header at all (HTTP/1.0 tools): not a browser, nothing to re-bind."""
    status, env = await _raw_request(client.port, b"GET /api/v1.0/progress HTTP/1.0\r\n\r\n")
    assert status.endswith("200 OK") and env["code"] == 200


# ---- round 2 (issue 21): the exact Host and Origin grammar, absolute-form targets --------
@pytest.mark.parametrize(
    "host",
    [
        "[::1]evil.example",
        "[::1].evil.example:80",
        "[::1]:80:90",
        "[::1]@evil.example",
        "127.0.0.1:80:90",
        "user@127.0.0.1",
        "127.0.0.1/evil",
        "127.0.0.1:123456",
    ],
)
async def test_a_host_that_is_not_host_and_port_is_refused(client: Client, host: str) -> None:
    msg = await _refused(client, "GET", "/progress", headers={"Host": host})
    assert "is not a name this updater serves" in msg


@pytest.mark.parametrize("host", ["[::1]", "[::1]:12315", "127.0.0.1:", "localhost:1"])
async def test_bracketed_ipv6_and_ports_are_still_served(client: Client, host: str) -> None:
    env = await call(client, "GET", "/progress", headers={"Host": host})
    assert env["code"] == 200, env


async def test_two_origin_headers_are_refused_whichever_comes_first(
    client: Client, rig: Rig
) -> None:
    own = f"http://127.0.0.1:{client.port}"
    for first, second in ((own, "http://evil.example"), ("http://evil.example", own)):
        request = (
            b"POST /api/v1.0/cancel HTTP/1.1\r\n"
            b"Host: 127.0.0.1:" + str(client.port).encode() + b"\r\n"
            b"Origin: " + first.encode() + b"\r\nOrigin: " + second.encode() + b"\r\n"
            b"Connection: close\r\n\r\n"
        )
        status, env = await _raw_request(client.port, request)
        assert status.startswith("HTTP/1.1 403"), (status, env)
        assert env["msg"] == "FORBIDDEN: more than one Origin header", env
    _assert_nothing_happened(rig)


@pytest.fixture
async def served(rig: Rig, tmp_path: Any) -> Any:
    """The app served as ``serve`` serves it (its runner: aiohttp's own refusals in the
    envelope); yields the port."""
    from aiohttp import web

    from http_shell.api.app import create_app
    from http_shell.api.low_level import EnvelopeAppRunner
    from updater_fsm.config import Config

    runner = EnvelopeAppRunner(create_app(Config(root=rig.root), rig.engine), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _raw(port: int, request: bytes) -> tuple[str, str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(5):
            raw = await reader.read()
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    kind = next(
        (v for k, _, v in (h.partition(": ") for h in lines[1:]) if k.lower() == "content-type"), ""
    )
    return lines[0], kind, payload


@pytest.mark.parametrize(
    ("request_bytes", "says"),
    [
        (b"GARBAGE\r\n\r\n", "Invalid method"),
        (b"GET /api/v1.0/progress HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"y" * 20000 + b"\r\n\r\n",
         "Got more than 8190 bytes"),
        (b"GET /api/v1.0/progress HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n",
         "Duplicate 'Host' header"),
        (b"POST /api/v1.0/cancel HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n",
         "Content-Length"),
    ],
    ids=["not-http", "header-too-long", "two-hosts", "bad-content-length"],
)  # fmt: skip
async def test_aiohttps_own_refusals_come_in_the_envelope(
    served: int, request_bytes: bytes, says: str
) -> None:
    """Refused by aiohttp's parser before the app sees it: still the API's JSON envelope
    (before: text/plain, ``400 Bad Request`` and aiohttp's words)."""
    status, kind, payload = await _raw(served, request_bytes)
    assert status.endswith(" 400 Bad Request"), status
    assert kind.startswith("application/json"), kind
    env = json.loads(payload)
    assert env["code"] == 400 and env["data"] is None, env
    assert env["msg"].startswith("VALIDATION_ERROR: ") and says in env["msg"], env
    assert "\n" not in env["msg"] and len(env["msg"]) < 400


async def test_an_absolute_form_target_is_judged_by_its_authority(client: Client, rig: Rig) -> None:
    """``POST http://evil.example/… HTTP/1.1`` with a loopback ``Host``: a proxy-style
    request for another host, refused (before: served, judged by ``Host`` alone)."""
    payload = json.dumps(body()).encode()
    request = (
        b"POST http://evil.example/api/v1.0/download HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\n"
        b"Connection: close\r\n\r\n" + payload
    )
    status, env = await _raw_request(client.port, request)
    assert status.startswith("HTTP/1.1 403"), (status, env)
    assert "names a host this updater does not serve" in env["msg"], env
    _assert_nothing_happened(rig)
    ok = (
        b"GET http://127.0.0.1/api/v1.0/progress HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    status, env = await _raw_request(client.port, ok)
    assert status == "HTTP/1.1 200 OK" and env["code"] == 200, env
