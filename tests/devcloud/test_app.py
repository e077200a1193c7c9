"""devcloud end to end: paho-mqtt devices over real TLS on loopback, operated through REST."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import warnings
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from devcloud.allocation import AllocationRequest, AllocationResult, hashed
from devcloud.app import DevCloudHandle, HubSpec
from devcloud.errors import DeviceNotOnlineError, MethodTimeoutError
from devcloud.pki import PKI, Issued
from tests.support.devcloud import (
    MqttDevice,
    devcloud_fixture,  # noqa: F401
    free_loopback_address,
    mqtt_devices_fixture,  # noqa: F401
    running_devcloud,
)
from tests.support.waiting import wait_until


def provision(
    cloud: DevCloudHandle, devices: list[MqttDevice], regid: str, identity: Issued | None = None
) -> tuple[str, Issued]:
    """Register ``regid`` over MQTT; return (hub name, identity)."""
    identity = identity or cloud.pki.issue_device(regid)
    dps = MqttDevice.dps(cloud, identity, regid)
    devices.append(dps)
    assert dps.connect() == 0
    status, body = dps.register()
    dps.close()
    assert status == 200, body
    assert body["status"] == "assigned", body
    return cloud.hub_name(body["registrationState"]["assignedHub"]), identity


def online(
    cloud: DevCloudHandle,
    devices: list[MqttDevice],
    hub: str,
    identity: Issued,
    device_id: str,
    *filters: str,
) -> MqttDevice:
    device = MqttDevice.hub(cloud, hub, identity, device_id)
    devices.append(device)
    assert device.connect() == 0
    for topic_filter in filters:
        assert device.subscribe(topic_filter, 1) in (0, 1)
    return device


def test_provisioning_202_poll_200_then_hub_telemetry(
    devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice]
) -> None:
    hub, identity = provision(devcloud, mqtt_devices, "dev-flow")
    hostnames = [devcloud.hub_hostname(h) for h in ("hub1", "hub2")]
    assert devcloud.hub_hostname(hub) == hashed("dev-flow", hostnames)
    registration = devcloud.client.get_registration("dev-flow")
    assert registration["hub"] == hub and registration["substatus"] == "initialAssignment"
    assert devcloud.client.registration_attempts("dev-flow") == 1
    device = online(devcloud, mqtt_devices, hub, identity, "dev-flow")
    since = devcloud.client.last_sequence_number()
    device.publish(
        "devices/dev-flow/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8&kind=env",
        json.dumps({"temperature_c": 21.5}),
    )
    (message,) = devcloud.client.wait_for_telemetry(since=since, device_id="dev-flow")
    assert message.json() == {"temperature_c": 21.5}
    assert message.hub == hub
    assert message.properties == {"kind": "env"}
    assert message.system_properties == {"$.ct": "application/json", "$.ce": "utf-8"}
    assert devcloud.client.get_device("dev-flow")["connectionState"] == "Connected"


def test_dps_error_answers_over_the_wire(tmp_path: Path, mqtt_devices: list[MqttDevice]) -> None:
    with running_devcloud(tmp_path / "dc", registrations_per_second=0.01) as cloud:
        # 404: no enrollment covers the root-signed device.
        direct = cloud.pki.issue_device("dev-404", signer="root")
        device = MqttDevice.dps(cloud, direct, "dev-404")
        mqtt_devices.append(device)
        assert device.connect() == 0
        status, body = device.register()
        assert status == 404 and body["errorCode"] == 404201 and body["trackingId"]
        # 429: the bucket (one token, refilling at 0.01/s) is now empty.
        identity = cloud.pki.issue_device("dev-429")
        device = MqttDevice.dps(cloud, identity, "dev-429")
        mqtt_devices.append(device)
        assert device.connect() == 0
        device.subscribe("$dps/registrations/res/#")
        device.publish(
            "$dps/registrations/PUT/iotdps-register/?$rid=7",
            json.dumps({"registrationId": "dev-429"}),
        )
        topic, raw = device.expect("$dps/registrations/res/")
        assert topic.startswith("$dps/registrations/res/429/?$rid=7&retry-after=")
        assert int(topic.rsplit("=", 1)[1]) >= 1
        assert json.loads(raw)["errorCode"] == 429001
        # 401: a disabled group.
        cloud.client.set_group_allocation("default", enabled=False)
    with running_devcloud(tmp_path / "dc2") as cloud:
        cloud.client.set_group_allocation("default", enabled=False)
        identity = cloud.pki.issue_device("dev-401")
        device = MqttDevice.dps(cloud, identity, "dev-401")
        mqtt_devices.append(device)
        assert device.connect() == 0
        status, body = device.register()
        assert status == 401 and "disabled" in body["message"]


@pytest.mark.parametrize("case", ["wrong-scope", "cn-mismatch"])
def test_dps_refuses_connect(
    devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice], case: str
) -> None:
    identity = devcloud.pki.issue_device("dev-x", cn="other" if case == "cn-mismatch" else None)
    scope = "0ne0000WRONG" if case == "wrong-scope" else devcloud.id_scope
    device = MqttDevice(
        devcloud.dps_address,
        "dev-x",
        f"{scope}/registrations/dev-x/api-version=2019-03-31",
        identity,
        devcloud.ca_path,
    )
    mqtt_devices.append(device)
    assert device.connect() == 5


def test_custom_allocator_callable_and_reprovision_moves_the_live_device(
    devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice]
) -> None:
    calls: list[AllocationRequest] = []
    target = ["hub1"]

    def allocator(request: AllocationRequest) -> AllocationResult:
        calls.append(request)
        return AllocationResult(devcloud.hub_hostname(target[0]), payload={"n": len(calls)})

    devcloud.set_custom_allocator(allocator)
    devcloud.client.set_group_allocation("default", "custom")
    hub, identity = provision(devcloud, mqtt_devices, "dev-move")
    assert hub == "hub1"
    devcloud.client.patch_twin_desired("dev-move", {"rate": 5})
    live = online(devcloud, mqtt_devices, "hub1", identity, "dev-move")
    target[0] = "hub2"
    hub, _ = provision(devcloud, mqtt_devices, "dev-move", identity)
    assert hub == "hub2"
    assert live.wait_disconnected(5), "the old hub must drop the moved device"
    assert calls[-1].current_hub == devcloud.hub_hostname("hub1")
    registration = devcloud.client.get_registration("dev-move")
    assert registration["substatus"] == "deviceDataMigrated"
    assert registration["payload"] == {"n": 2}
    assert [d["hub"] for d in devcloud.client.list_devices()] == ["hub2"]
    twin = devcloud.client.get_twin("dev-move")
    assert twin["properties"]["desired"]["rate"] == 5
    old = MqttDevice.hub(devcloud, "hub1", identity, "dev-move")
    mqtt_devices.append(old)
    assert old.connect() == 5


@pytest.mark.parametrize("case", ["unknown", "disabled", "cn-mismatch", "wrong-hub"])
def test_hub_connack_5(devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice], case: str) -> None:
    devcloud.client.create_device("dev-h", "hub1")
    if case == "disabled":
        devcloud.client.disable_device("dev-h")
    device_id = "dev-nobody" if case == "unknown" else "dev-h"
    identity = devcloud.pki.issue_device(
        device_id, cn="intruder" if case == "cn-mismatch" else None
    )
    hub = "hub2" if case == "wrong-hub" else "hub1"
    device = MqttDevice.hub(devcloud, hub, identity, device_id)
    mqtt_devices.append(device)
    assert device.connect() == 5


@pytest.mark.parametrize("action", ["disable", "delete"])
def test_disable_or_delete_kicks_the_live_device(
    devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice], action: str
) -> None:
    devcloud.client.create_device("dev-kick", "hub2")
    identity = devcloud.pki.issue_device("dev-kick")
    device = online(devcloud, mqtt_devices, "hub2", identity, "dev-kick")
    if action == "disable":
        devcloud.client.disable_device("dev-kick")
    else:
        devcloud.client.delete_device("dev-kick")
    assert device.wait_disconnected(5)
    again = MqttDevice.hub(devcloud, "hub2", identity, "dev-kick")
    mqtt_devices.append(again)
    assert again.connect() == 5


def test_twin_get_reported_patch_and_desired_push(
    devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice]
) -> None:
    devcloud.client.create_device("dev-twin", "hub1")
    devcloud.client.patch_twin_desired("dev-twin", {"interval_s": 30})
    identity = devcloud.pki.issue_device("dev-twin")
    device = online(
        devcloud,
        mqtt_devices,
        "hub1",
        identity,
        "dev-twin",
        "$iothub/twin/res/#",
        "$iothub/twin/PATCH/properties/desired/#",
    )
    device.publish("$iothub/twin/GET/?$rid=10", b"")
    topic, raw = device.expect("$iothub/twin/res/")
    assert topic == "$iothub/twin/res/200/?$rid=10"
    assert json.loads(raw)["desired"] == {"interval_s": 30, "$version": 2}
    device.publish("$iothub/twin/PATCH/properties/reported/?$rid=11", json.dumps({"fw": "2.0"}))
    topic, _ = device.expect("$iothub/twin/res/")
    assert topic == "$iothub/twin/res/204/?$rid=11&$version=2"
    assert devcloud.client.get_twin("dev-twin")["properties"]["reported"]["fw"] == "2.0"
    devcloud.client.patch_twin_desired("dev-twin", {"interval_s": 5})
    topic, raw = device.expect("$iothub/twin/PATCH/properties/desired/")
    assert topic == "$iothub/twin/PATCH/properties/desired/?$version=3"
    assert json.loads(raw) == {"interval_s": 5, "$version": 3}


def test_methods_round_trip_timeout_and_offline(
    devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice]
) -> None:
    devcloud.client.create_device("dev-m", "hub1")
    with pytest.raises(DeviceNotOnlineError):
        devcloud.client.invoke_method("dev-m", "reboot", timeout_s=5)
    identity = devcloud.pki.issue_device("dev-m")
    device = online(devcloud, mqtt_devices, "hub1", identity, "dev-m", "$iothub/methods/POST/#")
    result: list[Any] = []
    call = threading.Thread(
        target=lambda: result.append(
            devcloud.client.invoke_method("dev-m", "getStatus", {"verbose": True}, timeout_s=10)
        )
    )
    call.start()
    topic, raw = device.expect("$iothub/methods/POST/")
    assert topic.startswith("$iothub/methods/POST/getStatus/?$rid=")
    assert json.loads(raw) == {"verbose": True}
    rid = topic.rsplit("=", 1)[1]
    device.publish(f"$iothub/methods/res/200/?$rid={rid}", json.dumps({"state": "ok"}))
    call.join(10)
    assert result == [(200, {"state": "ok"})]
    with pytest.raises(MethodTimeoutError):
        devcloud.client.invoke_method("dev-m", "ignored", timeout_s=0.2)


def test_c2d_delivery(devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice]) -> None:
    devcloud.client.create_device("dev-c2d", "hub2")
    devcloud.client.send_c2d("dev-c2d", body="queued", properties={"k": "v"})
    identity = devcloud.pki.issue_device("dev-c2d")
    device = online(
        devcloud,
        mqtt_devices,
        "hub2",
        identity,
        "dev-c2d",
        "devices/dev-c2d/messages/devicebound/#",
    )
    topic, raw = device.expect("devices/dev-c2d/messages/devicebound/")
    assert raw == b"queued" and "k=v" in topic
    devcloud.client.send_c2d("dev-c2d", {"cmd": "blink"})
    _, raw = device.expect("devices/dev-c2d/messages/devicebound/")
    assert json.loads(raw) == {"cmd": "blink"}


@pytest.mark.parametrize("case", ["oversize", "foreign-device", "forbidden-topic"])
def test_violations_disconnect(
    devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice], case: str
) -> None:
    devcloud.client.create_device("dev-v", "hub1")
    identity = devcloud.pki.issue_device("dev-v")
    device = online(devcloud, mqtt_devices, "hub1", identity, "dev-v")
    topic, payload = {
        "oversize": ("devices/dev-v/messages/events/", b"x" * (256 * 1024 + 1)),
        "foreign-device": ("devices/dev-other/messages/events/", b"{}"),
        "forbidden-topic": ("devices/dev-v/messages/devicebound/", b"{}"),
    }[case]
    since = devcloud.client.last_sequence_number()
    device.publish(topic, payload, 1, wait=False)  # the answer is the disconnect
    assert device.wait_disconnected(5)
    assert devcloud.client.telemetry(since) == []
    # Only that connection paid: the hub still serves, the same device included.
    again = online(devcloud, mqtt_devices, "hub1", identity, "dev-v")
    again.publish("devices/dev-v/messages/events/", b"fine")
    (message,) = devcloud.client.wait_for_telemetry(since=since, device_id="dev-v")
    assert message.body == b"fine"


def test_refused_subscription_gets_0x80(
    devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice]
) -> None:
    devcloud.client.create_device("dev-s", "hub1")
    identity = devcloud.pki.issue_device("dev-s")
    device = online(devcloud, mqtt_devices, "hub1", identity, "dev-s")
    assert device.subscribe("devices/dev-other/messages/devicebound/#") == 0x80
    assert device.subscribe("$iothub/methods/POST/#") == 1


def _connect_packet(client_id: str) -> bytes:
    def field(text: str) -> bytes:
        data = text.encode()
        return len(data).to_bytes(2, "big") + data

    body = field("MQTT") + bytes([4, 0x02]) + (60).to_bytes(2, "big") + field(client_id)
    return bytes([0x10, len(body)]) + body


def _handshake_fails(cloud: DevCloudHandle, identity: Issued | None, device_id: str) -> bool:
    """Whether TLS refuses ``identity`` (a CONNECT then gets no CONNACK at all)."""
    context = ssl.create_default_context(cafile=str(cloud.ca_path))
    if identity is not None:
        context.load_cert_chain(str(identity.chain_path), str(identity.key_path))
    host, port = cloud.hub_addresses["hub1"]
    with socket.create_connection((host, port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                # TLS 1.3: the server's verdict on our certificate arrives after the
                # handshake, so send CONNECT and see whether any CONNACK comes back.
                tls.sendall(_connect_packet(device_id))
                return tls.recv(1) != b"\x20"
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return True


def test_revoked_and_foreign_certificates_fail_the_handshake(
    devcloud: DevCloudHandle, tmp_path: Path
) -> None:
    devcloud.client.create_device("dev-r", "hub1")
    good = devcloud.pki.issue_device("dev-r")
    assert not _handshake_fails(devcloud, good, "dev-r")
    revoked = devcloud.pki.issue_device("dev-r")
    devcloud.pki.revoke(revoked.cert)
    assert _handshake_fails(devcloud, revoked, "dev-r")
    rogue = PKI.create(tmp_path / "rogue", name="rogue")
    assert _handshake_fails(devcloud, rogue.issue_device("dev-r"), "dev-r")
    assert not _handshake_fails(devcloud, good, "dev-r")


@pytest.mark.parametrize("case", ["no-client-cert", "expired", "not-yet-valid"])
def test_the_hub_tls_refuses_bad_client_certificates(devcloud: DevCloudHandle, case: str) -> None:
    devcloud.client.create_device("dev-t", "hub1")
    now = datetime.now(UTC)
    window = {
        "expired": (now - timedelta(days=3), now - timedelta(days=1)),
        "not-yet-valid": (now + timedelta(days=1), now + timedelta(days=3)),
    }
    if case == "no-client-cert":
        assert _handshake_fails(devcloud, None, "dev-t")
    else:
        not_before, not_after = window[case]
        identity = devcloud.pki.issue_device("dev-t", not_before=not_before, not_after=not_after)
        assert _handshake_fails(devcloud, identity, "dev-t")
    assert not _handshake_fails(devcloud, devcloud.pki.issue_device("dev-t"), "dev-t")


def test_the_hub_tls_refuses_tls_1_1(
    devcloud: DevCloudHandle, caplog: pytest.LogCaptureFixture
) -> None:
    identity = devcloud.pki.issue_device("dev-t11")
    context = ssl.create_default_context(cafile=str(devcloud.ca_path))
    context.load_cert_chain(str(identity.chain_path), str(identity.key_path))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # lets this client offer TLS 1.1 at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ssl.TLSVersion.TLSv1_1
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    host, port = devcloud.hub_addresses["hub1"]
    with (
        caplog.at_level(logging.WARNING, logger="devcloud.mqtt.server"),
        socket.create_connection((host, port), timeout=5) as raw,
    ):
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(raw, server_hostname=host)
        # The refusal is the server's (not this client's): it logs why it dropped us.
        wait_until(lambda: "TLS handshake failed: [SSL: UNSUPPORTED_PROTOCOL]" in caplog.text)


def test_a_group_on_a_foreign_ca_is_trusted(
    devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice], tmp_path: Path
) -> None:
    other = PKI.create(tmp_path / "other", name="other")
    devcloud.client.put_enrollment_group(
        "other",
        certificate_pem=other.intermediate_path.read_text(),
        allocation_policy="static",
        iot_hubs=["hub2"],
    )
    hub, identity = provision(
        devcloud, mqtt_devices, "dev-foreign", other.issue_device("dev-foreign")
    )
    assert hub == "hub2"
    assert devcloud.client.get_registration("dev-foreign")["enrollment"] == "group:other"
    online(devcloud, mqtt_devices, hub, identity, "dev-foreign")


def test_revocation_is_enforced_at_connect_while_a_foreign_ca_is_trusted(
    devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice], tmp_path: Path
) -> None:
    """With a foreign CA trusted, TLS skips CRLs; the hub (CONNACK 5) and DPS (401)
    refuse a revoked leaf all the same."""
    other = PKI.create(tmp_path / "other", name="other")
    devcloud.client.put_enrollment_group("other", certificate_pem=other.root_path.read_text())
    assert (
        devcloud.call(lambda app: app.tls["hub1"]().verify_flags) & ssl.VERIFY_CRL_CHECK_LEAF == 0
    )
    devcloud.client.create_device("dev-rv", "hub1")
    good = devcloud.pki.issue_device("dev-rv")
    revoked = devcloud.pki.issue_device("dev-rv")
    devcloud.pki.revoke(revoked.cert)
    assert not _handshake_fails(devcloud, revoked, "dev-rv")  # TLS let it through
    hub = MqttDevice.hub(devcloud, "hub1", revoked, "dev-rv")
    mqtt_devices.append(hub)
    assert hub.connect() == 5
    dps = MqttDevice.dps(devcloud, revoked, "dev-rv")
    mqtt_devices.append(dps)
    assert dps.connect() == 0
    status, body = dps.register()
    assert (status, body["message"]) == (401, "the device certificate is revoked")
    dps.close()
    # The same device with its good certificate is served by both.
    hub_name, _ = provision(devcloud, mqtt_devices, "dev-rv", good)
    online(devcloud, mqtt_devices, hub_name, good, "dev-rv")


def test_a_group_on_the_root_ca_takes_devices_of_its_intermediate(
    devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice]
) -> None:
    """TLS hands DPS the chain up to the trusted intermediate; the root signed its top."""
    devcloud.client.delete_enrollment_group("default")
    devcloud.client.put_enrollment_group(
        "by-root", ca_reference="devcloud-root", allocation_policy="static", iot_hubs=["hub2"]
    )
    hub, identity = provision(devcloud, mqtt_devices, "dev-under-root")
    assert hub == "hub2"
    assert devcloud.client.get_registration("dev-under-root")["enrollment"] == "group:by-root"
    online(devcloud, mqtt_devices, hub, identity, "dev-under-root")


def test_sqlite_state_survives_a_restart(tmp_path: Path, mqtt_devices: list[MqttDevice]) -> None:
    state = tmp_path / "state"
    database = state / "devcloud.db"
    with running_devcloud(state, database=database) as cloud:
        cloud.client.put_enrollment("dev-keep", device_id="dev-keep", iot_hubs=["hub2"])
        hub, identity = provision(cloud, mqtt_devices, "dev-keep")
        cloud.client.patch_twin_desired("dev-keep", {"x": 1})
        hubs = cloud.config.hubs
        dps_host = cloud.config.dps_host
    with running_devcloud(state, database=database, hubs=hubs, dps_host=dps_host) as cloud:
        assert cloud.client.get_enrollment("dev-keep")["iotHubs"] == ["hub2"]
        assert cloud.client.get_registration("dev-keep")["hub"] == hub == "hub2"
        assert cloud.client.get_twin("dev-keep")["properties"]["desired"]["x"] == 1
        assert cloud.client.registration_attempts("dev-keep") == 1
        # The device goes straight to its hub: no DPS call.
        online(cloud, mqtt_devices, hub, identity, "dev-keep")
        assert cloud.client.registration_attempts("dev-keep") == 1


def test_dps_and_hub_over_websockets(tmp_path: Path, mqtt_devices: list[MqttDevice]) -> None:
    hubs = (HubSpec("hub1", free_loopback_address(), 0, ws_port=0),)
    with running_devcloud(tmp_path / "dc", hubs=hubs, dps_ws_port=0) as cloud:
        identity = cloud.pki.issue_device("dev-ws")
        dps = MqttDevice.dps(cloud, identity, "dev-ws", websockets=True)
        mqtt_devices.append(dps)
        assert dps.connect() == 0
        status, body = dps.register()
        assert status == 200 and body["registrationState"]["assignedHub"] == cloud.hub_hostname(
            "hub1"
        )
        device = MqttDevice.hub(cloud, "hub1", identity, "dev-ws", websockets=True)
        mqtt_devices.append(device)
        assert device.connect() == 0
        since = cloud.client.last_sequence_number()
        device.publish("devices/dev-ws/messages/events/", b"over wss")
        (message,) = cloud.client.wait_for_telemetry(since=since, device_id="dev-ws")
        assert message.body == b"over wss"
        assert cloud.client.hubs()[0]["wsPort"] == cloud.hub_ws_addresses["hub1"][1]  # type: ignore[index]


class _Allocator(BaseHTTPRequestHandler):
    hub_hostname = ""
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(request)
        answer = json.dumps(
            {
                "iotHubHostName": type(self).hub_hostname,
                "initialTwin": {"properties": {"desired": {"from": "webhook"}}},
                "payload": {"echo": request["deviceRuntimeContext"]["payload"]},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_custom_allocation_webhook_over_the_wire(
    devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice]
) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Allocator)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        _Allocator.hub_hostname = devcloud.hub_hostname("hub2")
        _Allocator.seen = []
        url = f"http://127.0.0.1:{server.server_address[1]}/api/allocate"
        devcloud.client.set_group_allocation("default", "custom", webhook_url=url)
        identity = devcloud.pki.issue_device("dev-hook")
        dps = MqttDevice.dps(devcloud, identity, "dev-hook")
        mqtt_devices.append(dps)
        assert dps.connect() == 0
        status, body = dps.register(payload={"model": "pi5"})
        assert status == 200
        assert body["registrationState"]["assignedHub"] == devcloud.hub_hostname("hub2")
        assert body["registrationState"]["payload"] == {"echo": {"model": "pi5"}}
        (request,) = _Allocator.seen
        assert request["deviceRuntimeContext"]["registrationId"] == "dev-hook"
        assert request["enrollmentGroup"]["enrollmentGroupId"] == "default"
        twin = devcloud.client.get_twin("dev-hook")
        assert twin["hub"] == "hub2"
        assert twin["properties"]["desired"]["from"] == "webhook"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("reprovisionandresetdata", ("hub2", None, "deviceDataReset")),
        ("neverreprovision", ("hub1", 7, "reprovisionedToInitialAssignment")),
    ],
)
def test_reprovision_policies_over_the_wire(
    devcloud: DevCloudHandle,
    mqtt_devices: list[MqttDevice],
    policy: str,
    expected: tuple[str, int | None, str],
) -> None:
    hub_after, desired_after, substatus = expected
    client = devcloud.client
    client.set_group_allocation("default", "static", ["hub1"], reprovision_policy=policy)
    hub, identity = provision(devcloud, mqtt_devices, "dev-rp")
    assert hub == "hub1"
    client.patch_twin_desired("dev-rp", {"level": 7})
    client.set_group_allocation("default", "static", ["hub2"])
    hub, _ = provision(devcloud, mqtt_devices, "dev-rp", identity)
    assert hub == hub_after
    assert client.get_registration("dev-rp")["substatus"] == substatus
    assert client.get_twin("dev-rp", hub=hub_after)["properties"]["desired"].get("level") == (
        desired_after
    )
    assert [d["hub"] for d in client.list_devices()] == [hub_after]
