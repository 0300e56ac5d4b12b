"""``redact_url``: URL credentials never shown, the rest of the URL (and text) untouched."""

from __future__ import annotations

import pytest

from updater_fsm.core import events as ev
from updater_fsm.core.progress import build_snapshot
from updater_fsm.core.record import Job, Record
from updater_fsm.core.table import State
from updater_fsm.core.urls import redact_url


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("http://user:secret@host/p.zip", "http://***@host/p.zip"),
        ("https://user:secret@host:8443/a/b?x=1#f", "https://***@host:8443/a/b?x=1#f"),
        ("HTTP://token@host", "HTTP://***@host"),
        ("http://user:p@ss@host/p.zip", "http://***@host/p.zip"),  # unescaped @ in a password
        ("http://user:secret@[::1]:80/p.zip", "http://***@[::1]:80/p.zip"),
        ("http://host/p@1.zip", "http://host/p@1.zip"),  # an @ in the path is no userinfo
        ("http://host/p.zip?mail=a@b", "http://host/p.zip?mail=a@b"),
        ("http://host/p.zip", "http://host/p.zip"),
        (
            "DOWNLOAD_FAILED: HTTP 404 Not Found for http://u:s@h/p.zip (mirror https://x:y@m/p)",
            "DOWNLOAD_FAILED: HTTP 404 Not Found for http://***@h/p.zip (mirror https://***@m/p)",
        ),
        ("no url here, mail me at a@b.example", "no url here, mail me at a@b.example"),
    ],
)
def test_redact_url(given: str, shown: str) -> None:
    assert redact_url(given) == shown
    assert redact_url(shown) == shown  # idempotent


@pytest.mark.parametrize("state", [State.FAILED, State.IDLE])
def test_snapshot_never_shows_credentials_of_an_error(state: State) -> None:
    req = ev.DownloadRequest("1.2.3", "http://u:s3cr3t@h/p.zip", "p.zip", 10, "0" * 32)
    error = "DOWNLOAD_FAILED: HTTP 404 Not Found for http://u:s3cr3t@h/p.zip"
    record = Record(state=state, job=Job(1, request=req, error=error))
    snap = build_snapshot(record, None, ev.LinkVersions())
    assert snap.error == "DOWNLOAD_FAILED: HTTP 404 Not Found for http://***@h/p.zip"
    for shown in (snap.data(), snap.report()):
        assert "s3cr3t" not in repr(shown)
        assert "http://***@h/p.zip" in shown["message"]
