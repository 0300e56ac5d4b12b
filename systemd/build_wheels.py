#!/usr/bin/env python3
"""Build armv7l wheels PyPI lacks from their sdists, into a cache ``bundle.py`` reads.

    python3 systemd/build_wheels.py --cache build/wheel-cache cffi==2.1.1 backports-zstd==1.8.0
    python3 systemd/bundle.py --wheel-cache build/wheel-cache

PyPI has no CPython 3.11 armv7l wheel for some runtime dependencies (cffi, backports-zstd).
This builds them once, on an x86_64 Debian 12 host, and keeps them in ``CACHE/wheels``;
a wheel already there (same name, version, ``cp311``, ``linux_armv7l``) is never rebuilt.

How: **cross-compiled**, not emulated. ``gcc-arm-linux-gnueabihf`` (Debian's cross compiler,
gcc 12) compiles against a Debian 12 (bookworm) armhf sysroot, ``CACHE/sysroot-armhf``:
made by ``systemd/debian_root.py`` (``mmdebstrap --variant=extract``: python3.11,
libpython3.11-dev, libffi-dev, libc6-dev and their dependencies unpacked, no maintainer
script run, nothing emulated: a sysroot, not a system). A sysroot an older version made
with ``debootstrap --foreign`` is kept. The
host's CPython 3.11 runs setuptools with the sysroot's ``_sysconfigdata`` (so the extension
gets the armhf suffix and Debian's flags) and ``_PYTHON_HOST_PLATFORM=linux-armv7l`` (so
the wheel is tagged ``linux_armv7l``). Each wheel gets a ``<wheel>.json`` beside it: the
sdist and its SHA-256, the compiler, the sysroot, the shared libraries it needs beyond
glibc (``DT_NEEDED``) and the newest glibc symbol version it uses; ``bundle.py`` copies
that into the bundle's ``manifest.json`` (``built``) and ``install.sh --bundle`` checks the
libraries are on the device.

Needs: CPython 3.11 to run it (the wheels are cp311); root the first time (mmdebstrap);
(apt) gcc-arm-linux-gnueabihf, mmdebstrap, binutils-arm-linux-gnueabihf (comes with the
compiler); network to PyPI and a Debian mirror the first time. Running the result
needs an armv7l machine or qemu-user: see docs/DEPLOYMENT.md (tests/e2e/test_armv7l.py).
Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

from debian_root import ensure_root

TRIPLET = "arm-linux-gnueabihf"
PLATFORM_TAG = "linux_armv7l"
PYTHON_TAG = "cp311"
SYSROOT_PACKAGES = ["python3.11", "libpython3.11-dev", "libffi-dev", "libc6-dev"]
BUILD_REQUIREMENTS = ["setuptools>=80", "wheel"]
GLIBC_VERSION = re.compile(r"GLIBC_(\d+)\.(\d+)")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(argv: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"build_wheels.py: {' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}")
    return str(proc.stdout)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ensure_sysroot(root: Path) -> dict[str, object]:
    """The Debian armhf sysroot, made once (systemd/debian_root.py: mmdebstrap, nothing run
    in it; its marker records what is in it)."""
    return ensure_root(root, "armhf", SYSROOT_PACKAGES)


def ensure_build_venv(venv: Path) -> Path:
    """A host venv with the build backends (made once; the builds run without isolation)."""
    python = venv / "bin" / "python"
    if not python.exists():
        run([sys.executable, "-m", "venv", str(venv)])
        run([str(python), "-m", "pip", "install", "-q", *BUILD_REQUIREMENTS])
    return python


def cross_env(root: Path, sysconfig_dir: Path) -> dict[str, str]:
    (data,) = (root / "usr" / "lib" / "python3.11").glob(f"_sysconfigdata__linux_{TRIPLET}.py")
    shutil.copy2(data, sysconfig_dir / data.name)
    cc = f"{TRIPLET}-gcc --sysroot={root}"
    includes = f"-I{root}/usr/include/python3.11 -I{root}/usr/include/{TRIPLET}/python3.11"
    return {
        **os.environ,
        "CC": cc,
        "LDSHARED": f"{cc} -shared",
        "CFLAGS": includes,
        "_PYTHON_HOST_PLATFORM": "linux-armv7l",
        "_PYTHON_SYSCONFIGDATA_NAME": data.stem,
        "PYTHONPATH": str(sysconfig_dir),
        "PKG_CONFIG_LIBDIR": f"{root}/usr/lib/{TRIPLET}/pkgconfig:{root}/usr/share/pkgconfig",
        "PKG_CONFIG_SYSROOT_DIR": str(root),
    }


def inspect(wheel: Path) -> tuple[list[str], str]:
    """(shared libraries the extensions need beyond glibc, newest GLIBC_x.y they use)."""
    needed: set[str] = set()
    newest = (0, 0)
    glibc = {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "ld-linux-armhf.so.3"}
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if not name.endswith(".so"):
                continue
            so = Path(zf.extract(name, tmp))
            dynamic = run([f"{TRIPLET}-readelf", "-d", str(so)])
            needed |= set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic))
            symbols = run([f"{TRIPLET}-objdump", "-T", str(so)])
            for major, minor in GLIBC_VERSION.findall(symbols):
                newest = max(newest, (int(major), int(minor)))
    return sorted(needed - glibc), f"{newest[0]}.{newest[1]}"


def build(req: str, cache: Path, root: Path, sysroot_info: dict[str, object]) -> Path:
    name, _, version = req.partition("==")
    if not version:
        raise SystemExit(f"build_wheels.py: {req}: give NAME==VERSION")
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pattern = f"{normalise(name)}-{version}-{PYTHON_TAG}-*-{PLATFORM_TAG}.whl"
    for wheel in sorted(wheels.glob(pattern)):
        if wheel.with_name(wheel.name + ".json").exists():
            log(f"{req}: cached, {wheel.name}")
            return wheel
    python = ensure_build_venv(cache / "build-venv")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tope-wheel-") as tmp:
        work = Path(tmp)
        run([sys.executable, "-m", "pip", "download", "--no-binary=:all:", "--no-deps",
             "--dest", str(work / "sdist"), req])  # fmt: skip
        (sdist,) = (work / "sdist").iterdir()
        with tarfile.open(sdist) as tar:
            tar.extractall(work / "src", filter="data")
        (src,) = (work / "src").iterdir()
        (work / "sysconfig").mkdir()
        log(f"{req}: cross-compiling {sdist.name} for {PLATFORM_TAG}")
        run([str(python), "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--no-index", "--wheel-dir", str(work / "out"), str(src)],
            env=cross_env(root, work / "sysconfig"))  # fmt: skip
        (built,) = (work / "out").glob(pattern)
        needs, glibc = inspect(built)
        compiler = run([f"{TRIPLET}-gcc", "--version"]).splitlines()[0]
        info = {
            "name": name,
            "version": version,
            "file": built.name,
            "sha256": sha256(built),
            "how": f"built from the sdist by systemd/build_wheels.py: cross-compiled ({compiler}) "
            f"against a Debian {sysroot_info['debian']} armhf sysroot",
            "sdist": sdist.name,
            "sdist_sha256": sha256(sdist),
            "needs": needs,
            "glibc": glibc,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - started),
        }
        target = wheels / built.name
        shutil.copy2(built, target.with_suffix(".tmp"))
        target.with_suffix(".tmp").replace(target)
        target.with_name(target.name + ".json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"{req}: {target.name} in {info['build_seconds']} s; needs {needs or 'glibc only'}, "
        f"glibc >= {glibc}")  # fmt: skip
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True, help="the wheel cache (and the sysroot)")
    ap.add_argument("--sysroot", type=Path, help="default CACHE/sysroot-armhf")
    ap.add_argument("requirements", nargs="+", metavar="NAME==VERSION")
    args = ap.parse_args(argv)
    if sys.version_info[:2] != (3, 11):
        # The wheels' cp311 tag and the armhf sysroot's headers both mean CPython 3.11.
        raise SystemExit(f"build_wheels.py: run it with CPython 3.11, not {sys.version.split()[0]}")
    for tool in (f"{TRIPLET}-gcc", f"{TRIPLET}-readelf"):
        if shutil.which(tool) is None:
            raise SystemExit(f"build_wheels.py: {tool} not found (apt-get install "
                             "gcc-arm-linux-gnueabihf mmdebstrap)")  # fmt: skip
    cache = args.cache.resolve()
    root = (args.sysroot or cache / "sysroot-armhf").resolve()
    info = ensure_sysroot(root)
    for req in args.requirements:
        print(build(req, cache, root, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
