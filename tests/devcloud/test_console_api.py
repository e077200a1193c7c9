"""What devcloud's web console reads: model ids, activity, DPS history, /events, its files.

Real paho-mqtt devices over TLS on loopback, and the REST API over real HTTP.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Any

import pytest

from devcloud.app import DevCloudHandle
from devcloud.errors import ForbiddenError, NotFoundError
from devcloud.render import NEVER
from tests.support.devcloud import (
    MqttDevice,
    devcloud_fixture,  # noqa: F401
    mqtt_devices_fixture,  # noqa: F401
)
from tests.support.waiting import wait_until


def _register(cloud: DevCloudHandle, devices: list[MqttDevice], regid: str, payload: Any) -> str:
    identity = cloud.pki.issue_device(regid)
    dps = MqttDevice.dps(cloud, identity, regid)
    devices.append(dps)
    assert dps.connect() == 0
    status, body = dps.register(payload)
    dps.close()
    assert status == 200, body
    return cloud.hub_name(body["registrationState"]["assignedHub"])


def _hub_device(
    cloud: DevCloudHandle, hub: str, regid: str, *, model_id: str | None = None
) -> MqttDevice:
    username = f"{cloud.hub_hostname(hub)}/{regid}/?api-version=2021-04-12"
    if model_id is not None:
        username += "&model-id=" + urllib.parse.quote(model_id, safe="")
    identity = cloud.pki.issue_device(regid)
    return MqttDevice(cloud.hub_addresses[hub], regid, username, identity, cloud.ca_path)


def _http(cloud: DevCloudHandle) -> http.client.HTTPConnection:
    url = urllib.parse.urlsplit(cloud.rest_url)
    assert url.hostname is not None and url.port is not None
    return http.client.HTTPConnection(url.hostname, url.port, timeout=10)


def test_model_id_from_the_dps_payload_then_from_the_connect_username(
    devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice]
) -> None:
    hub = _register(devcloud, mqtt_devices, "pnp-1", {"modelId": "dtmi:example:Thing;1"})
    assert devcloud.client.get_device("pnp-1")["modelId"] == "dtmi:example:Thing;1"
    assert devcloud.client.get_twin("pnp-1")["modelId"] == "dtmi:example:Thing;1"
    device = _hub_device(devcloud, hub, "pnp-1", model_id="dtmi:example:Thing;2")
    mqtt_devices.append(device)
    assert device.connect() == 0
    assert devcloud.client.get_device("pnp-1")["modelId"] == "dtmi:example:Thing;2"
    assert devcloud.client.get_twin("pnp-1")["modelId"] == "dtmi:example:Thing;2"
    listed = {d["deviceId"]: d for d in devcloud.client.list_devices()}
    assert listed["pnp-1"]["modelId"] == "dtmi:example:Thing;2"


def test_no_model_id_announced_is_an_empty_model_id(
    devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice]
) -> None:
    hub = _register(devcloud, mqtt_devices, "plain-1", {"anything": 1})
    device = _hub_device(devcloud, hub, "plain-1")
    mqtt_devices.append(device)
    assert device.connect() == 0
    assert devcloud.client.get_device("plain-1")["modelId"] == ""


def test_last_activity_and_connection_state_times_follow_the_device(
    devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice]
) -> None:
    hub = _register(devcloud, mqtt_devices, "seen-1", None)
    before = devcloud.client.get_device("seen-1")
    assert before["lastActivityTime"] == NEVER
    assert before["connectionStateUpdatedTime"] == NEVER
    device = _hub_device(devcloud, hub, "seen-1")
    mqtt_devices.append(device)
    assert device.connect() == 0
    connected = devcloud.client.get_device("seen-1")
    assert connected["connectionState"] == "Connected"
    assert connected["lastActivityTime"] == connected["connectionStateUpdatedTime"] != NEVER
    device.publish("devices/seen-1/messages/events/", json.dumps({"t": 1}))
    wait_until(
        lambda: (
            devcloud.client.get_device("seen-1")["lastActivityTime"] > connected["lastActivityTime"]
        ),
        what="lastActivityTime to move with telemetry",
    )
    assert (
        devcloud.client.get_device("seen-1")["connectionStateUpdatedTime"]
        == connected["connectionStateUpdatedTime"]
    )
    device.close()
    wait_until(
        lambda: devcloud.client.get_device("seen-1")["connectionState"] == "Disconnected",
        what="the hub to see the disconnect",
    )
    after = devcloud.client.get_device("seen-1")
    assert after["connectionStateUpdatedTime"] > connected["connectionStateUpdatedTime"]


def test_dps_history_lists_accepted_assigned_and_refused(
    devcloud: DevCloudHandle, mqtt_devices: list[MqttDevice]
) -> None:
    hub = _register(devcloud, mqtt_devices, "hist-1", None)
    events = devcloud.client.registration_history("hist-1")
    assert [e["event"] for e in events] == ["accepted", "assigned"]
    assert events[0]["status"] == 202 and events[0]["operationId"]
    assert events[1]["status"] == 200 and events[1]["hub"] == hub
    assert events[1]["substatus"] == "initialAssignment"
    # A request that names another registration id is refused (400) and recorded.
    identity = devcloud.pki.issue_device("hist-1")
    dps = MqttDevice.dps(devcloud, identity, "hist-1")
    mqtt_devices.append(dps)
    assert dps.connect() == 0
    assert dps.subscribe("$dps/registrations/res/#") == 1
    dps.publish(
        "$dps/registrations/PUT/iotdps-register/?$rid=1", json.dumps({"registrationId": "other"})
    )
    dps.expect("$dps/registrations/res/400/", 5)
    last = devcloud.client.registration_history("hist-1")[-1]
    assert last["event"] == "refused" and last["status"] == 400
    assert last["errorCode"] == 400004 and "registrationId" in last["message"]


def test_dps_history_of_an_unknown_registration_is_404(devcloud: DevCloudHandle) -> None:
    with pytest.raises(NotFoundError):
        devcloud.client.registration_history("never-seen")


def _read_event(response: http.client.HTTPResponse) -> dict[str, Any]:
    """The data of the next ``change`` event (skipping retry and keep-alive lines)."""
    event: dict[str, str] = {}
    for _ in range(100):  # bounded: a few lines per event
        line = response.readline().decode().rstrip("\n")
        if line == "" and "data" in event:
            assert event.get("event") == "change", event
            data: dict[str, Any] = json.loads(event["data"])
            return data
        if ":" in line and not line.startswith(":"):
            name, _, value = line.partition(":")
            event[name] = value.strip()
    raise AssertionError("no event in 100 lines")


def test_events_stream_says_when_something_changed(devcloud: DevCloudHandle) -> None:
    connection = _http(devcloud)
    try:
        connection.request("GET", "/events")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/event-stream"
        first = _read_event(response)["revision"]
        devcloud.client.create_device("sse-1", "hub1")
        assert _read_event(response)["revision"] > first
        devcloud.client.patch_twin_desired("sse-1", {"x": 1}, hub="hub1")
        assert _read_event(response)["revision"] > first + 1
    finally:
        connection.close()


def test_console_page_and_its_files_are_served(devcloud: DevCloudHandle) -> None:
    connection = _http(devcloud)
    for path, content_type, needle in [
        ("/console/", "text/html", b"devcloud console"),
        ("/console/console.js", "text/javascript", b"EventSource"),
        ("/console/console.css", "text/css", b".topbar"),
        ("/console/uPlot.iife.min.js", "text/javascript", b"uPlot"),
        ("/console/uPlot.min.css", "text/css", b".uplot"),
        ("/console/uPlot.LICENSE", "text/plain", b"MIT"),
    ]:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, path
        assert response.getheader("Content-Type", "").startswith(content_type), path
        assert needle in body, path
        connection.close()
    connection.request("GET", "/")
    response = connection.getresponse()
    response.read()
    assert response.status == 302 and response.getheader("Location") == "/console/"
    connection.close()
    for missing in ("/console/nothing.js", "/console/..%2Fapp.py", "/console/vendor"):
        connection.request("GET", missing)
        response = connection.getresponse()
        response.read()
        assert response.status == 404, missing
        connection.close()


def test_changes_from_another_web_origin_are_refused(devcloud: DevCloudHandle) -> None:
    devcloud.client.create_device("origin-1", "hub1")
    host = urllib.parse.urlsplit(devcloud.rest_url).netloc
    body = json.dumps({"status": "disabled"})
    headers = {"Content-Type": "application/json"}
    connection = _http(devcloud)
    try:
        connection.request(
            "PATCH", "/devices/origin-1", body, {**headers, "Origin": "http://elsewhere.example"}
        )
        response = connection.getresponse()
        answer = json.loads(response.read())
        assert response.status == 403 and answer["errorCode"] == ForbiddenError.error_code
        connection.close()
        assert devcloud.client.get_device("origin-1")["status"] == "enabled"
        connection.request(
            "PATCH", "/devices/origin-1", body, {**headers, "Origin": f"http://{host}"}
        )
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        assert devcloud.client.get_device("origin-1")["status"] == "disabled"
    finally:
        connection.close()
