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


class _XImage(ctypes.Structure):
    """The head of Xlib's ``XImage`` (what is read here; the rest is never touched)."""

    _fields_ = [
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("xoffset", ctypes.c_int),
        ("format", ctypes.c_int),
        ("data", ctypes.c_void_p),
        ("byte_order", ctypes.c_int),
        ("bitmap_unit", ctypes.c_int),
        ("bitmap_bit_order", ctypes.c_int),
        ("bitmap_pad", ctypes.c_int),
        ("depth", ctypes.c_int),
        ("bytes_per_line", ctypes.c_int),
        ("bits_per_pixel", ctypes.c_int),
    ]


def root_image(display: str) -> tuple[int, int, bytes]:
    """What ``display`` shows: ``(width, height, pixels)``, pixels as packed RGB rows.

    ``XGetImage`` of the root window (ZPixmap): the screen as the X server holds it,
    whichever window drew it. Needs only libX11 (Xvfb's dependency).
    """
    xlib = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
    xlib.XOpenDisplay.restype = ctypes.c_void_p
    xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    xlib.XDefaultRootWindow.restype = ctypes.c_ulong
    xlib.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
    xlib.XDisplayWidth.argtypes = [ctypes.c_void_p, ctypes.c_int]
    xlib.XDisplayHeight.argtypes = [ctypes.c_void_p, ctypes.c_int]
    xlib.XGetImage.restype = ctypes.POINTER(_XImage)
    xlib.XGetImage.argtypes = [
        ctypes.c_void_p,
        ctypes.c_ulong,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_ulong,
        ctypes.c_int,
    ]
    xlib.XDestroyImage.argtypes = [ctypes.POINTER(_XImage)]
    xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    dpy = xlib.XOpenDisplay(display.encode())
    assert dpy, f"cannot open display {display}"
    try:
        width, height = xlib.XDisplayWidth(dpy, 0), xlib.XDisplayHeight(dpy, 0)
        all_planes, z_pixmap = 0xFFFFFFFF, 2
        image = xlib.XGetImage(
            dpy, xlib.XDefaultRootWindow(dpy), 0, 0, width, height, all_planes, z_pixmap
        )
        assert image, "XGetImage failed"
        try:
            head = image.contents
            assert head.bits_per_pixel == 32 and head.byte_order == 0, "expected 32-bit LSBFirst"
            stride = head.bytes_per_line
            raw = ctypes.string_at(head.data, stride * head.height)
        finally:
            xlib.XDestroyImage(image)
    finally:
        xlib.XCloseDisplay(dpy)
    rgb = bytearray()
    for y in range(height):
        row = raw[y * stride : y * stride + 4 * width]
        # BGRX in memory (LSBFirst, masks 0xff0000/0xff00/0xff): swap to RGB
        out = bytearray(3 * width)
        out[0::3], out[1::3], out[2::3] = row[2::4], row[1::4], row[0::4]
        rgb += out
    return width, height, bytes(rgb)
