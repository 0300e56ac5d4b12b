"""``tope-updater demo`` end to end (small packages, in a child process as a user runs it):
the whole cycle still reads right, and its first install visibly waits for the simulated
print (the busy gate, issue 12)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

RUN = """
import sys
from http_shell.cli import demo_cycle
from http_shell.cli.main import main
demo_cycle.PAYLOAD_BYTES = 256 * 1024
demo_cycle.PRINT_SECONDS = 2.0
sys.exit(main(["demo", "--dir", sys.argv[1]]))
"""


def test_demo_waits_for_the_print_then_installs_and_rolls_back(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", RUN, str(tmp_path / "demo")],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    lines = out.splitlines()

    def index(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    # The gate: asked, busy with the print's reason (its progress moving), then free.
    start = index("==> POST /update v1.1.0")
    went_on = index("==> The print finished: the install goes ahead on its own")
    waiting = lines[start:went_on]
    busy = [line for line in waiting if "printing demo_benchy.gcode, " in line]
    assert len(busy) >= 2 and busy[0] != busy[-1], out
    assert all("toInstall/waiting_idle  Waiting for the printer to be free: " in b for b in busy)
    assert went_on < index("installing/deploying  Staging v1.1.0")
    assert went_on < index("Update to v1.1.0 complete")  # the outcome, on a line of its own
    # The rest of the story is unchanged.
    assert "bin/hello says: hello from v1.1.0" in out
    assert "ROLLBACK_LEVEL_1_SUCCESS: v1.1.0" in out
    assert out.rstrip().endswith("==> Demo complete")
    assert not (tmp_path / "demo").exists()  # cleaned up


def test_the_demo_opens_the_screen_only_with_a_display() -> None:
    from http_shell.cli.demo_cycle import screen_command

    url = "http://127.0.0.1:4242"
    assert screen_command(url, {}) is None
    command = screen_command(url, {"DISPLAY": ":0"})
    try:
        import pygame  # noqa: F401
    except ImportError:
        assert command is None
        return
    assert command is not None
    assert f"-m http_shell.cli screen --window 800x480 --close-after 10 --url {url}" in command
    assert screen_command(url, {"WAYLAND_DISPLAY": "wayland-0"}) == command
