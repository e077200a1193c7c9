"""Where device-agent's memory goes: RSS after each import step, in the daemon's start order.

Usage: ``python bench/memory.py [--markdown]`` (run with the project's interpreter).

Each step imports a group of modules into this fresh process and reads ``VmRSS`` from
``/proc/self/status``; the difference to the previous step is what that group costs.
Shared libraries (OpenSSL's libcrypto and libssl, cryptography's Rust extension) count
where they are first loaded. What a running agent adds on top (TLS contexts, a
connection, buffers) is the rest of the steady-state RSS that ``bench/run.py`` reports.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: (label, modules) in the order ``device-agent run`` loads them.
STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Python interpreter (site, editable-install finder)", ()),
    ("argparse, tomllib, dataclasses, logging", ("argparse", "tomllib", "dataclasses", "logging")),
    ("hashlib (loads OpenSSL libcrypto)", ("hashlib",)),
    ("agent.cli + agent.config + hal.cli", ("agent.cli", "hal.cli")),
    ("ssl (libssl)", ("ssl",)),
    (
        "cryptography (x509, serialization; Rust extension)",
        ("cryptography.x509", "cryptography.hazmat.primitives.serialization"),
    ),
    ("agent.keystore", ("agent.keystore",)),
    ("paho.mqtt.client", ("paho.mqtt.client",)),
    ("agent.transport", ("agent.transport",)),
    ("agent.daemon (lifecycle, session, telemetry, state...)", ("agent.daemon",)),
    ("hal mock backend, drivers, simulated chips", ("hal.backend", "hal.discovery")),
)


def rss_mib() -> float:
    """This process's VmRSS in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure() -> list[tuple[str, float, float, int]]:
    """(label, RSS after, delta, modules added) for each step."""
    rows = []
    previous = rss_mib()
    for label, modules in STEPS:
        before = len(sys.modules)
        for module in modules:
            importlib.import_module(module)
        now = rss_mib()
        rows.append((label, now, now - previous, len(sys.modules) - before))
        previous = now
    return rows


def main() -> int:
    """Print the breakdown (plain, or Markdown with ``--markdown``)."""
    rows = measure()  # first: parsing arguments would import argparse before the baseline
    if sys.argv[1:] not in ([], ["--markdown"]):
        print("usage: python bench/memory.py [--markdown]", file=sys.stderr)
        return 64
    if sys.argv[1:] == ["--markdown"]:
        print("| step | RSS after (MiB) | added (MiB) | modules |\n|---|---:|---:|---:|")
        for label, now, delta, count in rows:
            print(f"| {label} | {now:.1f} | {delta:+.1f} | {count} |")
    else:
        for label, now, delta, count in rows:
            print(f"{label:58s} {now:6.1f} MiB {delta:+5.1f} MiB {count:4d} modules")
    print(f"\n{len(sys.modules)} modules loaded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
