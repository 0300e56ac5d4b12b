"""What the screen shows, decided from a ``/progress`` snapshot: pure, no I/O, no pygame.

:func:`view_of` turns the ``data`` object of ``GET /progress`` (or one ``/events`` message)
into a :class:`View`: the sentences a person reads (never a state name, never an error code
alone), the versions, the bar's fraction, the outcome and its colours. The renderer only
draws a view; the tests of this module are plain unit tests.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any

import attrs

from screen.catalogue import text

RGB = tuple[int, int, int]


class Outcome(enum.StrEnum):
    """What the person at the printer should understand, and the colour that says it."""

    #: nothing happening, or not connected yet
    NEUTRAL = "neutral"
    #: work in progress: wait, do not turn off
    WORKING = "working"
    #: the update is installed
    SUCCESS = "success"
    #: it failed, but the printer runs a working version (restored or never changed)
    SAFE = "safe"
    #: it failed and the printer could not be restored: call service
    ATTENTION = "attention"


class Link(enum.StrEnum):
    """The screen's connection to the updater."""

    CONNECTING = "connecting"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    #: it answers, but with something the screen cannot read (too big, not JSON, the wrong
    #: shape): the last readable view stays under a banner, and the follower reconnects
    UNREADABLE = "unreadable"


#: Accent colour of each outcome (bar fill, title), on the dark :data:`BACKGROUND`.
ACCENT: Mapping[Outcome, RGB] = {
    Outcome.NEUTRAL: (150, 160, 175),
    Outcome.WORKING: (64, 156, 255),
    Outcome.SUCCESS: (52, 199, 89),
    Outcome.SAFE: (255, 179, 64),
    Outcome.ATTENTION: (255, 69, 58),
}
BACKGROUND: RGB = (18, 20, 26)
FOREGROUND: RGB = (240, 242, 245)
MUTED: RGB = (160, 166, 178)
BAR_TRACK: RGB = (52, 56, 66)

_WORK_STATES = (
    "downloading",
    "verifying",
    "waiting_idle",
    "deploying",
    "switching",
    "health_check",
    "updater_staging",
    "updater_switching",
    "updater_probation",
    "rollback_previous",
    "rollback_factory",
)
#: States in which the services are (or may be) stopped: the person must not power off.
_CRITICAL_STATES = (
    "deploying",
    "switching",
    "health_check",
    "rollback_previous",
    "rollback_factory",
)
_WAIT_PREFIX = "Waiting for the printer to be free: "
_ASKING = "asking the printer"
_ROLLBACK_TARGET = re.compile(r"\bv(\S+?)\.\.\.$")
_RESTORED = re.compile(r"^ROLLBACK_LEVEL_([12])_SUCCESS: v(\S+)")
#: The catalogue key of the sentence that says what each error code means for a person.
_REASONS: Mapping[str, str] = {
    "DOWNLOAD_FAILED": "reason_download",
    "INCOMPLETE_DOWNLOAD": "reason_incomplete",
    "PACKAGE_SIZE_MISMATCH": "reason_damaged",
    "MD5_MISMATCH": "reason_damaged",
    "SHA256_MISMATCH": "reason_damaged",
    "SIGNATURE_INVALID": "reason_not_genuine",
    "SIGNATURE_REQUIRED": "reason_unsigned",
    "DISK_FULL": "reason_space",
    "INVALID_MANIFEST": "reason_invalid",
    "VERSION_MISMATCH": "reason_wrong_version",
    "INCOMPATIBLE_DEVICE": "reason_model",
    "DEPLOYMENT_FAILED": "reason_deploy",
    "DOWNGRADE_REFUSED": "reason_older",
    "DELTA_BASE_MISMATCH": "reason_delta",
    "PACKAGE_EXPIRED": "reason_expired",
    "SERVICE_STOP_FAILED": "reason_stop",
    "SERVICE_STOP_TIMEOUT": "reason_stop",
    "SERVICE_START_FAILED": "reason_start",
    "POST_CMD_FAILED": "reason_post_cmd",
    "HEALTH_CHECK_FAILED": "reason_health",
    "RESUME_LIMIT": "reason_interrupted",
    "UPDATER_ARCH_MISMATCH": "reason_updater",
    "UPDATER_NOT_SLOTTED": "reason_updater",
    "UPDATER_INSTALL_FAILED": "reason_updater",
    "UPDATER_ROLLBACK": "reason_updater",
}


@attrs.frozen
class View:
    """One screenful.

    Attributes:
        title: what is happening, in plain words (the big line).
        versions: ``1.1.0 → 1.2.0`` (or ``Version 1.2.0``), None when there is no job.
        fraction: the bar's fill 0..1; None: no bar.
        percent: the percentage drawn beside the bar (``"42 %"``), None with no bar.
        detail: the second line: size, speed and time left; the busy-gate reason; a plain
            reason for a failure. None: nothing.
        note: a small line: "do not turn off", the error code of a failure.
        outcome: what it means, and so the colours.
        ended: a terminal outcome: the renderer shows "Done" and the countdown.
        banner: a connection notice drawn over the view (``Reconnecting…``), or None.
    """

    title: str
    versions: str | None
    fraction: float | None
    percent: str | None
    detail: str | None
    note: str | None
    outcome: Outcome
    ended: bool
    banner: str | None = None

    @property
    def accent(self) -> RGB:
        return ACCENT[self.outcome]


def is_install(snapshot: Mapping[str, Any]) -> bool:
    """True while an install or a rollback is under way (the screen's reason to be)."""
    return snapshot.get("state") in ("waiting_idle", *_CRITICAL_STATES)


def _v(version: object) -> str | None:
    return str(version) if version else None


def _mb(lang: str, n: float) -> str:
    return text(lang, "mb", n=f"{n / 1_000_000:.1f}")


def _eta(lang: str, seconds: float) -> str:
    if seconds < 90:
        return text(lang, "eta_s", n=max(1, round(seconds)))
    return text(lang, "eta_min", n=round(seconds / 60))


def _from_to(snap: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The version the printer is leaving and the one it goes to: ``from_version`` once the
    updater says it (from the switch on; an updater before it existed never does), else
    whichever way the links point now (the switch moves ``current`` to the new version and
    ``previous`` to the old).
    """
    new = _v(snap.get("version"))
    said = _v(snap.get("from_version"))
    if said:
        return said, new
    current = _v(snap.get("current_version"))
    old = _v(snap.get("previous_version")) if current == new else current
    return old, new


def _failed_update(lang: str, snap: Mapping[str, Any], guess: str | None) -> str | None:
    """Which update failed, after a rollback: ``from → to`` when the snapshot says where it
    started (``from_version``), else from ``guess`` (the version a level-1 rollback
    restored is the one it started from), else only where it was going."""
    new = _v(snap.get("version"))
    old = _v(snap.get("from_version")) or guess
    if old is not None:
        return _versions(lang, old, new)
    return text(lang, "update_to", new=new) if new else None


def _versions(lang: str, old: str | None, new: str | None) -> str | None:
    if new is None:
        return None
    if old is None or old == new:
        return text(lang, "version_only", new=new)
    return text(lang, "versions", old=old, new=new)


def _code(error: str | None) -> str | None:
    if not error:
        return None
    head = error.split(":", 1)[0].strip()
    return head if head.isupper() and " " not in head else None


def _ended(lang: str, snap: Mapping[str, Any]) -> View:
    """The outcome of a ``failed`` snapshot, as a person understands it."""
    error = snap.get("error") or ""
    code = _code(error)
    restored = _RESTORED.match(error)
    old, new = _from_to(snap)
    if restored is not None:
        # ``ROLLBACK_LEVEL_n_SUCCESS`` says how the printer was saved, not why the update
        # failed: the note shows the code of the cause, which the detail puts in words.
        cause = _cause_code(error)
        level_1 = restored.group(1) == "1"
        return View(
            title=text(
                lang, "restored" if level_1 else "restored_factory", version=restored.group(2)
            ),
            versions=_failed_update(lang, snap, restored.group(2) if level_1 else None),
            fraction=None,
            percent=None,
            detail=text(
                lang, "reason", reason=text(lang, _REASONS.get(cause or "", "reason_other"))
            ),
            note=text(lang, "code", code=cause) if cause else None,
            outcome=Outcome.SAFE,
            ended=True,
        )
    if code == "ROLLBACK_FAILED":
        return View(
            title=text(lang, "attention"),
            # which update failed; where the links point now proves nothing any more
            versions=_failed_update(lang, snap, None),
            fraction=None,
            percent=None,
            detail=text(lang, "attention_detail"),
            note=text(lang, "code", code=code),
            outcome=Outcome.ATTENTION,
            ended=True,
        )
    current = _v(snap.get("current_version"))
    title = (
        text(lang, "unchanged", version=current) if current else text(lang, "unchanged_no_version")
    )
    return View(
        title=title,
        versions=_versions(lang, old, new),
        fraction=None,
        percent=None,
        detail=text(lang, "reason", reason=text(lang, _REASONS.get(code or "", "reason_other"))),
        note=text(lang, "code", code=code) if code else None,
        outcome=Outcome.SAFE,
        ended=True,
    )


def _cause_code(error: str) -> str | None:
    """The code of a rollback's first cause: ``HEALTH_CHECK_FAILED`` in
    ``ROLLBACK_LEVEL_1_SUCCESS: v1.1.0 (cause: HEALTH_CHECK_FAILED: …)``."""
    cause = error.split("(cause: ", 1)[1] if "(cause: " in error else ""
    return _code(cause)


def view_of(
    snap: Mapping[str, Any] | None,
    lang: str,
    *,
    link: Link = Link.LIVE,
    seen_work: bool = False,
) -> View:
    """What to show for ``snap`` (the ``/progress`` data object) in ``lang``.

    Args:
        snap: the latest snapshot; None before the first one arrived.
        lang: a catalogue language (``en``, ``zh-CN``).
        link: the connection to the updater; ``reconnecting`` keeps the last view and adds a
            banner (an updater restarting mid-install is not an error), except on a final
            outcome, which stays true whether or not the updater still runs.
        seen_work: this screen saw an install or a rollback under way (:func:`is_install`);
            an ``idle`` or ``ready`` after it is then an end (a cancel while waiting for the
            printer, a manual rollback) rather than a quiet state.
    """
    if link is Link.UNREADABLE and snap is None:
        return attrs.evolve(_view(None, lang, seen_work=seen_work), title=text(lang, "unreadable"))
    view = _view(snap, lang, seen_work=seen_work)
    # A final outcome needs no connection (the updater may well have exited): no banner.
    if link is Link.RECONNECTING and snap is not None and not view.ended:
        return attrs.evolve(view, banner=text(lang, "reconnecting"))
    if link is Link.UNREADABLE:
        return attrs.evolve(view, banner=text(lang, "unreadable_banner"))
    return view


def _view(snap: Mapping[str, Any] | None, lang: str, *, seen_work: bool) -> View:
    if snap is None:
        return View(
            title=text(lang, "connecting"),
            versions=None,
            fraction=None,
            percent=None,
            detail=None,
            note=None,
            outcome=Outcome.NEUTRAL,
            ended=False,
        )
    state = str(snap.get("state") or "")
    progress = int(snap.get("progress") or 0)
    old, new = _from_to(snap)
    working = View(
        title=text(lang, state) if state in _WORK_STATES and "rollback" not in state else "",
        versions=_versions(lang, old, new),
        fraction=max(0.0, min(1.0, progress / 100)),
        percent=f"{progress} %",
        detail=None,
        note=text(lang, "do_not_power_off") if state in _CRITICAL_STATES else None,
        outcome=Outcome.WORKING,
        ended=False,
    )
    if state == "downloading":
        done = int(snap.get("bytes_downloaded") or 0)
        total = int(snap.get("total_bytes") or 0)
        parts = [text(lang, "transfer", done=_mb(lang, done), total=_mb(lang, total))]
        if snap.get("speed_bps"):
            parts.append(text(lang, "speed", speed=_mb(lang, float(snap["speed_bps"]))))
        if snap.get("eta_s") is not None:
            parts.append(_eta(lang, float(snap["eta_s"])))
        retry = snap.get("retry")
        if retry is not None:  # waiting to try again: no speed or time left to show
            parts[1:] = [
                text(
                    lang,
                    "retrying",
                    n=max(1, round(float(retry["in_s"]))),
                    attempt=int(retry["attempt"]),
                    attempts=int(retry["attempts"]),
                )
            ]
        fraction = min(1.0, done / total) if total else 0.0
        return attrs.evolve(
            working,
            fraction=fraction,
            percent=f"{int(fraction * 100)} %",
            detail="  ·  ".join(parts),
            note=retry["reason"] if retry is not None else working.note,
        )
    if state == "waiting_idle":
        message = str(snap.get("message") or "")
        reason = message[len(_WAIT_PREFIX) :] if message.startswith(_WAIT_PREFIX) else ""
        if not reason or reason == _ASKING:
            reason = text(lang, "asking_printer")
        return attrs.evolve(working, fraction=None, percent=None, detail=reason)
    if state in ("rollback_previous", "rollback_factory"):
        found = _ROLLBACK_TARGET.search(str(snap.get("message") or ""))
        link_name = "previous_version" if state == "rollback_previous" else "factory_version"
        target = found.group(1) if found else _v(snap.get(link_name)) or ""
        return attrs.evolve(
            working,
            title=text(lang, state, target=target),
            versions=None,
            fraction=None,
            percent=None,
        )
    if state in _WORK_STATES:
        return working
    if state == "success":
        return attrs.evolve(
            working,
            title=text(lang, "success", version=new or ""),
            fraction=1.0,
            percent="100 %",
            detail=text(lang, "success_detail"),
            outcome=Outcome.SUCCESS,
            ended=True,
        )
    if state == "failed":
        return _ended(lang, snap)
    # idle or ready: quiet, unless it follows work this screen saw (a cancel, a manual
    # rollback, a package that expired while waiting)
    current = _v(snap.get("current_version"))
    ready = state == "ready"
    quiet = View(
        title=text(lang, "ready" if ready else "idle"),
        versions=_versions(lang, current, new) if ready else _versions(lang, None, current),
        fraction=None,
        percent=None,
        # ready: what happens next, and what the printer will then do
        detail=text(lang, "ready_detail") if ready else text(lang, "idle_detail"),
        note=text(lang, "ready_note", version=new or "") if ready and not seen_work else None,
        outcome=Outcome.NEUTRAL,
        ended=seen_work,
    )
    if not seen_work:
        return quiet
    message = str(snap.get("message") or "")
    if message.startswith("Rolled back to v"):
        return attrs.evolve(
            quiet,
            title=text(lang, "manual_rollback", version=new or current or ""),
            versions=None,
            outcome=Outcome.SUCCESS,
        )
    if _code(snap.get("error")) == "CANCELLED" or state == "ready":
        return attrs.evolve(quiet, title=text(lang, "cancelled"), outcome=Outcome.SAFE)
    return attrs.evolve(quiet, outcome=Outcome.SAFE)
