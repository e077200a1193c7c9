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
    #: Devices per client in the reboot storm, and devcloud's DPS throttle during it.
    fleet_size: int = 20
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
    fleet_size=2,
    storm_registrations_per_second=1.0,
    sdk_connection_retry_interval_s=1,
    boot_timeout_s=45.0,
    drain_timeout_s=45.0,
    storm_timeout_s=90.0,
)
