"""Configuration: one attrs object from defaults < TOML file < environment < CLI flags.

Every key can be set in a TOML file (``--config FILE``), as ``TOPE_UPDATER_<KEY>`` in the
environment, or as a command-line flag; later sources win. Unknown keys and wrong types are
errors (:class:`ConfigError`), reported as one line by the CLI, which then exits with 2.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import os
import re
import shlex
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from updater_fsm.core.printer import BusyPolicy, PrinterGate
from updater_fsm.strict_converter import STRICT_CONVERTER, ValueRefused

ENV_PREFIX = "TOPE_UPDATER_"


class ServiceControl(enum.StrEnum):
    """How the updater treats the device's services."""

    #: stop, start and check units with ``systemctl``
    SYSTEMD = "systemd"
    #: record units but never touch them (a sandbox root without systemd)
    NONE = "none"


class ConfigError(ValueError):
    """The configuration is unusable; the message names the key and the problem."""


def _key_entries(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``trusted_key`` as given: one entry (a string), several (a list), or none."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    return tuple(value)


@attrs.frozen
class Config:
    """Everything the updater can be told.

    Attributes:
        root: install root holding ``versions/`` (device default ``/opt/tope``).
        state_dir: journal, downloads, logs and backups (default ``<root>/.updater``).
        host, port: where the HTTP API listens.
        device_api_url: base URL of device-api, which receives progress reports.
        systemctl: command prefix used to run systemctl (tests use ``nsenter … systemctl``).
        service_control: ``"systemd"`` to stop/start units, ``"none"`` for a sandbox root
            without systemd (units are then only recorded, not touched).
        extra_roots: directories outside ``root`` where a manifest ``dst`` may point.
        local_package_dirs: directories a ``file://`` package URL may name (a USB stick's
            mount point: ``/media``, ``/run/media``); default none, so every ``file://``
            URL is refused. A path is judged once its links are resolved: a link out of
            these directories is refused too.
        units: device units a manual rollback restarts (in start order) when the journal
            names none — a fresh install, or a journal that was lost or set aside.
        allow_downgrade: when false, installing a version older than the running one is
            refused with ``DOWNGRADE_REFUSED`` (anti-rollback protection for fleets where
            old, vulnerable packages must never come back; manual rollback is unaffected).
            Default: true, but false when ``trusted_key`` is set and ``allow_downgrade`` is
            not given explicitly (:func:`load_config` decides; a replayed old signed package
            would otherwise install).
        api_token: when set, mutating endpoints and ``/events`` require
            ``Authorization: Bearer <token>``.
        allowed_hosts: extra names (host names or IP addresses, no port) a request's
            ``Host`` header may carry; loopback names and ``host`` are always accepted.
            Anything else is refused with ``FORBIDDEN`` (DNS rebinding). Binding ``host`` to
            ``0.0.0.0``/``::`` needs the device's names or addresses listed here.
        trusted_key: the Ed25519 public keys a package's signature may verify against, any
            one of them (a keyring, so signing keys can be rotated): each entry a PEM file
            path, a directory of ``*.pem`` files, or a base64 raw key; one string or a list
            in TOML, shell-quoted words in the environment. Empty: signatures not enforced.
        stop_timeout_s, start_timeout_s, settle_s, post_cmd_timeout_s: install timings.
        connect_timeout_s, read_timeout_s, download_attempts: download robustness.
        max_package_bytes, max_zip_ratio: zip-bomb limits for packages.
        resume_limit: a step (download, staging, switch, health check, a rollback level)
            that the updater has been restarted in this many times in a row without it
            making progress is treated as failed: the crash-loop breaker (``RESUME_LIMIT``).
        busy_probe: a shell command telling whether the printer is free: exit status 0 is
            free; any other status, a timeout or a failure to start is busy (fail safe).
            Its first output line is the reason shown to people. Unset: no busy gate.
        busy_poll_s: how often an install waiting for the printer asks again.
        busy_probe_timeout_s: how long one answer may take (longer: busy).
        busy_policy: ``wait`` (an install waits in ``waiting_idle``) or ``refuse`` (it is
            answered 409 ``PRINTER_BUSY``).
        screen_unit: the systemd unit of the progress display at the printer
            (``tope-updater-screen.service``), started with ``systemctl start --no-block``
            when an install or a rollback begins. Unset: no display is started.
        screen_command: a shell command that opens the display, spawned (detached, never
            waited for) when there is no systemd (a sandbox, the demo); ignored when
            ``screen_unit`` is set.
        screen_lang: the display's language, ``en`` or ``zh-CN`` (unset: the locale's).
        screen_font: a font file for the display (for Chinese: one with CJK glyphs);
            unset: fontconfig's choice.
        ddi_url: base URL of an Eclipse hawkBit server (``https://hawkbit.example.com``);
            when set, the updater polls its DDI API for deployments (docs/FLEET.md). Unset:
            no polling.
        ddi_tenant: the hawkBit tenant (``DEFAULT``).
        ddi_controller_id: this device's controller id in hawkBit; unset: ``tope-`` and 16
            hex digits derived from ``/etc/machine-id`` (an application-specific hash, not
            the machine id itself).
        ddi_token: the target security token (``Authorization: TargetToken …``).
        ddi_gateway_token: a gateway security token (``Authorization: GatewayToken …``),
            used when ``ddi_token`` is unset.
        ddi_ca_file: a PEM file of CA certificates to trust for ``ddi_url`` (instead of
            the system's).
        ddi_poll_min_s, ddi_poll_max_s: the bounds of the polling interval the server asks
            for (``config.polling.sleep``); each wait gets ±10 % jitter.
        ddi_wake_min_s: a socket-activated updater with ``ddi_url`` set exits between polls
            (once idle as ``idle_exit_s`` says) only when the next poll is at least this many
            seconds away, a timer starting it again in time for it (docs/DEPLOYMENT.md,
            "Fleets"); a shorter interval keeps it resident. 0: always resident.
        compatible: this device's model (``tope-x1``): a package whose manifest names
            another model is refused ``INCOMPATIBLE_DEVICE`` at verify, and so is one naming
            none unless ``allow_incompatible``; unset: every package is accepted. Also the
            ``model`` attribute the fleet server sees (unset: the device tree's or DMI's
            product name, else ``unknown``).
        allow_incompatible: accept packages that name no model on a device that names one
            (a migration aid while packages built without ``--compatible`` are in use).
        device_model: the former name of ``compatible`` (its alias: either may be set);
            set alone, it also makes ``allow_incompatible`` default to true, so a device
            configured before ``compatible`` existed keeps accepting packages that name no
            model.
        updater_prefix: where the updater's own slots are (``<prefix>/versions/<version>``,
            ``current``, ``previous``; systemd/install.sh's ``--prefix``). Unset: derived
            from the running interpreter when it runs from such a slot; otherwise packages
            that carry an updater are refused (``UPDATER_NOT_SLOTTED``).
        updater_probation_s: how long a self-updated updater has to prove itself; a start
            after this deadline, while still on probation, makes the guard put the old one
            back (as do ``updater_max_starts`` starts).
        updater_max_starts: how many starts a self-updated updater on probation gets.
        idle_exit_s: ``serve`` exits (status 0) once nothing has been in progress for this
            many seconds — no job outside a final state, no report waiting for delivery, no
            event stream, no wait for the printer, no probation, no API request — so that
            nothing stays resident; the socket unit starts it again on the next connection
            (docs/DEPLOYMENT.md). 0: stay resident. With ``ddi_url`` set, between polls only
            (``ddi_wake_min_s``).
        log_level: ``debug``, ``info``, ``warning`` or ``error``.
    """

    root: Path = Path("/opt/tope")
    state_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 12315
    device_api_url: str = "http://127.0.0.1:9080"
    systemctl: tuple[str, ...] = ("systemctl",)
    service_control: ServiceControl = attrs.field(
        default=ServiceControl.SYSTEMD, converter=ServiceControl
    )
    extra_roots: tuple[Path, ...] = ()
    local_package_dirs: tuple[Path, ...] = ()
    units: tuple[str, ...] = ()
    allow_downgrade: bool = True
    api_token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    trusted_key: tuple[str, ...] = attrs.field(default=(), converter=_key_entries)
    stop_timeout_s: float = 10.0
    start_timeout_s: float = 30.0
    settle_s: float = 5.0
    post_cmd_timeout_s: float = 30.0
    connect_timeout_s: float = 15.0
    read_timeout_s: float = 30.0
    download_attempts: int = 8
    max_package_bytes: int = 2 * 1024**3
    max_zip_ratio: float = 200.0
    resume_limit: int = 3
    busy_probe: str | None = None
    busy_poll_s: float = 10.0
    busy_probe_timeout_s: float = 10.0
    busy_policy: BusyPolicy = attrs.field(default=BusyPolicy.WAIT, converter=BusyPolicy)
    screen_unit: str | None = None
    screen_command: str | None = None
    screen_lang: str | None = None
    screen_font: Path | None = None
    ddi_url: str | None = None
    ddi_tenant: str = "DEFAULT"
    ddi_controller_id: str | None = None
    ddi_token: str | None = None
    ddi_gateway_token: str | None = None
    ddi_ca_file: Path | None = None
    ddi_poll_min_s: float = 5.0
    ddi_poll_max_s: float = 3600.0
    ddi_wake_min_s: float = 120.0
    compatible: str | None = None
    allow_incompatible: bool = False
    device_model: str | None = None
    updater_prefix: Path | None = None
    updater_probation_s: float = 300.0
    updater_max_starts: int = 3
    idle_exit_s: float = 300.0
    log_level: str = "info"

    @property
    def printer_gate(self) -> PrinterGate:
        """How installs and manual rollbacks treat a busy printer."""
        if not self.busy_probe:
            return PrinterGate.NONE
        return PrinterGate(self.busy_policy.value)

    @property
    def state_path(self) -> Path:
        """The state directory, resolved."""
        return self.state_dir if self.state_dir is not None else self.root / ".updater"

    @property
    def downloads_dir(self) -> Path:
        return self.state_path / "downloads"

    @property
    def logs_dir(self) -> Path:
        return self.state_path / "logs"

    @property
    def backups_dir(self) -> Path:
        return self.state_path / "backups"


_FIELD_TYPES: dict[str, Any] = {
    field.name: field.type for field in attrs.fields(attrs.resolve_types(Config))
}
_CHOICES = {
    "log_level": ("debug", "info", "warning", "error"),
    "screen_lang": ("en", "zh-CN"),
}


# ---- text: environment variables and command-line flags ------------------------------------
_BOOL_TEXT = dict.fromkeys(("true", "1", "yes", "on"), True) | dict.fromkeys(
    ("false", "0", "no", "off"), False
)


def _bool_from_text(text: str) -> object:
    if text.lower() not in _BOOL_TEXT:
        raise ValueRefused("must be true or false (also 1/0, yes/no, on/off)")
    return _BOOL_TEXT[text.lower()]


def _int_from_text(text: str) -> object:
    try:
        return int(text)
    except ValueError:
        raise ValueRefused("must be an integer") from None


def _float_from_text(text: str) -> object:
    try:
        return float(text)
    except ValueError:
        raise ValueRefused("must be a number") from None


def _words_from_text(text: str) -> object:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise ValueRefused(f"must be shell-quoted words ({exc})") from None


def _paths_from_text(text: str) -> object:
    return [part for part in text.split(os.pathsep) if part]


#: How text becomes the typed value a TOML file would hold, per declared type (without
#: ``| None``); text for any other type (strings, paths, enums) is taken as it is.
#: A device model name (``compatible``), as a package's manifest names it.
_MODEL_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 ._+-]{0,62}[A-Za-z0-9._+-])?")

#: Keys whose TOML value may be one string or a list of strings.
_ONE_OR_MANY = frozenset({"trusted_key"})

_FROM_TEXT: dict[object, Callable[[str], object]] = {
    bool: _bool_from_text,
    int: _int_from_text,
    float: _float_from_text,
    tuple[str, ...]: _words_from_text,
    tuple[Path, ...]: _paths_from_text,
}


def _without_none(type_: Any) -> Any:
    args = [arg for arg in typing.get_args(type_) if arg is not type(None)]
    return args[0] if isinstance(type_, types.UnionType) and len(args) == 1 else type_


def _typed(key: str, value: Any, *, from_text: bool) -> Any:
    """A TOML value (or env/flag text when ``from_text``) as the type ``key`` declares."""
    type_ = _FIELD_TYPES[key]
    try:
        toml_value = _FROM_TEXT.get(_without_none(type_), str)(value) if from_text else value
        if key in _ONE_OR_MANY and isinstance(toml_value, str):
            toml_value = [toml_value]  # `trusted_key = "…"`: one key, as before lists
        typed = STRICT_CONVERTER.structure(toml_value, type_)
        if key in _CHOICES and typed not in _CHOICES[key]:
            raise ValueRefused(f"must be one of {', '.join(_CHOICES[key])}")
    except ValueRefused as exc:
        raise ConfigError(f"config key {key!r}: {exc.requirement} (got {value!r})") from None
    return typed


def _validate(config: Config) -> Config:
    if config.compatible is not None and not _MODEL_NAME.fullmatch(config.compatible):
        raise ConfigError(
            f"config key 'compatible': must be a device model name (letters, digits,"
            f" spaces inside, . _ + -, at most 64) (got {config.compatible!r})"
        )
    if not 0 < config.port < 65536:
        raise ConfigError(f"config key 'port': must be 1..65535 (got {config.port})")
    if not config.device_api_url.startswith(("http://", "https://")):
        raise ConfigError("config key 'device_api_url': must be an http(s) URL")
    if not config.systemctl:
        raise ConfigError("config key 'systemctl': must not be empty")
    if config.resume_limit < 1:
        raise ConfigError(f"config key 'resume_limit': must be >= 1 (got {config.resume_limit})")
    for key in (
        "stop_timeout_s",
        "start_timeout_s",
        "post_cmd_timeout_s",
        "read_timeout_s",
        "busy_poll_s",
        "busy_probe_timeout_s",
        "ddi_poll_min_s",
        "updater_probation_s",
        "updater_max_starts",
    ):
        if getattr(config, key) <= 0:
            raise ConfigError(f"config key {key!r}: must be > 0")
    if not 0 <= config.idle_exit_s <= 86_400:
        raise ConfigError(
            f"config key 'idle_exit_s': must be 0 (stay resident) or up to 86400"
            f" (got {config.idle_exit_s})"
        )
    _validate_ddi(config)
    for name in config.allowed_hosts:
        _check_host_name(name)
    for directory in config.local_package_dirs:
        if not directory.is_absolute():
            raise ConfigError(
                f"config key 'local_package_dirs': {str(directory)!r} must be an absolute path"
            )
    return config


#: hawkBit's own rule for tenant names and controller ids: no path separators or spaces.
_DDI_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def _validate_ddi(config: Config) -> None:
    if config.ddi_url is not None:
        try:
            parts = urllib.parse.urlsplit(config.ddi_url)
            _ = parts.port  # raises ValueError on a port out of range
        except ValueError as exc:  # unbalanced IPv6 brackets, a bad port
            raise ConfigError(f"config key 'ddi_url': {exc} (got {config.ddi_url!r})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"config key 'ddi_url': must be an http(s) URL (got {config.ddi_url!r})"
            )
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ConfigError(
                "config key 'ddi_url': no credentials, query or fragment (use ddi_token)"
            )
    for key in ("ddi_tenant", "ddi_controller_id"):
        value = getattr(config, key)
        if value is not None and not _DDI_NAME.fullmatch(value):  # `$` took a final "\n"
            raise ConfigError(f"config key {key!r}: 1-64 letters, digits and ._:- (got {value!r})")
    if config.ddi_poll_max_s < config.ddi_poll_min_s:
        raise ConfigError("config key 'ddi_poll_max_s': must be >= ddi_poll_min_s")
    if not 0 <= config.ddi_wake_min_s <= 86_400:
        raise ConfigError(
            f"config key 'ddi_wake_min_s': must be 0 (stay resident) or up to 86400"
            f" (got {config.ddi_wake_min_s})"
        )
    if config.ddi_ca_file is not None and not config.ddi_ca_file.is_file():
        raise ConfigError(f"config key 'ddi_ca_file': {config.ddi_ca_file} is not a file")


def _check_host_name(name: str) -> None:
    """One ``allowed_hosts`` entry: a host name or an IP address, without scheme, port, path."""
    bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    problem = ""
    if not bare or any(c.isspace() or c in "/@*?#" for c in bare):
        problem = "must be a host name or IP address (no scheme, port, path or wildcard)"
    elif ":" in bare:
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            problem = "must be a host name or IP address without a port"
    if problem:
        raise ConfigError(f"config key 'allowed_hosts': {name!r} {problem}")


def _did_you_mean(key: str, *, prefix: str = "", upper: bool = False) -> str:
    """``: did you mean `busy_probe_timeout_s`?`` for a near miss of a known key, else ""."""
    close = difflib.get_close_matches(key.lower(), _FIELD_TYPES, n=1, cutoff=0.75)
    if not close:
        return ""
    name = prefix + (close[0].upper() if upper else close[0])
    return f"; did you mean `{name}`?"


def _from_file(file: Path) -> dict[str, Any]:
    """The typed values of a TOML file."""
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
    values = {}
    for key, value in data.items():  # in file order: the first problem is reported
        if key not in _FIELD_TYPES:
            raise ConfigError(f"config file {file}: unknown key {key!r}{_did_you_mean(key)}")
        values[key] = _typed(key, value, from_text=False)
    return values


#: ``TOPE_UPDATER_*`` variables that are not config keys: ``--config`` itself and the
#: fault-injection hooks.
_NOT_CONFIG_KEYS = ("config", "crash_at", "crash_trace", "crash_once")


def _from_environment(env: Mapping[str, str]) -> dict[str, Any]:
    """The values of the ``TOPE_UPDATER_<KEY>`` variables (text)."""
    values = {}
    for name, value in env.items():
        key = name.removeprefix(ENV_PREFIX).lower()
        if not name.startswith(ENV_PREFIX) or key in _NOT_CONFIG_KEYS:
            continue
        if key not in _FIELD_TYPES:
            raise ConfigError(
                f"environment variable {name}: unknown key {key!r}"
                f"{_did_you_mean(key, prefix=ENV_PREFIX, upper=True)}"
            )
        values[key] = _typed(key, value, from_text=True)
    return values


def _from_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """CLI flag values: text, or already-typed values; None means not given."""
    values = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in _FIELD_TYPES:
            raise ConfigError(f"unknown option {key!r}")
        values[key] = _typed(key, value, from_text=isinstance(value, str))
    return values


def load_config(
    *,
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Config | None = None,
) -> Config:
    """Build the configuration from (in rising precedence) ``base`` or the built-in defaults,
    a TOML ``file``, ``TOPE_UPDATER_*`` variables in ``env`` and explicit ``overrides``.

    ``overrides`` holds CLI flag values (strings or already-typed values; None = not given).
    """
    values = {
        **(_from_file(file) if file is not None else {}),
        **_from_environment(env if env is not None else os.environ),
        **_from_overrides(overrides or {}),
    }
    config = attrs.evolve(base or Config(), **values)
    if config.compatible is None and config.device_model is not None:  # the alias
        # A device configured before `compatible` existed named its model for the fleet
        # only: it refuses packages for another model now, but keeps accepting those that
        # name none (as it did) unless allow_incompatible is set explicitly.
        config = attrs.evolve(
            config,
            compatible=config.device_model,
            allow_incompatible=values.get("allow_incompatible", True),
        )
    elif config.device_model not in (None, config.compatible):
        raise ConfigError(
            f"config keys 'compatible' ({config.compatible}) and 'device_model'"
            f" ({config.device_model}) differ: device_model is compatible's former name,"
            " set only compatible"
        )
    if "allow_downgrade" not in values and config.trusted_key:
        # Signed packages stay valid forever: without anti-rollback anyone who can reach
        # the API could re-install an old, signed, vulnerable version.
        config = attrs.evolve(config, allow_downgrade=False)
    return _validate(config)
