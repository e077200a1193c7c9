"""The composition root: the only module that sees every layer.

Theory of operation
-------------------
:func:`run` loads the identity (keystore), opens the HAL, reads the state directory
and then runs a single-threaded main loop until it is told to stop:

1. fire due timers (the lifecycle's, the DPS attempt's, telemetry sampling, method
   effects), and take over requests handed in from other threads (SIGTERM, the
   reprovision button) through a queue;
2. ``transport.poll()`` on the one open MQTT connection (DPS *or* hub), bounded by the
   next timer, or just wait when there is no connection;
3. route each transport event to the DPS :class:`~agent.provisioning.Registration`
   or the :class:`~agent.session.HubSession`, and their outcomes to the
   :class:`~agent.lifecycle.Lifecycle`;
4. carry out the actions that come back (connect, publish, persist, timers, status).

The cores decide; this module only does. sd_notify: READY once config, keystore and
HAL are up (the agent works offline); WATCHDOG from the loop only, so a stuck loop
stops the pings; STATUS is the lifecycle's description; STOPPING on shutdown.
``status.json`` in the state directory is rewritten on each lifecycle change, and
refreshed (telemetry counters, errors) at most every ``max(interval, 60 s)`` in
between -- not on every message: the state directory is on flash, and
``device-agent status`` must find the file without the unit's environment (so it
stays there rather than moving to ``$RUNTIME_DIRECTORY``).
Threads: this one, plus at most gpiozero's LED blinker and button watcher.

Failure policy here: a configuration problem at start is fatal (exit 78): a
missing identity file, a key readable by others, server CA files that do not load.
A certificate that cannot be used *now* (not yet valid, expired, not matching its
key, a chain that does not build) is not: the lifecycle waits in IDENTITY_WAIT
(READY is sent, sensors are sampled into the bounded queue, STATUS/status.json/LED
say what is wrong and the fix) and the keystore is re-checked on the lifecycle's
timer and whenever the identity files change (inode/size/mtime, polled every
:data:`IDENTITY_POLL_S`). A hub or DPS failure while the certificate has gone out of
its validity window is fed to the lifecycle as IdentityInvalid, so an expiry while
running waits instead of walking hub -> DPS -> DPS. The keystore's checks run in a
short-lived child (:func:`agent.identity.load_in_child`), so ``cryptography`` never
loads here. A HAL that cannot open degrades to no sensors, reported in the twin and
status; a state directory that cannot be written is logged and the agent carries on
from memory; a wiring bug (an event the lifecycle refuses) is logged, never fatal.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent import __version__, lifecycle, provisioning, wire
from agent.config import AgentConfig
from agent.core import CancelTimer, Clock, Publish, StartTimer, Subscribe, SystemClock, utc_iso
from agent.errors import (
    EX_CONFIG,
    EX_OK,
    EX_SOFTWARE,
    AgentError,
    CertificateInvalidError,
    TransportError,
)
from agent.identity import Identity, files_signature, load_in_child
from agent.methods import Reprovision
from agent.sdnotify import Notifier
from agent.session import HubSession, ReportedContext, SettingsChanged, sensor_infos
from agent.state import IdentityFingerprint, PersistedState, StateStore
from agent.telemetry import MemoryQueue, Publisher, build_message, sample
from agent.twin import Settings, initial_settings

if TYPE_CHECKING:
    from agent.transport import MqttEndpoint, MqttTransport, TlsSettings, TransportEvent

log = logging.getLogger(__name__)

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
#: Longest single wait of the main loop (keeps shutdown and watchdog prompt).
MAX_WAIT_S = 0.5
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


class Daemon:
    """The running agent. Build it, then :meth:`run` it; :meth:`request_stop` from anywhere."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        notifier: Notifier | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        status_refresh_s: float | None = None,
    ) -> None:
        self.config = config
        #: None: ``max(telemetry interval, STATUS_REFRESH_MIN_S)``, as the interval is now.
        self._status_refresh_s = status_refresh_s
        self._own_notifier = notifier is None
        self.notifier = notifier or Notifier()
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self._handoff: queue.SimpleQueue[lifecycle.Event] = queue.SimpleQueue()
        # Self-pipe: a signal handler or another thread wakes an idle loop without locks.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._timers: dict[str, float] = {}
        self.transport: MqttTransport | None = None
        self._transport_kind: str | None = None  # "dps" or "hub"
        self.registration: provisioning.Registration | None = None
        self.session: HubSession | None = None
        self.identity: Identity | None = None
        self._identity_files: tuple[tuple[int, int, int, int], ...] = ()
        self.store: StateStore | None = None
        self.machine: lifecycle.Lifecycle | None = None
        self.sensors: list[Any] = []
        self.hal_error: str | None = None
        self.sensor_errors: dict[str, str] = {}
        self._backend: Any = None
        self._led: Any = None
        self._button: Any = None
        self.queue = MemoryQueue(config.telemetry.queue_max_messages)
        self.publisher = Publisher(self.queue, max_in_flight=config.telemetry.max_in_flight)
        self.settings: Settings = initial_settings(config.telemetry.interval_s)
        self.sequence = 0
        self.started_at = self.clock.monotonic()
        self.last_telemetry_at: str | None = None
        self.last_reprovision_reason: str | None = None
        self.provisioned_at: str | None = None
        self._stopped = threading.Event()
        self._last_watchdog = 0.0

    # -- thread-safe entry points -----------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the loop to stop (any thread, or a signal handler)."""
        self._hand_in(lifecycle.Stop())

    def request_reprovision(self, *, force: bool = False, reason: str = "button") -> None:
        """Ask for a DPS registration (any thread: the button's callback)."""
        self._hand_in(lifecycle.ReprovisionRequested(force=force, reason=reason))

    def _hand_in(self, event: lifecycle.Event) -> None:
        # Runs in signal handlers and foreign threads: SimpleQueue.put and a socket send
        # only (no locks a signal could find already held).
        self._handoff.put(event)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        transport = self.transport
        if transport is not None:
            transport.wake()

    @property
    def state(self) -> lifecycle.State:
        """The lifecycle state (STARTING before the loop runs)."""
        return self.machine.state if self.machine else lifecycle.State.STARTING

    # -- start-up ------------------------------------------------------------------------------

    def start(self) -> None:
        """Identity, HAL, state, lifecycle; then READY. Raises AgentError if unusable."""
        cfg = self.config
        problem: str | None = None
        try:
            identity: Identity | None = self._load_identity()
        except CertificateInvalidError as exc:
            # Not a configuration error: wait (running) until the certificate is usable.
            identity, problem = None, str(exc)
            log.error("identity unusable, waiting for a usable certificate: %s", problem)
        if identity is not None:
            self._check_tls(identity)
        self._open_hal()
        self.store = StateStore(cfg.state.directory, None, clock=self.clock)
        try:
            self.store.ensure_directory()
        except OSError as exc:
            log.error("state directory %s unusable: %s", cfg.state.directory, exc)
        cached = self._adopt(identity) if identity is not None else None
        budget = self.store.load_budget(
            cfg.lifecycle.reprovision_budget, cfg.lifecycle.reprovision_window_s
        )
        self.machine = lifecycle.Lifecycle(
            cfg.lifecycle, clock=self.clock, rng=self.rng, budget=budget
        )
        if cached is not None:
            self.last_reprovision_reason = cached.last_reprovision_reason
            self.provisioned_at = cached.assignment.provisioned_at
        self.notifier.ready()
        log.info(
            "device-agent %s ready: registration id %s, %d sensor(s), %s",
            __version__,
            identity.registration_id if identity else "(no usable identity yet)",
            len(self.sensors),
            f"cached hub {cached.assignment.assigned_hub}" if cached else "no cached hub",
        )
        if problem is not None:
            self._feed(lifecycle.IdentityInvalid(problem))
        else:
            reason = self.store.discard_reason or "first boot: no cached assignment"
            self._feed(lifecycle.Boot(cached.assignment if cached else None, reason=reason))
        self._start_timer(SAMPLE_TIMER, 0.0)

    def _load_identity(self) -> Identity:
        """Run the keystore's checks (in a child process) and remember the files' signature."""
        cfg = self.config
        self._identity_files = files_signature(cfg.identity)
        now = datetime.fromtimestamp(self.clock.time(), UTC)
        identity = load_in_child(cfg.identity, config_path=cfg.source, now=now)
        for warning in identity.warnings:
            log.warning("identity: %s", warning)
        return identity

    def _adopt(self, identity: Identity) -> PersistedState | None:
        """Make ``identity`` the current one; return the assignment cached for it."""
        cfg = self.config
        self.identity = identity
        assert self.store is not None
        self.store.bind(
            IdentityFingerprint(
                cfg.dps.host, cfg.dps.id_scope, identity.registration_id, identity.thumbprint
            )
        )
        return self.store.load()

    def _recheck_identity(self) -> None:
        """IDENTITY_WAIT: load the identity again; feed the outcome to the lifecycle."""
        try:
            identity = self._load_identity()
            self._check_tls(identity)
        except AgentError as exc:
            self._feed(lifecycle.IdentityInvalid(str(exc)))
            return
        cached = self._adopt(identity)
        assert self.store is not None
        log.info("identity usable: registration id %s", identity.registration_id)
        reason = self.store.discard_reason or "identity usable again: no cached assignment"
        self._feed(lifecycle.IdentityLoaded(cached.assignment if cached else None, reason=reason))

    def _identity_problem_now(self) -> str | None:
        identity = self.identity
        if identity is None:
            return None
        return identity.invalid_reason(datetime.fromtimestamp(self.clock.time(), UTC))

    def _check_tls(self, identity: Identity) -> None:
        from agent.transport import build_ssl_context

        for what in ("dps", "hub"):
            try:
                build_ssl_context(self._tls(what, identity))
            except TransportError as exc:
                raise _StartupError(f"{what} TLS settings: {exc}") from exc

    def _open_hal(self) -> None:
        import hal

        cfg = self.config.hal
        try:
            self._backend = hal.open_backend(cfg.backend, seed=cfg.mock_seed)
        except hal.HALError as exc:
            self.hal_error = f"{type(exc).__name__}: {exc}"
            log.error("HAL unavailable, running without sensors: %s", self.hal_error)
            return
        try:
            self.sensors = list(hal.open_sensors(self._backend, cfg.sensors, cfg.buses))
        except hal.HALError as exc:
            # One sensor that does not answer must not silence the others: open them all
            # anyway; the absent one reports an error with every sample until it answers.
            log.error("sensor set-up: %s; carrying on with the sensors that answer", exc)
            try:
                self.sensors = list(
                    hal.open_sensors(self._backend, cfg.sensors, cfg.buses, require_present=False)
                )
            except hal.HALError as again:
                self.hal_error = f"{type(again).__name__}: {again}"
                log.error("HAL unavailable, running without sensors: %s", self.hal_error)
        if cfg.led_pin is None and cfg.button_pin is None:
            return  # no GPIO: do not even import gpiozero
        factory = getattr(self._backend, "pin_factory", None)
        try:
            if cfg.led_pin is not None:
                self._led = hal.StatusLed(cfg.led_pin, pin_factory=factory)
            if cfg.button_pin is not None:
                self._button = hal.ReprovisionButton(
                    cfg.button_pin,
                    lambda: self.request_reprovision(reason="button long press"),
                    hold_time_s=cfg.button_hold_s,
                    pin_factory=factory,
                )
        except hal.HALError as exc:
            self.hal_error = f"{type(exc).__name__}: {exc}"
            log.error("GPIO unavailable: %s", self.hal_error)

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns the exit code."""
        try:
            self.start()
        except AgentError as exc:
            log.error("%s", exc)
            self._shutdown()
            return exc.exit_code
        try:
            self._loop()
        except Exception:
            log.exception("main loop failed")
            self._shutdown()
            return EX_SOFTWARE
        self._shutdown()
        return EX_OK

    def _loop(self) -> None:
        watchdog_s = self.notifier.watchdog_interval_s()
        while not self._stopping():
            self._drain_handoff()
            self._fire_timers()
            if self._stopping():
                break
            wait = self._wait_s()
            transport = self.transport
            if transport is not None:
                events = transport.poll(wait)
                for event in events:
                    self._route(transport, event)
            else:
                self._idle(wait)
            now = self.clock.monotonic()
            if watchdog_s is not None and now - self._last_watchdog >= watchdog_s / 2:
                self.notifier.watchdog()
                self._last_watchdog = now

    def _idle(self, wait_s: float) -> None:
        """Wait with no connection open, until a timer is due or something is handed in."""
        try:
            readable, _, _ = select.select([self._wake_r], [], [], wait_s)
        except (OSError, ValueError):
            return
        if readable:
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)

    def _stopping(self) -> bool:
        return self.state is lifecycle.State.STOPPING

    def _wait_s(self) -> float:
        if not self._handoff.empty():
            return 0.0
        if not self._timers:
            return MAX_WAIT_S
        due = min(self._timers.values()) - self.clock.monotonic()
        return max(0.0, min(MAX_WAIT_S, due))

    def _drain_handoff(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_r.recv(4096)
        while True:
            try:
                event = self._handoff.get_nowait()
            except queue.Empty:
                return
            self._feed(event)

    def _fire_timers(self) -> None:
        for _ in range(len(self._timers) + 1):
            now = self.clock.monotonic()
            due = [(t, name) for name, t in self._timers.items() if t <= now]
            if not due:
                return
            _, name = min(due)
            del self._timers[name]
            self._on_timer(name)

    def _on_timer(self, name: str) -> None:
        if name == lifecycle.TIMER:
            self._feed(lifecycle.TimerFired())
        elif name.startswith("dps.") and self.registration is not None:
            self._dps_actions(self.registration.handle(provisioning.DpsTimerFired(name)))
        elif name == SAMPLE_TIMER:
            # Re-arm first, so the time sampling takes does not stretch the interval.
            self._start_timer(SAMPLE_TIMER, self.settings.telemetry_interval_s)
            self._sample()
        elif name == EFFECT_TIMER and self.session is not None:
            self._session_actions(self.session.take_pending_effects())
        elif name.startswith("twin.") and self.session is not None:
            self._session_actions(self.session.on_timer(name))
        elif name == STATUS_TIMER:
            self._write_status()
        elif name == IDENTITY_FILES_TIMER and self.state is lifecycle.State.IDENTITY_WAIT:
            self._start_timer(IDENTITY_FILES_TIMER, IDENTITY_POLL_S)
            if files_signature(self.config.identity) != self._identity_files:
                log.info("identity files changed; checking them again")
                self._recheck_identity()

    def _start_timer(self, name: str, delay_s: float) -> None:
        self._timers[name] = self.clock.monotonic() + max(0.0, delay_s)

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
        errors = dict(self.sensor_errors)
        if self.hal_error:
            errors["hal"] = self.hal_error
        return ReportedContext(
            agent_version=__version__,
            hub=assignment.assigned_hub if assignment else "",
            device_id=assignment.device_id if assignment else "",
            provisioned_at=self.provisioned_at,
            last_reprovision_reason=self.last_reprovision_reason,
            sensors=sensor_infos(self.sensors),
            errors=errors,
        )

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

    # -- telemetry ------------------------------------------------------------------------------

    def _sample(self) -> None:
        taken = sample(self.sensors, disabled=self.settings.disabled_sensors)
        self.sequence += 1
        now = self.clock.time()
        message = build_message(
            sequence=self.sequence,
            timestamp_s=now,
            sample=taken,
            message_id=f"{self.sequence}-{int(now * 1000)}",
        )
        self.queue.append(message)
        self.last_telemetry_at = utc_iso(now)
        errors_changed = dict(taken.errors) != self.sensor_errors
        self.sensor_errors = dict(taken.errors)
        session = self.session
        if session is not None and self.state is lifecycle.State.CONNECTED:
            self._session_actions(session.pump())
            if errors_changed:
                self._session_actions(session.report())

    # -- status -----------------------------------------------------------------------------------

    def status(self) -> Mapping[str, object]:
        """What getStatus and status.json report."""
        machine = self.machine
        snap = machine.snapshot() if machine else None
        errors = dict(self.sensor_errors)
        if self.hal_error:
            errors["hal"] = self.hal_error
        if machine is not None and machine.identity_problem:
            errors["identity"] = machine.identity_problem
        elif snap and snap.last_error:
            errors["connection"] = snap.last_error
        return {
            "state": snap.state.value if snap else lifecycle.State.STARTING.value,
            "description": machine.describe() if machine else "starting",
            "hub": snap.hub if snap else None,
            "deviceId": snap.device_id if snap else None,
            "registrationId": self.identity.registration_id if self.identity else None,
            "uptimeS": round(self.clock.monotonic() - self.started_at, 3),
            "lastTelemetry": {
                "sampledAt": self.last_telemetry_at,
                "sequence": self.sequence,
                "ackedTotal": self.publisher.acked_total,
                "lastAckedSequence": self.publisher.last_acked_sequence,
                "queued": len(self.queue),
                "dropped": self.queue.dropped,
            },
            "telemetryIntervalSeconds": self.settings.telemetry_interval_s,
            "sensors": [s.name for s in self.sensors],
            "disabledSensors": sorted(self.settings.disabled_sensors),
            "errors": errors,
            "lastReprovisionReason": self.last_reprovision_reason,
            "reprovisionAllowedAt": utc_iso(snap.budget_next_allowed_at) if snap else None,
            "agentVersion": __version__,
        }

    # -- shutdown --------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.session is not None:
            self.session.on_disconnected()
            self.session = None
        self._close_transport()
        for closer in (self._button, self._led, *self.sensors, self._backend):
            close: Callable[[], None] | None = getattr(closer, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception as exc:
                log.warning("closing %r: %s", closer, exc)
        self._write_status("STOPPED")
        self._wake_r.close()
        self._wake_w.close()
        if self._own_notifier:
            self.notifier.close()
        if self.machine is not None:
            log.info("stopped")


class _StartupError(AgentError):
    """TLS files that cannot be loaded: a configuration problem (exit 78)."""

    exit_code = EX_CONFIG


def run(
    config: AgentConfig,
    *,
    notifier: Notifier | None = None,
    clock: Clock | None = None,
    rng: random.Random | None = None,
) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the process exit code."""
    daemon = Daemon(config, notifier=notifier, clock=clock, rng=rng)
    if threading.current_thread() is not threading.main_thread():
        return daemon.run()
    previous = {
        sig: signal.signal(sig, lambda signum, frame: daemon.request_stop())
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        return daemon.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def provision_once(
    config: AgentConfig, *, timeout_s: float | None = None
) -> provisioning.Assignment:
    """Register with DPS once, persist the assignment and return it (``device-agent provision``).

    Raises the attempt's error (:class:`~agent.errors.ProvisioningError`,
    :class:`~agent.errors.TransportError`, ...) if it fails, and
    :class:`~agent.errors.BudgetExhaustedError` if the budget is spent.
    """
    from agent.errors import BudgetExhaustedError
    from agent.keystore import open_keystore  # a one-shot command: cryptography is fine here

    daemon = Daemon(config)
    cfg = config
    keystore = open_keystore(cfg.identity, config_path=cfg.source)
    daemon.identity = identity = keystore.load(now=datetime.now(UTC))
    daemon._check_tls(identity)
    daemon._open_hal()  # the registration payload names the sensors
    store = StateStore(
        cfg.state.directory,
        IdentityFingerprint(
            cfg.dps.host, cfg.dps.id_scope, identity.registration_id, identity.thumbprint
        ),
        clock=daemon.clock,
    )
    budget = store.load_budget(cfg.lifecycle.reprovision_budget, cfg.lifecycle.reprovision_window_s)
    now = daemon.clock.time()
    if not budget.allows(now):
        raise BudgetExhaustedError(budget.next_allowed_at(now))
    daemon._connect_dps()
    limit = timeout_s if timeout_s is not None else 4 * cfg.lifecycle.connect_timeout_s + 60
    deadline = time.monotonic() + limit
    outcome: provisioning.Assigned | provisioning.Failed | None = None
    try:
        while outcome is None and time.monotonic() < deadline:
            registration, transport = daemon.registration, daemon.transport
            assert registration is not None and transport is not None
            due = min(daemon._timers.values(), default=time.monotonic() + MAX_WAIT_S)
            for event in transport.poll(max(0.0, min(MAX_WAIT_S, due - time.monotonic()))):
                daemon._route(transport, event)
                outcome = registration.outcome
            for name, at in list(daemon._timers.items()):
                if at <= daemon.clock.monotonic():
                    del daemon._timers[name]
                    daemon._dps_actions(registration.handle(provisioning.DpsTimerFired(name)))
            outcome = registration.outcome
            if outcome is None:
                continue
            if isinstance(outcome, provisioning.Failed):
                raise outcome.error
        if outcome is None:
            raise TransportError(f"DPS registration did not finish within {limit:g} s")
        assert isinstance(outcome, provisioning.Assigned)
        store.ensure_directory()
        store.save(outcome.assignment, reason="device-agent provision")
        store.save_budget(budget.recorded(now))
        return outcome.assignment
    finally:
        daemon._shutdown()
