"""watch_progress (the CLI's --watch and the demo) and the busy gate's waiting state."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import pytest

from http_shell.cli.watch import watch_progress


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


# ---- what a watch writes -------------------------------------------------------------------
def _at(stage: str, state: str, progress: int, message: str = "", **extra: Any) -> dict[str, Any]:
    return {"stage": stage, "state": state, "progress": progress, "message": message, **extra}


DOWNLOAD = [
    _at("downloading", "downloading", 40, total_bytes=10),
    _at("downloading", "downloading", 40, total_bytes=10),  # the same again
    _at("downloading", "downloading", 99, total_bytes=10),
    _at("verifying", "verifying", 50, "Verifying package v1.1.0..."),
    _at("toInstall", "ready", 100, "Package v1.1.0 verified, ready to install"),
]
FAILED = "Update failed: ROLLBACK_LEVEL_1_SUCCESS: v1.0.0 (cause: HEALTH_CHECK_FAILED: " + "x" * 80
INSTALL = [
    _at("installing", "deploying", 10, "Staging v1.1.0..."),
    _at("installing", "health_check", 70, "Checking health of v1.1.0..."),
    _at("installing", "rollback_previous", 80, "Rolling back to previous version v1.0.0..."),
    _at("failed", "failed", 0, FAILED, error=FAILED[15:]),
]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_on_a_terminal_a_bar_per_stage_and_the_whole_outcome_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "50")
    out = _Tty()
    events = _Events([*DOWNLOAD, _snap("idle", "idle")])
    last = await watch_progress(events, out=out, show_outcome=True)  # type: ignore[arg-type]
    assert last["state"] == "ready"
    lines = out.getvalue().split("\n")
    assert lines[-2:] == ["Package v1.1.0 verified, ready to install", ""]
    downloading, verifying = (line.split("\r\x1b[K")[1:] for line in lines[:2])
    assert [d[27:30] for d in downloading] == [" 40", " 99"]  # drawn once each
    assert [d[27:30] for d in verifying] == [" 50"]  # a bar of its own, not 99 -> 50
    assert all(len(d) <= 49 for d in downloading + verifying)

    out = _Tty()
    await watch_progress(_Events(INSTALL), out=out, show_outcome=True)  # type: ignore[arg-type]
    lines = out.getvalue().split("\n")
    assert lines[-2:] == [FAILED, ""]  # whole, though far wider than the terminal
    assert [d[27:30] for d in lines[0].split("\r\x1b[K")[1:]] == [" 10", " 70", " 80"]


async def test_off_a_terminal_one_line_per_step_and_no_redraw() -> None:
    out = io.StringIO()
    await watch_progress(_Events(DOWNLOAD), out=out, show_outcome=True)  # type: ignore[arg-type]
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line[33:] for line in lines[:-1]] == [
        "downloading/downloading  0.0 MB / 0.0 MB",
        "verifying/verifying  Verifying package v1.1.0...",
    ]
    assert lines[-1] == "Package v1.1.0 verified, ready to install"


async def test_a_manual_rollback_ends_on_what_it_did() -> None:
    out = io.StringIO()
    snaps = [
        _at("installing", "rollback_previous", 80, "Rolling back to previous version v1.0.0..."),
        _at("idle", "idle", 0, "Rolled back to v1.0.0"),
    ]
    await watch_progress(_Events(snaps), out=out, show_outcome=True)  # type: ignore[arg-type]
    assert out.getvalue().splitlines()[-1] == "Rolled back to v1.0.0"


async def test_a_stream_that_ends_early_says_so() -> None:
    out = io.StringIO()
    await watch_progress(_Events(INSTALL[:2]), out=out, show_outcome=True)  # type: ignore[arg-type]
    assert out.getvalue().splitlines()[-1] == (
        "the updater's event stream ended before the job settled (last: health_check)"
    )
