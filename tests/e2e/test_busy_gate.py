"""The busy gate (issue 12, "Never interrupt a print") judged by a real ``tope-updater serve``.

Each test builds a :class:`tests.crash.harness.Rig` (a real updater subprocess, a real
package server and a device-api stand-in) whose ``busy_probe`` reads a flag file the test
flips: while the file exists the probe prints ``printing benchy.gcode, 43 %`` and exits 1
(busy), and every run appends a line to a counter file so the test can see it polled.
While the printer is busy nothing is staged, stopped or switched; once it is free the
install completes and the crash harness's invariants hold. Kills (SIGKILL, also at the
journaled entry into ``waiting_idle`` and at the journaled ``printer_free`` transition),
``busy_policy = refuse``, a cancel, a hanging probe and a package that expires while
waiting are covered too; one test runs under a real systemd.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.crash import harness as h
from tests.support.package_server import ThreadedPackageServer

REASON = "printing benchy.gcode, 43 %"
WAITING = f"Waiting for the printer to be free: {REASON}"
#: How long the tests watch a waiting install for anything that should not happen.
WATCH_S = 2.0


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedPackageServer]:
    with h.package_server() as srv:
        yield srv


@attrs.frozen
class Printer:
    """The printer as the busy probe sees it: busy while :attr:`flag` exists."""

    flag: Path
    runs: Path

    @property
    def probe(self) -> str:
        flag, runs = shlex.quote(str(self.flag)), shlex.quote(str(self.runs))
        return f'echo . >> {runs}; test ! -e {flag} || {{ echo "{REASON}"; exit 1; }}'

    def busy(self) -> None:
        self.flag.touch()

    def free(self) -> None:
        self.flag.unlink(missing_ok=True)

    @property
    def probed(self) -> int:
        """How many times the probe ran."""
        try:
            return len(self.runs.read_text().splitlines())
        except FileNotFoundError:
            return 0


def busy_rig(
    tmp_path: Path,
    server: ThreadedPackageServer,
    *,
    policy: str = "wait",
    probe: str | None = None,
    env: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[h.Rig, Printer]:
    """A rig for the good update with a busy probe (the printer starts busy)."""
    printer = Printer(tmp_path / "printing", tmp_path / "probe-runs")
    printer.busy()
    rig_env = {
        "TOPE_UPDATER_BUSY_PROBE": probe or printer.probe,
        "TOPE_UPDATER_BUSY_POLL_S": "0.2",
        "TOPE_UPDATER_BUSY_PROBE_TIMEOUT_S": "5",
        "TOPE_UPDATER_BUSY_POLICY": policy,
        **(env or {}),
    }
    base = tmp_path / "rig"
    base.mkdir()
    return h.Rig(base, h.scenario("good"), server, env=rig_env, **kwargs), printer


def download(rig: h.Rig) -> None:
    """Download and verify the good package (``ready``)."""
    env = rig.call("POST", "/download", rig.request)
    assert env["code"] == 200, env
    assert h.wait_until(lambda: rig.progress()["state"] == "ready", 15), rig.progress()


def request_update(rig: h.Rig) -> dict[str, Any]:
    env = rig.call("POST", "/update", {"version": h.GOOD_VERSION})
    assert isinstance(env, dict)
    return env


def wait_for_waiting(rig: h.Rig, message: str = WAITING) -> dict[str, Any]:
    """Wait until ``/progress`` shows the install waiting with ``message``; returns it."""
    assert h.wait_until(lambda: rig.progress()["message"] == message, 10), rig.progress()
    data = rig.progress()
    assert (data["stage"], data["state"]) == ("toInstall", "waiting_idle"), data
    assert data["version"] == h.GOOD_VERSION and data["error"] is None, data
    return data


def staged_versions(rig: h.Rig) -> list[str]:
    """Snapshots (or half-built ones) of the version being installed."""
    return sorted(p.name for p in (rig.root / "versions").glob(f"v{h.GOOD_VERSION}*"))


def assert_untouched_while_waiting(rig: h.Rig, printer: Printer, seconds: float) -> int:
    """For ``seconds``: still waiting, ``current`` on v1.0.0, nothing staged, nothing
    journaled, while the probe keeps being asked. Returns how often it was asked."""
    seq = journal_seq(rig)
    runs0 = printer.probed
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        data = rig.progress()
        assert data["state"] == "waiting_idle" and data["message"] == WAITING, data
        assert rig.links().current == h.FACTORY_VERSION
        assert staged_versions(rig) == []
        time.sleep(0.05)
    assert journal_seq(rig) == seq, "a poll was journaled"
    asked = printer.probed - runs0
    # busy_poll_s is 0.2: about 5 answers a second (allow for a slow, shared machine).
    assert asked >= seconds * 2, f"the probe ran {asked} times in {seconds} s"
    return asked


def journal_seq(rig: h.Rig) -> int:
    record = rig.journal_record()
    assert record is not None
    return record.seq


def waiting_reports(rig: h.Rig) -> list[dict[str, Any]]:
    return [
        r
        for r in rig.device_api.reports
        if str(r.get("message", "")).startswith("Waiting for the printer")
    ]


def finish(rig: h.Rig, proc: h.UpdaterProcess, timeout: float = 30.0) -> dict[str, Any]:
    final = h.drive(rig, proc, timeout=timeout)
    assert final is not None, proc.log_tail()
    return final


# ---- 1. wait while busy, install once free -------------------------------------------------


def test_install_waits_while_printing_and_completes_once_free(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    rig, printer = busy_rig(tmp_path, server)
    try:
        proc = rig.start()
        download(rig)
        env = request_update(rig)
        assert env["code"] == 200, env
        wait_for_waiting(rig)
        assert rig.journal_record().state == "waiting_idle"  # type: ignore[union-attr]
        assert_untouched_while_waiting(rig, printer, WATCH_S)
        # device-api heard about the wait once, not once per poll.
        assert len(waiting_reports(rig)) == 1, waiting_reports(rig)
        printer.free()
        final = finish(rig, proc)
        h.check_invariants(rig, final)
        assert len(waiting_reports(rig)) == 1, waiting_reports(rig)
        assert proc.terminate() == 0
    finally:
        rig.close()
