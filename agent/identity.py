"""The device identity as the daemon holds it, loaded without ``cryptography`` in-process.

Theory of operation
-------------------
:class:`Identity` is what the rest of the agent needs from the keystore: the
registration id, the certificate's thumbprint and validity, and the *paths* the
transport hands to OpenSSL. The checks that produce it (:mod:`agent.keystore`: key
matches certificate, validity, chain to the trust anchors, file modes) need
``cryptography``, which costs about 8 MiB of RSS for the life of the process. The
long-running daemon therefore calls :func:`load_in_child`: it runs
``python -m agent.keystore`` as a short-lived child, sends it the ``[identity]``
config and the time to check against as JSON on stdin, and reads back either the
identity or the error (class name, message, file, fix), rebuilt here as the same
:class:`~agent.errors.KeystoreError` leaf the keystore raised. The child exits, so its
memory goes with it; nothing in the daemon imports ``cryptography``.

:func:`files_signature` is the cheap change detector for the identity files
(inode, size, mtime of each): the daemon compares it while it waits for a usable
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

import base64
import json
import os
import stat
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

from agent.config import IdentityConfig
from agent.errors import CertificateInvalidError, KeyPermissionError, KeystoreError
from agent.state import IDENTITY_CACHE_FILE, atomic_write

__all__ = [
    "Identity",
    "files_signature",
    "identity_from_json",
    "identity_to_json",
    "load_cached_identity",
    "load_in_child",
    "save_identity_cache",
]

#: The identity cache's format; a file with any other version is not used.
CACHE_SCHEMA_VERSION = 1
#: (inode, size, mtime ns, ctime ns) of every identity file, as :func:`files_signature` gives.
FilesSignature = tuple[tuple[int, int, int, int], ...]
#: The keystore warns this close to expiry (``agent.keystore.EXPIRY_WARNING``, not imported:
#: it would load ``cryptography``); inside it the cache is not used, so the warning is current.
CACHE_EXPIRY_MARGIN = timedelta(days=30)
#: How long the child may take (it imports cryptography and reads a few small files).
CHILD_TIMEOUT_S = 60.0
_ERRORS: dict[str, type[KeystoreError]] = {
    "KeystoreError": KeystoreError,
    "KeyPermissionError": KeyPermissionError,
    "CertificateInvalidError": CertificateInvalidError,
}


@dataclass(frozen=True)
class Identity:
    """A checked device identity, as the transport and the state file need it."""

    registration_id: str
    common_name: str
    cert_chain_path: Path
    key_path: Path
    key_passphrase: bytes | None = field(repr=False)
    #: SHA-256 of the leaf's DER, hex upper-case (as Azure shows it).
    thumbprint: str
    not_before: datetime
    not_after: datetime
    warnings: tuple[str, ...] = ()

    def valid_at(self, moment: datetime) -> bool:
        """Whether the leaf certificate is inside its validity window at ``moment``."""
        return self.not_before <= moment < self.not_after

    def invalid_reason(self, moment: datetime) -> str | None:
        """Why the certificate cannot be used at ``moment`` (None if it can)."""
        if moment < self.not_before:
            return (
                f"{self.cert_chain_path}: the certificate is not valid before "
                f"{self.not_before.isoformat()} (now {moment.isoformat()}; is the clock right?)"
            )
        if moment >= self.not_after:
            return (
                f"{self.cert_chain_path}: the certificate expired at "
                f"{self.not_after.isoformat()} (fix: install a renewed device certificate)"
            )
        return None


def identity_to_json(identity: Identity) -> dict[str, object]:
    """The identity as JSON-compatible data (the passphrase base64-encoded)."""
    passphrase = identity.key_passphrase
    return {
        "registration_id": identity.registration_id,
        "common_name": identity.common_name,
        "cert_chain_path": str(identity.cert_chain_path),
        "key_path": str(identity.key_path),
        "key_passphrase": None if passphrase is None else base64.b64encode(passphrase).decode(),
        "thumbprint": identity.thumbprint,
        "not_before": identity.not_before.isoformat(),
        "not_after": identity.not_after.isoformat(),
        "warnings": list(identity.warnings),
    }


def identity_from_json(doc: Mapping[str, object]) -> Identity:
    """The inverse of :func:`identity_to_json`; raises ``KeyError``/``ValueError`` if malformed."""
    passphrase = doc["key_passphrase"]
    warnings = doc.get("warnings", [])
    if not isinstance(warnings, list):
        raise ValueError("warnings must be a list")
    return Identity(
        registration_id=str(doc["registration_id"]),
        common_name=str(doc["common_name"]),
        cert_chain_path=Path(str(doc["cert_chain_path"])),
        key_path=Path(str(doc["key_path"])),
        key_passphrase=None if passphrase is None else base64.b64decode(str(passphrase)),
        thumbprint=str(doc["thumbprint"]),
        not_before=datetime.fromisoformat(str(doc["not_before"])),
        not_after=datetime.fromisoformat(str(doc["not_after"])),
        warnings=tuple(str(w) for w in warnings),
    )


def config_to_json(config: IdentityConfig) -> dict[str, object]:
    """The ``[identity]`` config as JSON-compatible data (for the child)."""
    return {
        "keystore": config.keystore,
        "cert_chain_path": str(config.cert_chain_path),
        "key_path": str(config.key_path),
        "key_passphrase_file": (
            None if config.key_passphrase_file is None else str(config.key_passphrase_file)
        ),
        "trust_anchor_paths": [str(p) for p in config.trust_anchor_paths],
        "registration_id": config.registration_id,
    }


def config_from_json(doc: Mapping[str, object]) -> IdentityConfig:
    """The inverse of :func:`config_to_json`."""
    passphrase_file = doc.get("key_passphrase_file")
    anchors = doc.get("trust_anchor_paths") or []
    registration_id = doc.get("registration_id")
    if not isinstance(anchors, list):
        raise ValueError("trust_anchor_paths must be a list")
    return IdentityConfig(
        keystore="file",
        cert_chain_path=Path(str(doc["cert_chain_path"])),
        key_path=Path(str(doc["key_path"])),
        key_passphrase_file=None if passphrase_file is None else Path(str(passphrase_file)),
        trust_anchor_paths=tuple(Path(str(p)) for p in anchors),
        registration_id=None if registration_id is None else str(registration_id),
    )


def error_to_json(exc: KeystoreError) -> dict[str, object]:
    """A keystore error as the child reports it."""
    return {
        "kind": type(exc).__name__,
        "message": exc.message,
        "path": None if exc.path is None else str(exc.path),
        "fix": exc.fix,
    }


def error_from_json(doc: Mapping[str, object]) -> KeystoreError:
    """The same :class:`KeystoreError` leaf the child raised."""
    kind = _ERRORS.get(str(doc.get("kind")), KeystoreError)
    path, fix = doc.get("path"), doc.get("fix")
    return kind(
        str(doc.get("message", "identity check failed")),
        path=None if path is None else Path(str(path)),
        fix=None if fix is None else str(fix),
    )


def load_in_child(
    config: IdentityConfig,
    *,
    config_path: Path,
    now: datetime,
    timeout_s: float = CHILD_TIMEOUT_S,
) -> Identity:
    """Run the keystore's checks in ``python -m agent.keystore``; return the identity.

    Raises the :class:`~agent.errors.KeystoreError` leaf the keystore raised, or a
    plain :class:`KeystoreError` if the child could not run or answered nonsense.
    """
    request = json.dumps(
        {
            "identity": config_to_json(config),
            "config_path": str(config_path),
            "now": now.isoformat(),
        }
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agent.keystore"],
            input=request.encode("utf-8"),
            capture_output=True,
            timeout=timeout_s,
            check=False,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise KeystoreError(f"could not run the keystore check: {exc}") from exc
    try:
        answer = json.loads(done.stdout.decode("utf-8"))
        if not isinstance(answer, dict):
            raise ValueError("not an object")
        if "error" in answer:
            error = error_from_json(answer["error"])
        else:
            return identity_from_json(answer["identity"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        raise KeystoreError(
            f"the keystore check failed (exit {done.returncode}): {' '.join(tail) or exc}"
        ) from exc
    raise error


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
        raw = (state_dir / IDENTITY_CACHE_FILE).read_bytes()
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
            data = config.key_passphrase_file.read_bytes()
        except OSError:
            return None, f"{config.key_passphrase_file}: cannot read"
        passphrase = data.removesuffix(b"\n").removesuffix(b"\r")
        if not passphrase:
            return None, f"{config.key_passphrase_file}: empty"
        identity = replace(identity, key_passphrase=passphrase)
    return identity, "identity files unchanged since the last full check"
