"""Certificate renewal through the hub (``$iothub/credentials``, preview), sans I/O.

Theory of operation. One :class:`HubRenewal` is one ``issueCertificate`` request on a
connected hub session: :meth:`HubRenewal.start` subscribes to
``$iothub/credentials/res/#`` and publishes ``{"id", "csr", "replace": "*"}`` on
``$iothub/credentials/POST/issueCertificate/?$rid=R`` with a response timer; the hub
answers 202 (accepted: keep waiting) and then 200 ``{"certificates": [...]}`` ->
:class:`CertificateIssued`, or an error -> :class:`RenewalFailed` (``transient`` for
429002, 429003, 500001, 503001, 503102 and the timeout; final otherwise: 400040, 409005,
412001, ...). Answers for other rids are ignored. Certificates are base64 DER (the Java
SDK); PEM strings (one Learn example) are accepted and turned into base64 DER.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from agent.core.actions import CancelTimer, Publish, StartTimer, Subscribe

__all__ = ["CREDENTIALS_FILTER", "CertificateIssued", "HubRenewal", "RenewalFailed"]

CREDENTIALS_FILTER = "$iothub/credentials/res/#"
RESPONSE_PREFIX = "$iothub/credentials/res/"
TIMER = "renewal.hub"
TRANSIENT_CODES = frozenset({429002, 429003, 500001, 503001, 503102})
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True)
class CertificateIssued:
    """The hub signed the CSR: the chain (base64 DER, leaf first)."""

    chain: tuple[str, ...]


@dataclass(frozen=True)
class RenewalFailed:
    """The hub refused the request (``code`` its errorCode) or did not answer."""

    code: int | None
    message: str
    transient: bool


RenewalAction = Subscribe | Publish | StartTimer | CancelTimer | CertificateIssued | RenewalFailed


def _der_b64(item: str) -> str:
    match = _PEM.search(item)
    return "".join((match.group(1) if match else item).split())


class HubRenewal:
    """One ``issueCertificate`` exchange."""

    #: The timer it starts and answers in :meth:`on_timer` (:data:`TIMER`).
    timer_name = TIMER

    def __init__(self, device_id: str, csr: str, rid: str, *, timeout_s: float = 120.0) -> None:
        self.device_id = device_id
        self.csr = csr
        self.rid = rid
        self.timeout_s = timeout_s
        self.done = False

    def start(self) -> list[RenewalAction]:
        """Subscribe, send the request, arm the timeout."""
        body = json.dumps({"id": self.device_id, "csr": self.csr, "replace": "*"}).encode()
        topic = f"$iothub/credentials/POST/issueCertificate/?$rid={self.rid}"
        return [
            Subscribe(CREDENTIALS_FILTER, 1),
            Publish(topic, body, 1),
            StartTimer(TIMER, self.timeout_s),
        ]

    def on_message(self, topic: str, payload: bytes) -> list[RenewalAction]:
        """A message on the credentials response topic."""
        if self.done or not topic.startswith(RESPONSE_PREFIX):
            return []
        path, _, query = topic[len(RESPONSE_PREFIX) :].partition("?")
        if dict(parse_qsl(query, keep_blank_values=True)).get("$rid") != self.rid:
            return []
        try:
            status = int(path.strip("/"))
            body = json.loads(payload) if payload.strip() else {}
        except (ValueError, UnicodeDecodeError):
            return self._fail(None, f"malformed answer on {topic!r}", transient=True)
        if not isinstance(body, dict):
            return self._fail(None, "the answer is not a JSON object", transient=True)
        if status == 202:
            return []
        if status == 200:
            certificates = body.get("certificates")
            if (
                not isinstance(certificates, list)
                or not certificates
                or not all(isinstance(c, str) and c for c in certificates)
            ):
                return self._fail(None, "200 without certificates", transient=True)
            self.done = True
            return [CancelTimer(TIMER), CertificateIssued(tuple(_der_b64(c) for c in certificates))]
        code = body.get("errorCode")
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        message = str(body.get("message") or f"the hub answered {status}")
        transient = code in TRANSIENT_CODES or (code is None and status in (429, 500, 503))
        return self._fail(code, message, transient=transient)

    def on_timer(self, name: str) -> list[RenewalAction]:
        """The response timer: no answer in time (transient)."""
        if name != TIMER or self.done:
            return []
        return self._fail(None, f"no answer within {self.timeout_s:g} s", transient=True)

    def _fail(self, code: int | None, message: str, *, transient: bool) -> list[RenewalAction]:
        self.done = True
        return [CancelTimer(TIMER), RenewalFailed(code, message, transient)]
