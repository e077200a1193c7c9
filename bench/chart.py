"""The latency chart: distributions of every boot time and storm connect time, per client.

:func:`write_chart` draws one panel per measured latency (cold boot, warm boot,
reprovision, the storm phases' start -> first telemetry per device), each with a box
per client and every run as a dot, the floors as dashed lines on the boot panels, and
saves a PNG. It needs matplotlib (the ``bench`` extra, which ``make bench`` installs);
without it the chart is skipped and the reason returned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.report import CLIENTS

COLOURS = {"agent": "#1f77b4", "sdk": "#ff7f0e"}


def _panels(results: Mapping[str, Any]) -> list[tuple[str, dict[str, list[float]], float | None]]:
    floor = results.get("floor", {})
    floor1 = floor.get("1", {}).get("median_s")
    floor2 = floor.get("2", {}).get("median_s")
    panels: list[tuple[str, dict[str, list[float]], float | None]] = []
    boot = results.get("boot", {})
    for field, title, line in (
        ("cold_boot_s", "cold boot → first telemetry", floor2),
        ("warm_boot_s", "warm boot → first telemetry", floor1),
        ("reprovision_s", "reprovision → telemetry from new hub", None),
    ):
        values = {c: [float(r[field]) for r in boot.get(c, [])] for c in CLIENTS}
        if any(values.values()):
            panels.append((title, values, line))
    storm = results.get("storm", {})
    for phase, title in (
        ("first_boot", "storm, first boot"),
        ("warm_restart", "storm, warm restart"),
        ("wiped_restart", "storm, wiped state"),
    ):
        values = {
            c: [float(t) for t in storm.get(c, {}).get(phase, {}).get("connected_s", [])]
            for c in CLIENTS
        }
        if any(values.values()):
            panels.append((f"{title}: each device", values, None))
    return panels


def write_chart(results: Mapping[str, Any], path: Path) -> str:
    """Draw the chart to ``path``; return what was written (or why nothing was)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install '.[bench]')"
    panels = _panels(results)
    if not panels:
        return "chart skipped: no latency measured"
    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    flat: Sequence[Any] = [ax for row in axes for ax in row]
    for ax, (title, values, line) in zip(flat, panels, strict=False):
        clients = [c for c in CLIENTS if values.get(c)]
        data = [values[c] for c in clients]
        box = ax.boxplot(data, patch_artist=True, widths=0.5, showfliers=False)
        ax.set_xticks(range(1, len(clients) + 1), labels=clients)
        for patch, client in zip(box["boxes"], clients, strict=True):
            patch.set_facecolor(COLOURS[client])
            patch.set_alpha(0.35)
        for n, (client, points) in enumerate(zip(clients, data, strict=True), start=1):
            spread = [n + ((i % 7) - 3) * 0.03 for i in range(len(points))]
            ax.scatter(spread, points, s=8, color=COLOURS[client], zorder=3)
        if line is not None:
            ax.axhline(line, color="grey", linestyle="--", linewidth=1, label="floor")
            ax.legend(loc="upper left", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("s")
        ax.set_ylim(bottom=0)
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    meta = results.get("meta", {})
    figure.suptitle(
        f"device-agent vs azure-iot-device {meta.get('sdk_version', '')} "
        f"({meta.get('code', '?')}, {meta.get('date', '?')})",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"chart written: {path}"
