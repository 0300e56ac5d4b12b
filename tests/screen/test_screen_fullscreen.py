"""Full-screen ``tope-updater screen`` (no ``--window``) fills the screen.

Under an Xvfb of the printer's screen size (1920x1080, and the 800x480 and 1920x440
panels), against a real ``tope-updater serve --sandbox``: the frame the screen draws (its
``--snapshot-dir`` PNG) has exactly the screen's size, and what the X server shows (the
root window, read with ``XGetImage``) is that frame — the background colour reaches all
four corners, no desktop or black border shows, and the text is where the frame has it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.screen.test_screen_xvfb import Screen, Updater
from tests.screen.xvfb import require_display_stack, root_image, xvfb

pytestmark = pytest.mark.slow


def _corners(width: int, height: int, inset: int = 0) -> list[tuple[int, int]]:
    right, bottom = width - 1 - inset, height - 1 - inset
    return [(inset, inset), (right, inset), (inset, bottom), (right, bottom)]


@pytest.mark.parametrize("size", [(1920, 1080), (800, 480), (1920, 440)])
def test_full_screen_fills_the_screen(size: tuple[int, int], tmp_path: Path) -> None:
    require_display_stack()
    import pygame

    from screen.render import layout
    from screen.view import BACKGROUND

    width, height = size
    updater = Updater(tmp_path / "sandbox")
    updater.start()
    screen: Screen | None = None
    try:
        with xvfb(width, height) as display:
            screen = Screen(display, updater.url, size, "en", tmp_path / "frames", window=False)
            frame = screen.wait_frame(lambda f: f["state"] == "idle")
            assert frame["size"] == [width, height]
            drawn = pygame.image.load(str(screen.dir / frame["file"]))
            assert drawn.get_size() == size
            for x, y in _corners(width, height):
                assert tuple(drawn.get_at((x, y)))[:3] == BACKGROUND, (x, y)

            # what the X server shows: the whole screen is that frame (the idle view does
            # not change, but the window may be mapped a moment after the PNG is saved)
            deadline = 30.0
            started = time.monotonic()
            while True:
                w, h, rgb = root_image(display)
                shown = pygame.image.frombytes(rgb, (w, h), "RGB")
                corners_ok = all(
                    tuple(shown.get_at(p))[:3] == BACKGROUND
                    for inset in (0, 1, 2)
                    for p in _corners(w, h, inset)
                )
                if corners_ok or time.monotonic() - started > deadline:
                    break
                time.sleep(0.2)
            pygame.image.save(shown, str(tmp_path / "root.png"))  # to look at on failure
            assert (w, h) == size
            assert corners_ok, [tuple(shown.get_at(p))[:3] for p in _corners(w, h)]
            # the borders, every 8th pixel: background all around
            border = [(x, 0) for x in range(0, w, 8)] + [(x, h - 1) for x in range(0, w, 8)]
            border += [(0, y) for y in range(0, h, 8)] + [(w - 1, y) for y in range(0, h, 8)]
            off = [p for p in border if tuple(shown.get_at(p))[:3] != BACKGROUND]
            assert not off, off[:10]
            # the same picture as the frame: a grid of samples over the whole screen
            grid = [(x, y) for x in range(0, w, 7) for y in range(0, h, 7)]
            differ = [p for p in grid if shown.get_at(p)[:3] != drawn.get_at(p)[:3]]
            assert len(differ) <= len(grid) // 1000, (len(differ), differ[:10])
            # and it is not an empty screen: the title is drawn where the layout puts it
            lay = layout(w, h)
            title = [
                (x, y)
                for x in range(lay.margin, w - lay.margin, 3)
                for y in range(lay.title_y, lay.title_y + lay.title_size, 3)
            ]
            assert sum(tuple(shown.get_at(p))[:3] != BACKGROUND for p in title) > 20
            assert screen.proc.poll() is None
    finally:
        if screen is not None:
            screen.stop()
        updater.stop()
