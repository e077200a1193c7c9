"""The first-boot identity import (agent.identity.importer and ``import-identity``)."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import IdentityConfig
from agent.identity.importer import import_identity, left_over

NOBODY = pwd.getpwnam("nobody")


def layout(tmp_path: Path, *, passphrase: bool = False) -> tuple[IdentityConfig, Path]:
    etc, boot, state = tmp_path / "etc", tmp_path / "boot", tmp_path / "state"
    for folder in (etc, boot, state):
        folder.mkdir()
    config = IdentityConfig(
        cert_chain_path=etc / "device.chain.pem",
        key_path=etc / "device.key",
        key_passphrase_file=etc / "device.key.pass" if passphrase else None,
        import_dir=boot,
    )
    return config, state


def test_dropped_files_are_moved_into_place_with_their_modes(tmp_path: Path) -> None:
    config, state = layout(tmp_path, passphrase=True)
    boot = config.import_dir
    (boot / "device.key").write_bytes(b"KEY")
    (boot / "device.key.pass").write_bytes(b"PASS")
    (boot / "device.chain.pem").write_bytes(b"CHAIN")
    (boot / "README.txt").write_text("not mine\n")

    imported = import_identity(config, state_dir=state)

    assert [item.destination.name for item in imported] == [
        "device.key.pass",
        "device.key",
        "device.chain.pem",
    ]
    assert config.key_path.read_bytes() == b"KEY"
    assert config.cert_chain_path.read_bytes() == b"CHAIN"
    modes = {p.name: p.stat().st_mode & 0o777 for p in config.cert_chain_path.parent.iterdir()}
    assert modes == {"device.key": 0o600, "device.key.pass": 0o600, "device.chain.pem": 0o644}
    assert sorted(p.name for p in boot.iterdir()) == ["README.txt"]
    assert left_over(config) == [boot / "README.txt"]
    assert not any(item.replaced for item in imported)


def test_nothing_dropped_nothing_done(tmp_path: Path) -> None:
    config, state = layout(tmp_path)
    assert import_identity(config, state_dir=state) == []
    missing = IdentityConfig(
        cert_chain_path=tmp_path / "c", key_path=tmp_path / "k", import_dir=tmp_path / "none"
    )
    assert import_identity(missing, state_dir=state) == []
    assert left_over(missing) == []


def test_an_identity_in_place_is_replaced(tmp_path: Path) -> None:
    config, state = layout(tmp_path)
    config.key_path.write_bytes(b"OLD")
    (config.import_dir / "device.key").write_bytes(b"NEW")
    [item] = import_identity(config, state_dir=state)
    assert item.replaced
    assert config.key_path.read_bytes() == b"NEW"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_run_as_root_the_files_become_the_service_users(tmp_path: Path) -> None:
    config, state = layout(tmp_path)
    os.chown(state, NOBODY.pw_uid, NOBODY.pw_gid)
    (config.import_dir / "device.key").write_bytes(b"KEY")
    (config.import_dir / "device.chain.pem").write_bytes(b"CHAIN")
    import_identity(config, state_dir=state)
    for path in (config.key_path, config.cert_chain_path):
        assert (path.stat().st_uid, path.stat().st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert list(config.key_path.parent.glob(".*")) == []  # no temporary file left


def test_the_command_reports_what_it_moved(tmp_path: Path) -> None:
    config, state = layout(tmp_path)
    (config.import_dir / "device.key").write_bytes(b"KEY")
    (config.import_dir / "stray.txt").write_text("x")
    toml = tmp_path / "agent.toml"
    toml.write_text(
        f'[identity]\ncert_chain_path = "{config.cert_chain_path}"\n'
        f'key_path = "{config.key_path}"\nimport_dir = "{config.import_dir}"\n'
        f'[dps]\nid_scope = "0ne00000DEV"\n[state]\ndirectory = "{state}"\n'
        '[hal]\nbackend = "mock"\n'
    )
    args = [sys.executable, "-m", "agent", "--config", str(toml), "import-identity"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    assert (
        f"imported {config.import_dir}/device.key -> {config.key_path} (mode 0600" in first.stdout
    )
    assert f"left {config.import_dir}/stray.txt" in first.stderr
    again = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0
    assert f"{config.import_dir}: no identity to import" in again.stdout


def test_without_a_certificate_the_command_makes_the_key_and_the_csr(tmp_path: Path) -> None:
    """At first boot the root import service makes what the hardened service may not
    write: the key (in /etc/device-agent) and the CSR (on the boot partition)."""
    config, state = layout(tmp_path)
    csr = config.import_dir / "device-agent.csr"
    toml = tmp_path / "agent.toml"
    toml.write_text(
        f'[identity]\ncert_chain_path = "{config.cert_chain_path}"\n'
        f'key_path = "{config.key_path}"\nimport_dir = "{config.import_dir}"\n'
        f'registration_id = "clone-7"\ncsr_path = "{csr}"\n'
        f'[dps]\nid_scope = "0ne00000DEV"\n[state]\ndirectory = "{state}"\n'
        '[hal]\nbackend = "mock"\n'
    )
    args = [sys.executable, "-m", "agent", "--config", str(toml), "import-identity"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    assert f"CSR for 'clone-7' written to {csr}" in first.stdout
    assert config.key_path.stat().st_mode & 0o777 == 0o600
    request = csr.read_bytes()
    assert request.startswith(b"-----BEGIN CERTIFICATE REQUEST-----")
    key_before = config.key_path.read_bytes()
    again = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0, again.stderr
    # the same key and CSR: a reboot before the certificate arrives changes nothing
    assert (config.key_path.read_bytes(), csr.read_bytes()) == (key_before, request)
