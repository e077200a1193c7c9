"""The TPM keystore: a TSS2 key blob that only this device's TPM can use, and a chain file.

Theory of operation
-------------------
:class:`TpmKeystore` implements :class:`~agent.identity.keystore.Keystore` like the file
keystore, with the same certificate checks (validity, chain to the trust anchors,
clientAuth, the registration id), but the key never passes through this process:

1. the key file must be a TSS2 PRIVATE KEY blob (a software PEM key is refused, with
   the fix: ``keystore = "file"``, or ``device-agent keys create --tpm``);
2. :func:`agent.identity.tpm.probe_key` loads the chain and the blob into a TLS context
   in a child process with the tpm2 provider: the TPM answers, the blob is its own and
   matches the certificate — or a :class:`~agent.errors.TpmError` says which is not
   so (unreachable, another TPM's blob, mismatch). Those errors are
   :class:`~agent.errors.CertificateInvalidError` leaves: the daemon waits in
   IDENTITY_WAIT and re-checks rather than exiting.

The transport then uses the same two paths, with ``OPENSSL_CONF`` and
``TPM2OPENSSL_TCTI`` in its environment from the start (the unit sets them; the CLI
re-executes itself with them, :mod:`agent.cli.main`).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from agent.config import IdentityConfig
from agent.errors import KeystoreError
from agent.identity.file_keystore import _read_certificates, checked_identity
from agent.identity.keystore import Identity
from agent.identity.tpm import is_tss2_blob, probe_key

__all__ = ["TpmKeystore"]


class TpmKeystore:
    """A TSS2 key blob (``identity.key_path``) and a PEM chain, used through the TPM."""

    def __init__(self, config: IdentityConfig, *, config_path: Path) -> None:
        self._config = config
        self._config_path = config_path

    def load(self, *, now: datetime) -> Identity:
        """Check the certificate and, through the TPM, the key; raise a KeystoreError leaf."""
        cfg = self._config
        if not os.path.isfile(cfg.key_path):
            raise KeystoreError(
                "no such file (TPM key blob)",
                path=cfg.key_path,
                fix="device-agent keys create --tpm",
            )
        if not is_tss2_blob(cfg.key_path):
            raise KeystoreError(
                "not a TSS2 key blob: keystore = 'tpm' needs a key made in the TPM",
                path=cfg.key_path,
                fix="device-agent keys create --tpm, or keystore = 'file' for a software key",
            )
        chain = _read_certificates(cfg.cert_chain_path, what="certificate chain")
        identity = checked_identity(cfg, chain, now=now, config_path=self._config_path)
        probe_key(cfg, cfg.cert_chain_path)
        return identity
