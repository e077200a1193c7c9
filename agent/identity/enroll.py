"""Enrolment: make the key, write the CSR, install the signed certificate, describe it all.

Theory of operation
-------------------
These are what ``device-agent keys ...`` and a first boot do with the ``[identity]``
config; every file is written atomically (temporary file in the same directory, fsync,
rename, fsync of the directory), and when run as root a new file takes the owner and
group of the directory it lands in (the service user's, on an installed device), so a
command run by root never leaves a key the daemon cannot read.

* :func:`create_key`: a key in the TPM (``keystore = "tpm"``: a TSS2 blob, see
  :mod:`agent.identity.tpm`) or an EC P-384 PEM key, mode 0600. An existing key is kept
  unless ``replace``.
* :func:`write_csr_for`: the CSR for that key, CN = the registration id, to
  ``identity.csr_path`` (default on the boot partition, where an SD card reader finds it).
* :func:`first_boot`: what the daemon does when there is no certificate yet and the
  registration id is configured: key (if none), CSR, and an
  :class:`~agent.errors.IdentityPendingError` saying where the CSR is; the daemon waits
  in IDENTITY_WAIT (READY sent, sensors sampled) until a certificate is installed.
* :func:`install_certificate`: checks that the chain's leaf belongs to the key (through
  the TPM for a TPM key), is valid now and builds to the trust anchors, and that its CN
  is the registration id; then installs it as ``identity.cert_chain_path``.
* :func:`describe`: what ``keys show`` prints.

Run as ``python -m agent.identity.enroll CONFIG`` it does :func:`first_boot` in a child
process, so the daemon never imports ``cryptography``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from agent.config import IdentityConfig, load_config
from agent.errors import AgentError, CertificateInvalidError, IdentityPendingError, KeystoreError
from agent.identity.csr import make_csr, write_csr

__all__ = [
    "create_key",
    "describe",
    "first_boot",
    "install_certificate",
    "needs_enrolment",
    "write_csr_for",
]


def needs_enrolment(config: IdentityConfig) -> bool:
    """No certificate yet, but a registration id to ask one for: the first-boot case."""
    return config.registration_id is not None and not config.cert_chain_path.exists()


def _adopt_owner(path: Path, state_dir: Path | None) -> None:
    """As root, give ``path`` to the service account (the owner of ``state_dir``), else to
    the owner and group of its directory. ``/etc/device-agent`` is root's (group
    device-agent): a key made there by root must still be the service's to read."""
    if os.geteuid() != 0:
        return
    if state_dir is not None:
        from agent.store.service_user import service_account

        account = service_account(state_dir)
        if account is not None:
            os.chown(path, account.uid, account.gid)
            return
    parent = os.stat(path.parent)
    os.chown(path, parent.st_uid, parent.st_gid)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, mode: int, state_dir: Path | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        _adopt_owner(Path(tmp), state_dir)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def create_key(
    config: IdentityConfig, *, replace: bool = False, state_dir: Path | None = None
) -> bool:
    """Make the configured key if there is none (or ``replace``); True if one was made.

    ``state_dir``: run as root, the new key becomes the service account's (its owner)."""
    path = config.key_path
    if path.exists() and not replace:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    if config.keystore == "tpm":
        from agent.identity.tpm import create_tpm_key

        create_tpm_key(config, path)
        _adopt_owner(path, state_dir)
        return True
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(path, pem, 0o600, state_dir)
    return True


def _registration_id(config: IdentityConfig) -> str:
    if config.registration_id is None:
        raise KeystoreError(
            "a CSR needs the registration id",
            fix="set identity.registration_id (the CSR's CN)",
        )
    return config.registration_id


def write_csr_for(config: IdentityConfig, path: Path | None = None) -> Path:
    """Write the CSR for the configured key (CN = registration id); return its path."""
    target = path or config.csr_path
    write_csr(target, make_csr(config, _registration_id(config)))
    _adopt_owner(target, None)
    return target


def first_boot(config: IdentityConfig, *, state_dir: Path | None = None) -> IdentityPendingError:
    """Key (made if missing) and CSR for a device without a certificate; the wait's reason.

    A CSR already written for the existing key (by ``import-identity``, which runs as
    root before the service: the service itself may not write the boot partition) is
    kept. ``state_dir``: as in :func:`create_key`.
    """
    created = create_key(config, state_dir=state_dir)
    csr = config.csr_path
    if created or not csr.exists():
        csr = write_csr_for(config)
    where = "in the TPM" if config.keystore == "tpm" else f"at {config.key_path}"
    return IdentityPendingError(
        f"no certificate yet: CSR for {config.registration_id!r} written to {csr} "
        f"({'new ' if created else ''}key {where})",
        path=config.cert_chain_path,
        fix="have the CSR signed, then: device-agent keys install-cert FILE",
    )


def install_certificate(config: IdentityConfig, source: Path, *, now: datetime) -> Path:
    """Check ``source`` (a PEM chain, leaf first) against the key and anchors; install it."""
    from cryptography.hazmat.primitives import serialization

    from agent.identity.file_keystore import (
        _check_chain,
        _check_validity,
        _common_name,
        _public_der,
        _read_certificates,
        _validity,
    )

    chain = _read_certificates(source, what="certificate chain")
    leaf = chain[0]
    not_before, not_after = _validity(leaf)
    _check_validity(source, not_before, not_after, now)
    if config.trust_anchor_paths:
        anchors = [
            c for p in config.trust_anchor_paths for c in _read_certificates(p, what="anchor")
        ]
        _check_chain(source, chain, anchors, now)
    name = _common_name(leaf)
    if config.registration_id is not None and name != config.registration_id:
        raise CertificateInvalidError(
            f"the certificate's CN is {name!r}, not the registration id {config.registration_id!r}",
            path=source,
        )
    if config.keystore == "tpm":
        from agent.identity.tpm import probe_key

        probe_key(config, source)
    else:
        key = serialization.load_pem_private_key(config.key_path.read_bytes(), password=None)
        if _public_der(key.public_key()) != _public_der(leaf.public_key()):
            raise CertificateInvalidError(
                "the certificate does not belong to this device's key", path=source
            )
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    _write_atomic(config.cert_chain_path, pem, 0o644)
    return config.cert_chain_path


def describe(config: IdentityConfig, *, now: datetime) -> dict[str, object]:
    """The keystore, the key and the certificate, as ``keys show`` prints them."""
    from agent.identity.tpm import is_tss2_blob

    key = config.key_path
    info: dict[str, object] = {
        "keystore": config.keystore,
        "keyPath": str(key),
        "keyPresent": key.exists(),
        "keyKind": "tss2 (TPM, not exportable)"
        if is_tss2_blob(key)
        else ("pem" if key.exists() else None),
        "certChainPath": str(config.cert_chain_path),
        "csrPath": str(config.csr_path),
        "csrPresent": config.csr_path.exists(),
        "registrationId": config.registration_id,
    }
    if config.keystore == "tpm":
        info["tpmTcti"] = config.tpm_tcti
    if config.cert_chain_path.exists():
        from agent.identity.file_keystore import _common_name, _read_certificates, thumbprint

        leaf = _read_certificates(config.cert_chain_path, what="certificate chain")[0]
        left = leaf.not_valid_after_utc - now
        info["certificate"] = {
            "subject": leaf.subject.rfc4514_string(),
            "commonName": _common_name(leaf),
            "issuer": leaf.issuer.rfc4514_string(),
            "notBefore": leaf.not_valid_before_utc.isoformat(),
            "notAfter": leaf.not_valid_after_utc.isoformat(),
            "daysLeft": round(left.total_seconds() / 86400, 1),
            "thumbprint": thumbprint(leaf),
        }
    return info


def operational_csr(
    config: IdentityConfig, registration_id: str, key_path: Path | None = None
) -> str:
    """The CSR (base64 DER) for the operational key, made first if there is none.

    ``key_path``: a renewal's candidate key instead, always made new.
    """
    import dataclasses

    from agent.identity.child import operational_config
    from agent.identity.csr import csr_base64

    operational = operational_config(config)
    if key_path is not None:
        operational = dataclasses.replace(operational, key_path=key_path)
    create_key(operational, replace=key_path is not None)
    return csr_base64(make_csr(operational, registration_id))


def _main(argv: list[str]) -> int:
    """``python -m agent.identity.enroll CONFIG``: first boot in a child; JSON on stdout.

    ``--operational-csr REGID CONFIG``: the CSR of the operational key instead.
    """
    answer: dict[str, object]
    try:
        if argv and argv[0] == "--operational-csr":
            # --operational-csr REGID CONFIG [KEY]: KEY = a renewal's new key
            config = load_config(Path(argv[2])).identity
            key = Path(argv[3]) if len(argv) > 3 else None
            answer = {"csr": operational_csr(config, argv[1], key)}
            sys.stdout.write(json.dumps(answer))
            return 0
        config = load_config(Path(argv[0])).identity
        pending = first_boot(config)
        answer = {"pending": pending.message, "path": str(pending.path), "fix": pending.fix}
    except AgentError as exc:
        answer = {"error": str(exc)}
    except (IndexError, OSError) as exc:
        answer = {"error": f"first boot failed: {exc}"}
    sys.stdout.write(json.dumps(answer))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
