"""Which enrollment a device's certificate chain falls under, as DPS decides it.

Rules, in order:

1. An individual enrollment wins over any group. It matches when its registration id is
   the device's, or when its listed leaf thumbprints include the device's leaf. A matching
   individual enrollment that is disabled, or that lists thumbprints not including the
   leaf, refuses the device (401) — even if a group would take it.
2. A group matches when its signing certificate (a root or an intermediate CA) is in the
   device's verified chain, or directly signed the top of that chain. Of several matching
   groups the one whose CA sits closest to the leaf wins (an intermediate's group beats
   its root's), then the smallest group id. A disabled winner refuses the device (401).
3. Nothing matches: 404.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from devcloud.errors import NotFoundError, UnauthorizedError
from devcloud.model import Enrollment, EnrollmentGroup, IndividualEnrollment


def thumbprint(cert: x509.Certificate) -> str:
    """Upper-case hex SHA-256 of the DER certificate (Azure's sha256Thumbprint)."""
    return cert.fingerprint(hashes.SHA256()).hex().upper()


def common_name(cert: x509.Certificate) -> str | None:
    """The subject CN, or None if the certificate has none."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode(errors="replace")


#: Whether a leaf certificate is revoked (devcloud passes :meth:`devcloud.pki.PKI.is_revoked`).
RevocationCheck = Callable[[x509.Certificate], bool]


def leaf_accepted(
    chain: Sequence[x509.Certificate], client_id: str, is_revoked: RevocationCheck | None
) -> bool:
    """Whether the verified chain's leaf names ``client_id`` as its CN and is not revoked.

    Both endpoints answer CONNACK 5 otherwise (DPS passes no ``is_revoked``: it answers a
    revoked leaf's register request with 401, as Azure does). The revocation check
    repeats the TLS layer's for devcloud's own CAs, and is the only one while a foreign
    CA is trusted (see :mod:`devcloud.tls`).
    """
    if not chain or common_name(chain[0]) != client_id:
        return False
    return is_revoked is None or not is_revoked(chain[0])


def _directly_issued(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def ca_position(chain: Sequence[x509.Certificate], ca: x509.Certificate) -> int | None:
    """Index of ``ca`` in ``chain`` (leaf = 0), ``len(chain)`` if it signed the top, else None."""
    wanted = thumbprint(ca)
    for index, cert in enumerate(chain):
        if thumbprint(cert) == wanted:
            return index
    if chain and _directly_issued(chain[-1], ca):
        return len(chain)
    return None


def match_enrollment(
    registration_id: str,
    chain: Sequence[x509.Certificate],
    individuals: Sequence[IndividualEnrollment],
    groups: Sequence[EnrollmentGroup],
) -> Enrollment:
    """The enrollment that governs this device; raises 401 / 404 errors as DPS answers."""
    if not chain:
        raise UnauthorizedError("no client certificate")
    leaf_print = thumbprint(chain[0])
    individual = next((e for e in individuals if e.registration_id == registration_id), None)
    if individual is None:
        individual = next((e for e in individuals if leaf_print in e.thumbprints), None)
    if individual is not None:
        if individual.thumbprints and leaf_print not in individual.thumbprints:
            raise UnauthorizedError(
                f"the certificate does not match enrollment {individual.registration_id!r}"
            )
        if not individual.enabled:
            raise UnauthorizedError(f"enrollment {individual.registration_id!r} is disabled")
        return individual
    ranked: list[tuple[int, str, EnrollmentGroup]] = []
    for group in groups:
        ca = x509.load_pem_x509_certificate(group.signing_cert_pem.encode())
        position = ca_position(chain, ca)
        if position is not None:
            ranked.append((position, group.group_id, group))
    if not ranked:
        raise NotFoundError(
            f"no enrollment for registration {registration_id!r}", error_code=404201
        )
    _, _, group = min(ranked, key=lambda item: (item[0], item[1]))
    if not group.enabled:
        raise UnauthorizedError(f"enrollment group {group.group_id!r} is disabled")
    return group
