"""How big each benchmark is: one frozen dataclass, a full and a quick preset."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class BenchSettings:
    """Sizes, durations and bounds of one benchmark run."""

    #: Boot cycles (cold boot, steady state, reprovision, warm boot) per client.
    repetitions: int = 5
    #: Messages delivered after the cold boot before RSS and threads are read.
    steady_messages: int = 20
    #: Telemetry interval of both clients.
    interval_s: float = 0.5
    #: Backlog-drain runs per client; the hub is away ``outage_s + n * outage_step_s`` in
    #: run n (varied, so the SDK's fixed reconnect grid does not line up with the return).
    backlog_repetitions: int = 3
    outage_s: float = 12.0
    outage_step_s: float = 3.0
    #: The large backlog: messages buffered while the hub is away (sampled every
    #: ``backlog_interval_s``), drained with each PUBACK held ``puback_delay_s``. The SDK
    #: program sends one message per round trip, so it drains a smaller backlog (a rate is
    #: compared, and 10,000 at its pace would take about 8 minutes).
    backlog_messages: int = 10_000
    backlog_messages_sdk: int = 2_000
    backlog_interval_s: float = 0.002
    puback_delay_s: float = 0.05
    #: After the first message, before an idle or CPU window (twin, subscriptions); a
    #: large-backlog drain is over when no message came for ``drain_quiet_s``.
    settle_s: float = 5.0
    drain_quiet_s: float = 5.0
    #: Idle: both clients connected at ``idle_interval_s``, measured over ``idle_s``.
    idle_s: float = 600.0
    idle_interval_s: float = 60.0
    #: CPU per message: ``cpu_messages`` delivered at ``cpu_interval_s``.
    cpu_messages: int = 1000
    cpu_interval_s: float = 0.01
    #: Floor runs (each: a fresh interpreter, imports, TLS, one QoS 1 PUBLISH acked).
    floor_repetitions: int = 5
    #: Devices per client in the reboot storm, and devcloud's DPS throttle during it
    #: (slot-reserving: a 429's retry-after books the device's turn).
    fleet_size: int = 200
    storm_registrations_per_second: float = 2.0
    #: The SDK's own reconnect interval (its default is 10 s).
    sdk_connection_retry_interval_s: int = 10
    #: Mock sensors, as ``PART@BUS:0xADDR`` (the same for both clients).
    sensors: tuple[str, ...] = ("SHT4x@1:0x45", "BME280@1:0x76")
    #: Upper bounds on single waits (a boot, a drain, a whole storm phase).
    boot_timeout_s: float = 60.0
    drain_timeout_s: float = 120.0
    storm_timeout_s: float = 240.0

    def as_json(self) -> dict[str, Any]:
        """The settings as JSON-ready data."""
        data = asdict(self)
        data["sensors"] = list(self.sensors)
        return data


FULL = BenchSettings()
#: Smallest settings that still exercise every code path (the smoke test uses these).
QUICK = BenchSettings(
    repetitions=1,
    steady_messages=3,
    interval_s=0.2,
    backlog_repetitions=1,
    outage_s=1.0,
    outage_step_s=0.5,
    backlog_messages=100,
    backlog_messages_sdk=20,
    backlog_interval_s=0.01,
    settle_s=0.5,
    drain_quiet_s=1.0,
    idle_s=1.0,
    idle_interval_s=60.0,
    cpu_messages=10,
    cpu_interval_s=0.05,
    floor_repetitions=1,
    fleet_size=2,
    storm_registrations_per_second=2.0,
    sdk_connection_retry_interval_s=1,
    boot_timeout_s=45.0,
    drain_timeout_s=45.0,
    storm_timeout_s=90.0,
)
