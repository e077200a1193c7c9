"""The agent's lifecycle: one table-driven state machine, without I/O.

Theory of operation
-------------------
The daemon feeds :class:`Lifecycle` events (what happened) and carries out the
actions it returns (what to do). The machine never touches a socket, file or
clock: time comes from an injected :class:`~agent.core.clock.Clock`, randomness from an
injected :class:`random.Random`. Every (state, event) pair has exactly one entry in
:data:`TABLE`: a transition (with the states it can lead to), an ``ignore`` with its
reason, or a ``refuse`` -- an event that cannot happen in that state if the daemon
is wired correctly, raised as :class:`IllegalEventError` with the state unchanged.
Nothing is silently undefined; :func:`render_mermaid` / :func:`render_dot` draw the
table (``python -m agent.core.lifecycle [--dot]``).

::

    STARTING --Boot(cached)--> CONNECTING          --Boot(no cache)--> PROVISIONING
    PROVISIONING --ProvisioningSucceeded--> CONNECTING     (persist, then connect)
    PROVISIONING --ProvisioningFailed--> DPS_BACKOFF, or HUB_BACKOFF if a usable hub is cached
    CONNECTING --HubConnected--> CONNECTED
    CONNECTING --HubUnavailable--> HUB_BACKOFF  --TimerFired--> CONNECTING
    CONNECTING --HubRejected--> PROVISIONING (budget permitting, else REPROVISION_WAIT)
    CONNECTED --ConnectionDropped--> HUB_BACKOFF
    CONNECTED --ReprovisionRequested--> PROVISIONING (budget permitting, or forced)
    HUB_BACKOFF --TimerFired, outage >= long_outage_s--> PROVISIONING
    DPS_BACKOFF / REPROVISION_WAIT --TimerFired--> PROVISIONING (budget permitting)
    STARTING / any connecting or waiting state --IdentityInvalid--> IDENTITY_WAIT
    IDENTITY_WAIT --TimerFired--> IDENTITY_WAIT (CheckIdentity, next re-check timer)
    IDENTITY_WAIT --IdentityLoaded--> CONNECTING / PROVISIONING (as Boot)
    any --Stop--> STOPPING

Failure policy
--------------
Retried on the same hub, with capped full-jitter backoff (``backoff_base_s`` ..
``backoff_cap_s``): network and TLS failures, CONNACK 3 (server unavailable), a
dropped connection. The backoff is only forgiven once a connection has stayed up
for a while, so a hub that accepts and drops at once cannot make a tight loop.

Degrades to DPS: a hub that rejects the device (CONNACK 4/5, at first connect or on
reconnect after a drop) sends the agent to DPS at once; a hub unreachable for
``long_outage_s`` (20 min by default) too. A direct method or the button can ask
for it. If DPS then fails while the cached hub was never rejected, the agent goes
back to trying the hub.

Rejections cannot strand the device nor storm DPS. Only the *first* rejection since
the last stable connection goes to DPS at once. Every later one waits: the agent tries
the assigned hub again after a growing jittered wait (``backoff_base_s`` doubling up
to ``rejected_hub_retry_s``, drawn from the upper half of the range), and registers
with DPS again only once a growing gap has passed since the previous
rejection-driven registration (``rejected_retry_s`` doubling up to
``long_outage_s``, upper half too: under constant rejection about one registration
every 10 to 20 minutes with the defaults). DPS handing back the very hub that just
refused is recognised (``same_hub_again``): DPS cannot help then (the device is
disabled or unknown on that hub), so the hub retries carry on. When the budget is
spent the agent keeps trying the assigned hub slowly in HUB_BACKOFF instead of
giving up on it, so a device that is re-enabled comes back by itself; REPROVISION_WAIT
is only for a spent budget with no assignment at all. With the defaults, a device
disabled for 150 s makes at most 2 to 3 registrations and is back within 120 s of
being enabled. The rejection streak is forgiven after a stable connection
(:data:`STABLE_CONNECTION_S`), so a hub flapping between accept and reject does not
reset it.

Retried slowly: DPS 401/403/404 and "failed"/"disabled" registrations wait about
``rejected_retry_s``; 429 honours ``retry-after``; other DPS failures back off up to
``dps_backoff_cap_s``.

Budget: every registration that reaches DPS is recorded in an on-disk budget (at
most ``reprovision_budget`` per ``reprovision_window_s``). When it is spent the
agent keeps trying its assigned hub (a rejected one slowly), else, with no
assignment, waits in REPROVISION_WAIT and says until when. Only a forced request
(``{"force": true}``) overrides it.

Waits for a usable identity: a certificate that is not yet valid (a Pi without an
RTC that booted before NTP), expired, not matching its key (a rotation that wrote the
new certificate before the new key) or whose chain does not build. The daemon feeds
IdentityInvalid -- at start instead of Boot, or while running when a hub or DPS
failure coincides with a certificate that is no longer valid (an expiry while
running must not turn into CONNACK 5 -> DPS -> 401 -> DPS ...). IDENTITY_WAIT makes
no connection; it asks the daemon to re-check the keystore (CheckIdentity) on a
capped full-jitter backoff (``backoff_base_s`` .. ``IDENTITY_RECHECK_CAP_S``), and
the daemon also re-checks at once when the identity files change. IdentityLoaded
then starts the normal lifecycle as Boot does (the daemon looks up the cached
assignment for the new identity, so a new thumbprint provisions again).

Fatal: nothing in here. Configuration errors (bad TOML, missing files, a key
readable by others) stop the daemon before the lifecycle starts (exit 78); a
refused event is a wiring bug that the daemon logs without changing state.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent.config import LifecycleConfig
from agent.core.actions import CancelTimer, StartTimer
from agent.core.assignment import Assignment
from agent.core.backoff import Backoff, BackoffPolicy
from agent.core.budget import ReprovisionBudget
from agent.core.clock import Clock, utc_iso
from agent.errors import AgentError, likely_causes

TIMER = "lifecycle"
#: Longest wait between two keystore re-checks in IDENTITY_WAIT.
IDENTITY_RECHECK_CAP_S = 60.0
#: A hub connection that lasted this long forgives the backoff's failure count.
STABLE_CONNECTION_S = 60.0


class State(enum.Enum):
    """Where the agent stands."""

    STARTING = "STARTING"
    PROVISIONING = "PROVISIONING"
    CONNECTING = "CONNECTING"
    CONNECTED = "CONNECTED"
    HUB_BACKOFF = "HUB_BACKOFF"
    DPS_BACKOFF = "DPS_BACKOFF"
    REPROVISION_WAIT = "REPROVISION_WAIT"
    IDENTITY_WAIT = "IDENTITY_WAIT"
    STOPPING = "STOPPING"


class IllegalEventError(AgentError, RuntimeError):
    """An event that cannot happen in the current state (a wiring bug); state unchanged."""

    def __init__(self, state: State, event: object, why: str) -> None:
        self.state = state
        self.event = event
        super().__init__(f"{type(event).__name__} refused in {state.value}: {why}")


# --- events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Boot:
    """The daemon is up; ``cached`` is the assignment found on disk for this identity."""

    cached: Assignment | None
    reason: str = "first boot: no cached assignment"


@dataclass(frozen=True)
class ProvisioningSucceeded:
    """DPS assigned the device."""

    assignment: Assignment


@dataclass(frozen=True)
class ProvisioningFailed:
    """A registration attempt ended without an assignment."""

    error: AgentError
    rejected: bool = False
    retry_after_s: float | None = None


@dataclass(frozen=True)
class RegistrationSent:
    """A register request reached DPS: it counts against the budget."""


@dataclass(frozen=True)
class HubConnected:
    """CONNACK 0 from the hub."""


@dataclass(frozen=True)
class HubRejected:
    """CONNACK 4/5 from the hub: it does not accept this device."""

    return_code: int


@dataclass(frozen=True)
class HubUnavailable:
    """Network, TLS or CONNACK 3 (or another transient refusal) while connecting."""

    reason: str


@dataclass(frozen=True)
class ConnectionDropped:
    """An established hub connection went away."""

    reason: str


@dataclass(frozen=True)
class ReprovisionRequested:
    """A direct method or the button asks for a new registration."""

    force: bool = False
    reason: str = "requested"


@dataclass(frozen=True)
class TimerFired:
    """The lifecycle's timer fired."""


@dataclass(frozen=True)
class Stop:
    """SIGTERM or the like: shut down."""


@dataclass(frozen=True)
class IdentityInvalid:
    """The certificate cannot be used now (validity, key mismatch, chain); says why.

    ``missing``: there is no identity yet (first boot of a cloned image): ``reason``
    says where it is waited for.
    """

    reason: str
    missing: bool = False


@dataclass(frozen=True)
class IdentityLoaded:
    """A re-check found a usable identity; ``cached`` is the assignment stored for it."""

    cached: Assignment | None
    reason: str = "identity usable again: no cached assignment"


Event = (
    Boot
    | ProvisioningSucceeded
    | ProvisioningFailed
    | RegistrationSent
    | HubConnected
    | HubRejected
    | HubUnavailable
    | ConnectionDropped
    | ReprovisionRequested
    | TimerFired
    | Stop
    | IdentityInvalid
    | IdentityLoaded
)
EVENT_TYPES: tuple[type[Event], ...] = (
    Boot,
    ProvisioningSucceeded,
    ProvisioningFailed,
    RegistrationSent,
    HubConnected,
    HubRejected,
    HubUnavailable,
    ConnectionDropped,
    ReprovisionRequested,
    TimerFired,
    Stop,
    IdentityInvalid,
    IdentityLoaded,
)

# --- actions (besides StartTimer / CancelTimer) ------------------------------------------


@dataclass(frozen=True)
class ConnectDps:
    """Open a connection to DPS and run one registration attempt on it."""


@dataclass(frozen=True)
class ConnectHub:
    """Open a connection to the assigned hub."""

    assignment: Assignment


@dataclass(frozen=True)
class CheckIdentity:
    """Load and check the identity again; feed IdentityLoaded or IdentityInvalid."""


@dataclass(frozen=True)
class Disconnect:
    """Close the current connection (hub or DPS) cleanly."""


@dataclass(frozen=True)
class PersistAssignment:
    """Write the assignment to the state file."""

    assignment: Assignment
    reason: str | None


@dataclass(frozen=True)
class PersistBudget:
    """Write the reprovisioning budget to disk."""

    budget: ReprovisionBudget


@dataclass(frozen=True)
class Status:
    """The state changed, or something worth telling (sd_notify STATUS, status file, LED)."""

    state: State
    text: str


Action = (
    ConnectDps
    | ConnectHub
    | CheckIdentity
    | Disconnect
    | PersistAssignment
    | PersistBudget
    | Status
)
AnyAction = Action | StartTimer | CancelTimer

# --- the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One entry of :data:`TABLE`."""

    kind: str  # "go", "ignore" or "refuse"
    note: str
    #: For "go": the states this can lead to (the current one included if it can stay).
    targets: tuple[State, ...] = ()
    handler: str = ""


def go(handler: str, *targets: State, note: str = "") -> Rule:
    """A transition handled by ``Lifecycle._<handler>``."""
    return Rule("go", note or handler.replace("_", " "), targets, handler)


def ignore(note: str) -> Rule:
    """An event that is harmless in this state and changes nothing."""
    return Rule("ignore", note)


def refuse(note: str) -> Rule:
    """An event that cannot happen in this state; raising reveals a wiring bug."""
    return Rule("refuse", note)


S = State
_STOP = go("stop", S.STOPPING)
_STALE_TIMER = ignore("stale timer: cancelled on leaving the wait state")
_NO_HUB_CONN = refuse("no hub connection is being made in this state")
_NO_DPS = refuse("no registration is running in this state")
_TO_IDENTITY_WAIT = go("identity_invalid", S.IDENTITY_WAIT)
_NOT_WAITING = refuse("the identity is re-checked only in IDENTITY_WAIT")

TABLE: dict[tuple[State, type[Event]], Rule] = {
    # STARTING: only Boot gets things going.
    (S.STARTING, Boot): go("boot", S.CONNECTING, S.PROVISIONING, S.REPROVISION_WAIT),
    (S.STARTING, ProvisioningSucceeded): _NO_DPS,
    (S.STARTING, ProvisioningFailed): _NO_DPS,
    (S.STARTING, RegistrationSent): _NO_DPS,
    (S.STARTING, HubConnected): _NO_HUB_CONN,
    (S.STARTING, HubRejected): _NO_HUB_CONN,
    (S.STARTING, HubUnavailable): _NO_HUB_CONN,
    (S.STARTING, ConnectionDropped): _NO_HUB_CONN,
    (S.STARTING, ReprovisionRequested): ignore("not booted yet; boot decides"),
    (S.STARTING, TimerFired): _STALE_TIMER,
    (S.STARTING, Stop): _STOP,
    (S.STARTING, IdentityInvalid): _TO_IDENTITY_WAIT,
    (S.STARTING, IdentityLoaded): _NOT_WAITING,
    # PROVISIONING: one registration attempt on a DPS connection.
    (S.PROVISIONING, Boot): refuse("already booted"),
    (S.PROVISIONING, ProvisioningSucceeded): go("assigned", S.CONNECTING),
    (S.PROVISIONING, ProvisioningFailed): go("dps_failed", S.DPS_BACKOFF, S.HUB_BACKOFF),
    (S.PROVISIONING, RegistrationSent): go("registration_sent", S.PROVISIONING),
    (S.PROVISIONING, HubConnected): _NO_HUB_CONN,
    (S.PROVISIONING, HubRejected): _NO_HUB_CONN,
    (S.PROVISIONING, HubUnavailable): _NO_HUB_CONN,
    (S.PROVISIONING, ConnectionDropped): _NO_HUB_CONN,
    (S.PROVISIONING, ReprovisionRequested): ignore("already registering with DPS"),
    (S.PROVISIONING, TimerFired): _STALE_TIMER,
    (S.PROVISIONING, Stop): _STOP,
    (S.PROVISIONING, IdentityInvalid): _TO_IDENTITY_WAIT,
    (S.PROVISIONING, IdentityLoaded): _NOT_WAITING,
    # CONNECTING: waiting for the hub's CONNACK.
    (S.CONNECTING, Boot): refuse("already booted"),
    (S.CONNECTING, ProvisioningSucceeded): _NO_DPS,
    (S.CONNECTING, ProvisioningFailed): _NO_DPS,
    (S.CONNECTING, RegistrationSent): _NO_DPS,
    (S.CONNECTING, HubConnected): go("connected", S.CONNECTED),
    (S.CONNECTING, HubRejected): go("rejected", S.PROVISIONING, S.HUB_BACKOFF, S.REPROVISION_WAIT),
    (S.CONNECTING, HubUnavailable): go("unavailable", S.HUB_BACKOFF),
    (S.CONNECTING, ConnectionDropped): go("unavailable", S.HUB_BACKOFF),
    (S.CONNECTING, ReprovisionRequested): go("reprovision", S.CONNECTING, S.PROVISIONING),
    (S.CONNECTING, TimerFired): _STALE_TIMER,
    (S.CONNECTING, Stop): _STOP,
    (S.CONNECTING, IdentityInvalid): _TO_IDENTITY_WAIT,
    (S.CONNECTING, IdentityLoaded): _NOT_WAITING,
    # CONNECTED: running.
    (S.CONNECTED, Boot): refuse("already booted"),
    (S.CONNECTED, ProvisioningSucceeded): _NO_DPS,
    (S.CONNECTED, ProvisioningFailed): _NO_DPS,
    (S.CONNECTED, RegistrationSent): _NO_DPS,
    (S.CONNECTED, HubConnected): refuse("already connected: CONNACK comes once"),
    (S.CONNECTED, HubRejected): refuse("already connected: CONNACK comes once"),
    (S.CONNECTED, HubUnavailable): refuse("already connected: a loss is ConnectionDropped"),
    (S.CONNECTED, ConnectionDropped): go("dropped", S.HUB_BACKOFF),
    (S.CONNECTED, ReprovisionRequested): go("reprovision", S.CONNECTED, S.PROVISIONING),
    (S.CONNECTED, TimerFired): _STALE_TIMER,
    (S.CONNECTED, Stop): _STOP,
    (S.CONNECTED, IdentityInvalid): _TO_IDENTITY_WAIT,
    (S.CONNECTED, IdentityLoaded): _NOT_WAITING,
    # HUB_BACKOFF: waiting to try the same hub again.
    (S.HUB_BACKOFF, Boot): refuse("already booted"),
    (S.HUB_BACKOFF, ProvisioningSucceeded): _NO_DPS,
    (S.HUB_BACKOFF, ProvisioningFailed): _NO_DPS,
    (S.HUB_BACKOFF, RegistrationSent): _NO_DPS,
    (S.HUB_BACKOFF, HubConnected): _NO_HUB_CONN,
    (S.HUB_BACKOFF, HubRejected): _NO_HUB_CONN,
    (S.HUB_BACKOFF, HubUnavailable): _NO_HUB_CONN,
    (S.HUB_BACKOFF, ConnectionDropped): _NO_HUB_CONN,
    (S.HUB_BACKOFF, ReprovisionRequested): go("reprovision", S.PROVISIONING, S.HUB_BACKOFF),
    (S.HUB_BACKOFF, TimerFired): go("retry_hub", S.CONNECTING, S.PROVISIONING, S.HUB_BACKOFF),
    (S.HUB_BACKOFF, Stop): _STOP,
    (S.HUB_BACKOFF, IdentityInvalid): _TO_IDENTITY_WAIT,
    (S.HUB_BACKOFF, IdentityLoaded): _NOT_WAITING,
    # DPS_BACKOFF: waiting to try DPS again (no usable hub).
    (S.DPS_BACKOFF, Boot): refuse("already booted"),
    (S.DPS_BACKOFF, ProvisioningSucceeded): _NO_DPS,
    (S.DPS_BACKOFF, ProvisioningFailed): _NO_DPS,
    (S.DPS_BACKOFF, RegistrationSent): _NO_DPS,
    (S.DPS_BACKOFF, HubConnected): _NO_HUB_CONN,
    (S.DPS_BACKOFF, HubRejected): _NO_HUB_CONN,
    (S.DPS_BACKOFF, HubUnavailable): _NO_HUB_CONN,
    (S.DPS_BACKOFF, ConnectionDropped): _NO_HUB_CONN,
    (S.DPS_BACKOFF, ReprovisionRequested): go("reprovision", S.DPS_BACKOFF, S.PROVISIONING),
    (S.DPS_BACKOFF, TimerFired): go("retry_dps", S.PROVISIONING, S.REPROVISION_WAIT),
    (S.DPS_BACKOFF, Stop): _STOP,
    (S.DPS_BACKOFF, IdentityInvalid): _TO_IDENTITY_WAIT,
    (S.DPS_BACKOFF, IdentityLoaded): _NOT_WAITING,
    # REPROVISION_WAIT: the budget is spent and no hub is usable.
    (S.REPROVISION_WAIT, Boot): refuse("already booted"),
    (S.REPROVISION_WAIT, ProvisioningSucceeded): _NO_DPS,
    (S.REPROVISION_WAIT, ProvisioningFailed): _NO_DPS,
    (S.REPROVISION_WAIT, RegistrationSent): _NO_DPS,
    (S.REPROVISION_WAIT, HubConnected): _NO_HUB_CONN,
    (S.REPROVISION_WAIT, HubRejected): _NO_HUB_CONN,
    (S.REPROVISION_WAIT, HubUnavailable): _NO_HUB_CONN,
    (S.REPROVISION_WAIT, ConnectionDropped): _NO_HUB_CONN,
    (S.REPROVISION_WAIT, ReprovisionRequested): go(
        "reprovision", S.PROVISIONING, S.REPROVISION_WAIT
    ),
    (S.REPROVISION_WAIT, TimerFired): go("retry_dps", S.PROVISIONING, S.REPROVISION_WAIT),
    (S.REPROVISION_WAIT, Stop): _STOP,
    (S.REPROVISION_WAIT, IdentityInvalid): _TO_IDENTITY_WAIT,
    (S.REPROVISION_WAIT, IdentityLoaded): _NOT_WAITING,
    # IDENTITY_WAIT: no usable certificate; no connection, keystore re-checked on a timer.
    (S.IDENTITY_WAIT, Boot): refuse("already booted"),
    (S.IDENTITY_WAIT, ProvisioningSucceeded): _NO_DPS,
    (S.IDENTITY_WAIT, ProvisioningFailed): _NO_DPS,
    (S.IDENTITY_WAIT, RegistrationSent): _NO_DPS,
    (S.IDENTITY_WAIT, HubConnected): _NO_HUB_CONN,
    (S.IDENTITY_WAIT, HubRejected): _NO_HUB_CONN,
    (S.IDENTITY_WAIT, HubUnavailable): _NO_HUB_CONN,
    (S.IDENTITY_WAIT, ConnectionDropped): _NO_HUB_CONN,
    (S.IDENTITY_WAIT, ReprovisionRequested): ignore("no usable identity to register with"),
    (S.IDENTITY_WAIT, TimerFired): go("recheck_identity", S.IDENTITY_WAIT),
    (S.IDENTITY_WAIT, Stop): _STOP,
    (S.IDENTITY_WAIT, IdentityInvalid): go("identity_invalid", S.IDENTITY_WAIT),
    (S.IDENTITY_WAIT, IdentityLoaded): go(
        "identity_loaded", S.CONNECTING, S.PROVISIONING, S.HUB_BACKOFF, S.REPROVISION_WAIT
    ),
}
# STOPPING: the daemon is closing down; whatever still arrives changes nothing.
TABLE.update({(S.STOPPING, kind): ignore("stopping: nothing more to do") for kind in EVENT_TYPES})


def render_mermaid(table: dict[tuple[State, type[Event]], Rule] | None = None) -> str:
    """The legal transitions as a mermaid ``stateDiagram-v2``."""
    lines = ["stateDiagram-v2", f"    [*] --> {State.STARTING.value}"]
    for (state, kind), rule in (table or TABLE).items():
        if rule.kind != "go":
            continue
        for target in rule.targets:
            lines.append(f"    {state.value} --> {target.value}: {kind.__name__}")
    lines.append(f"    {State.STOPPING.value} --> [*]")
    return "\n".join(dict.fromkeys(lines)) + "\n"


def render_dot(table: dict[tuple[State, type[Event]], Rule] | None = None) -> str:
    """The legal transitions as a Graphviz digraph."""
    lines = ["digraph lifecycle {", "    rankdir=LR;"]
    for (state, kind), rule in (table or TABLE).items():
        if rule.kind != "go":
            continue
        for target in rule.targets:
            lines.append(f'    {state.value} -> {target.value} [label="{kind.__name__}"];')
    lines.append("}")
    return "\n".join(dict.fromkeys(lines)) + "\n"


# --- the machine ----------------------------------------------------------------------------


@dataclass
class Snapshot:
    """What the lifecycle knows, for getStatus and the status file."""

    state: State
    hub: str | None
    device_id: str | None
    last_error: str | None
    reprovision_reason: str | None
    outage_s: float | None
    budget_next_allowed_at: float
    extra: dict[str, object] = field(default_factory=dict)


class Lifecycle:
    """The state machine. Feed :meth:`handle`; carry out what it returns."""

    def __init__(
        self,
        config: LifecycleConfig,
        *,
        clock: Clock,
        rng: random.Random,
        budget: ReprovisionBudget,
    ) -> None:
        self.config = config
        self._clock = clock
        self._rng = rng
        self.state = State.STARTING
        self.budget = budget
        self.assignment: Assignment | None = None
        self.hub_rejected = False
        self.reprovision_reason: str | None = None
        self.last_error: str | None = None
        self.outage_started: float | None = None
        self.connected_at: float | None = None
        #: After a DPS failure, not before this monotonic time again (unless forced).
        self.dps_not_before = 0.0
        self.hub_backoff = Backoff(BackoffPolicy(config.backoff_base_s, config.backoff_cap_s), rng)
        dps_cap = max(config.dps_backoff_cap_s, config.backoff_base_s)
        self.dps_backoff = Backoff(BackoffPolicy(config.backoff_base_s, dps_cap), rng)
        identity_cap = max(min(config.backoff_cap_s, IDENTITY_RECHECK_CAP_S), config.backoff_base_s)
        self.identity_backoff = Backoff(BackoffPolicy(config.backoff_base_s, identity_cap), rng)
        #: Why the identity cannot be used (IDENTITY_WAIT), else None.
        self.identity_problem: str | None = None
        #: IDENTITY_WAIT because there is no identity at all yet (not an unusable one).
        self.identity_missing = False
        #: Hub rejections since the last stable connection.
        self.rejections = 0
        #: The last assignment DPS gave is the hub that had just refused the device.
        self.same_hub_again = False
        #: No rejection-driven DPS registration before this monotonic time.
        self.rejection_dps_not_before = 0.0
        hub_retry_cap = max(config.rejected_hub_retry_s, config.backoff_base_s)
        self.rejected_hub_backoff = Backoff(
            BackoffPolicy(config.backoff_base_s, hub_retry_cap), rng, growing=True
        )
        rereg_cap = max(config.long_outage_s, config.rejected_retry_s)
        self.rejection_dps_backoff = Backoff(
            BackoffPolicy(config.rejected_retry_s, rereg_cap), rng, growing=True
        )
        self._rejected_hub: Assignment | None = None

    # -- public ---------------------------------------------------------------------------

    def handle(self, event: Event) -> list[AnyAction]:
        """Apply one event; return the actions to carry out, in order."""
        rule = TABLE[(self.state, type(event))]
        if rule.kind == "ignore":
            return []
        if rule.kind == "refuse":
            raise IllegalEventError(self.state, event, rule.note)
        before = self.state
        handler: Callable[[Event], list[AnyAction]] = getattr(self, f"_{rule.handler}")
        actions = handler(event)
        if self.state not in rule.targets:  # pragma: no cover - a bug in this module
            raise AssertionError(f"{before} -> {self.state} not declared for {event}")
        if self.state is not before:
            actions.append(Status(self.state, self.describe()))
        return actions

    def budget_allows(self) -> bool:
        """Whether a registration may start now without force."""
        return self.budget.allows(self._clock.time())

    def describe(self) -> str:
        """One line for sd_notify STATUS and logs."""
        hub = self.assignment.assigned_hub if self.assignment else None
        match self.state:
            case State.CONNECTED:
                return f"connected to {hub}"
            case State.CONNECTING:
                return f"connecting to {hub}"
            case State.PROVISIONING:
                return f"registering with DPS ({self.reprovision_reason})"
            case State.HUB_BACKOFF if self.hub_rejected:
                again = " (DPS assigned it again)" if self.same_hub_again else ""
                return (
                    f"hub {hub} refused the device{again}: {self.last_error}; "
                    "trying it again with growing waits, DPS again later"
                )
            case State.HUB_BACKOFF:
                return f"hub {hub} unreachable ({self.last_error}); retrying"
            case State.DPS_BACKOFF:
                return f"DPS failed ({self.last_error}); retrying"
            case State.REPROVISION_WAIT:
                at = self.budget.next_allowed_at(self._clock.time())
                return (
                    f"reprovisioning budget spent ({self.config.reprovision_budget} per "
                    f"{self.config.reprovision_window_s:g} s); waiting until {utc_iso(at)}"
                )
            case State.IDENTITY_WAIT if self.identity_missing:
                return f"{self.identity_problem}; provisioning as soon as it is there"
            case State.IDENTITY_WAIT:
                return (
                    f"device certificate unusable: {self.identity_problem}; "
                    "re-checking (and whenever the certificate or key files change)"
                )
            case State.STOPPING:
                return "stopping"
            case State.STARTING:
                return "starting"

    def snapshot(self) -> Snapshot:
        """The current state and what it knows."""
        now = self._clock.monotonic()
        return Snapshot(
            state=self.state,
            hub=self.assignment.assigned_hub if self.assignment else None,
            device_id=self.assignment.device_id if self.assignment else None,
            last_error=self.last_error,
            reprovision_reason=self.reprovision_reason,
            outage_s=None if self.outage_started is None else now - self.outage_started,
            budget_next_allowed_at=self.budget.next_allowed_at(self._clock.time()),
        )

    # -- helpers ------------------------------------------------------------------------------

    def _hub_usable(self) -> bool:
        return self.assignment is not None and not self.hub_rejected

    def _wait(self, state: State, delay_s: float) -> list[AnyAction]:
        self.state = state
        return [StartTimer(TIMER, max(0.0, delay_s))]

    def _to_dps(self, reason: str, *, force: bool = False) -> list[AnyAction]:
        """Go to DPS if the budget allows (or forced); otherwise wait, as the policy says."""
        self.reprovision_reason = reason
        now = self._clock.time()
        if force or self.budget.allows(now):
            self.state = State.PROVISIONING
            return [CancelTimer(TIMER), ConnectDps()]
        if self._hub_usable():
            # Keep trying the hub that may still work; DPS once the budget allows.
            return self._wait(State.HUB_BACKOFF, self.hub_backoff.next_delay_s())
        if self.assignment is not None:
            # Rejected, budget spent: keep trying it slowly, it may be re-enabled.
            return self._wait(State.HUB_BACKOFF, self.rejected_hub_backoff.next_delay_s())
        return self._wait(State.REPROVISION_WAIT, self.budget.next_allowed_at(now) - now)

    def _start_outage(self) -> None:
        if self.outage_started is None:
            self.outage_started = self._clock.monotonic()

    # -- handlers (named in TABLE) ---------------------------------------------------------

    def _boot(self, event: Event) -> list[AnyAction]:
        assert isinstance(event, Boot)
        if event.cached is not None:
            self.assignment = event.cached
            self.state = State.CONNECTING
            return [ConnectHub(event.cached)]
        return self._to_dps(event.reason)

    def _registration_sent(self, event: Event) -> list[AnyAction]:
        self.budget = self.budget.recorded(self._clock.time())
        return [PersistBudget(self.budget)]

    def _assigned(self, event: Event) -> list[AnyAction]:
        assert isinstance(event, ProvisioningSucceeded)
        self.dps_backoff.reset()
        self.hub_backoff.reset()
        refused = self._rejected_hub
        self.same_hub_again = refused is not None and (
            (refused.assigned_hub, refused.device_id)
            == (event.assignment.assigned_hub, event.assignment.device_id)
        )
        self.assignment = event.assignment
        self.hub_rejected = False
        self.outage_started = None
        self.last_error = None
        self.state = State.CONNECTING
        return [
            Disconnect(),
            PersistAssignment(event.assignment, self.reprovision_reason),
            ConnectHub(event.assignment),
        ]

    def _dps_failed(self, event: Event) -> list[AnyAction]:
        assert isinstance(event, ProvisioningFailed)
        self.last_error = str(event.error)
        if event.retry_after_s is not None:
            delay = self.dps_backoff.next_delay_s(event.retry_after_s)
        elif event.rejected:
            slow = self.config.rejected_retry_s
            delay = self._rng.uniform(slow / 2, slow)
        else:
            delay = self.dps_backoff.next_delay_s()
        self.dps_not_before = self._clock.monotonic() + delay
        if self._hub_usable():
            # The cached hub was never rejected: go back to it, DPS again after `delay`.
            return [Disconnect(), *self._wait(State.HUB_BACKOFF, self.hub_backoff.next_delay_s())]
        if self.assignment is not None and self.rejections > 0:
            # DPS down while the hub rejects: keep trying the hub slowly meanwhile.
            retry = self.rejected_hub_backoff.next_delay_s()
            return [Disconnect(), *self._wait(State.HUB_BACKOFF, retry)]
        return [Disconnect(), *self._wait(State.DPS_BACKOFF, delay)]

    def _connected(self, event: Event) -> list[AnyAction]:
        self.state = State.CONNECTED
        self.outage_started = None
        self.last_error = None
        self.connected_at = self._clock.monotonic()
        return []

    def _rejected(self, event: Event) -> list[AnyAction]:
        assert isinstance(event, HubRejected)
        self.hub_rejected = True
        self.rejections += 1
        self._rejected_hub = self.assignment
        causes = likely_causes("hub", event.return_code)
        self.last_error = f"hub refused the device (CONNACK {event.return_code}: {causes})"
        now = self._clock.monotonic()
        if now >= max(self.rejection_dps_not_before, self.dps_not_before):
            # The first rejection, or the growing gap since the last registration passed.
            return [Disconnect(), *self._to_dps_after_rejection(now)]
        # Meanwhile DPS could only say the same (same_hub_again): retry the hub itself.
        retry = self.rejected_hub_backoff.next_delay_s()
        return [Disconnect(), *self._wait(State.HUB_BACKOFF, retry)]

    def _to_dps_after_rejection(self, now: float) -> list[AnyAction]:
        """Register with DPS (budget permitting); the next such registration waits longer."""
        actions = self._to_dps(self.last_error or "hub refused the device")
        if self.state is State.PROVISIONING:
            gap = self.rejection_dps_backoff.next_delay_s()
            self.rejection_dps_not_before = now + gap
        return actions

    def _forgive_rejections(self) -> None:
        """A stable connection: the next rejection is news again."""
        self.rejections = 0
        self.same_hub_again = False
        self._rejected_hub = None
        self.rejection_dps_not_before = 0.0
        self.rejected_hub_backoff.reset()
        self.rejection_dps_backoff.reset()

    def _unavailable(self, event: Event) -> list[AnyAction]:
        assert isinstance(event, HubUnavailable | ConnectionDropped)
        self.last_error = event.reason
        self._start_outage()
        return [Disconnect(), *self._wait(State.HUB_BACKOFF, self.hub_backoff.next_delay_s())]

    def _dropped(self, event: Event) -> list[AnyAction]:
        assert isinstance(event, ConnectionDropped)
        now = self._clock.monotonic()
        if self.connected_at is not None and now - self.connected_at >= STABLE_CONNECTION_S:
            self.hub_backoff.reset()
            self._forgive_rejections()
        self.connected_at = None
        return self._unavailable(event)

    def _retry_hub(self, event: Event) -> list[AnyAction]:
        now = self._clock.monotonic()
        outage = 0.0 if self.outage_started is None else now - self.outage_started
        if outage >= self.config.long_outage_s and now >= self.dps_not_before:
            return self._to_dps(f"hub unreachable for {outage:.0f} s")
        assert self.assignment is not None
        self.state = State.CONNECTING
        return [ConnectHub(self.assignment)]

    def _retry_dps(self, event: Event) -> list[AnyAction]:
        return self._to_dps(self.reprovision_reason or "retry")

    def _reprovision(self, event: Event) -> list[AnyAction]:
        assert isinstance(event, ReprovisionRequested)
        allowed = event.force or self.budget.allows(self._clock.time())
        if not allowed and self.state in (
            State.CONNECTED,
            State.CONNECTING,
            State.DPS_BACKOFF,
        ):
            # Not allowed now: carry on as before; the caller was told why.
            return []
        leaving = self.state in (State.CONNECTED, State.CONNECTING)
        if leaving:
            self.connected_at = None
        actions = self._to_dps(event.reason, force=event.force)
        return [Disconnect(), *actions] if leaving else actions

    def _identity_invalid(self, event: Event) -> list[AnyAction]:
        assert isinstance(event, IdentityInvalid)
        changed = event.reason != self.identity_problem
        self.identity_problem = event.reason
        self.identity_missing = event.missing
        self.last_error = event.reason
        if self.state is State.IDENTITY_WAIT:
            # A re-check failed again (the timer is already running): say so if it is news.
            return [Status(self.state, self.describe())] if changed else []
        leaving = self.state is not State.STARTING
        self.connected_at = None
        self.identity_backoff.reset()
        actions = self._wait(State.IDENTITY_WAIT, self.identity_backoff.next_delay_s())
        return [Disconnect(), *actions] if leaving else actions

    def _recheck_identity(self, event: Event) -> list[AnyAction]:
        # The next re-check is armed first: CheckIdentity may lead on to another state.
        return [StartTimer(TIMER, self.identity_backoff.next_delay_s()), CheckIdentity()]

    def _identity_loaded(self, event: Event) -> list[AnyAction]:
        assert isinstance(event, IdentityLoaded)
        self.identity_problem = None
        self.identity_missing = False
        self.last_error = None
        self.hub_rejected = False
        self.outage_started = None
        self.hub_backoff.reset()
        self.identity_backoff.reset()
        if event.cached is not None:
            self.assignment = event.cached
            self.state = State.CONNECTING
            return [CancelTimer(TIMER), ConnectHub(event.cached)]
        self.assignment = None
        return self._to_dps(event.reason)

    def _stop(self, event: Event) -> list[AnyAction]:
        self.state = State.STOPPING
        return [CancelTimer(TIMER), Disconnect()]


def unreachable_states(table: dict[tuple[State, type[Event]], Rule] | None = None) -> set[State]:
    """States no legal transition leads to (should be empty but STARTING)."""
    reached: set[State] = {State.STARTING}
    for rule in (table or TABLE).values():
        reached.update(rule.targets)
    return set(State) - reached


def pairs(states: Iterable[State] = State) -> list[tuple[State, type[Event]]]:
    """Every (state, event type) pair, in a stable order."""
    return [(s, e) for s in states for e in EVENT_TYPES]


if __name__ == "__main__":  # ``python -m agent.core.lifecycle [--dot]`` prints the diagram
    import sys

    sys.stdout.write(render_dot() if "--dot" in sys.argv[1:] else render_mermaid())
