"""The real agent with a key in a real (software) TPM, against devcloud over TLS.

Every agent here is a ``python -m agent`` child process started *without* OPENSSL_CONF:
its config names the provider's OpenSSL config and the swtpm TCTI, and the CLI
re-executes itself with them (as on a device where the unit's environment lacks them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from agent.config import AgentConfig, load_config
from tests.support.agentcloud import Cloud, issue_device, running_cloud, wait_until, write_config
from tests.support.tpm import (
    Provider,
    SwTpm,
    openssl,
    swtpm_fixture,  # noqa: F401
    tpm2_provider_fixture,  # noqa: F401
)

pytestmark = pytest.mark.integration
DEVICE_AGENT = [sys.executable, "-m", "agent"]


@pytest.fixture(name="cloud")
def cloud_fixture(tmp_path: Path) -> Iterator[Cloud]:
    with running_cloud(tmp_path) as cloud:
        yield cloud


def clean_env() -> dict[str, str]:
    """The test's environment without the TPM variables (the CLI must add them itself)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENSSL_CONF", "TPM2OPENSSL_TCTI")}
    env["NOTIFY_SOCKET"] = ""
    return env


def tpm_config(
    tmp_path: Path, cloud: Cloud, swtpm: SwTpm, provider: Provider, regid: str
) -> AgentConfig:
    """An agent config with ``keystore = "tpm"`` and no certificate yet."""
    placeholder = issue_device(cloud, f"{regid}-placeholder")
    path = tmp_path / "agent.toml"
    write_config(path, cloud, placeholder, state_dir=tmp_path / "state")
    text = path.read_text()
    text = text.replace('keystore = "file"', 'keystore = "tpm"')
    text = text.replace(
        f'cert_chain_path = "{placeholder.chain_path}"',
        f'cert_chain_path = "{tmp_path / "device.pem"}"',
    )
    text = text.replace(
        f'key_path = "{placeholder.key_path}"', f'key_path = "{tmp_path / "device.tss2"}"'
    )
    text = text.replace(
        "[dps]",
        f'registration_id = "{regid}"\ncsr_path = "{tmp_path / "boot" / "device.csr"}"\n'
        f'openssl_conf = "{provider.openssl_conf}"\ntpm_tcti = "{swtpm.tcti}"\n\n[dps]',
        1,
    )
    path.write_text(text)
    return load_config(path)


def agent(config: AgentConfig, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*DEVICE_AGENT, "--config", str(config.source), *argv],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check:
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done


def sign(cloud: Cloud, csr_pem: bytes, out: Path, *, days: int = 2) -> Path:
    """devcloud's policy CA signs the CSR; the chain (leaf + issuing CA) goes to ``out``."""
    csr = x509.load_pem_x509_csr(csr_pem)
    ca = cloud.pki.issuing_ca("tpm-tests")
    leaf = cloud.pki.sign_csr(csr, ca, validity=timedelta(days=days))
    pem = serialization.Encoding.PEM
    out.write_bytes(leaf.public_bytes(pem) + ca.cert.public_bytes(pem))
    return out


def status(config: AgentConfig) -> dict[str, object]:
    path = config.state.directory / "status.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def test_keys_create_csr_install_show_and_check(
    tmp_path: Path, cloud: Cloud, swtpm: SwTpm, tpm2_provider: Provider
) -> None:
    config = tpm_config(tmp_path, cloud, swtpm, tpm2_provider, "tpm-keys")
    identity = config.identity
    assert "keystore is 'tpm'" in agent(config, "keys", "create", "--file", check=False).stderr
    agent(config, "keys", "create", "--tpm")
    assert identity.key_path.read_text().startswith("-----BEGIN TSS2 PRIVATE KEY-----")
    assert "exists already" in agent(config, "keys", "create", "--tpm").stdout

    agent(config, "keys", "csr")
    csr = x509.load_pem_x509_csr(identity.csr_path.read_bytes())  # repaired: cryptography parses it
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=tpm-keys"
    tpm_public = openssl(
        "pkey", "-in", str(identity.key_path), "-pubout", env=swtpm.env(tpm2_provider)
    )
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert (
        csr.public_key().public_bytes(serialization.Encoding.PEM, spki).decode()
        == tpm_public.stdout
    )

    # A certificate for another key is refused and nothing is installed.
    other = issue_device(cloud, "tpm-keys")
    refused = agent(config, "keys", "install-cert", str(other.chain_path), check=False)
    assert refused.returncode != 0
    assert "does not belong" in refused.stderr
    assert not identity.cert_chain_path.exists()

    signed = sign(cloud, identity.csr_path.read_bytes(), tmp_path / "signed.pem")
    agent(config, "keys", "install-cert", str(signed))
    assert identity.cert_chain_path.read_bytes() == signed.read_bytes()
    shown = json.loads(agent(config, "keys", "show", "--json").stdout)
    assert shown["keyKind"].startswith("tss2")
    assert shown["certificate"]["commonName"] == "tpm-keys"
    assert 1.9 < shown["certificate"]["daysLeft"] <= 2.0

    checked = json.loads(
        agent(config, "check", "--offline", "--no-sensors", "--json", check=False).stdout
    )
    results = {r["name"]: r for r in checked["results"]}
    assert results["tpm"]["status"] == "ok", results["tpm"]
    assert "not exportable" in results["tpm"]["detail"]
    assert results["certificate"]["status"] == "warn"  # two days left: under 30


def test_a_blob_from_another_tpm_is_named_as_such(
    tmp_path: Path, cloud: Cloud, swtpm: SwTpm, tpm2_provider: Provider
) -> None:
    config = tpm_config(tmp_path, cloud, swtpm, tpm2_provider, "tpm-foreign")
    agent(config, "keys", "create", "--tpm")
    agent(config, "keys", "csr")
    sign(cloud, config.identity.csr_path.read_bytes(), config.identity.cert_chain_path)
    with SwTpm(tmp_path / "other") as other:
        moved = config.source.read_text().replace(swtpm.tcti, other.tcti)
        config.source.write_text(moved)
        checked = agent(config, "check", "--offline", "--no-sensors", "--json", check=False)
    results = {r["name"]: r for r in json.loads(checked.stdout)["results"]}
    assert results["tpm"]["status"] == "fail"
    assert "belongs to another TPM" in results["tpm"]["detail"]


@pytest.fixture(name="agent_run")
def agent_run_fixture(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Agent processes started by a test; killed at teardown if still running."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def run_agent(
    config: AgentConfig, started: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    log = open(config.source.parent / "agent.log", "ab")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        [*DEVICE_AGENT, "--config", str(config.source), "run"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=clean_env(),
    )
    log.close()
    started.append(proc)
    return proc


def test_first_boot_csr_then_certificate_then_telemetry_and_a_tpm_outage(
    tmp_path: Path,
    cloud: Cloud,
    swtpm: SwTpm,
    tpm2_provider: Provider,
    agent_run: list[subprocess.Popen[bytes]],
) -> None:
    """No key, no certificate: the agent makes the key in the TPM, writes the CSR to the
    boot partition, says so and waits (READY, no exit 78); once the signed certificate
    is installed it provisions and sends telemetry. swtpm stopped mid-run -> the next
    connection finds the TPM gone -> IDENTITY_WAIT; swtpm back -> connected again."""
    config = tpm_config(tmp_path, cloud, swtpm, tpm2_provider, "tpm-first-boot")
    cloud.client.put_enrollment("tpm-first-boot")  # any verified leaf with this CN
    proc = run_agent(config, agent_run)
    identity = config.identity
    wait_until(lambda: status(config).get("state") == "IDENTITY_WAIT", timeout_s=30, what="waiting")
    assert identity.csr_path.is_file() and identity.key_path.is_file()
    assert "CSR for 'tpm-first-boot' written to" in str(status(config))
    shown = agent(config, "status", check=False).stdout
    assert "IDENTITY_WAIT" in shown and str(identity.csr_path) in shown

    sign(cloud, identity.csr_path.read_bytes(), tmp_path / "signed.pem")
    agent(config, "keys", "install-cert", str(tmp_path / "signed.pem"))
    wait_until(lambda: status(config).get("state") == "CONNECTED", timeout_s=30, what="connected")
    cloud.client.wait_for_telemetry(device_id="tpm-first-boot", count=2, timeout_s=20)

    swtpm.stop()
    # Drop the device's connection: reconnecting needs the TPM, which is gone.
    cloud.client.disable_device("tpm-first-boot")
    cloud.client.enable_device("tpm-first-boot")
    wait_until(
        lambda: status(config).get("state") == "IDENTITY_WAIT", timeout_s=30, what="IDENTITY_WAIT"
    )
    assert "TPM" in json.dumps(status(config))
    assert proc.poll() is None

    swtpm.start(same_port=True)
    wait_until(lambda: status(config).get("state") == "CONNECTED", timeout_s=30, what="reconnected")
    since = cloud.client.last_sequence_number()
    cloud.client.wait_for_telemetry(device_id="tpm-first-boot", since=since, count=1, timeout_s=20)
    proc.terminate()
    assert proc.wait(15) == 0


def test_dps_issuance_with_tpm_keys(
    tmp_path: Path,
    cloud: Cloud,
    swtpm: SwTpm,
    tpm2_provider: Provider,
    agent_run: list[subprocess.Popen[bytes]],
) -> None:
    """Onboarding key and operational key both in the TPM: DPS signs the operational
    key's CSR and the hub connection presents the issued certificate."""
    regid = "tpm-issued"
    config = tpm_config(tmp_path, cloud, swtpm, tpm2_provider, regid)
    text = config.source.read_text().replace("[dps]", 'issuance = "dps"\n\n[dps]', 1)
    config.source.write_text(text)
    config = load_config(config.source)
    identity = config.identity
    cloud.client.put_credential_policy("fleet", validity_days=30)
    cloud.client.put_enrollment(regid, credential_policy="fleet")
    agent(config, "keys", "create", "--tpm")
    agent(config, "keys", "csr")
    sign(cloud, identity.csr_path.read_bytes(), identity.cert_chain_path, days=365)

    proc = run_agent(config, agent_run)
    wait_until(lambda: status(config).get("state") == "CONNECTED", timeout_s=40, what="connected")
    cloud.client.wait_for_telemetry(device_id=regid, count=1, timeout_s=20)
    assert identity.operational_key.read_text().startswith("-----BEGIN TSS2 PRIVATE KEY-----")
    leaf = x509.load_pem_x509_certificates(identity.operational_cert.read_bytes())[0]
    operational = leaf.fingerprint(hashes.SHA256()).hex().upper()
    [issued] = cloud.client.issued_certificates(registration_id=regid)
    assert issued["sha256Thumbprint"] == operational
    assert cloud.client.get_device(regid)["connectionCertificateThumbprint"] == operational
    proc.terminate()
    assert proc.wait(15) == 0


def test_renewal_with_tpm_keys_makes_a_new_blob_and_switches_to_it(
    tmp_path: Path,
    cloud: Cloud,
    swtpm: SwTpm,
    tpm2_provider: Provider,
    agent_run: list[subprocess.Popen[bytes]],
) -> None:
    """A tiny ``renew_at`` makes the connected agent renew at once: the new key is a new
    TSS2 blob in the TPM, the hub connection moves to the new certificate, and the
    pointer names the new pair."""
    regid = "tpm-renew"
    config = tpm_config(tmp_path, cloud, swtpm, tpm2_provider, regid)
    extra = 'issuance = "dps"\nrenew_at = 0.000001\nrenew_jitter = 0.0\nrenew_check_s = 0.1\n'
    config.source.write_text(config.source.read_text().replace("[dps]", f"{extra}\n[dps]", 1))
    config = load_config(config.source)
    cloud.client.put_credential_policy("fleet", validity_days=30)
    cloud.client.put_enrollment(regid, credential_policy="fleet")
    agent(config, "keys", "create", "--tpm")
    agent(config, "keys", "csr")
    sign(cloud, config.identity.csr_path.read_bytes(), config.identity.cert_chain_path, days=365)
    pointer = config.identity.operational_cert.with_name("operational.json")

    proc = run_agent(config, agent_run)
    wait_until(pointer.exists, timeout_s=60, what="a committed renewal")
    doc = json.loads(pointer.read_text())
    key, cert = Path(doc["key"]), Path(doc["cert"])
    assert key.suffix == ".tss2"
    assert key.read_text().startswith("-----BEGIN TSS2 PRIVATE KEY-----")
    leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    renewed = leaf.fingerprint(hashes.SHA256()).hex().upper()
    issued = [
        c["sha256Thumbprint"] for c in cloud.client.issued_certificates(registration_id=regid)
    ]
    assert renewed in issued and len(issued) >= 2
    wait_until(
        lambda: cloud.client.get_device(regid)["connectionCertificateThumbprint"] in issued[1:],
        timeout_s=30,
        what="the hub connection with a renewed certificate",
    )
    assert proc.poll() is None
    proc.terminate()
    assert proc.wait(15) == 0


def test_a_cn_that_is_not_the_registration_id_is_reported_for_a_tpm_key_too(
    tmp_path: Path, cloud: Cloud, swtpm: SwTpm, tpm2_provider: Provider
) -> None:
    """The TPM keystore makes the file keystore's certificate checks (one function)."""
    config = tpm_config(tmp_path, cloud, swtpm, tpm2_provider, "tpm-cn")
    agent(config, "keys", "create", "--tpm")
    agent(config, "keys", "csr")
    sign(cloud, config.identity.csr_path.read_bytes(), config.identity.cert_chain_path)
    renamed = config.source.read_text().replace(
        'registration_id = "tpm-cn"', 'registration_id = "tpm-other"'
    )
    config.source.write_text(renamed)
    checked = agent(config, "check", "--offline", "--no-sensors", "--json", check=False)
    assert "the certificate's CN 'tpm-cn' is not the registration id 'tpm-other'" in (
        checked.stdout + checked.stderr
    ), checked.stdout
