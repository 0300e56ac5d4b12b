"""Request bodies and the response envelope of the HTTP API (contract §1).

Bodies are parsed in two steps: the strict cattrs converter checks the shape (required and
unknown fields, exact JSON types — ``"10"`` is not an int, ``true`` is not an int), then
:func:`validate_download` / :func:`validate_update` / :func:`validate_rollback` check the
values. Every failure is a :class:`BodyError` naming the field, which the API answers as
code 400 ``VALIDATION_ERROR: <field> …``. The same rules are written out as JSON Schema in
:mod:`http_shell.api.openapi`; keep both in step.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any, TypeVar

import attrs
import cattrs
from aiohttp import web
from yarl import URL

from updater_fsm.control import (
    TYPED_VERSION_PATTERN,
    VERSION_MAX_LENGTH,
    DownloadRequest,
    RequestError,
    RollbackTarget,
    Version,
    bare_version,
)
from updater_fsm.strict_converter import STRICT_CONVERTER

#: Largest request body accepted (reading stops there; the answer is code 400).
MAX_BODY_BYTES = 64 * 1024

# The patterns below are shared with the OpenAPI document, so they use only syntax that
# Python's `re` and ECMA-262 (JSON Schema) read the same way; `[0-9]` instead of `\d`
# because Python's `\d` also matches non-ASCII digits. Python matches them with `fullmatch`:
# its `$` alone would also accept a trailing newline. Versions have one parser, the core's
# `Version.parse`; the pattern of what it accepts typed (``v`` allowed) is re-exported for
# the OpenAPI document.
MD5_PATTERN = r"^[0-9a-fA-F]{32}$"
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
#: 64 bytes of standard base64 are exactly 86 alphabet characters and ``==``.
SIGNATURE_PATTERN = r"^[A-Za-z0-9+/]{86}==$"
#: No `/`, no control characters (NUL included), no leading dot, never two dots in a row.
NAME_PATTERN = r"^[^./\x00-\x1f\x7f](\.?[^./\x00-\x1f\x7f])*\.?$"
NAME_MAX_BYTES = 255
#: No spaces or control characters anywhere (they would end up in an HTTP request line).
#: ``file://`` names a package file on the device itself, accepted only under the
#: configured ``local_package_dirs`` (judged by the route, which knows them).
URL_PATTERN = r"^([Hh][Tt][Tt][Pp][Ss]?|[Ff][Ii][Ll][Ee])://[^\x00-\x20\x7f]+$"
URL_MAX_LENGTH = 4096
MAX_PACKAGE_SIZE = 2**63 - 1
ROLLBACK_TARGETS = tuple(t.value for t in RollbackTarget)

_MD5_RE = re.compile(MD5_PATTERN)
_SHA256_RE = re.compile(SHA256_PATTERN)
_SIGNATURE_RE = re.compile(SIGNATURE_PATTERN)
_NAME_RE = re.compile(NAME_PATTERN)
_URL_RE = re.compile(URL_PATTERN)

_T = TypeVar("_T")


class BodyError(ValueError):
    """A request body is unacceptable; ``str()`` is the envelope's ``msg``.

    Args:
        field: the offending field (``body`` for the body as a whole).
        problem: what is wrong with it, for a human.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{RequestError.VALIDATION_ERROR}: {field} {problem}")
        self.field = field
        self.problem = problem


def envelope(code: int = 200, msg: str = "success", data: Any = None) -> web.Response:
    """The contract's response: HTTP 200 with ``{"code", "msg", "data"}``."""
    return web.json_response({"code": code, "msg": msg, "data": data})


# ---- shapes ------------------------------------------------------------------------------
@attrs.frozen
class UpdateBody:
    """``POST /update``."""

    version: str


@attrs.frozen
class RollbackBody:
    """``POST /rollback`` (an empty body means ``previous``)."""

    target: RollbackTarget = RollbackTarget.PREVIOUS


#: Longest integer literal parsed (no field needs more than 19 digits; Python's own limit
#: of 4,300 digits would raise a ValueError that is not a JSONDecodeError).
MAX_INT_DIGITS = 64


@attrs.frozen
class _Unacceptable:
    """Stands in for a JSON value that parsed but must be refused; found after parsing so
    the message can name the top-level field holding it."""

    problem: str


def _parse_int(literal: str) -> int | _Unacceptable:
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        return _Unacceptable(f"is a number with more than {MAX_INT_DIGITS} digits")
    return int(literal)


def _parse_float(literal: str) -> float | _Unacceptable:
    value = float(literal)
    if math.isinf(value):
        return _Unacceptable("is a number too large for a float")
    return value


def _parse_constant(literal: str) -> _Unacceptable:
    return _Unacceptable(f"is {literal}, which is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            # Two readers of the same body could otherwise see two different values.
            raise BodyError(key, "appears more than once in an object")
        obj[key] = value
    return obj


def _first_unacceptable(doc: Any) -> BodyError | None:
    """The first :class:`_Unacceptable` in ``doc``, named by the top-level field holding it."""
    fields = [(str(k), v) for k, v in doc.items()] if isinstance(doc, dict) else [("body", doc)]
    for field, top in fields:
        stack = [top]
        while stack:  # iterative: the value may nest as deep as the parser allowed
            value = stack.pop()
            if isinstance(value, _Unacceptable):
                return BodyError(field, value.problem)
            if isinstance(value, dict):
                stack.extend(value.values())
            elif isinstance(value, list):
                stack.extend(value)
    return None


def parse_json(raw: bytes) -> Any:
    """Decode a request body as JSON; raises :class:`BodyError` for anything else.

    Strict JSON: ``NaN``/``Infinity``, numbers beyond a float or :data:`MAX_INT_DIGITS`
    digits and duplicate keys are refused (naming the field when it is known), and any
    parser failure — nesting too deep included — is a :class:`BodyError`, never a 500.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("body", "is not UTF-8") from None
    try:
        doc = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
            object_pairs_hook=_unique_keys,
        )
    except BodyError:
        raise
    except RecursionError:
        raise BodyError("body", "is nested too deeply") from None
    except ValueError:  # JSONDecodeError, and anything a literal conversion still raises
        raise BodyError("body", "is not valid JSON") from None
    problem = _first_unacceptable(doc)
    if problem is not None:
        raise problem
    return doc


def structure(data: Any, cls: type[_T]) -> _T:
    """Shape-check ``data`` against the attrs class ``cls`` with the strict converter.

    Raises:
        BodyError: naming the first unknown field, else the first missing or mistyped
            field in declaration order.
    """
    if not isinstance(data, dict):
        raise BodyError("body", f"must be a JSON object, not {_json_type(data)}")
    try:
        return STRICT_CONVERTER.structure(data, cls)
    except cattrs.ClassValidationError as exc:
        raise _first_problem(exc, cls) from None


def _first_problem(exc: cattrs.ClassValidationError, cls: type) -> BodyError:
    with_notes, without_notes = exc.group_exceptions()
    for plain in without_notes:
        if isinstance(plain, cattrs.ForbiddenExtraKeysError):
            extra = sorted(plain.extra_fields)
            return BodyError(extra[0], "is not an allowed field")
    by_name: dict[str, BaseException] = {note.name: sub for sub, note in with_notes}
    for field in attrs.fields(cls):
        problem = by_name.get(field.name)
        if problem is None:
            continue
        if isinstance(problem, KeyError):
            return BodyError(field.name, "is required")
        return BodyError(field.name, str(problem))  # the strict hooks say what and what not
    return BodyError("body", "does not match the schema")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# ---- values ------------------------------------------------------------------------------
def _utf8(field: str, value: str) -> str:
    """Reject lone surrogates (``"\\ud800"`` is valid JSON but no valid file name or URL)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BodyError(field, "must be valid Unicode text") from None
    return value


def check_version(value: str, field: str = "version") -> str:
    """``1.2.3``: three dot-separated decimal numbers (ASCII digits, at most 64 chars); a
    leading ``v`` (``v1.2.3``) is accepted and dropped: the bare form is returned."""
    bare = bare_version(value)
    if len(value) > VERSION_MAX_LENGTH or not Version.is_valid(bare):
        raise BodyError(field, f"must look like 1.2.3 or v1.2.3 (pattern {TYPED_VERSION_PATTERN})")
    return bare


def check_url(value: str) -> str:
    """An absolute ``http``/``https`` URL with a host, or a ``file:///`` URL (its path is
    judged against ``local_package_dirs`` by the route)."""
    _utf8("package_url", value)
    if len(value) > URL_MAX_LENGTH:
        raise BodyError("package_url", f"must be at most {URL_MAX_LENGTH} characters")
    if not _URL_RE.fullmatch(value):
        raise BodyError(
            "package_url",
            "must be an http://, https:// or file:/// URL without spaces or control chars",
        )
    if value[:7].lower() == "file://":
        return value
    try:
        url = URL(value)
        host = url.host
    except (ValueError, TypeError, UnicodeError):
        raise BodyError("package_url", "is not a valid URL") from None
    if url.scheme not in ("http", "https") or not host:
        raise BodyError("package_url", "must be an http:// or https:// URL with a host")
    return value


def check_name(value: str) -> str:
    """A plain file name: no ``/``, no ``..``, no NUL or control characters, ≤ 255 bytes."""
    _utf8("package_name", value)
    if not value or value in (".", ".."):
        raise BodyError("package_name", "must be a plain file name")
    if "/" in value or "\x00" in value or ".." in value:
        raise BodyError("package_name", "must be a plain file name (no '/', '..' or NUL)")
    if not _NAME_RE.fullmatch(value):
        raise BodyError(
            "package_name", "must be a plain file name (no control characters or leading '.')"
        )
    if len(value.encode("utf-8")) > NAME_MAX_BYTES:
        raise BodyError("package_name", f"must be at most {NAME_MAX_BYTES} bytes")
    return value


def check_size(value: int) -> int:
    """A positive integer (JSON booleans and strings were already refused by the converter)."""
    if value <= 0 or value > MAX_PACKAGE_SIZE:
        raise BodyError("package_size", "must be an integer > 0")
    return value


def _hex(field: str, value: str, pattern: re.Pattern[str], length: int) -> str:
    if not pattern.fullmatch(value):
        raise BodyError(field, f"must be {length} hexadecimal characters")
    return value.lower()


def check_signature(value: str) -> str:
    """Standard base64 of exactly 64 bytes (an Ed25519 signature)."""
    if not _SIGNATURE_RE.fullmatch(value):
        raise BodyError("package_signature", "must be the base64 of a 64-byte Ed25519 signature")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BodyError("package_signature", "is not valid base64") from None
    if len(raw) != 64:
        raise BodyError("package_signature", "must decode to 64 bytes")
    return value


def validate_download(data: Any) -> DownloadRequest:
    """The :class:`DownloadRequest` of a ``POST /download`` body (digests lower-cased).

    Raises:
        BodyError: the first problem, naming its field.
    """
    # Types are checked against the request class itself; values are checked below.
    body = structure(data, DownloadRequest)
    return attrs.evolve(
        body,
        version=check_version(body.version),
        package_url=check_url(body.package_url),
        package_name=check_name(body.package_name),
        package_size=check_size(body.package_size),
        package_md5=_hex("package_md5", body.package_md5, _MD5_RE, 32),
        package_sha256=(
            None
            if body.package_sha256 is None
            else _hex("package_sha256", body.package_sha256, _SHA256_RE, 64)
        ),
        package_signature=(
            None if body.package_signature is None else check_signature(body.package_signature)
        ),
    )


def validate_update(data: Any) -> str:
    """The version of a ``POST /update`` body."""
    return check_version(structure(data, UpdateBody).version)


def validate_rollback(data: Any) -> RollbackTarget:
    """The target of a ``POST /rollback`` body (``{}`` or no body: ``previous``)."""
    return structure(data, RollbackBody).target


#: ``GET /history?limit=N``: at most this many (the history keeps no more).
HISTORY_MAX_LIMIT = 100
_LIMIT = re.compile(r"[1-9][0-9]{0,2}")


def validate_history_limit(values: list[str]) -> int:
    """The ``limit`` query parameter of ``GET /history`` (all of its values): absent is
    every entry; else one decimal integer from 1 to :data:`HISTORY_MAX_LIMIT`."""
    if not values:
        return HISTORY_MAX_LIMIT
    if len(values) > 1:
        raise BodyError("limit", "appears more than once")
    value = values[0]
    if not _LIMIT.fullmatch(value) or int(value) > HISTORY_MAX_LIMIT:
        raise BodyError("limit", f"must be an integer from 1 to {HISTORY_MAX_LIMIT}")
    return int(value)
