"""Run a snippet in a new Python interpreter that reports its own peak memory.

Memory claims are measured in a fresh process with ``VmHWM`` (the peak RSS of its own
address space), read before and after the work. Not ``ru_maxrss``: Linux carries the
parent's peak into a child across fork/vfork + exec, so a big test process would hide the
child's growth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

_PEAK_KB = textwrap.dedent(
    """
    def peak_kb():
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    """
)


def run_measured(body: str, *, timeout: float) -> dict[str, Any]:
    """Run ``body`` (a script that may call ``peak_kb()`` and prints one JSON object last).

    Returns that object; a failing script raises ``CalledProcessError``.
    """
    script = _PEAK_KB + textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, check=True, timeout=timeout
    )
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result
