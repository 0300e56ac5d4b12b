"""The ``tope-updater`` command: its parser, assembled from the command modules, and ``main``.

Exit statuses: :mod:`http_shell.cli.exit_codes`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from http_shell.cli import demo, install, jobs, layout, package, screen, serve, statechart
from http_shell.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from updater_fsm.config import ConfigError

# updater_fsm.control (the engine, the journal, transitions), the logging setup
# (structlog, rich) and asyncio (which loads ssl) are imported where needed: `tope-updater
# screen` runs beside the updater on a small device and needs none of them (about 8 MB of
# RSS for the first two, ~5 MB for asyncio and ssl).


#: The distribution ``--version`` names the installed version of.
DISTRIBUTION = "tope-updater"


class _VersionAction(argparse.Action):
    """``--version``: print the installed distribution's version and exit 0 (looked up only
    when asked, so building the parser stays cheap)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        import importlib.metadata

        try:
            version = importlib.metadata.version(DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown (not installed as a distribution)"
        print(f"{parser.prog} {version}")
        parser.exit(EXIT_OK)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tope-updater", description="Crash-safe OTA update agent for 3D printers."
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="print the installed version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.add_parsers(sub)
    layout.add_parsers(sub)
    statechart.add_parsers(sub)
    package.add_parsers(sub)
    jobs.add_parsers(sub)
    install.add_parsers(sub)
    screen.add_parsers(sub)
    demo.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tope-updater`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"tope-updater: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILED
    except Exception as exc:
        from updater_fsm.control import UpdaterError

        if not isinstance(exc, UpdaterError):
            raise
        print(f"tope-updater: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return result
