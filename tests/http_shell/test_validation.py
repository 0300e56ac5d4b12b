"""Contract §1 validation: every bad body is code 400 naming the field, never a crash."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.http_shell.conftest import API, MD5, Rig, body, call
from updater_fsm.core import effects as fx

_MISSING = object()
JSON = {"Content-Type": "application/json"}


def _with(field: str, value: Any) -> dict[str, Any]:
    data = body()
    if value is _MISSING:
        del data[field]
    else:
        data[field] = value
    return data


BAD_DOWNLOADS = [
    # (field named in the message, the field, its bad value)
    *[(f, f, _MISSING) for f in body()],
    ("version", "version", "1.2"),
    ("version", "version", "vv1.2.3"),  # one "v" prefix is accepted (and dropped), no more
    ("version", "version", "V1.2.3"),
    ("version", "version", "1.2.3\n"),
    ("version", "version", "1.2.3.4"),
    ("version", "version", "\u0661.\u0662.\u0663"),  # Arabic-Indic digits are not ASCII
    ("version", "version", "1." * 40 + "1"),
    ("version", "version", 123),
    ("version", "version", None),
    ("package_url", "package_url", "ftp://host/x.zip"),
    ("package_url", "package_url", "file:///etc/passwd"),
    ("package_url", "package_url", "http://"),
    ("package_url", "package_url", "http:///path-only"),
    ("package_url", "package_url", "not a url"),
    ("package_url", "package_url", "http://host/a b.zip"),
    ("package_url", "package_url", "http://host/x.zip\r\nX-Evil: 1"),
    ("package_url", "package_url", ["http://h/x"]),
    ("package_name", "package_name", "a/b.zip"),
    ("package_name", "package_name", ".."),
    ("package_name", "package_name", "."),
    ("package_name", "package_name", ""),
    ("package_name", "package_name", "x..zip"),
    ("package_name", "package_name", "a\x00b"),
    ("package_name", "package_name", "a\nb"),
    ("package_name", "package_name", "\ud800.zip"),
    ("package_name", "package_name", "x" * 256),
    ("package_name", "package_name", "\u00e9" * 128),  # 128 chars but 256 bytes
    ("package_size", "package_size", "10"),
    ("package_size", "package_size", True),
    ("package_size", "package_size", 0),
    ("package_size", "package_size", -5),
    ("package_size", "package_size", 10.5),
    ("package_size", "package_size", None),
    ("package_md5", "package_md5", "0" * 31),
    ("package_md5", "package_md5", "g" * 32),
    ("package_md5", "package_md5", 12345),
    ("package_sha256", "package_sha256", "0" * 63),
    ("package_sha256", "package_sha256", "z" * 64),
    ("package_signature", "package_signature", "not base64!"),
    ("package_signature", "package_signature", base64.b64encode(b"x" * 63).decode()),
    ("package_signature", "package_signature", base64.urlsafe_b64encode(b"\xff" * 64).decode()),
    ("package_signature", "package_signature", 7),
    ("surprise", "surprise", "extra field"),
]


@pytest.mark.parametrize(("named", "field", "value"), BAD_DOWNLOADS)
async def test_download_rejects_bad_field(
    client: TestClient[Any, Any], rig: Rig, named: str, field: str, value: Any
) -> None:
    env = await call(client, "POST", "/download", json=_with(field, value))
    assert env["code"] == 400
    assert env["msg"].startswith(f"VALIDATION_ERROR: {named} "), env["msg"]
    assert env["data"] is None
    assert rig.runner.of(fx.StartDownload) == []
    assert rig.engine.record.state == "idle"


@pytest.mark.parametrize(
    ("raw", "headers"),
    [
        (b'{"version": "1.2.3",', {"Content-Type": "application/json"}),
        (b"", {}),
        (b"\xff\xfe{}", {"Content-Type": "application/json"}),
        (b"[1, 2]", {"Content-Type": "application/json"}),
        (b'"a string"', {"Content-Type": "application/json"}),
        (b"null", {"Content-Type": "application/json"}),
        (b"version=1.2.3", {"Content-Type": "application/x-www-form-urlencoded"}),
        (b"[" * 100_000, {"Content-Type": "application/json"}),  # over the body limit
        (b"[" * 20_000 + b"]" * 20_000, {"Content-Type": "application/json"}),  # deep nesting
    ],
)
async def test_download_rejects_non_object_bodies(
    client: TestClient[Any, Any], raw: bytes, headers: dict[str, str]
) -> None:
    env = await call(client, "POST", "/download", data=raw, headers=headers)
    assert env["code"] == 400
    assert env["msg"].startswith("VALIDATION_ERROR: body "), env["msg"]


async def test_first_problem_is_the_extra_field(client: TestClient[Any, Any]) -> None:
    data = {**body(), "zzz": 1, "aaa": 2}
    del data["version"]
    env = await call(client, "POST", "/download", json=data)
    assert env["msg"] == "VALIDATION_ERROR: aaa is not an allowed field"


async def test_upper_case_digests_are_accepted_and_stored_lower(
    client: TestClient[Any, Any], rig: Rig
) -> None:
    signature = base64.b64encode(bytes(range(64))).decode()
    data = body(package_md5=MD5.upper(), package_sha256="AB" * 32, package_signature=signature)
    env = await call(client, "POST", "/download", json=data)
    assert env["code"] == 200, env
    (start,) = rig.runner.of(fx.StartDownload)
    assert start.request.package_md5 == MD5
    assert start.request.package_sha256 == "ab" * 32
    assert start.request.package_signature == signature
    journal = (rig.root.parent / "state" / "journal.json").read_text()
    assert MD5 in journal and MD5.upper() not in journal


async def test_optional_fields_may_be_null(client: TestClient[Any, Any], rig: Rig) -> None:
    data = body(package_sha256=None, package_signature=None)
    env = await call(client, "POST", "/download", json=data)
    assert env["code"] == 200
    assert rig.runner.of(fx.StartDownload)[0].request.package_sha256 is None


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/update", {}, "version"),
        ("/update", {"version": "latest"}, "version"),
        ("/update", {"version": "1.2.3", "force": True}, "force"),
        ("/update", {"version": 1}, "version"),
        ("/rollback", {"target": "yesterday"}, "target"),
        ("/rollback", {"target": 1}, "target"),
        ("/rollback", {"to": "previous"}, "to"),
        ("/rollback", [], "body"),
    ],
)
async def test_other_bodies_are_validated(
    client: TestClient[Any, Any], path: str, payload: Any, field: str
) -> None:
    env = await call(client, "POST", path, json=payload)
    assert env["code"] == 400
    assert env["msg"].startswith(f"VALIDATION_ERROR: {field} "), env["msg"]


async def test_unknown_path_and_method_are_json_http_errors(client: TestClient[Any, Any]) -> None:
    resp = await client.get(API + "/nope")
    assert resp.status == 404
    assert (await resp.json())["code"] == 404
    resp = await client.get(API + "/download")
    assert resp.status == 405
    assert "POST" in resp.headers["Allow"]
    assert (await resp.json())["code"] == 405


def _download_with(field: str, literal: str) -> bytes:
    """A valid download body whose ``field`` is the raw JSON text ``literal``."""
    parts = [f'"{k}": {json.dumps(v)}' for k, v in body().items() if k != field]
    parts.append(f'"{field}": {literal}')
    return ("{" + ", ".join(parts) + "}").encode()


HOSTILE_LITERALS = [
    # (field, raw JSON literal of that field, the message after "VALIDATION_ERROR: <field> ")
    ("package_size", "9" * 4301, "is a number with more than 64 digits"),
    ("package_size", "-" + "1" * 60_000, "is a number with more than 64 digits"),
    ("package_size", "1" * 65, "is a number with more than 64 digits"),
    ("package_size", "NaN", "is NaN, which is not JSON"),
    ("package_size", "Infinity", "is Infinity, which is not JSON"),
    ("package_size", "-Infinity", "is -Infinity, which is not JSON"),
    ("package_size", "1e400", "is a number too large for a float"),
    ("package_size", "1" + "0" * 400 + ".5", "is a number too large for a float"),
    ("package_md5", '{"x": [1, {"y": ' + "7" * 5000 + "}]}", "is a number with more than"),
    ("surprise", "NaN", "is NaN, which is not JSON"),
]


@pytest.mark.parametrize(("field", "literal", "problem"), HOSTILE_LITERALS)
async def test_hostile_numbers_are_400_naming_the_field(
    client: TestClient[Any, Any], rig: Rig, field: str, literal: str, problem: str
) -> None:
    raw = _download_with(field, literal)
    env = await call(client, "POST", "/download", data=raw, headers=JSON)
    assert env["code"] == 400, env
    assert env["msg"].startswith(f"VALIDATION_ERROR: {field} {problem}"), env["msg"]
    assert "Exceeds the limit" not in env["msg"]
    assert rig.runner.of(fx.StartDownload) == []


@pytest.mark.parametrize(
    ("path", "raw", "msg"),
    [
        ("/update", b'{"version": ' + b"1" * 4301 + b"}", "version is a number with more"),
        ("/rollback", b'{"target": ' + b"1" * 4301 + b"}", "target is a number with more"),
        ("/update", b'{"version": "1.2.3", "version": "9.9.9"}', "version appears more than once"),
        ("/rollback", b'{"target": "factory", "target": "previous"}', "target appears more"),
        ("/update", b"1" * 5000, "body is a number with more than 64 digits"),
        ("/update", b"NaN", "body is NaN, which is not JSON"),
        ("/update", b'{"version": "\xff"}', "body is not UTF-8"),
        ("/update", b'{"version": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", "body is nested"),
        ("/rollback", b'{"target": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001, "body is nest"),
        ("/update", b'\xef\xbb\xbf{"version": "1.2.3"}', "body is not valid JSON"),  # a BOM
    ],
)
async def test_no_body_is_ever_a_500(
    client: TestClient[Any, Any], rig: Rig, path: str, raw: bytes, msg: str
) -> None:
    await rig.to_ready()  # so /update and /rollback would act if the body got through
    env = await call(client, "POST", path, data=raw, headers=JSON)
    assert env["code"] == 400, env
    assert env["msg"].startswith(f"VALIDATION_ERROR: {msg}"), env["msg"]
    assert rig.engine.record.state == "ready"
    assert rig.runner.of(fx.StageSnapshot) == [] and rig.runner.of(fx.RollBack) == []


async def test_duplicate_keys_are_refused_in_a_download(
    client: TestClient[Any, Any], rig: Rig
) -> None:
    """A proxy reading the first ``package_url`` and the updater the last must not disagree."""
    raw = _download_with("package_url", '"http://127.0.0.1:9/a.zip", "package_url": "http://x/b"')
    env = await call(client, "POST", "/download", data=raw, headers=JSON)
    assert env["msg"] == "VALIDATION_ERROR: package_url appears more than once in an object"
    assert rig.runner.of(fx.StartDownload) == []
