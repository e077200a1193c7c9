"""A tiny ``sd_notify`` client: the only module that speaks systemd's notify protocol.

Theory of operation
-------------------
systemd starts a ``Type=notify`` service with ``NOTIFY_SOCKET`` naming an ``AF_UNIX``
datagram socket: a filesystem path, or an abstract name written with a leading ``@``.
Each notification is one datagram of ``KEY=VALUE`` lines (``READY=1``, ``STATUS=...``,
``WATCHDOG=1``, ``STOPPING=1``). With ``WatchdogSec=`` set, systemd also passes
``WATCHDOG_USEC`` (and ``WATCHDOG_PID``); the service must send ``WATCHDOG=1`` more often
than that, and the daemon does so from its main loop only while the loop makes progress.

Without ``NOTIFY_SOCKET`` (a laptop, a test, a plain shell) every call is a no-op that
returns ``False``. A failed send is logged once and never raised: losing a notification
must not take the agent down (systemd's watchdog will say so if it matters).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to systemd if ``NOTIFY_SOCKET`` is set, else does nothing."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_s = _watchdog_interval(env)
        self._socket: socket.socket | None = None
        self._failed_once = False

    @property
    def enabled(self) -> bool:
        """True when systemd gave us a notify socket."""
        return self._address is not None

    def ready(self) -> bool:
        """Tell systemd start-up is complete (``READY=1``)."""
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        """Set the one-line status ``systemctl status`` shows."""
        return self.notify(f"STATUS={' '.join(text.split())}")

    def watchdog(self) -> bool:
        """Ping the watchdog: the main loop is alive and making progress."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """Tell systemd the service is shutting down."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """Tell systemd the service is reloading (send :meth:`ready` when done)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def watchdog_interval_s(self) -> float | None:
        """systemd's watchdog timeout for this process in seconds, or None if there is none.

        Ping at least twice per interval (systemd's own advice is every half interval).
        """
        return self._watchdog_s

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; return whether it was sent."""
        if self._address is None:
            return False
        message = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(message, self._address)
        except OSError as exc:
            if not self._failed_once:
                log.warning("sd_notify to %r failed: %s", self._address, exc)
                self._failed_once = True
            return False
        return True

    def close(self) -> None:
        """Close the socket (a later notification opens it again)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _socket_address(value: str) -> str | bytes | None:
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode("utf-8", "surrogateescape")
    if value.startswith("/"):
        return value
    if value:
        log.warning("NOTIFY_SOCKET=%r is neither a path nor an @abstract name; ignored", value)
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    usec_text = env.get("WATCHDOG_USEC", "")
    if not usec_text:
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer; watchdog ignored", usec_text)
        return None
    if usec <= 0:
        return None
    pid_text = env.get("WATCHDOG_PID", "")
    if pid_text:
        try:
            pid = int(pid_text)
        except ValueError:
            log.warning("WATCHDOG_PID=%r is not an integer; watchdog ignored", pid_text)
            return None
        if pid != os.getpid():
            return None
    return usec / 1_000_000
