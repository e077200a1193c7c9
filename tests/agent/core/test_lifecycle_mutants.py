"""Lifecycle details mutation testing found unpinned (issue #14): the exact actions and
status texts of each handler, the boundaries of the stable-connection and long-outage
rules, and what the snapshot reports. (Rejection handling is pinned with its policy in
tests/agent/test_lifecycle.py.)"""

from __future__ import annotations

import pytest

from agent.core.actions import CancelTimer, StartTimer
from agent.core.lifecycle import (
    STABLE_CONNECTION_S,
    TIMER,
    Boot,
    CheckIdentity,
    ConnectDps,
    ConnectHub,
    ConnectionDropped,
    Disconnect,
    HubConnected,
    HubUnavailable,
    IdentityInvalid,
    IdentityLoaded,
    IllegalEventError,
    PersistAssignment,
    PersistBudget,
    ProvisioningSucceeded,
    RegistrationSent,
    ReprovisionRequested,
    State,
    Status,
    Stop,
    TimerFired,
)
from tests.agent.test_lifecycle import CONFIG, HUB_A, HUB_B, new
from tests.support.fakeclock import FakeClock


def test_a_fresh_machine() -> None:
    machine = new()
    assert machine.state is State.STARTING and machine.describe() == "starting"
    assert (machine.assignment, machine.hub_rejected, machine.last_error) == (None, False, None)
    assert (machine.reprovision_reason, machine.outage_started, machine.connected_at) == (
        None, None, None
    )  # fmt: skip
    assert machine.dps_not_before == 0.0 and machine.identity_problem is None


def test_boot_with_a_cached_hub_connects_to_it_and_says_so() -> None:
    machine = new()
    actions = machine.handle(Boot(HUB_A))
    assert actions == [ConnectHub(HUB_A), Status(State.CONNECTING, "connecting to hub-a.local")]
    assert machine.assignment == HUB_A


def test_boot_without_a_cache_registers_and_says_why() -> None:
    machine = new()
    actions = machine.handle(Boot(None))
    assert actions == [
        CancelTimer(TIMER),
        ConnectDps(),
        Status(State.PROVISIONING, "registering with DPS (first boot: no cached assignment)"),
    ]
    assert machine.reprovision_reason == "first boot: no cached assignment"


def test_a_registration_sent_is_recorded_in_the_budget_at_wall_time() -> None:
    clock = FakeClock()
    machine = new(clock)
    machine.handle(Boot(None))
    (persist,) = machine.handle(RegistrationSent())
    assert isinstance(persist, PersistBudget)
    assert persist.budget.attempts == (clock.time(),) and machine.budget == persist.budget


def test_an_assignment_resets_the_past_and_connects() -> None:
    clock = FakeClock()
    machine = new(clock)
    machine.handle(Boot(HUB_A))
    machine.handle(HubUnavailable("refused"))
    assert machine.outage_started == clock.monotonic() and machine.hub_backoff.attempt == 1
    machine.handle(TimerFired())
    machine.handle(ReprovisionRequested(force=True, reason="asked"))
    actions = machine.handle(ProvisioningSucceeded(HUB_B))
    assert actions == [
        Disconnect(),
        PersistAssignment(HUB_B, "asked"),
        ConnectHub(HUB_B),
        Status(State.CONNECTING, "connecting to hub-b.local"),
    ]
    assert (machine.assignment, machine.outage_started, machine.last_error) == (HUB_B, None, None)
    assert machine.hub_backoff.attempt == 0 and machine.dps_backoff.attempt == 0
    assert machine.hub_rejected is False


def test_connected_clears_the_outage_and_remembers_when() -> None:
    clock = FakeClock()
    machine = new(clock)
    machine.handle(Boot(HUB_A))
    machine.handle(HubUnavailable("refused"))
    machine.handle(TimerFired())
    clock.advance(5)
    actions = machine.handle(HubConnected())
    assert actions == [Status(State.CONNECTED, "connected to hub-a.local")]
    assert (machine.outage_started, machine.last_error, machine.connected_at) == (
        None, None, clock.monotonic()
    )  # fmt: skip


def test_an_unavailable_hub_backs_off_and_describes_why() -> None:
    clock = FakeClock()
    machine = new(clock)
    machine.handle(Boot(HUB_A))
    actions = machine.handle(HubUnavailable("TLS handshake timed out"))
    assert actions[0] == Disconnect()
    timer = actions[1]
    # Full jitter under the 1 s base: never clamped up to a floor.
    assert isinstance(timer, StartTimer) and timer.name == TIMER and 0 <= timer.delay_s < 1.0
    assert actions[2] == Status(
        State.HUB_BACKOFF, "hub hub-a.local unreachable (TLS handshake timed out); retrying"
    )
    assert machine.last_error == "TLS handshake timed out"
    started = machine.outage_started
    machine.handle(TimerFired())
    clock.advance(3)
    machine.handle(HubUnavailable("again"))
    assert machine.outage_started == started  # one outage, from its start


@pytest.mark.parametrize(
    ("connected_for", "reset"), [(STABLE_CONNECTION_S - 0.5, False), (STABLE_CONNECTION_S, True)]
)
def test_only_a_stable_connection_resets_the_hub_backoff(connected_for: float, reset: bool) -> None:
    clock = FakeClock()
    machine = new(clock)
    machine.handle(Boot(HUB_A))
    for _ in range(3):
        machine.handle(HubUnavailable("refused"))
        machine.handle(TimerFired())
    machine.handle(HubConnected())
    clock.advance(connected_for)
    machine.handle(ConnectionDropped("reset by peer"))
    assert machine.hub_backoff.attempt == (1 if reset else 4)
    assert machine.connected_at is None
    assert machine.state is State.HUB_BACKOFF and machine.last_error == "reset by peer"


def test_a_drop_right_after_boot_does_not_reset_anything() -> None:
    machine = new()
    machine.handle(Boot(HUB_A))
    machine.handle(HubConnected())
    machine.connected_at = None  # as after a reprovision request left the hub
    machine.handle(ConnectionDropped("gone"))
    assert machine.hub_backoff.attempt == 1


@pytest.mark.parametrize(
    ("outage", "dps_ok", "to_dps"),
    [
        (CONFIG.long_outage_s - 1, True, False),
        (CONFIG.long_outage_s, True, True),
        (CONFIG.long_outage_s, False, False),
    ],
)
def test_a_long_outage_goes_back_to_dps(outage: float, dps_ok: bool, to_dps: bool) -> None:
    clock = FakeClock()
    machine = new(clock)
    machine.handle(Boot(HUB_A))
    machine.handle(HubUnavailable("refused"))
    clock.advance(outage)
    machine.dps_not_before = clock.monotonic() + (0 if dps_ok else 1)
    actions = machine.handle(TimerFired())
    if to_dps:
        assert actions[:2] == [CancelTimer(TIMER), ConnectDps()]
        assert machine.reprovision_reason == f"hub unreachable for {outage:.0f} s"
    else:
        assert actions[0] == ConnectHub(HUB_A) and machine.state is State.CONNECTING


def test_a_reprovision_request_when_connected_disconnects_first() -> None:
    machine = new()
    machine.handle(Boot(HUB_A))
    machine.handle(HubConnected())
    actions = machine.handle(ReprovisionRequested(reason="method reprovision"))
    assert actions[:3] == [Disconnect(), CancelTimer(TIMER), ConnectDps()]
    assert machine.connected_at is None
    assert machine.describe() == "registering with DPS (method reprovision)"


@pytest.mark.parametrize("connected", [False, True])
def test_a_reprovision_request_over_budget_changes_nothing(connected: bool) -> None:
    machine = new(spent=True)
    machine.handle(Boot(HUB_A))
    if connected:
        machine.handle(HubConnected())
    before = machine.state
    assert machine.handle(ReprovisionRequested()) == []
    assert machine.state is before
    forced = machine.handle(ReprovisionRequested(force=True))
    assert ConnectDps() in forced and Disconnect() in forced


def test_a_reprovision_request_from_a_backoff_state_does_not_disconnect() -> None:
    machine = new()
    machine.handle(Boot(HUB_A))
    machine.handle(HubUnavailable("refused"))
    actions = machine.handle(ReprovisionRequested(reason="button"))
    assert Disconnect() not in actions and ConnectDps() in actions


def test_the_budget_wait_says_until_when() -> None:
    clock = FakeClock(wall_s=1_800_000_000.0)
    machine = new(clock, spent=True)
    machine.handle(Boot(None))
    assert machine.state is State.REPROVISION_WAIT
    assert machine.describe() == (
        "reprovisioning budget spent (3 per 3600 s); waiting until 2027-01-15T09:00:00.000Z"
    )


def test_identity_problems_wait_and_recheck() -> None:
    machine = new()
    machine.handle(Boot(HUB_A))
    machine.handle(HubConnected())
    actions = machine.handle(IdentityInvalid("certificate expired"))
    assert actions[0] == Disconnect()
    timer = actions[1]
    assert isinstance(timer, StartTimer) and timer.name == TIMER
    assert actions[2] == Status(
        State.IDENTITY_WAIT,
        "device certificate unusable: certificate expired; re-checking (and whenever the "
        "certificate or key files change)",
    )
    assert machine.connected_at is None and machine.last_error == "certificate expired"
    assert machine.handle(IdentityInvalid("certificate expired")) == []  # no news
    news = machine.handle(IdentityInvalid("key does not match"))
    assert news == [Status(State.IDENTITY_WAIT, machine.describe())]
    recheck = machine.handle(TimerFired())
    assert isinstance(recheck[0], StartTimer) and recheck[1] == CheckIdentity()


def test_an_identity_problem_at_start_has_nothing_to_disconnect() -> None:
    machine = new()
    actions = machine.handle(IdentityInvalid("not yet valid"))
    assert Disconnect() not in actions and machine.state is State.IDENTITY_WAIT


def test_the_identity_coming_back_connects_to_its_cached_hub() -> None:
    machine = new()
    machine.handle(IdentityInvalid("not yet valid"))
    actions = machine.handle(IdentityLoaded(HUB_A))
    assert actions == [
        CancelTimer(TIMER),
        ConnectHub(HUB_A),
        Status(State.CONNECTING, "connecting to hub-a.local"),
    ]
    assert (machine.identity_problem, machine.last_error, machine.outage_started) == (
        None,
        None,
        None,
    )
    assert machine.identity_backoff.attempt == 0 and machine.hub_backoff.attempt == 0


def test_the_identity_coming_back_without_a_cache_registers() -> None:
    machine = new()
    machine.handle(Boot(HUB_A))
    machine.handle(IdentityInvalid("rotated"))
    actions = machine.handle(IdentityLoaded(None, reason="new identity"))
    assert ConnectDps() in actions and machine.assignment is None
    assert machine.reprovision_reason == "new identity"


def test_stop_cancels_and_disconnects() -> None:
    machine = new()
    machine.handle(Boot(HUB_A))
    assert machine.handle(Stop()) == [
        CancelTimer(TIMER),
        Disconnect(),
        Status(State.STOPPING, "stopping"),
    ]
    assert machine.handle(HubConnected()) == []  # stopping: ignored


def test_a_refused_event_names_itself_the_state_and_why() -> None:
    machine = new()
    with pytest.raises(IllegalEventError) as info:
        machine.handle(HubConnected())
    assert info.value.state is State.STARTING and info.value.event == HubConnected()
    assert str(info.value).startswith("HubConnected refused in STARTING: ")
    assert machine.state is State.STARTING


def test_a_handler_that_keeps_the_state_adds_no_status() -> None:
    machine = new()
    machine.handle(Boot(None))
    assert machine.handle(RegistrationSent()) == [PersistBudget(machine.budget)]


def test_snapshot_reports_the_outage_and_the_budget() -> None:
    clock = FakeClock()
    machine = new(clock)
    snap = machine.snapshot()
    assert (snap.state, snap.hub, snap.device_id, snap.outage_s) == (
        State.STARTING,
        None,
        None,
        None,
    )
    assert snap.budget_next_allowed_at == clock.time()
    machine.handle(Boot(HUB_A))
    machine.handle(HubUnavailable("refused"))
    clock.advance(42)
    snap = machine.snapshot()
    assert (snap.hub, snap.device_id, snap.outage_s) == ("hub-a.local", "dev-1", 42.0)
    assert snap.last_error == "refused" and snap.reprovision_reason is None
    assert machine.budget_allows()


def test_a_hub_retry_without_an_outage_counts_none() -> None:
    """After DPS failed from a working hub, the retry has no outage behind it: not 1 s."""
    from agent.core.lifecycle import ProvisioningFailed
    from agent.errors import TransportError

    machine = new(long_outage_s=1.0)
    machine.handle(Boot(HUB_A))
    machine.handle(HubConnected())
    machine.handle(ReprovisionRequested(reason="asked"))
    machine.handle(ProvisioningFailed(TransportError("DPS down")))
    assert machine.state is State.HUB_BACKOFF and machine.outage_started is None
    assert machine.handle(TimerFired())[0] == ConnectHub(HUB_A)


def test_a_dps_failure_sets_when_dps_may_be_tried_again() -> None:
    from agent.core.lifecycle import ProvisioningFailed
    from agent.errors import ProvisioningError

    clock = FakeClock()
    machine = new(clock)
    machine.handle(Boot(None))
    machine.handle(ProvisioningFailed(ProvisioningError(429, "slow down"), retry_after_s=100.0))
    assert clock.monotonic() + 100.0 <= machine.dps_not_before <= clock.monotonic() + 101.0
    assert machine.last_error == "DPS status 429: slow down"
    assert machine.describe() == "DPS failed (DPS status 429: slow down); retrying"


def test_a_dps_retry_keeps_the_reason_it_started_with() -> None:
    from agent.core.lifecycle import ProvisioningFailed
    from agent.errors import TransportError

    machine = new()
    machine.handle(Boot(None, reason="first boot"))
    machine.handle(ProvisioningFailed(TransportError("down")))
    assert machine.state is State.DPS_BACKOFF
    actions = machine.handle(TimerFired())
    assert ConnectDps() in actions
    assert machine.reprovision_reason == "first boot"
    assert machine.describe() == "registering with DPS (first boot)"


def test_the_identity_recheck_timer_is_the_lifecycle_timer() -> None:
    machine = new()
    machine.handle(IdentityInvalid("not yet valid"))
    timer, check = machine.handle(TimerFired())
    assert isinstance(timer, StartTimer) and timer.name == TIMER and check == CheckIdentity()


def test_budget_allows_reads_the_wall_clock() -> None:
    clock = FakeClock()
    machine = new(clock, spent=True)
    assert not machine.budget_allows()
    clock.advance(CONFIG.reprovision_window_s)
    assert machine.budget_allows()


def test_a_dps_retry_without_a_reason_says_retry() -> None:
    from agent.core.lifecycle import ProvisioningFailed
    from agent.errors import TransportError

    machine = new()
    machine.handle(Boot(None, reason=""))
    machine.handle(ProvisioningFailed(TransportError("down")))
    machine.handle(TimerFired())
    assert machine.reprovision_reason == "retry"


def test_identity_back_forgets_a_rejection() -> None:
    machine = new()
    machine.handle(Boot(HUB_A))
    machine.hub_rejected = True
    machine.handle(IdentityInvalid("rotated"))
    machine.handle(IdentityLoaded(HUB_A))
    assert machine.hub_rejected is False


def test_a_long_outage_over_budget_keeps_trying_the_hub() -> None:
    clock = FakeClock()
    machine = new(clock, spent=True)
    machine.handle(Boot(HUB_A))
    machine.handle(HubUnavailable("refused"))
    clock.advance(CONFIG.long_outage_s)
    actions = machine.handle(TimerFired())
    timer = actions[0]
    assert isinstance(timer, StartTimer) and timer.name == TIMER and 0 <= timer.delay_s <= 2.0
    assert machine.state is State.HUB_BACKOFF and machine.hub_backoff.attempt == 2


def test_the_snapshot_says_why_it_registers() -> None:
    machine = new()
    machine.handle(Boot(None))
    assert machine.snapshot().reprovision_reason == "first boot: no cached assignment"


def test_a_refused_event_carries_the_tables_reason() -> None:
    from agent.core.lifecycle import TABLE

    machine = new()
    with pytest.raises(IllegalEventError) as info:
        machine.handle(HubConnected())
    assert str(info.value) == (
        f"HubConnected refused in STARTING: {TABLE[(State.STARTING, HubConnected)].note}"
    )
