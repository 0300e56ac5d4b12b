"""The rollback floor on disk: the highest version this device has run successfully.

One small file, ``<state dir>/rollback-floor`` (the version and a newline), written the
durable way (temp + fsync + rename + fsync dir), never through a link. It is kept apart
from the journal on purpose: a journal that is set aside, or an older updater put back by
a self-update's guard (which may not know this file), must not lower it — only raising it
is ever written. What the floor refuses is the core's rule
(:func:`updater_fsm.core.install_refusal.refuse_install`).

A device that has no file yet (installed before the floor existed) starts one from the
version it runs, once its state is settled (:func:`start_floor`).
"""

from __future__ import annotations

from pathlib import Path

import structlog

from updater_fsm import durable
from updater_fsm.core.versions import InvalidVersion, Version

_log = structlog.get_logger(__name__)

FILE_NAME = "rollback-floor"


def floor_path(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


def read_floor(state_dir: Path) -> str | None:
    """The recorded floor, or None when there is none (or it is unreadable: logged; the
    running version's own rule still refuses older packages)."""
    path = floor_path(state_dir)
    try:
        text = durable.read_no_follow(path).decode("ascii").strip()
        return Version.parse(text).text
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, InvalidVersion) as exc:
        _log.error("rollback_floor.unreadable", path=str(path), error=str(exc))
        return None


def raise_floor(state_dir: Path, version: str) -> str:
    """Make the floor at least ``version`` (durably); returns the floor now."""
    floor = read_floor(state_dir)
    if floor is not None and not Version.parse(floor).is_older_than(Version.parse(version)):
        return floor
    new = Version.parse(version).text
    state_dir.mkdir(parents=True, exist_ok=True)
    durable.atomic_write_bytes(floor_path(state_dir), f"{new}\n".encode(), point="floor")
    _log.info("rollback_floor.raised", floor=new, was=floor)
    return new


def start_floor(state_dir: Path, running: str | None) -> str | None:
    """The floor, started from ``running`` when none is recorded yet."""
    floor = read_floor(state_dir)
    if floor is None and running is not None:
        return raise_floor(state_dir, running)
    return floor
