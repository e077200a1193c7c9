"""State files on a real filesystem: atomicity, identity binding, corruption, the budget."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.budget import ReprovisionBudget
from agent.core.provisioning import Assignment
from agent.store.files import (
    BUDGET_FILE,
    KEEP_CORRUPT_COPIES,
    STATE_FILE,
    STATUS_FILE,
    atomic_write,
)
from agent.store.state import IdentityFingerprint, StateStore
from agent.store.status import read_status, strip_state
from tests.support.fakeclock import FakeClock

IDENTITY = IdentityFingerprint("dps.local", "0ne001", "dev-1", "AB" * 32)
ASSIGNMENT = Assignment(
    "hub-a.local", "dev-1", "2026-01-01T00:00:00Z", "initialAssignment", {"k": 1}
)


def store(tmp_path: Path, identity: IdentityFingerprint = IDENTITY) -> StateStore:
    return StateStore(tmp_path / "state", identity, clock=FakeClock())


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_save_then_load_round_trip(tmp_path: Path) -> None:
    s = store(tmp_path)
    assert s.load() is None and s.discard_reason is None
    s.save(ASSIGNMENT, reason="first boot")
    loaded = store(tmp_path).load()
    assert loaded is not None
    assert loaded.assignment == ASSIGNMENT
    assert loaded.last_reprovision_reason == "first boot"
    doc = json.loads((tmp_path / "state" / STATE_FILE).read_text())
    assert doc["schema"] == 1 and doc["fingerprint"] == IDENTITY.digest()


@pytest.mark.parametrize(
    "other",
    [
        IdentityFingerprint("dps.other", "0ne001", "dev-1", "AB" * 32),
        IdentityFingerprint("dps.local", "0ne002", "dev-1", "AB" * 32),
        IdentityFingerprint("dps.local", "0ne001", "dev-2", "AB" * 32),
        IdentityFingerprint("dps.local", "0ne001", "dev-1", "CD" * 32),
    ],
)
def test_another_identity_discards_the_state(
    tmp_path: Path, other: IdentityFingerprint, caplog: pytest.LogCaptureFixture
) -> None:
    store(tmp_path).save(ASSIGNMENT, reason=None)
    s = store(tmp_path, other)
    with caplog.at_level(logging.WARNING):
        assert s.load() is None
    assert s.discard_reason is not None and "another identity" in s.discard_reason
    assert "another identity" in caplog.text
    assert not (tmp_path / "state" / STATE_FILE).exists()


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"schema": 99, "fingerprint": "x", "assignment": {}}',
        b'{"schema": 1, "fingerprint": "x", "assignment": {"assignedHub": 3}}',
        b'{"schema": 1, "fingerprint": "x"}',
    ],
)
def test_corrupt_state_is_set_aside_never_raised(tmp_path: Path, content: bytes) -> None:
    s = store(tmp_path)
    s.ensure_directory()
    (tmp_path / "state" / STATE_FILE).write_bytes(content)
    assert s.load() is None
    assert s.discard_reason is not None and "corrupt" in s.discard_reason
    copies = list((tmp_path / "state").glob(f"{STATE_FILE}.corrupt-*"))
    assert len(copies) == 1 and copies[0].read_bytes() == content
    assert not (tmp_path / "state" / STATE_FILE).exists()


def test_only_the_newest_corrupt_copies_are_kept(tmp_path: Path) -> None:
    clock = FakeClock()
    s = StateStore(tmp_path, IDENTITY, clock=clock)
    for i in range(KEEP_CORRUPT_COPIES + 3):
        (tmp_path / STATE_FILE).write_bytes(b"garbage")
        os.utime(tmp_path / STATE_FILE, (1000 + i, 1000 + i))
        clock.advance(10)
        assert s.load() is None
    assert len(list(tmp_path.glob(f"{STATE_FILE}.corrupt-*"))) == KEEP_CORRUPT_COPIES


@given(content=st.binary(max_size=200))
def test_any_bytes_in_the_state_file_never_crash(content: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        s = StateStore(Path(tmp), IDENTITY, clock=FakeClock())
        (Path(tmp) / STATE_FILE).write_bytes(content)
        assert s.load() is None  # random bytes are never this identity's state
        assert s.discard_reason is not None
        assert not (Path(tmp) / STATE_FILE).exists()  # set aside or discarded, not re-read


def test_budget_allows_limit_per_window() -> None:
    budget = ReprovisionBudget(limit=3, window_s=3600.0)
    now = 1_000_000.0
    for i in range(3):
        assert budget.allows(now + i)
        budget = budget.recorded(now + i)
    assert not budget.allows(now + 10)
    assert budget.next_allowed_at(now + 10) == now + 3600.0
    assert budget.allows(now + 3600.5)


def test_budget_survives_restarts(tmp_path: Path) -> None:
    clock = FakeClock()
    s = StateStore(tmp_path, IDENTITY, clock=clock)
    budget = s.load_budget(2, 3600.0)
    for _ in range(2):
        budget = budget.recorded(clock.time())
        s.save_budget(budget)
        clock.advance(1)
    again = StateStore(tmp_path, IDENTITY, clock=clock).load_budget(2, 3600.0)
    assert not again.allows(clock.time())
    clock.advance(3600)
    assert StateStore(tmp_path, IDENTITY, clock=clock).load_budget(2, 3600.0).allows(clock.time())


def test_budget_is_not_bound_to_the_identity(tmp_path: Path) -> None:
    clock = FakeClock()
    s = StateStore(tmp_path, IDENTITY, clock=clock)
    s.save_budget(s.load_budget(1, 3600.0).recorded(clock.time()))
    other = IdentityFingerprint("dps.local", "0ne001", "dev-1", "EF" * 32)
    assert not StateStore(tmp_path, other, clock=clock).load_budget(1, 3600.0).allows(clock.time())


def test_clock_jumping_back_keeps_attempts_counted() -> None:
    now = 2_000_000.0
    budget = ReprovisionBudget(1, 3600.0).recorded(now)
    # The clock went back a day: the attempt now looks a day in the future.
    earlier = now - 86_400
    assert not budget.allows(earlier)
    assert budget.next_allowed_at(earlier) == earlier + 3600.0


@pytest.mark.parametrize("content", [b"nope", b"[]", b'{"attempts": "x"}', b'{"attempts": [true]}'])
def test_corrupt_budget_is_set_aside(tmp_path: Path, content: bytes) -> None:
    (tmp_path / BUDGET_FILE).write_bytes(content)
    budget = StateStore(tmp_path, IDENTITY, clock=FakeClock()).load_budget(6, 3600.0)
    assert budget.attempts == ()
    assert len(list(tmp_path.glob(f"{BUDGET_FILE}.corrupt-*"))) == 1


def test_read_status_combines_state_budget_and_live(tmp_path: Path) -> None:
    clock = FakeClock()
    s = StateStore(tmp_path, IDENTITY, clock=clock)
    empty = read_status(tmp_path)
    assert empty["assignment"] is None and empty["running"] is False
    s.save(ASSIGNMENT, reason="hub rejected")
    s.save_budget(ReprovisionBudget(6, 3600.0).recorded(clock.time()))
    s.write_status({"state": "CONNECTED", "hub": "hub-a.local"})
    status = read_status(tmp_path)
    assert status["assignment"] == {
        "assignedHub": "hub-a.local",
        "deviceId": "dev-1",
        "provisionedAt": "2026-01-01T00:00:00Z",
    }
    assert status["lastReprovisionReason"] == "hub rejected"
    assert status["reprovisionAttempts"] == [clock.time()]
    assert status["running"] is True  # our own pid wrote it
    live = status["live"]
    assert isinstance(live, dict) and live["state"] == "CONNECTED"
    (tmp_path / STATUS_FILE).write_text("{")
    assert read_status(tmp_path)["errors"]


def test_strip_state_removes_every_state_file(tmp_path: Path) -> None:
    s = StateStore(tmp_path, IDENTITY, clock=FakeClock())
    s.save(ASSIGNMENT, reason=None)
    s.save_budget(ReprovisionBudget(6, 3600.0))
    s.write_status({"state": "STOPPED"})
    (tmp_path / "unrelated.txt").write_text("keep")
    removed = strip_state(tmp_path)
    assert len(removed) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["unrelated.txt"]


def test_the_budget_is_updated_in_place_when_the_disk_is_full(tmp_path: Path) -> None:
    """On a full disk the atomic replace fails; the padded file is overwritten in place."""
    import json
    import subprocess
    import sys

    from tests.support.tmpfs import small_tmpfs_argv

    driver = r"""
import json, sys
from pathlib import Path
from agent.store.state import StateStore
from tests.support.fakeclock import FakeClock
from tests.support.tmpfs import fill
folder = Path(sys.argv[1])
clock = FakeClock()
store = StateStore(folder, None, clock=clock)
store.reserve_budget(3)
fill(folder)
budget = store.load_budget(3, 3600.0)
for _ in range(3):
    clock.advance(10)
    budget = budget.recorded(clock.time())
    store.save_budget(budget)
again = StateStore(folder, None, clock=clock).load_budget(3, 3600.0)
print(json.dumps({"attempts": len(again.attempts), "allows": again.allows(clock.time())}))
"""
    folder = tmp_path / "small"
    folder.mkdir()
    result = subprocess.run(
        small_tmpfs_argv(folder, 64, [sys.executable, "-c", driver, str(folder)]),
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"attempts": 3, "allows": False}
    assert "updated in place" in result.stderr
