"""``download``/``update``/``rollback --watch`` through the real CLI against a real ``serve``.

The outcome is the last line, whole, whatever the terminal's width; a bar per stage that
never goes back; no line twice; nothing redrawn when the output is piped; the exit status
says whether the job ended as asked.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.http_shell.test_cli import REPO, _env, cli
from tests.support.package_server import Behaviour, ThreadedPackageServer

#: The width of the pseudo-terminal: far narrower than the outcome of a failed update.
NARROW = 60
PAYLOAD = 1_500_000
RATE_BPS = 1_000_000.0  # the download takes 1.5 s: several snapshots of it


@pytest.fixture
def updater(tmp_path: Path, serve_port: int) -> Iterator[dict[str, str]]:
    """A sandbox ``serve`` on a free port (short settle time); yields the CLI's environment."""
    env = _env(TOPE_UPDATER_PORT=str(serve_port), TOPE_UPDATER_SETTLE_S="0.3")
    argv = [sys.executable, "-m", "http_shell.cli", "serve", "--sandbox", str(tmp_path / "sb")]
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while cli("progress", env=env).returncode != 0:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "serve did not answer"
            time.sleep(0.1)
        yield env
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.fixture
def files() -> Iterator[ThreadedPackageServer]:
    with ThreadedPackageServer() as srv:
        yield srv


def _package(tmp_path: Path, version: str, *, healthy: bool) -> Path:
    """A package of ``version`` for the sandbox; its health check fails unless ``healthy``."""
    src = tmp_path / f"src-{version}"
    (src / "bin").mkdir(parents=True)
    hello = src / "bin" / "hello"
    hello.write_text("#!/bin/sh\nsleep 1\n" + ("exit 0\n" if healthy else "exit 1\n"))
    hello.chmod(0o755)
    (src / "share").mkdir()
    (src / "share" / "blob.bin").write_bytes(os.urandom(PAYLOAD))
    root = (tmp_path / "sb" / "root").resolve()
    (src / "tope-package.toml").write_text(
        '[modules."bin/hello"]\nprocess_name = "hello"\nrestart_order = 1\n'
        f'health = {{ command = "{root}/versions/current/bin/hello", timeout_s = 5 }}\n'
    )
    out = tmp_path / f"tope-{version}.zip"
    built = cli(
        "package", "build", str(src), "--version", version, "--root", str(root), "-o", str(out),
        env=_env(),
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    return out


def _download_args(files: ThreadedPackageServer, package: Path, version: str) -> list[str]:
    url = files.call(files.server.add_file, package.name, package, Behaviour(rate_bps=RATE_BPS))
    assert isinstance(url, str)
    return ["download", url, "--version", version, "--file", str(package), "--watch"]


def _in_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI with its output on a pseudo-terminal :data:`NARROW` columns wide."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, NARROW, 0, 0))
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "http_shell.cli", *argv],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    status = proc.wait(60)
    return status, b"".join(chunks).decode().replace("\r\n", "\n")


def _bars(line: str) -> list[tuple[int, str]]:
    """The (percent, stage/state) of each drawing of a live line."""
    drawn = [d for d in line.split("\r\x1b[K") if d]
    found = [re.match(r"\[[#-]+\]\s+(\d+)%\s+(\S+)", d) for d in drawn]
    assert all(found), line
    return [(int(m[1]), m[2]) for m in found if m]


def _piped_lines(out: str) -> list[str]:
    assert "\r" not in out and "\x1b" not in out
    lines = out.splitlines()
    assert lines and all(n == 1 for n in Counter(lines).values()), lines
    return lines


def test_piped_watch_one_line_per_step_then_the_outcome(
    tmp_path: Path, updater: dict[str, str], files: ThreadedPackageServer
) -> None:
    package = _package(tmp_path, "1.1.0", healthy=True)
    download = cli(*_download_args(files, package, "1.1.0"), env=updater)
    assert download.returncode == 0, download.stdout + download.stderr
    lines = _piped_lines(download.stdout)
    assert lines[-1] == "Package v1.1.0 verified, ready to install"
    steps = [line.split()[2] for line in lines if line.startswith("[")]
    assert steps[0] == "downloading/downloading" and "verifying/verifying" in steps, lines
    assert len(steps) == len(set(steps))

    update = cli("update", "1.1.0", "--watch", env=updater)
    assert update.returncode == 0, update.stdout + update.stderr
    lines = _piped_lines(update.stdout)
    assert lines[-1] == "Update to v1.1.0 complete"
    assert "installing/health_check" in update.stdout

    rollback = cli("rollback", "--watch", env=updater)
    assert rollback.returncode == 0, rollback.stdout + rollback.stderr
    lines = _piped_lines(rollback.stdout)
    assert lines[-1] == "Rolled back to v1.0.0"


def test_a_failed_update_ends_on_its_whole_outcome_in_a_narrow_terminal(
    tmp_path: Path, updater: dict[str, str], files: ThreadedPackageServer
) -> None:
    package = _package(tmp_path, "1.1.0", healthy=False)
    status, out = _in_a_terminal(_download_args(files, package, "1.1.0"), updater)
    assert status == 0, out
    lines = out.rstrip("\n").split("\n")  # not splitlines(): it splits at "\r" too
    assert lines[-1] == "Package v1.1.0 verified, ready to install"
    live = [line for line in lines if "\r\x1b[K" in line]
    stages = [_bars(line) for line in live]
    assert stages[0][0][1] == "downloading/downloading", out
    for bars in stages:  # one stage per line, its bar never going back
        assert len({state.split("/")[0] for _, state in bars}) == 1, bars
        percents = [pct for pct, _ in bars]
        assert percents == sorted(percents), bars
    assert len({bars[0][1].split("/")[0] for bars in stages}) == len(stages)
    assert all(len(d) < NARROW for line in live for d in line.split("\r\x1b[K")), out

    status, out = _in_a_terminal(["update", "1.1.0", "--watch"], updater)
    assert status == 1, out
    lines = out.rstrip("\n").split("\n")
    last = lines[-1]
    assert last == (
        "Update failed: ROLLBACK_LEVEL_1_SUCCESS: v1.0.0"
        " (cause: HEALTH_CHECK_FAILED: hello.service: exit 1)"
    ), out
    installing = [_bars(line) for line in lines if "\r\x1b[K" in line]
    for bars in installing:
        percents = [pct for pct, _ in bars]
        assert percents == sorted(percents), bars
    assert out.count("ROLLBACK_LEVEL_1_SUCCESS") == 1, out
