"""Side-by-side benchmarks of device-agent and azure-iot-device 2.14.0 against devcloud.

Usage::

    python bench/run.py [--quick] [--out bench/results.json] [--markdown]
                        [--only boot,backlog,storm] [--clients agent,sdk] [--workdir DIR]

Runs every benchmark of :mod:`bench.scenarios` for each client (the agent, and the SDK
program ``bench/sdk_device.py``), alternating the clients run by run, writes the raw
results plus a summary (medians, agent/SDK ratios, the agent's RSS/threads budget) as
JSON, and with ``--markdown`` prints the table. Progress goes to stderr. Every process
started here is stopped before the command exits, also on Ctrl-C or a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.cloud import BenchCloud, bench_cloud  # noqa: E402
from bench.devices import AgentLauncher, Launcher, SDKLauncher  # noqa: E402
from bench.scenarios import backlog_drain, boot_cycle, make_spec, reboot_storm  # noqa: E402
from bench.settings import FULL, QUICK, BenchSettings  # noqa: E402

SECTIONS = ("boot", "backlog", "storm")
SDK_VERSION = "2.14.0"
Progress = Callable[[str], None]


def _stderr(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def machine_description() -> str:
    """Architecture, CPU model, cores, memory and kernel of this machine."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
    except (OSError, StopIteration, ValueError):
        mem_kib = 0
    return (
        f"{platform.machine()}, {model}, {os.cpu_count()} cores, "
        f"{mem_kib / 1024 / 1024:.0f} GiB RAM, Linux {platform.release()}"
    )


def code_version(root: Path = ROOT) -> str:
    """The commit the benchmarked code comes from (``-dirty``: with uncommitted changes)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "agent", "hal", "devcloud"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if changes else commit


def _launchers(
    cloud: BenchCloud, settings: BenchSettings, clients: Sequence[str], sdk_python: Path | None
) -> list[Launcher]:
    launchers: list[Launcher] = []
    for client in clients:
        if client == "agent":
            launchers.append(AgentLauncher(cloud, settings))
        elif sdk_python is not None:
            launchers.append(SDKLauncher(cloud, settings, sdk_python))
    return launchers


def run_benchmarks(
    settings: BenchSettings,
    workdir: Path,
    *,
    sections: Sequence[str] = SECTIONS,
    clients: Sequence[str] = report.CLIENTS,
    progress: Progress = _stderr,
) -> dict[str, Any]:
    """Run the chosen benchmarks for the chosen clients; return the results document."""
    started = time.monotonic()
    sdk_python: Path | None = None
    if "sdk" in clients:
        from tests.support.refsdk import ensure_venv

        progress("reference SDK venv (built once, then cached)")
        sdk_python = ensure_venv()
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_description(),
            "python": platform.python_version(),
            "sdk_version": SDK_VERSION,
            "code": code_version(),
        },
        "settings": settings.as_json(),
    }
    rng = random.Random()
    if "boot" in sections or "backlog" in sections:
        with bench_cloud(workdir / "devcloud-main", rng=rng) as cloud:
            launchers = _launchers(cloud, settings, clients, sdk_python)
            if "boot" in sections:
                boot: dict[str, list[dict[str, Any]]] = {lc.kind: [] for lc in launchers}
                for rep in range(settings.repetitions):
                    for launcher in launchers:
                        name = f"boot-{launcher.kind}-{rep}"
                        progress(f"boot cycle {rep + 1}/{settings.repetitions}: {launcher.kind}")
                        spec = make_spec(cloud, workdir / "devices", name)
                        cycle = boot_cycle(cloud, launcher, spec, settings)
                        boot[launcher.kind].append(cycle.as_json())
                results["boot"] = boot
            if "backlog" in sections:
                backlog: dict[str, list[dict[str, Any]]] = {lc.kind: [] for lc in launchers}
                for rep in range(settings.backlog_repetitions):
                    outage_s = settings.outage_s + rep * settings.outage_step_s
                    for launcher in launchers:
                        name = f"backlog-{launcher.kind}-{rep}"
                        progress(
                            f"backlog drain {rep + 1}/{settings.backlog_repetitions}: "
                            f"{launcher.kind} (hub away {outage_s:g} s)"
                        )
                        spec = make_spec(cloud, workdir / "devices", name)
                        drain = backlog_drain(cloud, launcher, spec, settings, outage_s)
                        backlog[launcher.kind].append(drain.as_json())
                results["backlog"] = backlog
    if "storm" in sections:
        storm: dict[str, dict[str, Any]] = {}
        for client in clients:
            with bench_cloud(
                workdir / f"devcloud-storm-{client}",
                registrations_per_second=settings.storm_registrations_per_second,
                rng=rng,
            ) as cloud:
                (launcher,) = _launchers(cloud, settings, [client], sdk_python)
                progress(f"reboot storm: {settings.fleet_size} x {client}")
                specs = [
                    make_spec(cloud, workdir / "devices", f"fleet-{client}-{n:03d}")
                    for n in range(settings.fleet_size)
                ]
                phases = reboot_storm(cloud, launcher, specs, settings)
                storm[client] = {name: phase.as_json() for name, phase in phases.items()}
        results["storm"] = storm
    results["meta"]["duration_s"] = round(time.monotonic() - started, 1)
    results["summary"] = report.summarize(results)
    results["budget"] = report.budget(results)
    results["notes"] = [
        "Times are measured on devcloud's side: process start (wall clock) to the"
        " enqueuedTimeUtc of the device's message.",
        "Both clients run their defaults for reconnects: the agent's backoff"
        " (1 s base, full jitter) and the SDK's connection_retry_interval"
        f" ({settings.sdk_connection_retry_interval_s} s, a fixed grid from the drop; the"
        " SDK program's sender retries at the same pace).",
        "Hub outages last "
        + ", ".join(
            f"{settings.outage_s + n * settings.outage_step_s:g}"
            for n in range(settings.backlog_repetitions)
        )
        + " s. The SDK program queues samples in memory and sends them one at a time"
        " (send_message returns on PUBACK); the agent keeps up to 10 in flight.",
        "Storm phases run in order: first boot, warm restart, restart with wiped state.",
    ]
    return results


def _parse_list(text: str, allowed: Sequence[str]) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
    return items


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smallest settings (seconds)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--markdown", action="store_true", help="print the table on stdout")
    parser.add_argument(
        "--workdir", type=Path, help="keep devices' configs, state and logs here (default: temp)"
    )
    parser.add_argument(
        "--only",
        type=lambda t: _parse_list(t, SECTIONS),
        default=list(SECTIONS),
        help="comma-separated: boot, backlog, storm",
    )
    parser.add_argument(
        "--clients",
        type=lambda t: _parse_list(t, report.CLIENTS),
        default=list(report.CLIENTS),
        help="comma-separated: agent, sdk",
    )
    args = parser.parse_args(argv)
    # devcloud runs in this process: its asyncio warnings about sockets that devices
    # closed mid-write are expected here, not news.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    settings = QUICK if args.quick else FULL
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="device-agent-bench-"))
        )
        workdir.mkdir(parents=True, exist_ok=True)
        results = run_benchmarks(settings, workdir, sections=args.only, clients=args.clients)
    results["meta"]["mode"] = "quick" if args.quick else "full"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    _stderr(f"results written to {args.out}")
    if args.markdown:
        print(report.markdown(results), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
