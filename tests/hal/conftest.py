"""Fixtures for the HAL tests: a simulated board on a manual clock.

With :class:`hal.sim.clock.ManualClock` a driver's waits advance simulated time
instantly and are recorded in ``clock.sleeps``, so tests are fast and can assert
the waits the datasheets prescribe.
"""

from __future__ import annotations

import pytest

from hal.backend import MockBackend
from hal.sim.board import Board
from hal.sim.boards import build_board
from hal.sim.clock import ManualClock
from hal.sim.stub import StubAdapter

__all__ = ["PINNED", "StubAdapter"]

#: Conditions pinned for tests that compare readings with the environment.
PINNED = {
    "temperature_c": 21.5,
    "humidity_pct": 48.0,
    "pressure_hpa": 1009.25,
    "illuminance_lux": 321.0,
}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def board(clock: ManualClock) -> Board:
    """The default board, drift off, conditions pinned to :data:`PINNED`."""
    board = build_board("default", seed=7, clock=clock)
    board.environment.set_drift(False)
    board.environment.set(**PINNED)
    return board


@pytest.fixture
def backend(board: Board) -> MockBackend:
    return MockBackend(board)
