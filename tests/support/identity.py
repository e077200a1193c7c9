"""An ``[identity]`` configuration for a certificate issued by devcloud's test PKI."""

from __future__ import annotations

from agent.config import IdentityConfig
from devcloud.pki import PKI, Issued


def config_for(issued: Issued, pki: PKI, **overrides: object) -> IdentityConfig:
    """The identity config for ``issued``, trusting ``pki``'s root; ``overrides`` replace fields."""
    fields: dict[str, object] = {
        "cert_chain_path": issued.chain_path,
        "key_path": issued.key_path,
        "trust_anchor_paths": (pki.root_path,),
    }
    fields.update(overrides)
    return IdentityConfig(**fields)  # type: ignore[arg-type]
