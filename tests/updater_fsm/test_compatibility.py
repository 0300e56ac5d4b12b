"""Which device models a package may be installed on (core/compatibility.py), as a table."""

from __future__ import annotations

import pytest

from updater_fsm.core.compatibility import refuse_incompatible
from updater_fsm.core.errors import ErrorCode

NO_MODEL = (
    "package names no device model, this device is tope-x1 (build it with --compatible, or"
    " set allow_incompatible)"
)


@pytest.mark.parametrize(
    ("package", "device", "allow", "detail"),
    [
        ("tope-x1", "tope-x1", False, None),
        ("tope-x2", "tope-x1", False, "package is for tope-x2, this device is tope-x1"),
        ("tope-x2", "tope-x1", True, "package is for tope-x2, this device is tope-x1"),
        (None, "tope-x1", False, NO_MODEL),
        (None, "tope-x1", True, None),
        ("tope-x2", None, False, None),
        (None, None, False, None),
        ("TOPE-X1", "tope-x1", False, "package is for TOPE-X1, this device is tope-x1"),
    ],
)
def test_the_rule(package: str | None, device: str | None, allow: bool, detail: str | None) -> None:
    refusal = refuse_incompatible(package, device, allow)
    if detail is None:
        assert refusal is None
    else:
        assert refusal is not None and refusal.code is ErrorCode.INCOMPATIBLE_DEVICE
        assert refusal.detail == detail
