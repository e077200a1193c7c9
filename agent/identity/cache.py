"""The identity cache: a warm boot with unchanged identity files needs no check child.

Theory of operation
-------------------
:func:`files_signature` is the cheap change detector for the identity files
(inode, size, mtime, ctime of each): the daemon compares it while it waits for a usable
certificate, and re-checks at once when it changes.

The identity cache (``identity-cache.json`` in the state directory) spares a warm
boot the child. After every good child load, :func:`save_identity_cache` writes the
identity (never the passphrase), the ``[identity]`` config and the files' signature
taken *before* the check. :func:`load_cached_identity` believes it only if all of it
still holds: same schema, same config section, same signature (inode, size, mtime
and ctime of every file; ctime cannot be set by a user, so a changed or chmod-ed
file is always noticed), the validity window contains now, the key (and passphrase)
file is a regular file not accessible by group or others, and the passphrase file
still reads. Anything else answers None and the caller runs the child, whose error
is then the one reported; a cache is never an error of its own.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

from agent.config import IdentityConfig
from agent.fileio import read_small_file
from agent.identity.child import config_to_json, identity_from_json, identity_to_json
from agent.identity.keystore import Identity
from agent.store.files import IDENTITY_CACHE_FILE, atomic_write

__all__ = ["FilesSignature", "files_signature", "load_cached_identity", "save_identity_cache"]

#: The identity cache's format; a file with any other version is not used.
CACHE_SCHEMA_VERSION = 1
#: (inode, size, mtime ns, ctime ns) of every identity file, as :func:`files_signature` gives.
FilesSignature = tuple[tuple[int, int, int, int], ...]
#: The keystore warns this close to expiry (``agent.identity.file_keystore.EXPIRY_WARNING``,
#: not imported: it would load ``cryptography``); inside it the cache is not used, so the
#: warning is current.
CACHE_EXPIRY_MARGIN = timedelta(days=30)


def files_signature(config: IdentityConfig) -> FilesSignature:
    """(inode, size, mtime ns, ctime ns) of every identity file; zeros for a missing one."""
    paths = [config.cert_chain_path, config.key_path, *config.trust_anchor_paths]
    if config.key_passphrase_file is not None:
        paths.append(config.key_passphrase_file)
    signature = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            signature.append((0, 0, 0, 0))
            continue
        signature.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(signature)


def save_identity_cache(
    state_dir: Path, config: IdentityConfig, identity: Identity, signature: FilesSignature
) -> None:
    """Remember ``identity`` (checked by the child) for files matching ``signature``.

    ``signature`` must be taken *before* the check, so a file changed meanwhile misses
    the cache at the next start. The passphrase is not written. Raises ``OSError``.
    """
    doc = identity_to_json(identity)
    doc["key_passphrase"] = None
    cache = {
        "schema": CACHE_SCHEMA_VERSION,
        "identity_config": config_to_json(config),
        "files_signature": [list(entry) for entry in signature],
        "identity": doc,
    }
    atomic_write(state_dir / IDENTITY_CACHE_FILE, json.dumps(cache).encode("utf-8") + b"\n")


def load_cached_identity(
    state_dir: Path, config: IdentityConfig, *, now: datetime
) -> tuple[Identity | None, str]:
    """The cached identity if every check still holds, else None; and why (for the log).

    Never raises: an absent, corrupt or stale cache is the same as no cache.
    """
    try:
        raw = read_small_file(state_dir / IDENTITY_CACHE_FILE)
    except FileNotFoundError:
        return None, "no identity cache"
    except OSError as exc:
        return None, f"identity cache unreadable: {exc.strerror or exc}"
    try:
        return _validated(json.loads(raw.decode("utf-8")), config, now)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as exc:
        return None, f"identity cache malformed: {type(exc).__name__}"


def _validated(doc: object, config: IdentityConfig, now: datetime) -> tuple[Identity | None, str]:
    if not isinstance(doc, dict) or doc.get("schema") != CACHE_SCHEMA_VERSION:
        return None, "identity cache of another schema"
    if doc.get("identity_config") != config_to_json(config):
        return None, "identity config changed since the cache was written"
    current = [list(entry) for entry in files_signature(config)]
    if doc.get("files_signature") != current or [0, 0, 0, 0] in current:
        return None, "identity files changed since the cache was written"
    cached = doc["identity"]
    if not isinstance(cached, dict) or cached.get("key_passphrase") is not None:
        return None, "identity cache malformed"
    identity = identity_from_json(cached)
    if identity.cert_chain_path != config.cert_chain_path or identity.key_path != config.key_path:
        return None, "identity cache names other files"
    if not identity.valid_at(now) or now + CACHE_EXPIRY_MARGIN >= identity.not_after:
        return None, "cached certificate outside its validity window (or close to expiry)"
    secrets = [config.key_path]
    if config.key_passphrase_file is not None:
        secrets.append(config.key_passphrase_file)
    for path in secrets:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return None, f"{path}: cannot stat"
        if not stat.S_ISREG(mode) or mode & 0o077:
            return None, f"{path}: not a private regular file"
    if config.key_passphrase_file is not None:
        try:
            data = read_small_file(config.key_passphrase_file)
        except OSError:
            return None, f"{config.key_passphrase_file}: cannot read"
        passphrase = data.removesuffix(b"\n").removesuffix(b"\r")
        if not passphrase:
            return None, f"{config.key_passphrase_file}: empty"
        identity = replace(identity, key_passphrase=passphrase)
    return identity, "identity files unchanged since the last full check"
