"""The actions the sans-I/O cores hand to the runtime (the shared vocabulary).

The cores (:mod:`agent.core.provisioning`, :mod:`agent.core.lifecycle`,
:mod:`agent.core.session`) never touch a socket, a timer or the system clock. They are
handed a :class:`~agent.core.clock.Clock` and answer each event with a list of
actions; the runtime carries the actions out. Timers are named: starting a timer of
a name that is already running replaces it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Publish:
    """Send ``payload`` on ``topic`` over the current connection."""

    topic: str
    payload: bytes
    qos: int = 1
    #: Who wants the PUBACK (e.g. a telemetry message id); None if nobody.
    tag: str | None = None


@dataclass(frozen=True)
class Subscribe:
    """Subscribe the current connection to ``topic_filter``."""

    topic_filter: str
    qos: int = 1


@dataclass(frozen=True)
class StartTimer:
    """Fire a :class:`TimerFired` named ``name`` after ``delay_s`` (replaces a running one)."""

    name: str
    delay_s: float


@dataclass(frozen=True)
class CancelTimer:
    """Forget the timer ``name`` if it is running."""

    name: str
