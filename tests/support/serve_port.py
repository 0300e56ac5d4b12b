"""A free loopback port for a real ``tope-updater serve`` subprocess.

Ask for the ``serve_port`` fixture instead of a fixed port (never the default 12315: a
developer's ``./dev.sh run`` may be serving there) or a private ``bind(0)`` helper: a test
that uses it is in the ``e2e`` tier (tests/conftest.py), as every test running ``serve``
should be.
"""

from __future__ import annotations

import socket

import pytest


def free_port() -> int:
    """A loopback TCP port nobody listens on now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def serve_port() -> int:
    """A free loopback port for the test's ``tope-updater serve --port``."""
    return free_port()
