"""Configuration: defaults < TOML file < environment < flags; strict types; one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from updater_fsm.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_device_defaults() -> None:
    config = load_config(env={})
    assert config == Config()
    assert (config.root, config.host, config.port) == (Path("/opt/tope"), "127.0.0.1", 12315)
    assert config.state_path == Path("/opt/tope/.updater")
    assert config.device_api_url == "http://127.0.0.1:9080"
    assert config.systemctl == ("systemctl",)
    assert (config.units, config.allow_downgrade) == ((), True)


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    file = write(tmp_path, 'root = "/srv/a"\nport = 1000\nlog_level = "debug"\n')
    env = {"TOPE_UPDATER_PORT": "2000", "TOPE_UPDATER_SETTLE_S": "0.5", "OTHER": "x"}
    config = load_config(file=file, env=env, overrides={"port": "3000", "host": None})
    assert config.root == Path("/srv/a")  # file
    assert config.log_level == "debug"  # file
    assert config.settle_s == 0.5  # environment
    assert config.port == 3000  # flag beats environment beats file
    assert config.host == "127.0.0.1"  # a flag not given (None) changes nothing


def test_lists_and_booleans_from_each_source(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        'systemctl = ["nsenter", "-t", "1", "systemctl"]\n'
        'units = ["device-api", "web-server"]\nallow_downgrade = false\n',
    )
    config = load_config(file=file, env={})
    assert config.systemctl == ("nsenter", "-t", "1", "systemctl")
    assert config.units == ("device-api", "web-server")
    assert config.allow_downgrade is False
    env = {
        "TOPE_UPDATER_UNITS": "device-api 'web server'",
        "TOPE_UPDATER_ALLOW_DOWNGRADE": "Yes",
        "TOPE_UPDATER_EXTRA_ROOTS": "/etc/tope:/var/lib/tope",
    }
    config = load_config(file=file, env=env)
    assert config.units == ("device-api", "web server")
    assert config.allow_downgrade is True
    assert config.extra_roots == (Path("/etc/tope"), Path("/var/lib/tope"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port = 99999\n", "config key 'port': must be 1..65535"),
        ('port = "12315"\n', "config key 'port': must be an integer"),
        ("port = true\n", "config key 'port': must be an integer"),
        ('allow_downgrade = "no"\n', "config key 'allow_downgrade': must be true or false"),
        ("allow_downgrade = 0\n", "config key 'allow_downgrade': must be true or false"),
        ('units = "device-api"\n', "config key 'units': must be an array of strings"),
        ('log_level = "loud"\n', "config key 'log_level': must be one of debug, info"),
        ('service_control = "init"\n', "config key 'service_control': must be one of"),
        ('device_api_url = "ftp://x"\n', "config key 'device_api_url': must be an http(s) URL"),
        ("systemctl = []\n", "config key 'systemctl': must not be empty"),
        ("stop_timeout_s = 0\n", "config key 'stop_timeout_s': must be > 0"),
        ("colour = 1\n", "unknown key 'colour'"),
        ("port = \n", "is not valid TOML"),
    ],
)
def test_bad_file_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(file=write(tmp_path, text), env={})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TOPE_UPDATER_PORT", "twelve", "config key 'port'"),
        ("TOPE_UPDATER_ALLOW_DOWNGRADE", "maybe", "config key 'allow_downgrade'"),
        ("TOPE_UPDATER_COLOUR", "1", "environment variable TOPE_UPDATER_COLOUR: unknown key"),
    ],
)
def test_bad_environment_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env={name: value})


def test_fault_injection_variables_are_not_config_keys() -> None:
    env = {"TOPE_UPDATER_CRASH_AT": "engine:journaled", "TOPE_UPDATER_CONFIG": "/x.toml"}
    assert load_config(env=env) == Config()


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(file=tmp_path / "absent.toml", env={})


def test_cli_prints_one_line_and_exits_2_on_bad_config(tmp_path: Path) -> None:
    file = write(tmp_path, "port = 0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "http_shell.cli", "serve", "--config", str(file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc
    assert proc.stderr.strip().splitlines() == [
        "tope-updater: config key 'port': must be 1..65535 (got 0)"
    ]


def test_resume_limit_from_env_and_bounds(tmp_path: Path) -> None:
    assert load_config(env={}).resume_limit == 3
    assert load_config(env={"TOPE_UPDATER_RESUME_LIMIT": "5"}).resume_limit == 5
    with pytest.raises(ConfigError, match="'resume_limit': must be >= 1"):
        load_config(env={"TOPE_UPDATER_RESUME_LIMIT": "0"})


def test_idle_exit_s_from_file_and_environment_and_bounds(tmp_path: Path) -> None:
    assert load_config(env={}).idle_exit_s == 300.0
    assert load_config(env={"TOPE_UPDATER_IDLE_EXIT_S": "0"}).idle_exit_s == 0.0
    assert load_config(file=write(tmp_path, "idle_exit_s = 30\n"), env={}).idle_exit_s == 30.0
    for bad in ("-1", "86401", "nan"):
        with pytest.raises(ConfigError, match=r"'idle_exit_s': must be 0 \(stay resident\) or up"):
            load_config(env={"TOPE_UPDATER_IDLE_EXIT_S": bad})


def test_ddi_wake_min_s_from_file_and_environment_and_bounds(tmp_path: Path) -> None:
    assert load_config(env={}).ddi_wake_min_s == 120.0
    assert load_config(env={"TOPE_UPDATER_DDI_WAKE_MIN_S": "0"}).ddi_wake_min_s == 0.0
    file = write(tmp_path, "ddi_wake_min_s = 600\n")
    assert load_config(file=file, env={}).ddi_wake_min_s == 600.0
    for bad in ("-1", "86401", "nan"):
        with pytest.raises(ConfigError, match=r"'ddi_wake_min_s': must be 0 \(stay resident\)"):
            load_config(env={"TOPE_UPDATER_DDI_WAKE_MIN_S": bad})


def test_allowed_hosts_from_file_and_environment(tmp_path: Path) -> None:
    file = write(tmp_path, 'allowed_hosts = ["printer.local", "192.168.1.20", "[fd00::5]"]\n')
    config = load_config(file=file, env={})
    assert config.allowed_hosts == ("printer.local", "192.168.1.20", "[fd00::5]")
    env = {"TOPE_UPDATER_ALLOWED_HOSTS": "printer.local fd00::5"}
    assert load_config(env=env).allowed_hosts == ("printer.local", "fd00::5")
    assert load_config(env={}).allowed_hosts == ()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('"printer.local"', "must be an array of strings"),
        ('["printer.local:12315"]', "'printer.local:12315' must be a host name or IP address"),
        ('["http://printer.local"]', "'http://printer.local' must be a host name or IP address"),
        ('["*.local"]', "'*.local' must be a host name or IP address"),
        ('[""]', "'' must be a host name or IP address"),
        ('["a b"]', "'a b' must be a host name or IP address"),
    ],
)
def test_bad_allowed_hosts_name_the_key(tmp_path: Path, value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"config key 'allowed_hosts': {problem}")):
        load_config(file=write(tmp_path, f"allowed_hosts = {value}\n"), env={})


def test_trusted_key_turns_downgrades_off_unless_set_explicitly(tmp_path: Path) -> None:
    """A signature says who made a package, not that it is current: with a trusted key an
    old signed package could be replayed, so downgrades are refused by default."""
    key = 'trusted_key = "MCowBQYDK2VwAyEA"\n'
    assert load_config(file=write(tmp_path, key), env={}).allow_downgrade is False
    assert load_config(env={"TOPE_UPDATER_TRUSTED_KEY": "k"}).allow_downgrade is False
    explicit = load_config(file=write(tmp_path, key + "allow_downgrade = true\n"), env={})
    assert explicit.allow_downgrade is True
    from_env = {"TOPE_UPDATER_TRUSTED_KEY": "k", "TOPE_UPDATER_ALLOW_DOWNGRADE": "yes"}
    assert load_config(env=from_env).allow_downgrade is True
    assert load_config(env={}).allow_downgrade is True  # no key: unchanged default


def test_trusted_key_is_one_key_or_a_keyring(tmp_path: Path) -> None:
    """One string (as before), a list (key rotation), shell-quoted words in the environment;
    an empty list is no key."""
    one = load_config(file=write(tmp_path, 'trusted_key = "/etc/k.pem"\n'), env={})
    assert one.trusted_key == ("/etc/k.pem",)
    ring = 'trusted_key = ["/etc/old.pem", "/etc/tope-updater/keys.d"]\n'
    many = load_config(file=write(tmp_path, ring), env={})
    assert many.trusted_key == ("/etc/old.pem", "/etc/tope-updater/keys.d")
    assert many.allow_downgrade is False
    env = {"TOPE_UPDATER_TRUSTED_KEY": "/etc/old.pem '/etc/new key.pem'"}
    assert load_config(env=env).trusted_key == ("/etc/old.pem", "/etc/new key.pem")
    none = load_config(file=write(tmp_path, "trusted_key = []\n"), env={})
    assert none.trusted_key == () and none.allow_downgrade is True
    with pytest.raises(ConfigError, match="config key 'trusted_key'"):
        load_config(file=write(tmp_path, "trusted_key = [1]\n"), env={})


def test_busy_gate_keys(tmp_path: Path) -> None:
    from updater_fsm.core.printer import BusyPolicy, PrinterGate

    default = load_config(env={})
    assert default.busy_probe is None and default.printer_gate is PrinterGate.NONE
    assert (default.busy_poll_s, default.busy_probe_timeout_s) == (10.0, 10.0)
    env = {
        "TOPE_UPDATER_BUSY_PROBE": "/usr/lib/tope/busy-probe",
        "TOPE_UPDATER_BUSY_POLL_S": "2.5",
        "TOPE_UPDATER_BUSY_POLICY": "refuse",
    }
    config = load_config(env=env)
    assert config.busy_policy is BusyPolicy.REFUSE and config.busy_poll_s == 2.5
    assert config.printer_gate is PrinterGate.REFUSE
    file = write(tmp_path, 'busy_probe = "true"\nbusy_policy = "wait"\n')
    assert load_config(file=file, env={}).printer_gate is PrinterGate.WAIT
    with pytest.raises(ConfigError, match="'busy_policy'"):
        load_config(env={"TOPE_UPDATER_BUSY_POLICY": "later"})
    with pytest.raises(ConfigError, match="'busy_poll_s': must be > 0"):
        load_config(env={"TOPE_UPDATER_BUSY_POLL_S": "0"})


# ---- ddi_* (the fleet server, issue 14) ------------------------------------------------


def test_ddi_keys_from_environment(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="ascii")
    env = {
        "TOPE_UPDATER_DDI_URL": "https://fleet.example.com:8443/",
        "TOPE_UPDATER_DDI_TENANT": "ACME",
        "TOPE_UPDATER_DDI_CONTROLLER_ID": "printer-12.a:b",
        "TOPE_UPDATER_DDI_TOKEN": "t0ken",
        "TOPE_UPDATER_DDI_GATEWAY_TOKEN": "g4te",
        "TOPE_UPDATER_DDI_CA_FILE": str(ca),
        "TOPE_UPDATER_DDI_POLL_MIN_S": "0.5",
        "TOPE_UPDATER_DDI_POLL_MAX_S": "0.5",
        "TOPE_UPDATER_DEVICE_MODEL": "TOPE X1",
    }
    config = load_config(env=env)
    assert config.ddi_url == "https://fleet.example.com:8443/"
    assert (config.ddi_tenant, config.ddi_controller_id) == ("ACME", "printer-12.a:b")
    assert (config.ddi_token, config.ddi_gateway_token) == ("t0ken", "g4te")
    assert config.ddi_ca_file == ca
    assert (config.ddi_poll_min_s, config.ddi_poll_max_s) == (0.5, 0.5)
    assert config.device_model == "TOPE X1"


def test_ddi_defaults() -> None:
    config = load_config(env={})
    assert config.ddi_url is None and config.ddi_tenant == "DEFAULT"
    assert (config.ddi_poll_min_s, config.ddi_poll_max_s) == (5.0, 3600.0)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TOPE_UPDATER_DDI_URL": "fleet.example.com"}, "'ddi_url': must be an http(s) URL"),
        ({"TOPE_UPDATER_DDI_URL": "ftp://fleet.example.com"}, "'ddi_url': must be an http(s)"),
        ({"TOPE_UPDATER_DDI_URL": "https://"}, "'ddi_url': must be an http(s) URL"),
        ({"TOPE_UPDATER_DDI_URL": "https://u:p@fleet.example.com"}, "'ddi_url': no credentials"),
        ({"TOPE_UPDATER_DDI_URL": "https://u@fleet.example.com"}, "'ddi_url': no credentials"),
        ({"TOPE_UPDATER_DDI_URL": "https://h/?token=x"}, "'ddi_url': no credentials, query"),
        ({"TOPE_UPDATER_DDI_URL": "https://h/#x"}, "'ddi_url': no credentials, query or fragment"),
        ({"TOPE_UPDATER_DDI_URL": "https://[::1"}, "'ddi_url'"),
        ({"TOPE_UPDATER_DDI_URL": "https://h:99999"}, "'ddi_url'"),
        ({"TOPE_UPDATER_DDI_TENANT": "a/b"}, "'ddi_tenant': 1-64 letters"),
        ({"TOPE_UPDATER_DDI_TENANT": ""}, "'ddi_tenant'"),
        ({"TOPE_UPDATER_DDI_TENANT": "x" * 65}, "'ddi_tenant'"),
        ({"TOPE_UPDATER_DDI_TENANT": "ACME\n"}, "'ddi_tenant'"),
        ({"TOPE_UPDATER_DDI_CONTROLLER_ID": "my printer"}, "'ddi_controller_id'"),
        ({"TOPE_UPDATER_DDI_CONTROLLER_ID": "-x"}, "'ddi_controller_id'"),
        ({"TOPE_UPDATER_DDI_CONTROLLER_ID": "p12\n"}, "'ddi_controller_id'"),
        (
            {"TOPE_UPDATER_DDI_POLL_MIN_S": "10", "TOPE_UPDATER_DDI_POLL_MAX_S": "5"},
            "'ddi_poll_max_s': must be >= ddi_poll_min_s",
        ),
        ({"TOPE_UPDATER_DDI_POLL_MIN_S": "0"}, "'ddi_poll_min_s': must be > 0"),
        ({"TOPE_UPDATER_DDI_POLL_MIN_S": "soon"}, "'ddi_poll_min_s'"),
        ({"TOPE_UPDATER_DDI_CA_FILE": "/nonexistent/ca.pem"}, "'ddi_ca_file': /nonexistent"),
        ({"TOPE_UPDATER_DDI_CA_FILE": "/"}, "'ddi_ca_file': / is not a file"),
    ],
)
def test_bad_ddi_keys_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(env=env)


def test_ddi_keys_from_file(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        'ddi_url = "http://127.0.0.1:8080"\nddi_controller_id = "p1"\nddi_poll_max_s = 60\n',
    )
    config = load_config(file=file, env={"TOPE_UPDATER_DDI_TOKEN": "t"})
    assert (config.ddi_url, config.ddi_controller_id, config.ddi_token) == (
        "http://127.0.0.1:8080",
        "p1",
        "t",
    )
    assert config.ddi_poll_max_s == 60.0
    bad = write(tmp_path, 'ddi_url = "https://user:pw@h"\n')
    with pytest.raises(ConfigError, match="'ddi_url': no credentials"):
        load_config(file=bad, env={})


def test_compatible_and_its_former_name_device_model(tmp_path: Path) -> None:
    """``device_model`` (the fleet attribute's old key) is ``compatible``'s alias; alone it
    keeps packages without a model accepted, as before the key existed."""
    new = load_config(env={"TOPE_UPDATER_COMPATIBLE": "tope-x1"})
    assert (new.compatible, new.allow_incompatible) == ("tope-x1", False)
    old = load_config(file=write(tmp_path, 'device_model = "TOPE X1"\n'), env={})
    assert (old.compatible, old.allow_incompatible) == ("TOPE X1", True)
    strict = load_config(
        file=write(tmp_path, 'device_model = "TOPE X1"\nallow_incompatible = false\n'), env={}
    )
    assert (strict.compatible, strict.allow_incompatible) == ("TOPE X1", False)
    with pytest.raises(ConfigError, match="'compatible' \\(a\\) and 'device_model' \\(b\\) differ"):
        load_config(env={"TOPE_UPDATER_COMPATIBLE": "a", "TOPE_UPDATER_DEVICE_MODEL": "b"})
    with pytest.raises(ConfigError, match="config key 'compatible': must be a device model"):
        load_config(env={"TOPE_UPDATER_COMPATIBLE": "tope/x1"})
