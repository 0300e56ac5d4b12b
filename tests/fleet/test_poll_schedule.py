"""When the next poll is due, across an exit between polls (the fleet wake-up): written by
the poller before the updater exits, read back by the next updater — which then polls at
that time, not at once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import attrs
import pytest

from fleet_ddi.poll_schedule import PollSchedule, Schedule, boot_id, boottime
from http_shell.cli.serve import sandbox_config
from http_shell.daemon.assembly import running_updater
from tests.support.hawkbit import free_port
from updater_fsm.ops import snapshot_store


def test_a_saved_schedule_is_read_back_as_the_time_left(tmp_path: Path) -> None:
    schedule = PollSchedule(tmp_path)
    assert schedule.load() == Schedule(0.0, 0)  # none yet: poll at once
    schedule.save(30.0, 33.0, failed_polls=2)
    assert schedule.path.stat().st_mode & 0o777 == 0o600
    loaded = schedule.load()
    assert 29.0 < loaded.due_in_s <= 30.0 and loaded.failed_polls == 2, loaded


def _write(schedule: PollSchedule, **fields: object) -> None:
    data = {
        "schema": 1,
        "boot_id": boot_id(),
        "due_boottime": boottime() + 20,
        "interval_s": 30.0,
        "failed_polls": 1,
    } | fields
    schedule.path.parent.mkdir(parents=True, exist_ok=True)
    schedule.path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("fields", "failed"),
    [
        ({"boot_id": "another-boot"}, 1),  # rebooted since: at once, the backoff kept
        ({"due_boottime": 0.0}, 1),  # overdue (a late start): at once
        ({"interval_s": 5.0}, 1),  # further than the interval it came from: not believed
        ({"schema": 2}, 0),  # from another version: unreadable
        ({"due_boottime": "soon"}, 0),
    ],
)
def test_a_schedule_not_to_believe_means_a_poll_at_once(
    tmp_path: Path, fields: dict[str, object], failed: int
) -> None:
    schedule = PollSchedule(tmp_path)
    _write(schedule, **fields)
    assert schedule.load() == Schedule(0.0, failed)


def test_an_unreadable_schedule_means_a_poll_at_once(tmp_path: Path) -> None:
    schedule = PollSchedule(tmp_path)
    schedule.path.parent.mkdir(parents=True)
    schedule.path.write_bytes(b"\x00not json")
    assert schedule.load() == Schedule()


async def test_the_next_updater_polls_when_the_schedule_says_and_saves_its_own(
    tmp_path: Path,
) -> None:
    """A real updater with a poller (the server unreachable: each attempt counts as a poll,
    failed): due in 1.5 s by the schedule, it does not poll before, and does soon after;
    the failed polls it found go on counting, and what it saves is its own next poll."""
    config = attrs.evolve(
        sandbox_config(tmp_path),
        ddi_url=f"http://127.0.0.1:{free_port()}",  # nothing listens
        ddi_token="token",
        ddi_poll_min_s=5.0,
        ddi_poll_max_s=60.0,
    )
    snapshot_store.init_layout(config.root, "1.0.0")
    PollSchedule(config.state_path).save(1.5, 10.0, failed_polls=2)
    async with running_updater(config, report=False) as updater:
        poller = updater.poller
        assert poller is not None
        assert 1.0 < poller.seconds_to_next_poll() <= 1.5
        await asyncio.sleep(1.0)
        assert poller.stats.polls == 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while poller.stats.polls == 0:
            assert loop.time() < deadline, "never polled"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # the failed poll's turn ends
        assert poller.stats.failed_polls == 1
        # Backoff from the floor, doubling with the failures before the exit: 5 s * 2**3.
        assert 0.9 * 40 - 1 <= poller.seconds_to_next_poll() <= 1.1 * 40
        assert poller.hold_reason() is None  # nothing of the fleet's in flight
        due_in = poller.save_schedule()
    loaded = PollSchedule(config.state_path).load()
    assert loaded.failed_polls == 3
    assert due_in - 1 <= loaded.due_in_s <= due_in
