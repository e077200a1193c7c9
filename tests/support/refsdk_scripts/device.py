"""An IoT Hub device through the reference SDK's IoTHubDeviceClient, driven over stdin.

Connects (printing ``connected`` or ``connect-failed``), then enables direct methods,
desired-property patches and C2D, and reads one JSON command per stdin line:

    {"id": 1, "cmd": "send", "data": "...", "properties": {...}, "content_type": "...",
     "content_encoding": "...", "message_id": "...", "correlation_id": "..."}
    {"id": 2, "cmd": "report", "patch": {...}}
    {"id": 3, "cmd": "get_twin"}
    {"id": 4, "cmd": "connect"}      {"id": 5, "cmd": "disconnect"}     {"cmd": "exit"}

Each command ends with ``done`` (``id``, plus ``twin`` for get_twin) or ``failed``
(``id`` and the exception chain). Unprompted events: ``method`` (then
``method-responded``), ``desired``, ``c2d``, ``connection``, ``background-exception``.
A direct method is answered with status ``payload["status"]`` (default 200) and the
payload ``{"method": name, "echo": payload}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from azure.iot.device import X509, IoTHubDeviceClient, Message, MethodResponse
from sdkio import describe, emit, finish, setup_logging


def build_client(args: argparse.Namespace) -> Any:
    kwargs: dict[str, Any] = {
        "server_verification_cert": Path(args.ca).read_text(),
        "connection_retry_interval": args.connection_retry_interval,
        "keep_alive": args.keep_alive,
    }
    if args.gateway_hostname:
        kwargs["gateway_hostname"] = args.gateway_hostname
    if args.websockets:
        kwargs["websockets"] = True
    return IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(cert_file=args.cert, key_file=args.key),
        hostname=args.hostname,
        device_id=args.device_id,
        **kwargs,
    )


def install_handlers(client: Any) -> None:
    def on_method(request: Any) -> None:
        emit("method", name=request.name, payload=request.payload, request_id=request.request_id)
        status = 200
        if isinstance(request.payload, dict) and isinstance(request.payload.get("status"), int):
            status = request.payload["status"]
        response = MethodResponse.create_from_method_request(
            request, status, {"method": request.name, "echo": request.payload}
        )
        try:
            client.send_method_response(response)
            emit("method-responded", request_id=request.request_id, status=status)
        except Exception as exc:
            emit("method-response-failed", request_id=request.request_id, **describe(exc))

    def on_desired(patch: Any) -> None:
        emit("desired", patch=patch)

    def on_c2d(message: Any) -> None:
        data = (
            message.data.decode("utf-8", "replace")
            if isinstance(message.data, bytes)
            else message.data
        )
        emit(
            "c2d",
            data=data,
            properties=message.custom_properties,
            message_id=message.message_id,
            content_type=message.content_type,
        )

    client.on_method_request_received = on_method
    client.on_twin_desired_properties_patch_received = on_desired
    client.on_message_received = on_c2d


def run_command(client: Any, command: dict[str, Any]) -> None:
    name = command.get("cmd")
    ident = command.get("id")
    try:
        if name == "send":
            message = Message(
                command.get("data", ""),
                message_id=command.get("message_id"),
                content_encoding=command.get("content_encoding"),
                content_type=command.get("content_type"),
            )
            if command.get("correlation_id"):
                message.correlation_id = command["correlation_id"]
            message.custom_properties.update(command.get("properties", {}))
            client.send_message(message)
            emit("done", id=ident, cmd=name)
        elif name == "report":
            client.patch_twin_reported_properties(command["patch"])
            emit("done", id=ident, cmd=name)
        elif name == "get_twin":
            emit("done", id=ident, cmd=name, twin=client.get_twin())
        elif name == "connect":
            client.connect()
            emit("done", id=ident, cmd=name, connected=client.connected)
        elif name == "disconnect":
            client.disconnect()
            emit("done", id=ident, cmd=name, connected=client.connected)
        else:
            emit("failed", id=ident, cmd=name, type="UnknownCommand", message=repr(name), chain=[])
    except Exception as exc:  # report every failure the SDK raises, as data
        emit("failed", id=ident, cmd=name, **describe(exc))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hostname", required=True, help="the assigned hub's host name")
    parser.add_argument("--device-id", required=True)
    parser.add_argument("--cert", required=True, help="device chain PEM")
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True, help="PEM file trusted for the server")
    parser.add_argument("--gateway-hostname", help="address to connect to instead of --hostname")
    parser.add_argument("--connection-retry-interval", type=int, default=10)
    parser.add_argument("--keep-alive", type=int, default=60)
    parser.add_argument("--websockets", action="store_true", help="MQTT over WebSockets (443)")
    args = parser.parse_args()
    setup_logging()

    client = build_client(args)
    client.on_connection_state_change = lambda: emit("connection", connected=client.connected)
    client.on_background_exception = lambda exc: emit("background-exception", **describe(exc))
    try:
        client.connect()
    except Exception as exc:  # report every failure the SDK raises, as data
        emit("connect-failed", **describe(exc))
        finish(1)
        return
    try:
        install_handlers(client)
    except Exception as exc:
        emit("error", stage="enable-features", **describe(exc))
        finish(1)
        return
    emit("connected", threads=threading.active_count())

    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        if command.get("cmd") == "exit":
            break
        # Commands run on their own thread, so a call the SDK never completes (a known
        # SDK behaviour) cannot stop this script from reading the next command.
        threading.Thread(target=run_command, args=(client, command), daemon=True).start()
    try:
        client.shutdown()
    except Exception as exc:
        emit("shutdown-failed", **describe(exc))
    finish(0)


if __name__ == "__main__":
    main()
