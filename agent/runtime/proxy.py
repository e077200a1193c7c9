"""The proxy a connection takes, with its credentials read from their file.

:func:`route_for` combines ``[network]`` with the environment (see
:func:`agent.core.proxy.choose_proxy`) and reads the Basic credentials from
``proxy_auth_path`` -- one line ``user:password``, a file only its owner may read -- at
every connection, so a changed password is picked up without a restart. A file that
cannot be used is logged and the connection goes out without credentials: the proxy's
407 then says so, and the lifecycle backs off as for any network failure.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from agent.config import NetworkConfig
from agent.core.proxy import ProxyRoute, choose_proxy
from agent.errors import AgentError

log = logging.getLogger(__name__)
MAX_AUTH_FILE_BYTES = 4096


class ProxyAuthError(AgentError, ValueError):
    """The proxy credentials file cannot be used (missing, readable by others, malformed)."""


def read_credentials(path: Path) -> tuple[str, str]:
    """``(user, password)`` from ``path``; :class:`ProxyAuthError` saying what is wrong."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise ProxyAuthError(f"{path}: not a regular file")
        if mode & 0o077:
            raise ProxyAuthError(
                f"{path}: readable by group or others (mode {stat.S_IMODE(mode):04o}); "
                f"chmod 600 {path}"
            )
        raw = path.read_bytes()[: MAX_AUTH_FILE_BYTES + 1]
    except OSError as exc:
        raise ProxyAuthError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_AUTH_FILE_BYTES:
        raise ProxyAuthError(f"{path}: longer than {MAX_AUTH_FILE_BYTES} bytes")
    try:
        line = raw.decode("utf-8").strip("\r\n")
    except UnicodeDecodeError:
        raise ProxyAuthError(f"{path}: not UTF-8 text") from None
    user, colon, password = line.partition(":")
    if not colon or not user or "\n" in line:
        raise ProxyAuthError(f"{path}: expected one line 'user:password'")
    return user, password


def route_for(host: str, network: NetworkConfig, environ: Mapping[str, str]) -> ProxyRoute | None:
    """The proxy for a connection to ``host`` (None: direct)."""
    configured = network.http_proxy()
    route = None
    if configured is not None:
        credentials = None
        if configured.auth_path is not None:
            try:
                credentials = read_credentials(configured.auth_path)
            except ProxyAuthError as exc:
                log.error("proxy credentials not used: %s", exc)
        route = ProxyRoute(configured.host, configured.port, credentials)
    try:
        return choose_proxy(host, configured=route, direct=network.direct, environ=environ)
    except ValueError as exc:
        log.error("https_proxy ignored: %s", exc)
        return None
