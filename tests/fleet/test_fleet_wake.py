"""Fleets without a resident updater: the fleet wake-up under a real systemd, polling a real
hawkBit (issue 22).

install.sh installs the shipped units into the sandbox's systemd; the device's config
points at hawkBit through a recording proxy (every request hawkBit receives, with the time
it arrived), hawkBit asks for a poll every :data:`POLL_S` seconds. The test checks, on
that one install:

* between polls the updater is not running (the service ``inactive``, result ``success``,
  never restarted) and ``tope-updater.timer`` waits to start it; it is started by that
  timer, and hawkBit sees the cadence it asked for (every gap within the poller's ±10 %
  jitter, plus the timer's accuracy and a start); a device-api request between two polls
  starts it early: it answers, waits for the journaled poll time instead of polling at
  once, and leaves again before it, its timer replacing the one still pending;
* an action assigned while the device sleeps is picked up at the next poll, installed, and
  closed with exactly one final feedback; the device goes back to exiting between polls;
* a kill -9 (``TOPE_UPDATER_CRASH_AT``) after the final feedback reached hawkBit but
  before the device marked it delivered, and another one before it was sent: systemd
  restarts the updater, and hawkBit holds exactly one final feedback each time (the one
  not yet sent is sent once; the one already there is not sent again);
* uninstall.sh removes the armed timer with the units.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.deploy_site import (
    INSTALL,
    SYSTEM_PYTHON,
    UNINSTALL,
    UNIT,
    Api,
    DeviceApiStub,
    Site,
    device_api,
    free_port,
    run,
    show,
    site,
    write_exe,
)
from tests.fleet.devices import final_statuses, wait_action_end
from tests.support.hawkbit import HawkbitServer
from tests.support.recording_proxy import Passed, RecordingProxy
from tests.support.systemd_sandbox import SystemdSandbox
from updater_fsm.package import builder

__all__ = ["device_api", "site"]  # the fixtures, imported for this module

pytestmark = pytest.mark.systemd

TIMER = "tope-updater.timer"
#: hawkBit's pollingTime for this test (the fixture's 1 s is restored afterwards).
POLL_S = 10
JITTER = 0.1
#: What a gap may exceed the asked interval by beyond the jitter: the timer fires up to
#: 1 s late (AccuracySec=1s), and a start slower than the lead delays the poll.
LATE_S = 3.0


def base_polls(proxy: RecordingProxy, cid: str, since: float = 0.0) -> list[Passed]:
    """The controller base polls hawkBit received from the device (after ``since``)."""
    path = f"/DEFAULT/controller/v1/{cid}"
    return [p for p in proxy.passed() if p.method == "GET" and p.path == path and p.at > since]


def wait_for(what: str, until: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"not {what} after {timeout} s"
        time.sleep(0.2)


def log_events(site: Site, event: str) -> list[dict[str, object]]:
    found = []
    for line in site.log.read_text(errors="replace").splitlines():
        if f'"event": "{event}"' in line:
            found.append(json.loads(line))
    return found


def release(hb: HawkbitServer, site: Site, version: str) -> int:
    src = site.base / f"src-{version}"
    write_exe(src / "bin" / "hello", f"#!/bin/sh\necho {version}\n")
    pkg = site.base / f"update-{version}.zip"
    builder.build_package(src, version=version, output=pkg, root=site.root)
    return hb.release(f"wake-{version}", version, pkg.name, pkg.read_bytes())


def crash_mark(site: Site, version: str) -> Path:
    """The file that makes the kill one-shot: where the unit may write (ProtectSystem)."""
    return site.root / ".updater" / f"crashed-{version}"


def final_posts(proxy: RecordingProxy, action: str) -> list[Passed]:
    """The feedback POSTs that closed ``action`` and reached hawkBit."""
    found = []
    for p in proxy.passed():
        if p.method == "POST" and f"/deploymentBase/{action}/feedback" in p.path:
            body = json.loads(p.body)
            if body["status"]["execution"] == "closed":
                found.append(p)
    return found


def test_a_fleet_device_exits_between_polls_and_is_woken_for_each(
    systemd_sandbox: SystemdSandbox, site: Site, device_api: DeviceApiStub, hawkbit: HawkbitServer
) -> None:
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"needs {SYSTEM_PYTHON} (outside /root: the unit has ProtectHome=yes)")
    sandbox, hb = systemd_sandbox, hawkbit
    cid, token = f"wake-{os.urandom(4).hex()}", os.urandom(16).hex()
    hb.create_target(cid, token)
    hb.set_polling(f"00:00:{POLL_S:02}")
    factory = site.base / "factory"
    write_exe(factory / "bin" / "hello", "#!/bin/sh\necho 1.0.0\n")
    port = free_port()
    systemctl = " ".join(sandbox.systemctl_prefix)
    install = [
        str(INSTALL),
        *("--root", str(site.root), "--prefix", str(site.prefix)),
        *("--config-dir", str(site.config_dir), "--unit-dir", str(sandbox.unit_dir)),
        *("--bin-links", str(site.bin_links), "--from", str(factory), "--version", "1.0.0"),
        *("--port", str(port), "--device-api-url", device_api.url),
        *("--python", str(SYSTEM_PYTHON), "--systemctl", systemctl),
        "--no-enable",  # enable would write links into the host's /etc
    ]
    try:
        with RecordingProxy(hb.base_url) as proxy:
            run([*install, "--no-start"])
            with (site.config_dir / "config.toml").open("a") as fh:
                fh.write(
                    f'idle_exit_s = 1\nddi_wake_min_s = 4\nddi_url = "{proxy.url}"\n'
                    f'ddi_controller_id = "{cid}"\nddi_token = "{token}"\n'
                )
            run(install)
            _exits_between_polls(sandbox, site, proxy, cid, Api(port, site))
            _installs_an_action(sandbox, site, hb, proxy, cid, "1.1.0", crash_at=None)
            for version, point in (("1.2.0", "fleet:final_sent"), ("1.3.0", "fleet:final_sending")):
                _installs_an_action(sandbox, site, hb, proxy, cid, version, crash_at=point)
            assert Api(port, site).progress()["current_version"] == "1.3.0"
    finally:
        hb.set_polling("00:00:01")

    run([
        str(UNINSTALL), "--root", str(site.root), "--prefix", str(site.prefix),
        "--config-dir", str(site.config_dir), "--unit-dir", str(sandbox.unit_dir),
        "--bin-links", str(site.bin_links), "--systemctl", systemctl, "--no-disable",
    ])  # fmt: skip
    assert show(sandbox, TIMER)["LoadState"] == "not-found"
    assert show(sandbox, UNIT)["LoadState"] == "not-found"


def _exits_between_polls(
    sandbox: SystemdSandbox, site: Site, proxy: RecordingProxy, cid: str, api: Api
) -> None:
    """Four polls; between each two the updater is not running and the timer waits. After
    the second, a device-api request starts it early: it answers, does not poll before the
    time hawkBit asked for, and leaves again with the timer re-armed.

    (install.sh's own start polls, and its `verify-setup` polls once more as the device:
    the polls counted are those after it.)"""
    since = time.monotonic()
    asleep: list[float] = []  # when the service was seen inactive with the timer waiting
    early: float | None = None
    deadline = time.monotonic() + 6 * POLL_S + 30
    while len(base_polls(proxy, cid, since)) < 4:
        assert time.monotonic() < deadline, (base_polls(proxy, cid, since), log_tail(site))
        props, timer = show(sandbox, UNIT), show(sandbox, TIMER)
        if props["ActiveState"] == "inactive":
            assert props["Result"] == "success" and props["NRestarts"] == "0", props
            if timer["ActiveState"] == "active":
                asleep.append(time.monotonic())
                polled = base_polls(proxy, cid, since)
                # Asleep soon after the second poll: the next is at least ~6 s away.
                if early is None and len(polled) == 2 and time.monotonic() - polled[1].at < 3:
                    early = time.monotonic()
                    assert api.progress()["stage"] == "idle"
        time.sleep(0.25)
    assert early is not None, "never seen asleep within 3 s of the second poll"
    # The updater that request started waited for the journaled time (a timer's start
    # waits its lead, ~3 s, less its own start): the gaps below show it did not poll early.
    waits = [float(str(e["first_poll_in_s"])) for e in log_events(site, "fleet poller started")]
    assert max(waits) > 4.5, (waits, log_tail(site))
    # It left before that poll: its timer replaced the one still pending.
    assert not log_events(site, "fleet wake-up: timer not armed, staying"), log_tail(site)
    polls = [p.at for p in base_polls(proxy, cid, since)]
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    print(f"gaps between polls hawkBit saw: {[round(g, 2) for g in gaps]} (asked {POLL_S} s)")
    for a, b in itertools.pairwise(polls):
        assert POLL_S * (1 - JITTER) - 0.5 <= b - a <= POLL_S * (1 + JITTER) + LATE_S, gaps
        assert any(a < t < b for t in asleep), f"running all along between {a} and {b}"
    assert any(early + 1 < t < polls[2] for t in asleep), "the early start never left"
    # Each poll by a fresh updater, started by the timer; each left after its poll.
    starts = log_events(site, "updater started")
    armed = log_events(site, "fleet wake-up armed")
    exits = log_events(site, "idle exit")
    assert len(starts) >= len(polls) and len(armed) >= len(polls) - 1, log_tail(site)
    assert len(exits) >= len(polls) - 1
    for event in exits:
        assert event["next_poll_in_s"] is not None and float(str(event["next_poll_in_s"])) >= 4


def _installs_an_action(
    sandbox: SystemdSandbox,
    site: Site,
    hb: HawkbitServer,
    proxy: RecordingProxy,
    cid: str,
    version: str,
    *,
    crash_at: str | None,
) -> None:
    """An action assigned while the device sleeps: installed, exactly one final feedback
    (through a kill -9 at ``crash_at``), then the device sleeps between polls again."""
    dropin = sandbox.unit_dir / f"{UNIT}.d"
    if crash_at is not None:
        dropin.mkdir(exist_ok=True)
        once = crash_mark(site, version)
        (dropin / "crash.conf").write_text(
            f"[Service]\nEnvironment=TOPE_UPDATER_CRASH_AT={crash_at}"
            f" TOPE_UPDATER_CRASH_ONCE={once}\n"
        )
        sandbox.daemon_reload()
    ds = release(hb, site, version)
    wait_for("asleep", lambda: show(sandbox, UNIT)["ActiveState"] == "inactive", 2 * POLL_S)
    action = hb.assign_action(ds, cid)
    try:
        last = wait_action_end(hb, cid, action, timeout=6 * POLL_S + 60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{show(sandbox, UNIT)}\n{log_tail(site)}") from None
    assert last["type"] == "finished", hb.action_statuses(cid, action)
    if crash_at is not None:
        assert crash_mark(site, version).exists(), f"never reached {crash_at}"
        (dropin / "crash.conf").unlink()
        sandbox.daemon_reload()
    # hawkBit holds exactly one outcome, and received exactly one closing feedback: none
    # was sent again after the kill (no 410 for an action already closed).
    assert len(final_statuses(hb, cid, action)) == 1, hb.action_statuses(cid, action)
    posts = final_posts(proxy, action)
    assert [p.status for p in posts] == [200], posts
    wait_for(
        f"the attributes to show {version}",
        lambda: hb.target_attributes(cid).get("current_version") == version,
        3 * POLL_S,
    )
    # Back to sleep between polls: an idle exit after the action closed, the timer armed.
    wait_for("asleep again", lambda: show(sandbox, UNIT)["ActiveState"] == "inactive", 60)
    props = show(sandbox, UNIT)
    assert props["Result"] == "success", props
    assert show(sandbox, TIMER)["ActiveState"] == "active", show(sandbox, TIMER)


def log_tail(site: Site, lines: int = 30) -> str:
    try:
        return "\n".join(Path(site.log).read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"
