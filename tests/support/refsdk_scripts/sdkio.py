"""Shared by the reference-SDK scripts: JSON-lines output, error descriptions, logging.

These scripts run under the reference virtualenv (``azure-iot-device`` 2.14.0 with
paho-mqtt 1.x), never under the project's own venv; see :mod:`tests.support.refsdk`.
Each prints one JSON object per line on stdout (``{"event": ...}``); SDK and paho
logs go to stderr, which the test shows when an expectation fails.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from typing import Any

_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """Print one event line, whole, even when SDK threads emit at the same time."""
    line = json.dumps({"event": event, **fields}, default=repr, sort_keys=True)
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def describe(exc: BaseException) -> dict[str, Any]:
    """An exception and its ``__cause__`` chain, as data a test can assert on."""
    chain: list[dict[str, str]] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 8:
        chain.append(
            {"type": type(seen).__name__, "module": type(seen).__module__, "message": str(seen)}
        )
        seen = seen.__cause__ or seen.__context__
    return {"type": type(exc).__name__, "message": str(exc), "chain": chain}


def setup_logging() -> None:
    """paho at DEBUG (packet-level: CONNECT, CONNACK rc, SUBSCRIBE...), the SDK at INFO."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING,
        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("paho").setLevel(logging.DEBUG)
    logging.getLogger("azure.iot.device").setLevel(logging.INFO)


def finish(code: int) -> None:
    """Exit now: the SDK leaves non-daemon threads behind after failures (see DESIGN.md)."""
    emit("exit", code=code, threads=threading.active_count())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
