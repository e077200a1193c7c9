"""Every error devcloud raises on purpose, rooted in :class:`DevCloudError`.

Each error carries the HTTP-style ``status`` and the Azure-style numeric ``error_code``
the real service would answer with, so the DPS endpoint, the REST API and the client all
speak the same error vocabulary: the REST layer renders ``{"errorCode", "message",
"trackingId"}`` from them and :class:`devcloud.client.DevCloudClient` raises the matching
class again from that JSON. Leaves also subclass the fitting builtin.
"""

from __future__ import annotations

from typing import Any


class DevCloudError(Exception):
    """Root of every devcloud error. ``status`` is the HTTP / DPS status code."""

    status: int = 500
    error_code: int = 500000

    def __init__(self, message: str, *, error_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if error_code is not None:
            self.error_code = error_code


class InvalidRequestError(DevCloudError, ValueError):
    """The request is malformed (bad JSON, wrong fields, registration id mismatch)."""

    status = 400
    error_code = 400004


class UnauthorizedError(DevCloudError, PermissionError):
    """The caller is known but not allowed (e.g. its enrollment is disabled)."""

    status = 401
    error_code = 401002


class ForbiddenError(DevCloudError, PermissionError):
    """The request came from somewhere it may not (another web origin)."""

    status = 403
    error_code = 403000


class NotFoundError(DevCloudError, LookupError):
    """The named enrollment, device, twin, hub or operation does not exist."""

    status = 404
    error_code = 404001


class DeviceNotOnlineError(NotFoundError):
    """A direct method was invoked on a device that is not connected and subscribed."""

    error_code = 404103


class ConflictError(DevCloudError, ValueError):
    """The request conflicts with the current state (e.g. a device id in several hubs)."""

    status = 409
    error_code = 409001


class PreconditionFailedError(DevCloudError, ValueError):
    """An ``If-Match`` etag did not match."""

    status = 412
    error_code = 412002


class ThrottledError(DevCloudError):
    """Too many registrations per second; retry after ``retry_after_s``."""

    status = 429
    error_code = 429001

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AllocationError(DevCloudError, RuntimeError):
    """The allocation policy could not pick a hub (no hubs, webhook failed, bad answer)."""

    status = 400
    error_code = 400207


class MethodTimeoutError(DevCloudError, TimeoutError):
    """The device did not answer a direct method within its timeout."""

    status = 504
    error_code = 504101


class ClientError(DevCloudError):
    """Raised by :class:`devcloud.client.DevCloudClient` for a failure without a better class.

    ``status`` is the HTTP status (0 when the server could not be reached).
    """

    def __init__(self, message: str, *, status: int, error_code: int | None = None) -> None:
        super().__init__(message, error_code=error_code)
        self.status = status


#: Classes the client raises for a status code, so callers can ``except NotFoundError``.
BY_STATUS: dict[int, type[DevCloudError]] = {
    400: InvalidRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    412: PreconditionFailedError,
    504: MethodTimeoutError,
}


def error_body(error: DevCloudError, tracking_id: str) -> dict[str, object]:
    """The JSON body the real services send with an error status."""
    return {"errorCode": error.error_code, "message": error.message, "trackingId": tracking_id}


class TelemetryTimeoutError(DevCloudError, TimeoutError):
    """Raised by the client when fewer messages than awaited arrived before the deadline."""

    status = 408
    error_code = 408000

    def __init__(self, message: str, *, received: list[Any]) -> None:
        super().__init__(message)
        #: The messages that did arrive.
        self.received = received
