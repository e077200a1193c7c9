"""The REST API through DevCloudClient (and raw HTTP for malformed requests)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from devcloud.app import DevCloud, DevCloudHandle
from devcloud.client import DevCloudClient, Telemetry
from devcloud.errors import (
    ClientError,
    ConflictError,
    DeviceNotOnlineError,
    InvalidRequestError,
    NotFoundError,
    TelemetryTimeoutError,
)
from devcloud.pki import PKI
from tests.support.devcloud import devcloud_fixture  # noqa: F401


def raw_request(
    cloud: DevCloudHandle, method: str, path: str, body: bytes | None = None
) -> tuple[int, Any]:
    host, port = cloud.app.rest_address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        conn.close()


def add_telemetry(cloud: DevCloudHandle, device_id: str, body: bytes, hub: str = "hub1") -> int:
    """Append a message as the hub would (no device needed for REST tests)."""

    def append(app: DevCloud) -> int:
        message = app.telemetry.append(
            hub=hub,
            device_id=device_id,
            enqueued_time=app.registry.now(),
            body=body,
            properties={"p": "1"},
            system_properties={"$.ct": "application/json"},
        )
        return message.sequence_number

    return cloud.call(append)


def test_service_information(devcloud: DevCloudHandle) -> None:
    client = devcloud.client
    assert client.health()
    hubs = client.hubs()
    assert [h["name"] for h in hubs] == ["hub1", "hub2"]
    assert (hubs[0]["host"], hubs[0]["port"]) == devcloud.hub_addresses["hub1"]
    assert hubs[0]["hostname"] == devcloud.hub_hostname("hub1") == devcloud.hub_addresses["hub1"][0]
    dps = client.dps()
    assert dps["idScope"] == devcloud.id_scope
    assert (dps["host"], dps["port"]) == devcloud.dps_address
    assert client.dps_stats() == {}


def test_enrollment_groups(devcloud: DevCloudHandle, tmp_path: Path) -> None:
    client = devcloud.client
    (default,) = client.list_enrollment_groups()
    assert default["enrollmentGroupId"] == "default"
    assert default["allocationPolicy"] == "hashed" and default["iotHubs"] == []
    other = PKI.create(tmp_path / "other", name="other")
    created = client.put_enrollment_group(
        "fleet",
        certificate_pem=other.root_path.read_text(),
        allocation_policy="static",
        iot_hubs=["hub2", devcloud.hub_hostname("hub1")],
        reprovision_policy="neverreprovision",
        initial_desired={"interval_s": 60},
        initial_tags={"site": "lab"},
    )
    assert created["iotHubs"] == ["hub2", "hub1"]
    assert created["reprovisionPolicy"]["updateHubAssignment"] is False
    assert created["initialTwin"]["properties"]["desired"] == {"interval_s": 60}
    assert created["attestation"]["x509"]["signingCertificates"]["primary"]["info"][
        "sha256Thumbprint"
    ]
    patched = client.set_group_allocation(
        "fleet", "hashed", ["hub1"], reprovision_policy="reprovisionandresetdata"
    )
    assert patched["allocationPolicy"] == "hashed" and patched["iotHubs"] == ["hub1"]
    assert patched["reprovisionPolicy"]["migrateDeviceData"] is False
    assert patched["initialTwin"] == created["initialTwin"]
    assert patched["etag"] != created["etag"]
    assert client.get_enrollment_group("fleet")["iotHubs"] == ["hub1"]
    root_group = client.put_enrollment_group("by-root", ca_reference="devcloud-root")
    assert (
        "BEGIN CERTIFICATE"
        in root_group["attestation"]["x509"]["signingCertificates"]["primary"]["certificate"]
    )
    client.delete_enrollment_group("fleet")
    with pytest.raises(NotFoundError):
        client.get_enrollment_group("fleet")
    with pytest.raises(InvalidRequestError, match="unknown hub"):
        client.put_enrollment_group("bad", iot_hubs=["hub9"])
    with pytest.raises(InvalidRequestError, match="unknown CA reference"):
        client.put_enrollment_group("bad", ca_reference="nope")
    with pytest.raises(InvalidRequestError, match="loopback"):
        client.put_enrollment_group(
            "bad", allocation_policy="custom", webhook_url="http://192.0.2.1/x"
        )
    with pytest.raises(InvalidRequestError, match="PEM"):
        client.put_enrollment_group("bad", certificate_pem="not a cert")


def test_individual_enrollments(devcloud: DevCloudHandle) -> None:
    client = devcloud.client
    issued = devcloud.pki.issue_device("e-1")
    created = client.put_enrollment(
        "e-1",
        certificate_pem=issued.cert_path.read_text(),
        device_id="device-e1",
        iot_hubs=["hub2"],
        enabled=False,
    )
    assert created["deviceId"] == "device-e1"
    assert created["provisioningStatus"] == "disabled"
    info = created["attestation"]["x509"]["clientCertificates"]["primary"]["info"]
    assert info["sha256Thumbprint"] == issued.thumbprint
    assert client.set_enrollment_allocation("e-1", enabled=True)["provisioningStatus"] == "enabled"
    assert [e["registrationId"] for e in client.list_enrollments()] == ["e-1"]
    by_print = client.put_enrollment("e-2", thumbprint="ab" * 32)
    assert by_print["attestation"]["x509"]["clientCertificates"]["primary"]["info"] == {
        "sha256Thumbprint": ("AB" * 32)
    }
    client.delete_enrollment("e-1")
    with pytest.raises(NotFoundError):
        client.get_enrollment("e-1")
    with pytest.raises(NotFoundError):
        client.get_registration("e-1")


def test_devices_and_twins(devcloud: DevCloudHandle) -> None:
    client = devcloud.client
    created = client.create_device("d-1", "hub1")
    assert created["status"] == "enabled" and created["connectionState"] == "Disconnected"
    assert created["authentication"] == {"type": "certificateAuthority"}
    client.create_device("d-2", devcloud.hub_hostname("hub2"), enabled=False)
    assert [(d["deviceId"], d["hub"]) for d in client.list_devices()] == [
        ("d-1", "hub1"),
        ("d-2", "hub2"),
    ]
    assert [d["deviceId"] for d in client.list_devices("hub2")] == ["d-2"]
    assert client.get_device("d-2")["status"] == "disabled"
    assert client.enable_device("d-2")["status"] == "enabled"
    assert client.disable_device("d-2", hub="hub2")["status"] == "disabled"
    twin = client.patch_twin_desired("d-1", {"a": {"b": 1}}, tags={"room": "7"})
    assert twin["properties"]["desired"] == {"a": {"b": 1}, "$version": 2}
    assert twin["tags"] == {"room": "7"}
    twin = client.patch_twin_desired("d-1", {"a": {"b": None, "c": 2}})
    assert twin["properties"]["desired"] == {"a": {"c": 2}, "$version": 3}
    assert client.get_twin("d-1")["properties"]["reported"] == {"$version": 1}
    client.create_device("d-1", "hub2")
    with pytest.raises(ConflictError, match="name the hub"):
        client.get_twin("d-1")
    assert client.get_twin("d-1", hub="hub2")["properties"]["desired"] == {"$version": 1}
    client.delete_device("d-1", hub="hub1")
    assert client.get_device("d-1")["hub"] == "hub2"
    with pytest.raises(NotFoundError):
        client.get_device("nobody")
    with pytest.raises(InvalidRequestError, match="unknown hub"):
        client.list_devices("hub9")
    with pytest.raises(DeviceNotOnlineError):
        client.invoke_method("d-2", "reboot")
    with pytest.raises(NotFoundError):
        client.send_c2d("nobody", {"x": 1})
    assert client.send_c2d("d-2", {"x": 1}, properties={"k": "v"}).startswith("c2d-")


def test_telemetry_long_poll_and_follow(devcloud: DevCloudHandle) -> None:
    client = devcloud.client
    start = client.last_sequence_number()
    assert start == 0
    first = add_telemetry(devcloud, "t-1", b'{"n": 1}')
    add_telemetry(devcloud, "t-2", b"\xff\xfe", hub="hub2")
    (message,) = client.telemetry(start, device_id="t-1")
    assert message == Telemetry(
        sequence_number=first,
        hub="hub1",
        device_id="t-1",
        enqueued_time=message.enqueued_time,
        body=b'{"n": 1}',
        properties={"p": "1"},
        system_properties={"$.ct": "application/json"},
    )
    assert [m.body for m in client.telemetry(start, hub="hub2")] == [b"\xff\xfe"]
    with pytest.raises(TelemetryTimeoutError) as timeout:
        client.wait_for_telemetry(since=start, device_id="t-1", count=2, timeout_s=0.3)
    assert [m.sequence_number for m in timeout.value.received] == [first]
    # A long-poll returns as soon as a message arrives.
    last = client.last_sequence_number()
    got: list[list[Telemetry]] = []
    waiter = threading.Thread(
        target=lambda: got.append(client.wait_for_telemetry(since=last, timeout_s=10))
    )
    waiter.start()
    add_telemetry(devcloud, "t-3", b"later")
    waiter.join(10)
    assert [m.body for m in got[0]] == [b"later"]
    # The follow stream yields old and new messages as JSON lines until its timeout.
    stream = client.follow_telemetry(start, timeout_s=1.0)
    bodies = [next(stream).body for _ in range(3)]
    assert bodies == [b'{"n": 1}', b"\xff\xfe", b"later"]
    add_telemetry(devcloud, "t-4", b"streamed")
    assert next(stream).body == b"streamed"
    assert list(stream) == []  # ends at its timeout


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/nowhere", None, 404),
        ("POST", "/devices", b"{}", 405),
        ("PUT", "/enrollmentGroups/g", b"{not json", 400),
        ("PUT", "/enrollmentGroups/g", b"[]", 400),
        ("PUT", "/enrollmentGroups/g", b'{"attestation": {"x509": {}}}', 400),
        ("PATCH", "/enrollmentGroups/missing", b"{}", 404),
        ("PUT", "/devices/x", b"{}", 400),
        ("PATCH", "/twins/x", b"{}", 404),
        ("POST", "/twins/x/methods", b"{}", 404),
        ("GET", "/telemetry?since=abc", None, 400),
        ("GET", "/telemetry?since=inf", None, 400),
        ("GET", "/telemetry?since=nan", None, 400),
        ("GET", "/telemetry?wait=nan", None, 400),
        ("GET", "/telemetry?follow=1&timeout=-inf", None, 400),
    ],
)
def test_errors_are_json_with_status(
    devcloud: DevCloudHandle, method: str, path: str, body: bytes | None, status: int
) -> None:
    got, answer = raw_request(devcloud, method, path, body)
    assert got == status
    assert isinstance(answer["errorCode"], int) and answer["message"] and answer["trackingId"]


def test_a_failing_handler_is_a_500_and_the_api_keeps_serving(devcloud: DevCloudHandle) -> None:
    def break_hubs(app: DevCloud) -> None:
        def boom() -> list[dict[str, Any]]:
            raise RuntimeError("simulated devcloud bug")

        assert app._rest is not None
        app._rest.s = dataclasses.replace(app._rest.s, describe_hubs=boom)

    devcloud.call(break_hubs)
    status, answer = raw_request(devcloud, "GET", "/hubs")
    assert status == 500
    assert answer["errorCode"] == 500000 and "GET /hubs" in answer["message"]
    assert devcloud.client.health() is True


def test_a_method_name_mqtt_cannot_carry_is_a_400(devcloud: DevCloudHandle) -> None:
    devcloud.client.create_device("d-name", "hub1")
    for name in ("a+b", "a#b", "x\u0000y"):
        body = json.dumps({"methodName": name, "payload": None}).encode()
        status, answer = raw_request(devcloud, "POST", "/twins/d-name/methods", body)
        assert (status, answer["errorCode"]) == (400, 400004), answer
        assert "invalid method name" in answer["message"]


def test_malformed_http_gets_400(devcloud: DevCloudHandle) -> None:
    host, port = devcloud.app.rest_address
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400 ")


def test_unreachable_devcloud_is_a_client_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ClientError) as error:
        DevCloudClient(f"http://127.0.0.1:{port}", timeout_s=2).health()
    assert error.value.status == 0
