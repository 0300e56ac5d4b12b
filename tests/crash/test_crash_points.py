"""Kill the real updater process at every durable step and check it recovers.

Each test starts ``tope-updater serve`` as a subprocess with ``TOPE_UPDATER_CRASH_AT`` set,
drives one update over HTTP, waits for the SIGKILL, restarts without the variable, drives
the update to its end and checks the invariants of :mod:`tests.crash.harness`. The kill list
is :data:`~tests.crash.harness.KILL_POINTS` (every point and every hit of a traced good and
bad update); :func:`test_kill_list_matches_a_fresh_trace` keeps it honest.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crash import harness as h
from tests.support.package_server import ThreadedPackageServer
from tests.support.systemd_sandbox import SystemdSandbox

SEED = 20261126

DETERMINISTIC = [(name, k) for name in ("good", "bad") for k in h.kill_list(h.KILL_POINTS[name])]
MID_DOWNLOAD = [*h.random_mid_download(random.Random(SEED), 10), h.CHECKPOINT_KILL]


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedPackageServer]:
    with h.package_server() as srv:
        yield srv


def _run(
    tmp_path: Path,
    server: ThreadedPackageServer,
    sc: h.Scenario,
    kill: h.KillPoint,
    **rig_kwargs: object,
) -> h.TrialResult:
    rig = h.Rig(tmp_path, sc, server, **rig_kwargs)  # type: ignore[arg-type]
    try:
        result = h.run_trial(rig, kill)
    finally:
        rig.close()
    assert result.ok, f"{kill} ({sc.name}): {result.error}"
    assert result.killed
    return result


def test_kill_list_matches_a_fresh_trace(tmp_path: Path, server: ThreadedPackageServer) -> None:
    fresh = h.discover(tmp_path, server)
    for name, committed in h.KILL_POINTS.items():
        assert set(fresh[name]) == set(committed), name
        delta = fresh[name]["download:checkpoint"] - committed["download:checkpoint"]
        for point, hits in committed.items():
            want = hits + delta if point in h.CHECKPOINT_DEPENDENT else hits
            assert fresh[name][point] == want, (name, point, fresh[name][point], hits)


@pytest.mark.parametrize(
    ("name", "kill"), DETERMINISTIC, ids=[f"{n}-{k}" for n, k in DETERMINISTIC]
)
def test_kill_at_every_durable_step(
    tmp_path: Path, server: ThreadedPackageServer, name: str, kill: h.KillPoint
) -> None:
    _run(tmp_path, server, h.scenario(name), kill)


@pytest.mark.parametrize("kill", MID_DOWNLOAD, ids=[str(k) for k in MID_DOWNLOAD])
def test_kill_mid_download_resumes(
    tmp_path: Path, server: ThreadedPackageServer, kill: h.KillPoint
) -> None:
    sc = h.scenario("good", blob_size=h.MID_DOWNLOAD_BLOB, seed=SEED)
    result = _run(tmp_path, server, sc, kill, behaviour=h.MID_DOWNLOAD_RATE)
    if kill.point == "download:checkpoint":
        # A data offset was journaled before this kill: it must be resumed.
        assert result.state_at_kill == "downloading"
        assert result.resumed_from, "a journaled offset must be resumed with Range"
    assert result.bytes_sent < 2 * result.package_size


def test_invariant_check_catches_a_damaged_device(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    """The checks can fail: damage a finished device in three ways and see each reported."""
    rig = h.Rig(tmp_path, h.scenario("good"), server)
    try:
        proc = rig.start()
        final = h.drive(rig, proc)
        assert final is not None
        h.check_invariants(rig, final)
        proc.terminate()
    finally:
        rig.close()
    versions = rig.root / "versions"
    (versions / "v9.9.9.staging").mkdir()
    (versions / "current" / "lib" / "blob.bin").write_bytes(b"torn")
    factory_file = versions / "factory" / "lib" / "data.txt"
    factory_file.chmod(0o644)
    problems = " ".join(h.disk_problems(rig))
    assert "leftover versions/v9.9.9.staging" in problems
    assert "current snapshot differs" in problems
    assert "factory tree changed" in problems


# ---- the same kills against a real systemd ------------------------------------------------

SYSTEMD_KILLS = [
    (name, h.KillPoint(point))
    for name, points in (
        (
            "good",
            (
                "switch:units_stopped",
                "switch:previous:after_rename",
                "switch:current:before_rename",
                "switch:links_switched",
            ),
        ),
        (
            "bad",
            (
                "switch:links_switched",
                "rollback:current:before_rename",
                "rollback:current:after_rename",
                "rollback:links_switched",
            ),
        ),
    )
    for point in points
]


@pytest.mark.systemd
@pytest.mark.parametrize(
    ("name", "kill"), SYSTEMD_KILLS, ids=[f"{n}-{k}" for n, k in SYSTEMD_KILLS]
)
def test_kill_switch_and_rollback_under_systemd(
    tmp_path: Path,
    server: ThreadedPackageServer,
    systemd_sandbox: SystemdSandbox,
    name: str,
    kill: h.KillPoint,
) -> None:
    sc = h.scenario(name)
    root = tmp_path / "root"
    systemd_sandbox.install_unit(h.HELLO_UNIT, h.hello_unit_text(root))
    systemd_sandbox.daemon_reload()
    systemctl = " ".join(systemd_sandbox.systemctl_prefix)
    rig = h.Rig(tmp_path, sc, server, service_control="systemd", systemctl=systemctl)
    try:
        systemd_sandbox.systemctl("start", h.HELLO_UNIT, check=True)
        result = h.run_trial(rig, kill)
        assert result.ok, f"{kill} ({name}): {result.error}"
        assert result.killed
        # The service runs again, on the version `current` names.
        assert h.wait_until(
            lambda: systemd_sandbox.systemctl("is-active", h.HELLO_UNIT).stdout.strip() == "active",
            5,
        )
    finally:
        rig.close()
