"""agent.identity.file_keystore with real certificates from devcloud's PKI."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.config import IdentityConfig
from agent.errors import (
    EX_CONFIG,
    CertificateInvalidError,
    KeyPermissionError,
    KeystoreError,
)
from agent.identity.file_keystore import FileKeystore
from agent.identity.keystore import Identity, Keystore, open_keystore
from devcloud.pki import PKI, Issued

CONFIG = Path("/etc/device-agent/agent.toml")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI.create(tmp_path_factory.mktemp("rogue"), name="rogue")


def now() -> datetime:
    return datetime.now(UTC)


def load(issued: Issued, **overrides: object) -> Identity:
    fields: dict[str, object] = {
        "cert_chain_path": issued.chain_path,
        "key_path": issued.key_path,
    }
    fields.update(overrides)
    config = IdentityConfig(**fields)  # type: ignore[arg-type]
    return open_keystore(config, config_path=CONFIG).load(now=now())


def test_good_identity(pki: PKI) -> None:
    issued = pki.issue_device("dev-good")
    identity = load(issued, trust_anchor_paths=(pki.root_path,))
    assert identity.registration_id == "dev-good"
    assert identity.common_name == "dev-good"
    assert identity.thumbprint == issued.thumbprint
    assert len(identity.thumbprint) == 64
    assert identity.cert_chain_path == issued.chain_path
    assert identity.key_path == issued.key_path
    assert identity.key_passphrase is None
    assert identity.not_before == issued.cert.not_valid_before_utc
    assert identity.not_after == issued.cert.not_valid_after_utc
    assert identity.warnings == ()


def test_open_keystore_gives_a_file_keystore(pki: PKI) -> None:
    issued = pki.issue_device("dev-proto")
    config = IdentityConfig(cert_chain_path=issued.chain_path, key_path=issued.key_path)
    keystore: Keystore = open_keystore(config, config_path=CONFIG)
    assert isinstance(keystore, FileKeystore)


def test_configured_registration_id_wins_over_cn(pki: PKI) -> None:
    issued = pki.issue_device("dev-regid", cn="Some Device Name")
    identity = load(issued, registration_id="dev-regid")
    assert identity.registration_id == "dev-regid"
    assert identity.common_name == "Some Device Name"
    # Reported at start: with X.509 attestation this usually ends in DPS 401 / CONNACK 5.
    (warning,) = [w for w in identity.warnings if "is not the registration id" in w]
    assert "'Some Device Name'" in warning and "'dev-regid'" in warning


def test_cn_that_cannot_be_a_registration_id_asks_for_one(pki: PKI) -> None:
    issued = pki.issue_device("dev-badcn", cn="Some Device Name")
    with pytest.raises(CertificateInvalidError) as info:
        load(issued)
    assert "identity.registration_id" in str(info.value)
    assert str(CONFIG) in str(info.value)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o602])
def test_key_readable_by_others_is_refused_with_the_fix(pki: PKI, mode: int) -> None:
    issued = pki.issue_device(f"dev-mode-{mode:o}")
    os.chmod(issued.key_path, mode)
    with pytest.raises(KeyPermissionError) as info:
        load(issued)
    error = info.value
    assert error.path == issued.key_path
    assert f"chmod 600 {issued.key_path}" in str(error)
    assert isinstance(error, PermissionError)
    assert error.exit_code == EX_CONFIG


def test_owner_only_modes_are_accepted(pki: PKI) -> None:
    issued = pki.issue_device("dev-0400")
    os.chmod(issued.key_path, 0o400)
    assert load(issued).registration_id == "dev-0400"


def test_passphrase_protected_key(pki: PKI, tmp_path: Path) -> None:
    issued = pki.issue_device("dev-pass", key_passphrase=b"s3cret")
    assert b"ENCRYPTED" in issued.key_path.read_bytes()
    passfile = tmp_path / "pass"
    passfile.write_bytes(b"s3cret\n")
    passfile.chmod(0o600)
    identity = load(issued, key_passphrase_file=passfile)
    assert identity.key_passphrase == b"s3cret"
    assert "s3cret" not in repr(identity)


def test_encrypted_key_without_passphrase(pki: PKI) -> None:
    issued = pki.issue_device("dev-nopass", key_passphrase=b"s3cret")
    with pytest.raises(KeystoreError, match="encrypted and no passphrase") as info:
        load(issued)
    assert "identity.key_passphrase_file" in str(info.value)


def test_wrong_passphrase(pki: PKI, tmp_path: Path) -> None:
    issued = pki.issue_device("dev-wrongpass", key_passphrase=b"s3cret")
    passfile = tmp_path / "pass"
    passfile.write_bytes(b"guess")
    passfile.chmod(0o600)
    with pytest.raises(KeystoreError, match="does not decrypt") as info:
        load(issued, key_passphrase_file=passfile)
    assert info.value.path == issued.key_path


def test_passphrase_for_a_plain_key(pki: PKI, tmp_path: Path) -> None:
    issued = pki.issue_device("dev-plain")
    passfile = tmp_path / "pass"
    passfile.write_bytes(b"s3cret")
    passfile.chmod(0o600)
    with pytest.raises(KeystoreError, match="not encrypted"):
        load(issued, key_passphrase_file=passfile)


def test_passphrase_file_readable_by_others(pki: PKI, tmp_path: Path) -> None:
    issued = pki.issue_device("dev-passmode", key_passphrase=b"s3cret")
    passfile = tmp_path / "pass"
    passfile.write_bytes(b"s3cret")
    passfile.chmod(0o644)
    with pytest.raises(KeyPermissionError) as info:
        load(issued, key_passphrase_file=passfile)
    assert info.value.path == passfile


def test_key_of_another_certificate(pki: PKI) -> None:
    one = pki.issue_device("dev-one")
    other = pki.issue_device("dev-other")
    with pytest.raises(CertificateInvalidError, match="does not belong") as info:
        load(one, key_path=other.key_path)
    assert info.value.path == other.key_path


def test_expired_certificate(pki: PKI) -> None:
    issued = pki.issue_device(
        "dev-expired",
        not_before=now() - timedelta(days=60),
        not_after=now() - timedelta(days=1),
    )
    with pytest.raises(CertificateInvalidError, match="expired") as info:
        load(issued)
    assert info.value.path == issued.chain_path


def test_not_yet_valid_certificate(pki: PKI) -> None:
    issued = pki.issue_device(
        "dev-future",
        not_before=now() + timedelta(days=1),
        not_after=now() + timedelta(days=400),
    )
    with pytest.raises(CertificateInvalidError, match="not valid before"):
        load(issued)


@pytest.mark.parametrize(("days_left", "warned"), [(29, True), (31, False)])
def test_expiry_warning_under_30_days(pki: PKI, days_left: int, warned: bool) -> None:
    issued = pki.issue_device(
        f"dev-left-{days_left}",
        not_before=now() - timedelta(days=300),
        not_after=now() + timedelta(days=days_left),
    )
    identity = load(issued)
    assert bool(identity.warnings) is warned
    if warned:
        # 29 days from the issue instant is 28 whole days and some hours at load time.
        assert "expires in 28 days" in identity.warnings[0]


def test_chain_builds_to_root_through_intermediate(pki: PKI) -> None:
    issued = pki.issue_device("dev-chain")
    assert load(issued, trust_anchor_paths=(pki.root_path,)).registration_id == "dev-chain"
    # The intermediate as the anchor also works (it signed the leaf).
    assert load(issued, trust_anchor_paths=(pki.intermediate_path,)).thumbprint == (
        issued.thumbprint
    )


def test_chain_to_an_unknown_ca_is_refused(pki: PKI, rogue: PKI) -> None:
    issued = rogue.issue_device("dev-rogue")
    with pytest.raises(CertificateInvalidError, match="does not build") as info:
        load(issued, trust_anchor_paths=(pki.root_path,))
    assert "devcloud Root CA" in str(info.value)


def test_leaf_without_its_intermediate_does_not_build(pki: PKI) -> None:
    issued = pki.issue_device("dev-leafonly")
    with pytest.raises(CertificateInvalidError, match="missing intermediate"):
        load(issued, cert_chain_path=issued.cert_path, trust_anchor_paths=(pki.root_path,))
    # With the intermediate among the anchors (the CA bundle), it builds.
    identity = load(
        issued, cert_chain_path=issued.cert_path, trust_anchor_paths=(pki.ca_bundle_path,)
    )
    assert identity.registration_id == "dev-leafonly"


def test_root_signed_leaf(pki: PKI) -> None:
    issued = pki.issue_device("dev-rootsigned", signer="root")
    identity = load(issued, trust_anchor_paths=(pki.root_path,))
    assert identity.registration_id == "dev-rootsigned"


def test_intermediate_from_another_ca_is_refused(pki: PKI, rogue: PKI, tmp_path: Path) -> None:
    issued = pki.issue_device("dev-mixed")
    mixed = tmp_path / "mixed.pem"
    mixed.write_bytes(issued.cert_path.read_bytes() + rogue.intermediate_path.read_bytes())
    with pytest.raises(CertificateInvalidError, match="does not build"):
        load(issued, cert_chain_path=mixed, trust_anchor_paths=(rogue.root_path,))


def test_missing_files(pki: PKI, tmp_path: Path) -> None:
    issued = pki.issue_device("dev-missing")
    with pytest.raises(KeystoreError, match="no such file") as info:
        load(issued, key_path=tmp_path / "none.key")
    assert info.value.path == tmp_path / "none.key"
    with pytest.raises(KeystoreError, match="no such file"):
        load(issued, cert_chain_path=tmp_path / "none.pem")
    with pytest.raises(KeystoreError, match="no such file"):
        load(issued, trust_anchor_paths=(tmp_path / "none-root.pem",))


def test_garbage_files(pki: PKI, tmp_path: Path) -> None:
    issued = pki.issue_device("dev-garbage")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    junk.chmod(0o600)
    with pytest.raises(CertificateInvalidError, match="not a PEM certificate chain"):
        load(issued, cert_chain_path=junk)
    with pytest.raises(KeystoreError, match="not a PEM private key"):
        load(issued, key_path=junk)
    with pytest.raises(KeystoreError, match="not a regular file"):
        load(issued, key_path=tmp_path)
