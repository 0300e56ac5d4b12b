"""``tope-updater``: run the updater, build packages, and drive a running updater.

Exit codes: 0 success; 1 the operation failed (an API ``code`` other than 200, a failed
update, problems found by ``verify-setup``); 2 bad usage or configuration; 3 another
updater already runs on the same state directory.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from updater_fsm.config import Config, ConfigError, ServiceControl, load_config

# updater_fsm.control (the engine, the journal, transitions), the logging setup
# (structlog, rich) and asyncio (which loads ssl) are imported where needed: `tope-updater
# screen` runs beside the updater on a small device and needs none of them (about 8 MB of
# RSS for the first two, ~5 MB for asyncio and ssl).

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3
SANDBOX_DEFAULT = Path("var")
SANDBOX_FACTORY_VERSION = "1.0.0"

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


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    for flag, dest, help_text in _CONFIG_FLAGS:
        parser.add_argument(flag, dest=dest, help=help_text)


def _config_from(args: argparse.Namespace, base: Config | None = None) -> Config:
    overrides = {dest: getattr(args, dest, None) for _, dest, _ in _CONFIG_FLAGS}
    return load_config(file=args.config, overrides=overrides, base=base)


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


# ---- commands: the daemon and the device layout --------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from http_shell.daemon import AlreadyRunning, CannotListen, serve
    from updater_fsm.log_setup import configure_logging

    base = sandbox_config(args.sandbox) if args.sandbox else None
    config = _config_from(args, base)
    configure_logging(config.logs_dir, level=config.log_level)  # first: seeding logs too
    if args.sandbox:
        ensure_sandbox(config)
    import asyncio

    try:
        status = asyncio.run(serve(config))
    except AlreadyRunning as exc:
        print(f"tope-updater: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except CannotListen as exc:
        print(f"tope-updater: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return status


def cmd_init(args: argparse.Namespace) -> int:
    from updater_fsm.ops import snapshot_store

    snapshot_store.init_layout(args.root, args.version, args.from_dir)
    links = snapshot_store.read_links(snapshot_store.Layout(args.root))
    print(f"initialised {args.root}: current=v{links.current} factory=v{links.factory}")
    return EXIT_OK


def cmd_verify_setup(args: argparse.Namespace) -> int:
    from updater_fsm.ops import snapshot_store

    config = _config_from(args)
    layout = snapshot_store.Layout(config.root)
    problems = snapshot_store.verify_setup(layout)
    links = snapshot_store.read_links(layout)
    fleet = None
    if config.ddi_url is not None:
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


def cmd_statechart(args: argparse.Namespace) -> int:
    from statecharts import render

    for path in render.render_all(args.out):
        print(path)
    return EXIT_OK


def cmd_package_build(args: argparse.Namespace) -> int:
    from updater_fsm.package import builder

    try:
        result = builder.build_package(
            args.src,
            version=args.version,
            output=args.output,
            root=args.root,
            modules_config=args.modules_config,
            sign_key=args.sign_key,
            delta_from=args.delta_from,
            base_version=args.base_version,
            updater_bundle=args.updater_bundle,
        )
    except builder.BuildError as exc:
        print(f"tope-updater: package build failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    fields = {
        "package_name": result.path.name,
        "version": args.version,
        "package_size": result.size,
        "package_md5": result.md5,
        "package_sha256": result.sha256,
        "package_signature": result.signature,
        "modules": len(result.manifest.modules),
        "updater": result.manifest.updater.version if result.manifest.updater else None,
    }
    if result.manifest.base_version is not None:
        fields["base_version"] = result.manifest.base_version
    if args.json:
        print(json.dumps(fields))
    else:
        print(f"wrote {result.path}")
        for key, value in fields.items():
            if value is not None:
                print(f"  {key}: {value}")
    return EXIT_OK


def cmd_package_keygen(args: argparse.Namespace) -> int:
    from updater_fsm.package import builder

    builder.generate_keypair(args.private, args.public)
    print(f"private key: {args.private}\npublic key:  {args.public} (set trusted_key to it)")
    return EXIT_OK


# ---- commands: clients of a running updater -------------------------------------------
def _client_config(args: argparse.Namespace) -> Config:
    """The configuration ``serve`` would use here: ``--config``, ``TOPE_UPDATER_*``."""
    return load_config(file=args.config, env=os.environ)


def _api_url(args: argparse.Namespace) -> str:
    """``--url``, else where ``serve`` listens with the same configuration."""
    if args.url:
        return str(args.url)
    config = _client_config(args)
    return f"http://{_connect_host(config.host)}:{config.port}"


def _connect_host(host: str) -> str:
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


def _api_token(args: argparse.Namespace) -> str | None:
    """``--token``, else the configured ``api_token`` (the same one ``serve`` checks)."""
    if args.token:
        return str(args.token)
    return _client_config(args).api_token


def _print_envelope(args: argparse.Namespace, env: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(env))
    else:
        data = env.get("data")
        print(env.get("msg") if env.get("code") != 200 else _human(data))
    return EXIT_OK if env.get("code") == 200 else EXIT_FAILED


def _human(data: Any) -> str:
    if not isinstance(data, dict):
        return str(data)
    return "\n".join(f"{k}: {v}" for k, v in data.items())


def _client_call(args: argparse.Namespace, fn: Callable[[Any], Any]) -> int:
    import asyncio

    from http_shell.cli_client import ApiClient

    url = _api_url(args)

    async def run() -> int:
        async with ApiClient(url, token=_api_token(args)) as client:
            result: int = await fn(client)
            return result

    try:
        return asyncio.run(run())
    except OSError as exc:
        print(f"tope-updater: cannot reach the updater at {url}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _file_digests(path: Path) -> tuple[int, str, str]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return size, md5.hexdigest(), sha.hexdigest()


def cmd_download(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "version": args.version,
        "package_url": args.package_url,
        "package_name": args.name or args.package_url.rstrip("/").rsplit("/", 1)[-1],
    }
    if args.file:
        size, md5, sha = _file_digests(args.file)
        body |= {"package_size": size, "package_md5": md5, "package_sha256": sha}
    else:
        if args.size is None or args.md5 is None:
            print("tope-updater: give --size and --md5, or --file to compute them", file=sys.stderr)
            return EXIT_USAGE
        body |= {"package_size": args.size, "package_md5": args.md5}
        if args.sha256:
            body["package_sha256"] = args.sha256
    if args.signature:
        body["package_signature"] = args.signature

    async def go(client: Any) -> int:
        code = _print_envelope(args, await client.post("/download", body))
        if code == EXIT_OK and args.watch:
            return await _watch(args, client)
        return code

    return _client_call(args, go)


def cmd_update(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        code = _print_envelope(args, await client.post("/update", {"version": args.version}))
        if code == EXIT_OK and args.watch:
            return await _watch(args, client)
        return code

    return _client_call(args, go)


async def _watch(args: argparse.Namespace, client: Any) -> int:
    from http_shell.cli_client import watch_progress

    last = await watch_progress(client)
    if args.json:
        print(json.dumps(last))
    elif last.get("error"):
        print(f"error: {last['error']}")
    return EXIT_FAILED if last.get("stage") == "failed" else EXIT_OK


def cmd_progress(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        if args.watch:
            return await _watch(args, client)
        env = await client.get("/progress")
        if args.json:
            print(json.dumps(env))
        else:
            from http_shell.cli_client import render_line

            data = env.get("data") or {}
            print(render_line(data))
            if data.get("error"):
                print(f"error: {data['error']}")
        return EXIT_OK if env.get("code") == 200 else EXIT_FAILED

    return _client_call(args, go)


def cmd_versions(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        env = await client.get("/versions")
        if args.json or env.get("code") != 200:
            return _print_envelope(args, env)
        print(versions_table(env.get("data") or {}))
        return EXIT_OK

    return _client_call(args, go)


def versions_table(data: dict[str, Any]) -> str:
    """``GET /versions`` for people: one row per snapshot, which links name it, its size."""
    rows = [("VERSION", "LINKS", "SIZE")]
    for item in data.get("installed") or []:
        links = ", ".join(item.get("links") or []) or "-"
        rows.append((f"v{item.get('version')}", links, _size(item.get("size_bytes") or 0)))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{v:<{widths[0]}}  {links:<{widths[1]}}  {size:>9}" for v, links, size in rows]
    for name in ("current", "previous", "factory"):
        if data.get(name) is None:
            lines.append(f"({name}: none)")
    return "\n".join(lines)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if value < 1000:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _simple(
    method: str, path: str, body: Callable[[argparse.Namespace], Any] | None = None
) -> Callable[[argparse.Namespace], int]:
    """A client command that sends one request (and optionally watches progress)."""

    def command(args: argparse.Namespace) -> int:
        async def go(client: Any) -> int:
            if method == "GET":
                env = await client.get(path)
            else:
                env = await client.post(path, body(args) if body else None)
            code = _print_envelope(args, env)
            if code == EXIT_OK and getattr(args, "watch", False):
                return await _watch(args, client)
            return code

        return _client_call(args, go)

    return command


def _window_size(text: str) -> tuple[int, int]:
    """``WxH`` (``800x480``) as a pair of positive integers."""
    try:
        w, h = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT, e.g. 800x480 (got {text!r})"
        ) from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"width and height must be positive (got {text!r})")
    return w, h


def cmd_screen(args: argparse.Namespace) -> int:
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        from screen.app import Options, run
        from screen.catalogue import language_from_environment, normalise_language
        from screen.render import BASE_W  # noqa: F401  (pygame is importable)
    except ImportError as exc:
        print(
            f"tope-updater screen: needs the 'screen' extra (pip install"
            f" 'tope-updater[screen]'): {exc}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    config = _client_config(args)
    lang = normalise_language(args.lang or config.screen_lang) or language_from_environment(
        os.environ
    )
    options = Options(
        url=_api_url(args),
        token=_api_token(args),
        lang=lang,
        window=args.window,
        close_after=args.close_after,
        font=args.font or config.screen_font,
        snapshot_dir=args.snapshot_dir,
    )
    return run(options)


def cmd_demo(args: argparse.Namespace) -> int:
    from http_shell.demo import run_demo
    from updater_fsm.log_setup import configure_logging

    configure_logging(None, level="warning")  # the demo narrates; logs would drown it
    return run_demo(args.dir, keep=args.keep)


# ---- parser ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tope-updater", description="Crash-safe OTA update agent for 3D printers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the updater and its HTTP API")
    _add_config_flags(p)
    p.add_argument(
        "--sandbox",
        type=Path,
        nargs="?",
        const=SANDBOX_DEFAULT,
        help="run on a local sandbox root (default ./var): no root or systemd needed",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("init", help="create the versions/ layout and the factory version")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--from", dest="from_dir", type=Path, help="copy the first snapshot from here")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("verify-setup", help="check the versions/ layout and the factory")
    _add_config_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify_setup)

    p = sub.add_parser("statechart", help="render statecharts/ from the transition table")
    p.add_argument("--out", type=Path, default=Path("statecharts"))
    p.set_defaults(func=cmd_statechart)

    pkg = sub.add_parser("package", help="build update packages").add_subparsers(
        dest="package_command", required=True, metavar="ACTION"
    )
    p = pkg.add_parser("build", help="build a package from a tree mirroring the install root")
    p.add_argument("src", type=Path)
    p.add_argument("--version", required=True)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument(
        "--root", type=Path, default=Path("/opt/tope"), help="install root on the device"
    )
    p.add_argument("--modules-config", type=Path, help="TOML with per-file service metadata")
    p.add_argument("--sign-key", type=Path, help="Ed25519 private key (PEM) to sign with")
    p.add_argument(
        "--delta-from",
        type=Path,
        metavar="BASE",
        help="write a delta package against BASE: the previous release's package or tree",
    )
    p.add_argument("--base-version", help="the version of BASE (required when BASE is a directory)")
    p.add_argument(
        "--updater-bundle",
        type=Path,
        metavar="BUNDLE",
        help="carry a new updater (tope-updater-<version>-<arch>.tar.gz from systemd/bundle.py):"
        " the device's updater switches to it once the device is healthy",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_package_build)
    p = pkg.add_parser("keygen", help="create an Ed25519 signing key pair")
    p.add_argument("private", type=Path)
    p.add_argument("public", type=Path)
    p.set_defaults(func=cmd_package_keygen)

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text)
        c.add_argument(
            "--url",
            help="the updater's address (default: host and port from --config and"
            " TOPE_UPDATER_HOST/TOPE_UPDATER_PORT, as serve uses them; else"
            " http://127.0.0.1:12315)",
        )
        c.add_argument("--config", type=Path, help="TOML configuration file (as for serve)")
        c.add_argument("--token", help="API bearer token (default: the configured api_token)")
        c.add_argument("--json", action="store_true", help="machine-readable output")
        return c

    p = client("download", "ask the updater to download a package")
    p.add_argument("package_url")
    p.add_argument("--version", required=True)
    p.add_argument("--name", help="package file name (default: last URL segment)")
    p.add_argument("--file", type=Path, help="local copy: compute size, md5 and sha256 from it")
    p.add_argument("--size", type=int)
    p.add_argument("--md5")
    p.add_argument("--sha256")
    p.add_argument("--signature")
    p.add_argument("--watch", action="store_true", help="show progress until verified")
    p.set_defaults(func=cmd_download)

    p = client("update", "install a downloaded, verified package")
    p.add_argument("version")
    p.add_argument("--watch", action="store_true", help="show progress until done")
    p.set_defaults(func=cmd_update)

    p = client("progress", "show progress (or follow it with --watch)")
    p.add_argument("--watch", action="store_true")
    p.set_defaults(func=cmd_progress)

    p = client("versions", "list installed versions")
    p.set_defaults(func=cmd_versions)

    p = client("rollback", "roll back by hand to the previous or the factory version")
    p.add_argument("--to", choices=("previous", "factory"), default="previous")
    p.add_argument("--watch", action="store_true")
    p.set_defaults(func=_simple("POST", "/rollback", lambda a: {"target": a.to}))

    p = client("cancel", "cancel a download or an install that has not switched yet")
    p.set_defaults(func=_simple("POST", "/cancel"))

    p = client("reset", "forget a finished job (back to idle)")
    p.set_defaults(func=_simple("POST", "/reset"))

    p = client("screen", "the full-screen progress display at the printer (needs [screen])")
    p.add_argument(
        "--lang",
        help="en or zh-CN (default: the screen_lang key, else the locale's language)",
    )
    p.add_argument(
        "--window",
        type=_window_size,
        metavar="WxH",
        help="a normal window of this size (default: full-screen, borderless, on top)",
    )
    p.add_argument(
        "--close-after",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="close this long after the update ended (default 60)",
    )
    p.add_argument("--font", type=Path, help="font file (default: screen_font, else fontconfig)")
    p.add_argument(
        "--snapshot-dir", type=Path, help="save each new frame there as PNG (tests, docs)"
    )
    p.set_defaults(func=cmd_screen)

    p = sub.add_parser("demo", help="a complete, visible OTA cycle on a sandbox (no root)")
    p.add_argument("--dir", type=Path, default=SANDBOX_DEFAULT / "demo")
    p.add_argument("--keep", action="store_true", help="keep the demo directory afterwards")
    p.set_defaults(func=cmd_demo)
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


if __name__ == "__main__":
    raise SystemExit(main())
