"""The keystore interface and the identity it yields; no ``cryptography`` here.

Theory of operation
-------------------
A :class:`Keystore` turns the ``[identity]`` config into an :class:`Identity`: the
registration id, the certificate's facts, and the cert-chain and key *paths* that the
transport hands to OpenSSL. The transport never sees key material, so a TPM keystore
(whose key file is a TSS2 handle that the OpenSSL tpm2 provider loads) implements the
same :class:`Keystore` protocol as :class:`~agent.identity.file_keystore.FileKeystore`.

:func:`open_keystore` picks the implementation the config names and imports it only
then: the implementations need ``cryptography``, which the long-running daemon never
loads (it runs the checks in a child, :mod:`agent.identity.child`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from agent.config import IdentityConfig
from agent.core.clock import not_yet_valid_reason
from agent.errors import KeystoreError

__all__ = ["Identity", "Keystore", "open_keystore"]


@dataclass(frozen=True)
class Identity:
    """A checked device identity, as the transport and the state file need it."""

    registration_id: str
    common_name: str
    cert_chain_path: Path
    key_path: Path
    key_passphrase: bytes | None = field(repr=False)
    #: SHA-256 of the leaf's DER, hex upper-case (as Azure shows it).
    thumbprint: str
    not_before: datetime
    not_after: datetime
    warnings: tuple[str, ...] = ()

    def valid_at(self, moment: datetime) -> bool:
        """Whether the leaf certificate is inside its validity window at ``moment``."""
        return self.not_before <= moment < self.not_after

    def invalid_reason(self, moment: datetime) -> str | None:
        """Why the certificate cannot be used at ``moment`` (None if it can)."""
        if moment < self.not_before:
            return f"{self.cert_chain_path}: {not_yet_valid_reason(self.not_before, moment)}"
        if moment >= self.not_after:
            return (
                f"{self.cert_chain_path}: the certificate expired at "
                f"{self.not_after.isoformat()} (fix: install a renewed device certificate)"
            )
        return None


class Keystore(Protocol):
    """Where the identity lives (files, a TPM); every keystore implements this."""

    def load(self, *, now: datetime) -> Identity:
        """Load and check the identity as of ``now`` (timezone-aware UTC)."""
        ...


def open_keystore(config: IdentityConfig, *, config_path: Path) -> Keystore:
    """The keystore the config names (``keystore = "file"`` or ``"tpm"``)."""
    if config.keystore == "file":
        from agent.identity.file_keystore import FileKeystore

        return FileKeystore(config, config_path=config_path)
    if config.keystore == "tpm":
        from agent.identity.tpm_keystore import TpmKeystore

        return TpmKeystore(config, config_path=config_path)
    raise KeystoreError(f"unknown keystore {config.keystore!r}", path=config_path)
