"""The updater opens the progress display when an install begins, and never depends on it.

A real ``tope-updater serve`` with ``screen_command`` set: the command is spawned once per
install (not again while it is open), detached (the install does not wait for it), and a
display that cannot start changes nothing in the update.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crash import harness as h
from tests.support.package_server import ThreadedPackageServer


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedPackageServer]:
    with h.package_server() as srv:
        yield srv


def test_screen_command_is_spawned_once_and_never_waited_for(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    """The broken package asks for the display twice (install, then rollback): one spawn."""
    opened = tmp_path / "opened"
    # A display that stays open longer than the whole install.
    command = f"echo $$ >> {opened}; sleep 30"
    env = {"TOPE_UPDATER_SCREEN_COMMAND": command}
    rig = h.Rig(tmp_path, h.scenario("bad"), server, env=env)
    try:
        proc = rig.start()
        started = time.monotonic()
        final = h.drive(rig, proc, timeout=30)
        assert final is not None, proc.log_tail()
        h.check_invariants(rig, final)
        assert time.monotonic() - started < 25, "the install waited for the display"
        assert h.wait_until(opened.exists, 5)
        assert len(opened.read_text().split()) == 1, "spawned again while open"
        assert proc.terminate() == 0
    finally:
        rig.close()
        for pid in opened.read_text().split() if opened.exists() else ():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGKILL)  # its own session: the whole group


def test_a_display_that_cannot_start_changes_nothing(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    env = {"TOPE_UPDATER_SCREEN_COMMAND": "/nonexistent/screen --fullscreen; exit 3"}
    rig = h.Rig(tmp_path, h.scenario("good"), server, env=env)
    try:
        proc = rig.start()
        final = h.drive(rig, proc, timeout=30)
        assert final is not None, proc.log_tail()
        h.check_invariants(rig, final)
        assert proc.terminate() == 0
    finally:
        rig.close()
