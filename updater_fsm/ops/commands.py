"""Running external commands without blocking the event loop: post_cmds and probes.

Every command runs in its own session (process group), so a timeout kills the whole tree
it started (a ``post_cmd`` like ``foo & sleep 100`` included), not just the shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import structlog

from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.ops.futures import mark_retrieved

log = structlog.get_logger(__name__)

#: How long to wait for a killed command's pipes to close before giving up on its output.
_DRAIN_AFTER_KILL_S = 2.0
#: How much of the end of each output stream a command's result keeps (for error details).
OUTPUT_TAIL_BYTES = 64 * 1024
_READ_CHUNK = 64 * 1024


class CommandResult(NamedTuple):
    """What a finished command returned.

    Attributes:
        returncode: exit status; negative ``-N`` when killed by signal ``N``.
        stdout: the end of standard output (at most ``max_output_bytes``), decoded as
            UTF-8 (invalid bytes replaced).
        stderr: the end of standard error, likewise.
        stdout_bytes, stderr_bytes: how many bytes each stream carried in all.
    """

    returncode: int
    stdout: str
    stderr: str
    stdout_bytes: int = 0
    stderr_bytes: int = 0


class CommandTimeout(TimeoutError):
    """A command did not finish within its timeout; its process group was SIGKILLed.

    Attributes:
        timeout_s: the limit that was exceeded.
        stdout: output captured before the kill.
        stderr: error output captured before the kill.
    """

    def __init__(self, command: str, timeout_s: float, stdout: str, stderr: str) -> None:
        super().__init__(f"{command}: timed out after {_fmt_seconds(timeout_s)} s")
        self.timeout_s = timeout_s
        self.stdout = stdout
        self.stderr = stderr


def _fmt_seconds(value: float) -> str:
    return f"{value:g}"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class _OutputTail:
    """The last ``limit`` bytes of a stream, and how many bytes went by in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.kept += chunk
        excess = len(self.kept) - self.limit
        if excess > 0:
            del self.kept[:excess]

    @property
    def dropped(self) -> int:
        return self.total - len(self.kept)

    def text(self) -> str:
        return self.kept.decode(errors="replace")


async def _drain(stream: asyncio.StreamReader | None, tail: _OutputTail) -> None:
    if stream is None:
        return
    while chunk := await stream.read(_READ_CHUNK):
        tail.feed(chunk)


async def run_command(
    command: str | Sequence[str],
    *,
    timeout_s: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    max_output_bytes: int = OUTPUT_TAIL_BYTES,
) -> CommandResult:
    """Run ``command`` and return its exit status and the end of its output.

    Output is read as it comes and only the last ``max_output_bytes`` of each stream are
    kept, so a command that prints gigabytes costs time, never memory (the rest is counted
    and discarded; a warning names how much).

    Args:
        command: a shell command line (run with ``/bin/sh -c``) or an argv list (run as is).
        timeout_s: wall-clock limit; on expiry the command's whole process group is killed.
        cwd: working directory (default: the updater's).
        env: the complete environment for the command (default: inherit the updater's).
        max_output_bytes: how much of the end of stdout, and of stderr, is kept.

    Returns:
        The :class:`CommandResult`; a non-zero exit is *not* an exception here.

    Raises:
        CommandTimeout: the command ran longer than ``timeout_s`` (it has been killed).
        OSError: the program could not be started (e.g. not found).
    """
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    shown = command if isinstance(command, str) else " ".join(command)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        start_new_session=True,
    )
    out, err = _OutputTail(max_output_bytes), _OutputTail(max_output_bytes)
    collect = asyncio.ensure_future(
        asyncio.gather(_drain(proc.stdout, out), _drain(proc.stderr, err), proc.wait())
    )
    try:
        await asyncio.wait_for(asyncio.shield(collect), timeout_s)
    except TimeoutError:
        _kill_group(proc.pid)
        try:
            await asyncio.wait_for(collect, _DRAIN_AFTER_KILL_S)
        except TimeoutError:
            # A grandchild left the group and still holds the pipes; stop reading them.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        _note_dropped(shown, out, err)
        raise CommandTimeout(shown, timeout_s, out.text(), err.text()) from None
    except BaseException:
        # Cancelled (or anything else): never leave the command running behind us.
        _kill_group(proc.pid)
        collect.cancel()
        # Nobody awaits it any more: retrieve its outcome so asyncio does not log it as lost.
        collect.add_done_callback(mark_retrieved)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    assert proc.returncode is not None
    _note_dropped(shown, out, err)
    return CommandResult(proc.returncode, out.text(), err.text(), out.total, err.total)


def _note_dropped(command: str, out: _OutputTail, err: _OutputTail) -> None:
    if out.dropped or err.dropped:
        log.warning(
            "command output truncated",
            command=command,
            stdout_bytes=out.total,
            stderr_bytes=err.total,
            kept_bytes_each=out.limit,
        )


def tail_lines(text: str, count: int = 5, max_chars: int = 400) -> str:
    """The last ``count`` non-empty lines of ``text`` joined by ``" | "``, at most ``max_chars``.

    Used to put the end of a command's output into a one-line error detail.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    joined = " | ".join(lines[-count:])
    return joined if len(joined) <= max_chars else "…" + joined[-(max_chars - 1) :]


def describe_exit(result: CommandResult) -> str:
    """``"exit 3: <last stderr lines>"`` or ``"killed by signal 9"`` for an error detail."""
    if result.returncode < 0:
        what = f"killed by signal {-result.returncode}"
    else:
        what = f"exit {result.returncode}"
    output = tail_lines(result.stderr) or tail_lines(result.stdout)
    return f"{what}: {output}" if output else what


async def run_post_cmds(
    commands: Sequence[str],
    *,
    timeout_s: float = 30.0,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run a module's ``post_cmds`` one after the other, each with ``/bin/sh -c``.

    Stops at the first failure.

    Args:
        commands: shell command lines, in manifest order.
        timeout_s: limit for *each* command (contract: 30 s); its process group is killed.
        cwd: working directory for the commands.
        env: complete environment for the commands (default: inherit).

    Raises:
        UpdaterError: ``POST_CMD_FAILED`` with ``"<cmd>: exit 3: <last stderr lines>"``,
            ``"<cmd>: timed out after 30 s"`` or ``"<cmd>: cannot run: <reason>"``.
    """
    for command in commands:
        log.info("post_cmd.start", command=command)
        try:
            result = await run_command(command, timeout_s=timeout_s, cwd=cwd, env=env)
        except CommandTimeout as exc:
            log.error("post_cmd.timeout", command=command, timeout_s=timeout_s)
            raise UpdaterError(ErrorCode.POST_CMD_FAILED, str(exc)) from exc
        except OSError as exc:
            log.error("post_cmd.unrunnable", command=command, error=str(exc))
            raise UpdaterError(ErrorCode.POST_CMD_FAILED, f"{command}: cannot run: {exc}") from exc
        if result.returncode != 0:
            log.error("post_cmd.failed", command=command, returncode=result.returncode)
            raise UpdaterError(ErrorCode.POST_CMD_FAILED, f"{command}: {describe_exit(result)}")
        log.info("post_cmd.done", command=command)
