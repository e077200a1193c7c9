"""devcloud's configuration: frozen dataclasses, loaded from TOML in one place.

Example ``devcloud.toml`` (every key optional)::

    state_dir = ".devcloud"
    id_scope = "0ne00000DEV"
    database = ".devcloud/devcloud.db"     # omit for in-memory state
    registrations_per_second = 10
    throttle_reserves_slots = false        # true: a 429's retry-after books a slot
    assignment_delay_s = 0.2
    hub_puback_delay_s = 0.0               # hold each PUBACK (a simulated round trip)
    default_group = true

    [dps]
    host = "127.0.0.2"
    port = 8883
    ws_port = 8443

    [rest]
    host = "127.0.0.1"
    port = 8088

    [[hubs]]
    name = "hub1"
    host = "127.0.0.3"
    port = 8883
    ws_port = 8443
    hostname = "127.0.0.3"               # what DPS returns in assignedHub

Relative paths are relative to the TOML file's folder.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from devcloud.errors import InvalidRequestError


class ConfigError(InvalidRequestError):
    """The devcloud configuration cannot be used; names the file and key."""

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}" if key else f"{path}: {problem}")
        self.path = Path(path)
        self.key = key


@dataclass(frozen=True)
class HubSpec:
    """One IoT Hub: its name, where it listens, and the hostname DPS hands out."""

    name: str
    host: str
    port: int = 8883
    ws_port: int | None = None
    hostname: str | None = None

    @property
    def public_hostname(self) -> str:
        """``hostname`` or, by default, the bind address (no DNS needed)."""
        return self.hostname or self.host


def _default_hubs() -> tuple[HubSpec, ...]:
    return (HubSpec("hub1", "127.0.0.3"), HubSpec("hub2", "127.0.0.4"))


@dataclass(frozen=True)
class DevCloudConfig:
    """Everything a devcloud instance needs; ports may be 0 for "any free port"."""

    state_dir: Path
    id_scope: str = "0ne00000DEV"
    dps_host: str = "127.0.0.2"
    dps_port: int = 8883
    dps_ws_port: int | None = None
    hubs: tuple[HubSpec, ...] = field(default_factory=_default_hubs)
    rest_host: str = "127.0.0.1"
    rest_port: int = 8088
    #: SQLite file for state that survives a restart; None keeps state in memory.
    database: Path | None = None
    registrations_per_second: float | None = None
    #: Throttled register requests get a retry-after that reserves the next free slot
    #: (so a device that honours it is admitted then) instead of a fixed one.
    throttle_reserves_slots: bool = False
    assignment_delay_s: float = 0.2
    #: Hubs hold each PUBACK this long (a simulated round trip, for benchmarks).
    hub_puback_delay_s: float = 0.0
    #: Create an enrollment group "default" on the devcloud intermediate CA, hashed over
    #: all hubs, unless one named "default" exists.
    default_group: bool = True

    def validated(self, source: Path | str = "<config>") -> DevCloudConfig:
        """Return self, or raise :class:`ConfigError` naming the first bad key."""
        names = [h.name for h in self.hubs]
        if not self.hubs:
            raise ConfigError(source, "hubs", "at least one hub is needed")
        if len(set(names)) != len(names):
            raise ConfigError(source, "hubs", f"hub names must be unique: {names}")
        hostnames = [h.public_hostname for h in self.hubs]
        if len(set(hostnames)) != len(hostnames):
            raise ConfigError(source, "hubs", f"hub hostnames must be unique: {hostnames}")
        for key, host in [("dps.host", self.dps_host), ("rest.host", self.rest_host)] + [
            (f"hubs.{h.name}.host", h.host) for h in self.hubs
        ]:
            try:
                if not ipaddress.ip_address(host).is_loopback:
                    raise ConfigError(source, key, f"{host} is not a loopback address")
            except ValueError:
                raise ConfigError(source, key, f"{host!r} is not an IP address") from None
        ports = [("dps.port", self.dps_port), ("rest.port", self.rest_port)]
        ports += [(f"hubs.{h.name}.port", h.port) for h in self.hubs]
        for key, port in ports:
            if not 0 <= port <= 65535:
                raise ConfigError(source, key, f"port {port} out of range")
        if self.registrations_per_second is not None and self.registrations_per_second <= 0:
            raise ConfigError(source, "registrations_per_second", "must be positive")
        if self.assignment_delay_s < 0:
            raise ConfigError(source, "assignment_delay_s", "must not be negative")
        if not 0 <= self.hub_puback_delay_s <= 60:
            raise ConfigError(source, "hub_puback_delay_s", "must be between 0 and 60")
        if not self.id_scope:
            raise ConfigError(source, "id_scope", "must not be empty")
        return self


def _get(
    table: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path, where: str
) -> Any:
    value = table[key]
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(path, f"{where}{key}", "wrong type: bool")
    if not isinstance(value, kind):
        raise ConfigError(path, f"{where}{key}", f"wrong type: {type(value).__name__}")
    return value


def load_config(path: Path, **overrides: Any) -> DevCloudConfig:
    """Load a TOML file into a validated :class:`DevCloudConfig`; ``overrides`` win."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(path, "", str(exc)) from exc
    base = path.parent
    known = {
        "state_dir", "id_scope", "database", "registrations_per_second",
        "assignment_delay_s", "default_group", "dps", "rest", "hubs",
        "throttle_reserves_slots", "hub_puback_delay_s",
    }  # fmt: skip
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(path, unknown[0], "unknown key")
    fields: dict[str, Any] = {}
    if "state_dir" in data:
        fields["state_dir"] = base / _get(data, "state_dir", str, path, "")
    if "database" in data:
        fields["database"] = base / _get(data, "database", str, path, "")
    if "id_scope" in data:
        fields["id_scope"] = _get(data, "id_scope", str, path, "")
    if "registrations_per_second" in data:
        fields["registrations_per_second"] = float(
            _get(data, "registrations_per_second", (int, float), path, "")
        )
    if "assignment_delay_s" in data:
        fields["assignment_delay_s"] = float(
            _get(data, "assignment_delay_s", (int, float), path, "")
        )
    if "default_group" in data:
        fields["default_group"] = _get(data, "default_group", bool, path, "")
    if "throttle_reserves_slots" in data:
        fields["throttle_reserves_slots"] = _get(data, "throttle_reserves_slots", bool, path, "")
    if "hub_puback_delay_s" in data:
        fields["hub_puback_delay_s"] = float(
            _get(data, "hub_puback_delay_s", (int, float), path, "")
        )
    for section, prefix in (("dps", "dps_"), ("rest", "rest_")):
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(path, section, "must be a table")
        allowed = {"host", "port"} | ({"ws_port"} if section == "dps" else set())
        for key in table:
            if key not in allowed:
                raise ConfigError(path, f"{section}.{key}", "unknown key")
            kind = str if key == "host" else int
            fields[prefix + key] = _get(table, key, kind, path, f"{section}.")
    if "hubs" in data:
        hubs = data["hubs"]
        if not isinstance(hubs, list):
            raise ConfigError(path, "hubs", "must be an array of tables ([[hubs]])")
        specs = []
        for n, table in enumerate(hubs):
            where = f"hubs[{n}]."
            if not isinstance(table, dict):
                raise ConfigError(path, f"hubs[{n}]", "must be a table")
            for key in table:
                if key not in {"name", "host", "port", "ws_port", "hostname"}:
                    raise ConfigError(path, where + key, "unknown key")
            for key in ("name", "host"):
                if key not in table:
                    raise ConfigError(path, where + key, "missing")
            specs.append(
                HubSpec(
                    name=_get(table, "name", str, path, where),
                    host=_get(table, "host", str, path, where),
                    port=_get(table, "port", int, path, where) if "port" in table else 8883,
                    ws_port=_get(table, "ws_port", int, path, where)
                    if "ws_port" in table
                    else None,
                    hostname=_get(table, "hostname", str, path, where)
                    if "hostname" in table
                    else None,
                )
            )
        fields["hubs"] = tuple(specs)
    fields.update(overrides)
    if "state_dir" not in fields:
        fields["state_dir"] = base / ".devcloud"
    return replace(DevCloudConfig(state_dir=fields.pop("state_dir")), **fields).validated(path)
