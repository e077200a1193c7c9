"""The keystore's checks in a short-lived child process, so ``cryptography`` stays out.

Theory of operation
-------------------
The checks that produce an :class:`~agent.identity.keystore.Identity` (key matches
certificate, validity, chain to the trust anchors, file modes) need ``cryptography``,
which costs about 8 MiB of RSS for the life of the process. The long-running daemon
therefore calls :func:`load_in_child`, which runs them in a short-lived child and reads
back either the identity or the error (class name, message, file, fix) as JSON, rebuilt
here as the same :class:`~agent.errors.KeystoreError` leaf the keystore raised. The
child exits, so its memory goes with it; nothing in the daemon imports ``cryptography``.

Two ways to make the child, the same answer:

* **fork** (the default when the calling process has one thread, as the daemon does):
  ``os.fork()``; the child already holds everything the parent imported, so it imports
  only the keystore and ``cryptography`` instead of starting an interpreter and the
  agent again (on a cold boot that was most of the check's time). The child runs the
  check and nothing else: it resets the daemon's signal handlers, silences logging and
  warnings (the parent's handlers, journal socket and files are never written), stops
  the garbage collector (so no finaliser of a parent object -- a socket, the SQLite
  buffer -- runs in it), writes its answer to a pipe and leaves with ``os._exit``
  (no atexit, no flushing of inherited buffers, no close of inherited connections).
  The TPM keystore runs its own ``openssl`` subprocess from there, as before.
* **spawn** (when other threads run: a fork would copy locks they may hold):
  ``python -m agent.identity.child``, the request as JSON on stdin.

Either way a child that does not answer within ``timeout_s`` is killed and reported as
:class:`~agent.errors.KeystoreCheckTimeoutError`, a wait (IDENTITY_WAIT), not a verdict.
:func:`start_in_child` returns while a forked child still runs, so that the caller can
do its own start-up meanwhile (on two cores the two overlap); ``result()`` waits.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

from agent.config import IdentityConfig
from agent.errors import (
    CertificateInvalidError,
    ForeignTpmKeyError,
    IdentityMissingError,
    IdentityPendingError,
    KeyPermissionError,
    KeystoreCheckTimeoutError,
    KeystoreError,
    TpmError,
    TpmUnavailableError,
)
from agent.identity.keystore import Identity, open_keystore

__all__ = [
    "config_from_json",
    "config_to_json",
    "error_from_json",
    "error_to_json",
    "identity_from_json",
    "identity_to_json",
    "load_in_child",
    "start_in_child",
]

#: The module the child runs (``python -m ...``).
CHILD_MODULE = "agent.identity.child"
#: How long the child may take (it imports cryptography and reads a few small files).
CHILD_TIMEOUT_S = 60.0
_ERRORS: dict[str, type[KeystoreError]] = {
    "KeystoreError": KeystoreError,
    "KeyPermissionError": KeyPermissionError,
    "CertificateInvalidError": CertificateInvalidError,
    "IdentityPendingError": IdentityPendingError,
    "TpmError": TpmError,
    "TpmUnavailableError": TpmUnavailableError,
    "ForeignTpmKeyError": ForeignTpmKeyError,
    "IdentityMissingError": IdentityMissingError,
}


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
        "csr_path": str(config.csr_path),
        "tpm_tcti": config.tpm_tcti,
        "openssl_conf": str(config.openssl_conf),
        "issuance": config.issuance,
        "operational_cert_path": str(config.operational_cert),
        "operational_key_path": str(config.operational_key),
    }


def config_from_json(doc: Mapping[str, object]) -> IdentityConfig:
    """The inverse of :func:`config_to_json`."""
    passphrase_file = doc.get("key_passphrase_file")
    anchors = doc.get("trust_anchor_paths") or []
    registration_id = doc.get("registration_id")
    if not isinstance(anchors, list):
        raise ValueError("trust_anchor_paths must be a list")
    keystore = doc.get("keystore", "file")
    if keystore not in ("file", "tpm"):
        raise ValueError(f"unknown keystore {keystore!r}")
    defaults = IdentityConfig(cert_chain_path=Path(), key_path=Path())
    return IdentityConfig(
        keystore="tpm" if keystore == "tpm" else "file",
        csr_path=Path(str(doc.get("csr_path", defaults.csr_path))),
        tpm_tcti=str(doc.get("tpm_tcti", defaults.tpm_tcti)),
        openssl_conf=Path(str(doc.get("openssl_conf", defaults.openssl_conf))),
        issuance="dps" if doc.get("issuance") == "dps" else "none",
        operational_cert_path=_optional_path(doc.get("operational_cert_path")),
        operational_key_path=_optional_path(doc.get("operational_key_path")),
        cert_chain_path=Path(str(doc["cert_chain_path"])),
        key_path=Path(str(doc["key_path"])),
        key_passphrase_file=None if passphrase_file is None else Path(str(passphrase_file)),
        trust_anchor_paths=tuple(Path(str(p)) for p in anchors),
        registration_id=None if registration_id is None else str(registration_id),
    )


def _optional_path(value: object) -> Path | None:
    return None if value is None else Path(str(value))


def operational_config(config: IdentityConfig) -> IdentityConfig:
    """The ``[identity]`` of the operational identity: its chain and key, same keystore."""
    import dataclasses

    from agent.identity.generations import current_paths

    cert, key = current_paths(config)
    return dataclasses.replace(
        config, cert_chain_path=cert, key_path=key, key_passphrase_file=None, issuance="none"
    )


def candidate_config(config: IdentityConfig, cert: Path, key: Path) -> IdentityConfig:
    """The ``[identity]`` of a renewal's candidate pair (same keystore and anchors)."""
    import dataclasses

    return dataclasses.replace(
        config, cert_chain_path=cert, key_path=key, key_passphrase_file=None, issuance="none"
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
    fork: bool | None = None,
) -> Identity:
    """Run the keystore's checks in a child process; return the identity.

    ``fork``: make the child with ``os.fork()`` (True), as ``python -m
    agent.identity.child`` (False), or fork when this process has a single thread
    (None, the default). Raises the :class:`~agent.errors.KeystoreError` leaf the
    keystore raised, :class:`~agent.errors.KeystoreCheckTimeoutError` (a wait, not a
    verdict) if it did not answer within ``timeout_s``, or a plain
    :class:`KeystoreError` if the child could not run or answered nonsense.
    """
    pending = start_in_child(
        config, config_path=config_path, now=now, timeout_s=timeout_s, fork=fork
    )
    return pending.result()


def start_in_child(
    config: IdentityConfig,
    *,
    config_path: Path,
    now: datetime,
    timeout_s: float = CHILD_TIMEOUT_S,
    fork: bool | None = None,
) -> PendingIdentity:
    """Start the check of :func:`load_in_child`; its :meth:`~PendingIdentity.result` waits.

    A forked child runs while the caller does other work (the daemon opens the HAL);
    ``timeout_s`` counts from here. A fresh interpreter (``fork=False``, or threads
    running) is waited for here already. Call ``result()`` exactly once.
    """
    if fork is None:
        fork = hasattr(os, "fork") and threading.active_count() == 1
    if fork:
        return PendingIdentity(_start_forked(config, config_path, now, timeout_s))
    done = _run_spawned(config, config_path, now, timeout_s)
    return PendingIdentity(lambda: done)


class PendingIdentity:
    """A keystore check under way in a child (:func:`start_in_child`)."""

    def __init__(self, collect: Callable[[], tuple[bytes, int, str]]) -> None:
        self._collect = collect

    def result(self) -> Identity:
        """Wait for the child: the identity, or the error it reported (:func:`load_in_child`)."""
        raw, code, detail = self._collect()
        try:
            answer = json.loads(raw.decode("utf-8"))
            if not isinstance(answer, dict):
                raise ValueError("not an object")
            if "error" in answer:
                error = error_from_json(answer["error"])
            elif "crash" in answer:
                raise ValueError(str(answer["crash"]))
            else:
                return identity_from_json(answer["identity"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise KeystoreError(
                f"the keystore check failed (exit {code}): {detail or exc}"
            ) from exc
        raise error


def _timed_out(timeout_s: float) -> KeystoreCheckTimeoutError:
    return KeystoreCheckTimeoutError(
        f"the keystore check did not finish within {timeout_s:g} s (machine overloaded?);"
        " checking again later"
    )


def _run_spawned(
    config: IdentityConfig, config_path: Path, now: datetime, timeout_s: float
) -> tuple[bytes, int, str]:
    """``python -m agent.identity.child``: its stdout, exit code and last stderr line."""
    import subprocess  # only when threads rule out a fork

    request = json.dumps(
        {
            "identity": config_to_json(config),
            "config_path": str(config_path),
            "now": now.isoformat(),
        }
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", CHILD_MODULE],
            input=request.encode("utf-8"),
            capture_output=True,
            timeout=timeout_s,
            check=False,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    except subprocess.TimeoutExpired as exc:
        raise _timed_out(timeout_s) from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise KeystoreError(f"could not run the keystore check: {exc}") from exc
    tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
    return done.stdout, done.returncode, " ".join(tail)


def _start_forked(
    config: IdentityConfig, config_path: Path, now: datetime, timeout_s: float
) -> Callable[[], tuple[bytes, int, str]]:
    """Fork a child that runs the check; what collects its answer (pipe) and exit code."""
    deadline = time.monotonic() + timeout_s
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        raise KeystoreError(f"could not run the keystore check: {exc}") from exc
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        _forked_child(write_fd, config, config_path, now)
    os.close(write_fd)

    def collect() -> tuple[bytes, int, str]:
        try:
            raw = _read_until_eof(read_fd, deadline)
        except TimeoutError as exc:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise _timed_out(timeout_s) from exc
        finally:
            os.close(read_fd)
        _, status = os.waitpid(pid, 0)
        return raw, os.waitstatus_to_exitcode(status), ""

    return collect


def _read_until_eof(fd: int, deadline: float) -> bytes:
    """Everything written to the pipe ``fd`` until its writer closes it (or the deadline)."""
    chunks: list[bytes] = []
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            raise TimeoutError
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _forked_child(fd: int, config: IdentityConfig, config_path: Path, now: datetime) -> None:
    """In the forked child: run the check, write the answer to ``fd``, ``os._exit``."""
    code = 70  # EX_SOFTWARE unless the answer got written
    try:
        import gc
        import logging
        import warnings

        gc.disable()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, signal.SIG_DFL)
        logging.disable(logging.CRITICAL)
        warnings.simplefilter("ignore")
        try:
            answer = _answer(config, config_path, now)
        except Exception as exc:  # a bug or an unexpected library error: say which
            answer = {"crash": f"{type(exc).__name__}: {exc}"}
        data = json.dumps(answer).encode("utf-8")
        while data:
            data = data[os.write(fd, data) :]
        code = 0 if "crash" not in answer else 70
    finally:
        os._exit(code)


def _answer(config: IdentityConfig, config_path: Path, now: datetime) -> dict[str, object]:
    """One check: the identity, or the keystore's error, as JSON-compatible data."""
    try:
        identity = open_keystore(config, config_path=config_path).load(now=now)
    except KeystoreError as exc:
        return {"error": error_to_json(exc)}
    return {"identity": identity_to_json(identity)}


def _child_main() -> int:
    """``python -m agent.identity.child``: one check, request on stdin, answer on stdout."""
    try:
        request = json.loads(sys.stdin.read())
        config = config_from_json(request["identity"])
        config_path = Path(str(request["config_path"]))
        now = datetime.fromisoformat(str(request["now"]))
    except (ValueError, KeyError, TypeError) as exc:
        print(f"agent.identity.child: bad request: {exc}", file=sys.stderr)
        return 64
    sys.stdout.write(json.dumps(_answer(config, config_path, now)))
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main())
