"""The benchmark harness, run end to end with its smallest settings (``--quick``).

``python bench/run.py --quick`` starts the real agent and the SDK program against a
devcloud on loopback for every benchmark (floor, boot cycle, idle, CPU per message,
backlog, large backlog, storm); this test checks the results document's structure and
the facts that do not depend on timing: warm boots make no DPS request,
reprovisioning does, every storm device connects, every DPS request beyond one per
device was a throttled one, nothing is lost in the backlog, the large backlog arrives
without duplicates, every goal has a row, the table and chart are written, every process
stopped cleanly and none is left behind. Timings are never asserted. The quick run uses
the project's own interpreter (no cached install): it is a smoke run, not a measurement.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.report import CLIENTS
from bench.settings import QUICK

ROOT = Path(__file__).resolve().parents[2]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # exited meanwhile
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "results.json"
    workdir = tmp / "work"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--out",
            str(out),
            "--markdown",
            "--workdir",
            str(workdir),
            "--report-dir",
            str(tmp / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-6000:]}"
    return json.loads(out.read_text()), done.stdout, workdir


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_quick_run_floor_idle_cpu_and_large_backlog(
    quick_run: tuple[dict[str, Any], str, Path],
) -> None:
    results, _, workdir = quick_run
    assert set(results["floor"]) == {"1", "2"}
    for entry in results["floor"].values():
        assert len(entry["runs_s"]) == QUICK.floor_repetitions
        assert entry["median_s"] > 0
    for client in CLIENTS:
        (idle,) = results["idle"][client]
        assert idle["duration_s"] >= QUICK.idle_s
        assert idle["context_switches"] >= 0
        assert idle["threads"] >= 1
        (cpu,) = results["cpu"][client]
        assert cpu["messages"] >= QUICK.cpu_messages
        assert cpu["cpu_s"] >= 0
        (drain,) = results["drain"][client]
        assert drain["delivered"] >= 2, f"{client} delivered no backlog"
        assert drain["duplicates"] == 0
    # Both clients had their bytecode checked.
    assert set(results["meta"]["bytecode"]) == set(CLIENTS)
    assert (workdir.parent / "report" / "RESULTS.md").read_text().startswith("# device-agent")
    assert (workdir.parent / "report" / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_quick_run_boot_cycles(quick_run: tuple[dict[str, Any], str, Path]) -> None:
    results, _, _ = quick_run
    assert results["settings"]["repetitions"] == QUICK.repetitions
    for client in CLIENTS:
        runs = results["boot"][client]
        assert len(runs) == QUICK.repetitions
        for run in runs:
            assert run["cold_boot_dps_requests"] >= 1
            assert run["warm_boot_dps_requests"] == 0, f"{client} registered on a warm boot"
            assert run["reprovision_method_status"] == 202
            assert run["reprovision_dps_requests"] >= 1
            assert run["exit_codes"] == [0, 0], f"{client} did not stop cleanly"
            assert run["rss_mib"] > 0
            assert run["threads"] >= 1
            for key in ("cold_boot_s", "warm_boot_s", "reprovision_s"):
                assert run[key] > 0, f"{client} {key}: the clock went backwards?"


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_quick_run_backlog_and_storm(quick_run: tuple[dict[str, Any], str, Path]) -> None:
    results, _, _ = quick_run
    for client in CLIENTS:
        (drain,) = results["backlog"][client]
        assert drain["drained"], f"{client} never delivered its backlog"
        assert drain["sampled_during_outage"] >= 1
        assert drain["lost"] == 0
    for client in CLIENTS:
        phases = results["storm"][client]
        assert set(phases) == {"first_boot", "warm_restart", "wiped_restart"}
        for name, phase in phases.items():
            assert phase["devices"] == QUICK.fleet_size
            assert phase["connected"] == QUICK.fleet_size, f"{client} {name}"
            assert phase["exit_codes"] == [0] * QUICK.fleet_size, f"{client} {name}"
        assert phases["warm_restart"]["dps_requests"] == 0, f"{client} registered on a warm boot"
        for name in ("first_boot", "wiped_restart"):
            phase = phases[name]
            # One accepted request per device; every other one was a 429.
            assert phase["dps_requests"] == QUICK.fleet_size + phase["dps_throttled"]
    for name in ("first_boot", "wiped_restart"):
        assert results["storm"]["agent"][name]["ignored_retry_after"] == 0


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_quick_run_summary_table_and_cleanup(
    quick_run: tuple[dict[str, Any], str, Path],
) -> None:
    results, markdown, workdir = quick_run
    metrics = {row["metric"] for row in results["summary"]}
    assert "warm boot: DPS register requests (all runs)" in metrics
    assert "storm, warm restart: DPS requests" in metrics
    for row in results["summary"]:
        if row["agent"] is not None and row["sdk"]:
            assert row["ratio"] == pytest.approx(row["agent"] / row["sdk"])
    assert results["budget"]["threads_budget"] == 3
    goals = {goal["goal"]: goal for goal in results["goals"]}
    assert "idle wakeups ≤ 0.1/s" in goals
    assert "storm first boot: 0 stuck" in goals
    assert goals["storm first boot: 0 stuck"]["met"] is True
    assert all(goal["met"] in (True, False) for goal in goals.values()), "a goal not measured"
    assert "| metric | unit | agent | SDK | agent/SDK |" in markdown
    # Two tables: metrics and goals, each a header and then a row per entry.
    assert markdown.count("\n| ") == len(results["summary"]) + len(results["goals"]) + 2
    # Every device program the harness started is gone.
    assert workdir.is_dir()
    assert _processes_mentioning(str(workdir)) == []
