"""docs/FLEET.md's "Try it" path, through the helper a user runs (issue 23): a target made
with ``python -m tests.support.hawkbit --add-target`` (what ``--serve --target`` prints), a
real ``tope-updater serve --sandbox`` configured with exactly the lines it printed, a
package built with ``tope-updater package build``, and ``--deploy`` assigning it and
following the action until the device has installed it."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.support.hawkbit import HawkbitServer

REPO = Path(__file__).resolve().parents[2]


def _helper(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.support.hawkbit", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _updater(*args: str) -> list[str]:
    return [sys.executable, "-m", "http_shell.cli", *args]


def test_the_recipe_installs_the_deployed_version(
    tmp_path: Path, hawkbit: HawkbitServer, serve_port: int
) -> None:
    cid = f"recipe-{uuid.uuid4().hex[:8]}"
    made = _helper("--url", hawkbit.base_url, "--add-target", cid)
    assert made.returncode == 0, made.stderr
    config_lines = [line for line in made.stdout.splitlines() if line.startswith("ddi_")]
    assert [line.split()[0] for line in config_lines] == [
        "ddi_url",
        "ddi_tenant",
        "ddi_controller_id",
        "ddi_token",
    ], made.stdout
    assert f"--deploy PACKAGE.zip --target {cid}" in made.stdout

    # The device: its config is the printed lines plus its own port (and a short poll).
    config = tmp_path / "config.toml"
    config.write_text(
        "\n".join([f"port = {serve_port}", "ddi_poll_min_s = 1", *config_lines]) + "\n"
    )
    log = (tmp_path / "serve.log").open("wb")
    device = subprocess.Popen(
        _updater("serve", "--sandbox", str(tmp_path / "dev"), "--config", str(config)),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    try:
        src = tmp_path / "src" / "bin"
        src.mkdir(parents=True)
        (src / "hello").write_text('#!/bin/sh\necho "hello from 1.1.0"\n')
        (src / "hello").chmod(0o755)
        package = tmp_path / "update-1.1.0.zip"
        subprocess.run(
            _updater(
                "package",
                "build",
                str(tmp_path / "src"),
                "--version",
                "1.1.0",
                "--root",
                str(tmp_path / "dev" / "root"),
                "-o",
                str(package),
            ),
            check=True,
            capture_output=True,
            cwd=REPO,
        )
        t0 = time.monotonic()
        deployed = _helper(
            "--url", hawkbit.base_url, "--deploy", str(package), "--target", cid, "--timeout", "90"
        )
        assert deployed.returncode == 0, (deployed.stdout, deployed.stderr)
        out = deployed.stdout
        assert f"update-1.1.0.zip (version 1.1.0) assigned to {cid}: action" in out, out
        assert "finished: Update to v1.1.0 complete | running 1.1.0" in out, out
        assert "ended: finished" in out and '"current_version": "1.1.0"' in out, out
        assert time.monotonic() - t0 < 90
        current = tmp_path / "dev" / "root" / "versions" / "current"
        assert current.resolve().name == "v1.1.0"
        hello = subprocess.run([str(current / "bin" / "hello")], capture_output=True, text=True)
        assert hello.stdout == "hello from 1.1.0\n"
    finally:
        device.terminate()
        device.wait(30)
        log.close()


def test_the_helper_says_in_one_line_what_is_wrong(tmp_path: Path, serve_port: int) -> None:
    """No hawkBit needed: a missing --url, a missing package, nobody at the URL."""
    usage = _helper("--deploy", "update.zip", "--target", "printer-0001")
    assert usage.returncode == 2 and "need --url (what --serve printed)" in usage.stderr
    url = f"http://127.0.0.1:{serve_port}"  # free: nobody listens there
    missing = _helper("--url", url, "--deploy", str(tmp_path / "nope.zip"), "--target", "p")
    assert missing.returncode == 2, missing
    assert missing.stderr.startswith("error: FileNotFoundError"), missing.stderr
    assert len(missing.stderr.splitlines()) == 1 and not missing.stdout
    down = _helper("--url", url, "--add-target", "printer-0001")
    assert down.returncode == 2 and "Connection refused" in down.stderr, down.stderr
