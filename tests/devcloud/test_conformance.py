"""devcloud proven against Microsoft's unmodified ``azure-iot-device`` 2.14.0 SDK.

First the reference venv's rules (cache location, cache key, lock, atomic build; the
venv itself is built once per machine, about 10 s, and cached), then the conformance
cases: the SDK provisions through devcloud's DPS with a registration payload and custom
allocation, connects to the assigned hub, sends telemetry with properties, answers a
direct method, receives a desired patch, reports properties, and gets CredentialError
once its device is disabled; then C2D, a dropped connection (persistent session), DPS
throttling (429 + retry-after), a DPS 401, WebSockets on port 443 and keep-alive.

The SDK runs in subprocesses (tests/support/refsdk_scripts) that print JSON events and
log every MQTT packet (paho) on stderr; assertions check what the SDK saw *and* what
devcloud stored.
"""

from __future__ import annotations

import fcntl
import json
import random
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devcloud.allocation import AllocationRequest, AllocationResult
from devcloud.app import DevCloud, DevCloudConfig, DevCloudHandle, DevCloudThread, HubSpec
from devcloud.client import DevCloudClient
from devcloud.pki import Issued
from tests.support import refsdk
from tests.support.refsdk import Event, SDKProcess, sdk_process

#: Hard-coded in the SDK's MQTT transport, for MQTT over TLS and over WebSockets.
SDK_MQTT_PORT = 8883
SDK_WEBSOCKET_PORT = 443


def test_cache_root_precedence() -> None:
    assert refsdk.cache_root({"DEVICE_AGENT_CACHE": "/a", "XDG_CACHE_HOME": "/b"}) == Path("/a")
    assert refsdk.cache_root({"XDG_CACHE_HOME": "/b", "HOME": "/h"}) == Path("/b/device-agent")
    assert refsdk.cache_root({"HOME": "/h"}) == Path("/h/.cache/device-agent")
    assert refsdk.cache_root({"DEVICE_AGENT_CACHE": "", "HOME": "/h"}) == Path(
        "/h/.cache/device-agent"
    )


def test_cache_key_follows_the_inputs() -> None:
    base = refsdk.cache_key(("azure-iot-device==2.14.0",), python="3.11.7")
    assert base == refsdk.cache_key(("azure-iot-device==2.14.0",), python="3.11.7")
    assert base != refsdk.cache_key(("azure-iot-device==2.15.0",), python="3.11.7")
    assert base != refsdk.cache_key(("azure-iot-device==2.14.0",), python="3.12.1")
    assert base != refsdk.cache_key(("azure-iot-device==2.14.0", "paho-mqtt<2"), python="3.11.7")


def test_lock_wait_is_bounded(tmp_path: Path) -> None:
    lock_path = tmp_path / "x.lock"
    with open(lock_path, "a+b") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        with (
            pytest.raises(refsdk.RefSDKError, match="still locked"),
            refsdk._exclusive(lock_path, timeout_s=0.3),
        ):
            pass
    with refsdk._exclusive(lock_path, timeout_s=0.3):
        pass  # free again once the holder let go


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    key = refsdk.cache_key(("azure-iot-device==2.14.0",))
    stale = tmp_path / f".refsdk-{key}.tmp-killed"
    (stale / "bin").mkdir(parents=True)
    half = tmp_path / f"refsdk-{key}"
    (half / "bin").mkdir(parents=True)  # a venv without its marker: never trusted
    with pytest.raises(refsdk.RefSDKError, match="exited"):
        refsdk.ensure_venv(root=tmp_path, base_python="/bin/false")
    assert not stale.exists()
    assert not half.exists()
    assert [p.name for p in tmp_path.iterdir()] == [f"refsdk-{key}.lock"]


@pytest.mark.conformance
def test_the_cached_venv_holds_the_pinned_sdk(refsdk_python: Path) -> None:
    venv = refsdk_python.parent.parent
    assert venv.name == f"refsdk-{refsdk.cache_key()}"
    assert (venv / ".complete").read_text().split() == list(refsdk.REQUIREMENTS)
    assert not list(venv.parent.glob(f".refsdk-{refsdk.cache_key()}.tmp-*"))
    versions = subprocess.run(
        [
            str(refsdk_python),
            "-c",
            "from importlib.metadata import version as v; import azure.iot.device, paho.mqtt;"
            " print(v('azure-iot-device'), v('paho-mqtt'))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert versions[0] == "2.14.0"
    assert versions[1].startswith("1.")  # the SDK's pin, unlike the project's paho 2.x
    # A second call finds the complete venv and does not rebuild it.
    marker_mtime = (venv / ".complete").stat().st_mtime_ns
    assert refsdk.ensure_venv() == refsdk_python
    assert (venv / ".complete").stat().st_mtime_ns == marker_mtime


@pytest.fixture(scope="session")
def refsdk_python() -> Path:
    return refsdk.ensure_venv()


# ===================================================================== conformance
#
# The unmodified SDK against devcloud. The SDK's MQTT port is hard-coded to 8883 (443 for
# WebSockets), so DPS and each hub listen on those ports of their own random 127.x.y.z
# address. Hubs get DNS hostnames (as Azure's assignedHub is), and the SDK reaches them
# with ``gateway_hostname`` = the hub's address; the server certificates carry both.


def _random_loopback(rng: random.Random) -> str:
    return f"127.{rng.randrange(1, 255)}.{rng.randrange(0, 256)}.{rng.randrange(2, 255)}"


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Cloud:
    """A running devcloud for the SDK, and where its parts listen."""

    handle: DevCloudHandle
    dps_host: str
    hub_hosts: dict[str, str]
    allocations: list[AllocationRequest]

    @property
    def client(self) -> DevCloudClient:
        return self.handle.client

    def gateway_for(self, hostname: str) -> str:
        """The address the SDK connects to for the hub DPS called ``hostname``."""
        return self.hub_hosts[self.handle.hub_name(hostname)]


GROUP = "conformance"
HUB_HOSTNAMES = {"hub1": "hub1.conformance.devcloud.test", "hub2": "hub2.conformance.devcloud.test"}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    rng = random.Random()
    for _attempt in range(10):
        hosts = [_random_loopback(rng) for _ in range(3)]
        ports = (SDK_MQTT_PORT, SDK_WEBSOCKET_PORT)
        if len(set(hosts)) == 3 and all(_port_free(h, p) for h in hosts for p in ports):
            break
    else:
        pytest.fail("no free 127.x.y.z addresses with ports 8883 and 443 in 10 tries")
    dps_host, hub1_host, hub2_host = hosts
    config = DevCloudConfig(
        state_dir=tmp_path_factory.mktemp("devcloud"),
        dps_host=dps_host,
        dps_port=SDK_MQTT_PORT,
        dps_ws_port=SDK_WEBSOCKET_PORT,
        hubs=(
            HubSpec(
                "hub1", hub1_host, SDK_MQTT_PORT, SDK_WEBSOCKET_PORT, hostname=HUB_HOSTNAMES["hub1"]
            ),
            HubSpec(
                "hub2", hub2_host, SDK_MQTT_PORT, SDK_WEBSOCKET_PORT, hostname=HUB_HOSTNAMES["hub2"]
            ),
        ),
        rest_host="127.0.0.1",
        rest_port=0,
        assignment_delay_s=0.0,
        default_group=False,
    )
    allocations: list[AllocationRequest] = []

    def allocate(request: AllocationRequest) -> AllocationResult:
        """Custom allocation: always hub2, an initial twin, and a payload for the device."""
        allocations.append(request)
        return AllocationResult(
            iot_hub_host_name=HUB_HOSTNAMES["hub2"],
            initial_twin={
                "tags": {"allocatedBy": "conformance"},
                "properties": {"desired": {"telemetryInterval_s": 30}},
            },
            payload={"welcome": request.registration_id, "youSent": request.payload},
        )

    with DevCloudThread(config) as handle:
        handle.set_custom_allocator(allocate)
        handle.client.put_enrollment_group(
            GROUP,
            ca_reference="devcloud-intermediate",
            allocation_policy="custom",
            iot_hubs=["hub1", "hub2"],
        )
        yield Cloud(handle, dps_host, {"hub1": hub1_host, "hub2": hub2_host}, allocations)


def _device_args(cloud: Cloud, issued: Issued, device_id: str, hostname: str) -> list[str]:
    return [
        "--hostname", hostname,
        "--gateway-hostname", cloud.gateway_for(hostname),
        "--device-id", device_id,
        "--cert", str(issued.chain_path),
        "--key", str(issued.key_path),
        "--ca", str(cloud.handle.ca_path),
    ]  # fmt: skip


REGISTRATION_PAYLOAD = {"modelId": "dtmi:example:Thermostat;1", "serial": "SN-0042"}


@pytest.fixture(scope="module")
def provisioned(cloud: Cloud, refsdk_python: Path) -> tuple[str, Issued, Event]:
    """One device provisioned by the SDK: (registration id, identity, ``registered`` event)."""
    registration_id = f"sdk-{uuid.uuid4().hex[:10]}"
    issued = cloud.handle.pki.issue_device(registration_id)
    args = [
        "--provisioning-host", cloud.dps_host,
        "--id-scope", cloud.handle.id_scope,
        "--registration-id", registration_id,
        "--cert", str(issued.chain_path),
        "--key", str(issued.key_path),
        "--ca", str(cloud.handle.ca_path),
        "--payload", json.dumps(REGISTRATION_PAYLOAD),
    ]  # fmt: skip
    with sdk_process(refsdk_python, "provision.py", args) as sdk:
        registered = sdk.expect("registered", timeout_s=40)
        assert sdk.wait_exit() == 0
    return registration_id, issued, registered


@pytest.fixture(scope="module")
def device(
    cloud: Cloud, refsdk_python: Path, provisioned: tuple[str, Issued, Event]
) -> Iterator[tuple[str, SDKProcess]]:
    """The provisioned device, connected by the SDK to its assigned hub."""
    _registration_id, issued, registered = provisioned
    args = _device_args(cloud, issued, registered["device_id"], registered["assigned_hub"])
    with sdk_process(refsdk_python, "device.py", args) as sdk:
        sdk.expect("connected", timeout_s=30)
        yield registered["device_id"], sdk
        sdk.send({"cmd": "exit"})
        assert sdk.wait_exit() == 0


@pytest.mark.conformance
def test_x509_provisioning_with_custom_allocation_payload(
    cloud: Cloud, provisioned: tuple[str, Issued, Event]
) -> None:
    registration_id, issued, registered = provisioned
    assert registered["status"] == "assigned"
    assert registered["assigned_hub"] == HUB_HOSTNAMES["hub2"]
    assert registered["device_id"] == registration_id
    assert registered["substatus"] == "initialAssignment"
    assert registered["etag"]
    assert registered["operation_id"]
    # The allocator saw what the SDK sent, and the SDK got the allocator's payload back.
    mine = [a for a in cloud.allocations if a.registration_id == registration_id]
    assert len(mine) == 1
    assert mine[0].payload == REGISTRATION_PAYLOAD
    assert mine[0].x509["sha256Thumbprint"] == issued.thumbprint
    assert registered["payload"] == {"welcome": registration_id, "youSent": REGISTRATION_PAYLOAD}
    # devcloud's own view agrees: one register request, the device in hub2, the initial twin.
    assert cloud.client.registration_attempts(registration_id) == 1
    created = cloud.client.get_device(registration_id)
    assert created["hub"] == "hub2"
    assert created["authentication"] == {"type": "certificateAuthority"}
    twin = cloud.client.get_twin(registration_id)
    assert twin["properties"]["desired"]["telemetryInterval_s"] == 30
    assert twin["tags"] == {"allocatedBy": "conformance"}


@pytest.mark.conformance
def test_connects_to_the_assigned_hub(cloud: Cloud, device: tuple[str, SDKProcess]) -> None:
    device_id, _sdk = device
    assert cloud.client.get_device(device_id)["connectionState"] == "Connected"
    by_name = {hub["name"]: hub for hub in cloud.client.hubs()}
    assert by_name["hub2"]["connectedDevices"] == 1
    assert by_name["hub1"]["connectedDevices"] == 0


@pytest.mark.conformance
def test_telemetry_with_properties_content_type_and_encoding(
    cloud: Cloud, device: tuple[str, SDKProcess]
) -> None:
    device_id, sdk = device
    since = cloud.client.last_sequence_number()
    body = {"temperature_c": 21.5, "humidity_pct": 40.25}
    properties = {"sensor": "bme280", "unit": "°C", "odd key": "a&b=c/d?e"}
    sdk.send(
        {
            "id": "t1",
            "cmd": "send",
            "data": json.dumps(body),
            "properties": properties,
            "content_type": "application/json",
            "content_encoding": "utf-8",
            "message_id": "msg-0001",
            "correlation_id": "corr-7",
        }
    )
    sdk.expect("done", where=lambda e: e.get("id") == "t1")
    (message,) = cloud.client.wait_for_telemetry(since=since, device_id=device_id, timeout_s=10)
    assert message.hub == "hub2"
    assert message.json() == body
    assert dict(message.properties) == properties
    system = dict(message.system_properties)
    assert system["$.ct"] == "application/json"
    assert system["$.ce"] == "utf-8"
    assert system["$.mid"] == "msg-0001"
    assert system["$.cid"] == "corr-7"


@pytest.mark.conformance
def test_direct_method_round_trip(cloud: Cloud, device: tuple[str, SDKProcess]) -> None:
    device_id, sdk = device
    status, payload = cloud.client.invoke_method(
        device_id, "reprovision", {"reason": "test", "delay_s": 0}, timeout_s=10
    )
    assert status == 200
    assert payload == {"method": "reprovision", "echo": {"reason": "test", "delay_s": 0}}
    seen = sdk.expect("method", where=lambda e: e["name"] == "reprovision")
    assert seen["payload"] == {"reason": "test", "delay_s": 0}
    # The device's status code travels back too.
    status, payload = cloud.client.invoke_method(device_id, "nope", {"status": 404}, timeout_s=10)
    assert (status, payload["method"]) == (404, "nope")


@pytest.mark.conformance
def test_desired_property_patch_is_received(cloud: Cloud, device: tuple[str, SDKProcess]) -> None:
    device_id, sdk = device
    marker = uuid.uuid4().hex
    cloud.client.patch_twin_desired(device_id, {"marker": marker, "nested": {"a": 1}})
    event = sdk.expect("desired", timeout_s=10, where=lambda e: e["patch"].get("marker") == marker)
    twin = cloud.client.get_twin(device_id)
    assert event["patch"]["nested"] == {"a": 1}
    assert event["patch"]["$version"] == twin["properties"]["desired"]["$version"]


@pytest.mark.conformance
def test_reported_properties_reach_the_twin(cloud: Cloud, device: tuple[str, SDKProcess]) -> None:
    device_id, sdk = device
    before = cloud.client.get_twin(device_id)["properties"]["reported"]["$version"]
    patch = {"firmware": "1.2.3", "sensors": {"bme280": "ok"}}
    sdk.send({"id": "r1", "cmd": "report", "patch": patch})
    sdk.expect("done", where=lambda e: e.get("id") == "r1")
    reported = cloud.client.get_twin(device_id)["properties"]["reported"]
    assert reported["firmware"] == "1.2.3"
    assert reported["sensors"] == {"bme280": "ok"}
    assert reported["$version"] == before + 1
    # And the SDK reads the same twin back over MQTT.
    sdk.send({"id": "g1", "cmd": "get_twin"})
    twin = sdk.expect("done", where=lambda e: e.get("id") == "g1")["twin"]
    assert twin["reported"]["firmware"] == "1.2.3"
    assert twin["desired"]["$version"] >= 1


@pytest.mark.conformance
def test_credential_error_after_the_device_is_disabled(cloud: Cloud, refsdk_python: Path) -> None:
    device_id = f"sdk-off-{uuid.uuid4().hex[:8]}"
    issued = cloud.handle.pki.issue_device(device_id)
    cloud.client.create_device(device_id, "hub1")
    args = _device_args(cloud, issued, device_id, HUB_HOSTNAMES["hub1"])
    with sdk_process(refsdk_python, "device.py", args) as sdk:
        sdk.expect("connected", timeout_s=30)
        cloud.client.disable_device(device_id)
        # devcloud drops the live connection; the SDK reconnects at once, gets CONNACK 5
        # and gives up (CONNACK 5 is not a transient error for it).
        sdk.expect("connection", where=lambda e: e["connected"] is False)
        dropped = sdk.expect("background-exception")
        assert dropped["type"] == "ConnectionDroppedError"
        refused = sdk.expect("background-exception", timeout_s=15)
        assert refused["type"] == "UnauthorizedError"
        assert "not authori" in refused["message"].lower()
        sdk.send({"id": "c1", "cmd": "connect"})
        failed = sdk.expect("failed", timeout_s=15, where=lambda e: e.get("id") == "c1")
        assert failed["type"] == "CredentialError"
        assert "not authori" in failed["chain"][1]["message"].lower()
        sdk.send({"cmd": "exit"})
    # A fresh client for the disabled device fails the same way on its first CONNECT.
    with sdk_process(refsdk_python, "device.py", args) as sdk:
        refused = sdk.expect("connect-failed", timeout_s=30)
        assert refused["type"] == "CredentialError"
        assert sdk.wait_exit() == 1
    # Enabled again, the same identity connects: the refusal was about the device state.
    cloud.client.enable_device(device_id)
    with sdk_process(refsdk_python, "device.py", args) as sdk:
        sdk.expect("connected", timeout_s=30)
        sdk.send({"cmd": "exit"})
        assert sdk.wait_exit() == 0


@pytest.mark.conformance
def test_c2d_message_with_properties(cloud: Cloud, device: tuple[str, SDKProcess]) -> None:
    device_id, sdk = device
    message_id = cloud.client.send_c2d(
        device_id, body="set-led on", properties={"command": "led", "odd key": "x&y=z"}
    )
    event = sdk.expect("c2d", where=lambda e: e["message_id"] == message_id)
    assert event["data"] == "set-led on"
    assert event["properties"] == {"command": "led", "odd key": "x&y=z"}


def _server_connection_drop(cloud: Cloud, hub: str, device_id: str) -> None:
    def drop(app: DevCloud) -> None:
        connection = app.hub_servers[hub].connection(device_id)
        assert connection is not None, f"{device_id} is not connected to {hub}"
        connection.close("conformance test: simulated network drop")

    cloud.handle.call(drop)


@pytest.mark.conformance
def test_session_survives_a_dropped_connection(cloud: Cloud, refsdk_python: Path) -> None:
    """The SDK never re-subscribes after a reconnect (clean session 0): the server must
    keep its subscriptions, and answer the twin GET the SDK sends on reconnect.

    The SDK sends that GET even when it never subscribed to ``$iothub/twin/res/#`` (its
    twin-response subscription is made only by ``get_twin`` / ``patch_twin_...``), and
    waits for the answer without a timeout. devcloud delivers responses only on
    subscribed topics, so the device here uses ``get_twin`` once first, as apps do.
    """
    device_id = f"sdk-drop-{uuid.uuid4().hex[:8]}"
    issued = cloud.handle.pki.issue_device(device_id)
    cloud.client.create_device(device_id, "hub1")
    cloud.client.patch_twin_desired(device_id, {"mode": "eco"})
    args = _device_args(cloud, issued, device_id, HUB_HOSTNAMES["hub1"])
    with sdk_process(refsdk_python, "device.py", args) as sdk:
        sdk.expect("connected", timeout_s=30)
        sdk.send({"id": "g0", "cmd": "get_twin"})
        first = sdk.expect("done", where=lambda e: e.get("id") == "g0")["twin"]
        assert first["desired"]["mode"] == "eco"
        _server_connection_drop(cloud, "hub1", device_id)
        sdk.expect("connection", where=lambda e: e["connected"] is False)
        sdk.expect("connection", timeout_s=15, where=lambda e: e["connected"] is True)
        # On reconnect the SDK GETs the twin and hands the whole desired document to the
        # application as a patch, because the version differs from the one it last saw.
        synthetic = sdk.expect("desired", timeout_s=10)
        desired = cloud.client.get_twin(device_id)["properties"]["desired"]
        assert synthetic["patch"]["mode"] == "eco"
        assert synthetic["patch"]["$version"] == desired["$version"]
        # Methods and desired patches still reach it without a new SUBSCRIBE.
        status, _ = cloud.client.invoke_method(device_id, "ping", {}, timeout_s=10)
        assert status == 200
        cloud.client.patch_twin_desired(device_id, {"mode": "boost"})
        sdk.expect("desired", timeout_s=10, where=lambda e: e["patch"].get("mode") == "boost")
        sdk.send({"cmd": "exit"})
        assert sdk.wait_exit() == 0


def _provision_args(cloud: Cloud, registration_id: str, issued: Issued) -> list[str]:
    return [
        "--provisioning-host", cloud.dps_host,
        "--id-scope", cloud.handle.id_scope,
        "--registration-id", registration_id,
        "--cert", str(issued.chain_path),
        "--key", str(issued.key_path),
        "--ca", str(cloud.handle.ca_path),
    ]  # fmt: skip


@pytest.mark.conformance
def test_throttled_registration_honours_retry_after(cloud: Cloud, refsdk_python: Path) -> None:
    """DPS answers 429 with an integer ``retry-after``; the SDK waits that long and retries."""
    from devcloud.dps import RateLimiter

    now = [0.0]
    limiter = RateLimiter(1.0, clock=lambda: now[0])
    assert limiter.acquire() is None  # the bucket is now empty until ``now`` moves
    previous = cloud.handle.call(lambda app: app.provisioner.limiter)
    cloud.handle.call(lambda app: setattr(app.provisioner, "limiter", limiter))
    try:
        registration_id = f"sdk-429-{uuid.uuid4().hex[:8]}"
        issued = cloud.handle.pki.issue_device(registration_id)
        args = _provision_args(cloud, registration_id, issued)
        with sdk_process(refsdk_python, "provision.py", args) as sdk:
            sdk.expect_log("/res/429/?$rid=")  # paho logs the PUBLISH DPS sent back
            assert "retry-after=1" in sdk.stderr
            now[0] += 1.0  # one token's worth of time: the retry will pass
            registered = sdk.expect("registered", timeout_s=30)
            assert sdk.wait_exit() == 0
        assert registered["status"] == "assigned"
        # Two register requests, or more if this test advanced the clock late on a busy
        # machine (each further 429 is answered the same way).
        assert cloud.client.registration_attempts(registration_id) >= 2
        # retry-after (1 s), then the SDK's fixed 2 s before its first status poll.
        assert registered["elapsed_s"] >= 3.0
    finally:
        cloud.handle.call(lambda app: setattr(app.provisioner, "limiter", previous))


@pytest.mark.conformance
def test_dps_rejection_reaches_the_sdk_as_an_unexpected_failure(
    cloud: Cloud, refsdk_python: Path
) -> None:
    """A disabled enrollment is a 401 from DPS; the SDK reports it only as
    ``ClientError("Unexpected failure")`` caused by a ``ServiceError`` (see DESIGN.md)."""
    registration_id = f"sdk-401-{uuid.uuid4().hex[:8]}"
    issued = cloud.handle.pki.issue_device(registration_id)
    cloud.client.put_enrollment(
        registration_id,
        certificate_pem=issued.cert_path.read_text(),
        iot_hubs=["hub1"],
        enabled=False,
    )
    args = _provision_args(cloud, registration_id, issued)
    with sdk_process(refsdk_python, "provision.py", args) as sdk:
        failed = sdk.expect("register-failed", timeout_s=30)
        assert sdk.wait_exit() == 1
    assert (failed["type"], failed["message"]) == ("ClientError", "Unexpected failure")
    assert failed["chain"][1]["type"] == "ServiceError"
    assert "status code 401" in failed["chain"][1]["message"]
    assert cloud.client.registration_attempts(registration_id) == 1
    assert registration_id not in {d["deviceId"] for d in cloud.client.list_devices()}


@pytest.mark.conformance
def test_over_websockets(cloud: Cloud, refsdk_python: Path) -> None:
    """The same protocol over WebSockets on port 443 (path ``/$iothub/websocket``)."""
    registration_id = f"sdk-ws-{uuid.uuid4().hex[:8]}"
    issued = cloud.handle.pki.issue_device(registration_id)
    args = [*_provision_args(cloud, registration_id, issued), "--websockets"]
    with sdk_process(refsdk_python, "provision.py", args) as sdk:
        registered = sdk.expect("registered", timeout_s=30)
        assert sdk.wait_exit() == 0
    assert "Connect using port 443 (websockets)" in sdk.stderr
    assert registered["assigned_hub"] == HUB_HOSTNAMES["hub2"]
    hub_args = _device_args(cloud, issued, registration_id, registered["assigned_hub"])
    with sdk_process(refsdk_python, "device.py", [*hub_args, "--websockets"]) as sdk:
        sdk.expect("connected", timeout_s=30)
        since = cloud.client.last_sequence_number()
        sdk.send({"id": "w1", "cmd": "send", "data": "over ws", "properties": {"via": "ws"}})
        sdk.expect("done", where=lambda e: e.get("id") == "w1")
        (message,) = cloud.client.wait_for_telemetry(
            since=since, device_id=registration_id, timeout_s=10
        )
        assert (message.body, dict(message.properties)) == (b"over ws", {"via": "ws"})
        status, payload = cloud.client.invoke_method(registration_id, "ws", {"n": 1}, timeout_s=10)
        assert (status, payload["echo"]) == (200, {"n": 1})
        sdk.send({"cmd": "exit"})
        assert sdk.wait_exit() == 0
    assert "Connect using port 443 (websockets)" in sdk.stderr


@pytest.mark.conformance
def test_keep_alive_pings_are_answered(cloud: Cloud, refsdk_python: Path) -> None:
    """An idle SDK client pings at its keep-alive (1 s here); devcloud answers each
    PINGREQ and keeps the connection (it may drop only after 1.5 x keep-alive of silence)."""
    device_id = f"sdk-ping-{uuid.uuid4().hex[:8]}"
    issued = cloud.handle.pki.issue_device(device_id)
    cloud.client.create_device(device_id, "hub1")
    args = [*_device_args(cloud, issued, device_id, HUB_HOSTNAMES["hub1"]), "--keep-alive", "1"]
    with sdk_process(refsdk_python, "device.py", args) as sdk:
        sdk.expect("connected", timeout_s=30)
        sdk.expect_log("Received PINGRESP", count=2, timeout_s=10)
        assert not [e for e in sdk.events if e["event"] == "connection" and not e["connected"]]
        assert "Received CONNACK" in sdk.stderr and sdk.stderr.count("Sending CONNECT") == 1
        status, _ = cloud.client.invoke_method(device_id, "still-there", None, timeout_s=10)
        assert status == 200
        sdk.send({"cmd": "exit"})
        assert sdk.wait_exit() == 0
