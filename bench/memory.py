"""Where a running device-agent's memory goes: RSS growth attributed to what was imported.

Usage: ``python bench/memory.py [--messages N] [--markdown] [--min-mib M]``.

Theory of operation
-------------------
The real ``device-agent run`` (``python -m agent``, mock HAL) runs against a devcloud on
loopback (:func:`bench.cloud.bench_cloud`) inside a small wrapper that adds an audit hook
before anything else: at every ``import`` audit event (raised when a module is about to be
found and loaded, not for modules already loaded) it notes the module name and the
process's ``VmRSS``. When the agent has delivered ``--messages`` messages, the harness reads
the steady ``VmRSS`` from ``/proc``, stops the agent with SIGTERM, and the wrapper writes
its notes at exit. The RSS growth between two import events is charged to the group of the
first one (its top-level package: ``agent``, ``paho``, ``hal``, or the standard-library
module), and the growth after the last import to "running". Shared libraries count where
they are first mapped (OpenSSL with ``_hashlib`` or ``_ssl``). Modules loaded before the
hook (``site``, ``encodings``, an editable-install finder) are part of the interpreter
row, and work done between two imports at run time (a TLS context, a connection) is
charged to the import before it: the rows say what was being loaded or run when the
memory arrived, not who owns it. This measures the process the agent really is, whatever
it imports or defers.
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: Runs ``python -m agent`` with an import-event recorder; argv[1] is the output file.
WRAPPER = """
import sys
def _rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
_notes = [["(interpreter)", _rss()]]
def _hook(event, args):
    if event == "import":
        _notes.append([str(args[0]), _rss()])
sys.addaudithook(_hook)
import atexit, json, runpy
_out = sys.argv[1]
atexit.register(lambda: open(_out, "w").write(json.dumps(_notes)))
sys.argv = ["device-agent", *sys.argv[2:]]
runpy.run_module("agent", run_name="__main__", alter_sys=True)
"""
PROJECT_PACKAGES = ("agent", "hal", "devcloud")


def group_of(module: str) -> str:
    """The row a module's RSS growth is charged to."""
    top = module.split(".", maxsplit=1)[0]
    if top == "(interpreter)":
        return "Python interpreter (before the first import)"
    if top in PROJECT_PACKAGES:
        return f"{top} (project)"
    if top.lstrip("_") in {"ssl", "hashlib"}:
        return "ssl, hashlib (OpenSSL)"
    return top


RUNNING = "running (after the last import: TLS, connection, buffers)"


def attribute(notes: Sequence[tuple[str, int]], steady_kib: int) -> list[tuple[str, float, int]]:
    """(group, MiB, modules) rows, largest first, from import notes and the steady RSS."""
    sizes: dict[str, int] = defaultdict(int)
    modules: dict[str, set[str]] = defaultdict(set)
    first_name, first_rss = notes[0]
    sizes[group_of(first_name)] = first_rss
    for (name, rss), (_, next_rss) in itertools.pairwise(notes):
        group = group_of(name)
        sizes[group] += next_rss - rss
        if name != first_name:
            modules[group].add(name)
    sizes[RUNNING] = steady_kib - notes[-1][1]
    modules[group_of(notes[-1][0])].add(notes[-1][0])
    rows = [(group, kib / 1024, len(modules[group])) for group, kib in sizes.items()]
    return sorted(rows, key=lambda row: -row[1])


def fold_small(
    rows: Sequence[tuple[str, float, int]], min_mib: float
) -> list[tuple[str, float, int]]:
    """Rows below ``min_mib`` (except "running") folded into one "everything else" row."""
    kept = [row for row in rows if row[1] >= min_mib or row[0] == RUNNING]
    small = [row for row in rows if row not in kept]
    if small:
        kept.append(
            (
                f"{len(small)} more (each < {min_mib:g} MiB)",
                sum(row[1] for row in small),
                sum(row[2] for row in small),
            )
        )
    return kept


def measure(messages: int) -> dict[str, Any]:
    """Run the agent until ``messages`` were delivered; its notes and steady status."""
    import subprocess

    from bench.cloud import bench_cloud
    from bench.devices import AgentLauncher, DeviceSpec, proc_status
    from bench.settings import FULL

    with tempfile.TemporaryDirectory(prefix="device-agent-memory-") as tmp:
        folder = Path(tmp)
        with bench_cloud(folder / "devcloud") as cloud:
            spec = DeviceSpec("memory-1", cloud.handle.pki.issue_device("memory-1"), folder / "d")
            spec.folder.mkdir()
            config = AgentLauncher(cloud, FULL, Path(sys.executable)).write_config(spec)
            notes_path = folder / "notes.json"
            since = cloud.client.last_sequence_number()
            argv = [sys.executable, "-c", WRAPPER, str(notes_path), "--config", str(config), "run"]
            with (folder / "agent.log").open("w") as log:
                process = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=log)
                try:
                    got = cloud.messages([spec.name], since=since, count=messages, timeout_s=60)
                    if len(got[spec.name]) < messages:
                        raise RuntimeError(f"the agent delivered {len(got[spec.name])} messages")
                    status = proc_status(process.pid)
                finally:
                    process.terminate()
                    code = process.wait(15)
            notes = [(str(n), int(r)) for n, r in json.loads(notes_path.read_text())]
    return {"notes": notes, "rss_kib": status.rss_kib, "threads": status.threads, "exit": code}


def main(argv: Sequence[str] | None = None) -> int:
    """Print the breakdown (plain, or Markdown with ``--markdown``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="bench/memory.py", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20, help="delivered before reading RSS")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--min-mib", type=float, default=0.25, help="fold smaller rows")
    args = parser.parse_args(argv)
    result = measure(args.messages)
    rows = fold_small(attribute(result["notes"], result["rss_kib"]), args.min_mib)
    total = result["rss_kib"] / 1024
    modules = len({name for name, _ in result["notes"]}) - 1
    if args.markdown:
        print("| loaded with | MiB | modules |\n|---|---:|---:|")
        for group, mib, count in rows:
            print(f"| {group} | {mib:.1f} | {count} |")
        print(
            f"| **total VmRSS** ({result['threads']} threads, {modules} modules) | "
            f"**{total:.1f}** | |"
        )
    else:
        for group, mib, count in rows:
            print(f"{group:60s} {mib:5.1f} MiB {count:4d} modules")
        print(
            f"{'total VmRSS':60s} {total:5.1f} MiB, {result['threads']} threads, "
            f"{modules} modules, exit {result['exit']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
