"""First-boot identity: move the files dropped on the boot partition into place.

Theory of operation
-------------------
A golden image holds no identity. Whoever flashes a device's SD card copies its
certificate chain and key into ``identity.import_dir`` (default
``/boot/firmware/device-agent/``: the FAT boot partition, which any computer can write),
named as the config names them (``device.chain.pem``, ``device.key``, and
``device.key.pass`` if the key has a passphrase). ``device-agent import-identity`` --
run as root by ``device-agent-import.service`` before the agent at every boot, and by
``device-agent-import.path`` whenever that folder changes -- moves each of them to the
path the config gives it:

* written next to its destination (temporary name), fsynced, given its mode (0600 for
  the key and the passphrase, 0644 for the chain) and then its owner (the service user,
  :mod:`agent.store.service_user`), renamed into place and the folder fsynced: the agent
  never sees a half-written file, a file it cannot read, or a key anyone else can read;
* the secrets first, the chain last, so the chain's arrival means the pair is complete;
* then the copy on the boot partition is removed (FAT has no permissions: every local
  user can read it there, so it must not stay).

Only the names the config gives are imported; anything else in the folder is left and
reported (except the CSR a device without a certificate writes there, ``csr_path``).
An identity already in place is replaced (a device given a new identity). The agent,
waiting in IDENTITY_WAIT (``waiting for identity in ...``), notices the files (it polls
their signature) and provisions.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from agent.config import IdentityConfig
from agent.store.service_user import give_to_service_user

__all__ = ["Imported", "identity_files", "import_identity", "left_over"]

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


@dataclass(frozen=True)
class Imported:
    """One file moved from the import folder to where the config wants it."""

    source: Path
    destination: Path
    mode: int
    replaced: bool


def identity_files(config: IdentityConfig) -> list[tuple[Path, int]]:
    """The identity files the config names, with their modes, secrets first."""
    files: list[tuple[Path, int]] = []
    if config.key_passphrase_file is not None:
        files.append((config.key_passphrase_file, SECRET_MODE))
    files.append((config.key_path, SECRET_MODE))
    files.append((config.cert_chain_path, PUBLIC_MODE))
    return files


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems (FAT) refuse a directory fsync
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _install(destination: Path, data: bytes, mode: int, state_dir: Path) -> None:
    tmp = destination.parent / f".{destination.name}.import-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        give_to_service_user(tmp, mode=mode, state_dir=state_dir)
        os.replace(tmp, destination)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_directory(destination.parent)


def import_identity(config: IdentityConfig, *, state_dir: Path) -> list[Imported]:
    """Move every identity file found in ``config.import_dir`` into place; returns them.

    Raises ``OSError`` (naming the file) if one cannot be read, written or removed; the
    files imported before it stay imported.
    """
    imported: list[Imported] = []
    for destination, mode in identity_files(config):
        source = config.import_dir / destination.name
        if not source.is_file():
            continue
        data = source.read_bytes()
        replaced = destination.exists()
        _install(destination, data, mode, state_dir)
        source.unlink()
        imported.append(Imported(source, destination, mode, replaced))
    if imported:
        _fsync_directory(config.import_dir)
    return imported


def left_over(config: IdentityConfig) -> list[Path]:
    """Files in the import folder that are not identity files the config names."""
    names = {path.name for path, _ in identity_files(config)} | {config.csr_path.name}
    try:
        entries = sorted(config.import_dir.iterdir())
    except OSError:
        return []
    return [entry for entry in entries if entry.name not in names]
