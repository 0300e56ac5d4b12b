"""The ``arm`` tier's screen on armv7l (issue 25): the tested route of docs/SCREEN.md.

PyPI has no armv7l wheel of pygame-ce, so the armv7l bundle has no ``screen`` extra. The
route tested here is Debian bookworm's own ``python3-pygame`` (pygame 2.1.2, not
pygame-ce; SDL 2.26) seen through a venv made with ``--system-site-packages``:

* an emulated armhf Debian 12 root (tests/support/emulation.py, ``mmdebstrap
  --variant=extract``: the tier's runtime packages, ``python3-pygame`` and
  ``fonts-dejavu-core``; ~20 s, its own: the armv7l cycle's root lives in another test's
  temporary area, on the other worker);
* in it, under qemu-user: ``python3 -m venv --system-site-packages --without-pip``, then
  Debian's pip (run from its ``python3-pip-whl`` wheel: one pip run instead of ensurepip's
  and ours, 36 s rather than 77 s under emulation) installs, offline, the project's wheel
  and the pure-Python wheels ``tope-updater screen`` imports (attrs, cattrs,
  typing_extensions; ``--no-deps``: the updater's own dependencies are the armv7l bundle's,
  proven by tests/e2e/test_arm.py);
* ``<venv>/bin/tope-updater screen --window 800x480 --font DejaVuSans.ttf --snapshot-dir D``
  runs emulated with ``SDL_VIDEODRIVER=dummy`` (SDL draws into memory; no X server) and
  follows a real ``tope-updater serve --sandbox`` running natively on this machine at a
  free port (the chroot shares the network) through a throttled download that pauses at
  half, the verification, the install and its success; it closes by itself after its
  countdown.

The PNGs it saved are read here: 800x480, more than one, none blank, the title drawn, the
download's bar filled to its fraction (within 3 px) with the percentage beside it, the
success drawn in its colour (tests/screen/test_screen_xvfb.py's checks), and its first-frame
line names pygame 2.1.2 and the dummy driver: Debian's pygame, not a pygame-ce wheel.

Not tested: KMS/DRM or X11 on armv7l (only SDL's dummy driver runs under emulation here),
piwheels, a pygame-ce build from the sdist, real hardware.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.screen.test_screen_xvfb import Updater, _download, _package, check_frame
from tests.support.emulation import (
    ARCHES,
    Target,
    check_requirements,
    host_handlers,
    make_root,
    need,
    systemd_script,
)
from tests.support.package_server import Behaviour, ThreadedPackageServer

pytestmark = [pytest.mark.arm, pytest.mark.timeout(900), pytest.mark.xdist_group("arm-a")]

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
#: Debian's pip, as a wheel (python3-pip-whl, which python3.11-venv brings).
PIP_WHEEL = "/usr/share/python-wheels/pip-23.0.1-py3-none-any.whl/pip"
VENV = "/opt/tope-screen"
#: What ``tope-updater screen`` imports beyond the standard library and pygame.
PURE_DEPS = ("attrs>=23.2,<27", "cattrs>=23.2,<27", "typing_extensions")


def screen_wheels(where: Path) -> Path:
    """The project's wheel (as bundle.py builds it) and the pure-Python wheels of its CLI."""
    where.mkdir(parents=True)
    systemd_script("bundle").build_project_wheel(sys.executable, where, 300)
    proc = systemd_script("bundle").pip(
        sys.executable,
        ["download", "--only-binary=:all:", "--no-deps", "--dest", str(where), *PURE_DEPS],
        300,
    )
    assert proc.returncode == 0, proc.stderr
    return where


class EmulatedScreen:
    """``tope-updater screen`` of the venv, emulated, following ``url``."""

    def __init__(self, target: Target, url: str, directory: Path, binds: list[Path]) -> None:
        self.dir = directory
        argv = [
            f"{VENV}/bin/tope-updater", "screen", "--url", url, "--lang", "en",
            "--window", "800x480", "--close-after", "3", "--font", str(FONT),
            "--snapshot-dir", str(directory),
        ]  # fmt: skip
        env = target.env({"SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"})
        self.log = directory.parent / "screen.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                target.argv(argv, binds=binds), env=env, cwd="/", stdout=log, stderr=log
            )

    def frames(self) -> list[dict[str, Any]]:
        path = self.dir / "frames.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_frame(self, pred: Any, what: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for frame in self.frames():
                if pred(frame):
                    return frame
            assert self.proc.poll() is None, f"the screen exited: {self.log.read_text()}"
            time.sleep(0.1)
        states = [(f["state"], f["fraction"]) for f in self.frames()]
        pytest.fail(f"no {what} frame after {timeout} s: {states}\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


def test_screen_on_armv7l_with_debians_pygame(tmp_path: Path) -> None:
    began = time.monotonic()
    arch = ARCHES["armv7l"]
    check_requirements(arch)
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame  # reads the PNGs here (the test venv's pygame-ce)
    except ImportError:
        need(False, "needs pygame-ce in the test venv (pip install '.[screen]') to read PNGs")
    assert host_handlers() == [], "binfmt handlers of an earlier run left on this machine"
    times: dict[str, float] = {}
    root, times["root_s"] = make_root(tmp_path / "roots", arch, screen=True)
    target = Target(arch.machine, root, arch)
    started = time.monotonic()
    wheels = screen_wheels(tmp_path / "wheels")
    times["wheels_s"] = time.monotonic() - started

    # --- the route: a venv that sees Debian's site-packages, offline pip ----------------
    started = time.monotonic()
    install = (
        f"python3 -m venv --system-site-packages --without-pip {VENV}"
        f" && {VENV}/bin/python {PIP_WHEEL} install --disable-pip-version-check --no-index"
        f" --no-deps --no-compile {wheels}/*.whl"
    )
    proc = target.run(["/bin/sh", "-c", install], binds=[wheels], offline=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "include-system-site-packages = true" in (root / VENV[1:] / "pyvenv.cfg").read_text()
    times["venv_s"] = time.monotonic() - started

    # --- the screen, emulated, follows a real updater through a download and an install --
    started = time.monotonic()
    updater = Updater(tmp_path / "sandbox")
    updater.start()
    screen: EmulatedScreen | None = None
    try:
        sandbox_root = (tmp_path / "sandbox" / "root").resolve()
        pkg, data = _package(tmp_path, sandbox_root, "1.1.0", "#!/bin/sh\nsleep 3\necho 1.1.0\n")
        with ThreadedPackageServer() as srv:
            screen = EmulatedScreen(target, updater.url, tmp_path / "frames", [tmp_path])
            # importing pygame (and numpy) emulated takes ~10 s
            screen.wait_frame(lambda f: f["state"] == "idle", "idle", timeout=180)
            half = len(data) // 2
            _download(
                updater,
                srv,
                pkg.name,
                "1.1.0",
                data,
                Behaviour(rate_bps=1_000_000, stall_after=half, stall_s=3.0),
            )
            screen.wait_frame(
                lambda f: (
                    f["state"] == "downloading"
                    and f["fraction"] is not None
                    and abs(f["fraction"] - 0.5) < 0.03
                ),
                "half-downloaded",
            )
            updater.wait_state("ready", "failed", timeout=120)
            assert updater.call("POST", "/update", {"version": "1.1.0"})["code"] == 200
            assert updater.wait_state("success", "failed", timeout=120)["state"] == "success"
            done = screen.wait_frame(lambda f: f["state"] == "success", "success")
            assert done["title"] == "Updated to 1.1.0", done
            assert screen.proc.wait(60) == 0, screen.log.read_text()  # its countdown: 3 s
    finally:
        if screen is not None:
            screen.stop()
        updater.stop()
    times["screen_s"] = time.monotonic() - started
    assert host_handlers() == [], "binfmt handlers left on this machine"

    # --- what it drew ------------------------------------------------------------------
    from screen.view import ACCENT, BACKGROUND, Outcome

    assert screen is not None
    log = screen.log.read_text()
    assert "(800x480, dummy, en, pygame 2.1.2)" in log, log  # Debian's, not pygame-ce
    frames = screen.frames()
    states = [f["state"] for f in frames]
    assert len(frames) > 1 and {"idle", "downloading", "success"} <= set(states), states
    for f in frames:
        image = pygame.image.load(str(screen.dir / f["file"]))
        assert image.get_size() == (800, 480) and f["size"] == [800, 480], f
        colours = {
            tuple(image.get_at((x, y)))[:3] for x in range(0, 800, 4) for y in range(0, 480, 4)
        }
        assert BACKGROUND in colours and len(colours) > 3, f  # not blank: text, bar
        # the title drawn; a bar filled to the fraction (within 3 px) in the state's colour
        outcome = Outcome.SUCCESS if f["state"] == "success" else Outcome.WORKING
        check_frame(f, screen.dir, ACCENT[outcome])
    assert any(
        f["state"] == "downloading" and 0.05 < (f["fraction"] or 0) < 0.95 for f in frames
    ), frames
    times["total_s"] = time.monotonic() - began
    rounded = {k: round(v, 1) for k, v in times.items()}
    print(f"arm tier screen armv7l: {rounded}")
