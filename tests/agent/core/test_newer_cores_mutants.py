"""The newer core code (allowed hubs, PnP model id, the two-step sample round, the
memory queue's flush): what mutation testing found unpinned (issue #14)."""

from __future__ import annotations

import random

import pytest

from agent.core.provisioning import (
    Assigned,
    DpsConnected,
    DpsSubscribed,
    Failed,
    Registration,
    hub_allowed,
    registration_payload,
)
from agent.core.telemetry import MemoryQueue, SampleRound
from agent.errors import ProvisioningError
from hal.exc import ConversionNotReady, I2CError
from tests.agent.test_provisioning import answer, outcome


@pytest.mark.parametrize(
    ("host", "suffixes", "allowed"),
    [
        ("hub-a.azure-devices.net", [".azure-devices.net"], True),
        ("HUB-A.Azure-Devices.NET.", [".azure-devices.net"], True),
        ("hub-a.azure-devices.net", [".AZURE-devices.net"], True),
        (".azure-devices.net", [".azure-devices.net"], False),  # the suffix alone is no host
        ("evil-azure-devices.net", [".azure-devices.net"], False),
        ("hub.local", ["hub.local"], True),
        ("HUB.local.", ["hub.LOCAL"], True),
        ("a.hub.local", ["hub.local"], False),  # without a dot: exactly that host
        ("hub.example", [".azure-devices.net", "hub.example"], True),
        ("hub.example", [], False),
        (".hub.local", ["hub.local"], False),
    ],
)
def test_hub_allowed(host: str, suffixes: list[str], allowed: bool) -> None:
    assert hub_allowed(host, suffixes) is allowed


def assign(hub: str, suffixes: list[str] | None) -> Assigned | Failed:
    reg = Registration("dev-1", None, rng=random.Random(1), allowed_hub_suffixes=suffixes)
    reg.handle(DpsConnected())
    reg.handle(DpsSubscribed((1,)))
    state = {"assignedHub": hub, "deviceId": "dev-1", "status": "assigned"}
    return outcome(answer(reg, 200, "1", {"status": "assigned", "registrationState": state}))


def test_an_assignment_outside_the_allowed_hubs_is_refused() -> None:
    final = assign("evil.example", [".azure-devices.net", "hub.local"])
    assert isinstance(final, Failed) and final.rejected is True
    assert isinstance(final.error, ProvisioningError) and final.error.status == 200
    assert str(final.error) == (
        "DPS status 200: DPS assigned the hub 'evil.example', which is not in "
        "[dps] allowed_hub_suffixes (.azure-devices.net, hub.local); refused"
    )
    long = assign("h" * 150 + ".example", ["hub.local"])
    assert isinstance(long, Failed) and "... (158 chars)" in str(long.error)
    assert isinstance(assign("a.azure-devices.net", [".azure-devices.net"]), Assigned)
    assert isinstance(assign("anything", None), Assigned)


def test_a_long_failure_detail_is_clipped_at_400() -> None:
    reg = Registration("dev-1", None, rng=random.Random(1))
    reg.handle(DpsConnected())
    reg.handle(DpsSubscribed((1,)))
    final = outcome(answer(reg, 200, "1", {"status": "failed", "message": "m" * 401}))
    assert str(final.error if isinstance(final, Failed) else "").endswith(
        "m" * 400 + "... (401 chars)"
    )
    reg2 = Registration("dev-1", None, rng=random.Random(1))
    reg2.handle(DpsConnected())
    reg2.handle(DpsSubscribed((1,)))
    exact = outcome(answer(reg2, 200, "1", {"status": "failed", "message": "m" * 400}))
    assert str(exact.error if isinstance(exact, Failed) else "").endswith(": " + "m" * 400)


def test_the_model_id_goes_into_the_registration_payload() -> None:
    payload = registration_payload(model="pi", agent_version="1", sensors=[], model_id="dtmi:x;1")
    assert payload["modelId"] == "dtmi:x;1"
    assert "modelId" not in registration_payload(model="pi", agent_version="1", sensors=[])


def test_the_memory_queue_has_nothing_to_flush() -> None:
    assert MemoryQueue(1).flush() is True


class TwoStep:
    """A sensor driven by a script of collect() outcomes."""

    def __init__(
        self, name: str, wait_s: float, outcomes: list[object], start_error: Exception | None = None
    ):
        self.name = name
        self.part = "X"
        self.quantities = ("temperature_c",)
        self.wait_s = wait_s
        self.outcomes = outcomes
        self.start_error = start_error
        self.collects = 0

    def start(self) -> float:
        if self.start_error is not None:
            raise self.start_error
        return self.wait_s

    def collect(self) -> dict[str, float]:
        self.collects += 1
        result = self.outcomes.pop(0)
        if isinstance(result, Exception):
            raise result
        assert isinstance(result, dict)
        return result

    def read(self) -> dict[str, float]:
        raise AssertionError("a round never blocks")


def _round_abcd() -> tuple[SampleRound, TwoStep, TwoStep, TwoStep]:
    a = TwoStep("a", 0.5, [ConversionNotReady("a", 0.25), {"temperature_c": 1.0}])
    b = TwoStep("b", 0.0, [{"temperature_c": 2.0}])
    failing = TwoStep("c", 0.1, [], start_error=I2CError(121, 1, 0x48, "write"))
    broken = TwoStep("d", 0.1, [I2CError(5, 1, 0x49, "read 2")])
    return SampleRound([a, b, failing, broken]), a, b, broken  # type: ignore[list-item]


def test_a_round_collects_every_sensor_in_one_wakeup_at_the_latest_ready_time() -> None:
    round_, a, b, broken = _round_abcd()
    assert round_.start(100.0) == pytest.approx(0.5)  # a, the latest, is ready at 100.5
    # One collection takes b and d (ready since 100.0 / 100.1) and a; a says "not ready".
    assert round_.collect(100.5) == pytest.approx(0.25)  # a not ready: again in 0.25 s
    assert (a.collects, b.collects, broken.collects) == (1, 1, 1)
    assert not round_.done
    assert round_.collect(100.75) is None and round_.done
    result = round_.result()
    assert result.readings == {"a": {"temperature_c": 1.0}, "b": {"temperature_c": 2.0}}
    assert result.errors == {
        "c": "I2CError: i2c-1 0x48: write failed: EREMOTEIO (Remote I/O error)",
        "d": "I2CError: i2c-1 0x49: read 2 failed: EIO (Input/output error)",
    }
    assert (a.collects, b.collects, broken.collects) == (2, 1, 1)


def test_a_round_collected_early_takes_what_is_ready_and_waits_for_the_rest() -> None:
    round_, a, b, broken = _round_abcd()
    round_.start(100.0)
    assert round_.collect(100.0) == pytest.approx(0.5)  # b done; a and d still converting
    assert round_.collect(100.1) == pytest.approx(0.4)  # d failed; a at 100.5
    assert (a.collects, b.collects, broken.collects) == (0, 1, 1)
    assert round_.collect(100.5) == pytest.approx(0.25)
    assert round_.collect(100.75) is None and round_.done


def test_a_sensor_never_ready_is_given_up_after_max_retries() -> None:
    retries = SampleRound.MAX_RETRIES
    never = TwoStep("n", 0.0, [ConversionNotReady("n", 0.0)] * (retries + 1))
    other = TwoStep("o", 0.0, [{"temperature_c": 5.0}])
    round_ = SampleRound([never, other])  # type: ignore[list-item]
    round_.start(0.0)
    steps = 0
    while not round_.done and steps < 100:
        round_.collect(0.0)
        steps += 1
    assert never.collects == retries + 1
    assert round_.result().errors == {
        "n": "ConversionNotReady: n: conversion not ready for another 0.0 ms"
    }
    assert round_.result().readings == {"o": {"temperature_c": 5.0}}


def test_a_negative_wait_is_due_now() -> None:
    a = TwoStep("a", -1.0, [ConversionNotReady("a", -2.0), {"temperature_c": 1.0}])
    round_ = SampleRound([a], disabled=frozenset({"x"}))  # type: ignore[list-item]
    assert round_.start(10.0) == 0.0
    assert round_.collect(10.0) == 0.0
    assert round_.collect(10.0) is None
    assert SampleRound([a], disabled=frozenset({"a"})).start(0.0) is None  # type: ignore[list-item]
