"""Side-by-side benchmarks of device-agent and azure-iot-device 2.14.0 against devcloud.

Usage::

    python bench/run.py [--quick] [--out bench/results.json] [--markdown]
                        [--only floor,boot,idle,cpu,backlog,drain,storm]
                        [--clients agent,sdk] [--workdir DIR] [--report-dir DIR]
                        [--agent-interpreter installed|project]
                        [--idle-s S] [--fleet-size N] [--repetitions N]

Runs the floor (:mod:`bench.floor`), the boot cycles, backlog and storm of
:mod:`bench.scenarios` and the steady-state benchmarks of :mod:`bench.steady` for each
client (the agent, and the SDK program ``bench/sdk_device.py``), alternating the clients
run by run, writes the raw results plus a summary (medians, agent/SDK ratios, every goal
measured against its target, the agent's RSS/threads budget) as JSON, with
``--report-dir`` also the Markdown table and a PNG chart of the latency distributions,
and with ``--markdown`` prints the table. Progress goes to stderr. Every process
started here is stopped before the command exits, also on Ctrl-C or a failure.

A full run measures the agent installed non-editable in a cached venv with compiled
bytecode (:mod:`bench.venvs`), as a device has it; the SDK's venv is pip-installed and
compiled too. The results record the bytecode coverage of both.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import platform
import random
import ssl
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

from bench import chart as chart_module  # noqa: E402
from bench import report, venvs  # noqa: E402
from bench.cloud import BenchCloud, bench_cloud  # noqa: E402
from bench.devices import AgentLauncher, Launcher, SDKLauncher  # noqa: E402
from bench.floor import floor  # noqa: E402
from bench.scenarios import backlog_drain, boot_cycle, make_spec, reboot_storm  # noqa: E402
from bench.settings import FULL, QUICK, BenchSettings  # noqa: E402
from bench.steady import cpu_per_messages, idle, large_backlog  # noqa: E402

SECTIONS = ("floor", "boot", "idle", "cpu", "backlog", "drain", "storm")
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


def load_average() -> str:
    """The 1/5/15-minute load averages (the machine may be shared)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


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


@dataclasses.dataclass(frozen=True)
class Interpreters:
    """Which Python runs each client, and how the HAL reaches the SDK program."""

    agent: Path
    agent_kind: str  # "installed" (non-editable, compiled) or "project" (editable)
    sdk: Path | None
    hal_root: Path


def interpreters(kind: str, clients: Sequence[str], progress: Progress) -> Interpreters:
    """The agent's interpreter (installed copy or the project's) and the SDK's venv."""
    sdk_python: Path | None = None
    if "sdk" in clients:
        from tests.support.refsdk import ensure_venv

        progress("reference SDK venv (built once, then cached)")
        sdk_python = ensure_venv()
    if kind == "installed":
        progress("agent installed non-editable into the bench venv (cached per source hash)")
        agent = venvs.agent_venv()
        return Interpreters(agent, kind, sdk_python, venvs.hal_root(agent))
    return Interpreters(Path(sys.executable), kind, sdk_python, ROOT)


def _launchers(
    cloud: BenchCloud, settings: BenchSettings, clients: Sequence[str], python: Interpreters
) -> list[Launcher]:
    launchers: list[Launcher] = []
    for client in clients:
        if client == "agent":
            launchers.append(AgentLauncher(cloud, settings, python.agent))
        elif python.sdk is not None:
            launchers.append(SDKLauncher(cloud, settings, python.sdk, python.hal_root))
    return launchers


def _bytecode(python: Interpreters) -> dict[str, Any]:
    coverage: dict[str, Any] = {
        "agent": {
            "interpreter": python.agent_kind,
            **venvs.bytecode_coverage(
                python.agent,
                venvs.AGENT_MODULES,
                None if python.agent_kind == "installed" else ROOT,
            ),
        }
    }
    if python.sdk is not None:
        coverage["sdk"] = {
            "interpreter": "reference venv (pip-installed)",
            **venvs.bytecode_coverage(python.sdk, venvs.SDK_MODULES, python.hal_root),
        }
    return coverage


def run_benchmarks(
    settings: BenchSettings,
    workdir: Path,
    *,
    sections: Sequence[str] = SECTIONS,
    clients: Sequence[str] = report.CLIENTS,
    interpreter: str = "installed",
    progress: Progress = _stderr,
    checkpoint: Callable[[dict[str, Any]], None] = lambda results: None,
) -> dict[str, Any]:
    """Run the chosen benchmarks for the chosen clients; return the results document.

    ``checkpoint`` gets the document after each section, so a failure later (or Ctrl-C)
    keeps what was measured.
    """
    started = time.monotonic()
    python = interpreters(interpreter, clients, progress)
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_description(),
            "python": platform.python_version(),
            "openssl": ssl.OPENSSL_VERSION,
            "sdk_version": SDK_VERSION,
            "code": code_version(),
            "bytecode": _bytecode(python),
            "load_average_start": load_average(),
            "niceness": os.nice(0),
        },
        "settings": settings.as_json(),
    }
    rng = random.Random()
    devices = workdir / "devices"
    main_sections = {"floor", "boot", "idle", "cpu", "backlog", "drain"}
    if main_sections & set(sections):
        with bench_cloud(workdir / "devcloud-main", rng=rng) as cloud:
            launchers = _launchers(cloud, settings, clients, python)
            if "floor" in sections:
                progress(f"floor: {settings.floor_repetitions} runs of 1 and 2 connections")
                floors = floor(cloud, python.agent, workdir / "floor", settings)
                results["floor"] = {str(n): f.as_json() for n, f in floors.items()}
                checkpoint(results)
            if "boot" in sections:
                boot: dict[str, list[dict[str, Any]]] = {lc.kind: [] for lc in launchers}
                for rep in range(settings.repetitions):
                    for launcher in launchers:
                        name = f"boot-{launcher.kind}-{rep}"
                        progress(f"boot cycle {rep + 1}/{settings.repetitions}: {launcher.kind}")
                        spec = make_spec(cloud, devices, name)
                        cycle = boot_cycle(cloud, launcher, spec, settings)
                        boot[launcher.kind].append(cycle.as_json())
                results["boot"] = boot
                checkpoint(results)
            if "idle" in sections:
                progress(
                    f"idle: {', '.join(lc.kind for lc in launchers)} side by side for"
                    f" {settings.idle_s:g} s at a {settings.idle_interval_s:g} s interval"
                )
                specs = [make_spec(cloud, devices, f"idle-{lc.kind}") for lc in launchers]
                idles = idle(cloud, launchers, specs, settings)
                results["idle"] = {kind: [run.as_json()] for kind, run in idles.items()}
                checkpoint(results)
            if "cpu" in sections:
                cpu: dict[str, list[dict[str, Any]]] = {}
                for launcher in launchers:
                    progress(f"CPU per message: {settings.cpu_messages} x {launcher.kind}")
                    spec = make_spec(cloud, devices, f"cpu-{launcher.kind}")
                    cpu[launcher.kind] = [
                        cpu_per_messages(cloud, launcher, spec, settings).as_json()
                    ]
                results["cpu"] = cpu
                checkpoint(results)
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
                        spec = make_spec(cloud, devices, name)
                        drain = backlog_drain(cloud, launcher, spec, settings, outage_s)
                        backlog[launcher.kind].append(drain.as_json())
                results["backlog"] = backlog
                checkpoint(results)
            if "drain" in sections:
                large: dict[str, list[dict[str, Any]]] = {}
                for launcher in launchers:
                    count = (
                        settings.backlog_messages
                        if launcher.kind == "agent"
                        else settings.backlog_messages_sdk
                    )
                    progress(
                        f"large backlog: {count} x {launcher.kind}, PUBACK held"
                        f" {settings.puback_delay_s:g} s"
                    )
                    spec = make_spec(cloud, devices, f"drain-{launcher.kind}")
                    large[launcher.kind] = [
                        large_backlog(cloud, launcher, spec, settings, count).as_json()
                    ]
                results["drain"] = large
                checkpoint(results)
    if "storm" in sections:
        storm: dict[str, dict[str, Any]] = {}
        for client in clients:
            with bench_cloud(
                workdir / f"devcloud-storm-{client}",
                registrations_per_second=settings.storm_registrations_per_second,
                throttle_reserves_slots=True,
                rng=rng,
            ) as cloud:
                (launcher,) = _launchers(cloud, settings, [client], python)
                progress(f"reboot storm: {settings.fleet_size} x {client}")
                specs = [
                    make_spec(cloud, devices, f"fleet-{client}-{n:03d}")
                    for n in range(settings.fleet_size)
                ]
                phases = reboot_storm(cloud, launcher, specs, settings)
                storm[client] = {name: phase.as_json() for name, phase in phases.items()}
                results["storm"] = storm
                checkpoint(results)
    results["meta"]["duration_s"] = round(time.monotonic() - started, 1)
    results["meta"]["load_average_end"] = load_average()
    results["summary"] = report.summarize(results)
    results["goals"] = report.goals(results)
    results["budget"] = report.budget(results)
    results["notes"] = report.notes(results)
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
        help="comma-separated: " + ", ".join(SECTIONS),
    )
    parser.add_argument(
        "--clients",
        type=lambda t: _parse_list(t, report.CLIENTS),
        default=list(report.CLIENTS),
        help="comma-separated: agent, sdk",
    )
    parser.add_argument(
        "--agent-interpreter",
        choices=("installed", "project"),
        help="installed: a non-editable, compiled copy in a cached venv (default of a full"
        " run); project: this interpreter with the editable install (default with --quick)",
    )
    parser.add_argument("--idle-s", type=float, help="idle window (default: the preset's)")
    parser.add_argument("--fleet-size", type=int, help="storm devices per client")
    parser.add_argument("--repetitions", type=int, help="boot cycles per client")
    parser.add_argument(
        "--report-dir",
        type=Path,
        help="also write RESULTS.md (the table) and latency.png (the chart) there",
    )
    args = parser.parse_args(argv)
    # devcloud runs in this process: its asyncio warnings about sockets that devices
    # closed mid-write are expected here, not news.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    settings = QUICK if args.quick else FULL
    changes = {
        key: value
        for key, value in (
            ("idle_s", args.idle_s),
            ("fleet_size", args.fleet_size),
            ("repetitions", args.repetitions),
        )
        if value is not None
    }
    settings = dataclasses.replace(settings, **changes)
    interpreter = args.agent_interpreter or ("project" if args.quick else "installed")
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="device-agent-bench-"))
        )
        workdir.mkdir(parents=True, exist_ok=True)
        partial = args.out.with_suffix(".partial.json")

        def checkpoint(results: dict[str, Any]) -> None:
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")

        results = run_benchmarks(
            settings,
            workdir,
            sections=args.only,
            clients=args.clients,
            interpreter=interpreter,
            checkpoint=checkpoint,
        )
        partial.unlink(missing_ok=True)
    results["meta"]["mode"] = ("quick" if args.quick else "full") + (
        f" (changed: {', '.join(f'{k}={v}' for k, v in changes.items())})" if changes else ""
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    _stderr(f"results written to {args.out}")
    table = report.markdown(results)
    if args.report_dir is not None:
        args.report_dir.mkdir(parents=True, exist_ok=True)
        (args.report_dir / "RESULTS.md").write_text(table)
        chart = chart_module.write_chart(results, args.report_dir / "latency.png")
        _stderr(f"table and chart written to {args.report_dir} ({chart})")
    if args.markdown:
        print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
