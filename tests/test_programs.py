"""Every external program the suite and the Makefile run is installed by ``make test``.

The programs are found in the code (argv[0] of the argument lists the tests, the demo
and the benchmarks pass to :mod:`subprocess`, ``shutil.which``/``tool`` look-ups, the
Makefile's recipes); each must have a line in :data:`tests.support.programs.PROGRAMS`,
whose package must be in the Makefile's ``SYSTEM_PACKAGES``, the minbase system or the
README's prerequisites (issue #13: ``ip`` was called but never installed).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.programs import (
    BASE_PACKAGES,
    OTHER_OWNERS,
    PREREQUISITES,
    PROGRAMS,
    PULLED_IN,
)

ROOT = Path(__file__).resolve().parents[1]
#: Where the code that ``make test`` and ``make demo`` run lives (the agent itself runs
#: only ``sys.executable``).
SCANNED = ("tests", "deploy", "bench")
_ARGV0 = (
    # subprocess.run([PROGRAM, ...]) and friends
    re.compile(r"(?:run|Popen|check_output|check_call|call)\(\s*\[\s*\"([^\"]+)\""),
    # an argument list of its own, a program and an option (not a CLI's own main([...]))
    re.compile(r"(?<!main\()\[\s*\"([a-z][\w.+-]*)\",\s*\"-"),
    # shutil.which(PROGRAM), tool(PROGRAM)
    re.compile(r"\b(?:which|tool)\(\s*\"([^\"]+)\""),
)
#: Makefile variables that name programs (the venv's own tools come from pyproject extras).
_MAKE_VARIABLES = {"$(APT)": "apt-get", "$(PYTHON)": "python3", "$(PY)": "python3"}
_SHELL_WORDS = {"if", "then", "else", "elif", "fi", "for", "in", "do", "done", "exit", "cd"}


def programs_in_code() -> dict[str, str]:
    """Program -> the first file that runs it."""
    found: dict[str, str] = {}
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            text = path.read_text()
            for pattern in _ARGV0:
                for name in pattern.findall(text):
                    found.setdefault(name, str(path.relative_to(ROOT)))
    return found


def programs_in_makefile() -> set[str]:
    """The first word of every command in the Makefile's recipes."""
    found: set[str] = set()
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    for recipe_line in text.splitlines():
        if not recipe_line.startswith("\t"):
            continue
        line = recipe_line
        for variable, program in _MAKE_VARIABLES.items():
            line = line.replace(variable, program)
        line = re.sub(r"\$\(VENV\)/bin/\S+", "$venv-tool", line)
        line = re.sub(r"\$\([A-Z_]+\)", "$var", line)  # other make variables
        line = re.sub(r"echo\s+(\"[^\"]*\"|'[^']*')", "echo", line)  # messages, not commands
        for command in re.split(r";|&&|\|\||\||\$\$\(|[{}()]|\b(?:then|do|else)\b", line):
            words = command.strip().lstrip("@-").split()
            if not words:
                continue
            word = words[0]
            if not re.fullmatch(r"[a-z][\w.+-]*", word) or word in _SHELL_WORDS:
                continue
            found.add(word)
    return found


def system_packages() -> set[str]:
    """The Makefile's ``SYSTEM_PACKAGES`` (every ``:=`` and ``+=`` line)."""
    packages: set[str] = set()
    for match in re.finditer(
        r"^SYSTEM_PACKAGES\s*[:+]?=(.*)$", (ROOT / "Makefile").read_text(), re.M
    ):
        # "$(if $(shell command -v PROG),,PACKAGE)": PACKAGE where PROG is missing.
        words = re.sub(r"\$\(if \$\(shell command -v \S+\),,(\S+)\)", r"\1", match.group(1))
        packages.update(words.split("#")[0].split())
    return packages


def test_the_scanners_see_what_is_known_to_be_there() -> None:
    """The scan is not vacuous: programs we know the code runs are found."""
    code = programs_in_code()
    assert {"unshare", "git", "bash", "systemd-analyze"} <= set(code), code
    assert {"apt-get", "dpkg-query", "grep", "python3"} <= programs_in_makefile()
    assert {"systemd", "openssl", "python3-venv"} <= system_packages()


def test_every_program_run_is_in_the_table() -> None:
    found = {**programs_in_code(), **dict.fromkeys(programs_in_makefile(), "Makefile")}
    missing = {name: where for name, where in found.items() if name not in PROGRAMS}
    assert missing == {}, "add these to tests/support/programs.py (and the Makefile)"


def test_every_package_in_the_table_is_installed_by_make_test() -> None:
    installed = system_packages() | BASE_PACKAGES | PREREQUISITES
    missing = {
        program: package
        for program, package in PROGRAMS.items()
        if package not in installed and PULLED_IN.get(package) not in installed
    }
    assert missing == {}, "add these packages to the Makefile's SYSTEM_PACKAGES"


def test_the_table_names_the_package_that_really_ships_each_program() -> None:
    if shutil.which("dpkg") is None:
        pytest.skip("not a Debian system: dpkg is not installed, no package database to ask")
    here = [program for program in PROGRAMS if shutil.which(program) is not None]
    paths = [f"{folder}/{p}" for p in here for folder in ("/usr/bin", "/bin", "/usr/sbin", "/sbin")]
    # One query for all (it exits 1 because some of the candidate paths are nobody's).
    result = subprocess.run(
        ["dpkg", "-S", *paths], capture_output=True, text=True, timeout=60, check=False
    )
    owners: dict[str, set[str]] = {}
    for line in result.stdout.splitlines():
        packages, _, path = line.partition(": ")
        for package in packages.split(","):
            owners.setdefault(Path(path).name, set()).add(package.strip().split(":")[0])
    wrong = {p: (PROGRAMS[p], sorted(owners.get(p, ()))) for p in here}
    wrong = {
        p: found
        for p, found in wrong.items()
        if found[0] not in found[1] and not OTHER_OWNERS.get(p, frozenset()) & set(found[1])
    }
    assert wrong == {}
