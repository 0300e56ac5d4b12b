"""The screen process: the follower in a thread, pygame's loop in the main thread.

:func:`run` opens the window (full-screen, borderless, on top; or a plain ``--window WxH``),
follows the updater and draws each new view. After an end (success, failure, a cancel seen
here) it shows "Done" and counts down ``close_after`` seconds; a tap or click on "Done", or
the end of the countdown, closes it. A new job before that cancels the countdown.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from screen.view import Link, View, is_install, view_of

#: Frames per second while something moves (the indeterminate bar); otherwise nothing is
#: drawn until the view changes (a snapshot, the countdown's next second).
ANIMATION_FPS = 30
#: How often input (a tap on "Done") is looked at while nothing moves: SDL cannot wake a
#: sleeping thread for it without polling, so the loop sleeps this long at most.
INPUT_POLL_S = 0.1


@attrs.frozen
class Options:
    """What ``tope-updater screen`` was told.

    Attributes:
        url: the updater's ``http://host:port``.
        token: bearer token for ``/events`` (the updater's ``api_token``), or None.
        lang: ``en`` or ``zh-CN``.
        window: (width, height) of a normal window; None: full-screen, borderless, on top.
        close_after: seconds the outcome stays before the screen closes by itself.
        font: a font file to use (for Chinese it must have the glyphs), else fontconfig.
        snapshot_dir: save each new frame there as PNG, with ``frames.jsonl`` (tests, docs).
        poll_s: the polling period when the event stream is unavailable.
    """

    url: str
    token: str | None = None
    lang: str = "en"
    window: tuple[int, int] | None = None
    close_after: float = 60.0
    font: Path | None = None
    snapshot_dir: Path | None = None
    poll_s: float = 0.5


class _Inbox:
    """Snapshots from the follower's thread to the drawing loop (latest wins).

    The drawing loop blocks on :meth:`wait`, not on ``pygame.event.wait(timeout)``: with a
    timeout, pygame-ce polls SDL's queue about every millisecond (2 % of a core on a
    static screen, measured by ``bench/screen.py``); a ``threading.Event`` sleeps.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Mapping[str, Any] | None, Link]] = queue.SimpleQueue()
        self._wake = threading.Event()

    def put(self, snap: Mapping[str, Any] | None, link: Link) -> None:
        self._queue.put((snap, link))
        self._wake.set()

    def wait(self, timeout_s: float) -> None:
        """Until a snapshot arrives or ``timeout_s`` passes."""
        self._wake.wait(timeout_s)
        self._wake.clear()

    def drain(self) -> list[tuple[Mapping[str, Any] | None, Link]]:
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out


def _follow(options: Options, inbox: _Inbox) -> None:
    """Run the follower for as long as the screen is open: should it ever stop (it is not
    meant to), say so and start it again, with the link shown as unreadable meanwhile."""
    from screen.follower import Follower

    while True:
        follower = Follower(options.url, inbox.put, token=options.token, poll_s=options.poll_s)
        try:
            follower.run()
        except Exception as exc:  # never a traceback on the screen, and never a crash
            print(f"tope-updater screen: follower stopped: {exc!r:.300}", file=sys.stderr)
        inbox.put(follower.last, Link.UNREADABLE)
        time.sleep(1.0)


def run(options: Options) -> int:
    """Show the screen until "Done" or the countdown closes it; 0 then."""
    started = time.monotonic()
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    from screen.render import Fonts, draw, draw_moving, layout

    pygame.display.init()
    if pygame.display.get_driver() == "x11":
        # SDL would draw the window through OpenGL (on a machine without a GPU driver:
        # Mesa's llvmpipe, +90 MB RSS); a frame this simple is cheaper as an XShm image.
        # Read when the window is created; KMS/DRM and Wayland have no such path.
        os.environ.setdefault("SDL_FRAMEBUFFER_ACCELERATION", "0")
    pygame.font.init()
    if options.window is not None:
        surface = pygame.display.set_mode(options.window)
    else:
        surface = pygame.display.set_mode((0, 0), pygame.FULLSCREEN | pygame.NOFRAME)
        pygame.mouse.set_visible(False)  # a touch screen: no pointer over the text
        # pygame.error: a video driver without windows (KMS/DRM: nothing to be under)
        with contextlib.suppress(AttributeError, pygame.error):
            pygame.Window.from_display_module().always_on_top = True
    pygame.display.set_caption("tope-updater")
    lay = layout(*surface.get_size())
    fonts = Fonts(options.lang, lay, font_path=options.font)
    inbox = _Inbox()
    threading.Thread(target=_follow, args=(options, inbox), daemon=True, name="follower").start()

    snap: Mapping[str, Any] | None = None
    link = Link.CONNECTING
    seen_work = False
    ended_at: float | None = None
    shown: tuple[View, int | None] | None = None
    frames = 0
    recorder = _Recorder(options.snapshot_dir) if options.snapshot_dir else None
    try:
        while True:
            view = _view_or_unreadable(snap, fonts.lang, link, seen_work)
            animating = view.fraction is None and view.outcome.value == "working"
            now = time.monotonic()
            if view.ended and ended_at is None:
                ended_at = now
            elif not view.ended:
                ended_at = None
            left = None
            if ended_at is not None:
                remaining = options.close_after - (now - ended_at)
                if remaining <= 0:
                    return 0
                left = int(remaining + 0.999)
            phase = (now * 0.6) % 1.0
            if shown == (view, left) and animating:  # only the moving segment changed
                pygame.display.update(draw_moving(surface, view, lay, phase))
            elif shown != (view, left):
                draw(surface, view, fonts, lay, seconds_left=left, phase=phase)
                pygame.display.flip()
                if frames == 0:
                    print(
                        f"tope-updater screen: first frame after {now - started:.2f} s"
                        f" ({lay.width}x{lay.height}, {pygame.display.get_driver()},"
                        f" {fonts.lang}, pygame {pygame.version.ver})",
                        file=sys.stderr,
                    )
                frames += 1
                if recorder is not None and (shown is None or shown[0] != view):
                    recorder.save(surface, view, snap, lay)
                shown = (view, left)
            inbox.wait(1 / ANIMATION_FPS if animating else INPUT_POLL_S)
            for event in pygame.event.get():
                if event.type == pygame.QUIT:
                    return 0
                if event.type in (pygame.VIDEOEXPOSE, pygame.WINDOWEXPOSED):
                    pygame.display.flip()  # uncovered: show the last frame again
                if view.ended and _pressed(event, lay.button, lay.width, lay.height):
                    return 0
            for snap_in, link_in in inbox.drain():
                snap, link = snap_in, link_in
                if snap is not None and is_install(snap):
                    seen_work = True
    finally:
        pygame.quit()


def _view_or_unreadable(
    snap: Mapping[str, Any] | None, lang: str, link: Link, seen_work: bool
) -> View:
    """The view of ``snap``; should a snapshot the follower let through still defeat the
    view (a bug of ours), the "cannot read the updater" view instead of a dead screen."""
    try:
        return view_of(snap, lang, link=link, seen_work=seen_work)
    except Exception as exc:
        print(f"tope-updater screen: cannot show {snap!r:.300}: {exc!r}", file=sys.stderr)
        return view_of(None, lang, link=Link.UNREADABLE)


def _pressed(event: Any, button: Any, width: int, height: int) -> bool:
    """A click, a tap or Enter on the "Done" button."""
    import pygame

    if event.type == pygame.MOUSEBUTTONUP and event.button == 1:
        return bool(button.collidepoint(event.pos))
    if event.type == pygame.FINGERUP:  # normalised coordinates
        return bool(button.collidepoint(event.x * width, event.y * height))
    if event.type == pygame.KEYDOWN:
        return bool(event.key in (pygame.K_RETURN, pygame.K_KP_ENTER, pygame.K_SPACE))
    return False


class _Recorder:
    """Each new view as ``NNNN-<state>.png`` plus one line of ``frames.jsonl``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.n = 0

    def save(self, surface: Any, view: View, snap: Mapping[str, Any] | None, lay: Any) -> None:
        import pygame

        state = str(snap.get("state")) if snap else "none"
        name = f"{self.n:04d}-{state}.png"
        self.n += 1
        pygame.image.save(surface, str(self.dir / name))
        line = {
            "file": name,
            "state": state,
            "progress": snap.get("progress") if snap else None,
            "fraction": view.fraction,
            "ended": view.ended,
            "banner": view.banner,
            "title": view.title,
            "versions": view.versions,
            "detail": view.detail,
            "note": view.note,
            "size": [lay.width, lay.height],
            "time": time.time(),
        }
        with (self.dir / "frames.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
