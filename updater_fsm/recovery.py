"""What a (re)started updater reads from the disk before it resumes (contract §6).

The recovery *rules* — what to do in each state — are rows of the transition table
(trigger ``resume``) and actions of the machine. This module does the I/O around them:
load the journal (or rebuild an idle record when it is missing or corrupt), measure the
facts the rules need, and sweep files no job can use any more.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import structlog

from updater_fsm import durable
from updater_fsm.core.events import DiskFacts, LinkVersions
from updater_fsm.core.record import Record
from updater_fsm.core.table import State
from updater_fsm.journal import Journal
from updater_fsm.state_layout import package_path, part_path

_log = structlog.get_logger(__name__)


@attrs.frozen
class Recovered:
    """The record to resume from and what recovery had to do to get it."""

    record: Record
    rebuilt: bool
    set_aside: tuple[Path, ...] = ()


def load_record(journal: Journal) -> Recovered:
    """The newest valid journaled record, or a fresh idle one rebuilt from the disk.

    A missing journal is a first start. A corrupt one has been set aside by
    :meth:`Journal.load`; the device's truth is then what the symlinks show, and the
    machine starts ``idle`` on top of it (the links are read by the engine, not stored).
    """
    loaded = journal.load()
    if loaded.record is not None:
        return Recovered(loaded.record, rebuilt=False, set_aside=loaded.set_aside)
    if loaded.set_aside:
        _log.error(
            "journal unusable; state rebuilt from disk as idle",
            set_aside=[str(p) for p in loaded.set_aside],
        )
    return Recovered(Record(), rebuilt=bool(loaded.set_aside), set_aside=loaded.set_aside)


def disk_facts(record: Record, downloads_dir: Path, links: LinkVersions) -> DiskFacts:
    """Measure what the resume rules need: the ``.part`` size and the package's presence."""
    job = record.job
    if job is None or job.request is None:
        return DiskFacts(links=links)
    name = job.request.package_name
    try:
        part_size: int | None = part_path(downloads_dir, name).stat().st_size
    except FileNotFoundError:
        part_size = None
    present = package_path(downloads_dir, name).is_file()
    return DiskFacts(part_size=part_size, package_present=present, links=links)


def sweep_downloads(record: Record, downloads_dir: Path) -> list[str]:
    """Delete files in the downloads directory that the current job cannot use.

    The job's own package and ``.part`` stay (resume needs them) unless the job is finished
    with it: after ``success`` nothing is kept.
    """
    keep: set[str] = set()
    job = record.job
    if job is not None and job.request is not None and record.state is not State.SUCCESS:
        name = job.request.package_name
        keep = {name, f"{name}.part"}
    removed: list[str] = []
    try:
        entries = list(os.scandir(downloads_dir))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.name in keep or not entry.is_file(follow_symlinks=False):
            continue
        os.unlink(entry.path)
        removed.append(entry.name)
    if removed:
        durable.fsync_dir(downloads_dir)
        _log.info("swept stale downloads", removed=removed)
    return removed
