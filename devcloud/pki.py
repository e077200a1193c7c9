"""devcloud's test PKI: a root CA, an intermediate CA, device and server certificates, CRLs.

Theory of operation
-------------------
A :class:`PKI` lives in one directory. :meth:`PKI.create` loads the CA found there, or
makes a new one (root -> intermediate) in a temporary folder and renames it into place,
so a killed run never leaves half a CA behind. Every mutation (creating the CA, issuing,
revoking) holds an exclusive ``flock`` on ``<dir>/.lock``, so several processes (a test,
the ``devcloud pki`` CLI, a running devcloud) can share one directory.

Issued identities are never silently overwritten: without ``file_stem`` a device or
server gets the first free stem among ``name``, ``name-2``, ``name-3``...; an explicit
``file_stem`` replaces what was there. Every file is written to a temporary name and
renamed; private keys are created with mode 0600 before any byte is written.

Revocation state is the CRLs themselves: :meth:`PKI.revoke` reads the issuing CA's CRL,
adds the serial number and re-signs it with the next CRL number; :meth:`PKI.is_revoked`
reads the CRLs from disk on each call, so a revocation made by another process is seen.
Each CA always has a CRL (possibly empty) valid for :data:`CRL_VALIDITY`, which is what
OpenSSL needs for ``VERIFY_CRL_CHECK_CHAIN``. A TLS context loads CRLs once: after a
revocation, build a new context.

Negative cases for tests: ``not_after`` in the past (expired), ``not_before`` in the
future (not yet valid), ``cn=`` (a CN other than the registration id),
``signer="root"`` (no intermediate), a second ``PKI.create(other_dir, name="rogue")``
(an unknown CA), and :meth:`PKI.revoke`.

Layout of the directory::

    .lock                         flock held while creating, issuing, revoking
    ca/root.pem                   root CA certificate
    ca/root.key                   root CA private key (0600)
    ca/intermediate.pem           intermediate CA certificate (signed by the root)
    ca/intermediate.key           intermediate CA private key (0600)
    ca/ca-bundle.pem              root + intermediate, for trust stores
    ca/root.crl.pem               CRL signed by the root (certs the root issued)
    ca/intermediate.crl.pem       CRL signed by the intermediate
    devices/<stem>.pem            device certificate (leaf only)
    devices/<stem>.chain.pem      leaf + intermediate (leaf only if signed by the root)
    devices/<stem>.key            device private key (0600, optionally encrypted)
    servers/<stem>.pem            server certificate; .chain.pem and .key as for devices
    policies/<name>/ca.pem        issuing CA of a credential policy (P-384, signed by the root)
    policies/<name>/ca.key        its private key (0600)
    policies/<name>/ca.crl.pem    its CRL

Credential policies (certificate issuance from CSRs, as Azure Device Registry's policies
do it): :meth:`PKI.issuing_ca` creates or loads the issuing CA of one policy (created
once, atomically, like the root; never replaced), and :meth:`PKI.sign_csr` signs a
checked CSR with it. Its CRL joins :attr:`PKI.crl_paths`, and :meth:`PKI.is_revoked`
and :meth:`PKI.revoke` know its certificates.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devcloud.errors import DevCloudError

KeyType = Literal["ec", "rsa"]
Signer = Literal["intermediate", "root"]
Clock = Callable[[], datetime]
CAPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

#: Validity of the CAs, of leaves by default, and of each CRL issue.
CA_VALIDITY = timedelta(days=3650)
LEAF_VALIDITY = timedelta(days=365)
CRL_VALIDITY = timedelta(days=30)
#: Leaf ``not_before`` and CRL ``last_update`` are set this far back, for clock skew.
BACKDATE = timedelta(minutes=5)
#: CAs start this far back, so an expired leaf still lay inside its CA's lifetime
#: (only the leaf is wrong in the negative cases, never the chain).
CA_BACKDATE = timedelta(days=365)
#: Bound on the search for a free file stem.
MAX_STEMS = 10_000

_UNSAFE_STEM = re.compile(r"[^A-Za-z0-9._-]")


class PKIError(DevCloudError):
    """Root of the errors :mod:`devcloud.pki` raises (part of devcloud's hierarchy)."""


class PKIMismatchError(PKIError, ValueError):
    """The directory holds a CA of another name, or an unreadable one."""


class ForeignCertificateError(PKIError, ValueError):
    """The certificate was not issued by this PKI's root or intermediate."""


class ValidityWindowError(PKIError, ValueError):
    """``not_after`` is not later than ``not_before``."""


@dataclass(frozen=True)
class Issued:
    """A certificate this PKI issued and the files it wrote for it."""

    cert: x509.Certificate
    #: The leaf only (PEM).
    cert_path: Path
    #: Leaf + intermediate(s) (PEM): what a device or server presents.
    chain_path: Path
    #: PEM private key, mode 0600.
    key_path: Path

    @property
    def thumbprint(self) -> str:
        """SHA-256 of the DER certificate, hex upper-case, as the Azure portal shows it."""
        return thumbprint(self.cert)


@dataclass(frozen=True)
class IssuingCA:
    """The issuing CA of one credential policy (signed by the root)."""

    name: str
    cert: x509.Certificate
    cert_path: Path
    crl_path: Path
    key: CAPrivateKey = field(repr=False)


def thumbprint(cert: x509.Certificate) -> str:
    """SHA-256 of ``cert``'s DER encoding, hex upper-case."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _whole_seconds(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: give a timezone-aware one")
    return moment.astimezone(UTC).replace(microsecond=0)


def _new_key(key_type: KeyType) -> CAPrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r} (expected 'ec' or 'rsa')")


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via a temporary file created with ``mode``, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _key_pem(key: CAPrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def _load_ca_key(path: Path) -> CAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PKIMismatchError(f"{path}: unsupported CA key type {type(key).__name__}")
    return key


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a+b") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _ski(key: CAPrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def _aki(issuer_key: CAPrivateKey) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())


def _ca_certificate(
    subject: x509.Name,
    *,
    key: CAPrivateKey,
    issuer: x509.Name,
    issuer_key: CAPrivateKey,
    path_length: int,
    now: datetime,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CA_BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_ski(key), critical=False)
    )
    if issuer_key is not key:
        builder = builder.add_extension(_aki(issuer_key), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _empty_crl(
    issuer: x509.Certificate, issuer_key: CAPrivateKey, now: datetime
) -> x509.CertificateRevocationList:
    return _sign_crl(issuer, issuer_key, [], number=1, now=now)


def _sign_crl(
    issuer: x509.Certificate,
    issuer_key: CAPrivateKey,
    revoked: Sequence[x509.RevokedCertificate],
    number: int,
    now: datetime,
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(now - BACKDATE)
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_aki(issuer_key), critical=False)
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(issuer_key, hashes.SHA256())


class PKI:
    """A two-level test CA in one directory; see the module docstring for the layout."""

    root: x509.Certificate
    root_path: Path
    intermediate: x509.Certificate
    intermediate_path: Path
    ca_bundle_path: Path

    def __init__(
        self,
        directory: Path,
        name: str,
        root_key: CAPrivateKey,
        intermediate_key: CAPrivateKey,
        clock: Clock,
    ) -> None:
        """Use :meth:`create`; this binds an already loaded CA."""
        self.directory = directory
        self.name = name
        self._clock = clock
        ca = directory / "ca"
        self.root_path = ca / "root.pem"
        self.intermediate_path = ca / "intermediate.pem"
        self.ca_bundle_path = ca / "ca-bundle.pem"
        self.root_crl_path = ca / "root.crl.pem"
        self.intermediate_crl_path = ca / "intermediate.crl.pem"
        self.policies_dir = directory / "policies"
        self._issuing_cas: dict[str, IssuingCA] = {}
        self.root = x509.load_pem_x509_certificate(self.root_path.read_bytes())
        self.intermediate = x509.load_pem_x509_certificate(self.intermediate_path.read_bytes())
        self._root_key = root_key
        self._intermediate_key = intermediate_key

    @property
    def crl_paths(self) -> list[Path]:
        """One CRL per CA (root, intermediate, then each policy's issuing CA), PEM."""
        return [
            self.root_crl_path,
            self.intermediate_crl_path,
            *(ca.crl_path for ca in self.issuing_cas()),
        ]

    # ----------------------------------------------------------------- creation

    @classmethod
    def create(
        cls,
        directory: Path,
        name: str = "devcloud",
        *,
        key_type: KeyType = "ec",
        clock: Clock = _utc_now,
    ) -> PKI:
        """Load the CA in ``directory``, or create it there (idempotent, process-safe).

        ``name`` goes into the CA subjects (``"<name> Root CA"``); loading a directory
        made under another name raises :class:`PKIMismatchError`. ``key_type`` applies
        only when the CA is created. ``clock`` gives the current time for everything
        this PKI signs.
        """
        directory = Path(directory)
        ca = directory / "ca"
        with _locked(directory):
            if not ca.is_dir():
                cls._build_ca(directory, name, key_type, clock())
            try:
                root_key = _load_ca_key(ca / "root.key")
                intermediate_key = _load_ca_key(ca / "intermediate.key")
                pki = cls(directory, name, root_key, intermediate_key, clock)
            except (OSError, ValueError) as exc:
                raise PKIMismatchError(f"{ca}: not a usable devcloud CA: {exc}") from exc
        expected = _ca_name(name, "Root CA")
        if pki.root.subject != expected:
            raise PKIMismatchError(
                f"{ca} holds the CA {pki.root.subject.rfc4514_string()!r}, "
                f"not {expected.rfc4514_string()!r}"
            )
        return pki

    @staticmethod
    def _build_ca(directory: Path, name: str, key_type: KeyType, now: datetime) -> None:
        now = _whole_seconds(now)
        staging = Path(tempfile.mkdtemp(prefix=".ca-", dir=directory))
        try:
            root_key = _new_key(key_type)
            root_name = _ca_name(name, "Root CA")
            root = _ca_certificate(
                root_name,
                key=root_key,
                issuer=root_name,
                issuer_key=root_key,
                path_length=1,
                now=now,
            )
            intermediate_key = _new_key(key_type)
            intermediate = _ca_certificate(
                _ca_name(name, "Intermediate CA"),
                key=intermediate_key,
                issuer=root_name,
                issuer_key=root_key,
                path_length=0,
                now=now,
            )
            _write_atomic(staging / "root.key", _key_pem(root_key), 0o600)
            _write_atomic(staging / "intermediate.key", _key_pem(intermediate_key), 0o600)
            _write_atomic(staging / "root.pem", _cert_pem(root))
            _write_atomic(staging / "intermediate.pem", _cert_pem(intermediate))
            _write_atomic(staging / "ca-bundle.pem", _cert_pem(root, intermediate))
            for stem, cert, key in (
                ("root", root, root_key),
                ("intermediate", intermediate, intermediate_key),
            ):
                crl = _empty_crl(cert, key, now)
                _write_atomic(
                    staging / f"{stem}.crl.pem", crl.public_bytes(serialization.Encoding.PEM)
                )
            staging.chmod(0o755)
            os.rename(staging, directory / "ca")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    # ----------------------------------------------------------------- issuing

    def issue_device(
        self,
        registration_id: str,
        *,
        cn: str | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        signer: Signer = "intermediate",
        key_passphrase: bytes | None = None,
        file_stem: str | None = None,
        key_type: KeyType = "ec",
    ) -> Issued:
        """Issue a device certificate: CN = ``cn`` or the registration id, clientAuth EKU.

        ``not_before`` defaults to a few minutes ago, ``not_after`` to a year after
        ``not_before``. Past ``not_after`` gives an expired certificate, future
        ``not_before`` one not yet valid. ``signer="root"`` skips the intermediate (the
        chain file then holds the leaf only). ``key_passphrase`` encrypts the key file.
        """
        if not registration_id:
            raise ValueError("registration_id must not be empty")
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or registration_id)])
        return self._issue(
            "devices",
            file_stem or registration_id,
            explicit_stem=file_stem is not None,
            subject=subject,
            eku=ExtendedKeyUsageOID.CLIENT_AUTH,
            sans=[],
            not_before=not_before,
            not_after=not_after,
            signer=signer,
            key_passphrase=key_passphrase,
            key_type=key_type,
        )

    def issue_server(
        self,
        name: str,
        *,
        ip_addresses: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        file_stem: str | None = None,
        key_type: KeyType = "ec",
    ) -> Issued:
        """Issue a TLS server certificate (serverAuth EKU) for ``name`` with these SANs.

        ``name`` is the CN; it is also added as a DNS SAN when it is not an IP address
        and no SAN was given, so hostname checks work by name.
        """
        if not name:
            raise ValueError("server name must not be empty")
        sans: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses
        ]
        sans += [x509.DNSName(dns) for dns in dns_names]
        if not sans:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        return self._issue(
            "servers",
            file_stem or name,
            explicit_stem=file_stem is not None,
            subject=subject,
            eku=ExtendedKeyUsageOID.SERVER_AUTH,
            sans=sans,
            not_before=None,
            not_after=None,
            signer="intermediate",
            key_passphrase=None,
            key_type=key_type,
        )

    def _issue(
        self,
        kind: str,
        stem: str,
        *,
        explicit_stem: bool,
        subject: x509.Name,
        eku: x509.ObjectIdentifier,
        sans: list[x509.GeneralName],
        not_before: datetime | None,
        not_after: datetime | None,
        signer: Signer,
        key_passphrase: bytes | None,
        key_type: KeyType,
    ) -> Issued:
        if signer == "intermediate":
            issuer, issuer_key = self.intermediate, self._intermediate_key
        elif signer == "root":
            issuer, issuer_key = self.root, self._root_key
        else:
            raise ValueError(f"unknown signer {signer!r} (expected 'intermediate' or 'root')")
        start = _whole_seconds(not_before or self._clock() - BACKDATE)
        end = _whole_seconds(not_after) if not_after else start + LEAF_VALIDITY
        if end <= start:
            raise ValidityWindowError(f"not_after {end} is not later than not_before {start}")
        key = _new_key(key_type)
        rsa_key = isinstance(key, rsa.RSAPrivateKey)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=rsa_key,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(_ski(key), critical=False)
            .add_extension(_aki(issuer_key), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(issuer_key, hashes.SHA256())
        chain = (cert, self.intermediate) if signer == "intermediate" else (cert,)
        folder = self.directory / kind
        with _locked(self.directory):
            stem = self._free_stem(folder, stem, explicit=explicit_stem)
            key_path = folder / f"{stem}.key"
            _write_atomic(key_path, _key_pem(key, key_passphrase), 0o600)
            cert_path = folder / f"{stem}.pem"
            chain_path = folder / f"{stem}.chain.pem"
            _write_atomic(chain_path, _cert_pem(*chain))
            _write_atomic(cert_path, _cert_pem(cert))
        return Issued(cert=cert, cert_path=cert_path, chain_path=chain_path, key_path=key_path)

    @staticmethod
    def _free_stem(folder: Path, wanted: str, *, explicit: bool) -> str:
        base = _UNSAFE_STEM.sub("_", wanted)
        if base in {"", ".", ".."}:
            raise ValueError(f"cannot make a file name from {wanted!r}")
        if explicit:
            return base
        for index in range(1, MAX_STEMS + 1):
            stem = base if index == 1 else f"{base}-{index}"
            if not (folder / f"{stem}.pem").exists() and not (folder / f"{stem}.key").exists():
                return stem
        raise PKIError(f"{folder}: no free file name for {wanted!r} in {MAX_STEMS} tries")

    # ----------------------------------------------------------------- credential policies

    def issuing_ca(self, policy: str) -> IssuingCA:
        """The issuing CA of credential policy ``policy``, created on first use."""
        stem = _UNSAFE_STEM.sub("_", policy)
        if not policy or stem in {".", ".."}:
            raise ValueError(f"cannot make a CA directory name from {policy!r}")
        known = self._issuing_cas.get(stem)
        if known is not None:
            return known
        folder = self.policies_dir / stem
        with _locked(self.directory):
            if not (folder / "ca.pem").is_file():
                self._build_issuing_ca(folder, policy)
        return self._load_issuing_ca(folder)

    def _build_issuing_ca(self, folder: Path, policy: str) -> None:
        now = _whole_seconds(self._clock())
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".policy-", dir=folder.parent))
        try:
            key = ec.generate_private_key(ec.SECP384R1())
            cert = _ca_certificate(
                _ca_name(self.name, f"Issuing CA {policy}"),
                key=key,
                issuer=self.root.subject,
                issuer_key=self._root_key,
                path_length=0,
                now=now,
            )
            _write_atomic(staging / "ca.key", _key_pem(key), 0o600)
            _write_atomic(staging / "ca.pem", _cert_pem(cert))
            crl = _empty_crl(cert, key, now)
            _write_atomic(staging / "ca.crl.pem", crl.public_bytes(serialization.Encoding.PEM))
            staging.chmod(0o755)
            os.rename(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _load_issuing_ca(self, folder: Path) -> IssuingCA:
        try:
            found = IssuingCA(
                name=folder.name,
                cert=x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes()),
                cert_path=folder / "ca.pem",
                crl_path=folder / "ca.crl.pem",
                key=_load_ca_key(folder / "ca.key"),
            )
        except (OSError, ValueError) as exc:
            raise PKIMismatchError(f"{folder}: not a usable issuing CA: {exc}") from exc
        self._issuing_cas[folder.name] = found
        return found

    def issuing_cas(self) -> list[IssuingCA]:
        """Every policy's issuing CA on disk (made by this or another process), by name."""
        if not self.policies_dir.is_dir():
            return []
        found = []
        for folder in sorted(self.policies_dir.iterdir()):
            if folder.name.startswith(".") or not (folder / "ca.pem").is_file():
                continue
            known = self._issuing_cas.get(folder.name)
            found.append(known if known is not None else self._load_issuing_ca(folder))
        return found

    def sign_csr(
        self,
        csr: x509.CertificateSigningRequest,
        ca: IssuingCA,
        *,
        validity: timedelta,
        not_before: datetime | None = None,
    ) -> x509.Certificate:
        """A clientAuth leaf for ``csr``'s subject and key, signed by ``ca`` (SHA-384).

        The CSR must already be checked (signature, subject, key): this only signs.
        """
        start = _whole_seconds(not_before or self._clock() - BACKDATE)
        end = start + validity
        if end <= start:
            raise ValidityWindowError(f"validity {validity} is not positive")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise ValueError(f"unsupported CSR key type {type(public_key).__name__}")
        builder = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(ca.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
            .add_extension(_aki(ca.key), critical=False)
        )
        return builder.sign(ca.key, hashes.SHA384())

    # ----------------------------------------------------------------- revocation

    def _issuing_ca(
        self, cert: x509.Certificate
    ) -> tuple[x509.Certificate, CAPrivateKey, Path] | None:
        candidates = [
            (self.intermediate, self._intermediate_key, self.intermediate_crl_path),
            (self.root, self._root_key, self.root_crl_path),
            *((ca.cert, ca.key, ca.crl_path) for ca in self.issuing_cas()),
        ]
        for ca, key, crl_path in candidates:
            if cert.issuer != ca.subject:
                continue
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return ca, key, crl_path
        return None

    def _load_crl(self, path: Path) -> x509.CertificateRevocationList:
        return x509.load_pem_x509_crl(path.read_bytes())

    def revoke(self, cert: x509.Certificate) -> None:
        """Add ``cert`` to its issuing CA's CRL and re-sign the CRL on disk.

        Raises :class:`ForeignCertificateError` for a certificate this PKI did not
        issue. Revoking twice is harmless.
        """
        found = self._issuing_ca(cert)
        if found is None:
            raise ForeignCertificateError(
                f"{cert.subject.rfc4514_string()} (issuer {cert.issuer.rfc4514_string()}) "
                f"was not issued by {self.name!r}"
            )
        ca, key, crl_path = found
        with _locked(self.directory):
            crl = self._load_crl(crl_path)
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                return
            now = _whole_seconds(self._clock())
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(now)
                .build()
            )
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
            updated = _sign_crl(ca, key, [*crl, entry], number=number + 1, now=now)
            _write_atomic(crl_path, updated.public_bytes(serialization.Encoding.PEM))

    def is_revoked(self, cert: x509.Certificate) -> bool:
        """True if ``cert`` is on the CRL (as now on disk) of the CA that issued it."""
        found = self._issuing_ca(cert)
        if found is None:
            return False
        crl = self._load_crl(found[2])
        return crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


def _ca_name(name: str, role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} {role}"),
        ]
    )


# --------------------------------------------------------------------- command line


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``pki`` sub-command tree (init, device, server, revoke) to ``subparsers``.

    Every leaf parser sets ``func=`` (``func(args) -> int``) and accepts ``--json``.
    """
    pki_parser = subparsers.add_parser(
        "pki", help="test PKI: CA, device and server certificates, CRLs"
    )
    pki_parser.set_defaults(func=lambda _args: _print_help(pki_parser))
    commands = pki_parser.add_subparsers(dest="pki_command", metavar="COMMAND")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dir", required=True, type=Path, help="PKI directory")
        parser.add_argument("--json", action="store_true", help="print a JSON object")

    init = commands.add_parser("init", help="create the CA (or load the existing one)")
    common(init)
    init.add_argument("--name", default="devcloud", help="CA name (default: devcloud)")
    init.add_argument("--rsa", action="store_true", help="RSA-2048 CA keys instead of P-256")
    init.set_defaults(func=_guarded(_cmd_init))

    device = commands.add_parser("device", help="issue a device certificate")
    device.add_argument("registration_id", metavar="REGID")
    common(device)
    device.add_argument("--days", type=int, default=365, help="validity in days")
    window = device.add_mutually_exclusive_group()
    window.add_argument("--expired", action="store_true", help="validity ended yesterday")
    window.add_argument("--not-yet-valid", action="store_true", help="validity starts tomorrow")
    device.add_argument("--cn", help="CN other than the registration id")
    device.add_argument("--signer", choices=["intermediate", "root"], default="intermediate")
    device.add_argument("--file-stem", help="file name stem (replaces existing files)")
    device.add_argument("--rsa", action="store_true", help="RSA-2048 key instead of P-256")
    device.set_defaults(func=_guarded(_cmd_device))

    server = commands.add_parser("server", help="issue a TLS server certificate")
    server.add_argument("name", metavar="NAME")
    common(server)
    server.add_argument("--ip", action="append", default=[], help="IP SAN (repeatable)")
    server.add_argument("--dns", action="append", default=[], help="DNS SAN (repeatable)")
    server.add_argument("--file-stem", help="file name stem (replaces existing files)")
    server.set_defaults(func=_guarded(_cmd_server))

    revoke = commands.add_parser("revoke", help="revoke a certificate (updates the CRL)")
    revoke.add_argument("pem", metavar="PEM", type=Path, help="certificate to revoke")
    common(revoke)
    revoke.set_defaults(func=_guarded(_cmd_revoke))


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the errors a user can cause into a message on stderr and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (PKIError, ValueError, OSError) as exc:
            print(f"devcloud pki: error: {exc}", file=sys.stderr)
            return 1

    return run


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _emit(args: argparse.Namespace, fields: dict[str, str | list[str]]) -> int:
    if args.json:
        print(json.dumps(fields, sort_keys=True))
    else:
        for key, value in fields.items():
            print(f"{key}: {' '.join(value) if isinstance(value, list) else value}")
    return 0


def _ca_fields(pki: PKI) -> dict[str, str | list[str]]:
    return {
        "root": str(pki.root_path),
        "intermediate": str(pki.intermediate_path),
        "ca_bundle": str(pki.ca_bundle_path),
        "crls": [str(path) for path in pki.crl_paths],
    }


def _issued_fields(issued: Issued) -> dict[str, str | list[str]]:
    return {
        "cert": str(issued.cert_path),
        "chain": str(issued.chain_path),
        "key": str(issued.key_path),
        "thumbprint": issued.thumbprint,
        "not_before": issued.cert.not_valid_before_utc.isoformat(),
        "not_after": issued.cert.not_valid_after_utc.isoformat(),
    }


def _cmd_init(args: argparse.Namespace) -> int:
    pki = PKI.create(args.dir, args.name, key_type="rsa" if args.rsa else "ec")
    return _emit(args, _ca_fields(pki))


def _open(args: argparse.Namespace) -> PKI:
    """Load the PKI in ``--dir`` under whatever name it was created with."""
    directory: Path = args.dir
    root_path = directory / "ca" / "root.pem"
    if not root_path.is_file():
        raise PKIMismatchError(f"{directory}: no CA here (run `devcloud pki init --dir ...`)")
    root = x509.load_pem_x509_certificate(root_path.read_bytes())
    names = root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return PKI.create(directory, str(names[0].value) if names else "devcloud")


def _cmd_device(args: argparse.Namespace) -> int:
    pki = _open(args)
    now = _utc_now()
    validity = timedelta(days=args.days)
    if validity <= timedelta(0):
        raise ValidityWindowError(f"--days must be positive, not {args.days}")
    if args.expired:
        not_before, not_after = now - validity - timedelta(days=1), now - timedelta(days=1)
    elif args.not_yet_valid:
        not_before = now + timedelta(days=1)
        not_after = not_before + validity
    else:
        not_before, not_after = now - BACKDATE, now + validity
    issued = pki.issue_device(
        args.registration_id,
        cn=args.cn,
        not_before=not_before,
        not_after=not_after,
        signer=args.signer,
        file_stem=args.file_stem,
        key_type="rsa" if args.rsa else "ec",
    )
    return _emit(args, _issued_fields(issued))


def _cmd_server(args: argparse.Namespace) -> int:
    pki = _open(args)
    issued = pki.issue_server(
        args.name, ip_addresses=args.ip, dns_names=args.dns, file_stem=args.file_stem
    )
    return _emit(args, _issued_fields(issued))


def _cmd_revoke(args: argparse.Namespace) -> int:
    pki = _open(args)
    cert = x509.load_pem_x509_certificate(Path(args.pem).read_bytes())
    pki.revoke(cert)
    return _emit(
        args,
        {"revoked": thumbprint(cert), "serial": f"{cert.serial_number:X}", **_ca_fields(pki)},
    )
