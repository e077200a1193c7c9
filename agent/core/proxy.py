"""HTTP proxies: which one a connection takes, and the CONNECT exchange. Pure functions.

Theory of operation
-------------------
A device behind an HTTP proxy reaches DPS and the hub through a tunnel: it opens TCP
to the proxy, sends ``CONNECT host:port HTTP/1.1`` (with ``Proxy-Authorization: Basic``
when it has credentials), reads the proxy's answer up to the blank line, and on a 2xx
speaks TLS -- and MQTT, or MQTT over WebSockets -- through the tunnel as if connected
directly. Any other answer is final for that attempt: the caller reports it
(:func:`refusal`) and the lifecycle backs off as for any network failure.

:func:`choose_proxy` decides per host: the configured proxy, else none when the config
says ``"none"``, else the environment's ``https_proxy`` (``HTTPS_PROXY``) unless
``no_proxy`` (``NO_PROXY``) names the host. :func:`connect_request` and
:class:`ConnectAnswerParser` are the bytes out and in; nothing here touches a socket.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass

from agent.errors import AgentError

#: The longest proxy answer head accepted (status line and headers).
MAX_ANSWER_BYTES = 16 * 1024


class ProxyAnswerError(AgentError, ValueError):
    """The proxy's answer is not HTTP, or too long."""


@dataclass(frozen=True)
class ProxyRoute:
    """A proxy to tunnel through, and the Basic credentials for it (if any)."""

    host: str
    port: int
    credentials: tuple[str, str] | None = None

    def __str__(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class ConnectAnswer:
    """The proxy's answer to CONNECT."""

    status: int
    reason: str

    @property
    def tunnel_open(self) -> bool:
        """A 2xx: the tunnel is there."""
        return 200 <= self.status < 300


def connect_request(host: str, port: int, credentials: tuple[str, str] | None = None) -> bytes:
    """The ``CONNECT`` request for a tunnel to ``host:port``."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if credentials is not None:
        token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode("ascii")
        lines.append(f"Proxy-Authorization: Basic {token}")
    lines.append("Proxy-Connection: Keep-Alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


class ConnectAnswerParser:
    """Collects the proxy's answer; :meth:`feed` returns it once the head is complete.

    After a 2xx, bytes beyond the head would belong to the tunnelled protocol, which
    starts with the client speaking: a proxy sending more is refused as malformed. A
    refusal's body (an error page) is ignored.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> ConnectAnswer | None:
        """Add received bytes; the answer when complete, else None. Raises on garbage."""
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_ANSWER_BYTES:
                raise ProxyAnswerError(f"proxy answer longer than {MAX_ANSWER_BYTES} bytes")
            return None
        status_line = self._buffer[:end].split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProxyAnswerError(f"not an HTTP answer from the proxy: {status_line[:80]!r}")
        answer = ConnectAnswer(int(parts[1]), parts[2].strip() if len(parts) == 3 else "")
        # A refusal may carry a body (an error page); an open tunnel carries nothing yet.
        if answer.tunnel_open and len(self._buffer) > end + 4:
            raise ProxyAnswerError("proxy sent data after opening the tunnel, before TLS")
        return answer


def refusal(answer: ConnectAnswer, proxy: ProxyRoute, host: str, port: int) -> str:
    """What to log when the proxy did not open the tunnel."""
    text = f"proxy {proxy} refused CONNECT to {host}:{port}: {answer.status} {answer.reason}"
    if answer.status == 407:
        if proxy.credentials is None:
            return text + " (it wants credentials: set network.proxy_auth_path)"
        return text + " (the credentials in network.proxy_auth_path were not accepted)"
    if answer.status == 403:
        return text + " (the proxy's rules forbid this host or port)"
    return text


def _no_proxy_matches(host: str, no_proxy: str) -> bool:
    host = host.lower().rstrip(".")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry = entry.split(":", 1)[0] if entry.count(":") == 1 else entry
        entry = entry.lstrip(".").rstrip(".")
        if host == entry or host.endswith("." + entry):
            return True
    return False


def _from_environment(url: str) -> ProxyRoute:
    """A route from ``https_proxy``: ``[http://][user:password@]host[:port]``."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"https_proxy must be http://host:port, got {url!r}")
    credentials = None
    if parts.username is not None:
        credentials = (unquote(parts.username), unquote(parts.password or ""))
    return ProxyRoute(parts.hostname, parts.port or 80, credentials)


def choose_proxy(
    host: str,
    *,
    configured: ProxyRoute | None,
    direct: bool,
    environ: Mapping[str, str],
) -> ProxyRoute | None:
    """The proxy for a connection to ``host``, or None to connect directly.

    The config wins (``configured``, or ``direct`` for ``proxy = "none"``); without
    either, ``https_proxy`` / ``HTTPS_PROXY`` unless ``no_proxy`` / ``NO_PROXY`` names
    ``host`` (exact, as a domain suffix, or ``*``). Raises ValueError for an unusable
    ``https_proxy``.
    """
    if configured is not None:
        return configured
    if direct:
        return None
    url = environ.get("https_proxy") or environ.get("HTTPS_PROXY") or ""
    if not url:
        return None
    if _no_proxy_matches(host, environ.get("no_proxy") or environ.get("NO_PROXY") or ""):
        return None
    return _from_environment(url)
