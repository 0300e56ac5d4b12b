"""``tope-updater install FILE``: from a package file on this device to a running version.

The same path as a download from a server, through the running updater's HTTP API: the
file goes to ``POST /download`` as a ``file://`` URL (the updater copies it into its
download area, hashing it on the way, and verifies it), then ``POST /update`` installs it,
through the busy gate like any install. Nothing needs typing but the file: the version is
read from the package's manifest, the size and digests are computed here, and the
signature is read from ``FILE.sig`` (what ``package build --sign-key`` writes beside the
package) unless ``--signature`` gives it. The updater accepts the file only under its
``local_package_dirs``.
"""

from __future__ import annotations

import argparse
import io
import os
import stat
import sys
from pathlib import Path
from typing import Any

from http_shell.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from http_shell.cli.options import add_client_parser, version_arg
from http_shell.cli.output import say

_NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class _Refused(Exception):
    """The file cannot be offered to the updater; ``str()`` says why, for a person."""


def _package_file(path: Path) -> Path:
    """``path`` made absolute, once judged a regular file (opening a FIFO would block, a
    device node would never end)."""
    absolute = Path(os.path.abspath(path))
    try:
        st = absolute.stat()
    except FileNotFoundError:
        raise _Refused(f"{path}: no such file") from None
    except OSError as exc:
        raise _Refused(f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((words for test, words in _NOT_REGULAR if test(st.st_mode)), "special")
        raise _Refused(f"{path} is {kind}, not a package file")
    return absolute


def _version_of(path: Path) -> str:
    from updater_fsm.control import UpdaterError
    from updater_fsm.package.manifest import peek_version

    try:
        return peek_version(path)
    except UpdaterError as err:
        raise _Refused(f"{path} is not an update package: {err.failure.detail}") from None
    except OSError as exc:
        raise _Refused(f"{path}: {exc.strerror}") from None


def _signature_of(path: Path, given: str | None) -> str | None:
    from updater_fsm.package.builder import signature_path

    if given is not None:
        return given
    sidecar = signature_path(path)
    try:
        text = sidecar.read_text(encoding="ascii", errors="replace")[:200]
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _Refused(f"{sidecar}: {exc.strerror}") from None
    return text.strip()


def _download_body(path: Path, version: str | None, signature: str | None) -> dict[str, Any]:
    from http_shell.cli.jobs import file_digests

    path = _package_file(path)
    version = version or _version_of(path)
    size, md5, sha256 = file_digests(path)
    body: dict[str, Any] = {
        "version": version,
        "package_url": path.as_uri(),
        "package_name": path.name,
        "package_size": size,
        "package_md5": md5,
        "package_sha256": sha256,
    }
    signature = _signature_of(path, signature)
    if signature is not None:
        body["package_signature"] = signature
    return body


async def _follow(args: argparse.Namespace, client: Any) -> dict[str, Any]:
    """Follow the progress until it settles; drawn with ``--watch``, quietly otherwise."""
    from http_shell.cli.client import watch_progress

    out = sys.stdout if args.watch else io.StringIO()
    return await watch_progress(client, out=out)


async def _install(args: argparse.Namespace, client: Any, body: dict[str, Any]) -> int:
    """``POST /download`` of the file, follow it to verified, ``POST /update``, follow it
    to its outcome; one line per step, the outcome last."""
    version = body["version"]
    env = await client.post("/download", body)
    if env.get("code") != 200:
        say(f"tope-updater: install refused: {env.get('msg')}", file=sys.stderr)
        return EXIT_FAILED
    say(f"copying {body['package_name']} (v{version}) into the updater's download area")
    last = await _follow(args, client)
    if last.get("stage") != "toInstall":
        say(f"install failed: {last.get('error') or last.get('message')}")
        return EXIT_FAILED
    say(f"verified v{version}; installing")
    env = await client.post("/update", {"version": version})
    if env.get("code") != 200:
        say(f"tope-updater: install refused: {env.get('msg')}", file=sys.stderr)
        return EXIT_FAILED
    last = await _follow(args, client)
    if last.get("stage") != "success":
        say(f"install failed: {last.get('error') or last.get('message')}")
        return EXIT_FAILED
    say(f"installed v{version}: it is running now")
    return EXIT_OK


def cmd_install(args: argparse.Namespace) -> int:
    from http_shell.cli.jobs import client_call

    try:
        body = _download_body(args.file, args.version, args.signature)
    except _Refused as exc:
        say(f"tope-updater: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def go(client: Any) -> int:
        return await _install(args, client, body)

    return client_call(args, go)


# ---- a USB stick -------------------------------------------------------------------------
def _signed_packages(directory: Path) -> list[tuple[Path, str]]:
    """The packages at the top of ``directory`` with a signature beside them, and their
    versions; anything else there is said and skipped."""
    from updater_fsm.package.builder import signature_path

    found = []
    for path in sorted(directory.glob("*.zip")):
        if not signature_path(path).is_file():
            say(f"skipping {path.name}: no {signature_path(path).name} beside it (not signed)")
            continue
        try:
            found.append((_package_file(path), _version_of(path)))
        except _Refused as exc:
            say(f"skipping {path.name}: {exc}")
    return found


def cmd_usb_install(args: argparse.Namespace) -> int:
    from http_shell.cli.jobs import client_call
    from http_shell.cli.options import client_config
    from updater_fsm.control import Version

    if not client_config(args).trusted_key:
        say(
            "tope-updater: a USB stick installs only signed packages, and no trusted_key is"
            " configured: nothing installed (docs/DEPLOYMENT.md, installing from a USB stick)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not args.directory.is_dir():
        say(f"tope-updater: {args.directory} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    packages = _signed_packages(args.directory)
    if not packages:
        say(
            f"no signed package (NAME.zip with NAME.zip.sig) at the top of {args.directory}:"
            " nothing to install"
        )
        return EXIT_OK
    path, version = max(packages, key=lambda found: Version.parse(found[1]).key)

    async def go(client: Any) -> int:
        env = await client.get("/versions")
        current = (env.get("data") or {}).get("current")
        if current is not None and Version.parse(current).key >= Version.parse(version).key:
            same = current == version
            say(
                f"v{version} on {args.directory} "
                + ("already runs" if same else f"is not newer than the running v{current}")
                + ": nothing to install"
            )
            return EXIT_OK
        try:
            body = _download_body(path, version, None)
        except _Refused as exc:
            say(f"tope-updater: {exc}", file=sys.stderr)
            return EXIT_USAGE
        return await _install(args, client, body)

    return client_call(args, go)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_client_parser(
        sub,
        "install",
        "install a package file of this device (a USB stick's): copy, verify, install",
        json=False,
    )
    p.add_argument(
        "file",
        type=Path,
        metavar="FILE",
        help="the package; it must lie under the updater's local_package_dirs",
    )
    p.add_argument(
        "--version",
        type=version_arg,
        help="the version the package must hold (default: the one its manifest names)",
    )
    p.add_argument(
        "--signature",
        help="the package's Ed25519 signature, base64 (default: FILE.sig"
        " when it exists; required when the updater has a trusted_key)",
    )
    p.add_argument("--watch", action="store_true", help="show the progress of every stage")
    p.set_defaults(func=cmd_install)

    p = add_client_parser(
        sub,
        "usb-install",
        "install the newest signed package at the top of a USB stick's mount point"
        " (what tope-updater-usb@.service runs when the stick is mounted)",
        json=False,
    )
    p.add_argument(
        "directory",
        type=Path,
        metavar="DIR",
        help="the mount point; it must lie under the updater's local_package_dirs",
    )
    p.add_argument("--watch", action="store_true", help="show the progress of every stage")
    p.set_defaults(func=cmd_usb_install)
