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

import contextlib
import os
import shlex
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.crash import harness as h
from tests.support.package_server import ThreadedPackageServer
from tests.support.systemd_sandbox import SystemdSandbox
from updater_fsm import journal as journal_mod
from updater_fsm.core.record import PACKAGE_TTL_S

REASON = "printing benchy.gcode, 43 %"
WAITING = f"Waiting for the printer to be free: {REASON}"
#: How long the tests watch a waiting install for anything that should not happen.
WATCH_S = 2.0
#: The ``engine:journaled`` hit that journals the entry into ``waiting_idle`` (the download
#: and its 2 checkpoints, verifying and ``ready`` come first); the next one journals the
#: probe's first answer (``printer_answered``, once per wait), the one after that the
#: ``printer_free`` transition to ``deploying``. Checked against a trace by the first test.
WAIT_ENTRY_HIT = 7
ANSWERED_HIT = WAIT_ENTRY_HIT + 1
PRINTER_FREE_HIT = WAIT_ENTRY_HIT + 2


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


def start_waiting(rig: h.Rig) -> h.UpdaterProcess:
    """Start the updater, download, ask for the install, and wait until it waits."""
    proc = rig.start()
    download(rig)
    assert request_update(rig)["code"] == 200
    wait_for_waiting(rig)
    return proc


def staged_versions(rig: h.Rig) -> list[str]:
    """Snapshots (or half-built ones) of the version being installed."""
    return sorted(p.name for p in (rig.root / "versions").glob(f"v{h.GOOD_VERSION}*"))


def assert_untouched_while_waiting(rig: h.Rig, printer: Printer, seconds: float) -> int:
    """For ``seconds``: still waiting, ``current`` on v1.0.0, nothing staged, nothing
    journaled, while the probe keeps being asked. Returns how often it was asked."""
    # The first answer of a wait is journaled once (printer_answered); from then on, nothing.
    runs0 = printer.probed
    assert h.wait_until(lambda: printer.probed >= runs0 + 2, 5)
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
    trace = tmp_path / "trace.txt"
    try:
        proc = rig.start(trace=trace)
        download(rig)
        env = request_update(rig)
        assert env["code"] == 200, env
        wait_for_waiting(rig)
        assert rig.journal_record().state == "waiting_idle"  # type: ignore[union-attr]
        # The kill points of test_killed_while_waiting_resumes_waiting are still right.
        journaled = lambda: trace.read_text().split().count("engine:journaled")  # noqa: E731
        assert h.wait_until(lambda: journaled() >= ANSWERED_HIT, 5)
        assert rig.journal_record().state == "waiting_idle"  # type: ignore[union-attr]
        assert journaled() == ANSWERED_HIT
        assert_untouched_while_waiting(rig, printer, WATCH_S)
        # device-api heard about the wait when it began and with the probe's first answer
        # (the reason a person reads), never once per poll; the newest report carries it.
        waiting = waiting_reports(rig)
        assert 1 <= len(waiting) <= 2, waiting
        assert waiting[-1]["message"] == f"Waiting for the printer to be free: {REASON}", waiting
        printer.free()
        assert h.wait_until(lambda: journaled() >= PRINTER_FREE_HIT, 5)
        assert rig.journal_record().state != "waiting_idle"  # type: ignore[union-attr]
        final = finish(rig, proc)
        h.check_invariants(rig, final)
        assert waiting_reports(rig) == waiting, "no report per poll"
        # A manual rollback stops the services too: refused while printing.
        printer.busy()
        env = rig.call("POST", "/rollback", {"target": "previous"})
        assert (env["code"], env["msg"]) == (409, f"PRINTER_BUSY: {REASON}"), env
        assert rig.links().current == h.GOOD_VERSION
        assert rig.progress()["stage"] == "success"
        assert proc.terminate() == 0
    finally:
        rig.close()


# ---- 2. the same under a real systemd --------------------------------------------------------


def unit_state(sandbox: SystemdSandbox) -> dict[str, str]:
    props = "ActiveState,SubState,MainPID,ExecMainStartTimestampMonotonic,NRestarts"
    out = sandbox.systemctl("show", "-p", props, h.HELLO_UNIT, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.mark.systemd
def test_waiting_install_leaves_the_running_unit_alone_under_systemd(
    tmp_path: Path, server: ThreadedPackageServer, systemd_sandbox: SystemdSandbox
) -> None:
    root = tmp_path / "rig" / "root"
    systemd_sandbox.install_unit(h.HELLO_UNIT, h.hello_unit_text(root))
    systemd_sandbox.daemon_reload()
    systemctl = " ".join(systemd_sandbox.systemctl_prefix)
    rig, printer = busy_rig(tmp_path, server, service_control="systemd", systemctl=systemctl)
    try:
        systemd_sandbox.systemctl("start", h.HELLO_UNIT, check=True)
        assert h.wait_until(lambda: unit_state(systemd_sandbox)["ActiveState"] == "active", 5)
        before = unit_state(systemd_sandbox)
        assert before["MainPID"] != "0", before
        proc = start_waiting(rig)
        deadline = time.monotonic() + WATCH_S
        while time.monotonic() < deadline:
            assert unit_state(systemd_sandbox) == before
            assert rig.links().current == h.FACTORY_VERSION
            assert rig.progress()["state"] == "waiting_idle"
            time.sleep(0.1)
        printer.free()
        final = finish(rig, proc)
        h.check_invariants(rig, final)
        # Once free the install did stop and start the unit, on the new version.
        after = unit_state(systemd_sandbox)
        assert after["ActiveState"] == "active", after
        assert after["MainPID"] != before["MainPID"], after
        assert proc.terminate() == 0
    finally:
        rig.close()


# ---- 3. kills while waiting ------------------------------------------------------------------

KILLS = [
    pytest.param(None, id="sigkill-while-waiting"),
    pytest.param(f"engine:journaled#{WAIT_ENTRY_HIT}", id="journaled-entry-into-waiting_idle"),
    pytest.param(f"engine:journaled#{ANSWERED_HIT}", id="journaled-printer_answered"),
    pytest.param(f"engine:journaled#{PRINTER_FREE_HIT}", id="journaled-printer_free"),
]


@pytest.mark.parametrize("crash_at", KILLS)
def test_killed_while_waiting_resumes_waiting(
    tmp_path: Path, server: ThreadedPackageServer, crash_at: str | None
) -> None:
    rig, printer = busy_rig(tmp_path, server)
    at_printer_free = crash_at == f"engine:journaled#{PRINTER_FREE_HIT}"
    try:
        proc = rig.start(crash_at=crash_at)
        download(rig)
        with contextlib.suppress(OSError, ValueError):  # the process may die answering
            request_update(rig)
        if crash_at is None:
            wait_for_waiting(rig)
            proc.kill()
        elif at_printer_free:
            wait_for_waiting(rig)
            printer.free()
        assert proc.wait_exit(10) is not None, "the updater did not die"
        record = rig.journal_record()
        assert record is not None
        assert record.state == ("deploying" if at_printer_free else "waiting_idle"), record
        assert rig.links().current == h.FACTORY_VERSION
        assert staged_versions(rig) == []
        proc = rig.start()
        if not at_printer_free:
            # Still waiting after the restart, and the probe is asked again.
            wait_for_waiting(rig)
            assert_untouched_while_waiting(rig, printer, 1.0)
            printer.free()
        final = finish(rig, proc)
        h.check_invariants(rig, final)
        assert proc.terminate() == 0
    finally:
        rig.close()


# ---- 4. busy_policy = refuse -----------------------------------------------------------------


def test_refuse_policy_answers_printer_busy_and_changes_nothing(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    rig, printer = busy_rig(tmp_path, server, policy="refuse")
    try:
        proc = rig.start()
        download(rig)
        seq = journal_seq(rig)
        env = request_update(rig)
        assert (env["code"], env["msg"]) == (409, f"PRINTER_BUSY: {REASON}"), env
        data = rig.progress()
        assert (data["stage"], data["state"], data["error"]) == ("toInstall", "ready", None)
        assert journal_seq(rig) == seq
        assert rig.links().current == h.FACTORY_VERSION and staged_versions(rig) == []
        assert (rig.state / "downloads" / rig.package_name).is_file()
        # Refused, not queued: nothing starts by itself once the printer is free.
        printer.free()
        time.sleep(0.5)
        assert rig.progress()["state"] == "ready"
        assert request_update(rig)["code"] == 200
        final = finish(rig, proc)
        h.check_invariants(rig, final)
        assert waiting_reports(rig) == []
        printer.busy()
        env = rig.call("POST", "/rollback", {})
        assert (env["code"], env["msg"]) == (409, f"PRINTER_BUSY: {REASON}"), env
        assert rig.links().current == h.GOOD_VERSION
        assert proc.terminate() == 0
    finally:
        rig.close()


# ---- 5. cancel while waiting -----------------------------------------------------------------


def test_cancel_while_waiting_keeps_the_package_and_a_new_update_waits_again(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    rig, printer = busy_rig(tmp_path, server)
    try:
        proc = start_waiting(rig)
        env = rig.call("POST", "/cancel")
        assert env["code"] == 200, env
        data = rig.progress()
        assert (data["stage"], data["state"], data["error"]) == ("toInstall", "ready", None), data
        assert (rig.state / "downloads" / rig.package_name).is_file()
        assert rig.journal_record().state == "ready"  # type: ignore[union-attr]
        # The probe is no longer asked.
        time.sleep(0.3)
        asked = printer.probed
        time.sleep(0.6)
        assert printer.probed == asked
        n_requests = len(rig.package_requests())
        assert request_update(rig)["code"] == 200
        wait_for_waiting(rig)
        assert_untouched_while_waiting(rig, printer, 1.0)
        printer.free()
        final = finish(rig, proc)
        h.check_invariants(rig, final)
        assert len(rig.package_requests()) == n_requests, "the package was fetched again"
        assert proc.terminate() == 0
    finally:
        rig.close()


# ---- 6. a probe that hangs -------------------------------------------------------------------


def _probe_groups(marker: str) -> set[int]:
    """Process groups of the running processes whose command line names ``marker``: one per
    probe still running (each runs in its own session)."""
    groups = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    groups.add(int(stat.rsplit(")", 1)[1].split()[2]))
    return groups


def test_hanging_probe_counts_as_busy_and_progress_stays_fast(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    hang = tmp_path / "hanging-busy-probe"
    hang.write_text("#!/bin/sh\nsleep 100\n")
    hang.chmod(0o755)
    rig, _printer = busy_rig(
        tmp_path, server, probe=str(hang), env={"TOPE_UPDATER_BUSY_PROBE_TIMEOUT_S": "0.5"}
    )
    try:
        proc = rig.start()
        download(rig)
        assert request_update(rig)["code"] == 200
        reason = "the busy probe did not answer within 0.5 s"
        wait_for_waiting(rig, f"Waiting for the printer to be free: {reason}")
        latencies = []
        states = set()
        for _ in range(200):
            t0 = time.perf_counter()
            data = rig.progress()
            latencies.append(time.perf_counter() - t0)
            states.add((data["state"], data["message"]))
            time.sleep(0.01)
        latencies.sort()
        p99_ms = latencies[int(len(latencies) * 0.99) - 1] * 1000
        print(f"/progress p99 {p99_ms:.1f} ms, max {latencies[-1] * 1000:.1f} ms (hanging probe)")
        assert p99_ms < 100, latencies[-5:]
        assert states == {("waiting_idle", f"Waiting for the printer to be free: {reason}")}
        assert rig.links().current == h.FACTORY_VERSION and staged_versions(rig) == []
        # The probe is killed at each timeout: never more than the one being asked now.
        assert len(_probe_groups(str(hang))) <= 1
        # Stopped while a probe hangs: the stop does not wait for it, nor leave it behind.
        t0 = time.monotonic()
        assert proc.terminate() == 0
        assert time.monotonic() - t0 < 3
        assert h.wait_until(lambda: not _probe_groups(str(hang)), 3), _probe_groups(str(hang))
    finally:
        rig.close()


# ---- 7. the package expires while waiting ----------------------------------------------------


def test_package_expiring_while_waiting_is_deleted_and_nothing_installed(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    rig, printer = busy_rig(tmp_path, server)
    try:
        proc = start_waiting(rig)
        proc.kill()
        # As if the package had been verified 25 h ago (the clock jumped, or the print ran
        # past the package's trust window while the updater was down).
        record = rig.journal_record()
        assert record is not None and record.state == "waiting_idle", record
        assert record.job is not None and record.job.verified_at is not None
        job = attrs.evolve(record.job, verified_at=record.job.verified_at - PACKAGE_TTL_S - 3600)
        rig.journal_path.write_bytes(journal_mod.encode(attrs.evolve(record, job=job)))
        (rig.state / "journal.prev.json").unlink(missing_ok=True)
        asked = printer.probed
        proc = rig.start()
        data = rig.progress()
        assert data["state"] == "idle", data
        assert str(data["error"]).startswith("PACKAGE_EXPIRED"), data
        assert h.wait_until(lambda: not (rig.state / "downloads" / rig.package_name).exists(), 5)
        env = request_update(rig)
        assert env["code"] in (404, 410), env
        printer.free()
        time.sleep(0.5)
        assert printer.probed == asked, "the expired install still asked the printer"
        assert rig.links().current == h.FACTORY_VERSION and staged_versions(rig) == []
        assert rig.journal_record().state == "idle"  # type: ignore[union-attr]
        assert proc.terminate() == 0
    finally:
        rig.close()


# ---- restarts while a long print goes on ---------------------------------------------------


def test_restarts_during_a_long_print_keep_the_install_waiting(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    """Each restart the probe answers busy from is not a step that died: a print longer than
    ``resume_limit`` clean restarts of the updater must not fail the install."""
    rig, printer = busy_rig(tmp_path, server)
    try:
        proc = start_waiting(rig)
        for _ in range(4):  # resume_limit is 3
            asked = printer.probed
            assert h.wait_until(lambda asked=asked: printer.probed > asked, 5)
            assert proc.terminate() == 0
            proc = rig.start()
            wait_for_waiting(rig)
        printer.free()
        final = finish(rig, proc)
        h.check_invariants(rig, final)
        assert proc.terminate() == 0
    finally:
        rig.close()


def test_a_print_started_during_staging_is_not_interrupted(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    """The probe says free, the snapshot is built, and meanwhile a print starts: the probe is
    asked again before the switch stops anything, and the install waits again."""
    printer = Printer(tmp_path / "printing", tmp_path / "probe-runs")
    first = tmp_path / "first-answer-given"
    # Free at the first question (the wait ends, staging starts); then the print "starts".
    probe = (
        f"if [ ! -e {first} ]; then touch {first} {printer.flag}; echo standby; exit 0; fi; "
        + printer.probe
    )
    rig, _ = busy_rig(tmp_path, server, probe=probe)
    printer.free()
    try:
        proc = start_waiting(rig)  # asked again after staging: busy, waiting again
        assert rig.links().current == h.FACTORY_VERSION
        assert h.wait_until(lambda: staged_versions(rig) == [], 5), "unused snapshot kept"
        printer.free()
        final = finish(rig, proc)
        h.check_invariants(rig, final)
        assert proc.terminate() == 0
    finally:
        rig.close()


# ---- 8. what a probe prints is shown, never acted on ------------------------------------------
#: A busy probe's line with a NUL, a screen clear, an OSC title with BEL and a right-to-left
#: override that reverses what follows; then a CR that would overwrite the line on a
#: terminal (the probe's first line ends there: what follows is never shown).
HOSTILE = "printing\x00\x1b[2J\x1b]0;owned\x07 \u202eevil\rhidden"
HOSTILE_SHOWN = "printing\\x00\\x1b[2J\\x1b]0;owned\\x07 \\u202eevil"


def _events(rig: h.Rig, seconds: float) -> str:
    """What ``GET /events`` streams in ``seconds`` (the first event is the current state)."""
    chunks: list[bytes] = []
    with (
        contextlib.suppress(TimeoutError, OSError),
        urllib.request.urlopen(f"{rig.url}/events", timeout=seconds) as resp,
    ):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            chunk = resp.read1(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if b"\n\n" in b"".join(chunks):
                break
    return b"".join(chunks).decode("utf-8")


@pytest.mark.parametrize("policy", ["refuse", "wait"])
def test_control_characters_a_probe_prints_are_shown_as_escapes_everywhere(
    tmp_path: Path, server: ThreadedPackageServer, policy: str
) -> None:
    """A 409's message (``refuse``), or ``/progress``, ``/events`` and device-api's reports
    (``wait``) carry the probe's line with every control and bidi character as a visible
    escape (before: raw, a NUL and terminal escapes included)."""
    script = tmp_path / "probe.py"
    script.write_text(f"import sys\nsys.stdout.write({HOSTILE!r} + '\\n')\nsys.exit(1)\n")
    probe = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"
    rig, _ = busy_rig(tmp_path, server, policy=policy, probe=probe)
    try:
        proc = rig.start()
        download(rig)
        env = request_update(rig)
        if policy == "refuse":
            assert (env["code"], env["msg"]) == (409, f"PRINTER_BUSY: {HOSTILE_SHOWN}"), env
            texts = [env["msg"]]
        else:
            assert env["code"] == 200, env
            wait_for_waiting(rig, f"Waiting for the printer to be free: {HOSTILE_SHOWN}")
            stream = _events(rig, 3)
            assert HOSTILE_SHOWN.replace("\\", "\\\\") in stream, stream
            assert h.wait_until(
                lambda: any(HOSTILE_SHOWN in str(r.get("message")) for r in rig.device_api.reports),
                5,
            ), rig.device_api.reports
            texts = [stream, str(rig.progress()), str(rig.device_api.reports)]
        for text in texts:
            assert not any(ch in text for ch in "\x00\x1b\x07\r\u202e"), repr(text)
        assert proc.terminate() == 0
    finally:
        rig.close()
