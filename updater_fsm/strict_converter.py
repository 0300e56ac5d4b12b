"""The one strict converter: configuration, manifests, request bodies and the journal.

cattrs' defaults turn ``"no"`` into ``True``, ``"10"`` into ``10`` and the string ``"ab"``
into the tuple ``("a", "b")``. Data arriving from a file, the network, a package or a journal
must have exactly the declared types, so :data:`STRICT_CONVERTER` refuses to coerce:

===========================  ==================================================================
declared type                accepted from
===========================  ==================================================================
``str``                      a ``str``
``int``                      an ``int`` that is not a ``bool``
``float``                    an ``int`` or ``float`` that is not a ``bool``
``bool``                     a ``bool``
a ``StrEnum``/``Enum``       one of its values (a ``str``), e.g. ``ServiceControl``
``Path``                     a non-empty ``str``
``tuple[X, ...]``            a list (or tuple) whose items are each accepted as ``X``
an attrs class               an object (``dict``); unknown keys are refused
``X | None``                 ``None`` or what ``X`` accepts
===========================  ==================================================================

A value that is refused raises :class:`ValueRefused`, whose message says what was required
and what was given (``must be an integer, got string``); inside an attrs class cattrs
collects these in a ``ClassValidationError`` whose notes name the field
(:func:`cattrs.transform_error` turns them into ``"<message> @ <path>"``).

Text (environment variables, command-line flags) is not a typed source: the configuration
turns it into typed values first (:mod:`updater_fsm.config`), then structures those here.
A manifest's own notations (the ``dest`` alias, unknown keys that are tolerated) are handled
by :mod:`updater_fsm.package.manifest` before structuring; its ``health`` notation is
:class:`~updater_fsm.core.manifest.HealthProbeNotation`, turned into a ``HealthProbe`` here.
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from updater_fsm.core.manifest import HealthProbe, HealthProbeNotation, Module


class ValueRefused(ValueError):
    """A value does not have the declared type (or is not one of the allowed values).

    Args:
        requirement: what the value must be, e.g. ``"must be an integer"``.
        got: what it was, e.g. ``"string"`` or ``"'init'"``; None when the requirement
            says it all.
    """

    def __init__(self, requirement: str, got: str | None = None) -> None:
        super().__init__(requirement if got is None else f"{requirement}, got {got}")
        self.requirement = requirement
        self.got = got


_JSON_TYPE_NAMES: dict[type, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    tuple: "array",
    dict: "object",
}


def json_type_name(value: object) -> str:
    """The JSON (and TOML) name of ``value``'s type: ``null``, ``boolean``, ``string``, …"""
    if value is None:
        return "null"
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _refuse_type(requirement: str, value: object) -> NoReturn:
    raise ValueRefused(requirement, json_type_name(value))


# ---- scalars -------------------------------------------------------------------------------
def _structure_str(value: object, _type: object) -> str:
    if not isinstance(value, str):
        _refuse_type("must be a string", value)
    return value


def _structure_int(value: object, _type: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _refuse_type("must be an integer", value)
    return value


def _structure_float(value: object, _type: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _refuse_type("must be a number", value)
    return float(value)


def _structure_bool(value: object, _type: object) -> bool:
    if not isinstance(value, bool):
        _refuse_type("must be true or false", value)
    return value


def _structure_path(value: object, _type: object) -> Path:
    if not isinstance(value, str):
        _refuse_type("must be a non-empty path", value)
    if not value:
        raise ValueRefused("must be a non-empty path", "''")
    return Path(value)


def _structure_enum(value: object, type_: type[enum.Enum]) -> enum.Enum:
    choices = [member.value for member in type_]
    requirement = f"must be one of {', '.join(str(c) for c in choices)}"
    if not isinstance(value, str):
        _refuse_type(requirement, value)
    if value not in choices:
        raise ValueRefused(requirement, repr(value))
    return type_(value)


# ---- containers ----------------------------------------------------------------------------
_PLURALS: dict[object, str] = {str: "strings", Path: "paths", int: "integers", float: "numbers"}


def _is_homogeneous_tuple(type_: object) -> bool:
    args = typing.get_args(type_)
    return typing.get_origin(type_) is tuple and len(args) == 2 and args[1] is Ellipsis


def _tuple_hook_for(converter: cattrs.Converter) -> Callable[[object], Any]:
    def factory(type_: object) -> Callable[[object, object], tuple[Any, ...]]:
        item_type = typing.get_args(type_)[0]
        noun = _PLURALS.get(item_type, "objects" if attrs.has(item_type) else "values")
        requirement = f"must be an array of {noun}"

        def structure_tuple(value: object, _type: object) -> tuple[Any, ...]:
            if not isinstance(value, list | tuple):
                _refuse_type(requirement, value)
            items = []
            for index, item in enumerate(value):
                try:
                    items.append(converter.structure(item, item_type))
                except ValueRefused as exc:
                    raise ValueRefused(f"item {index} {exc.requirement}", exc.got) from None
            return tuple(items)

        return structure_tuple

    return factory


def _health_from_notation(converter: cattrs.Converter) -> Callable[[object, object], Any]:
    """``Module.health`` is written in manifest notation (``{"http": url}``)."""

    def structure_health(value: object, _type: object) -> HealthProbe | None:
        if value is None:
            return None
        notation = converter.structure(value, HealthProbeNotation)
        try:
            return notation.probe()
        except ValueError as exc:
            raise ValueRefused(str(exc)) from None

    return structure_health


def _attrs_hook_for(converter: cattrs.Converter) -> Callable[[type], Any]:
    def factory(cls: type) -> Callable[[object, object], Any]:
        overrides: dict[str, Any] = {}
        if cls is Module:
            overrides["health"] = override(struct_hook=_health_from_notation(converter))
        from_dict: Callable[[Any, Any], Any] = make_dict_structure_fn(cls, converter, **overrides)

        def structure_object(value: object, _type: object) -> Any:
            if not isinstance(value, dict):
                _refuse_type("must be an object", value)
            return from_dict(value, cls)

        return structure_object

    return factory


def _build() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(Path, _structure_path)
    # A StrEnum is also a str: registering StrEnum puts it ahead of str in the lookup.
    converter.register_structure_hook(enum.Enum, _structure_enum)
    converter.register_structure_hook(enum.StrEnum, _structure_enum)
    converter.register_structure_hook_factory(_is_homogeneous_tuple, _tuple_hook_for(converter))
    converter.register_structure_hook_factory(attrs.has, _attrs_hook_for(converter))
    return converter


#: The converter every parser of outside data uses (see the module docstring).
STRICT_CONVERTER = _build()
