"""The registry and its stores: records, events, twins, persistence."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from devcloud.errors import ConflictError, InvalidRequestError, NotFoundError
from devcloud.model import (
    AllocationPolicy,
    CredentialPolicy,
    EnrollmentGroup,
    IndividualEnrollment,
    InitialTwin,
    IssuedCertificate,
    IssuedVia,
    Registration,
    ReprovisionPolicy,
    Twin,
    merge_patch,
)
from devcloud.pki import PKI
from devcloud.registry import DesiredPatched, DeviceChanged, Registry, RegistryEvent
from devcloud.store import MemoryStore, SQLiteStore, Store
from tests.support.devcloud import pki_fixture  # noqa: F401

HUBS = ("hub1", "hub2")


def fixed_clock() -> datetime:
    return datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def memory_store(_tmp: Path) -> Store:
    return MemoryStore()


def sqlite_store(tmp: Path) -> Store:
    return SQLiteStore(tmp / "state.db")


STORES: list[Callable[[Path], Store]] = [memory_store, sqlite_store]


@pytest.mark.parametrize("make_store", STORES, ids=["memory", "sqlite"])
def test_store_contract(make_store: Callable[[Path], Store], tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert store.load("k") == {}
    store.put("k", "a", {"x": [1, 2], "y": None})
    store.put("k", "b", {"x": 2})
    store.put("other", "a", {"z": True})
    store.put("k", "b", {"x": 3})
    assert store.load("k") == {"a": {"x": [1, 2], "y": None}, "b": {"x": 3}}
    loaded = store.load("k")
    loaded["a"]["x"].append(99)  # a copy: mutating it must not change the store
    assert store.load("k")["a"]["x"] == [1, 2]
    store.delete("k", "a")
    store.delete("k", "missing")
    assert store.load("k") == {"b": {"x": 3}}
    assert store.load("other") == {"a": {"z": True}}
    store.close()


def _group(pki: PKI, group_id: str = "g1", **kw: object) -> EnrollmentGroup:
    pem = pki.intermediate.public_bytes(serialization.Encoding.PEM).decode()
    return EnrollmentGroup(group_id=group_id, signing_cert_pem=pem, **kw)  # type: ignore[arg-type]


def test_groups_crud_stamps_and_validates(pki: PKI) -> None:
    registry = Registry(HUBS, clock=fixed_clock)
    stored = registry.put_group(_group(pki, iot_hubs=("hub2",)))
    assert stored.created == stored.updated == "2026-01-02T03:04:05.000000Z"
    assert stored.etag
    assert registry.get_group("g1") == stored
    assert [g.group_id for g in registry.groups()] == ["g1"]
    generation = registry.trust_generation
    registry.delete_group("g1")
    assert registry.trust_generation == generation + 1
    with pytest.raises(NotFoundError):
        registry.get_group("g1")
    with pytest.raises(NotFoundError):
        registry.delete_group("g1")
    with pytest.raises(InvalidRequestError, match="unknown hub"):
        registry.put_group(_group(pki, iot_hubs=("nope",)))
    with pytest.raises(InvalidRequestError, match="invalid"):
        registry.put_group(_group(pki, group_id="bad id/with slash"))
    with pytest.raises(InvalidRequestError, match="PEM"):
        registry.put_group(EnrollmentGroup(group_id="g2", signing_cert_pem="garbage"))


def test_enrollment_thumbprints_are_normalised() -> None:
    registry = Registry(HUBS)
    stored = registry.put_enrollment(IndividualEnrollment("dev-1", thumbprints=("ab:cd",)))
    assert stored.thumbprints == ("ABCD",)
    assert registry.get_enrollment("dev-1") == stored
    registry.delete_enrollment("dev-1")
    with pytest.raises(NotFoundError):
        registry.get_enrollment("dev-1")


def test_devices_events_and_lookup() -> None:
    registry = Registry(HUBS)
    events: list[RegistryEvent] = []
    registry.add_listener(events.append)
    device = registry.create_device("hub1", "d1", registration_id="d1")
    assert device.enabled and device.status == "enabled"
    assert events == [DeviceChanged("hub1", "d1", device)]
    with pytest.raises(ConflictError):
        registry.create_device("hub1", "d1")
    assert registry.find_device("d1") == device
    registry.create_device("hub2", "d1")
    with pytest.raises(ConflictError, match="name the hub"):
        registry.find_device("d1")
    assert registry.find_device("d1", hub="hub1") == device
    with pytest.raises(NotFoundError):
        registry.find_device("nobody")
    with pytest.raises(InvalidRequestError):
        registry.create_device("hub9", "d1")
    disabled = registry.set_device_enabled("hub1", "d1", False)
    assert not disabled.enabled and disabled.etag != device.etag
    assert events[-1] == DeviceChanged("hub1", "d1", disabled)
    registry.delete_device("hub1", "d1")
    assert events[-1] == DeviceChanged("hub1", "d1", None)
    assert registry.device("hub1", "d1") is None
    with pytest.raises(NotFoundError):
        registry.get_twin("hub1", "d1")
    assert [d.hub for d in registry.devices()] == ["hub2"]
    assert registry.devices("hub1") == []


@pytest.mark.parametrize(
    ("target", "patch", "expected"),
    [
        ({"a": 1}, {"b": 2}, {"a": 1, "b": 2}),
        ({"a": 1}, {"a": None}, {}),
        ({"a": {"x": 1, "y": 2}}, {"a": {"y": None, "z": 3}}, {"a": {"x": 1, "z": 3}}),
        ({"a": 1}, {"a": {"n": 1}}, {"a": {"n": 1}}),
        ({"a": {"n": 1}}, {"a": 5}, {"a": 5}),
        ({}, {"$version": 4, "k": [1]}, {"k": [1]}),
        ({}, {"a": {"b": None}}, {"a": {}}),
    ],
)
def test_merge_patch(target: dict[str, object], patch: dict[str, object], expected: object) -> None:
    assert merge_patch(target, patch) == expected


def test_twin_patches_bump_versions_and_push_desired() -> None:
    registry = Registry(HUBS)
    registry.create_device("hub1", "d1", twin=Twin.initial(InitialTwin({"rate": 5}, {"t": 1})))
    events: list[RegistryEvent] = []
    registry.add_listener(events.append)
    twin = registry.patch_desired("hub1", "d1", {"rate": 10, "$version": 99}, tags={"site": "x"})
    assert twin.desired == {"rate": 10}
    assert twin.desired_version == 2
    assert twin.tags == {"t": 1, "site": "x"}
    assert events == [DesiredPatched("hub1", "d1", {"rate": 10, "$version": 2}, 2)]
    twin = registry.patch_reported("hub1", "d1", {"fw": "1.0"})
    assert twin.reported == {"fw": "1.0"} and twin.reported_version == 2
    view = registry.get_twin("hub1", "d1").device_view()
    assert view == {
        "desired": {"rate": 10, "$version": 2},
        "reported": {"fw": "1.0", "$version": 2},
    }
    with pytest.raises(InvalidRequestError):
        registry.patch_reported("hub1", "d1", [1, 2])  # type: ignore[arg-type]
    events.clear()
    registry.patch_desired("hub1", "d1", {}, tags={"only": "tags"})
    assert events == []  # a tags-only patch does not reach the device


def test_stats_count_per_registration_id() -> None:
    registry = Registry(HUBS)
    registry.count_attempt("a")
    registry.count_attempt("a")
    registry.count_assignment("a")
    registry.count_attempt("b")
    assert registry.stats() == {
        "a": {"attempts": 2, "assignments": 1},
        "b": {"attempts": 1, "assignments": 0},
    }


def test_sqlite_registry_survives_restart(tmp_path: Path, pki: PKI) -> None:
    db = tmp_path / "devcloud.db"
    registry = Registry(HUBS, SQLiteStore(db))
    group = registry.put_group(
        _group(
            pki,
            allocation=AllocationPolicy.STATIC,
            iot_hubs=("hub2", "hub1"),
            reprovision=ReprovisionPolicy.RESET,
            initial_twin=InitialTwin({"a": 1}, {"tag": "x"}),
            webhook_url=None,
        )
    )
    enrollment = registry.put_enrollment(IndividualEnrollment("e1", device_id="dev-e1"))
    registry.create_device("hub2", "d1", registration_id="d1")
    registry.set_device_enabled("hub2", "d1", False)
    registry.patch_desired("hub2", "d1", {"x": {"y": 1}})
    registry.patch_reported("hub2", "d1", {"r": True})
    registration = Registration(
        "d1", "d1", "hub2", "assigned", "initialAssignment", "c", "u", "e", "group:g1", {"p": 1}
    )
    registry.put_registration(registration)
    registry.count_attempt("d1")
    twin = registry.get_twin("hub2", "d1")
    device = registry.get_device("hub2", "d1")
    registry.close()

    again = Registry(HUBS, SQLiteStore(db))
    assert again.get_group("g1") == group
    assert again.get_enrollment("e1") == enrollment
    assert again.get_device("hub2", "d1") == device
    assert again.get_twin("hub2", "d1") == twin
    assert again.get_registration("d1") == registration
    assert again.stats() == {"d1": {"attempts": 1, "assignments": 0}}
    again.delete_device("hub2", "d1")
    again.close()
    third = Registry(HUBS, SQLiteStore(db))
    assert third.devices() == []
    third.close()


def test_policies_and_issued_certificates_survive_restart(tmp_path: Path, pki: PKI) -> None:
    db = tmp_path / "issued.db"
    registry = Registry(HUBS, SQLiteStore(db))
    registry.put_policy(CredentialPolicy("p", validity_days=3))
    pem = pki.intermediate.public_bytes(serialization.Encoding.PEM).decode()
    registry.put_group(EnrollmentGroup("g", pem, credential_policy="p"))
    issued = IssuedCertificate(
        "AB" * 32, "1F", "r", "d", HUBS[0], "p", "t0", "t1", IssuedVia.HUB, "t0", refused=True
    )
    registry.record_issued(issued)
    registry.close()
    again = Registry(HUBS, SQLiteStore(db))
    assert again.get_policy("p").validity_days == 3
    assert again.get_group("g").credential_policy == "p"
    assert again.issued_certificates(device_id="d") == [issued]
    assert again.certificate_refused("AB" * 32)
    with pytest.raises(ConflictError):
        again.delete_policy("p")
    again.close()
