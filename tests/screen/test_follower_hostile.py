"""The screen's follower against an updater that says anything: it never dies, never grows
without bound, and shows sane data again as soon as the other end does.

A real TCP server on 127.0.0.1 answers each connection with the next script: one attack,
then an honest event stream. Each case checks that the follower published "cannot read
the updater" (or lost the link) for the attack, then the honest snapshot, live; and that
the thread still runs.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from screen.follower import MAX_MESSAGE, Follower, Response
from screen.snapshot import MAX_TEXT, Unreadable, drawable, read_snapshot
from screen.view import Link, view_of

Script = Callable[[socket.socket], None]

HONEST: dict[str, Any] = {
    "state": "downloading",
    "stage": "downloading",
    "progress": 40,
    "message": "Downloading v1.2.0",
    "error": None,
    "version": "1.2.0",
    "bytes_downloaded": 400,
    "total_bytes": 1000,
    "speed_bps": 100.0,
    "eta_s": 6,
    "current_version": "1.1.0",
    "previous_version": "1.0.0",
    "factory_version": "1.0.0",
}
#: ``HONEST`` as the follower publishes it (keys without a value left out)
HONEST_SEEN = {key: value for key, value in HONEST.items() if value is not None}


def _head(conn: socket.socket, kind: str = "text/event-stream", extra: str = "") -> None:
    conn.sendall(f"HTTP/1.0 200 OK\r\nContent-Type: {kind}\r\n{extra}\r\n".encode())


def _event(data: bytes) -> bytes:
    return b"event: progress\ndata: " + data + b"\n\n"


def honest_stream(conn: socket.socket) -> None:
    _head(conn)
    conn.sendall(_event(json.dumps(HONEST).encode()))
    time.sleep(30)  # a live stream stays open


def event_of(data: bytes) -> Script:
    def script(conn: socket.socket) -> None:
        _head(conn)
        conn.sendall(_event(data))
        time.sleep(0.2)

    return script


def chunked(first_line: bytes) -> Script:
    def script(conn: socket.socket) -> None:
        _head(conn, extra="Transfer-Encoding: chunked\r\n")
        conn.sendall(first_line)
        time.sleep(0.5)

    return script


def endless_line(conn: socket.socket) -> None:
    """One SSE line that never ends (64 KiB writes, up to 64 MiB)."""
    _head(conn)
    piece = b"data: " + b"x" * (64 * 1024)
    try:
        for _ in range(1024):
            conn.sendall(piece)
    except OSError:
        pass  # the follower hung up: what it should do


def huge_progress(conn: socket.socket) -> None:
    """``/events`` refused, then a ``/progress`` answer of up to 64 MiB."""
    request = conn.recv(4096)
    if b"/events" in request:
        conn.sendall(
            b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n\r\n{}"
        )
        return
    _head(conn, "application/json")
    try:
        conn.sendall(b'{"code": 200, "msg": "ok", "data": {"state": "idle", "message": "')
        for _ in range(1024):
            conn.sendall(b"y" * (64 * 1024))
    except OSError:
        pass


class HostileUpdater:
    """Answers connection ``i`` with ``scripts[i]`` (the last one for every later one)."""

    def __init__(self, scripts: list[Script]) -> None:
        self.scripts = scripts
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            script = self.scripts[min(self.connections, len(self.scripts) - 1)]
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn, script), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket, script: Script) -> None:
        with conn:
            if script is not huge_progress:
                conn.recv(4096)
            script(conn)

    def close(self) -> None:
        self.sock.close()


class Seen:
    """What the follower published, in order, from its thread."""

    def __init__(self) -> None:
        self.updates: list[tuple[dict[str, Any] | None, Link]] = []
        self.lock = threading.Lock()

    def __call__(self, snap: Any, link: Link) -> None:
        with self.lock:
            self.updates.append((snap, link))

    def wait_for(self, pred: Callable[[Any, Link], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if any(pred(s, link) for s, link in self.updates):
                    return
            time.sleep(0.02)
        states = [(s and s.get("state"), k) for s, k in self.updates]
        pytest.fail(f"never seen; published: {states}")


ATTACKS: dict[str, Script] = {
    "a NUL and escapes in the busy reason": event_of(
        json.dumps(
            {
                **HONEST,
                "state": "waiting_idle",
                "message": "Waiting for the printer to be free: printing"
                "\x00\x1b[2J\x1b]0;x\x07\u202efoo",
            }
        ).encode()
    ),
    "the state is a number": event_of(json.dumps({**HONEST, "state": 5}).encode()),
    "progress is a string": event_of(json.dumps({**HONEST, "progress": "lots"}).encode()),
    "the data is a list": event_of(b"[1, 2, 3]"),
    "eta is Infinity": event_of(json.dumps({**HONEST, "eta_s": float("inf")}).encode()),
    "a number beyond any float": event_of(
        b'{"state": "downloading", "total_bytes": 1' + b"0" * 400 + b"}"
    ),
    "undecodable bytes": event_of(b'{"state": "idle", "message": "\xff\xfe\xc3"}'),
    "JSON nested 100000 deep": event_of(b"[" * 100_000 + b"]" * 100_000),
    "a chunk size of 2**48": chunked(b"1000000000000\r\n"),
    "a chunk size that is not hex": chunked(b"zz\r\n"),
    "an endless SSE line": endless_line,
    "a 64 MiB /progress answer": huge_progress,
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_the_follower_survives_and_shows_sane_data_again(attack: str) -> None:
    # The 64 MiB answer is the poll after a refused stream: two connections.
    attacks = [ATTACKS[attack]] * (2 if ATTACKS[attack] is huge_progress else 1)
    server = HostileUpdater([*attacks, honest_stream])
    seen = Seen()
    follower = Follower(server.url, seen, backoff_s=(0.05, 0.1), retry_stream_s=0.5, poll_s=0.05)
    thread = threading.Thread(target=follower.run, daemon=True)
    thread.start()
    try:
        seen.wait_for(lambda s, link: link is Link.LIVE and s == HONEST_SEEN)
        assert seen.updates[0] != (HONEST_SEEN, Link.LIVE)  # the attack was seen first
        assert thread.is_alive()
        for snap, link in seen.updates:
            if snap is not None:
                view = view_of(snap, "en", link=link)
                for text in (view.title, view.detail, view.note, view.banner, view.versions):
                    assert text is None or drawable(text) == text, text
    finally:
        server.close()


def honest_then_gone(conn: socket.socket) -> None:
    _head(conn)
    conn.sendall(_event(json.dumps(HONEST).encode()))


def test_an_unreadable_answer_keeps_the_last_view_under_a_banner() -> None:
    server = HostileUpdater([honest_then_gone, ATTACKS["the state is a number"], honest_stream])
    seen = Seen()
    follower = Follower(server.url, seen, backoff_s=(0.05, 0.1))
    threading.Thread(target=follower.run, daemon=True).start()
    try:
        seen.wait_for(lambda s, link: link is Link.UNREADABLE)
        seen.wait_for(lambda s, link: link is Link.LIVE and len(seen.updates) > 3)
        links = [link for _, link in seen.updates]
        assert links == [Link.LIVE, Link.RECONNECTING, Link.UNREADABLE, Link.LIVE]
        assert all(snap == HONEST_SEEN for snap, _ in seen.updates)
        banner = view_of(HONEST, "en", link=Link.UNREADABLE).banner
        assert banner == "Cannot read the updater; retrying…"
        assert view_of(None, "en", link=Link.UNREADABLE).title.startswith("Cannot read")
    finally:
        server.close()


class _Trickle(io.RawIOBase):
    """A body handed out ``step`` bytes per read (a server that writes one byte at a time)."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        piece = self._data[self._pos : self._pos + self._step]
        buffer[: len(piece)] = piece
        self._pos += len(piece)
        return len(piece)


def _response(body: bytes, step: int) -> Response:
    head = b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
    a, b = socket.socketpair()
    b.close()
    return Response(a, io.BufferedReader(_Trickle(head + body, step), buffer_size=step))


def test_a_long_line_in_small_pieces_is_split_in_linear_time() -> None:
    """900 KiB in 16-byte pieces: 57,600 pieces. Joining the pending bytes again for each
    piece (the follower before) copies ~26 GB; a bounded buffer scanned once, ~1 MB."""
    line = b"data: " + b"z" * (900 * 1024) + b"\n"
    started = time.monotonic()
    lines = list(_response(line + b"\n", 16).lines())
    assert lines == [line, b"\n"]
    assert time.monotonic() - started < 5


def test_a_line_longer_than_the_bound_is_refused_without_reading_on() -> None:
    body = b"data: " + b"z" * (4 * MAX_MESSAGE)
    with pytest.raises(Unreadable, match="line longer"):
        for _ in _response(body, 4096).lines():
            pass


def test_read_stops_at_the_bound() -> None:
    with pytest.raises(Unreadable, match="answer longer"):
        _response(b"x" * (MAX_MESSAGE + 1), 65536).read()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ([], "is a list"),
        ({"progress": 3}, "no state"),
        ({"state": ""}, "no state"),
        ({"state": "idle", "message": 5}, "message is a int"),
        ({"state": "idle", "progress": True}, "progress is a bool"),
        ({"state": "idle", "eta_s": float("nan")}, "out of range"),
        ({"state": "idle", "total_bytes": -1}, "out of range"),
        ({"state": "idle", "total_bytes": 2**64}, "out of range"),
        ({"state": "downloading", "retry": "soon"}, "retry is a str"),
        ({"state": "downloading", "retry": {"in_s": 1, "attempt": 2, "attempts": 3}}, "reason"),
        (
            {"state": "downloading", "retry": {"reason": "x", "in_s": 1, "attempt": True}},
            "retry.attempt is not a number",
        ),
        (
            {"state": "downloading", "retry": {"reason": "x", "in_s": -1, "attempt": 2}},
            "retry.in_s is out of range",
        ),
    ],
)
def test_read_snapshot_refuses_what_is_not_a_snapshot(data: object, reason: str) -> None:
    with pytest.raises(Unreadable, match=reason):
        read_snapshot(data)


def test_read_snapshot_keeps_a_retry_with_drawable_words() -> None:
    retry = {"reason": "refused\x1b[2J", "in_s": 4.0, "attempt": 3, "attempts": 8}
    snap = read_snapshot({"state": "downloading", "retry": retry})
    assert snap["retry"] == {**retry, "reason": "refused\\x1b[2J"}


def test_read_snapshot_keeps_what_the_view_uses_and_makes_text_drawable() -> None:
    snap = read_snapshot(
        {
            **HONEST,
            "message": "a\x00b\x1b[31mc\u202ed\ud800e\x85f",
            "error": "E" * 5000,
            "unknown": {"deep": [1, 2]},
        }
    )
    assert snap["message"] == "a\\x00b\\x1b[31mc\\u202ed\\ud800e\\x85f"
    assert len(snap["error"]) == MAX_TEXT and snap["error"].endswith("…")
    assert "unknown" not in snap
    assert {k: v for k, v in snap.items() if k not in ("message", "error")} == {
        k: v for k, v in HONEST.items() if k not in ("message", "error") and v is not None
    }
