"""CSRs and issued identities for the certificate-issuance tests (software keys)."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from agent.identity.csr import _encode_length
from devcloud.pki import Issued

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    """A fresh EC key (P-256 unless told otherwise)."""
    return ec.generate_private_key(curve or ec.SECP256R1())


def csr_der(key: PrivateKey, common_name: str, *, digest: Any = None) -> bytes:
    """A DER PKCS#10 CSR for ``common_name`` signed by ``key``."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    csr = builder.sign(key, digest or hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def b64(data: bytes) -> str:
    """Base64 text of ``data`` (the wire form of a ``csr`` field)."""
    return base64.b64encode(data).decode()


def add_null_params(der: bytes) -> bytes:
    """The CSR as tpm2-openssl 1.3.0 encodes it: a NULL after the outer signature OID."""
    # CSR = 30 LL <info> 30 0A 06 08 <ecdsa oid> 03 ... ; the test CSRs are < 64 KiB.
    assert der[0] == 0x30
    header = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    info_len_byte = der[header + 1]
    info_header = 2 if info_len_byte < 0x80 else 2 + (info_len_byte & 0x7F)
    info_len = (
        info_len_byte
        if info_len_byte < 0x80
        else int.from_bytes(der[header + 2 : header + info_header], "big")
    )
    alg_at = header + info_header + info_len
    assert der[alg_at] == 0x30 and der[alg_at + 2] == 0x06
    oid_len = der[alg_at + 3]
    oid = der[alg_at + 2 : alg_at + 4 + oid_len]
    alg = bytes([0x30, len(oid) + 2]) + oid + b"\x05\x00"
    body = der[header:alg_at] + alg + der[alg_at + 2 + der[alg_at + 1] :]
    return b"\x30" + _encode_length(len(body)) + body


def write_identity(folder: Path, name: str, key: PrivateKey, chain_b64: list[str]) -> Issued:
    """Files for a key and an issued chain (base64 DER, leaf first), as devcloud's
    :class:`Issued` describes them, so :class:`tests.support.devcloud.MqttDevice` can use it."""
    folder.mkdir(parents=True, exist_ok=True)
    certs = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in chain_b64]
    key_path = folder / f"{name}.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path = folder / f"{name}.pem"
    cert_path.write_bytes(certs[0].public_bytes(serialization.Encoding.PEM))
    chain_path = folder / f"{name}.chain.pem"
    chain_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return Issued(cert=certs[0], cert_path=cert_path, chain_path=chain_path, key_path=key_path)
