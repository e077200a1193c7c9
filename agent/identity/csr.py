"""Certificate signing requests: made with a file or a TPM key, repaired, written out.

:func:`make_csr` gives the DER PKCS#10 for the configured key, CN = the registration id
(file keys: ``cryptography``; TPM keys: ``openssl req`` in a child, see
:mod:`agent.identity.tpm`, then :func:`strip_ecdsa_null_params`); :func:`write_csr`
writes it as PEM, atomically. :func:`csr_base64` is the wire form DPS and the hub take
(base64 DER, no PEM armour).

Repairing the outer ``signatureAlgorithm`` of CSRs that tpm2-openssl 1.3.0 makes:

tpm2-openssl 1.3.0 writes ``ecdsa-with-SHA256`` *with* a NULL parameter in a CSR's
outer ``signatureAlgorithm``; RFC 5758 (section 3.2) says the parameters MUST be absent,
and ``cryptography`` refuses such a CSR (``ParseError ... Csr::signature_alg``), as a
strict CA may. That field is outside the signed ``certificationRequestInfo``, so
dropping the NULL keeps the signature valid. :func:`strip_ecdsa_null_params` does just
that, at the DER level, and returns any other CSR unchanged.
"""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path

from agent.config import IdentityConfig
from agent.errors import KeystoreError

__all__ = ["csr_base64", "make_csr", "strip_ecdsa_null_params", "write_csr"]

#: DER contents of the ecdsa-with-SHA1/224/256/384/512 OIDs (1.2.840.10045.4.1, .4.3.1-4).
_ECDSA_OIDS = frozenset(
    bytes.fromhex(h)
    for h in (
        "2a8648ce3d0401",
        "2a8648ce3d040301",
        "2a8648ce3d040302",
        "2a8648ce3d040303",
        "2a8648ce3d040304",
    )
)
_SEQUENCE, _OID, _NULL = 0x30, 0x06, 0x05


def _read_tlv(data: bytes, offset: int) -> tuple[int, int, int]:
    """``(tag, content_start, content_end)`` of the DER element at ``offset``."""
    if offset + 2 > len(data):
        raise ValueError("DER element truncated")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tags are not expected in a CSR's outer structure")
    first = data[offset + 1]
    start = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or start + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[start : start + count], "big")
        if length < 0x80 or data[start] == 0:
            raise ValueError("non-minimal DER length")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError("DER element longer than its input")
    return tag, start, end


def _encode_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """``(tag, element_start, content_start, element_end)`` of each element in a range."""
    out = []
    offset = start
    while offset < end:
        tag, content_start, content_end = _read_tlv(data, offset)
        if content_end > end:
            raise ValueError("DER child overruns its parent")
        out.append((tag, offset, content_start, content_end))
        offset = content_end
    return out


def strip_ecdsa_null_params(der: bytes) -> bytes:
    """``der`` with a NULL parameter removed from an ECDSA outer ``signatureAlgorithm``.

    Raises :class:`ValueError` for input that is not one DER SEQUENCE of
    (SEQUENCE, SEQUENCE, BIT STRING) — the shape of a PKCS#10 CSR.
    """
    tag, start, end = _read_tlv(der, 0)
    if tag != _SEQUENCE or end != len(der):
        raise ValueError("not a single DER SEQUENCE (trailing data or wrong tag)")
    parts = _children(der, start, end)
    if [p[0] for p in parts] != [_SEQUENCE, _SEQUENCE, 0x03]:
        raise ValueError("not a PKCS#10 CSR: expected SEQUENCE, SEQUENCE, BIT STRING")
    _, _, alg_content, alg_end = parts[1]
    alg = _children(der, alg_content, alg_end)
    if (
        len(alg) != 2
        or alg[0][0] != _OID
        or der[alg[0][2] : alg[0][3]] not in _ECDSA_OIDS
        or alg[1][0] != _NULL
        or alg[1][2] != alg[1][3]
    ):
        return der
    oid = der[alg[0][1] : alg[0][3]]
    algorithm = bytes([_SEQUENCE]) + _encode_length(len(oid)) + oid
    body = der[parts[0][1] : parts[0][3]] + algorithm + der[parts[2][1] : parts[2][3]]
    return bytes([_SEQUENCE]) + _encode_length(len(body)) + body


def make_csr(config: IdentityConfig, common_name: str) -> bytes:
    """A DER CSR for the configured key (TPM or file), CN = ``common_name``."""
    if config.keystore == "tpm":
        from agent.identity.tpm import tpm_csr_der

        return strip_ecdsa_null_params(tpm_csr_der(config, common_name))
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    try:
        key = serialization.load_pem_private_key(config.key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeystoreError(f"cannot load the key for a CSR: {exc}", path=config.key_path) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise KeystoreError("only EC and RSA keys can sign a CSR", path=config.key_path)
    digest = hashes.SHA384() if isinstance(key, ec.EllipticCurvePrivateKey) else hashes.SHA256()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, digest)
    )
    return csr.public_bytes(serialization.Encoding.DER)


def csr_base64(der: bytes) -> str:
    """The wire form of a CSR: base64 DER without PEM armour or newlines."""
    return base64.b64encode(der).decode("ascii")


def write_csr(path: Path, der: bytes) -> Path:
    """Write the CSR as PEM to ``path`` (temporary file, fsync, rename)."""
    body = csr_base64(der)
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    pem = "-----BEGIN CERTIFICATE REQUEST-----\n" + "\n".join(lines)
    pem += "\n-----END CERTIFICATE REQUEST-----\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
