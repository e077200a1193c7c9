"""device-agent: the daemon that connects a device to Azure IoT."""

__version__ = "0.1.0"
