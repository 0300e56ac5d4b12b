"""The screen's "what to show": snapshots (as ``/progress`` gives them) → views."""

from __future__ import annotations

import re
from typing import Any

import pytest

from screen.catalogue import CATALOGUE, EN, ZH_CN, language_from_environment, normalise_language
from screen.view import Link, Outcome, is_install, view_of

BASE: dict[str, Any] = {
    "stage": "idle",
    "progress": 0,
    "message": "Idle, waiting for an update",
    "error": None,
    "state": "idle",
    "version": None,
    "bytes_downloaded": 0,
    "total_bytes": 0,
    "speed_bps": 0.0,
    "eta_s": None,
    "current_version": "1.1.0",
    "previous_version": "1.0.0",
    "factory_version": "1.0.0",
    "rollback_level": 0,
}
STATE_NAMES = re.compile(
    r"\b(idle|downloading|verifying|toInstall|waiting_idle|deploying|"
    r"switching|health_check|updater_staging|updater_switching|updater_probation|"
    r"rollback_previous|rollback_factory)\b"
)


def snap(**kw: Any) -> dict[str, Any]:
    return {**BASE, **kw}


def test_catalogue_languages_have_the_same_keys_and_placeholders() -> None:
    keys = set(CATALOGUE[EN])
    assert set(CATALOGUE[ZH_CN]) == keys
    for key in keys:
        names = set(re.findall(r"\{(\w+)\}", CATALOGUE[EN][key]))
        assert set(re.findall(r"\{(\w+)\}", CATALOGUE[ZH_CN][key])) == names, key


@pytest.mark.parametrize(
    ("value", "lang"),
    [
        ("zh_CN.UTF-8", ZH_CN),
        ("zh", ZH_CN),
        ("zh-Hans", ZH_CN),
        ("en_US.UTF-8", EN),
        ("C", None),
        ("fr_FR", None),
        (None, None),
    ],
)
def test_normalise_language(value: str | None, lang: str | None) -> None:
    assert normalise_language(value) == lang


def test_language_from_environment_prefers_lc_all() -> None:
    assert language_from_environment({"LANG": "en_US.UTF-8", "LC_ALL": "zh_CN.UTF-8"}) == ZH_CN
    assert language_from_environment({"LANG": "de_DE"}) == EN
    assert language_from_environment({}) == EN


def test_downloading_shows_bytes_speed_eta_and_the_fraction_of_bytes() -> None:
    v = view_of(
        snap(
            state="downloading",
            stage="downloading",
            progress=41,
            version="1.2.0",
            bytes_downloaded=5_000_000,
            total_bytes=12_000_000,
            speed_bps=2_500_000.0,
            eta_s=2.8,
        ),
        EN,
    )
    assert v.title == "Downloading the update"
    assert v.versions == "1.1.0 → 1.2.0"
    assert v.fraction == pytest.approx(5 / 12)
    assert v.percent == "41 %"
    assert v.detail == "5.0 MB of 12.0 MB  ·  2.5 MB/s  ·  about 3 s left"
    assert v.outcome is Outcome.WORKING and not v.ended
    long = view_of(snap(state="downloading", version="1.2.0", total_bytes=10, eta_s=600), ZH_CN)
    assert long.detail is not None and "剩余约 10 分钟" in long.detail


def test_waiting_idle_shows_the_busy_gate_reason() -> None:
    v = view_of(
        snap(
            state="waiting_idle",
            stage="toInstall",
            progress=100,
            version="1.2.0",
            message="Waiting for the printer to be free: printing benchy.gcode (41 %)",
        ),
        EN,
    )
    assert v.title == "Waiting for the printer to be free"
    assert v.detail == "printing benchy.gcode (41 %)"
    assert v.fraction is None
    asking = view_of(
        snap(
            state="waiting_idle",
            version="1.2.0",
            message="Waiting for the printer to be free: asking the printer",
        ),
        ZH_CN,
    )
    assert asking.detail == "正在询问打印机"


def test_after_the_switch_the_versions_still_read_old_to_new() -> None:
    # the switch moved current to the new version and previous to the old one
    v = view_of(
        snap(
            state="health_check",
            progress=70,
            version="1.2.0",
            current_version="1.2.0",
            previous_version="1.1.0",
        ),
        EN,
    )
    assert v.versions == "1.1.0 → 1.2.0"
    assert v.note == "Please do not turn off the printer"
    assert v.fraction == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("state", "title"),
    [
        ("updater_staging", "Updating the updater"),
        ("updater_switching", "Restarting the updater"),
        ("updater_probation", "Checking the new updater"),
    ],
)
def test_the_updater_updating_itself_is_work_the_device_already_finished(
    state: str, title: str
) -> None:
    v = view_of(
        snap(state=state, stage="installing", progress=74, version="1.2.0",
             current_version="1.2.0", previous_version="1.1.0"),
        EN,
    )  # fmt: skip
    assert (v.title, v.versions, v.outcome) == (title, "1.1.0 → 1.2.0", Outcome.WORKING)
    assert v.note is None  # the device's new version already runs: powering off is safe


def test_rollback_names_its_target() -> None:
    v = view_of(
        snap(
            state="rollback_previous",
            progress=80,
            version="1.2.0",
            current_version="1.2.0",
            previous_version="1.1.0",
            message="Rolling back to previous version v1.1.0...",
        ),
        EN,
    )
    assert v.title == "Something went wrong: restoring 1.1.0"
    assert v.outcome is Outcome.WORKING and v.note


def test_success() -> None:
    v = view_of(
        snap(
            state="success",
            stage="success",
            progress=100,
            version="1.2.0",
            current_version="1.2.0",
            previous_version="1.1.0",
        ),
        EN,
    )
    assert (v.title, v.outcome, v.ended, v.fraction) == (
        "Updated to 1.2.0",
        Outcome.SUCCESS,
        True,
        1.0,
    )
    assert view_of(snap(state="success", version="1.2.0"), ZH_CN).title == "已更新到 1.2.0"


def test_failed_after_rollback_says_the_printer_is_safe() -> None:
    error = (
        "ROLLBACK_LEVEL_1_SUCCESS: v1.1.0 (cause: HEALTH_CHECK_FAILED: hello.service: probe failed)"
    )
    v = view_of(
        snap(
            state="failed",
            stage="failed",
            version="1.2.0",
            error=error,
            message=f"Update failed: {error}",
            rollback_level=1,
        ),
        EN,
    )
    assert v.title == ("The update failed; the printer was restored to 1.1.0 — it is safe to use")
    assert v.versions == "1.1.0 → 1.2.0"  # which update failed
    # the cause, in words and as the code a support line can look up; never "…SUCCESS"
    assert v.detail == "Reason: the new version started but did not pass its health check"
    assert v.note == "Code: HEALTH_CHECK_FAILED"
    assert v.outcome is Outcome.SAFE and v.ended
    zh = view_of(snap(state="failed", version="1.2.0", error=error), ZH_CN)
    assert zh.title == "更新失败，打印机已恢复到 1.1.0，可以放心使用"  # noqa: RUF001
    assert zh.detail == "原因：新版本已启动，但未通过健康检查"  # noqa: RUF001
    assert zh.note == "代码：HEALTH_CHECK_FAILED"  # noqa: RUF001


@pytest.mark.parametrize(
    ("cause", "reason"),
    [
        ("SERVICE_START_FAILED: hello.service: exit 1", "the new version did not start"),
        ("POST_CMD_FAILED: migrate: exit 3", "a setup step of the new version failed"),
        (
            "RESUME_LIMIT: switching interrupted 3 times",
            "the install was interrupted too many times",
        ),
        ("SOMETHING_NEW: x", "an unexpected problem"),
    ],
)
def test_a_rollback_shows_the_code_of_its_cause(cause: str, reason: str) -> None:
    error = f"ROLLBACK_LEVEL_1_SUCCESS: v1.1.0 (cause: {cause})"
    v = view_of(snap(state="failed", version="1.2.0", error=error), EN)
    assert v.detail == f"Reason: {reason}"
    assert v.note == f"Code: {cause.split(':', 1)[0]}"


def test_a_factory_rollback_names_the_failed_update_but_no_made_up_origin() -> None:
    error = "ROLLBACK_LEVEL_2_SUCCESS: v1.0.0 (cause: HEALTH_CHECK_FAILED: x)"
    v = view_of(snap(state="failed", version="1.2.0", current_version="1.0.0", error=error), EN)
    assert v.title.startswith("The update failed; the printer was restored to its factory")
    # an updater without from_version: after level 2 no link names where the update began
    assert v.versions == "Update to 1.2.0"
    said = view_of(
        snap(
            state="failed",
            version="1.2.0",
            current_version="1.0.0",
            from_version="1.1.0",
            error=error,
        ),
        EN,
    )
    assert said.versions == "1.1.0 → 1.2.0"
    assert v.note == "Code: HEALTH_CHECK_FAILED"
    garbled = view_of(
        snap(state="failed", version="1.2.0", error="ROLLBACK_LEVEL_1_SUCCESS: v1.1.0"), EN
    )
    assert garbled.note is None and garbled.detail == "Reason: an unexpected problem"


def test_failed_before_the_switch_leaves_the_printer_unchanged() -> None:
    error = "MD5_MISMATCH: expected 0000, got 1111"
    v = view_of(snap(state="failed", version="1.2.0", error=error), EN)
    assert v.title.startswith(
        "The update could not be installed; the printer is unchanged on 1.1.0"
    )
    assert v.detail == "Reason: the downloaded update is damaged"
    assert v.note == "Code: MD5_MISMATCH"
    assert v.outcome is Outcome.SAFE


def test_failed_without_a_working_version_asks_for_service() -> None:
    error = "ROLLBACK_FAILED: manual intervention required (cause: X: y)"
    v = view_of(snap(state="failed", version="1.2.0", error=error), EN)
    assert v.outcome is Outcome.ATTENTION and v.ended
    assert v.detail == "Please contact service before using the printer"
    assert v.versions == "Update to 1.2.0"
    said = view_of(snap(state="failed", version="1.2.0", from_version="1.1.0", error=error), EN)
    assert said.versions == "1.1.0 → 1.2.0"


def test_idle_is_quiet_unless_work_was_seen() -> None:
    quiet = view_of(snap(), EN)
    assert (quiet.title, quiet.ended) == ("No update in progress", False)
    cancelled = view_of(snap(error="CANCELLED: cancelled by request"), EN, seen_work=True)
    assert cancelled.ended and cancelled.outcome is Outcome.SAFE
    assert cancelled.title.startswith("The update was cancelled")
    manual = view_of(snap(version="1.0.0", message="Rolled back to v1.0.0"), EN, seen_work=True)
    assert manual.title == "The printer was restored to 1.0.0" and manual.ended


def test_connection_states() -> None:
    assert view_of(None, EN).title == "Connecting to the updater…"
    running = snap(state="switching", progress=40, version="1.2.0")
    v = view_of(running, EN, link=Link.RECONNECTING)
    assert v.banner == "Reconnecting…" and v.title == "Installing the new version"
    assert view_of(running, EN).banner is None


@pytest.mark.parametrize(
    ("kw", "seen_work"),
    [
        ({"state": "success", "version": "1.2.0"}, False),
        ({"state": "failed", "version": "1.2.0", "error": "MD5_MISMATCH: x"}, False),
        (
            {
                "state": "failed",
                "version": "1.2.0",
                "error": "ROLLBACK_LEVEL_1_SUCCESS: v1.1.0 (cause: HEALTH_CHECK_FAILED: x)",
            },
            False,
        ),
        ({"state": "idle", "error": "CANCELLED: by request"}, True),
    ],
)
def test_a_final_outcome_has_no_reconnecting_banner(kw: dict[str, Any], seen_work: bool) -> None:
    """The updater may exit once it is done: the outcome stays true without it."""
    v = view_of(snap(**kw), EN, link=Link.RECONNECTING, seen_work=seen_work)
    assert v.ended and v.banner is None


def test_ready_says_what_happens_next() -> None:
    v = view_of(snap(state="ready", version="1.2.0"), EN)
    assert (v.title, v.versions) == ("The update is ready to install", "1.1.0 → 1.2.0")
    assert v.detail == "The install begins when you start it from the printer's app"
    assert v.note == "The printer then stops, installs 1.2.0 and restarts by itself"
    assert not v.ended
    zh = view_of(snap(state="ready", version="1.2.0"), ZH_CN)
    assert zh.note is not None and "1.2.0" in zh.note


@pytest.mark.parametrize("lang", [EN, ZH_CN])
@pytest.mark.parametrize(
    "kw",
    [
        {"state": "downloading", "total_bytes": 10, "bytes_downloaded": 5},
        {"state": "verifying"},
        {"state": "ready"},
        {"state": "deploying"},
        {"state": "switching"},
        {"state": "health_check"},
        {"state": "rollback_factory", "message": "Rolling back to factory version v1.0.0..."},
        {"state": "success"},
        {"state": "failed", "error": "DISK_FULL: need 9 MB"},
        {"state": "failed", "error": "SOMETHING NEW happened"},
        {"state": "idle"},
    ],
)
def test_no_state_name_is_ever_shown(lang: str, kw: dict[str, Any]) -> None:
    v = view_of(snap(version="1.2.0", **kw), lang, seen_work=True)
    for line in (v.title, v.versions, v.detail, v.note, v.percent):
        assert line is None or not STATE_NAMES.search(line), line
    assert v.title


def test_only_an_install_or_a_rollback_counts_as_work() -> None:
    assert not is_install(snap(state="downloading")) and not is_install(snap(state="ready"))
    assert is_install(snap(state="waiting_idle")) and is_install(snap(state="rollback_factory"))


def test_a_download_waiting_to_try_again_says_when_and_which_attempt() -> None:
    retrying = snap(
        state="downloading",
        stage="downloading",
        progress=12,
        version="1.2.0",
        bytes_downloaded=1_500_000,
        total_bytes=12_000_000,
        retry={
            "reason": "cannot connect to 10.0.0.5:80: connection refused",
            "in_s": 3.6,
            "attempt": 3,
            "attempts": 8,
        },
    )
    v = view_of(retrying, EN)
    assert v.detail == ("1.5 MB of 12.0 MB  ·  trying again in 4 s (attempt 3 of 8)")
    assert v.note == "cannot connect to 10.0.0.5:80: connection refused"
    zh = view_of(retrying, ZH_CN)
    assert zh.detail is not None and "4 秒后重试" in zh.detail and "共 8 次" in zh.detail
    flowing = view_of({**retrying, "retry": None, "speed_bps": 1e6}, EN)
    assert flowing.detail == "1.5 MB of 12.0 MB  ·  1.0 MB/s" and flowing.note is None
