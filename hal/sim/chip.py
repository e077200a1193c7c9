"""The base of every simulated chip: an I2C target that sees raw transfers.

A chip receives what a real target would: the bytes of a write transfer
(:meth:`SimChip.write`) and requests for a number of bytes in a read transfer
(:meth:`SimChip.read`). Refusing a byte or a read header is raising :class:`Nack`;
the bus turns that into the errno Linux reports (``EREMOTEIO``). Chips read the
time and the physical conditions through the :class:`Attachment` the board gives
them when they are plugged in, and return to power-on state in
:meth:`SimChip.power_on_reset`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from hal.sim.clock import SimClock
from hal.sim.environment import Environment


class Nack(Exception):
    """Raised by a simulated chip that does not acknowledge a byte or read header."""


@dataclass(frozen=True)
class Attachment:
    """Where a chip sits and what it can sense."""

    bus: int
    address: int
    clock: SimClock
    environment: Environment
    rng: random.Random


class SimChip:
    """A simulated I2C target; subclasses model one part each."""

    PART: ClassVar[str] = ""
    #: What the default board documents about this chip (e.g. the exact variant).
    variant: str = ""

    def __init__(self) -> None:
        self._attachment: Attachment | None = None
        #: Reads left whose CRC bytes are corrupted (honoured by CRC-protected parts).
        self.corrupt_crc_reads = 0

    @property
    def attachment(self) -> Attachment:
        """The board position, clock and environment (set when plugged in)."""
        if self._attachment is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a board")
        return self._attachment

    def now(self) -> float:
        """Simulated time."""
        return self.attachment.clock.monotonic()

    def attach(self, attachment: Attachment) -> None:
        """Plug the chip in: power it on."""
        self._attachment = attachment
        self.power_on_reset()

    def power_on_reset(self) -> None:
        """Return every register and state machine to its power-on value."""

    def write(self, data: bytes) -> None:
        """Receive the bytes of one write transfer (after the address ACK)."""
        raise NotImplementedError

    def read(self, length: int) -> bytes:
        """Answer a read transfer of ``length`` bytes."""
        raise NotImplementedError
