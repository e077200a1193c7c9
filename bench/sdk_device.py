"""The SDK-based equivalent of device-agent: what a user would write with azure-iot-device.

Runs under the reference virtualenv (``azure-iot-device`` 2.14.0, paho-mqtt 1.x; see
:mod:`tests.support.refsdk`), never under the project's venv. It reads the same mock
sensors through the project's HAL (put on ``sys.path`` with ``--project-root``; the mock
backend needs only the standard library) and sends the same telemetry JSON as the agent.

Theory of operation
-------------------
1. Boot: if ``--state-file`` holds a hub and device id, connect straight to that hub;
   otherwise (or if the cached hub refuses the device) register with DPS through
   ``ProvisioningDeviceClient.register()`` and persist the assignment atomically
   (temp file, fsync, rename).
2. The main thread samples every ``--interval-s`` on a steady cadence and appends a
   message to a bounded in-memory queue (oldest dropped when full), as the agent does.
3. A sender thread takes the oldest message and calls ``send_message`` (QoS 1: it
   returns on PUBACK). A failed send (the SDK raises at once when it cannot connect)
   puts the message back at the front and waits ``--connection-retry-interval``, the
   pace of the SDK's own reconnects, before the next try.
4. A ``reprovision`` direct method is answered 202, then the main thread shuts the hub
   client down, registers with DPS again, persists and connects to the new hub.
5. With ``--follow-twin-interval``: after each connect read the twin, and take
   ``telemetryIntervalSeconds`` from its desired properties and from every desired
   patch, as the agent does (the backlog benchmark slows both clients down this way).
6. SIGTERM: shut the client down and exit 0 (``os._exit``: the SDK leaves threads).

One JSON object per line on stdout (``{"event": ...}``) says what happened, for the
benchmark's logs; SDK logs go to stderr at WARNING.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azure.iot.device import (  # type: ignore[import-not-found]
    X509,
    IoTHubDeviceClient,
    Message,
    MethodResponse,
    ProvisioningDeviceClient,
)
from azure.iot.device.exceptions import CredentialError  # type: ignore[import-not-found]

_print_lock = threading.Lock()
#: Bound on one DPS registration or hub connect attempt before the program gives up.
MAX_BOOT_ATTEMPTS = 20


def emit(event: str, **fields: Any) -> None:
    """One whole JSON line on stdout."""
    line = json.dumps({"event": event, "t": time.time(), **fields}, default=repr)
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def utc_iso(epoch_s: float) -> str:
    """``2026-01-02T03:04:05.678Z``, as the agent writes it."""
    stamp = datetime.fromtimestamp(epoch_s, tz=UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Device:
    """The SDK device: assignment, hub client, telemetry queue, sender thread."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.x509 = X509(cert_file=args.cert, key_file=args.key)
        self.ca = Path(args.ca).read_text()
        self.state_file = Path(args.state_file)
        self.client: Any = None
        self.queue: collections.deque[Any] = collections.deque()
        self.changed = threading.Condition()
        self.stop = threading.Event()
        self.reprovision = threading.Event()
        self.sequence = 0
        self.interval_s: float = args.interval_s

    # -- provisioning ---------------------------------------------------------------------

    def register(self) -> dict[str, str]:
        """Register with DPS and persist the assignment."""
        client = ProvisioningDeviceClient.create_from_x509_certificate(
            provisioning_host=self.args.provisioning_host,
            registration_id=self.args.registration_id,
            id_scope=self.args.id_scope,
            x509=self.x509,
            server_verification_cert=self.ca,
        )
        result = client.register()
        state = result.registration_state
        if result.status != "assigned" or state is None:
            raise RuntimeError(f"DPS did not assign this device: {result.status}")
        assignment = {"hub": state.assigned_hub, "device_id": state.device_id}
        tmp = self.state_file.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            json.dump(assignment, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.state_file)
        emit("registered", **assignment)
        return assignment

    def cached(self) -> dict[str, str] | None:
        """The persisted assignment, if any."""
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        if isinstance(data, dict) and data.get("hub") and data.get("device_id"):
            return {"hub": str(data["hub"]), "device_id": str(data["device_id"])}
        return None

    # -- the hub ----------------------------------------------------------------------------

    def connect(self, assignment: dict[str, str]) -> Any:
        """A connected hub client with the method handler installed."""
        client = IoTHubDeviceClient.create_from_x509_certificate(
            x509=self.x509,
            hostname=assignment["hub"],
            device_id=assignment["device_id"],
            server_verification_cert=self.ca,
            connection_retry_interval=self.args.connection_retry_interval,
        )
        client.connect()
        client.on_method_request_received = lambda request: self.on_method(client, request)
        client.on_connection_state_change = self.on_connection_change
        if self.args.follow_twin_interval:
            client.on_twin_desired_properties_patch_received = self.on_desired
            self.on_desired(client.get_twin().get("desired", {}))
        emit("connected", hub=assignment["hub"], threads=threading.active_count())
        return client

    def on_desired(self, desired: dict[str, Any]) -> None:
        """Take ``telemetryIntervalSeconds`` from desired properties, if it is there."""
        value = desired.get("telemetryIntervalSeconds")
        if isinstance(value, int | float) and 1 <= value <= 86400:
            self.interval_s = float(value)
            emit("interval", seconds=self.interval_s)

    def on_connection_change(self) -> None:
        """The SDK (re)connected or lost the connection: wake a waiting sender."""
        with self.changed:
            self.changed.notify_all()

    def on_method(self, client: Any, request: Any) -> None:
        """``reprovision`` -> 202 and a re-registration; anything else -> 404."""
        status = 202 if request.name == "reprovision" else 404
        client.send_method_response(
            MethodResponse.create_from_method_request(request, status, {"method": request.name})
        )
        if status == 202:
            self.reprovision.set()
            with self.changed:
                self.changed.notify_all()

    def boot(self) -> None:
        """Connect to the cached hub; register first if there is none or the hub refuses us.

        A refusal (``CredentialError``: unknown, disabled or moved device) sends the
        device back to DPS; any other failure retries after the SDK's own
        ``connection_retry_interval``.
        """
        for _attempt in range(MAX_BOOT_ATTEMPTS):
            if self.stop.is_set():
                return
            assignment = self.cached()
            try:
                if assignment is None:
                    assignment = self.register()
                client = self.connect(assignment)
            except Exception as exc:  # what a user would do: log, maybe go back to DPS, retry
                emit("boot-failed", type=type(exc).__name__, message=str(exc))
                if isinstance(exc, CredentialError):
                    self.state_file.unlink(missing_ok=True)
                self.stop.wait(self.args.connection_retry_interval)
                continue
            with self.changed:
                self.client = client
                self.changed.notify_all()
            return
        raise RuntimeError(f"no hub connection after {MAX_BOOT_ATTEMPTS} attempts")

    def do_reprovision(self) -> None:
        """Leave the hub, register again, connect to the hub DPS now names."""
        self.reprovision.clear()
        with self.changed:
            old, self.client = self.client, None
        if old is not None:
            old.shutdown()
        self.state_file.unlink(missing_ok=True)
        self.boot()
        emit("reprovisioned")

    # -- telemetry --------------------------------------------------------------------------

    def sample(self, sensors: list[Any], units: dict[str, str]) -> None:
        """Read the sensors and queue one message (the agent's body and properties)."""
        readings: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        for sensor in sensors:
            try:
                values = sensor.read()
            except Exception as exc:
                errors[sensor.name] = f"{type(exc).__name__}: {exc}"
                continue
            readings[sensor.name] = {
                q: {"value": float(v), "unit": units.get(q, "")} for q, v in values.items()
            }
        self.sequence += 1
        now = time.time()
        body = {
            "timestamp": utc_iso(now),
            "sequence": self.sequence,
            "readings": readings,
            "errors": errors,
        }
        message = Message(
            json.dumps(body, separators=(",", ":")),
            message_id=f"{self.sequence}-{int(now * 1000)}",
            content_encoding="utf-8",
            content_type="application/json",
        )
        with self.changed:
            if len(self.queue) >= self.args.queue_max_messages:
                self.queue.popleft()
            self.queue.append(message)
            self.changed.notify_all()

    def send_forever(self) -> None:
        """The sender thread: oldest message first, one at a time, until PUBACK."""
        while not self.stop.is_set():
            with self.changed:
                self.changed.wait_for(
                    lambda: self.stop.is_set() or (self.queue and self.client is not None),
                    timeout=1.0,
                )
                if self.stop.is_set() or not self.queue or self.client is None:
                    continue
                message, client = self.queue.popleft(), self.client
            try:
                client.send_message(message)
            except Exception as exc:  # put it back; retry at the SDK's own reconnect pace
                emit("send-failed", type=type(exc).__name__, message=str(exc))
                with self.changed:
                    self.queue.appendleft(message)
                    self.changed.wait_for(
                        lambda failed=client: (  # type: ignore[misc]
                            self.stop.is_set() or self.client is not failed or failed.connected
                        ),
                        timeout=self.args.connection_retry_interval,
                    )


def main() -> None:
    """Parse the arguments and run the device until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--provisioning-host", required=True)
    parser.add_argument("--id-scope", required=True)
    parser.add_argument("--registration-id", required=True)
    parser.add_argument("--cert", required=True, help="device chain PEM")
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True, help="PEM file trusted for the servers")
    parser.add_argument("--state-file", required=True, help="where the assignment is kept")
    parser.add_argument("--interval-s", type=float, default=60.0)
    parser.add_argument("--queue-max-messages", type=int, default=1000)
    parser.add_argument("--connection-retry-interval", type=int, default=10)
    parser.add_argument("--follow-twin-interval", action="store_true")
    parser.add_argument("--sensor", action="append", default=[], help="PART@BUS:0xADDR")
    parser.add_argument("--mock-seed", type=int, default=1)
    parser.add_argument("--project-root", required=True, help="where the hal package is")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)

    sys.path.insert(0, args.project_root)
    import hal
    from hal.discovery import parse_spec
    from hal.sensor import UNITS

    backend = hal.open_backend("mock", seed=args.mock_seed)
    sensors = list(hal.open_sensors(backend, [parse_spec(s) for s in args.sensor]))
    device = Device(args)

    def on_sigterm(_signum: int, _frame: Any) -> None:
        device.stop.set()
        with device.changed:
            device.changed.notify_all()

    signal.signal(signal.SIGTERM, on_sigterm)
    emit("started", pid=os.getpid())
    sender = threading.Thread(target=device.send_forever, name="sender", daemon=True)
    sender.start()
    next_at = time.monotonic()
    try:
        device.boot()
        while not device.stop.is_set():
            if device.reprovision.is_set():
                device.do_reprovision()
            if time.monotonic() >= next_at:
                device.sample(sensors, dict(UNITS))
                next_at += device.interval_s
                next_at = max(next_at, time.monotonic() - device.interval_s)  # no catch-up
            with device.changed:
                device.changed.wait_for(
                    lambda: device.stop.is_set() or device.reprovision.is_set(),
                    timeout=max(0.0, next_at - time.monotonic()),
                )
    except Exception as exc:
        emit("error", type=type(exc).__name__, message=str(exc))
        os._exit(1)
    client = device.client
    if client is not None:
        try:
            client.shutdown()
        except Exception as exc:
            emit("shutdown-failed", type=type(exc).__name__, message=str(exc))
    emit("exit", code=0, threads=threading.active_count())
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
