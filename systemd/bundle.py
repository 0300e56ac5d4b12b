#!/usr/bin/env python3
"""Build offline release bundles: ``dist/tope-updater-<version>-<arch>.tar.gz``.

    python3 systemd/bundle.py                      # x86_64, aarch64 and armv7l
    python3 systemd/bundle.py --arch aarch64 --with-screen -o /tmp/dist

A bundle holds everything ``systemd/install.sh --bundle FILE`` needs on a device without
network: the project as a wheel (``pip wheel --no-deps``), every runtime dependency as a
wheel for CPython 3.11 on that architecture (``pip download --only-binary=:all:
--platform … --python-version 3.11 --implementation cp --abi cp311``), the unit files,
install.sh, uninstall.sh, the Moonraker busy probe, docs/ and ``manifest.json`` (version,
arch, python tag, platform tags, every wheel with its SHA-256, and the ``missing`` list).

Versions are resolved once, for x86_64 (where every dependency publishes wheels), and the
other architectures get the *same* versions (``name==version``, ``--no-deps``), so every
bundle of a release runs the same code. A dependency with no wheel for an architecture is
listed in the manifest's ``missing`` (and MISSING.txt); the bundle is still written, the
summary says so and the exit status is 3, unless the wheel cache (``--wheel-cache``,
default build/wheel-cache/ when it exists) has them: wheels PyPI lacks for armv7l (cffi,
backports-zstd), cross-compiled once from their sdists by ``systemd/build_wheels.py`` and
listed in the manifest's ``built``. An incomplete bundle installs only where pip can find
the missing distributions some other way (``install.sh --pip-args "--find-links DIR"`` with
wheels from piwheels or built on the device, which needs a compiler and the library's
headers). Needs Python >= 3.11 with pip, and network access to PyPI. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON_VERSION = "3.11"
PYTHON_TAG = "cp311"
EXIT_MISSING = 3
DEFAULT_WHEEL_CACHE = REPO / "build" / "wheel-cache"  # systemd/build_wheels.py --cache

# Platform tags pip may pick wheels for, per `uname -m`. glibc only: the printers run
# Debian-based systems (bookworm: glibc 2.36); musllinux wheels would not load there.
# The newest manylinux accepted is 2_28 (2_31 on armv7l, where piwheels-era Debian 11 is
# the floor): wheels built for a newer glibc than the device's would not import.


def _manylinux(arch: str, newest: int) -> list[str]:
    return [f"manylinux2014_{arch}"] + [f"manylinux_2_{n}_{arch}" for n in range(17, newest + 1)]


PLATFORMS: dict[str, list[str]] = {
    "x86_64": _manylinux("x86_64", 28),
    "aarch64": _manylinux("aarch64", 28),
    "armv7l": _manylinux("armv7l", 31),
}
REFERENCE_ARCH = "x86_64"
WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pip(python: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    argv = [python, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def platform_args(arch: str) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    args += ["--abi", PYTHON_TAG, "--abi", "abi3", "--abi", "none"]
    for tag in PLATFORMS[arch]:
        args += ["--platform", tag]
    return args


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_pins(wheels: Path) -> dict[str, str]:
    """normalised name -> version of every wheel in ``wheels``."""
    pins = {}
    for path in wheels.glob("*.whl"):
        match = WHEEL_NAME.match(path.name)
        if match is None:
            raise SystemExit(f"bundle.py: cannot parse wheel name {path.name}")
        pins[normalise(match["name"])] = match["version"]
    return pins


def build_project_wheel(python: str, out: Path, timeout: float) -> Path:
    """``pip wheel --no-deps`` of a clean copy of the checkout (nothing written into it)."""
    with tempfile.TemporaryDirectory(prefix="tope-bundle-src-") as tmp:
        src = Path(tmp) / "src"
        ignore = shutil.ignore_patterns(
            ".*", "build", "dist", "var", "tests", "bench", "*.egg-info", "__pycache__"
        )
        shutil.copytree(REPO, src, ignore=ignore)
        proc = pip(python, ["wheel", "--no-deps", "--wheel-dir", str(out), str(src)], timeout)
        if proc.returncode != 0:
            raise SystemExit(f"bundle.py: pip wheel failed:\n{proc.stdout}\n{proc.stderr}")
    (wheel,) = out.glob("tope_updater-*.whl")
    return wheel


def requirements(with_screen: bool) -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs: list[str] = list(project["dependencies"])
    if with_screen:
        reqs += project["optional-dependencies"]["screen"]
    return reqs


def download(python: str, arch: str, reqs: list[str], dest: Path, timeout: float) -> str | None:
    """``pip download`` ``reqs`` for ``arch`` into ``dest``; None, or pip's error text."""
    proc = pip(python, ["download", "--dest", str(dest), *platform_args(arch), *reqs], timeout)
    return None if proc.returncode == 0 else (proc.stderr.strip() or proc.stdout.strip())


def resolve_arch(
    python: str, arch: str, pins: dict[str, str], dest: Path, timeout: float
) -> list[dict[str, str]]:
    """Download the pinned set for ``arch``; returns the missing list (name, version, why)."""
    wanted = [f"{name}=={version}" for name, version in sorted(pins.items())]
    missing: list[dict[str, str]] = []
    # pip stops at the first pin without a wheel and names it: drop it, try the rest again.
    for _ in range(len(wanted)):
        error = download(python, arch, ["--no-deps", *wanted], dest, timeout)
        if error is None:
            return missing
        named = re.findall(r"No matching distribution found for (\S+)", error)
        if len(named) != 1 or named[0] not in wanted:
            break
        name, version = named[0].split("==")
        missing.append({"name": name, "version": version, "error": error.splitlines()[-1]})
        wanted.remove(named[0])
    for req in wanted:  # pip said something else: one at a time, to name every one
        error = download(python, arch, ["--no-deps", req], dest, timeout)
        if error is not None:
            name, version = req.split("==")
            why = error.splitlines()[-1] if error else "pip download failed"
            missing.append({"name": name, "version": version, "error": why})
    return missing


def from_cache(
    cache: Path, arch: str, missing: list[dict[str, str]], dest: Path
) -> tuple[list[dict[str, str]], list[dict[str, object]]]:
    """Take what ``missing`` names from the wheel cache (``systemd/build_wheels.py``): a wheel
    ``<name>-<version>-cp311-*-linux_<arch>.whl`` with its ``.json`` beside it. Returns
    (still missing, what was built: the ``.json``'s record, for the manifest's ``built``)."""
    still, built = [], []
    for item in missing:
        stem = re.sub(r"[-_.]+", "_", item["name"]).lower()
        pattern = f"{stem}-{item['version']}-{PYTHON_TAG}-*-linux_{arch}.whl"
        found = sorted((cache / "wheels").glob(pattern))
        found = [w for w in found if w.with_name(w.name + ".json").exists()]
        if not found:
            still.append(item)
            continue
        wheel = found[-1]
        info = json.loads(wheel.with_name(wheel.name + ".json").read_text())
        if info.get("sha256") != sha256(wheel):
            raise SystemExit(f"bundle.py: {wheel}: SHA-256 does not match {wheel.name}.json")
        shutil.copy2(wheel, dest / wheel.name)
        keys = ("name", "version", "file", "sha256", "how", "sdist", "sdist_sha256", "needs")
        built.append({key: info.get(key) for key in (*keys, "glibc")})
    return still, built


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


MISSING_TEXT = """\
These runtime dependencies have no wheel on PyPI for CPython {python} on {arch}
(platform tags: {tags}).
install.sh --bundle cannot install them offline from this bundle. Either:
  * build them from their sdists once (systemd/build_wheels.py --cache DIR NAME==VERSION:
    cross-compiled for armv7l) and rebuild the bundle with bundle.py --wheel-cache DIR; or
  * put wheels for them (piwheels.org builds armv7l wheels, or build them on the device
    with `pip wheel NAME==VERSION`: needs gcc and python3-dev, for cffi also libffi-dev)
    into a directory DIR and run
    install.sh --bundle FILE --pip-args "--find-links DIR"; or
  * let pip reach an index that has them (piwheels: --pip-args
    "--extra-index-url https://www.piwheels.org/simple"), which is no longer offline.
Debian's python3-cffi etc. are not seen by the updater's venv (no system site-packages).

"""


def journal_schema() -> int:
    """The journal schema this release writes (``SCHEMA_VERSION`` in updater_fsm/journal.py):
    a self-update refuses a bundle that writes a newer one than the running updater reads."""
    text = (REPO / "updater_fsm" / "journal.py").read_text()
    match = re.search(r"^SCHEMA_VERSION = (\d+)$", text, flags=re.MULTILINE)
    if match is None:
        raise SystemExit("bundle.py: no SCHEMA_VERSION in updater_fsm/journal.py")
    return int(match.group(1))


def stage_bundle(
    arch: str, version: str, project_wheel: Path, wheels: Path, staging: Path, **meta: object
) -> Path:
    """Lay out the bundle directory; returns it."""
    top = staging / f"tope-updater-{version}-{arch}"
    (top / "wheels").mkdir(parents=True)
    shutil.copy2(project_wheel, top / "wheels")
    for wheel in sorted(wheels.glob("*.whl")):
        shutil.copy2(wheel, top / "wheels")
    skip = shutil.ignore_patterns(
        "__pycache__", "*.pyc", "bundle.py", "build_wheels.py", "debian_root.py"
    )
    shutil.copytree(REPO / "systemd", top / "systemd", ignore=skip)
    shutil.copytree(REPO / "docs", top / "docs")
    shutil.copy2(REPO / "README.md", top / "README.md")
    entries = [
        {"file": w.name, "sha256": sha256(w), "size": w.stat().st_size}
        for w in sorted((top / "wheels").glob("*.whl"))
    ]
    manifest = {
        "format": 1,
        "name": "tope-updater",
        "version": version,
        "arch": arch,
        "python": PYTHON_TAG,
        "platforms": PLATFORMS[arch],
        "project_wheel": project_wheel.name,
        "journal_schema": journal_schema(),
        **meta,
        "wheels": entries,
    }
    (top / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    missing = meta.get("missing")
    if isinstance(missing, list) and missing:
        text = MISSING_TEXT.format(python=PYTHON_VERSION, arch=arch, tags=" ".join(PLATFORMS[arch]))
        text += "".join(f"{m['name']}=={m['version']}\n" for m in missing)
        (top / "MISSING.txt").write_text(text)
    return top


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--arch", action="append", choices=sorted(PLATFORMS), help="repeatable")
    ap.add_argument("-o", "--out", type=Path, default=REPO / "dist", help="default dist/")
    ap.add_argument("--with-screen", action="store_true", help="include the `screen` extra")
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs pip")
    ap.add_argument("--timeout", type=float, default=900, help="per pip call, seconds")
    ap.add_argument(
        "--wheel-cache", type=Path, metavar="DIR",
        help="wheels PyPI lacks, built by systemd/build_wheels.py --cache DIR (only read here);\n"
        f"default {DEFAULT_WHEEL_CACHE.relative_to(REPO)}/ when it exists",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.wheel_cache is None and DEFAULT_WHEEL_CACHE.is_dir():
        args.wheel_cache = DEFAULT_WHEEL_CACHE
    archs: list[str] = args.arch or ["x86_64", "aarch64", "armv7l"]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    args.out.mkdir(parents=True, exist_ok=True)
    reqs = requirements(args.with_screen)
    summary = []
    with tempfile.TemporaryDirectory(prefix="tope-bundle-") as tmp:
        work = Path(tmp)
        log("building the project wheel")
        project_wheel = build_project_wheel(args.python, work / "project", args.timeout)
        log(f"resolving {len(reqs)} requirements for {REFERENCE_ARCH}")
        reference = work / f"wheels-{REFERENCE_ARCH}"
        error = download(args.python, REFERENCE_ARCH, reqs, reference, args.timeout)
        if error is not None:
            raise SystemExit(f"bundle.py: cannot resolve for {REFERENCE_ARCH}:\n{error}")
        pins = wheel_pins(reference)
        for arch in archs:
            started = time.monotonic()
            wheels = work / f"wheels-{arch}"
            missing: list[dict[str, str]] = []
            built: list[dict[str, object]] = []
            if arch != REFERENCE_ARCH:
                log(f"downloading {len(pins)} pinned wheels for {arch}")
                missing = resolve_arch(args.python, arch, pins, wheels, args.timeout)
            wheels.mkdir(exist_ok=True)
            if missing and args.wheel_cache is not None:
                missing, built = from_cache(args.wheel_cache, arch, missing, wheels)
                for item in built:
                    log(f"{arch}: {item['file']} from the wheel cache ({item['how']})")
            top = stage_bundle(
                arch, version, project_wheel, wheels, work / f"stage-{arch}",
                screen=args.with_screen, requirements=reqs, missing=missing, built=built,
            )  # fmt: skip
            target = args.out / f"{top.name}.tar.gz"
            with tarfile.open(target.with_suffix(".tmp"), "w:gz") as tar:
                tar.add(top, arcname=top.name)
            target.with_suffix(".tmp").replace(target)
            size = target.stat().st_size
            names = ", ".join(f"{m['name']}=={m['version']}" for m in missing) or "none"
            summary.append((arch, target, size, missing))
            log(f"{arch}: {target} {size / 1e6:.1f} MB in {time.monotonic() - started:.0f} s; "
                f"missing wheels: {names}")  # fmt: skip
    print(json.dumps([
        {"arch": a, "bundle": str(t), "size": s, "missing": m} for a, t, s, m in summary
    ], indent=2))  # fmt: skip
    incomplete = [arch for arch, _, _, missing in summary if missing]
    if incomplete:
        log(f"INCOMPLETE bundles (wheels missing, see MISSING.txt inside): {', '.join(incomplete)}")
        return EXIT_MISSING
    return 0


if __name__ == "__main__":
    sys.exit(main())
