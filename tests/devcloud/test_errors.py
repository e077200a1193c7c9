"""devcloud raises one error hierarchy: every exception class it defines is a DevCloudError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import devcloud
from devcloud.errors import DevCloudError


def _devcloud_exception_classes() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for module_info in pkgutil.walk_packages(devcloud.__path__, "devcloud."):
        if module_info.name == "devcloud.__main__":
            continue
        module = importlib.import_module(module_info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found.append(value)
    return found


def test_every_devcloud_exception_has_one_root() -> None:
    classes = _devcloud_exception_classes()
    names = {c.__name__ for c in classes}
    # The walk really finds the errors of several modules, not only errors.py.
    assert {"MQTTError", "WebSocketError", "ProtocolViolation", "PKIError", "ConfigError"} <= names
    strays = [c.__qualname__ for c in classes if not issubclass(c, DevCloudError)]
    assert strays == []


def test_leaves_carry_data_and_a_builtin() -> None:
    from devcloud.mqtt.codec import MalformedPacket, PacketTooLarge

    too_large = PacketTooLarge(300_000, 262_144)
    assert isinstance(too_large, ValueError) and isinstance(too_large, DevCloudError)
    assert (too_large.size, too_large.limit) == (300_000, 262_144)
    assert MalformedPacket("x").message == "malformed MQTT packet: x"
