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

from agent.cli.check import run_checks
from agent.config import AgentConfig, load_config
from agent.core.lifecycle import State
from agent.identity.generations import current_paths
from tests.support.agentcloud import (
    AgentThread,
    Cloud,
    issue_device,
    running_cloud,
    wait_until,
    write_config,
)
from tests.support.fakeclock import ShiftedClock

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
        leaf = x509.load_pem_x509_certificates(identity.operational_cert.read_bytes())[0]

        def reported_certificate() -> object:
            twin = cloud.client.get_twin("dev-issued")
            return twin["properties"]["reported"].get("certificate")

        results = {r.name: r for r in run_checks(config, network=False, sensors=False)}
        assert results["operational-cert"].status == "ok", results["operational-cert"]
        assert "29 days left" in results["operational-cert"].detail
        reported = wait_until(reported_certificate, what="reported.certificate")
        assert isinstance(reported, dict) and reported["renewal"] == "dps"
        until = leaf.not_valid_after_utc.isoformat(timespec="milliseconds")
        assert reported["validUntil"] == until.replace("+00:00", "Z")
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


LIFETIME_S = 30 * 86400  # the "fleet" policy


def renewing_config(tmp_path: Path, cloud: Cloud, regid: str, **extra: object) -> AgentConfig:
    config = issuing_config(tmp_path, cloud, regid)
    lines = "".join(f"{k} = {v!r}\n" for k, v in {"renew_check_s": 0.1, **extra}.items())
    config.source.write_text(config.source.read_text().replace("[dps]", f"{lines}\n[dps]", 1))
    return load_config(config.source)


def connected_with(cloud: Cloud, device_id: str) -> str | None:
    return cloud.client.get_device(device_id)["connectionCertificateThumbprint"]


def renewed_and_current(cloud: Cloud, config: AgentConfig, regid: str, clock: ShiftedClock) -> str:
    """Past the renewal point until a renewal is issued, then back; the renewed thumbprint
    that became current (one more renewal may slip in before the clock is put back)."""
    clock.offset_s = 0.86 * LIFETIME_S  # past 80 % + at most 5 % jitter
    wait_until(
        lambda: len(cloud.client.issued_certificates(registration_id=regid)) >= 2,
        timeout_s=30,
        what="a renewed certificate",
    )
    clock.offset_s = 0.0
    issued = cloud.client.issued_certificates(registration_id=regid)
    first = issued[0]["sha256Thumbprint"]

    def renewed() -> str | None:
        current = der_thumbprint(current_paths(config.identity)[0])
        later = [
            c["sha256Thumbprint"] for c in cloud.client.issued_certificates(registration_id=regid)
        ]
        return current if current != first and current in later[1:] else None

    # The hub counts the connection before its CONNACK reaches the agent, which commits
    # on CONNACK: wait for the commit.
    current = wait_until(renewed, timeout_s=30, what="the renewed pair to become current")
    wait_until(
        lambda: connected_with(cloud, regid) == current,
        timeout_s=30,
        what="the hub connection with the renewed certificate",
    )
    return str(current)


def test_renewal_through_dps_driven_by_the_clock(tmp_path: Path, cloud: Cloud) -> None:
    """At 80 % (+ jitter) of the lifetime the agent registers again with a new key's
    CSR, connects with the new certificate and only then makes it current."""
    config = renewing_config(tmp_path, cloud, "dev-renew")
    clock = ShiftedClock()
    with AgentThread(config, clock=clock) as agent:
        agent.wait_state(State.CONNECTED, timeout_s=30)
        old_key = config.identity.operational_key.read_bytes()
        renewed_and_current(cloud, config, "dev-renew", clock)
        issued = cloud.client.issued_certificates(registration_id="dev-renew")
        assert {c["issuedVia"] for c in issued} == {"dps"}
        _, key = current_paths(config.identity)
        assert key.read_bytes() != old_key and key.stat().st_mode & 0o777 == 0o600
        assert not config.identity.operational_cert.exists()  # the old pair is gone
        since = cloud.client.last_sequence_number()
        cloud.client.wait_for_telemetry(device_id="dev-renew", since=since, count=2, timeout_s=15)


def test_a_renewed_certificate_the_hub_refuses_is_rolled_back(tmp_path: Path, cloud: Cloud) -> None:
    config = renewing_config(tmp_path, cloud, "dev-rollback")
    clock = ShiftedClock()
    with AgentThread(config, clock=clock) as agent:
        agent.wait_state(State.CONNECTED, timeout_s=30)
        first = der_thumbprint(config.identity.operational_cert)
        cloud.client.refuse_renewals("dev-rollback", mode="connect")
        clock.offset_s = 0.86 * LIFETIME_S
        wait_until(
            lambda: any(
                c["refusedAtConnect"]
                for c in cloud.client.issued_certificates(registration_id="dev-rollback")
            ),
            timeout_s=30,
            what="a refused renewal",
        )
        clock.offset_s = 0.0
        wait_until(
            lambda: (
                agent.state is State.CONNECTED and connected_with(cloud, "dev-rollback") == first
            ),
            timeout_s=30,
            what="connected again with the old certificate",
        )
        assert der_thumbprint(current_paths(config.identity)[0]) == first
        leftovers = list(config.identity.operational_cert.parent.glob("operational-*"))
        assert leftovers == []
        since = cloud.client.last_sequence_number()
        cloud.client.wait_for_telemetry(
            device_id="dev-rollback", since=since, count=2, timeout_s=15
        )


def test_renewal_through_the_hubs_credentials_endpoint(tmp_path: Path, cloud: Cloud) -> None:
    """``renewal = "hub"``: the CSR goes to $iothub/credentials on the live connection;
    the agent reconnects with the issued certificate and then makes it current."""
    config = renewing_config(tmp_path, cloud, "dev-hubrenew", renewal="hub")
    clock = ShiftedClock()
    with AgentThread(config, clock=clock) as agent:
        agent.wait_state(State.CONNECTED, timeout_s=30)
        attempts = cloud.client.registration_attempts("dev-hubrenew")
        renewed_and_current(cloud, config, "dev-hubrenew", clock)
        issued = cloud.client.issued_certificates(registration_id="dev-hubrenew")
        assert [c["issuedVia"] for c in issued][:2] == ["dps", "hub"]
        assert cloud.client.registration_attempts("dev-hubrenew") == attempts  # no DPS
        since = cloud.client.last_sequence_number()
        cloud.client.wait_for_telemetry(
            device_id="dev-hubrenew", since=since, count=2, timeout_s=15
        )


def test_a_hub_renewed_certificate_the_hub_refuses_is_rolled_back(
    tmp_path: Path, cloud: Cloud
) -> None:
    config = renewing_config(tmp_path, cloud, "dev-hubrefused", renewal="hub")
    clock = ShiftedClock()
    with AgentThread(config, clock=clock) as agent:
        agent.wait_state(State.CONNECTED, timeout_s=30)
        first = der_thumbprint(config.identity.operational_cert)
        cloud.client.refuse_renewals("dev-hubrefused", mode="connect")
        clock.offset_s = 0.86 * LIFETIME_S
        wait_until(
            lambda: any(
                c["refusedAtConnect"]
                for c in cloud.client.issued_certificates(registration_id="dev-hubrefused")
            ),
            timeout_s=30,
            what="a refused renewal",
        )
        clock.offset_s = 0.0
        wait_until(
            lambda: (
                agent.state is State.CONNECTED and connected_with(cloud, "dev-hubrefused") == first
            ),
            timeout_s=30,
            what="connected again with the old certificate",
        )
        assert der_thumbprint(current_paths(config.identity)[0]) == first
        since = cloud.client.last_sequence_number()
        cloud.client.wait_for_telemetry(
            device_id="dev-hubrefused", since=since, count=2, timeout_s=15
        )
