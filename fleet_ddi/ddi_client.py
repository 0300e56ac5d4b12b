"""HTTP to the fleet server's DDI API: the device's token, timeouts, bounded answers.

Every request to the fleet server carries ``Authorization: TargetToken …`` (or
``GatewayToken``) and the configured TLS trust (:mod:`updater_fsm.ops.fleet_access`, shared
with the artifact downloads); a link the server gives to another scheme, host or port gets
no token. Answers are read up to :data:`MAX_ANSWER_BYTES`, each whole exchange within
``connect_timeout_s + read_timeout_s``; JSON is parsed strictly. A server that is down,
slow, or answers nonsense raises :class:`DdiUnavailable` with a readable reason — never
anything the poller cannot handle.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import aiohttp
import structlog

from fleet_ddi.ddi_protocol import ControllerBase, Feedback, config_data_body, parse_base
from updater_fsm.config import Config
from updater_fsm.ops.fleet_access import fleet_access, on_fleet_server

_log = structlog.get_logger(__name__)
#: The largest answer read (a deployment with a few chunks is a few KiB).
MAX_ANSWER_BYTES = 1024 * 1024
_ACCEPT = "application/hal+json, application/json"


class DdiUnavailable(RuntimeError):
    """The server could not be reached or did not answer as DDI does.

    Attributes:
        status: the HTTP status when there was one (401: the token is wrong).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _strict_json(raw: bytes) -> Any:
    def floats(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text[:20]} is not a finite number")
        return value

    return json.loads(raw, parse_constant=_reject_constant, parse_float=floats)


class DdiClient:
    """One device's DDI session (open with :meth:`open`, close with :meth:`aclose`)."""

    def __init__(self, config: Config, controller_id: str) -> None:
        assert config.ddi_url is not None
        self.base_url = (
            f"{config.ddi_url.rstrip('/')}/{config.ddi_tenant}/controller/v1/{controller_id}"
        )
        #: ``PUT`` the attributes here when the server did not give its ``configData`` link.
        self.config_data_url = f"{self.base_url}/configData"
        self._config = config
        self._access = fleet_access(config)
        #: A whole exchange: a server trickling its answer never holds the poller longer.
        self._deadline_s = config.connect_timeout_s + config.read_timeout_s
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=config.connect_timeout_s,
            sock_read=config.read_timeout_s,
        )
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            headers={"Accept": _ACCEPT},
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(
                ssl=self._access.ssl if self._access.ssl is not None else True, limit=4
            ),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, url: str, body: Any = None) -> tuple[int, bytes]:
        assert self._session is not None, "open() first"
        # The token only for the fleet server itself (ddi_url's scheme, host and port); the
        # session's TLS trust was built once, in open().
        headers = dict(self._access.headers) if on_fleet_server(self._config, url) else {}
        try:
            async with (
                asyncio.timeout(self._deadline_s),
                self._session.request(
                    method, url, json=body, headers=headers, allow_redirects=False
                ) as resp,
            ):
                raw = await _read_bounded(resp.content, MAX_ANSWER_BYTES)
                if len(raw) > MAX_ANSWER_BYTES:
                    raise DdiUnavailable(
                        f"{method} {url}: answer larger than {MAX_ANSWER_BYTES} bytes",
                        resp.status,
                    )
                return resp.status, raw
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            # ValueError: a URL aiohttp/yarl refuses (the links come from the server).
            raise DdiUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from None

    async def _get_ok(self, url: str) -> tuple[int, bytes]:
        """GET ``url``; its body when the answer is 200, else :class:`DdiUnavailable`."""
        status, raw = await self._call("GET", url)
        if status != 200:
            raise DdiUnavailable(f"GET {url}: HTTP {status} {_excerpt(raw)}", status)
        return status, raw

    async def get_json(self, url: str) -> Any:
        """GET a DDI resource; its JSON, or :class:`DdiUnavailable`."""
        status, raw = await self._get_ok(url)
        try:
            return _strict_json(raw)
        except (ValueError, RecursionError) as exc:
            raise DdiUnavailable(f"GET {url}: not JSON ({exc})", status) from None

    async def get_small_text(self, url: str, limit: int) -> str:
        """GET a small text resource (an artifact such as a signature), at most ``limit``
        bytes of ASCII, or :class:`DdiUnavailable`."""
        status, raw = await self._get_ok(url)
        if len(raw) > limit:
            raise DdiUnavailable(f"GET {url}: larger than {limit} bytes", status)
        try:
            return raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise DdiUnavailable(f"GET {url}: not ASCII text", status) from None

    async def controller_base(self) -> ControllerBase:
        """The controller base resource (parsed; a malformed one is :class:`DdiUnavailable`)."""
        body = await self.get_json(self.base_url)
        try:
            return parse_base(body)
        except ValueError as exc:
            raise DdiUnavailable(f"GET {self.base_url}: {exc}") from None

    async def send_feedback(self, resource: str, feedback: Feedback) -> int:
        """POST ``feedback`` to ``{resource}/{id}/feedback`` (``deploymentBase`` or
        ``cancelAction``); the HTTP status (2xx accepted, 410 the action is closed)."""
        url = f"{self.base_url}/{resource}/{feedback.action_id}/feedback"
        status, raw = await self._call("POST", url, feedback.body())
        if status >= 500 or status in (401, 403, 429):
            raise DdiUnavailable(f"POST {url}: HTTP {status} {_excerpt(raw)}", status)
        if not 200 <= status < 300 and status != 410:
            _log.warning("fleet feedback refused", url=url, status=status, body=_excerpt(raw))
        return status

    async def put_attributes(self, url: str, attributes: dict[str, str]) -> None:
        status, raw = await self._call("PUT", url, config_data_body(attributes))
        if not 200 <= status < 300:
            raise DdiUnavailable(f"PUT {url}: HTTP {status} {_excerpt(raw)}", status)


async def _read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The answer up to its end, or its first ``limit + 1`` bytes (``read(n)`` alone returns
    only what has arrived so far: an answer in two TCP segments came back cut)."""
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await content.read(limit + 1 - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def _excerpt(raw: bytes) -> str:
    return raw[:300].decode("utf-8", "replace")
