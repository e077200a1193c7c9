"""Register one device with DPS through the reference SDK's ProvisioningDeviceClient.

Prints ``registered`` (the RegistrationResult as data) or ``register-failed`` (the
exception chain), then ``exit``. Usage: see ``--help``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from azure.iot.device import X509, ProvisioningDeviceClient
from sdkio import describe, emit, finish, setup_logging


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--provisioning-host", required=True)
    parser.add_argument("--id-scope", required=True)
    parser.add_argument("--registration-id", required=True)
    parser.add_argument("--cert", required=True, help="device chain PEM")
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True, help="PEM file trusted for the server")
    parser.add_argument("--payload", help="JSON registration payload")
    parser.add_argument("--gateway-hostname")
    parser.add_argument("--websockets", action="store_true", help="MQTT over WebSockets (443)")
    args = parser.parse_args()
    setup_logging()

    kwargs: dict[str, Any] = {"server_verification_cert": Path(args.ca).read_text()}
    if args.gateway_hostname:
        kwargs["gateway_hostname"] = args.gateway_hostname
    if args.websockets:
        kwargs["websockets"] = True
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=args.provisioning_host,
        registration_id=args.registration_id,
        id_scope=args.id_scope,
        x509=X509(cert_file=args.cert, key_file=args.key),
        **kwargs,
    )
    if args.payload is not None:
        client.provisioning_payload = json.loads(args.payload)
    started = time.monotonic()
    try:
        result = client.register()
    except Exception as exc:  # report every failure the SDK raises, as data
        emit("register-failed", elapsed_s=time.monotonic() - started, **describe(exc))
        finish(1)
        return
    state = result.registration_state
    emit(
        "registered",
        elapsed_s=time.monotonic() - started,
        status=result.status,
        operation_id=result.operation_id,
        assigned_hub=state.assigned_hub if state else None,
        device_id=state.device_id if state else None,
        substatus=state.sub_status if state else None,
        etag=state.etag if state else None,
        created=state.created_date_time if state else None,
        updated=state.last_update_date_time if state else None,
        payload=json.loads(state.response_payload) if state else None,
    )
    finish(0)


if __name__ == "__main__":
    main()
