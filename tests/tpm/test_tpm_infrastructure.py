"""The test TPM itself: swtpm, the tpm2 provider, and what a TPM key can and cannot do.

Everything that touches the TPM runs as a child process whose environment carries
``OPENSSL_CONF`` and ``TPM2OPENSSL_TCTI`` from the start (OpenSSL reads its config once).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.identity.csr import strip_ecdsa_null_params
from devcloud.app import DevCloudHandle
from devcloud.issuance import check_csr
from devcloud.pki import Issued
from tests.support.devcloud import devcloud_fixture  # noqa: F401
from tests.support.tpm import (
    AptSource,
    Provider,
    SwTpm,
    archive_source,
    create_tpm_key,
    openssl,
    swtpm_fixture,  # noqa: F401
    tpm2_provider_fixture,  # noqa: F401
    tpm_csr_der,
    version_tuple,
)

TSS2_HEADER = "-----BEGIN TSS2 PRIVATE KEY-----"


# -- finding the provider (no network) ------------------------------------------------------


def test_version_tuple() -> None:
    assert version_tuple("1.3.0-1") == (1, 3, 0)
    assert version_tuple("1:1.1.1-1+b2") == (1, 1, 1)
    assert version_tuple("1.2.0~rc1-1") == (1, 2, 0)
    assert version_tuple("1.1.1-1") < (1, 2) <= version_tuple("1.2.0-1")


def test_archive_source_reads_deb822_and_one_line_formats(tmp_path: Path) -> None:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d" / "other.list").write_text(
        "deb [arch=amd64] http://elsewhere.invalid/x stable main\n"
    )
    (apt / "sources.list.d" / "debian.sources").write_text(
        textwrap.dedent(
            """\
            Types: deb
            URIs: http://mirror.invalid/debian
            Suites: bookworm bookworm-updates
            Components: main
            Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

            Types: deb
            URIs: http://mirror.invalid/debian-security
            Suites: bookworm-security
            Components: main
            """
        )
    )
    found = archive_source(apt, codename="bookworm")
    assert found == AptSource(
        "http://mirror.invalid/debian", "/usr/share/keyrings/debian-archive-keyring.gpg"
    )
    assert found.line("trixie") == (
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://mirror.invalid/debian trixie main"
    )
    (apt / "sources.list.d" / "debian.sources").unlink()
    (apt / "sources.list").write_text(
        "# comment\ndeb-src http://src.invalid/debian bookworm main\n"
        "deb http://old.invalid/debian bookworm main contrib\n"
    )
    assert archive_source(apt, codename="bookworm") == AptSource("http://old.invalid/debian", None)


def test_the_provider_is_new_enough_and_cached(tpm2_provider: Provider) -> None:
    assert version_tuple(tpm2_provider.version) >= (1, 2)
    assert tpm2_provider.module.is_file()
    conf = tpm2_provider.openssl_conf.read_text()
    assert f"module = {tpm2_provider.module}" in conf and "default = default_sect" in conf


# -- keys in the TPM --------------------------------------------------------------------------


def test_a_generated_key_is_a_tss2_blob_of_the_tpm(
    tmp_path: Path, swtpm: SwTpm, tpm2_provider: Provider
) -> None:
    key = create_tpm_key(tmp_path / "key.pem", swtpm.env(tpm2_provider))
    assert key.read_text().startswith(TSS2_HEADER)
    shown = openssl("pkey", "-in", str(key), "-noout", "-text", env=swtpm.env(tpm2_provider))
    assert shown.returncode == 0, shown.stderr
    assert "TPM 2.0" in shown.stdout


def test_the_key_cannot_be_exported_in_the_clear(
    tmp_path: Path, swtpm: SwTpm, tpm2_provider: Provider
) -> None:
    env = swtpm.env(tpm2_provider)
    key = create_tpm_key(tmp_path / "key.pem", env)
    clear = openssl("pkey", "-in", str(key), "-traditional", env=env)
    assert clear.returncode != 0
    assert "export failure" in clear.stderr
    rewritten = openssl("pkey", "-in", str(key), env=env)
    assert rewritten.returncode == 0
    assert rewritten.stdout.startswith(TSS2_HEADER)  # the blob again, never "PRIVATE KEY"
    assert "BEGIN PRIVATE KEY" not in rewritten.stdout
    pkcs8 = openssl("pkcs8", "-topk8", "-nocrypt", "-in", str(key), env=env)
    assert pkcs8.returncode != 0 and "BEGIN PRIVATE KEY" not in pkcs8.stdout


def test_a_key_from_another_tpm_fails_with_tpm_rc_integrity(
    tmp_path: Path, swtpm: SwTpm, tpm2_provider: Provider
) -> None:
    key = create_tpm_key(tmp_path / "key.pem", swtpm.env(tpm2_provider))
    with SwTpm(tmp_path / "other") as other:
        started = time.monotonic()
        loaded = openssl("pkey", "-in", str(key), "-noout", env=other.env(tpm2_provider))
        elapsed = time.monotonic() - started
    assert loaded.returncode != 0
    codes = re.findall(r"ErrorCode \(0x([0-9a-fA-F]+)\)", loaded.stderr)
    assert codes, loaded.stderr
    # TPM_RC_INTEGRITY (0x09F) in format-1, whatever handle or parameter number it names.
    assert int(codes[0], 16) & 0x0BF == 0x09F, loaded.stderr
    decoded = subprocess.run(
        ["tpm2_rc_decode", f"0x{codes[0]}"], capture_output=True, text=True, check=False
    )
    assert "integrity" in decoded.stdout.lower()
    assert elapsed < 10, f"a foreign key took {elapsed:.1f} s to fail"


def test_a_stopped_tpm_fails_fast_and_works_again_after_restart(
    tmp_path: Path, swtpm: SwTpm, tpm2_provider: Provider
) -> None:
    key = create_tpm_key(tmp_path / "key.pem", swtpm.env(tpm2_provider))
    swtpm.stop()
    started = time.monotonic()
    loaded = openssl("pkey", "-in", str(key), "-noout", env=swtpm.env(tpm2_provider))
    assert loaded.returncode != 0
    assert "Cannot connect to swtpm" in loaded.stderr
    assert time.monotonic() - started < 10
    swtpm.start()  # same state directory, new ports: the key belongs to it still
    again = openssl("pkey", "-in", str(key), "-noout", env=swtpm.env(tpm2_provider))
    assert again.returncode == 0, again.stderr


HOLD_KEY = """
import ssl, sys, time
context = ssl.create_default_context()
context.load_cert_chain(sys.argv[1], sys.argv[2])
print("loaded", flush=True)
time.sleep(60)
"""


def test_a_killed_key_holder_leaks_slots_until_flushed(
    tmp_path: Path, swtpm: SwTpm, tpm2_provider: Provider, devcloud: DevCloudHandle
) -> None:
    """swtpm has 3 transient slots and no resource manager (DESIGN): a SIGKILLed holder
    of a loaded key leaves its objects behind, the next load runs out of object memory
    (TPM_RC_OBJECT_MEMORY), and :meth:`SwTpm.flush_transient` gives the slots back."""
    env = swtpm.env(tpm2_provider)
    key = create_tpm_key(tmp_path / "key.pem", env)
    cert = _certificate_for(devcloud, key, env, "leaky", tmp_path)

    def hold_and_kill() -> str:
        """Load the key in a child, SIGKILL it; return its stderr if the load failed."""
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_KEY, str(cert.chain_path), str(key)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        loaded = holder.stdout.readline().strip() == "loaded"
        with contextlib.suppress(ProcessLookupError):
            os.kill(holder.pid, signal.SIGKILL)
        _, err = holder.communicate(timeout=10)
        return "" if loaded else err

    failures = [hold_and_kill() for _ in range(3)]
    full = next((f for f in failures if f), None)
    assert full is not None, "three killed holders and the TPM still had room"
    codes = re.findall(r"ErrorCode \(0x([0-9a-fA-F]+)\)", full)
    assert codes and int(codes[0], 16) == 0x902, full  # TPM_RC_OBJECT_MEMORY
    swtpm.flush_transient()
    assert hold_and_kill() == ""


# -- CSRs and TLS with a TPM key ----------------------------------------------------------------


def _certificate_for(
    cloud: DevCloudHandle, key: Path, env: dict[str, str], device_id: str, folder: Path
) -> Issued:
    """A devcloud leaf for the TPM key: CSR by ``openssl req``, repaired, signed by a policy CA."""
    csr = check_csr(strip_ecdsa_null_params(tpm_csr_der(key, device_id, env)), device_id)
    ca = cloud.pki.issuing_ca("tpm-tests")
    leaf = cloud.pki.sign_csr(csr, ca, validity=timedelta(days=1))
    pem = serialization.Encoding.PEM
    cert_path = folder / f"{device_id}.pem"
    cert_path.write_bytes(leaf.public_bytes(pem))
    chain_path = folder / f"{device_id}.chain.pem"
    chain_path.write_bytes(leaf.public_bytes(pem) + ca.cert.public_bytes(pem))
    return Issued(cert=leaf, cert_path=cert_path, chain_path=chain_path, key_path=key)


def test_a_tpm_csr_has_null_params_and_the_repair_keeps_it_valid(
    tmp_path: Path, swtpm: SwTpm, tpm2_provider: Provider
) -> None:
    env = swtpm.env(tpm2_provider)
    key = create_tpm_key(tmp_path / "key.pem", env)
    der = tpm_csr_der(key, "tpm-dev", env)
    with pytest.raises(ValueError, match="signature_alg"):
        x509.load_der_x509_csr(der)  # what DESIGN says of tpm2-openssl 1.3.0
    fixed = strip_ecdsa_null_params(der)
    assert len(fixed) == len(der) - 2
    csr = x509.load_der_x509_csr(fixed)
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=tpm-dev"
    (tmp_path / "fixed.der").write_bytes(fixed)
    verified = openssl(
        "req", "-inform", "DER", "-in", str(tmp_path / "fixed.der"), "-verify", "-noout", env=env
    )
    assert verified.returncode == 0 and "verify OK" in verified.stdout + verified.stderr
    public = openssl("pkey", "-in", str(key), "-pubout", env=env).stdout
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert csr.public_key().public_bytes(serialization.Encoding.PEM, spki).decode() == public


MQTT_CONNECT = """
import json, ssl, sys
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
host, port, device, hostname, ca, chain, key = sys.argv[1:8]
context = ssl.create_default_context(cafile=ca)
context.load_cert_chain(chain, key)
result = {}
def on_connect(client, userdata, flags, reason, properties):
    result["rc"] = int(reason.value)
    result["tls"] = client.socket().version()
    client.disconnect()
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv311)
client.username_pw_set(f"{hostname}/{device}/?api-version=2021-04-12")
client.tls_set_context(context)
client.on_connect = on_connect
client.connect(host, int(port), keepalive=30)
client.loop_forever(timeout=1.0)
print(json.dumps(result))
"""


def test_mutual_tls_with_the_tpm_key_against_the_hub(
    tmp_path: Path, swtpm: SwTpm, tpm2_provider: Provider, devcloud: DevCloudHandle
) -> None:
    env = swtpm.env(tpm2_provider)
    key = create_tpm_key(tmp_path / "key.pem", env)
    cert = _certificate_for(devcloud, key, env, "tpm-device", tmp_path)
    devcloud.client.create_device("tpm-device", "hub1")
    host, port = devcloud.hub_addresses["hub1"]
    argv = [
        sys.executable,
        "-c",
        MQTT_CONNECT,
        host,
        str(port),
        "tpm-device",
        devcloud.hub_hostname("hub1"),
        str(devcloud.ca_path),
        str(cert.chain_path),
        str(key),
    ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"rc": 0, "tls": "TLSv1.3"}
