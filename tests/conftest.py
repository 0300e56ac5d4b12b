"""Shared test configuration: hypothesis profiles, the real-parts fixtures and the tiers.

Fixtures that boot real servers live in ``tests/support`` (one module per part) and are
registered here so every test can ask for them by name.

**Tiers.** Every test that boots something real gets a marker, derived here from what it
uses, so a new test lands in the right tier without anyone remembering to mark it
(``./dev.sh fast`` runs ``-m "not (systemd or fleet_server or crash or e2e or slow or arm)"``;
``arm``, marked by tests/e2e/test_arm.py itself, is run by ``./dev.sh arm`` only):

* a fixture it uses, directly or through other fixtures (:data:`TIER_OF_FIXTURE`);
* a helper module its module imports, directly or through other test helpers
  (:data:`TIERS_OF_HELPER`): the crash harness, the bench's and the screen's sandbox
  updaters;
* a helper its test function calls itself (:data:`TIERS_OF_CALL`): the memory cgroup, the
  fresh interpreter that measures peak memory.

Explicit ``@pytest.mark.<tier>`` marks stay valid (and are needed where a test builds the
real part itself, e.g. ``SystemdSandbox()`` without the fixture).
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings

pytest_plugins = [
    "tests.support.package_server",
    "tests.support.serve_port",
    "tests.support.systemd_sandbox",
]

settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Local iterations (`./dev.sh fast`): a twentieth of CI's examples.
settings.register_profile("dev", max_examples=25, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: The tiers (also registered in pyproject.toml, which runs pytest with --strict-markers).
TIERS = ("systemd", "fleet_server", "crash", "e2e", "slow", "arm")

#: A test using one of these fixtures (itself or through another fixture) is in that tier.
TIER_OF_FIXTURE: dict[str, str] = {
    # tests/support/systemd_sandbox.py: a real systemd as PID 1 of private namespaces.
    "systemd_sandbox": "systemd",
    # tests/fleet/conftest.py: a real Eclipse hawkBit (Java), started once per session.
    "hawkbit": "fleet_server",
    # tests/support/serve_port.py: the port of a real `tope-updater serve` subprocess.
    "serve_port": "e2e",
    # Release bundles built from PyPI (systemd/bundle.py): minutes, and the network.
    "bundle": "slow",  # tests/e2e/test_bundle.py
    "updater_bundles": "slow",  # tests/support/self_update.py
}

#: A test whose module imports one of these modules (directly, or through test helpers that
#: do) is in these tiers.
TIERS_OF_HELPER: dict[str, tuple[str, ...]] = {
    # Real `tope-updater serve` subprocesses, killed and restarted (Rig, UpdaterProcess).
    "tests.crash.harness": ("crash", "e2e"),
    # bench/_util.py (the bench scripts import it as `_util`): SandboxUpdater, a real serve.
    "_util": ("e2e",),
    # The screen's Updater: a real `tope-updater serve --sandbox` under Xvfb.
    "tests.screen.test_screen_xvfb": ("e2e",),
}


#: A test whose function itself calls a helper of one of these modules is in these tiers.
TIERS_OF_CALL: dict[str, tuple[str, ...]] = {
    # The unit's MemoryMax around a real updater: big outputs, long runs.
    "tests.support.memory_cgroup": ("slow",),
    # Peak memory of a job in a fresh interpreter: big inputs, a process per measurement.
    "tests.support.fresh_interpreter": ("slow",),
}


def _called(item: pytest.Item) -> set[str]:
    """Modules of the globals (functions, classes, modules) the test function names."""
    function = getattr(item, "function", None)
    code = getattr(function, "__code__", None)
    if code is None:
        return set()
    names = getattr(function, "__globals__", {})
    found = set()
    for name in code.co_names:
        value = names.get(name)
        owner = (
            value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
        )
        if isinstance(owner, str):
            found.add(owner)
    return found


def _helpers(module: ModuleType, seen: dict[str, frozenset[str]]) -> frozenset[str]:
    """Names of the project modules ``module`` depends on through its globals, transitively.

    Followed: module objects and the defining modules of functions and classes, as long as
    they are test or bench helpers (``tests.*``, ``bench.*``, bench's ``_util``).
    """
    name = module.__name__
    if name in seen:
        return seen[name]
    seen[name] = frozenset({name})  # cycles: this module is already being visited
    found = {name}
    for value in list(vars(module).values()):
        dep = value if isinstance(value, ModuleType) else None
        if dep is None:
            owner = getattr(value, "__module__", None)
            if isinstance(owner, str) and callable(value):
                dep = sys.modules.get(owner)
        if dep is None or dep is module:
            continue
        if dep.__name__.startswith(("tests.", "bench.")) or dep.__name__ in TIERS_OF_HELPER:
            found |= _helpers(dep, seen)
    seen[name] = frozenset(found)
    return seen[name]


def tiers_of(item: pytest.Item, seen: dict[str, frozenset[str]]) -> set[str]:
    """The tier markers ``item`` gets from the fixtures and helpers it uses."""
    tiers = {TIER_OF_FIXTURE[f] for f in getattr(item, "fixturenames", ()) if f in TIER_OF_FIXTURE}
    module = getattr(item, "module", None)
    if module is not None:
        for helper in _helpers(module, seen):
            tiers.update(TIERS_OF_HELPER.get(helper, ()))
    for helper in _called(item):
        tiers.update(TIERS_OF_CALL.get(helper, ()))
    return tiers


#: Tests sharing an expensive session fixture run in one pytest-xdist worker
#: (``--dist loadgroup``), so it is built once per run, not once per worker.
XDIST_GROUP_OF_FIXTURE: dict[str, str] = {
    "hawkbit": "hawkbit",  # one JVM, ~30 s to start
    "bundle": "bundles",  # release bundles from PyPI, built once
    "updater_bundles": "bundles",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    seen: dict[str, frozenset[str]] = {}
    for item in items:
        have = {mark.name for mark in item.iter_markers()}
        for tier in sorted(tiers_of(item, seen) - have):
            item.add_marker(tier)
        fixtures = getattr(item, "fixturenames", ())
        group = next(
            (XDIST_GROUP_OF_FIXTURE[f] for f in fixtures if f in XDIST_GROUP_OF_FIXTURE), None
        )
        if group is not None and "xdist_group" not in have:
            item.add_marker(pytest.mark.xdist_group(group))
