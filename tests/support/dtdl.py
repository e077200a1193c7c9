"""DTDL for the Plug and Play tests: Microsoft's parser, and a value-against-schema check.

:func:`parse_with_microsoft_parser` runs Microsoft's DTDLParser (the .NET parser
compiled to WebAssembly, as the npm package ``@digicatapult/dtdl-parser`` ships it)
under node. The package is fetched once with ``npm pack`` (pinned version and SHA-256)
and unpacked into ``$DEVICE_AGENT_CACHE`` (else ``${XDG_CACHE_HOME:-~/.cache}/device-agent``)
as ``dtdl-parser-<version>``.

:func:`conformance` checks a JSON value against a DTDL schema of the model (primitive
schemas, Object, Map, Enum, Array) and returns what does not conform, as paths. With
``acks=True`` (the reported side of a writable property) a Plug and Play
acknowledgement ``{"value", "ac", "av"[, "ad"]}`` may stand in place of a value, and
its ``value`` is checked instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

PARSER_PACKAGE = "@digicatapult/dtdl-parser"
PARSER_VERSION = "1.1.83"
PARSER_SHA256 = "45a2563b28bd514fa7d0b1f51f5a205ffb05454a06013319c808b3b39f7ed8d3"
SCRIPT = Path(__file__).with_name("dtdl_parse.mjs")
#: A DTMI (DTDL v3): dtmi:<segment>(:<segment>)*;<version>
DTMI = re.compile(
    r"^dtmi:[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?(?::[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?)*;[1-9][0-9]{0,8}$"
)


def _cache_root() -> Path:
    configured = os.environ.get("DEVICE_AGENT_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "device-agent"


def parser_dir() -> Path:
    """The unpacked parser package (fetched with ``npm pack`` the first time)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(
            "node and npm are needed for Microsoft's DTDL parser (`make test` installs them)"
        )
    target = _cache_root() / f"dtdl-parser-{PARSER_VERSION}"
    if (target / "package" / "build" / "interop" / "modelParser.js").exists():
        return target / "package"
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch at a time across test processes
        if not (target / "package" / "build" / "interop" / "modelParser.js").exists():
            _fetch(npm, target)
    return target / "package"


def _fetch(npm: str, target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        subprocess.run(
            [npm, "pack", f"{PARSER_PACKAGE}@{PARSER_VERSION}", "--pack-destination", tmp],
            check=True,
            capture_output=True,
            timeout=300,
        )
        (tarball,) = Path(tmp).glob("*.tgz")
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
        assert digest == PARSER_SHA256, (
            f"{tarball.name}: SHA-256 {digest}, expected {PARSER_SHA256}"
        )
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarball) as archive:
            _extract_data(archive, unpacked)
        unpacked.rename(target)


def _extract_data(archive: tarfile.TarFile, into: Path) -> None:
    """``extractall(filter="data")``, also where tarfile has no filters (Debian
    bookworm's Python 3.11.2): only plain files and folders, all inside ``into``."""
    if hasattr(tarfile, "data_filter"):
        archive.extractall(into, filter="data")
        return
    members = archive.getmembers()
    for member in members:
        inside = (into / member.name).resolve().is_relative_to(into.resolve())
        assert inside and (member.isfile() or member.isdir()), (
            f"unexpected member in the parser package: {member.name!r}"
        )
    archive.extractall(into, members=members)  # noqa: S202 - every member checked above


def parse_with_microsoft_parser(*files: Path) -> dict[str, Any]:
    """``{"parser", "ok", "elements", "errors"}`` from Microsoft's DTDLParser for ``files``."""
    result = subprocess.run(
        ["node", str(SCRIPT), str(parser_dir()), *map(str, files)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


# -- values against schemas -------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _date_time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return value.endswith("Z") or "+" in value[10:]


PRIMITIVES: dict[str, Any] = {
    "boolean": lambda v: isinstance(v, bool),
    "double": _is_number,
    "float": _is_number,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**31) <= v < 2**31,
    "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "dateTime": _date_time,
}


def _is_ack(value: Any) -> bool:
    return isinstance(value, Mapping) and {"value", "ac", "av"} <= set(value) <= {
        "value",
        "ac",
        "av",
        "ad",
    }


def conformance(value: Any, schema: Any, path: str = "$", *, acks: bool = False) -> list[str]:
    """Where ``value`` does not conform to the DTDL ``schema`` (empty: it conforms)."""
    if acks and _is_ack(value):
        problems = []
        if not isinstance(value["ac"], int) or not isinstance(value["av"], int):
            problems.append(f"{path}: ack codes must be integers: {value}")
        if "ad" in value and not isinstance(value["ad"], str):
            problems.append(f"{path}: ack description must be a string")
        return problems + conformance(value["value"], schema, f"{path}.value")
    if isinstance(schema, str):
        check = PRIMITIVES.get(schema)
        if check is None:
            return [f"{path}: schema {schema!r} not handled by this checker"]
        return [] if check(value) else [f"{path}: {value!r} is not a DTDL {schema}"]
    kind = schema.get("@type")
    if kind == "Object":
        if not isinstance(value, Mapping):
            return [f"{path}: {value!r} is not an Object"]
        fields = {f["name"]: f for f in schema["fields"]}
        problems = [f"{path}.{k}: not a field of the model" for k in value if k not in fields]
        for name, item in value.items():
            if name in fields and item is not None:  # null: no value (e.g. no hub yet)
                problems += conformance(item, fields[name]["schema"], f"{path}.{name}", acks=acks)
        return problems
    if kind == "Map":
        if not isinstance(value, Mapping):
            return [f"{path}: {value!r} is not a Map"]
        problems = []
        for key, item in value.items():
            problems += conformance(key, schema["mapKey"]["schema"], f"{path}[key {key!r}]")
            problems += conformance(
                item, schema["mapValue"]["schema"], f"{path}[{key!r}]", acks=acks
            )
        return problems
    if kind == "Enum":
        allowed = [v["enumValue"] for v in schema["enumValues"]]
        return [] if value in allowed else [f"{path}: {value!r} is not one of {allowed}"]
    if kind == "Array":
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not an Array"]
        problems = []
        for i, item in enumerate(value):
            problems += conformance(item, schema["elementSchema"], f"{path}[{i}]")
        return problems
    return [f"{path}: schema type {kind!r} not handled by this checker"]


def contents(model: Mapping[str, Any], kind: str) -> dict[str, Mapping[str, Any]]:
    """The model's contents of one kind (Telemetry, Property, Command), by name."""

    def kinds(element: Mapping[str, Any]) -> list[str]:
        types = element["@type"]
        return [types] if isinstance(types, str) else list(types)

    return {c["name"]: c for c in model["contents"] if kind in kinds(c)}
