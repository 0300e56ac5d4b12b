"""Installing a package file of the device: ``file://`` URLs in the API and
``tope-updater install FILE`` against a real ``serve``.

The API accepts ``file://`` only under ``local_package_dirs`` and answers everything else
``VALIDATION_ERROR`` naming the key; the CLI goes from a signed file to a running version
in one command, refusing what is not a package file before it talks to the updater.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from tests.http_shell.conftest import ClientFactory, Rig, body, call
from updater_fsm.core import effects as fx
from updater_fsm.package import builder

REPO = Path(__file__).resolve().parents[2]


# ---- the API -----------------------------------------------------------------------------
@pytest.fixture
def stick(tmp_path: Path) -> Path:
    path = tmp_path / "media" / "usb"
    path.mkdir(parents=True)
    (path / "up.zip").write_bytes(b"z" * 1000)
    return path


async def _download(client: TestClient[object, object], url: str) -> dict[str, object]:
    return await call(client, "POST", "/download", json=body(package_url=url))


async def test_a_file_url_under_the_configured_directories_starts_a_copy(
    make_client: ClientFactory, rig: Rig, stick: Path
) -> None:
    client = await make_client(local_package_dirs=(stick.parent,))
    env = await _download(client, (stick / "up.zip").as_uri())
    assert env["code"] == 200, env
    (start,) = rig.runner.of(fx.StartDownload)
    assert start.request.package_url == (stick / "up.zip").as_uri()


async def test_file_urls_are_refused_without_configured_directories(
    make_client: ClientFactory, rig: Rig, stick: Path
) -> None:
    client = await make_client()
    env = await _download(client, (stick / "up.zip").as_uri())
    assert env["code"] == 400
    assert env["msg"] == (
        "VALIDATION_ERROR: package_url is a file:// URL: those are accepted only under"
        " local_package_dirs, and none is configured"
    )
    assert not rig.runner.of(fx.StartDownload)


def _hostile(kind: str, stick: Path) -> Path:
    """A path on (or off) the stick that must not be installed from."""
    path = stick / f"{kind}.zip"
    if kind == "outside":
        return Path("/etc/passwd")
    if kind == "link-out":
        path.symlink_to("/etc/shadow")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "sparse-10GB":
        with path.open("wb") as fh:
            fh.truncate(10 * 1024**3)
    return path  # "missing": never created


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("outside", "which is outside local_package_dirs"),
        ("link-out", "which resolves to /etc/shadow, outside local_package_dirs"),
        ("fifo", "which is a FIFO, not a regular file"),
        ("directory", "which is a directory, not a regular file"),
        ("sparse-10GB", f"{10 * 1024**3} bytes: larger than any package may be"),
        ("missing", "which does not exist"),
    ],
)
async def test_hostile_file_urls_are_validation_errors(
    make_client: ClientFactory, rig: Rig, stick: Path, kind: str, words: str
) -> None:
    target = _hostile(kind, stick)
    client = await make_client(local_package_dirs=(stick,))
    env = await _download(client, target.as_uri())
    assert env["code"] == 400, env
    assert str(env["msg"]).startswith(f"VALIDATION_ERROR: package_url names {target}")
    assert words in str(env["msg"])
    assert not rig.runner.of(fx.StartDownload)


async def test_a_device_node_is_refused_even_under_a_configured_directory(
    make_client: ClientFactory, rig: Rig
) -> None:
    client = await make_client(local_package_dirs=(Path("/dev"),))
    env = await _download(client, "file:///dev/zero")
    assert env["msg"] == (
        "VALIDATION_ERROR: package_url names /dev/zero, which is a character device,"
        " not a regular file"
    )


# ---- the CLI against a real serve --------------------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOPE_UPDATER_")}
    env["PYTHONPATH"] = str(REPO)
    env["TOPE_UPDATER_DEVICE_API_URL"] = "http://127.0.0.1:9"
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "http_shell.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "key.pem", tmp_path / "key.pub.pem"
    builder.generate_keypair(private, public)
    return private, public


@pytest.fixture
def device(tmp_path: Path, serve_port: int, keys: tuple[Path, Path]) -> Iterator[dict[str, str]]:
    """A sandbox ``serve`` that trusts ``keys`` and takes packages from ``<tmp>/media``."""
    (tmp_path / "media").mkdir(exist_ok=True)
    env = _env(
        TOPE_UPDATER_PORT=str(serve_port),
        TOPE_UPDATER_TRUSTED_KEY=str(keys[1]),
        TOPE_UPDATER_LOCAL_PACKAGE_DIRS=str(tmp_path / "media"),
    )
    argv = [sys.executable, "-m", "http_shell.cli", "serve", "--sandbox", str(tmp_path / "sb")]
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", serve_port), 1):
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "serve did not listen"
                time.sleep(0.05)
        yield env
    finally:
        proc.terminate()
        proc.wait(15)


def _package(
    tmp_path: Path, version: str, *, sign_key: Path | None, where: str = "media/usb"
) -> Path:
    src = tmp_path / f"src-{version}" / "bin"
    src.mkdir(parents=True)
    (src / "app.txt").write_text(f"app {version}\n")
    out = tmp_path / where / f"tope-{version}.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    builder.build_package(
        src.parent, version=version, output=out, root=tmp_path / "sb" / "root", sign_key=sign_key
    )
    return out


def _versions(env: dict[str, str]) -> dict[str, object]:
    result = cli("versions", "--json", env=env)
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)["data"]
    return data


def test_install_takes_a_signed_file_to_a_running_version(
    device: dict[str, str], tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    package = _package(tmp_path, "1.1.0", sign_key=keys[0])
    assert builder.signature_path(package).exists()  # package build wrote it beside
    result = cli("install", str(package), env=device)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "copying tope-1.1.0.zip (v1.1.0) into the updater's download area",
        "verified v1.1.0; installing",
        "installed v1.1.0: it is running now",
    ]
    assert _versions(device)["current"] == "1.1.0"
    root = tmp_path / "sb" / "root" / "versions" / "current"
    assert (root / "bin" / "app.txt").read_text() == "app 1.1.0\n"
    history = json.loads(cli("history", "--json", env=device).stdout)["data"]["entries"]
    assert (history[0]["to_version"], history[0]["outcome"], history[0]["source"]) == (
        "1.1.0",
        "success",
        "file",
    )


def test_an_unsigned_file_is_refused_when_a_key_is_trusted(
    device: dict[str, str], tmp_path: Path
) -> None:
    package = _package(tmp_path, "1.1.0", sign_key=None)
    result = cli("install", str(package), env=device)
    assert result.returncode == 1
    assert "install failed: SIGNATURE_REQUIRED" in result.stdout
    assert _versions(device)["current"] == "1.0.0"


def test_a_file_outside_the_local_package_dirs_is_refused_naming_the_key(
    device: dict[str, str], tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    package = _package(tmp_path, "1.1.0", sign_key=keys[0], where="home")
    result = cli("install", str(package), env=device)
    assert result.returncode == 1
    assert "outside local_package_dirs" in result.stderr
    assert _versions(device)["current"] == "1.0.0"


def test_what_is_not_a_package_file_is_refused_before_the_updater_is_asked(
    tmp_path: Path,
) -> None:
    env = _env(TOPE_UPDATER_PORT="9")  # nothing listens: the CLI must not even try
    fifo = tmp_path / "fifo.zip"
    os.mkfifo(fifo)
    sparse = tmp_path / "sparse.zip"
    with sparse.open("wb") as fh:
        fh.truncate(10 * 1024**3)
    cases = {
        fifo: f"tope-updater: {fifo} is a FIFO, not a package file",
        Path("/dev/zero"): "tope-updater: /dev/zero is a character device, not a package file",
        tmp_path: f"tope-updater: {tmp_path} is a directory, not a package file",
        sparse: f"tope-updater: {sparse} is not an update package: archive:",
        tmp_path / "none.zip": f"tope-updater: {tmp_path / 'none.zip'}: no such file",
    }
    for path, said in cases.items():
        started = time.monotonic()
        result = cli("install", str(path), env=env, timeout=30)
        assert result.returncode == 2, (path, result.stderr)
        assert result.stderr.startswith(said), (path, result.stderr)
        assert time.monotonic() - started < 20


# ---- usb-install: what tope-updater-usb@.service runs when a stick is mounted ------------
def test_usb_install_refuses_without_a_trusted_key(tmp_path: Path) -> None:
    result = cli("usb-install", str(tmp_path), env=_env(TOPE_UPDATER_PORT="9"))
    assert result.returncode == 2
    assert "installs only signed packages, and no trusted_key is configured" in result.stderr


def test_usb_install_takes_the_newest_signed_package_once(
    device: dict[str, str], tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    stick = tmp_path / "media" / "usb"
    unsigned = _package(tmp_path, "1.3.0", sign_key=None)
    result = cli("usb-install", str(stick), env=device)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"skipping {unsigned.name}: no {unsigned.name}.sig beside it (not signed)",
        f"no signed package (NAME.zip with NAME.zip.sig) at the top of {stick}: nothing to install",
    ]
    _package(tmp_path, "1.1.0", sign_key=keys[0])
    _package(tmp_path, "1.2.0", sign_key=keys[0])
    result = cli("usb-install", str(stick), env=device)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "installed v1.2.0: it is running now"
    assert _versions(device)["current"] == "1.2.0"
    # the stick stays in: mounted again at the next boot, it installs nothing
    result = cli("usb-install", str(stick), env=device)
    assert result.returncode == 0
    assert result.stdout.splitlines()[-1] == f"v1.2.0 on {stick} already runs: nothing to install"
