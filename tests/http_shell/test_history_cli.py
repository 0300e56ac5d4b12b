"""``tope-updater history``: the table for people and its ``--limit``."""

from __future__ import annotations

import pytest

from http_shell.cli.jobs import history_table
from http_shell.cli.main import build_parser


def test_history_table_one_row_per_job_newest_first() -> None:
    entries = [
        {
            "job_id": 2,
            "kind": "manual_rollback",
            "from_version": "1.1.0",
            "to_version": "1.0.0",
            "source": "api",
            "fleet_action": None,
            "ended_at": 0.0,
            "outcome": "success",
            "error_code": None,
            "rollback_level": 2,
        },
        {
            "job_id": 1,
            "kind": "update",
            "from_version": None,
            "to_version": "1.1.0",
            "source": "fleet",
            "fleet_action": "17",
            "ended_at": 86400.5,
            "outcome": "rolled_back",
            "error_code": "ROLLBACK_LEVEL_1_SUCCESS",
            "rollback_level": 1,
        },
    ]
    lines = history_table(entries).splitlines()
    assert lines[0].split() == [
        "JOB", "ENDED", "(UTC)", "KIND", "FROM", "TO", "OUTCOME", "ERROR", "LEVEL", "SOURCE"
    ]  # fmt: skip
    assert lines[1].split() == [
        "2", "1970-01-01", "00:00:00", "rollback", "v1.1.0", "v1.0.0", "success", "-", "2", "api"
    ]  # fmt: skip
    assert lines[2].split() == [
        "1", "1970-01-02", "00:00:00", "install", "-", "v1.1.0", "rolled_back",
        "ROLLBACK_LEVEL_1_SUCCESS", "1", "fleet", "#17",
    ]  # fmt: skip
    assert history_table([]) == "no jobs in the history yet"


def test_history_limit_is_checked_before_asking(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["history", "--limit", "5"]).limit == 5
    assert parser.parse_args(["history"]).limit is None
    for bad in ("0", "101", "x", "-1"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["history", "--limit", bad])
        assert exc.value.code == 2
    assert "from 1 to 100" in capsys.readouterr().err
