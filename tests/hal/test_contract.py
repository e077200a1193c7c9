"""One contract suite over every backend.

Always over the mock backend, and over the real smbus backend whose ioctl edge is
:class:`hal.sim.stub.StubAdapter` on a simulated board. Over real hardware
when ``DEVICE_AGENT_I2C_BUS`` names a bus (e.g. ``DEVICE_AGENT_I2C_BUS=1`` on a Pi
with sensors attached); the hardware case is then collected, otherwise it is not
generated at all (this machine has no I2C adapter).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import pytest

from hal.backend import Backend, open_backend
from hal.discovery import PARTS, open_sensors, scan
from hal.exc import ConversionNotReady, SensorError
from hal.sensor import UNITS, Sensor
from hal.sim.boards import build_board
from hal.sim.stub import StubAdapter
from hal.smbus_backend import SMBusBackend

PLAUSIBLE = {
    "temperature_c": (-40.0, 85.0),
    "humidity_pct": (0.0, 100.0),
    "pressure_hpa": (300.0, 1100.0),
    "illuminance_lux": (0.0, 100000.0),
}


def _params() -> list[object]:
    params: list[object] = [
        pytest.param(("mock", 1), id="mock"),
        pytest.param(("smbus-stub", 1), id="smbus-stub"),
    ]
    bus = os.environ.get("DEVICE_AGENT_I2C_BUS")
    if bus:
        params.append(
            pytest.param(("smbus", int(bus)), id=f"smbus-{bus}", marks=pytest.mark.hardware)
        )
    return params


@pytest.fixture(params=_params())
def target(request: pytest.FixtureRequest) -> Iterator[tuple[Backend, int]]:
    kind, bus = request.param
    backend: Backend
    if kind == "smbus-stub":
        backend = SMBusBackend(smbus_class=StubAdapter(build_board("default")))
    else:
        backend = open_backend(kind)
    yield backend, bus
    backend.close()


@pytest.fixture
def sensors(target: tuple[Backend, int]) -> Iterator[list[Sensor]]:
    backend, bus = target
    opened = open_sensors(backend, "auto", [bus])
    yield opened
    for sensor in opened:
        sensor.close()


def test_scan_finds_only_known_parts(target: tuple[Backend, int]) -> None:
    backend, bus = target
    found = scan(backend, [bus])
    assert found, "no sensor answered"
    for item in found:
        assert item.bus == bus
        assert item.part is None or item.part in PARTS
        assert item.detail


def test_every_sensor_honours_the_protocol(sensors: list[Sensor]) -> None:
    assert sensors
    for sensor in sensors:
        assert isinstance(sensor, Sensor)
        assert sensor.part in PARTS
        assert sensor.quantities and set(sensor.quantities) <= set(UNITS)


def test_readings_are_plausible_and_repeatable(sensors: list[Sensor]) -> None:
    for sensor in sensors:
        first, second = sensor.read(), sensor.read()
        assert set(first) == set(second) == set(sensor.quantities)
        for quantity, value in first.items():
            low, high = PLAUSIBLE[quantity]
            assert math.isfinite(value) and low <= value <= high, (sensor.name, quantity, value)
            # Two readings a moment apart: the air has not changed much (light may).
            if quantity != "illuminance_lux":
                assert abs(second[quantity] - value) <= max(1.0, 0.01 * abs(value)), sensor.name


def test_close_is_idempotent_and_final(sensors: list[Sensor]) -> None:
    for sensor in sensors:
        sensor.close()
        sensor.close()
        for step in (sensor.read, sensor.start, sensor.collect):
            with pytest.raises(SensorError, match="closed"):
                step()


def test_two_step_measurement_overlaps_every_sensor(
    target: tuple[Backend, int], sensors: list[Sensor]
) -> None:
    """start() every sensor, collect each when due: no step waits on a conversion,
    and collecting early is refused until the time start() gave has passed."""
    backend, _ = target
    due: dict[str, float] = {}
    readings: dict[str, dict[str, float]] = {}
    for sensor in sensors:
        began = backend.monotonic()
        wait = sensor.start()
        assert 0.0 < wait <= 0.2, (sensor.name, wait)  # the datasheets' maxima: 1.6-180 ms
        # The driver counts from the end of its start() transfers: at the latest, now.
        due[sensor.name] = backend.monotonic() + wait
        try:
            readings[sensor.name] = sensor.collect()
        except ConversionNotReady as exc:
            assert 0.0 < exc.remaining_s <= wait, sensor.name
        else:  # only when the machine was so slow that the conversion time had passed
            assert backend.monotonic() >= began + wait, sensor.name
    for sensor in sorted(sensors, key=lambda s: due[s.name]):
        if sensor.name in readings:
            continue
        left = due[sensor.name] - backend.monotonic()
        if left > 0:
            backend.sleep(left)
        readings[sensor.name] = sensor.collect()
    for sensor in sensors:
        reading = readings[sensor.name]
        assert set(reading) == set(sensor.quantities), sensor.name
        for quantity, value in reading.items():
            low, high = PLAUSIBLE[quantity]
            assert math.isfinite(value) and low <= value <= high, (sensor.name, quantity, value)
