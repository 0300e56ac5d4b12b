"""watch_progress (the CLI's --watch and the demo) and the busy gate's waiting state."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import pytest

from http_shell.cli.client import watch_progress


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines are cut to the terminal's width: pin it to the width off a terminal (100) so
    the messages checked below fit whatever COLUMNS says (80 in pytest-xdist's workers)."""
    monkeypatch.setenv("COLUMNS", "100")


class _Events:
    """Stands in for ApiClient: replays snapshots as GET /events would."""

    def __init__(self, snapshots: list[dict[str, Any]]) -> None:
        self.snapshots = snapshots
        self.consumed = 0

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        for snap in self.snapshots:
            self.consumed += 1
            yield snap


def _snap(stage: str, state: str, message: str = "") -> dict[str, Any]:
    return {"stage": stage, "state": state, "progress": 100, "message": message}


WAITING = _snap("toInstall", "waiting_idle", "Waiting for the printer to be free: printing x, 5 %")


async def test_waiting_for_the_printer_is_followed_to_the_end() -> None:
    client = _Events(
        [
            WAITING,
            WAITING,
            _snap("installing", "deploying"),
            _snap("success", "success", "Update to v1.1.0 complete"),
            _snap("idle", "idle"),
        ]
    )
    out = io.StringIO()
    last = await watch_progress(client, out=out)  # type: ignore[arg-type]
    assert last["stage"] == "success"
    assert client.consumed == 4
    assert "toInstall/waiting_idle  Waiting for the printer to be free" in out.getvalue()


async def test_a_cancelled_wait_ends_the_watch_at_ready() -> None:
    client = _Events([WAITING, _snap("toInstall", "ready"), _snap("idle", "idle")])
    last = await watch_progress(client, out=io.StringIO())  # type: ignore[arg-type]
    assert last["state"] == "ready"
    assert client.consumed == 2


async def test_a_verified_package_alone_still_settles_at_once() -> None:
    client = _Events([_snap("toInstall", "ready"), WAITING])
    last = await watch_progress(client, out=io.StringIO())  # type: ignore[arg-type]
    assert last["state"] == "ready"
    assert client.consumed == 1
