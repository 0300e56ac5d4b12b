"""The poller's loop survives its own faults without turning them into a storm of polls."""

from __future__ import annotations

import asyncio
from pathlib import Path

import attrs

from fleet_ddi.ddi_protocol import ControllerBase
from http_shell.cli.serve import sandbox_config
from http_shell.daemon.assembly import running_updater
from tests.support.hawkbit import free_port
from updater_fsm.ops import snapshot_store


async def test_a_poll_that_raises_is_logged_and_retried_at_the_floor_not_at_once(
    tmp_path: Path,
) -> None:
    config = attrs.evolve(
        sandbox_config(tmp_path),
        ddi_url=f"http://127.0.0.1:{free_port()}",  # nothing listens: never reached below
        ddi_token="token",
        ddi_poll_min_s=0.1,
        ddi_poll_max_s=0.4,
    )
    snapshot_store.init_layout(config.root, "1.0.0")
    calls = 0

    async def broken_base() -> ControllerBase:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug in the poll")

    async with running_updater(config, report=False) as updater:
        poller = updater.poller
        assert poller is not None
        poller._client.controller_base = broken_base  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        started = loop.time()
        while calls < 3:  # retried: about ten a second, fewer on a loaded machine
            assert loop.time() - started < 10, calls
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        elapsed = loop.time() - started
        assert poller.stats.last_error == "RuntimeError: a bug in the poll"
        # ~0.1 s apart (±10 %), never a tight loop: at most one call per 0.09 s.
        assert calls <= elapsed / 0.09 + 2, (calls, elapsed)
