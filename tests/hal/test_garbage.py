"""Garbage on the bus never takes a driver down.

A bus whose every read returns arbitrary bytes (and whose transfers may fail with
any errno) stands in for a broken chip, a wrong part or electrical noise. Whatever
arrives, ``read()`` either returns a finite value for each of its quantities or
raises a :class:`hal.exc.HALError`, and the next ``read()`` is still possible.
"""

from __future__ import annotations

import errno
import math

from hypothesis import event, given, settings
from hypothesis import strategies as st

from hal.crc import pack_words
from hal.discovery import PARTS, known_addresses, scan
from hal.exc import HALError, I2CError

ERRNOS = (errno.EREMOTEIO, errno.ENXIO, errno.EIO, errno.ETIMEDOUT)


class GarbageBus:
    """An :class:`hal.bus.I2CBus` answering every read with bytes drawn by hypothesis."""

    number = 1

    def __init__(self, data: st.DataObject) -> None:
        self._data = data

    def _maybe_fail(self, address: int, operation: str) -> None:
        # Rarely, so that a measurement's many transfers can all get through.
        if self._data.draw(st.integers(0, 15), label="fail?") == 15:
            err = self._data.draw(st.sampled_from(ERRNOS), label="errno")
            raise I2CError(err, self.number, address, operation)

    def write(self, address: int, data: bytes) -> None:
        self._maybe_fail(address, "write")

    def read(self, address: int, length: int) -> bytes:
        self._maybe_fail(address, "read")
        draw = self._data.draw
        if draw(st.booleans(), label="well-formed"):
            # Garbage that passes the first checks, so the later stages see it too:
            # words with valid CRCs, one-byte answers that are chip ids / idle status.
            if length % 3 == 0:
                words = st.lists(st.integers(0, 0xFFFF), min_size=length // 3, max_size=length // 3)
                return pack_words(draw(words, label="words"))
            if length == 1:
                return bytes([draw(st.sampled_from((0x60, 0x58, 0x56, 0x57, 0x00)), label="id")])
        return draw(st.binary(min_size=length, max_size=length), label="bytes")

    def write_read(self, address: int, data: bytes, length: int) -> bytes:
        self.write(address, data)
        return self.read(address, length)

    def close(self) -> None:
        pass


@settings(max_examples=300, deadline=None)
@given(part=st.sampled_from(sorted(PARTS)), data=st.data())
def test_any_bytes_give_a_reading_or_a_hal_error(part: str, data: st.DataObject) -> None:
    driver = PARTS[part]
    sensor = driver(GarbageBus(data), driver.ADDRESSES[0], sleep=lambda s: None)
    for _ in range(2):
        try:
            reading = sensor.read()
        except HALError:
            continue
        event(f"{part} read")
        assert set(reading) == set(sensor.quantities)
        assert all(math.isfinite(v) for v in reading.values()), reading
    sensor.close()


class GarbageBackend:
    """A :class:`hal.backend.Backend` whose only bus is a :class:`GarbageBus`."""

    kind = "garbage"
    pin_factory = None

    def __init__(self, data: st.DataObject) -> None:
        self._bus = GarbageBus(data)

    @staticmethod
    def sleep(seconds: float) -> None:
        """No time passes."""

    @staticmethod
    def monotonic() -> float:
        """Time stands still."""
        return 0.0

    def bus(self, number: int) -> GarbageBus:
        return self._bus

    def close(self) -> None:
        pass


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_a_scan_of_garbage_finds_known_parts_or_raises_a_hal_error(data: st.DataObject) -> None:
    try:
        found = scan(GarbageBackend(data), [1])
    except HALError:
        return
    for item in found:
        assert item.part is None or item.part in PARTS
        assert item.address in known_addresses() and item.detail
