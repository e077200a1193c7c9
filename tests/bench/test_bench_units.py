"""The harness's pure parts: DPS request accounting, medians and ratios, memory attribution."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from bench.chart import write_chart
from bench.cloud import DpsLog, RegisterRequest
from bench.devices import cpu_status
from bench.memory import RUNNING, attribute, fold_small, group_of
from bench.report import budget, goals, markdown, median, summarize, total
from bench.steady import CpuPerMessages, Idle, LargeBacklog


def _log(*requests: RegisterRequest) -> DpsLog:
    log = DpsLog()
    log.requests.extend(requests)
    return log


def test_dps_log_counts_and_filters() -> None:
    log = _log(
        RegisterRequest(1.0, "a", True, 2),
        RegisterRequest(3.1, "a", False, None),
        RegisterRequest(3.2, "b", False, None),
        RegisterRequest(9.0, "c", True, 1),
    )
    assert log.count() == (4, 2)
    assert log.count(["a"]) == (2, 1)
    assert log.count(["a", "b"], since_s=3.0) == (2, 0)
    assert log.count(["nobody"]) == (0, 0)


def test_a_retry_before_retry_after_ran_out_is_counted() -> None:
    honoured = _log(RegisterRequest(1.0, "a", True, 2), RegisterRequest(3.0, "a", False, None))
    early = _log(RegisterRequest(1.0, "a", True, 2), RegisterRequest(2.5, "a", False, None))
    other_device = _log(RegisterRequest(1.0, "a", True, 2), RegisterRequest(1.1, "b", True, 2))
    assert honoured.early_retries() == 0
    assert early.early_retries() == 1
    assert early.early_retries(["b"]) == 0
    assert other_device.early_retries() == 0


def test_median_total_and_ratios() -> None:
    assert median([3, None, 1, 2]) == 2
    assert median([None]) is None
    assert total([0, 1, None, 2]) == 3
    results = {
        "boot": {
            "agent": [{"cold_boot_s": 1.0, "warm_boot_dps_requests": 0, "rss_mib": 20.0}] * 3,
            "sdk": [{"cold_boot_s": 4.0, "warm_boot_dps_requests": 1, "rss_mib": 40.0}] * 3,
        }
    }
    rows = {row["metric"]: row for row in summarize(results)}
    cold = rows["cold boot: start → first telemetry (DPS)"]
    assert (cold["agent"], cold["sdk"], cold["ratio"]) == (1.0, 4.0, 0.25)
    warm = rows["warm boot: DPS register requests (all runs)"]
    assert (warm["agent"], warm["sdk"], warm["ratio"]) == (0.0, 3.0, 0.0)
    assert "backlog: lost messages (all runs)" not in rows  # no backlog section, no row
    table = markdown({**results, "summary": summarize(results)})
    assert "| cold boot: start → first telemetry (DPS) | s | 1 | 4 | 0.25 |" in table


def test_budget_uses_the_worst_run() -> None:
    runs = [{"rss_mib": 25.0, "threads": 1}, {"rss_mib": 31.0, "threads": 3}]
    check = budget({"boot": {"agent": runs}})
    assert check is not None
    assert check["rss_mib_max"] == 31.0
    assert (check["rss_ok"], check["threads_ok"]) == (False, True)
    assert budget({}) is None


def test_memory_attribution_adds_up_to_the_steady_rss() -> None:
    notes = [
        ("(interpreter)", 9000),
        ("agent.cli", 9100),
        ("json", 9600),
        ("agent.config", 9700),
        ("_ssl", 10_000),
        ("paho.mqtt.client", 14_000),
        ("paho.mqtt.enums", 15_000),
    ]
    attributed = attribute(notes, steady_kib=17_048)
    rows = {group: mib for group, mib, _ in attributed}
    counts = {group: count for group, _, count in attributed}
    assert counts[group_of("(interpreter)")] == 0
    assert counts[group_of("agent.cli")] == 2
    assert counts["paho"] == 2
    assert sum(rows.values()) == pytest.approx(17_048 / 1024)
    assert rows[group_of("agent.cli")] == pytest.approx((500 + 300) / 1024)
    assert rows[group_of("(interpreter)")] == pytest.approx(9100 / 1024)
    assert rows["json"] == pytest.approx(100 / 1024)
    assert rows[group_of("_ssl")] == pytest.approx(4000 / 1024)
    assert rows["paho"] == pytest.approx(1000 / 1024)
    assert rows[RUNNING] == pytest.approx(2048 / 1024)
    assert group_of("hashlib") == group_of("_ssl")


def test_small_memory_rows_are_folded_but_running_stays() -> None:
    rows = [("agent (project)", 5.0, 10), ("json", 0.1, 4), ("ast", 0.2, 1), (RUNNING, 0.1, 0)]
    folded = fold_small(rows, 0.25)
    assert folded[0] == ("agent (project)", 5.0, 10)
    assert (RUNNING, 0.1, 0) in folded
    assert folded[-1][0] == "2 more (each < 0.25 MiB)"
    assert folded[-1][1] == pytest.approx(0.3)
    assert folded[-1][2] == 5
    assert fold_small(rows, 0.0) == rows


def _goal_results() -> dict[str, Any]:
    boot = {
        "agent": [
            {"cold_boot_s": 1.5, "cold_boot_dps_wait_s": 1.0, "warm_boot_s": 0.2,
             "reprovision_s": 1.1, "rss_mib": 20.0, "threads": 1}
        ],
        "sdk": [
            {"cold_boot_s": 2.6, "cold_boot_dps_wait_s": 2.0, "warm_boot_s": 0.3,
             "reprovision_s": 2.1, "rss_mib": 34.0, "threads": 7}
        ],
    }  # fmt: skip
    return {
        "settings": {"fleet_size": 10, "storm_registrations_per_second": 5.0},
        "floor": {"1": {"median_s": 0.1}, "2": {"median_s": 0.15}},
        "boot": boot,
        "idle": {"agent": [{"wakeups_per_s": 0.05, "cpu_s_per_min": 0.01}],
                 "sdk": [{"wakeups_per_s": 3.0, "cpu_s_per_min": 0.03}]},
        "storm": {
            "agent": {"first_boot": {"devices": 10, "connected": 10, "all_connected_s": 2.3,
                                     "dps_requests": 15, "dps_throttled": 5},
                      "warm_restart": {"devices": 10, "connected": 10, "all_connected_s": 0.9,
                                       "dps_requests": 0, "dps_throttled": 0}},
            "sdk": {"first_boot": {"devices": 10, "connected": 9, "all_connected_s": None,
                                   "dps_requests": 15, "dps_throttled": 5}},
        },
    }  # fmt: skip


def test_overheads_subtract_the_floor_and_the_dps_waits() -> None:
    rows = {row["metric"]: row for row in summarize(_goal_results())}
    cold = rows["cold boot: client overhead"]
    assert cold["agent"] == pytest.approx(1.5 - 0.15 - 1.0)
    assert cold["sdk"] == pytest.approx(2.6 - 0.15 - 2.0)
    assert rows["warm boot: client overhead"]["agent"] == pytest.approx(0.1)


def test_every_goal_is_measured_against_its_target() -> None:
    found = {goal["goal"]: goal for goal in goals(_goal_results())}
    warm = found["warm boot ≤ 1.5 x floor"]
    assert (warm["measured"], warm["limit"], warm["met"]) == (0.2, pytest.approx(0.15), False)
    assert found["warm boot ≤ 0.5 x SDK"]["met"] is False  # 0.2 > 0.15
    # Every goal not met says why; a met one carries no reason.
    assert "frozen dataclasses" in warm["reason"]
    assert all(goal["reason"] for goal in found.values() if goal["met"] is False)
    assert found["reprovision ≤ 1 s beyond the minimum backoff"]["reason"] == ""
    overhead = found["cold-boot client overhead ≤ 0.5 x SDK's"]
    assert overhead["met"] is False  # 0.35 > 0.5 * 0.45
    assert found["reprovision ≤ 1 s beyond the minimum backoff"]["met"] is True
    assert found["idle wakeups ≤ 0.1/s"]["met"] is True
    assert found["idle CPU ≤ 0.5 x SDK"]["met"] is True
    assert found["RSS ≤ 0.65 x SDK"]["met"] is True
    assert found["threads ≤ 3"]["met"] is True
    assert found["CPU per 1,000 messages ≤ 0.5 x SDK"]["met"] is None  # not run
    requests = found["storm first boot: DPS requests per device ≤ 1.1"]
    assert (requests["measured"], requests["met"]) == (1.5, False)
    assert "admitted (non-429) requests per device: 1.00" in requests["reason"]
    assert found["storm first boot: 0 stuck"]["met"] is True
    assert found["storm first boot: all connected ≤ 1.2 x N/R"]["limit"] == pytest.approx(2.4)
    assert found["storm first boot: all connected ≤ 1.2 x N/R"]["met"] is True
    assert found["storm first boot: no slower than the SDK"]["met"] is None  # SDK stuck
    # The reboot storm proper: provisioned devices restart from their cached hubs.
    warm_requests = found["storm warm restart: DPS requests per device ≤ 1.1"]
    assert (warm_requests["measured"], warm_requests["met"]) == (0.0, True)
    assert found["storm warm restart: all connected ≤ 1.2 x N/R"]["met"] is True
    assert "storm wiped restart: 0 stuck" not in found  # that phase was not run


def test_derived_rates() -> None:
    run = Idle(duration_s=600.0, cpu_s=1.2, context_switches=60, threads=1)
    assert run.wakeups_per_s == pytest.approx(0.1)
    assert run.cpu_s_per_min == pytest.approx(0.12)
    assert CpuPerMessages(500, 1.0, 5.0).cpu_s_per_1000 == pytest.approx(2.0)
    assert LargeBacklog(100, 101, 2.0, 0.5, 0).messages_per_s == pytest.approx(50.0)
    assert LargeBacklog(100, 1, None, None, 0).messages_per_s is None


def test_cpu_status_of_a_live_process_counts_its_threads() -> None:
    ready = threading.Event()
    done = threading.Event()

    def idle_thread() -> None:
        ready.set()
        done.wait(10)

    thread = threading.Thread(target=idle_thread)
    thread.start()
    try:
        ready.wait(10)
        status = cpu_status(os.getpid())
    finally:
        done.set()
        thread.join(10)
    assert status.threads >= 2
    assert status.cpu_s > 0
    assert status.context_switches > 0


def test_chart_is_a_png_with_a_panel_per_latency(tmp_path: Path) -> None:
    results = _goal_results()
    results["storm"]["agent"]["first_boot"]["connected_s"] = [0.5, 1.0, 2.3]
    out = tmp_path / "latency.png"
    said = write_chart(results, out)
    assert said == f"chart written: {out}"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_chart({}, tmp_path / "none.png") == "chart skipped: no latency measured"
    assert not (tmp_path / "none.png").exists()
