"""A cattrs converter that refuses to coerce.

cattrs' defaults turn ``"no"`` into ``True`` and ``"10"`` into ``10``. Data arriving from
the network, a package or a journal must have exactly the declared types, so this converter
accepts a ``str`` only from a ``str``, an ``int`` only from an ``int`` that is not a
``bool``, a ``float`` from either number, and a ``bool`` only from a ``bool``.
"""

from __future__ import annotations

import enum
from typing import Any

import cattrs


def _strict_str(value: Any, type_: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"must be a string, not {type(value).__name__}")
    if issubclass(type_, enum.Enum):
        # A StrEnum is a str subclass, so singledispatch routes it here.
        return type_(value)  # type: ignore[return-value]
    return value


def _strict_int(value: Any, _type: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"must be an integer, not {type(value).__name__}")
    return value


def _strict_float(value: Any, _type: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"must be a number, not {type(value).__name__}")
    return float(value)


def _strict_bool(value: Any, _type: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"must be true or false, not {type(value).__name__}")
    return value


def make_strict_converter(*, forbid_extra_keys: bool = True) -> cattrs.Converter:
    """A fresh converter with strict scalar hooks (and unknown keys rejected by default)."""
    converter = cattrs.Converter(forbid_extra_keys=forbid_extra_keys)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(float, _strict_float)
    converter.register_structure_hook(bool, _strict_bool)
    return converter
