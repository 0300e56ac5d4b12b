"""The package reader against real ZIPs: good packages, every hostile case, fuzzing (which
also extracts what the reader accepted)."""

from __future__ import annotations

import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tests.support.packages import (
    DEFAULT_ROOT,
    HOSTILE_CASES,
    Entry,
    make_package,
    write_zip,
    zip_bytes,
)
from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.core.manifest import HealthProbe
from updater_fsm.package.archive import open_package
from updater_fsm.package.destinations import external_modules, internal_modules
from updater_fsm.package.extraction import extract_module
from updater_fsm.package.limits import PackageLimits
from updater_fsm.package.manifest import read_package

ROOT = DEFAULT_ROOT


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("dst_key", ["dst", "dest"])
def test_good_package_round_trip(tmp_path: Path, dst_key: str) -> None:
    pkg = make_package(
        tmp_path / "p.zip",
        "1.2.3",
        {"services/device-api/device-api": (b"#!/bin/sh\n", 0o755), "etc/cfg": b"a=1\n"},
        process_name="device-api",
        restart_order=2,
        post_cmds=["true"],
        dst_key=dst_key,
    )
    manifest = read_package(pkg, expected_version="1.2.3", root=ROOT)
    assert manifest.version == "1.2.3"
    first = manifest.modules[0]
    assert first.dst == "/opt/tope/services/device-api/device-api"
    assert first.process_name == "device-api"
    assert first.restart_order == 2
    assert first.post_cmds == ("true",)
    assert first.size == len(b"#!/bin/sh\n")
    assert [m.name for m in manifest.modules] == ["services/device-api/device-api", "etc/cfg"]


def test_health_probe_parsed(tmp_path: Path) -> None:
    pkg = make_package(
        tmp_path / "p.zip",
        "1.0.0",
        {"bin/a": b"a", "bin/b": b"b"},
        process_name="device-api",
        module_overrides={
            "bin/a": {"health": {"http": "http://127.0.0.1:9080/healthz", "timeout_s": 2}},
            "bin/b": {"health": {"command": "/bin/true"}},
        },
    )
    manifest = read_package(pkg, expected_version="1.0.0", root=ROOT)
    assert manifest.modules[0].health == HealthProbe("http", "http://127.0.0.1:9080/healthz", 2.0)
    assert manifest.modules[1].health == HealthProbe("command", "/bin/true", 5.0)


def test_optional_fields_may_be_absent_or_null(tmp_path: Path) -> None:
    manifest = {
        "version": "1.0.0",
        "modules": [{"name": "a", "src": "a", "dst": "/opt/tope/a", "md5": None}],
    }
    pkg = write_zip(tmp_path / "p.zip", [Entry("a", b"x")], manifest=manifest)
    (module,) = read_package(pkg, expected_version="1.0.0", root=ROOT).modules
    assert module.md5 is None and module.size is None and module.process_name is None


def test_unknown_keys_are_tolerated_and_logged(tmp_path: Path) -> None:
    pkg = make_package(
        tmp_path / "p.zip",
        "1.0.0",
        {"bin/a": b"a"},
        module_overrides={"bin/a": {"future_field": 1}},
        manifest_extra={"builder": "x"},
    )
    with capture_logs() as logs:
        read_package(pkg, expected_version="1.0.0", root=ROOT)
    wheres = {e["where"] for e in logs if e["event"] == "manifest_unknown_keys"}
    assert wheres == {"manifest", "modules[0]"}


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    raw = b'\xef\xbb\xbf{"version": "1.0.0", "modules": [{"name": "a", "src": "a", "dst": "/t/a"}]}'
    pkg = write_zip(tmp_path / "p.zip", [Entry("a", b"x")], manifest=raw)
    assert read_package(pkg, expected_version="1.0.0", root=Path("/t")).version == "1.0.0"


@pytest.mark.parametrize("case", sorted(HOSTILE_CASES))
def test_hostile_package_rejected(tmp_path: Path, case: str) -> None:
    spec = HOSTILE_CASES[case]
    pkg = spec.build(tmp_path / "p.zip", "1.2.3")
    before = _tree(tmp_path)
    with pytest.raises(UpdaterError) as info:
        read_package(
            pkg, expected_version="1.2.3", root=ROOT, limits=spec.limits or PackageLimits()
        )
    assert info.value.code == spec.code
    assert spec.expect in info.value.detail
    assert _tree(tmp_path) == before


def test_dst_under_extra_root(tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "p.zip", "1.0.0", {"bin/a": b"a", "/etc/tope/a.conf": b"c"})
    with pytest.raises(UpdaterError, match=r"modules\[1\]\.dst: /etc/tope/a.conf is outside"):
        read_package(pkg, expected_version="1.0.0", root=ROOT)
    manifest = read_package(
        pkg, expected_version="1.0.0", root=ROOT, extra_roots=[Path("/etc/tope")]
    )
    assert [m.name for m in internal_modules(manifest, ROOT)] == ["bin/a"]
    assert [m.name for m in external_modules(manifest, ROOT)] == ["etc/tope/a.conf"]


def test_nested_dsts_rejected(tmp_path: Path) -> None:
    pkg = make_package(
        tmp_path / "p.zip",
        "1.0.0",
        {"bin/a": b"a", "bin/b": b"b"},
        process_name="device-api",
        module_overrides={"bin/b": {"dst": "/opt/tope/bin/a/b"}},
    )
    with pytest.raises(UpdaterError, match=r"modules\[1\]\.dst: its parent /opt/tope/bin/a"):
        read_package(pkg, expected_version="1.0.0", root=ROOT)


# --------------------------------------------------------------------------- fuzzing

_NAMES = st.sampled_from(
    ["a", "dir/a", "../a", "/abs", "a/../../b", "dir/", "dir", "a\\..\\b", "C:/x", "", "a//b"]
) | st.text(min_size=0, max_size=12)
_DSTS = st.sampled_from(
    ["/opt/tope/a", "/opt/tope/dir/a", "/opt/tope/versions/x", "/etc/x", "a", "/opt/tope/../x"]
) | st.text(max_size=20)
_JSONISH = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=8)
_MODULE = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=6) | _JSONISH,
        "src": _NAMES | _JSONISH,
        "dst": _DSTS | _JSONISH,
        "dest": _DSTS,
        "process_name": st.sampled_from(["svc", "-x", "a b"]) | _JSONISH,
        "restart_order": _JSONISH,
        "md5": st.sampled_from(["0" * 32, "zz"]) | _JSONISH,
        "sha256": st.sampled_from(["0" * 64]) | _JSONISH,
        "size": st.integers(-2, 10) | _JSONISH,
        "post_cmds": st.lists(_JSONISH, max_size=2) | _JSONISH,
        "health": st.dictionaries(
            st.sampled_from(["http", "command", "timeout_s", "x"]), _JSONISH, max_size=3
        )
        | _JSONISH,
        "extra": _JSONISH,
    },
)
_MANIFEST = st.fixed_dictionaries(
    {},
    optional={
        "version": st.sampled_from(["1.0.0", "1.0", "2.0.0"]) | _JSONISH,
        "modules": st.lists(_MODULE | _JSONISH, max_size=3) | _JSONISH,
    },
)
_ENTRY = st.builds(
    Entry,
    name=_NAMES,
    data=st.binary(max_size=16),
    mode=st.sampled_from([None, 0o644, 0o755, 0o4755, stat.S_IFLNK | 0o777, stat.S_IFDIR | 0o755]),
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    manifest=_MANIFEST | st.binary(max_size=40).map(lambda b: {"raw": b}),
    entries=st.lists(_ENTRY, max_size=4),
)
def test_fuzz_only_updater_errors_and_no_stray_writes(
    manifest: dict[str, Any], entries: list[Entry]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        pkg = base / "p.zip"
        raw: Any = manifest.get("raw", manifest)
        pkg.write_bytes(zip_bytes(entries, raw))
        staging = base / "staging"
        staging.mkdir()
        try:
            parsed = read_package(pkg, expected_version="1.0.0", root=ROOT)
            assert parsed.modules
            with open_package(pkg) as zf:
                for index, module in enumerate(parsed.modules):
                    extract_module(zf, module, staging / f"m{index}")
            event("accepted")
        except UpdaterError as exc:
            event(exc.code.value)
            assert exc.code in (ErrorCode.INVALID_MANIFEST, ErrorCode.VERSION_MISMATCH)
        assert {p.name for p in base.iterdir()} == {"p.zip", "staging"}
        assert all(p.name.startswith("m") for p in staging.iterdir())


_FIELDS = ["name", "src", "dst", "dest", "process_name", "restart_order", "md5", "sha256"]
_FIELDS += ["size", "post_cmds", "health"]


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    mutations=st.lists(
        st.tuples(st.integers(0, 1), st.sampled_from(_FIELDS), _JSONISH | _NAMES | _DSTS),
        max_size=2,
    ),
    extra=st.lists(_ENTRY, max_size=2),
)
def test_fuzz_mutated_good_manifest(
    mutations: list[tuple[int, str, Any]], extra: list[Entry]
) -> None:
    """Start from a valid package and break one or two fields: accept or reject cleanly."""
    manifest: dict[str, Any] = {
        "version": "1.0.0",
        "modules": [
            {"name": "a", "src": "a", "dst": "/opt/tope/a", "size": 2},
            {"name": "b", "src": "dir/b", "dst": "/opt/tope/dir/b", "process_name": "svc"},
        ],
    }
    for index, field, value in mutations:
        manifest["modules"][index][field] = value
    entries = [Entry("a", b"aa", 0o755), Entry("dir/b", b"bb"), *extra]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "p.zip").write_bytes(zip_bytes(entries, manifest))
        staging = base / "staging"
        staging.mkdir()
        try:
            parsed = read_package(base / "p.zip", expected_version="1.0.0", root=ROOT)
            with open_package(base / "p.zip") as zf:
                for index, module in enumerate(parsed.modules):
                    extract_module(zf, module, staging / f"m{index}")
            event("accepted")
        except UpdaterError as exc:
            assert exc.code == ErrorCode.INVALID_MANIFEST
            event("rejected")
        assert {p.name for p in base.iterdir()} == {"p.zip", "staging"}
        assert all(p.name.startswith("m") for p in staging.iterdir())
