"""Fault injection for crash tests: kill the process at a named point.

Set ``TOPE_UPDATER_CRASH_AT=<point>[#<n>]`` to make the process ``SIGKILL`` itself the
``n``-th time (default 1st) execution reaches ``crash_point(<point>)``. With the variable
unset the check is one dictionary lookup, cheap enough for hot paths. Points reached are
appended to ``TOPE_UPDATER_CRASH_TRACE`` (a file path) when set, so a harness can list every
point a run passes through and then kill at each one.

``TOPE_UPDATER_CRASH_ONCE=<file>`` makes the kill one-shot across processes: it happens only
if ``<file>`` can be created (and creates it), so a supervisor that restarts the process
with the same environment (systemd, tests/crash/test_self_update_crash.py) does not kill
every later process at the same point too.
"""

from __future__ import annotations

import os
import signal

_ENV_AT = "TOPE_UPDATER_CRASH_AT"
_ENV_TRACE = "TOPE_UPDATER_CRASH_TRACE"
_ENV_ONCE = "TOPE_UPDATER_CRASH_ONCE"
_hits: dict[str, int] = {}


def crash_point(point: str) -> None:
    """Die with SIGKILL here if the environment asks for it (see module docstring)."""
    target = os.environ.get(_ENV_AT)
    trace = os.environ.get(_ENV_TRACE)
    if not target and not trace:
        return
    if trace:
        with open(trace, "a", encoding="utf-8") as fh:
            fh.write(point + "\n")
    if not target:
        return
    name, _, nth = target.partition("#")
    if name != point:
        return
    _hits[point] = _hits.get(point, 0) + 1
    if _hits[point] >= int(nth or "1"):
        once = os.environ.get(_ENV_ONCE)
        if once:
            try:
                os.close(os.open(once, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:
                return  # killed here once already (an earlier process)
        os.kill(os.getpid(), signal.SIGKILL)
