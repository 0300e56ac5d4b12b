"""fleet_ddi.ddi_protocol on answers shaped like hawkBit's (0.3.0M7, as the e2e tests see
them): every valid answer becomes a value, every malformed one a DdiProtocolError naming
the field, and nothing a server sends raises anything else."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fleet_ddi.ddi_protocol import (
    DETAIL_MAX,
    ControllerBase,
    DdiProtocolError,
    Deployment,
    Execution,
    Feedback,
    Finished,
    Handling,
    MaintenanceWindow,
    parse_base,
    parse_cancel,
    parse_deployment,
    parse_sleep,
)

H = "http://h/DEFAULT/controller/v1/x"
MD5 = "0123456789abcdef0123456789ABCDEF"
SHA1 = "0123456789abcdef0123456789abcdef01234567"
SHA256 = "ab" * 32

BASE: dict[str, Any] = {
    "config": {"polling": {"sleep": "00:05:00"}},
    "_links": {"deploymentBase": {"href": f"{H}/deploymentBase/3?c=-123"}},
}


def deployment_body(action: str = "3") -> dict[str, Any]:
    """``GET deploymentBase/3`` as hawkBit answers it: one module, one ZIP artifact."""
    return {
        "id": action,
        "deployment": {
            "download": "forced",
            "update": "attempt",
            "maintenanceWindow": "available",
            "chunks": [
                {
                    "part": "os",
                    "version": "1.1.0",
                    "name": "fw",
                    "artifacts": [
                        {
                            "filename": "update-1.1.0.zip",
                            "hashes": {"sha1": SHA1, "md5": MD5, "sha256": SHA256},
                            "size": 4096,
                            "_links": {
                                "download-http": {
                                    "href": f"{H}/softwaremodules/7/artifacts/update-1.1.0.zip"
                                },
                                "md5sum-http": {
                                    "href": f"{H}/softwaremodules/7/artifacts/"
                                    "update-1.1.0.zip.MD5SUM"
                                },
                            },
                        }
                    ],
                }
            ],
        },
        "actionHistory": {"status": "RUNNING", "messages": ["assigned"]},
    }


def art(body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = body["deployment"]["chunks"][0]["artifacts"][0]
    return result


# ---- the controller base resource ------------------------------------------------------


def test_base_with_a_deployment() -> None:
    base = parse_base(BASE)
    assert base == ControllerBase(
        sleep_s=300.0,
        deployment_url=f"{H}/deploymentBase/3?c=-123",
        deployment_action="3",
    )
    assert base.offers("3") and not base.offers("4")


def test_base_with_cancel_and_config_data() -> None:
    base = parse_base(
        {
            "config": {"polling": {"sleep": "12:00:01"}},
            "_links": {
                "cancelAction": {"href": f"{H}/cancelAction/11"},
                "configData": {"href": f"{H}/configData"},
            },
        }
    )
    assert base.sleep_s == 12 * 3600 + 1
    assert (base.cancel_url, base.cancel_action) == (f"{H}/cancelAction/11", "11")
    assert base.config_data_url == f"{H}/configData"
    assert base.deployment_url is None and base.deployment_action is None
    assert base.offers("11")


def test_base_nothing_to_do_defaults() -> None:
    assert parse_base({}) == ControllerBase(sleep_s=300.0)
    assert parse_base({"config": {"polling": {"sleep": "00:00:01"}}, "_links": {}}).sleep_s == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "controller base"),
        ("x", "controller base"),
        ({"config": []}, "config"),
        ({"config": {"polling": 5}}, "config.polling"),
        ({"config": {"polling": {"sleep": 300}}}, "config.polling.sleep"),
        ({"config": {"polling": {"sleep": "99:99:99"}}}, "config.polling.sleep"),
        ({"_links": "no"}, "_links"),
        ({"_links": {"deploymentBase": "x"}}, "_links.deploymentBase"),
        ({"_links": {"deploymentBase": {}}}, "_links.deploymentBase.href"),
        ({"_links": {"deploymentBase": {"href": 3}}}, "_links.deploymentBase.href"),
        (
            {"_links": {"deploymentBase": {"href": "file:///etc/passwd/deploymentBase/3"}}},
            "_links.deploymentBase.href",
        ),
        (
            {"_links": {"deploymentBase": {"href": "ftp://h/deploymentBase/3"}}},
            "_links.deploymentBase.href",
        ),
        ({"_links": {"deploymentBase": {"href": "http:///x/3"}}}, "_links.deploymentBase.href"),
        (
            {"_links": {"deploymentBase": {"href": f"{H}/deploymentBase/abc"}}},
            "_links.deploymentBase.href",
        ),
        (
            {"_links": {"deploymentBase": {"href": f"{H}/deploymentBase/{'9' * 20}"}}},
            "_links.deploymentBase.href",
        ),
        ({"_links": {"cancelAction": {"href": f"{H}/cancelAction/"}}}, "_links.cancelAction"),
        ({"_links": {"configData": {"href": "javascript:x"}}}, "_links.configData.href"),
        ({"_links": {"deploymentBase": {"href": "http://[::1/deploymentBase/3"}}}, "_links"),
        ({"_links": {"configData": {"href": "http://h:99999/configData"}}}, "_links"),
    ],
)
def test_base_malformed_names_the_field(body: Any, field: str) -> None:
    with pytest.raises(DdiProtocolError, match=rf"^{field}"):
        parse_base(body)


# ---- sleep ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:00:00", 0), ("00:05:00", 300), ("01:00:00", 3600), ("999:59:59", 3599999)],
)
def test_sleep(text: str, seconds: float) -> None:
    assert parse_sleep(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["99:99:99", "00:60:00", "00:00:60", "5", "", "1:2:3", "-1:00:00", "1000:00:00", "00:05:00\n"],
)
def test_sleep_malformed(text: str) -> None:
    with pytest.raises(DdiProtocolError, match=r"^config\.polling\.sleep"):
        parse_sleep(text)


@given(st.integers(0, 999), st.integers(0, 59), st.integers(0, 59))
def test_sleep_round_trip(h: int, m: int, s: int) -> None:
    assert parse_sleep(f"{h:02d}:{m:02d}:{s:02d}") == h * 3600 + m * 60 + s


# ---- cancel ---------------------------------------------------------------------------


def test_cancel() -> None:
    assert parse_cancel({"id": "11", "cancelAction": {"stopId": "3"}}) == "3"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (None, "cancel action"),
        ({}, "cancelAction"),
        ({"cancelAction": []}, "cancelAction"),
        ({"cancelAction": {}}, "stopId"),
        ({"cancelAction": {"stopId": 3}}, "stopId"),
        ({"cancelAction": {"stopId": "x3"}}, "cancelAction.stopId"),
        ({"cancelAction": {"stopId": ""}}, "cancelAction.stopId"),
        ({"cancelAction": {"stopId": "3\n"}}, "cancelAction.stopId"),
    ],
)
def test_cancel_malformed_names_the_field(body: Any, field: str) -> None:
    with pytest.raises(DdiProtocolError, match=rf"^{field}"):
        parse_cancel(body)


# ---- deployment -----------------------------------------------------------------------


def test_deployment() -> None:
    dep = parse_deployment(deployment_body(), "3")
    assert dep.action_id == "3"
    assert (dep.download, dep.update, dep.maintenance_window) == (
        Handling.FORCED,
        Handling.ATTEMPT,
        MaintenanceWindow.AVAILABLE,
    )
    req = dep.request
    assert req.version == "1.1.0"
    assert req.package_url == f"{H}/softwaremodules/7/artifacts/update-1.1.0.zip"
    assert req.package_name == "ddi-3-1.1.0.zip"
    assert req.package_size == 4096
    assert req.package_md5 == MD5.lower()
    assert req.package_sha256 == SHA256


def test_deployment_defaults_and_other_modules() -> None:
    body = deployment_body()
    dep_obj = body["deployment"]
    del dep_obj["download"], dep_obj["update"], dep_obj["maintenanceWindow"]
    # A second module without a ZIP (say, a signature file) is not our package.
    dep_obj["chunks"].append(
        {"part": "bApp", "version": "x", "artifacts": [{"filename": "notes.txt"}]}
    )
    # hawkBit's plain ``download`` link stands in when ``download-http`` is missing.
    links = art(body)["_links"]
    links["download"] = links.pop("download-http")
    dep = parse_deployment(body, "3")
    assert (dep.download, dep.update, dep.maintenance_window) == (
        Handling.FORCED,
        Handling.FORCED,
        None,
    )
    assert dep.request.package_url.endswith("update-1.1.0.zip")


Mutation = Callable[[dict[str, Any]], None]


def _set(path: tuple[Any, ...], value: Any) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        target: Any = body
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _del(path: tuple[Any, ...]) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        target: Any = body
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


D = ("deployment",)
C0 = (*D, "chunks", 0)
A0 = (*C0, "artifacts", 0)


def _two_zips(body: dict[str, Any]) -> None:
    body["deployment"]["chunks"].append(copy.deepcopy(body["deployment"]["chunks"][0]))


MALFORMED: list[tuple[str, Mutation, str]] = [
    ("not an object", lambda b: b.clear() or b.update({"id": 3}), "id"),
    ("other action", _set(("id",), "4"), "id"),
    ("no deployment", _del(D), "deployment"),
    ("deployment list", _set(D, []), "deployment"),
    ("bad download", _set((*D, "download"), "later"), "deployment.download"),
    ("bad update", _set((*D, "update"), 1), "deployment.update"),
    ("bad window", _set((*D, "maintenanceWindow"), "open"), "deployment.maintenanceWindow"),
    ("no chunks", _del((*D, "chunks")), "deployment.chunks"),
    ("empty chunks", _set((*D, "chunks"), []), "deployment.chunks"),
    ("chunk not object", _set(C0, "c"), r"chunks\[0\]"),
    ("chunk version", _set((*C0, "version"), 110), r"chunks\[0\]\.version"),
    ("artifacts dict", _set((*C0, "artifacts"), {}), r"chunks\[0\]\.artifacts"),
    ("artifact str", _set(A0, "a.zip"), r"chunks\[0\]\.artifacts\[0\]"),
    ("filename", _set((*A0, "filename"), None), r"chunks\[0\]\.artifacts\[0\]\.filename"),
    ("no zip", _set((*A0, "filename"), "update.tar"), "deployment: needs exactly one .zip"),
    ("no artifacts", _set((*C0, "artifacts"), []), "deployment: needs exactly one .zip"),
    ("two zips", _two_zips, "deployment: needs exactly one .zip.*found 2"),
    ("version", _set((*C0, "version"), "1.1"), "chunk version"),
    ("no hashes", _del((*A0, "hashes")), "artifact.hashes"),
    ("md5 missing", _del((*A0, "hashes", "md5")), "artifact.hashes.md5"),
    ("md5 short", _set((*A0, "hashes", "md5"), "abc"), "artifact.hashes.md5"),
    ("sha256 missing", _del((*A0, "hashes", "sha256")), "artifact.hashes.sha256"),
    ("sha256 not hex", _set((*A0, "hashes", "sha256"), "zz" * 32), "artifact.hashes.sha256"),
    ("sha256 newline", _set((*A0, "hashes", "sha256"), SHA256 + "\n"), "artifact.hashes.sha256"),
    ("size missing", _del((*A0, "size")), "artifact.size"),
    ("size zero", _set((*A0, "size"), 0), "artifact.size"),
    ("size float", _set((*A0, "size"), 4096.0), "artifact.size"),
    ("size bool", _set((*A0, "size"), True), "artifact.size"),
    ("size string", _set((*A0, "size"), "4096"), "artifact.size"),
    ("no links", _del((*A0, "_links")), "artifact._links"),
    ("no download link", _set((*A0, "_links"), {}), "artifact._links"),
    (
        "download scheme",
        _set((*A0, "_links", "download-http"), {"href": "file:///etc/shadow"}),
        "_links.download-http.href",
    ),
    (
        "download not IPv6",
        _set((*A0, "_links", "download-http"), {"href": "http://[fe80::1/a.zip"}),
        "_links.download-http.href",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "field"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_deployment_malformed_names_the_field(mutate: Mutation, field: str) -> None:
    body = deployment_body()
    mutate(body)
    with pytest.raises(DdiProtocolError, match=rf"^{field}"):
        parse_deployment(body, "3")


def test_deployment_not_an_object() -> None:
    for body in (None, [], "x", 3):
        with pytest.raises(DdiProtocolError, match=r"^deployment base"):
            parse_deployment(body, "3")


# ---- nothing but DdiProtocolError ------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "00:05:00",
            "99:99:99",
            "forced",
            "skip",
            "available",
            "x.zip",
            "1.1.0",
            "http://h/deploymentBase/3",
            "http://[::1/x/3",
            "http://h:99999/x/3",
            "https://h/cancelAction/4",
            "file:///x/3",
            MD5,
            SHA256,
        ]
    )
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "config",
                    "polling",
                    "sleep",
                    "_links",
                    "deploymentBase",
                    "cancelAction",
                    "configData",
                    "href",
                    "stopId",
                    "id",
                    "deployment",
                    "chunks",
                    "artifacts",
                    "version",
                    "filename",
                    "hashes",
                    "md5",
                    "sha256",
                    "size",
                    "download-http",
                    "download",
                    "update",
                    "maintenanceWindow",
                ]
            )
            | st.text(max_size=8),
            inner,
            max_size=5,
        )
    ),
    max_leaves=30,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    value = copy.copy(value)
    value[path[0]] = _replace(value[path[0]], path[1:], new)
    return value


@st.composite
def near_valid(draw: st.DrawFn, valid: Any) -> Any:
    """A valid answer with one part (any depth, maybe the whole) replaced by any JSON."""
    path = draw(st.sampled_from(_paths(valid)))
    return _replace(valid, path, draw(json_values))


PARSERS: dict[str, Callable[[Any], object]] = {
    "base": parse_base,
    "cancel": parse_cancel,
    "deployment": lambda body: parse_deployment(body, "3"),
    "sleep": parse_sleep,
}


def _only_protocol_errors(parser: str, body: Any) -> None:
    # JSON-shaped for real: what json.loads could have given the client.
    body = json.loads(json.dumps(body))
    with contextlib.suppress(DdiProtocolError):
        PARSERS[parser](body)


@given(st.sampled_from(sorted(PARSERS)), json_values)
def test_any_json_raises_only_protocol_errors(parser: str, body: Any) -> None:
    _only_protocol_errors(parser, body)


@given(near_valid(BASE))
def test_near_valid_base_raises_only_protocol_errors(body: Any) -> None:
    _only_protocol_errors("base", body)


@given(near_valid(deployment_body()))
def test_near_valid_deployment_raises_only_protocol_errors(body: Any) -> None:
    _only_protocol_errors("deployment", body)


@given(near_valid({"id": "11", "cancelAction": {"stopId": "3"}}))
def test_near_valid_cancel_raises_only_protocol_errors(body: Any) -> None:
    _only_protocol_errors("cancel", body)


# ---- feedback -------------------------------------------------------------------------


def test_feedback_body_shape() -> None:
    fb = Feedback("3", Execution.PROCEEDING, Finished.NONE, ("downloading 1.1.0",), (2, 6))
    assert fb.body() == {
        "id": "3",
        "status": {
            "execution": "proceeding",
            "result": {"finished": "none", "progress": {"cnt": 2, "of": 6}},
            "details": ["downloading 1.1.0"],
        },
    }
    assert not fb.final


def test_final_feedback_body_without_progress() -> None:
    fb = Feedback("3", Execution.CLOSED, Finished.FAILURE, ("VALIDATION_ERROR: x", "running 1.0.0"))
    body = fb.body()
    assert body["id"] == "3"
    assert body["status"] == {
        "execution": "closed",
        "result": {"finished": "failure"},
        "details": ["VALIDATION_ERROR: x", "running 1.0.0"],
    }
    assert fb.final
    json.dumps(body)  # serialisable as is


@given(st.text(max_size=2 * DETAIL_MAX) | st.integers(0, 3 * DETAIL_MAX).map(lambda n: "é" * n))
@example("x" * DETAIL_MAX)
@example("x" * (DETAIL_MAX + 1))
def test_details_truncated_to_detail_max(text: str) -> None:
    (detail,) = Feedback("3", Execution.CLOSED, Finished.SUCCESS, (text,)).body()["status"][
        "details"
    ]
    assert len(detail) <= DETAIL_MAX
    if len(text) <= DETAIL_MAX:
        assert detail == text
    else:
        assert detail == text[: DETAIL_MAX - 1] + "…"


# ---- download only / may install now ----------------------------------------------------


@pytest.mark.parametrize(
    ("update", "window", "download_only", "may_install"),
    [
        (Handling.SKIP, None, True, False),
        (Handling.SKIP, MaintenanceWindow.AVAILABLE, False, False),
        (Handling.SKIP, MaintenanceWindow.UNAVAILABLE, False, False),
        (Handling.ATTEMPT, None, False, True),
        (Handling.ATTEMPT, MaintenanceWindow.AVAILABLE, False, True),
        (Handling.ATTEMPT, MaintenanceWindow.UNAVAILABLE, False, False),
        (Handling.FORCED, None, False, True),
        (Handling.FORCED, MaintenanceWindow.AVAILABLE, False, True),
        (Handling.FORCED, MaintenanceWindow.UNAVAILABLE, False, False),
    ],
)
def test_download_only_and_may_install_now(
    update: Handling, window: MaintenanceWindow | None, download_only: bool, may_install: bool
) -> None:
    body = deployment_body()
    body["deployment"]["update"] = update.value
    if window is None:
        del body["deployment"]["maintenanceWindow"]
    else:
        body["deployment"]["maintenanceWindow"] = window.value
    dep = parse_deployment(body, "3")
    assert isinstance(dep, Deployment)
    assert (dep.download_only, dep.may_install_now) == (download_only, may_install)
