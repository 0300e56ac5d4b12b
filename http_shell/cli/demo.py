"""``tope-updater demo``: a complete, visible OTA cycle on a sandbox (no root, no systemd).

The cycle is :mod:`http_shell.cli.demo_cycle`, imported when the command runs: it needs
the whole updater, which the other commands must not load.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from http_shell.cli.serve import SANDBOX_DEFAULT


def cmd_demo(args: argparse.Namespace) -> int:
    from http_shell.cli.demo_cycle import run_demo
    from updater_fsm.log_setup import configure_logging

    configure_logging(None, level="warning")  # the demo narrates; logs would drown it
    return run_demo(args.dir, keep=args.keep)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="a complete, visible OTA cycle on a sandbox (no root)")
    p.add_argument(
        "--dir",
        type=Path,
        default=SANDBOX_DEFAULT / "demo",
        help=f"the demo's sandbox directory (default {SANDBOX_DEFAULT / 'demo'})",
    )
    p.add_argument("--keep", action="store_true", help="keep the demo directory afterwards")
    p.set_defaults(func=cmd_demo)
