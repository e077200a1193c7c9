"""The durable telemetry buffer's SD-card write budget, in bytes per hour.

Runs the real :class:`agent.store.buffer.SqliteBuffer` on a real file, with simulated
time (no waiting): the agent's sampling at ``--interval`` seconds, a commit every
``--commit-interval`` seconds, for ``--hours`` hours, in two situations:

* **online**: every message is published and acknowledged before the next commit
  (the hub answers in milliseconds), so most commits have nothing to do;
* **offline**: the hub is unreachable, every message stays in the buffer.

It counts what the process hands to the kernel for the database and its WAL
(``wchar`` of ``/proc/self/io``, which includes every ``pwrite`` SQLite makes, WAL
checkpoints included) and the commits made (each one fsyncs the WAL). Bytes written to
the SD card itself are at least this, rounded up to the card's erase blocks.

    .venv/bin/python bench/sd_writes.py [--interval 60] [--commit-interval 60] [--hours 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from agent.core.telemetry import Sample, build_message
from agent.store.buffer import BUFFER_FILE, SqliteBuffer


class SimulatedClock:
    """Wall and monotonic time that move only when told to."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


def written_bytes() -> int:
    """``wchar`` of this process: bytes handed to write(2)-like calls so far."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def measure(
    *, online: bool, interval_s: float, commit_interval_s: float, hours: float
) -> dict[str, float]:
    """Bytes written and commits made by the buffer over ``hours`` of simulated time."""
    clock = SimulatedClock()
    with tempfile.TemporaryDirectory(prefix="sd-writes-") as folder:
        buffer = SqliteBuffer(
            Path(folder) / BUFFER_FILE,
            clock=clock,
            max_messages=1_000_000,
            max_bytes=1 << 30,
            max_age_s=30 * 86400.0,
        )
        readings = {
            "bme280@1:0x76": {"temperature_c": 21.5, "pressure_hpa": 1012.3, "humidity_pct": 48.1},
            "bh1750@1:0x23": {"illuminance_lx": 480.0},
        }
        end = clock.now + hours * 3600.0
        next_sample, next_commit, sequence = clock.now, clock.now + commit_interval_s, 0
        before = written_bytes()
        commits_before = buffer.commits
        body_bytes = 0
        while clock.now < end:
            if next_sample <= next_commit:
                clock.now = next_sample
                sequence += 1
                message = build_message(
                    sequence=sequence,
                    timestamp_s=clock.now,
                    sample=Sample(readings, {}),
                    message_id=f"{sequence}-{int(clock.now * 1000)}",
                )
                body_bytes += len(message.body)
                buffer.append(message)
                if online:
                    for taken in buffer.take(10):
                        buffer.ack(taken.message_id)
                next_sample += interval_s
            else:
                clock.now = next_commit
                buffer.flush()
                next_commit += commit_interval_s
        buffer.close()
        total = written_bytes() - before
        commits = buffer.commits - commits_before
    return {
        "bytes_per_hour": total / hours,
        "commits_per_hour": commits / hours,
        "messages_per_hour": sequence / hours,
        "body_bytes_per_hour": body_bytes / hours,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Print the write budget online and offline as JSON (or a Markdown table)."""
    parser = argparse.ArgumentParser(prog="bench/sd_writes.py", description=__doc__.split("\n")[0])
    parser.add_argument("--interval", type=float, default=60.0, help="sampling interval (s)")
    parser.add_argument("--commit-interval", type=float, default=60.0, help="commit interval (s)")
    parser.add_argument("--hours", type=float, default=1.0, help="simulated hours")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    results = {
        name: measure(
            online=name == "online",
            interval_s=args.interval,
            commit_interval_s=args.commit_interval,
            hours=args.hours,
        )
        for name in ("online", "offline")
    }
    if args.markdown:
        print("| hub | messages/h | commits/h | bytes written/h | message bytes/h |")
        print("|---|---|---|---|---|")
        for name, r in results.items():
            print(
                f"| {name} | {r['messages_per_hour']:.0f} | {r['commits_per_hour']:.0f} | "
                f"{r['bytes_per_hour']:.0f} | {r['body_bytes_per_hour']:.0f} |"
            )
    else:
        json.dump(results, sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
