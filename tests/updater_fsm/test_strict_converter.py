"""The one strict converter: no coercion, enums by value, paths, tuples from arrays; and the
configuration's two inputs (typed TOML values, text) on top of it."""

from __future__ import annotations

import datetime
import json
import tempfile
from pathlib import Path
from typing import Any

import attrs
import cattrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from updater_fsm.config import _ONE_OR_MANY, Config, ConfigError, ServiceControl, load_config
from updater_fsm.control import RollbackTarget
from updater_fsm.core.manifest import HealthProbe, Module
from updater_fsm.core.printer import BusyPolicy
from updater_fsm.strict_converter import STRICT_CONVERTER, ValueRefused, json_type_name


def refusal(value: Any, type_: Any) -> str:
    with pytest.raises(ValueRefused) as info:
        STRICT_CONVERTER.structure(value, type_)
    return str(info.value)


@pytest.mark.parametrize(
    ("value", "type_", "message"),
    [
        ("no", bool, "must be true or false, got string"),
        (0, bool, "must be true or false, got integer"),
        ("10", int, "must be an integer, got string"),
        (True, int, "must be an integer, got boolean"),
        (1.0, int, "must be an integer, got number"),
        (1, str, "must be a string, got integer"),
        (None, str, "must be a string, got null"),
        (False, float, "must be a number, got boolean"),
        ("1.5", float, "must be a number, got string"),
        ("ab", tuple[str, ...], "must be an array of strings, got string"),
        (["a", 1], tuple[str, ...], "item 1 must be a string, got integer"),
        ({"a": 1}, tuple[Path, ...], "must be an array of paths, got object"),
        (["/a", ""], tuple[Path, ...], "item 1 must be a non-empty path, got ''"),
        ("", Path, "must be a non-empty path, got ''"),
        (["/a"], Path, "must be a non-empty path, got array"),
        ("init", ServiceControl, "must be one of systemd, none, got 'init'"),
        ("SYSTEMD", ServiceControl, "must be one of systemd, none, got 'SYSTEMD'"),
        (1, RollbackTarget, "must be one of previous, factory, got integer"),
        ([], HealthProbe, "must be an object, got array"),
        ("x", int | None, "must be an integer, got string"),
    ],
)
def test_nothing_is_coerced(value: Any, type_: Any, message: str) -> None:
    assert refusal(value, type_) == message


@pytest.mark.parametrize(
    ("value", "type_", "expected"),
    [
        (True, bool, True),
        (10, int, 10),
        (10, float, 10.0),
        (1.5, float, 1.5),
        ("x", str, "x"),
        ("none", ServiceControl, ServiceControl.NONE),
        ("factory", RollbackTarget, RollbackTarget.FACTORY),
        ("/opt/tope", Path, Path("/opt/tope")),
        (["/a", "b"], tuple[Path, ...], (Path("/a"), Path("b"))),
        (["a", "b"], tuple[str, ...], ("a", "b")),
        (None, int | None, None),
    ],
)
def test_exact_types_are_accepted(value: Any, type_: Any, expected: Any) -> None:
    result = STRICT_CONVERTER.structure(value, type_)
    assert result == expected
    assert type(result) is type(expected)


def test_enum_members_are_the_enum_not_plain_strings() -> None:
    assert STRICT_CONVERTER.structure("systemd", ServiceControl) is ServiceControl.SYSTEMD


def test_attrs_classes_refuse_unknown_keys_and_name_the_field() -> None:
    with pytest.raises(cattrs.ClassValidationError) as info:
        STRICT_CONVERTER.structure({"kind": "http", "target": 1, "extra": 0}, HealthProbe)
    messages = cattrs.transform_error(
        info.value, format_exception=lambda e, _t: type(e).__name__ + ": " + str(e)
    )
    assert "ValueRefused: must be a string, got integer @ $.target" in messages
    assert any(m.startswith("ForbiddenExtraKeysError") for m in messages)


def test_module_health_is_read_in_manifest_notation() -> None:
    module = STRICT_CONVERTER.structure(
        {"name": "a", "src": "a", "dst": "/a", "health": {"command": "/bin/true"}}, Module
    )
    assert module.health == HealthProbe("command", "/bin/true", 5.0)
    # The probe itself, as the journal stores it, keeps its own attrs shape.
    probe = HealthProbe("http", "http://x/", 2.0)
    assert STRICT_CONVERTER.structure(STRICT_CONVERTER.unstructure(probe), HealthProbe) == probe


# ---- any JSON value against any scalar type -------------------------------------------------
_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)
)
_ACCEPTS: dict[Any, tuple[str, ...]] = {
    str: ("string",),
    int: ("integer",),
    float: ("integer", "number"),
    bool: ("boolean",),
}


@given(value=_JSON_SCALARS, type_=st.sampled_from(sorted(_ACCEPTS, key=str)))
def test_a_scalar_is_accepted_exactly_when_its_json_type_matches(value: Any, type_: Any) -> None:
    accepted = json_type_name(value) in _ACCEPTS[type_]
    try:
        result = STRICT_CONVERTER.structure(value, type_)
    except ValueRefused as exc:
        assert not accepted
        assert str(exc).endswith(f", got {json_type_name(value)}")
    else:
        assert accepted
        assert type(result) is type_


# ---- configuration: typed TOML values --------------------------------------------------------
def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, datetime.date):
        return value.isoformat()
    return repr(value)  # int, float (inf and nan are TOML too)


_TOML_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=8)
_TOML_KINDS: dict[str, st.SearchStrategy[Any]] = {
    "string": _TOML_TEXT,
    "integer": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(),
    "boolean": st.booleans(),
    "date": st.dates(),
    "array of strings": st.lists(_TOML_TEXT, min_size=1, max_size=3),
    "array of non-strings": st.lists(st.integers() | st.booleans(), min_size=1, max_size=3),
}
_KINDS_ACCEPTED: dict[Any, set[str]] = {
    str: {"string"},
    str | None: {"string"},
    Path: {"string"},
    Path | None: {"string"},
    ServiceControl: {"string"},  # only its values, but that is the enum tests' business
    BusyPolicy: {"string"},
    int: {"integer"},
    float: {"integer", "float"},
    bool: {"boolean"},
    tuple[str, ...]: {"array of strings"},
    tuple[Path, ...]: {"array of strings"},
}
_FIELD_TYPES = {f.name: f.type for f in attrs.fields(attrs.resolve_types(Config))}


@st.composite
def _wrong_toml_value(draw: st.DrawFn) -> tuple[str, Any]:
    key = draw(st.sampled_from(sorted(_FIELD_TYPES)))
    accepted = _KINDS_ACCEPTED[_FIELD_TYPES[key]]
    if key in _ONE_OR_MANY:  # `trusted_key = "…"` is one entry of the list
        accepted = accepted | {"string"}
    wrong = sorted(set(_TOML_KINDS) - accepted)
    return key, draw(_TOML_KINDS[draw(st.sampled_from(wrong))])


def test_every_config_type_is_covered_by_the_fuzzer() -> None:
    assert set(_FIELD_TYPES.values()) <= set(_KINDS_ACCEPTED)


@given(case=_wrong_toml_value())
def test_a_toml_value_of_the_wrong_type_is_refused_naming_the_key(case: tuple[str, Any]) -> None:
    key, value = case
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "config.toml"
        file.write_text(f"{key} = {_toml(value)}\n", encoding="utf-8")
        with pytest.raises(
            ConfigError, match=rf"^config key '{key}': (item \d+ )?must be "
        ) as info:
            load_config(file=file, env={})
    assert str(info.value).endswith(f"(got {value!r})")


# ---- configuration: text from the environment and flags --------------------------------------
@given(
    word=st.sampled_from(["true", "1", "yes", "on", "false", "0", "no", "off"]),
    flips=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_boolean_words_in_any_case(word: str, flips: list[bool]) -> None:
    text = "".join(c.upper() if flip else c for c, flip in zip(word, flips, strict=False))
    config = load_config(env={"TOPE_UPDATER_ALLOW_DOWNGRADE": text})
    assert config.allow_downgrade is (word in ("true", "1", "yes", "on"))


@given(text=st.text(max_size=6))
def test_other_text_is_not_a_boolean(text: str) -> None:
    if text.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return
    with pytest.raises(ConfigError, match=r"^config key 'allow_downgrade': must be true or false"):
        load_config(env={"TOPE_UPDATER_ALLOW_DOWNGRADE": text})


@given(number=st.integers(1, 10**6))
def test_integers_from_text(number: int) -> None:
    assert load_config(env={"TOPE_UPDATER_DOWNLOAD_ATTEMPTS": str(number)}).download_attempts == (
        number
    )


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("PORT", "10x", "config key 'port': must be an integer (got '10x')"),
        ("SETTLE_S", "soon", "config key 'settle_s': must be a number (got 'soon')"),
        ("ROOT", "", "config key 'root': must be a non-empty path (got '')"),
        ("SERVICE_CONTROL", "init", "config key 'service_control': must be one of systemd, none"),
        ("UNITS", "'a b", "config key 'units': must be shell-quoted words (No closing quotation)"),
    ],
)
def test_bad_text_names_the_key_and_the_text(name: str, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={f"TOPE_UPDATER_{name}": text})
    assert str(info.value).startswith(message)


def test_text_lists_and_typed_overrides() -> None:
    config = load_config(
        env={"TOPE_UPDATER_EXTRA_ROOTS": "/etc/tope::/var/lib/tope:"},
        overrides={"port": 8080, "systemctl": "nsenter -t 1 'system ctl'"},
    )
    assert config.extra_roots == (Path("/etc/tope"), Path("/var/lib/tope"))
    assert config.port == 8080
    assert config.systemctl == ("nsenter", "-t", "1", "system ctl")
    with pytest.raises(ConfigError, match=r"^config key 'port': must be an integer"):
        load_config(env={}, overrides={"port": 80.0})
