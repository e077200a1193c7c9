"""The simulated environment's determinism and drift; lazy imports of :mod:`hal`."""

from __future__ import annotations

import subprocess
import sys

from hal.sim.clock import ManualClock
from hal.sim.environment import Environment


def test_same_seed_same_values_and_different_seed_different_values() -> None:
    a = Environment(ManualClock().monotonic, seed=5)
    b = Environment(ManualClock().monotonic, seed=5)
    c = Environment(ManualClock().monotonic, seed=6)
    assert a.at(1000.0 + 123.0) == b.at(1000.0 + 123.0)
    assert a.now() != c.now()


def test_drift_is_slow_but_real() -> None:
    clock = ManualClock()
    env = Environment(clock.monotonic, seed=11)
    start = env.now()
    clock.advance(10.0)
    after_10_s = env.now()
    assert abs(after_10_s.temperature_c - start.temperature_c) < 0.05
    values = set()
    for _ in range(12):
        clock.advance(600.0)
        values.add(round(env.now().temperature_c, 2))
    assert len(values) > 6  # over two hours the temperature moves
    assert max(values) - min(values) < 4.0


def test_set_and_no_drift() -> None:
    clock = ManualClock()
    env = Environment(clock.monotonic, seed=1, drift=False)
    env.set(temperature_c=30.0)
    clock.advance(3600.0)
    assert env.now().temperature_c == 30.0


def test_importing_hal_imports_neither_smbus2_nor_gpiozero() -> None:
    code = (
        "import sys, hal\n"
        "hal.open_backend, hal.open_sensors, hal.SensorSpec, hal.HALError, hal.LedPattern\n"
        "b = hal.open_backend('mock')\n"
        "[s.read() for s in hal.open_sensors(b, 'auto')]\n"
        "bad = [m for m in ('smbus2', 'gpiozero') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_part_name_table_imports_no_driver() -> None:
    """``hal.parts`` lets the agent validate its configuration without the drivers."""
    code = (
        "import sys\n"
        "from hal.parts import canonical_part\n"
        "assert canonical_part('sht31') == 'SHT3x', canonical_part('sht31')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('hal.'))\n"
        "assert loaded == ['hal.exc', 'hal.parts'], loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
