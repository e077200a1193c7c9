"""devcloud's test PKI: chains, validity windows, EKUs, SANs, CRLs, file modes, the CLI.

Chains are checked twice: with ``cryptography.x509.verification`` (RFC 5280 path
building) and with a real TLS handshake through Python's ``ssl`` on loopback, with
CRL checking on, because that is how devcloud and the agent will use these files.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devcloud.pki import (
    BACKDATE,
    CA_BACKDATE,
    PKI,
    ForeignCertificateError,
    Issued,
    PKIMismatchError,
    ValidityWindowError,
    register_cli,
)

# --------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI.create(tmp_path_factory.mktemp("rogue"), name="rogue")


def _client_verifier(
    trusted: x509.Certificate, at: datetime | None = None
) -> verification.ClientVerifier:
    # Device certificates carry no SAN (as Azure's do not need one), which the
    # webpki default end-entity policy would demand; everything else stays default.
    ee_policy = verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None
    )
    builder = (
        verification.PolicyBuilder()
        .store(verification.Store([trusted]))
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy
        )
    )
    if at is not None:
        builder = builder.time(at)
    return builder.build_client_verifier()


def _server_verifier(trusted: x509.Certificate, ip: str) -> verification.ServerVerifier:
    return (
        verification.PolicyBuilder()
        .store(verification.Store([trusted]))
        .build_server_verifier(x509.IPAddress(ipaddress.ip_address(ip)))
    )


def _chain_file(issued: Issued) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(issued.chain_path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


# --------------------------------------------------------------------- the CA


def test_create_is_idempotent_and_loads_what_exists(tmp_path: Path) -> None:
    first = PKI.create(tmp_path)
    files = {path: path.read_bytes() for path in (tmp_path / "ca").iterdir()}
    second = PKI.create(tmp_path)
    assert second.root == first.root
    assert second.intermediate == first.intermediate
    assert {path: path.read_bytes() for path in (tmp_path / "ca").iterdir()} == files
    # The reloaded CA keys still sign certificates that chain to the original root.
    issued = second.issue_device("after-reload")
    _client_verifier(first.root).verify(issued.cert, [first.intermediate])


def test_create_refuses_a_directory_of_another_ca(tmp_path: Path) -> None:
    PKI.create(tmp_path, name="devcloud")
    with pytest.raises(PKIMismatchError, match="rogue"):
        PKI.create(tmp_path, name="rogue")


def test_concurrent_creates_make_one_ca(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        made = list(pool.map(lambda _: PKI.create(tmp_path / "shared"), range(4)))
    assert len({pki.root.serial_number for pki in made}) == 1
    assert not [p for p in (tmp_path / "shared").iterdir() if p.name.startswith(".ca-")]


def test_ca_files_chain_and_modes(pki: PKI) -> None:
    assert pki.root.subject == pki.root.issuer
    assert pki.intermediate.issuer == pki.root.subject
    pki.intermediate.verify_directly_issued_by(pki.root)
    root_bc = pki.root.extensions.get_extension_for_class(x509.BasicConstraints)
    inter_bc = pki.intermediate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert root_bc.critical and root_bc.value.ca
    assert inter_bc.critical and inter_bc.value.ca and inter_bc.value.path_length == 0
    assert x509.load_pem_x509_certificates(pki.ca_bundle_path.read_bytes()) == [
        pki.root,
        pki.intermediate,
    ]
    assert x509.load_pem_x509_certificate(pki.root_path.read_bytes()) == pki.root
    assert x509.load_pem_x509_certificate(pki.intermediate_path.read_bytes()) == pki.intermediate
    for key_file in (pki.directory / "ca").glob("*.key"):
        assert _mode(key_file) == 0o600, key_file
    assert len(list((pki.directory / "ca").glob("*.key"))) == 2


def test_fresh_crls_exist_empty_and_signed_by_each_ca(tmp_path: Path) -> None:
    fresh = PKI.create(tmp_path)
    assert len(fresh.crl_paths) == 2
    signers = {}
    for path in fresh.crl_paths:
        crl = x509.load_pem_x509_crl(path.read_bytes())
        assert len(crl) == 0
        assert crl.next_update_utc is not None
        assert crl.next_update_utc > datetime.now(UTC) + timedelta(days=1)
        signers[crl.issuer] = crl
    assert set(signers) == {fresh.root.subject, fresh.intermediate.subject}
    assert signers[fresh.root.subject].is_signature_valid(fresh.root.public_key())  # type: ignore[arg-type]
    assert signers[fresh.intermediate.subject].is_signature_valid(
        fresh.intermediate.public_key()  # type: ignore[arg-type]
    )


def test_injected_clock_sets_validity(tmp_path: Path) -> None:
    then = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    fixed = PKI.create(tmp_path, clock=lambda: then)
    assert fixed.root.not_valid_before_utc == then - CA_BACKDATE
    issued = fixed.issue_device("clocked")
    assert issued.cert.not_valid_before_utc == then - BACKDATE
    _client_verifier(fixed.root, at=then).verify(issued.cert, [fixed.intermediate])


def test_rsa_ca_and_rsa_device(tmp_path: Path) -> None:
    rsa_pki = PKI.create(tmp_path, key_type="rsa")
    assert isinstance(rsa_pki.root.public_key(), rsa.RSAPublicKey)
    issued = rsa_pki.issue_device("rsa-dev", key_type="rsa")
    public = issued.cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    usage = issued.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_encipherment and usage.digital_signature
    _client_verifier(rsa_pki.root).verify(issued.cert, [rsa_pki.intermediate])


# --------------------------------------------------------------------- devices


def test_device_certificate_profile(pki: PKI) -> None:
    issued = pki.issue_device("dev-profile")
    cert = issued.cert
    assert _cn(cert) == "dev-profile"
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert _chain_file(issued) == [cert, pki.intermediate]
    assert x509.load_pem_x509_certificate(issued.cert_path.read_bytes()) == cert
    assert _mode(issued.key_path) == 0o600
    key = serialization.load_pem_private_key(issued.key_path.read_bytes(), password=None)
    assert key.public_key() == cert.public_key()
    chain = _client_verifier(pki.root).verify(cert, [pki.intermediate]).chain
    assert chain == [cert, pki.intermediate, pki.root]
    now = datetime.now(UTC)
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=365)


def test_thumbprint_is_sha256_of_der_upper_hex(pki: PKI) -> None:
    issued = pki.issue_device("dev-thumb")
    der = issued.cert.public_bytes(serialization.Encoding.DER)
    import hashlib

    assert issued.thumbprint == hashlib.sha256(der).hexdigest().upper()
    assert len(issued.thumbprint) == 64 and issued.thumbprint.isupper()


def test_expired_and_not_yet_valid(pki: PKI) -> None:
    now = datetime.now(UTC)
    expired = pki.issue_device(
        "dev-old", not_before=now - timedelta(days=10), not_after=now - timedelta(days=1)
    )
    future = pki.issue_device(
        "dev-new", not_before=now + timedelta(days=1), not_after=now + timedelta(days=10)
    )
    for issued in (expired, future):
        with pytest.raises(verification.VerificationError, match="not valid at validation time"):
            _client_verifier(pki.root).verify(issued.cert, [pki.intermediate])
    # The same certificates are good inside their windows: only time is wrong.
    _client_verifier(pki.root, at=now - timedelta(days=5)).verify(expired.cert, [pki.intermediate])
    _client_verifier(pki.root, at=now + timedelta(days=5)).verify(future.cert, [pki.intermediate])


def test_empty_validity_window_is_refused(pki: PKI) -> None:
    now = datetime.now(UTC)
    with pytest.raises(ValidityWindowError):
        pki.issue_device("dev-x", not_before=now, not_after=now)
    with pytest.raises(ValueError, match="naive"):
        pki.issue_device("dev-x", not_before=datetime(2030, 1, 1))


def test_root_signed_device_has_no_intermediate(pki: PKI) -> None:
    issued = pki.issue_device("dev-root", signer="root")
    assert issued.cert.issuer == pki.root.subject
    assert _chain_file(issued) == [issued.cert]
    assert _client_verifier(pki.root).verify(issued.cert, []).chain == [issued.cert, pki.root]


def test_rogue_ca_device_does_not_verify(pki: PKI, rogue: PKI) -> None:
    issued = rogue.issue_device("dev-rogue")
    assert rogue.root.subject != pki.root.subject
    with pytest.raises(verification.VerificationError):
        _client_verifier(pki.root).verify(issued.cert, [rogue.intermediate])
    _client_verifier(rogue.root).verify(issued.cert, [rogue.intermediate])


def test_wrong_cn(pki: PKI) -> None:
    issued = pki.issue_device("dev-a", cn="dev-b")
    assert _cn(issued.cert) == "dev-b"
    assert issued.cert_path.name == "dev-a.pem"


def test_encrypted_key_needs_its_passphrase(pki: PKI) -> None:
    issued = pki.issue_device("dev-locked", key_passphrase=b"s3cret")
    assert _mode(issued.key_path) == 0o600
    assert b"ENCRYPTED" in issued.key_path.read_bytes()
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(issued.key_path.read_bytes(), password=None)
    key = serialization.load_pem_private_key(issued.key_path.read_bytes(), password=b"s3cret")
    assert key.public_key() == issued.cert.public_key()


def test_reissue_never_overwrites_unless_asked(pki: PKI) -> None:
    first = pki.issue_device("dev-twice")
    second = pki.issue_device("dev-twice")
    assert first.cert_path != second.cert_path
    assert second.cert_path.name == "dev-twice-2.pem"
    assert x509.load_pem_x509_certificate(first.cert_path.read_bytes()) == first.cert
    explicit = pki.issue_device("dev-twice", file_stem="dev-twice")
    assert explicit.cert_path == first.cert_path
    assert x509.load_pem_x509_certificate(first.cert_path.read_bytes()) == explicit.cert
    odd = pki.issue_device("../weird/id")
    assert odd.cert_path.parent == pki.directory / "devices"


# --------------------------------------------------------------------- servers


def test_server_certificate_profile(pki: PKI) -> None:
    issued = pki.issue_server(
        "hub-1", ip_addresses=["127.0.1.1", "127.0.1.2"], dns_names=["hub-1.devcloud"]
    )
    cert = issued.cert
    assert _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.1.1"),
        ipaddress.ip_address("127.0.1.2"),
    ]
    assert sans.get_values_for_type(x509.DNSName) == ["hub-1.devcloud"]
    assert _chain_file(issued) == [cert, pki.intermediate]
    assert _mode(issued.key_path) == 0o600
    _server_verifier(pki.root, "127.0.1.2").verify(cert, [pki.intermediate])
    with pytest.raises(verification.VerificationError):
        _server_verifier(pki.root, "127.0.1.3").verify(cert, [pki.intermediate])


def test_server_name_becomes_the_san_when_none_given(pki: PKI) -> None:
    by_ip = pki.issue_server("127.0.2.1")
    by_name = pki.issue_server("dps.devcloud")
    ip_sans = by_ip.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns_sans = by_name.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ip_sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.2.1")]
    assert dns_sans.get_values_for_type(x509.DNSName) == ["dps.devcloud"]


# --------------------------------------------------------------------- revocation


def test_revoke_updates_the_issuing_crl(tmp_path: Path) -> None:
    own = PKI.create(tmp_path)
    victim = own.issue_device("dev-victim")
    bystander = own.issue_device("dev-bystander")
    root_signed = own.issue_device("dev-rootsigned", signer="root")
    own.revoke(victim.cert)
    own.revoke(victim.cert)  # twice is harmless
    own.revoke(root_signed.cert)
    assert own.is_revoked(victim.cert) and own.is_revoked(root_signed.cert)
    assert not own.is_revoked(bystander.cert)
    inter_crl = x509.load_pem_x509_crl(own.intermediate_crl_path.read_bytes())
    root_crl = x509.load_pem_x509_crl(own.root_crl_path.read_bytes())
    assert [entry.serial_number for entry in inter_crl] == [victim.cert.serial_number]
    assert [entry.serial_number for entry in root_crl] == [root_signed.cert.serial_number]
    number = inter_crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == 2
    assert inter_crl.is_signature_valid(own.intermediate.public_key())  # type: ignore[arg-type]
    assert root_crl.is_signature_valid(own.root.public_key())  # type: ignore[arg-type]
    # Another process (a fresh load of the same directory) sees the revocations.
    assert PKI.create(tmp_path).is_revoked(victim.cert)


def test_revoke_refuses_foreign_certificates(pki: PKI, rogue: PKI) -> None:
    foreign = rogue.issue_device("dev-foreign")
    with pytest.raises(ForeignCertificateError):
        pki.revoke(foreign.cert)
    assert not pki.is_revoked(foreign.cert)


# --------------------------------------------------------------------- real TLS


def _handshake(pki: PKI, server: Issued, client: Issued, ip: str) -> str | None:
    """Run one mutual-TLS handshake on loopback; return the server's error or None."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server.chain_path, server.key_path)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(cafile=pki.root_path)
    for crl in pki.crl_paths:
        server_ctx.load_verify_locations(cafile=crl)
    server_ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN | ssl.VERIFY_X509_STRICT
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cafile=pki.root_path)
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    client_ctx.load_cert_chain(client.chain_path, client.key_path)

    outcome: dict[str, str | None] = {}
    with socket.create_server((ip, 0)) as listener:
        listener.settimeout(5)
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            conn.settimeout(5)
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
                    outcome["server"] = None
            except (ssl.SSLError, OSError) as exc:
                outcome["server"] = str(exc)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (
                socket.create_connection((ip, port), timeout=5) as raw,
                client_ctx.wrap_socket(raw, server_hostname=ip) as tls,
            ):
                # TLS 1.3 reports a rejected client certificate on the first read.
                tls.recv(2)
        except (ssl.SSLError, OSError):
            pass
        finally:
            thread.join(timeout=10)
    assert not thread.is_alive()
    return outcome["server"]


@pytest.fixture(scope="module")
def tls_pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PKI, Issued]]:
    own = PKI.create(tmp_path_factory.mktemp("tls"))
    yield own, own.issue_server("hub", ip_addresses=["127.0.0.1"])


def test_tls_accepts_a_good_device(tls_pki: tuple[PKI, Issued]) -> None:
    own, server = tls_pki
    assert _handshake(own, server, own.issue_device("tls-good"), "127.0.0.1") is None
    root_signed = own.issue_device("tls-root", signer="root")
    assert _handshake(own, server, root_signed, "127.0.0.1") is None


@pytest.mark.parametrize("case", ["expired", "not-yet-valid", "revoked", "rogue"])
def test_tls_rejects_bad_devices(tls_pki: tuple[PKI, Issued], rogue: PKI, case: str) -> None:
    own, server = tls_pki
    now = datetime.now(UTC)
    if case == "expired":
        client = own.issue_device(
            "tls-bad", not_before=now - timedelta(days=3), not_after=now - timedelta(days=1)
        )
        expected = "expired"
    elif case == "not-yet-valid":
        client = own.issue_device(
            "tls-bad", not_before=now + timedelta(days=1), not_after=now + timedelta(days=3)
        )
        expected = "not yet valid"
    elif case == "revoked":
        client = own.issue_device("tls-bad")
        own.revoke(client.cert)
        expected = "revoked"
    else:
        client = rogue.issue_device("tls-bad")
        expected = "unable to get local issuer"
    error = _handshake(own, server, client, "127.0.0.1")
    assert error is not None and expected in error, error


# --------------------------------------------------------------------- CLI


def _cli(argv: list[str]) -> tuple[int, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="devcloud")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args), args


def test_cli_init_device_server_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = str(tmp_path / "cli")
    status, _ = _cli(["pki", "init", "--dir", directory, "--json"])
    assert status == 0
    ca = json.loads(capsys.readouterr().out)
    assert Path(ca["root"]).is_file() and Path(ca["ca_bundle"]).is_file()
    assert [Path(p).is_file() for p in ca["crls"]] == [True, True]

    status, _ = _cli(["pki", "device", "dev-cli", "--dir", directory, "--days", "2", "--json"])
    assert status == 0
    good = json.loads(capsys.readouterr().out)
    cert = x509.load_pem_x509_certificate(Path(good["cert"]).read_bytes())
    assert cert.not_valid_after_utc - datetime.now(UTC) < timedelta(days=2, minutes=1)
    assert _mode(Path(good["key"])) == 0o600

    _cli(["pki", "device", "dev-cli", "--dir", directory, "--expired", "--cn", "x", "--json"])
    expired = json.loads(capsys.readouterr().out)
    expired_cert = x509.load_pem_x509_certificate(Path(expired["cert"]).read_bytes())
    assert expired_cert.not_valid_after_utc < datetime.now(UTC)
    assert _cn(expired_cert) == "x"
    assert expired["cert"] != good["cert"]

    _cli(["pki", "device", "dev-cli", "--dir", directory, "--not-yet-valid", "--json"])
    future = json.loads(capsys.readouterr().out)
    future_cert = x509.load_pem_x509_certificate(Path(future["cert"]).read_bytes())
    assert future_cert.not_valid_before_utc > datetime.now(UTC)

    status, _ = _cli(
        ["pki", "server", "hub", "--dir", directory, "--ip", "127.0.3.1", "--dns", "h"]
    )
    assert status == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    server_cert = x509.load_pem_x509_certificate(Path(lines["cert"]).read_bytes())
    assert _eku(server_cert) == [ExtendedKeyUsageOID.SERVER_AUTH]

    status, _ = _cli(["pki", "revoke", good["cert"], "--dir", directory, "--json"])
    assert status == 0
    assert json.loads(capsys.readouterr().out)["serial"] == f"{cert.serial_number:X}"
    assert PKI.create(Path(directory)).is_revoked(cert)


def test_cli_errors_exit_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _ = _cli(["pki", "device", "d", "--dir", str(tmp_path / "none")])
    assert status == 1
    assert "no CA here" in capsys.readouterr().err
    _cli(["pki", "init", "--dir", str(tmp_path)])
    capsys.readouterr()
    status, _ = _cli(["pki", "server", "s", "--dir", str(tmp_path), "--ip", "not-an-ip"])
    assert status == 1
    assert "not-an-ip" in capsys.readouterr().err
    status, _ = _cli(["pki"])
    assert status == 2
