"""The layer contracts (import-linter, ``[tool.importlinter]`` in pyproject.toml) bite.

``lint-imports`` runs in ``make lint``; these tests prove that it is not vacuous: over a
copy of the tree it passes, and the same copy with one ``import socket`` in
``agent/core`` fails, naming the broken contract and the import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` over ``tree`` (its packages shadow the installed ones)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of ``agent/`` beside links to the other root packages and the config."""
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "agent", tmp_path / "agent", ignore=skip)
    for name in ("hal", "devcloud", "bench"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_hold_for_the_tree_as_it_is(tree: Path) -> None:
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_socket_import_in_the_core_breaks_a_contract(tree: Path) -> None:
    backoff = tree / "agent" / "core" / "backoff.py"
    backoff.write_text(backoff.read_text() + "\nimport socket  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0, result.stdout
    assert "agent.core is sans-I/O BROKEN" in result.stdout
    assert "agent.core.backoff -> socket" in result.stdout


def test_a_runtime_import_in_the_store_breaks_the_layers(tree: Path) -> None:
    files = tree / "agent" / "store" / "files.py"
    files.write_text(files.read_text() + "\nimport agent.runtime.loop  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0, result.stdout
    assert "agent layers: cli -> runtime -> identity -> store -> core BROKEN" in result.stdout
