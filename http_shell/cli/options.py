"""Flags several commands share, and what they resolve to.

``serve`` takes the configuration flags (:func:`add_config_flags`), ``verify-setup`` those
it reads (:data:`LAYOUT_FLAGS`);
the clients of a running updater (the commands of :mod:`~http_shell.cli.jobs` and
``screen``) take ``--url``, ``--config``, ``--token`` and ``--json``
(:func:`add_client_parser`) and find the updater the way ``serve`` would listen.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Collection
from pathlib import Path

from updater_fsm.config import Config, load_config

_CONFIG_FLAGS: list[tuple[str, str, str]] = [
    ("--root", "root", "install root holding versions/ (default /opt/tope)"),
    ("--state-dir", "state_dir", "journal, downloads and logs (default <root>/.updater)"),
    ("--host", "host", "API listen address (default 127.0.0.1)"),
    ("--port", "port", "API port (default 12315)"),
    ("--device-api-url", "device_api_url", "device-api base URL for progress reports"),
    ("--systemctl", "systemctl", "systemctl command prefix, e.g. 'nsenter -t 42 -m -p systemctl'"),
    ("--service-control", "service_control", "'systemd' (default) or 'none'"),
    ("--log-level", "log_level", "debug, info, warning or error"),
]


#: The keys of the flags a command that only reads the install root's layout takes.
LAYOUT_FLAGS = ("root", "state_dir")


def version_arg(text: str) -> str:
    """A version as typed on the command line, ``1.2.0`` or ``v1.2.0``, in the bare form the
    updater knows (``1.2.0``): the ``v`` is dropped here, as the API drops it from a body
    (``updater_fsm.core.versions.bare_version``, which the CLI does not import: it would
    load the engine). What remains is judged where it is used."""
    return text[1:] if text[:1] == "v" and text[1:2].isdigit() else text


def add_config_flags(parser: argparse.ArgumentParser, only: Collection[str] | None = None) -> None:
    """``--config FILE`` and a flag per configuration key that overrides it (those of
    ``only``, when given: a command offers no flag it ignores)."""
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    for flag, dest, help_text in _CONFIG_FLAGS:
        if only is None or dest in only:
            parser.add_argument(flag, dest=dest, help=help_text)


def config_from(args: argparse.Namespace, base: Config | None = None) -> Config:
    """The configuration of :func:`add_config_flags`' flags (over ``base``)."""
    overrides = {dest: getattr(args, dest, None) for _, dest, _ in _CONFIG_FLAGS}
    return load_config(file=args.config, overrides=overrides, base=base)


def add_client_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    *,
    json: bool = True,
) -> argparse.ArgumentParser:
    """A command that talks to a running updater, with the flags that find it (and
    ``--json`` unless ``json`` is false: a command that prints no outcome)."""
    c = sub.add_parser(name, help=help_text)
    c.add_argument(
        "--url",
        help="the updater's address (default: host and port from --config and"
        " TOPE_UPDATER_HOST/TOPE_UPDATER_PORT, as serve uses them; else"
        " http://127.0.0.1:12315)",
    )
    c.add_argument("--config", type=Path, help="TOML configuration file (as for serve)")
    c.add_argument("--token", help="API bearer token (default: the configured api_token)")
    if json:
        c.add_argument("--json", action="store_true", help="machine-readable output")
    return c


def client_config(args: argparse.Namespace) -> Config:
    """The configuration ``serve`` would use here: ``--config``, ``TOPE_UPDATER_*``."""
    return load_config(file=args.config, env=os.environ)


def api_url(args: argparse.Namespace) -> str:
    """``--url``, else where ``serve`` listens with the same configuration."""
    if args.url:
        return str(args.url)
    config = client_config(args)
    return f"http://{connect_host(config.host)}:{config.port}"


def connect_host(host: str) -> str:
    """The address to connect to for a listen address (a wildcard means this machine)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass  # a host name
    return host


def api_token(args: argparse.Namespace) -> str | None:
    """``--token``, else the configured ``api_token`` (the same one ``serve`` checks)."""
    if args.token:
        return str(args.token)
    return client_config(args).api_token
