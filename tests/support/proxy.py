"""A real HTTP proxy for the tests: Debian's tinyproxy, on loopback, with its own config.

:func:`tinyproxy` writes a config (listen address and port, which CONNECT ports are
allowed, Basic authentication), starts ``tinyproxy -d`` (foreground) and waits until
it accepts connections; on exit it stops that process by its PID. :meth:`Tinyproxy.log`
is what it logged (``CONNECT`` lines name each tunnel it was asked for).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.waiting import wait_until


@dataclass
class Tinyproxy:
    """A running tinyproxy."""

    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:  # it exited before logging anything
            return ""

    def connects(self) -> list[str]:
        """The ``CONNECT host:port`` requests it received, in order."""
        return [
            line.split("CONNECT ", 2)[-1].split(" HTTP/")[0]
            for line in self.log().splitlines()
            if "Request (file descriptor" in line and "CONNECT " in line
        ]


def _accepting(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@contextlib.contextmanager
def tinyproxy(
    folder: Path,
    host: str,
    port: int,
    *,
    connect_ports: Sequence[int] = (),
    basic_auth: tuple[str, str] | None = None,
) -> Iterator[Tinyproxy]:
    """tinyproxy on ``host:port``; ``connect_ports`` limits CONNECT (empty: any port)."""
    program = shutil.which("tinyproxy")
    if program is None:
        pytest.skip("tinyproxy is not installed (Debian package tinyproxy; `make test` adds it)")
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "tinyproxy.log"
    lines = [
        f"Port {port}",
        f"Listen {host}",
        "Timeout 60",
        "MaxClients 50",
        "Allow 127.0.0.0/8",
        "LogLevel Info",
        f'LogFile "{log_path}"',
        *(f"ConnectPort {p}" for p in connect_ports),
    ]
    if basic_auth is not None:
        lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
    config = folder / "tinyproxy.conf"
    config.write_text("\n".join(lines) + "\n")
    process = subprocess.Popen(
        [program, "-d", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proxy = Tinyproxy(host, port, process, log_path)
    try:
        wait_until(
            lambda: process.poll() is not None or _accepting(host, port),
            timeout_s=10,
            what="tinyproxy to listen",
        )
        assert process.poll() is None, f"tinyproxy exited {process.returncode}: {proxy.log()}"
        yield proxy
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
