"""hawkBit's DDI resources as values: parsing the server's answers, building feedback.

Pure (no I/O), in the spirit of h11: every answer of the server becomes a frozen value or a
:class:`DdiProtocolError` naming what was wrong, so nothing a server sends can crash the
poller or reach the engine unchecked. Shapes follow DDI API v1 as hawkBit serves it
(checked against hawkBit 0.3.0M7 in tests/fleet): the controller base resource,
``deploymentBase/{id}``, ``cancelAction/{id}``, their ``feedback`` and ``configData``.
"""

from __future__ import annotations

import enum
import re
import urllib.parse
from typing import Any, TypeVar

import attrs

from updater_fsm.control import DownloadRequest, Version

#: hawkBit ids are numbers; anything longer than this is not one of its action ids.
#: Patterns are used with ``fullmatch``: ``$`` would also accept a trailing newline.
_ACTION_ID = re.compile(r"[0-9]{1,19}")
_SLEEP = re.compile(r"([0-9]{1,3}):([0-5][0-9]):([0-5][0-9])")
_HEX = {"md5": re.compile(r"[0-9a-fA-F]{32}"), "sha256": re.compile(r"[0-9a-fA-F]{64}")}
#: The longest details line sent back (hawkBit stores each in a 512-character column).
DETAIL_MAX = 500


class DdiProtocolError(ValueError):
    """The server's answer is not what DDI promises; the message says what and where."""


class Handling(enum.StrEnum):
    """How the server wants a deployment's download or update handled."""

    SKIP = "skip"
    ATTEMPT = "attempt"
    FORCED = "forced"


class MaintenanceWindow(enum.StrEnum):
    """Whether the deployment's maintenance window is open right now."""

    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"


class Execution(enum.StrEnum):
    """``status.execution`` of a feedback."""

    PROCEEDING = "proceeding"
    DOWNLOADED = "downloaded"
    CLOSED = "closed"
    REJECTED = "rejected"
    CANCELED = "canceled"


class Finished(enum.StrEnum):
    """``status.result.finished`` of a feedback."""

    NONE = "none"
    SUCCESS = "success"
    FAILURE = "failure"


@attrs.frozen
class ControllerBase:
    """``GET /{tenant}/controller/v1/{controllerId}``: what the server wants now.

    Attributes:
        sleep_s: the polling interval the server asks for.
        deployment_url: the ``deploymentBase`` link when an update action is open.
        deployment_action: that action's id (from the link).
        cancel_url: the ``cancelAction`` link when the server asks to cancel an action.
        cancel_action: that cancel action's id.
        config_data_url: the ``configData`` link when the server asks for attributes.
    """

    sleep_s: float
    deployment_url: str | None = None
    deployment_action: str | None = None
    cancel_url: str | None = None
    cancel_action: str | None = None
    config_data_url: str | None = None

    def offers(self, action_id: str) -> bool:
        """True while ``action_id`` is still open on the server (to deploy or to cancel)."""
        return action_id in (self.deployment_action, self.cancel_action)


@attrs.frozen
class Deployment:
    """``GET deploymentBase/{actionId}``: one update action, reduced to what we install.

    The artifact is our ZIP package; its MD5 and SHA-256 come from the server and are
    checked by the updater's verification as for device-api's downloads. A second artifact
    of the same module named ``<package>.zip.sig`` holds the package's Ed25519 signature
    (base64, as device-api's ``package_signature``): ``signature_url`` is where to fetch it.
    """

    action_id: str
    download: Handling
    update: Handling
    maintenance_window: MaintenanceWindow | None
    request: DownloadRequest
    signature_url: str | None = None

    @property
    def download_only(self) -> bool:
        """An action that wants the package on the device, never installed (hawkBit's
        *download only*): ``update`` is ``skip`` without a maintenance window."""
        return self.update is Handling.SKIP and self.maintenance_window is None

    @property
    def may_install_now(self) -> bool:
        """Install once verified: the update is wanted and any maintenance window is open."""
        return (
            self.update is not Handling.SKIP
            and self.maintenance_window is not MaintenanceWindow.UNAVAILABLE
        )


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DdiProtocolError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise DdiProtocolError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _href(links: dict[str, Any], name: str) -> str | None:
    link = links.get(name)
    if link is None:
        return None
    href = _str(_obj(link, f"_links.{name}").get("href"), f"_links.{name}.href")
    try:
        parts = urllib.parse.urlsplit(href)
        _ = parts.port  # raises ValueError on a port out of range
    except ValueError as exc:  # unbalanced brackets, a bad port: no URL aiohttp would take
        raise DdiProtocolError(f"_links.{name}.href: {exc}: {href[:200]!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DdiProtocolError(f"_links.{name}.href: not an http(s) URL: {href[:200]!r}")
    return href


def _action_in(href: str | None, name: str) -> str | None:
    """The action id of a ``…/deploymentBase/{id}?c=…`` or ``…/cancelAction/{id}`` link."""
    if href is None:
        return None
    last = urllib.parse.urlsplit(href).path.rstrip("/").rpartition("/")[2]
    if not _ACTION_ID.fullmatch(last):
        raise DdiProtocolError(f"_links.{name}.href: no action id at its end: {href[:200]!r}")
    return last


def parse_sleep(text: str) -> float:
    """``HH:MM:SS`` → seconds."""
    match = _SLEEP.fullmatch(_str(text, "config.polling.sleep"))
    if match is None:
        raise DdiProtocolError(f"config.polling.sleep: not HH:MM:SS: {text[:40]!r}")
    hours, minutes, seconds = (int(g) for g in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


def parse_base(body: Any) -> ControllerBase:
    """The controller base resource."""
    root = _obj(body, "controller base")
    config = _obj(root.get("config", {}), "config")
    polling = _obj(config.get("polling", {}), "config.polling")
    sleep = parse_sleep(_str(polling.get("sleep", "00:05:00"), "config.polling.sleep"))
    links = _obj(root.get("_links", {}), "_links")
    deployment = _href(links, "deploymentBase")
    cancel = _href(links, "cancelAction")
    return ControllerBase(
        sleep_s=sleep,
        deployment_url=deployment,
        deployment_action=_action_in(deployment, "deploymentBase"),
        cancel_url=cancel,
        cancel_action=_action_in(cancel, "cancelAction"),
        config_data_url=_href(links, "configData"),
    )


def parse_cancel(body: Any) -> str:
    """``GET cancelAction/{id}`` → the id of the action to stop (``stopId``)."""
    root = _obj(body, "cancel action")
    stop = _str(_obj(root.get("cancelAction"), "cancelAction").get("stopId"), "stopId")
    if not _ACTION_ID.fullmatch(stop):
        raise DdiProtocolError(f"cancelAction.stopId: not an action id: {stop[:40]!r}")
    return stop


_E = TypeVar("_E", bound=enum.StrEnum)


def _enum(kind: type[_E], value: Any, where: str) -> _E:
    text = _str(value, where)
    try:
        return kind(text)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise DdiProtocolError(f"{where}: {text[:40]!r} is not one of {allowed}") from None


def parse_deployment(body: Any, action_id: str) -> Deployment:
    """``GET deploymentBase/{id}`` → the deployment, with its one ZIP artifact.

    Raises :class:`DdiProtocolError` when the action is not one this device can carry out
    (no chunk, no ``.zip`` artifact or more than one, no download link, a bad version or
    hash); the poller closes such an action with ``failure`` and this message.
    """
    root = _obj(body, "deployment base")
    got_id = _str(root.get("id"), "id")
    if got_id != action_id:
        raise DdiProtocolError(f"id: {got_id[:40]!r} is not the action {action_id} asked for")
    dep = _obj(root.get("deployment"), "deployment")
    download = _enum(Handling, dep.get("download", "forced"), "deployment.download")
    update = _enum(Handling, dep.get("update", "forced"), "deployment.update")
    window_value = dep.get("maintenanceWindow")
    window = (
        None
        if window_value is None
        else _enum(MaintenanceWindow, window_value, "deployment.maintenanceWindow")
    )
    chunks = dep.get("chunks")
    if not isinstance(chunks, list) or not chunks:
        raise DdiProtocolError("deployment.chunks: the action carries no software module")
    found: list[tuple[dict[str, Any], str]] = []
    signatures: dict[str, dict[str, Any]] = {}
    for i, chunk_value in enumerate(chunks):
        chunk = _obj(chunk_value, f"chunks[{i}]")
        version = _str(chunk.get("version"), f"chunks[{i}].version")
        artifacts = chunk.get("artifacts", [])
        if not isinstance(artifacts, list):
            raise DdiProtocolError(f"chunks[{i}].artifacts: expected a list")
        for j, art_value in enumerate(artifacts):
            art = _obj(art_value, f"chunks[{i}].artifacts[{j}]")
            filename = _str(art.get("filename"), f"chunks[{i}].artifacts[{j}].filename")
            if filename.endswith(".zip"):
                found.append((art, version))
            elif filename.endswith(".zip.sig"):
                signatures[filename.removesuffix(".sig")] = art
    if len(found) != 1:
        raise DdiProtocolError(
            f"deployment: needs exactly one .zip artifact (the update package), found {len(found)}"
        )
    art, version = found[0]
    if not Version.is_valid(version):
        raise DdiProtocolError(f"chunk version {version[:40]!r} is not MAJOR.MINOR.PATCH")
    hashes = _obj(art.get("hashes"), "artifact.hashes")
    digests: dict[str, str] = {}
    for name, pattern in _HEX.items():
        value = _str(hashes.get(name), f"artifact.hashes.{name}")
        if not pattern.fullmatch(value):
            raise DdiProtocolError(f"artifact.hashes.{name}: not a hex digest: {value[:80]!r}")
        digests[name] = value.lower()
    size = art.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise DdiProtocolError(f"artifact.size: expected a positive integer, got {size!r}")
    links = _obj(art.get("_links"), "artifact._links")
    url = _href(links, "download-http") or _href(links, "download")
    if url is None:
        raise DdiProtocolError("artifact._links: no download-http or download link")
    request = DownloadRequest(
        version=version,
        package_url=url,
        package_name=f"ddi-{action_id}-{version}.zip",
        package_size=size,
        package_md5=digests["md5"],
        package_sha256=digests["sha256"],
    )
    signature_url = None
    signature = signatures.get(_str(art.get("filename"), "artifact.filename"))
    if signature is not None:
        sig_links = _obj(signature.get("_links"), "signature artifact._links")
        signature_url = _href(sig_links, "download-http") or _href(sig_links, "download")
    return Deployment(action_id, download, update, window, request, signature_url)


def _detail(text: str) -> str:
    return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 1] + "…"


@attrs.frozen
class Feedback:
    """One feedback to ``…/{deploymentBase|cancelAction}/{id}/feedback``."""

    action_id: str
    execution: Execution
    finished: Finished
    details: tuple[str, ...] = ()
    progress: tuple[int, int] | None = None

    @property
    def final(self) -> bool:
        """Feedback that ends the action on the server (never to be sent twice)."""
        return self.execution is Execution.CLOSED

    def body(self) -> dict[str, Any]:
        """The JSON body (hawkBit 0.3 still requires the action ``id`` in it)."""
        result: dict[str, Any] = {"finished": self.finished.value}
        if self.progress is not None:
            result["progress"] = {"cnt": self.progress[0], "of": self.progress[1]}
        return {
            "id": self.action_id,
            "status": {
                "execution": self.execution.value,
                "result": result,
                "details": [_detail(d) for d in self.details],
            },
        }


def config_data_body(attributes: dict[str, str]) -> dict[str, Any]:
    """``PUT configData``: merge the device's attributes into the target's."""
    return {"mode": "merge", "data": {k: _detail(v) for k, v in attributes.items()}}
