"""``tope-updater screen``: the full-screen progress display at the printer.

A client of the HTTP API like the commands of :mod:`~http_shell.cli.jobs`; the display
itself is the :mod:`screen` package (the optional ``screen`` extra, pygame-ce).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from http_shell.cli.exit_codes import EXIT_USAGE
from http_shell.cli.options import add_client_parser, api_token, api_url, client_config


def _window_size(text: str) -> tuple[int, int]:
    """``WxH`` (``800x480``) as a pair of positive integers."""
    try:
        w, h = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT, e.g. 800x480 (got {text!r})"
        ) from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"width and height must be positive (got {text!r})")
    return w, h


def cmd_screen(args: argparse.Namespace) -> int:
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        from screen.app import Options, run
        from screen.catalogue import language_from_environment, normalise_language
        from screen.render import BASE_W  # noqa: F401  (pygame is importable)
    except ImportError as exc:
        print(
            f"tope-updater screen: needs the 'screen' extra (pip install"
            f" 'tope-updater[screen]'): {exc}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    config = client_config(args)
    lang = normalise_language(args.lang or config.screen_lang) or language_from_environment(
        os.environ
    )
    options = Options(
        url=api_url(args),
        token=api_token(args),
        lang=lang,
        window=args.window,
        close_after=args.close_after,
        font=args.font or config.screen_font,
        snapshot_dir=args.snapshot_dir,
    )
    return run(options)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_client_parser(
        sub,
        "screen",
        "the full-screen progress display at the printer (needs [screen])",
        json=False,
    )
    p.add_argument(
        "--lang",
        help="en or zh-CN (default: the screen_lang key, else the locale's language)",
    )
    p.add_argument(
        "--window",
        type=_window_size,
        metavar="WxH",
        help="a normal window of this size (default: full-screen, borderless, on top)",
    )
    p.add_argument(
        "--close-after",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="close this long after the update ended (default 60)",
    )
    p.add_argument("--font", type=Path, help="font file (default: screen_font, else fontconfig)")
    p.add_argument(
        "--snapshot-dir", type=Path, help="save each new frame there as PNG (tests, docs)"
    )
    p.set_defaults(func=cmd_screen)
