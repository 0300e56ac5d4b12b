"""``tope-updater serve``: run the updater and its HTTP API (optionally on a local sandbox).

The daemon itself is :mod:`http_shell.daemon`; this is its command line. It refuses (exit 2,
one line naming the ``init`` command to run) to start on an install root that was never
initialised, before it creates, locks or binds anything; ``--sandbox`` seeds its root
instead.
"""

from __future__ import annotations

import argparse
import os
import shlex
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


def not_initialised(root: Path) -> str | None:
    """Why ``serve`` cannot start on ``root``, when ``init`` never ran there: neither a
    ``current`` nor a ``factory`` link (a root with either is the daemon's to repair)."""
    versions = root / "versions"
    if os.path.lexists(versions / "current") or os.path.lexists(versions / "factory"):
        return None
    return (
        f"{root} is not initialised (no versions/current or versions/factory): run"
        f" `tope-updater init --root {shlex.quote(str(root))} --version VERSION` first"
        " (VERSION: the factory version it starts with; --from DIR copies its files)"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    base = sandbox_config(args.sandbox) if args.sandbox else None
    config = config_from(args, base)
    if not args.sandbox and (reason := not_initialised(config.root)) is not None:
        print(f"tope-updater: {reason}", file=sys.stderr)  # before anything heavy is loaded
        return EXIT_USAGE

    from http_shell.daemon.assembly import AlreadyRunning, CannotListen, serve
    from http_shell.daemon.listen_fds import BadListenSocket, activation_socket
    from updater_fsm.durable import StateFileRefused
    from updater_fsm.log_setup import configure_logging

    try:
        # Before anything could spawn a child: $LISTEN_* are removed from the environment,
        # the socket systemd passed (tope-updater.socket), if any, is taken here.
        listen_socket = activation_socket()
    except BadListenSocket as exc:
        print(f"tope-updater: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        configure_logging(config.logs_dir, level=config.log_level)  # first: seeding logs too
    except StateFileRefused as exc:
        print(f"tope-updater: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.sandbox:
        ensure_sandbox(config)
    import asyncio

    try:
        status = asyncio.run(serve(config, listen_socket=listen_socket))
    except AlreadyRunning as exc:
        print(f"tope-updater: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except (StateFileRefused, CannotListen) as exc:
        print(f"tope-updater: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return status


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the updater and its HTTP API",
        description="Run the updater and its HTTP API on an install root. The root must have"
        " been initialised (`tope-updater init --root ROOT --version VERSION`): on a root"
        " without versions/current or versions/factory, serve prints that command and exits"
        " with status 2 (systemd does not restart it then). --sandbox seeds its root on the"
        " first run instead. Started by tope-updater.socket (socket activation: $LISTEN_FDS),"
        " it serves on the socket systemd passes and exits 0 after idle_exit_s seconds with"
        " nothing in progress; otherwise it binds host:port itself and stays.",
    )
    add_config_flags(p)
    add_sandbox_flag(p, "run on a local sandbox root (default ./var): no root or systemd needed")
    p.set_defaults(func=cmd_serve)


def add_sandbox_flag(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--sandbox [DIR]``: the local sandbox root ``serve --sandbox`` runs on."""
    parser.add_argument(
        "--sandbox", type=Path, nargs="?", const=SANDBOX_DEFAULT, metavar="DIR", help=help_text
    )
