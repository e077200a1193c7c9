"""``device-agent check``: is this device ready to run the agent?

Theory of operation
-------------------
Each check is a function that returns one :class:`CheckResult` (``ok``, ``warn``,
``fail`` or ``skip``) with a one-line detail a person can act on; none of them raises
for a problem it finds. :func:`run_checks` runs them in order — configuration, clock,
certificate and key, trust chain, state directory, the HTTP proxy (when one is
configured or in ``https_proxy``), DPS reachability (through that proxy), sensors — and
skips those that depend on an earlier failure. DPS reachability is a TLS handshake
plus an MQTT CONNECT to DPS, disconnected at once: it registers nothing and spends
nothing of the reprovisioning budget.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from agent import __version__
from agent.config import AgentConfig
from agent.errors import AgentError
from agent.identity.keystore import Identity, open_keystore

__all__ = ["CLOCK_FLOOR", "CheckResult", "run_checks"]

Status = Literal["ok", "warn", "fail", "skip"]

#: A clock earlier than this has never been set (no RTC, no NTP yet): TLS cannot work.
CLOCK_FLOOR = datetime(2025, 1, 1, tzinfo=UTC)
#: systemd-timesyncd creates this file once the clock is synchronized.
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check."""

    name: str
    status: Status
    detail: str


def run_checks(
    config: AgentConfig,
    *,
    now: datetime | None = None,
    network: bool = True,
    dps_timeout_s: float = 10.0,
    sensors: bool = True,
) -> Iterator[CheckResult]:
    """Run every check in order, yielding each result as soon as it is known."""
    moment = now or datetime.now(UTC)
    yield CheckResult("config", "ok", str(config.source))
    yield _check_readable(config)
    yield _check_clock(moment)
    if config.identity.keystore == "tpm":
        yield _check_tpm(config)
    identity, result = _check_certificate(config, moment)
    yield result
    if config.identity.issuance == "dps":
        yield _check_operational(config, moment)
    yield _check_trust_chain(config, moment, identity)
    yield _check_state_directory(config.state.directory)
    proxy = _check_proxy(config, os.environ)
    if proxy is not None:
        yield proxy
    if not network:
        yield CheckResult("dps", "skip", "network checks turned off (--offline)")
    elif identity is None:
        yield CheckResult("dps", "skip", "needs a usable certificate and key")
    else:
        yield _check_dps(config, identity, dps_timeout_s)
    if sensors:
        yield from _check_sensors(config)
    else:
        yield CheckResult("sensors", "skip", "sensor checks turned off")


def _check_tpm(config: AgentConfig) -> CheckResult:
    """The TPM answers, the key blob is a TSS2 blob (never exportable) and loads in it."""
    from agent.errors import TpmError
    from agent.identity.tpm import is_tss2_blob, probe_key

    identity = config.identity
    if not identity.key_path.exists():
        return CheckResult(
            "tpm", "fail", f"{identity.key_path}: no key (device-agent keys create --tpm)"
        )
    if not is_tss2_blob(identity.key_path):
        return CheckResult(
            "tpm", "fail", f"{identity.key_path}: not a TSS2 blob: a software key, exportable"
        )
    if not identity.cert_chain_path.exists():
        return CheckResult(
            "tpm", "warn", "TSS2 key blob (not exportable); no certificate yet to load it with"
        )
    try:
        probe_key(identity, identity.cert_chain_path)
    except TpmError as exc:
        return CheckResult("tpm", "fail", str(exc))
    return CheckResult(
        "tpm",
        "ok",
        f"reachable ({identity.tpm_tcti}); the key loads in it and matches the certificate; "
        "TSS2 blob, not exportable",
    )


def files_the_service_reads(config: AgentConfig) -> list[Path]:
    """The config and every file it names that the service reads at start."""
    ident = config.identity
    paths = [config.source, ident.cert_chain_path, ident.key_path, *ident.trust_anchor_paths]
    if ident.key_passphrase_file is not None:
        paths.append(ident.key_passphrase_file)
    if config.network.proxy_auth_path is not None:
        paths.append(config.network.proxy_auth_path)
    paths += [p for p in (config.dps.server_ca_path, config.hub.server_ca_path) if p is not None]
    return list(dict.fromkeys(paths))


def _check_readable(config: AgentConfig) -> CheckResult:
    """Can this process (the service user, when run as root) read every file it needs?

    ``cli.main`` makes a root ``check`` act as the service user first, so a root-owned
    key fails here as it would in the service.
    """
    who = f"{pwd_name(os.getuid())} (uid {os.getuid()})"
    unreadable = [
        str(path)
        for path in files_the_service_reads(config)
        if os.path.lexists(path) and not os.access(path, os.R_OK)
    ]
    if unreadable:
        return CheckResult(
            "files", "fail", f"not readable by {who}: {', '.join(unreadable)} (chown/chmod them)"
        )
    if os.getuid() == 0:
        return CheckResult(
            "files",
            "warn",
            "checked as root: no service user found (the state directory is root's); "
            "the service may still be unable to read what root can",
        )
    return CheckResult("files", "ok", f"every file the service reads is readable by {who}")


def pwd_name(uid: int) -> str:
    """The user name of ``uid``, or the number."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _check_operational(config: AgentConfig, now: datetime) -> CheckResult:
    """The certificate DPS issued for the hub: usable, and how long it has left."""
    from agent.errors import KeystoreError
    from agent.identity.child import operational_config

    operational = operational_config(config.identity)
    if not operational.cert_chain_path.exists():
        return CheckResult(
            "operational-cert", "warn", "none issued yet: the agent asks DPS for one"
        )
    try:
        identity = open_keystore(operational, config_path=config.source).load(now=now)
    except KeystoreError as exc:
        return CheckResult("operational-cert", "warn", f"{exc}; the agent asks DPS again")
    left = identity.not_after - now
    share = config.identity.renew_at
    return CheckResult(
        "operational-cert",
        "ok",
        f"{identity.thumbprint[:16]}..., valid until "
        f"{identity.not_after.isoformat(timespec='seconds')} ({left.days} days left); "
        f"renewed through DPS at {share:.0%} of its lifetime",
    )


def _check_clock(now: datetime) -> CheckResult:
    if now < CLOCK_FLOOR:
        return CheckResult(
            "clock",
            "fail",
            f"{now.isoformat(timespec='seconds')} is before {CLOCK_FLOOR.date()}: the clock "
            "was never set, so no certificate can be valid (check NTP / the RTC)",
        )
    synced = TIMESYNC_FLAG.exists()
    detail = f"{now.isoformat(timespec='seconds')}" + (
        ", synchronized by systemd-timesyncd" if synced else ", NTP state unknown"
    )
    return CheckResult("clock", "ok", detail)


def _check_certificate(config: AgentConfig, now: datetime) -> tuple[Identity | None, CheckResult]:
    # The chain is checked on its own below, so this one leaves the anchors out.
    without_anchors = dataclasses.replace(config.identity, trust_anchor_paths=())
    try:
        identity = open_keystore(without_anchors, config_path=config.source).load(now=now)
    except AgentError as exc:
        return None, CheckResult("certificate", "fail", str(exc))
    detail = (
        f"registration id {identity.registration_id}, thumbprint {identity.thumbprint[:16]}..., "
        f"valid until {identity.not_after.isoformat(timespec='seconds')}"
    )
    if identity.warnings:
        return identity, CheckResult(
            "certificate", "warn", f"{detail}; {'; '.join(identity.warnings)}"
        )
    return identity, CheckResult("certificate", "ok", detail)


def _check_trust_chain(
    config: AgentConfig, now: datetime, identity: Identity | None
) -> CheckResult:
    anchors = config.identity.trust_anchor_paths
    if not anchors:
        return CheckResult("trust-chain", "skip", "no identity.trust_anchor_paths configured")
    if identity is None:
        return CheckResult("trust-chain", "skip", "needs a usable certificate and key")
    try:
        open_keystore(config.identity, config_path=config.source).load(now=now)
    except AgentError as exc:
        return CheckResult("trust-chain", "fail", str(exc))
    return CheckResult("trust-chain", "ok", "builds to " + ", ".join(str(path) for path in anchors))


def _check_state_directory(directory: Path) -> CheckResult:
    if directory.is_dir():
        if os.access(directory, os.W_OK | os.X_OK):
            return CheckResult("state", "ok", f"{directory} is writable")
        return CheckResult(
            "state", "warn", f"{directory} is not writable by this user (the service's may differ)"
        )
    parent = next((p for p in directory.parents if p.exists()), None)
    if parent is not None and os.access(parent, os.W_OK | os.X_OK):
        return CheckResult("state", "ok", f"{directory} will be created at first run")
    return CheckResult(
        "state", "warn", f"{directory} does not exist (systemd's StateDirectory= creates it)"
    )


def _check_proxy(config: AgentConfig, environ: Mapping[str, str]) -> CheckResult | None:
    """The HTTP proxy DPS is reached through, and its credentials file (None: no proxy)."""
    from agent.runtime.proxy import ProxyAuthError, read_credentials, route_for

    route = route_for(config.dps.host, config.network, environ)
    if route is None:
        return None
    source = "[network] proxy" if config.network.proxy else "https_proxy"
    auth = config.network.proxy_auth_path
    if auth is not None:
        try:
            read_credentials(auth)
        except ProxyAuthError as exc:
            return CheckResult("proxy", "fail", f"{route} ({source}): {exc}")
        return CheckResult("proxy", "ok", f"{route} ({source}), Basic credentials from {auth}")
    credentials = ", with credentials" if route.credentials else ""
    return CheckResult("proxy", "ok", f"{route} ({source}{credentials})")


def _check_dps(config: AgentConfig, identity: Identity, timeout_s: float) -> CheckResult:
    from agent.core.wire import dps_username
    from agent.runtime.proxy import route_for
    from agent.runtime.transport import (
        Connected,
        ConnectionLost,
        ConnectRefused,
        MqttEndpoint,
        MqttTransport,
        TlsSettings,
    )

    dps = config.dps
    websockets = dps.transport == "websockets"
    endpoint = MqttEndpoint(
        host=dps.host,
        port=dps.ws_port if websockets else dps.port,
        client_id=identity.registration_id,
        username=dps_username(
            dps.id_scope,
            identity.registration_id,
            api_version=dps.api_version,
            client_version=f"device-agent/{__version__}",
        ),
        websockets=websockets,
        proxy=route_for(dps.host, config.network, os.environ),
    )
    tls = TlsSettings(
        cert_chain_path=identity.cert_chain_path,
        key_path=identity.key_path,
        key_passphrase=identity.key_passphrase,
        ca_path=dps.server_ca_path,
    )
    where = f"{endpoint} (ID scope {dps.id_scope})"
    try:
        transport = MqttTransport(endpoint, tls, connect_timeout_s=timeout_s)
    except AgentError as exc:
        return CheckResult("dps", "fail", str(exc))
    started = time.monotonic()
    try:
        transport.start_connect()
        for _ in range(10_000):
            left = timeout_s + 1.0 - (time.monotonic() - started)
            if left <= 0:
                return CheckResult("dps", "fail", f"{where}: no answer within {timeout_s:g} s")
            for event in transport.poll(left):
                elapsed_ms = (time.monotonic() - started) * 1000
                if isinstance(event, Connected):
                    return CheckResult(
                        "dps", "ok", f"{where}: TLS and CONNECT accepted in {elapsed_ms:.0f} ms"
                    )
                if isinstance(event, ConnectRefused):
                    return CheckResult(
                        "dps", "fail", f"{where} refused CONNECT (CONNACK {event.return_code})"
                    )
                if isinstance(event, ConnectionLost):
                    return CheckResult("dps", "fail", f"{where}: {event.reason}")
        return CheckResult("dps", "fail", f"{where}: no answer")
    finally:
        transport.close()


def _check_sensors(config: AgentConfig) -> Iterator[CheckResult]:
    import hal

    try:
        backend = hal.open_backend(config.hal.backend, seed=config.hal.mock_seed)
    except (hal.HALError, OSError) as exc:
        yield CheckResult("sensors", "fail", f"{config.hal.backend} backend: {exc}")
        return
    try:
        try:
            sensors = hal.open_sensors(backend, config.hal.sensors, config.hal.buses)
        except (hal.HALError, OSError) as exc:
            yield CheckResult("sensors", "fail", str(exc))
            return
        if not sensors:
            yield CheckResult(
                "sensors", "warn", f"no sensors found on bus(es) {list(config.hal.buses)}"
            )
        for sensor in sensors:
            yield _read_sensor(sensor.name, sensor.read)
            sensor.close()
    finally:
        backend.close()


def _read_sensor(name: str, read: Callable[[], dict[str, float]]) -> CheckResult:
    try:
        reading = read()
    except Exception as exc:  # a driver's failure is a finding, not a crash of the check
        return CheckResult(f"sensor {name}", "fail", f"{type(exc).__name__}: {exc}")
    values = ", ".join(f"{k}={v:.2f}" for k, v in sorted(reading.items()))
    return CheckResult(f"sensor {name}", "ok", values or "no values")
