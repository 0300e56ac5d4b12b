"""post_cmds and the command runner, with real shells and real process groups."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from pathlib import Path

import pytest

from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.ops.commands import (
    CommandTimeout,
    describe_exit,
    run_command,
    run_post_cmds,
    tail_lines,
)


async def test_post_cmds_run_in_order_in_cwd(tmp_path: Path) -> None:
    log = tmp_path / "log"
    await run_post_cmds(
        [f"echo one >> {log}", f"pwd >> {log}", f"echo three >> {log}"],
        cwd=tmp_path,
        timeout_s=5,
    )
    assert log.read_text().splitlines() == ["one", str(tmp_path), "three"]


async def test_post_cmds_env_replaces_environment(tmp_path: Path) -> None:
    out = tmp_path / "out"
    await run_post_cmds(
        [f'echo "$TOPE_X:${{HOME:-unset}}" > {out}'],
        env={"TOPE_X": "42", "PATH": os.environ["PATH"]},
    )
    assert out.read_text().strip() == "42:unset"


async def test_post_cmd_nonzero_exit_stops_and_reports_stderr(tmp_path: Path) -> None:
    after = tmp_path / "after"
    cmd = "echo noise; echo first >&2; echo 'migration failed: table x' >&2; exit 3"
    with pytest.raises(UpdaterError) as info:
        await run_post_cmds([cmd, f"touch {after}"], timeout_s=5)
    err = info.value
    assert err.code is ErrorCode.POST_CMD_FAILED
    assert err.detail == f"{cmd}: exit 3: first | migration failed: table x"
    assert str(err).startswith("POST_CMD_FAILED: ")
    assert not after.exists(), "commands after a failing one must not run"


async def test_post_cmd_timeout_kills_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    # The background child would outlive a kill of only the shell.
    cmd = f"sleep 30 & echo $! > {pidfile}; wait"
    started = time.monotonic()
    with pytest.raises(UpdaterError) as info:
        await run_post_cmds([cmd], timeout_s=0.5)
    elapsed = time.monotonic() - started
    assert info.value.code is ErrorCode.POST_CMD_FAILED
    assert info.value.detail == f"{cmd}: timed out after 0.5 s"
    assert elapsed < 3
    bg = int(pidfile.read_text())
    for _ in range(100):  # up to 2 s
        if _gone(bg):
            break
        await asyncio.sleep(0.02)
    assert _gone(bg), "the background child of the timed-out command survived"


def _gone(pid: int) -> bool:
    """Dead or a zombie (killed, waiting for whichever init adopted it to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return ") Z " in stat


async def test_post_cmd_unrunnable_cwd() -> None:
    with pytest.raises(UpdaterError) as info:
        await run_post_cmds(["true"], cwd=Path("/nonexistent/dir"))
    assert info.value.code is ErrorCode.POST_CMD_FAILED
    assert "cannot run" in info.value.detail


async def test_no_post_cmds_is_fine() -> None:
    await run_post_cmds([])


async def test_run_command_argv_and_output() -> None:
    result = await run_command(["/bin/sh", "-c", "echo out; echo err >&2; exit 7"], timeout_s=5)
    assert result[:3] == (7, "out\n", "err\n")
    assert (result.stdout_bytes, result.stderr_bytes) == (4, 4)
    assert describe_exit(result) == "exit 7: err"


async def test_run_command_timeout_carries_partial_output() -> None:
    with pytest.raises(CommandTimeout) as info:
        await run_command("echo started; sleep 10", timeout_s=0.3)
    assert info.value.stdout == "started\n"
    assert str(info.value) == "echo started; sleep 10: timed out after 0.3 s"


async def test_run_command_signal_death_described() -> None:
    result = await run_command("kill -9 $$", timeout_s=5)
    assert result.returncode == -9
    assert describe_exit(result) == "killed by signal 9"


def test_tail_lines_keeps_end_and_bounds_length() -> None:
    assert tail_lines("a\n\nb\nc\n", count=2) == "b | c"
    long = "\n".join("x" * 100 for _ in range(10))
    cut = tail_lines(long, count=10, max_chars=50)
    assert len(cut) == 50 and cut.startswith("…")


async def test_run_command_keeps_only_the_end_of_huge_output() -> None:
    """A command printing 200 MB costs time, not memory: only the tail is kept."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cmd = "head -c 200000000 /dev/zero | tr '\\0' x; echo; echo last-out; echo last-err >&2"
    result = await run_command(cmd, timeout_s=60, max_output_bytes=4096)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert result.returncode == 0
    assert len(result.stdout) <= 4096
    assert result.stdout.endswith("last-out\n")
    assert result.stderr == "last-err\n"
    assert grown_kib < 50 * 1024, f"peak RSS grew by {grown_kib} KiB"


async def test_post_cmd_flooding_output_fails_with_its_tail(tmp_path: Path) -> None:
    cmd = "head -c 50000000 /dev/zero | tr '\\0' y; echo; echo 'the real reason' >&2; exit 4"
    with pytest.raises(UpdaterError) as info:
        await run_post_cmds([cmd], timeout_s=60)
    assert info.value.detail.endswith("exit 4: the real reason")


async def test_timed_out_command_output_is_bounded_too() -> None:
    cmd = "while :; do head -c 1000000 /dev/zero | tr '\\0' z; done"
    with pytest.raises(CommandTimeout) as info:
        await run_command(cmd, timeout_s=1, max_output_bytes=1024)
    assert 0 < len(info.value.stdout) <= 1024


async def test_cancelled_command_is_killed_and_leaves_nothing_unretrieved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller cancelled mid-command (a health probe cut short) kills the command's group,
    and the reader it abandons is not reported by asyncio as an exception never retrieved."""
    pid_file = tmp_path / "pid"
    task = asyncio.ensure_future(run_command(f"echo $$ > {pid_file}; exec sleep 30", timeout_s=60))
    while not pid_file.exists() or not pid_file.read_text().strip():
        await asyncio.sleep(0.01)
    pid = int(pid_file.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail(f"command {pid} still running after its caller was cancelled")
    await asyncio.sleep(0.05)
    gc.collect()
    await asyncio.sleep(0)
    lost = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not lost, lost
