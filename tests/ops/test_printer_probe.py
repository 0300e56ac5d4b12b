"""The busy probe with real shells: every failure mode reads as busy, with a clear reason."""

from __future__ import annotations

import resource
import time
from pathlib import Path

from updater_fsm.ops.printer_probe import PROBE_OUTPUT_LIMIT, probe_printer


async def test_exit_0_is_free_and_the_first_line_is_the_reason() -> None:
    status = await probe_printer("echo; echo '  standby  '; echo more", timeout_s=5)
    assert status.free and status.reason == "standby"


async def test_any_other_exit_is_busy_with_the_first_line() -> None:
    status = await probe_printer("echo 'printing benchy.gcode, 43 %'; exit 1", timeout_s=5)
    assert not status.free and status.reason == "printing benchy.gcode, 43 %"


async def test_a_silent_failure_still_says_why() -> None:
    status = await probe_printer("echo 'moonraker: connection refused' >&2; exit 7", timeout_s=5)
    assert not status.free
    assert status.reason == "the busy probe says busy (exit 7: moonraker: connection refused)"


async def test_a_probe_that_is_not_executable_is_busy(tmp_path: Path) -> None:
    probe = tmp_path / "probe.sh"
    probe.write_text("#!/bin/sh\nexit 0\n")
    probe.chmod(0o644)
    status = await probe_printer(str(probe), timeout_s=5)
    assert not status.free
    assert "exit 126" in status.reason and "Permission denied" in status.reason


async def test_a_missing_probe_is_busy(tmp_path: Path) -> None:
    status = await probe_printer(str(tmp_path / "nope"), timeout_s=5)
    assert not status.free and "exit 127" in status.reason


async def test_a_hanging_probe_is_busy_after_its_timeout() -> None:
    started = time.monotonic()
    status = await probe_printer("sleep 30", timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert not status.free
    assert status.reason == "the busy probe did not answer within 0.5 s"


async def test_a_probe_printing_10_mb_is_busy_in_bounded_memory() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    status = await probe_printer("head -c 10000000 /dev/zero | tr '\\0' x; exit 0", timeout_s=30)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert not status.free, "exit 0 with 10 MB of output is not a status line"
    assert status.reason == (
        f"the busy probe printed 10000000 bytes (more than {PROBE_OUTPUT_LIMIT}): not a status line"
    )
    assert grown_kib < 20 * 1024, f"peak RSS grew by {grown_kib} KiB"


async def test_a_long_first_line_is_cut_for_people() -> None:
    status = await probe_printer("printf 'x%.0s' $(seq 1 500); exit 1", timeout_s=5)
    assert not status.free and len(status.reason) == 200 and status.reason.endswith("…")
