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

Steps 3 and 4 live in :mod:`agent.routing` (:class:`~agent.routing.Router`, the base
class of :class:`Daemon`); this module keeps start-up, the identity, the loop and its
timers, sampling, status and shutdown. The cores decide; these two modules only do.

sd_notify: READY once config, keystore and HAL are up (the agent works offline);
WATCHDOG from the loop only, so a stuck loop stops the pings; STATUS is the
lifecycle's description; STOPPING on shutdown.
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
:data:`agent.routing.IDENTITY_POLL_S`). A hub or DPS failure while the certificate has gone out of
its validity window is fed to the lifecycle as IdentityInvalid, so an expiry while
running waits instead of walking hub -> DPS -> DPS. The keystore's checks run in a
short-lived child (:func:`agent.identity.load_in_child`), so ``cryptography`` never
loads here; at start the child is skipped when the identity cache in the state
directory still matches the files, the config and the clock
(:func:`agent.identity.load_cached_identity`), and rewritten after each child check.
IDENTITY_WAIT re-checks always run the child. A HAL that cannot open degrades to no
sensors, reported in the twin and status; a state directory that cannot be written is
logged and the agent carries on from memory; a wiring bug (an event the lifecycle
refuses) is logged, never fatal.
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
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent import __version__, lifecycle, provisioning
from agent.config import AgentConfig
from agent.core import Clock, SystemClock, utc_iso
from agent.errors import (
    EX_OK,
    EX_SOFTWARE,
    AgentError,
    CertificateInvalidError,
    ConfigError,
    TransportError,
)
from agent.identity import (
    Identity,
    files_signature,
    load_cached_identity,
    load_in_child,
    save_identity_cache,
)
from agent.routing import (
    EFFECT_TIMER,
    IDENTITY_FILES_TIMER,
    IDENTITY_POLL_S,
    SAMPLE_TIMER,
    STATUS_TIMER,
    Router,
)
from agent.sdnotify import Notifier
from agent.session import HubSession
from agent.state import IdentityFingerprint, PersistedState, StateStore
from agent.telemetry import MemoryQueue, Publisher, build_message, sample
from agent.twin import Settings, initial_settings

if TYPE_CHECKING:
    from agent.transport import MqttTransport

log = logging.getLogger(__name__)

#: Longest single wait of the main loop (keeps shutdown and watchdog prompt).
MAX_WAIT_S = 0.5


class Daemon(Router):
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
        #: Checked by the child, not yet written to the identity cache.
        self._identity_to_cache: Identity | None = None
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

    # -- start-up ------------------------------------------------------------------------------

    def start(self) -> None:
        """Identity, HAL, state, lifecycle; then READY. Raises AgentError if unusable."""
        cfg = self.config
        problem: str | None = None
        try:
            identity: Identity | None = self._load_identity(use_cache=True)
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

    def _load_identity(self, *, use_cache: bool = False) -> Identity:
        """Run the keystore's checks (in a child process) and remember the files' signature.

        ``use_cache``: take the identity cache instead if it still fully holds.
        """
        cfg = self.config
        self._identity_files = files_signature(cfg.identity)
        now = datetime.fromtimestamp(self.clock.time(), UTC)
        self._identity_to_cache = None
        if use_cache:
            cached, why = load_cached_identity(cfg.state.directory, cfg.identity, now=now)
            if cached is not None:
                log.info("identity from cache (%s): keystore check child skipped", why)
                for warning in cached.warnings:
                    log.warning("identity: %s", warning)
                return cached
            log.info("identity cache not used (%s): running the keystore check child", why)
        identity = load_in_child(cfg.identity, config_path=cfg.source, now=now)
        self._identity_to_cache = identity
        for warning in identity.warnings:
            log.warning("identity: %s", warning)
        return identity

    def _adopt(self, identity: Identity) -> PersistedState | None:
        """Make ``identity`` the current one; return the assignment cached for it."""
        cfg = self.config
        self.identity = identity
        assert self.store is not None
        if self._identity_to_cache is identity:
            self._identity_to_cache = None
            try:
                save_identity_cache(
                    cfg.state.directory, cfg.identity, identity, self._identity_files
                )
            except OSError as exc:
                log.warning("could not write the identity cache: %s", exc)
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

    def _check_tls(self, identity: Identity) -> None:
        from agent.transport import build_ssl_context

        for what in ("dps", "hub"):
            try:
                build_ssl_context(self._tls(what, identity))
            except TransportError as exc:
                raise ConfigError(self.config.source, what, f"TLS settings: {exc}") from exc

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
        errors = self._device_errors()
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


def run(
    config: AgentConfig,
    *,
    notifier: Notifier | None = None,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    ignore_signals_after: bool = False,
) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the process exit code.

    In the main thread SIGTERM and SIGINT ask the daemon to stop while it runs; when
    it returns their previous handlers come back, or, with ``ignore_signals_after``
    (the CLI, whose process is about to exit), both are ignored from then on, so a
    second SIGTERM during the exit cannot kill the process with -15.
    """
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
            signal.signal(sig, signal.SIG_IGN if ignore_signals_after else handler)


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
