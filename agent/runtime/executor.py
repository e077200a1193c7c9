"""The executor: routes connection events to the cores and carries out their actions.

Theory of operation
-------------------
:class:`Executor` connects the sans-I/O cores to the world. It owns the one open
connection (DPS *or* hub, :class:`Link`) and the core that speaks on it: the DPS
:class:`~agent.core.provisioning.Registration` or the
:class:`~agent.core.session.HubSession`. The :class:`~agent.runtime.loop.MainLoop`
hands it every transport event (:meth:`Executor.route`) and every event handed in
from other threads (:meth:`Executor.feed`).

* :meth:`Executor.route` gives one event from the open MQTT connection to the core
  that owns that connection. Their outcomes (assigned, failed, CONNACK 0/3/4/5,
  connection lost) become :class:`~agent.core.lifecycle.Lifecycle` events through
  :meth:`Executor.feed`, which also turns a failure while the certificate is out of
  its validity window into IdentityInvalid.
* What comes back is carried out here: open or close a connection (one at a time),
  publish, subscribe, persist, start and cancel named timers, show a status (sd_notify
  STATUS, LED, ``status.json``).

Nothing in here decides anything; every decision is a core's. The daemon
(:mod:`agent.runtime.daemon`) builds the executor, loads the identity and hands it
over (:attr:`Executor.identity`, :attr:`Executor.store`, :attr:`Executor.machine`).
"""

from __future__ import annotations

import enum
import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.config import AgentConfig
from agent.core import lifecycle, wire
from agent.core.actions import CancelTimer, Publish, StartTimer, Subscribe
from agent.core.clock import Clock, utc_iso
from agent.core.methods import Reprovision
from agent.core.session import HubSession, ReportedContext, SettingsChanged, sensor_infos
from agent.core.telemetry import Publisher
from agent.core.text import clip
from agent.core.twin import Settings, initial_settings
from agent.errors import AgentError, TransportError
from agent.identity.keystore import Identity
from agent.runtime import endpoint as ev
from agent.runtime.endpoint import MqttEndpoint, TlsSettings
from agent.runtime.hardware import Hardware
from agent.runtime.loop import Timers
from agent.runtime.proxy import route_for
from agent.runtime.sdnotify import Notifier
from agent.store.state import StateStore

if TYPE_CHECKING:
    from agent.core import provisioning
    from agent.core.assignment import Assignment
    from agent.core.credentials import HubRenewal, RenewalAction
    from agent.runtime.endpoint import TransportEvent
    from agent.runtime.transport import MqttTransport

log = logging.getLogger("agent.runtime.daemon")

SAMPLE_TIMER = "telemetry.sample"
#: A sample round's next collection (its conversions started at SAMPLE_TIMER).
COLLECT_TIMER = "telemetry.collect"
EFFECT_TIMER = "method.effect"
IDENTITY_FILES_TIMER = "identity.files"
STATUS_TIMER = "status.refresh"
#: Looks whether the operational certificate is due for renewal (``issuance = "dps"``).
RENEWAL_TIMER = "identity.renewal"
#: The timers of a connection's protocols (DPS, twin, method effects), by name prefix.
CONNECTION_TIMER_PREFIXES = ("dps.", "twin.", "method.")
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


class Link(enum.Enum):
    """What the open connection talks to."""

    DPS = "dps"
    HUB = "hub"


class Executor:
    """Routes connection events to the cores and carries out their actions."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock,
        rng: random.Random,
        notifier: Notifier,
        timers: Timers,
        hardware: Hardware,
        publisher: Publisher,
        status: Callable[[], Mapping[str, object]],
        recheck_identity: Callable[[], None],
        status_refresh_s: float | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        #: Where ``https_proxy`` / ``no_proxy`` come from (``[network]`` says nothing).
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.clock = clock
        self.rng = rng
        self.notifier = notifier
        self.timers = timers
        self.hardware = hardware
        self.publisher = publisher
        self._status = status
        self._recheck_identity = recheck_identity
        #: None: ``max(telemetry interval, STATUS_REFRESH_MIN_S)``, as the interval is now.
        self._status_refresh_s = status_refresh_s
        self.settings: Settings = initial_settings(config.telemetry.interval_s)
        self.transport: MqttTransport | None = None
        self.link: Link | None = None
        self.registration: provisioning.Registration | None = None
        self.session: HubSession | None = None
        #: Set by the daemon once loaded; None while there is no usable identity.
        self.identity: Identity | None = None
        self.store: StateStore | None = None
        self.machine: lifecycle.Lifecycle | None = None
        self.last_reprovision_reason: str | None = None
        self.provisioned_at: str | None = None
        #: The operational identity DPS issued (``issuance = "dps"``), for the hub.
        self.operational: Identity | None = None
        #: A renewal in progress: the candidate (chain, key) paths, and once DPS issued
        #: the chain, the checked candidate identity the next hub connection tries.
        self.renewal: tuple[Path, Path] | None = None
        self.candidate: Identity | None = None
        self._renew_due: tuple[str, float] | None = None
        #: A renewal through the hub's credentials endpoint, while its request runs.
        self.hub_renewal: HubRenewal | None = None

    @property
    def state(self) -> lifecycle.State:
        """The lifecycle state (STARTING before the loop runs)."""
        return self.machine.state if self.machine else lifecycle.State.STARTING

    def _identity_problem_now(self) -> str | None:
        identity = self.identity
        if identity is None:
            return None
        reason = identity.invalid_reason(datetime.fromtimestamp(self.clock.time(), UTC))
        if reason is None and self.config.identity.keystore == "tpm":
            # A failed connection with a TPM key: is the TPM still there (and the key its)?
            from agent.errors import TpmError
            from agent.identity.tpm import probe_key

            try:
                probe_key(self.config.identity, identity.cert_chain_path)
            except TpmError as exc:
                reason = str(exc)
        return reason

    # -- routing ------------------------------------------------------------------------------

    def route(self, transport: MqttTransport, event: TransportEvent) -> None:
        """Give one event of ``transport`` to the core that owns the connection."""
        if transport is not self.transport:
            return  # from a connection we already left
        if self.link is Link.DPS:
            self._route_dps(event)
            return
        if self.hub_renewal is not None:
            from agent.core.credentials import RESPONSE_PREFIX  # loaded with the renewal

            match event:
                case ev.MessageReceived(topic=topic, payload=payload) if topic.startswith(
                    RESPONSE_PREFIX
                ):
                    self.renewal_actions(self.hub_renewal.on_message(topic, payload))
                    return
                case ev.ConnectionLost() | ev.ConnectRefused():
                    self.hub_renewal = None
                    self._abandon_renewal("the connection ended during the renewal")
                case _:
                    pass
        if self.candidate is not None:
            match event:
                case ev.Connected():
                    self._commit_renewal()
                case ev.ConnectRefused() | ev.ConnectionLost():
                    # The hub does not take the renewed certificate: roll back to the
                    # current one and reconnect with it (never lose a working identity).
                    self._abandon_renewal(f"the hub refused the renewed certificate ({event})")
                    self.close_transport()
                    self.feed(lifecycle.HubUnavailable("renewed certificate refused; rolled back"))
                    return
                case _:
                    pass
        match event:
            case ev.Connected():
                self.feed(lifecycle.HubConnected())
                if self.state is lifecycle.State.CONNECTED and self.session is not None:
                    self.session_actions(self.session.on_connected())
            case ev.ConnectRefused(return_code=code):
                if code in (4, 5):
                    self.feed(lifecycle.HubRejected(code))
                else:
                    self.feed(lifecycle.HubUnavailable(f"hub refused: CONNACK {code}"))
            case ev.ConnectionLost(reason=reason):
                if self.session is not None:
                    self.session.on_disconnected()
                    self.session = None
                    self.timers.cancel_prefixed(CONNECTION_TIMER_PREFIXES)
                if self.state is lifecycle.State.CONNECTED:
                    self.feed(lifecycle.ConnectionDropped(reason))
                else:
                    self.feed(lifecycle.HubUnavailable(reason))
            case ev.MessageReceived(topic=topic, payload=payload):
                if self.session is not None:
                    try:
                        actions = self.session.on_message(topic, payload)
                    except Exception:  # the cloud's input must never take the daemon down
                        log.exception("handling a message on %s failed; dropped", clip(topic))
                        return
                    self.session_actions(actions)
            case ev.PublishAcked(mid=mid):
                if self.session is not None:
                    self.session_actions(self.session.on_puback(mid))
            case ev.Subscribed(granted_qos=granted):
                if any(q not in (0, 1) for q in granted):
                    log.warning("the hub refused a subscription: %s", granted)

    def _route_dps(self, event: TransportEvent) -> None:
        registration = self.registration
        if registration is None:
            return
        from agent.core import provisioning  # loaded with the registration (cold boots only)

        dps_event: provisioning.DpsEvent | None
        match event:
            case ev.Connected():
                dps_event = provisioning.DpsConnected()
            case ev.ConnectRefused(return_code=code):
                dps_event = provisioning.DpsConnectRefused(code)
            case ev.ConnectionLost(reason=reason):
                dps_event = provisioning.DpsConnectionLost(reason)
            case ev.Subscribed(granted_qos=granted):
                dps_event = provisioning.DpsSubscribed(granted)
            case ev.MessageReceived(topic=topic, payload=payload):
                dps_event = provisioning.DpsMessage(topic, payload)
            case _:
                dps_event = None
        if dps_event is not None:
            self.dps_actions(registration.handle(dps_event))

    def feed(self, event: lifecycle.Event) -> None:
        """Give ``event`` to the lifecycle and carry out what it answers."""
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

    def _timer_action(self, action: StartTimer | CancelTimer) -> None:
        """The timer actions every core uses, carried out one way."""
        if isinstance(action, StartTimer):
            self.timers.start(action.name, action.delay_s)
        else:
            self.timers.cancel(action.name)

    def _lifecycle_action(self, action: lifecycle.AnyAction) -> None:
        match action:
            case lifecycle.ConnectDps():
                self.connect_dps()
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
            case StartTimer() | CancelTimer():
                self._timer_action(action)
            case lifecycle.Status(state=state, text=text):
                self._on_status(state, text)

    def _on_status(self, state: lifecycle.State, text: str) -> None:
        log.info("%s: %s", state.value, text)
        self.notifier.status(f"{state.value}: {text}")
        if state is lifecycle.State.STOPPING:
            self.notifier.stopping()
        if state is lifecycle.State.IDENTITY_WAIT and IDENTITY_FILES_TIMER not in self.timers:
            self.timers.start(IDENTITY_FILES_TIMER, IDENTITY_POLL_S)
        missing = self.machine is not None and self.machine.identity_missing
        self.hardware.show(state, identity_missing=missing)
        self.write_status()

    def _status_refresh_s_now(self) -> float:
        if self._status_refresh_s is not None:
            return self._status_refresh_s
        return max(self.settings.telemetry_interval_s, STATUS_REFRESH_MIN_S)

    def write_status(self, state_name: str | None = None) -> None:
        """Rewrite ``status.json`` (``state_name`` overrides the state, e.g. STOPPED)."""
        if self.store is None:
            return
        if state_name is None:
            # Written now: the next periodic refresh is a full period away, and may wait
            # up to one period more for a wakeup the loop has anyway. The period is at
            # least the telemetry interval, so a sampling round always comes first: the
            # refresh never wakes the loop on its own while sampling runs.
            refresh_s = self._status_refresh_s_now()
            self.timers.start(STATUS_TIMER, refresh_s, slack_s=refresh_s)
        status = dict(self._status())
        if state_name is not None:
            status["state"] = state_name
        try:
            self.store.write_status(status)
        except OSError as exc:
            log.warning("could not write status.json: %s", exc)

    # -- DPS --------------------------------------------------------------------------------------

    def tls(self, link: Link, identity: Identity | None = None) -> TlsSettings:
        """The TLS settings for a connection to ``link`` as ``identity`` (default: ours;
        for the hub, the operational identity DPS issued, when there is one)."""
        hub_identity = self.candidate or self.operational
        ident = identity or (hub_identity if link is Link.HUB and hub_identity else self.identity)
        assert ident is not None
        cfg = self.config
        ca = cfg.dps.server_ca_path if link is Link.DPS else cfg.hub.server_ca_path
        return TlsSettings(ident.cert_chain_path, ident.key_path, ident.key_passphrase, ca)

    def _open(self, link: Link, endpoint: MqttEndpoint) -> None:
        from agent.runtime.transport import MqttTransport

        current = self.transport
        if current is not None and current.endpoint == endpoint and self.link is link:
            current.disconnect()
        else:
            self.close_transport()
            try:
                self.transport = MqttTransport(
                    endpoint,
                    self.tls(link),
                    connect_timeout_s=self.config.lifecycle.connect_timeout_s,
                )
            except TransportError as exc:
                # The key cannot be used now (a TPM that went away, a file replaced
                # under us): wait for a usable identity instead of failing the loop.
                log.error("cannot use the identity for %s: %s", link.value, exc)
                self.feed(lifecycle.IdentityInvalid(f"cannot use the identity: {exc}"))
                return
            self.link = link
        assert self.transport is not None
        self.transport.start_connect()

    def connect_dps(self) -> None:
        """Open a DPS connection and start a registration on it."""
        from agent.core import provisioning  # first use on a cold boot or a reprovision

        cfg, ident = self.config, self.identity
        assert ident is not None
        websockets = cfg.dps.transport == "websockets"
        issuing = cfg.identity.issuance == "dps"
        csr: str | None = None
        if issuing:
            from agent.identity.operational import request_csr

            try:
                key = self.renewal[1] if self.renewal else None
                csr = request_csr(cfg, ident.registration_id, key)
            except AgentError as exc:
                log.error("certificate issuance: %s", exc)
                self.feed(lifecycle.IdentityInvalid(f"certificate issuance: {exc}"))
                return
        endpoint = MqttEndpoint(
            host=cfg.dps.host,
            port=cfg.dps.ws_port if websockets else cfg.dps.port,
            client_id=ident.registration_id,
            username=wire.dps_username(
                cfg.dps.id_scope,
                ident.registration_id,
                api_version=wire.ISSUANCE_API_VERSION if issuing else cfg.dps.api_version,
                client_version=CLIENT_VERSION,
            ),
            websockets=websockets,
            keep_alive_s=cfg.hub.keep_alive_s,
            clean_session=True,
            proxy=route_for(cfg.dps.host, cfg.network, self.environ),
        )
        payload = provisioning.registration_payload(
            model=str(cfg.dps.payload.get("model", "device-agent")),
            agent_version=__version__,
            sensors=self.hardware.sensor_names,
            extra=cfg.dps.payload,
            model_id=cfg.device.model_id,
        )
        self.registration = provisioning.Registration(
            ident.registration_id,
            payload,
            rng=self.rng,
            response_timeout_s=cfg.lifecycle.connect_timeout_s,
            default_poll_s=min(3.0, max(cfg.lifecycle.backoff_base_s, 0.05)),
            fallback_time_utc=utc_iso(self.clock.time()),
            csr=csr,
            allowed_hub_suffixes=cfg.dps.allowed_hub_suffixes,
        )
        log.info("registering with DPS at %s:%d", endpoint.host, endpoint.port)
        self._open(Link.DPS, endpoint)

    def _adopt_issued(
        self, chain: Sequence[str], candidate: tuple[Path, Path] | None = None
    ) -> Identity:
        """Install the chain DPS issued as the operational certificate (or, renewing, as
        the candidate's) and check it."""
        from agent.identity.child import candidate_config, load_in_child, operational_config
        from agent.identity.operational import install_chain

        if candidate is None:
            operational = operational_config(self.config.identity)
        else:
            operational = candidate_config(self.config.identity, *candidate)
        install_chain(operational.cert_chain_path, chain)
        now = datetime.fromtimestamp(self.clock.time(), UTC)
        identity = load_in_child(operational, config_path=self.config.source, now=now)
        log.info(
            "DPS issued the operational certificate %s..., valid until %s",
            identity.thumbprint[:16],
            identity.not_after.isoformat(timespec="seconds"),
        )
        return identity

    # -- renewal ------------------------------------------------------------------------

    def renewal_due_at(self) -> float | None:
        """When the operational certificate is to be renewed (epoch s), or None.

        At ``renew_at`` of its lifetime plus up to ``renew_jitter`` of it, drawn once per
        certificate from the injected random source.
        """
        cfg, operational = self.config.identity, self.operational
        if cfg.issuance != "dps" or operational is None:
            return None
        if self._renew_due is not None and self._renew_due[0] == operational.thumbprint:
            return self._renew_due[1]
        start, end = operational.not_before.timestamp(), operational.not_after.timestamp()
        share = min(cfg.renew_at + cfg.renew_jitter * self.rng.random(), 0.99)
        due = start + (end - start) * share
        self._renew_due = (operational.thumbprint, due)
        return due

    def maybe_renew(self) -> None:
        """Start a renewal (DPS re-registration with a new key's CSR) if it is due."""
        due = self.renewal_due_at()
        if due is None or self.renewal is not None or self.clock.time() < due:
            return
        if self.state is not lifecycle.State.CONNECTED:
            return  # renew over a working connection only
        from agent.identity.generations import candidate_paths

        self.renewal = candidate_paths(self.config.identity, int(self.clock.time() * 1000))
        log.info("renewing the operational certificate (due since %s)", utc_iso(due))
        if self.config.identity.renewal == "hub":
            self._renew_through_hub()
            return
        self.feed(lifecycle.ReprovisionRequested(force=False, reason="certificate renewal"))
        if self.state is lifecycle.State.CONNECTED:  # the budget said not now
            self._abandon_renewal("the reprovision budget does not allow it now")

    def _renew_through_hub(self) -> None:
        """Send the new key's CSR to the hub's credentials endpoint."""
        from agent.identity.operational import request_csr

        machine, ident = self.machine, self.identity
        assert self.renewal is not None and ident is not None
        assignment = machine.assignment if machine else None
        if assignment is None:
            self._abandon_renewal("no hub assignment")
            return
        try:
            csr = request_csr(self.config, ident.registration_id, self.renewal[1])
        except AgentError as exc:
            self._abandon_renewal(f"no CSR: {exc}")
            return
        from agent.core.credentials import HubRenewal

        rid = f"renew-{int(self.clock.time() * 1000)}"
        self.hub_renewal = HubRenewal(
            assignment.device_id, csr, rid, timeout_s=self.config.lifecycle.connect_timeout_s * 4
        )
        self.renewal_actions(self.hub_renewal.start())

    def renewal_actions(self, actions: Sequence[RenewalAction]) -> None:
        """Carry out what the hub renewal answered."""
        from agent.core.credentials import CertificateIssued, RenewalFailed

        for action in actions:
            match action:
                case Subscribe() | Publish():
                    self._send(action)
                case StartTimer() | CancelTimer():
                    self._timer_action(action)
                case CertificateIssued(chain=chain):
                    self.hub_renewal = None
                    assert self.renewal is not None
                    try:
                        self.candidate = self._adopt_issued(chain, self.renewal)
                    except AgentError as exc:
                        self._abandon_renewal(f"the issued certificate cannot be used: {exc}")
                        continue
                    self._switch_to_candidate()
                case RenewalFailed(code=code, message=message, transient=transient):
                    self.hub_renewal = None
                    kind = "transient" if transient else "final"
                    self._abandon_renewal(f"the hub answered {code} ({kind}): {message}")

    def _switch_to_candidate(self) -> None:
        """Drop the hub connection; the reconnection presents the candidate."""
        log.info("the hub issued a certificate; reconnecting with it")
        if self.session is not None:
            self.session.on_disconnected()
            self.session = None
        self.timers.cancel_prefixed(CONNECTION_TIMER_PREFIXES)
        self.close_transport()
        self.feed(lifecycle.ConnectionDropped("switching to the renewed certificate"))

    def _abandon_renewal(self, why: str) -> None:
        """Forget a renewal's candidate (its files go); the current pair stays current."""
        from agent.identity.generations import discard

        if self.renewal is None:
            return
        discard(*self.renewal)
        log.warning("certificate renewal abandoned: %s; keeping the current certificate", why)
        self.renewal = None
        self.candidate = None
        operational = self.operational
        if operational is not None:  # try again after the next check, not at once
            later = self.clock.time() + self.config.identity.renew_check_s
            self._renew_due = (operational.thumbprint, later)

    def _commit_renewal(self) -> None:
        """The hub accepted the candidate: it becomes current (one atomic write)."""
        from agent.identity.generations import commit

        assert self.renewal is not None and self.candidate is not None
        commit(self.config.identity, *self.renewal)
        self.operational, self.candidate, self.renewal = self.candidate, None, None
        log.info(
            "certificate renewed: now %s..., valid until %s",
            self.operational.thumbprint[:16],
            self.operational.not_after.isoformat(timespec="seconds"),
        )

    def dps_actions(self, actions: Sequence[provisioning.DpsAction]) -> None:
        """Carry out what the DPS registration answered."""
        from agent.core import provisioning

        for action in actions:
            match action:
                case Subscribe() | Publish():
                    self._send(action)
                case StartTimer() | CancelTimer():
                    self._timer_action(action)
                case provisioning.RegistrationSent():
                    self.feed(lifecycle.RegistrationSent())
                case provisioning.Assigned(assignment=assignment, issued_chain=chain):
                    self.registration = None
                    if chain:
                        try:
                            if self.renewal is not None:
                                self.candidate = self._adopt_issued(chain, self.renewal)
                            else:
                                self.operational = self._adopt_issued(chain)
                        except AgentError as exc:
                            log.error("the issued certificate cannot be used: %s", exc)
                            self._abandon_renewal("the issued certificate cannot be used")
                            self.feed(lifecycle.ProvisioningFailed(exc, False, None))
                            continue
                    self.feed(lifecycle.ProvisioningSucceeded(assignment))
                case provisioning.Failed(error=error, rejected=rejected, retry_after_s=after):
                    self.registration = None
                    log.warning("DPS registration failed: %s", clip(error, 400))
                    self.feed(lifecycle.ProvisioningFailed(error, rejected, after))

    # -- hub -------------------------------------------------------------------------------

    def _connect_hub(self, assignment: Assignment) -> None:
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
                model_id=cfg.device.model_id,
            ),
            websockets=websockets,
            keep_alive_s=cfg.hub.keep_alive_s,
            proxy=route_for(assignment.assigned_hub, cfg.network, self.environ),
        )
        self.session = HubSession(
            device_id=assignment.device_id,
            publisher=self.publisher,
            settings=self.settings,
            default_interval_s=cfg.telemetry.interval_s,
            context=self._reported_context,
            status=self._status,
            budget_allows=self._budget_allows,
            twin_get_timeout_s=cfg.lifecycle.connect_timeout_s,
        )
        log.info("connecting to hub %s as %s", assignment.assigned_hub, assignment.device_id)
        self._open(Link.HUB, endpoint)
        # The session starts talking once CONNACK 0 arrives (see route).

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
            sensors=sensor_infos(self.hardware.sensors),
            errors=self.hardware.device_errors(),
            telemetry_buffer={
                "kind": self.config.telemetry.buffer,
                "dropped": dict(self.publisher.queue.dropped_by),
            },
            certificate=self._certificate_report(),
        )

    def _certificate_report(self) -> dict[str, object] | None:
        """The certificate the hub connection uses, for ``reported.certificate``."""
        from agent.core.twin import certificate_report

        current = self.operational or self.identity
        if current is None:
            return None
        return certificate_report(
            not_before=current.not_before.timestamp(),
            not_after=current.not_after.timestamp(),
            renewal="dps" if self.operational is not None else "none",
            now=self.clock.time(),
        )

    def session_actions(self, actions: Sequence[Any]) -> None:
        """Carry out what the hub session answered."""
        for action in actions:
            match action:
                case Publish() | Subscribe():
                    self._send(action)
                case StartTimer() | CancelTimer():
                    self._timer_action(action)
                case SettingsChanged(settings=settings):
                    self._apply_settings(settings)
                case Reprovision(force=force):
                    self.timers.cancel(EFFECT_TIMER)
                    self.feed(lifecycle.ReprovisionRequested(force=force, reason="direct method"))

    def _apply_settings(self, settings: Settings) -> None:
        old = self.settings.telemetry_interval_s
        self.settings = settings
        if settings.telemetry_interval_s != old:
            log.info("telemetry interval now %g s", settings.telemetry_interval_s)
            self.timers.start(SAMPLE_TIMER, settings.telemetry_interval_s)

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
            transport.disconnect()
            self.route(transport, ev.ConnectionLost(f"send failed: {exc}"))
            return
        if action.tag is not None and self.session is not None and self.link is Link.HUB:
            self.session.on_published(action.tag, mid)
            if action.tag.startswith("method:") and self.session.has_pending_effects:
                self.timers.start(EFFECT_TIMER, EFFECT_WAIT_S)

    def _disconnect(self) -> None:
        if self.session is not None:
            self.session.on_disconnected()
            self.session = None
        self.registration = None
        self.timers.cancel_prefixed(CONNECTION_TIMER_PREFIXES)
        if self.transport is not None:
            self.transport.disconnect()

    def close_transport(self) -> None:
        """Close the open connection (if any) for good."""
        if self.transport is not None:
            self.transport.close()
        self.transport = None
        self.link = None
