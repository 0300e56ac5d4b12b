"""The update package's manifest (contract §3) as plain attrs classes.

This module only defines the shapes. Parsing and validating a ``manifest.json`` (strict,
hostile-input-proof) is :mod:`updater_fsm.package.manifest`'s job; the builder that writes
one is :mod:`updater_fsm.package.builder`. The job journal stores the installed modules'
:class:`ServiceUnit` list so a restarted updater knows which units a switch touches.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import attrs


@attrs.frozen
class HealthProbe:
    """An optional per-module health probe (a tope-updater extension of contract §3).

    In ``manifest.json``: ``"health": {"http": "http://127.0.0.1:9080/healthz"}`` or
    ``"health": {"command": "/opt/tope/versions/current/bin/selftest"}``, with an optional
    ``"timeout_s": 5``.

    Attributes:
        kind: ``"http"`` (GET must answer 2xx) or ``"command"`` (must exit 0).
        target: the URL or the shell command line.
        timeout_s: how long one probe attempt may take.
    """

    kind: str
    target: str
    timeout_s: float = 5.0


@attrs.frozen
class HealthProbeNotation:
    """A health probe as ``manifest.json`` writes it: exactly one of ``http``/``command``.

    The strict converter structures a module's ``health`` object into this (types checked
    field by field) and then calls :meth:`probe`.
    """

    http: str | None = None
    command: str | None = None
    timeout_s: float = 5.0

    def probe(self) -> HealthProbe:
        """The probe this notation describes; raises ``ValueError`` naming the problem."""
        if (self.http is None) == (self.command is None):
            raise ValueError('must have exactly one of "http" or "command"')
        kind, target = ("http", self.http) if self.http is not None else ("command", self.command)
        assert target is not None
        if not target.strip():
            raise ValueError(f"{kind} must be a non-empty string")
        if kind == "http" and not target.startswith(("http://", "https://")):
            raise ValueError("http must be an http:// or https:// URL")
        if not math.isfinite(self.timeout_s) or not 0 < self.timeout_s <= 3600:
            raise ValueError("timeout_s must be a number in (0, 3600]")
        return HealthProbe(kind=kind, target=target, timeout_s=self.timeout_s)


class DeltaKind(enum.StrEnum):
    """How a delta package's module gets its file (``"delta"`` in a module).

    * ``kept``: the base's file, unchanged (no ``src``; ``sha256`` is the base file's and
      the result's digest).
    * ``patched``: ``src`` is a zstd frame to decompress with the base file as a raw prefix
      dictionary (``zstd --patch-from``); ``base_sha256`` is the base file's digest,
      ``size``/``sha256`` the result's.
    * ``added``: ``src`` holds the whole file, as in a full package (also the default).
    """

    KEPT = "kept"
    PATCHED = "patched"
    ADDED = "added"


@attrs.frozen
class Module:
    """One file the package installs, and the service it belongs to.

    ``src`` is None only for a ``kept`` module of a delta package (checked by the reader).
    """

    name: str
    dst: str
    src: str | None = None
    process_name: str | None = None
    restart_order: int = 0
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    post_cmds: tuple[str, ...] = ()
    health: HealthProbe | None = None
    delta: DeltaKind | None = None
    base_sha256: str | None = None
    base: str | None = None

    @property
    def kind(self) -> DeltaKind:
        """How the module's file is made (``added`` unless the manifest says otherwise)."""
        return self.delta or DeltaKind.ADDED

    @property
    def base_path(self) -> str:
        """Where a ``patched`` module's base file is in the running snapshot (default: dst)."""
        return self.base if self.base is not None else self.dst


#: The architectures updater bundles are built for (``uname -m``; systemd/bundle.py).
UPDATER_ARCHS = ("x86_64", "aarch64", "armv7l")


@attrs.frozen
class UpdaterBundle:
    """A new updater a package carries (``"updater"`` in ``manifest.json``).

    Attributes:
        src: the ZIP entry holding the release bundle ``tope-updater-<version>-<arch>.tar.gz``
            that systemd/bundle.py builds.
        version: the updater version in the bundle (its slot's name).
        arch: the architecture the bundle's wheels are for (``uname -m``).
        sha256: the digest of the entry's bytes.
        size: the entry's size in bytes.
    """

    src: str
    version: str
    arch: str
    sha256: str
    size: int


@attrs.frozen
class Manifest:
    """A parsed, validated ``manifest.json``.

    Attributes:
        version: the version the package installs.
        modules: the files, in manifest order.
        base_version: set for a delta package: the version it must be applied to.
        removed: a delta's files of the base that the new version no longer has
            (absolute paths under the install root, like ``dst``).
        updater: a new updater to switch to once the device is healthy on ``version``.
        compatible: the device model the package is built for (``tope-x1``); None: any.
    """

    version: str
    modules: tuple[Module, ...]
    base_version: str | None = None
    removed: tuple[str, ...] = ()
    updater: UpdaterBundle | None = None
    compatible: str | None = None

    @property
    def is_delta(self) -> bool:
        """Whether this is a delta package (it names a ``base_version``)."""
        return self.base_version is not None


@attrs.frozen
class ServiceUnit:
    """A systemd unit affected by an install, with what is needed to restart and check it.

    Attributes:
        unit: full unit name, e.g. ``"device-api.service"``.
        restart_order: start ascending, stop descending.
        post_cmds: commands run (30 s timeout each) after the unit starts on the new version.
        health: optional probe run during the health check.
    """

    unit: str
    restart_order: int = 0
    post_cmds: tuple[str, ...] = ()
    health: HealthProbe | None = None


def unit_name(process_name: str) -> str:
    """Return the systemd unit name for a manifest ``process_name`` (``.service`` optional)."""
    known = (".service", ".socket", ".target", ".timer", ".path", ".mount", ".scope")
    return process_name if process_name.endswith(known) else f"{process_name}.service"


def units_named(names: Sequence[str]) -> tuple[ServiceUnit, ...]:
    """Plain units (no probes, no post_cmds) for configured names, started in list order."""
    return tuple(ServiceUnit(unit_name(name), restart_order=i) for i, name in enumerate(names))


def units_of(manifest: Manifest) -> tuple[ServiceUnit, ...]:
    """The distinct units a manifest's modules name, in ascending ``restart_order``.

    Several modules may share a unit; their ``post_cmds`` are concatenated in module order,
    the lowest ``restart_order`` wins, and the first declared probe is kept.
    """
    merged: dict[str, ServiceUnit] = {}
    for module in manifest.modules:
        if not module.process_name:
            continue
        name = unit_name(module.process_name)
        seen = merged.get(name)
        if seen is None:
            merged[name] = ServiceUnit(
                unit=name,
                restart_order=module.restart_order,
                post_cmds=module.post_cmds,
                health=module.health,
            )
        else:
            merged[name] = ServiceUnit(
                unit=name,
                restart_order=min(seen.restart_order, module.restart_order),
                post_cmds=seen.post_cmds + module.post_cmds,
                health=seen.health or module.health,
            )
    return tuple(sorted(merged.values(), key=lambda u: (u.restart_order, u.unit)))
