"""``tope-updater serve`` imports only what an idle updater needs (issue 22).

A module imported at start stays resident for the life of the process: zstd for delta
patches, the fleet (DDI) client when ``ddi_url`` is unset, ``cryptography`` for
signatures, ``tarfile`` for self-update bundles, the screen (pygame) are imported by the
work that needs them. The real ``serve`` entry point runs in a fresh interpreter; once its
API answers, a thread of that same process lists which of these modules are loaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: Loaded only by the work that needs them. (``backports.zstd`` is not listed: aiohttp
#: itself imports it when installed, for the zstd content coding; nor is the ``screen``
#: command's argument parser, :mod:`http_shell.cli.screen`, which imports the display
#: only when that command runs.)
DEFERRED = (
    "pyzstd",
    "updater_fsm.package.delta",
    "fleet_ddi",
    "cryptography",
    "tarfile",
    "pygame",
    "screen",
    "updater_fsm.package.builder",
    "ctypes",  # a self-update bundle's library check
)

#: Runs ``tope-updater serve`` as the console script does; a thread waits for ``/healthz``,
#: prints the deferred modules that are loaded, and stops the updater with SIGTERM.
_SERVE_AND_LOOK = """
import os, runpy, signal, sys, threading, time, urllib.request

port, deferred = sys.argv[1], sys.argv[2].split()

def look():
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1.0/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        os._exit(3)
    loaded = sorted(
        name for name in list(sys.modules)
        if any(name == d or name.startswith(d + ".") for d in deferred)
    )
    print("LOADED " + " ".join(loaded), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=look, daemon=True).start()
sys.argv = ["tope-updater", *sys.argv[3:]]
runpy.run_module("http_shell.cli", run_name="__main__")
"""


def test_serve_idles_without_the_modules_of_work_it_has_not_done(
    tmp_path: Path, serve_port: int
) -> None:
    env = {**os.environ, "TOPE_UPDATER_DEVICE_API_URL": "http://127.0.0.1:9"}
    env.pop("TOPE_UPDATER_DDI_URL", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _SERVE_AND_LOOK,
            str(serve_port),
            " ".join(DEFERRED),
            "serve",
            "--sandbox",
            str(tmp_path / "sb"),
            "--port",
            str(serve_port),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("LOADED")]
    assert lines, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert lines[0].split()[1:] == [], lines[0]
    assert proc.returncode == 0, proc.stderr[-3000:]
