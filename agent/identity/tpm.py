"""The TPM as the agent uses it: through OpenSSL's tpm2 provider, from child processes.

Theory of operation
-------------------
A TPM key is a TSS2 PRIVATE KEY blob: the key wrapped by this TPM's storage key, useless
anywhere else and never in the clear. OpenSSL uses it once its tpm2 provider is loaded,
which happens only through ``OPENSSL_CONF`` read at process start, with the TPM named by
``TPM2OPENSSL_TCTI`` (``device:/dev/tpmrm0`` on a device; the kernel resource manager
cleans up after each process). So everything that touches the TPM runs in a child
process with :func:`tpm_environment`:

* :func:`probe_key` loads the certificate chain and the key into an ``ssl`` context in
  ``python -c`` (OpenSSL checks that the key matches the certificate). That proves the
  TPM is reachable, the blob is this TPM's and it belongs to the certificate.
* :func:`create_tpm_key` runs ``openssl genpkey`` with ``-propquery provider=tpm2`` (the
  provider *required*: with ``?provider=tpm2`` OpenSSL falls back to a software key
  when the TPM fails) and refuses any output that is not a TSS2 blob.
* :func:`tpm_csr_der` runs ``openssl req`` with the key.

Failures are classified from what the TSS libraries print (:func:`classify`): cannot
connect / no TCTI -> :class:`~agent.errors.TpmUnavailableError`; ``TPM_RC_INTEGRITY``
(0x09F in format 1, any handle or parameter number) on load ->
:class:`~agent.errors.ForeignTpmKeyError`; anything else -> :class:`~agent.errors.TpmError`.
Every child has a timeout, so an unreachable TPM is an error in seconds, never a hang.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from agent.config import IdentityConfig
from agent.errors import ForeignTpmKeyError, TpmError, TpmUnavailableError

__all__ = [
    "TSS2_HEADER",
    "classify",
    "create_tpm_key",
    "is_tss2_blob",
    "probe_key",
    "tpm_csr_der",
    "tpm_environment",
]

TSS2_HEADER = "-----BEGIN TSS2 PRIVATE KEY-----"
#: Bound on one TPM operation in a child (a real TPM signs in well under a second).
TPM_TIMEOUT_S = 30.0
_ERROR_CODE = re.compile(r"ErrorCode \(0x([0-9a-fA-F]+)\)")
_UNREACHABLE = (
    "Cannot connect",
    "Failed to instantiate TCTI",
    "Could not initialize TCTI",
    "No such file or directory",
    "Connection refused",
)
_PROBE = """
import ssl, sys
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
try:
    context.load_cert_chain(sys.argv[1], sys.argv[2])
except ssl.SSLError as exc:
    print(f"load failed: {exc}", file=sys.stderr)
    sys.exit(3)
print("ok")
"""


def tpm_environment(
    config: IdentityConfig, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """An environment in which OpenSSL loads the tpm2 provider and finds this TPM."""
    env = dict(os.environ if base is None else base)
    env["OPENSSL_CONF"] = str(config.openssl_conf)
    env["TPM2OPENSSL_TCTI"] = config.tpm_tcti
    return env


def is_tss2_blob(path: Path) -> bool:
    """Whether ``path`` holds a TSS2 PRIVATE KEY (PEM) — a key only a TPM can use."""
    try:
        with open(path, "rb") as blob:
            head = blob.read(len(TSS2_HEADER) + 8)
    except OSError:
        return False
    return head.decode("ascii", "replace").lstrip().startswith(TSS2_HEADER)


def classify(stderr: str, *, what: str, config: IdentityConfig) -> TpmError:
    """The error a failed TPM operation means, with the fix."""
    codes = [int(code, 16) for code in _ERROR_CODE.findall(stderr)]
    if any(code & 0x0BF == 0x09F for code in codes):
        return ForeignTpmKeyError(
            f"{what}: the key blob belongs to another TPM (TPM_RC_INTEGRITY when loading it)",
            path=config.key_path,
            fix="create a key in this device's TPM (device-agent keys create --tpm) and "
            "enroll its CSR (device-agent keys csr)",
        )
    if any(marker in stderr for marker in _UNREACHABLE) and not codes:
        return TpmUnavailableError(
            f"{what}: the TPM cannot be reached through {config.tpm_tcti!r}",
            fix="check the TPM (dtoverlay, /dev/tpmrm0, the tss group) and "
            f"identity.tpm_tcti; OpenSSL config {config.openssl_conf}",
        )
    last = [line for line in stderr.strip().splitlines() if line.strip()][-3:]
    hex_codes = ", ".join(f"0x{code:03x}" for code in codes)
    detail = f"TPM error {hex_codes}" if codes else " / ".join(last) or "no detail"
    return TpmError(f"{what}: {detail}", path=config.key_path)


def _run(argv: list[str], config: IdentityConfig, *, what: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv,
            env=tpm_environment(config),
            capture_output=True,
            text=True,
            timeout=TPM_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise TpmUnavailableError(
            f"{what}: no answer from the TPM within {TPM_TIMEOUT_S:.0f} s"
        ) from exc
    except OSError as exc:
        raise TpmError(f"{what}: cannot run {argv[0]}: {exc}") from exc


def probe_key(config: IdentityConfig, cert_chain_path: Path) -> None:
    """Load chain + TPM key as TLS would; raise the classified :class:`TpmError` if not."""
    done = _run(
        [sys.executable, "-c", _PROBE, str(cert_chain_path), str(config.key_path)],
        config,
        what="loading the TPM key",
    )
    if done.returncode == 0 and done.stdout.strip() == "ok":
        return
    if "KEY_VALUES_MISMATCH" in done.stderr or "key values mismatch" in done.stderr:
        raise TpmError(
            f"the TPM key does not belong to the certificate in {cert_chain_path}",
            path=config.key_path,
            fix="install the certificate issued for this key (device-agent keys install-cert)",
        )
    raise classify(done.stderr, what="loading the TPM key", config=config)


def create_tpm_key(config: IdentityConfig, path: Path, curve: str = "P-384") -> None:
    """Generate an EC key inside the TPM and write its TSS2 blob to ``path``."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = Path(tmp) / "key.pem"
        done = _run(
            [
                "openssl", "genpkey", "-propquery", "provider=tpm2",
                "-algorithm", "EC", "-pkeyopt", f"group:{curve}", "-out", str(staged),
            ],
            config,
            what="creating a key in the TPM",
        )  # fmt: skip
        if done.returncode != 0:
            raise classify(done.stderr, what="creating a key in the TPM", config=config)
        if not is_tss2_blob(staged):
            raise TpmError(
                "openssl genpkey did not produce a TSS2 key (is the tpm2 provider loaded by "
                f"{config.openssl_conf}?)",
                path=path,
            )
        os.chmod(staged, 0o600)
        os.replace(staged, path)


def tpm_csr_der(config: IdentityConfig, common_name: str) -> bytes:
    """A PKCS#10 CSR (DER, as ``openssl req`` makes it) signed by the TPM key."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "req.der"
        done = _run(
            [
                "openssl", "req", "-new", "-key", str(config.key_path),
                "-subj", f"/CN={common_name}", "-outform", "DER", "-out", str(out),
            ],
            config,
            what="signing a CSR with the TPM key",
        )  # fmt: skip
        if done.returncode != 0:
            raise classify(done.stderr, what="signing a CSR with the TPM key", config=config)
        return out.read_bytes()
