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

Anything that keeps hawkBit from being built or started raises :class:`HawkbitUnavailable`
with the exact error; there is no stand-in server.
"""

from __future__ import annotations

import argparse
import base64
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


def build(force: bool = False, timeout: float = 900.0) -> BuildResult:
    """Build the server jar with Maven unless an up-to-date one is already there."""
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


class HawkbitServer:
    """One hawkBit process on 127.0.0.1; use as ``with HawkbitServer() as hb: ...``."""

    def __init__(
        self,
        port: int | None = None,
        java: str | None = None,
        jvm_args: tuple[str, ...] = DEFAULT_JVM_ARGS,
        start_timeout: float = 180.0,
    ) -> None:
        self.port = port or free_port()
        self.java = java or os.environ.get("HAWKBIT_JAVA") or shutil.which("java") or "java"
        self.jvm_args = jvm_args
        self.start_timeout = start_timeout
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.build_result: BuildResult | None = None
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log_path: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.build_result = build()
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

    # -- DDI API -----------------------------------------------------------------------------

    def ddi_url(self, controller_id: str, rest: str = "") -> str:
        return f"{self.base_url}/{TENANT}/controller/v1/{controller_id}{rest}"

    def ddi_get(self, url: str, token: str) -> HttpResult:
        headers = {"Authorization": f"TargetToken {token}", "Accept": "application/hal+json"}
        return _request(url, headers=headers)


def _check() -> int:
    t0 = time.monotonic()
    try:
        result = build()
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--check", action="store_true", help="build, start, exercise, stop")
    group.add_argument("--build", action="store_true", help="only build the jar (forced)")
    group.add_argument("--serve", action="store_true", help="start and run until Ctrl-C")
    parser.add_argument("--port", type=int, default=None, help="port for --serve")
    args = parser.parse_args(argv)
    if args.check:
        return _check()
    if args.build:
        res = build(force=True)
        print(f"built {res.jar} in {res.seconds:.1f} s")
        return 0
    with HawkbitServer(port=args.port) as server:
        print(f"hawkBit on {server.base_url} (Management API user {MGMT_USER}); Ctrl-C stops")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
