"""A real Eclipse hawkBit server for the fleet tests (one per session; see docs/FLEET.md).

hawkBit is built with Maven from tests/hawkbit/ (cached in ~/.m2) and started on loopback.
When it cannot be built or started the tests fail with the exact error: no imitation server
stands in for it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.hawkbit import HawkbitServer, HawkbitUnavailable


@pytest.fixture(scope="session")
def hawkbit() -> Iterator[HawkbitServer]:
    server = HawkbitServer()
    try:
        server.start()
    except HawkbitUnavailable as exc:
        pytest.fail(f"hawkBit could not be started: {exc}", pytrace=False)
    try:
        server.set_polling("00:00:01")
        yield server
    finally:
        server.stop()
