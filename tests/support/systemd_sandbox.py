"""A real systemd, booted as PID 1 of private namespaces, for service-control tests.

How it works: ``unshare --mount --pid --cgroup --uts --ipc --fork --mount-proc`` runs a boot
script that makes every mount private, puts a fresh tmpfs on ``/run``, mounts a private
cgroup2 hierarchy on ``/sys/fs/cgroup``, copies the test units into
``/run/systemd/system`` and ``exec``\\ s ``/lib/systemd/systemd --system
--unit=tope-sandbox.target``. The sandbox is torn down by SIGKILLing that systemd (the
kernel then kills every process of the PID namespace) and removing its cgroup.

**The filesystem is shared with the host** (test units run scripts from ``tmp_path``), so
a systemd that started the distribution's early-boot units could wreck the host; above all
``systemd-tmpfiles-setup.service`` would empty the host's ``/tmp``. Several independent
guards keep that from happening:

* ``SYSTEMD_UNIT_PATH=/run/systemd/transient:/run/systemd/system`` (no trailing ``:``):
  the sandbox systemd reads unit files from its private ``/run`` only, never from
  ``/lib``, ``/etc``; ``/run/systemd/transient`` holds only the units created in the
  sandbox (``systemd-run``), which a real systemd keeps across ``daemon-reload`` too;
* every unit file of the host's unit directories (and the explicitly dangerous ones in
  :data:`DANGEROUS_UNITS`) is masked there as well (symlink to ``/dev/null``), so even a
  reference by name cannot start one;
* ``SYSTEMD_GENERATOR_PATH`` / ``SYSTEMD_ENVIRONMENT_GENERATOR_PATH`` point at an empty
  directory and all generators are masked too;
* ``container=tope-sandbox`` tells systemd it runs in a container, so it leaves host-global
  kernel state (clock, timezone, kernel modules, Ctrl-Alt-Del) alone;
* the boot target has ``DefaultDependencies=no`` and pulls in nothing; stub targets
  (``sysinit.target``, ``basic.target``, ``shutdown.target`` …) with no dependencies let
  ordinary units with default dependencies start;
* :meth:`SystemdSandbox.systemctl` refuses verbs that write outside ``/run`` (``enable``,
  ``mask``, ``set-default`` …) or power the machine off.

Use the ``systemd_sandbox`` fixture (function scope; a boot takes well under a second)::

    def test_x(systemd_sandbox, tmp_path):
        systemd_sandbox.install_unit("demo.service", "[Service]\\nExecStart=/bin/sleep 60\\n")
        systemd_sandbox.daemon_reload()
        ctl = ServiceController(systemd_sandbox.systemctl_prefix)

The fixture skips (with the reason) when not root, when ``/lib/systemd/systemd``,
``unshare`` or ``nsenter`` is missing, or when the namespaces cannot be created.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

import pytest

SYSTEMD_BINARY = Path("/lib/systemd/systemd")
BOOT_TARGET = "tope-sandbox.target"

#: Units that must never run in the sandbox because they write outside its namespaces.
#: Masked explicitly even when the host has no such file (another distribution might).
DANGEROUS_UNITS: tuple[str, ...] = (
    "systemd-tmpfiles-setup.service",
    "systemd-tmpfiles-setup-dev.service",
    "systemd-tmpfiles-setup-dev-early.service",
    "systemd-tmpfiles-clean.service",
    "systemd-tmpfiles-clean.timer",
    "tmp.mount",
    "systemd-sysctl.service",
    "systemd-sysusers.service",
    "systemd-remount-fs.service",
    "systemd-modules-load.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.mount",
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-journald.service",
    "systemd-journald@.service",
    "systemd-journald.socket",
    "systemd-journald@.socket",
    "systemd-journald-dev-log.socket",
    "systemd-journald-audit.socket",
    "systemd-journald-varlink@.socket",
    "systemd-journal-flush.service",
    "systemd-journal-catalog-update.service",
    "systemd-logind.service",
    "dbus.service",
    "dbus.socket",
    "dbus-broker.service",
    "getty@.service",
    "serial-getty@.service",
    "console-getty.service",
    "container-getty@.service",
    "autovt@.service",
    "systemd-udevd.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service",
    "systemd-udev-settle.service",
    "systemd-random-seed.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "systemd-machine-id-commit.service",
    "systemd-firstboot.service",
    "systemd-hwdb-update.service",
    "systemd-update-done.service",
    "ldconfig.service",
    "systemd-timesyncd.service",
    "systemd-pstore.service",
    "systemd-boot-system-token.service",
    "systemd-repart.service",
    "systemd-growfs-root.service",
    "systemd-fsck-root.service",
    "systemd-fsck@.service",
    "systemd-quotacheck.service",
    "quotaon.service",
    "systemd-networkd.service",
    "systemd-resolved.service",
    "systemd-rfkill.service",
    "systemd-backlight@.service",
    "systemd-sysext.service",
    "systemd-confext.service",
    "systemd-pcrphase.service",
    "systemd-pcrphase-sysinit.service",
    "kmod-static-nodes.service",
    "hwclock.service",
    "apt-daily.service",
    "apt-daily-upgrade.service",
    "dpkg-db-backup.service",
    "e2scrub_all.service",
    "e2scrub_reap.service",
    "fstrim.service",
    "man-db.service",
    "postgresql.service",
    "postgresql@.service",
)

#: Targets that ordinary units' default dependencies name; the sandbox provides empty ones.
STUB_TARGETS: tuple[str, ...] = (
    "sysinit.target",
    "basic.target",
    "shutdown.target",
    "sockets.target",
    "timers.target",
    "paths.target",
    "slices.target",
    "local-fs-pre.target",
    "local-fs.target",
    "remote-fs-pre.target",
    "remote-fs.target",
    "swap.target",
    "umount.target",
    "network-pre.target",
    "network.target",
    "network-online.target",
    "nss-lookup.target",
    "time-set.target",
    "time-sync.target",
    "multi-user.target",
    "graphical.target",
    "final.target",
)

_HOST_UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
)
_HOST_GENERATOR_DIRS = (
    "/etc/systemd/system-generators",
    "/usr/local/lib/systemd/system-generators",
    "/lib/systemd/system-generators",
    "/usr/lib/systemd/system-generators",
)
_MASKABLE_SUFFIXES = (".service", ".socket", ".timer", ".path", ".mount", ".automount", ".swap")

#: systemctl verbs that would write outside the sandbox's private /run (unit links in /etc)
#: or act on the machine; refused by :meth:`SystemdSandbox.systemctl` unless ``--runtime``.
_PERSISTENT_VERBS = frozenset(
    {"enable", "disable", "reenable", "preset", "preset-all", "mask", "unmask", "link"}
    | {"revert", "edit", "set-property", "set-default", "add-wants", "add-requires"}
)
_FORBIDDEN_VERBS = frozenset(
    {"poweroff", "reboot", "halt", "kexec", "suspend", "hibernate", "hybrid-sleep"}
    | {"suspend-then-hibernate", "switch-root", "default", "rescue", "emergency"}
)

_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@\\-]+$")

# The boot script runs inside the new namespaces. `unshare` already makes mounts private;
# doing it again is cheap insurance that nothing below propagates to the host.
_BOOT_SCRIPT = """#!/bin/sh
set -eu
stage="$1"
mount --make-rprivate /
mount -t tmpfs -o mode=0755,size=64m tope-sandbox-run /run
umount -R -l /sys/fs/cgroup 2>/dev/null || true
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /run/systemd/system /run/systemd/system-generators /run/tope-sandbox-empty
cp -a "$stage/units/." /run/systemd/system/
cp -a "$stage/generators/." /run/systemd/system-generators/
export SYSTEMD_UNIT_PATH=/run/systemd/transient:/run/systemd/system
export SYSTEMD_GENERATOR_PATH=/run/tope-sandbox-empty
export SYSTEMD_ENVIRONMENT_GENERATOR_PATH=/run/tope-sandbox-empty
export container=tope-sandbox
echo booting > "$stage/booted"
exec /lib/systemd/systemd --system --unit={target} --log-target=null --show-status=false
"""

_TARGET_TEXT = """[Unit]
Description=tope-updater test sandbox
DefaultDependencies=no
AllowIsolate=yes
"""

_STUB_TEXT = """[Unit]
Description=sandbox stub for %n
DefaultDependencies=no
"""


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run here (not root, no systemd, namespaces refused …)."""


def unavailable_reason() -> str | None:
    """Why a sandbox cannot boot on this machine, or ``None`` if it should."""
    if os.geteuid() != 0:
        return "systemd sandbox needs root (unshare + a private systemd as PID 1)"
    if not SYSTEMD_BINARY.exists():
        return f"systemd sandbox needs {SYSTEMD_BINARY}"
    for tool in ("unshare", "nsenter", "mount", "systemctl"):
        if shutil.which(tool) is None:
            return f"systemd sandbox needs `{tool}` on PATH"
    if _cgroup2_mount() is None:
        return "systemd sandbox needs a cgroup2 hierarchy mounted on the host"
    machine_id = Path("/etc/machine-id")
    try:
        valid_id = re.fullmatch(r"[0-9a-f]{32}\s*", machine_id.read_text()) is not None
    except OSError:
        valid_id = False
    if not valid_id:
        # Without a machine id systemd thinks it is the first boot and applies unit presets,
        # which writes enablement symlinks into the host's /etc.
        return "systemd sandbox needs a valid /etc/machine-id (else systemd does a first boot)"
    return None


def _cgroup2_mount() -> Path | None:
    """Where the host's cgroup2 (unified) hierarchy is mounted, if anywhere."""
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                return Path(left.split(" ")[4])
    return None


def _own_cgroup2_path() -> str:
    """This process's cgroup in the unified hierarchy (``"/"`` on this CI machine)."""
    with open("/proc/self/cgroup", encoding="utf-8") as cg:
        for line in cg:
            if line.startswith("0::"):
                return line[3:].strip()
    return "/"


def _host_units_to_mask(keep: set[str]) -> list[str]:
    names = set(DANGEROUS_UNITS)
    for directory in _HOST_UNIT_DIRS:
        with contextlib.suppress(OSError):
            for entry in os.scandir(directory):
                if entry.name.endswith(_MASKABLE_SUFFIXES) and not entry.is_dir():
                    names.add(entry.name)
    return sorted(names - keep)


def _host_generators() -> list[str]:
    names: set[str] = set()
    for directory in _HOST_GENERATOR_DIRS:
        with contextlib.suppress(OSError):
            names.update(os.listdir(directory))
    return sorted(names)


def _check_unit_name(name: str) -> None:
    if not _UNIT_NAME.match(name) or name in {".", ".."}:
        raise ValueError(f"not a valid unit file name: {name!r}")


class SystemdSandbox:
    """One private systemd (PID 1 of its own PID, mount, cgroup, UTS and IPC namespaces).

    Args:
        boot_timeout: how long :meth:`boot` waits for systemd to answer ``systemctl``.
    """

    def __init__(self, *, boot_timeout: float = 10.0) -> None:
        self.boot_timeout = boot_timeout
        self._unshare: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._stage: Path | None = None
        self._cgroup: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The sandbox systemd's PID as seen from the host."""
        if self._pid is None:
            raise RuntimeError("systemd sandbox is not booted")
        return self._pid

    @property
    def nsenter_prefix(self) -> list[str]:
        """Argv prefix that runs a command inside the sandbox (mount + PID namespaces)."""
        return ["nsenter", "-t", str(self.pid), "-m", "-p"]

    @property
    def systemctl_prefix(self) -> list[str]:
        """Argv that runs the sandbox's ``systemctl``; give it to ``ServiceController``."""
        return [*self.nsenter_prefix, "systemctl"]

    @property
    def unit_dir(self) -> Path:
        """The sandbox's ``/run/systemd/system`` as a host path (via ``/proc/PID/root``)."""
        return Path(f"/proc/{self.pid}/root/run/systemd/system")

    def boot(self, units: Mapping[str, str] | None = None) -> None:
        """Boot systemd with ``units`` (file name → unit file text) installed (not started).

        Raises:
            SandboxUnavailable: this machine cannot run the sandbox, or systemd did not
                come up within ``boot_timeout`` (the half-booted sandbox is torn down).
        """
        if self._pid is not None:
            raise RuntimeError("systemd sandbox already booted")
        reason = unavailable_reason()
        if reason is not None:
            raise SandboxUnavailable(reason)
        units = dict(units or {})
        for name in units:
            _check_unit_name(name)
        try:
            self._prepare_stage(units)
            self._make_cgroup()
            self._launch()
            self._wait_running()
        except BaseException:
            self.shutdown()
            raise

    def _prepare_stage(self, units: Mapping[str, str]) -> None:
        stage = Path(tempfile.mkdtemp(prefix="tope-systemd-sandbox-"))
        self._stage = stage
        unit_dir = stage / "units"
        gen_dir = stage / "generators"
        unit_dir.mkdir()
        gen_dir.mkdir()
        provided = {BOOT_TARGET, *STUB_TARGETS, *units}
        for name in _host_units_to_mask(provided):
            (unit_dir / name).symlink_to("/dev/null")
        for name in _host_generators():
            (gen_dir / name).symlink_to("/dev/null")
        (unit_dir / BOOT_TARGET).write_text(_TARGET_TEXT)
        for name in STUB_TARGETS:
            (unit_dir / name).write_text(_STUB_TEXT)
        for name, text in units.items():
            (unit_dir / name).write_text(text)
        script = stage / "boot.sh"
        script.write_text(_BOOT_SCRIPT.format(target=BOOT_TARGET))
        script.chmod(0o755)

    def _make_cgroup(self) -> None:
        # A dedicated cgroup (entered before unsharing the cgroup namespace) makes the
        # sandbox's cgroup tree a subtree we can delete, instead of systemd claiming the
        # host's cgroup root.
        mount = _cgroup2_mount()
        assert mount is not None
        own = _own_cgroup2_path().lstrip("/")
        cgroup = mount / own / f"tope-sandbox-{uuid.uuid4().hex[:12]}"
        cgroup.mkdir()
        self._cgroup = cgroup

    def _launch(self) -> None:
        assert self._stage is not None and self._cgroup is not None
        argv = [
            # Enter the dedicated cgroup first, so the new cgroup namespace is rooted there.
            "/bin/sh",
            "-c",
            'echo $$ > "$1" && shift && exec "$@"',
            "sh",
            str(self._cgroup / "cgroup.procs"),
            "unshare",
            "--mount",
            "--pid",
            "--cgroup",
            "--uts",
            "--ipc",
            "--fork",
            "--mount-proc",
            "--propagation=private",
            "--kill-child=SIGKILL",
            str(self._stage / "boot.sh"),
            str(self._stage),
        ]
        with open(self._stage / "unshare.log", "wb") as log:
            self._unshare = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
            )

    def _find_init_pid(self) -> int | None:
        assert self._unshare is not None
        children = Path(f"/proc/{self._unshare.pid}/task/{self._unshare.pid}/children")
        try:
            pids = children.read_text().split()
        except OSError:
            return None
        return int(pids[0]) if pids else None

    def _wait_running(self) -> None:
        assert self._unshare is not None and self._stage is not None
        deadline = time.monotonic() + self.boot_timeout
        last = ""
        while time.monotonic() < deadline:
            if self._unshare.poll() is not None:
                log = (self._stage / "unshare.log").read_text(errors="replace").strip()
                raise SandboxUnavailable(f"unshare exited {self._unshare.returncode}: {log}")
            if self._pid is None:
                self._pid = self._find_init_pid()
            if self._pid is not None:
                try:
                    exe = os.readlink(f"/proc/{self._pid}/exe")
                except OSError:
                    exe = ""
                if exe.endswith("/systemd"):
                    proc = self.systemctl("is-system-running", timeout=5)
                    state = proc.stdout.strip()
                    last = state or proc.stderr.strip()
                    if state in {"running", "degraded"}:
                        return
            time.sleep(0.02)
        raise SandboxUnavailable(f"sandbox systemd not running after {self.boot_timeout} s: {last}")

    def shutdown(self) -> None:
        """Kill the sandbox (systemd and every process in it) and remove its traces."""
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
        if self._unshare is not None:
            if self._unshare.poll() is None and self._pid is None:
                self._unshare.kill()
            try:
                self._unshare.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._unshare.kill()
                self._unshare.wait(timeout=10)
        if self._pid is not None:
            # The PID namespace's init is dead; wait until the kernel reaped all its members.
            deadline = time.monotonic() + 5
            while Path(f"/proc/{self._pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        if self._cgroup is not None:
            self._remove_cgroup(self._cgroup)
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
        self._unshare = None
        self._pid = None
        self._cgroup = None
        self._stage = None

    @staticmethod
    def _remove_cgroup(cgroup: Path) -> None:
        deadline = time.monotonic() + 5
        while cgroup.exists():
            dirs = sorted(
                (Path(root) for root, _, _ in os.walk(cgroup)),
                key=lambda p: len(p.parts),
                reverse=True,
            )
            for d in dirs:
                with contextlib.suppress(OSError):
                    d.rmdir()
            if not cgroup.exists() or time.monotonic() > deadline:
                return
            time.sleep(0.02)  # members still exiting: cgroup busy

    def __enter__(self) -> SystemdSandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    # -- operating -------------------------------------------------------------------------

    def install_unit(self, name: str, text: str) -> None:
        """Write a unit file into the sandbox's ``/run/systemd/system`` (then reload)."""
        _check_unit_name(name)
        target = self.unit_dir / name
        tmp = self.unit_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, target)

    def remove_unit(self, name: str) -> None:
        """Delete a unit file from the sandbox (then :meth:`daemon_reload`)."""
        _check_unit_name(name)
        with contextlib.suppress(FileNotFoundError):
            (self.unit_dir / name).unlink()

    def daemon_reload(self) -> None:
        """``systemctl daemon-reload`` in the sandbox; raises if it fails."""
        self.systemctl("daemon-reload", check=True)

    def systemctl(
        self, *args: str, check: bool = False, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the sandbox's ``systemctl`` with ``args`` and return its result (text).

        Verbs that would write to the host's ``/etc`` (``enable``, ``mask`` …, unless given
        ``--runtime``) or power the machine off are refused with ``ValueError``.
        """
        verbs = [a for a in args if not a.startswith("-")]
        verb = verbs[0] if verbs else ""
        if verb in _FORBIDDEN_VERBS or (verb in _PERSISTENT_VERBS and "--runtime" not in args):
            raise ValueError(f"systemctl {verb} is not allowed in the sandbox (host /etc)")
        return subprocess.run(
            [*self.systemctl_prefix, "--no-pager", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def members(self) -> list[int]:
        """Host PIDs of every process still in the sandbox's cgroup tree."""
        if self._cgroup is None:
            return []
        pids: list[int] = []
        for root, _, files in os.walk(self._cgroup):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError):
                    pids.extend(int(p) for p in Path(root, "cgroup.procs").read_text().split())
        return pids


@pytest.fixture
def systemd_sandbox() -> Iterator[SystemdSandbox]:
    """A freshly booted :class:`SystemdSandbox`, torn down after the test.

    Skips when this machine cannot run one (not root, no systemd, namespaces refused).
    """
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    sandbox = SystemdSandbox()
    try:
        sandbox.boot()
    except SandboxUnavailable as exc:
        pytest.skip(f"systemd sandbox unavailable: {exc}")
    try:
        yield sandbox
    finally:
        sandbox.shutdown()


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``systemd`` marker (also declared in pyproject.toml)."""
    config.addinivalue_line(
        "markers", "systemd: needs a real systemd booted in a private namespace (root only)"
    )
