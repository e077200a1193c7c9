"""A cheap check that `make mutation` is configured right (it is not run by `make test`).

The mutmut configuration names only files that exist and test paths that exist; every
entry of ``mutation/equivalent.toml`` is complete, gives its reason and belongs to a
mutated module; and the report counts and matches as documented.
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

from mutation.report import (
    Equivalent,
    changed_lines,
    classify,
    function_of,
    load_equivalents,
    render,
)

ROOT = Path(__file__).resolve().parent.parent


def _config() -> dict[str, list[str]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    config: dict[str, list[str]] = data["tool"]["mutmut"]
    return config


def _mutated_files() -> list[str]:
    config = _config()
    files = sorted(
        p.relative_to(ROOT).as_posix()
        for source in config["source_paths"]
        for p in (ROOT / source).rglob("*.py")
    )
    return [f for f in files if any(fnmatch.fnmatch(f, pat) for pat in config["only_mutate"])]


def test_the_configuration_names_what_exists() -> None:
    config = _config()
    for source in config["source_paths"]:
        assert (ROOT / source).is_dir(), source
    mutated = _mutated_files()
    for pattern in config["only_mutate"]:
        assert any(fnmatch.fnmatch(f, pattern) for f in mutated), f"{pattern} matches no file"
    for path in config["pytest_add_cli_args_test_selection"]:
        assert (ROOT / path).exists(), path


def test_equivalent_entries_are_complete_and_belong_to_mutated_modules() -> None:
    modules = {f.removesuffix(".py").replace("/", ".") for f in _mutated_files()}
    for entry in load_equivalents():
        module = entry.function.split(".x")[0]
        assert module in modules, entry.function
        assert entry.why.strip() and entry.added != entry.removed, entry.function


DIFF = """--- hal/crc.py
+++ hal/crc.py
@@ -1,3 +1,3 @@
 def f(x):
-    return x.to_bytes(2, "big")
+    return x.to_bytes(2, )
"""


def test_the_report_counts_and_matches_equivalents_on_their_lines() -> None:
    assert changed_lines(DIFF) == ('return x.to_bytes(2, "big")', "return x.to_bytes(2, )")
    assert function_of("hal.crc.x_f__mutmut_12") == "hal.crc.x_f"
    equivalent = Equivalent(
        "hal.crc.x_f", 'return x.to_bytes(2, "big")', "return x.to_bytes(2, )", "default order"
    )
    unused = Equivalent("hal.crc.x_g", "a", "b", "never matches")
    used: set[int] = set()
    codes = {
        "hal.crc.x_f__mutmut_1": 1,  # killed
        "hal.crc.x_f__mutmut_2": 0,  # survived: equivalent by its lines
        "hal.crc.x_f__mutmut_3": 36,  # timeout: killed
        "hal.crc.x_f__mutmut_4": 33,  # no tests: survived
        "hal.crc.x_f__mutmut_5": None,  # not checked
    }
    diffs = {"hal.crc.x_f__mutmut_2": DIFF, "hal.crc.x_f__mutmut_4": DIFF.replace("2, )", "3, )")}
    result = classify("hal/crc.py", codes, [equivalent, unused], lambda m, _: diffs[m], used)
    assert result.killed == ["hal.crc.x_f__mutmut_1", "hal.crc.x_f__mutmut_3"]
    assert [m for m, _ in result.survived] == ["hal.crc.x_f__mutmut_4"]
    assert [m for m, _ in result.equivalent] == ["hal.crc.x_f__mutmut_2"]
    assert result.unchecked == ["hal.crc.x_f__mutmut_5"]
    assert used == {0}
    assert (result.total, round(result.score, 1)) == (4, 66.7)
    text = render([result], [unused], header=["h"], min_score=90)
    assert "| `hal/crc.py` | 4 | 2 | 1 | 1 | 66.7 % (below target) |" in text
    assert "**1 mutants were not checked**" in text
    assert "default order" in text and "never matches" not in text.split("## Stale")[0]
    assert "## Stale entries" in text
