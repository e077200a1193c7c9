"""agent.runtime.sdnotify against a real AF_UNIX datagram socket bound as NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime.sdnotify import Notifier


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET, as systemd binds it."""

    def __init__(self, address: str | bytes, env_value: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5.0)
        self.env_value = env_value

    def receive(self) -> str:
        return self.sock.recv(4096).decode()

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(5.0)
        return False


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeSystemd]:
    if request.param == "path":
        path = str(tmp_path / "notify")
        fake = FakeSystemd(path, path)
    else:
        name = f"device-agent-test-{uuid.uuid4().hex}"
        fake = FakeSystemd(b"\0" + name.encode(), "@" + name)
    yield fake
    fake.sock.close()


def test_each_notification_is_one_datagram(systemd: FakeSystemd) -> None:
    with Notifier({"NOTIFY_SOCKET": systemd.env_value}) as notifier:
        assert notifier.enabled
        assert notifier.ready()
        assert systemd.receive() == "READY=1"
        assert notifier.status("connected to hub-1")
        assert systemd.receive() == "STATUS=connected to hub-1"
        assert notifier.watchdog()
        assert systemd.receive() == "WATCHDOG=1"
        assert notifier.stopping()
        assert systemd.receive() == "STOPPING=1"
        assert notifier.reloading()
        lines = systemd.receive().split("\n")
        assert lines[0] == "RELOADING=1"
        assert lines[1].startswith("MONOTONIC_USEC=")
        assert int(lines[1].split("=", 1)[1]) > 0
    assert systemd.nothing_pending()


def test_status_cannot_inject_other_assignments(systemd: FakeSystemd) -> None:
    with Notifier({"NOTIFY_SOCKET": systemd.env_value}) as notifier:
        notifier.status("line one\nREADY=1\tand more")
        assert systemd.receive() == "STATUS=line one READY=1 and more"


def test_notifier_reopens_after_close(systemd: FakeSystemd) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": systemd.env_value})
    notifier.ready()
    notifier.close()
    assert notifier.watchdog()
    assert systemd.receive() == "READY=1"
    assert systemd.receive() == "WATCHDOG=1"
    notifier.close()


def test_no_notify_socket_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.watchdog_interval_s() is None
    notifier.close()


def test_default_environment_is_os_environ(
    systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.env_value)
    with Notifier() as notifier:
        notifier.ready()
    assert systemd.receive() == "READY=1"


def test_unusable_socket_value_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.runtime.sdnotify"):
        notifier = Notifier({"NOTIFY_SOCKET": "relative/path"})
    assert not notifier.enabled
    assert "neither a path" in caplog.text


def test_vanished_socket_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with caplog.at_level(logging.WARNING, logger="agent.runtime.sdnotify"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
    assert caplog.text.count("sd_notify") == 1
    notifier.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "1500000", "WATCHDOG_PID": str(os.getpid())}, 1.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert Notifier(env).watchdog_interval_s() == expected
