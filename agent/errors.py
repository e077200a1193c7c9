"""Every error the agent raises, rooted in :class:`AgentError`.

Leaves also subclass the fitting builtin, so callers that only know Python's
exceptions still catch them sensibly. Errors carry data, not just text. Library
exceptions (paho, ssl, cryptography, OSError) are translated at the boundary
with ``raise ... from exc``. The CLI exits with the class's ``exit_code`` (78 for
configuration problems, 1 unless a class says otherwise).
"""

from __future__ import annotations

from pathlib import Path

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_CONFIG = 78


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""

    exit_code: int = EX_FAILURE


class ConfigError(AgentError, ValueError):
    """The configuration cannot be used. Names the file and the key at fault."""

    exit_code = EX_CONFIG

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        self.path = Path(path)
        self.key = key
        self.problem = problem
        where = f"{self.path}: {key}" if key else str(self.path)
        super().__init__(f"{where}: {problem}")


class KeystoreError(AgentError):
    """The device identity (certificate, key, chain) cannot be used."""

    exit_code = EX_CONFIG

    def __init__(self, message: str, *, path: Path | None = None, fix: str | None = None) -> None:
        self.message = message
        self.path = path
        self.fix = fix
        text = message if path is None else f"{path}: {message}"
        if fix:
            text = f"{text} (fix: {fix})"
        super().__init__(text)


class KeyPermissionError(KeystoreError, PermissionError):
    """The private key file is readable by group or others."""


class IdentityUnavailableError(KeystoreError):
    """The identity cannot be used *now* but may be later: the daemon waits, never exits 78.

    The running agent stays up in IDENTITY_WAIT and re-checks (on a timer and whenever the
    identity files change); one-shot commands (``provision``, ``check``) still fail.
    """


class CertificateInvalidError(IdentityUnavailableError, ValueError):
    """Expired, not yet valid, key mismatch, or a chain that does not build."""


class IdentityPendingError(CertificateInvalidError):
    """No certificate yet: a CSR was written and the device waits for it to be signed."""


class TpmError(CertificateInvalidError):
    """The TPM cannot use the key now: unreachable, or the key blob is another TPM's.

    The daemon waits (IDENTITY_WAIT) and re-checks: a TPM that comes back, or a new key
    and certificate installed, makes the identity usable again."""


class TpmUnavailableError(TpmError, ConnectionError):
    """The TPM cannot be reached (no device, no resource manager, swtpm stopped)."""


class ForeignTpmKeyError(TpmError):
    """The key blob was made by another TPM (TPM_RC_INTEGRITY on load)."""


class IdentityMissingError(IdentityUnavailableError, FileNotFoundError):
    """No identity yet: the certificate chain or the key file is not there (first boot).

    A device booted from a golden image has none until one is dropped in (in
    ``/etc/device-agent`` or on the boot partition, see ``identity.import_dir``). A
    keystore that makes its own key and a CSR (the TPM flow) raises
    :class:`IdentityPendingError` instead while it waits for the certificate.
    """


class KeystoreCheckTimeoutError(IdentityUnavailableError, TimeoutError):
    """The keystore check child did not answer in time (an overloaded machine at boot).

    Not a verdict on the identity: the daemon waits (IDENTITY_WAIT) and checks again on
    the lifecycle's timer, rather than exiting when a fleet boots at once."""


class StateError(AgentError, ValueError):
    """The state file is corrupt, of another schema, or bound to another identity."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ProtocolError(AgentError, ValueError):
    """A message from the cloud that does not follow the DPS / IoT Hub protocol."""


class TransportError(AgentError, ConnectionError):
    """The network, TLS or MQTT layer failed (transient unless said otherwise)."""


#: What a refusal most likely means, for the operator (DPS or a hub, by CONNACK code).
LIKELY_CAUSES: dict[tuple[str, int], str] = {
    ("DPS", 5): (
        "not authorized; likely causes: the certificate's CN is not the registration id, "
        "no enrollment (individual or group) for this device, the enrollment is disabled, "
        "or its CA is not uploaded and verified in DPS"
    ),
    ("DPS", 4): "bad user name; likely a wrong ID scope or registration id in the config",
    ("hub", 5): (
        "not authorized; likely causes: the device is disabled or deleted on this hub, "
        "the certificate's CN is not the device id, or the hub does not trust its CA "
        "(or the thumbprint registered for the device is another certificate's)"
    ),
    ("hub", 4): "bad user name; likely a device id the hub does not know",
}
#: The same for DPS answers 401/403 to a register request.
DPS_UNAUTHORIZED_CAUSES = (
    "likely causes: the certificate's CN is not the registration id, the enrollment or "
    "its group is disabled or missing, the CA is not verified in DPS, or the "
    "certificate is revoked"
)


def likely_causes(service: str, return_code: int) -> str:
    """Why ``service`` ("DPS" or "hub") probably answered CONNACK ``return_code``."""
    return LIKELY_CAUSES.get((service, return_code), "")


class ConnectionRefusedByServer(TransportError):
    """The server answered CONNACK with a non-zero return code."""

    def __init__(self, return_code: int, endpoint: str) -> None:
        self.return_code = return_code
        self.endpoint = endpoint
        causes = likely_causes(endpoint, return_code)
        suffix = f": {causes}" if causes else ""
        super().__init__(f"{endpoint} refused the connection (CONNACK {return_code}){suffix}")

    @property
    def is_rejection(self) -> bool:
        """CONNACK 4/5: the server does not accept this device (not a transient failure)."""
        return self.return_code in (4, 5)


class ProvisioningError(AgentError):
    """DPS answered, and the answer was not an assignment."""

    def __init__(self, status: int, message: str, *, retry_after_s: float | None = None) -> None:
        self.status = status
        self.retry_after_s = retry_after_s
        super().__init__(f"DPS status {status}: {message}")


class ThrottledError(ProvisioningError):
    """DPS answered 429: slow down, honouring ``retry_after_s`` when given."""


class BudgetExhaustedError(AgentError):
    """The on-disk reprovisioning budget is spent; the agent must wait."""

    exit_code = EX_TEMPFAIL

    def __init__(self, retry_at_s: float) -> None:
        from datetime import UTC, datetime

        #: Wall-clock time (Unix seconds) of the earliest registration the budget allows.
        self.retry_at_s = retry_at_s
        when = datetime.fromtimestamp(retry_at_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        super().__init__(f"reprovisioning budget spent; next DPS registration allowed at {when}")
