"""The updater's own versioned slots: ``<prefix>/versions/<version>/`` and the links.

::

    <prefix>/versions/0.1.0/        a venv with tope-updater 0.1.0 (+ .tope-slot-complete)
    <prefix>/versions/0.2.0/
    <prefix>/current  -> versions/0.2.0    what the unit's ExecStart runs
    <prefix>/previous -> versions/0.1.0    what the guard goes back to
    <prefix>/probation                     while the new one proves itself (for the guard)
    <prefix>/probation.starts              the guard's start counter
    <prefix>/updater-rollback              the guard's record of a switch back

``systemd/install.sh`` lays them out; a self-update (a package carrying an updater bundle)
builds a slot (:func:`build_slot`), writes the probation and moves the links
(:func:`write_probation`, :func:`switch_current`) and exits for systemd to start the new
updater; the new one ends its probation (:func:`end_probation`). The guard
(``systemd/updater-guard.sh``, POSIX sh, none of this code) reads and writes the same plain
``key=value`` files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, NoReturn

import attrs
import structlog

from updater_fsm import durable, faults, journal
from updater_fsm.core.errors import ErrorCode, UpdaterError

if TYPE_CHECKING:
    import tarfile  # imported by the self-update that unpacks a bundle (issue 22)

_log = structlog.get_logger(__name__)

#: The distribution name the updater is installed as (its wheel, its bundle).
DISTRIBUTION = "tope-updater"
#: A slot is complete once this file exists (install.sh writes it too).
SLOT_MARK = ".tope-slot-complete"
#: The exit status with which the old updater hands over to the new one: ``Restart=on-failure``
#: starts the unit again, now from the slot ``current`` names (EX_TEMPFAIL).
EXIT_SWITCHED = 75
#: How long building a slot (venv + offline pip install) may take.
BUILD_TIMEOUT_S = 600.0


def running_version() -> str:
    """The version of the updater this process runs (its installed distribution's)."""
    # Imported here, not at start: importlib.metadata (zipfile, csv, importlib.resources…)
    # is ~0.6 MB an idle updater that nobody asks for its version never needs.
    import importlib.metadata

    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def python_tag() -> str:
    """``cp311`` for CPython 3.11: the tag a bundle's wheels must be built for."""
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


@attrs.frozen
class Slots:
    """The paths of the updater's slots under ``prefix``."""

    prefix: Path

    @property
    def versions(self) -> Path:
        return self.prefix / "versions"

    @property
    def current(self) -> Path:
        return self.prefix / "current"

    @property
    def previous(self) -> Path:
        return self.prefix / "previous"

    @property
    def probation(self) -> Path:
        return self.prefix / "probation"

    @property
    def starts(self) -> Path:
        return self.prefix / "probation.starts"

    @property
    def record(self) -> Path:
        return self.prefix / "updater-rollback"

    def slot(self, version: str) -> Path:
        return self.versions / version

    def link_version(self, link: Path) -> str | None:
        """The version ``link`` (``current``/``previous``) names; None when missing."""
        try:
            target = os.readlink(link)
        except OSError:
            return None
        head, _, version = target.rpartition("/")
        return version if head in ("versions", str(self.versions)) and version else None


def own_unit() -> str | None:
    """The systemd service this process runs in (from its cgroup), or None outside one."""
    try:
        text = Path("/proc/self/cgroup").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        name = line.rpartition("/")[2]
        if name.endswith(".service"):
            return name
    return None


def find_slots(configured: Path | None) -> Slots | None:
    """The slots this updater runs from: ``configured`` (config ``updater_prefix``), else the
    running venv's, when it is ``<prefix>/versions/<version>``; None when it is neither."""
    if configured is not None:
        return Slots(configured)
    here = Path(sys.prefix)
    if sys.prefix != sys.base_prefix and here.parent.name == "versions":
        return Slots(here.parent.parent)
    return None


@attrs.frozen
class RollbackRecord:
    """What the guard wrote when it put the old updater back."""

    version: str
    previous: str
    reason: str


def _read_key_values(path: Path) -> dict[str, str] | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    pairs = (line.partition("=") for line in text.splitlines())
    return {key: value for key, sep, value in pairs if sep}


def read_rollback_record(slots: Slots) -> RollbackRecord | None:
    """The guard's record of a switch back, or None."""
    values = _read_key_values(slots.record)
    if values is None:
        return None
    return RollbackRecord(
        version=values.get("version", "?"),
        previous=values.get("previous", "?"),
        reason=values.get("reason", "no reason recorded"),
    )


def write_probation(
    slots: Slots, version: str, previous: str, *, deadline: float, max_starts: int
) -> None:
    """Tell the guard that ``version`` is on probation (before ``current`` names it)."""
    text = (
        f"version={version}\nprevious={previous}\n"
        f"deadline={int(deadline)}\nmax_starts={max_starts}\n"
    )
    with contextlib.suppress(FileNotFoundError):
        slots.starts.unlink()  # a count left from an earlier probation does not apply
    durable.atomic_write_bytes(slots.probation, text.encode(), point="updater:probation")


def switch_current(slots: Slots, version: str, previous: str) -> None:
    """``previous`` -> the running slot, then ``current`` -> ``version`` (each atomic)."""
    durable.atomic_symlink(slots.previous, f"versions/{previous}", point="updater:previous")
    durable.atomic_symlink(slots.current, f"versions/{version}", point="updater:current")


def forget_rollback_record(slots: Slots) -> None:
    """Drop a guard's record left from an earlier self-update (before a new one begins)."""
    durable.remove_file(slots.record)


def end_probation(slots: Slots) -> None:
    """The new updater proved itself: the guard leaves it alone from now on."""
    durable.remove_file(slots.probation)
    durable.remove_file(slots.starts)


def collect_slots(slots: Slots) -> list[str]:
    """Delete the slots neither ``current`` nor ``previous`` names, and the guard's record
    (its report is journaled by now). Returns the versions deleted."""
    named = {slots.link_version(slots.current), slots.link_version(slots.previous)}
    removed = []
    if slots.versions.is_dir():
        for entry in sorted(slots.versions.iterdir()):
            if entry.name in named or entry.is_symlink() or not entry.is_dir():
                continue
            shutil.rmtree(entry)
            removed.append(entry.name)
    if removed:
        durable.fsync_dir(slots.versions)
    durable.remove_file(slots.record)
    return removed


@attrs.frozen
class BundleLimits:
    """What an updater bundle may unpack to, judged from its headers before anything is
    written (a release bundle: ~25 wheels, a manifest, a few scripts, ~30 MB).

    Attributes:
        max_members: most entries (files and directories).
        max_bytes: largest sum of the files' sizes.
        max_ratio: largest unpacked/compressed size ratio (a gzip of zeros is ~1000).
        ratio_min_bytes: bundles unpacking to less than this skip the ratio check.
        headroom_bytes: free space left on the work directory's filesystem once unpacked.
    """

    max_members: int = 2000
    max_bytes: int = 1024**3
    max_ratio: float = 50.0
    ratio_min_bytes: int = 16 * 1024**2
    headroom_bytes: int = 64 * 1024**2


def build_slot(
    slots: Slots,
    bundle_file: Path,
    version: str,
    work: Path,
    limits: BundleLimits = BundleLimits(),
) -> None:
    """Install the release bundle ``bundle_file`` into ``<prefix>/versions/<version>``.

    Offline: ``python -m venv`` with the running interpreter, then the slot's pip with
    ``--no-index --find-links <bundle>/wheels``. The bundle's ``manifest.json`` must name
    ``version``, this machine's architecture and this interpreter's tag, and every wheel
    must match its SHA-256. A slot that is already complete is kept; a half-built one
    (no :data:`SLOT_MARK`) is built again. Blocking: call it from a worker thread.

    Raises:
        UpdaterError: ``UPDATER_INSTALL_FAILED`` (or ``UPDATER_ARCH_MISMATCH``) naming the
            problem.
    """
    target = slots.slot(version)
    if (target / SLOT_MARK).is_file():
        _log.info("updater.slot_present", version=version)
        return
    top = _unpack(bundle_file, work, limits)
    wheels = _check_bundle(top, version)
    if target.exists():
        shutil.rmtree(target)  # left half-built by an interrupted run
    slots.versions.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "venv", str(target)], "python -m venv")
    _run(
        [
            str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index",
            "--no-cache-dir", "--disable-pip-version-check", "--find-links", str(wheels),
            f"{DISTRIBUTION}=={version}",
        ],
        "pip install",
    )  # fmt: skip
    # The distribution is installed and names itself `version`; whether its code works is
    # what the probation finds out (this does not import it).
    probe = _run(
        [
            str(target / "bin" / "python"), "-c",
            f"import importlib.metadata as m; print(m.version({DISTRIBUTION!r}))",
        ],
        "the slot's interpreter",
    )  # fmt: skip
    if probe.strip() != version:
        _fail(f"the slot holds tope-updater {probe.strip()!r}, not {version}")
    durable.atomic_write_bytes(target / SLOT_MARK, f"{version}\n".encode())
    durable.fsync_dir(slots.versions)
    faults.crash_point("updater:slot_built")


def _unpack(bundle_file: Path, work: Path, limits: BundleLimits) -> Path:
    import tarfile

    dest = work / "unpacked"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    try:
        with tarfile.open(bundle_file, "r:gz") as tar:
            _judge(tar, bundle_file.stat().st_size, work, limits)
        with tarfile.open(bundle_file, "r:gz") as tar:
            _extract_plain(tar, dest)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        _fail(f"cannot unpack the bundle: {exc}")
    tops = [p for p in dest.iterdir() if p.is_dir()]
    if len(tops) != 1:
        _fail("the bundle must hold exactly one top directory")
    return tops[0]


def _judge(tar: tarfile.TarFile, compressed: int, work: Path, limits: BundleLimits) -> None:
    """Refuse a bundle from its headers alone, before a byte of it is written: too many
    entries, too large in all, too compressed, an unsafe name or kind of entry, or more
    than the work directory's filesystem can hold.

    A tar member's size is exact (the format is positional), so summing the headers' sizes
    is what unpacking would write. Each header is judged as it is read: a member declaring
    terabytes is refused before its data is skipped.
    """
    total = 0
    for members, member in enumerate(tar, start=1):
        if members > limits.max_members:
            _fail(f"the bundle has more than {limits.max_members} entries")
        _judge_name(member)
        if not (member.isdir() or member.isfile()) or member.issparse():
            _fail(f"the bundle has an entry that is not a file or directory: {member.name!r}")
        total += member.size if member.isfile() else 0
        if total > limits.max_bytes:
            _fail(f"the bundle unpacks to more than {_mib(limits.max_bytes)}")
    if total >= limits.ratio_min_bytes and total > limits.max_ratio * max(compressed, 1):
        _fail(
            f"the bundle unpacks to {_mib(total)} from {_mib(compressed)}: more than"
            f" {limits.max_ratio:g} times its size"
        )
    st = os.statvfs(work)
    free = st.f_bavail * st.f_frsize
    if total + limits.headroom_bytes > free:
        _fail(f"the bundle unpacks to {_mib(total)}, {work} has {_mib(free)} free")


def _judge_name(member: tarfile.TarInfo) -> None:
    parts = PurePosixPath(member.name).parts
    if not parts or member.name.startswith("/") or ".." in parts or "\x00" in member.name:
        _fail(f"the bundle has an unsafe entry {member.name!r}")


def _mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB"


def _extract_plain(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract only directories and regular files with relative, ``..``-free names (what
    ``filter="data"`` does on Python >= 3.11.4; Debian 12's 3.11.2 has no filters).
    :func:`_judge` read the same headers first; they are checked again here, as they are
    read a second time from the file."""
    for member in tar:
        _judge_name(member)
        parts = PurePosixPath(member.name).parts
        target = dest.joinpath(*parts)
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
        elif member.isfile() and not member.issparse():
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with source, open(target, "xb") as out:
                shutil.copyfileobj(source, out)
        else:
            _fail(f"the bundle has an entry that is not a file or directory: {member.name!r}")


def _check_bundle(top: Path, version: str) -> Path:
    """The bundle's wheel directory, after checking its manifest and every wheel's SHA-256."""
    try:
        manifest = json.loads((top / "manifest.json").read_text(encoding="utf-8"))
        name, arch, tag = manifest["name"], manifest["arch"], manifest["python"]
        bundle_version, wheels = manifest["version"], manifest["wheels"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _fail(f"the bundle's manifest.json is unusable: {exc!r}")
    if name != DISTRIBUTION or bundle_version != version:
        _fail(f"the bundle is {name} {bundle_version}, the package says {version}")
    machine = platform.machine()
    if arch != machine:
        raise UpdaterError(
            ErrorCode.UPDATER_ARCH_MISMATCH, f"the bundle is for {arch}, this device is {machine}"
        )
    if tag != python_tag():
        _fail(f"the bundle's wheels are for {tag}, this updater runs {python_tag()}")
    schema = manifest.get("journal_schema")
    if not isinstance(schema, int) or schema > journal.SCHEMA_VERSION:
        _fail(
            f"the new updater writes journal schema {schema!r}, this one reads up to"
            f" {journal.SCHEMA_VERSION}: it could not be put back (install it with install.sh)"
        )
    if manifest.get("missing"):
        _fail(f"the bundle lacks wheels for {manifest['missing']!r}")
    _check_built(manifest.get("built") or [])
    directory = top / "wheels"
    if not isinstance(wheels, list) or not all(
        isinstance(w, dict) and isinstance(w.get("file"), str) and isinstance(w.get("sha256"), str)
        for w in wheels
    ):
        _fail("the bundle's manifest.json is unusable: wheels must be a list of {file, sha256}")
    for wheel in wheels:
        name = wheel["file"]
        path = directory / name
        if "/" in name or not path.is_file():
            _fail(f"the bundle has no wheel {name!r}")
        if hashlib.sha256(path.read_bytes()).hexdigest() != wheel["sha256"]:
            _fail(f"{name}: SHA-256 does not match the bundle's manifest.json")
    return directory


def _check_built(built: object) -> None:
    """Wheels built from source (``bundle.py --wheel-cache``) name the shared libraries and
    the glibc they were linked against: refuse a bundle whose code would not load here."""
    if not isinstance(built, list) or not all(isinstance(b, dict) for b in built):
        _fail("the bundle's manifest.json is unusable: built must be a list of objects")
    _, _, release = (os.confstr("CS_GNU_LIBC_VERSION") or "glibc 0.0").partition(" ")
    have = tuple(int(n) for n in release.split(".")[:2])
    for wheel in built:
        what = f"{wheel.get('name')} {wheel.get('version')} (built from source)"
        need = str(wheel.get("glibc") or "0.0")
        try:
            needed = tuple(int(n) for n in need.split(".")[:2])
        except ValueError:
            _fail(f"{what}: bad glibc {need!r} in the bundle's manifest.json")
        if have < needed:
            _fail(f"{what} needs glibc >= {need}, this device has {release}")
        for lib in wheel.get("needs") or []:
            if not isinstance(lib, str) or not re.fullmatch(r"lib[\w.+-]+\.so(\.[0-9]+)*", lib):
                _fail(f"{what}: {lib!r} is not a library's soname (libNAME.so.N)")
            try:
                import ctypes  # only a bundle's check needs it (~0.3 MB at start otherwise)

                ctypes.CDLL(lib)  # by soname: the dynamic linker's own search, as at import
            except OSError:
                _fail(f"{what} needs {lib}, which this device lacks")


def _run(argv: list[str], what: str) -> str:
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_NO_CACHE_DIR": "1"}
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _fail(f"{what}: {exc}")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        _fail(f"{what} exited {proc.returncode}: {' | '.join(tail)}")
    return proc.stdout


def _fail(detail: str) -> NoReturn:
    raise UpdaterError(ErrorCode.UPDATER_INSTALL_FAILED, detail)
