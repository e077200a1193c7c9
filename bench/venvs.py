"""The interpreters under test, both with compiled bytecode: a fair comparison.

Theory of operation
-------------------
These machines set ``PYTHONDONTWRITEBYTECODE=1``. The project's own ``.venv`` holds an
*editable* install, whose modules are compiled again at every start, while the SDK's
venv was pip-installed and ships compiled bytecode: a start-up race between the two
would then measure the compiler. So the benchmarks run the agent the way a device has
it, installed:

* :func:`agent_venv` builds a virtualenv with the project installed *non-editable*
  (``pip install`` of a copy of the sources: pip compiles every module it installs,
  whatever ``PYTHONDONTWRITEBYTECODE`` says). It is cached under the project's cache
  (:func:`tests.support.refsdk.cache_root`) keyed on a hash of the sources and the
  Python version, built once (under a lock, in a temporary folder renamed into place),
  and rebuilt when the code changes (the two newest older copies are kept, since another
  run may still be using one). The SDK program imports the project's HAL too (the
  mock sensors); it gets the installed, compiled copy through :func:`hal_root`.
* :func:`bytecode_coverage` starts an interpreter, imports what a client imports and
  counts the loaded source modules that have a valid cached ``.pyc`` next to them; the
  results record it for both clients, so the claim "both compiled" is measured, not
  assumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: What goes into the installed copy (and into its cache key).
SOURCES = ("agent", "hal", "devcloud", "pyproject.toml", "README.md")
INSTALL_TIMEOUT_S = 600.0
#: Older installed copies kept besides the one being built.
KEEP_COPIES = 2
_MARKER = ".complete"

#: Imported by :func:`bytecode_coverage` for each client (what its device program loads).
AGENT_MODULES = (
    "agent.cli.main",
    "agent.runtime.daemon",
    "agent.runtime.transport",
    "hal",
    "paho.mqtt.client",
)
SDK_MODULES = ("azure.iot.device", "paho.mqtt.client", "hal")

_COVERAGE = """
import importlib, importlib.util, json, os, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
total = compiled = 0
missing = []
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None) or ""
    if not path.endswith(".py"):
        continue
    total += 1
    cached = importlib.util.cache_from_source(path)
    if os.path.exists(cached) and os.path.getmtime(cached) >= os.path.getmtime(path) - 1:
        compiled += 1
    else:
        missing.append(module.__name__)
print(json.dumps({"modules": total, "compiled": compiled, "missing": sorted(missing)[:10]}))
"""


def _source_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for name in SOURCES:
        path = root / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            )
    return files


def source_key(root: Path = ROOT) -> str:
    """Hash of the installed sources and the Python version."""
    digest = hashlib.sha256(f"{sys.version}\n".encode())
    for path in _source_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _run(argv: Sequence[str], timeout_s: float) -> None:
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-2000:]}\n"
            f"{done.stderr[-4000:]}"
        )


def agent_venv(root: Path = ROOT, cache: Path | None = None) -> Path:
    """``bin/python`` of a venv with the project at ``root`` installed, compiled; cached."""
    from tests.support.refsdk import _exclusive, cache_root

    base = cache if cache is not None else cache_root()
    key = source_key(root)
    final = base / f"bench-agent-{key}"
    python = final / "bin" / "python"
    if (final / _MARKER).is_file():
        return python
    base.mkdir(parents=True, exist_ok=True)
    with _exclusive(base / "bench-agent.lock", INSTALL_TIMEOUT_S):
        if (final / _MARKER).is_file():
            return python
        # Keep the two newest other copies (a run may still be using one), drop the rest.
        others = sorted(
            (p for p in base.glob("bench-agent-*") if p.is_dir()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in others[KEEP_COPIES:]:
            shutil.rmtree(old, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".bench-agent.tmp-", dir=base))
        try:
            copy = staging / "src"
            copy.mkdir()
            for name in SOURCES:
                source = root / name
                if source.is_dir():
                    shutil.copytree(
                        source, copy / name, ignore=shutil.ignore_patterns("__pycache__")
                    )
                elif source.is_file():
                    shutil.copy2(source, copy / name)
            venv = staging / "venv"
            _run([sys.executable, "-m", "venv", str(venv)], 120)
            _run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-input", "-q",
                 str(copy)],
                INSTALL_TIMEOUT_S,
            )  # fmt: skip
            shutil.rmtree(copy)
            (venv / _MARKER).write_text(key + "\n")
            os.rename(venv, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return python


def site_packages(python: Path) -> Path:
    """The venv's site-packages folder."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return python.parent.parent / "lib" / version / "site-packages"


def hal_root(python: Path) -> Path:
    """A folder holding only the venv's installed (compiled) ``hal`` package, for sys.path."""
    folder = python.parent.parent / "hal-root"
    link = folder / "hal"
    if not link.exists():
        folder.mkdir(exist_ok=True)
        link.symlink_to(site_packages(python) / "hal", target_is_directory=True)
    return folder


def bytecode_coverage(
    python: Path, modules: Sequence[str], extra_path: Path | None = None
) -> dict[str, Any]:
    """How many source modules ``python`` loads for ``modules`` have valid bytecode."""
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    done = subprocess.run(
        [str(python), "-c", _COVERAGE, *modules],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tempfile.gettempdir(),  # not the project folder: no source tree shadowing
        env=env,
    )
    if done.returncode != 0:
        return {"error": done.stderr[-500:]}
    result: dict[str, Any] = json.loads(done.stdout)
    return result
