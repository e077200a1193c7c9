"""agent.config: one validating loader; every problem is a ConfigError naming file and key."""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import tomllib
from datetime import UTC, date, datetime, time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import (
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    DpsConfig,
    HalConfig,
    HubConfig,
    IdentityConfig,
    LifecycleConfig,
    LogConfig,
    StateConfig,
    TelemetryConfig,
    load_config,
    parse_config,
    resolve_config_path,
)
from agent.errors import EX_CONFIG, ConfigError
from hal.sensor import SensorSpec

REPO = Path(__file__).resolve().parents[2]

MINIMAL = """\
[identity]
cert_chain_path = "certs/device.chain.pem"
key_path = "/abs/device.key.pem"

[dps]
id_scope = "0ne00000DEV"

[hal]
backend = "mock"
"""


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> AgentConfig:
    return load_config(write(tmp_path, text))


def expect_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == path
    assert str(path) in str(info.value)
    assert info.value.exit_code == EX_CONFIG
    return info.value


def test_minimal_config_takes_documented_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL)
    assert config.source == (tmp_path / "agent.toml").absolute()
    assert config.identity.keystore == "file"
    assert config.identity.key_passphrase_file is None
    assert config.identity.trust_anchor_paths == ()
    assert config.identity.registration_id is None
    assert config.dps.host == "global.azure-devices-provisioning.net"
    assert config.dps.port == 8883
    assert config.dps.transport == "mqtt"
    assert config.dps.ws_port == 443
    assert config.dps.api_version == "2019-03-31"
    assert dict(config.dps.payload) == {}
    assert config.hub.port == 8883
    assert config.hub.keep_alive_s == 60
    assert config.hub.api_version == "2021-04-12"
    assert config.hub.server_ca_path is None
    assert config.lifecycle.long_outage_s == 1200.0
    assert config.lifecycle.reprovision_budget == 6
    assert config.lifecycle.reprovision_window_s == 3600.0
    assert config.telemetry.interval_s == 60.0
    assert config.state.directory == Path("/var/lib/device-agent")
    assert config.hal.backend == "mock"
    assert config.hal.sensors == "auto"
    assert config.hal.buses == (1,)
    assert config.log.level == "INFO"


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    config = load_config(write(sub, MINIMAL + '[state]\ndirectory = "state"\n'))
    assert config.identity.cert_chain_path == sub / "certs/device.chain.pem"
    assert config.identity.key_path == Path("/abs/device.key.pem")
    assert config.state.directory == sub / "state"


def test_full_config_values_are_read(tmp_path: Path) -> None:
    text = """\
[identity]
cert_chain_path = "c.pem"
key_path = "k.pem"
key_passphrase_file = "k.pass"
trust_anchor_paths = ["root.pem", "/etc/other.pem"]
registration_id = "dev-01"

[dps]
host = "127.0.0.2"
port = 18883
id_scope = "0ne00000DEV"
server_ca_path = "root.pem"
transport = "websockets"
ws_port = 8443
[dps.payload]
model = "x"
nested = { list = [1, 2.5, "three", true] }

[hub]
port = 28883
transport = "websockets"
ws_port = 9443
keep_alive_s = 5
server_ca_path = "hub.pem"

[lifecycle]
backoff_base_s = 0.05
backoff_cap_s = 1
reprovision_budget = 2

[telemetry]
interval_s = 0.2

[hal]
backend = "smbus"
buses = [1, 3]
led_pin = 17
button_pin = "GPIO27"
mock_seed = 7
[[hal.sensors]]
part = "BME280"
bus = 1
address = 0x76
[[hal.sensors]]
part = "BH1750"
bus = 3
address = 0x23
name = "light"
[[hal.sensors]]
part = "sht31"
bus = 1
address = 0x44

[log]
level = "debug"
"""
    config = load_text(tmp_path, text)
    assert config.identity.key_passphrase_file == tmp_path / "k.pass"
    assert config.identity.trust_anchor_paths == (tmp_path / "root.pem", Path("/etc/other.pem"))
    assert config.identity.registration_id == "dev-01"
    assert (config.dps.host, config.dps.port, config.dps.transport) == (
        "127.0.0.2",
        18883,
        "websockets",
    )
    assert config.dps.payload == {"model": "x", "nested": {"list": [1, 2.5, "three", True]}}
    assert json.loads(json.dumps(dict(config.dps.payload))) == config.dps.payload
    assert config.hub.transport == "websockets"
    assert config.hub.ws_port == 9443
    assert config.hub.server_ca_path == tmp_path / "hub.pem"
    assert config.lifecycle.backoff_base_s == 0.05
    assert isinstance(config.lifecycle.backoff_cap_s, float)
    assert config.telemetry.interval_s == 0.2
    assert config.hal.sensors == (
        SensorSpec(part="BME280", bus=1, address=0x76),
        SensorSpec(part="BH1750", bus=3, address=0x23, name="light"),
        SensorSpec(part="SHT3x", bus=1, address=0x44),  # an alias, made canonical
    )
    assert config.hal.buses == (1, 3)
    assert (config.hal.led_pin, config.hal.button_pin, config.hal.mock_seed) == (17, "GPIO27", 7)
    assert config.log.level == "DEBUG"


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL + '[dps.payload]\nmodel = "m"\n')
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dps.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.dps.payload["model"] = "changed"  # type: ignore[index]


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        ("[dps]\nport = 0\n", "dps.port", "from 1 to 65535"),
        ("[dps]\nport = 65536\n", "dps.port", "from 1 to 65535"),
        ('[dps]\nport = "8883"\n', "dps.port", "expected an integer"),
        ("[dps]\nport = true\n", "dps.port", "expected an integer"),
        ("[dps]\nport = 8883.0\n", "dps.port", "expected an integer"),
        ('[dps]\nid_scope = "0ne/0"\n', "dps.id_scope", "ID scope"),
        ('[dps]\nhost = "bad host"\n', "dps.host", "host name"),
        ('[dps]\ntransport = "tcp"\n', "dps.transport", "'mqtt' or 'websockets'"),
        ('[dps]\napi_version = "latest"\n', "dps.api_version", "API version"),
        ("[dps]\npayload = 3\n", "dps.payload", "expected a table"),
        ("[dps.payload]\nwhen = 2024-01-01\n", "dps.payload.when", "dates and times"),
        ("[dps.payload]\nx = [nan]\n", "dps.payload.x[0]", "finite"),
        ("[dps]\nhots = 'x'\n", "dps.hots", "unknown key"),
        ("[hub]\nkeep_alive_s = 0\n", "hub.keep_alive_s", "from 1 to 1767"),
        ("[hub]\nport = -1\n", "hub.port", "from 1 to 65535"),
        ("[lifecycle]\nbackoff_base_s = 0\n", "lifecycle.backoff_base_s", "seconds > 0"),
        ("[lifecycle]\nbackoff_base_s = -1.5\n", "lifecycle.backoff_base_s", "seconds > 0"),
        ("[lifecycle]\nlong_outage_s = inf\n", "lifecycle.long_outage_s", "seconds > 0"),
        ("[lifecycle]\nlong_outage_s = nan\n", "lifecycle.long_outage_s", "seconds > 0"),
        ("[lifecycle]\nconnect_timeout_s = false\n", "lifecycle.connect_timeout_s", "seconds"),
        (
            "[lifecycle]\nbackoff_base_s = 10\nbackoff_cap_s = 5\n",
            "lifecycle.backoff_cap_s",
            ">= lifecycle.backoff_base_s",
        ),
        ("[lifecycle]\nreprovision_budget = 0\n", "lifecycle.reprovision_budget", "from 1"),
        ("[telemetry]\ninterval_s = '60'\n", "telemetry.interval_s", "number of seconds"),
        ("[telemetry]\nqueue_max_messages = 0\n", "telemetry.queue_max_messages", "from 1"),
        ("[state]\ndirectory = ''\n", "state.directory", "non-empty path"),
        ("[state]\ndir = '/x'\n", "state.dir", "unknown key"),
        ("[log]\nlevel = 'LOUD'\n", "log.level", "'DEBUG'"),
        ("[logging]\nlevel = 'INFO'\n", "logging", "unknown key"),
        ("[identity]\nkeystore = 'hsm'\n", "identity.keystore", "'tpm'"),
        ("[identity]\nregistration_id = 'has space'\n", "identity.registration_id", "128"),
        ("[identity]\nregistration_id = 'ends.'\n", "identity.registration_id", "ending"),
        ("[identity]\ntrust_anchor_paths = 'root.pem'\n", "identity.trust_anchor_paths", "array"),
        ("[identity]\ntrust_anchor_paths = [1]\n", "identity.trust_anchor_paths[0]", "path"),
        ("[identity]\nkey_passphrase = 'hunter2'\n", "identity.key_passphrase", "unknown key"),
        ("[hal]\nbuses = [1, -1]\n", "hal.buses[1]", "from 0"),
        ("[hal]\nsensors = 'some'\n", "hal.sensors", '"auto"'),
        ("[hal]\nsensors = [1]\n", "hal.sensors[0]", "expected a table"),
        (
            "[[hal.sensors]]\npart = 'BME280'\nbus = 1\naddress = 0x78\n",
            "hal.sensors[0].address",
            "from 3 to 119",
        ),
        ("[[hal.sensors]]\npart = 'BME280'\naddress = 0x76\n", "hal.sensors[0].bus", "missing"),
        (
            "[[hal.sensors]]\npart = 'XYZ123'\nbus = 1\naddress = 0x76\n",
            "hal.sensors[0].part",
            "expected a supported part (BH1750, BME280",
        ),
        (
            "[[hal.sensors]]\npart = 'BME280'\nbus = 1\naddress = 0x76\nspeed = 1\n",
            "hal.sensors[0].speed",
            "unknown key",
        ),
        ("[hal]\nled_pin = 1.5\n", "hal.led_pin", "GPIO number"),
        ("[hal]\nbutton_hold_s = 0\n", "hal.button_hold_s", "seconds > 0"),
        ("[hal]\nmock_seed = 'x'\n", "hal.mock_seed", "integer"),
    ],
)
def test_bad_values_name_file_key_and_expectation(
    tmp_path: Path, extra: str, key: str, expected: str
) -> None:
    # Merge the override into MINIMAL's tables: TOML refuses a table defined twice.
    base = tomllib.loads(MINIMAL)
    for name, table in tomllib.loads(extra).items():
        if isinstance(table, dict) and isinstance(base.get(name), dict):
            base[name].update(table)
        else:
            base[name] = table
    with pytest.raises(ConfigError) as info:
        parse_config(base, source=tmp_path / "agent.toml")
    assert info.value.key == key
    assert expected in info.value.problem
    assert str(tmp_path / "agent.toml") in str(info.value)
    assert key in str(info.value)
    # The same document through the file loader gives the same error.
    expect_error(tmp_path, _dump(base))


@pytest.mark.parametrize(
    ("drop", "key"),
    [
        ('[hal]\nbackend = "mock"\n', "hal"),
        ('id_scope = "0ne00000DEV"\n', "dps.id_scope"),
        ('key_path = "/abs/device.key.pem"\n', "identity.key_path"),
    ],
)
def test_required_keys_are_named_when_missing(tmp_path: Path, drop: str, key: str) -> None:
    error = expect_error(tmp_path, MINIMAL.replace(drop, ""))
    assert error.key == key
    assert "missing" in error.problem


def test_hal_backend_must_be_explicit(tmp_path: Path) -> None:
    error = expect_error(tmp_path, MINIMAL.replace('backend = "mock"\n', ""))
    assert error.key == "hal.backend"


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert info.value.path == tmp_path / "nope.toml"
    assert "no such file" in str(info.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    error = expect_error(tmp_path, MINIMAL + "\n\nbroken = = 1\n")
    assert "line 12" in error.problem
    assert "TOML syntax error" in error.problem


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(MINIMAL.encode() + b"# \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


@pytest.mark.parametrize("name", ["agent.azure.toml", "agent.devcloud.toml", "agent.laptop.toml"])
def test_example_configs_load(name: str) -> None:
    config = load_config(REPO / "deploy" / name)
    assert config.source == REPO / "deploy" / name


def test_example_configs_say_what_they_are_for() -> None:
    azure = load_config(REPO / "deploy/agent.azure.toml")
    assert azure.dps.host == "global.azure-devices-provisioning.net"
    assert azure.hal.backend == "smbus"
    devcloud = load_config(REPO / "deploy/agent.devcloud.toml")
    assert (devcloud.dps.host, devcloud.dps.port, devcloud.dps.id_scope) == (
        "127.0.0.2",
        8883,
        "0ne00000DEV",
    )
    assert devcloud.dps.server_ca_path is not None
    assert devcloud.dps.server_ca_path.is_absolute()
    laptop = load_config(REPO / "deploy/agent.laptop.toml")
    assert laptop.hal.backend == "mock"


def test_config_path_precedence() -> None:
    env = {CONFIG_ENV_VAR: "/from/env.toml"}
    assert resolve_config_path("/from/flag.toml", env) == Path("/from/flag.toml")
    assert resolve_config_path(None, env) == Path("/from/env.toml")
    assert resolve_config_path(None, {}) == DEFAULT_CONFIG_PATH
    assert resolve_config_path(None, {CONFIG_ENV_VAR: ""}) == DEFAULT_CONFIG_PATH


# --- property tests: whatever the file holds, only ConfigError comes out ------------------

toml_scalars = st.one_of(
    st.text(max_size=20),
    st.integers(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.datetimes(timezones=st.just(UTC)),
    st.dates(),
    st.times(),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
SECTIONS = ("identity", "dps", "hub", "lifecycle", "telemetry", "state", "hal", "log")
KNOWN_KEYS = sorted(
    {
        f.name
        for section in (
            IdentityConfig,
            DpsConfig,
            HubConfig,
            LifecycleConfig,
            TelemetryConfig,
            StateConfig,
            HalConfig,
            LogConfig,
        )
        for f in dataclasses.fields(section)
    }
)


def _outcome(data: dict[str, object]) -> None:
    try:
        config = parse_config(data, source=Path("/etc/device-agent/agent.toml"))
    except ConfigError as exc:
        assert exc.path == Path("/etc/device-agent/agent.toml")
        return
    assert isinstance(config, AgentConfig)
    assert math.isfinite(config.telemetry.interval_s)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    section=st.sampled_from(SECTIONS),
    key=st.sampled_from(KNOWN_KEYS) | st.text(max_size=10),
    value=toml_values,
)
def test_any_value_in_any_key_gives_config_or_config_error(
    section: str, key: str, value: object
) -> None:
    data = tomllib.loads(MINIMAL)
    data.setdefault(section, {})[key] = value
    _outcome(data)


@settings(max_examples=200, deadline=None)
@given(section=st.sampled_from(SECTIONS), value=toml_values)
def test_any_section_value_gives_config_or_config_error(section: str, value: object) -> None:
    data = tomllib.loads(MINIMAL)
    data[section] = value
    _outcome(data)


@settings(max_examples=200, deadline=None)
@given(
    sensors=st.lists(
        st.dictionaries(st.sampled_from(["part", "bus", "address", "name", "x"]), toml_values),
        max_size=3,
    )
)
def test_any_sensor_list_gives_config_or_config_error(sensors: list[dict[str, object]]) -> None:
    data = tomllib.loads(MINIMAL)
    data["hal"]["sensors"] = sensors
    _outcome(data)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_any_file_content_gives_config_or_config_error(text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "agent.toml"
        if isinstance(text, str):
            path.write_text(MINIMAL + text, encoding="utf-8", errors="surrogatepass")
        else:
            path.write_bytes(text)
        try:
            load_config(path)
        except ConfigError as exc:
            assert exc.path == path


# --- a tiny TOML writer, only for the tests' own documents ---------------------------------


def _dump(data: dict[str, object]) -> str:
    lines: list[str] = []
    tables: list[tuple[str, dict[str, object]]] = []
    arrays: list[tuple[str, list[dict[str, object]]]] = []

    def walk(prefix: str, table: dict[str, object]) -> None:
        for k, v in table.items():
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                tables.append((name, v))
            elif isinstance(v, list) and v and all(isinstance(i, dict) for i in v):
                arrays.append((name, v))

    walk("", data)
    for name, table in tables:
        lines.append(f"[{name}]")
        lines.extend(
            f"{k} = {_value(v)}"
            for k, v in table.items()
            if not isinstance(v, dict)
            and not (isinstance(v, list) and v and all(isinstance(i, dict) for i in v))
        )
        walk(name, table)
    for name, items in arrays:
        for item in items:
            lines.append(f"[[{name}]]")
            lines.extend(f"{k} = {_value(v)}" for k, v in item.items())
    for k, v in data.items():
        if not isinstance(v, dict | list):
            lines.insert(0, f"{k} = {_value(v)}")
    return "\n".join(lines) + "\n"


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, datetime | date | time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_value(i) for i in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_value(i)}" for k, i in v.items()) + "}"
    raise TypeError(type(v))
