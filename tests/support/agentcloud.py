"""The real agent against a real devcloud over TLS on loopback, for integration tests.

Each :class:`Cloud` takes its own 127.x.y.z addresses (DPS .2, hubs .3 and .4, REST .1)
and one free port shared by DPS and both hubs (the agent's config has one hub port for
every hub, as Azure does), so nothing clashes with another test or devcloud's defaults.
:class:`AgentThread` runs :class:`agent.runtime.daemon.Daemon` in a thread of the test process;
:func:`wait_until` (from :mod:`tests.support.waiting`) polls a condition against a
deadline (no fixed sleeps).
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, load_config
from agent.core.lifecycle import State
from agent.runtime.daemon import Daemon
from devcloud.app import DevCloudConfig, DevCloudHandle, DevCloudThread, HubSpec
from devcloud.errors import DeviceNotOnlineError
from devcloud.pki import PKI, Issued
from tests.support.waiting import wait_until


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def fresh_addresses() -> tuple[str, str, str, str]:
    """Four unused-looking loopback addresses for one test."""
    a, b = random.randint(16, 250), random.randint(1, 250)
    prefix = f"127.{a}.{b}"
    return f"{prefix}.1", f"{prefix}.2", f"{prefix}.3", f"{prefix}.4"


@dataclass
class Cloud:
    """A running devcloud plus what an agent config needs to reach it."""

    handle: DevCloudHandle
    dps_host: str
    port: int
    state_dir: Path
    ws_port: int | None = None

    @property
    def client(self) -> Any:
        return self.handle.client

    @property
    def pki(self) -> PKI:
        return self.handle.pki

    def hub_host(self, name: str) -> str:
        return self.handle.hub_hostname(name)

    def hub_of(self, hostname: str) -> str:
        return self.handle.hub_name(hostname)


@contextlib.contextmanager
def running_cloud(
    tmp: Path,
    *,
    addresses: tuple[str, str, str, str] | None = None,
    port: int | None = None,
    websockets: bool = False,
    **overrides: Any,
) -> Iterator[Cloud]:
    """devcloud on fresh loopback addresses (or the given ones: REST, DPS, hub1, hub2)."""
    last_error: Exception | None = None
    for _ in range(5):  # a random address/port may be taken; try a few
        rest, dps, hub1, hub2 = addresses or fresh_addresses()
        try:
            chosen = port or free_port(dps)
            ws = free_port(dps) if websockets else None
            config = DevCloudConfig(
                state_dir=tmp / "devcloud",
                dps_host=dps,
                dps_port=chosen,
                dps_ws_port=ws,
                hubs=(HubSpec("hub1", hub1, chosen, ws), HubSpec("hub2", hub2, chosen, ws)),
                rest_host=rest,
                rest_port=0,
                assignment_delay_s=0.05,
                **overrides,
            )
            runner = DevCloudThread(config)
            handle = runner.__enter__()
        except OSError as exc:
            last_error = exc
            continue
        try:
            yield Cloud(handle, dps, chosen, config.state_dir, ws)
        finally:
            runner.__exit__(None, None, None)
        return
    raise AssertionError(f"could not start devcloud: {last_error}")


def issue_device(cloud: Cloud, registration_id: str, **kwargs: Any) -> Issued:
    """A device certificate from devcloud's PKI (signed by the intermediate)."""
    return cloud.pki.issue_device(registration_id, **kwargs)


def wait_methods_online(cloud: Cloud, device_id: str, *, timeout_s: float = 10.0) -> None:
    """Wait until ``device_id`` answers direct methods (getStatus, 200).

    The agent is CONNECTED at CONNACK; its method subscription is in place a moment
    later. Until then the hub, as the real one does, answers a method with 404
    (device not online).
    """

    def answered() -> bool:
        try:
            status, _ = cloud.client.invoke_method(device_id, "getStatus", None, timeout_s=5)
        except DeviceNotOnlineError:
            return False
        return bool(status == 200)

    wait_until(answered, timeout_s=timeout_s, what=f"{device_id} to answer direct methods")


def write_config(
    path: Path,
    cloud: Cloud | None,
    device: Issued,
    *,
    state_dir: Path,
    dps_host: str | None = None,
    dps_port: int | None = None,
    hub_port: int | None = None,
    id_scope: str | None = None,
    ca_path: Path | None = None,
    sensors: str = (
        # Fast parts: the mock chips take real conversion time, as the silicon would.
        '[{part = "SHT4x", bus = 1, address = 0x45}, {part = "BME280", bus = 1, address = 0x76}]'
    ),
    interval_s: float = 0.2,
    lifecycle: dict[str, float] | None = None,
    extra: str = "",
    hal_extra: str = "",
    websockets: bool = False,
    buffer: str = "memory",
    telemetry_extra: str = "",
    allowed_hubs: list[str] | None = None,
) -> AgentConfig:
    """Write an agent TOML for ``cloud`` and load it through the real loader.

    ``buffer``: the telemetry buffer (memory unless a test is about the durable one).
    """
    timing = {
        "backoff_base_s": 0.05,
        "backoff_cap_s": 0.5,
        "long_outage_s": 30.0,
        "dps_backoff_cap_s": 0.5,
        "rejected_retry_s": 1.0,
        "reprovision_budget": 6,
        "reprovision_window_s": 3600.0,
        "connect_timeout_s": 3.0,
    }
    timing.update(lifecycle or {})
    ca = ca_path or (cloud.pki.root_path if cloud else None)
    dps_host = dps_host or (cloud.dps_host if cloud else None)
    dps_port = dps_port or (cloud.port if cloud else None)
    hub_port = hub_port or (cloud.port if cloud else None)
    id_scope = id_scope or (cloud.handle.id_scope if cloud else None)
    assert ca and dps_host and dps_port and hub_port and id_scope, "no cloud: give every endpoint"
    lines = "\n".join(f"{k} = {v!r}" for k, v in timing.items())
    hubs = allowed_hubs or ([cloud.hub_host("hub1"), cloud.hub_host("hub2")] if cloud else [])
    allowed = f"allowed_hub_suffixes = {json.dumps(hubs)}" if hubs else ""
    transport = ""
    if websockets:
        assert cloud is not None and cloud.ws_port is not None
        transport = f'transport = "websockets"\nws_port = {cloud.ws_port}'
    path.write_text(
        f"""
[identity]
keystore = "file"
cert_chain_path = "{device.chain_path}"
key_path = "{device.key_path}"
trust_anchor_paths = ["{ca}"]

[dps]
host = "{dps_host}"
port = {dps_port}
id_scope = "{id_scope}"
server_ca_path = "{ca}"
{transport}
{allowed}

[dps.payload]
model = "integration-test"

[hub]
port = {hub_port}
server_ca_path = "{ca}"
{transport}
keep_alive_s = 30

[lifecycle]
{lines}

[telemetry]
interval_s = {interval_s}
queue_max_messages = 1000
max_in_flight = 10
buffer = "{buffer}"
{telemetry_extra}

[state]
directory = "{state_dir}"

[hal]
backend = "mock"
mock_seed = 1
sensors = {sensors}
{hal_extra}

[log]
level = "DEBUG"
{extra}
"""
    )
    return load_config(path)


class AgentThread:
    """The real daemon in a thread; ``stop()`` is what SIGTERM does."""

    def __init__(self, config: AgentConfig, **daemon_options: Any) -> None:
        self.daemon = Daemon(config, **daemon_options)
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, name="agent-under-test", daemon=True)

    def _run(self) -> None:
        self.exit_code = self.daemon.run()

    def start(self) -> AgentThread:
        self._thread.start()
        return self

    @property
    def state(self) -> State:
        return self.daemon.state

    def wait_state(self, state: State, timeout_s: float = 15.0) -> None:
        wait_until(lambda: self.daemon.state is state, timeout_s=timeout_s, what=f"agent {state}")

    def stop(self, timeout_s: float = 10.0) -> int:
        self.daemon.request_stop()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the agent did not stop"
        assert self.exit_code is not None
        return self.exit_code

    def __enter__(self) -> AgentThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self.stop()
