"""Event routing and action execution: what the daemon does with what its cores say.

Theory of operation
-------------------
:class:`Router` is the half of :class:`~agent.daemon.Daemon` that connects the
sans-I/O cores to the world; :mod:`agent.daemon` keeps the other half (start-up,
identity, the main loop and its timers, telemetry sampling, status, shutdown).

* :meth:`Router._route` takes one event from the open MQTT connection and hands it
  to the core that owns that connection: the DPS
  :class:`~agent.provisioning.Registration` or the :class:`~agent.session.HubSession`.
  Their outcomes (assigned, failed, CONNACK 0/3/4/5, connection lost) become
  :class:`~agent.lifecycle.Lifecycle` events through :meth:`Router._feed`, which
  also turns a failure while the certificate is out of its validity window into
  IdentityInvalid.
* :meth:`Router._lifecycle_action`, :meth:`Router._dps_actions` and
  :meth:`Router._session_actions` carry out what comes back: open or close a
  connection (one at a time, DPS *or* hub), publish, subscribe, persist, start and
  cancel named timers, show a status (sd_notify STATUS, LED, ``status.json``).

Nothing in here decides anything; every decision is a core's. It logs as
``agent.daemon``, as it did before the split.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent import __version__, lifecycle, provisioning, wire
from agent.config import AgentConfig
from agent.core import CancelTimer, Clock, Publish, StartTimer, Subscribe, utc_iso
from agent.errors import TransportError
from agent.identity import Identity
from agent.methods import Reprovision
from agent.sdnotify import Notifier
from agent.session import HubSession, ReportedContext, SettingsChanged, sensor_infos
from agent.state import StateStore
from agent.telemetry import Publisher
from agent.twin import Settings

if TYPE_CHECKING:
    from agent.transport import MqttEndpoint, MqttTransport, TlsSettings, TransportEvent

log = logging.getLogger("agent.daemon")

SAMPLE_TIMER = "telemetry.sample"
EFFECT_TIMER = "method.effect"
IDENTITY_FILES_TIMER = "identity.files"
STATUS_TIMER = "status.refresh"
#: status.json is refreshed between lifecycle changes at most this often (flash wear).
STATUS_REFRESH_MIN_S = 60.0
#: How often the identity files are compared (stat only) while waiting for a usable one.
IDENTITY_POLL_S = 1.0
#: Failures that, with a certificate out of its validity window, mean "wait for a new one".
_IDENTITY_SENSITIVE = (
    lifecycle.HubRejected,
    lifecycle.HubUnavailable,
    lifecycle.ConnectionDropped,
    lifecycle.ProvisioningFailed,
)
#: How long a method's effect waits for the PUBACK of its reply.
EFFECT_WAIT_S = 2.0
CLIENT_VERSION = f"device-agent/{__version__}"


def _led_pattern(state: lifecycle.State) -> str:
    match state:
        case lifecycle.State.CONNECTED:
            return "CONNECTED"
        case lifecycle.State.PROVISIONING | lifecycle.State.CONNECTING:
            return "PROVISIONING"
        case lifecycle.State.REPROVISION_WAIT | lifecycle.State.IDENTITY_WAIT:
            return "ERROR"
        case _:
            return "OFFLINE"


class Router:
    """Routes connection events to the cores and carries out their actions.

    :class:`~agent.daemon.Daemon` sets every attribute below in its constructor and
    provides :meth:`status` and :meth:`_recheck_identity`.
    """

    config: AgentConfig
    notifier: Notifier
    clock: Clock
    rng: random.Random
    transport: MqttTransport | None
    _transport_kind: str | None  # "dps" or "hub"
    registration: provisioning.Registration | None
    session: HubSession | None
    identity: Identity | None
    store: StateStore | None
    machine: lifecycle.Lifecycle | None
    sensors: list[Any]
    hal_error: str | None
    sensor_errors: dict[str, str]
    _led: Any
    publisher: Publisher
    settings: Settings
    last_reprovision_reason: str | None
    provisioned_at: str | None
    _timers: dict[str, float]
    _status_refresh_s: float | None

    def status(self) -> Mapping[str, object]:
        """What getStatus and status.json report (the daemon's)."""
        raise NotImplementedError

    def _recheck_identity(self) -> None:
        raise NotImplementedError

    @property
    def state(self) -> lifecycle.State:
        """The lifecycle state (STARTING before the loop runs)."""
        return self.machine.state if self.machine else lifecycle.State.STARTING

    def _start_timer(self, name: str, delay_s: float) -> None:
        self._timers[name] = self.clock.monotonic() + max(0.0, delay_s)

    def _identity_problem_now(self) -> str | None:
        identity = self.identity
        if identity is None:
            return None
        return identity.invalid_reason(datetime.fromtimestamp(self.clock.time(), UTC))

    # -- routing ------------------------------------------------------------------------------

    def _route(self, transport: MqttTransport, event: TransportEvent) -> None:
        from agent import transport as t

        if transport is not self.transport:
            return  # from a connection we already left
        if self._transport_kind == "dps":
            registration = self.registration
            if registration is None:
                return
            dps_event: provisioning.DpsEvent | None
            match event:
                case t.Connected():
                    dps_event = provisioning.DpsConnected()
                case t.ConnectRefused(return_code=code):
                    dps_event = provisioning.DpsConnectRefused(code)
                case t.ConnectionLost(reason=reason):
                    dps_event = provisioning.DpsConnectionLost(reason)
                case t.Subscribed(granted_qos=granted):
                    dps_event = provisioning.DpsSubscribed(granted)
                case t.MessageReceived(topic=topic, payload=payload):
                    dps_event = provisioning.DpsMessage(topic, payload)
                case _:
                    dps_event = None
            if dps_event is not None:
                self._dps_actions(registration.handle(dps_event))
            return
        match event:
            case t.Connected():
                self._feed(lifecycle.HubConnected())
                if self.state is lifecycle.State.CONNECTED and self.session is not None:
                    self._session_actions(self.session.on_connected())
            case t.ConnectRefused(return_code=code):
                if code in (4, 5):
                    self._feed(lifecycle.HubRejected(code))
                else:
                    self._feed(lifecycle.HubUnavailable(f"hub refused: CONNACK {code}"))
            case t.ConnectionLost(reason=reason):
                if self.session is not None:
                    self.session.on_disconnected()
                    self.session = None
                    self._cancel_connection_timers()
                if self.state is lifecycle.State.CONNECTED:
                    self._feed(lifecycle.ConnectionDropped(reason))
                else:
                    self._feed(lifecycle.HubUnavailable(reason))
            case t.MessageReceived(topic=topic, payload=payload):
                if self.session is not None:
                    try:
                        actions = self.session.on_message(topic, payload)
                    except Exception:  # the cloud's input must never take the daemon down
                        log.exception("handling a message on %r failed; dropped", topic)
                        return
                    self._session_actions(actions)
            case t.PublishAcked(mid=mid):
                if self.session is not None:
                    self._session_actions(self.session.on_puback(mid))
            case t.Subscribed(granted_qos=granted):
                if any(q not in (0, 1) for q in granted):
                    log.warning("the hub refused a subscription: %s", granted)

    def _feed(self, event: lifecycle.Event) -> None:
        machine = self.machine
        if machine is None:
            return
        if isinstance(event, _IDENTITY_SENSITIVE):
            problem = self._identity_problem_now()
            if problem is not None:
                # Retrying cannot help (a hub rejection would even send us to DPS): wait.
                log.warning("%s, and the certificate is unusable: %s", event, problem)
                event = lifecycle.IdentityInvalid(problem)
        try:
            actions = machine.handle(event)
        except lifecycle.IllegalEventError as exc:
            log.error("lifecycle: %s", exc)
            return
        for action in actions:
            self._lifecycle_action(action)

    def _lifecycle_action(self, action: lifecycle.AnyAction) -> None:
        match action:
            case lifecycle.ConnectDps():
                self._connect_dps()
            case lifecycle.CheckIdentity():
                self._recheck_identity()
            case lifecycle.ConnectHub(assignment=assignment):
                self._connect_hub(assignment)
            case lifecycle.Disconnect():
                self._disconnect()
            case lifecycle.PersistAssignment(assignment=assignment, reason=reason):
                self.last_reprovision_reason = reason
                self.provisioned_at = assignment.provisioned_at
                assert self.store is not None
                try:
                    self.store.save(assignment, reason=reason)
                except OSError as exc:
                    log.error("could not persist the assignment: %s", exc)
                log.info("assigned to %s as %s", assignment.assigned_hub, assignment.device_id)
            case lifecycle.PersistBudget(budget=budget):
                assert self.store is not None
                try:
                    self.store.save_budget(budget)
                except OSError as exc:
                    log.error("could not persist the reprovisioning budget: %s", exc)
            case StartTimer(name=name, delay_s=delay):
                self._start_timer(name, delay)
            case CancelTimer(name=name):
                self._timers.pop(name, None)
            case lifecycle.Status(state=state, text=text):
                self._on_status(state, text)

    def _on_status(self, state: lifecycle.State, text: str) -> None:
        log.info("%s: %s", state.value, text)
        self.notifier.status(f"{state.value}: {text}")
        if state is lifecycle.State.STOPPING:
            self.notifier.stopping()
        if state is lifecycle.State.IDENTITY_WAIT and IDENTITY_FILES_TIMER not in self._timers:
            self._start_timer(IDENTITY_FILES_TIMER, IDENTITY_POLL_S)
        if self._led is not None:
            import hal

            try:
                self._led.show(hal.LedPattern[_led_pattern(state)])
            except hal.HALError as exc:
                log.warning("LED: %s", exc)
        self._write_status()

    def _status_refresh_s_now(self) -> float:
        if self._status_refresh_s is not None:
            return self._status_refresh_s
        return max(self.settings.telemetry_interval_s, STATUS_REFRESH_MIN_S)

    def _write_status(self, state_name: str | None = None) -> None:
        if self.store is None:
            return
        if state_name is None:
            # Written now: the next periodic refresh is a full period away.
            self._start_timer(STATUS_TIMER, self._status_refresh_s_now())
        status = dict(self.status())
        if state_name is not None:
            status["state"] = state_name
        try:
            self.store.write_status(status)
        except OSError as exc:
            log.warning("could not write status.json: %s", exc)

    # -- DPS --------------------------------------------------------------------------------------

    def _tls(self, what: str, identity: Identity | None = None) -> TlsSettings:
        from agent.transport import TlsSettings

        ident = identity or self.identity
        assert ident is not None
        ca = self.config.dps.server_ca_path if what == "dps" else self.config.hub.server_ca_path
        return TlsSettings(ident.cert_chain_path, ident.key_path, ident.key_passphrase, ca)

    def _open(self, kind: str, endpoint: MqttEndpoint) -> None:
        from agent.transport import MqttTransport

        current = self.transport
        if current is not None and current.endpoint == endpoint and self._transport_kind == kind:
            current.disconnect()
        else:
            self._close_transport()
            self.transport = MqttTransport(
                endpoint,
                self._tls(kind),
                connect_timeout_s=self.config.lifecycle.connect_timeout_s,
            )
            self._transport_kind = kind
        assert self.transport is not None
        self.transport.start_connect()

    def _connect_dps(self) -> None:
        from agent.transport import MqttEndpoint

        cfg, ident = self.config, self.identity
        assert ident is not None
        websockets = cfg.dps.transport == "websockets"
        endpoint = MqttEndpoint(
            host=cfg.dps.host,
            port=cfg.dps.ws_port if websockets else cfg.dps.port,
            client_id=ident.registration_id,
            username=wire.dps_username(
                cfg.dps.id_scope,
                ident.registration_id,
                api_version=cfg.dps.api_version,
                client_version=CLIENT_VERSION,
            ),
            websockets=websockets,
            keep_alive_s=cfg.hub.keep_alive_s,
            clean_session=True,
        )
        payload = provisioning.registration_payload(
            model=str(cfg.dps.payload.get("model", "device-agent")),
            agent_version=__version__,
            sensors=[s.name for s in self.sensors],
            extra=cfg.dps.payload,
        )
        self.registration = provisioning.Registration(
            ident.registration_id,
            payload,
            rng=self.rng,
            response_timeout_s=cfg.lifecycle.connect_timeout_s,
            default_poll_s=min(3.0, max(cfg.lifecycle.backoff_base_s, 0.05)),
            fallback_time_utc=utc_iso(self.clock.time()),
        )
        log.info("registering with DPS at %s:%d", endpoint.host, endpoint.port)
        self._open("dps", endpoint)

    def _dps_actions(self, actions: Sequence[provisioning.DpsAction]) -> None:
        for action in actions:
            match action:
                case Subscribe() | Publish():
                    self._send(action)
                case StartTimer(name=name, delay_s=delay):
                    self._start_timer(name, delay)
                case CancelTimer(name=name):
                    self._timers.pop(name, None)
                case provisioning.RegistrationSent():
                    self._feed(lifecycle.RegistrationSent())
                case provisioning.Assigned(assignment=assignment):
                    self.registration = None
                    self._feed(lifecycle.ProvisioningSucceeded(assignment))
                case provisioning.Failed(error=error, rejected=rejected, retry_after_s=after):
                    self.registration = None
                    log.warning("DPS registration failed: %s", error)
                    self._feed(lifecycle.ProvisioningFailed(error, rejected, after))

    # -- hub -------------------------------------------------------------------------------

    def _connect_hub(self, assignment: provisioning.Assignment) -> None:
        from agent.transport import MqttEndpoint

        cfg = self.config
        websockets = cfg.hub.transport == "websockets"
        endpoint = MqttEndpoint(
            host=assignment.assigned_hub,
            port=cfg.hub.ws_port if websockets else cfg.hub.port,
            client_id=assignment.device_id,
            username=wire.hub_username(
                assignment.assigned_hub,
                assignment.device_id,
                api_version=cfg.hub.api_version,
                client_version=CLIENT_VERSION,
            ),
            websockets=websockets,
            keep_alive_s=cfg.hub.keep_alive_s,
        )
        self.session = HubSession(
            device_id=assignment.device_id,
            publisher=self.publisher,
            settings=self.settings,
            default_interval_s=cfg.telemetry.interval_s,
            context=self._reported_context,
            status=self.status,
            budget_allows=self._budget_allows,
            twin_get_timeout_s=cfg.lifecycle.connect_timeout_s,
        )
        log.info("connecting to hub %s as %s", assignment.assigned_hub, assignment.device_id)
        self._open("hub", endpoint)
        # The session starts talking once CONNACK 0 arrives (see _route).

    def _budget_allows(self) -> bool:
        return self.machine.budget_allows() if self.machine else False

    def _reported_context(self) -> ReportedContext:
        machine = self.machine
        assignment = machine.assignment if machine else None
        return ReportedContext(
            agent_version=__version__,
            hub=assignment.assigned_hub if assignment else "",
            device_id=assignment.device_id if assignment else "",
            provisioned_at=self.provisioned_at,
            last_reprovision_reason=self.last_reprovision_reason,
            sensors=sensor_infos(self.sensors),
            errors=self._device_errors(),
        )

    def _device_errors(self) -> dict[str, str]:
        """The sensors' and the HAL's errors, as the twin and getStatus report them."""
        errors = dict(self.sensor_errors)
        if self.hal_error:
            errors["hal"] = self.hal_error
        return errors

    def _session_actions(self, actions: Sequence[Any]) -> None:
        for action in actions:
            match action:
                case Publish() | Subscribe():
                    self._send(action)
                case StartTimer(name=name, delay_s=delay):
                    self._start_timer(name, delay)
                case CancelTimer(name=name):
                    self._timers.pop(name, None)
                case SettingsChanged(settings=settings):
                    self._apply_settings(settings)
                case Reprovision(force=force):
                    self._timers.pop(EFFECT_TIMER, None)
                    self._feed(lifecycle.ReprovisionRequested(force=force, reason="direct method"))

    def _apply_settings(self, settings: Settings) -> None:
        old = self.settings.telemetry_interval_s
        self.settings = settings
        if settings.telemetry_interval_s != old:
            log.info("telemetry interval now %g s", settings.telemetry_interval_s)
            self._start_timer(SAMPLE_TIMER, settings.telemetry_interval_s)

    def _send(self, action: Publish | Subscribe) -> None:
        transport = self.transport
        if transport is None or not transport.connected:
            return
        try:
            if isinstance(action, Subscribe):
                transport.subscribe(action.topic_filter, action.qos)
                return
            mid = transport.publish(action.topic, action.payload, action.qos)
        except TransportError as exc:
            # A connection that cannot send is broken: drop it and let the cores react as
            # to any lost connection (in-flight telemetry is released and sent again later).
            log.warning("send failed, dropping the connection: %s", exc)
            from agent.transport import ConnectionLost

            transport.disconnect()
            self._route(transport, ConnectionLost(f"send failed: {exc}"))
            return
        if action.tag is not None and self.session is not None and self._transport_kind == "hub":
            self.session.on_published(action.tag, mid)
            if action.tag.startswith("method:") and self.session.has_pending_effects:
                self._start_timer(EFFECT_TIMER, EFFECT_WAIT_S)

    def _disconnect(self) -> None:
        if self.session is not None:
            self.session.on_disconnected()
            self.session = None
        self.registration = None
        self._cancel_connection_timers()
        if self.transport is not None:
            self.transport.disconnect()

    def _cancel_connection_timers(self) -> None:
        """Forget the timers of the connection's protocols (DPS, twin, method effects)."""
        for name in [n for n in self._timers if n.startswith(("dps.", "twin.", "method."))]:
            del self._timers[name]

    def _close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.transport = None
        self._transport_kind = None
