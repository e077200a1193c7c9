"""The floor of a boot: what any Python device program pays before its first message lands.

Theory of operation
-------------------
:func:`floor` runs ``bench/floor_device.py`` (interpreter start, ``import ssl`` and
paho-mqtt, then per connection: TLS with the device certificate, CONNECT, one QoS 1
PUBLISH until its PUBACK) with the benchmarked agent's interpreter, for a device made
directly in hub1 (no DPS). As everywhere in the benchmarks, the time is taken on
devcloud's side: the process is started at wall-clock ``t0`` and the result is the last
message's ``enqueuedTimeUtc`` minus ``t0``. It runs once per number of connections a
boot makes: 1 (a warm boot: the hub) and 2 (a cold boot or a reprovision: DPS, then
the hub; both connections here go to the hub, which costs the same TLS handshake and
one acknowledged PUBLISH as the DPS register request).

A boot's *client overhead* is then its total minus the floor for its connections minus
the waits DPS imposed (:func:`overhead`).
"""

from __future__ import annotations

import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.cloud import BenchCloud, enqueued_epoch_s
from bench.settings import BenchSettings

PROGRAM = Path(__file__).resolve().parent / "floor_device.py"


@dataclass(frozen=True)
class Floor:
    """Floor times per number of connections (median of the runs, and every run)."""

    connections: int
    median_s: float
    runs_s: tuple[float, ...]

    def as_json(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def _one_run(cloud: BenchCloud, python: Path, folder: Path, name: str, connections: int) -> float:
    issued = cloud.handle.pki.issue_device(name)
    cloud.client.create_device(name, "hub1")
    since = cloud.client.last_sequence_number()
    argv = [
        str(python),
        str(PROGRAM),
        "--host",
        cloud.hub_hosts["hub1"],
        "--device-id",
        name,
        "--cert",
        str(issued.chain_path),
        "--key",
        str(issued.key_path),
        "--ca",
        str(cloud.ca_path),
        "--connections",
        str(connections),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{name}.log").open("w") as log:
        started = time.time()
        done = subprocess.run(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=folder, timeout=60, check=False
        )
    if done.returncode != 0:
        raise RuntimeError(f"floor program exited {done.returncode}; see {folder / name}.log")
    got = cloud.messages([name], since=since, count=connections, timeout_s=30)[name]
    if len(got) < connections:
        raise RuntimeError(f"floor program: {len(got)} of {connections} messages stored")
    return enqueued_epoch_s(got[connections - 1]) - started


def floor(
    cloud: BenchCloud, python: Path, folder: Path, settings: BenchSettings
) -> dict[int, Floor]:
    """The floor for 1 and 2 connections, ``floor_repetitions`` runs each, alternating."""
    runs: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(settings.floor_repetitions):
        for connections, values in runs.items():
            name = f"floor-{connections}-{rep}"
            values.append(_one_run(cloud, python, folder, name, connections))
    return {n: Floor(n, statistics.median(values), tuple(values)) for n, values in runs.items()}


def overhead(total_s: float | None, floor_s: float | None, dps_wait_s: float) -> float | None:
    """A boot's time beyond the floor and the DPS-imposed waits."""
    if total_s is None or floor_s is None:
        return None
    return total_s - floor_s - dps_wait_s
