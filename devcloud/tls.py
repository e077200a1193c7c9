"""TLS server contexts for devcloud's endpoints.

Theory of operation. The MQTT server calls a :class:`ServerTLS` object for a fresh
:class:`ssl.SSLContext` per connection, so trust changes apply to the next handshake.
Building a context costs a few milliseconds, so one is cached and rebuilt only when the
trust inputs change: the registry's ``trust_generation`` (enrollment groups added or
removed) or the modification time of a CRL file (a revocation by ``devcloud pki revoke``
in another process).

Each context: TLS 1.2 or newer; the endpoint's server certificate from the PKI with IP
SANs for its bind address (and DNS SANs for a hostname); ``CERT_REQUIRED``; trust = the
devcloud root and intermediate plus every enrollment group's signing certificate
(``VERIFY_X509_PARTIAL_CHAIN`` so a registered intermediate is enough on its own) and
every credential policy's issuing CA (as ADR's "credential sync" gives a hub); the
PKI's CRLs with ``VERIFY_CRL_CHECK_LEAF``, so a revoked device fails the handshake.
OpenSSL then insists on a CRL from the leaf's issuer, which only devcloud's own CAs
have: while an enrollment group names a foreign CA, CRL checking is left off here (devices
of foreign CAs would all fail otherwise). Revocation is then enforced one step later, the
way the real services answer a device they refuse: a hub checks the leaf against
devcloud's CRLs at CONNECT (:func:`devcloud.enrollment_match.leaf_accepted`, CONNACK 5)
and DPS answers the register request 401. Foreign CAs' revocation lists are unknown to
devcloud.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from devcloud.enrollment_match import thumbprint
from devcloud.pki import PKI
from devcloud.registry import Registry


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class ServerTLS:
    """A per-connection ``SSLContext`` factory for one endpoint (``__call__``)."""

    def __init__(
        self, pki: PKI, registry: Registry, name: str, host: str, hostname: str | None = None
    ) -> None:
        self.pki = pki
        self.registry = registry
        ips = sorted({h for h in (host, hostname) if h and _is_ip(h)})
        dns = sorted({h for h in (hostname,) if h and not _is_ip(h)})
        issued = pki.issue_server(
            hostname or host, ip_addresses=ips, dns_names=dns, file_stem=f"devcloud-{name}-{host}"
        )
        self.cert_chain_path = issued.chain_path
        self.key_path = issued.key_path
        self._context: ssl.SSLContext | None = None
        self._inputs: tuple[object, ...] = ()
        #: Whether the current context enforces CRLs (False while a foreign CA is trusted).
        self.crl_checked = False

    def _trust_inputs(self) -> tuple[object, ...]:
        mtimes = tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in self.pki.crl_paths)
        return (self.registry.trust_generation, mtimes)

    def __call__(self) -> ssl.SSLContext:
        """The current context (rebuilt when groups or CRLs changed)."""
        inputs = self._trust_inputs()
        if self._context is None or inputs != self._inputs:
            self._context = self._build()
            self._inputs = inputs
        return self._context

    def _build(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert_chain_path), str(self.key_path))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(self.pki.ca_bundle_path))
        own = {thumbprint(self.pki.root), thumbprint(self.pki.intermediate)}
        foreign = False
        extra: list[str] = []
        for group in self.registry.groups():
            cert = x509.load_pem_x509_certificate(group.signing_cert_pem.encode())
            if thumbprint(cert) not in own:
                foreign = True
                extra.append(cert.public_bytes(serialization.Encoding.PEM).decode())
        if extra:
            context.load_verify_locations(cadata="\n".join(extra))
        for issuing in self.pki.issuing_cas():
            context.load_verify_locations(cafile=str(issuing.cert_path))
        flags = context.verify_flags | ssl.VERIFY_X509_PARTIAL_CHAIN
        self.crl_checked = not foreign
        if self.crl_checked:
            for crl in self.pki.crl_paths:
                context.load_verify_locations(cafile=str(Path(crl)))
            flags |= ssl.VERIFY_CRL_CHECK_LEAF
        context.verify_flags = flags
        return context
