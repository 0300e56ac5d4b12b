"""The ``tope-updater`` command line against a real ``serve`` process.

Client commands must find the updater the way ``serve`` is configured (``--config``,
``TOPE_UPDATER_HOST``/``TOPE_UPDATER_PORT``), print tables for people and JSON with
``--json``; configuration problems are one line and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from http_shell.cli.jobs import versions_table
from http_shell.cli.options import connect_host

REPO = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOPE_UPDATER_")}
    env["PYTHONPATH"] = str(REPO)
    env["TOPE_UPDATER_DEVICE_API_URL"] = "http://127.0.0.1:9"
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "http_shell.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def served(tmp_path: Path, serve_port: int) -> Iterator[dict[str, str]]:
    """A sandbox ``serve`` on a free port; yields the environment that names that port."""
    env = _env(TOPE_UPDATER_PORT=str(serve_port))
    argv = [sys.executable, "-m", "http_shell.cli", "serve", "--sandbox", str(tmp_path / "sb")]
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", int(env["TOPE_UPDATER_PORT"])), 1):
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "serve did not listen"
                time.sleep(0.05)
        yield env
    finally:
        proc.terminate()
        proc.wait(15)


def test_client_commands_find_the_updater_from_the_environment(served: dict[str, str]) -> None:
    result = cli("progress", "--json", env=served)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["data"]["stage"] == "idle"


def test_client_commands_find_the_updater_from_the_config_file(
    served: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "updater.toml"
    config.write_text(f"port = {served['TOPE_UPDATER_PORT']}\n")
    result = cli("progress", "--json", "--config", str(config), env=_env())
    assert result.returncode == 0, result.stderr


def test_url_flag_wins(served: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{served['TOPE_UPDATER_PORT']}"
    result = cli("progress", "--json", "--url", url, env=_env(TOPE_UPDATER_PORT="9"))
    assert result.returncode == 0, result.stderr
    unreachable = cli("progress", env=_env(TOPE_UPDATER_PORT="9"))
    assert unreachable.returncode == 1
    assert "nothing answers at http://127.0.0.1:9 (connection refused)" in unreachable.stderr


def test_versions_prints_a_table_and_json(served: dict[str, str]) -> None:
    table = cli("versions", env=served)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "LINKS", "SIZE"]
    assert lines[1].startswith("v1.0.0") and "current, factory" in lines[1]
    assert "(previous: none)" in lines
    assert "None" not in table.stdout and "{" not in table.stdout
    assert lines[-1].startswith("rollback floor: v1.0.0 ")  # started from what runs
    data = json.loads(cli("versions", "--json", env=served).stdout)["data"]
    assert data["current"] == "1.0.0" and data["previous"] is None
    assert data["rollback_floor"] == "1.0.0"


def test_versions_table_sizes() -> None:
    data = {
        "current": "1.1.0",
        "previous": "1.0.0",
        "factory": "1.0.0",
        "installed": [
            {"version": "1.0.0", "size_bytes": 512, "links": ["previous", "factory"]},
            {"version": "1.1.0", "size_bytes": 12_345_678, "links": ["current"]},
        ],
    }
    assert versions_table(data).splitlines() == [
        "VERSION  LINKS                   SIZE",
        "v1.0.0   previous, factory      512 B",
        "v1.1.0   current              12.3 MB",
        "rollback floor: none recorded yet",
    ]
    data["rollback_floor"] = "1.2.0"
    assert versions_table(data).splitlines()[-1] == (
        "rollback floor: v1.2.0 (the highest version this device has run; with"
        " allow_downgrade off, nothing older installs)"
    )


def test_verify_setup_json(tmp_path: Path) -> None:
    root = tmp_path / "root"
    init = cli("init", "--root", str(root), "--version", "1.0.0", env=_env())
    assert init.returncode == 0, init.stderr
    result = cli("verify-setup", "--json", "--root", str(root), env=_env())
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["links"] == {"current": "1.0.0", "previous": None, "factory": "1.0.0"}


def _tree(path: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    return path


def test_package_build_delta_from_a_package_and_from_a_tree(tmp_path: Path) -> None:
    """``package build --delta-from`` with the base's package, or its tree + --base-version."""
    core = b"".join(b"def f%d(x):\n    return x * %d\n" % (i, i) for i in range(2000))
    v1 = _tree(tmp_path / "v1", {"lib/core.py": core, "lib/same.py": b"same\n" * 50})
    v2 = _tree(
        tmp_path / "v2",
        {"lib/core.py": core.replace(b"x * 7\n", b"x * 7 + 1\n"), "lib/same.py": b"same\n" * 50},
    )
    root = str(tmp_path / "root")
    base = tmp_path / "full-1.1.0.zip"
    build = ("package", "build", "--root", root, "--json")
    full = cli(*build, str(v1), "--version", "1.1.0", "-o", str(base), env=_env())
    assert full.returncode == 0, full.stderr
    assert "base_version" not in json.loads(full.stdout)

    out = tmp_path / "delta-a.zip"
    from_pkg = cli(
        *build, str(v2), "--version", "1.2.0", "-o", str(out), "--delta-from", str(base), env=_env()
    )
    assert from_pkg.returncode == 0, from_pkg.stderr
    fields = json.loads(from_pkg.stdout)
    assert fields["base_version"] == "1.1.0"
    assert fields["modules"] == 2
    assert fields["package_size"] == out.stat().st_size < base.stat().st_size

    tree_out = tmp_path / "delta-b.zip"
    args = (str(v2), "--version", "1.2.0", "-o", str(tree_out), "--delta-from", str(v1))
    no_version = cli(*build, *args, env=_env())
    assert no_version.returncode != 0
    assert no_version.stderr.strip() == (
        f"tope-updater: package build failed: {v1} is a tree: give its version (--base-version)"
    )
    assert not tree_out.exists()
    from_tree = cli(*build, *args, "--base-version", "1.1.0", env=_env())
    assert from_tree.returncode == 0, from_tree.stderr
    # The same delta, whatever form the base takes (the build is deterministic).
    assert json.loads(from_tree.stdout)["package_sha256"] == fields["package_sha256"]

    plain = ("package", "build", "--root", root, str(v2), "--version", "1.2.0", "-o")
    text = cli(*plain, str(tmp_path / "c.zip"), "--delta-from", str(base), env=_env())
    assert text.returncode == 0, text.stderr
    assert "  base_version: 1.1.0" in text.stdout.splitlines()
    mismatch = cli(
        *plain, str(tmp_path / "d.zip"), "--delta-from", str(base), "--base-version", "1.0.9",
        env=_env(),
    )  # fmt: skip
    assert mismatch.returncode != 0
    assert mismatch.stderr.strip() == (
        f"tope-updater: package build failed: {base} is v1.1.0, not v1.0.9"
    )
    assert not (tmp_path / "d.zip").exists()


def test_serve_on_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("serve", "--sandbox", str(tmp_path / "sb"), "--port", str(port), env=_env())
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("tope-updater:")]
    assert errors == [f"tope-updater: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("0.0.0.0", "127.0.0.1"),
        ("::", "[::1]"),
        ("::1", "[::1]"),
        ("printer.local", "printer.local"),
    ],
)
def test_connect_host(host: str, expected: str) -> None:
    assert connect_host(host) == expected


def test_the_command_line_loads_no_asyncio_nor_the_updater() -> None:
    """Building the parser stays cheap: ``tope-updater screen`` runs beside the updater on
    a small device, so the command modules import asyncio (and with it ssl), aiohttp, the
    logging setup and the engine only in the handlers that need them (docs/PERFORMANCE.md)."""
    heavy = ("asyncio", "ssl", "aiohttp", "structlog", "updater_fsm.engine", "http_shell.daemon")
    script = (
        "import sys\nfrom http_shell.cli.main import build_parser\nbuild_parser()\n"
        f"print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert proc.stdout.strip() == ""


# ---- what the updater answers is read bounded and printed safe (issue 21) ----------------
class _HostileUpdater:
    """An "updater" on 127.0.0.1 answering ``/progress`` with terminal escapes in its
    message and ``/versions`` with 64 MiB, written lazily (what the CLI reads is counted)."""

    ESCAPES = "printing\x1b[2J\x1b]0;pwned\x07 \x00 \u202eevil"

    def __init__(self) -> None:
        import http.server
        import threading

        hostile = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.endswith("/progress"):
                    data = {"stage": "toInstall", "state": "waiting_idle", "progress": 100,
                            "message": hostile.ESCAPES, "error": "E: \x1b[31mred"}  # fmt: skip
                    body = json.dumps({"code": 200, "msg": "ok", "data": data}).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(64 * 1024 * 1024))
                self.end_headers()
                try:
                    for _ in range(1024):
                        self.wfile.write(b" " * 65536)
                        hostile.sent += 65536
                except OSError:
                    pass

        self.sent = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_cli_prints_no_control_character_and_reads_answers_bounded() -> None:
    hostile = _HostileUpdater()
    try:
        result = cli("progress", "--url", hostile.url, env=_env(COLUMNS="200"))
        assert result.returncode == 0, result.stderr
        assert "\\x1b[2J\\x1b]0;pwned\\x07 \\x00 \\u202eevil" in result.stdout, result.stdout
        assert "error: E: \\x1b[31mred" in result.stdout
        assert not any(ch in result.stdout for ch in "\x1b\x07\x00\u202e"), repr(result.stdout)
        started = time.monotonic()
        result = cli("versions", "--url", hostile.url, env=_env())
        assert result.returncode == 1, result
        assert "an answer larger than 4194304 bytes (not read)" in result.stdout, result
        assert time.monotonic() - started < 20
        assert hostile.sent < 32 * 1024 * 1024  # it stopped reading long before the end
    finally:
        hostile.close()
