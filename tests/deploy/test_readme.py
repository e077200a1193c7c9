"""The README's configuration tables say what ``agent/config.py`` does.

Each ``### `[section]` `` heading of the README's Configuration chapter is followed by a
table whose first column is a key and whose third is its default. Both must match the
section's frozen dataclass: the same keys, and each default equal to the field's.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from types import MappingProxyType

import pytest

from agent import config

README = Path(__file__).resolve().parents[2] / "README.md"
SECTIONS: dict[str, type] = {
    "identity": config.IdentityConfig,
    "dps": config.DpsConfig,
    "hub": config.HubConfig,
    "lifecycle": config.LifecycleConfig,
    "telemetry": config.TelemetryConfig,
    "state": config.StateConfig,
    "hal": config.HalConfig,
    "log": config.LogConfig,
    "device": config.DeviceConfig,
    "network": config.NetworkConfig,
}
REQUIRED = object()
#: Defaults the README words instead of writing a value.
WORDED = {"required": REQUIRED, "none": None, "the certificate's CN": None}


def readme_tables() -> dict[str, dict[str, str]]:
    """section -> key -> the default cell, from the README's Configuration chapter."""
    text = README.read_text()
    chapter = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    tables: dict[str, dict[str, str]] = {}
    for match in re.finditer(r"^### `\[(\w+)\]`\n(.*?)(?=^### |\Z)", chapter, re.M | re.S):
        rows = tables.setdefault(match.group(1), {})
        for line in match.group(2).splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            key = re.fullmatch(r"`(\w+)`", cells[0]) if len(cells) >= 3 else None
            if key:
                rows[key.group(1)] = cells[2]
    return tables


def documented_value(cell: str) -> object:
    """A default cell as a Python value (TOML-ish literals in backticks, or words)."""
    if cell in WORDED:
        return WORDED[cell]
    literal = re.fullmatch(r"`(.+)`", cell)
    assert literal is not None, f"default cell {cell!r} is neither a `literal` nor known words"
    value = ast.literal_eval(literal.group(1))
    return tuple(value) if isinstance(value, list) else value


def code_value(field: dataclasses.Field[object]) -> object:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return REQUIRED
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, MappingProxyType):
        return dict(value)
    return value


def test_every_section_is_documented() -> None:
    assert set(readme_tables()) == set(SECTIONS)


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_keys_and_defaults_match_the_code(section: str) -> None:
    documented = readme_tables()[section]
    fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
    assert set(documented) == set(fields)
    for key, cell in documented.items():
        expected = code_value(fields[key])
        got = documented_value(cell)
        assert (got is REQUIRED) == (expected is REQUIRED), f"{section}.{key}"
        assert got == expected and type(got) is type(expected), f"{section}.{key}: {cell}"
