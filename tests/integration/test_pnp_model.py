"""The IoT Plug and Play model against what the real agent really sends.

The model (``models/dtmi/deviceagent/deviceagent-1.json``) must be well-formed DTDL v3
-- Microsoft's own DTDLParser says so -- and must declare, with the right schema, every
telemetry field, reported and desired property, command, request and response that
the real agent exchanges with devcloud over TLS. The agent announces the model's id to
DPS (``payload.modelId``) and to the hub (CONNECT ``model-id``), which devcloud records.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import DEFAULT_MODEL_ID
from agent.core.lifecycle import State
from agent.core.methods import KNOWN_METHODS
from devcloud.allocation import AllocationRequest, AllocationResult
from hal.sensor import UNITS
from tests.support.agentcloud import (
    AgentThread,
    Cloud,
    issue_device,
    running_cloud,
    wait_methods_online,
    write_config,
)
from tests.support.dtdl import DTMI, conformance, contents, parse_with_microsoft_parser
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
MODEL_PATH = Path(__file__).resolve().parents[2] / "models/dtmi/deviceagent/deviceagent-1.json"
DEVICE = "pnp-device-1"
#: Every sensor kind the mock HAL simulates, each quantity the drivers measure.
SENSORS = (
    '[{part = "SHT4x", bus = 1, address = 0x45}, {part = "BME280", bus = 1, address = 0x76},'
    ' {part = "BH1750", bus = 1, address = 0x23}, {part = "TMP102", bus = 1, address = 0x48}]'
)
#: hal.sensor.UNITS -> (DTDL semantic type, DTDL unit).
DTDL_UNITS = {
    "degC": ("Temperature", "degreeCelsius"),
    "%RH": ("RelativeHumidity", "percent"),
    "hPa": ("Pressure", "hectopascal"),
    "lx": ("Illuminance", "lux"),
    "V": ("Voltage", "volt"),
}


def load_model() -> dict[str, Any]:
    model: dict[str, Any] = json.loads(MODEL_PATH.read_text())
    return model


def test_the_model_is_well_formed_dtdl_v3() -> None:
    model = load_model()
    assert model["@context"][0] == "dtmi:dtdl:context;3"
    assert model["@id"] == DEFAULT_MODEL_ID and DTMI.match(model["@id"])
    assert model["@type"] == "Interface"
    names = [c["name"] for c in model["contents"]]
    assert len(names) == len(set(names)), "one namespace for telemetry, properties, commands"
    result = parse_with_microsoft_parser(MODEL_PATH)
    assert result["ok"], result["errors"]
    assert result["parser"].startswith("DTDLParser")


def test_the_parser_refuses_a_broken_model(tmp_path: Path) -> None:
    """The well-formedness check can fail: a wrong unit is an error."""
    broken = MODEL_PATH.read_text().replace('"hectopascal"', '"hectopascals"')
    path = tmp_path / "broken.json"
    path.write_text(broken)
    result = parse_with_microsoft_parser(path)
    assert not result["ok"] and any("hectopascals" in str(e) for e in result["errors"])


def test_every_quantity_of_the_hal_has_its_unit_in_the_model() -> None:
    readings = contents(load_model(), "Telemetry")["readings"]["schema"]
    fields = {f["name"]: f for f in readings["mapValue"]["schema"]["fields"]}
    assert set(fields) == set(UNITS)
    for quantity, unit in UNITS.items():
        value = next(f for f in fields[quantity]["schema"]["fields"] if f["name"] == "value")
        semantic, dtdl_unit = DTDL_UNITS[unit]
        assert value["@type"] == ["Field", semantic], quantity
        assert value["unit"] == dtdl_unit and value["schema"] == "double", quantity


def test_every_command_of_the_agent_is_in_the_model() -> None:
    assert set(contents(load_model(), "Command")) == set(KNOWN_METHODS)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cloud, list[Any]]]:
    tmp = tmp_path_factory.mktemp("pnp")
    payloads: list[Any] = []
    with running_cloud(tmp) as cloud:

        def allocate(request: AllocationRequest) -> AllocationResult:
            payloads.append(request.payload)
            return AllocationResult(cloud.hub_host("hub1"))

        cloud.handle.set_custom_allocator(allocate)
        cloud.client.set_group_allocation("default", "custom", ["hub1", "hub2"])
        identity = issue_device(cloud, DEVICE)
        config = write_config(
            tmp / "agent.toml", cloud, identity, state_dir=tmp / "state", sensors=SENSORS
        )
        with AgentThread(config) as agent:
            agent.wait_state(State.CONNECTED)
            wait_methods_online(cloud, DEVICE)
            yield cloud, payloads


def test_the_agent_announces_its_model_to_dps_and_the_hub(world: tuple[Cloud, list[Any]]) -> None:
    cloud, payloads = world
    assert payloads and payloads[-1]["modelId"] == DEFAULT_MODEL_ID
    # devcloud records the model id from the hub CONNECT user name (and DPS payload).
    assert cloud.client.get_device(DEVICE)["modelId"] == DEFAULT_MODEL_ID
    assert cloud.client.get_twin(DEVICE)["modelId"] == DEFAULT_MODEL_ID


def test_telemetry_as_sent_conforms_to_the_model(world: tuple[Cloud, list[Any]]) -> None:
    cloud, _ = world
    telemetry = contents(load_model(), "Telemetry")
    messages = cloud.client.wait_for_telemetry(since=0, device_id=DEVICE, count=3, timeout_s=15)
    quantities = set()
    for message in messages:
        body = message.json()
        assert set(body) <= set(telemetry), f"undeclared telemetry {set(body) - set(telemetry)}"
        for name, value in body.items():
            assert conformance(value, telemetry[name]["schema"], name) == []
        for sensor in body["readings"].values():
            quantities |= set(sensor)
    # The four parts between them measure every quantity but voltage.
    assert quantities == set(UNITS) - {"voltage_v"}


def test_reported_and_desired_properties_conform_to_the_model(
    world: tuple[Cloud, list[Any]],
) -> None:
    cloud, _ = world
    properties = contents(load_model(), "Property")
    writable = {name for name, p in properties.items() if p.get("writable")}
    assert writable == {"telemetryIntervalSeconds", "sensors"}
    desired = {"telemetryIntervalSeconds": 2, "sensors": {"tmp102@1:0x48": {"enabled": False}}}
    for name, value in desired.items():
        assert conformance(value, properties[name]["schema"], f"desired.{name}") == []
    twin = cloud.client.patch_twin_desired(DEVICE, desired)
    version = twin["properties"]["desired"]["$version"]

    def applied() -> dict[str, Any] | None:
        reported: dict[str, Any] = cloud.client.get_twin(DEVICE)["properties"]["reported"]
        interval = reported.get("telemetryIntervalSeconds", {})
        sensor = reported.get("sensors", {}).get("tmp102@1:0x48", {}).get("enabled", {})
        done = interval.get("av") == version and sensor.get("av") == version
        return reported if done else None

    reported = wait_until(applied, what="the agent to acknowledge the desired properties")
    assert reported["telemetryIntervalSeconds"]["ac"] == 200
    assert reported["sensors"]["tmp102@1:0x48"]["enabled"] == {
        "value": False,
        "ac": 200,
        "av": version,
        "ad": reported["sensors"]["tmp102@1:0x48"]["enabled"]["ad"],
    }
    names = {k for k in reported if not k.startswith("$")}
    assert names <= set(properties), f"undeclared properties {names - set(properties)}"
    for name in names:
        problems = conformance(
            reported[name], properties[name]["schema"], name, acks=name in writable
        )
        assert problems == []


@pytest.mark.parametrize(
    ("method", "payload", "status"),
    [
        ("getStatus", None, 200),
        ("setTelemetryInterval", {"seconds": 3}, 200),
        ("reprovision", {}, 202),  # last: the agent then goes back to DPS
    ],
)
def test_commands_conform_to_the_model(
    world: tuple[Cloud, list[Any]], method: str, payload: Any, status: int
) -> None:
    cloud, _ = world
    command = contents(load_model(), "Command")[method]
    if payload is not None:
        assert conformance(payload, command["request"]["schema"], f"{method}.request") == []
    else:
        assert "request" not in command, f"{method} is called without a payload"
    wait_methods_online(cloud, DEVICE)
    answered, response = cloud.client.invoke_method(DEVICE, method, payload, timeout_s=10)
    assert answered == status, response
    assert conformance(response, command["response"]["schema"], f"{method}.response") == []
