"""agent.identity.child: the keystore's checks in a child process, with real certificates."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.errors import (
    CertificateInvalidError,
    IdentityMissingError,
    IdentityUnavailableError,
    KeyPermissionError,
    KeystoreCheckTimeoutError,
    KeystoreError,
)
from agent.identity.cache import files_signature
from agent.identity.child import identity_from_json, identity_to_json, load_in_child
from agent.identity.keystore import open_keystore
from devcloud.pki import PKI
from tests.support.identity import config_for

CONFIG = Path("/etc/device-agent/agent.toml")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI.create(tmp_path_factory.mktemp("pki"))


#: Both ways of making the child: os.fork() (the daemon's) and a fresh interpreter.
BOTH_WAYS = pytest.mark.parametrize("fork", [True, False], ids=["fork", "spawn"])


@BOTH_WAYS
def test_child_loads_the_same_identity_as_the_keystore(
    pki: PKI, tmp_path: Path, fork: bool
) -> None:
    issued = pki.issue_device("dev-child", key_passphrase=b"s3cret")
    secret = tmp_path / "passphrase"
    secret.write_bytes(b"s3cret\n")
    secret.chmod(0o600)
    config = config_for(issued, pki, key_passphrase_file=secret)
    now = datetime.now(UTC)
    in_process = open_keystore(config, config_path=CONFIG).load(now=now)
    child = load_in_child(config, config_path=CONFIG, now=now, fork=fork)
    assert child == in_process
    assert child.key_passphrase == b"s3cret"
    assert identity_from_json(identity_to_json(child)) == child


@BOTH_WAYS
def test_child_checks_against_the_time_it_is_given(pki: PKI, fork: bool) -> None:
    issued = pki.issue_device("dev-later")
    later = issued.cert.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(CertificateInvalidError, match="expired") as caught:
        load_in_child(config_for(issued, pki), config_path=CONFIG, now=later, fork=fork)
    assert caught.value.path == issued.chain_path
    assert caught.value.fix == "install a renewed device certificate"


@BOTH_WAYS
def test_child_errors_keep_their_class(pki: PKI, tmp_path: Path, fork: bool) -> None:
    issued = pki.issue_device("dev-open")
    open_key = tmp_path / "open.key"
    open_key.write_bytes(issued.key_path.read_bytes())
    open_key.chmod(0o644)
    now = datetime.now(UTC)
    with pytest.raises(KeyPermissionError, match="chmod 600"):
        load_in_child(
            config_for(issued, pki, key_path=open_key), config_path=CONFIG, now=now, fork=fork
        )
    missing = tmp_path / "missing.pem"
    with pytest.raises(KeystoreError, match="no such file") as caught:
        load_in_child(
            config_for(issued, pki, cert_chain_path=missing), config_path=CONFIG, now=now, fork=fork
        )
    assert type(caught.value) is IdentityMissingError  # no identity yet: the daemon waits
    with pytest.raises(KeystoreError, match="no such file") as caught:
        load_in_child(
            config_for(issued, pki, trust_anchor_paths=(missing,)),
            config_path=CONFIG,
            now=now,
            fork=fork,
        )
    assert type(caught.value) is KeystoreError  # a missing trust anchor is the config's fault
    other = pki.issue_device("dev-other")
    with pytest.raises(CertificateInvalidError, match="does not belong"):
        load_in_child(
            config_for(issued, pki, key_path=other.key_path), config_path=CONFIG, now=now, fork=fork
        )


def test_validity_window(pki: PKI) -> None:
    issued = pki.issue_device("dev-window")
    identity = open_keystore(config_for(issued, pki), config_path=CONFIG).load(
        now=datetime.now(UTC)
    )
    inside = identity.not_before + timedelta(seconds=1)
    assert identity.valid_at(inside) and identity.invalid_reason(inside) is None
    before = identity.not_before - timedelta(seconds=1)
    assert "not valid before" in str(identity.invalid_reason(before))
    assert "expired" in str(identity.invalid_reason(identity.not_after))
    assert not identity.valid_at(identity.not_after)


def test_files_signature_changes_when_a_file_is_replaced(pki: PKI) -> None:
    issued = pki.issue_device("dev-sig")
    config = config_for(issued, pki)
    first = files_signature(config)
    assert first == files_signature(config)
    other = pki.issue_device("dev-sig", file_stem="dev-sig-2")
    os.replace(other.key_path, issued.key_path)  # a new inode, maybe the same size
    assert files_signature(config) != first
    second = files_signature(config)
    issued.chain_path.unlink()
    assert files_signature(config) != second


def test_a_child_that_does_not_answer_in_time_is_a_wait_not_a_verdict(pki: PKI) -> None:
    issued = pki.issue_device("dev-slow")
    now = datetime.now(UTC)
    # No interpreter starts and imports cryptography in a millisecond: a real timeout.
    with pytest.raises(KeystoreCheckTimeoutError, match="did not finish within") as caught:
        load_in_child(
            config_for(issued, pki), config_path=CONFIG, now=now, timeout_s=0.001, fork=False
        )
    # The daemon waits in IDENTITY_WAIT on an IdentityUnavailableError instead of exiting 78.
    assert isinstance(caught.value, IdentityUnavailableError)
    assert isinstance(caught.value, TimeoutError)


#: Set by a test: the next forked child writes its pid there and then hangs.
_HANG_CHILD: list[Path] = []


def _hang_if_asked() -> None:
    if _HANG_CHILD:
        _HANG_CHILD[0].write_text(str(os.getpid()))
        time.sleep(120)


os.register_at_fork(after_in_child=_hang_if_asked)


def test_a_forked_child_that_does_not_answer_in_time_is_killed_and_reaped(
    pki: PKI, tmp_path: Path
) -> None:
    issued = pki.issue_device("dev-hang")
    pid_file = tmp_path / "child.pid"
    _HANG_CHILD.append(pid_file)
    try:
        with pytest.raises(KeystoreCheckTimeoutError, match=r"did not finish within 0\.5 s"):
            load_in_child(
                config_for(issued, pki),
                config_path=CONFIG,
                now=datetime.now(UTC),
                timeout_s=0.5,
                fork=True,
            )
    finally:
        _HANG_CHILD.clear()
    pid = int(pid_file.read_text())
    # Killed and waited for: neither still sleeping nor left as a zombie.
    assert not Path(f"/proc/{pid}").exists()


def test_the_default_forks_only_a_single_threaded_process(pki: PKI, tmp_path: Path) -> None:
    """With another thread running, the default starts a fresh interpreter: no os.fork()
    (which would run this process's at-fork hooks) happens."""
    issued = pki.issue_device("dev-threads")
    pid_file = tmp_path / "child.pid"
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, args=(30,))
    other.start()
    _HANG_CHILD.append(pid_file)
    try:
        identity = load_in_child(config_for(issued, pki), config_path=CONFIG, now=datetime.now(UTC))
    finally:
        _HANG_CHILD.clear()
        stop.set()
        other.join()
    assert identity.registration_id == "dev-threads"
    assert not pid_file.exists()  # no os.fork() happened
