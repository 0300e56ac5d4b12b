"""The journal: atomic saves, corruption detection, torn writes and lost renames."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from updater_fsm.core import events as ev
from updater_fsm.core.machine import UpdaterMachine
from updater_fsm.core.manifest import ServiceUnit
from updater_fsm.core.record import Record
from updater_fsm.core.table import State
from updater_fsm.journal import Journal, decode, encode, record_from_dict, record_to_dict

from .helpers import at_health_check, drive, request


def test_round_trip_of_a_rich_record(tmp_path: Path) -> None:
    record = at_health_check().record
    journal = Journal(tmp_path)
    journal.save(record)
    loaded = journal.load()
    assert loaded.record == record and loaded.set_aside == ()
    assert not journal.tmp.exists()
    assert oct(journal.path.stat().st_mode & 0o777) == "0o600"


def test_newest_valid_copy_wins_and_previous_is_kept(tmp_path: Path) -> None:
    m = UpdaterMachine()
    journal = Journal(tmp_path)
    journal.save(m.record)
    drive(m, ev.DownloadRequested(request()))
    journal.save(m.record)
    assert decode(journal.prev.read_bytes()).seq == 0
    assert journal.load().record == m.record


@pytest.mark.parametrize(
    "garbage",
    [b"", b"{", b"\xff\xfe", b"[]", b'{"schema": 99}', b"null"],
)
def test_corrupt_journal_is_set_aside_and_previous_copy_used(
    tmp_path: Path, garbage: bytes
) -> None:
    m = UpdaterMachine()
    journal = Journal(tmp_path)
    journal.save(m.record)
    drive(m, ev.DownloadRequested(request()))
    journal.save(m.record)
    journal.path.write_bytes(garbage)
    loaded = journal.load()
    assert loaded.record is not None and loaded.record.seq == 0  # fell back to the previous copy
    assert len(loaded.set_aside) == 1 and loaded.set_aside[0].name.startswith(
        "journal.json.corrupt-"
    )
    assert not journal.path.exists()


def test_tampered_record_fails_the_checksum(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.save(at_health_check().record)
    doc = json.loads(journal.path.read_bytes())
    doc["record"]["state"] = "success"
    journal.path.write_text(json.dumps(doc))
    loaded = journal.load()
    assert loaded.record is None and len(loaded.set_aside) == 1


def test_wrong_types_are_rejected_even_with_a_valid_checksum() -> None:
    record = at_health_check().record
    doc = json.loads(encode(record))
    doc["record"]["job"]["job_id"] = "1"
    import hashlib

    body = json.dumps(doc["record"], sort_keys=True, separators=(",", ":")).encode()
    doc["checksum"] = hashlib.sha256(body).hexdigest()
    with pytest.raises(ValueError, match="schema"):
        decode(json.dumps(doc).encode())


def test_crash_between_the_two_renames_loses_nothing(tmp_path: Path) -> None:
    # Simulate: tmp written + fsynced, journal.json moved to prev, then power loss.
    m = UpdaterMachine()
    journal = Journal(tmp_path)
    journal.save(m.record)
    drive(m, ev.DownloadRequested(request()))
    journal.tmp.write_bytes(encode(m.record))
    os.replace(journal.path, journal.prev)
    assert journal.load().record == m.record


def test_torn_temp_file_is_ignored(tmp_path: Path) -> None:
    m = UpdaterMachine()
    journal = Journal(tmp_path)
    journal.save(m.record)
    journal.tmp.write_bytes(encode(at_health_check().record)[:50])
    loaded = journal.load()
    assert loaded.record == m.record and loaded.set_aside == ()


def test_lost_unsynced_rename_falls_back_to_the_older_state(tmp_path: Path) -> None:
    # Power loss can undo a rename whose directory was not yet fsynced; the older
    # journal is still a state the recovery rules handle.
    journal = Journal(tmp_path)
    m = UpdaterMachine()
    drive(m, ev.DownloadRequested(request()))
    journal.save(m.record)
    older = journal.path.read_bytes()
    drive(m, ev.Cancel())
    journal.save(m.record)
    journal.path.write_bytes(older)  # the newer rename "never happened"
    journal.prev.unlink()
    assert journal.load().record.state is State.DOWNLOADING  # type: ignore[union-attr]


def test_fresh_directory_has_no_record(tmp_path: Path) -> None:
    assert Journal(tmp_path / "new").load().record is None
    assert Record().state is State.IDLE


def test_a_record_journaled_before_last_version_existed_still_loads() -> None:
    """Fields added later have defaults: an older updater's journal resumes, not set aside."""
    data = record_to_dict(Record(last_units=(ServiceUnit("device-api.service", 1),)))
    del data["last_version"]
    record = record_from_dict(data)
    assert record.last_version is None and record.last_units[0].unit == "device-api.service"


def test_a_schema_1_journal_is_read_and_its_download_position_kept(tmp_path: Path) -> None:
    """An updater upgraded mid-download resumes from the offset the old one journaled."""
    import hashlib

    from updater_fsm.journal import SCHEMA_VERSION, Journal, _canonical, decode, encode

    m = UpdaterMachine()
    req = ev.DownloadRequest("1.2.3", "http://127.0.0.1:1/u.zip", "u.zip", 1000, "0" * 32)
    m.handle(ev.DownloadRequested(req), 1.0)
    m.handle(ev.DownloadCheckpoint(1, ev.ResumePoint(700, '"v1"', "Tue")), 2.0)
    current = json.loads(encode(m.record))
    assert current["schema"] == SCHEMA_VERSION == 3
    # The same record as schema 1 wrote it: three flat fields instead of `durable`.
    body = current["record"]
    durable = body["job"].pop("durable")
    body["job"] |= {
        "bytes_durable": durable["offset"],
        "etag": durable["etag"],
        "last_modified": durable["last_modified"],
    }
    old = {
        "schema": 1,
        "seq": body["seq"],
        "checksum": hashlib.sha256(_canonical(body)).hexdigest(),
        "record": body,
    }
    (tmp_path / "journal.json").write_text(json.dumps(old))
    loaded = Journal(tmp_path).load()
    assert loaded.set_aside == () and loaded.record == m.record
    assert loaded.record.job is not None
    assert loaded.record.job.durable == ev.ResumePoint(700, '"v1"', "Tue")
    with pytest.raises(ValueError, match="unknown schema 4"):
        decode(json.dumps({**old, "schema": 4}).encode())


def test_a_schema_2_journal_from_before_self_update_is_read(tmp_path: Path) -> None:
    """The record an updater without self-update wrote (no ``updater_version``) resumes."""
    import hashlib

    from updater_fsm.journal import Journal, _canonical, encode

    m = UpdaterMachine()
    req = ev.DownloadRequest("1.2.3", "http://127.0.0.1:1/u.zip", "u.zip", 1000, "0" * 32)
    m.handle(ev.DownloadRequested(req), 1.0)
    body = json.loads(encode(m.record))["record"]
    del body["job"]["updater_version"]
    old = {
        "schema": 2,
        "seq": body["seq"],
        "checksum": hashlib.sha256(_canonical(body)).hexdigest(),
        "record": body,
    }
    (tmp_path / "journal.json").write_text(json.dumps(old))
    loaded = Journal(tmp_path).load()
    assert loaded.set_aside == () and loaded.record == m.record
