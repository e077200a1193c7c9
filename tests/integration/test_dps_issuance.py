"""DPS certificate issuance end to end: the onboarding certificate registers with a CSR,
DPS issues the operational certificate, the hub connection uses it (file keys here;
TPM keys in tests/tpm/test_agent_tpm.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.config import AgentConfig, load_config
from agent.core.lifecycle import State
from tests.support.agentcloud import (
    AgentThread,
    Cloud,
    issue_device,
    running_cloud,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.integration


@pytest.fixture(name="cloud")
def cloud_fixture(tmp_path: Path) -> Iterator[Cloud]:
    with running_cloud(tmp_path) as cloud:
        cloud.client.put_credential_policy("fleet", validity_days=30)
        cloud.client.put_enrollment_group("default", credential_policy="fleet")
        yield cloud


def issuing_config(tmp_path: Path, cloud: Cloud, regid: str) -> AgentConfig:
    onboarding = issue_device(cloud, regid)
    path = tmp_path / "agent.toml"
    write_config(path, cloud, onboarding, state_dir=tmp_path / "state")
    text = path.read_text().replace(
        "[dps]",
        f'issuance = "dps"\noperational_cert_path = "{tmp_path / "op" / "operational.pem"}"\n'
        f'operational_key_path = "{tmp_path / "op" / "operational.key"}"\n\n[dps]',
        1,
    )
    path.write_text(text)
    return load_config(path)


def der_thumbprint(pem_path: Path) -> str:
    cert = x509.load_pem_x509_certificates(pem_path.read_bytes())[0]
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()


def test_dps_issues_the_operational_certificate_and_the_hub_sees_it(
    tmp_path: Path, cloud: Cloud
) -> None:
    config = issuing_config(tmp_path, cloud, "dev-issued")
    identity = config.identity
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED, timeout_s=30)
        cloud.client.wait_for_telemetry(device_id="dev-issued", count=2, timeout_s=15)
        assert identity.operational_key.stat().st_mode & 0o777 == 0o600
        operational = der_thumbprint(identity.operational_cert)
        assert operational != der_thumbprint(identity.cert_chain_path)
        [issued] = cloud.client.issued_certificates(registration_id="dev-issued")
        assert issued["sha256Thumbprint"] == operational and issued["issuedVia"] == "dps"
        device = cloud.client.get_device("dev-issued")
        assert device["connectionCertificateThumbprint"] == operational
        assert agent.stop() == 0

    # A restart uses the installed certificate: no new registration, no new issuance.
    attempts = cloud.client.registration_attempts("dev-issued")
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED, timeout_s=30)
        assert cloud.client.registration_attempts("dev-issued") == attempts
        assert len(cloud.client.issued_certificates(registration_id="dev-issued")) == 1
        wait_until(
            lambda: (
                cloud.client.get_device("dev-issued")["connectionCertificateThumbprint"]
                == operational
            ),
            what="the hub connection with the operational certificate",
        )


def test_an_operational_certificate_that_does_not_load_is_issued_again(
    tmp_path: Path, cloud: Cloud
) -> None:
    config = issuing_config(tmp_path, cloud, "dev-reissue")
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED, timeout_s=30)
    config.identity.operational_cert.write_text("not a certificate\n")
    with AgentThread(config) as agent:
        agent.wait_state(State.CONNECTED, timeout_s=30)
    issued = cloud.client.issued_certificates(registration_id="dev-reissue")
    assert len(issued) == 2
    assert der_thumbprint(config.identity.operational_cert) == issued[-1]["sha256Thumbprint"]
    chain = x509.load_pem_x509_certificates(config.identity.operational_cert.read_bytes())
    assert len(chain) == 3  # leaf, issuing CA, root
