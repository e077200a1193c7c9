"""The floor: the least a Python device program can do to get one message acknowledged.

Usage (run by :func:`bench.scenarios.floor`, under the benchmarked agent's interpreter)::

    python bench/floor_device.py --host H --device-id D --cert C --key K --ca CA
                                 [--connections N]

It imports ``ssl`` and paho-mqtt, then ``N`` times: opens a TLS connection with the
device certificate, sends CONNECT, publishes one QoS 1 telemetry message and waits for
its PUBACK, and disconnects. Nothing else: no configuration, no state, no sensors, no
retries (any failure exits 1). The time from the process start to the last message
stored by the hub is the floor for a boot that makes ``N`` connections (a warm boot
makes one: the hub; a cold boot two: DPS, then the hub). It uses only the standard
library and paho, so its bytecode comes from the same installed venv as the agent's.
"""

from __future__ import annotations

import argparse
import ssl
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

PORT = 8883
HUB_API_VERSION = "2021-04-12"


def publish_once(args: argparse.Namespace, context: ssl.SSLContext, n: int) -> None:
    """One connection: TLS, CONNECT, one QoS 1 PUBLISH until its PUBACK, DISCONNECT."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=args.device_id,
        protocol=mqtt.MQTTv311,
        reconnect_on_failure=False,
    )
    client.username_pw_set(f"{args.host}/{args.device_id}/?api-version={HUB_API_VERSION}")
    client.tls_set_context(context)
    client.connect(args.host, PORT, keepalive=60)
    topic = f"devices/{args.device_id}/messages/events/%24.ct=application%2Fjson"
    info = client.publish(topic, b'{"floor": %d}' % n, qos=1)
    for _ in range(10_000):  # bounded: each round waits up to 1 s for the socket
        if info.is_published():
            break
        if client.loop(timeout=1.0) != mqtt.MQTT_ERR_SUCCESS:
            raise SystemExit(f"connection {n}: lost before PUBACK")
    client.disconnect()


def main() -> int:
    """Parse the arguments and publish once per connection."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--device-id", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--connections", type=int, default=1)
    args = parser.parse_args()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=args.ca)
    context.load_cert_chain(args.cert, args.key)
    for n in range(args.connections):
        publish_once(args, context, n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
