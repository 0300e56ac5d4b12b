"""Power cuts, not just process kills: drop writes that a crash could lose, then recover.

A SIGKILL loses nothing the kernel already accepted; a power cut loses whatever was not
fsynced yet. Every durable write is temp + fsync + rename + directory fsync
(:mod:`updater_fsm.durable`, :class:`updater_fsm.journal.Journal`), so the only things a
power cut can take are (a) the temp file of a write in progress, (b) the rename of a write
whose directory fsync had not finished, (c) bytes of the ``.part`` beyond the last
checkpoint, (d) files of a staging snapshot not fsynced yet. Each test kills the updater at
the matching crash point, rolls the disk back as the power cut could have, restarts and
checks the invariants of :mod:`tests.crash.harness` (docs/RELIABILITY.md explains why these
are the only cases).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.crash import harness as h
from tests.support.package_server import ThreadedPackageServer


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedPackageServer]:
    with h.package_server() as srv:
        yield srv


def _trial(
    tmp_path: Path,
    server: ThreadedPackageServer,
    name: str,
    kill: h.KillPoint,
    damage: Callable[[h.Rig], None],
    **rig_kwargs: object,
) -> h.TrialResult:
    sc = rig_kwargs.pop("sc", None) or h.scenario(name)
    rig = h.Rig(tmp_path, sc, server, **rig_kwargs)  # type: ignore[arg-type]
    try:
        result = h.run_trial(rig, kill, after_kill=damage)
    finally:
        rig.close()
    assert result.ok, f"{kill} ({name}): {result.error}"
    assert result.killed
    return result


# ---- the journal -------------------------------------------------------------------------


def _lose_journal_tmp(rig: h.Rig) -> None:
    """The temp file never reached the disk (or is torn): remove or truncate it."""
    tmp = rig.state / "journal.json.tmp"
    assert tmp.exists()
    size = tmp.stat().st_size
    if size % 2:
        tmp.unlink()
    else:
        os.truncate(tmp, size // 2)


def _revert_last_journal_rename(rig: h.Rig) -> None:
    """The rename of the new journal over the old one never reached the disk."""
    prev = rig.state / "journal.prev.json"
    if prev.exists():
        os.replace(prev, rig.journal_path)


@pytest.mark.parametrize("hit", [2, 4, 6, 8, 10])
def test_journal_temp_file_lost(tmp_path: Path, server: ThreadedPackageServer, hit: int) -> None:
    _trial(tmp_path, server, "good", h.KillPoint("journal:tmp_written", hit), _lose_journal_tmp)


@pytest.mark.parametrize("hit", [3, 5, 7, 9, 11])
def test_journal_lost_between_the_two_renames(
    tmp_path: Path, server: ThreadedPackageServer, hit: int
) -> None:
    # journal.json was moved to journal.prev.json; the temp file is then lost as well.
    _trial(tmp_path, server, "bad", h.KillPoint("journal:prev_moved", hit), _lose_journal_tmp)


@pytest.mark.parametrize(("name", "hit"), [("good", 5), ("good", 7), ("good", 9), ("bad", 10)])
def test_last_journaled_transition_reverted(
    tmp_path: Path, server: ThreadedPackageServer, name: str, hit: int
) -> None:
    # Killed right after a save, then that save is undone: the updater is one step behind
    # the disk (e.g. links already switched but the journal still says deploying).
    _trial(
        tmp_path, server, name, h.KillPoint("engine:journaled", hit), _revert_last_journal_rename
    )


# ---- the symlinks ------------------------------------------------------------------------


def _revert_link(name: str, to: str) -> Callable[[h.Rig], None]:
    def damage(rig: h.Rig) -> None:
        link = rig.root / "versions" / name
        tmp = link.with_name(f".{name}.tmp")
        if tmp.is_symlink():
            tmp.unlink()
        link.unlink()
        os.symlink(to, link)

    return damage


def test_switch_of_current_never_reached_the_disk(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    kill = h.KillPoint("switch:current:after_rename")
    _trial(tmp_path, server, "good", kill, _revert_link("current", "v1.0.0"))


def test_switch_of_both_links_never_reached_the_disk(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    def damage(rig: h.Rig) -> None:
        _revert_link("current", "v1.0.0")(rig)
        (rig.root / "versions" / "previous").unlink()

    _trial(tmp_path, server, "good", h.KillPoint("switch:links_switched"), damage)


def test_rollback_of_current_never_reached_the_disk(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    kill = h.KillPoint("rollback:current:after_rename")
    _trial(tmp_path, server, "bad", kill, _revert_link("current", "v1.2.0"))


# ---- the download and the staging snapshot -------------------------------------------------


def test_part_file_shorter_than_the_journaled_checkpoint(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    """Bytes past the last fsync are gone, and (a broken disk) some before it too."""

    def damage(rig: h.Rig) -> None:
        part = rig.state / "downloads" / f"{rig.package_name}.part"
        os.truncate(part, part.stat().st_size // 3)

    sc = h.scenario("good", blob_size=h.MID_DOWNLOAD_BLOB)
    result = _trial(
        tmp_path, server, "good", h.CHECKPOINT_KILL, damage, sc=sc, behaviour=h.MID_DOWNLOAD_RATE
    )
    assert result.resumed_from, "the shorter .part must still be resumed with Range"


@pytest.mark.parametrize("point", ["stage:copied", "stage:before_rename"])
def test_half_written_staging_snapshot(
    tmp_path: Path, server: ThreadedPackageServer, point: str
) -> None:
    def damage(rig: h.Rig) -> None:
        staging = rig.root / "versions" / "v1.1.0.staging"
        assert staging.is_dir()
        shutil.rmtree(staging / "lib")  # directory entries never made it
        (staging / "bin" / "hello").write_bytes(b"")  # data blocks never made it

    _trial(tmp_path, server, "good", h.KillPoint(point), damage)


def test_renamed_snapshot_lost_its_rename(tmp_path: Path, server: ThreadedPackageServer) -> None:
    # stage:after_rename, then the rename is undone: the snapshot is a staging dir again.
    def damage(rig: h.Rig) -> None:
        versions = rig.root / "versions"
        os.rename(versions / "v1.1.0", versions / "v1.1.0.staging")

    _trial(tmp_path, server, "good", h.KillPoint("stage:after_rename"), damage)
