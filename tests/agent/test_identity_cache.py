"""agent.identity.cache: a warm boot skips the keystore child only if nothing changed.

Real certificates from devcloud's PKI, checked once by the real child; the cache is
then probed with every change that must make it answer None.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.config import IdentityConfig
from agent.identity.cache import (
    CACHE_EXPIRY_MARGIN,
    files_signature,
    load_cached_identity,
    save_identity_cache,
)
from agent.identity.child import load_in_child
from agent.identity.keystore import Identity
from agent.store.files import IDENTITY_CACHE_FILE
from agent.store.status import strip_state
from devcloud.pki import PKI
from tests.support.identity import config_for

CONFIG = Path("/etc/device-agent/agent.toml")
PASSPHRASE = b"c4che-s3cret"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI.create(tmp_path_factory.mktemp("pki"))


def checked(config: IdentityConfig, state_dir: Path) -> Identity:
    """What the daemon does after a child check: signature first, then the cache."""
    signature = files_signature(config)
    identity = load_in_child(config, config_path=CONFIG, now=datetime.now(UTC))
    state_dir.mkdir(exist_ok=True)
    save_identity_cache(state_dir, config, identity, signature)
    return identity


def test_unchanged_files_give_the_same_identity_without_the_passphrase_on_disk(
    pki: PKI, tmp_path: Path
) -> None:
    issued = pki.issue_device("dev-cache", key_passphrase=PASSPHRASE)
    secret = tmp_path / "passphrase"
    secret.write_bytes(PASSPHRASE + b"\n")
    secret.chmod(0o600)
    config = config_for(issued, pki, key_passphrase_file=secret)
    identity = checked(config, tmp_path / "state")
    raw = (tmp_path / "state" / IDENTITY_CACHE_FILE).read_bytes()
    assert PASSPHRASE not in raw
    assert base64.b64encode(PASSPHRASE) not in raw
    assert ((tmp_path / "state" / IDENTITY_CACHE_FILE).stat().st_mode & 0o777) == 0o600
    cached, why = load_cached_identity(tmp_path / "state", config, now=datetime.now(UTC))
    assert cached == identity, why
    assert cached.key_passphrase == PASSPHRASE  # read from its file, as the keystore does


def test_a_replaced_certificate_misses_the_cache(pki: PKI, tmp_path: Path) -> None:
    issued = pki.issue_device("dev-replaced")
    config = config_for(issued, pki)
    checked(config, tmp_path / "state")
    renewed = pki.issue_device("dev-replaced", file_stem="dev-replaced-renewed")
    issued.chain_path.write_bytes(renewed.chain_path.read_bytes())
    cached, why = load_cached_identity(tmp_path / "state", config, now=datetime.now(UTC))
    assert cached is None
    assert "files changed" in why


@pytest.mark.parametrize("target", ["key", "anchor"])
def test_a_touched_file_misses_the_cache_even_with_its_mtime_put_back(
    pki: PKI, tmp_path: Path, target: str
) -> None:
    issued = pki.issue_device(f"dev-touched-{target}")
    config = config_for(issued, pki)
    checked(config, tmp_path / "state")
    path = issued.key_path if target == "key" else pki.root_path
    before = path.stat()
    path.write_bytes(path.read_bytes())  # same bytes, same inode and size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # ctime still moves
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    cached, why = load_cached_identity(tmp_path / "state", config, now=datetime.now(UTC))
    assert cached is None
    assert "files changed" in why


def test_a_key_readable_by_others_misses_the_cache(pki: PKI, tmp_path: Path) -> None:
    issued = pki.issue_device("dev-loose")
    config = config_for(issued, pki)
    checked(config, tmp_path / "state")
    issued.key_path.chmod(0o644)
    cached, _ = load_cached_identity(tmp_path / "state", config, now=datetime.now(UTC))
    assert cached is None


def test_the_mode_is_checked_even_if_the_signature_matches(pki: PKI, tmp_path: Path) -> None:
    # A cache written while the key was already loose (as a forged file could be).
    issued = pki.issue_device("dev-loose-sig")
    config = config_for(issued, pki)
    identity = checked(config, tmp_path / "state")
    issued.key_path.chmod(0o640)
    save_identity_cache(tmp_path / "state", config, identity, files_signature(config))
    cached, why = load_cached_identity(tmp_path / "state", config, now=datetime.now(UTC))
    assert cached is None
    assert str(issued.key_path) in why


def test_another_identity_config_misses_the_cache(pki: PKI, tmp_path: Path) -> None:
    issued = pki.issue_device("dev-config")
    config = config_for(issued, pki)
    checked(config, tmp_path / "state")
    now = datetime.now(UTC)
    assert load_cached_identity(tmp_path / "state", config, now=now)[0] is not None
    for other in (
        replace(config, registration_id="dev-other"),
        replace(config, trust_anchor_paths=()),
    ):
        cached, why = load_cached_identity(tmp_path / "state", other, now=now)
        assert cached is None
        assert "config changed" in why


def test_the_cache_holds_only_inside_the_validity_window_less_the_warning_margin(
    pki: PKI, tmp_path: Path
) -> None:
    issued = pki.issue_device("dev-window")
    config = config_for(issued, pki)
    identity = checked(config, tmp_path / "state")
    state = tmp_path / "state"
    inside = identity.not_after - CACHE_EXPIRY_MARGIN - timedelta(seconds=1)
    assert load_cached_identity(state, config, now=inside)[0] == identity
    for outside in (
        identity.not_after - CACHE_EXPIRY_MARGIN,
        identity.not_after + timedelta(seconds=1),
        identity.not_before - timedelta(seconds=1),
    ):
        cached, why = load_cached_identity(state, config, now=outside)
        assert cached is None
        assert "validity window" in why


def test_the_margin_is_the_keystores_expiry_warning() -> None:
    from agent.identity.file_keystore import EXPIRY_WARNING

    assert CACHE_EXPIRY_MARGIN == EXPIRY_WARNING


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"\xff\xfe",
        b"[]",
        b"null",
        b'{"schema": 2}',
        b'{"schema": 1}',
        b"[" * 100_000,
    ],
)
def test_a_corrupt_cache_is_no_cache(pki: PKI, tmp_path: Path, content: bytes) -> None:
    issued = pki.issue_device("dev-corrupt")
    config = config_for(issued, pki)
    (tmp_path / IDENTITY_CACHE_FILE).write_bytes(content)
    cached, why = load_cached_identity(tmp_path, config, now=datetime.now(UTC))
    assert cached is None
    assert why


def test_a_damaged_field_is_no_cache(pki: PKI, tmp_path: Path) -> None:
    issued = pki.issue_device("dev-damaged")
    config = config_for(issued, pki)
    checked(config, tmp_path / "state")
    path = tmp_path / "state" / IDENTITY_CACHE_FILE
    good = json.loads(path.read_text())
    now = datetime.now(UTC)
    assert load_cached_identity(tmp_path / "state", config, now=now)[0] is not None
    for key, value in [
        ("not_after", "tomorrow"),
        ("warnings", "one"),
        ("key_passphrase", "c2VjcmV0"),
        ("key_path", "/tmp/elsewhere.key"),
    ]:
        doc = json.loads(json.dumps(good))
        doc["identity"][key] = value
        path.write_text(json.dumps(doc))
        assert load_cached_identity(tmp_path / "state", config, now=now)[0] is None, key
    for missing in ("identity", "files_signature", "identity_config", "schema"):
        doc = json.loads(json.dumps(good))
        del doc[missing]
        path.write_text(json.dumps(doc))
        assert load_cached_identity(tmp_path / "state", config, now=now)[0] is None, missing


def test_no_cache_file(pki: PKI, tmp_path: Path) -> None:
    issued = pki.issue_device("dev-none")
    cached, why = load_cached_identity(tmp_path, config_for(issued, pki), now=datetime.now(UTC))
    assert cached is None
    assert why == "no identity cache"


def test_image_prep_strips_the_cache(pki: PKI, tmp_path: Path) -> None:
    issued = pki.issue_device("dev-strip")
    checked(config_for(issued, pki), tmp_path / "state")
    removed = strip_state(tmp_path / "state")
    assert tmp_path / "state" / IDENTITY_CACHE_FILE in removed
    assert list((tmp_path / "state").iterdir()) == []
