"""The DER repair of tpm2-openssl 1.3.0's CSRs (tests/support/csr_der.py): what it
changes, what it leaves alone, and that odd input is refused, not mangled."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.identity.csr import strip_ecdsa_null_params
from tests.support.csr import add_null_params, csr_der, ec_key

EC_KEY = ec_key()
RSA_KEY = rsa.generate_private_key(65537, 2048)


@pytest.mark.parametrize(
    ("curve", "digest"),
    [
        (ec.SECP256R1(), hashes.SHA256()),
        (ec.SECP384R1(), hashes.SHA384()),
        (ec.SECP384R1(), hashes.SHA512()),
    ],
)
def test_the_null_goes_and_the_signature_still_verifies(
    curve: ec.EllipticCurve, digest: hashes.HashAlgorithm
) -> None:
    good = csr_der(ec_key(curve), "dev-1", digest=digest)
    broken = add_null_params(good)
    with pytest.raises(ValueError):
        x509.load_der_x509_csr(broken)
    fixed = strip_ecdsa_null_params(broken)
    assert fixed == good
    assert x509.load_der_x509_csr(fixed).is_signature_valid


def test_long_csrs_keep_a_minimal_length_encoding() -> None:
    # Many subject attributes push the CSR over 255 bytes (a two-byte length).
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "d" * 60)] * 6)
    )
    good = builder.sign(EC_KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    assert len(good) > 300
    assert strip_ecdsa_null_params(add_null_params(good)) == good


def test_correct_csrs_are_returned_unchanged() -> None:
    ec_good = csr_der(EC_KEY, "dev-1")
    assert strip_ecdsa_null_params(ec_good) == ec_good
    rsa_good = csr_der(RSA_KEY, "dev-1")  # sha256WithRSAEncryption carries NULL by right
    assert strip_ecdsa_null_params(rsa_good) == rsa_good


@pytest.mark.parametrize(
    ("case", "data"),
    [
        ("empty", b""),
        ("not-a-sequence", b"\x04\x02ab"),
        ("trailing-data", csr_der(EC_KEY, "x") + b"\x00"),
        ("truncated", csr_der(EC_KEY, "x")[:-1]),
        ("wrong-children", b"\x30\x06\x02\x01\x00\x02\x01\x00"),
        ("non-minimal-length", b"\x30\x81\x03\x02\x01\x00"),
    ],
)
def test_odd_input_is_refused(case: str, data: bytes) -> None:
    with pytest.raises(ValueError):
        strip_ecdsa_null_params(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_give_a_value_error_or_a_result_never_a_crash(data: bytes) -> None:
    try:
        out = strip_ecdsa_null_params(data)
    except ValueError:
        return
    assert out == data or len(out) == len(data) - 2


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=len(csr_der(EC_KEY, "dev-1")) - 1))
def test_every_truncation_of_a_broken_csr_is_refused(cut: int) -> None:
    broken = add_null_params(csr_der(EC_KEY, "dev-1"))
    with pytest.raises(ValueError):
        strip_ecdsa_null_params(broken[:cut])
