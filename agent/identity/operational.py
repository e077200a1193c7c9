"""The operational identity DPS issues (``[identity] issuance = "dps"``), without cryptography.

Theory of operation
-------------------
With issuance, the configured certificate and key are the *onboarding* credential: the
agent registers with DPS using them, and sends a CSR for a second, *operational* key
(made beside the first, in the TPM for ``keystore = "tpm"``). DPS answers with
``issuedCertificateChain`` (base64 DER, leaf first), which becomes the operational
chain; the hub connection uses the operational chain and key.

* :func:`request_csr` runs ``python -m agent.identity.enroll --operational-csr`` (the
  key is made there if missing; ``cryptography`` stays out of the daemon) and returns
  the CSR in its wire form.
* :func:`install_chain` writes the issued chain as PEM, atomically (temporary file,
  fsync, rename); :func:`agent.identity.child.load_in_child` with
  :func:`agent.identity.child.operational_config` then checks it like any identity (key
  match — through the TPM for a TPM key —, validity, chain to the trust anchors).
"""

from __future__ import annotations

import base64
import binascii
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.config import AgentConfig
from agent.errors import CertificateInvalidError, KeystoreError
from agent.store.files import atomic_write

__all__ = ["install_chain", "request_csr"]

#: Bound on making the key and the CSR (a TPM key takes well under a second).
CSR_TIMEOUT_S = 120.0


def request_csr(config: AgentConfig, registration_id: str, key_path: Path | None = None) -> str:
    """The operational key's CSR (base64 DER), the key made first if missing.

    ``key_path``: make a new key there instead (a renewal's candidate) and its CSR.
    """
    extra = [] if key_path is None else [str(key_path)]
    try:
        done = subprocess.run(
            [
                sys.executable, "-m", "agent.identity.enroll",
                "--operational-csr", registration_id, str(config.source), *extra,
            ],
            capture_output=True,
            timeout=CSR_TIMEOUT_S,
            check=False,
        )  # fmt: skip
        answer = json.loads(done.stdout.decode("utf-8"))
    except (OSError, subprocess.SubprocessError, ValueError, UnicodeDecodeError) as exc:
        raise KeystoreError(f"could not make the operational CSR: {exc}") from exc
    if not isinstance(answer, dict) or not isinstance(answer.get("csr"), str):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise CertificateInvalidError(f"could not make the operational CSR: {error}")
    return str(answer["csr"])


def install_chain(path: Path, chain: Sequence[str]) -> Path:
    """Write ``chain`` (base64 DER certificates, leaf first) to ``path`` as PEM."""
    blocks = []
    for index, item in enumerate(chain):
        try:
            der = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CertificateInvalidError(
                f"issuedCertificateChain[{index}] is not base64", path=path
            ) from exc
        body = base64.b64encode(der).decode("ascii")
        lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        blocks.append(f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n")
    if not blocks:
        raise CertificateInvalidError("DPS issued an empty certificate chain", path=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "".join(blocks).encode("ascii"), mode=0o644)
    return path
