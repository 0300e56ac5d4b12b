"""The systemd notification protocol (``sd_notify(3)``), spoken directly, no dependency.

systemd starts a ``Type=notify`` service with ``$NOTIFY_SOCKET`` naming an ``AF_UNIX``
datagram socket (a path, or an abstract-namespace name written with a leading ``@``). The
service sends newline-separated ``KEY=VALUE`` assignments to it:

* ``READY=1`` once it serves (the unit only becomes ``active`` then, so ``systemctl start``
  waits for the HTTP API to listen);
* ``STOPPING=1`` when it begins to shut down;
* ``WATCHDOG=1`` regularly when the unit has ``WatchdogSec=``: systemd passes the timeout
  as ``$WATCHDOG_USEC`` (and the PID it is meant for as ``$WATCHDOG_PID``) and kills and
  restarts the service when a ping is overdue;
* ``STATUS=<text>`` a one-line status shown by ``systemctl status``.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a cheap no-op, so the daemon can
call these functions unconditionally.

The socket is opened once per address and kept (issue 22): a ping needs no new file
descriptor, so the watchdog is still fed when the process has run out of them (a flood of
connections at ``LimitNOFILE`` used to make every ping fail with EMFILE, and systemd then
killed a service that was only busy). A send that fails on a kept socket (systemd
re-executed and bound its socket anew) drops it and tries once more on a new one.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Mapping

import structlog

_log = structlog.get_logger(__name__)

#: The kept sockets, by address (the process only ever uses one; tests use several).
_sockets: dict[str, socket.socket] = {}
_sockets_lock = threading.Lock()


def _send(address: str, data: bytes) -> None:
    """Send ``data`` on the kept socket for ``address``, opening (or re-opening) it."""
    with _sockets_lock:
        for attempt in (1, 2):
            sock = _sockets.get(address)
            fresh = sock is None
            if sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                try:
                    sock.setblocking(False)
                    sock.connect(address)
                except OSError:
                    sock.close()
                    raise
                _sockets[address] = sock
            try:
                sock.send(data)
                return
            except BlockingIOError:
                raise  # the manager's queue is full: keep the socket, drop this message
            except OSError:
                del _sockets[address]
                sock.close()
                if fresh or attempt == 2:
                    raise


def close_sockets() -> None:
    """Close the kept sockets (tests; a process that exits needs not)."""
    with _sockets_lock:
        for sock in _sockets.values():
            sock.close()
        _sockets.clear()


def _address(env: Mapping[str, str]) -> str | None:
    """The socket address from ``NOTIFY_SOCKET``: a path, or ``\\0name`` for ``@name``."""
    raw = env.get("NOTIFY_SOCKET", "")
    if raw.startswith("@") and len(raw) > 1:
        return "\0" + raw[1:]  # abstract namespace: Linux spells it with a leading NUL
    if raw.startswith("/"):
        return raw
    return None  # unset, empty, or a transport we do not speak (e.g. "vsock:…")


def notify(state: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1\\nSTATUS=listening"``) to the service manager.

    Never raises and never blocks: the socket is non-blocking, so a service manager that
    does not drain its queue costs a dropped message, not a stuck event loop. The socket
    is opened on the first call and kept (see the module docstring).

    Args:
        state: newline-separated ``KEY=VALUE`` assignments.
        env: the environment to read ``NOTIFY_SOCKET`` from (default ``os.environ``).

    Returns:
        True when the datagram was sent; False when there is no (usable) notify socket or
        the send failed.
    """
    address = _address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        _send(address, state.encode("utf-8"))
    except OSError as exc:
        _log.warning("sd_notify failed", state=state.split("\n", 1)[0], error=str(exc))
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """How often to send ``WATCHDOG=1``: half of ``$WATCHDOG_USEC``, in seconds.

    Half the timeout is what ``sd_watchdog_enabled(3)`` recommends: one late ping (a slow
    fsync, a busy CPU) still arrives before systemd gives up on the service.

    Args:
        env: the environment to read (default ``os.environ``).

    Returns:
        The ping interval in seconds, or None when the watchdog is not enabled for this
        process: ``WATCHDOG_USEC`` missing, not a positive integer, or ``WATCHDOG_PID`` set
        to another process (a child that inherited the environment must not ping).
    """
    env = os.environ if env is None else env
    pid = env.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2_000_000


async def watchdog_loop(
    interval: float | None = None, *, env: Mapping[str, str] | None = None
) -> None:
    """Ping the watchdog every ``interval`` seconds until cancelled.

    The pings are sent from the event loop on purpose: a loop that is blocked or starved
    stops pinging, and systemd restarts the updater, which then resumes from its journal.

    Args:
        interval: seconds between pings (default :func:`watchdog_interval`); when there is
            none the coroutine returns at once.
        env: the environment to read (default ``os.environ``).
    """
    if interval is None:
        interval = watchdog_interval(env)
    if interval is None:
        return
    _log.info("watchdog enabled", ping_interval_s=interval)
    while True:
        notify("WATCHDOG=1", env=env)
        await asyncio.sleep(interval)
