"""Build real update-package ZIPs for tests: good ones and a catalogue of hostile ones.

Typical use::

    from tests.support.packages import make_package
    pkg = make_package(tmp_path / "pkg.zip", "1.2.3",
                       {"bin/device-api": (b"#!/bin/sh\\n", 0o755), "etc/cfg": b"x=1\\n"},
                       process_name="device-api")

Keys of ``files`` are paths relative to the install root (``bin/device-api`` lands at
``<root>/bin/device-api``) or absolute paths for files outside the root (extra roots).

Hostile packages: :data:`HOSTILE_CASES` maps a case name to a :class:`HostileCase` whose
``build(path, version)`` writes a package that ``read_package(..., expected_version=version,
root=DEFAULT_ROOT, limits=case.limits or PackageLimits())`` must reject with ``case.code``
and a detail containing ``case.expect``. :data:`EXTRACT_HOSTILE_CASES` pass ``read_package``
but must fail during extraction/staging with ``INVALID_MANIFEST``.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import stat
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from updater_fsm.core.errors import ErrorCode
from updater_fsm.package.limits import PackageLimits

DEFAULT_ROOT = Path("/opt/tope")
FileSpec = bytes | tuple[bytes, int]
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)


@attrs.frozen
class Entry:
    """One raw ZIP entry for :func:`write_zip`.

    Attributes:
        name: the entry name, stored verbatim (may be hostile).
        data: content (for a symlink: the link target).
        mode: permission bits; None stores no Unix mode at all.
        kind: ``"file"``, ``"dir"`` or ``"symlink"`` (sets the S_IFMT bits).
        compress: ``zipfile.ZIP_DEFLATED`` or ``zipfile.ZIP_STORED``.
    """

    name: str
    data: bytes = b""
    mode: int | None = 0o644
    kind: str = "file"
    compress: int = zipfile.ZIP_DEFLATED


def _zinfo(entry: Entry) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(entry.name, date_time=_FIXED_TIME)
    info.compress_type = entry.compress
    info.create_system = 3
    fmt = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}[entry.kind]
    if entry.mode is not None:
        info.external_attr = (fmt | entry.mode) << 16
    if entry.kind == "dir":
        info.external_attr |= 0x10  # MS-DOS directory flag
    return info


def _write_entry(zf: zipfile.ZipFile, entry: Entry) -> None:
    info = _zinfo(entry)
    zf.writestr(info, entry.data)
    # writestr() substitutes 0o600 for a zero external_attr; restore "no mode stored".
    zf.filelist[-1].external_attr = info.external_attr if entry.mode is not None else 0


def write_zip(
    path: Path,
    entries: Iterable[Entry],
    *,
    manifest: Mapping[str, Any] | bytes | str | None,
    tamper: Callable[[zipfile.ZipFile], None] | None = None,
) -> Path:
    """Write a ZIP with ``manifest.json`` first (unless None) and then ``entries`` verbatim.

    Args:
        path: output file.
        entries: raw entries; duplicates and hostile names are written as given.
        manifest: a dict (JSON-encoded), raw bytes/str (written as is), or None to omit.
        tamper: called with the open ZipFile just before it is closed, to edit the central
            directory (``zf.filelist``) for lying-header cases.
    """
    all_entries: list[Entry] = []
    if manifest is not None:
        raw = (
            json.dumps(manifest, indent=1).encode()
            if isinstance(manifest, Mapping)
            else manifest.encode()
            if isinstance(manifest, str)
            else manifest
        )
        all_entries.append(Entry("manifest.json", raw))
    all_entries.extend(entries)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name" is what some cases want
        with zipfile.ZipFile(path, "w") as zf:
            for entry in all_entries:
                _write_entry(zf, entry)
            if tamper is not None:
                tamper(zf)
    return path


def src_name(key: str) -> str:
    """The ZIP entry name :func:`make_package` uses for a ``files`` key."""
    return "modules/" + key.lstrip("/") if not key.startswith("/") else "external" + key


def module_dict(
    key: str,
    data: bytes,
    *,
    root: Path = DEFAULT_ROOT,
    name: str | None = None,
    digests: bool = True,
    dst_key: str = "dst",
    **fields: Any,
) -> dict[str, Any]:
    """The manifest entry :func:`make_package` writes for one file (see there)."""
    dst = key if key.startswith("/") else f"{root}/{key}"
    mod: dict[str, Any] = {"name": name or key.lstrip("/"), "src": src_name(key), dst_key: dst}
    if digests:
        mod["md5"] = hashlib.md5(data).hexdigest()
        mod["sha256"] = hashlib.sha256(data).hexdigest()
        mod["size"] = len(data)
    mod.update({k: v for k, v in fields.items() if v is not None})
    return mod


def make_manifest(
    version: str,
    files: Mapping[str, FileSpec],
    *,
    root: Path = DEFAULT_ROOT,
    process_name: str | None = None,
    restart_order: int | None = None,
    post_cmds: list[str] | None = None,
    health: dict[str, Any] | None = None,
    digests: bool = True,
    dst_key: str = "dst",
    module_overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The manifest dict for ``files`` (one module per file, in ``files`` order)."""
    modules = []
    for key, spec in files.items():
        data = spec[0] if isinstance(spec, tuple) else spec
        mod = module_dict(
            key,
            data,
            root=root,
            digests=digests,
            dst_key=dst_key,
            process_name=process_name,
            restart_order=restart_order,
            post_cmds=post_cmds,
            health=health,
        )
        mod.update((module_overrides or {}).get(key, {}))
        modules.append(mod)
    return {"version": version, "modules": modules}


def make_package(
    path: Path,
    version: str,
    files: Mapping[str, FileSpec],
    *,
    root: Path = DEFAULT_ROOT,
    process_name: str | None = None,
    restart_order: int | None = None,
    post_cmds: list[str] | None = None,
    health: dict[str, Any] | None = None,
    digests: bool = True,
    dst_key: str = "dst",
    module_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    manifest_extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a valid package ZIP and return ``path``.

    Args:
        path: output ZIP.
        version: manifest version.
        files: ``{key: data}`` or ``{key: (data, mode)}``; key relative to ``root`` or absolute.
        root: install root used for ``dst``.
        process_name, restart_order, post_cmds, health: set on every module when given.
        digests: include md5/sha256/size per module.
        dst_key: ``"dst"`` or the field alias ``"dest"``.
        module_overrides: per ``files`` key, fields merged into that module (wins).
        manifest_extra: extra top-level manifest keys.
    """
    manifest = make_manifest(
        version,
        files,
        root=root,
        process_name=process_name,
        restart_order=restart_order,
        post_cmds=post_cmds,
        health=health,
        digests=digests,
        dst_key=dst_key,
        module_overrides=module_overrides,
    )
    manifest.update(manifest_extra or {})
    entries = []
    for key, spec in files.items():
        data, mode = spec if isinstance(spec, tuple) else (spec, 0o644)
        entries.append(Entry(src_name(key), data, mode))
    return write_zip(path, entries, manifest=manifest)


def file_md5(path: Path) -> str:
    """Hex md5 of a file (what ``POST /download`` wants as ``package_md5``)."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- hostile cases


@attrs.frozen
class HostileCase:
    """A package that must be rejected.

    Attributes:
        build: ``build(path, version) -> path`` writes the package.
        expect: a substring of the error detail (names the field or entry).
        code: expected error code.
        limits: limits to pass to the reader (None = defaults).
    """

    build: Callable[[Path, str], Path]
    expect: str
    code: ErrorCode = ErrorCode.INVALID_MANIFEST
    limits: PackageLimits | None = None


_GOOD = b"#!/bin/sh\necho hello\n"


def _one(version: str, **overrides: Any) -> dict[str, Any]:
    mod = module_dict("bin/app", _GOOD)
    mod.update(overrides)
    return {"version": version, "modules": [mod]}


def _with(
    manifest_fn: Callable[[str], Any], extra: Iterable[Entry] = (), good_entry: bool = True
) -> Callable[[Path, str], Path]:
    def build(path: Path, version: str) -> Path:
        entries = [Entry(src_name("bin/app"), _GOOD, 0o755)] if good_entry else []
        return write_zip(path, [*entries, *extra], manifest=manifest_fn(version))

    return build


def _overlapping(path: Path, version: str) -> Path:
    def tamper(zf: zipfile.ZipFile) -> None:
        zf.filelist[2].header_offset = zf.filelist[1].header_offset

    return write_zip(
        path,
        [Entry(src_name("bin/app"), _GOOD, 0o755), Entry("other", b"y" * 100)],
        manifest=_one(version),
        tamper=tamper,
    )


def _lying_size(path: Path, version: str) -> Path:
    def tamper(zf: zipfile.ZipFile) -> None:
        zf.filelist[1].file_size = 5

    return write_zip(
        path, [Entry(src_name("bin/app"), _GOOD, 0o755)], manifest=_one(version), tamper=tamper
    )


def _not_a_zip(path: Path, version: str) -> Path:
    path.write_bytes(b"PK\x03\x04 this is not really a zip " + version.encode())
    return path


def _random_hex(n: int) -> str:
    """``n`` pseudo-random hex characters (incompressible enough to dodge the ratio check)."""
    return random.Random(n).randbytes(n // 2 + 1).hex()[:n]


HOSTILE_CASES: dict[str, HostileCase] = {
    "not_a_zip": HostileCase(_not_a_zip, "archive"),
    "missing_manifest": HostileCase(_with(lambda v: None), "manifest.json: missing"),
    "malformed_json": HostileCase(_with(lambda v: b'{"version": "' + v.encode()), "malformed"),
    "non_utf8": HostileCase(_with(lambda v: b'{"version": "\xff\xfe"}'), "UTF-8"),
    "json_array": HostileCase(_with(lambda v: b"[1, 2]"), "must be a JSON object"),
    "duplicate_json_key": HostileCase(
        _with(lambda v: f'{{"version": "{v}", "version": "{v}", "modules": []}}'), "duplicate"
    ),
    "nan_constant": HostileCase(_with(lambda v: f'{{"version": "{v}", "x": NaN}}'), "NaN"),
    "huge_manifest": HostileCase(
        _with(lambda v: {**_one(v), "padding": _random_hex(1_100_000)}), "manifest.json"
    ),
    "no_modules": HostileCase(_with(lambda v: {"version": v, "modules": []}), "modules"),
    "modules_not_list": HostileCase(
        _with(lambda v: {"version": v, "modules": {"a": 1}}), "modules: must be an array"
    ),
    "module_not_object": HostileCase(
        _with(lambda v: {"version": v, "modules": ["x"]}), "modules[0]: must be an object"
    ),
    "missing_name": HostileCase(
        _with(lambda v: {"version": v, "modules": [{"src": "a", "dst": "/opt/tope/a"}]}),
        "modules[0].name: required field missing",
    ),
    "duplicate_module_names": HostileCase(
        _with(
            lambda v: {
                "version": v,
                "modules": [
                    module_dict("bin/app", _GOOD, name="x"),
                    module_dict("bin/app2", _GOOD, name="x"),
                ],
            },
            extra=[Entry(src_name("bin/app2"), _GOOD)],
        ),
        "modules[1].name: duplicate",
    ),
    "duplicate_dst": HostileCase(
        _with(
            lambda v: {
                "version": v,
                "modules": [
                    module_dict("bin/app", _GOOD, name="x"),
                    {**module_dict("bin/app2", _GOOD, name="y"), "dst": "/opt/tope/bin/app"},
                ],
            },
            extra=[Entry(src_name("bin/app2"), _GOOD)],
        ),
        "modules[1].dst: same destination",
    ),
    "traversal_entry": HostileCase(
        _with(_one, extra=[Entry("modules/../../etc/evil", b"x")]), "contains '..'"
    ),
    "absolute_entry": HostileCase(_with(_one, extra=[Entry("/etc/evil", b"x")]), "absolute path"),
    "symlink_entry": HostileCase(
        _with(_one, extra=[Entry("modules/link", b"/etc/passwd", 0o777, "symlink")]),
        "symbolic links",
    ),
    "symlink_src": HostileCase(
        _with(
            lambda v: _one(v, src="modules/link", md5=None, sha256=None, size=None),
            extra=[Entry("modules/link", b"/etc/passwd", 0o777, "symlink")],
        ),
        "symbolic links",
    ),
    "fifo_entry": HostileCase(
        _with(_one, extra=[Entry("modules/fifo", b"", stat.S_IFIFO | 0o644)]),
        "not a regular file",
    ),
    "duplicate_entry": HostileCase(
        _with(_one, extra=[Entry(src_name("bin/app"), b"evil twin")]), "duplicate entry"
    ),
    "aliased_entry": HostileCase(
        _with(_one, extra=[Entry("modules//bin/app", b"evil twin")]), "duplicate entry"
    ),
    "zip_bomb_ratio": HostileCase(
        _with(_one, extra=[Entry("modules/zeros", bytes(3 << 20))]), "compression ratio"
    ),
    "zip_bomb_total": HostileCase(
        _with(_one, extra=[Entry("modules/big", _random_hex(40_000).encode())]),
        "exceeds the limit",
        limits=PackageLimits(max_total_uncompressed=32_000),
    ),
    "too_many_entries": HostileCase(
        _with(_one, extra=[Entry(f"modules/f{i}", b"") for i in range(20)]),
        "entries",
        limits=PackageLimits(max_entries=10),
    ),
    "overlapping_entries": HostileCase(_overlapping, "overlaps"),
    "lying_size": HostileCase(_lying_size, "modules[0].size"),
    "missing_src": HostileCase(
        _with(lambda v: _one(v, src="modules/nope")), "modules[0].src: 'modules/nope' is not in"
    ),
    "src_is_dir": HostileCase(
        _with(lambda v: _one(v, src="modules/bin")), "modules[0].src: 'modules/bin' is a dir"
    ),
    "src_absolute": HostileCase(
        _with(lambda v: _one(v, src="/modules/bin/app")), "modules[0].src: absolute"
    ),
    "src_dotdot": HostileCase(
        _with(lambda v: _one(v, src="modules/../modules/bin/app")), "modules[0].src: contains"
    ),
    "dst_relative": HostileCase(
        _with(lambda v: _one(v, dst="opt/tope/bin/app")),
        "modules[0].dst: must be an absolute path",
    ),
    "dst_dotdot": HostileCase(
        _with(lambda v: _one(v, dst="/opt/tope/../../etc/passwd")), "modules[0].dst: must not"
    ),
    "dst_under_versions": HostileCase(
        _with(lambda v: _one(v, dst="/opt/tope/versions/factory/bin/app")),
        "modules[0].dst: must not be under",
    ),
    "dst_outside_root": HostileCase(
        _with(lambda v: _one(v, dst="/etc/passwd")), "modules[0].dst: /etc/passwd is outside"
    ),
    "dst_is_root": HostileCase(_with(lambda v: _one(v, dst="/opt/tope")), "modules[0].dst"),
    "dst_and_dest_differ": HostileCase(
        _with(lambda v: _one(v, dest="/opt/tope/bin/other")), "modules[0].dest"
    ),
    "bad_md5": HostileCase(_with(lambda v: _one(v, md5="xyz")), "modules[0].md5"),
    "bad_sha256": HostileCase(_with(lambda v: _one(v, sha256="ab" * 31)), "modules[0].sha256"),
    "negative_size": HostileCase(_with(lambda v: _one(v, size=-1)), "modules[0].size"),
    "size_as_string": HostileCase(
        _with(lambda v: _one(v, size="22")), "modules[0].size: must be an integer"
    ),
    "restart_order_string": HostileCase(
        _with(lambda v: _one(v, restart_order="10")),
        "modules[0].restart_order: must be an integer, got string",
    ),
    "restart_order_bool": HostileCase(
        _with(lambda v: _one(v, restart_order=True)), "modules[0].restart_order"
    ),
    "name_as_int": HostileCase(
        _with(lambda v: _one(v, name=1)), "modules[0].name: must be a string"
    ),
    "post_cmds_string": HostileCase(
        _with(lambda v: _one(v, post_cmds="reboot")), "modules[0].post_cmds: must be an array"
    ),
    "bad_process_name": HostileCase(
        _with(lambda v: _one(v, process_name="--force")), "modules[0].process_name"
    ),
    "post_cmds_without_process_name": HostileCase(
        _with(lambda v: _one(v, post_cmds=["/opt/tope/bin/app --migrate"])),
        "modules[0].post_cmds: module 'bin/app' has no process_name",
    ),
    "health_without_process_name": HostileCase(
        _with(lambda v: _one(v, health={"command": "/bin/true"})),
        "modules[0].health: module 'bin/app' has no process_name",
    ),
    "bad_health": HostileCase(
        _with(lambda v: _one(v, process_name="app", health={"tcp": "x"})),
        "modules[0].health",
    ),
    "bad_version": HostileCase(
        _with(lambda v: {**_one(v), "version": "1.2"}), "version: must look like 1.2.3"
    ),
    "version_as_number": HostileCase(
        _with(lambda v: {**_one(v), "version": 1.2}), "version: must look like 1.2.3"
    ),
    "version_mismatch": HostileCase(
        _with(lambda v: _one("9.9.9")), "package is 9.9.9, requested", ErrorCode.VERSION_MISMATCH
    ),
}


def _digest_mismatch(field: str) -> Callable[[Path, str], Path]:
    def build(path: Path, version: str) -> Path:
        wrong = {"md5": "0" * 32, "sha256": "0" * 64}[field]
        return write_zip(
            path,
            [Entry(src_name("bin/app"), _GOOD, 0o755)],
            manifest=_one(version, **{field: wrong}),
        )

    return build


def _corrupt_data(path: Path, version: str) -> Path:
    write_zip(
        path,
        [Entry(src_name("bin/app"), _GOOD * 50, 0o755, compress=zipfile.ZIP_STORED)],
        manifest=_one(version, md5=None, sha256=None, size=None),
    )
    raw = bytearray(path.read_bytes())
    at = raw.index(_GOOD * 3)
    raw[at : at + 4] = b"EVIL"  # same length, so only the CRC check can notice
    path.write_bytes(bytes(raw))
    return path


EXTRACT_HOSTILE_CASES: dict[str, HostileCase] = {
    "md5_mismatch": HostileCase(_digest_mismatch("md5"), "md5 mismatch"),
    "sha256_mismatch": HostileCase(_digest_mismatch("sha256"), "sha256 mismatch"),
    "corrupt_data": HostileCase(_corrupt_data, "corrupt"),
}


def zip_bytes(entries: Iterable[Entry], manifest: Mapping[str, Any] | bytes | None) -> bytes:
    """Like :func:`write_zip` but returns the archive bytes (for in-memory fuzzing)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buf, "w") as zf:
            if manifest is not None:
                raw = json.dumps(manifest).encode() if isinstance(manifest, Mapping) else manifest
                zf.writestr(_zinfo(Entry("manifest.json", raw)), raw)
            for entry in entries:
                _write_entry(zf, entry)
    return buf.getvalue()
