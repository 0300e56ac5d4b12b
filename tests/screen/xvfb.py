"""Helpers for the screen tests under Xvfb: a private X server, reading screenshots, and a
synthetic click through the XTEST extension (libXtst, with ctypes)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest


def require_display_stack() -> None:
    """Skip (with the reason) unless Xvfb and pygame-ce are installed."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (Debian: apt-get install xvfb)")
    pytest.importorskip("pygame", reason="pygame-ce is not installed (pip install '.[screen]')")


@contextlib.contextmanager
def xvfb(width: int = 1920, height: int = 1080) -> Iterator[str]:
    """A private Xvfb; yields its ``DISPLAY`` value."""
    read, write = os.pipe()
    proc = subprocess.Popen(
        [
            "Xvfb",
            "-displayfd",
            str(write),
            "-screen",
            "0",
            f"{width}x{height}x24",
            "-nolisten",
            "tcp",
        ],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    try:
        number = b""
        with os.fdopen(read, "rb") as pipe:
            while not number.endswith(b"\n"):
                chunk = pipe.read(1)
                if not chunk:
                    pytest.fail("Xvfb did not start")
                number += chunk
        yield f":{number.decode().strip()}"
    finally:
        proc.terminate()
        proc.wait(10)


def click(display: str, x: int, y: int) -> None:
    """A left click at root coordinates (x, y) on ``display``, as a person's tap would be."""
    xlib = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
    xtst = ctypes.CDLL(ctypes.util.find_library("Xtst") or "libXtst.so.6")
    xlib.XOpenDisplay.restype = ctypes.c_void_p
    xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    xlib.XFlush.argtypes = [ctypes.c_void_p]
    xlib.XSync.argtypes = [ctypes.c_void_p, ctypes.c_int]
    xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    xtst.XTestFakeMotionEvent.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_ulong,
    ]
    xtst.XTestFakeButtonEvent.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_ulong,
    ]
    dpy = xlib.XOpenDisplay(display.encode())
    assert dpy, f"cannot open display {display}"
    try:
        xtst.XTestFakeMotionEvent(dpy, 0, x, y, 0)
        xtst.XTestFakeButtonEvent(dpy, 1, 1, 20)
        xtst.XTestFakeButtonEvent(dpy, 1, 0, 40)
        xlib.XSync(dpy, 0)
    finally:
        xlib.XCloseDisplay(dpy)


def xtest_available() -> bool:
    return ctypes.util.find_library("Xtst") is not None
