#!/usr/bin/env python3
"""Make a Debian 12 (bookworm) root for another architecture, with nothing run in it.

    python3 systemd/debian_root.py --arch armhf ROOT python3.11 libffi-dev …

``mmdebstrap --variant=extract``: apt, running on this machine, resolves the packages
named and their dependencies for that architecture and downloads them from the Debian
mirror; each ``.deb`` is unpacked (``dpkg-deb``), no maintainer script runs. The layout is
merged-/usr, as on an installed Debian 12 (mmdebstrap's ``merged-usr`` hook). Nothing runs
under emulation, so it takes seconds where a debootstrap second stage under qemu-user
takes minutes; the price: no ``/etc/passwd`` entries beyond root's, no ``ld.so.cache``
(the dynamic linker's default paths find the multiarch libraries), no alternatives, no
byte-compiled standard library.

Two users: ``systemd/build_wheels.py`` (the armhf sysroot it cross-compiles against) and
the ``arm`` test tier (tests/support/emulation.py: the root its emulated devices run in).
A root already made (``.tope-sysroot.json`` in it) is kept when it has every package asked
for. Needs ``mmdebstrap`` (apt-get install mmdebstrap) and the mirror; root privileges
(the files keep their owners). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
MARKER = ".tope-sysroot.json"
MERGED_USR_HOOK = Path("/usr/share/mmdebstrap/hooks/merged-usr")
#: Debian's name of each `uname -m` the bundles are built for.
DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def read_marker(root: Path) -> dict[str, object] | None:
    try:
        return dict(json.loads((root / MARKER).read_text()))
    except (OSError, ValueError):
        return None


def ensure_root(
    root: Path, arch: str, packages: Sequence[str], *, timeout: float = 900
) -> dict[str, object]:
    """The root at ``root`` (Debian architecture ``arch``) with ``packages``: made unless a
    marker says it has them all. Returns the marker's record."""
    marker = read_marker(root)
    if marker is not None:
        have = marker.get("include")
        # A root made before the marker recorded what was asked for (build_wheels.py's
        # debootstrap route) is kept as it is.
        if have is None or (isinstance(have, list) and set(packages) <= set(have)):
            return marker
    if shutil.which("mmdebstrap") is None:
        raise SystemExit("debian_root.py: mmdebstrap not found (apt-get install mmdebstrap)")
    started = time.monotonic()
    partial = root.with_name(root.name + ".partial")
    for path in (partial, root):
        if path.exists():
            shutil.rmtree(path)
    root.parent.mkdir(parents=True, exist_ok=True)
    argv = ["mmdebstrap", "--variant=extract", f"--architectures={arch}", "--quiet"]
    if MERGED_USR_HOOK.is_dir():
        argv.append(f"--hook-dir={MERGED_USR_HOOK}")
    # Keep the downloaded .debs to name them in the marker (deleted right after).
    argv += ["--skip=cleanup/apt/cache", f"--include={','.join(packages)}"]
    argv += [SUITE, str(partial), MIRROR]
    log(f"mmdebstrap --variant=extract {SUITE} {arch} into {root}")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"debian_root.py: {' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}")
    archives = partial / "var" / "cache" / "apt" / "archives"
    debs = sorted(deb.name for deb in archives.glob("*.deb"))
    for deb in archives.glob("*.deb"):
        deb.unlink()
    info: dict[str, object] = {
        "debian": SUITE,
        "arch": arch,
        "how": "mmdebstrap --variant=extract (merged-usr; no maintainer scripts)",
        "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - started, 1),
        "include": sorted(set(packages)),
        "packages": debs,
    }
    (partial / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    partial.rename(root)
    log(f"{root}: {len(debs)} packages in {info['seconds']} s")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--arch", required=True, help="Debian architecture: arm64, armhf, amd64")
    ap.add_argument("root", type=Path)
    ap.add_argument("packages", nargs="+")
    args = ap.parse_args(argv)
    print(json.dumps(ensure_root(args.root.resolve(), args.arch, args.packages), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
