"""Issue 23: the command line says things in words and offers only what it does.

Every option of every command has a help text and none is ignored; ``--version``;
versions typed with a ``v``; an updater that does not answer is said in words.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import importlib.metadata
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from http_shell.cli.main import build_parser
from http_shell.cli.serve import not_initialised
from tests.http_shell import test_cli
from tests.http_shell.test_cli import _env, cli

served = test_cli.served  # the fixture: a sandbox `serve` on a free port


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, (*path, name))


def test_every_option_of_every_command_has_a_help_text() -> None:
    missing = [
        f"{' '.join(('tope-updater', *path))} {'/'.join(action.option_strings) or action.dest}"
        for path, parser in _commands(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction)
        and (action.help is None or not action.help.strip())
    ]
    assert missing == []


def test_the_walk_sees_every_command() -> None:
    paths = {" ".join(path) for path, _ in _commands(build_parser())}
    assert {"serve", "download", "package build", "screen", "verify-setup", "demo"} <= paths


def test_version_prints_the_installed_version() -> None:
    result = cli("--version", env=_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tope-updater {importlib.metadata.version('tope-updater')}"


def test_no_command_offers_an_option_it_ignores() -> None:
    for argv in (
        ("screen", "--json"),
        ("verify-setup", "--host", "0.0.0.0"),
        ("verify-setup", "--port", "1"),
        ("verify-setup", "--systemctl", "x"),
        ("verify-setup", "--log-level", "debug"),
    ):
        result = cli(*argv, env=_env())
        assert result.returncode == 2, argv
        assert "unrecognized arguments" in result.stderr, argv


def test_verify_setup_checks_the_sandbox_serve_runs_on(tmp_path: Path) -> None:
    sandbox = tmp_path / "sb"
    result = cli("init", "--root", str(sandbox / "root"), "--version", "1.0.0", env=_env())
    assert result.returncode == 0, result.stderr
    result = cli("verify-setup", "--sandbox", str(sandbox), "--json", env=_env())
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["links"]["factory"] == "1.0.0"
    empty = cli("verify-setup", "--sandbox", str(tmp_path / "none"), "--json", env=_env())
    assert empty.returncode == 1


# ---- versions typed with a `v` -------------------------------------------------------------
@contextlib.contextmanager
def _file_server(directory: Path) -> Iterator[str]:
    """``directory`` over HTTP on 127.0.0.1; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_versions_typed_with_a_v_on_the_command_line(
    tmp_path: Path, served: dict[str, str]
) -> None:
    """``package build --version v1.1.0``, ``download … --version v1.1.0``, ``update v1.1.0``:
    the updater gets and shows the bare ``1.1.0``."""
    src = tmp_path / "src" / "lib"
    src.mkdir(parents=True)
    (src / "app.py").write_text("print('1.1.0')\n")
    packages = tmp_path / "packages"
    packages.mkdir()
    package = packages / "tope-1.1.0.zip"
    root = str((tmp_path / "sb" / "root").resolve())
    build = cli(
        "package", "build", str(tmp_path / "src"), "--version", "v1.1.0", "--root", root,
        "-o", str(package), "--json", env=_env(),
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    assert json.loads(build.stdout)["version"] == "1.1.0"

    with _file_server(packages) as base:
        download = cli(
            "download", f"{base}/{package.name}", "--version", "v1.1.0", "--file", str(package),
            "--watch", "--json", env=served,
        )  # fmt: skip
        assert download.returncode == 0, download.stdout + download.stderr
        ready = json.loads(download.stdout.splitlines()[-1])
        assert ready["state"] == "ready" and ready["version"] == "1.1.0", ready

    update = cli("update", "v1.1.0", "--watch", "--json", env=served)
    assert update.returncode == 0, update.stdout + update.stderr
    done = json.loads(update.stdout.splitlines()[-1])
    assert done["stage"] == "success" and done["current_version"] == "1.1.0", done


def test_init_takes_a_v_version(tmp_path: Path) -> None:
    result = cli("init", "--root", str(tmp_path / "root"), "--version", "v1.0.0", env=_env())
    assert result.returncode == 0, result.stderr
    assert "current=v1.0.0 factory=v1.0.0" in result.stdout
    assert (tmp_path / "root" / "versions" / "v1.0.0").is_dir()


# ---- configuration typos -------------------------------------------------------------------
def test_a_near_miss_of_a_config_key_names_the_key_meant(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("busy_probe_timeout = 5\n")
    sandbox = ("verify-setup", "--sandbox", str(tmp_path / "sb"))
    from_file = cli(*sandbox, "--config", str(config), env=_env())
    assert from_file.returncode == 2
    assert from_file.stderr.strip() == (
        f"tope-updater: config file {config}: unknown key 'busy_probe_timeout';"
        " did you mean `busy_probe_timeout_s`?"
    )
    from_env = cli(*sandbox, env=_env(TOPE_UPDATER_BUSYPROBE_TIMEOUT_S="5"))
    assert from_env.returncode == 2
    assert from_env.stderr.strip() == (
        "tope-updater: environment variable TOPE_UPDATER_BUSYPROBE_TIMEOUT_S: unknown key"
        " 'busyprobe_timeout_s'; did you mean `TOPE_UPDATER_BUSY_PROBE_TIMEOUT_S`?"
    )
    far = cli(*sandbox, env=_env(TOPE_UPDATER_FLAVOUR="x"))
    assert far.returncode == 2
    assert far.stderr.strip().endswith("unknown key 'flavour'")


# ---- the updater not running ---------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nobody listens on it


def test_an_updater_that_does_not_answer_is_said_in_words() -> None:
    port = _free_port()
    for argv in (("progress",), ("versions", "--json"), ("update", "v1.2.0")):
        result = cli(*argv, env=_env(TOPE_UPDATER_PORT=str(port)))
        assert result.returncode == 1, argv
        assert result.stdout == ""
        assert result.stderr.strip() == (
            f"tope-updater: nothing answers at http://127.0.0.1:{port} (connection refused):"
            " is the updater running? start it with `tope-updater serve` (or `systemctl start"
            " tope-updater`), or point --url / TOPE_UPDATER_HOST/PORT at it"
        ), argv


# ---- serve on a root `init` never ran on ---------------------------------------------------
def test_serve_refuses_a_root_never_initialised_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "no such root"
    port = _free_port()
    started = time.monotonic()
    result = cli("serve", "--root", str(root), "--port", str(port), env=_env())
    assert time.monotonic() - started < 10
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"tope-updater: {root} is not initialised (no versions/current or versions/factory):"
        f" run `tope-updater init --root '{root}' --version VERSION` first (VERSION: the factory"
        " version it starts with; --from DIR copies its files)"
    ]
    assert not root.exists()  # nothing created: no state dir, no log, no lock
    with socket.socket() as sock:  # and nothing bound, not even for a moment
        sock.bind(("127.0.0.1", port))
    # The command it names is the one that makes the root one serve starts on.
    init = cli("init", "--root", str(root), "--version", "1.0.0", env=_env())
    assert init.returncode == 0, init.stderr
    assert not_initialised(root) is None


# ---- which root a package targets ----------------------------------------------------------
def test_package_build_says_which_root_it_targets(tmp_path: Path) -> None:
    (tmp_path / "src" / "bin").mkdir(parents=True)
    (tmp_path / "src" / "bin" / "app").write_text("#!/bin/sh\n")
    build = ("package", "build", str(tmp_path / "src"), "--version", "1.1.0", "-o")
    default = cli(*build, str(tmp_path / "a.zip"), env=_env())
    assert default.returncode == 0, default.stderr
    assert default.stdout.splitlines()[0] == (
        f"wrote {tmp_path / 'a.zip'}: targets root /opt/tope (the default; --root to change)"
    )
    root = tmp_path / "device root"
    given = cli(*build, str(tmp_path / "b.zip"), "--root", str(root), "--json", env=_env())
    assert given.returncode == 0, given.stderr
    assert json.loads(given.stdout)["root"] == str(root)
    text = cli(*build, str(tmp_path / "c.zip"), "--root", str(root), env=_env())
    assert text.stdout.splitlines()[0] == f"wrote {tmp_path / 'c.zip'}: targets root {root}"
