"""Schemathesis against ``/openapi.json``: the document and the server must agree.

For every operation (except the endless ``/events`` stream) schemathesis generates requests
from the document — positive ones that satisfy the schemas and negative ones that violate
them — and sends them to the real app over loopback. Besides its own checks (no server
error, documented status code and content type, response matches its schema), each
response must honour the envelope rule: a request body violating the schema is answered
code 400, and one satisfying it never is (so the schemas are neither looser nor stricter
than the validation in :mod:`http_shell.api.bodies`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from http_shell.api.app import create_app
from http_shell.api.routes import OPENAPI
from tests.http_shell.conftest import API, Rig
from updater_fsm.config import Config

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is not installed (pip install schemathesis)"
)
from schemathesis import GenerationMode, checks  # noqa: E402

EXAMPLES = 30
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


def _check(case: Any, base_url: str, mode: GenerationMode) -> None:
    response = case.call(base_url=base_url, timeout=5)
    case.validate_response(response, checks=CHECKS)
    if case.body is schemathesis.core.NOT_SET:
        return
    env = response.json()
    if mode is GenerationMode.NEGATIVE:
        assert env["code"] == 400, (case.body, env)
    else:
        assert env["code"] != 400, (case.body, env)


def _fuzz_operation(operation: Any, mode: GenerationMode, base_url: str) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        _check(case, base_url, mode)

    run()


def _fuzz(doc: dict[str, Any], base_url: str) -> list[str]:
    """Run every operation in both modes; return the labels exercised."""
    schema = schemathesis.openapi.from_dict(doc)
    done = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/events":
            continue  # an endless stream: covered by test_events.py
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and not list(operation.body):
                continue  # nothing to violate
            _fuzz_operation(operation, mode, base_url)
            done.append(f"{operation.label} {mode.value}")
    return done


async def test_server_matches_its_openapi_document(rig: Rig, aiohttp_server: Any) -> None:
    app = create_app(Config(root=rig.root), rig.engine)
    server = await aiohttp_server(app)
    base_url = str(server.make_url(API))
    done = await asyncio.to_thread(_fuzz, app[OPENAPI], base_url)
    assert any("POST /download negative" in label for label in done), done
    assert any("POST /download positive" in label for label in done), done
