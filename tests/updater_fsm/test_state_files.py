"""Files under the state directory are never opened through a symlink (issue 21).

A link planted where the updater writes — the journal's temp file, a durable write's temp
file, the lock, the log — must not make it write, truncate or append anywhere else; the log
is 0640; ``verify-setup`` names every such link; ``serve`` refuses to start on one, in one
line, exit status 2.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from updater_fsm import durable
from updater_fsm.core.record import Record
from updater_fsm.journal import Journal
from updater_fsm.log_setup import LOG_FILE_MODE, configure_logging
from updater_fsm.state_layout import links_where_files_belong

REPO = Path(__file__).resolve().parents[2]
SECRET = b"root:x:0:0:precious\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_bytes(SECRET)
    return path


def test_a_durable_write_replaces_a_planted_temp_link_instead_of_following_it(
    tmp_path: Path, victim: Path
) -> None:
    target = tmp_path / "state" / "feedback.json"
    target.parent.mkdir()
    (target.parent / ".feedback.json.tmp").symlink_to(victim)
    durable.atomic_write_bytes(target, b"{}")
    assert target.read_bytes() == b"{}" and not target.is_symlink()
    assert victim.read_bytes() == SECRET


def test_the_journal_never_writes_through_its_temp_file_nor_reads_a_linked_journal(
    tmp_path: Path, victim: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    journal = Journal(state)
    journal.tmp.symlink_to(victim)
    journal.save(Record())
    assert victim.read_bytes() == SECRET
    assert journal.path.is_file() and not journal.path.is_symlink()
    # A journal that is a link is set aside, never read.
    journal.path.unlink()
    journal.path.symlink_to(victim)
    loaded = Journal(state).load()
    assert not journal.path.is_symlink() and victim.read_bytes() == SECRET
    assert [p.name.startswith("journal.json.corrupt-") for p in loaded.set_aside] == [True]


def test_the_log_is_never_appended_through_a_link_and_is_0640(tmp_path: Path, victim: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "updater.log").symlink_to(victim)
    with pytest.raises(durable.StateFileRefused, match="is a symbolic link"):
        configure_logging(logs, console=False)
    assert victim.read_bytes() == SECRET
    (logs / "updater.log").unlink()
    (logs / "updater.log").write_text("")
    os.chmod(logs / "updater.log", 0o644)  # left by an older updater
    configure_logging(logs, console=False)
    try:
        assert stat.S_IMODE((logs / "updater.log").stat().st_mode) == LOG_FILE_MODE == 0o640
    finally:
        configure_logging(None, console=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cli(*args: str, root: Path, state: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOPE_UPDATER_")}
    env |= {
        "PYTHONPATH": str(REPO),
        "TOPE_UPDATER_ROOT": str(root),
        "TOPE_UPDATER_STATE_DIR": str(state),
        "TOPE_UPDATER_PORT": str(_free_port()),
        "TOPE_UPDATER_SERVICE_CONTROL": "none",
        "TOPE_UPDATER_DEVICE_API_URL": "http://127.0.0.1:9",
    }
    return subprocess.run(
        [sys.executable, "-m", "http_shell.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("planted", ["updater.lock", "logs/updater.log"])
def test_serve_refuses_a_linked_lock_or_log_in_one_line(
    tmp_path: Path, victim: Path, planted: str
) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    assert (
        _cli("init", "--root", str(root), "--version", "1.0.0", root=root, state=state).returncode
        == 0
    )
    link = state / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim)
    result = _cli("serve", root=root, state=state)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        f"tope-updater: {link} is a symbolic link: remove it (tope-updater never follows"
        " links there)"
    ), result.stderr
    assert "Traceback" not in result.stderr
    assert victim.read_bytes() == SECRET
    check = _cli("verify-setup", root=root, state=state)
    assert check.returncode != 0 and f"{link} is a symbolic link" in check.stdout + check.stderr


def test_links_where_files_belong(tmp_path: Path, victim: Path) -> None:
    state = tmp_path / "state"
    (state / "downloads").mkdir(parents=True)
    (state / "backups").mkdir()
    assert links_where_files_belong(state) == []
    (state / "journal.json").symlink_to(victim)
    (state / "downloads" / "pkg.zip").symlink_to(victim)
    (state / "backups" / "etc-file").symlink_to(victim)  # a backed-up link: fine
    (state / "fleet").symlink_to(tmp_path)
    assert links_where_files_belong(state) == [
        f"{state / 'journal.json'} is a symbolic link where the updater writes a file: remove it",
        f"{state / 'downloads' / 'pkg.zip'} is a symbolic link where the updater writes a file:"
        " remove it",
        f"{state / 'fleet'} is a symbolic link: the updater never follows one",
    ]
