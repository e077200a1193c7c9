"""The per-module report of a mutation run: ``python -m mutation.report``.

``make mutation`` runs mutmut (configured in ``pyproject.toml``, ``[tool.mutmut]``),
which leaves one ``mutants/<module>.py.meta`` file per mutated module holding each
mutant's exit code. This script turns them into ``mutation/REPORT.md``: per module
the mutants, killed, survived, equivalent and the score, then every survivor with
its diff, then the equivalent mutants with the reason each is equivalent.

Counting: *killed* is what the tests noticed (a failing test, a timeout, a crash);
*survived* includes mutants no test reached. *Equivalent* mutants are listed in
``mutation/equivalent.toml``: each entry names the function and the exact line(s) the
mutant removes and adds, and says why no test can tell it apart (matching on the lines,
not on mutmut's number, keeps an entry right when mutants are renumbered). An entry that
no longer matches any survivor is reported as stale. The score is
``killed / (mutants - equivalent)``; the target is 90 % per module (``--min-score``;
the exit status is 1 when a module is below it).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT_FILE = ROOT / "mutation" / "equivalent.toml"
REPORT_FILE = ROOT / "mutation" / "REPORT.md"
TARGET_SCORE = 90.0

#: mutmut's exit-code verdicts, folded into what the report counts.
KILLED_CODES = frozenset({1, 3, 36, 37, -24, 24, 152, 255, -11, -9})
SURVIVED_CODES = frozenset({0, 5, 33, 35})
SKIPPED_CODES = frozenset({34})

_NUMBER = re.compile(r"__mutmut_\d+$")

DiffFor = Callable[[str, str], str]


@dataclass(frozen=True)
class Equivalent:
    """One entry of ``equivalent.toml``."""

    function: str
    removed: str
    added: str
    why: str
    mutant: str = ""

    def matches(self, function: str, removed: str, added: str) -> bool:
        """True when this entry describes a mutant of ``function`` with these lines."""
        return (self.function, self.removed, self.added) == (function, removed, added)


@dataclass
class ModuleResult:
    """The verdicts for one module."""

    path: str
    killed: list[str] = field(default_factory=list)
    survived: list[tuple[str, str]] = field(default_factory=list)  # (mutant, diff)
    equivalent: list[tuple[str, Equivalent]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Every mutant of the module that was run."""
        return len(self.killed) + len(self.survived) + len(self.equivalent)

    @property
    def score(self) -> float:
        """Killed as a percentage of the non-equivalent mutants (100 when there are none)."""
        relevant = len(self.killed) + len(self.survived)
        return 100.0 if relevant == 0 else 100.0 * len(self.killed) / relevant


def load_equivalents(path: Path = EQUIVALENT_FILE) -> list[Equivalent]:
    """The entries of ``equivalent.toml`` (an absent file means none)."""
    if not path.exists():
        return []
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    entries = []
    for index, raw in enumerate(data.get("equivalent", [])):
        missing = {"function", "removed", "added", "why"} - set(raw)
        if missing:
            raise ValueError(f"{path}: entry {index} lacks {', '.join(sorted(missing))}")
        if not str(raw["why"]).strip():
            raise ValueError(f"{path}: entry {index} ({raw['function']}) gives no reason")
        entries.append(
            Equivalent(
                raw["function"], raw["removed"], raw["added"], raw["why"], raw.get("mutant", "")
            )
        )
    return entries


def changed_lines(diff: str) -> tuple[str, str]:
    """The removed and the added lines of a unified diff, stripped, each joined by newlines."""
    removed, added = [], []
    for line in diff.splitlines():
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("-"):
            removed.append(line[1:].strip())
        elif line.startswith("+"):
            added.append(line[1:].strip())
    return "\n".join(removed), "\n".join(added)


def function_of(mutant: str) -> str:
    """The mutated function's key: the mutant's name without ``__mutmut_N``."""
    return _NUMBER.sub("", mutant)


def classify(
    path: str,
    exit_codes: dict[str, int | None],
    equivalents: Sequence[Equivalent],
    diff_for: DiffFor,
    used: set[int],
) -> ModuleResult:
    """Sort one module's mutants into killed / survived / equivalent / skipped / unchecked.

    ``used`` collects the indices of the equivalents that matched a survivor.
    """
    result = ModuleResult(path)
    for mutant, code in sorted(exit_codes.items(), key=lambda item: _natural(item[0])):
        if code is None:
            result.unchecked.append(mutant)
        elif code in SKIPPED_CODES:
            result.skipped.append(mutant)
        elif code in SURVIVED_CODES:
            diff = diff_for(mutant, path)
            removed, added = changed_lines(diff)
            function = function_of(mutant)
            for index, entry in enumerate(equivalents):
                if entry.matches(function, removed, added):
                    used.add(index)
                    result.equivalent.append((mutant, entry))
                    break
            else:
                result.survived.append((mutant, diff))
        else:  # KILLED_CODES, and anything else mutmut calls suspicious or a crash
            result.killed.append(mutant)
    return result


def read_meta(mutants_dir: Path) -> dict[str, dict[str, int | None]]:
    """Exit codes by mutant, per source path, from mutmut's ``*.py.meta`` files."""
    results: dict[str, dict[str, int | None]] = {}
    for meta in sorted(mutants_dir.rglob("*.py.meta")):
        source = meta.relative_to(mutants_dir).as_posix().removesuffix(".meta")
        data = json.loads(meta.read_text(encoding="utf-8"))
        codes = data.get("exit_code_by_key", {})
        if any(code is not None for code in codes.values()):  # else: not part of this run
            results[source] = codes
    return results


def render(
    modules: Sequence[ModuleResult],
    stale: Iterable[Equivalent],
    *,
    header: Sequence[str],
    min_score: float,
) -> str:
    """The Markdown report."""
    lines = ["# Mutation testing report", "", *header, ""]
    lines += [
        "| module | mutants | killed | survived | equivalent | score |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in modules:
        flag = "" if m.score >= min_score else " (below target)"
        lines.append(
            f"| `{m.path}` | {m.total} | {len(m.killed)} | {len(m.survived)} | "
            f"{len(m.equivalent)} | {m.score:.1f} %{flag} |"
        )
    killed = sum(len(m.killed) for m in modules)
    relevant = sum(len(m.killed) + len(m.survived) for m in modules)
    overall = 100.0 * killed / relevant if relevant else 100.0
    lines += [
        "",
        f"Overall: {killed} of {relevant} non-equivalent mutants killed ({overall:.1f} %).",
    ]
    unchecked = [(m.path, u) for m in modules for u in m.unchecked]
    if unchecked:
        lines += ["", f"**{len(unchecked)} mutants were not checked** (an interrupted run)."]
    lines += ["", "## Survivors", ""]
    if not any(m.survived for m in modules):
        lines.append("None.")
    for m in modules:
        if not m.survived:
            continue
        lines += [f"### `{m.path}`", ""]
        for mutant, diff in m.survived:
            lines += [f"`{mutant}`", "", "```diff", *_hunk(diff), "```", ""]
    lines += ["## Equivalent mutants", "", "Listed in `mutation/equivalent.toml`.", ""]
    for m in modules:
        for mutant, entry in m.equivalent:
            change = f"`{entry.removed}` → `{entry.added}`".replace("\n", " ⏎ ")
            lines.append(f"- `{mutant}`: {change}. {entry.why.strip()}")
    stale = list(stale)
    if stale:
        lines += ["", "## Stale entries (they match no survivor any more)", ""]
        lines += [f"- `{e.function}`: `{e.added}` ({e.mutant or 'no id'})" for e in stale]
    return "\n".join(lines).rstrip() + "\n"


def _hunk(diff: str) -> list[str]:
    """The diff without its file header lines."""
    return [line for line in diff.splitlines() if not line.startswith(("---", "+++"))]


def _natural(name: str) -> tuple[str, int]:
    match = re.search(r"__mutmut_(\d+)$", name)
    return (function_of(name), int(match.group(1)) if match else 0)


def _mutmut_diff(mutant: str, path: str) -> str:
    # mutmut comes with the 'mutation' extra only, so make test's mypy may not see it.
    from mutmut.mutation.diff_apply import get_diff_for_mutant  # type: ignore[import-not-found,unused-ignore]

    return str(get_diff_for_mutant(mutant, path=path))


def _excluded_patterns() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns: list[str] = config.get("tool", {}).get("mutmut", {}).get("do_not_mutate_patterns", [])
    return patterns


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the report; exit 1 if a module is below ``--min-score`` or mutants went unchecked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutants", type=Path, default=ROOT / "mutants")
    parser.add_argument("--out", type=Path, default=REPORT_FILE)
    parser.add_argument("--min-score", type=float, default=TARGET_SCORE)
    parser.add_argument("--seconds", type=float, help="how long the run took (for the header)")
    args = parser.parse_args(argv)
    equivalents = load_equivalents()
    used: set[int] = set()
    modules = [
        classify(path, codes, equivalents, _mutmut_diff, used)
        for path, codes in read_meta(args.mutants).items()
    ]
    if not modules:
        print(
            f"no mutation results under {args.mutants}: run `make mutation` first", file=sys.stderr
        )
        return 2
    from importlib.metadata import version

    dirty = " (with uncommitted changes)" if _git("status", "--porcelain", "--", ".") else ""
    header = [
        f"mutmut {version('mutmut')} on `{_git('rev-parse', '--short', 'HEAD')}`{dirty}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        + (f", {args.seconds / 60:.1f} min on this machine" if args.seconds else "")
        + ".",
        "Score = killed / (mutants - equivalent); killed includes timeouts. "
        f"Target: ≥ {args.min_score:g} % per module. Regenerate with `make mutation`.",
    ]
    excluded = _excluded_patterns()
    if excluded:
        header.append(
            "Lines not mutated (`do_not_mutate_patterns` in pyproject.toml, with the reason "
            "there): " + ", ".join(f"`{p}`" for p in excluded) + "."
        )
    stale = [e for i, e in enumerate(equivalents) if i not in used]
    text = render(modules, stale, header=header, min_score=args.min_score)
    args.out.write_text(text, encoding="utf-8")
    table = text.split("## Survivors")[0]
    print(table.rstrip())
    below = [m.path for m in modules if m.score < args.min_score]
    if below:
        print(f"below {args.min_score:g} %: {', '.join(below)}", file=sys.stderr)
    unchecked = sum(len(m.unchecked) for m in modules)
    return 1 if below or unchecked else 0


if __name__ == "__main__":
    raise SystemExit(main())
