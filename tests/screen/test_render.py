"""The renderer's pure parts and its font choice (no display needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

pygame = pytest.importorskip(
    "pygame", reason="pygame-ce is not installed (pip install '.[screen]')"
)

from screen.catalogue import EN, ZH_CN  # noqa: E402
from screen.render import CJK_PROBE, Fonts, find_cjk_font, layout, wrap  # noqa: E402


@pytest.fixture(autouse=True)
def _fonts() -> None:
    pygame.font.init()


@pytest.mark.parametrize("size", [(800, 480), (1920, 440), (1920, 1080), (1024, 600)])
def test_layout_fits_the_screen(size: tuple[int, int]) -> None:
    lay = layout(*size)
    screen = pygame.Rect(0, 0, *size)
    assert screen.contains(lay.bar) and screen.contains(lay.button)
    assert lay.bar.width > size[0] / 2
    assert lay.button.top > lay.bar.bottom
    assert lay.title_y + 2 * lay.title_size < lay.bar.top


def test_chinese_without_a_cjk_font_falls_back_to_english(tmp_path: Path) -> None:
    not_a_font = tmp_path / "none.ttf"
    not_a_font.write_bytes(b"not a font")
    fonts = Fonts(ZH_CN, layout(800, 480), font_path=not_a_font)
    assert fonts.lang == EN


def test_chinese_with_the_system_cjk_font() -> None:
    path = find_cjk_font()
    if path is None:
        pytest.skip("no CJK font through fontconfig (Debian: apt-get install fonts-noto-cjk)")
    fonts = Fonts(ZH_CN, layout(800, 480))
    assert fonts.lang == ZH_CN
    assert all(m is not None for m in fonts.body.metrics(CJK_PROBE))


def test_missing_typographic_characters_become_ascii() -> None:
    fonts = Fonts(EN, layout(800, 480), font_path=None)
    fonts.missing = {"→"}
    assert fonts.fit("1.0.0 → 1.1.0") == "1.0.0 -> 1.1.0"


def test_wrap_breaks_at_spaces_and_between_chinese_characters() -> None:
    font = pygame.font.Font(None, 30)
    lines = wrap(font, "The update failed; the printer was restored to 1.1.0", 300)
    assert len(lines) > 1 and all(font.size(line)[0] <= 300 for line in lines)
    assert " ".join(lines) == "The update failed; the printer was restored to 1.1.0"
    cjk = find_cjk_font()
    if cjk is not None:
        zh = pygame.font.Font(str(cjk), 30)
        text = "更新失败，打印机已恢复到 1.1.0，可以放心使用"  # noqa: RUF001
        lines = wrap(zh, text, 200)
        assert len(lines) > 1 and "".join(lines).replace(" ", "") == text.replace(" ", "")


@pytest.mark.parametrize("size", [(800, 480), (1920, 440), (1920, 1080), (1024, 600)])
@pytest.mark.parametrize("lang", [EN, ZH_CN])
def test_the_reconnecting_banner_stays_above_a_two_line_title(
    size: tuple[int, int], lang: str
) -> None:
    import attrs

    from screen.render import banner_box, draw
    from screen.view import BACKGROUND, Link, view_of

    snap = {"state": "health_check", "progress": 70, "from_version": "1.1.0"}
    lay = layout(*size)
    fonts = Fonts(lang, lay)
    view = view_of(snap, fonts.lang, link=Link.RECONNECTING, seen_work=True)
    assert view.banner
    surface = pygame.Surface(size)
    draw(surface, attrs.evolve(view, banner=None), fonts, lay)
    ink_top = next(
        y
        for y in range(size[1])
        if any(tuple(surface.get_at((x, y)))[:3] != BACKGROUND for x in range(size[0]))
    )
    image = fonts.small.render(fonts.fit(view.banner), True, BACKGROUND)
    assert banner_box(image, fonts, lay).bottom < ink_top - 2
