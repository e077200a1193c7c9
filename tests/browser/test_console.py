"""devcloud's web console in a real headless Chromium, against the real agent.

One devcloud (two hubs), one real agent (mock HAL) provisioned through DPS, one
Chromium page on the console. The tests drive the page as a person would -- clicks,
typing -- and check the effect both on the page and through devcloud's REST API
(the agent's own reported properties, the hub the device is on).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config import DEFAULT_MODEL_ID
from agent.core.lifecycle import State
from devcloud.errors import NotFoundError
from tests.support.agentcloud import (
    AgentThread,
    Cloud,
    issue_device,
    running_cloud,
    wait_methods_online,
    write_config,
)
from tests.support.browser import artefacts_dir, chromium
from tests.support.waiting import wait_until

DEVICE = "console-device-1"
#: Generous for a loaded 2-core machine; every wait ends as soon as its condition holds.
UI_TIMEOUT_MS = 15_000


@dataclass
class World:
    cloud: Cloud
    agent: AgentThread
    page: Any
    artefacts: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("console")
    with running_cloud(tmp) as cloud:
        identity = issue_device(cloud, DEVICE)
        config = write_config(
            tmp / "agent.toml", cloud, identity, state_dir=tmp / "state", interval_s=0.5
        )
        with AgentThread(config) as agent:
            agent.wait_state(State.CONNECTED)
            wait_methods_online(cloud, DEVICE)
            with chromium(tmp / "chromium-profile") as context:
                page = context.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(cloud.handle.rest_url + "/console/")
                yield World(cloud, agent, page, artefacts_dir(tmp_path_factory))
                assert errors == [], f"JavaScript errors on the page: {errors}"


def _row(world: World, device_id: str) -> Any:
    return world.page.locator(f'#devices tr[data-device="{device_id}"]')


def _select(world: World, device_id: str) -> None:
    _row(world, device_id).click()
    world.page.wait_for_function(
        "id => document.getElementById('device-title').textContent === id",
        arg=device_id,
        timeout=UI_TIMEOUT_MS,
    )


def test_page_lists_the_device_with_status_hub_and_last_seen(world: World) -> None:
    from playwright.sync_api import expect

    device = world.cloud.client.get_device(DEVICE)
    row = _row(world, DEVICE)
    expect(row).to_have_count(1, timeout=UI_TIMEOUT_MS)
    expect(row.locator("td.hub")).to_have_text(device["hub"])
    expect(row).to_contain_text("connected")
    # The Plug and Play model id the agent announced (devcloud's modelId).
    assert device["modelId"] == DEFAULT_MODEL_ID
    expect(row.locator("td.model")).to_have_attribute("title", DEFAULT_MODEL_ID)
    expect(row.locator("td.last-seen")).not_to_have_text("never")
    expect(world.page.locator("#live")).to_have_text("live", timeout=UI_TIMEOUT_MS)
    expect(world.page.locator("#dps-summary")).to_contain_text(world.cloud.handle.id_scope)
    _select(world, DEVICE)
    history = world.page.locator("#dps-history tbody tr")
    expect(history.first).to_contain_text("assigned", timeout=UI_TIMEOUT_MS)
    expect(history.first).to_contain_text(device["hub"])


def test_a_chart_shows_telemetry_as_it_arrives(world: World) -> None:
    _select(world, DEVICE)
    chart = world.page.locator('#charts .chart[data-series$=" temperature_c"]').first
    chart.wait_for(timeout=UI_TIMEOUT_MS)
    world.page.wait_for_function(
        "el => Number(el.dataset.points) >= 3", arg=chart.element_handle(), timeout=UI_TIMEOUT_MS
    )
    shown = int(chart.get_attribute("data-points") or 0)
    # More points arrive without any reload: the page follows /telemetry live.
    world.page.wait_for_function(
        "([el, n]) => Number(el.dataset.points) > n",
        arg=[chart.element_handle(), shown],
        timeout=UI_TIMEOUT_MS,
    )
    assert chart.locator("canvas").count() == 1
    value = chart.locator(".chart-title .value").inner_text()
    assert value.endswith("°C"), value


def test_a_direct_method_shows_the_device_answer(world: World) -> None:
    from playwright.sync_api import expect

    _select(world, DEVICE)
    world.page.fill("#method-name", "getStatus")
    world.page.fill("#method-payload", "{}")
    world.page.click("#btn-invoke")
    response = world.page.locator("#method-response")
    expect(response).to_contain_text("getStatus → 200", timeout=UI_TIMEOUT_MS)
    expect(response).to_contain_text('"state": "CONNECTED"')


def test_a_desired_property_edit_reaches_the_agent(world: World) -> None:
    from playwright.sync_api import expect

    _select(world, DEVICE)
    world.page.fill("#desired-editor", '{"telemetryIntervalSeconds": 2}')
    world.page.click("#btn-desired-save")
    expect(world.page.locator("#desired-status")).to_contain_text("sent as $version")
    row = world.page.locator('#writable tr[data-property="telemetryIntervalSeconds"]')
    expect(row.locator(".reported-value")).to_have_text("2", timeout=UI_TIMEOUT_MS)
    expect(row.locator(".ack")).to_contain_text("200")
    # The agent applied it: its own reported properties (devcloud only stores them).
    twin = world.cloud.client.get_twin(DEVICE)
    ack = twin["properties"]["reported"]["telemetryIntervalSeconds"]
    assert ack["value"] == 2 and ack["ac"] == 200
    assert ack["av"] == twin["properties"]["desired"]["$version"]


def test_enable_disable_and_delete_from_the_page(world: World) -> None:
    from playwright.sync_api import expect

    client = world.cloud.client
    client.create_device("console-spare", "hub1")
    expect(_row(world, "console-spare")).to_have_count(1, timeout=UI_TIMEOUT_MS)
    _select(world, "console-spare")
    world.page.click("#btn-toggle")
    wait_until(lambda: client.get_device("console-spare")["status"] == "disabled", what="disable")
    expect(_row(world, "console-spare")).to_contain_text("disabled", timeout=UI_TIMEOUT_MS)
    expect(world.page.locator("#btn-toggle")).to_have_text("Enable", timeout=UI_TIMEOUT_MS)
    world.page.click("#btn-toggle")
    wait_until(lambda: client.get_device("console-spare")["status"] == "enabled", what="enable")
    world.page.click("#btn-delete")
    expect(world.page.locator("#btn-delete")).to_have_text("Click to confirm")
    world.page.click("#btn-delete")
    expect(_row(world, "console-spare")).to_have_count(0, timeout=UI_TIMEOUT_MS)
    with pytest.raises(NotFoundError):
        client.get_device("console-spare", hub="hub1")


def test_the_reprovision_button_moves_the_device_to_the_other_hub(world: World) -> None:
    from playwright.sync_api import expect

    client = world.cloud.client
    old_hub = client.get_device(DEVICE)["hub"]
    new_hub = "hub2" if old_hub == "hub1" else "hub1"
    # Point the enrollment group at the other hub, from the page.
    group = world.page.locator('#enrollments .enrollment[data-enrollment="default"]')
    group.locator(f'input[data-hub="{old_hub}"]').set_checked(False)
    group.locator(f'input[data-hub="{new_hub}"]').set_checked(True)
    group.locator("button.save").click()
    wait_until(
        lambda: client.get_enrollment_group("default")["iotHubs"] == [new_hub],
        what="the group to link only the other hub",
    )
    _select(world, DEVICE)
    world.page.click("#btn-reprovision")
    expect(world.page.locator("#method-response")).to_contain_text(
        "reprovision → 202", timeout=UI_TIMEOUT_MS
    )
    row = _row(world, DEVICE)
    expect(row.locator("td.hub")).to_have_text(new_hub, timeout=UI_TIMEOUT_MS)
    expect(row).to_contain_text("connected", timeout=UI_TIMEOUT_MS)
    device = client.get_device(DEVICE)
    assert device["hub"] == new_hub and device["connectionState"] == "Connected"
    history = world.page.locator('#dps-history tbody tr[data-event="assigned"]')
    expect(history).to_have_count(2, timeout=UI_TIMEOUT_MS)
    expect(history.first).to_contain_text(f"{new_hub} · deviceDataMigrated")
    # Telemetry from the new hub keeps the same chart going.
    chart = world.page.locator('#charts .chart[data-series$=" temperature_c"]').first
    shown = int(chart.get_attribute("data-points") or 0)
    world.page.wait_for_function(
        "([el, n]) => Number(el.dataset.points) > n",
        arg=[chart.element_handle(), shown],
        timeout=UI_TIMEOUT_MS,
    )
    path = world.artefacts / "console.png"
    world.page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    print(f"console screenshot: {path}")
