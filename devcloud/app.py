"""The devcloud application: DPS + IoT Hubs + REST API wired together, and a thread harness.

Theory of operation. :class:`DevCloud` is the composition root. :meth:`DevCloud.start`
loads (or creates) the PKI in ``state_dir/pki``, opens the registry (SQLite when
``database`` is set, else memory), makes sure the ``default`` enrollment group exists
(when ``default_group``), then starts one :class:`~devcloud.mqtt.server.MQTTServer` for
DPS and one per hub, each on its own address with its own :class:`~devcloud.tls.ServerTLS`
factory, and finally the REST API. Port 0 anywhere means "a free port"; the bound
addresses are exposed (:attr:`DevCloud.dps_address`, :attr:`DevCloud.hub_addresses`,
:attr:`DevCloud.rest_url`). :meth:`DevCloud.stop` undoes it in reverse order. Everything
runs on one asyncio event loop; nothing here blocks it.

:class:`DevCloudThread` runs a :class:`DevCloud` on its own event loop in one background
thread, for synchronous tests and the agent's integration tests::

    with DevCloudThread(DevCloudConfig(state_dir=tmp, dps_port=0, ...)) as cloud:
        cloud.client.put_enrollment_group(...)
        cloud.call(lambda app: app.registry.devices())
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography.hazmat.primitives import serialization

from devcloud.allocation import AllocationRequest, AllocationResult, CustomAllocator
from devcloud.config import DevCloudConfig, HubSpec
from devcloud.errors import NotFoundError
from devcloud.model import EnrollmentGroup
from devcloud.pki import PKI

if TYPE_CHECKING:
    from devcloud.client import DevCloudClient
    from devcloud.dps import Provisioner
    from devcloud.hub import HubEndpoint
    from devcloud.mqtt.server import MQTTServer
    from devcloud.registry import Registry, RegistryEvent
    from devcloud.render import HubNames
    from devcloud.rest import RestApi
    from devcloud.telemetry import TelemetryLog
    from devcloud.tls import ServerTLS

__all__ = [
    "AllocationRequest",
    "AllocationResult",
    "DevCloud",
    "DevCloudConfig",
    "DevCloudHandle",
    "DevCloudThread",
    "HubSpec",
]

T = TypeVar("T")
DEFAULT_GROUP = "default"
#: Names accepted in ``attestation.x509.caReferences.primary``.
CA_REFERENCES = ("devcloud-root", "devcloud-intermediate")


class DevCloud:
    """devcloud on the current event loop."""

    def __init__(self, config: DevCloudConfig, *, pki: PKI | None = None) -> None:
        self.config = config.validated()
        self._given_pki = pki
        self._servers: list[MQTTServer] = []
        self._rest: RestApi | None = None
        self._started = False
        self.dps_address: tuple[str, int] = ("", 0)
        self.dps_ws_address: tuple[str, int] | None = None
        self.hub_addresses: dict[str, tuple[str, int]] = {}
        self.hub_ws_addresses: dict[str, tuple[str, int] | None] = {}
        self.rest_address: tuple[str, int] = ("", 0)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every endpoint; on failure stop what already started and re-raise."""
        from devcloud.activity import ChangeFeed, DeviceActivity, DpsHistory
        from devcloud.assignment import Assigner
        from devcloud.dps import DpsEndpoint, Provisioner
        from devcloud.hub import HubEndpoint
        from devcloud.issuance import Issuer
        from devcloud.mqtt.server import MQTTServer
        from devcloud.registry import Registry
        from devcloud.render import HubNames
        from devcloud.rest import RestApi, Services
        from devcloud.store import MemoryStore, SQLiteStore, Store
        from devcloud.telemetry import TelemetryLog
        from devcloud.tls import ServerTLS

        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.pki = self._given_pki or PKI.create(cfg.state_dir / "pki")
        store: Store = SQLiteStore(cfg.database) if cfg.database else MemoryStore()
        self.registry: Registry = Registry([h.name for h in cfg.hubs], store)
        self.hub_names: HubNames = HubNames({h.name: h.public_hostname for h in cfg.hubs})
        self.telemetry: TelemetryLog = TelemetryLog()
        # The console's doorbell: every registry write, connection, publish and DPS event.
        self.changes = ChangeFeed()
        self.registry.on_change = self.changes.bump
        self.activity = DeviceActivity(self.registry.now)
        self.activity.on_change = self.changes.bump
        dps_history = DpsHistory(self.registry.now)
        dps_history.on_change = self.changes.bump
        if cfg.default_group:
            try:
                self.registry.get_group(DEFAULT_GROUP)
            except NotFoundError:
                self.registry.put_group(
                    EnrollmentGroup(DEFAULT_GROUP, self._pem(self.pki.intermediate))
                )
        self.assigner = Assigner(self.registry, self.hub_names)
        self.issuer = Issuer(self.pki, self.registry)
        self.provisioner: Provisioner = Provisioner(
            self.registry,
            self.assigner,
            id_scope=cfg.id_scope,
            assignment_delay_s=cfg.assignment_delay_s,
            registrations_per_second=cfg.registrations_per_second,
            throttle_reserves_slots=cfg.throttle_reserves_slots,
            is_revoked=self.pki.is_revoked,
            issuer=self.issuer,
            history=dps_history,
        )
        self.hubs: dict[str, HubEndpoint] = {
            h.name: HubEndpoint(
                h.name,
                h.public_hostname,
                self.registry,
                self.telemetry,
                is_revoked=self.pki.is_revoked,
                issuer=self.issuer,
                renewal_delay_s=cfg.assignment_delay_s,
                activity=self.activity,
            )
            for h in cfg.hubs
        }
        self.tls: dict[str, ServerTLS] = {}
        self.hub_servers: dict[str, MQTTServer] = {}
        self.registry.add_listener(self._on_registry_event)
        try:
            self.tls["dps"] = ServerTLS(self.pki, self.registry, "dps", cfg.dps_host)
            dps = MQTTServer(
                DpsEndpoint(self.provisioner),
                self.tls["dps"],
                name="dps",
            )
            self._servers.append(dps)
            await dps.start(cfg.dps_host, cfg.dps_port, cfg.dps_ws_port)
            self.dps_address = dps.address
            self.dps_ws_address = dps.ws_address
            for spec in cfg.hubs:
                tls = ServerTLS(self.pki, self.registry, spec.name, spec.host, spec.hostname)
                self.tls[spec.name] = tls
                server = MQTTServer(
                    self.hubs[spec.name], tls, name=spec.name, puback_delay_s=cfg.hub_puback_delay_s
                )
                self._servers.append(server)
                self.hub_servers[spec.name] = server
                await server.start(spec.host, spec.port, spec.ws_port)
                self.hub_addresses[spec.name] = server.address
                self.hub_ws_addresses[spec.name] = server.ws_address
            services = Services(
                registry=self.registry,
                hubs=self.hubs,
                hub_names=self.hub_names,
                telemetry=self.telemetry,
                provisioner=self.provisioner,
                ca_lookup=self.ca_pem,
                pki=self.pki,
                describe_hubs=self.describe_hubs,
                describe_dps=self.describe_dps,
                activity=self.activity,
                changes=self.changes,
            )
            self._rest = RestApi(services)
            self.rest_address = await self._rest.start(cfg.rest_host, cfg.rest_port)
        except BaseException:
            await self.stop()
            raise
        self._started = True

    async def stop(self) -> None:
        """Stop the REST API, pending assignments and every server; close the store."""
        if self._rest is not None:
            await self._rest.stop()
            self._rest = None
        if hasattr(self, "provisioner"):
            await self.provisioner.drain()
        for server in reversed(self._servers):
            await server.stop()
        self._servers.clear()
        if hasattr(self, "registry"):
            self.registry.close()
        self._started = False

    # -- information ------------------------------------------------------------------------

    @property
    def rest_url(self) -> str:
        """Base URL of the REST API, e.g. ``http://127.0.0.1:8088``."""
        host, port = self.rest_address
        return f"http://{host}:{port}"

    @property
    def console_url(self) -> str:
        """The web console's address, e.g. ``http://127.0.0.1:8088/console/``."""
        return f"{self.rest_url}/console/"

    @property
    def id_scope(self) -> str:
        """The DPS id scope devices must use."""
        return self.config.id_scope

    def hub_hostname(self, name: str) -> str:
        """The hostname DPS returns for hub ``name``."""
        return self.hub_names.hostname(name)

    def describe_hubs(self) -> list[dict[str, Any]]:
        """What ``GET /hubs`` answers."""
        out = []
        for spec in self.config.hubs:
            host, port = self.hub_addresses.get(spec.name, (spec.host, spec.port))
            ws = self.hub_ws_addresses.get(spec.name)
            out.append(
                {
                    "name": spec.name,
                    "hostname": spec.public_hostname,
                    "host": host,
                    "port": port,
                    "wsPort": ws[1] if ws else None,
                    "connectedDevices": len(self.hubs[spec.name].sessions),
                }
            )
        return out

    def describe_dps(self) -> dict[str, Any]:
        """What ``GET /dps`` answers."""
        host, port = self.dps_address
        return {
            "idScope": self.config.id_scope,
            "host": host,
            "port": port,
            "wsPort": self.dps_ws_address[1] if self.dps_ws_address else None,
            "assignmentDelaySeconds": self.config.assignment_delay_s,
            "registrationsPerSecond": self.config.registrations_per_second,
            "throttleReservesSlots": self.config.throttle_reserves_slots,
        }

    @staticmethod
    def _pem(cert: Any) -> str:
        return str(cert.public_bytes(serialization.Encoding.PEM).decode())

    def ca_pem(self, name: str) -> str:
        """PEM of a CA named in ``caReferences`` (devcloud-root, devcloud-intermediate)."""
        if name == "devcloud-root":
            return self._pem(self.pki.root)
        if name == "devcloud-intermediate":
            return self._pem(self.pki.intermediate)
        raise NotFoundError(f"unknown CA reference {name!r}; known: {list(CA_REFERENCES)}")

    # -- behaviour --------------------------------------------------------------------------

    def set_custom_allocator(self, fn: CustomAllocator | None) -> None:
        """Use ``fn`` for ``custom`` allocation in enrollments without a webhook URL."""
        self.assigner.custom_allocator = fn

    def _on_registry_event(self, event: RegistryEvent) -> None:
        from devcloud.registry import DeviceChanged

        # A deleted device's persistent MQTT session goes with it, as in IoT Hub.
        if isinstance(event, DeviceChanged) and event.device is None:
            server = self.hub_servers.get(event.hub)
            if server is not None:
                server.drop_session(event.device_id)


async def _cancel_remaining_tasks() -> None:
    """Cancel and await every other task on this loop (REST streams, notifiers)."""
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class DevCloudHandle:
    """What ``with DevCloudThread(...) as cloud`` gives: the app's addresses and helpers."""

    def __init__(self, runner: DevCloudThread, app: DevCloud) -> None:
        self._runner = runner
        self.app = app
        self.config = app.config
        self.pki = app.pki
        self.id_scope = app.id_scope
        self.rest_url = app.rest_url
        self.dps_address = app.dps_address
        self.dps_ws_address = app.dps_ws_address
        self.hub_addresses = dict(app.hub_addresses)
        self.hub_ws_addresses = dict(app.hub_ws_addresses)
        self._client: DevCloudClient | None = None

    @property
    def client(self) -> DevCloudClient:
        """A :class:`~devcloud.client.DevCloudClient` for this instance's REST API."""
        if self._client is None:
            from devcloud.client import DevCloudClient

            self._client = DevCloudClient(self.rest_url)
        return self._client

    @property
    def ca_path(self) -> Path:
        """The CA file a device trusts to verify devcloud's servers (the root)."""
        return self.pki.root_path

    def hub_hostname(self, name: str) -> str:
        """The hostname DPS returns for hub ``name``."""
        return self.app.hub_hostname(name)

    def hub_name(self, hostname: str) -> str:
        """The hub name for a hostname (or name) DPS returned."""
        return self.app.hub_names.name(hostname)

    def call(self, fn: Callable[[DevCloud], T], timeout_s: float = 10.0) -> T:
        """Run ``fn(app)`` on devcloud's event loop thread and return its result."""

        async def run() -> T:
            return fn(self.app)

        return self.run(run(), timeout_s)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        """Run a coroutine on devcloud's loop and wait for its result."""
        return self._runner.run(coro, timeout_s)

    def set_custom_allocator(self, fn: CustomAllocator | None) -> None:
        """Use ``fn`` (called on devcloud's thread) for ``custom`` allocation."""
        self.call(lambda app: app.set_custom_allocator(fn))


class DevCloudThread:
    """Runs a :class:`DevCloud` on its own event loop in one background thread."""

    def __init__(
        self, config: DevCloudConfig, *, pki: PKI | None = None, timeout_s: float = 30.0
    ) -> None:
        self.config = config
        self._pki = pki
        self._timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.app: DevCloud | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        """Run ``coro`` on the background loop and wait for its result."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("DevCloudThread is not running")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def __enter__(self) -> DevCloudHandle:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="devcloud", daemon=True)
        self._thread.start()
        app = DevCloud(self.config, pki=self._pki)
        try:
            self.run(app.start(), self._timeout_s)
        except BaseException:
            self._shutdown()
            raise
        self.app = app
        return DevCloudHandle(self, app)

    def __exit__(self, *_exc: object) -> None:
        try:
            if self.app is not None:
                self.run(self.app.stop(), self._timeout_s)
        finally:
            self.app = None
            self._shutdown()

    def _shutdown(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive():
            self.run(_cancel_remaining_tasks(), self._timeout_s)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(self._timeout_s)
        if not thread.is_alive():
            loop.close()
        self._loop = None
        self._thread = None
