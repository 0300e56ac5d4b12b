"""The device's history on disk: the last jobs, newest first, in ``<state dir>/history.json``.

One JSON document ``{"schema": 1, "entries": [...]}``, bounded to
:data:`~updater_fsm.core.history.HISTORY_LIMIT` entries, written the durable way
(:func:`updater_fsm.durable.atomic_write_bytes`: temp + fsync + rename + fsync dir, crash
point ``history``), never through a link. What an entry holds and when a job ends is the
core's (:mod:`updater_fsm.core.history`); the ``RecordHistory`` effect asks for the write
after the outcome is journaled, and a restart asks again, so :func:`record` is idempotent:
an entry already kept (same job id and start time) is not written twice.

A file that cannot be read as a history (torn by hand, garbage, a symlink or a FIFO planted
in its place) is never fatal: the writer sets it aside as ``history.json.corrupt-<time>``
and starts a new one; a reader (``GET /history``) sees an empty history meanwhile.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import cattrs
import structlog

from updater_fsm import durable
from updater_fsm.core.history import HISTORY_LIMIT, HistoryEntry
from updater_fsm.strict_converter import STRICT_CONVERTER

__all__ = ["FILE_NAME", "HistoryUnreadable", "history_path", "read_history", "record"]

_log = structlog.get_logger(__name__)

FILE_NAME = "history.json"
SCHEMA = 1
#: A history file larger than this is not a history (100 entries are a few tens of KiB).
MAX_BYTES = 4 << 20

#: One writer at a time (short effects run in order; this also covers tests and tools).
_WRITE_LOCK = threading.Lock()


class HistoryUnreadable(ValueError):
    """The file is there but is no history this updater can read."""


def history_path(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


def _load(path: Path) -> list[HistoryEntry]:
    """The entries, newest first; [] when there is no file; HistoryUnreadable otherwise."""
    try:
        raw = durable.read_no_follow(path)
    except FileNotFoundError:
        return []
    except OSError as exc:
        why = "is a symbolic link" if exc.errno == errno.ELOOP else str(exc)
        raise HistoryUnreadable(why) from exc
    if len(raw) > MAX_BYTES:
        raise HistoryUnreadable(f"is larger than {MAX_BYTES} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise HistoryUnreadable(f"is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise HistoryUnreadable("is not a history document of schema 1")
    entries = doc.get("entries")
    if not isinstance(entries, list):
        raise HistoryUnreadable("has no list of entries")
    try:
        return [STRICT_CONVERTER.structure(e, HistoryEntry) for e in entries]
    except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
        raise HistoryUnreadable(f"has an invalid entry: {exc}") from exc


def _dump(entries: list[HistoryEntry]) -> bytes:
    doc = {"schema": SCHEMA, "entries": [attrs.asdict(e) for e in entries]}
    return json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"


def _set_aside(path: Path) -> Path | None:
    """Move the unreadable file (or the link planted there: never its target) aside."""
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    try:
        os.replace(path, target)
        durable.fsync_dir(path.parent)
    except OSError as exc:
        _log.error("history.set_aside_failed", path=str(path), error=str(exc))
        return None
    return target


def record(state_dir: Path, entry: HistoryEntry) -> bool:
    """Keep ``entry`` first in the history (durably); False when it was kept already.

    An unreadable file is set aside and a new history started with ``entry``.
    """
    path = history_path(state_dir)
    with _WRITE_LOCK:
        try:
            entries = _load(path)
        except HistoryUnreadable as exc:
            moved = _set_aside(path)
            _log.error(
                "history.unreadable_set_aside",
                path=str(path),
                error=str(exc),
                moved_to=str(moved) if moved else None,
            )
            entries = []
        key = (entry.job_id, entry.started_at)
        if any((e.job_id, e.started_at) == key for e in entries):
            return False
        entries = [entry, *entries][:HISTORY_LIMIT]
        state_dir.mkdir(parents=True, exist_ok=True)
        durable.atomic_write_bytes(path, _dump(entries), point="history")
    _log.info("history.recorded", job_id=entry.job_id, outcome=entry.outcome.value)
    return True


def read_history(state_dir: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The entries as JSON objects, newest first, at most ``limit`` (all: None).

    Never raises for a bad file: it is logged and the history reads as empty (the next
    write sets the file aside).
    """
    path = history_path(state_dir)
    try:
        entries = _load(path)
    except HistoryUnreadable as exc:
        _log.error("history.unreadable", path=str(path), error=str(exc))
        entries = []
    if limit is not None:
        entries = entries[:limit]
    return [attrs.asdict(e) for e in entries]
