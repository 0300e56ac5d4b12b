"""The hand-written OpenAPI 3.0 description of the HTTP API, served at ``/openapi.json``.

Written to match the behaviour exactly: request schemas use the very patterns
:mod:`http_shell.api.bodies` validates with and forbid unknown fields; every JSON response
is the envelope ``{"code", "msg", "data"}`` with HTTP 200 (the outcome is ``code``). When an
API token is configured the document also declares the bearer scheme and the HTTP 401 that
mutating endpoints answer without it (GET endpoints stay open). Every operation lists the
HTTP 403 of :mod:`http_shell.api.guard` (foreign ``Host``/``Origin``). ``tests/http_shell`` checks
that every route is listed and runs schemathesis against the document when available.
"""

from __future__ import annotations

from typing import Any

from http_shell.api import bodies as b
from updater_fsm.control import TYPED_VERSION_PATTERN, VERSION_MAX_LENGTH, Stage, State

PREFIX = "/api/v1.0"
Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


_VERSION: Schema = {
    "type": "string",
    "pattern": TYPED_VERSION_PATTERN,
    "maxLength": VERSION_MAX_LENGTH,
    "example": "1.2.3",
}
_STR_OR_NULL: Schema = {"type": "string", "nullable": True}

_SCHEMAS: dict[str, Schema] = {
    "DownloadBody": {
        "type": "object",
        "additionalProperties": False,
        "required": ["version", "package_url", "package_name", "package_size", "package_md5"],
        "properties": {
            "version": _VERSION,
            "package_url": {
                "type": "string",
                "format": "uri",
                "pattern": b.URL_PATTERN,
                "maxLength": b.URL_MAX_LENGTH,
                "description": (
                    "http:// or https:// URL with a host; file:///path names a package file"
                    " on the device, accepted only under the configured local_package_dirs"
                ),
                "example": "http://10.0.0.5/tope-1.2.3.zip",
            },
            "package_name": {
                "type": "string",
                "pattern": b.NAME_PATTERN,
                "minLength": 1,
                "maxLength": b.NAME_MAX_BYTES,
                "description": "A plain file name: no '/', no '..', no NUL or other control"
                " characters, no leading '.', at most 255 bytes in UTF-8.",
                "example": "tope-1.2.3.zip",
            },
            "package_size": {
                "type": "integer",
                "format": "int64",
                "minimum": 1,
                "maximum": b.MAX_PACKAGE_SIZE,
                "description": "Bytes; a JSON integer (not a string, not a boolean).",
            },
            "package_md5": {
                "type": "string",
                "pattern": b.MD5_PATTERN,
                "description": "Upper case accepted, stored lower case.",
            },
            "package_sha256": _nullable({"type": "string", "pattern": b.SHA256_PATTERN}),
            "package_signature": _nullable(
                {
                    "type": "string",
                    "pattern": b.SIGNATURE_PATTERN,
                    "description": "Base64 Ed25519 signature over the package's raw SHA-256.",
                }
            ),
        },
    },
    "UpdateBody": {
        "type": "object",
        "additionalProperties": False,
        "required": ["version"],
        "properties": {"version": _VERSION},
    },
    "RollbackBody": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "target": {"type": "string", "enum": list(b.ROLLBACK_TARGETS), "default": "previous"}
        },
    },
    "Envelope": {
        "type": "object",
        "required": ["code", "msg", "data"],
        "properties": {
            "code": {
                "type": "integer",
                "enum": [200, 400, 401, 403, 404, 409, 410, 500, 503],
                "description": "The outcome. 400: msg starts 'VALIDATION_ERROR: <field>'.",
            },
            "msg": {"type": "string"},
            "data": {"nullable": True},
        },
    },
    "Progress": {
        "type": "object",
        "required": ["stage", "progress", "message", "error"],
        "properties": {
            "stage": {"type": "string", "enum": [s.value for s in Stage]},
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "message": {"type": "string"},
            "error": _STR_OR_NULL,
            "state": {"type": "string", "enum": [s.value for s in State]},
            "version": _STR_OR_NULL,
            "bytes_downloaded": {"type": "integer", "minimum": 0},
            "total_bytes": {"type": "integer", "minimum": 0},
            "speed_bps": {"type": "number", "minimum": 0},
            "eta_s": {"type": "number", "nullable": True},
            "current_version": _STR_OR_NULL,
            "previous_version": _STR_OR_NULL,
            "factory_version": _STR_OR_NULL,
            "rollback_level": {"type": "integer", "enum": [0, 1, 2]},
            "from_version": {
                **_STR_OR_NULL,
                "description": "The version that ran when the job's install began (null"
                " before its switch): after a rollback, which update failed.",
            },
            "retry": {
                "type": "object",
                "nullable": True,
                "description": "While a download waits to try again (null otherwise): why,"
                " in how many seconds, and which attempt of how many.",
                "required": ["reason", "in_s", "attempt", "attempts"],
                "properties": {
                    "reason": {"type": "string"},
                    "in_s": {"type": "number", "minimum": 0},
                    "attempt": {"type": "integer", "minimum": 2},
                    "attempts": {"type": "integer", "minimum": 1},
                },
            },
        },
    },
    "Versions": {
        "type": "object",
        "required": ["current", "previous", "factory", "installed", "rollback_floor"],
        "properties": {
            "current": _STR_OR_NULL,
            "previous": _STR_OR_NULL,
            "factory": _STR_OR_NULL,
            "rollback_floor": _STR_OR_NULL,
            "installed": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["version", "size_bytes", "links"],
                    "properties": {
                        "version": {"type": "string"},
                        "size_bytes": {"type": "integer", "minimum": 0},
                        "links": {
                            "type": "array",
                            "items": {"type": "string", "enum": ["current", "previous", "factory"]},
                        },
                    },
                },
            },
        },
    },
    "History": {
        "type": "object",
        "required": ["entries"],
        "properties": {
            "entries": {
                "type": "array",
                "maxItems": b.HISTORY_MAX_LIMIT,
                "description": "The last jobs, newest first.",
                "items": _ref("HistoryEntry"),
            }
        },
    },
    "HistoryEntry": {
        "type": "object",
        "required": [
            "job_id",
            "kind",
            "from_version",
            "to_version",
            "source",
            "fleet_action",
            "file",
            "started_at",
            "ended_at",
            "outcome",
            "error_code",
            "error",
            "rollback_level",
        ],
        "properties": {
            "job_id": {"type": "integer", "minimum": 1},
            "kind": {"type": "string", "enum": ["update", "manual_rollback"]},
            "from_version": {
                **_STR_OR_NULL,
                "description": "What ran when the install began (null: it ended before"
                " the switch).",
            },
            "to_version": {
                **_STR_OR_NULL,
                "description": "The version installed, or rolled back to by hand.",
            },
            "source": {
                "type": "string",
                "enum": ["api", "fleet", "file"],
                "description": "api: device-api or the CLI (the HTTP API); fleet: a fleet"
                " server's action (fleet_action); file: a package file of the device"
                " (a file:// URL: tope-updater install, a USB stick).",
            },
            "fleet_action": _STR_OR_NULL,
            "file": {**_STR_OR_NULL, "description": "The package's file name."},
            "started_at": {"type": "number", "description": "UNIX time"},
            "ended_at": {"type": "number", "description": "UNIX time"},
            "outcome": {
                "type": "string",
                "enum": ["success", "failed", "rolled_back", "cancelled", "expired", "replaced"],
            },
            "error_code": _STR_OR_NULL,
            "error": _STR_OR_NULL,
            "rollback_level": {"type": "integer", "enum": [0, 1, 2]},
        },
    },
    "Status": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    },
    "Health": {
        "type": "object",
        "required": ["state", "stage", "updater_version"],
        "properties": {
            "state": {"type": "string", "enum": [s.value for s in State]},
            "stage": {"type": "string", "enum": [s.value for s in Stage]},
            "updater_version": {"type": "string"},
            "reporter": {"type": "object", "nullable": True},
            "fleet": {"type": "object", "nullable": True},
        },
    },
}


def _envelope(data: Schema | None, description: str) -> Schema:
    schema: Schema = {"allOf": [_ref("Envelope")]}
    if data is not None:
        schema["allOf"].append({"properties": {"data": {**data, "nullable": True}}})
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(name: str, *, required: bool = True) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": _ref(name)}}}


def _op(
    summary: str,
    codes: str,
    data: Schema | None,
    *,
    body: Schema | None = None,
    mutating: bool = False,
    auth: bool = False,
) -> Schema:
    op: Schema = {
        "summary": summary,
        "description": f"Envelope codes: {codes}.",
        "responses": {"200": _envelope(data, f"Envelope; code {codes}")},
    }
    if body is not None:
        op["requestBody"] = body
    if mutating and auth:
        op["security"] = [{"bearerAuth": []}]
        op["responses"]["401"] = _envelope(
            None, "Missing or wrong bearer token (HTTP 401, envelope code 401)"
        )
    return op


def openapi_document(*, auth: bool = False) -> Schema:
    """The OpenAPI 3.0 document; ``auth`` adds the bearer scheme of mutating endpoints."""
    status = _ref("Status")
    paths: dict[str, Schema] = {
        "/download": {
            "post": _op(
                "Start downloading and verifying a package (idempotent for the same one)",
                "200 downloading, 400 validation, 409 OPERATION_IN_PROGRESS, 500",
                status,
                body=_body("DownloadBody"),
                mutating=True,
                auth=auth,
            )
        },
        "/update": {
            "post": _op(
                "Install the verified package of this version",
                "200 installing, 400, 404 PACKAGE_NOT_FOUND, 409, 410 PACKAGE_EXPIRED, 500",
                status,
                body=_body("UpdateBody"),
                mutating=True,
                auth=auth,
            )
        },
        "/progress": {
            "get": _op(
                "Progress snapshot (code 500 with msg 'Update failed: <error>' when failed)",
                "200, 500",
                _ref("Progress"),
            )
        },
        "/versions": {
            "get": _op("Installed snapshots and what the links name", "200", _ref("Versions"))
        },
        "/history": {
            "get": {
                **_op(
                    "The last jobs (at most 100), newest first",
                    "200, 400 VALIDATION_ERROR (limit)",
                    _ref("History"),
                ),
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "At most this many entries (default: all)",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": b.HISTORY_MAX_LIMIT,
                        },
                    }
                ],
            }
        },
        "/cancel": {
            "post": _op(
                "Cancel the download, verification, waiting package or staging",
                "200 cancelled, 409 NOTHING_TO_CANCEL / OPERATION_IN_PROGRESS",
                status,
                mutating=True,
                auth=auth,
            )
        },
        "/rollback": {
            "post": _op(
                "Roll back by hand to the previous (default) or the factory version",
                "200 rolling_back, 400, 404 VERSION_NOT_FOUND, 409",
                status,
                body=_body("RollbackBody", required=False),
                mutating=True,
                auth=auth,
            )
        },
        "/reset": {
            "post": _op(
                "Forget a finished job (success/failed/idle → idle, package deleted)",
                "200 idle, 409",
                status,
                mutating=True,
                auth=auth,
            )
        },
        "/events": {
            "get": {
                "summary": "Server-Sent Events: 'event: progress' with the Progress JSON per"
                " change, starting with the current one; ': ping' comments as heartbeat",
                "responses": {
                    "200": {
                        "description": "An endless event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "503": _envelope(
                        None,
                        "TOO_MANY_CLIENTS: the limit of open event streams is reached"
                        " (HTTP 503 with Retry-After, envelope code 503)",
                    ),
                },
            }
        },
        "/statechart": {
            "get": {
                "summary": "Mermaid source of the statechart, the current state highlighted",
                "responses": {
                    "200": {
                        "description": "Mermaid stateDiagram-v2",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.0",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/healthz": {"get": _op("Liveness: the engine state", "200", _ref("Health"))},
    }
    if auth:
        events = paths["/events"]["get"]
        events["security"] = [{"bearerAuth": []}]
        events["responses"]["401"] = _envelope(
            None, "Missing or wrong bearer token (HTTP 401, envelope code 401)"
        )
    for ops in paths.values():
        for op in ops.values():
            op["responses"]["403"] = _envelope(
                None,
                "FORBIDDEN: the Host header is not a name the updater serves, or the Origin"
                " header is not its own origin (HTTP 403, envelope code 403)",
            )
    doc: Schema = {
        "openapi": "3.0.3",
        "info": {
            "title": "tope-updater",
            "version": "1.0",
            "description": "OTA update agent. Every JSON response is HTTP 200 with"
            ' {"code", "msg", "data"}; the outcome is `code`. Malformed JSON, wrong types,'
            " extra or missing fields answer code 400 `VALIDATION_ERROR: <field> …`."
            " Request bodies may be at most 64 KiB and must be sent as"
            " `Content-Type: application/json` (else code 400). A foreign `Host` or `Origin`"
            " header is refused with HTTP 403, envelope code 403 `FORBIDDEN: …`."
            + (
                " Mutating endpoints and /events require `Authorization: Bearer <token>`;"
                " without it they"
                " answer HTTP 401 with the envelope code 401."
                if auth
                else ""
            ),
        },
        "servers": [{"url": PREFIX}],
        "paths": paths,
        "components": {"schemas": _SCHEMAS},
    }
    if auth:
        doc["components"] = {
            **doc["components"],
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        }
    return doc
