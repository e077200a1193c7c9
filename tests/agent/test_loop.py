"""The main loop's timers and waits: it sleeps until something is due, never on a period."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import paho.mqtt.client as paho_client
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.runtime.loop import STALL_BUCKETS_MS, LoopStats, MainLoop, Timers
from agent.runtime.sdnotify import Notifier
from agent.runtime.transport import _keepalive_due_s, _keepalive_work_now
from tests.support.fakeclock import FakeClock


def make_loop(clock: FakeClock, notifier: Notifier | None = None) -> MainLoop[str]:
    events: list[str] = []
    return MainLoop(
        clock=clock,
        timers=Timers(clock),
        notifier=notifier or Notifier({}),
        on_timer=events.append,
        on_event=events.append,
        transport=lambda: None,
        route=lambda transport, event: None,
    )


def test_with_nothing_due_the_loop_waits_until_woken() -> None:
    loop = make_loop(FakeClock())
    try:
        assert loop.wait_s() is None  # no period: a socket or a hand-in wakes it
        assert loop.wait_s(max_wait_s=3.0) == 3.0
        loop.timers.start("t", 5.0)
        assert loop.wait_s() == 5.0
        loop.hand_in("stop")
        assert loop.wait_s() == 0.0
    finally:
        loop.close()


def test_a_hand_in_from_another_thread_ends_an_unbounded_wait() -> None:
    clock = FakeClock()
    seen: list[str] = []
    loop: MainLoop[str] = MainLoop(
        clock=clock,
        timers=Timers(clock),
        notifier=Notifier({}),
        on_timer=seen.append,
        on_event=seen.append,
        transport=lambda: None,
        route=lambda transport, event: None,
    )
    try:
        stepping = threading.Thread(target=loop.step)
        stepping.start()
        # A hand-in that lands before the step's own drain is taken there, and the step
        # then waits for the next one: hand in until the step returns (bounded).
        for _ in range(100):
            loop.hand_in("wake")
            stepping.join(0.1)
            if not stepping.is_alive():
                break
        assert not stepping.is_alive()
        loop.step(max_wait_s=0)
        assert seen and set(seen) == {"wake"}
    finally:
        loop.close()


def test_a_slack_timer_rides_on_an_earlier_wakeup() -> None:
    clock = FakeClock()
    timers = Timers(clock)
    timers.start("status", 10.0, slack_s=5.0)
    assert timers.seconds_to_next() == 15.0  # it wakes the loop only when the slack is out
    timers.start("sample", 12.0)
    assert timers.seconds_to_next() == 12.0
    clock.advance(12.0)
    assert timers.pop_due() == "status"  # due since 10 s: fires on this wakeup
    assert timers.pop_due() == "sample"
    assert timers.pop_due() is None
    assert timers.seconds_to_next() is None
    timers.start("a", 1.0, slack_s=2.0)
    timers.cancel_prefixed(("a",))
    assert timers.seconds_to_next() is None


def test_the_watchdog_is_due_at_half_its_interval_and_rides_on_wakeups(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(5)
        clock = FakeClock()
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "8000000"})
        loop = make_loop(clock, notifier)
        try:
            loop.step(max_wait_s=0)
            assert listener.recv(64) == b"WATCHDOG=1"
            assert loop.wait_s() == pytest.approx(4.0)  # due at half the interval
            clock.advance(1.0)
            loop.step(max_wait_s=0)  # a wakeup before a quarter: no ping
            clock.advance(1.5)
            assert loop.wait_s() == pytest.approx(1.5)
            loop.step(max_wait_s=0)  # 2.5 s since the ping: this wakeup carries one
            assert listener.recv(64) == b"WATCHDOG=1"
            assert loop.wait_s() == pytest.approx(4.0)
            listener.settimeout(0)
            with pytest.raises(BlockingIOError):
                listener.recv(64)
        finally:
            loop.close()
            notifier.close()


def test_stall_histogram() -> None:
    stats = LoopStats()
    for stall_ms in (0.5, 3, 3, 19.9, 20, 700):
        stats.record(stall_ms / 1000)
    report = stats.as_json()
    assert report["maxStallMs"] == 700
    buckets = report["stallsMs"]
    assert isinstance(buckets, dict)
    assert buckets == {"<1": 1, "<2": 0, "<5": 2, "<10": 0, "<20": 1, "<50": 1, "<100": 0,
                       "<500": 0, ">=500": 1}  # fmt: skip
    assert len(buckets) == len(STALL_BUCKETS_MS) + 1


def test_keep_alive_work_is_due_a_keep_alive_after_the_last_traffic() -> None:
    client = paho_client.Client(CallbackAPIVersion.VERSION2, client_id="k")
    now = paho_client.time_func()
    client._last_msg_out = now - 50.0
    client._last_bytes_received = now - 20.0
    assert _keepalive_due_s(client, 60) == pytest.approx(10.0, abs=0.1)
    client._last_msg_out = now - 70.0  # overdue: at once
    assert _keepalive_due_s(client, 60) == pytest.approx(0.0, abs=0.01)
    assert _keepalive_due_s(client, 0) == float("inf")


def test_paho_loop_misc_runs_only_when_keep_alive_work_may_be_due() -> None:
    client = paho_client.Client(CallbackAPIVersion.VERSION2, client_id="k")
    now = paho_client.time_func()
    client._last_msg_out = now - 50.0
    client._last_bytes_received = now - 20.0
    client._ping_t = 0.0
    assert not _keepalive_work_now(client, 60)  # 10 s to go
    client._last_bytes_received = now - 60.5  # nothing in for a keep-alive: ping
    assert _keepalive_work_now(client, 60)
    client._last_bytes_received = now - 1.0
    client._ping_t = now - 1.0  # a PINGREQ waits for its answer: paho may close
    assert _keepalive_work_now(client, 60)
    client._ping_t = 0.0
    assert _keepalive_work_now(client, 0)
    del client._last_msg_out  # a paho without the timestamps: always
    assert _keepalive_work_now(client, 60)
