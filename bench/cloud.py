"""devcloud for the benchmarks: fixed SDK ports, DPS accounting, hub outages.

Theory of operation
-------------------
Microsoft's SDK hard-codes port 8883, so :func:`bench_cloud` runs a
:class:`~devcloud.app.DevCloudThread` in this process with DPS and both hubs on port
8883 of their own fresh 127.x.y.z addresses (``.2`` DPS, ``.3``/``.4`` hubs, REST on
``.1`` with a free port). The hubs' public hostnames are their addresses, so the agent
and the SDK both connect straight to what DPS assigns.

:class:`DpsLog` wraps the provisioner's ``begin`` on devcloud's loop to record every
register request (time, registration id, and the retry-after of a 429), so a benchmark
counts throttled requests exactly and can check that devices honoured retry-after.
:meth:`BenchCloud.stop_hub` / :meth:`BenchCloud.start_hub` take a hub off the network
(listener closed, connections dropped: clients see "connection refused") and bring it
back on the same address, which is what a hub outage looks like to a device.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from devcloud.app import DevCloud, DevCloudConfig, DevCloudHandle, DevCloudThread, HubSpec
from devcloud.client import DevCloudClient, Telemetry
from devcloud.errors import ThrottledError

#: The SDK's MQTT port (hard-coded in azure-iot-device 2.14.0).
SDK_MQTT_PORT = 8883
HUBS = ("hub1", "hub2")


@dataclass(frozen=True)
class RegisterRequest:
    """One register request DPS received."""

    at_s: float  # time.monotonic() in this process
    registration_id: str
    throttled: bool
    retry_after_s: int | None


@dataclass
class DpsLog:
    """Every register request since :meth:`BenchCloud.dps_log` was installed."""

    requests: list[RegisterRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> list[RegisterRequest]:
        """A copy, safe to read from any thread."""
        with self.lock:
            return list(self.requests)

    def select(
        self, registration_ids: Sequence[str] | None = None, *, since_s: float = 0.0
    ) -> list[RegisterRequest]:
        """Requests of these ids (or all) received at or after ``since_s`` (monotonic)."""
        wanted = None if registration_ids is None else set(registration_ids)
        return [
            r
            for r in self.snapshot()
            if r.at_s >= since_s and (wanted is None or r.registration_id in wanted)
        ]

    def count(
        self, registration_ids: Sequence[str] | None = None, *, since_s: float = 0.0
    ) -> tuple[int, int]:
        """(register requests, of which throttled with 429) for these ids since ``since_s``."""
        chosen = self.select(registration_ids, since_s=since_s)
        return len(chosen), sum(r.throttled for r in chosen)

    def early_retries(
        self,
        registration_ids: Sequence[str] | None = None,
        *,
        since_s: float = 0.0,
        slack_s: float = 0.05,
    ) -> int:
        """Requests sent before the retry-after of the same device's previous 429 ran out."""
        early = 0
        last: dict[str, RegisterRequest] = {}
        for request in self.select(registration_ids, since_s=since_s):
            before = last.get(request.registration_id)
            if (
                before is not None
                and before.throttled
                and before.retry_after_s is not None
                and request.at_s - before.at_s < before.retry_after_s - slack_s
            ):
                early += 1
            last[request.registration_id] = request
        return early


@dataclass
class BenchCloud:
    """A running devcloud and where its parts listen."""

    handle: DevCloudHandle
    dps_host: str
    hub_hosts: dict[str, str]
    state_dir: Path
    _dps_log: DpsLog | None = None

    @property
    def client(self) -> DevCloudClient:
        """The REST client."""
        return self.handle.client

    @property
    def id_scope(self) -> str:
        """The DPS id scope."""
        return self.handle.id_scope

    @property
    def ca_path(self) -> Path:
        """What devices trust for devcloud's servers."""
        return self.handle.ca_path

    def hub_name(self, hostname: str) -> str:
        """The hub name for an assigned hostname."""
        return self.handle.hub_name(hostname)

    def allocate_to(self, hub: str) -> None:
        """Make the default enrollment group assign every device to ``hub``."""
        self.client.set_group_allocation("default", "hashed", [hub])

    def dps_log(self) -> DpsLog:
        """The record of register requests (see :class:`DpsLog`), started on first use."""
        if self._dps_log is not None:
            return self._dps_log
        log = self._dps_log = DpsLog()

        def install(app: DevCloud) -> None:
            provisioner = app.provisioner
            original: Callable[..., Any] = provisioner.begin

            def begin(registration_id: str, body: bytes, chain: Any) -> Any:
                now = time.monotonic()
                try:
                    operation = original(registration_id, body, chain)
                except ThrottledError as exc:
                    with log.lock:
                        log.requests.append(
                            RegisterRequest(now, registration_id, True, exc.retry_after_s)
                        )
                    raise
                with log.lock:
                    log.requests.append(RegisterRequest(now, registration_id, False, None))
                return operation

            provisioner.begin = begin  # type: ignore[method-assign]

        self.handle.call(install)
        return log

    def stop_hub(self, hub: str) -> None:
        """Close the hub's listener and every connection to it."""
        self.handle.run(self.handle.app.hub_servers[hub].stop())

    def start_hub(self, hub: str) -> None:
        """Listen again on the hub's address (after :meth:`stop_hub`)."""
        self.handle.run(self.handle.app.hub_servers[hub].start(self.hub_hosts[hub], SDK_MQTT_PORT))

    def first_messages(
        self, device_ids: Sequence[str], *, since: int, timeout_s: float
    ) -> dict[str, Telemetry]:
        """Each device's first message after ``since`` (long-polls; may miss some on timeout)."""
        return {
            device: messages[0]
            for device, messages in self.messages(
                device_ids, since=since, timeout_s=timeout_s, count=1
            ).items()
            if messages
        }

    def messages(
        self,
        device_ids: Sequence[str],
        *,
        since: int,
        timeout_s: float,
        count: int = 1,
        until: Callable[[dict[str, list[Telemetry]]], bool] | None = None,
    ) -> dict[str, list[Telemetry]]:
        """Messages after ``since`` per device, until each has ``count`` (or ``until`` holds)."""
        wanted = set(device_ids)
        found: dict[str, list[Telemetry]] = {d: [] for d in device_ids}

        def done() -> bool:
            if until is not None:
                return until(found)
            return all(len(found[d]) >= count for d in wanted)

        deadline = time.monotonic() + timeout_s
        after = since
        for _ in range(100_000):  # bounded: each round long-polls until a message or the end
            if done():
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            batch = self.client.telemetry(after, limit=500, wait_s=min(remaining, 5.0))
            for message in batch:
                if message.device_id in wanted:
                    found[message.device_id].append(message)
            if batch:
                after = batch[-1].sequence_number
        return found


def enqueued_epoch_s(message: Telemetry) -> float:
    """When devcloud stored ``message``, as seconds since the epoch (microsecond precision)."""
    return datetime.fromisoformat(message.enqueued_time.replace("Z", "+00:00")).timestamp()


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _fresh_prefix(rng: random.Random) -> str:
    for _ in range(50):
        prefix = f"127.{rng.randrange(200, 255)}.{rng.randrange(0, 256)}"
        if all(_port_free(f"{prefix}.{n}", SDK_MQTT_PORT) for n in (2, 3, 4)):
            return prefix
    raise RuntimeError("no free 127.x.y.z addresses with port 8883 in 50 tries")


@contextlib.contextmanager
def bench_cloud(
    state_dir: Path,
    *,
    registrations_per_second: float | None = None,
    throttle_reserves_slots: bool = False,
    assignment_delay_s: float = 0.05,
    rng: random.Random | None = None,
) -> Iterator[BenchCloud]:
    """A devcloud on fresh loopback addresses, port 8883 for DPS and both hubs."""
    prefix = _fresh_prefix(rng or random.Random())
    hub_hosts = {name: f"{prefix}.{n}" for n, name in zip((3, 4), HUBS, strict=True)}
    config = DevCloudConfig(
        state_dir=state_dir,
        dps_host=f"{prefix}.2",
        dps_port=SDK_MQTT_PORT,
        hubs=tuple(HubSpec(name, host, SDK_MQTT_PORT) for name, host in hub_hosts.items()),
        rest_host=f"{prefix}.1",
        rest_port=0,
        assignment_delay_s=assignment_delay_s,
        registrations_per_second=registrations_per_second,
        throttle_reserves_slots=throttle_reserves_slots,
    )
    with DevCloudThread(config) as handle:
        yield BenchCloud(handle, config.dps_host, hub_hosts, state_dir)
