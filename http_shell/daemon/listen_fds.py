"""Socket activation (``sd_listen_fds(3)``): the listening socket systemd passes, if any.

A socket unit (``tope-updater.socket``) holds the API's port open for as long as it is
active; when it starts the service it passes the socket as file descriptor 3
(``SD_LISTEN_FDS_START``) and sets ``$LISTEN_FDS`` (how many descriptors, from 3 on) and
``$LISTEN_PID`` (the PID they are meant for). This is the whole protocol, in a few lines
rather than a dependency (``systemd-python`` needs libsystemd's headers to build):

* the descriptors are ours only when ``$LISTEN_PID`` is our PID: a process that inherited
  the variables from its parent must not touch descriptor 3;
* the variables (and ``$LISTEN_FDNAMES``) are removed from the environment either way, so
  that no child (a post_cmd, systemctl) believes the sockets are meant for it;
* the descriptors get ``FD_CLOEXEC``: no child inherits the listening socket either.

Without a socket passed (``./dev.sh run``, the tests, the demo) the daemon binds the port
itself, as before.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import MutableMapping

import structlog

_log = structlog.get_logger(__name__)

#: The first descriptor systemd passes (``SD_LISTEN_FDS_START``).
LISTEN_FDS_START = 3
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class BadListenSocket(RuntimeError):
    """systemd passed descriptors, but not a listening TCP socket."""


def listen_fds(env: MutableMapping[str, str] | None = None) -> list[int]:
    """The descriptors passed to this process, as ``sd_listen_fds(1)`` finds them.

    Args:
        env: the environment to read and clean (default ``os.environ``).

    Returns:
        ``[3, 4, …]`` when ``$LISTEN_PID`` is this process and ``$LISTEN_FDS`` a positive
        number, else ``[]``. The variables are removed from ``env`` in every case.
    """
    env = os.environ if env is None else env
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    for name in _VARIABLES:
        env.pop(name, None)
    if pid.strip() != str(os.getpid()):
        return []
    try:
        n = int(count)
    except ValueError:
        return []
    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + max(n, 0)))
    for fd in fds:
        try:
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.fcntl(fd, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)
        except OSError:
            return []  # not open: whoever set the variables did not pass the descriptors
    return fds


def activation_socket(env: MutableMapping[str, str] | None = None) -> socket.socket | None:
    """The listening TCP socket systemd passed, or None when it passed none.

    Raises:
        BadListenSocket: descriptors were passed, but the first is not a listening
            ``SOCK_STREAM`` socket of ``AF_INET``/``AF_INET6`` (a socket unit that is not
            the shipped one: ``ListenDatagram=``, ``Accept=yes`` …).
    """
    fds = listen_fds(env)
    if not fds:
        return None
    if len(fds) > 1:
        _log.warning("systemd passed several sockets: serving the first", fds=len(fds))
        for extra in fds[1:]:
            os.close(extra)
    try:
        sock = socket.socket(fileno=fds[0])
    except OSError as exc:
        raise BadListenSocket(f"descriptor {fds[0]} from systemd is not a socket: {exc}") from None
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if (
        sock.type != socket.SOCK_STREAM
        or sock.family not in (socket.AF_INET, socket.AF_INET6)
        or not listening
    ):
        sock.close()
        raise BadListenSocket(
            f"descriptor {fds[0]} from systemd is not a listening TCP socket"
            " (the socket unit needs ListenStream=HOST:PORT and Accept=no)"
        )
    sock.setblocking(False)
    return sock
