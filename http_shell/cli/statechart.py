"""``tope-updater statechart``: render ``statecharts/`` from the transition table."""

from __future__ import annotations

import argparse
from pathlib import Path

from http_shell.cli.exit_codes import EXIT_OK


def cmd_statechart(args: argparse.Namespace) -> int:
    from statecharts import render

    for path in render.render_all(args.out):
        print(path)
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("statechart", help="render statecharts/ from the transition table")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("statecharts"),
        help="directory to write the drawings into (default statecharts)",
    )
    p.set_defaults(func=cmd_statechart)
