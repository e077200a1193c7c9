"""The harness's pure parts: DPS request accounting, medians and ratios, memory attribution."""

from __future__ import annotations

import pytest

from bench.cloud import DpsLog, RegisterRequest
from bench.memory import RUNNING, attribute, fold_small, group_of
from bench.report import budget, markdown, median, summarize, total


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
