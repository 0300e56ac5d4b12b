"""``tope-updater serve``: run the updater and its HTTP API (optionally on a local sandbox).

The daemon itself is :mod:`http_shell.daemon`; this is its command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from http_shell.cli.exit_codes import EXIT_LOCKED, EXIT_USAGE
from http_shell.cli.options import add_config_flags, config_from
from updater_fsm.config import Config, ServiceControl

SANDBOX_DEFAULT = Path("var")
SANDBOX_FACTORY_VERSION = "1.0.0"


def sandbox_config(directory: Path) -> Config:
    """Defaults for a local sandbox: no root, no systemd, everything under ``directory``."""
    directory = directory.resolve()
    return Config(
        root=directory / "root",
        state_dir=directory / "state",
        service_control=ServiceControl.NONE,
    )


def ensure_sandbox(config: Config) -> None:
    """Seed the sandbox root with a factory version on first run."""
    from updater_fsm.ops import snapshot_store

    layout = snapshot_store.Layout(config.root)
    if snapshot_store.read_links(layout).current is None:
        snapshot_store.init_layout(config.root, SANDBOX_FACTORY_VERSION)
        print(f"sandbox: created {config.root} with factory version v{SANDBOX_FACTORY_VERSION}")


def cmd_serve(args: argparse.Namespace) -> int:
    from http_shell.daemon.assembly import AlreadyRunning, CannotListen, serve
    from updater_fsm.durable import StateFileRefused
    from updater_fsm.log_setup import configure_logging

    base = sandbox_config(args.sandbox) if args.sandbox else None
    config = config_from(args, base)
    try:
        configure_logging(config.logs_dir, level=config.log_level)  # first: seeding logs too
    except StateFileRefused as exc:
        print(f"tope-updater: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.sandbox:
        ensure_sandbox(config)
    import asyncio

    try:
        status = asyncio.run(serve(config))
    except AlreadyRunning as exc:
        print(f"tope-updater: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except (StateFileRefused, CannotListen) as exc:
        print(f"tope-updater: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return status


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the updater and its HTTP API")
    add_config_flags(p)
    add_sandbox_flag(p, "run on a local sandbox root (default ./var): no root or systemd needed")
    p.set_defaults(func=cmd_serve)


def add_sandbox_flag(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--sandbox [DIR]``: the local sandbox root ``serve --sandbox`` runs on."""
    parser.add_argument(
        "--sandbox", type=Path, nargs="?", const=SANDBOX_DEFAULT, metavar="DIR", help=help_text
    )
