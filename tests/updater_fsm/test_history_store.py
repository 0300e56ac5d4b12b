"""The device's history on disk (updater_fsm/history.py): bounded, newest first, idempotent,
never fatal, never through a link."""

from __future__ import annotations

import json
import os
from pathlib import Path

import attrs
import pytest

from updater_fsm import history
from updater_fsm.core.errors import ErrorCode
from updater_fsm.core.history import HISTORY_LIMIT, HistoryEntry, Outcome, Source
from updater_fsm.core.record import JobKind


def entry(job_id: int, **changes: object) -> HistoryEntry:
    base = HistoryEntry(
        job_id=job_id,
        kind=JobKind.UPDATE,
        from_version="1.0.0",
        to_version=f"1.{job_id}.0",
        source=Source.API,
        fleet_action=None,
        file=f"p{job_id}.zip",
        started_at=1000.0 + job_id,
        ended_at=2000.0 + job_id,
        outcome=Outcome.SUCCESS,
        error_code=None,
        error=None,
        rollback_level=0,
    )
    return attrs.evolve(base, **changes)


def test_entries_are_kept_newest_first_with_every_field(tmp_path: Path) -> None:
    assert history.read_history(tmp_path) == []
    failed = entry(
        2,
        outcome=Outcome.ROLLED_BACK,
        error_code=ErrorCode.ROLLBACK_LEVEL_1_SUCCESS,
        error="ROLLBACK_LEVEL_1_SUCCESS: v1.0.0",
        rollback_level=1,
        source=Source.FLEET,
        fleet_action="42",
    )
    assert history.record(tmp_path, entry(1))
    assert history.record(tmp_path, failed)
    got = history.read_history(tmp_path)
    assert [e["job_id"] for e in got] == [2, 1]
    assert got[0] == {
        "job_id": 2,
        "kind": "update",
        "from_version": "1.0.0",
        "to_version": "1.2.0",
        "source": "fleet",
        "fleet_action": "42",
        "file": "p2.zip",
        "started_at": 1002.0,
        "ended_at": 2002.0,
        "outcome": "rolled_back",
        "error_code": "ROLLBACK_LEVEL_1_SUCCESS",
        "error": "ROLLBACK_LEVEL_1_SUCCESS: v1.0.0",
        "rollback_level": 1,
    }
    assert json.dumps(got)  # JSON-ready as it is
    assert [e["job_id"] for e in history.read_history(tmp_path, limit=1)] == [2]


def test_the_same_job_is_kept_once(tmp_path: Path) -> None:
    assert history.record(tmp_path, entry(1))
    before = history.history_path(tmp_path).stat().st_mtime_ns
    assert not history.record(tmp_path, entry(1))
    assert history.history_path(tmp_path).stat().st_mtime_ns == before
    # The same id from another life of the journal (a new start time) is another job.
    assert history.record(tmp_path, entry(1, started_at=5.0))
    assert len(history.read_history(tmp_path)) == 2


def test_bounded_to_the_last_hundred(tmp_path: Path) -> None:
    for job_id in range(1, HISTORY_LIMIT + 6):
        history.record(tmp_path, entry(job_id))
    got = history.read_history(tmp_path)
    assert len(got) == HISTORY_LIMIT
    assert got[0]["job_id"] == HISTORY_LIMIT + 5 and got[-1]["job_id"] == 6


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xff garbage",
        b'{"schema": 1, "entries": [{"job_id": "1"}]}',
        b'{"schema": 99, "entries": []}',
        b"[]",
        b'{"schema": 1, "entries": {}}',
    ],
)
def test_an_unreadable_file_is_set_aside_and_a_new_one_started(
    tmp_path: Path, content: bytes
) -> None:
    path = history.history_path(tmp_path)
    path.write_bytes(content)
    assert history.read_history(tmp_path) == []  # a reader is never failed by it
    assert path.read_bytes() == content  # ... nor does it move it
    assert history.record(tmp_path, entry(1))
    assert [e["job_id"] for e in history.read_history(tmp_path)] == [1]
    aside = list(tmp_path.glob("history.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content


def test_a_symlink_planted_at_the_file_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text(json.dumps({"schema": 1, "entries": []}))
    path = history.history_path(tmp_path)
    os.symlink(victim, path)
    assert history.read_history(tmp_path) == []  # not read through the link
    assert history.record(tmp_path, entry(1))
    assert not path.is_symlink()
    assert victim.read_text() == json.dumps({"schema": 1, "entries": []})  # untouched
    aside = list(tmp_path.glob("history.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].is_symlink()  # the link itself, set aside


def test_a_temp_file_planted_as_a_link_is_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, tmp_path / ".history.json.tmp")
    assert history.record(tmp_path, entry(1))
    assert victim.read_text() == "keep"
    assert [e["job_id"] for e in history.read_history(tmp_path)] == [1]


def test_a_write_that_fails_leaves_the_old_history(tmp_path: Path) -> None:
    history.record(tmp_path, entry(1))
    (tmp_path / ".history.json.tmp").mkdir()  # the temp file cannot be created
    with pytest.raises(OSError):
        history.record(tmp_path, entry(2))
    assert [e["job_id"] for e in history.read_history(tmp_path)] == [1]
