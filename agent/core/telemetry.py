"""Telemetry: sample the sensors, build messages, queue them, publish until PUBACK.

Theory of operation
-------------------
Sampling and publishing are decoupled by a :class:`TelemetryQueue`, so telemetry
taken while offline waits for the hub (and a durable SQLite queue can later replace
:class:`MemoryQueue` behind the same interface).

1. A :class:`SampleRound` measures every enabled sensor in two steps, the way the
   chips work: :meth:`SampleRound.start` starts all conversions at once (each
   sensor's ``start()`` says how long its conversion takes), and
   :meth:`SampleRound.collect`, called when the runtime's timer says so, reads the
   finished ones (a sensor that says it is not ready yet, with its ``remaining_s``, is
   asked again then). The timer is set for the *latest* conversion's ready time, so one
   wakeup collects every sensor: a finished conversion holds its result in the chip
   until it is read, so collecting the quicker ones later costs no freshness (the
   message waits for the slowest anyway). So a round takes as long as its slowest
   conversion, not the sum, and the caller's loop is free in between; a sensor with
   only ``read()`` is read in :meth:`SampleRound.start`. One that fails is reported in
   the message's ``errors`` and the others carry on. :func:`sample` is the one-step
   form (start, wait, collect) for callers without a loop.
2. :func:`build_message` makes the JSON body (UTC timestamp, sequence number,
   readings with units from :data:`hal.sensor.UNITS`, per-sensor errors) and the
   system properties ``$.ct=application/json``, ``$.ce=utf-8`` and ``$.mid`` so hub
   routing can query the body.
3. :class:`Publisher` takes queued messages while connected, at most
   ``max_in_flight`` unacknowledged at a time, as QoS 1 publishes. A message is
   done only when its PUBACK arrives; on a disconnect every in-flight message goes
   back to pending and is sent again after the reconnect (at-least-once).
4. A full queue drops its *oldest* message and counts it in ``dropped``.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.core import wire
from agent.core.actions import Publish
from agent.core.clock import utc_iso
from hal.exc import ConversionNotReady
from hal.sensor import UNITS, Sensor

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"


@dataclass(frozen=True)
class TelemetryMessage:
    """One device-to-cloud message, ready to publish."""

    message_id: str
    sequence: int
    body: bytes
    properties: Mapping[str, str]
    #: When it was sampled (wall clock, epoch seconds); bounds the age in a buffer.
    timestamp_s: float = 0.0


@dataclass(frozen=True)
class Sample:
    """What one round of sampling produced."""

    readings: Mapping[str, Mapping[str, float]]
    errors: Mapping[str, str]


def sample(sensors: Sequence[Sensor], *, disabled: frozenset[str] = frozenset()) -> Sample:
    """Read every enabled sensor; failures are collected, never raised."""
    readings: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    for sensor in sensors:
        if sensor.name in disabled:
            continue
        try:
            values = sensor.read()
        except Exception as exc:  # a failing sensor must not stop the others
            errors[sensor.name] = f"{type(exc).__name__}: {exc}"
            continue
        _keep(sensor.name, values, readings, errors)
    return Sample(readings, errors)


def _keep(
    name: str,
    values: Mapping[str, float],
    readings: dict[str, dict[str, float]],
    errors: dict[str, str],
) -> None:
    good = {q: float(v) for q, v in values.items() if math.isfinite(v)}
    bad = sorted(set(values) - set(good))
    if bad:
        errors[name] = f"non-finite value for {', '.join(bad)}"
    if good:
        readings[name] = good


class SampleRound:
    """One sample of every enabled sensor in two steps: start all, collect each when ready.

    Time comes in as ``now_s`` (monotonic seconds); both steps return the seconds until
    the next collection is due, or None when the round is complete (:meth:`result`).
    """

    #: How often a sensor may say "not ready yet" before the round gives up on it.
    MAX_RETRIES = 20

    def __init__(self, sensors: Sequence[Sensor], *, disabled: frozenset[str] = frozenset()):
        self._sensors = [s for s in sensors if s.name not in disabled]
        self._due: dict[str, float] = {}
        self._retries: dict[str, int] = {}
        self._readings: dict[str, dict[str, float]] = {}
        self._errors: dict[str, str] = {}

    def start(self, now_s: float) -> float | None:
        """Start every conversion; the wait until all are due (None: nothing to do)."""
        for sensor in self._sensors:
            try:
                wait_s = float(sensor.start())
            except Exception as exc:  # a failing sensor must not stop the others
                self._errors[sensor.name] = f"{type(exc).__name__}: {exc}"
                continue
            self._due[sensor.name] = now_s + max(0.0, wait_s)
        return self._next(now_s)

    def collect(self, now_s: float) -> float | None:
        """Collect every conversion due by ``now_s``; the wait to the next, None if done."""
        for sensor in self._sensors:
            due = self._due.get(sensor.name)
            if due is None or due > now_s:
                continue
            del self._due[sensor.name]
            try:
                values = sensor.collect()
            except ConversionNotReady as exc:
                retries = self._retries.get(sensor.name, 0)
                if retries < self.MAX_RETRIES:
                    self._retries[sensor.name] = retries + 1
                    self._due[sensor.name] = now_s + max(0.0, exc.remaining_s)
                else:
                    self._errors[sensor.name] = f"{type(exc).__name__}: {exc}"
                continue
            except Exception as exc:  # a failing sensor must not stop the others
                self._errors[sensor.name] = f"{type(exc).__name__}: {exc}"
                continue
            _keep(sensor.name, values, self._readings, self._errors)
        return self._next(now_s)

    @property
    def done(self) -> bool:
        """Every sensor read (or failed)."""
        return not self._due

    def result(self) -> Sample:
        """What the round produced (call when :attr:`done`)."""
        return Sample(dict(self._readings), dict(self._errors))

    def _next(self, now_s: float) -> float | None:
        """The wait until every conversion still running is ready: one collect for all."""
        if not self._due:
            return None
        return max(0.0, max(self._due.values()) - now_s)


def build_message(
    *, sequence: int, timestamp_s: float, sample: Sample, message_id: str
) -> TelemetryMessage:
    """The JSON body and system properties for one sample."""
    body = {
        "timestamp": utc_iso(timestamp_s),
        "sequence": sequence,
        "readings": {
            name: {q: {"value": v, "unit": UNITS.get(q, "")} for q, v in values.items()}
            for name, values in sample.readings.items()
        },
        "errors": dict(sample.errors),
    }
    properties = {"$.ct": CONTENT_TYPE, "$.ce": CONTENT_ENCODING, "$.mid": message_id}
    return TelemetryMessage(
        message_id, sequence, wire.encode_json(body), properties, timestamp_s=timestamp_s
    )


def decode_body(body: bytes) -> dict[str, object]:
    """Parse a telemetry body (for tests and tools)."""
    value = json.loads(body.decode(CONTENT_ENCODING))
    if not isinstance(value, dict):
        raise ValueError("telemetry body is not a JSON object")
    return value


class TelemetryQueue(Protocol):
    """Messages between sampling and publishing."""

    @property
    def dropped(self) -> int:
        """Messages dropped so far, for any reason."""
        ...

    @property
    def dropped_by(self) -> dict[str, int]:
        """Dropped messages by reason (``count``, ``bytes``, ``age``, ``corrupt``)."""
        ...

    def append(self, message: TelemetryMessage) -> None:
        """Add a message; if full, drop the oldest and count it."""
        ...

    def take(self, limit: int) -> list[TelemetryMessage]:
        """Up to ``limit`` oldest messages not in flight; marks them in flight."""
        ...

    def ack(self, message_id: str) -> bool:
        """The message is done (PUBACK); False if unknown (dropped meanwhile)."""
        ...

    def release_in_flight(self) -> int:
        """Everything in flight becomes pending again (after a disconnect)."""
        ...

    def __len__(self) -> int:
        """Messages not yet acknowledged (pending + in flight)."""
        ...

    @property
    def next_sequence(self) -> int:
        """The sequence number for the next message (continues a durable buffer's)."""
        ...

    @property
    def needs_flush(self) -> bool:
        """Whether :meth:`flush` has anything to make durable now (cheap: checked often)."""
        ...

    def flush(self) -> bool:
        """Make what was appended and acknowledged durable; True if nothing is left over."""
        ...

    def close(self) -> None:
        """Flush and release the queue's resources."""
        ...


class MemoryQueue:
    """A bounded in-memory :class:`TelemetryQueue`."""

    def __init__(self, max_messages: int) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self.max_messages = max_messages
        self._messages: OrderedDict[str, TelemetryMessage] = OrderedDict()
        self._in_flight: set[str] = set()
        self.dropped = 0

    def append(self, message: TelemetryMessage) -> None:
        """Add ``message``, dropping the oldest if the queue is full."""
        while len(self._messages) >= self.max_messages:
            oldest, _ = self._messages.popitem(last=False)
            self._in_flight.discard(oldest)
            self.dropped += 1
        self._messages[message.message_id] = message

    def take(self, limit: int) -> list[TelemetryMessage]:
        """Oldest pending messages, marked in flight."""
        taken: list[TelemetryMessage] = []
        for message_id, message in self._messages.items():
            if len(taken) >= limit:
                break
            if message_id not in self._in_flight:
                taken.append(message)
        self._in_flight.update(m.message_id for m in taken)
        return taken

    def ack(self, message_id: str) -> bool:
        """Remove an acknowledged message."""
        self._in_flight.discard(message_id)
        return self._messages.pop(message_id, None) is not None

    def release_in_flight(self) -> int:
        """Make in-flight messages pending again."""
        count = len(self._in_flight)
        self._in_flight.clear()
        return count

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def next_sequence(self) -> int:
        """1: nothing survives a restart in memory."""
        return 1

    @property
    def dropped_by(self) -> dict[str, int]:
        """Drops by reason (memory: only the count bound)."""
        return {"count": self.dropped}

    @property
    def needs_flush(self) -> bool:
        """Never: nothing is made durable in memory."""
        return False

    def flush(self) -> bool:
        """Nothing to make durable in memory."""
        return True

    def close(self) -> None:
        """Nothing to release."""


class Publisher:
    """Moves queued messages onto a hub connection, QoS 1, done on PUBACK."""

    def __init__(self, queue: TelemetryQueue, *, max_in_flight: int) -> None:
        self.queue = queue
        self.max_in_flight = max_in_flight
        self.device_id: str | None = None
        self._mid_to_message: dict[int, str] = {}
        self.acked_total = 0
        self.last_acked_sequence: int | None = None
        self._sequences: dict[str, int] = {}

    @property
    def connected(self) -> bool:
        """Whether messages are being published."""
        return self.device_id is not None

    def connect(self, device_id: str) -> None:
        """A hub connection is up for ``device_id``."""
        self.device_id = device_id

    def disconnect(self) -> int:
        """The connection is gone: in-flight messages will be sent again. Returns how many."""
        self.device_id = None
        self._mid_to_message.clear()
        self._sequences.clear()
        return self.queue.release_in_flight()

    def pump(self) -> list[Publish]:
        """Publishes to make now (tag = message id)."""
        if self.device_id is None:
            return []
        room = self.max_in_flight - len(self._sequences)
        if room <= 0:
            return []
        publishes = []
        for message in self.queue.take(room):
            topic, body = wire.format_telemetry(self.device_id, message.body, message.properties)
            self._sequences[message.message_id] = message.sequence
            publishes.append(Publish(topic, body, 1, tag=message.message_id))
        return publishes

    def sent(self, message_id: str, mid: int) -> None:
        """The transport gave ``mid`` to the publish of ``message_id``."""
        self._mid_to_message[mid] = message_id

    def acked(self, mid: int) -> bool:
        """A PUBACK arrived; True if it was for telemetry."""
        message_id = self._mid_to_message.pop(mid, None)
        if message_id is None:
            return False
        sequence = self._sequences.pop(message_id, None)
        if self.queue.ack(message_id):
            self.acked_total += 1
            self.last_acked_sequence = sequence
        return True
