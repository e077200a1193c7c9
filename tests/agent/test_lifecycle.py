"""The lifecycle table: every legal transition, every illegal pair, and the policies."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import LifecycleConfig
from agent.core.actions import CancelTimer, StartTimer
from agent.core.budget import ReprovisionBudget
from agent.core.lifecycle import (
    EVENT_TYPES,
    IDENTITY_RECHECK_CAP_S,
    STABLE_CONNECTION_S,
    TABLE,
    TIMER,
    AnyAction,
    Boot,
    CheckIdentity,
    ConnectDps,
    ConnectHub,
    ConnectionDropped,
    Disconnect,
    Event,
    HubConnected,
    HubRejected,
    HubUnavailable,
    IdentityInvalid,
    IdentityLoaded,
    IllegalEventError,
    Lifecycle,
    PersistAssignment,
    PersistBudget,
    ProvisioningFailed,
    ProvisioningSucceeded,
    RegistrationSent,
    ReprovisionRequested,
    State,
    Status,
    Stop,
    TimerFired,
    pairs,
    render_dot,
    render_mermaid,
    unreachable_states,
)
from agent.core.provisioning import Assignment
from agent.errors import ProvisioningError, TransportError
from tests.support.fakeclock import FakeClock

HUB_A = Assignment("hub-a.local", "dev-1", "2026-01-01T00:00:00Z")
HUB_B = Assignment("hub-b.local", "dev-1", "2026-01-01T01:00:00Z")
CONFIG = LifecycleConfig(
    backoff_base_s=1.0,
    backoff_cap_s=30.0,
    long_outage_s=1200.0,
    dps_backoff_cap_s=60.0,
    rejected_retry_s=300.0,
    reprovision_budget=3,
    reprovision_window_s=3600.0,
)
S = State

# One instance of each event type, for sweeping the table.
SAMPLE_EVENTS: dict[type[Event], Event] = {
    Boot: Boot(HUB_A),
    ProvisioningSucceeded: ProvisioningSucceeded(HUB_B),
    ProvisioningFailed: ProvisioningFailed(TransportError("down")),
    RegistrationSent: RegistrationSent(),
    HubConnected: HubConnected(),
    HubRejected: HubRejected(5),
    HubUnavailable: HubUnavailable("connection refused"),
    ConnectionDropped: ConnectionDropped("reset"),
    ReprovisionRequested: ReprovisionRequested(reason="method"),
    TimerFired: TimerFired(),
    Stop: Stop(),
    IdentityInvalid: IdentityInvalid("certificate expired"),
    IdentityLoaded: IdentityLoaded(HUB_A),
}


def new(clock: FakeClock | None = None, *, spent: bool = False, **overrides: float) -> Lifecycle:
    clock = clock or FakeClock()
    budget = ReprovisionBudget(CONFIG.reprovision_budget, CONFIG.reprovision_window_s)
    if spent:
        for _ in range(CONFIG.reprovision_budget):
            budget = budget.recorded(clock.time())
    config = replace(CONFIG, **overrides)  # type: ignore[arg-type]
    return Lifecycle(config, clock=clock, rng=random.Random(4), budget=budget)


def put_in(state: State, machine: Lifecycle) -> Lifecycle:
    """Drive ``machine`` into ``state`` through legal events only."""
    paths: dict[State, list[Event]] = {
        S.STARTING: [],
        S.PROVISIONING: [Boot(None)],
        S.CONNECTING: [Boot(HUB_A)],
        S.CONNECTED: [Boot(HUB_A), HubConnected()],
        S.HUB_BACKOFF: [Boot(HUB_A), HubUnavailable("refused")],
        S.DPS_BACKOFF: [Boot(None), ProvisioningFailed(TransportError("down"))],
        S.REPROVISION_WAIT: [Boot(None)],  # with the budget spent: nowhere to go
        S.IDENTITY_WAIT: [IdentityInvalid("certificate not yet valid")],
        S.STOPPING: [Stop()],
    }
    for event in paths[state]:
        machine.handle(event)
    assert machine.state is state
    return machine


def kinds(actions: list[AnyAction]) -> list[type]:
    return [type(a) for a in actions if not isinstance(a, Status)]


# --- the table itself -------------------------------------------------------------------


def test_table_is_total_over_every_state_and_event() -> None:
    assert set(TABLE) == set(pairs())
    assert len(TABLE) == len(State) * len(EVENT_TYPES)


def test_every_state_is_reachable() -> None:
    assert unreachable_states() == set()


@pytest.mark.parametrize(("state", "kind"), pairs())
def test_every_pair_is_handled_as_the_table_says(state: State, kind: type[Event]) -> None:
    rule = TABLE[(state, kind)]
    machine = put_in(state, new(spent=state is S.REPROVISION_WAIT))
    event = SAMPLE_EVENTS[kind]
    if rule.kind == "refuse":
        with pytest.raises(IllegalEventError, match=kind.__name__):
            machine.handle(event)
        assert machine.state is state
    elif rule.kind == "ignore":
        assert machine.handle(event) == []
        assert machine.state is state
    else:
        assert rule.kind == "go"
        machine.handle(event)
        assert machine.state in rule.targets


def test_diagrams_show_every_legal_edge() -> None:
    mermaid, dot = render_mermaid(), render_dot()
    assert mermaid.startswith("stateDiagram-v2")
    assert "CONNECTING --> PROVISIONING: HubRejected" in mermaid
    assert "CONNECTED --> HUB_BACKOFF: ConnectionDropped" in mermaid
    assert 'CONNECTING -> CONNECTED [label="HubConnected"]' in dot
    edges = {(s, t, k) for (s, k), r in TABLE.items() if r.kind == "go" for t in r.targets}
    assert mermaid.count(" --> ") == len(edges) + 2  # plus [*] in and out


# --- legal transitions, with their actions -----------------------------------------------

LEGAL = [
    # (start state, event, expected state, expected action kinds in order)
    (S.STARTING, Boot(HUB_A), S.CONNECTING, [ConnectHub]),
    (S.STARTING, Boot(None), S.PROVISIONING, [CancelTimer, ConnectDps]),
    (S.STARTING, Stop(), S.STOPPING, [CancelTimer, Disconnect]),
    (S.PROVISIONING, RegistrationSent(), S.PROVISIONING, [PersistBudget]),
    (
        S.PROVISIONING,
        ProvisioningSucceeded(HUB_B),
        S.CONNECTING,
        [Disconnect, PersistAssignment, ConnectHub],
    ),
    (
        S.PROVISIONING,
        ProvisioningFailed(TransportError("x")),
        S.DPS_BACKOFF,
        [Disconnect, StartTimer],
    ),
    (S.CONNECTING, HubConnected(), S.CONNECTED, []),
    (S.CONNECTING, HubUnavailable("tls"), S.HUB_BACKOFF, [Disconnect, StartTimer]),
    (S.CONNECTING, ConnectionDropped("eof"), S.HUB_BACKOFF, [Disconnect, StartTimer]),
    (S.CONNECTING, HubRejected(5), S.PROVISIONING, [Disconnect, CancelTimer, ConnectDps]),
    (S.CONNECTING, HubRejected(4), S.PROVISIONING, [Disconnect, CancelTimer, ConnectDps]),
    (S.CONNECTING, ReprovisionRequested(), S.PROVISIONING, [Disconnect, CancelTimer, ConnectDps]),
    (S.CONNECTED, ConnectionDropped("eof"), S.HUB_BACKOFF, [Disconnect, StartTimer]),
    (S.CONNECTED, ReprovisionRequested(), S.PROVISIONING, [Disconnect, CancelTimer, ConnectDps]),
    (S.CONNECTED, Stop(), S.STOPPING, [CancelTimer, Disconnect]),
    (S.HUB_BACKOFF, TimerFired(), S.CONNECTING, [ConnectHub]),
    (S.HUB_BACKOFF, ReprovisionRequested(), S.PROVISIONING, [CancelTimer, ConnectDps]),
    (S.DPS_BACKOFF, TimerFired(), S.PROVISIONING, [CancelTimer, ConnectDps]),
    (S.DPS_BACKOFF, ReprovisionRequested(), S.PROVISIONING, [CancelTimer, ConnectDps]),
    (S.REPROVISION_WAIT, TimerFired(), S.REPROVISION_WAIT, [StartTimer]),
    (
        S.REPROVISION_WAIT,
        ReprovisionRequested(force=True),
        S.PROVISIONING,
        [CancelTimer, ConnectDps],
    ),
    (S.REPROVISION_WAIT, ReprovisionRequested(), S.REPROVISION_WAIT, [StartTimer]),
    (S.REPROVISION_WAIT, Stop(), S.STOPPING, [CancelTimer, Disconnect]),
    (S.PROVISIONING, Stop(), S.STOPPING, [CancelTimer, Disconnect]),
    (S.CONNECTING, Stop(), S.STOPPING, [CancelTimer, Disconnect]),
    (S.HUB_BACKOFF, Stop(), S.STOPPING, [CancelTimer, Disconnect]),
    (S.DPS_BACKOFF, Stop(), S.STOPPING, [CancelTimer, Disconnect]),
    # Identity: waiting for a usable certificate, from anywhere it can be found unusable.
    (S.STARTING, IdentityInvalid("expired"), S.IDENTITY_WAIT, [StartTimer]),
    (S.PROVISIONING, IdentityInvalid("expired"), S.IDENTITY_WAIT, [Disconnect, StartTimer]),
    (S.CONNECTING, IdentityInvalid("expired"), S.IDENTITY_WAIT, [Disconnect, StartTimer]),
    (S.CONNECTED, IdentityInvalid("expired"), S.IDENTITY_WAIT, [Disconnect, StartTimer]),
    (S.HUB_BACKOFF, IdentityInvalid("expired"), S.IDENTITY_WAIT, [Disconnect, StartTimer]),
    (S.DPS_BACKOFF, IdentityInvalid("expired"), S.IDENTITY_WAIT, [Disconnect, StartTimer]),
    (S.REPROVISION_WAIT, IdentityInvalid("expired"), S.IDENTITY_WAIT, [Disconnect, StartTimer]),
    (S.IDENTITY_WAIT, IdentityInvalid("certificate not yet valid"), S.IDENTITY_WAIT, []),
    (S.IDENTITY_WAIT, TimerFired(), S.IDENTITY_WAIT, [StartTimer, CheckIdentity]),
    (S.IDENTITY_WAIT, IdentityLoaded(HUB_A), S.CONNECTING, [CancelTimer, ConnectHub]),
    (S.IDENTITY_WAIT, Stop(), S.STOPPING, [CancelTimer, Disconnect]),
]


@pytest.mark.parametrize(("start", "event", "end", "expected"), LEGAL)
def test_legal_transition(start: State, event: Event, end: State, expected: list[type]) -> None:
    machine = put_in(start, new(spent=start is S.REPROVISION_WAIT))
    actions = machine.handle(event)
    assert machine.state is end
    assert kinds(actions) == expected
    statuses = [a for a in actions if isinstance(a, Status)]
    assert (len(statuses) == 1) is (start is not end)
    if statuses:
        assert statuses[0].state is end


def test_every_legal_go_rule_is_covered_by_a_row() -> None:
    covered = {(start, type(event)) for start, event, _, _ in LEGAL}
    go_pairs = {pair for pair, rule in TABLE.items() if rule.kind == "go"}
    assert go_pairs - covered == set()


# --- policies ----------------------------------------------------------------------------------


def test_warm_boot_goes_straight_to_the_cached_hub() -> None:
    machine = new()
    actions = machine.handle(Boot(HUB_A))
    assert ConnectHub(HUB_A) in actions
    assert not any(isinstance(a, ConnectDps) for a in actions)


def test_first_boot_provisions_persists_and_connects() -> None:
    machine = new()
    machine.handle(Boot(None, reason="first boot"))
    machine.handle(RegistrationSent())
    actions = machine.handle(ProvisioningSucceeded(HUB_A))
    assert PersistAssignment(HUB_A, "first boot") in actions
    assert actions.index(PersistAssignment(HUB_A, "first boot")) < actions.index(ConnectHub(HUB_A))
    assert len(machine.budget.attempts) == 1


def test_transient_failures_retry_the_same_hub_with_growing_jittered_backoff() -> None:
    clock = FakeClock()
    machine = put_in(S.CONNECTING, new(clock))
    ceilings = []
    for attempt in range(8):
        actions = machine.handle(HubUnavailable("CONNACK 3"))
        (timer,) = [a for a in actions if isinstance(a, StartTimer)]
        ceiling = min(CONFIG.backoff_cap_s, CONFIG.backoff_base_s * 2**attempt)
        assert 0 <= timer.delay_s <= ceiling
        ceilings.append(ceiling)
        clock.advance(timer.delay_s)
        assert ConnectHub(HUB_A) in machine.handle(TimerFired())
    assert ceilings[-1] == CONFIG.backoff_cap_s


def test_long_outage_goes_to_dps() -> None:
    clock = FakeClock()
    machine = put_in(S.CONNECTED, new(clock))
    machine.handle(ConnectionDropped("eof"))
    went_to_dps = False
    for _ in range(200):
        clock.advance(CONFIG.backoff_cap_s)
        actions = machine.handle(TimerFired())
        if ConnectDps() in actions:
            went_to_dps = True
            break
        machine.handle(HubUnavailable("no route"))
    assert went_to_dps
    assert machine.reprovision_reason is not None
    assert "unreachable" in machine.reprovision_reason
    assert clock.monotonic_s - 1000.0 >= CONFIG.long_outage_s


def test_outage_shorter_than_long_outage_stays_with_the_hub() -> None:
    clock = FakeClock()
    machine = put_in(S.HUB_BACKOFF, new(clock))
    clock.advance(CONFIG.long_outage_s - 1)
    assert machine.handle(TimerFired())[0] == ConnectHub(HUB_A)


def test_dps_failure_with_a_usable_hub_goes_back_to_the_hub() -> None:
    clock = FakeClock()
    machine = put_in(S.CONNECTED, new(clock))
    machine.handle(ReprovisionRequested(reason="method"))
    actions = machine.handle(ProvisioningFailed(ProvisioningError(500, "boom")))
    assert machine.state is S.HUB_BACKOFF
    assert Disconnect() in actions
    clock.advance(5)
    assert machine.handle(TimerFired()) == [
        ConnectHub(HUB_A),
        Status(S.CONNECTING, "connecting to hub-a.local"),
    ]


def test_no_assignment_and_spent_budget_wait_and_say_until_when() -> None:
    clock = FakeClock()
    machine = new(clock, spent=True)
    actions = machine.handle(Boot(None))
    assert machine.state is S.REPROVISION_WAIT
    (timer,) = [a for a in actions if isinstance(a, StartTimer)]
    assert timer.delay_s == pytest.approx(CONFIG.reprovision_window_s)
    (status,) = [a for a in actions if isinstance(a, Status)]
    assert "budget spent" in status.text and "waiting until" in status.text
    clock.advance(CONFIG.reprovision_window_s)
    assert ConnectDps() in machine.handle(TimerFired())


def test_rejected_hub_and_spent_budget_keep_trying_the_hub_slowly() -> None:
    clock = FakeClock()
    machine = put_in(S.CONNECTING, new(clock, spent=True))
    for _ in range(10):
        actions = machine.handle(HubRejected(5))
        assert machine.state is S.HUB_BACKOFF  # never stranded in REPROVISION_WAIT
        assert ConnectDps not in kinds(actions)
        (timer,) = [a for a in actions if isinstance(a, StartTimer)]
        assert timer.delay_s <= CONFIG.rejected_hub_retry_s
        assert "refused the device" in machine.describe()
        clock.advance(timer.delay_s)
        assert machine.handle(TimerFired())[0] == ConnectHub(HUB_A)
    assert timer.delay_s >= CONFIG.rejected_hub_retry_s / 2  # grown to minutes, jittered
    machine.handle(HubConnected())
    assert machine.state is S.CONNECTED


def test_spent_budget_with_a_usable_hub_keeps_the_hub() -> None:
    clock = FakeClock()
    machine = put_in(S.CONNECTED, new(clock, spent=True))
    # A non-forced request is declined while connected: nothing happens.
    assert machine.handle(ReprovisionRequested()) == []
    assert machine.state is S.CONNECTED
    # A forced one goes.
    assert ConnectDps() in machine.handle(ReprovisionRequested(force=True))


def test_budget_holds_when_the_hub_keeps_rejecting() -> None:
    clock = FakeClock()
    machine = new(clock)
    machine.handle(Boot(HUB_A))
    registrations = 0
    for _ in range(2000):  # about 10 days of rejections, one event per step
        if machine.state is S.CONNECTING:
            machine.handle(HubRejected(5))
        elif machine.state is S.PROVISIONING:
            machine.handle(RegistrationSent())
            registrations += 1
            machine.handle(ProvisioningSucceeded(HUB_A))
        else:
            assert machine.state is S.HUB_BACKOFF
            clock.advance(CONFIG.rejected_hub_retry_s)
            machine.handle(TimerFired())
    windows = (clock.time() - 1_800_000_000.0) / CONFIG.reprovision_window_s
    assert registrations <= CONFIG.reprovision_budget * (windows + 1)
    # After the first few they are spread out: at least long_outage_s / 2 apart.
    assert registrations <= 4 + (clock.monotonic() - 1000.0) / (CONFIG.long_outage_s / 2)


class Driver:
    """Feeds a machine events and keeps the lifecycle timer it asked for."""

    def __init__(self, machine: Lifecycle, clock: FakeClock) -> None:
        self.machine, self.clock = machine, clock
        self.timer_s: float | None = None

    def feed(self, event: Event) -> list[AnyAction]:
        actions = self.machine.handle(event)
        for action in actions:
            if isinstance(action, StartTimer) and action.name == TIMER:
                self.timer_s = action.delay_s
            elif isinstance(action, CancelTimer) and action.name == TIMER:
                self.timer_s = None
        return actions

    def wait_for_timer(self) -> None:
        assert self.timer_s is not None, self.machine.state
        self.clock.advance(self.timer_s)
        self.timer_s = None
        self.feed(TimerFired())


@pytest.mark.parametrize("seed", range(20))
def test_a_device_disabled_for_150_s_registers_at_most_3_times_and_comes_back(seed: int) -> None:
    """The issue's episode, with the default timings: back within 5 min of the enable."""
    clock = FakeClock()
    budget = ReprovisionBudget(6, 3600.0)
    machine = Lifecycle(LifecycleConfig(), clock=clock, rng=random.Random(seed), budget=budget)
    drive = Driver(machine, clock)
    drive.feed(Boot(HUB_A))
    drive.feed(HubConnected())
    clock.advance(3600)  # a stable connection, then the hub disables the device
    start = clock.monotonic()
    drive.feed(ConnectionDropped("the hub closed the connection"))
    registrations: list[float] = []
    enabled_at, back_at = 150.0, None
    for _ in range(1000):
        elapsed = clock.monotonic() - start
        if machine.state is S.CONNECTING:
            if elapsed >= enabled_at:
                drive.feed(HubConnected())
                back_at = elapsed
                break
            drive.feed(HubRejected(5))
        elif machine.state is S.PROVISIONING:
            drive.feed(RegistrationSent())
            registrations.append(elapsed)
            assert ConnectHub(HUB_A) in drive.feed(ProvisioningSucceeded(HUB_A))
            assert machine.same_hub_again  # DPS handed back the hub that refused
        else:
            assert machine.state is S.HUB_BACKOFF, machine.state
            drive.wait_for_timer()
    assert back_at is not None and back_at - enabled_at <= 300
    assert 1 <= len(registrations) <= 3
    assert registrations[0] < 5  # the first rejection goes to DPS at once
    gaps = [b - a for a, b in itertools.pairwise(registrations)]
    assert all(gap >= LifecycleConfig().rejected_retry_s / 2 for gap in gaps)


def test_a_stable_connection_forgives_the_rejection_streak_and_flapping_does_not() -> None:
    clock = FakeClock()
    drive = Driver(new(clock), clock)
    drive.feed(Boot(HUB_A))
    drive.feed(HubRejected(5))
    assert drive.machine.state is S.PROVISIONING
    drive.feed(RegistrationSent())
    drive.feed(ProvisioningSucceeded(HUB_A))
    drive.feed(HubConnected())
    clock.advance(1)  # accepted, then dropped at once and refused: still the same streak
    drive.feed(ConnectionDropped("gone"))
    drive.wait_for_timer()
    drive.feed(HubRejected(5))
    assert drive.machine.state is S.HUB_BACKOFF  # no second registration right away
    assert drive.machine.rejections == 2
    drive.wait_for_timer()
    drive.feed(HubConnected())
    clock.advance(STABLE_CONNECTION_S)
    drive.feed(ConnectionDropped("gone"))
    assert drive.machine.rejections == 0
    drive.wait_for_timer()
    drive.feed(HubRejected(5))
    assert drive.machine.state is S.PROVISIONING  # news again: DPS at once


def test_dps_down_while_the_hub_rejects_keeps_trying_the_hub() -> None:
    clock = FakeClock()
    drive = Driver(new(clock), clock)
    drive.feed(Boot(HUB_A))
    drive.feed(HubRejected(5))
    drive.feed(ProvisioningFailed(TransportError("DPS unreachable")))
    assert drive.machine.state is S.HUB_BACKOFF
    drive.wait_for_timer()
    assert drive.machine.state is S.CONNECTING


def test_dps_rejection_retries_slowly_and_429_honours_retry_after() -> None:
    machine = put_in(S.PROVISIONING, new())
    actions = machine.handle(
        ProvisioningFailed(ProvisioningError(404, "no enrollment"), rejected=True)
    )
    (timer,) = [a for a in actions if isinstance(a, StartTimer)]
    assert CONFIG.rejected_retry_s / 2 <= timer.delay_s <= CONFIG.rejected_retry_s
    machine = put_in(S.PROVISIONING, new())
    actions = machine.handle(ProvisioningFailed(ProvisioningError(429, "slow"), retry_after_s=42))
    (timer,) = [a for a in actions if isinstance(a, StartTimer)]
    assert 42 <= timer.delay_s <= 42 + CONFIG.backoff_base_s


def test_flapping_hub_does_not_reset_the_backoff() -> None:
    clock = FakeClock()
    machine = put_in(S.CONNECTED, new(clock))
    for _ in range(6):
        machine.handle(ConnectionDropped("kicked"))
        clock.advance(1)
        machine.handle(TimerFired())
        machine.handle(HubConnected())
        clock.advance(1)
    assert machine.hub_backoff.attempt == 6
    clock.advance(STABLE_CONNECTION_S)
    machine.handle(ConnectionDropped("after a good while"))
    assert machine.hub_backoff.attempt == 1


def test_timer_delay_is_for_the_lifecycle_timer() -> None:
    machine = put_in(S.CONNECTING, new())
    actions = machine.handle(HubUnavailable("x"))
    assert all(a.name == TIMER for a in actions if isinstance(a, StartTimer | CancelTimer))


def test_snapshot_reports_state_hub_and_errors() -> None:
    clock = FakeClock()
    machine = put_in(S.HUB_BACKOFF, new(clock))
    clock.advance(10)
    snap = machine.snapshot()
    assert snap.state is S.HUB_BACKOFF
    assert snap.hub == "hub-a.local"
    assert snap.last_error == "refused"
    assert snap.outage_s == pytest.approx(10)


event_strategy = st.sampled_from([*SAMPLE_EVENTS.values(), Boot(None), HubRejected(4)])


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(event_strategy, st.floats(0, 4000), st.booleans()), min_size=1, max_size=60
    ),
    limit=st.integers(1, 4),
)
def test_random_walks_stay_inside_the_declared_targets(
    steps: list[tuple[Event, float, bool]], limit: int
) -> None:
    clock = FakeClock()
    config = replace(CONFIG, reprovision_budget=limit)
    machine = Lifecycle(
        config, clock=clock, rng=random.Random(0), budget=ReprovisionBudget(limit, 3600.0)
    )
    for sampled, advance, force in steps:
        event = (
            ReprovisionRequested(force=force, reason="walk")
            if isinstance(sampled, ReprovisionRequested)
            else sampled
        )
        clock.advance(advance)
        before = machine.state
        rule = TABLE[(before, type(event))]
        try:
            actions = machine.handle(event)
        except IllegalEventError:
            assert rule.kind == "refuse"
            assert machine.state is before
            continue
        if rule.kind == "go":
            assert machine.state in rule.targets
        else:
            assert actions == [] and machine.state is before
        # Invariants: a connection is asked for only in the states that make one.
        if any(isinstance(a, ConnectDps) for a in actions):
            assert machine.state is S.PROVISIONING
        if any(isinstance(a, ConnectHub) for a in actions):
            assert machine.state is S.CONNECTING


# --- identity --------------------------------------------------------------------------------


def test_unusable_certificate_at_start_waits_and_rechecks_on_a_capped_backoff() -> None:
    clock = FakeClock()
    machine = new(clock, backoff_base_s=1.0, backoff_cap_s=10_000.0)
    actions = machine.handle(IdentityInvalid("chain.pem: the certificate expired (fix: renew)"))
    assert machine.state is S.IDENTITY_WAIT
    assert not any(isinstance(a, ConnectDps | ConnectHub) for a in actions)
    (status,) = [a for a in actions if isinstance(a, Status)]
    assert "certificate expired (fix: renew)" in status.text
    assert "certificate expired" in machine.describe()
    delays = []
    for _ in range(30):
        actions = machine.handle(TimerFired())
        assert machine.state is S.IDENTITY_WAIT
        assert kinds(actions) == [StartTimer, CheckIdentity]
        delays.append(next(a.delay_s for a in actions if isinstance(a, StartTimer)))
    assert max(delays) <= IDENTITY_RECHECK_CAP_S
    assert max(delays) > 1.0  # it grows beyond the base
    assert len(set(delays)) > 5  # with jitter


def test_identity_wait_reports_a_new_reason_once() -> None:
    machine = put_in(S.IDENTITY_WAIT, new())
    assert machine.handle(IdentityInvalid("certificate not yet valid")) == []
    actions = machine.handle(IdentityInvalid("key does not match"))
    assert [a.text for a in actions if isinstance(a, Status)] == [machine.describe()]
    assert "key does not match" in machine.describe()


def test_identity_loaded_without_cache_provisions_and_with_cache_connects() -> None:
    machine = put_in(S.IDENTITY_WAIT, new())
    actions = machine.handle(IdentityLoaded(None, reason="new certificate"))
    assert machine.state is S.PROVISIONING
    assert ConnectDps in kinds(actions)
    assert machine.reprovision_reason == "new certificate"
    assert machine.identity_problem is None and machine.last_error is None
    again = put_in(S.IDENTITY_WAIT, new())
    again.handle(IdentityLoaded(HUB_B))
    assert again.state is S.CONNECTING and again.assignment == HUB_B


def test_identity_loaded_with_a_spent_budget_waits_for_the_budget() -> None:
    machine = put_in(S.IDENTITY_WAIT, new(spent=True))
    actions = machine.handle(IdentityLoaded(None))
    assert machine.state is S.REPROVISION_WAIT
    assert ConnectDps not in kinds(actions)


def test_expiry_while_connected_waits_without_dps_and_ignores_reprovision() -> None:
    machine = put_in(S.CONNECTED, new())
    before = machine.budget
    machine.handle(IdentityInvalid("expired"))
    assert machine.state is S.IDENTITY_WAIT
    assert machine.handle(ReprovisionRequested(force=True)) == []
    assert machine.state is S.IDENTITY_WAIT
    assert machine.budget == before
