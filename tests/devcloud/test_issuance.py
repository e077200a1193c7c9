"""Certificate issuance over the wire: DPS signs a CSR, the hubs accept and renew it.

Real TLS on loopback against a running devcloud; the devices are
:class:`tests.support.devcloud.MqttDevice` (paho-mqtt) with software keys. The agent's
side (TPM keys, renewal policy) is tested elsewhere.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from agent.identity.csr import strip_ecdsa_null_params
from devcloud.app import DevCloudHandle
from devcloud.errors import ConflictError, InvalidRequestError, NotFoundError
from devcloud.issuance import ISSUANCE_API_VERSION
from devcloud.pki import Issued
from tests.support.csr import add_null_params, b64, csr_der, ec_key, write_identity
from tests.support.devcloud import MqttDevice, mqtt_devices_fixture, running_devcloud  # noqa: F401

POLICY = "fleet"
CREDENTIALS = "$iothub/credentials/res/"


@pytest.fixture(name="cloud", scope="module")
def cloud_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCloudHandle]:
    """One devcloud for the module: a 7-day policy and a group on the intermediate using it."""
    with running_devcloud(tmp_path_factory.mktemp("issuance")) as cloud:
        cloud.client.put_credential_policy(POLICY, validity_days=7)
        cloud.client.put_enrollment_group("issuing", credential_policy=POLICY)
        cloud.client.delete_enrollment_group("default")
        yield cloud


def regid() -> str:
    return f"dev-{uuid.uuid4().hex[:10]}"


def dps_device(
    cloud: DevCloudHandle, devices: list[MqttDevice], rid: str, api_version: str
) -> MqttDevice:
    device = MqttDevice.dps(cloud, cloud.pki.issue_device(rid), rid, api_version=api_version)
    devices.append(device)
    assert device.connect() == 0
    return device


def provision(
    cloud: DevCloudHandle, devices: list[MqttDevice], tmp_path: Path, rid: str
) -> tuple[Issued, dict[str, Any], ec.EllipticCurvePrivateKey]:
    """Register ``rid`` with a CSR; return its issued identity, the state and the key."""
    key = ec_key(ec.SECP384R1())
    device = dps_device(cloud, devices, rid, ISSUANCE_API_VERSION)
    status, body = device.register(extra={"csr": b64(csr_der(key, rid))})
    assert status == 200, body
    state = body["registrationState"]
    identity = write_identity(tmp_path / rid, "issued", key, state["issuedCertificateChain"])
    return identity, state, key


def hub_device(
    cloud: DevCloudHandle, devices: list[MqttDevice], state: dict[str, Any], identity: Issued
) -> MqttDevice:
    device = MqttDevice.hub(cloud, state["assignedHub"], identity, state["deviceId"])
    devices.append(device)
    return device


# -- DPS ----------------------------------------------------------------------------------


def test_dps_signs_the_csr_and_the_hub_accepts_the_certificate(
    cloud: DevCloudHandle, mqtt_devices: list[MqttDevice], tmp_path: Path
) -> None:
    rid = regid()
    identity, state, key = provision(cloud, mqtt_devices, tmp_path, rid)

    chain = [
        x509.load_der_x509_certificate(base64.b64decode(c)) for c in state["issuedCertificateChain"]
    ]
    leaf, issuing, root = chain
    policy = cloud.client.get_credential_policy(POLICY)
    policy_ca = x509.load_pem_x509_certificate(policy["certificate"]["issuingCertificate"].encode())
    assert issuing == policy_ca and root == cloud.pki.root
    leaf.verify_directly_issued_by(issuing)
    issuing.verify_directly_issued_by(root)
    assert leaf.subject.rfc4514_string() == f"CN={rid}"
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime == timedelta(days=7)
    assert abs(leaf.not_valid_before_utc - datetime.now(UTC)) < timedelta(minutes=10)
    assert isinstance(issuing.public_key(), ec.EllipticCurvePublicKey)
    assert issuing.public_key().curve.name == "secp384r1"  # as Azure's policy CAs

    [record] = cloud.client.issued_certificates(registration_id=rid)
    assert record["issuedVia"] == "dps" and record["deviceId"] == rid
    assert record["credentialPolicy"] == POLICY and not record["refusedAtConnect"]

    hub = hub_device(cloud, mqtt_devices, state, identity)
    assert hub.connect() == 0
    assert hub.subscribe("$iothub/twin/res/#") == 1
    hub.publish("$iothub/twin/GET/?$rid=1", b"")
    topic, _ = hub.expect("$iothub/twin/res/")
    assert topic.startswith("$iothub/twin/res/200/")


def test_the_hub_accepts_the_leaf_alone_because_it_trusts_the_policy_ca(
    cloud: DevCloudHandle, mqtt_devices: list[MqttDevice], tmp_path: Path
) -> None:
    rid = regid()
    identity, state, _ = provision(cloud, mqtt_devices, tmp_path, rid)
    leaf_only = Issued(identity.cert, identity.cert_path, identity.cert_path, identity.key_path)
    assert hub_device(cloud, mqtt_devices, state, leaf_only).connect() == 0


def test_a_registration_without_csr_issues_nothing(
    cloud: DevCloudHandle, mqtt_devices: list[MqttDevice]
) -> None:
    rid = regid()
    status, body = dps_device(cloud, mqtt_devices, rid, ISSUANCE_API_VERSION).register()
    assert status == 200
    assert "issuedCertificateChain" not in body["registrationState"]
    assert cloud.client.issued_certificates(registration_id=rid) == []


def _bad_csrs(rid: str) -> list[tuple[str, Any, str]]:
    good = csr_der(ec_key(), rid)
    tampered = bytearray(good)
    tampered[-3] ^= 0x55  # inside the signature
    weak_rsa = rsa.generate_private_key(65537, 1024)  # noqa: S505 (the point of the case)
    return [
        ("cn-mismatch", b64(csr_der(ec_key(), "someone-else")), "CN"),
        ("p521", b64(csr_der(ec_key(ec.SECP521R1()), rid)), "curve"),
        ("rsa-1024", b64(csr_der(weak_rsa, rid)), "too small"),
        ("pem-armour", "-----BEGIN CERTIFICATE REQUEST-----" + b64(good), "PEM"),
        ("not-base64", "!!" + b64(good), "base64"),
        ("not-der", b64(b"\x30\x03\x02\x01\x00"), "DER"),
        ("bad-signature", b64(bytes(tampered)), "signature"),
        ("null-params", b64(add_null_params(good)), "DER"),
        ("too-long", "A" * (8 * 1024 + 4), "exceeds"),
        ("empty", "", "missing"),
        ("not-a-string", 42, "missing"),
    ]


def test_dps_answers_400_for_every_bad_csr_and_creates_nothing(
    cloud: DevCloudHandle, mqtt_devices: list[MqttDevice]
) -> None:
    rid = regid()
    device = dps_device(cloud, mqtt_devices, rid, ISSUANCE_API_VERSION)
    for case, csr, words in _bad_csrs(rid):
        status, body = device.register(extra={"csr": csr})
        assert status == 400, (case, body)
        assert body["errorCode"] == 400004, case
        assert words in body["message"], (case, body["message"])
    assert cloud.client.issued_certificates(registration_id=rid) == []
    with pytest.raises(NotFoundError):
        cloud.client.get_registration(rid)


def test_a_tpm2_openssl_style_csr_is_accepted_once_repaired(
    cloud: DevCloudHandle, mqtt_devices: list[MqttDevice]
) -> None:
    rid = regid()
    broken = add_null_params(csr_der(ec_key(), rid))
    device = dps_device(cloud, mqtt_devices, rid, ISSUANCE_API_VERSION)
    status, _ = device.register(extra={"csr": b64(broken)})
    assert status == 400
    status, body = device.register(extra={"csr": b64(strip_ecdsa_null_params(broken))})
    assert status == 200
    assert len(body["registrationState"]["issuedCertificateChain"]) == 3


def test_csr_needs_the_preview_api_version(
    cloud: DevCloudHandle, mqtt_devices: list[MqttDevice]
) -> None:
    rid = regid()
    device = dps_device(cloud, mqtt_devices, rid, "2019-03-31")
    status, body = device.register(extra={"csr": b64(csr_der(ec_key(), rid))})
    assert status == 400
    assert ISSUANCE_API_VERSION in body["message"]


def test_csr_needs_an_enrollment_with_a_policy(
    cloud: DevCloudHandle, mqtt_devices: list[MqttDevice]
) -> None:
    rid = regid()
    cloud.client.put_enrollment(rid)  # an individual enrollment (it wins) without a policy
    device = dps_device(cloud, mqtt_devices, rid, ISSUANCE_API_VERSION)
    status, body = device.register(extra={"csr": b64(csr_der(ec_key(), rid))})
    assert status == 400
    assert "credential policy" in body["message"]


# -- the hub's renewal endpoint -------------------------------------------------------------


def renew(
    hub: MqttDevice, body: dict[str, Any] | bytes, rid: str = "1"
) -> tuple[int, dict[str, Any]]:
    """Publish issueCertificate; return the final status and body (after any 202)."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    hub.publish(f"$iothub/credentials/POST/issueCertificate/?$rid={rid}", payload)
    for _ in range(2):  # at most a 202 and then the answer
        topic, raw = hub.expect(CREDENTIALS, timeout_s=10)
        status = int(topic[len(CREDENTIALS) :].split("/", 1)[0])
        assert topic.endswith(f"/?$rid={rid}"), topic
        answer = json.loads(raw)
        if status != 202:
            return status, answer
        assert set(answer) == {"correlationId", "operationExpires"}
    raise AssertionError("two 202 answers")


@pytest.fixture(name="renewing")
def renewing_fixture(
    cloud: DevCloudHandle, mqtt_devices: list[MqttDevice], tmp_path: Path
) -> tuple[MqttDevice, str, dict[str, Any]]:
    """A device provisioned with an issued certificate, connected to its hub and
    subscribed to the credentials responses."""
    rid = regid()
    identity, state, _ = provision(cloud, mqtt_devices, tmp_path, rid)
    hub = hub_device(cloud, mqtt_devices, state, identity)
    assert hub.connect() == 0
    assert hub.subscribe("$iothub/credentials/res/#") == 1
    return hub, rid, state


@pytest.fixture(name="shared_renewing", scope="module")
def shared_renewing_fixture(
    cloud: DevCloudHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[MqttDevice, str, dict[str, Any]]]:
    """As ``renewing``, one device for a module's worth of requests that leave nothing
    pending behind them."""
    devices: list[MqttDevice] = []
    rid = regid()
    try:
        identity, state, _ = provision(cloud, devices, tmp_path_factory.mktemp("shared"), rid)
        hub = hub_device(cloud, devices, state, identity)
        assert hub.connect() == 0
        assert hub.subscribe("$iothub/credentials/res/#") == 1
        yield hub, rid, state
    finally:
        for device in devices:
            device.close()


def test_the_hub_renews_with_a_new_key_and_the_new_certificate_connects(
    cloud: DevCloudHandle,
    mqtt_devices: list[MqttDevice],
    tmp_path: Path,
    renewing: tuple[MqttDevice, str, dict[str, Any]],
) -> None:
    hub, rid, state = renewing
    new_key = ec_key(ec.SECP384R1())
    status, body = renew(hub, {"id": rid, "csr": b64(csr_der(new_key, rid)), "replace": "*"})
    assert status == 200, body
    assert "correlationId" in body
    leaf = x509.load_der_x509_certificate(base64.b64decode(body["certificates"][0]))
    assert leaf.public_key().public_numbers() == new_key.public_key().public_numbers()
    records = cloud.client.issued_certificates(device_id=rid)
    assert [r["issuedVia"] for r in records] == ["dps", "hub"]

    renewed = write_identity(tmp_path / "renewed", "renewed", new_key, body["certificates"])
    again = hub_device(cloud, mqtt_devices, state, renewed)
    assert again.connect() == 0


@pytest.mark.parametrize(
    ("case", "payload", "status", "code"),
    [
        ("empty", b"", 400, 400004),
        ("not-json", b'{"id": "x", "csr":', 400, 400006),
        ("array", b'["not", "an", "object"]', 400, 400004),
        ("wrong-id", {"id": "someone-else", "csr": "CSR"}, 400, 400004),
        ("unknown-field", {"id": "ID", "csr": "CSR", "extra": 1}, 400, 400004),
        ("csr-too-long", {"id": "ID", "csr": "A" * 9000}, 400, 400004),
        ("csr-not-base64", {"id": "ID", "csr": "not-valid-base64!!@@##"}, 400, 400004),
        ("bad-replace", {"id": "ID", "csr": "CSR", "replace": "123"}, 400, 400004),
        ("replace-nothing", {"id": "ID", "csr": "CSR", "replace": "abcd-1234"}, 412, 412001),
        ("cn-mismatch", {"id": "ID", "csr": "OTHER"}, 400, 400037),
    ],
)
def test_the_hub_answers_bad_requests_with_azures_codes(
    shared_renewing: tuple[MqttDevice, str, dict[str, Any]],
    case: str,
    payload: Any,
    status: int,
    code: int,
) -> None:
    hub, rid, _ = shared_renewing
    if isinstance(payload, dict):
        good = b64(csr_der(ec_key(), rid))
        other = b64(csr_der(ec_key(), "other"))
        payload = {
            k: (rid if v == "ID" else good if v == "CSR" else other if v == "OTHER" else v)
            for k, v in payload.items()
        }
    answer_status, body = renew(hub, payload)
    assert (answer_status, body["errorCode"]) == (status, code), (case, body)
    assert {"message", "trackingId", "timestampUtc"} <= set(body)


def test_a_request_without_rid_gets_no_answer(
    renewing: tuple[MqttDevice, str, dict[str, Any]],
) -> None:
    hub, rid, _ = renewing
    good = {"id": rid, "csr": b64(csr_der(ec_key(), rid))}
    hub.publish("$iothub/credentials/POST/issueCertificate/", json.dumps(good))
    status, _ = renew(hub, good, rid="second")  # the first answer seen is the second's
    assert status == 200


@pytest.mark.parametrize(("code", "status"), [(400040, 400), (429002, 429), (503001, 503)])
def test_a_refused_renewal_answers_the_chosen_code_and_allowing_restores_it(
    cloud: DevCloudHandle,
    renewing: tuple[MqttDevice, str, dict[str, Any]],
    code: int,
    status: int,
) -> None:
    hub, rid, _ = renewing
    cloud.client.refuse_renewals(rid, error_code=code)
    request = {"id": rid, "csr": b64(csr_der(ec_key(), rid))}
    answer_status, body = renew(hub, request)
    assert (answer_status, body["errorCode"]) == (status, code)
    cloud.client.allow_renewals(rid)
    assert renew(hub, request, rid="2")[0] == 200


def test_connect_mode_issues_a_certificate_the_hub_then_refuses(
    cloud: DevCloudHandle,
    mqtt_devices: list[MqttDevice],
    tmp_path: Path,
    renewing: tuple[MqttDevice, str, dict[str, Any]],
) -> None:
    hub, rid, state = renewing
    cloud.client.refuse_renewals(rid, mode="connect")
    new_key = ec_key()
    status, body = renew(hub, {"id": rid, "csr": b64(csr_der(new_key, rid))})
    assert status == 200
    renewed = write_identity(tmp_path / "refused", "refused", new_key, body["certificates"])
    assert hub_device(cloud, mqtt_devices, state, renewed).connect() == 5
    # The refused attempt did not displace the connection with the old certificate.
    assert hub.subscribe("$iothub/twin/res/#") == 1
    hub.publish("$iothub/twin/GET/?$rid=7", b"")
    assert hub.expect("$iothub/twin/res/")[0].startswith("$iothub/twin/res/200/")
    records = cloud.client.issued_certificates(device_id=rid)
    assert records[-1]["refusedAtConnect"] is True


def test_a_device_without_a_policy_cannot_renew(
    cloud: DevCloudHandle, mqtt_devices: list[MqttDevice]
) -> None:
    rid = regid()
    identity = cloud.pki.issue_device(rid)
    cloud.client.create_device(rid, "hub1")
    hub = MqttDevice.hub(cloud, "hub1", identity, rid)
    mqtt_devices.append(hub)
    assert hub.connect() == 0
    assert hub.subscribe("$iothub/credentials/res/#") == 1
    status, body = renew(hub, {"id": rid, "csr": b64(csr_der(ec_key(), rid))})
    assert (status, body["errorCode"]) == (412, 412005)


# -- REST -----------------------------------------------------------------------------------


def test_policy_rest_validation(cloud: DevCloudHandle) -> None:
    client = cloud.client
    for days in (0, 91):
        with pytest.raises(InvalidRequestError):
            client.put_credential_policy("bad", validity_days=days)
    with pytest.raises(InvalidRequestError, match="unknown credential policy"):
        client.put_enrollment_group("orphan", credential_policy="no-such-policy")
    with pytest.raises(ConflictError):
        client.delete_credential_policy(POLICY)
    client.put_credential_policy("spare", validity_days=1)
    assert {p["name"] for p in client.list_credential_policies()} >= {POLICY, "spare"}
    pem = client.get_credential_policy("spare")["certificate"]["issuingCertificate"]
    ca = x509.load_pem_x509_certificate(pem.encode())
    ca.verify_directly_issued_by(cloud.pki.root)
    assert ca.public_bytes(serialization.Encoding.PEM).decode() == pem
    client.delete_credential_policy("spare")
    with pytest.raises(NotFoundError):
        client.get_credential_policy("spare")
    group = client.get_enrollment_group("issuing")
    assert group["credentialPolicy"] == POLICY
