"""The install refusals as a table: every rule, its order, and what it leaves alone."""

from __future__ import annotations

import pytest

from updater_fsm.core.errors import ErrorCode, Failure
from updater_fsm.core.events import LinkVersions
from updater_fsm.core.install_refusal import refuse_install

RUNNING = "the running version"
FACTORY = "the factory snapshot"
OLDER = "older than the running"

CASES = [
    # (id, version, current, previous, factory, allow_downgrade, expected code, in detail)
    ("same_as_running", "1.1.0", "1.1.0", "1.0.0", "1.0.0", True, "DEPLOYMENT_FAILED", RUNNING),
    (
        "same_as_running_no_downgrade",
        "1.1.0",
        "1.1.0",
        None,
        "1.0.0",
        False,
        "DEPLOYMENT_FAILED",
        RUNNING,
    ),
    ("running_is_factory", "1.0.0", "1.0.0", None, "1.0.0", True, "DEPLOYMENT_FAILED", RUNNING),
    ("same_as_factory", "1.0.0", "1.1.0", "1.0.0", "1.0.0", True, "DEPLOYMENT_FAILED", FACTORY),
    (
        "factory_and_older_no_downgrade",
        "1.0.0",
        "1.1.0",
        None,
        "1.0.0",
        False,
        "DOWNGRADE_REFUSED",
        OLDER,
    ),
    ("downgrade_allowed", "1.0.5", "1.1.0", "1.0.0", "1.0.0", True, None, None),
    ("downgrade_refused", "1.0.5", "1.1.0", "1.0.0", "1.0.0", False, "DOWNGRADE_REFUSED", OLDER),
    (
        "downgrade_numeric_not_textual",
        "1.9.0",
        "1.10.0",
        None,
        "1.0.0",
        False,
        "DOWNGRADE_REFUSED",
        OLDER,
    ),
    ("upgrade", "1.2.0", "1.1.0", "1.0.0", "1.0.0", False, None, None),
    ("upgrade_numeric_not_textual", "1.10.0", "1.9.0", None, "1.0.0", False, None, None),
    ("reinstall_previous", "1.0.5", "1.1.0", "1.0.5", "1.0.0", True, None, None),
    ("no_current_link", "1.0.0", None, None, "1.0.0", False, "DEPLOYMENT_FAILED", FACTORY),
    ("no_current_link_downgrade_not_judged", "0.9.0", None, None, "1.0.0", False, None, None),
    ("no_factory_link", "1.0.0", "1.1.0", None, None, True, None, None),
    ("no_links", "1.0.0", None, None, None, False, None, None),
]


@pytest.mark.parametrize(
    ("version", "current", "previous", "factory", "allow_downgrade", "code", "phrase"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_refusal_table(
    version: str,
    current: str | None,
    previous: str | None,
    factory: str | None,
    allow_downgrade: bool,
    code: str | None,
    phrase: str | None,
) -> None:
    links = LinkVersions(current=current, previous=previous, factory=factory)
    refusal = refuse_install(version, links, allow_downgrade)
    if code is None:
        assert refusal is None
        return
    assert refusal is not None
    assert refusal.code is ErrorCode(code)
    assert phrase is not None and phrase in refusal.detail


def test_the_details_are_the_documented_ones() -> None:
    links = LinkVersions(current="1.1.0", previous="1.0.0", factory="1.0.0")
    assert refuse_install("1.1.0", links, True) == Failure(
        ErrorCode.DEPLOYMENT_FAILED, "v1.1.0 is already the running version"
    )
    assert refuse_install("1.0.5", links, False) == Failure(
        ErrorCode.DOWNGRADE_REFUSED,
        "v1.0.5 is older than the running v1.1.0 (allow_downgrade is off)",
    )
    assert refuse_install("1.0.0", links, True) == Failure(
        ErrorCode.DEPLOYMENT_FAILED,
        "v1.0.0 is the factory snapshot, which is never modified (roll back to factory instead)",
    )


# ---- the rollback floor (issue 21) -------------------------------------------------------
DOWNGRADE = "DOWNGRADE_REFUSED"
FLOOR_CASES = [
    # (id, version, current, factory, floor, allow_downgrade, expected code or None)
    ("replay_after_factory_rollback", "1.0.5", "1.0.0", "1.0.0", "1.2.0", False, DOWNGRADE),
    ("replay_after_previous_rollback", "1.1.5", "1.1.0", "1.0.0", "1.2.0", False, DOWNGRADE),
    ("the_floor_itself_installs", "1.2.0", "1.0.0", "1.0.0", "1.2.0", False, None),
    ("above_the_floor_installs", "1.3.0", "1.0.0", "1.0.0", "1.2.0", False, None),
    ("below_the_floor_with_downgrades_allowed", "1.0.5", "1.0.0", "1.0.0", "1.2.0", True, None),
    ("no_floor_recorded", "1.0.5", "1.0.0", "1.0.0", None, False, None),
    ("floor_compares_numbers", "1.9.0", "1.0.0", "1.0.0", "1.10.0", False, DOWNGRADE),
]  # fmt: skip


@pytest.mark.parametrize(
    ("version", "current", "factory", "floor", "allow_downgrade", "code"),
    [case[1:] for case in FLOOR_CASES],
    ids=[case[0] for case in FLOOR_CASES],
)
def test_the_rollback_floor(
    version: str,
    current: str,
    factory: str,
    floor: str | None,
    allow_downgrade: bool,
    code: str | None,
) -> None:
    links = LinkVersions(current, None, factory)
    refusal = refuse_install(version, links, allow_downgrade, floor)
    if code is None:
        assert refusal is None
    else:
        assert refusal == Failure(
            ErrorCode(code), f"{version} is below {floor}, the highest version this device has run"
        )


def test_below_the_running_version_keeps_its_own_message_before_the_floors() -> None:
    refusal = refuse_install("1.0.5", LinkVersions("1.1.0", None, "1.0.0"), False, "1.2.0")
    assert refusal == Failure(
        ErrorCode.DOWNGRADE_REFUSED,
        "v1.0.5 is older than the running v1.1.0 (allow_downgrade is off)",
    )
