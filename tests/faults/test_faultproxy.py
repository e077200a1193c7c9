"""The fault proxy itself, against a real echo server and a real TLS server on loopback."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcloud.pki import PKI
from tests.support.faultproxy import FaultProxy
from tests.support.waiting import wait_until


class EchoServer:
    """Echoes every byte back; counts connections. Bounded: stops within a timeout."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.context = context
        self.connections = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", int(self.sock.getsockname()[1])

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        try:
            if self.context is not None:
                conn.settimeout(5)
                conn = self.context.wrap_socket(conn, server_side=True)
                conn.settimeout(0.2)
            for _ in range(10_000):
                if self._stop.is_set():
                    break
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                conn.sendall(data)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._accepter.join(5)
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(echo.address) as running:
        yield running


def connect(proxy: FaultProxy, timeout_s: float = 2.0) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=timeout_s)


def roundtrip(sock: socket.socket, data: bytes = b"ping") -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_forwards_both_ways_and_counts(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock, b"x" * 100_000) == b"x" * 100_000
    assert proxy.accepted == 1
    assert proxy.bytes_up == 100_000
    wait_until(lambda: proxy.bytes_down == 100_000, timeout_s=2, what="echo counted")


def test_refuse_then_forward_again_on_the_same_port(proxy: FaultProxy) -> None:
    port = proxy.port
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    proxy.forward()
    assert proxy.port == port
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"


def test_reset_aborts_open_connections_and_new_ones(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            for _ in range(100):  # the RST may need a send to surface
                sock.sendall(b"more")
                if not sock.recv(10):
                    break
                time.sleep(0.01)
    with pytest.raises(ConnectionResetError), connect(proxy) as sock:
        roundtrip(sock)


def test_half_open_silences_existing_connections_without_fin_or_rst(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    with connect(proxy, timeout_s=0.5) as sock:
        assert roundtrip(sock) == b"ping"
        proxy.half_open()
        sock.sendall(b"lost")
        with pytest.raises(TimeoutError):  # no data, no EOF, no reset: only silence
            sock.recv(10)
        proxy.forward()
        sock.sendall(b"still lost")
        with pytest.raises(TimeoutError):  # a silenced connection stays silenced
            sock.recv(10)
    with connect(proxy) as sock:  # new connections are forwarded again
        assert roundtrip(sock) == b"ping"


def test_drop_after_n_bytes_then_silence_or_reset(proxy: FaultProxy) -> None:
    proxy.drop_after(6)
    with connect(proxy, timeout_s=0.5) as sock:
        sock.sendall(b"abcdefghij")
        got = b""
        with pytest.raises(TimeoutError):
            for _ in range(10):
                got += sock.recv(10)
        assert got == b"abcdef"[: len(got)] and len(got) <= 6
    proxy.drop_after(4, then="reset")
    with connect(proxy, timeout_s=2) as sock, pytest.raises(ConnectionResetError):
        sock.sendall(b"abcdefgh")
        for _ in range(10):
            if not sock.recv(10):
                break


def test_delay_holds_each_chunk_back(proxy: FaultProxy) -> None:
    proxy.forward(delay_s=0.3)
    with connect(proxy) as sock:
        start = time.monotonic()
        assert roundtrip(sock) == b"ping"
        assert time.monotonic() - start >= 0.6  # one delay each way


def test_at_most_max_connections_are_kept(echo: EchoServer) -> None:
    with FaultProxy(echo.address, max_connections=2) as proxy:
        socks = [connect(proxy) for _ in range(2)]
        for sock in socks:
            assert roundtrip(sock) == b"ping"
        # Reset at connect or at the first read.
        with pytest.raises(ConnectionResetError), connect(proxy) as extra:
            roundtrip(extra)
        for sock in socks:
            sock.close()


def test_blackhole_stalls_a_tls_handshake(tmp_path: Path) -> None:
    pki = PKI.create(tmp_path / "pki")
    issued = pki.issue_server("127.0.0.1", ip_addresses=["127.0.0.1"], dns_names=[])
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(str(issued.chain_path), str(issued.key_path))
    server = EchoServer(server_context)
    client_context = ssl.create_default_context(cafile=str(pki.root_path))
    try:
        with FaultProxy(server.address) as proxy:
            with (
                connect(proxy) as raw,
                client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                assert roundtrip(tls) == b"ping"  # the real handshake works through it
            proxy.blackhole()
            raw = connect(proxy, timeout_s=0.5)
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                client_context.wrap_socket(raw, server_hostname="127.0.0.1")
            assert time.monotonic() - start >= 0.4
            raw.close()
            assert server.connections == 1  # the stalled one never reached the server
    finally:
        server.close()


def test_stop_closes_everything_and_joins(echo: EchoServer) -> None:
    proxy = FaultProxy(echo.address).start()
    sock = connect(proxy)
    assert roundtrip(sock) == b"ping"
    proxy.stop()
    with pytest.raises(OSError):
        for _ in range(100):
            sock.sendall(b"x")
            if not sock.recv(10):
                raise ConnectionResetError("EOF")
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
