"""Who may talk to the API: the ``Host``/``Origin`` check and the JSON-only rule (issue 10).

The API listens on loopback, but loopback is not a trust boundary on its own: a browser on
the device (the kiosk GUI, any page it opens) can send requests to ``127.0.0.1``, and a page
on ``http://evil.example`` whose name is re-bound to ``127.0.0.1`` (DNS rebinding) can even
read the answers. Two middlewares close that:

* :func:`edge_guard` (every request, reads included) refuses a ``Host`` header that is not
  one of the names the updater serves (loopback names, the configured ``host``, the
  ``allowed_hosts`` key) and an ``Origin`` header that is not the updater's own origin.
  Refusals are HTTP 403 with the envelope code 403, ``FORBIDDEN: …`` — a real HTTP status
  like the 401 of the token check, because both are answered before the request is looked
  at. DNS rebinding can only work through a foreign ``Host``; a cross-site form or ``fetch``
  always carries the page's ``Origin`` on a POST.
* :func:`json_only` (state-changing methods) refuses a body that is not declared
  ``Content-Type: application/json``: a browser can send ``text/plain``, form or multipart
  bodies cross-site without a CORS preflight, never ``application/json``. A POST without a
  body (``curl -X POST …/cancel``; aiohttp's client even labels it
  ``application/octet-stream``) passes whatever it declares: there is nothing to parse, and
  a body-less cross-site POST still carries the page's ``Origin``, which is refused.
"""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from yarl import URL

from http_shell.api.bodies import envelope
from updater_fsm.config import Config
from updater_fsm.control import ErrorCode, RequestError

#: Names every updater answers to: it always listens on loopback.
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
#: Bind addresses that are not names a client uses (``host = "0.0.0.0"`` listens everywhere).
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})
#: Methods that never change anything.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The only media type a state-changing request body may declare.
JSON_TYPE = "application/json"
#: Longest header value quoted back in a refusal.
_QUOTE_MAX = 80


def normalize_host_name(name: str) -> str:
    """``name`` as compared: lower case, no IPv6 brackets, no trailing dot of an FQDN."""
    name = name.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name.rstrip(".") if name not in (".", "") else name


#: ``Host`` (RFC 9110 §7.2): a bracketed IPv6 literal, or a name or IPv4 address without a
#: colon, then at most ``:port``. Nothing else may follow a ``]``.
_HOST = re.compile(r"(\[[0-9A-Za-z:.%]+\]|[^\[\]:/@\s]*)(:[0-9]{0,5})?")


def host_without_port(header: str) -> str | None:
    """The host name of a ``Host`` header value (``[::1]:12315`` → ``::1``), normalized;
    None when the value is not ``host[:port]`` (``[::1]x``, ``a:b:c``, ``user@host``)."""
    match = _HOST.fullmatch(header.strip())
    if match is None:
        return None
    return normalize_host_name(match.group(1))


def served_host_names(config: Config) -> frozenset[str]:
    """Every ``Host`` name the updater accepts: loopback, ``host`` (unless a wildcard bind)
    and ``allowed_hosts``."""
    names = set(LOOPBACK_NAMES)
    if config.host not in _WILDCARD_BINDS:
        names.add(normalize_host_name(config.host))
    names.update(normalize_host_name(name) for name in config.allowed_hosts)
    return frozenset(names)


def _quote(value: str) -> str:
    if len(value) > _QUOTE_MAX:
        value = value[:_QUOTE_MAX] + "…"
    return repr(value)


def forbidden(detail: str) -> web.Response:
    """The refusal: HTTP 403 and the envelope code 403, ``FORBIDDEN: <detail>``."""
    return web.json_response(
        {"code": 403, "msg": f"{ErrorCode.FORBIDDEN.value}: {detail}", "data": None},
        status=403,
    )


def edge_guard(names: frozenset[str]) -> Middleware:
    """A middleware refusing foreign ``Host`` names and foreign ``Origin`` headers."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        hosts = request.headers.getall("Host", [])
        if len(hosts) > 1:
            return forbidden("more than one Host header")
        host = hosts[0] if hosts else None
        if host is not None and host_without_port(host) not in names:
            return forbidden(
                f"Host {_quote(host)} is not a name this updater serves"
                " (list it in the allowed_hosts setting)"
            )
        target = request.raw_path  # the request target as sent
        if not target.startswith("/"):  # absolute-form (`GET http://name/… HTTP/1.1`): its
            # authority is the host asked for, whatever Host says (RFC 9112 §3.2.2)
            url = URL(target)
            if not url.absolute or host_without_port(url.raw_authority or "") not in names:
                return forbidden(
                    f"request target {_quote(target)} names a host this updater does not serve"
                )
        origins = request.headers.getall("Origin", [])
        if len(origins) > 1:
            return forbidden("more than one Origin header")
        if origins:
            origin = origins[0]
            own = () if host is None else (f"http://{host}".lower(), f"https://{host}".lower())
            if origin.strip().lower() not in own:
                return forbidden(f"cross-origin request from Origin {_quote(origin)} refused")
        return await handler(request)

    return guard


@web.middleware
async def json_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a state-changing request whose body is not declared ``application/json``.

    Answered like every bad body: HTTP 200, code 400, ``VALIDATION_ERROR: body …``.
    """
    needs_json = request.method not in SAFE_METHODS and request.body_exists
    if needs_json and request.content_type != JSON_TYPE:
        declared = request.headers.get("Content-Type")
        given = "none" if declared is None else _quote(declared)
        return envelope(
            400,
            f"{RequestError.VALIDATION_ERROR}: body must be sent with Content-Type: {JSON_TYPE}"
            f" (got {given})",
        )
    return await handler(request)
