"""``systemd/updater-guard.sh``, the unit's ``ExecStartPre``, run as systemd runs it: a
real POSIX sh on a real prefix directory (slots, links, probation files). ``systemctl`` is
a stand-in on ``PATH`` that answers the last exit status, the one thing the guard asks it.

Under a real systemd the guard is exercised by ``tests/e2e/test_self_update.py``.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GUARD = REPO / "systemd" / "updater-guard.sh"
UNIT = "tope-updater.service"


def make_prefix(tmp_path: Path, *versions: str, current: str) -> Path:
    prefix = tmp_path / "prefix"
    for version in versions:
        bin_dir = prefix / "versions" / version / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "tope-updater").write_text("#!/bin/sh\n")
    os.symlink(f"versions/{current}", prefix / "current")
    return prefix


def put_on_probation(prefix: Path, version: str, previous: str, *, deadline_in_s: int) -> None:
    deadline = int(time.time()) + deadline_in_s
    (prefix / "probation").write_text(
        f"version={version}\nprevious={previous}\ndeadline={deadline}\nmax_starts=3\n"
    )


def run_guard(prefix: Path, tmp_path: Path, exit_status: str = "1", *mode: str) -> str:
    """Run the guard; the stand-in systemctl answers ``exit_status`` and appends its
    arguments to ``<tmp_path>/systemctl.calls``."""
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir(exist_ok=True)
    systemctl = fake_bin / "systemctl"
    calls = tmp_path / "systemctl.calls"
    systemctl.write_text(f'#!/bin/sh\necho "$*" >> {calls}\necho {exit_status}\n')
    systemctl.chmod(0o755)
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin"}
    proc = subprocess.run(
        ["/bin/sh", str(GUARD), *mode, str(prefix), UNIT],
        capture_output=True, text=True, timeout=10, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr  # the guard never fails a start
    return proc.stderr


def record(prefix: Path) -> dict[str, str]:
    text = (prefix / "updater-rollback").read_text()
    return dict(line.split("=", 1) for line in text.splitlines())


def test_no_probation_changes_nothing(tmp_path: Path) -> None:
    prefix = make_prefix(tmp_path, "0.1.0", current="0.1.0")
    assert run_guard(prefix, tmp_path) == ""
    assert sorted(os.listdir(prefix)) == ["current", "versions"]


def test_three_failed_starts_switch_back_and_leave_a_record(tmp_path: Path) -> None:
    prefix = make_prefix(tmp_path, "0.1.0", "0.2.0", current="0.2.0")
    put_on_probation(prefix, "0.2.0", "0.1.0", deadline_in_s=600)
    for start in (1, 2, 3):
        assert f"start {start} of 3" in run_guard(prefix, tmp_path)
        assert os.readlink(prefix / "current") == "versions/0.2.0"
        assert (prefix / "probation.starts").read_text().strip() == str(start)
    out = run_guard(prefix, tmp_path, exit_status="1")
    assert "back to 0.1.0" in out, out
    assert os.readlink(prefix / "current") == "versions/0.1.0"
    assert record(prefix) == {
        "version": "0.2.0",
        "previous": "0.1.0",
        "reason": "exited 3 times during probation; last exit status 1",
    }
    assert not (prefix / "probation").exists() and not (prefix / "probation.starts").exists()
    # The next start runs the old updater: no probation any more, nothing moves.
    assert run_guard(prefix, tmp_path) == ""
    assert os.readlink(prefix / "current") == "versions/0.1.0"


def test_a_start_after_the_deadline_switches_back(tmp_path: Path) -> None:
    prefix = make_prefix(tmp_path, "0.1.0", "0.2.0", current="0.2.0")
    put_on_probation(prefix, "0.2.0", "0.1.0", deadline_in_s=-1)
    run_guard(prefix, tmp_path, exit_status="0")
    assert os.readlink(prefix / "current") == "versions/0.1.0"
    assert record(prefix)["reason"] == "not confirmed before its probation deadline (0 starts)"


def test_a_stale_probation_is_dropped(tmp_path: Path) -> None:
    """install.sh moved `current` elsewhere: the guard never switches an install back."""
    prefix = make_prefix(tmp_path, "0.1.0", "0.2.0", "0.3.0", current="0.3.0")
    put_on_probation(prefix, "0.2.0", "0.1.0", deadline_in_s=-1)
    assert "probation dropped" in run_guard(prefix, tmp_path)
    assert os.readlink(prefix / "current") == "versions/0.3.0"
    assert not (prefix / "probation").exists() and not (prefix / "updater-rollback").exists()


@pytest.mark.parametrize(
    "text",
    [
        "version=0.2.0\nprevious=../../etc\ndeadline=1\n",
        "version=0.2.0\nprevious=0.1.0\ndeadline=x\n",
    ],
)
def test_an_unreadable_probation_is_ignored(tmp_path: Path, text: str) -> None:
    prefix = make_prefix(tmp_path, "0.1.0", "0.2.0", current="0.2.0")
    (prefix / "probation").write_text(text)
    assert "unreadable" in run_guard(prefix, tmp_path)
    assert os.readlink(prefix / "current") == "versions/0.2.0"
    assert not (prefix / "probation").exists()


def test_a_missing_previous_slot_keeps_current(tmp_path: Path) -> None:
    prefix = make_prefix(tmp_path, "0.2.0", current="0.2.0")
    put_on_probation(prefix, "0.2.0", "0.1.0", deadline_in_s=-1)
    assert "previous slot 0.1.0 is gone: kept" in run_guard(prefix, tmp_path)
    assert os.readlink(prefix / "current") == "versions/0.2.0"


def test_the_deadline_timer_restarts_an_updater_still_on_probation(tmp_path: Path) -> None:
    """``--deadline`` (the transient timer): a restart, so the start-time guard judges."""
    prefix = make_prefix(tmp_path, "0.1.0", "0.2.0", current="0.2.0")
    calls = tmp_path / "systemctl.calls"
    put_on_probation(prefix, "0.2.0", "0.1.0", deadline_in_s=600)
    assert run_guard(prefix, tmp_path, "0", "--deadline") == ""
    assert not calls.exists()  # before the deadline: nothing
    put_on_probation(prefix, "0.2.0", "0.1.0", deadline_in_s=-1)
    assert "past its deadline" in run_guard(prefix, tmp_path, "0", "--deadline")
    assert calls.read_text() == f"restart --no-block {UNIT}\n"
    assert os.readlink(prefix / "current") == "versions/0.2.0"  # the start moves it, not this
    (prefix / "probation").unlink()  # confirmed meanwhile: the timer does nothing
    calls.unlink()
    assert run_guard(prefix, tmp_path, "0", "--deadline") == "" and not calls.exists()
