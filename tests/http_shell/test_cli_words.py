"""Issue 23: the command line says things in words and offers only what it does.

Every option of every command has a help text and none is ignored; ``--version``;
versions typed with a ``v``; an updater that does not answer is said in words.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
from collections.abc import Iterator
from pathlib import Path

from http_shell.cli.main import build_parser
from tests.http_shell.test_cli import _env, cli


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
