"""Draw a :class:`~screen.view.View` with pygame-ce (SDL2): thin, no decisions.

:func:`layout` places everything from the window size alone (pure, so tests can find the
bar in a screenshot); :class:`Fonts` finds the fonts (a CJK one through fontconfig for
Chinese); :func:`draw` paints one frame.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import attrs
import pygame

from screen.catalogue import EN, text
from screen.view import BACKGROUND, BAR_TRACK, FOREGROUND, MUTED, Outcome, View

#: The design size; everything scales by min(width / 800, height / 480).
BASE_W, BASE_H = 800, 480
#: Characters a font must have to draw Chinese (a font without them would draw boxes).
CJK_PROBE = "更新失败打印机已恢复到可以放心使用完成"


@attrs.frozen
class Layout:
    """Where things go on a ``width`` x ``height`` screen (pixels)."""

    width: int
    height: int
    scale: float
    margin: int
    title_y: int
    title_size: int
    body_size: int
    small_size: int
    line_gap: int
    bar: pygame.Rect
    button: pygame.Rect

    def px(self, n: float) -> int:
        return max(1, round(n * self.scale))


def layout(width: int, height: int) -> Layout:
    """The layout for a screen of this size: 800x480 up to 1920x1080, strips like 1920x440.

    The content column keeps the design's proportions, centred; on a wide strip the bar and
    the lines simply get longer.
    """
    scale = min(width / BASE_W, height / BASE_H)
    margin = max(16, round(40 * scale))
    # vertical budget in design units: 480 = 40 top, 2x52 title, 44 versions, 72 bar block,
    # 44 detail, 36 note, the rest for the button row
    top = (height - BASE_H * scale) / 2  # centre the design vertically on tall screens
    bar_h = round(38 * scale)
    bar_y = round(top + (40 + 2 * 52 + 44 + 16) * scale)
    percent_w = round(130 * scale)
    bar = pygame.Rect(margin, bar_y, width - 2 * margin - percent_w, bar_h)
    button_w, button_h = round(200 * scale), round(64 * scale)
    button = pygame.Rect(
        width - margin - button_w, round(top + (480 - 24 - 64) * scale), button_w, button_h
    )
    return Layout(
        width=width,
        height=height,
        scale=scale,
        margin=margin,
        title_y=round(top + 40 * scale),
        title_size=round(42 * scale),
        body_size=round(28 * scale),
        small_size=round(22 * scale),
        line_gap=round(10 * scale),
        bar=bar,
        button=button,
    )


def find_cjk_font(configured: Path | None = None) -> Path | None:
    """A font file with Simplified Chinese glyphs: ``configured``, else fontconfig's choice
    for ``:lang=zh-cn`` (Debian: ``fonts-noto-cjk``), provided it really has the glyphs."""
    candidates: list[Path] = []
    if configured is not None:
        candidates.append(configured)
    else:
        found = _fontconfig(":lang=zh-cn")
        if found is not None:
            candidates.append(found)
    for path in candidates:
        if path.is_file() and has_glyphs(path, CJK_PROBE):
            return path
    return None


def has_glyphs(path: Path, sample: str) -> bool:
    """True when the font at ``path`` has a glyph for every character of ``sample``."""
    try:
        font = pygame.font.Font(str(path), 20)
    except (OSError, pygame.error):
        return False
    return all(m is not None for m in font.metrics(sample))


class Fonts:
    """The three sizes of one face for a language, at a layout's scale.

    ``lang`` is the language actually drawn: Chinese falls back to English when no font with
    Chinese glyphs is found, rather than drawing boxes.
    """

    def __init__(self, lang: str, lay: Layout, *, font_path: Path | None = None) -> None:
        path: Path | None = None
        if lang != EN:
            path = find_cjk_font(font_path)
            if path is None:
                print(
                    f"tope-updater screen: no font with Chinese glyphs found"
                    f" ({font_path or 'fontconfig :lang=zh-cn'}); showing English."
                    " Install fonts-noto-cjk or set screen_font.",
                    file=sys.stderr,
                )
                lang = EN
        elif font_path is not None and font_path.is_file():
            path = font_path
        else:
            path = _fontconfig("sans-serif:lang=en")
        self.lang = lang
        self.path = path
        name = str(path) if path is not None else None
        self.title = pygame.font.Font(name, lay.title_size)
        self.body = pygame.font.Font(name, lay.body_size)
        self.small = pygame.font.Font(name, lay.small_size)
        #: typographic characters this face lacks, drawn as ASCII instead of boxes
        self.missing = {ch for ch in _SUBSTITUTES if self.body.metrics(ch)[0] is None}

    def fit(self, line: str) -> str:
        """``line`` with the characters the face lacks replaced by ASCII look-alikes."""
        for ch in self.missing:
            line = line.replace(ch, _SUBSTITUTES[ch])
        return line


_SUBSTITUTES = {"→": "->", "—": "-", "…": "...", "·": "-"}


def _fontconfig(pattern: str) -> Path | None:
    """The font file fontconfig chooses for ``pattern``, or None (no fontconfig)."""
    try:
        found = subprocess.run(
            ["fc-match", "-f", "%{file}", pattern],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(found) if found else None
    return path if path is not None and path.is_file() else None


def wrap(font: pygame.font.Font, line: str, width: int) -> list[str]:
    """``line`` broken into lines no wider than ``width``: at spaces, or between any two
    characters where there is none (Chinese)."""
    out: list[str] = []
    current = ""
    for ch in line:
        trial = current + ch
        if font.size(trial)[0] <= width or not current:
            current = trial
            continue
        cut = current.rfind(" ")
        if ch != " " and cut > 0:
            out.append(current[:cut])
            current = current[cut + 1 :] + ch
        else:
            out.append(current.rstrip())
            current = ch.lstrip()
    if current:
        out.append(current)
    return out


def _blit_lines(
    surface: pygame.Surface,
    font: pygame.font.Font,
    lines: list[str],
    colour: tuple[int, int, int],
    x: int,
    y: int,
) -> int:
    for line in lines:
        image = font.render(line, True, colour)
        surface.blit(image, (x, y))
        y += font.get_linesize()
    return y


def draw(
    surface: pygame.Surface,
    view: View,
    fonts: Fonts,
    lay: Layout,
    *,
    seconds_left: int | None = None,
    phase: float = 0.0,
) -> None:
    """Paint ``view``: title, versions, bar and percent, detail, note; when it ended, the
    "Done" button and ``seconds_left`` of the countdown; ``phase`` (0..1) moves the
    indeterminate bar of work without a percentage."""
    lang = fonts.lang
    accent = view.accent
    surface.fill(BACKGROUND)
    x, width = lay.margin, lay.width - 2 * lay.margin
    y = lay.title_y
    title_font = fonts.title
    title = wrap(title_font, fonts.fit(view.title), width)
    if len(title) > 2:  # a long outcome: smaller, rather than cut (it is the message)
        title_font = fonts.body
        title = wrap(title_font, fonts.fit(view.title), width)[:3]
    colour = FOREGROUND if view.outcome in (Outcome.WORKING, Outcome.NEUTRAL) else accent
    y = _blit_lines(surface, title_font, title, colour, x, y)
    if view.versions:
        y += lay.line_gap
        _blit_lines(surface, fonts.body, [fonts.fit(view.versions)], MUTED, x, y)
    bar = lay.bar
    radius = bar.height // 2
    if view.fraction is not None:
        pygame.draw.rect(surface, BAR_TRACK, bar, border_radius=radius)
        fill = round(bar.width * view.fraction)
        if fill > 0:
            pygame.draw.rect(
                surface, accent, pygame.Rect(bar.x, bar.y, fill, bar.height), border_radius=radius
            )
        if view.percent:
            image = fonts.body.render(view.percent, True, FOREGROUND)
            surface.blit(
                image,
                (bar.right + lay.px(16), bar.centery - image.get_height() // 2),
            )
    elif view.outcome is Outcome.WORKING:  # busy without a percentage: a moving segment
        draw_moving(surface, view, lay, phase)
    y = bar.bottom + lay.px(18)
    if view.detail:
        y = _blit_lines(
            surface,
            fonts.body,
            wrap(fonts.body, fonts.fit(view.detail), width)[:2],
            FOREGROUND,
            x,
            y,
        )
    if view.note:
        y += lay.line_gap // 2
        note_colour = accent if view.outcome is Outcome.WORKING else MUTED
        _blit_lines(
            surface,
            fonts.small,
            wrap(fonts.small, fonts.fit(view.note), width)[:1],
            note_colour,
            x,
            y,
        )
    if view.ended:
        button = lay.button
        pygame.draw.rect(surface, accent, button, border_radius=lay.px(12))
        label = fonts.body.render(text(lang, "done"), True, BACKGROUND)
        surface.blit(label, label.get_rect(center=button.center))
        if seconds_left is not None:
            info = fonts.small.render(
                fonts.fit(text(lang, "closes_in", n=seconds_left)), True, MUTED
            )
            surface.blit(info, (x, button.centery - info.get_height() // 2))
    if view.banner:
        image = fonts.small.render(fonts.fit(view.banner), True, BACKGROUND)
        box = banner_box(image, fonts, lay)
        pygame.draw.rect(surface, ACCENT_BANNER, box, border_radius=lay.px(8))
        surface.blit(image, image.get_rect(center=box.center))


def banner_box(image: pygame.Surface, fonts: Fonts, lay: Layout) -> pygame.Rect:
    """Where the banner (``Reconnecting…``) goes: top right, in the margin above the title.

    Its height follows the glyphs (ascent and descent), not the rendered line (a CJK face's
    line has a large leading), so it ends above the title's first line at every scale.
    """
    pad = lay.px(8)
    glyphs = fonts.small.get_ascent() - fonts.small.get_descent()
    height = min(image.get_height(), glyphs) + lay.px(6)
    box = pygame.Rect(0, 0, image.get_width() + 2 * pad, height)
    box.topright = (lay.width - pad, lay.px(3))
    return box


def draw_moving(surface: pygame.Surface, view: View, lay: Layout, phase: float) -> pygame.Rect:
    """Paint only the indeterminate bar (a segment at ``phase``, 0..1, of its course) over
    the last frame; returns the rectangle to update. Nothing else on the screen moves, so
    an animation frame costs this bar, not a whole frame of text."""
    bar = lay.bar
    radius = bar.height // 2
    pygame.draw.rect(surface, BACKGROUND, bar)
    pygame.draw.rect(surface, BAR_TRACK, bar, border_radius=radius)
    seg = bar.width // 4
    start = round((bar.width + seg) * phase) - seg
    left, right = max(0, start), min(bar.width, start + seg)
    if right > left:
        pygame.draw.rect(
            surface,
            view.accent,
            pygame.Rect(bar.x + left, bar.y, right - left, bar.height),
            border_radius=radius,
        )
    return bar


ACCENT_BANNER = (255, 214, 10)
