"""Shared test configuration: hypothesis profiles and the real-parts fixtures.

Fixtures that boot real servers live in ``tests/support`` (one module per part) and are
registered here so every test can ask for them by name.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

pytest_plugins = [
    "tests.support.package_server",
    "tests.support.systemd_sandbox",
]

settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
