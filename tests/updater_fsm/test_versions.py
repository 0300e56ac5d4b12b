"""Versions have one type and one parser; every edge that reads a version uses it."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from updater_fsm.core.versions import VERSION_MAX_LENGTH, InvalidVersion, Version
from updater_fsm.ops import snapshot_store


@pytest.mark.parametrize("text", ["1.2.3", "0.0.0", "10.20.30", "01.2.3"])
def test_accepts(text: str) -> None:
    assert str(Version.parse(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "1.2.3\n",  # the old `$`-anchored regexes accepted this
        "\n1.2.3",
        "v1.2.3",
        "1.2",
        "1.2.3.4",
        "1.2.x",
        "\u0661.\u0662.\u0663",  # Arabic-Indic digits (Python's \d matches them)
        "",
        " 1.2.3",
        "1." * 40 + "1",
        "1" * VERSION_MAX_LENGTH + ".0.0",
    ],
)
def test_refuses(text: str) -> None:
    with pytest.raises(InvalidVersion, match=r"must look like 1\.2\.3"):
        Version.parse(text)
    assert not Version.is_valid(text)


@pytest.mark.parametrize("value", [None, 123, 1.2, ["1.2.3"], b"1.2.3"])
def test_refuses_non_strings(value: object) -> None:
    with pytest.raises(InvalidVersion):
        Version.parse(value)


def test_order_is_numeric() -> None:
    assert Version.parse("1.9.0").is_older_than(Version.parse("1.10.0"))
    assert not Version.parse("2.0.0").is_older_than(Version.parse("1.99.99"))
    assert not Version.parse("1.2.3").is_older_than(Version.parse("1.2.3"))


@given(st.tuples(*[st.integers(0, 10**6)] * 3))
def test_round_trip_and_key(parts: tuple[int, int, int]) -> None:
    text = ".".join(map(str, parts))
    version = Version.parse(text)
    assert str(version) == text and version.key == parts


def test_snapshot_names_and_manifests_use_the_same_parser(tmp_path: Path) -> None:
    """A trailing newline was a valid snapshot name and manifest version before."""
    assert snapshot_store.snapshot_version("v1.2.3") == "1.2.3"
    assert snapshot_store.snapshot_version("v1.2.3\n") is None
    assert snapshot_store.snapshot_version("1.2.3") is None
    layout = snapshot_store.Layout(tmp_path)
    with pytest.raises(InvalidVersion):
        layout.snapshot_dir("1.2.3\n")


def test_manifest_version_with_a_newline_is_refused(tmp_path: Path) -> None:
    from updater_fsm.core.errors import ErrorCode, UpdaterError
    from updater_fsm.package.limits import PackageLimits
    from updater_fsm.package.manifest import read_package

    pkg = tmp_path / "p.zip"
    with zipfile.ZipFile(pkg, "w") as zf:
        zf.writestr("manifest.json", '{"version": "1.2.3\\n", "modules": []}')
    with pytest.raises(UpdaterError) as info:
        read_package(pkg, expected_version="1.2.3", root=tmp_path, limits=PackageLimits())
    assert info.value.code is ErrorCode.INVALID_MANIFEST
    assert "version: must look like 1.2.3" in info.value.detail
