"""``tope-updater init`` and ``verify-setup``: the install root's ``versions/`` layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import attrs

from http_shell.cli.exit_codes import EXIT_FAILED, EXIT_OK
from http_shell.cli.options import LAYOUT_FLAGS, add_config_flags, config_from, version_arg
from http_shell.cli.serve import add_sandbox_flag, sandbox_config


def cmd_init(args: argparse.Namespace) -> int:
    from updater_fsm.ops import snapshot_store

    snapshot_store.init_layout(args.root, args.version, args.from_dir)
    links = snapshot_store.read_links(snapshot_store.Layout(args.root))
    print(f"initialised {args.root}: current=v{links.current} factory=v{links.factory}")
    return EXIT_OK


def cmd_verify_setup(args: argparse.Namespace) -> int:
    from updater_fsm.ops import snapshot_store
    from updater_fsm.state_layout import links_where_files_belong

    config = config_from(args, sandbox_config(args.sandbox) if args.sandbox else None)
    layout = snapshot_store.Layout(config.root)
    problems = snapshot_store.verify_setup(layout) + links_where_files_belong(config.state_path)
    links = snapshot_store.read_links(layout)
    fleet = None
    if config.ddi_url is not None:
        import asyncio

        from fleet_ddi.setup_check import check_fleet_server

        fleet = asyncio.run(check_fleet_server(config))
        if fleet.problem is not None:
            problems.append(fleet.describe())
    if args.json:
        report = {"ok": not problems, "problems": problems, "links": attrs.asdict(links)}
        if fleet is not None:
            report["fleet"] = attrs.asdict(fleet)
        print(json.dumps(report))
    else:
        print(f"root: {config.root}")
        for name in ("current", "previous", "factory"):
            value = getattr(links, name)
            print(f"  {name:9s} -> {'v' + value if value else '(none)'}")
        if fleet is not None:
            print(f"controller id: {fleet.controller_id}")
            if fleet.problem is None:
                print(f"  {fleet.describe()}")
        for problem in problems:
            print(f"  PROBLEM: {problem}")
        print("setup OK" if not problems else f"{len(problems)} problem(s) found")
    return EXIT_OK if not problems else EXIT_FAILED


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("init", help="create the versions/ layout and the factory version")
    p.add_argument("--root", type=Path, required=True, help="the install root to create")
    p.add_argument(
        "--version",
        required=True,
        type=version_arg,
        help="the factory version it starts with: 1.0.0 or v1.0.0",
    )
    p.add_argument("--from", dest="from_dir", type=Path, help="copy the first snapshot from here")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("verify-setup", help="check the versions/ layout and the factory")
    add_config_flags(p, only=LAYOUT_FLAGS)
    add_sandbox_flag(p, "check the local sandbox `serve --sandbox DIR` runs on (default ./var)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_verify_setup)
