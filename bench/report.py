"""Results: medians, agent/SDK ratios, the agent's budget, and the Markdown table.

The results document (``results.json``) holds every run's raw numbers under
``boot``, ``backlog`` and ``storm`` (per client), and :func:`summarize` adds the
``summary`` rows the table is made of: one metric, its unit, the agent's and the
SDK's value (a median over the runs, or a total for counts that must be zero) and
the ratio agent/SDK.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

CLIENTS = ("agent", "sdk")
#: The agent's resource budget on x86-64 with the mock HAL.
RSS_BUDGET_MIB = 30.0
THREADS_BUDGET = 3

Row = dict[str, Any]
Runs = Sequence[Mapping[str, Any]]


def median(values: Sequence[float | int | None]) -> float | None:
    """The median of the values that are not None (None if there are none)."""
    present = [float(v) for v in values if v is not None]
    return statistics.median(present) if present else None


def total(values: Sequence[float | int | None]) -> float | None:
    """The sum of the values that are not None (None if there are none)."""
    present = [float(v) for v in values if v is not None]
    return sum(present) if present else None


def _ratio(agent: float | None, sdk: float | None) -> float | None:
    if agent is None or sdk is None or sdk == 0:
        return None
    return agent / sdk


def _row(
    results: Mapping[str, Any],
    section: str,
    field: str,
    metric: str,
    unit: str,
    *,
    reduce: Callable[[Sequence[float | int | None]], float | None] = median,
) -> Row | None:
    per_client = results.get(section, {})
    values: dict[str, float | None] = {}
    for client in CLIENTS:
        runs: Runs = per_client.get(client, [])
        values[client] = reduce([run.get(field) for run in runs]) if runs else None
    if all(v is None for v in values.values()):
        return None
    return {
        "metric": metric,
        "unit": unit,
        "agent": values["agent"],
        "sdk": values["sdk"],
        "ratio": _ratio(values["agent"], values["sdk"]),
        "reduce": reduce.__name__,
    }


def _storm_row(results: Mapping[str, Any], phase: str, field: str, metric: str, unit: str) -> Row:
    storm = results.get("storm", {})
    values = {c: storm.get(c, {}).get(phase, {}).get(field) for c in CLIENTS}
    return {
        "metric": metric,
        "unit": unit,
        "agent": values["agent"],
        "sdk": values["sdk"],
        "ratio": _ratio(values["agent"], values["sdk"]),
        "reduce": "one run",
    }


def summarize(results: Mapping[str, Any]) -> list[Row]:
    """The table rows for whatever sections ``results`` holds."""
    rows: list[Row | None] = [
        _row(results, "boot", "cold_boot_s", "cold boot: start → first telemetry (DPS)", "s"),
        _row(results, "boot", "cold_boot_dps_requests", "cold boot: DPS register requests", ""),
        _row(results, "boot", "warm_boot_s", "warm boot: start → first telemetry", "s"),
        _row(
            results,
            "boot",
            "warm_boot_dps_requests",
            "warm boot: DPS register requests (all runs)",
            "",
            reduce=total,
        ),
        _row(results, "boot", "reprovision_s", "reprovision: method → telemetry from new hub", "s"),
        _row(results, "boot", "rss_mib", "steady state: RSS (VmRSS)", "MiB"),
        _row(results, "boot", "threads", "steady state: threads", ""),
        _row(
            results, "backlog", "sampled_during_outage", "backlog: sampled while hub away", "msgs"
        ),
        _row(results, "backlog", "reconnect_s", "backlog: hub back → first delivery", "s"),
        _row(results, "backlog", "drain_s", "backlog: hub back → backlog delivered", "s"),
        _row(results, "backlog", "lost", "backlog: lost messages (all runs)", "msgs", reduce=total),
        _row(
            results, "backlog", "duplicates", "backlog: duplicates (all runs)", "msgs", reduce=total
        ),
    ]
    for phase, label in (
        ("first_boot", "storm, first boot"),
        ("warm_restart", "storm, warm restart"),
        ("wiped_restart", "storm, restart with wiped state"),
    ):
        if not any(phase in results.get("storm", {}).get(c, {}) for c in CLIENTS):
            continue
        rows.append(_storm_row(results, phase, "all_connected_s", f"{label}: all connected", "s"))
        rows.append(_storm_row(results, phase, "dps_requests", f"{label}: DPS requests", ""))
        rows.append(_storm_row(results, phase, "dps_throttled", f"{label}: DPS 429s", ""))
        rows.append(
            _storm_row(
                results, phase, "ignored_retry_after", f"{label}: retries before retry-after", ""
            )
        )
    return [row for row in rows if row is not None]


def budget(results: Mapping[str, Any]) -> dict[str, Any] | None:
    """The agent's RSS and threads against its budget (None without boot runs)."""
    runs: Runs = results.get("boot", {}).get("agent", [])
    if not runs:
        return None
    rss = max(float(run["rss_mib"]) for run in runs)
    threads = max(int(run["threads"]) for run in runs)
    return {
        "rss_mib_max": rss,
        "rss_budget_mib": RSS_BUDGET_MIB,
        "threads_max": threads,
        "threads_budget": THREADS_BUDGET,
        "rss_ok": rss < RSS_BUDGET_MIB,
        "threads_ok": threads <= THREADS_BUDGET,
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == int(value) and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown(results: Mapping[str, Any]) -> str:
    """The results table (with the machine and settings) as Markdown."""
    meta = results.get("meta", {})
    settings = results.get("settings", {})
    lines = [
        f"# device-agent vs azure-iot-device {meta.get('sdk_version', '?')} on devcloud",
        "",
        f"- date: {meta.get('date', '?')}",
        f"- machine: {meta.get('machine', '?')}",
        f"- code: {meta.get('code', '?')}; python: {meta.get('python', '?')};"
        f" mode: {meta.get('mode', '?')};"
        f" duration: {_fmt(meta.get('duration_s'))} s",
        f"- runs: {settings.get('repetitions')} boot cycles and "
        f"{settings.get('backlog_repetitions')} backlog runs per client (medians);"
        f" storm of {settings.get('fleet_size')} devices per client at "
        f"{settings.get('storm_registrations_per_second')} DPS registrations/s;"
        f" telemetry every {settings.get('interval_s')} s",
        "",
        "| metric | unit | agent | SDK | agent/SDK |",
        "|---|---|---:|---:|---:|",
    ]
    for row in results.get("summary", []):
        ratio = row.get("ratio")
        lines.append(
            f"| {row['metric']} | {row['unit']} | {_fmt(row['agent'])} | {_fmt(row['sdk'])} "
            f"| {'-' if ratio is None else f'{ratio:.2f}'} |"
        )
    check = results.get("budget")
    if check:
        verdict = "within" if check["rss_ok"] and check["threads_ok"] else "OVER"
        lines += [
            "",
            f"Agent budget (RSS < {_fmt(check['rss_budget_mib'])} MiB, ≤ "
            f"{check['threads_budget']} threads): {verdict} — max RSS "
            f"{check['rss_mib_max']:.1f} MiB, max {check['threads_max']} threads.",
        ]
    notes = results.get("notes", [])
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"
