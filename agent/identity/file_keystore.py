"""The file keystore: a PEM chain and key on disk, and the checks made before they are used.

Theory of operation
-------------------
:class:`FileKeystore` implements :class:`~agent.identity.keystore.Keystore`. It reads a
PEM chain (leaf first, then intermediates) and a PEM private key, optionally encrypted
with a passphrase read from a file. At every load it refuses, with a
:class:`~agent.errors.KeystoreError` naming the file and the fix:

1. a key (or passphrase) file readable or writable by group or others
   (:class:`~agent.errors.KeyPermissionError`, fix ``chmod 600 FILE``);
2. a missing or unreadable file, a key that does not decrypt;
3. a key that does not match the leaf certificate, a leaf that is not yet valid or has
   expired, a chain that does not build to a configured trust anchor (each link's
   signature verified with ``cryptography``) (:class:`~agent.errors.CertificateInvalidError`).

Under 30 days of validity left is a warning carried in
:attr:`~agent.identity.keystore.Identity.warnings` (and logged), not an error. The
registration id is the leaf's CN unless configured.

This module imports ``cryptography``: the long-running daemon never imports it, it runs
the checks in a short-lived child (:func:`agent.identity.child.load_in_child`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.config import REGISTRATION_ID_RE, IdentityConfig
from agent.core.clock import not_yet_valid_reason
from agent.core.text import clip
from agent.errors import (
    CertificateInvalidError,
    IdentityMissingError,
    KeyPermissionError,
    KeystoreError,
)
from agent.fileio import read_small_file
from agent.identity.keystore import Identity

__all__ = ["EXPIRY_WARNING", "FileKeystore", "thumbprint"]

log = logging.getLogger(__name__)

#: Less validity than this left → a warning.
EXPIRY_WARNING = timedelta(days=30)
#: Longest chain walked (leaf + intermediates) before giving up.
MAX_CHAIN_LENGTH = 8


def thumbprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER encoding, hex upper-case."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()


class FileKeystore:
    """PEM chain + PEM key (optionally passphrase-protected) on the filesystem."""

    def __init__(self, config: IdentityConfig, *, config_path: Path) -> None:
        self._config = config
        self._config_path = config_path

    def load(self, *, now: datetime) -> Identity:
        """Read the files and run every check; raise a :class:`KeystoreError` leaf on failure.

        No certificate chain or no key file (yet) is :class:`IdentityMissingError`: a
        device waiting for its identity, not a configuration error.
        """
        cfg = self._config
        for path, what in ((cfg.cert_chain_path, "certificate chain"), (cfg.key_path, "key")):
            if not os.path.lexists(path):
                raise IdentityMissingError(
                    f"no such file ({what}): waiting for the device identity",
                    path=path,
                    fix=f"put the device's {what} there (or in the identity import folder)",
                )
        _check_private(cfg.key_path)
        passphrase = None
        if cfg.key_passphrase_file is not None:
            _check_private(cfg.key_passphrase_file)
            passphrase = _read_passphrase(cfg.key_passphrase_file)
        chain = _read_certificates(cfg.cert_chain_path, what="certificate chain")
        leaf = chain[0]
        key = self._read_key(cfg.key_path, passphrase)
        if _public_der(key.public_key()) != _public_der(leaf.public_key()):
            raise CertificateInvalidError(
                "the private key does not belong to the certificate "
                f"in {cfg.cert_chain_path} (the leaf must come first)",
                path=cfg.key_path,
                fix="point identity.key_path and identity.cert_chain_path at a matching pair",
            )
        return checked_identity(
            cfg, chain, now=now, config_path=self._config_path, key_passphrase=passphrase
        )

    def _read_key(self, path: Path, passphrase: bytes | None) -> PrivateKeyTypes:
        data = _read_bytes(path, what="private key")
        try:
            return serialization.load_pem_private_key(data, password=passphrase)
        except TypeError as exc:
            # cryptography: a password for a plain key, or none for an encrypted one.
            if passphrase is None:
                raise KeystoreError(
                    "the private key is encrypted and no passphrase is configured",
                    path=path,
                    fix=f"set identity.key_passphrase_file in {self._config_path}",
                ) from exc
            raise KeystoreError(
                "a passphrase is configured but the private key is not encrypted",
                path=path,
                fix=f"remove identity.key_passphrase_file from {self._config_path}",
            ) from exc
        except ValueError as exc:
            if passphrase is not None and b"ENCRYPTED" in data:
                raise KeystoreError(
                    "the passphrase does not decrypt the private key",
                    path=path,
                    fix=f"check {self._config.key_passphrase_file}",
                ) from exc
            raise KeystoreError(f"not a PEM private key ({exc})", path=path) from exc
        except Exception as exc:  # cryptography raises its own types for unsupported keys
            raise KeystoreError(f"cannot load the private key ({exc})", path=path) from exc


# --- checks -------------------------------------------------------------------------------


def checked_identity(
    cfg: IdentityConfig,
    chain: list[x509.Certificate],
    *,
    now: datetime,
    config_path: Path,
    key_passphrase: bytes | None = None,
) -> Identity:
    """The checks every keystore makes of its chain, whatever holds the key: validity,
    the chain to the trust anchors, clientAuth, a usable registration id (and a warning
    when it is not the certificate's CN); each warning is logged. The key itself is the
    caller's to check against the leaf."""
    leaf = chain[0]
    not_before, not_after = _validity(leaf)
    warnings = list(_check_validity(cfg.cert_chain_path, not_before, not_after, now))
    if cfg.trust_anchor_paths:
        anchors = [
            cert
            for path in cfg.trust_anchor_paths
            for cert in _read_certificates(path, what="trust anchor")
        ]
        _check_chain(cfg.cert_chain_path, chain, anchors, now)
    warnings.extend(_eku_warnings(leaf))
    common_name = _common_name(leaf)
    registration_id = cfg.registration_id or common_name
    if not registration_id or not REGISTRATION_ID_RE.match(registration_id):
        raise CertificateInvalidError(
            f"the certificate's CN {common_name!r} is not a usable registration id",
            path=cfg.cert_chain_path,
            fix=f"set identity.registration_id in {config_path}",
        )
    if registration_id != common_name:
        warnings.append(
            f"{cfg.cert_chain_path}: the certificate's CN {clip(common_name, 64)!r} is not "
            f"the registration id {registration_id!r}; with X.509 attestation DPS and the "
            "hub identify the device by its CN, so expect DPS 401 / CONNACK 5 unless the "
            "enrollment says otherwise"
        )
    for warning in warnings:
        log.warning("%s", warning)
    return Identity(
        registration_id=registration_id,
        common_name=common_name,
        cert_chain_path=cfg.cert_chain_path,
        key_path=cfg.key_path,
        key_passphrase=key_passphrase,
        thumbprint=thumbprint(leaf),
        not_before=not_before,
        not_after=not_after,
        warnings=tuple(warnings),
    )


def _check_private(path: Path) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise KeystoreError("no such file", path=path) from None
    except OSError as exc:
        raise KeystoreError(f"cannot stat: {exc.strerror or exc}", path=path) from exc
    if not stat.S_ISREG(mode):
        raise KeystoreError("not a regular file", path=path)
    if mode & 0o077:
        raise KeyPermissionError(
            f"secret file is accessible by group or others (mode {stat.S_IMODE(mode):04o})",
            path=path,
            fix=f"chmod 600 {path}",
        )


def _read_bytes(path: Path, *, what: str) -> bytes:
    try:
        return read_small_file(path)
    except FileNotFoundError:
        raise KeystoreError(f"no such file ({what})", path=path) from None
    except OSError as exc:
        raise KeystoreError(f"cannot read the {what}: {exc.strerror or exc}", path=path) from exc


def _read_passphrase(path: Path) -> bytes:
    data = _read_bytes(path, what="key passphrase")
    passphrase = data.removesuffix(b"\n").removesuffix(b"\r")
    if not passphrase:
        raise KeystoreError("the passphrase file is empty", path=path)
    return passphrase


def _read_certificates(path: Path, *, what: str) -> list[x509.Certificate]:
    data = _read_bytes(path, what=what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateInvalidError(f"not a PEM {what} ({exc})", path=path) from exc
    if not certs:
        raise CertificateInvalidError(f"no certificate in the {what}", path=path)
    return certs


def _public_der(public_key: object) -> bytes:
    public_bytes = getattr(public_key, "public_bytes", None)
    if public_bytes is None:
        return b""
    der: bytes = public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _validity(cert: x509.Certificate) -> tuple[datetime, datetime]:
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def _check_validity(
    path: Path, not_before: datetime, not_after: datetime, now: datetime
) -> list[str]:
    if now < not_before:
        raise CertificateInvalidError(not_yet_valid_reason(not_before, now), path=path)
    if now >= not_after:
        raise CertificateInvalidError(
            f"the certificate expired at {not_after.isoformat()}",
            path=path,
            fix="install a renewed device certificate",
        )
    left = not_after - now
    if left < EXPIRY_WARNING:
        return [f"{path}: the certificate expires in {left.days} days ({not_after.isoformat()})"]
    return []


def _check_chain(
    path: Path,
    chain: list[x509.Certificate],
    anchors: list[x509.Certificate],
    now: datetime,
) -> None:
    """Walk from the leaf through the chain's certificates to a trust anchor."""
    anchor_ders = {a.public_bytes(serialization.Encoding.DER) for a in anchors}
    candidates = chain[1:]
    current = chain[0]
    for _ in range(MAX_CHAIN_LENGTH):
        if current.public_bytes(serialization.Encoding.DER) in anchor_ders:
            return
        for anchor in anchors:
            if _issued_by(current, anchor):
                return
        issuer = next((c for c in candidates if _issued_by(current, c)), None)
        if issuer is None:
            break
        if not _is_ca(issuer):
            raise CertificateInvalidError(
                f"{_subject(issuer)} signs {_subject(current)} but is not a CA", path=path
            )
        issuer_before, issuer_after = _validity(issuer)
        if not issuer_before <= now < issuer_after:
            raise CertificateInvalidError(
                f"intermediate {_subject(issuer)} is not valid now "
                f"({issuer_before.isoformat()} .. {issuer_after.isoformat()})",
                path=path,
            )
        candidates = [c for c in candidates if c is not issuer]
        current = issuer
    names = ", ".join(_subject(a) for a in anchors)
    raise CertificateInvalidError(
        f"the chain does not build to a trust anchor: no issuer for {_subject(current)} "
        f"(anchors: {names})",
        path=path,
        fix="append the missing intermediate certificates to the chain file, "
        "or configure the right identity.trust_anchor_paths",
    )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def _eku_warnings(leaf: x509.Certificate) -> list[str]:
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return []
    if ExtendedKeyUsageOID.CLIENT_AUTH in usages:
        return []
    return [f"{_subject(leaf)}: no clientAuth extended key usage; servers may refuse it"]


def _common_name(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not values:
        return ""
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _subject(cert: x509.Certificate) -> str:
    return repr(cert.subject.rfc4514_string())
