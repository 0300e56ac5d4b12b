"""The fault matrix: the real updater process against a hostile environment.

Each test builds a :class:`tests.crash.harness.Rig`, breaks one thing in the world around
the updater (a full or read-only filesystem, a dead device-api, a flapping package server,
a jumped clock, a hanging ``systemctl``, a corrupt journal, a second updater, hostile HTTP
clients) and checks that the updater reports a clear outcome, never hangs and leaves
``current`` on a complete snapshot and the factory untouched.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.crash import harness as h
from tests.support.package_server import Behaviour, ThreadedPackageServer
from updater_fsm import journal as journal_mod
from updater_fsm.core.record import PACKAGE_TTL_S


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedPackageServer]:
    with h.package_server() as srv:
        yield srv


@contextlib.contextmanager
def mounted(path: Path, *options: str, fstype: str = "tmpfs") -> Iterator[Path]:
    """``mount -t tmpfs -o <options>`` on ``path`` (skip the test when that is refused)."""
    path.mkdir(parents=True, exist_ok=True)
    argv = ["mount", "-t", fstype, "-o", ",".join(options), "crash-test", str(path)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (need root): {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _finish(rig: h.Rig, proc: h.UpdaterProcess, timeout: float = 30.0) -> dict[str, object]:
    final = h.drive(rig, proc, timeout=timeout)
    assert final is not None, proc.log_tail()
    return final


def _still_factory(rig: h.Rig) -> None:
    """The device is unchanged: v1.0.0 current, factory intact, no leftovers."""
    assert rig.links().current == h.FACTORY_VERSION
    assert h.read_tree(rig.root / "versions" / "current") == h.tree_of(h.FACTORY_FILES)
    assert h.tree_digest(rig.root / "versions" / "factory") == rig.factory_digest
    leftovers = [p for p in os.listdir(rig.root / "versions") if p.endswith((".staging", ".trash"))]
    assert not leftovers


# ---- filesystems ---------------------------------------------------------------------------


def test_disk_full_during_download_fails_then_resumes(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    sc = h.scenario("good", blob_size=h.MID_DOWNLOAD_BLOB)
    # Room for the pre-download space check (2 x package + 16 MiB) and nothing more.
    with mounted(tmp_path / "state", "size=24m"):
        rig = h.Rig(tmp_path, sc, server, behaviour=h.MID_DOWNLOAD_RATE)
        try:
            proc = rig.start()
            rig.call("POST", "/download", rig.request)

            # Once an offset is journaled, so that there is something to resume.
            def journaled() -> bool:
                record = rig.journal_record()
                return bool(record and record.job and record.job.durable.offset > 0)

            assert h.wait_until(journaled, 10)
            # Something else fills the disk, leaving room for the journal but not the data.
            filler = rig.state / "filler"
            free = os.statvfs(rig.state).f_bavail * os.statvfs(rig.state).f_frsize
            with open(filler, "wb") as fh:
                fh.truncate(0)
                os.posix_fallocate(fh.fileno(), 0, free - 128 * 1024)
            final = _finish(rig, proc)
            assert final["stage"] == "failed" and str(final["error"]).startswith("DISK_FULL"), final
            _still_factory(rig)
            # Space comes back; the client asks again: the download resumes with Range.
            filler.unlink()
            before = len(rig.package_requests())
            env = rig.call("POST", "/download", rig.request)
            assert env["code"] == 200, env
            assert h.wait_until(lambda: rig.progress()["stage"] != "failed", 5)
            final = _finish(rig, proc)
            h.check_invariants(rig, final)
            ranged = [r.range for r in rig.package_requests()[before:] if r.range]
            assert ranged, "the retry must resume the .part, not start over"
            proc.terminate()
        finally:
            rig.close()


def test_disk_full_during_staging(tmp_path: Path, server: ThreadedPackageServer) -> None:
    sc = h.scenario("good", blob_size=h.MID_DOWNLOAD_BLOB)
    with mounted(tmp_path / "root", "size=2m"):
        rig = h.Rig(tmp_path, sc, server)
        try:
            proc = rig.start()
            final = _finish(rig, proc)
            assert final["stage"] == "failed" and str(final["error"]).startswith("DISK_FULL"), final
            _still_factory(rig)
            assert rig.progress()["current_version"] == h.FACTORY_VERSION
            # The verified package is kept: once space is freed, the same request installs
            # it without a new download.
            assert (rig.state / "downloads" / rig.package_name).is_file()
            fetched = len(rig.package_requests())
            subprocess.run(["mount", "-o", "remount,size=64m", str(rig.root)], check=True)
            assert rig.call("POST", "/download", rig.request)["code"] == 200
            assert h.wait_until(lambda: rig.progress()["stage"] == "toInstall", 10)
            assert rig.call("POST", "/update", {"version": sc.version})["code"] == 200
            final = _finish(rig, proc)
            assert final["stage"] == "success", final
            assert len(rig.package_requests()) == fetched
            assert rig.links().current == sc.version
            proc.terminate()
        finally:
            rig.close()


def test_read_only_root(tmp_path: Path, server: ThreadedPackageServer) -> None:
    rig = h.Rig(tmp_path, h.scenario("good"), server)
    root = str(rig.root)
    try:
        if subprocess.run(["mount", "--bind", root, root], check=False).returncode != 0:
            pytest.skip("cannot bind-mount (need root)")
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", root, root], check=True)
            proc = rig.start()
            final = _finish(rig, proc)
            assert final["stage"] == "failed", final
            error = str(final["error"])
            assert error.startswith("DEPLOYMENT_FAILED") and "Read-only" in error, error
            _still_factory(rig)
            proc.terminate()
        finally:
            subprocess.run(["umount", "-l", root], check=False)
    finally:
        rig.close()


# ---- the network ---------------------------------------------------------------------------


def test_device_api_down_throughout_gets_the_terminal_report_later(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    api = h.ThreadedDeviceApi()  # not started: connection refused throughout the update
    rig = h.Rig(tmp_path, h.scenario("good"), server, device_api=api)
    try:
        proc = rig.start()
        final = _finish(rig, proc)
        assert final["stage"] == "success"
        api.start()
        assert h.wait_until(lambda: bool(api.terminal_reports(h.GOOD_VERSION)), 35)
        assert api.terminal_reports(h.GOOD_VERSION)[-1]["stage"] == "success"
        h.check_invariants(rig, final)
        proc.terminate()
    finally:
        rig.close()
        api.close()


def test_flapping_package_server(tmp_path: Path, server: ThreadedPackageServer) -> None:
    sc = h.scenario("good", blob_size=h.MID_DOWNLOAD_BLOB)
    rig = h.Rig(tmp_path, sc, server)
    size = rig.package_size
    # Throttled, so the client has read what was sent before the reset (a reset discards
    # whatever still sits unread in the receiver's socket buffer).
    rate = 4_000_000
    server.call(
        server.server.script,
        rig.package_name,
        Behaviour(drop_after=size // 5, rate_bps=rate),
        Behaviour(status=503, retry_after="0"),
        Behaviour(drop_after=size // 5, rate_bps=rate),
        Behaviour(stall_after=1024, stall_s=0.5, drop_after=size // 4, rate_bps=rate),
    )
    try:
        proc = rig.start()
        final = _finish(rig, proc, timeout=60)
        h.check_invariants(rig, final)
        requests = rig.package_requests()
        assert len(requests) >= 5
        assert sum(1 for r in requests if r.status == 206) >= 3, [
            (r.status, r.range, r.bytes_sent) for r in requests
        ]
        assert sum(r.bytes_sent for r in requests) < 2 * size
        proc.terminate()
    finally:
        rig.close()


# ---- time ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [-(PACKAGE_TTL_S + 3600), 2 * 86400], ids=["past", "future"])
def test_clock_jump_while_ready_expires_the_package(
    tmp_path: Path, server: ThreadedPackageServer, shift: float
) -> None:
    rig = h.Rig(tmp_path, h.scenario("good"), server)
    try:
        proc = rig.start()
        rig.call("POST", "/download", rig.request)
        assert h.wait_until(lambda: rig.progress()["stage"] == "toInstall", 15)
        assert proc.terminate() == 0
        # Rewrite the journal as if the package had been verified long ago (or in the future:
        # the clock jumped back), then restart.
        record = journal_mod.decode(rig.journal_path.read_bytes())
        assert record.job is not None and record.job.verified_at is not None
        job = attrs.evolve(record.job, verified_at=record.job.verified_at + shift)
        rig.journal_path.write_bytes(journal_mod.encode(attrs.evolve(record, job=job)))
        (rig.state / "journal.prev.json").unlink(missing_ok=True)
        proc = rig.start()
        data = rig.progress()
        assert data["stage"] == "idle" and str(data["error"]).startswith("PACKAGE_EXPIRED"), data
        env = rig.call("POST", "/update", {"version": h.GOOD_VERSION})
        assert env["code"] in (404, 410), env
        assert h.wait_until(lambda: not (rig.state / "downloads" / rig.package_name).exists(), 5)
        _still_factory(rig)
        # A fresh download then installs normally.
        final = _finish(rig, proc)
        h.check_invariants(rig, final)
        proc.terminate()
    finally:
        rig.close()


# ---- systemctl -----------------------------------------------------------------------------


def test_hanging_systemctl_never_hangs_the_update(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    marker = f"crash-test-hang-{os.getpid()}-{time.monotonic_ns()}"
    fake = tmp_path / "systemctl"
    fake.write_text(f"#!/bin/sh\nexec -a {marker} sleep 1000\n")
    fake.chmod(0o755)
    env = {"TOPE_UPDATER_STOP_TIMEOUT_S": "1", "TOPE_UPDATER_START_TIMEOUT_S": "1"}
    rig = h.Rig(
        tmp_path,
        h.scenario("good"),
        server,
        service_control="systemd",
        systemctl=str(fake),
        env=env,
    )
    try:
        proc = rig.start()
        started = time.monotonic()
        final = _finish(rig, proc, timeout=60)
        assert final["stage"] == "failed", final
        error = str(final["error"])
        assert error.startswith(("SERVICE_STOP_TIMEOUT", "ROLLBACK_")), error
        assert time.monotonic() - started < 45
        # current still names a complete snapshot, and no systemctl was left behind.
        assert rig.links().current in (h.FACTORY_VERSION, h.GOOD_VERSION)
        current = h.read_tree(rig.root / "versions" / "current")
        assert current in (h.tree_of(h.FACTORY_FILES), h.expected_tree(rig.sc))
        assert h.tree_digest(rig.root / "versions" / "factory") == rig.factory_digest
        assert h.wait_until(lambda: not _pids_named(marker), 5), _pids_named(marker)
        proc.terminate()
    finally:
        rig.close()


def _pids_named(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry}/cmdline").read_bytes().startswith(marker.encode()):
                    pids.append(int(entry))
    return pids


# ---- the state directory -------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"\x00" * 100, b'{"schema": 1, "seq": 3}', b""])
def test_corrupt_journal_starts_idle_and_keeps_the_links(
    tmp_path: Path, server: ThreadedPackageServer, garbage: bytes
) -> None:
    rig = h.Rig(tmp_path, h.scenario("good"), server)
    try:
        proc = rig.start()
        _finish(rig, proc)
        assert proc.terminate() == 0
        rig.journal_path.write_bytes(garbage)
        (rig.state / "journal.prev.json").write_bytes(garbage[::-1] + b"junk")
        proc = rig.start()
        data = rig.progress()
        assert data["stage"] == "idle", data
        assert data["current_version"] == h.GOOD_VERSION
        assert rig.links().current == h.GOOD_VERSION
        assert h.read_tree(rig.root / "versions" / "current") == h.expected_tree(rig.sc)
        aside = sorted(p.name for p in rig.state.iterdir() if ".corrupt-" in p.name)
        assert len(aside) == 2, aside
        # It works: a manual rollback to the previous version is journaled and done.
        rig.call("POST", "/rollback", {"target": "previous"})
        assert h.wait_until(lambda: rig.links().current == h.FACTORY_VERSION, 10)
        assert h.wait_until(lambda: rig.progress()["stage"] == "idle", 10)
        journal_mod.decode(rig.journal_path.read_bytes())
        proc.terminate()
    finally:
        rig.close()


def test_second_updater_on_the_same_state_dir_exits_3(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    rig = h.Rig(tmp_path, h.scenario("good"), server)
    try:
        first = rig.start()
        rig.port, first_port = h.free_port(), rig.port
        second = rig.start(wait=False)
        code = second.wait_exit(15)
        assert code == 3, second.log_tail()
        assert "already using" in second.log_path.read_text()
        rig.port = first_port
        assert first.alive and rig.progress()["stage"] == "idle"
        first.terminate()
    finally:
        rig.close()


# ---- hostile HTTP clients ------------------------------------------------------------------


def test_oversized_body_is_refused(tmp_path: Path, server: ThreadedPackageServer) -> None:
    rig = h.Rig(tmp_path, h.scenario("good"), server)
    try:
        proc = rig.start()
        body = b'{"version": "' + b"1" * (10 * 1024 * 1024) + b'"}'
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", rig.port), timeout=10) as sock:
            head = (
                "POST /api/v1.0/download HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            sock.sendall(head)
            with contextlib.suppress(OSError):  # the server may close before we finish
                sock.sendall(body)
            answer = sock.recv(65536).decode(errors="replace")
        assert time.monotonic() - started < 10
        assert "VALIDATION_ERROR" in answer or " 413 " in answer, answer[:300]
        assert proc.alive and rig.progress()["stage"] == "idle"
        proc.terminate()
    finally:
        rig.close()


def test_slow_loris_clients_do_not_block_progress(
    tmp_path: Path, server: ThreadedPackageServer
) -> None:
    """20 clients trickle headers or a body at 2 bytes/s; /progress stays under 100 ms."""
    rig = h.Rig(tmp_path, h.scenario("good"), server)
    stop = threading.Event()
    socks: list[socket.socket] = []

    def trickle(slow_body: bool) -> None:
        sock = socket.create_connection(("127.0.0.1", rig.port), timeout=5)
        socks.append(sock)
        if slow_body:
            sock.sendall(
                b"POST /api/v1.0/download HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Length: 100\r\n\r\n"
            )
            rest = b"x" * 100
        else:
            sock.sendall(b"GET /api/v1.0/progress HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            rest = b"X-Slow: " + b"a" * 100
        for byte in rest:
            if stop.wait(0.5):
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return  # cut off by the server: fine too

    try:
        proc = rig.start()
        threads = [threading.Thread(target=trickle, args=(i % 2 == 0,)) for i in range(20)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        latencies = []
        end = time.monotonic() + 3
        while time.monotonic() < end:
            t0 = time.perf_counter()
            rig.progress()
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.02)
        assert max(latencies) < 0.1, f"/progress took up to {max(latencies) * 1000:.0f} ms"
        assert proc.alive
        # Stopping does not wait for the stalled clients (bounded by the daemon's timeouts).
        t0 = time.monotonic()
        assert proc.terminate() == 0
        assert time.monotonic() - t0 < 6
    finally:
        stop.set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
        rig.close()
