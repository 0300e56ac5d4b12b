"""A real Eclipse hawkBit server for the tests: build it once, start it, talk to it, stop it.

Maven Central has no ``hawkbit-update-server`` artifact, so ``tests/hawkbit/pom.xml``
assembles one from hawkBit 0.3.0M7's DDI and Management API starters, H2 and a small
Spring Boot main class (see docs/FLEET.md). This module

* builds ``tests/hawkbit/target/hawkbit-test-server.jar`` with Maven when it is missing or
  older than the POM or the sources (:func:`build`; the Maven cache, ``~/.m2/repository`` or
  ``$HAWKBIT_MAVEN_REPO``, makes later builds fast and offline);
* starts it on ``127.0.0.1`` on a free port, with its H2 database in memory and its artifacts
  in a temporary directory, and waits until the Management API answers
  (:class:`HawkbitServer`, also a context manager);
* offers the few Management API calls the tests need (target with a security token, software
  module, artifact upload, distribution set, assignment) and a DDI ``GET`` with
  ``Authorization: TargetToken <token>``.

``python -m tests.support.hawkbit --check`` runs all of it once and prints what the DDI
controller resource answered, with the build time, the start time and the java RSS.
``--serve [--target NAME]`` runs one until Ctrl-C and prints what a device's config needs
(and the target's token); ``--url URL --add-target NAME`` and ``--url URL --deploy PACKAGE
--target NAME`` use the same Management API client (:class:`Management`) on a server that
runs (docs/FLEET.md, "Try it").

Anything that keeps hawkBit from being built or started raises :class:`HawkbitUnavailable`
with the exact error; there is no stand-in server.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

HAWKBIT_DIR = Path(__file__).resolve().parent.parent / "hawkbit"
JAR = HAWKBIT_DIR / "target" / "hawkbit-test-server.jar"
TENANT = "DEFAULT"
# Must match tests/hawkbit/src/main/resources/application.properties.
MGMT_USER = "tester"
MGMT_PASSWORD = "tester-password"
# Less JIT work at start: a short-lived test server starts faster with C1 only.
DEFAULT_JVM_ARGS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")

JsonValue = Any
#: Where progress goes (``print`` for the command line; silent by default).
Say = Callable[[str], None]


class HawkbitUnavailable(RuntimeError):
    """hawkBit could not be built or started here; the message holds the exact error."""


@dataclass(frozen=True)
class BuildResult:
    jar: Path
    built: bool
    seconds: float


def _newest_source_mtime() -> float:
    paths = [HAWKBIT_DIR / "pom.xml", *(HAWKBIT_DIR / "src").rglob("*")]
    return max(p.stat().st_mtime for p in paths if p.is_file())


def _quiet(_text: str) -> None:
    pass


def build(force: bool = False, timeout: float = 900.0, say: Say = _quiet) -> BuildResult:
    """Build the server jar with Maven unless an up-to-date one is already there (``say``
    is told when a build starts: it takes a minute the first time). One build at a time:
    two Mavens writing one ``target/`` (two test workers, a test and ``--serve``) leave a
    broken jar ("zip file is empty")."""
    HAWKBIT_DIR.joinpath("target").mkdir(exist_ok=True)
    with open(HAWKBIT_DIR / "target" / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        return _build(force, timeout, say)


def _build(force: bool, timeout: float, say: Say) -> BuildResult:
    t0 = time.monotonic()
    if not force and JAR.exists() and JAR.stat().st_mtime >= _newest_source_mtime():
        return BuildResult(JAR, False, time.monotonic() - t0)
    mvn = shutil.which("mvn")
    if mvn is None:
        raise HawkbitUnavailable("mvn not found on PATH")
    cmd = [mvn, "-B", "-q", "package", "-DskipTests"]
    repo = os.environ.get("HAWKBIT_MAVEN_REPO")
    if repo:
        cmd.append(f"-Dmaven.repo.local={repo}")
    say(
        "building hawkBit with Maven (first run fetches ~80 MB into "
        f"{repo or '~/.m2/repository'}, ~1 min; later runs a few seconds)…"
    )
    try:
        proc = subprocess.run(
            cmd, cwd=HAWKBIT_DIR, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise HawkbitUnavailable(f"{' '.join(cmd)} timed out after {timeout:.0f} s") from exc
    if proc.returncode != 0 or not JAR.exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise HawkbitUnavailable(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
    return BuildResult(JAR, True, time.monotonic() - t0)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies, however it dies (a CI
    timeout, a SIGKILL), so no hawkBit outlives the tests that started it."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_kib(pid: int) -> int | None:
    """Resident set size of a process in KiB (Linux), None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


@dataclass
class HttpResult:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> JsonValue:
        return json.loads(self.body) if self.body else None


def _request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> HttpResult:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return HttpResult(resp.status, resp.read(), dict(resp.headers.items()))
    except urllib.error.HTTPError as exc:
        return HttpResult(exc.code, exc.read(), dict(exc.headers.items()))


class Management:
    """hawkBit's Management API (user :data:`MGMT_USER`) and a DDI ``GET``, at ``base_url``:
    the calls the tests and ``--deploy`` make."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    # -- Management API ----------------------------------------------------------------------

    def mgmt(
        self,
        method: str,
        path: str,
        payload: JsonValue = None,
        *,
        body: bytes | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> HttpResult:
        auth = base64.b64encode(f"{MGMT_USER}:{MGMT_PASSWORD}".encode()).decode()
        headers = {"Authorization": f"Basic {auth}", "Accept": "application/hal+json"}
        if payload is not None:
            body = json.dumps(payload).encode()
        if body is not None:
            headers["Content-Type"] = content_type
        return _request(self.base_url + path, method, body, headers, timeout)

    def _mgmt_ok(self, method: str, path: str, payload: JsonValue = None, **kw: Any) -> JsonValue:
        res = self.mgmt(method, path, payload, **kw)
        if res.status not in (200, 201):
            raise RuntimeError(f"{method} {path}: {res.status} {res.body[:500]!r}")
        return res.json()

    def create_target(self, controller_id: str, security_token: str) -> JsonValue:
        target = {
            "controllerId": controller_id,
            "name": controller_id,
            "securityToken": security_token,
        }
        return self._mgmt_ok("POST", "/rest/v1/targets", [target])[0]

    def create_software_module(self, name: str, version: str, type_: str = "os") -> int:
        sm = [{"name": name, "version": version, "type": type_}]
        module_id: int = self._mgmt_ok("POST", "/rest/v1/softwaremodules", sm)[0]["id"]
        return module_id

    def upload_artifact(self, module_id: int, filename: str, data: bytes) -> JsonValue:
        boundary = uuid.uuid4().hex
        body = (
            (
                f"--{boundary}\r\n"
                f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return self._mgmt_ok(
            "POST",
            f"/rest/v1/softwaremodules/{module_id}/artifacts",
            body=body,
            content_type=f"multipart/form-data; boundary={boundary}",
        )

    def create_distribution_set(
        self, name: str, version: str, module_ids: list[int], type_: str = "os"
    ) -> int:
        ds = [
            {
                "name": name,
                "version": version,
                "type": type_,
                "modules": [{"id": m} for m in module_ids],
            }
        ]
        ds_id: int = self._mgmt_ok("POST", "/rest/v1/distributionsets", ds)[0]["id"]
        return ds_id

    def assign(self, ds_id: int, controller_id: str) -> JsonValue:
        return self._mgmt_ok(
            "POST", f"/rest/v1/distributionsets/{ds_id}/assignedTargets", [{"id": controller_id}]
        )

    def set_polling(self, interval: str = "00:00:01") -> None:
        """The ``config.polling.sleep`` every device is told (the floor is set to 1 s in
        application.properties; hawkBit's own floor is 30 s)."""
        self._mgmt_ok("PUT", "/rest/v1/system/configs/pollingTime", {"value": interval})

    def release(self, name: str, version: str, filename: str, data: bytes) -> int:
        """A software module with ``data`` as its artifact in a distribution set: its id."""
        module_id = self.create_software_module(name, version)
        self.upload_artifact(module_id, filename, data)
        return self.create_distribution_set(name, version, [module_id])

    def assign_action(self, ds_id: int, controller_id: str, **options: Any) -> str:
        """Assign ``ds_id`` to one target (``type``, ``maintenanceWindow``…); the action id."""
        result = self._mgmt_ok(
            "POST",
            f"/rest/v1/distributionsets/{ds_id}/assignedTargets",
            [{"id": controller_id, **options}],
        )
        return str(result["assignedActions"][0]["id"])

    def action(self, controller_id: str, action_id: str) -> JsonValue:
        return self._mgmt_ok("GET", f"/rest/v1/targets/{controller_id}/actions/{action_id}")

    def action_statuses(self, controller_id: str, action_id: str) -> list[JsonValue]:
        """The action's status history, oldest first (``type``, ``messages``)."""
        got = self._mgmt_ok(
            "GET",
            f"/rest/v1/targets/{controller_id}/actions/{action_id}/status?limit=500",
        )
        return list(reversed(got["content"]))

    def cancel(self, controller_id: str, action_id: str) -> None:
        res = self.mgmt("DELETE", f"/rest/v1/targets/{controller_id}/actions/{action_id}")
        if res.status != 204:
            raise RuntimeError(f"cancel {action_id}: {res.status} {res.body[:300]!r}")

    def target(self, controller_id: str) -> JsonValue:
        return self._mgmt_ok("GET", f"/rest/v1/targets/{controller_id}")

    def target_attributes(self, controller_id: str) -> JsonValue:
        return self._mgmt_ok("GET", f"/rest/v1/targets/{controller_id}/attributes")

    def target_actions(self, controller_id: str) -> list[JsonValue]:
        got = self._mgmt_ok("GET", f"/rest/v1/targets/{controller_id}/actions?limit=100")
        return list(got["content"])

    def create_rollout(
        self,
        name: str,
        ds_id: int,
        target_filter: str,
        groups: int,
        *,
        success_percent: int = 100,
        error_percent: int = 20,
    ) -> int:
        """A rollout over the targets ``target_filter`` (FIQL) selects, in ``groups``
        groups: the next group starts when ``success_percent`` of a group succeeded, the
        rollout pauses when ``error_percent`` failed."""
        body = {
            "name": name,
            "distributionSetId": ds_id,
            "targetFilterQuery": target_filter,
            "amountGroups": groups,
            "type": "forced",
            "successCondition": {"condition": "THRESHOLD", "expression": str(success_percent)},
            "successAction": {"action": "NEXTGROUP", "expression": ""},
            "errorCondition": {"condition": "THRESHOLD", "expression": str(error_percent)},
            "errorAction": {"action": "PAUSE", "expression": ""},
        }
        rollout_id: int = self._mgmt_ok("POST", "/rest/v1/rollouts", body)["id"]
        return rollout_id

    def rollout(self, rollout_id: int) -> JsonValue:
        return self._mgmt_ok("GET", f"/rest/v1/rollouts/{rollout_id}")

    def start_rollout(self, rollout_id: int, timeout: float = 60.0) -> None:
        """Start it once hawkBit has built its groups (``ready``)."""
        deadline = time.monotonic() + timeout
        while self.rollout(rollout_id)["status"] != "ready":
            if time.monotonic() > deadline:
                raise RuntimeError(f"rollout {rollout_id} not ready: {self.rollout(rollout_id)}")
            time.sleep(0.2)
        self._mgmt_ok("POST", f"/rest/v1/rollouts/{rollout_id}/start")

    def deploy(self, package: Path, controller_id: str, version: str | None = None) -> str:
        """The five calls that put an update package on one device: a software module of
        the package's version (read from its manifest unless given) with the package as its
        artifact (and ``<package>.sig`` beside it when there is one), a distribution set of
        it, assigned to ``controller_id``; the action id."""
        version = version or package_version(package)
        name = f"tope-update-{uuid.uuid4().hex[:6]}"  # a module's name+version is unique
        module_id = self.create_software_module(name, version)
        self.upload_artifact(module_id, package.name, package.read_bytes())
        signature = package.with_name(package.name + ".sig")
        if signature.is_file():
            self.upload_artifact(module_id, signature.name, signature.read_bytes())
        ds_id = self.create_distribution_set(name, version, [module_id])
        return self.assign_action(ds_id, controller_id)

    def follow_action(
        self, controller_id: str, action_id: str, say: Say = _quiet, timeout: float = 600.0
    ) -> JsonValue:
        """Wait until hawkBit shows the action closed, telling ``say`` each status the device
        reports (``running: Downloading package…``); the last status."""
        deadline = time.monotonic() + timeout
        seen = 0

        def tell(history: list[JsonValue]) -> None:
            for status in history[seen:]:
                messages = [str(m) for m in status.get("messages") or [] if m is not None]
                say(f"  {status['type']}: {' | '.join(messages)}")

        while True:
            history = self.action_statuses(controller_id, action_id)
            tell(history)
            seen = len(history)
            if self.action(controller_id, action_id)["status"] == "finished":
                history = self.action_statuses(controller_id, action_id)
                tell(history)
                return history[-1]
            if time.monotonic() > deadline:
                raise RuntimeError(f"action {action_id} still open after {timeout:.0f} s")
            time.sleep(0.5)

    # -- DDI API -----------------------------------------------------------------------------

    def ddi_url(self, controller_id: str, rest: str = "") -> str:
        return f"{self.base_url}/{TENANT}/controller/v1/{controller_id}{rest}"

    def ddi_get(self, url: str, token: str) -> HttpResult:
        headers = {"Authorization": f"TargetToken {token}", "Accept": "application/hal+json"}
        return _request(url, headers=headers)

    def ddi_put_attributes(
        self, controller_id: str, token: str, attributes: dict[str, str]
    ) -> None:
        """What a device sends to ``configData`` (``merge``), here on its behalf."""
        body = json.dumps({"mode": "merge", "data": attributes}).encode()
        headers = {"Authorization": f"TargetToken {token}", "Content-Type": "application/json"}
        res = _request(self.ddi_url(controller_id, "/configData"), "PUT", body, headers)
        if res.status != 200:
            raise RuntimeError(f"PUT configData: {res.status} {res.body[:300]!r}")


class HawkbitServer(Management):
    """One hawkBit process on 127.0.0.1; use as ``with HawkbitServer() as hb: ...``.

    ``say`` is told what happens while it builds and starts (the command line prints it).
    """

    def __init__(
        self,
        port: int | None = None,
        java: str | None = None,
        jvm_args: tuple[str, ...] = DEFAULT_JVM_ARGS,
        start_timeout: float = 180.0,
        say: Say = _quiet,
    ) -> None:
        self.port = port or free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.say = say
        self.java = java or os.environ.get("HAWKBIT_JAVA") or shutil.which("java") or "java"
        self.jvm_args = jvm_args
        self.start_timeout = start_timeout
        self.build_result: BuildResult | None = None
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log_path: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.build_result = build(say=self.say)
        self._tmp = tempfile.TemporaryDirectory(prefix="hawkbit-test-")
        tmp = Path(self._tmp.name)
        self._log_path = tmp / "hawkbit.log"
        cmd = [
            self.java,
            *self.jvm_args,
            f"-Djava.io.tmpdir={tmp}",
            "-jar",
            str(JAR),
            f"--server.port={self.port}",
            "--server.address=127.0.0.1",
            # A fresh database per server, even if two run at once.
            f"--spring.datasource.url=jdbc:h2:mem:hawkbit-{uuid.uuid4().hex};"
            "MODE=MySQL;DB_CLOSE_DELAY=-1",
            f"--org.eclipse.hawkbit.repository.file.path={tmp / 'artifacts'}",
        ]
        t0 = time.monotonic()
        self.say(f"starting hawkBit on {self.base_url} (java: 10-45 s)…")
        with self._log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        self.say(f"hawkBit ready at {self.base_url} (started in {self.start_seconds:.1f} s)")

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise HawkbitUnavailable(
                    f"hawkBit exited with {self._proc.returncode} while starting:\n"
                    + self.log_tail()
                )
            try:
                if self.mgmt("GET", "/rest/v1/targets", timeout=5.0).status == 200:
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.5)
        raise HawkbitUnavailable(
            f"hawkBit did not answer within {self.start_timeout:.0f} s:\n" + self.log_tail()
        )

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> HawkbitServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def rss_kib(self) -> int | None:
        return rss_kib(self._proc.pid) if self._proc is not None else None

    def log_tail(self, lines: int = 40) -> str:
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        text = self._log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _check() -> int:
    t0 = time.monotonic()
    try:
        result = build(say=_say)
    except HawkbitUnavailable as exc:
        print(f"BLOCKED: {exc}", file=sys.stderr)
        return 2
    how = f"built in {result.seconds:.1f} s" if result.built else "up to date"
    print(f"jar: {result.jar} ({result.jar.stat().st_size / 1e6:.1f} MB, {how})")
    server = HawkbitServer()
    try:
        server.start()
    except HawkbitUnavailable as exc:
        print(f"BLOCKED: {exc}", file=sys.stderr)
        return 2
    try:
        rss = server.rss_kib() or 0
        print(
            f"started on {server.base_url} (pid {server.pid}) in {server.start_seconds:.1f} s, "
            f"java RSS {rss / 1024:.0f} MiB"
        )
        controller_id, token = "printer-0001", uuid.uuid4().hex
        server.create_target(controller_id, token)
        print(f"target {controller_id} created with a security token")
        base = server.ddi_url(controller_id)

        res = server.ddi_get(base, token)
        print(f"GET {base} -> {res.status}\n  {res.body.decode()}")
        bad = server.ddi_get(base, "wrong-token")
        print(f"same with a wrong TargetToken -> {bad.status}")
        if res.status != 200 or bad.status != 401:
            return 1

        module_id = server.create_software_module("tope-updater", "1.0.1")
        payload = os.urandom(64 * 1024)
        art = server.upload_artifact(module_id, "update-1.0.1.zip", payload)
        print(
            f"software module {module_id}, artifact {art['providedFilename']} "
            f"({art['size']} B, sha256 {art['hashes']['sha256'][:16]}...)"
        )
        ds_id = server.create_distribution_set("printer-firmware", "1.0.1", [module_id])
        assigned = server.assign(ds_id, controller_id)
        print(f"distribution set {ds_id} assigned: {assigned['assigned']} target(s)")

        res = server.ddi_get(base, token)
        print(f"GET {base} -> {res.status}\n  {res.body.decode()}")
        deployment = res.json()["_links"]["deploymentBase"]["href"]
        print(f"deploymentBase: {deployment}")
        dep = server.ddi_get(deployment, token)
        print(f"GET deploymentBase -> {dep.status}\n  {dep.body.decode()}")
        chunk_art = dep.json()["deployment"]["chunks"][0]["artifacts"][0]
        dl = server.ddi_get(chunk_art["_links"]["download-http"]["href"], token)
        same = dl.body == payload
        print(f"download-http -> {dl.status}, {len(dl.body)} B, identical to upload: {same}")
        rss = server.rss_kib() or 0
        print(f"java RSS after the flow {rss / 1024:.0f} MiB")
        ok = dep.status == 200 and dl.status == 200 and same
    finally:
        t_stop = time.monotonic()
        server.stop()
        print(
            f"stopped in {time.monotonic() - t_stop:.1f} s; whole check "
            f"{time.monotonic() - t0:.1f} s"
        )
    return 0 if ok else 1


def package_version(package: Path) -> str:
    """The version an update package installs (its ``manifest.json``)."""
    with zipfile.ZipFile(package) as zf:
        version: str = json.loads(zf.read("manifest.json"))["version"]
    return version


def device_config(base_url: str, controller_id: str | None, token: str | None) -> str:
    """The lines of a device's config file (TOML) that make it poll ``base_url`` as
    ``controller_id`` with its security ``token`` (placeholders when not given)."""
    return (
        f'ddi_url = "{base_url}"\n'
        f'ddi_tenant = "{TENANT}"                     # the default\n'
        f'ddi_controller_id = "{controller_id or "NAME"}"\n'
        f'ddi_token = "{token or "TOKEN"}"\n'
    )


def _say(text: str) -> None:
    print(text, flush=True)


def _me() -> str:
    """This command as the user can type it again (``.venv/bin/python -m …``)."""
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    return f"{exe} -m tests.support.hawkbit"


def _announce_target(mgmt: Management, controller_id: str, token: str) -> None:
    """Create the target and print what the device's configuration needs."""
    mgmt.create_target(controller_id, token)
    me = _me()
    _say(
        f"target {controller_id} created with security token {token}\n"
        "the device's config (TOML: tope-updater serve --config FILE):\n\n"
        + device_config(mgmt.base_url, controller_id, token)
        + "\ndeploy an update package to it (waits for the outcome):\n"
        f"  {me} --url {mgmt.base_url} --deploy PACKAGE.zip --target {controller_id}"
    )


def _stop_on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # `kill PID` stops it as cleanly as Ctrl-C


def _serve(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    server = HawkbitServer(port=args.port, say=_say)
    try:
        server.start()
    except HawkbitUnavailable as exc:
        print(f"BLOCKED: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # while building or starting: start() stopped it
        return 130
    try:
        server.set_polling(args.poll)
        _say(
            f"Management API: {server.base_url}/rest/v1 user {MGMT_USER} password "
            f"{MGMT_PASSWORD} (tenant {TENANT})\n"
            f"devices are told to poll every {args.poll} (pollingTime)"
        )
        if args.target:
            _announce_target(server, args.target, args.token or uuid.uuid4().hex)
        else:
            _say(
                "a device's config (TOML), once its target exists:\n\n"
                + device_config(server.base_url, None, None)
                + "\ncreate a target and get its token:\n"
                f"  {_me()} --url {server.base_url} --add-target NAME"
            )
        _say(f"Ctrl-C (or kill {os.getpid()}) stops hawkBit")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _deploy(args: argparse.Namespace) -> int:
    mgmt = Management(args.url)
    package: Path = args.deploy
    version = args.version or package_version(package)
    action = mgmt.deploy(package, args.target, version)
    _say(
        f"{package.name} (version {version}) assigned to {args.target}: action {action}\n"
        f"  {mgmt.base_url}/rest/v1/targets/{args.target}/actions/{action}/status"
    )
    if args.no_wait:
        return 0
    last = mgmt.follow_action(args.target, action, _say, timeout=args.timeout)
    attributes = mgmt.target_attributes(args.target)
    _say(
        f"action {action} ended: {last['type']}\n"
        f"target attributes: {json.dumps(attributes, sort_keys=True)}"
    )
    return 0 if last["type"] == "finished" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--check", action="store_true", help="build, start, exercise, stop")
    group.add_argument("--build", action="store_true", help="only build the jar (forced)")
    group.add_argument(
        "--serve",
        action="store_true",
        help="start, print what a device's config needs, run until Ctrl-C",
    )
    group.add_argument(
        "--add-target",
        metavar="NAME",
        help="create target NAME on the hawkBit at --url and print the device's config",
    )
    group.add_argument(
        "--deploy",
        type=Path,
        metavar="PACKAGE",
        help="assign update PACKAGE (a .zip) to --target on the hawkBit at --url, then"
        " follow the action until it ends (exit 0: finished, 1: error)",
    )
    parser.add_argument("--port", type=int, default=None, help="port for --serve (default: free)")
    parser.add_argument(
        "--poll", default="00:00:05", help="pollingTime --serve sets (default 00:00:05)"
    )
    parser.add_argument("--target", metavar="NAME", help="--serve: create it; --deploy: to it")
    parser.add_argument("--token", help="the new target's security token (default: random)")
    parser.add_argument("--url", help="the running hawkBit (as --serve printed it)")
    parser.add_argument("--version", help="--deploy: the module version (default: the package's)")
    parser.add_argument("--no-wait", action="store_true", help="--deploy: do not follow it")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="--deploy: seconds to follow (600)"
    )
    args = parser.parse_args(argv)
    if args.check:
        return _check()
    if args.build:
        res = build(force=True, say=_say)
        print(f"built {res.jar} in {res.seconds:.1f} s")
        return 0
    if args.serve:
        return _serve(args)
    if not args.url:
        parser.error("--add-target and --deploy need --url (what --serve printed)")
    if args.deploy and not args.target:
        parser.error("--deploy needs --target")
    try:
        if args.add_target:
            token = args.token or uuid.uuid4().hex
            _announce_target(Management(args.url), args.add_target, token)
            return 0
        return _deploy(args)
    except (OSError, RuntimeError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        # a missing package, a server that is not there, hawkBit refusing a call: one line
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while following: the action goes on in hawkBit
        return 130


if __name__ == "__main__":
    sys.exit(main())
