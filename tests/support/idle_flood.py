"""A process holding many idle TCP connections to a server: connects, never sends a byte.

``python -m tests.support.idle_flood HOST PORT COUNT`` opens ``COUNT`` connections (raising
its own descriptor limit to fit them), prints ``holding N`` (N: connections whose connect
completed), and keeps them all until its stdin closes; then it prints how many of them the
server had closed meanwhile (EOF or reset seen) and exits. Connections the server closes
are not reopened: a flood that the server keeps shedding is a measure of its eviction, not
of the helper's persistence.

Run it as its own process (as an attacker on the network would be): its descriptors and
CPU are not the server's.
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need + 64 if hard == resource.RLIM_INFINITY else min(hard, need + 64)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--connect-timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    _raise_nofile(args.count)
    held: list[socket.socket] = []
    for _ in range(args.count):
        try:
            held.append(socket.create_connection((args.host, args.port), args.connect_timeout))
        except OSError:
            continue  # backlog full, or reset: the server is shedding; go on
    print(f"holding {len(held)}", flush=True)
    sys.stdin.read()
    closed = sum(_closed_by_peer(sock) for sock in held)
    for sock in held:
        sock.close()
    print(f"closed by server {closed}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
