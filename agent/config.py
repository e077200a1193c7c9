"""The agent's configuration: one TOML file, loaded into frozen dataclasses.

Theory of operation
-------------------
:func:`load_config` reads the file with :mod:`tomllib` and hands the parsed tables to
:func:`parse_config`, the one place where every key is validated. Every problem —
a missing file, a TOML syntax error (with its line), an unknown section or key, a
wrong type, an out-of-range value — is raised as :class:`~agent.errors.ConfigError`
naming the file, the dotted key (``dps.port``) and what was expected; nothing else
escapes, whatever the file holds. The CLI turns that error into exit code 78 (EX_CONFIG),
which the systemd unit lists in ``RestartPreventExitStatus=``.

Rules:

* Units are in the key names (``interval_s``, ``keep_alive_s``); integers are accepted
  where a float is expected, booleans never are where a number is.
* Relative paths resolve against the directory of the config file, so a config and the
  certificates beside it can be moved together.
* Secrets are never in the config, only paths to them (``key_passphrase_file``).
* Sections with only defaulted keys may be left out; ``[identity]``, ``[dps]`` (for
  ``id_scope``) and ``[hal]`` (for ``backend``: the mock HAL is chosen explicitly, never
  as a fallback) are required.

The path comes from the ``--config`` flag, else ``$DEVICE_AGENT_CONFIG``, else
:data:`DEFAULT_CONFIG_PATH` (see :func:`resolve_config_path`).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from types import MappingProxyType
from typing import Literal, TypeVar, cast

from agent.errors import ConfigError
from agent.fileio import FileRefusedError, read_small_file
from hal.sensor import SensorSpec

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_IMPORT_DIR",
    "DEFAULT_MODEL_ID",
    "AgentConfig",
    "DeviceConfig",
    "DpsConfig",
    "HalConfig",
    "HttpProxy",
    "HubConfig",
    "IdentityConfig",
    "LifecycleConfig",
    "LogConfig",
    "NetworkConfig",
    "StateConfig",
    "TelemetryConfig",
    "load_config",
    "parse_config",
    "resolve_config_path",
]

DEFAULT_CONFIG_PATH = Path("/etc/device-agent/agent.toml")
CONFIG_ENV_VAR = "DEVICE_AGENT_CONFIG"
#: Where a first-boot identity is looked for when ``identity.import_dir`` is not set.
DEFAULT_IMPORT_DIR = Path("/boot/firmware/device-agent")

TransportKind = Literal["mqtt", "websockets"]
#: Where Azure IoT hubs live: the public cloud, Azure China and Azure US Government.
AZURE_HUB_SUFFIXES = (".azure-devices.net", ".azure-devices.cn", ".azure-devices.us")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HUB_SUFFIX_RE = re.compile(rf"^\.?{_LABEL}(\.{_LABEL})*$")
HalBackend = Literal["smbus", "mock"]
TelemetryBuffer = Literal["sqlite", "memory"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_PORT = 65535
# MQTT keep-alive as IoT Hub accepts it (the hub's upper bound is 1767 s).
MAX_KEEP_ALIVE_S = 1767
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-:]*[A-Za-z0-9])?$")
_ID_SCOPE_RE = re.compile(r"^[A-Za-z0-9]{1,64}$")
# DPS: up to 128 characters of alphanumerics and - . _ : , ending alphanumeric or '-'.
REGISTRATION_ID_RE = re.compile(r"^[A-Za-z0-9\-._:]{0,127}[A-Za-z0-9\-]$")
_API_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
_PIN_NAME_RE = re.compile(r"^[A-Za-z0-9_:]{1,32}$")
#: The agent's own IoT Plug and Play model (models/dtmi/deviceagent/deviceagent-1.json).
DEFAULT_MODEL_ID = "dtmi:deviceagent:DeviceAgent;1"
_DTMI_SEGMENT = r"[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?"
#: A digital twin model identifier: ``dtmi:segment(:segment)*;version``, at most 2048 chars.
DTMI_RE = re.compile(
    rf"^(?=.{{1,2048}}$)dtmi:{_DTMI_SEGMENT}(?::{_DTMI_SEGMENT})*;[1-9][0-9]{{0,8}}$"
)


@dataclass(frozen=True, kw_only=True)
class IdentityConfig:
    """Where the device's X.509 identity lives (paths only; no secret in the config)."""

    #: ``file``: PEM key on disk; ``tpm``: a TSS2 key blob usable only with this TPM.
    keystore: Literal["file", "tpm"] = "file"
    cert_chain_path: Path
    key_path: Path
    key_passphrase_file: Path | None = None
    trust_anchor_paths: tuple[Path, ...] = ()
    #: ``None``: the certificate's CN is the registration id.
    registration_id: str | None = None
    #: Where a device without a certificate writes its CSR (first boot, ``keys csr``).
    csr_path: Path = Path("/boot/firmware/device-agent/device-agent.csr")
    #: The TPM: the tpm2 provider's TCTI and the OpenSSL config that loads the provider.
    tpm_tcti: str = "device:/dev/tpmrm0"
    openssl_conf: Path = Path("/etc/device-agent/openssl-tpm2.cnf")
    #: ``dps``: the certificate above is the onboarding credential; DPS issues the
    #: operational one from a CSR (api-version 2025-07-01-preview) for the hub.
    issuance: Literal["none", "dps"] = "none"
    #: Where the issued operational chain and its key live (``issuance = "dps"``);
    #: ``None``: ``operational.pem`` / ``operational.key`` beside the certificate.
    operational_cert_path: Path | None = None
    operational_key_path: Path | None = None
    #: Where a first-boot identity may be dropped (the boot partition): the files named
    #: like ``cert_chain_path``, ``key_path`` and ``key_passphrase_file`` are moved from
    #: here to those paths by ``device-agent import-identity`` (device-agent-import.service).
    import_dir: Path = DEFAULT_IMPORT_DIR
    #: Renew the operational certificate at this share of its lifetime (``issuance =
    #: "dps"``), plus up to ``renew_jitter`` of it at random (a fleet spreads out).
    renew_at: float = 0.8
    renew_jitter: float = 0.05
    #: How often the agent looks whether renewal is due.
    renew_check_s: float = 3600.0
    #: ``dps``: renew by registering again with a new CSR; ``hub``: through the hub's
    #: ``$iothub/credentials`` endpoint (Azure Device Registry, preview).
    renewal: Literal["dps", "hub"] = "dps"

    @property
    def operational_cert(self) -> Path:
        """The operational chain's path (``issuance = "dps"``)."""
        return self.operational_cert_path or self.cert_chain_path.with_name("operational.pem")

    @property
    def operational_key(self) -> Path:
        """The operational key's path (a TSS2 blob with ``keystore = "tpm"``)."""
        suffix = "operational.tss2" if self.keystore == "tpm" else "operational.key"
        return self.operational_key_path or self.cert_chain_path.with_name(suffix)


@dataclass(frozen=True, kw_only=True)
class DpsConfig:
    """The Device Provisioning Service to register with."""

    host: str = "global.azure-devices-provisioning.net"
    port: int = 8883
    id_scope: str
    #: ``None``: the system trust store verifies the server.
    server_ca_path: Path | None = None
    transport: TransportKind = "mqtt"
    ws_port: int = 443
    api_version: str = "2019-03-31"
    #: Extra registration payload for custom allocation (JSON-compatible, read-only).
    payload: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    #: A hub name DPS assigns must end in one of these (``.suffix``) or equal one.
    allowed_hub_suffixes: tuple[str, ...] = AZURE_HUB_SUFFIXES


@dataclass(frozen=True, kw_only=True)
class HubConfig:
    """How to reach whichever IoT Hub DPS assigns (the hostname comes from DPS)."""

    port: int = 8883
    ws_port: int = 443
    transport: TransportKind = "mqtt"
    server_ca_path: Path | None = None
    keep_alive_s: int = 60
    api_version: str = "2021-04-12"


@dataclass(frozen=True, kw_only=True)
class LifecycleConfig:
    """Retry and reprovisioning policy (see :mod:`agent.core.lifecycle`)."""

    backoff_base_s: float = 1.0
    backoff_cap_s: float = 300.0
    long_outage_s: float = 1200.0
    dps_backoff_cap_s: float = 600.0
    #: Slow retry after DPS answered 401/404; first wait between DPS registrations that
    #: follow hub rejections (growing up to ``dps_backoff_cap_s``).
    rejected_retry_s: float = 300.0
    #: After a rejection, the hub is tried again at most this far apart (jittered).
    rejected_hub_retry_s: float = 120.0
    reprovision_budget: int = 6
    reprovision_window_s: float = 3600.0
    connect_timeout_s: float = 30.0


@dataclass(frozen=True, kw_only=True)
class TelemetryConfig:
    """Sampling and publishing of telemetry."""

    interval_s: float = 60.0
    queue_max_messages: int = 1000
    max_in_flight: int = 10
    #: "sqlite": the durable buffer in the state directory; "memory": lost on restart.
    buffer: TelemetryBuffer = "sqlite"
    buffer_max_bytes: int = 16 * 1024 * 1024
    buffer_max_age_s: float = 7 * 24 * 3600.0
    #: How often what was sampled and acknowledged is committed (flash wear vs. loss window).
    buffer_commit_interval_s: float = 60.0


@dataclass(frozen=True, kw_only=True)
class StateConfig:
    """Where the agent persists its assignment and reprovisioning budget."""

    directory: Path = Path("/var/lib/device-agent")


@dataclass(frozen=True, kw_only=True)
class HalConfig:
    """Which hardware backend and which sensors (the backend is always explicit)."""

    backend: HalBackend
    buses: tuple[int, ...] = (1,)
    sensors: tuple[SensorSpec, ...] | Literal["auto"] = "auto"
    mock_seed: int | None = None
    led_pin: int | str | None = None
    button_pin: int | str | None = None
    button_hold_s: float = 5.0


@dataclass(frozen=True, kw_only=True)
class DeviceConfig:
    """``[device]``: what the device announces about itself."""

    #: The IoT Plug and Play model (DTMI) sent to DPS (``payload.modelId``) and the hub
    #: (``model-id`` in the CONNECT user name); ``""`` announces none.
    model_id: str = DEFAULT_MODEL_ID


@dataclass(frozen=True, kw_only=True)
class HttpProxy:
    """An HTTP proxy reached with ``CONNECT`` (credentials never here: ``auth_path``)."""

    host: str
    port: int
    #: A file holding ``user:password`` for Basic proxy authentication.
    auth_path: Path | None = None


@dataclass(frozen=True, kw_only=True)
class NetworkConfig:
    """``[network]``: how the agent reaches DPS and the hub."""

    #: ``"http://host:port"``; ``"none"`` for no proxy whatever the environment says;
    #: None (absent) for the environment's ``https_proxy`` / ``no_proxy``.
    proxy: str | None = None
    #: A file holding ``user:password`` for the proxy's Basic authentication.
    proxy_auth_path: Path | None = None

    @property
    def direct(self) -> bool:
        """``proxy = "none"``: never a proxy."""
        return self.proxy is not None and self.proxy.strip().lower() in ("", "none")

    def http_proxy(self) -> HttpProxy | None:
        """The configured proxy (None: none configured; see :attr:`direct`)."""
        if self.proxy is None or self.direct:
            return None
        host, port = parse_proxy_url(self.proxy)
        return HttpProxy(host=host, port=port, auth_path=self.proxy_auth_path)


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    """Logging (see :mod:`agent.runtime.logs`)."""

    level: str = "INFO"


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """The whole configuration; ``source`` is the file it was loaded from."""

    source: Path
    identity: IdentityConfig
    dps: DpsConfig
    hal: HalConfig
    hub: HubConfig = field(default_factory=HubConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    state: StateConfig = field(default_factory=StateConfig)
    log: LogConfig = field(default_factory=LogConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)


def resolve_config_path(flag: str | Path | None, environ: Mapping[str, str]) -> Path:
    """The config path: the ``--config`` flag, else ``$DEVICE_AGENT_CONFIG``, else the default."""
    if flag is not None and str(flag) != "":
        return Path(flag)
    from_env = environ.get(CONFIG_ENV_VAR, "")
    if from_env:
        return Path(from_env)
    return DEFAULT_CONFIG_PATH


def load_config(path: Path) -> AgentConfig:
    """Read and validate the TOML file at ``path``; raise :class:`ConfigError` on any problem."""
    path = Path(path)
    try:
        raw = read_small_file(path)
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file") from None
    except IsADirectoryError:
        raise ConfigError(path, "", "is a directory, expected a TOML file") from None
    except FileRefusedError as exc:
        raise ConfigError(path, "", f"{exc.strerror}; expected a TOML file") from exc
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not UTF-8 text (byte {exc.start})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"TOML syntax error: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(path, "", "TOML nested too deeply") from exc
    return parse_config(data, source=path.absolute())


def parse_config(data: Mapping[str, object], *, source: Path) -> AgentConfig:
    """Validate already-parsed TOML tables; relative paths resolve against ``source``'s folder."""
    root = _Table(source, "", data)
    base = source.parent
    identity = _identity(root.table("identity", required=True), base)
    dps = _dps(root.table("dps", required=True), base)
    hub = _hub(root.table("hub"), base)
    lifecycle = _lifecycle(root.table("lifecycle"))
    telemetry = _telemetry(root.table("telemetry"))
    state_table = root.table("state")
    state = StateConfig(
        directory=state_table.path("directory", base, Path("/var/lib/device-agent"))
    )
    state_table.finish()
    hal = _hal(root.table("hal", required=True))
    log_table = root.table("log")
    log = LogConfig(level=log_table.choice("level", LOG_LEVELS, "INFO", fold_case=True))
    log_table.finish()
    device = _device(root.table("device"))
    network = _network(root.table("network"), base)
    root.finish()
    return AgentConfig(
        source=source,
        identity=identity,
        dps=dps,
        hub=hub,
        lifecycle=lifecycle,
        telemetry=telemetry,
        state=state,
        hal=hal,
        log=log,
        device=device,
        network=network,
    )


# --- sections ---------------------------------------------------------------------------


def _identity(t: _Table, base: Path) -> IdentityConfig:
    keystore = t.choice("keystore", ("file", "tpm"), "file")
    anchors = t.list_of("trust_anchor_paths", lambda key, v: t.path_value(key, v, base), ())
    regid = t.optional_string("registration_id")
    if regid is not None and not REGISTRATION_ID_RE.match(regid):
        raise t.error(
            "registration_id",
            "expected up to 128 characters of letters, digits, '-', '.', '_', ':',"
            " ending with a letter, digit or '-'",
        )
    defaults = IdentityConfig(cert_chain_path=Path(), key_path=Path())
    csr_path = t.optional_path("csr_path", base) or defaults.csr_path
    openssl_conf = t.optional_path("openssl_conf", base) or defaults.openssl_conf
    tcti = t.optional_string("tpm_tcti") or defaults.tpm_tcti
    config = IdentityConfig(
        keystore=cast(Literal["file", "tpm"], keystore),
        cert_chain_path=t.path("cert_chain_path", base),
        key_path=t.path("key_path", base),
        key_passphrase_file=t.optional_path("key_passphrase_file", base),
        trust_anchor_paths=anchors,
        registration_id=regid,
        csr_path=csr_path,
        tpm_tcti=tcti,
        openssl_conf=openssl_conf,
        issuance=cast(Literal["none", "dps"], t.choice("issuance", ("none", "dps"), "none")),
        operational_cert_path=t.optional_path("operational_cert_path", base),
        operational_key_path=t.optional_path("operational_key_path", base),
        import_dir=t.optional_path("import_dir", base) or DEFAULT_IMPORT_DIR,
        renew_at=t.share("renew_at", 0.8),
        renew_jitter=t.share("renew_jitter", 0.05),
        renew_check_s=t.seconds("renew_check_s", 3600.0),
        renewal=cast(Literal["dps", "hub"], t.choice("renewal", ("dps", "hub"), "dps")),
    )
    if keystore == "tpm" and config.key_passphrase_file is not None:
        raise t.error("key_passphrase_file", "a TPM key has no passphrase file")
    t.finish()
    return config


def _dps(t: _Table, base: Path) -> DpsConfig:
    id_scope = t.string("id_scope")
    if not _ID_SCOPE_RE.match(id_scope):
        raise t.error("id_scope", "expected an ID scope of letters and digits, e.g. '0ne00000DEV'")
    config = DpsConfig(
        host=t.host("host", "global.azure-devices-provisioning.net"),
        port=t.integer("port", 8883, 1, MAX_PORT),
        id_scope=id_scope,
        server_ca_path=t.optional_path("server_ca_path", base),
        transport=cast(TransportKind, t.choice("transport", ("mqtt", "websockets"), "mqtt")),
        ws_port=t.integer("ws_port", 443, 1, MAX_PORT),
        api_version=t.api_version("api_version", "2019-03-31"),
        payload=t.json_table("payload"),
        allowed_hub_suffixes=t.list_of(
            "allowed_hub_suffixes", lambda key, v: _hub_suffix(t, key, v), AZURE_HUB_SUFFIXES
        ),
    )
    if not config.allowed_hub_suffixes:
        raise t.error("allowed_hub_suffixes", "expected at least one suffix or host name")
    t.finish()
    return config


def _hub_suffix(t: _Table, key: str, value: object) -> str:
    if not isinstance(value, str) or not _HUB_SUFFIX_RE.match(value):
        raise t.error(
            key, f"expected a host name suffix such as '.azure-devices.net', got {_describe(value)}"
        )
    return value.lower()


def _hub(t: _Table, base: Path) -> HubConfig:
    config = HubConfig(
        port=t.integer("port", 8883, 1, MAX_PORT),
        ws_port=t.integer("ws_port", 443, 1, MAX_PORT),
        transport=cast(TransportKind, t.choice("transport", ("mqtt", "websockets"), "mqtt")),
        server_ca_path=t.optional_path("server_ca_path", base),
        keep_alive_s=t.integer("keep_alive_s", 60, 1, MAX_KEEP_ALIVE_S),
        api_version=t.api_version("api_version", "2021-04-12"),
    )
    t.finish()
    return config


def _device(t: _Table) -> DeviceConfig:
    model_id = t.string("model_id", DEFAULT_MODEL_ID)
    if model_id and not DTMI_RE.match(model_id):
        raise t.error(
            "model_id",
            f'expected a DTMI like {DEFAULT_MODEL_ID!r} (or "" to announce none), got {model_id!r}',
        )
    t.finish()
    return DeviceConfig(model_id=model_id)


def _network(t: _Table, base: Path) -> NetworkConfig:
    config = NetworkConfig(
        proxy=t.optional_string("proxy"),
        proxy_auth_path=t.optional_path("proxy_auth_path", base),
    )
    if config.proxy is not None and not config.direct:
        try:
            parse_proxy_url(config.proxy)
        except ValueError as exc:
            raise t.error("proxy", str(exc)) from None
    if config.proxy_auth_path is not None and config.http_proxy() is None:
        raise t.error("proxy_auth_path", "set network.proxy to the proxy it is for")
    t.finish()
    return config


def parse_proxy_url(url: str, *, allow_credentials: bool = False) -> tuple[str, int]:
    """``(host, port)`` of ``http://host:port``; ValueError saying what is wrong.

    Credentials in the URL are refused unless ``allow_credentials`` (the environment's
    ``https_proxy`` may carry them; the config never does: use ``proxy_auth_path``).
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        port = parts.port or 80
    except ValueError as exc:
        raise ValueError(f"expected http://host:port, got {url!r} ({exc})") from None
    if parts.scheme != "http":
        raise ValueError(f"expected an http:// proxy (CONNECT), got {parts.scheme}:// in {url!r}")
    if not parts.hostname or not _HOST_RE.match(parts.hostname):
        raise ValueError(f"expected http://host:port, got {url!r}")
    if (parts.username or parts.password) and not allow_credentials:
        raise ValueError(
            "no credentials in the proxy URL: put user:password in the file that "
            "network.proxy_auth_path names"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"expected http://host:port with nothing after, got {url!r}")
    return parts.hostname, port


def _lifecycle(t: _Table) -> LifecycleConfig:
    config = LifecycleConfig(
        backoff_base_s=t.seconds("backoff_base_s", 1.0),
        backoff_cap_s=t.seconds("backoff_cap_s", 300.0),
        long_outage_s=t.seconds("long_outage_s", 1200.0),
        dps_backoff_cap_s=t.seconds("dps_backoff_cap_s", 600.0),
        rejected_retry_s=t.seconds("rejected_retry_s", 300.0),
        rejected_hub_retry_s=t.seconds("rejected_hub_retry_s", 120.0),
        reprovision_budget=t.integer("reprovision_budget", 6, 1, 10_000),
        reprovision_window_s=t.seconds("reprovision_window_s", 3600.0),
        connect_timeout_s=t.seconds("connect_timeout_s", 30.0),
    )
    if config.backoff_cap_s < config.backoff_base_s:
        raise t.error(
            "backoff_cap_s", f"expected >= lifecycle.backoff_base_s ({config.backoff_base_s})"
        )
    if config.dps_backoff_cap_s < config.backoff_base_s:
        raise t.error(
            "dps_backoff_cap_s", f"expected >= lifecycle.backoff_base_s ({config.backoff_base_s})"
        )
    t.finish()
    return config


def _telemetry(t: _Table) -> TelemetryConfig:
    config = TelemetryConfig(
        interval_s=t.seconds("interval_s", 60.0),
        queue_max_messages=t.integer("queue_max_messages", 1000, 1, 10_000_000),
        max_in_flight=t.integer("max_in_flight", 10, 1, 65535),
        buffer=cast(TelemetryBuffer, t.choice("buffer", ("sqlite", "memory"), "sqlite")),
        buffer_max_bytes=t.integer("buffer_max_bytes", 16 * 1024 * 1024, 4096, 1 << 40),
        buffer_max_age_s=t.seconds("buffer_max_age_s", 7 * 24 * 3600.0),
        buffer_commit_interval_s=t.seconds("buffer_commit_interval_s", 60.0),
    )
    t.finish()
    return config


def _hal(t: _Table) -> HalConfig:
    backend = cast(HalBackend, t.choice("backend", ("smbus", "mock")))
    buses = t.list_of("buses", lambda key, v: t.int_value(key, v, 0, 1023), (1,))
    sensors: tuple[SensorSpec, ...] | Literal["auto"]
    raw_sensors = t.raw("sensors")
    if raw_sensors is None or raw_sensors == "auto":
        sensors = "auto"
    elif isinstance(raw_sensors, list):
        sensors = tuple(
            _sensor_spec(t.sub(f"sensors[{i}]", item)) for i, item in enumerate(raw_sensors)
        )
        seen: dict[str, int] = {}
        for i, spec in enumerate(sensors):
            name = spec.display_name
            if name in seen:
                raise t.error(
                    f"sensors[{i}].name",
                    f"{name!r} is also the name of sensors[{seen[name]}]; "
                    "every sensor needs its own name (its telemetry and twin key)",
                )
            seen[name] = i
    else:
        raise t.error("sensors", 'expected "auto" or an array of [[hal.sensors]] tables')
    config = HalConfig(
        backend=backend,
        buses=buses,
        sensors=sensors,
        mock_seed=t.optional_integer("mock_seed", -(2**63), 2**63 - 1),
        led_pin=t.pin("led_pin"),
        button_pin=t.pin("button_pin"),
        button_hold_s=t.seconds("button_hold_s", 5.0),
    )
    t.finish()
    return config


def _sensor_spec(t: _Table) -> SensorSpec:
    from hal.exc import UnknownPartError
    from hal.parts import PART_NAMES, canonical_part

    raw_part = t.string("part")
    try:
        part = canonical_part(raw_part)
    except UnknownPartError:
        supported = ", ".join(sorted(PART_NAMES))
        raise t.error(
            "part", f"expected a supported part ({supported}), got {raw_part!r}"
        ) from None
    spec = SensorSpec(
        part=part,
        bus=t.integer("bus", None, 0, 1023),
        address=t.integer("address", None, 0x03, 0x77),
        name=t.string("name", ""),
    )
    t.finish()
    return spec


# --- the validating reader ----------------------------------------------------------------

_T = TypeVar("_T")
_MISSING = object()


class _Table:
    """One TOML table being read: keys are consumed as read; :meth:`finish` refuses leftovers."""

    def __init__(self, path: Path, prefix: str, data: Mapping[str, object]) -> None:
        self._path = path
        self._prefix = prefix
        self._data = dict(data)
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self._path, self.key(name), problem)

    def raw(self, name: str) -> object | None:
        self._seen.add(name)
        return self._data.get(name)

    def _get(self, name: str, default: object) -> object:
        value = self.raw(name)
        if value is None:
            if default is _MISSING:
                raise self.error(name, "missing (required)")
            return default
        return value

    def finish(self) -> None:
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            known = ", ".join(sorted(self._seen)) or "none"
            raise self.error(unknown[0], f"unknown key (expected one of: {known})")

    def sub(self, name: str, value: object) -> _Table:
        if not isinstance(value, dict):
            raise self.error(name, f"expected a table, got {_describe(value)}")
        return _Table(self._path, self.key(name), value)

    def table(self, name: str, *, required: bool = False) -> _Table:
        value = self.raw(name)
        if value is None:
            if required:
                raise self.error(name, f"missing section [{self.key(name)}]")
            value = {}
        return self.sub(name, value)

    # scalar readers ------------------------------------------------------------------

    def string(self, name: str, default: str | None = None) -> str:
        value = self._get(name, _MISSING if default is None else default)
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {_describe(value)}")
        if "\x00" in value:
            raise self.error(name, "expected a string without NUL characters")
        return value

    def optional_string(self, name: str) -> str | None:
        if self.raw(name) is None:
            return None
        return self.string(name)

    def choice(
        self,
        name: str,
        choices: tuple[str, ...],
        default: str | None = None,
        *,
        fold_case: bool = False,
    ) -> str:
        value = self.string(name, default)
        normal = value.upper() if fold_case else value
        if normal not in choices:
            expected = " or ".join(repr(c) for c in choices)
            raise self.error(name, f"expected {expected}, got {value!r}")
        return normal

    def host(self, name: str, default: str) -> str:
        value = self.string(name, default)
        if len(value) > 253 or not _HOST_RE.match(value):
            raise self.error(name, f"expected a host name or IP address, got {value!r}")
        return value

    def api_version(self, name: str, default: str) -> str:
        value = self.string(name, default)
        if not _API_VERSION_RE.match(value):
            raise self.error(name, f"expected an API version like {default!r}, got {value!r}")
        return value

    def int_value(self, key: str, value: object, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {_describe(value)}")
        if not low <= value <= high:
            raise self.error(key, f"expected an integer from {low} to {high}, got {value}")
        return value

    def integer(self, name: str, default: int | None, low: int, high: int) -> int:
        value = self._get(name, _MISSING if default is None else default)
        return self.int_value(name, value, low, high)

    def optional_integer(self, name: str, low: int, high: int) -> int | None:
        if self.raw(name) is None:
            return None
        return self.integer(name, None, low, high)

    def share(self, name: str, default: float) -> float:
        """A share of something: a number from 0 to 1 (exclusive)."""
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"expected a number from 0 to 1, got {_describe(value)}")
        number = float(value)
        if not (math.isfinite(number) and 0.0 <= number < 1.0):
            raise self.error(name, f"expected a number from 0 to 1 (exclusive), got {value}")
        return number

    def seconds(self, name: str, default: float) -> float:
        """A positive, finite duration in seconds (an integer is fine)."""
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"expected a number of seconds, got {_describe(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not (math.isfinite(number) and 0.0 < number <= 366 * 86400.0):
            raise self.error(name, f"expected seconds > 0 and at most a year, got {value}")
        return number

    def pin(self, name: str) -> int | str | None:
        value = self.raw(name)
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return self.int_value(name, value, 0, 1023)
        if isinstance(value, str) and _PIN_NAME_RE.match(value):
            return value
        raise self.error(name, f"expected a GPIO number or pin name like 'GPIO17', got {value!r}")

    # paths ---------------------------------------------------------------------------

    def path_value(self, key: str, value: object, base: Path) -> Path:
        if not isinstance(value, str) or value == "" or "\x00" in value:
            raise self.error(key, f"expected a non-empty path string, got {_describe(value)}")
        path = Path(value)
        return path if path.is_absolute() else base / path

    def path(self, name: str, base: Path, default: Path | None = None) -> Path:
        value = self._get(name, _MISSING if default is None else str(default))
        return self.path_value(name, value, base)

    def optional_path(self, name: str, base: Path) -> Path | None:
        if self.raw(name) is None:
            return None
        return self.path(name, base)

    # compound values -----------------------------------------------------------------

    def list_of(
        self, name: str, item: Callable[[str, object], _T], default: tuple[_T, ...]
    ) -> tuple[_T, ...]:
        value = self._get(name, default)
        if value is default:
            return default
        if not isinstance(value, list):
            raise self.error(name, f"expected an array, got {_describe(value)}")
        return tuple(item(f"{name}[{i}]", v) for i, v in enumerate(value))

    def json_table(self, name: str) -> Mapping[str, object]:
        value = self._get(name, {})
        if not isinstance(value, dict):
            raise self.error(name, f"expected a table, got {_describe(value)}")
        return MappingProxyType(cast(dict[str, object], self._json(name, value)))

    def _json(self, key: str, value: object) -> object:
        if isinstance(value, dict):
            return {str(k): self._json(f"{key}.{k}", v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._json(f"{key}[{i}]", v) for i, v in enumerate(value)]
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(key, "expected a finite number (JSON has no inf or nan)")
        if isinstance(value, datetime | date | time):
            raise self.error(key, "expected a JSON value; write dates and times as strings")
        return value


def _describe(value: object) -> str:
    kinds: dict[type, str] = {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
        datetime: "a date-time",
        date: "a date",
        time: "a time",
    }
    kind = kinds.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} ({text[:40]}{'...' if len(text) > 40 else ''})"
