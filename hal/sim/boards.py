"""The simulated boards the mock backend can build, by name.

``default`` (bus 1), one of each supported part at its usual address:

======  =======  ===========================================================
0x23    BH1750   BH1750FVI, ADDR pin low
0x44    SHT3x    SHT31-DIS, ADDR pin low
0x45    SHT4x    SHT40-BD1B (the SHT40 variant whose fixed address is 0x45)
0x48    TMP102   ADD0 to GND
0x76    BME280   SDO to GND
0x77    BMP280   SDO to VDDIO; the datasheet's worked-example calibration
======  =======  ===========================================================

``dual``: ``default`` plus bus 3 with a BMP280 at 0x76 and a TMP102 at 0x49.
``empty``: bus 1 with nothing on it.
"""

from __future__ import annotations

from collections.abc import Callable

from hal.sim.bh1750 import SimBH1750
from hal.sim.board import Board
from hal.sim.bosch import SimBME280, SimBMP280
from hal.sim.clock import SimClock
from hal.sim.sensirion import SimSHT3x, SimSHT4x
from hal.sim.tmp102 import SimTMP102


def _default(board: Board) -> None:
    board.attach(1, 0x23, SimBH1750())
    board.attach(1, 0x44, SimSHT3x())
    board.attach(1, 0x45, SimSHT4x())
    board.attach(1, 0x48, SimTMP102())
    board.attach(1, 0x76, SimBME280())
    board.attach(1, 0x77, SimBMP280())


def _dual(board: Board) -> None:
    _default(board)
    board.attach(3, 0x76, SimBMP280())
    board.attach(3, 0x49, SimTMP102())


def _empty(board: Board) -> None:
    board.add_bus(1)


BOARDS: dict[str, Callable[[Board], None]] = {
    "default": _default,
    "dual": _dual,
    "empty": _empty,
}


def build_board(
    name: str = "default", *, seed: int | None = None, clock: SimClock | None = None
) -> Board:
    """Build the named board. Raises ``KeyError`` for an unknown name."""
    populate = BOARDS[name]
    board = Board(name, seed=seed, clock=clock)
    populate(board)
    return board
