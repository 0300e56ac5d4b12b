"""Kill the real updater while it stages a delta package, at every patch step, and restart.

Each trial installs a full 1.1.0 (made by the harness from :data:`BASE`) with a real
``tope-updater serve``, then serves the delta 1.1.0 → 1.2.0 built by the real builder
(``build_package(delta_from=<the full 1.1.0 package>)``: patched, kept, added and removed
files) and runs :func:`tests.crash.harness.run_trial` on it: the updater is started with
``TOPE_UPDATER_CRASH_AT=<point>#<n>``, killed there, restarted and driven to the end. On top
of the harness's invariants (``current`` is 1.2.0 and equals factory + 1.1.0 + 1.2.0 less
the removed file, i.e. the full 1.2.0's tree but for the removed file; factory intact; no
``.staging``/``.trash``; terminal report sent), the running snapshot v1.1.0 — the patches'
base — must be byte-for-byte and mode-for-mode what it was before the delta.

The kill list is every ``stage:*`` point of a traced delta update at each of its hits
(:data:`DELTA_STAGE_POINTS`); :func:`test_delta_kill_list_matches_a_fresh_trace` keeps it
honest.
"""

from __future__ import annotations

import json
import random
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crash import harness as h
from tests.support.package_server import ThreadedPackageServer
from updater_fsm.package.builder import build_package

BASE_VERSION = h.GOOD_VERSION  # 1.1.0
DELTA_VERSION = "1.2.0"

_rng = random.Random(16)
_BLOB = _rng.randbytes(96 * 1024)
_CORE = b"".join(b"def f%d(x):\n    return x * %d\n" % (i, i) for i in range(3000))
_HELLO = b'#!/bin/sh\n[ "$1" = serve ] && exec sleep 600\necho hello %s\n'

#: The full 1.1.0 the device runs before the delta (root-relative key -> (data, mode)).
BASE: dict[str, tuple[bytes, int]] = {
    "bin/hello": (_HELLO % b"1.1.0", 0o755),
    "lib/blob.bin": (_BLOB, 0o644),
    "lib/core.py": (_CORE, 0o644),
    "lib/same.txt": (b"unchanged\n" * 200, 0o644),
    "lib/gone.txt": (b"dropped in 1.2.0\n", 0o644),
}
#: The 1.2.0 tree: three files patched, one kept, one added, lib/gone.txt removed.
NEW: dict[str, tuple[bytes, int]] = {
    "bin/hello": (_HELLO % b"1.2.0", 0o755),
    "lib/blob.bin": (_BLOB[:50_000] + b"patched" + _BLOB[50_007:], 0o644),
    "lib/core.py": (_CORE.replace(b"return x * 7\n", b"return x * 7 + 1\n"), 0o644),
    "lib/same.txt": BASE["lib/same.txt"],
    "lib/new.txt": (b"new in 1.2.0\n", 0o644),
}
REMOVED = ("lib/gone.txt",)

#: Every ``stage:*`` point a delta update reaches and how often (one patched file a hit).
DELTA_STAGE_POINTS: dict[str, int] = {
    "stage:after_rename": 1,
    "stage:before_rename": 1,
    "stage:copied": 1,
    "stage:delta_patched": 3,
    "stage:delta_removed": 1,
}
KILLS = h.kill_list(DELTA_STAGE_POINTS)


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedPackageServer]:
    with h.package_server() as srv:
        yield srv


def _base_scenario() -> h.Scenario:
    return h.Scenario("delta-base", BASE_VERSION, BASE, "success", "", BASE_VERSION, ("true",))


def _delta_scenario() -> h.Scenario:
    return h.Scenario(
        "delta",
        DELTA_VERSION,
        NEW,
        "success",
        "",
        DELTA_VERSION,
        ("true",),
        base_files=BASE,
        removed=REMOVED,
    )


def _delta_rig(base: Path, server: ThreadedPackageServer) -> h.Rig:
    """A device running the full 1.1.0 (installed by a real serve), serving the delta."""
    rig = h.Rig(base, _base_scenario(), server)
    try:
        proc = rig.start()
        final = h.drive(rig, proc)
        assert final is not None, proc.log_tail()
        h.check_invariants(rig, final)
        assert proc.terminate() == 0
        serve_delta(rig)
    except BaseException:
        rig.close()
        raise
    return rig


def serve_delta(rig: h.Rig) -> Path:
    """Build the delta 1.1.0 → 1.2.0 against the full 1.1.0 ``rig`` served last (the real
    builder) and serve it instead; returns it. Also run on emulated ARM devices
    (tests/e2e/test_arm.py)."""
    base = rig.base
    src = base / "src-1.2.0"
    for rel, (data, mode) in NEW.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
        (src / rel).chmod(mode)
    # The metadata make_package gave every module of the full package.
    health = json.dumps(f"{rig.root}/versions/current/bin/hello")
    (base / "modules.toml").write_text(
        '[modules."*"]\nprocess_name = "hello"\npost_cmds = ["true"]\n'
        f"health = {{ command = {health} }}\n"
    )
    delta = build_package(
        src,
        version=DELTA_VERSION,
        output=base / f"{base.name}-delta-{DELTA_VERSION}.zip",
        root=rig.root,
        modules_config=base / "modules.toml",
        delta_from=rig.package_file,
    )
    kinds = sorted(m.kind.value for m in delta.manifest.modules)
    assert kinds == ["added", "kept", "patched", "patched", "patched"]
    assert delta.manifest.removed == tuple(f"{rig.root}/{rel}" for rel in REMOVED)
    with zipfile.ZipFile(delta.path) as zf:
        assert not any(n.startswith("files/lib/blob") for n in zf.namelist())
    rig.serve(delta.path, _delta_scenario())
    return delta.path


def test_delta_kill_list_matches_a_fresh_trace(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    rig = _delta_rig(tmp_path, server)
    try:
        _final, counts = h.trace_run(rig, tmp_path / "trace.txt")
    finally:
        rig.close()
    stage = {point: n for point, n in counts.items() if point.startswith("stage:")}
    assert stage == DELTA_STAGE_POINTS


@pytest.mark.parametrize("kill", KILLS, ids=[str(k) for k in KILLS])
def test_kill_while_staging_a_delta(
    tmp_path: Path, server: ThreadedPackageServer, kill: h.KillPoint
) -> None:
    rig = _delta_rig(tmp_path, server)
    base_snapshot = rig.root / "versions" / f"v{BASE_VERSION}"
    before = h.tree_digest(base_snapshot)
    try:
        result = h.run_trial(rig, kill)
    finally:
        rig.close()
    assert result.ok, f"{kill}: {result.error}"
    assert result.killed
    assert result.state_at_kill == "deploying", result.state_at_kill  # staging the snapshot
    # The patches' base was only ever read: v1.1.0 is now `previous`, unchanged.
    assert rig.links().previous == BASE_VERSION
    assert h.tree_digest(base_snapshot) == before
    current = h.read_tree(rig.root / "versions" / "current")
    assert "lib/gone.txt" not in current
    assert current["lib/blob.bin"] == (NEW["lib/blob.bin"][0], False)
