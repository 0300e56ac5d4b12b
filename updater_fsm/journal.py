"""The durable journal of the machine's record.

One JSON document per save: ``{"schema", "seq", "record", "checksum"}``, where the checksum
is the SHA-256 of the canonical JSON of ``record``. Saving writes ``journal.json.tmp``,
fsyncs it, moves the old ``journal.json`` to ``journal.prev.json``, renames the temp file
into place and fsyncs the directory. Loading considers all three files and takes the valid
one with the highest ``seq``, so a torn write or a crash between the two renames never loses
more than the last, not yet acted upon, transition. Files that fail validation are moved
aside (``*.corrupt-<time>``) for a human to inspect; if nothing valid remains the caller
rebuilds the state from the disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import structlog

from updater_fsm import faults
from updater_fsm.core.errors import DISK_FULL_ERRNOS
from updater_fsm.core.record import Record
from updater_fsm.durable import create_new, fsync_dir, read_no_follow
from updater_fsm.strict_converter import STRICT_CONVERTER

#: 2: a job's download position is one ``durable`` value (offset, etag, last_modified)
#: instead of three fields. 3: the updater updates itself (the states ``updater_staging``,
#: ``updater_switching``, ``updater_probation`` and a job's ``updater_version``). Older
#: journals are read and migrated (see ``_MIGRATIONS``); a newer one is refused. A
#: self-update only installs an updater whose journal schema is at most this one (its
#: bundle's ``journal_schema``), so the old updater can read everything the new one writes
#: during its probation (docs/RELIABILITY.md).
SCHEMA_VERSION = 3
_log = structlog.get_logger(__name__)


def record_to_dict(record: Record) -> dict[str, Any]:
    """The record as plain JSON-able data."""
    data = STRICT_CONVERTER.unstructure(record)
    assert isinstance(data, dict)
    return data


def record_from_dict(data: Any) -> Record:
    """Parse a record, strictly; raises ``ValueError`` on any mismatch."""
    try:
        return STRICT_CONVERTER.structure(data, Record)
    except Exception as exc:  # cattrs raises ExceptionGroups of many kinds
        raise ValueError(f"record does not match the schema: {exc!r}") from exc


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def encode(record: Record) -> bytes:
    """The journal document for ``record``."""
    body = record_to_dict(record)
    doc = {
        "schema": SCHEMA_VERSION,
        "seq": record.seq,
        "checksum": hashlib.sha256(_canonical(body)).hexdigest(),
        "record": body,
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def decode(raw: bytes) -> Record:
    """Validate and parse a journal document; raises ``ValueError`` when it is unusable."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    schema = doc.get("schema")
    if schema != SCHEMA_VERSION and schema not in _MIGRATIONS:
        raise ValueError(f"unknown schema {schema!r}")
    body = doc.get("record")
    if hashlib.sha256(_canonical(body)).hexdigest() != doc.get("checksum"):
        raise ValueError("checksum mismatch")
    while schema != SCHEMA_VERSION:
        body, schema = _MIGRATIONS[schema](body), schema + 1
    record = record_from_dict(body)
    if record.seq != doc.get("seq"):
        raise ValueError("sequence number mismatch")
    return record


def _v1_to_v2(body: Any) -> Any:
    """Schema 1 kept a job's download position in three fields; schema 2 in one value."""
    if not isinstance(body, dict) or not isinstance(body.get("job"), dict):
        return body
    job = dict(body["job"])
    job["durable"] = {
        "offset": job.pop("bytes_durable", 0),
        "etag": job.pop("etag", None),
        "last_modified": job.pop("last_modified", None),
    }
    return {**body, "job": job}


def _v2_to_v3(body: Any) -> Any:
    """Schema 3 only added what a self-update needs, with defaults: nothing to rewrite."""
    return body


#: ``schema N -> N + 1`` rewrites of a journal's record, applied in turn on load (the
#: checksum is checked on the record as written). A journal is always written in the
#: newest schema.
_MIGRATIONS: dict[int, Callable[[Any], Any]] = {1: _v1_to_v2, 2: _v2_to_v3}


@attrs.frozen
class Loaded:
    """What :meth:`Journal.load` found.

    Attributes:
        record: the newest valid record, or None when there is none (fresh or all corrupt).
        set_aside: files that were invalid and moved aside.
    """

    record: Record | None
    set_aside: tuple[Path, ...] = ()


class Journal:
    """Load and save the record under ``<state_dir>/journal.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / "journal.json"
        self.tmp = state_dir / "journal.json.tmp"
        self.prev = state_dir / "journal.prev.json"

    def save(self, record: Record) -> None:
        """Write ``record`` durably. Blocking (fsync): call it from a worker thread.

        On a full disk the previous copy is the space reserve: it is deleted and the write
        tried once more (``journal.json`` itself stays valid throughout), so a transition
        such as "download failed: DISK_FULL" can still be recorded when the disk is full.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        data = encode(record)
        try:
            self._write_tmp(data)
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS or not self.prev.exists():
                raise
            _log.warning("journal: disk full, dropping the previous copy to make room")
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()
            self.prev.unlink()
            self._write_tmp(data)
        faults.crash_point("journal:tmp_written")
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path, self.prev)
        faults.crash_point("journal:prev_moved")
        os.replace(self.tmp, self.path)
        fsync_dir(self.dir)

    def _write_tmp(self, data: bytes) -> None:
        fd = create_new(self.tmp, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def load(self) -> Loaded:
        """The newest valid record among the journal, its temp file and its previous copy."""
        best: Record | None = None
        bad: list[Path] = []
        for path in (self.path, self.tmp, self.prev):
            try:
                raw = read_no_follow(path)  # a link or a FIFO here is set aside
            except FileNotFoundError:
                continue
            except OSError as exc:
                _log.warning("journal unreadable", path=str(path), error=str(exc))
                bad.append(path)
                continue
            try:
                record = decode(raw)
            except ValueError as exc:
                # A torn temp file is expected after a crash mid-save; anything else is not.
                if path != self.tmp:
                    _log.error("journal corrupt, setting it aside", path=str(path), error=str(exc))
                    bad.append(path)
                continue
            if best is None or record.seq > best.seq:
                best = record
        moved = tuple(self._set_aside(path) for path in bad)
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()
        return Loaded(best, tuple(p for p in moved if p is not None))

    def _set_aside(self, path: Path) -> Path | None:
        target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            os.replace(path, target)
            fsync_dir(self.dir)
        except OSError as exc:
            _log.error("cannot set corrupt journal aside", path=str(path), error=str(exc))
            return None
        return target
