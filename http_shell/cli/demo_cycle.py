"""What ``tope-updater demo`` runs: a complete, visible OTA cycle on a sandbox, no root.

It seeds a sandbox root with factory v1.0.0, builds two packages with the real package
builder (v1.1.0, healthy; v1.2.0, whose health probe fails), serves them from a local,
throttled HTTP server, starts the real updater with its HTTP API on a free loopback port,
and drives it through the API exactly as device-api would: download with a progress bar,
install — while a (simulated) print is running, so the install visibly waits for the
printer to be free (the busy gate, ``busy_probe``) — show the switch, then install the
broken package and show the automatic rollback.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from http_shell.api.app import create_app
from http_shell.cli.client import ApiClient
from http_shell.cli.output import say
from http_shell.cli.watch import watch_progress
from http_shell.daemon.assembly import instance_lock, running_updater
from updater_fsm.config import Config, ServiceControl
from updater_fsm.ops import snapshot_store
from updater_fsm.package import builder

MARKER = ".tope-demo"
PAYLOAD_BYTES = 24 * 1024 * 1024
SERVE_RATE_BPS = 12 * 1024 * 1024
#: The simulated print the first install has to wait for.
PRINT_FILE = "demo_benchy.gcode"
PRINT_SECONDS = 4.0
PRINT_STEP_S = 0.25


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _hello(version: str, *, broken: bool = False) -> str:
    body = "exit 1" if broken else f'echo "hello from v{version}"'
    return f"#!/bin/sh\n# demo service binary v{version}\n{body}\n"


def _write_tree(src: Path, version: str, root: Path, *, broken: bool) -> None:
    (src / "bin").mkdir(parents=True)
    hello = src / "bin" / "hello"
    hello.write_text(_hello(version, broken=broken))
    hello.chmod(0o755)
    (src / "share").mkdir()
    # A sizeable payload so the progress bar has something to show.
    (src / "share" / "firmware.bin").write_bytes(os.urandom(PAYLOAD_BYTES))
    (src / "tope-package.toml").write_text(
        '[modules."bin/hello"]\n'
        'process_name = "hello"\n'
        "restart_order = 1\n"
        f'health = {{ command = "{root}/versions/current/bin/hello", timeout_s = 5 }}\n'
    )


async def _serve_files(files: dict[str, Path]) -> tuple[web.AppRunner, str]:
    """A throttled static server (so the download is watchable)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        data = path.read_bytes()
        resp = web.StreamResponse(headers={"Content-Length": str(len(data))})
        await resp.prepare(request)
        step = SERVE_RATE_BPS // 20
        for offset in range(0, len(data), step):
            await resp.write(data[offset : offset + step])
            await asyncio.sleep(0.05)
        return resp

    app = web.Application()
    app.router.add_get("/files/{name}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/files"


def _say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m" if os.isatty(1) else f"\n==> {text}", flush=True)


def _links(root: Path) -> str:
    parts = []
    for name in ("current", "previous", "factory"):
        link = root / "versions" / name
        parts.append(f"{name} -> {os.readlink(link) if link.is_symlink() else '(none)'}")
    return ", ".join(parts)


def _run_hello(root: Path) -> str:
    out = subprocess.run(
        [str(root / "versions/current/bin/hello")], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or f"(exit {out.returncode})"


class SimulatedPrint:
    """A print job the busy probe can see: a marker file holding its progress in percent.

    The demo's ``busy_probe`` (see :func:`busy_probe_command`) is busy while the file exists
    and shows the percentage; :meth:`run` counts it up and removes the file at 100 %.
    """

    def __init__(self, directory: Path) -> None:
        self.marker = directory / "printing"

    def start(self) -> None:
        self.marker.write_text("0\n")

    async def run(self, seconds: float | None = None) -> None:
        seconds = PRINT_SECONDS if seconds is None else seconds
        steps = max(1, round(seconds / PRINT_STEP_S))
        try:
            for step in range(1, steps):
                await asyncio.sleep(seconds / steps)
                tmp = self.marker.with_suffix(".tmp")
                tmp.write_text(f"{100 * step // steps}\n")
                tmp.replace(self.marker)  # the probe never reads a half-written file
            await asyncio.sleep(seconds / steps)
        finally:
            self.marker.unlink(missing_ok=True)


def busy_probe_command(job: SimulatedPrint) -> str:
    """A shell ``busy_probe`` that reads the simulated print (exit 0 = free)."""
    marker = shlex.quote(str(job.marker))
    return (
        f"if [ -e {marker} ]; then"
        f' echo "printing {PRINT_FILE}, $(cat {marker} 2>/dev/null || echo 0) %"; exit 1;'
        ' fi; echo "printer idle"'
    )


def screen_command(url: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """The demo's ``screen_command`` when a display is present and pygame-ce importable:
    ``tope-updater screen`` in an 800x480 window (of this checkout), closing 10 s after the
    outcome; the updater opens it when each install and each rollback begins. None
    otherwise: the demo then runs in the terminal only, as before."""
    if not (environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")):
        return None
    if importlib.util.find_spec("pygame") is None:
        return None
    checkout = Path(__file__).resolve().parents[2]
    argv = ["env", f"PYTHONPATH={checkout}", sys.executable, "-m", "http_shell.cli", "screen"]
    return shlex.join([*argv, "--window", "800x480", "--close-after", "10", "--url", url])


async def _install(
    client: ApiClient,
    url: str,
    result: builder.BuildResult,
    printing: SimulatedPrint | None = None,
) -> tuple[dict[str, Any], bool]:
    """Download and install ``result``; with ``printing``, a print runs meanwhile.

    Returns the last snapshot and whether the install was seen waiting for the printer
    (always True without ``printing``).
    """
    version = result.manifest.version
    _say(f"POST /download v{version} ({result.size / 1e6:.1f} MB)")
    env = await client.post("/download", result.download_request(f"{url}/{result.path.name}"))
    say(f"    answer: {env}")
    await watch_progress(client, show_outcome=True)
    task = None
    if printing is not None:
        printing.start()
        task = asyncio.create_task(printing.run())
        _say(f"A print is running: {PRINT_FILE} (simulated; it ends in {PRINT_SECONDS:g} s)")
    _say(f"POST /update v{version}")
    env = await client.post("/update", {"version": version})
    say(f"    answer: {env}")
    waited = True
    try:
        if task is not None:
            waited = await _show_wait(client)
            _say("The print finished: the install goes ahead on its own")
        last = await watch_progress(client, show_outcome=True)
    finally:
        if task is not None:
            await task
    return last, waited


async def _show_wait(client: ApiClient) -> bool:
    """Print each answer of the busy probe while the install waits; was it seen waiting?"""
    seen = False
    shown = ""
    async for data in client.events():
        if data.get("state") != "waiting_idle":
            break
        seen = True
        message = str(data.get("message") or "")
        if message != shown:
            say(f"    {data.get('stage')}/{data.get('state')}  {message}")
            shown = message
    return seen


def run_demo(directory: Path, *, keep: bool = False) -> int:
    """Run the demo in ``directory`` (recreated); return the process exit code."""
    directory = directory.resolve()
    if directory.exists():
        if not (directory / MARKER).exists():
            print(f"refusing to reuse {directory}: it was not made by the demo")
            return 2
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).touch()
    try:
        config, built = _prepare(directory)
        ok = asyncio.run(_drive(config, built))
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
    _say("Demo complete" if ok else "Demo FAILED: unexpected outcome")
    return 0 if ok else 1


def _prepare(directory: Path) -> tuple[Config, list[builder.BuildResult]]:
    root = directory / "root"
    port = _free_port()
    config = Config(
        root=root,
        state_dir=directory / "state",
        service_control=ServiceControl.NONE,
        port=port,
        screen_command=screen_command(f"http://127.0.0.1:{port}"),
        settle_s=0.5,
        busy_probe=busy_probe_command(SimulatedPrint(directory)),
        busy_poll_s=0.5,
        busy_probe_timeout_s=5.0,
    )
    _say(f"Seeding a sandbox device at {root} with factory version v1.0.0")
    factory_src = directory / "factory"
    (factory_src / "bin").mkdir(parents=True)
    (factory_src / "bin" / "hello").write_text(_hello("1.0.0"))
    (factory_src / "bin" / "hello").chmod(0o755)
    snapshot_store.init_layout(root, "1.0.0", factory_src)
    print(f"    {_links(root)}\n    bin/hello says: {_run_hello(root)}")
    print("    busy gate: an install waits while busy_probe exits non-zero:")
    print(f"      {config.busy_probe}")
    if config.screen_command:
        print("    the progress screen opens in a window at each install (screen_command):")
        print(f"      {config.screen_command}")

    _say("Building packages with `tope-updater package build`")
    built = []
    for version, broken in (("1.1.0", False), ("1.2.0", True)):
        src = directory / f"src-{version}"
        _write_tree(src, version, root, broken=broken)
        result = builder.build_package(
            src, version=version, output=directory / f"update-{version}.zip", root=root
        )
        built.append(result)
        label = "health probe will FAIL" if broken else "healthy"
        print(f"    {result.path.name}: {result.size} bytes, md5 {result.md5} ({label})")
    return config, built


async def _drive(config: Config, built: list[builder.BuildResult]) -> bool:
    root = config.root
    file_server, url = await _serve_files({r.path.name: r.path for r in built})
    ok = True
    try:
        with instance_lock(config.state_path):
            async with running_updater(config, report=False) as updater:
                api = web.AppRunner(create_app(config, updater.engine), access_log=None)
                await api.setup()
                await web.TCPSite(api, config.host, config.port).start()
                print(f"\n    updater API on http://{config.host}:{config.port}/api/v1.0")
                try:
                    async with ApiClient(f"http://{config.host}:{config.port}") as client:
                        printing = SimulatedPrint(config.root.parent)
                        last, waited = await _install(client, url, built[0], printing)
                        ok &= waited and last.get("stage") == "success"
                        _say("Switched")
                        print(f"    {_links(root)}\n    bin/hello says: {_run_hello(root)}")

                        last, _ = await _install(client, url, built[1])
                        ok &= str(last.get("error", "")).startswith("ROLLBACK_LEVEL_1_SUCCESS")
                        _say("The broken v1.2.0 failed its health check and was rolled back")
                        print(f"    {_links(root)}\n    bin/hello says: {_run_hello(root)}")

                        env = await client.get("/versions")
                        _say("GET /versions")
                        say(f"    {env.get('data')}")
                finally:
                    await api.cleanup()
    finally:
        await file_server.cleanup()
    return ok


__all__ = ["run_demo"]
