"""Where DPS put the device, and whether a hub is one the device may be sent to.

Kept apart from :mod:`agent.core.provisioning` (the registration machine, with the DPS
codec behind it) because the lifecycle, the state file and a warm boot need only this:
a device that boots with a cached assignment never loads the DPS code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Assignment", "hub_allowed"]


@dataclass(frozen=True)
class Assignment:
    """Where DPS put the device."""

    assigned_hub: str
    device_id: str
    #: When DPS made the assignment (its ``lastUpdatedDateTimeUtc``), ISO 8601 UTC.
    provisioned_at: str
    substatus: str | None = None
    #: The custom-allocation payload DPS returned, if any.
    payload: object = None


def hub_allowed(hostname: str, suffixes: Sequence[str]) -> bool:
    """Whether ``hostname`` ends in one of ``suffixes`` (``.suffix``) or equals one."""
    host = hostname.lower().rstrip(".")
    for suffix in (entry.lower() for entry in suffixes):
        if suffix.startswith("."):
            if host.endswith(suffix) and len(host) > len(suffix):
                return True
        elif host == suffix:
            return True
    return False
