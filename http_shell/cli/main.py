"""The ``tope-updater`` command: its parser, assembled from the command modules, and ``main``.

Exit statuses: :mod:`http_shell.cli.exit_codes`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from http_shell.cli import demo, jobs, layout, package, screen, serve, statechart
from http_shell.cli.exit_codes import EXIT_FAILED, EXIT_USAGE
from updater_fsm.config import ConfigError

# updater_fsm.control (the engine, the journal, transitions), the logging setup
# (structlog, rich) and asyncio (which loads ssl) are imported where needed: `tope-updater
# screen` runs beside the updater on a small device and needs none of them (about 8 MB of
# RSS for the first two, ~5 MB for asyncio and ssl).


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tope-updater", description="Crash-safe OTA update agent for 3D printers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.add_parsers(sub)
    layout.add_parsers(sub)
    statechart.add_parsers(sub)
    package.add_parsers(sub)
    jobs.add_parsers(sub)
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
