"""devcloud: a local, protocol-faithful Azure DPS + IoT Hub on loopback."""

__version__ = "0.1.0"
