"""The simulated physical world the simulated chips measure.

Each quantity is a base value plus two slow sinusoids (periods of 20 minutes to
a few hours); bases, amplitudes, periods and phases all come from one seeded
:class:`random.Random`, so the same seed and the same instants give the same
values, and readings drift slowly as the clock moves. Time counts from the
environment's creation. :meth:`Environment.set` pins the base of any quantity
(and ``drift=False`` removes the sinusoids) for tests that need exact values.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Conditions:
    """Physical conditions at one instant."""

    temperature_c: float
    humidity_pct: float
    pressure_hpa: float
    illuminance_lux: float


#: (base low, base high, amplitude of each sinusoid, lower bound, upper bound)
_RANGES: dict[str, tuple[float, float, float, float, float]] = {
    "temperature_c": (19.0, 24.0, 0.8, -45.0, 130.0),
    "humidity_pct": (35.0, 55.0, 3.0, 0.0, 100.0),
    "pressure_hpa": (1000.0, 1025.0, 1.5, 300.0, 1100.0),
    "illuminance_lux": (150.0, 600.0, 60.0, 0.0, 54612.0),
}


@dataclass(frozen=True)
class _Wave:
    amplitude: float
    period_s: float
    phase: float


class Environment:
    """Slowly drifting, seeded conditions as a function of time."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        seed: int | None = None,
        drift: bool = True,
    ) -> None:
        rng = random.Random(0 if seed is None else seed)
        self._clock = clock
        self._t0 = clock()
        self._drift = drift
        self._lock = threading.Lock()
        self._base: dict[str, float] = {}
        self._waves: dict[str, tuple[_Wave, ...]] = {}
        for name, (low, high, amplitude, _, _) in _RANGES.items():
            self._base[name] = rng.uniform(low, high)
            self._waves[name] = tuple(
                _Wave(
                    amplitude * rng.uniform(0.5, 1.0),
                    rng.uniform(1200.0, 10800.0),
                    rng.uniform(0, 2 * math.pi),
                )
                for _ in range(2)
            )

    def set(self, **values: float) -> None:
        """Pin the base value of quantities (``temperature_c=25.0``, ...)."""
        with self._lock:
            for name, value in values.items():
                if name not in self._base:
                    raise KeyError(f"unknown quantity {name!r}; known: {sorted(self._base)}")
                self._base[name] = float(value)

    def set_drift(self, drift: bool) -> None:
        """Turn the slow drift on or off."""
        with self._lock:
            self._drift = drift

    def now(self) -> Conditions:
        """The conditions at the clock's current time."""
        return self.at(self._clock())

    def at(self, t: float) -> Conditions:
        """The conditions at monotonic time ``t``."""
        elapsed = t - self._t0
        with self._lock:
            values = {}
            for name, base in self._base.items():
                value = base
                if self._drift:
                    value += sum(
                        w.amplitude * math.sin(2 * math.pi * elapsed / w.period_s + w.phase)
                        for w in self._waves[name]
                    )
                _, _, _, lower, upper = _RANGES[name]
                values[name] = min(max(value, lower), upper)
        return Conditions(**values)
