"""Kill the real updater at every step of an install from a file of the device.

``tope-updater install FILE`` and a USB stick hand the updater a ``file://`` URL; its copy
into the download area checkpoints like a download. Each trial starts ``tope-updater
serve`` with ``TOPE_UPDATER_CRASH_AT`` at one ``download:*`` point of a traced install
from a file (the copy's first and a middle checkpoint, the rename), kills it
there, restarts it and drives the install to its end: the invariants of
:mod:`tests.crash.harness` hold (the new version runs and equals the package, factory
intact, nothing half-written left, the journal, the floor and the history agree).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crash import harness as h
from tests.support.package_server import ThreadedPackageServer

#: Large enough for the copy to checkpoint on the way (every 4 MiB), small enough to be quick.
BLOB = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedPackageServer]:
    with h.package_server() as srv:
        yield srv


def _rig(base: Path, server: ThreadedPackageServer) -> h.Rig:
    rig = h.Rig(base, h.scenario("good", blob_size=BLOB), server)
    rig.install_from_file(base / "media" / "usb")
    return rig


def test_kill_at_every_step_of_an_install_from_a_file(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    rig = _rig(trace_dir, server)
    try:
        final, counts = h.trace_run(rig, trace_dir / "trace.txt")
        assert not rig.package_requests(), "the package server was asked: not a file install"
    finally:
        rig.close()
    assert final["stage"] == "success"
    points = {p: n for p, n in counts.items() if p.startswith("download:")}
    # the copy's checkpoints: after the open, on the way, at the end
    assert points.get("download:checkpoint", 0) >= 3, points
    assert {"download:before_rename", "download:after_rename"} <= set(points)
    # Every hit of every point, but of the copy's checkpoints only the first (offset 0) and
    # the second (mid-copy: resumed from it). How many more come depends on the machine's
    # speed (one a second as well as every 4 MiB), so a later hit may never come in a trial.
    kills = [k for k in h.kill_list(points) if k.point != "download:checkpoint" or k.hit <= 2]
    failures = []
    for kill in kills:
        base = tmp_path / str(kill).replace(":", "-").replace("#", "-")
        base.mkdir()
        trial = _rig(base, server)
        try:
            result = h.run_trial(trial, kill)
        finally:
            trial.close()
        if not (result.ok and result.killed):
            failures.append(f"{kill}: {result.error}")
    assert not failures, failures
