"""``tope-updater package build`` and ``package keygen``: make (signed) update packages."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from http_shell.cli.exit_codes import EXIT_FAILED, EXIT_OK
from http_shell.cli.options import version_arg

#: The install root a package targets without ``--root`` (a device's default ``root``).
DEFAULT_ROOT = Path("/opt/tope")


def target_root(args: argparse.Namespace) -> str:
    """``targets root /opt/tope (the default; --root to change)``, or the root given."""
    if args.root is None:
        return f"targets root {DEFAULT_ROOT} (the default; --root to change)"
    return f"targets root {args.root}"


def cmd_package_build(args: argparse.Namespace) -> int:
    from updater_fsm.package import builder

    try:
        result = builder.build_package(
            args.src,
            version=args.version,
            output=args.output,
            root=args.root if args.root is not None else DEFAULT_ROOT,
            modules_config=args.modules_config,
            sign_key=args.sign_key,
            delta_from=args.delta_from,
            base_version=args.base_version,
            updater_bundle=args.updater_bundle,
            compatible=args.compatible,
        )
    except builder.BuildError as exc:
        print(f"tope-updater: package build failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    fields = {
        "package_name": result.path.name,
        "version": args.version,
        "root": str(args.root if args.root is not None else DEFAULT_ROOT),
        "package_size": result.size,
        "package_md5": result.md5,
        "package_sha256": result.sha256,
        "package_signature": result.signature,
        "modules": len(result.manifest.modules),
        "updater": result.manifest.updater.version if result.manifest.updater else None,
        "compatible": result.manifest.compatible,
    }
    if result.manifest.base_version is not None:
        fields["base_version"] = result.manifest.base_version
    if args.json:
        print(json.dumps(fields))
    else:
        print(f"wrote {result.path}: {target_root(args)}")
        for key, value in fields.items():
            if value is not None and key != "root":
                print(f"  {key}: {value}")
    return EXIT_OK


def cmd_package_keygen(args: argparse.Namespace) -> int:
    from updater_fsm.package import builder

    builder.generate_keypair(args.private, args.public)
    print(f"private key: {args.private}\npublic key:  {args.public} (set trusted_key to it)")
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pkg = sub.add_parser("package", help="build update packages").add_subparsers(
        dest="package_command", required=True, metavar="ACTION"
    )
    p = pkg.add_parser("build", help="build a package from a tree mirroring the install root")
    p.add_argument("src", type=Path, help="the files, laid out as under the install root")
    p.add_argument(
        "--version",
        required=True,
        type=version_arg,
        help="the version the package installs: 1.2.0 or v1.2.0",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="the package file to write")
    p.add_argument(
        "--root",
        type=Path,
        help=f"the device's install root the package installs under (default {DEFAULT_ROOT});"
        " a device whose root differs refuses the package",
    )
    p.add_argument("--modules-config", type=Path, help="TOML with per-file service metadata")
    p.add_argument("--sign-key", type=Path, help="Ed25519 private key (PEM) to sign with")
    p.add_argument(
        "--delta-from",
        type=Path,
        metavar="BASE",
        help="write a delta package against BASE: the previous release's package or tree",
    )
    p.add_argument(
        "--base-version",
        type=version_arg,
        help="the version of BASE (required when BASE is a directory)",
    )
    p.add_argument(
        "--updater-bundle",
        type=Path,
        metavar="BUNDLE",
        help="carry a new updater (tope-updater-<version>-<arch>.tar.gz from systemd/bundle.py):"
        " the device's updater switches to it once the device is healthy",
    )
    p.add_argument(
        "--compatible",
        metavar="MODEL",
        help="the device model the package is for (devices whose `compatible` differs refuse"
        " it: INCOMPATIBLE_DEVICE)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_package_build)
    p = pkg.add_parser("keygen", help="create an Ed25519 signing key pair")
    p.add_argument("private", type=Path, help="the private key file to write (PEM; keep it secret)")
    p.add_argument("public", type=Path, help="the public key file to write (PEM; trusted_key)")
    p.set_defaults(func=cmd_package_keygen)
