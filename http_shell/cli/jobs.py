"""The commands that drive a running updater through its HTTP API.

``download``, ``update``, ``rollback``, ``cancel`` and ``reset`` send one request (and
follow the progress with ``--watch``); ``progress``, ``versions`` and ``history`` read.
Each prints the envelope's message or data (``--json``: the envelope) and exits 1 unless its
code is 200. With ``--watch`` the command then follows the job to its end, prints the
outcome whole on the last line (``--json``: the last snapshot) and exits 0 only when the job
ended as asked: ``download`` verified, ``update`` installed and healthy, ``rollback`` back to
idle without an error (a failed update, even one rolled back, a cancel: 1).
The HTTP client is :mod:`http_shell.cli.client`, imported when a command runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from http_shell.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from http_shell.cli.options import add_client_parser, api_token, api_url, version_arg
from http_shell.cli.output import say


def _print_envelope(args: argparse.Namespace, env: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(env))
    else:
        data = env.get("data")
        say(env.get("msg") if env.get("code") != 200 else _human(data))
    return EXIT_OK if env.get("code") == 200 else EXIT_FAILED


def _human(data: Any) -> str:
    if not isinstance(data, dict):
        return str(data)
    return "\n".join(f"{k}: {v}" for k, v in data.items())


def client_call(args: argparse.Namespace, fn: Callable[[Any], Any]) -> int:
    """Run ``fn(client)`` against the updater the options name; an updater that does not
    answer, or answers what cannot be read, is said in words (exit 1)."""
    import asyncio

    from http_shell.cli.client import (
        CONNECTION_ERRORS,
        ApiClient,
        UnreadableAnswer,
        describe_connection_error,
    )

    url = api_url(args)

    async def run() -> int:
        async with ApiClient(url, token=api_token(args)) as client:
            result: int = await fn(client)
            return result

    try:
        return asyncio.run(run())
    except CONNECTION_ERRORS as exc:
        say(f"tope-updater: {describe_connection_error(url, exc)}", file=sys.stderr)
        return EXIT_FAILED
    except UnreadableAnswer as exc:
        say(f"tope-updater: cannot read the updater's answer at {url}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def file_digests(path: Path) -> tuple[int, str, str]:
    """Size, MD5 and SHA-256 (hex) of a local file, read once."""
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
        size, md5, sha = file_digests(args.file)
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
            return await _watch(args, client, _verified)
        return code

    return client_call(args, go)


def cmd_update(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        code = _print_envelope(args, await client.post("/update", {"version": args.version}))
        if code == EXIT_OK and args.watch:
            return await _watch(args, client, _installed)
        return code

    return client_call(args, go)


async def _watch(
    args: argparse.Namespace, client: Any, succeeded: Callable[[dict[str, Any]], bool]
) -> int:
    """Follow the job to its end (:mod:`http_shell.cli.watch`); exit 0 when ``succeeded``
    says its last snapshot is what was asked for, else 1."""
    from http_shell.cli.watch import watch_progress

    last = await watch_progress(client, show_outcome=not args.json)
    if args.json:
        print(json.dumps(last))
    return EXIT_OK if succeeded(last) else EXIT_FAILED


def _verified(last: dict[str, Any]) -> bool:
    """``download --watch``: the package is downloaded and verified."""
    return last.get("state") == "ready"


def _installed(last: dict[str, Any]) -> bool:
    """``update --watch``: the new version runs and is healthy."""
    return last.get("stage") == "success"


def _rolled_back(last: dict[str, Any]) -> bool:
    """``rollback --watch``: back to idle on the version asked for, without an error."""
    return last.get("state") == "idle" and not last.get("error")


def _not_failed(last: dict[str, Any]) -> bool:
    """``progress --watch``: whatever it settled on, unless that is a failure."""
    return last.get("stage") != "failed"


def cmd_progress(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        if args.watch:
            return await _watch(args, client, _not_failed)
        env = await client.get("/progress")
        if args.json:
            print(json.dumps(env))
        else:
            from http_shell.cli.watch import render_line

            data = env.get("data") or {}
            say(render_line(data))
            if data.get("error"):
                say(f"error: {data['error']}")
        return EXIT_OK if env.get("code") == 200 else EXIT_FAILED

    return client_call(args, go)


def cmd_versions(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        env = await client.get("/versions")
        if args.json or env.get("code") != 200:
            return _print_envelope(args, env)
        say(versions_table(env.get("data") or {}))
        return EXIT_OK

    return client_call(args, go)


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
    floor = data.get("rollback_floor")
    lines.append(
        f"rollback floor: v{floor} (the highest version this device has run; with"
        " allow_downgrade off, nothing older installs)"
        if floor
        else "rollback floor: none recorded yet"
    )
    return "\n".join(lines)


def cmd_history(args: argparse.Namespace) -> int:
    async def go(client: Any) -> int:
        query = f"?limit={args.limit}" if args.limit is not None else ""
        env = await client.get(f"/history{query}")
        if args.json or env.get("code") != 200:
            return _print_envelope(args, env)
        say(history_table((env.get("data") or {}).get("entries") or []))
        return EXIT_OK

    return client_call(args, go)


def history_table(entries: list[dict[str, Any]]) -> str:
    """``GET /history`` for people: one row per job, newest first."""
    if not entries:
        return "no jobs in the history yet"
    rows = [("JOB", "ENDED (UTC)", "KIND", "FROM", "TO", "OUTCOME", "ERROR", "LEVEL", "SOURCE")]
    for e in entries:
        source = e.get("source") or "-"
        if e.get("fleet_action"):
            source = f"fleet #{e['fleet_action']}"
        rows.append(
            (
                str(e.get("job_id")),
                _utc(e.get("ended_at")),
                "rollback" if e.get("kind") == "manual_rollback" else "install",
                _version(e.get("from_version")),
                _version(e.get("to_version")),
                str(e.get("outcome") or "-"),
                str(e.get("error_code") or "-"),
                str(e.get("rollback_level") or "-"),
                source,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _utc(when: Any) -> str:
    import datetime as dt

    if not isinstance(when, int | float) or isinstance(when, bool):
        return "-"
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _version(value: Any) -> str:
    return f"v{value}" if value else "-"


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError("must be an integer from 1 to 100")
    return int(text)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if value < 1000:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _simple(
    method: str,
    path: str,
    body: Callable[[argparse.Namespace], Any] | None = None,
    succeeded: Callable[[dict[str, Any]], bool] = _not_failed,
) -> Callable[[argparse.Namespace], int]:
    """A client command that sends one request (and with ``--watch`` follows the job: its
    exit status is then whether ``succeeded`` says the job ended as asked)."""

    def command(args: argparse.Namespace) -> int:
        async def go(client: Any) -> int:
            if method == "GET":
                env = await client.get(path)
            else:
                env = await client.post(path, body(args) if body else None)
            code = _print_envelope(args, env)
            if code == EXIT_OK and getattr(args, "watch", False):
                return await _watch(args, client, succeeded)
            return code

        return client_call(args, go)

    return command


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_client_parser(sub, "download", "ask the updater to download a package")
    p.add_argument("package_url", help="where the updater fetches the package (http or https)")
    p.add_argument(
        "--version",
        required=True,
        type=version_arg,
        help="the version the package holds: 1.2.0 or v1.2.0",
    )
    p.add_argument("--name", help="package file name (default: last URL segment)")
    p.add_argument("--file", type=Path, help="local copy: compute size, md5 and sha256 from it")
    p.add_argument("--size", type=int, help="the package's size in bytes (without --file)")
    p.add_argument("--md5", help="the package's MD5, hex (without --file)")
    p.add_argument("--sha256", help="the package's SHA-256, hex (optional without --file)")
    p.add_argument(
        "--signature", help="the package's Ed25519 signature, base64 (package build prints it)"
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="follow the download; exit 0 once the package is verified, else 1",
    )
    p.set_defaults(func=cmd_download)

    p = add_client_parser(sub, "update", "install a downloaded, verified package")
    p.add_argument(
        "version", type=version_arg, help="the downloaded version to install: 1.2.0 or v1.2.0"
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="follow the install; exit 0 when it succeeded, else 1 (also when rolled back)",
    )
    p.set_defaults(func=cmd_update)

    p = add_client_parser(sub, "progress", "show progress (or follow it with --watch)")
    p.add_argument("--watch", action="store_true", help="follow the progress until it settles")
    p.set_defaults(func=cmd_progress)

    p = add_client_parser(sub, "versions", "list installed versions")
    p.set_defaults(func=cmd_versions)

    p = add_client_parser(sub, "history", "list the last jobs (newest first)")
    p.add_argument("--limit", type=_limit, help="at most this many (1-100; default: all)")
    p.set_defaults(func=cmd_history)

    p = add_client_parser(
        sub, "rollback", "roll back by hand to the previous or the factory version"
    )
    p.add_argument(
        "--to",
        choices=("previous", "factory"),
        default="previous",
        help="the version to go back to (default previous)",
    )
    p.add_argument(
        "--watch", action="store_true", help="follow the rollback; exit 0 when it worked, else 1"
    )
    p.set_defaults(func=_simple("POST", "/rollback", lambda a: {"target": a.to}, _rolled_back))

    p = add_client_parser(
        sub, "cancel", "cancel a download or an install that has not switched yet"
    )
    p.set_defaults(func=_simple("POST", "/cancel"))

    p = add_client_parser(sub, "reset", "forget a finished job (back to idle)")
    p.set_defaults(func=_simple("POST", "/reset"))
