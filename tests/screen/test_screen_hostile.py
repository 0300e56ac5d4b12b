"""The real ``tope-updater screen`` under Xvfb against an updater that says anything.

Every attack of ``test_follower_hostile`` in a row on one screen process: it must still
run at the end, show the honest snapshot that follows without a banner, and stay within
its unit's ``MemoryMax`` (96 MB; its peak RSS is read from ``/proc``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.screen.test_follower_hostile import ATTACKS, HostileUpdater, honest_stream, huge_progress
from tests.screen.test_screen_xvfb import Screen
from tests.screen.xvfb import require_display_stack, xvfb

pytestmark = pytest.mark.slow

#: the screen unit's MemoryMax (systemd/tope-updater-screen.service)
MEMORY_MAX = 96 * 1024 * 1024


@pytest.fixture
def display() -> Iterator[str]:
    require_display_stack()
    with xvfb() as name:
        yield name


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_the_screen_survives_every_attack_and_shows_sane_data_again(
    display: str, tmp_path: Path
) -> None:
    scripts = []
    for script in ATTACKS.values():
        scripts += [script] * (2 if script is huge_progress else 1)
    server = HostileUpdater([*scripts, honest_stream])
    screen = Screen(display, server.url, (800, 480), "en", tmp_path / "frames")
    try:
        # The first attack: a busy reason with a NUL, terminal and bidi escapes, drawn (the
        # screen used to die on the NUL, pygame's text renderer refuses it).
        screen.wait_frame(lambda f: f["state"] == "waiting_idle", timeout=60)
        screen.wait_frame(lambda f: f["banner"] and f["banner"].startswith("Cannot read"))
        final = screen.wait_frame(
            lambda f: f["state"] == "downloading" and f["banner"] is None, timeout=90
        )
        assert final["title"] == "Downloading the update"
        assert server.connections >= len(scripts) + 1
        assert screen.proc.poll() is None, screen.proc.stderr
        peak = _peak_rss(screen.proc.pid)
        assert peak < MEMORY_MAX, f"peak RSS {peak / 2**20:.1f} MiB"
        print(f"screen peak RSS through the attacks: {peak / 2**20:.1f} MiB")
    finally:
        screen.stop()
        server.close()
