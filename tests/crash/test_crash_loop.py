"""Steps that take the updater down with them: bounded output and the crash-loop breaker.

Each test runs the real ``tope-updater serve`` process and restarts it after every death,
as systemd's ``Restart=always`` does on a device. A step that kills the process every time
it runs must end in a clear outcome after ``resume_limit`` (3) interruptions, never loop;
a command that prints hundreds of megabytes must not kill it at all under the unit's
``MemoryMax=128M`` (a real memory cgroup here).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.crash import harness as h
from tests.support.memory_cgroup import memory_cgroup
from tests.support.package_server import ThreadedPackageServer
from updater_fsm import journal as journal_mod

MEMORY_MAX = 128 * 1024 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedPackageServer]:
    with h.package_server() as srv:
        yield srv


def _rolled_back() -> h.Scenario:
    """The good package, expected to end rolled back to the factory version."""
    return attrs.evolve(
        h.scenario("good"),
        outcome="failed",
        error_prefix="ROLLBACK_LEVEL_1_SUCCESS",
        final_version=h.FACTORY_VERSION,
    )


def _drive_with_restarts(rig: h.Rig, max_restarts: int) -> tuple[dict[str, Any], int]:
    """Act as device-api and as ``Restart=always``: restart the updater whenever it dies."""
    restarts = 0
    proc = rig.start()
    while True:
        final = h.drive(rig, proc, timeout=60)
        if final is not None:
            return final, restarts
        assert proc.wait_exit(10) == -signal.SIGKILL, proc.log_tail()
        restarts += 1
        assert restarts <= max_restarts, f"still dying after {restarts} restarts"
        proc = rig.start()


def test_a_post_cmd_that_kills_the_updater_is_rolled_back_after_three_tries(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    runs = tmp_path / "post_cmd_runs"
    post_cmds = [f"echo first >> {runs}", f"echo killer >> {runs}; kill -9 $PPID"]
    rig = h.Rig(tmp_path, _rolled_back(), server, post_cmds=post_cmds)
    try:
        final, restarts = _drive_with_restarts(rig, max_restarts=3)
        assert restarts == 3
        assert final["error"].startswith(
            "ROLLBACK_LEVEL_1_SUCCESS: v1.0.0 (cause: RESUME_LIMIT: switching interrupted 3 times"
        ), final
        # The first command's completion was journaled: it never ran again. The killer ran
        # once per attempt; the rollback runs no post_cmds.
        assert runs.read_text().splitlines() == ["first", "killer", "killer", "killer"]
        h.check_invariants(rig, final)
    finally:
        rig.close()


def test_a_health_probe_that_kills_the_updater_is_rolled_back_after_three_tries(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    rig = h.Rig(tmp_path, _rolled_back(), server, health={"command": "kill -9 $PPID"})
    try:
        final, restarts = _drive_with_restarts(rig, max_restarts=3)
        assert restarts == 3
        assert "RESUME_LIMIT: health_check interrupted 3 times" in final["error"], final
        h.check_invariants(rig, final)
    finally:
        rig.close()


def test_resume_limit_is_configurable(tmp_path: Path, server: ThreadedPackageServer) -> None:
    rig = h.Rig(
        tmp_path,
        _rolled_back(),
        server,
        post_cmds=["kill -9 $PPID"],
        env={"TOPE_UPDATER_RESUME_LIMIT": "1"},
    )
    try:
        final, restarts = _drive_with_restarts(rig, max_restarts=1)
        assert restarts == 1
        assert "RESUME_LIMIT: switching interrupted 1 times" in final["error"], final
    finally:
        rig.close()


def test_a_post_cmd_printing_400_mb_installs_under_memory_max(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    flood = "head -c 400000000 /dev/zero | tr '\\0' x; echo; echo flooded"
    rig = h.Rig(tmp_path, h.scenario("good"), server, post_cmds=[flood])
    try:
        with memory_cgroup(MEMORY_MAX) as cgroup:
            proc = rig.start(wait=False)
            cgroup.add(proc.popen.pid)
            proc.wait_ready()
            final = h.drive(rig, proc, timeout=120)
            assert final is not None, f"the updater died: {proc.log_tail()}"
            assert cgroup.oom_kills() == 0
            peak = cgroup.peak_bytes()
        h.check_invariants(rig, final)
        assert peak < MEMORY_MAX, peak
        record = journal_mod.decode(rig.journal_path.read_bytes())
        assert record.interruptions == 0
    finally:
        rig.close()
