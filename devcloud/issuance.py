"""Certificate issuance from a device's CSR, shared by DPS and the hubs' renewal endpoint.

Theory of operation. A device sends a PKCS#10 CSR as base64 DER (no PEM armour, at
most 8 KiB of text). :func:`decode_csr` checks the text (type, size, strict base64);
:func:`check_csr` parses the DER with ``cryptography`` (which refuses malformed
encodings, such as the NULL parameters tpm2-openssl 1.3.0 puts in the outer
signatureAlgorithm), verifies the self-signature, requires the subject CN to be exactly
the expected id (the DPS registration id, the hub's device id), and accepts a sane key:
EC P-256 / P-384 or RSA of at least 2048 bits. (Azure's preview accepts EC P-384 only;
devcloud is wider so that P-256 TPMs can be tested.) Each failure is a
:class:`CsrError` (400) whose ``error_code`` the caller chooses.

:class:`Issuer` signs a checked CSR with the issuing CA of a credential policy
(:meth:`devcloud.pki.PKI.issuing_ca`) for the policy's validity, records the
certificate in the registry, and returns the chain as Azure does: base64 DER, leaf
first, then the issuing CA and the root.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from devcloud.enrollment_match import common_name, thumbprint
from devcloud.errors import InvalidRequestError
from devcloud.model import CredentialPolicy, IssuedCertificate, IssuedVia, utc_iso
from devcloud.pki import PKI
from devcloud.registry import Registry

#: The largest CSR accepted, in characters of base64 (Azure: "max 8KB").
MAX_CSR_CHARS = 8 * 1024
#: The DPS api-version that knows the ``csr`` field.
ISSUANCE_API_VERSION = "2025-07-01-preview"
MIN_RSA_BITS = 2048
ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1)


class CsrError(InvalidRequestError):
    """A CSR that cannot be signed; the message says why."""


def decode_csr(value: object, *, error_code: int = 400004) -> bytes:
    """The DER bytes of a ``csr`` field: a non-empty base64 string of at most 8 KiB."""
    if not isinstance(value, str) or not value:
        raise CsrError("the 'csr' field is missing or not a string", error_code=error_code)
    if len(value) > MAX_CSR_CHARS:
        raise CsrError(f"the 'csr' field exceeds {MAX_CSR_CHARS} characters", error_code=error_code)
    if "-----BEGIN" in value:
        raise CsrError(
            "the 'csr' field must be base64 DER without PEM armour", error_code=error_code
        )
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CsrError("the 'csr' field is not valid base64", error_code=error_code) from None


def check_csr(
    der: bytes, expected_cn: str, *, error_code: int = 400004
) -> x509.CertificateSigningRequest:
    """The parsed CSR, if it is well formed, self-signed, for ``expected_cn``, with a sane key."""
    try:
        csr = x509.load_der_x509_csr(der)
    except ValueError as exc:
        raise CsrError(f"the CSR is not valid DER PKCS#10: {exc}", error_code=error_code) from None
    try:
        valid = csr.is_signature_valid
    except (ValueError, TypeError) as exc:
        raise CsrError(
            f"the CSR's signature cannot be checked: {exc}", error_code=error_code
        ) from None
    if not valid:
        raise CsrError("the CSR's signature does not verify", error_code=error_code)
    cn = common_name_of(csr)
    if cn != expected_cn:
        raise CsrError(
            f"the CSR's CN is {cn!r}, not the registration id {expected_cn!r}",
            error_code=error_code,
        )
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ACCEPTED_CURVES):
            raise CsrError(
                f"EC curve {key.curve.name} is not accepted (P-256 or P-384)",
                error_code=error_code,
            )
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CsrError(
                f"RSA key of {key.key_size} bits is too small (at least {MIN_RSA_BITS})",
                error_code=error_code,
            )
    else:
        raise CsrError(f"key type {type(key).__name__} is not accepted", error_code=error_code)
    return csr


def common_name_of(csr: x509.CertificateSigningRequest) -> str | None:
    """The CSR subject's CN, or None."""
    attrs = csr.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    if len(attrs) != 1:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode(errors="replace")


def b64_der(cert: x509.Certificate) -> str:
    """A certificate as base64 DER (the wire form of ``issuedCertificateChain``)."""
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


@dataclass(frozen=True)
class Issuer:
    """Signs checked CSRs with a credential policy's CA and records what it signed."""

    pki: PKI
    registry: Registry

    def issue(
        self,
        csr: x509.CertificateSigningRequest,
        policy: CredentialPolicy,
        *,
        registration_id: str,
        device_id: str,
        hub: str,
        via: IssuedVia,
        refused: bool = False,
    ) -> list[x509.Certificate]:
        """Sign ``csr``; return the chain leaf, issuing CA, root."""
        ca = self.pki.issuing_ca(policy.name)
        leaf = self.pki.sign_csr(csr, ca, validity=timedelta(days=policy.validity_days))
        self.registry.record_issued(
            IssuedCertificate(
                thumbprint=thumbprint(leaf),
                serial=format(leaf.serial_number, "X"),
                registration_id=registration_id,
                device_id=device_id,
                hub=hub,
                policy=policy.name,
                not_before=utc_iso(leaf.not_valid_before_utc),
                not_after=utc_iso(leaf.not_valid_after_utc),
                via=via,
                issued=self.registry.now(),
                refused=refused,
            )
        )
        assert common_name(leaf) == common_name_of(csr)
        return [leaf, ca.cert, self.pki.root]
