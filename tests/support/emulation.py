"""Devices of another architecture under qemu-user, for the ``arm`` tier (tests/e2e/test_arm.py).

**The emulated root.** A Debian 12 root for arm64 or armhf made by systemd/debian_root.py
(``mmdebstrap --variant=extract``: the packages below and their dependencies unpacked on
this machine, no maintainer script, nothing emulated: seconds, where a debootstrap second
stage under emulation takes ~9 minutes), once per run, under the test's temporary area.

**Running in it.** Every command of an emulated device runs as
``unshare --user --map-root-user --mount [--net] sh -c ENTER …``: a new user namespace
(root mapped to root) with its own mount namespace, in which :data:`ENTER` mounts a
*private* binfmt_misc instance (Linux ≥ 6.7 gives each user namespace its own) on
/proc/sys/fs/binfmt_misc, registers qemu-user-static's handler for the architecture there
(Debian's /usr/lib/binfmt.d/qemu-<cpu>.conf, flag ``F``: the emulator is opened at
registration, so it works inside the chroot), bind-mounts /dev, /proc and the test's
directories into the root **at the same paths** (so paths mean the same inside and out),
and ``exec``\\ s ``chroot ROOT CMD``. Every ARM program the device starts (python, its
venv's pip, /bin/sh of a health probe, the guard's coreutils) goes through that handler.
Nothing is registered in the machine's own binfmt_misc (the host's stays as it was: the
tier checks it), and the handler, the mounts and the namespace vanish with the last
process in them: nothing to remove, even after a SIGKILL. The PID Popen sees is the
emulated program's own (every step ``exec``\\ s), so signals reach it and its
``/proc/PID/status`` is the emulator's (the guest's memory plus qemu's own).

**A device** (:class:`Device`) is :class:`tests.crash.harness.Rig` (its package server,
device-api mock, scenarios, ``drive`` and ``check_invariants``) whose root is laid out by
``install.sh --bundle`` inside the target (the network unshared) instead of by the test,
and whose updater is ``<prefix>/current/bin/tope-updater serve --config …`` of the slot
install.sh built, with ``service_control = "none"``. :class:`Supervised` plays systemd's
part for the self-update: the guard before every start (``ExecStartPre=``), a restart
after a failed exit (``Restart=on-failure``). The same classes run natively
(:data:`NATIVE`): the x86_64 control and the figures' baseline.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import pytest

from tests.crash import harness as h
from tests.support.package_server import ThreadedPackageServer

REPO = Path(__file__).resolve().parents[2]
HOST_ARCH = platform.machine()
HOST_BINFMT = Path("/proc/sys/fs/binfmt_misc")
HOST_PYTHON = Path("/usr/bin/python3")
UNIT = "tope-updater.service"

#: What an emulated device's root holds: Debian's CPython 3.11 with venv/ensurepip (what
#: install.sh and a self-update build slots with), and what install.sh, the guard and the
#: test packages' scripts run (bash, dash as /bin/sh, coreutils, tar, gzip, sed, grep,
#: cmp). ``--variant=extract`` adds their dependencies (libssl3, libffi8, zlib1g, …).
RUNTIME_PACKAGES = (
    "python3.11", "python3.11-venv", "python3-minimal", "bash", "dash", "coreutils",
    "tar", "gzip", "sed", "grep", "diffutils", "findutils",
)  # fmt: skip
#: The armhf root doubles as systemd/build_wheels.py's sysroot (its SYSROOT_PACKAGES).
SYSROOT_PACKAGES = ("libpython3.11-dev", "libffi-dev", "libc6-dev")
#: The screen's tested armv7l route (tests/e2e/test_arm_screen.py, docs/SCREEN.md): Debian's
#: pygame 2.1.2 (its SDL2, SDL_ttf, FreeType, numpy come along) and a real font.
SCREEN_PACKAGES = ("python3-pygame", "fonts-dejavu-core")

#: Runs inside ``unshare --user --map-root-user --mount``: ``ENTER ROOT CONF DIR… -- CMD…``.
ENTER = r"""set -eu
root=$1 conf=$2
shift 2
mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
sed 's/^:qemu-\([^:]*\):/:tope-\1:/' "$conf" > /proc/sys/fs/binfmt_misc/register
mount --rbind /dev "$root/dev"
mount --rbind /proc "$root/proc"
while [ "$1" != -- ]; do
    mkdir -p "$root$1"
    mount --bind "$1" "$root$1"
    shift
done
shift
exec chroot "$root" "$@"
"""


@attrs.frozen
class Arch:
    """One architecture the tier runs: ``uname -m``, Debian's name, qemu's CPU name."""

    machine: str
    debian: str
    qemu: str

    @property
    def binfmt_conf(self) -> Path:
        return Path(f"/usr/lib/binfmt.d/qemu-{self.qemu}.conf")


ARCHES = {
    "aarch64": Arch("aarch64", "arm64", "aarch64"),
    "armv7l": Arch("armv7l", "armhf", "arm"),
}


def need(ok: bool, reason: str) -> None:
    """Where the tier is required (``.ci/run`` sets ``TOPE_ARM_TIER=required``; ``CI=true``
    too) a missing piece fails the tier, saying what; elsewhere it skips."""
    if ok:
        return
    if os.environ.get("TOPE_ARM_TIER") == "required" or os.environ.get("CI") == "true":
        pytest.fail(f"arm tier: {reason}", pytrace=False)
    pytest.skip(reason)


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=10):
            return True
    except OSError:
        return False


def private_binfmt_works() -> bool:
    """Whether a user namespace gets its own binfmt_misc (Linux ≥ 6.7)."""
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         f"mount -t binfmt_misc binfmt_misc {HOST_BINFMT} && test -e {HOST_BINFMT}/register"],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    return proc.returncode == 0


def host_handlers() -> list[str]:
    """The tier's handlers in this machine's own binfmt_misc (there must be none)."""
    if not (HOST_BINFMT / "register").exists():
        return []  # not mounted: nothing is registered
    return sorted(p.name for p in HOST_BINFMT.iterdir() if p.name.startswith("tope-"))


def check_requirements(arch: Arch | None) -> None:
    """Everything the tier needs for ``arch`` (None: the native x86_64 control)."""
    need(HOST_ARCH == "x86_64", f"the tier runs on x86_64 hosts; this one is {HOST_ARCH}")
    need(os.geteuid() == 0, "needs root (chroot, the slot install, namespaces)")
    need(HOST_PYTHON.exists(), f"needs {HOST_PYTHON} (Debian 12's CPython 3.11)")
    need(shutil.which("unshare") is not None, "needs unshare (util-linux)")
    need(reachable("pypi.org", 443), "needs PyPI (pypi.org:443): the bundles are built from it")
    if arch is None:
        return
    need(shutil.which("mmdebstrap") is not None, "needs mmdebstrap (apt-get install mmdebstrap)")
    need(
        arch.binfmt_conf.is_file(),
        f"needs qemu-user-static ({arch.binfmt_conf}; apt-get install qemu-user-static)",
    )
    if arch.machine == "armv7l":
        need(
            shutil.which("arm-linux-gnueabihf-gcc") is not None,
            "needs gcc-arm-linux-gnueabihf (apt-get install gcc-arm-linux-gnueabihf): the "
            "wheels PyPI lacks for armv7l are cross-compiled (systemd/build_wheels.py)",
        )
    need(reachable("deb.debian.org", 80), "needs Debian's mirror (deb.debian.org:80)")
    need(private_binfmt_works(), "needs a private binfmt_misc per user namespace (Linux ≥ 6.7)")


def systemd_script(name: str) -> ModuleType:
    """``systemd/<name>.py`` (standard-library scripts, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"tope_{name}", REPO / "systemd" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_root(where: Path, arch: Arch, *, screen: bool = False) -> tuple[Path, float]:
    """The emulated root of ``arch`` under ``where`` (made once); (root, seconds taken).
    ``screen``: the runtime and :data:`SCREEN_PACKAGES` only (no sysroot)."""
    started = time.monotonic()
    packages = [*RUNTIME_PACKAGES]
    if screen:
        packages += SCREEN_PACKAGES
    elif arch.machine == "armv7l":
        packages += SYSROOT_PACKAGES
    root = where / f"root-{arch.debian}{'-screen' if screen else ''}"
    systemd_script("debian_root").ensure_root(root, arch.debian, packages)
    return root, time.monotonic() - started


@attrs.frozen
class Target:
    """Where a device's commands run: emulated in ``root`` (``arch``), or natively."""

    machine: str
    root: Path | None = None
    arch: Arch | None = None

    @property
    def emulated(self) -> bool:
        return self.root is not None

    def argv(
        self, cmd: Sequence[str], *, binds: Sequence[Path], offline: bool = False
    ) -> list[str]:
        if self.root is None or self.arch is None:
            return ["unshare", "--net", "--", *cmd] if offline else list(cmd)
        spaces = ["--user", "--map-root-user", "--mount", *(["--net"] if offline else [])]
        return [
            "unshare", *spaces, "sh", "-c", ENTER, "tope-enter", str(self.root),
            str(self.arch.binfmt_conf), *(str(b) for b in binds), "--", *cmd,
        ]  # fmt: skip

    def env(self, extra: Mapping[str, str] = {}) -> dict[str, str]:
        """A clean environment (nothing of the test's: no PYTHONPATH, no venv)."""
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            **extra,
        }

    def run(
        self,
        cmd: Sequence[str],
        *,
        binds: Sequence[Path],
        offline: bool = False,
        env: Mapping[str, str] = {},
        timeout: float = 900,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(cmd, binds=binds, offline=offline), env=self.env(env), cwd="/",
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip


NATIVE = Target(HOST_ARCH)


def memory_kb(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak) of a process, in kB (under emulation: qemu's process)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class Device(h.Rig):
    """A :class:`~tests.crash.harness.Rig` installed by ``install.sh --bundle`` on ``target``.

    Args:
        target: where it runs.
        bundle: the release bundle install.sh installs (the updater under test).
        trusted_key: a public key copied beside the config and named its ``trusted_key``.
        config: lines appended to the config.toml install.sh wrote.
        (the rest: as :class:`~tests.crash.harness.Rig`.)
    """

    def __init__(
        self,
        base: Path,
        sc: h.Scenario,
        server: ThreadedPackageServer,
        *,
        target: Target,
        bundle: Path,
        trusted_key: Path | None = None,
        config: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.target = target
        self.bundle = bundle
        self.prefix = base / "prefix"
        self.config_file = base / "etc" / "config.toml"
        self.config_lines = ['service_control = "none"', *config]
        self.trusted_key = trusted_key
        self.install_s = 0.0
        self.ready_s: list[float] = []
        super().__init__(base, sc, server, env=env)

    def init_root(self, factory_src: Path) -> None:
        """``install.sh --bundle`` inside the target, the network unshared: the slot, the
        layout (``tope-updater init --from factory_src``), the config, verify-setup."""
        copy = self.base / "bundle" / self.bundle.name
        copy.parent.mkdir(parents=True)
        shutil.copy2(self.bundle, copy)
        with tarfile.open(copy) as tar:
            tar.extractall(copy.parent, filter="data")
        (top,) = (p for p in copy.parent.iterdir() if p.is_dir())
        argv = [
            "bash", str(top / "systemd" / "install.sh"), "--bundle", str(copy),
            *("--root", str(self.root), "--prefix", str(self.prefix)),
            *("--state-dir", str(self.state), "--config-dir", str(self.config_file.parent)),
            *("--unit-dir", str(self.base / "units"), "--bin-links", str(self.base / "bin")),
            *("--from", str(factory_src), "--version", h.FACTORY_VERSION),
            *("--port", str(self.port), "--device-api-url", self.device_api.url),
            *("--unit", "hello", "--systemctl", "true", "--no-enable", "--no-start"),
        ]  # fmt: skip
        if not self.target.emulated:
            argv += ["--python", str(HOST_PYTHON)]
        started = time.monotonic()
        proc = self.target.run(argv, binds=[self.base], offline=True, env={"PIP_NO_INDEX": "1"})
        self.install_s = time.monotonic() - started
        (self.base / "install.log").write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, (
            f"install.sh exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
        assert "setup OK" in proc.stdout, proc.stdout
        lines = list(self.config_lines)
        if self.trusted_key is not None:
            key = self.config_file.parent / "package-signing.pem"
            shutil.copyfile(self.trusted_key, key)
            lines.append(f'trusted_key = "{key}"')
        with self.config_file.open("a") as fh:
            fh.write("".join(f"{line}\n" for line in lines))

    def serve_argv(self) -> list[str]:
        """What the unit's ``ExecStart=`` runs."""
        updater = self.prefix / "current" / "bin" / "tope-updater"
        return self.target.argv([str(updater), "serve", "--config", str(self.config_file)],
                                binds=[self.base])  # fmt: skip

    def serve_env(self) -> dict[str, str]:
        ours = {k: v for k, v in h.updater_env(self).items() if k.startswith("TOPE_UPDATER_")}
        return self.target.env(ours)

    def start(  # type: ignore[override]
        self, *, wait: bool = True, timeout: float = 180.0
    ) -> DeviceProcess:
        proc = DeviceProcess(self)
        self.procs.append(proc)
        if wait:
            assert proc.wait_ready(timeout), f"the updater died at its start: {proc.log_tail()}"
            self.ready_s.append(time.monotonic() - proc.started)
        return proc

    def guard(self) -> subprocess.CompletedProcess[str]:
        """The unit's ``ExecStartPre=+<prefix>/updater-guard.sh <prefix> <unit>``."""
        guard = [str(self.prefix / "updater-guard.sh"), str(self.prefix), UNIT]
        return self.target.run(["/bin/sh", *guard], binds=[self.base], timeout=120)

    def healthz(self) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            data: dict[str, Any] = self.call("GET", "/healthz")["data"]
            return data
        return None

    def slot_links(self) -> tuple[str | None, str | None]:
        def read(name: str) -> str | None:
            path = self.prefix / name
            return os.readlink(path) if os.path.lexists(path) else None

        return read("current"), read("previous")


class DeviceProcess(h.UpdaterProcess):
    """The device's ``tope-updater serve`` (its slot's, on its target)."""

    def __init__(self, device: Device) -> None:
        # In /, as systemd starts it (the checkout's egg-info must not be what a slot's
        # `python -c` finds on sys.path).
        self._spawn(device, device.serve_argv(), device.serve_env(), cwd=Path("/"))

    def memory_kb(self) -> dict[str, int]:
        return memory_kb(self.popen.pid)


class Supervised:
    """systemd's part for a self-update (``service_control = "none"``: no systemd runs):
    before each start the guard (``ExecStartPre=``), then ``serve`` from whatever
    ``current`` names; after an exit other than 0 a new start ``restart_s`` later
    (``Restart=on-failure``, ``RestartSec=``), at most ``max_starts`` starts.

    Quacks like :class:`~tests.crash.harness.UpdaterProcess` for ``drive`` (``alive``) and
    :meth:`~tests.crash.harness.Rig.close` (``kill``)."""

    def __init__(self, device: Device, *, restart_s: float = 2.0, max_starts: int = 12) -> None:
        self.device = device
        self.restart_s = restart_s
        self.max_starts = max_starts
        self.exits: list[int] = []
        self.guard_said: list[str] = []
        self.current: DeviceProcess | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        device.procs.append(self)  # type: ignore[arg-type]
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.exits) < self.max_starts:
            guard = self.device.guard()
            self.guard_said += [line for line in guard.stderr.splitlines() if line.strip()]
            with self._lock:
                if self._stop.is_set():
                    return
                self.current = DeviceProcess(self.device)
                self.device.procs.append(self.current)
            code = self.current.popen.wait()
            self.exits.append(code)
            if code == 0 or self._stop.wait(self.restart_s):
                return

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def kill(self) -> None:
        with self._lock:
            self._stop.set()
            if self.current is not None:
                self.current.kill()
        self._thread.join(30)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM to the running updater (a ``systemctl stop``); its exit status."""
        with self._lock:
            self._stop.set()
            current = self.current
        assert current is not None
        code = current.terminate(timeout)
        self._thread.join(30)
        return code

    def log_tail(self) -> str:
        return self.current.log_tail() if self.current is not None else ""


def timed_install(device: Device, timeout: float) -> dict[str, float]:
    """Install the package ``device`` serves (``POST /download``, ``/update`` once verified)
    and time it: ``download_verify_s`` (download, hashes, signature, manifest) and
    ``install_s`` (stage, switch, health check: ``POST /update`` → ``success``)."""

    def wait(stage: str) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = device.progress()
            if data["stage"] == stage and data["version"] == device.sc.version:
                return time.monotonic()
            assert data["stage"] != "failed", data
            time.sleep(0.05)
        raise AssertionError(f"not {stage} after {timeout} s: {device.progress()}")

    t0 = time.monotonic()
    reply = device.call("POST", "/download", device.request)
    assert reply["code"] == 200, reply
    t1 = wait("toInstall")
    reply = device.call("POST", "/update", {"version": device.sc.version})
    assert reply["code"] == 200, reply
    t2 = wait("success")
    return {"download_verify_s": t1 - t0, "install_s": t2 - t1}
