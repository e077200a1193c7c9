"""The composition root: the only module that sees every layer.

Theory of operation
-------------------
:func:`run` loads the identity (keystore), opens the HAL, reads the state directory
and then runs a single-threaded main loop until it is told to stop:

1. fire due timers (the lifecycle's, the DPS attempt's, telemetry sampling, method
   effects), and take over requests handed in from other threads (SIGTERM, the
   reprovision button) through a queue;
2. ``transport.poll()`` on the one open MQTT connection (DPS *or* hub) until the next
   deadline (a timer, the watchdog, keep-alive), or just wait when there is no
   connection: no polling period, an idle agent sleeps;
3. route each transport event to the DPS :class:`~agent.core.provisioning.Registration`
   or the :class:`~agent.core.session.HubSession`, and their outcomes to the
   :class:`~agent.core.lifecycle.Lifecycle`;
4. carry out the actions that come back (connect, publish, persist, timers, status).

:class:`Daemon` composes three objects, each readable alone: the
:class:`~agent.runtime.loop.MainLoop` (steps 1 and 2, the watchdog), the
:class:`~agent.runtime.executor.Executor` (steps 3 and 4) and the
:class:`~agent.runtime.hardware.Hardware` (HAL, sensors, LED, button). The daemon
itself keeps start-up, the identity, what each timer means, sampling, status and
shutdown. The cores decide; the runtime only does.

sd_notify: READY once config, keystore and HAL are up (the agent works offline);
WATCHDOG from the loop only, so a stuck loop stops the pings; STATUS is the
lifecycle's description; STOPPING on shutdown.
``status.json`` in the state directory is rewritten on each lifecycle change, and
refreshed (telemetry counters, errors) once ``max(interval, 60 s)`` has passed, on the
next wakeup the loop has anyway (a sampling round; at the latest after twice that) --
not on every message, and atomically but without fsync (it describes the running
process only): the state directory is on flash, and ``device-agent status`` must find
the file without the unit's environment (so it stays there rather than moving to
``$RUNTIME_DIRECTORY``).
Threads: this one, plus at most gpiozero's LED blinker and button watcher.

Failure policy here: a configuration problem at start is fatal (exit 78): a key
readable by others, a missing trust anchor, server CA files that do not load. No
identity yet (no certificate chain or key file: a fresh clone, see
:class:`~agent.errors.IdentityMissingError`) and a certificate that cannot be used *now*
(not yet valid, expired, not matching its key, a chain that does not build) are not:
the lifecycle waits in IDENTITY_WAIT
(READY is sent, sensors are sampled into the bounded queue, STATUS/status.json/LED
say what is wrong and the fix) and the keystore is re-checked on the lifecycle's
timer and whenever the identity files change (inode/size/mtime, polled every
:data:`agent.runtime.executor.IDENTITY_POLL_S`). A hub or DPS failure while the
certificate has gone out of its validity window is fed to the lifecycle as
IdentityInvalid, so an expiry while running waits instead of walking hub -> DPS -> DPS.
The keystore's checks run in a short-lived child
(:func:`agent.identity.child.start_in_child`), so ``cryptography`` never loads here; at
start the child is skipped when the identity cache in the state directory still
matches the files, the config and the clock
(:func:`agent.identity.cache.load_cached_identity`), and rewritten after each child
check. IDENTITY_WAIT re-checks always run the child. On a boot that runs it, the HAL is
opened and paho imported while the (forked) child works. A HAL that cannot open degrades to no
sensors, reported in the twin and status; a state directory that cannot be written is
logged and the agent carries on from memory; a wiring bug (an event the lifecycle
refuses) is logged, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from agent import __version__
from agent.config import AgentConfig
from agent.core import lifecycle
from agent.core.assignment import Assignment, hub_allowed
from agent.core.clock import Clock, SystemClock, clock_unset, utc_iso
from agent.core.telemetry import (
    MemoryQueue,
    Publisher,
    Sample,
    SampleRound,
    TelemetryQueue,
    build_message,
)
from agent.core.text import clip
from agent.core.twin import Settings
from agent.errors import (
    EX_OK,
    EX_SOFTWARE,
    AgentError,
    CertificateInvalidError,
    ConfigError,
    IdentityMissingError,
    IdentityPendingError,
    IdentityUnavailableError,
    TpmError,
    TransportError,
)
from agent.identity.cache import files_signature, load_cached_identity, save_identity_cache
from agent.identity.child import PendingIdentity, load_in_child, start_in_child
from agent.identity.keystore import Identity
from agent.runtime.executor import (
    COLLECT_TIMER,
    EFFECT_TIMER,
    IDENTITY_FILES_TIMER,
    IDENTITY_POLL_S,
    RENEWAL_TIMER,
    SAMPLE_TIMER,
    STATUS_TIMER,
    Executor,
    Link,
)
from agent.runtime.hardware import Hardware
from agent.runtime.loop import MainLoop, Timers
from agent.runtime.sdnotify import Notifier
from agent.store.state import IdentityFingerprint, PersistedState, StateStore

log = logging.getLogger(__name__)

#: Commits the telemetry buffer, ``buffer_commit_interval_s`` after something became
#: uncommitted; it runs only while the buffer has something to commit.
BUFFER_TIMER = "buffer.commit"


def open_queue(config: AgentConfig, clock: Clock) -> TelemetryQueue:
    """The telemetry queue the config names: the durable buffer, or memory."""
    cfg = config.telemetry
    if cfg.buffer == "memory":
        return MemoryQueue(cfg.queue_max_messages)
    from agent.store.buffer import BUFFER_FILE, SqliteBuffer

    return SqliteBuffer(
        config.state.directory / BUFFER_FILE,
        clock=clock,
        max_messages=cfg.queue_max_messages,
        max_bytes=cfg.buffer_max_bytes,
        max_age_s=cfg.buffer_max_age_s,
    )


class Daemon:
    """The running agent. Build it, then :meth:`run` it; :meth:`request_stop` from anywhere.

    It composes :attr:`loop` (a :class:`~agent.runtime.loop.MainLoop`), :attr:`actions`
    (the :class:`~agent.runtime.executor.Executor`) and :attr:`hardware`; the lifecycle,
    the identity, the state store and the settings in force are the executor's, shown
    here read-only.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        notifier: Notifier | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        status_refresh_s: float | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self._own_notifier = notifier is None
        self.notifier = notifier or Notifier()
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.timers = Timers(self.clock)
        self.hardware = Hardware()
        self.queue = open_queue(config, self.clock)
        self.publisher = Publisher(self.queue, max_in_flight=config.telemetry.max_in_flight)
        self.actions = Executor(
            config,
            clock=self.clock,
            rng=self.rng,
            notifier=self.notifier,
            timers=self.timers,
            hardware=self.hardware,
            publisher=self.publisher,
            status=self.status,
            recheck_identity=self._recheck_identity,
            status_refresh_s=status_refresh_s,
            environ=environ,
        )
        self.loop: MainLoop[lifecycle.Event] = MainLoop(
            clock=self.clock,
            timers=self.timers,
            notifier=self.notifier,
            on_timer=self._on_timer,
            on_event=self.actions.feed,
            transport=lambda: self.actions.transport,
            route=self.actions.route,
            before_wait=self._arm_buffer_commit,
        )
        self._identity_files: tuple[tuple[int, int, int, int], ...] = ()
        #: Why a first boot waits (key and CSR made), once per run.
        self._enrolment: CertificateInvalidError | None = None
        #: Checked by the child, not yet written to the identity cache.
        self._identity_to_cache: Identity | None = None
        #: The last sequence number used (a durable buffer continues its numbering).
        self.sequence = self.queue.next_sequence - 1
        self._clock_unset_logged = False
        #: The sample round whose conversions are running (None between rounds).
        self._round: SampleRound | None = None
        self.started_at = self.clock.monotonic()
        #: When the last message was sampled (wall clock; None: not yet).
        self._last_sampled_s: float | None = None
        self._stopped = threading.Event()

    # -- what the executor holds, read-only ----------------------------------------------------

    @property
    def state(self) -> lifecycle.State:
        """The lifecycle state (STARTING before the loop runs)."""
        return self.actions.state

    @property
    def machine(self) -> lifecycle.Lifecycle | None:
        """The lifecycle (None before :meth:`start`)."""
        return self.actions.machine

    @property
    def identity(self) -> Identity | None:
        """The identity in use (None while there is no usable one)."""
        return self.actions.identity

    @property
    def store(self) -> StateStore | None:
        """The state directory (None before :meth:`start`)."""
        return self.actions.store

    @property
    def settings(self) -> Settings:
        """The settings in force (telemetry interval, disabled sensors)."""
        return self.actions.settings

    # -- thread-safe entry points -----------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the loop to stop (any thread, or a signal handler)."""
        self.loop.hand_in(lifecycle.Stop())

    def request_reprovision(self, *, force: bool = False, reason: str = "button") -> None:
        """Ask for a DPS registration (any thread: the button's callback)."""
        self.loop.hand_in(lifecycle.ReprovisionRequested(force=force, reason=reason))

    # -- start-up ------------------------------------------------------------------------------

    def start(self) -> None:
        """Identity, HAL, state, lifecycle; then READY. Raises AgentError if unusable."""
        cfg = self.config
        identity: Identity | None = None
        waiting: lifecycle.IdentityInvalid | None = None
        pending: PendingIdentity | None = None
        try:
            self._enrol_if_needed()
            identity, pending = self._begin_identity(use_cache=True)
        except IdentityUnavailableError as exc:
            waiting = self._identity_unavailable(exc)
        # A keystore check child (a cold boot) runs meanwhile, on the other core if any.
        self.open_hardware()
        if pending is not None:
            from agent.runtime.transport import preload

            preload()  # the first connection needs paho: load it while the child works
            try:
                identity = self._finish_identity(pending)
            except IdentityUnavailableError as exc:
                waiting = self._identity_unavailable(exc)
        if identity is not None:
            try:
                self.check_tls(identity)
            except IdentityUnavailableError as exc:
                identity, waiting = None, self._identity_unavailable(exc)
        problem = waiting.reason if waiting is not None else None
        if waiting is not None:
            # Not a configuration error: wait (running) until there is a usable identity
            # (or, at first boot, until the certificate for our CSR is installed).
            if waiting.missing:
                log.warning("no identity yet: %s", problem)
            else:
                log.error("identity unusable, waiting for a usable certificate: %s", problem)
        store = self.actions.store = StateStore(cfg.state.directory, None, clock=self.clock)
        try:
            store.ensure_directory()
            store.reserve_budget(cfg.lifecycle.reprovision_budget)
        except OSError as exc:
            log.error("state directory %s unusable: %s", cfg.state.directory, exc)
        cached = self._adopt(identity) if identity is not None else None
        cached = self._with_operational(cached) if identity is not None else None
        budget = store.load_budget(
            cfg.lifecycle.reprovision_budget, cfg.lifecycle.reprovision_window_s
        )
        self.actions.machine = lifecycle.Lifecycle(
            cfg.lifecycle, clock=self.clock, rng=self.rng, budget=budget
        )
        if cached is not None:
            self.actions.last_reprovision_reason = cached.last_reprovision_reason
            self.actions.provisioned_at = cached.assignment.provisioned_at
        self.notifier.ready()
        log.info(
            "device-agent %s ready: registration id %s, %d sensor(s), %s",
            __version__,
            identity.registration_id if identity else "(no usable identity yet)",
            len(self.hardware.sensors),
            f"cached hub {cached.assignment.assigned_hub}" if cached else "no cached hub",
        )
        if waiting is not None:
            self.actions.feed(waiting)
        else:
            reason = store.discard_reason or "first boot: no cached assignment"
            self.actions.feed(lifecycle.Boot(cached.assignment if cached else None, reason=reason))
        self.timers.start(SAMPLE_TIMER, 0.0)
        if cfg.identity.issuance == "dps":
            self.timers.start(RENEWAL_TIMER, cfg.identity.renew_check_s)

    def open_hardware(self) -> None:
        """Open the HAL, the sensors and GPIO (degrades, never raises)."""
        self.hardware.open(
            self.config.hal,
            on_long_press=lambda: self.request_reprovision(reason="button long press"),
        )

    def _load_identity(self, *, use_cache: bool = False) -> Identity:
        """Run the keystore's checks (in a child process) and remember the files' signature.

        ``use_cache``: take the identity cache instead if it still fully holds.
        """
        identity, pending = self._begin_identity(use_cache=use_cache)
        if pending is not None:
            return self._finish_identity(pending)
        assert identity is not None
        return identity

    def _begin_identity(
        self, *, use_cache: bool
    ) -> tuple[Identity, None] | tuple[None, PendingIdentity]:
        """The cached identity if it still fully holds (``use_cache``), else a child started."""
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
                return cached, None
            log.info("identity cache not used (%s): running the keystore check child", why)
        return None, start_in_child(cfg.identity, config_path=cfg.source, now=now)

    def _finish_identity(self, pending: PendingIdentity) -> Identity:
        """Wait for the keystore check child; its identity (cached when adopted)."""
        identity = pending.result()
        self._identity_to_cache = identity
        for warning in identity.warnings:
            log.warning("identity: %s", warning)
        return identity

    def _identity_unavailable(self, exc: IdentityUnavailableError) -> lifecycle.IdentityInvalid:
        """The lifecycle event for an identity that is not usable now (or not there yet)."""
        if not isinstance(exc, IdentityMissingError):
            return lifecycle.IdentityInvalid(str(exc))
        cfg = self.config.identity
        where = f"{cfg.cert_chain_path.parent}/ or {cfg.import_dir}/"
        return lifecycle.IdentityInvalid(
            f"waiting for identity in {where} ({exc.path}: not there yet)", missing=True
        )

    def _adopt(self, identity: Identity) -> PersistedState | None:
        """Make ``identity`` the current one; return the assignment cached for it."""
        cfg = self.config
        self.actions.identity = identity
        store = self.actions.store
        assert store is not None
        if self._identity_to_cache is identity:
            self._identity_to_cache = None
            try:
                save_identity_cache(
                    cfg.state.directory, cfg.identity, identity, self._identity_files
                )
            except OSError as exc:
                log.warning("could not write the identity cache: %s", exc)
        store.bind(
            IdentityFingerprint(
                cfg.dps.host, cfg.dps.id_scope, identity.registration_id, identity.thumbprint
            )
        )
        cached = store.load()
        hub = cached.assignment.assigned_hub if cached else ""
        if cached is not None and not hub_allowed(hub, cfg.dps.allowed_hub_suffixes):
            store.discard_reason = (
                f"cached hub {clip(hub, 100)!r} is not in [dps] allowed_hub_suffixes; "
                "provisioning again"
            )
            log.warning("%s", store.discard_reason)
            return None
        return cached

    def _with_operational(self, cached: PersistedState | None) -> PersistedState | None:
        """With DPS issuance: load the operational identity; without one, forget the
        cached assignment, so the device registers (and DPS issues a certificate)."""
        if self.config.identity.issuance != "dps":
            return cached
        from agent.identity.child import operational_config
        from agent.identity.generations import cleanup_uncommitted

        for path in cleanup_uncommitted(self.config.identity):
            log.info("removed %s: a renewal that never finished", path)
        operational = operational_config(self.config.identity)
        self.actions.operational = None
        if operational.cert_chain_path.exists():
            now = datetime.fromtimestamp(self.clock.time(), UTC)
            try:
                self.actions.operational = load_in_child(
                    operational, config_path=self.config.source, now=now
                )
            except AgentError as exc:
                log.warning("the operational certificate cannot be used: %s", exc)
        if self.actions.operational is None:
            log.info("no usable operational certificate: registering with DPS for one")
            return None
        return cached

    def _recheck_identity(self) -> None:
        """IDENTITY_WAIT: load the identity again; feed the outcome to the lifecycle."""
        try:
            self._enrol_if_needed()
            identity = self._load_identity()
            self.check_tls(identity)
        except IdentityUnavailableError as exc:
            self.actions.feed(self._identity_unavailable(exc))
            return
        except AgentError as exc:
            self.actions.feed(lifecycle.IdentityInvalid(str(exc)))
            return
        # A connection made before holds the old key object (a TPM key's handle does not
        # survive the TPM): the next connection builds its TLS context afresh.
        self.actions.close_transport()
        cached = self._with_operational(self._adopt(identity))
        assert self.store is not None
        log.info("identity usable: registration id %s", identity.registration_id)
        reason = self.store.discard_reason or "identity usable again: no cached assignment"
        self.actions.feed(
            lifecycle.IdentityLoaded(cached.assignment if cached else None, reason=reason)
        )

    def check_tls(self, identity: Identity) -> None:
        """Build both TLS contexts once; ConfigError (exit 78) if the files do not load."""
        from agent.runtime.endpoint import build_ssl_context

        tpm = self.config.identity.keystore == "tpm"
        if tpm and not os.environ.get("OPENSSL_CONF"):
            raise ConfigError(
                self.config.source,
                "identity.keystore",
                "a TPM key needs OPENSSL_CONF and TPM2OPENSSL_TCTI in the daemon's environment"
                " (the unit sets them; `device-agent run` re-executes itself with them)",
            )
        for link in Link:
            try:
                build_ssl_context(self.actions.tls(link, identity))
            except TransportError as exc:
                if tpm:  # the TPM went away between the check and now: wait, re-check
                    raise TpmError(f"TLS with the TPM key: {exc}") from exc
                raise ConfigError(self.config.source, link.value, f"TLS settings: {exc}") from exc

    def _enrol_if_needed(self) -> None:
        """First boot without a certificate: key + CSR (in a child), then wait for it.

        Raises :class:`IdentityPendingError` (the lifecycle waits in IDENTITY_WAIT) while
        no certificate is installed; the CSR is written once per run.
        """
        cfg = self.config.identity
        # agent.identity.enroll.needs_enrolment, without importing it (tempfile, shutil).
        if cfg.registration_id is None or cfg.cert_chain_path.exists():
            self._enrolment = None
            return
        if self._enrolment is None:
            self._enrolment = run_enrolment_child(self.config)
            log.warning("%s", self._enrolment)
        raise self._enrolment

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
            self.loop.run(self._stopping)
        except Exception:
            log.exception("main loop failed")
            self._shutdown()
            return EX_SOFTWARE
        self._shutdown()
        return EX_OK

    def _stopping(self) -> bool:
        machine = self.actions.machine  # asked twice per wakeup: no property chain
        return machine is not None and machine.state is lifecycle.State.STOPPING

    def _on_timer(self, name: str) -> None:
        """What each named timer means."""
        actions = self.actions
        if name == lifecycle.TIMER:
            actions.feed(lifecycle.TimerFired())
        elif name.startswith("dps.") and actions.registration is not None:
            from agent.core.provisioning import DpsTimerFired  # loaded with the registration

            actions.dps_actions(actions.registration.handle(DpsTimerFired(name)))
        elif name == SAMPLE_TIMER:
            # Re-arm first, so the time sampling takes does not stretch the interval.
            self.timers.start(SAMPLE_TIMER, self.settings.telemetry_interval_s)
            self._start_sample()
        elif name == COLLECT_TIMER:
            self._collect_sample()
        elif name == EFFECT_TIMER and actions.session is not None:
            actions.session_actions(actions.session.take_pending_effects())
        elif name.startswith("twin.") and actions.session is not None:
            actions.session_actions(actions.session.on_timer(name))
        elif name == STATUS_TIMER:
            actions.write_status()
        elif actions.hub_renewal is not None and name == actions.hub_renewal.timer_name:
            actions.renewal_actions(actions.hub_renewal.on_timer(name))
        elif name == RENEWAL_TIMER:
            self.timers.start(RENEWAL_TIMER, self.config.identity.renew_check_s)
            actions.maybe_renew()
        elif name == BUFFER_TIMER:
            self.queue.flush()  # a failed one leaves needs_flush set: again an interval later
        elif name == IDENTITY_FILES_TIMER and self.state is lifecycle.State.IDENTITY_WAIT:
            self.timers.start(IDENTITY_FILES_TIMER, IDENTITY_POLL_S)
            if files_signature(self.config.identity) != self._identity_files:
                log.info("identity files changed; checking them again")
                self._recheck_identity()

    def _arm_buffer_commit(self) -> None:
        """Before each wait: the commit timer runs while the buffer has something to commit.

        A connected device whose messages are acknowledged before the next commit has
        nothing to commit, so it never wakes up for the buffer.
        """
        if self.queue.needs_flush:
            if BUFFER_TIMER not in self.timers:
                self.timers.start(BUFFER_TIMER, self.config.telemetry.buffer_commit_interval_s)
        elif BUFFER_TIMER in self.timers:
            self.timers.cancel(BUFFER_TIMER)

    # -- telemetry ------------------------------------------------------------------------------

    def _start_sample(self) -> None:
        """Start every sensor's conversion; the round finishes on COLLECT_TIMER."""
        now = self.clock.time()
        if clock_unset(now):
            # A reading stamped 1970 is worse than none: hold sampling until the clock is set.
            if not self._clock_unset_logged:
                log.warning(
                    "telemetry held back: the system clock reads %s (not set yet)", utc_iso(now)
                )
                self._clock_unset_logged = True
            return
        if self._clock_unset_logged:
            log.info("the system clock is set (%s): sampling telemetry", utc_iso(now))
            self._clock_unset_logged = False
        if self._round is not None:
            # Conversions longer than the interval: this tick is skipped, not queued up.
            log.debug("sample skipped: the previous round is still converting")
            return
        self._round = SampleRound(self.hardware.sensors, disabled=self.settings.disabled_sensors)
        self._after_step(self._round.start(self.clock.monotonic()))

    def _collect_sample(self) -> None:
        if self._round is not None:
            self._after_step(self._round.collect(self.clock.monotonic()))

    def _after_step(self, wait_s: float | None) -> None:
        if wait_s is not None:
            self.timers.start(COLLECT_TIMER, wait_s)
            return
        taken_round, self._round = self._round, None
        if taken_round is not None:
            self._finish_sample(taken_round.result())

    def _finish_sample(self, taken: Sample) -> None:
        """Queue the message of a finished round and publish it if connected."""
        hardware = self.hardware
        self.sequence += 1
        now = self.clock.time()
        message = build_message(
            sequence=self.sequence,
            timestamp_s=now,
            sample=taken,
            message_id=f"{self.sequence}-{int(now * 1000)}",
        )
        drops_before = dict(self.queue.dropped_by)
        self.queue.append(message)
        self._last_sampled_s = now
        errors_changed = dict(taken.errors) != hardware.sensor_errors
        errors_changed |= self.queue.dropped_by != drops_before
        hardware.sensor_errors = dict(taken.errors)
        session = self.actions.session
        if session is not None and self.state is lifecycle.State.CONNECTED:
            self.actions.session_actions(session.pump())
            if errors_changed:
                self.actions.session_actions(session.report())

    # -- status -----------------------------------------------------------------------------------

    @property
    def last_telemetry_at(self) -> str | None:
        """When the last message was sampled (UTC ISO 8601), formatted when asked for."""
        return None if self._last_sampled_s is None else utc_iso(self._last_sampled_s)

    def status(self) -> Mapping[str, object]:
        """What getStatus and status.json report."""
        machine = self.machine
        snap = machine.snapshot() if machine else None
        errors = self.hardware.device_errors()
        buffer_problem = getattr(self.queue, "problem", None)
        if buffer_problem:
            errors["buffer"] = str(buffer_problem)
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
                "droppedBy": dict(self.queue.dropped_by),
                "buffer": self.config.telemetry.buffer,
            },
            "telemetryIntervalSeconds": self.settings.telemetry_interval_s,
            "sensors": self.hardware.sensor_names,
            "disabledSensors": sorted(self.settings.disabled_sensors),
            "errors": errors,
            "lastReprovisionReason": self.actions.last_reprovision_reason,
            "reprovisionAllowedAt": utc_iso(snap.budget_next_allowed_at) if snap else None,
            "agentVersion": __version__,
            "loop": self.loop.stats.as_json(),
        }

    # -- shutdown --------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        actions = self.actions
        if actions.session is not None:
            actions.session.on_disconnected()
            actions.session = None
        actions.close_transport()
        self.queue.close()
        self.hardware.close()
        actions.write_status("STOPPED")
        self.loop.close()
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


def provision_once(config: AgentConfig, *, timeout_s: float | None = None) -> Assignment:
    """Register with DPS once, persist the assignment and return it (``device-agent provision``).

    Raises the attempt's error (:class:`~agent.errors.ProvisioningError`,
    :class:`~agent.errors.TransportError`, ...) if it fails, and
    :class:`~agent.errors.BudgetExhaustedError` if the budget is spent. The daemon's own
    loop runs the registration, without a lifecycle.
    """
    from agent.core.provisioning import Failed
    from agent.errors import BudgetExhaustedError
    from agent.identity.keystore import (
        open_keystore,  # a one-shot command: cryptography is fine here
    )

    daemon = Daemon(config)
    cfg = config
    keystore = open_keystore(cfg.identity, config_path=cfg.source)
    daemon.actions.identity = identity = keystore.load(now=datetime.now(UTC))
    daemon.check_tls(identity)
    daemon.open_hardware()  # the registration payload names the sensors
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
    daemon.actions.connect_dps()
    registration = daemon.actions.registration
    assert registration is not None
    limit = timeout_s if timeout_s is not None else 4 * cfg.lifecycle.connect_timeout_s + 60
    deadline = time.monotonic() + limit
    try:
        while registration.outcome is None and time.monotonic() < deadline:
            daemon.loop.step(max_wait_s=max(0.0, deadline - time.monotonic()))
        outcome = registration.outcome
        if outcome is None:
            raise TransportError(f"DPS registration did not finish within {limit:g} s")
        if isinstance(outcome, Failed):
            raise outcome.error
        store.ensure_directory()
        store.save(outcome.assignment, reason="device-agent provision")
        store.save_budget(budget.recorded(now))
        return outcome.assignment
    finally:
        daemon._shutdown()


def run_enrolment_child(config: AgentConfig) -> CertificateInvalidError:
    """Run :func:`agent.identity.enroll.first_boot` in a child; the reason the device waits."""
    import subprocess  # a first boot's only: not loaded on the others

    from agent.identity.tpm import tpm_environment

    env = tpm_environment(config.identity) if config.identity.keystore == "tpm" else None
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agent.identity.enroll", str(config.source)],
            capture_output=True,
            timeout=120,
            check=False,
            env=env,
        )
        answer = json.loads(done.stdout.decode("utf-8"))
    except (OSError, subprocess.SubprocessError, ValueError, UnicodeDecodeError) as exc:
        return CertificateInvalidError(f"first boot: could not make the key and CSR: {exc}")
    if not isinstance(answer, dict):
        return CertificateInvalidError("first boot: the enrolment child answered nonsense")
    if "pending" in answer:
        fix = answer.get("fix")
        return IdentityPendingError(
            str(answer["pending"]),
            path=config.identity.cert_chain_path,
            fix=None if fix is None else str(fix),
        )
    return CertificateInvalidError(f"first boot: {answer.get('error', 'failed')}")
