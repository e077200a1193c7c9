"""A fault-injecting TCP proxy on loopback, driven from the test thread.

Theory of operation
-------------------
:class:`FaultProxy` listens on a loopback address and forwards every accepted connection
to one upstream ``(host, port)``. It runs an asyncio loop in its own thread; the test
thread changes its behaviour at any moment through thread-safe methods, which take
effect on the proxy's loop before they return:

``forward()``
    Pass bytes both ways (the default), optionally ``delay_s`` late per chunk.
``refuse()``
    Close the listening socket: new connections get ECONNREFUSED (the kernel's RST).
    Existing connections are left alone. ``forward()`` listens again on the same port.
``reset()``
    Abort every open connection with an RST (``SO_LINGER`` 0) and answer new ones the
    same way.
``blackhole()``
    New connections are accepted and read, but nothing is forwarded or answered: a
    TLS ClientHello goes unanswered, so the handshake stalls. Existing connections
    carry on.
``half_open()``
    Like ``blackhole()``, and every *existing* connection stops forwarding too, in
    both directions, with no FIN and no RST: what a peer sees when the path drops
    packets. The client's keep-alive is what must notice.
``drop_after(n)``
    New connections forward their first ``n`` bytes (both directions together), then
    go silent (or reset, with ``then="reset"``).

Everything is bounded: at most ``max_connections`` open pairs (more are reset), reads
of at most 64 KiB, and :meth:`stop` closes every socket and joins the thread within a
timeout. Counters (:attr:`accepted`, :attr:`bytes_up`, :attr:`bytes_down`) and
``attempts`` (accept times, monotonic) let a test assert what the client did.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

CHUNK = 65536


class Mode(enum.Enum):
    """What the proxy does with a connection accepted now."""

    FORWARD = "forward"
    REFUSE = "refuse"
    RESET = "reset"
    BLACKHOLE = "blackhole"


@dataclass(eq=False)
class _Pair:
    """One client connection and its upstream, with its own fault settings."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    silent: bool = False
    budget: int | None = None  # bytes still to forward before the drop
    then_reset: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """A TCP proxy from ``listen_host:port`` to ``upstream``; see the module docstring."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        max_connections: int = 64,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.upstream = upstream
        self.listen_host = listen_host
        self.port = listen_port
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self.mode = Mode.FORWARD
        self.delay_s = 0.0
        self._drop_after: tuple[int, bool] | None = None
        self.accepted = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.attempts: list[float] = []
        self._pairs: set[_Pair] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy")
        self._started = False

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen (on a free port if ``listen_port`` was 0) and serve in a thread."""
        self._thread.start()
        self._started = True
        self._call(self._listen())
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the listener and every connection; join the thread."""
        if not self._started:
            return
        self._started = False
        with contextlib.suppress(Exception):
            self._call(self._shutdown(), timeout_s)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError("the fault proxy's thread did not stop")
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect."""
        return self.listen_host, self.port

    @property
    def open_connections(self) -> int:
        """Client connections open right now."""
        return len(self._pairs)

    # -- controls (any thread) ---------------------------------------------------------------

    def forward(self, *, delay_s: float = 0.0) -> None:
        """Forward new and existing connections, each chunk ``delay_s`` late."""
        self._call(self._set(Mode.FORWARD, delay_s=delay_s))

    def refuse(self) -> None:
        """Stop listening: connection attempts are refused."""
        self._call(self._set(Mode.REFUSE))

    def reset(self) -> None:
        """RST every open connection and every new one."""
        self._call(self._set(Mode.RESET))

    def blackhole(self) -> None:
        """Accept new connections and never answer them (a stalled handshake)."""
        self._call(self._set(Mode.BLACKHOLE))

    def half_open(self) -> None:
        """Silence every connection, old and new, both ways, without FIN or RST."""
        self._call(self._set(Mode.BLACKHOLE, silence_existing=True))

    def drop_after(self, n_bytes: int, *, then: str = "silence") -> None:
        """New connections go silent (``then="reset"``: RST) after ``n_bytes``."""
        if then not in ("silence", "reset"):
            raise ValueError(f"then must be 'silence' or 'reset', not {then!r}")
        self._call(self._set(Mode.FORWARD, drop_after=(n_bytes, then == "reset")))

    def attempts_since(self, since: float) -> list[float]:
        """Accept times (monotonic) at or after ``since``, refusals not included."""
        return [t for t in list(self.attempts) if t >= since]

    # -- the loop's side -------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 5.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, self.listen_host, self.port, reuse_address=True, limit=CHUNK
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _unlisten(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            # wait_closed() would wait for every handler; the listener is closed now.

    async def _set(
        self,
        mode: Mode,
        *,
        delay_s: float = 0.0,
        drop_after: tuple[int, bool] | None = None,
        silence_existing: bool = False,
    ) -> None:
        self.mode, self.delay_s, self._drop_after = mode, delay_s, drop_after
        if mode is Mode.REFUSE:
            await self._unlisten()
        else:
            await self._listen()
        for pair in list(self._pairs):
            if mode is Mode.RESET:
                self._close(pair, rst=True)
            elif silence_existing:
                pair.silent = True  # for good: the bytes it dropped are gone

    async def _shutdown(self) -> None:
        await self._unlisten()
        for pair in list(self._pairs):
            self._close(pair, rst=True)
        await asyncio.sleep(0)
        tasks = [t for t in self._handlers if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _close(self, pair: _Pair, *, rst: bool) -> None:
        self._pairs.discard(pair)
        for writer in (pair.client, pair.upstream):
            if writer is None:
                continue
            if rst:
                _abort_with_rst(writer)
            else:
                writer.close()
        for task in pair.tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.attempts.append(time.monotonic())
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
        pair = _Pair(writer)
        if self.mode is Mode.RESET or len(self._pairs) >= self.max_connections:
            _abort_with_rst(writer)
            return
        self._pairs.add(pair)
        if self._drop_after is not None:
            pair.budget, pair.then_reset = self._drop_after
        if self.mode is Mode.BLACKHOLE:
            pair.silent = True
            await self._pump(reader, None, pair, up=True)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream, limit=CHUNK), self.connect_timeout_s
            )
        except (OSError, TimeoutError):
            self._close(pair, rst=True)
            return
        pair.upstream = up_writer
        if pair not in self._pairs:  # reset meanwhile
            _abort_with_rst(up_writer)
            return
        loop = asyncio.get_running_loop()
        pair.tasks = [
            loop.create_task(self._pump(reader, up_writer, pair, up=True)),
            loop.create_task(self._pump(up_reader, writer, pair, up=False)),
        ]
        await asyncio.gather(*pair.tasks, return_exceptions=True)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter | None,
        pair: _Pair,
        *,
        up: bool,
    ) -> None:
        try:
            for _ in range(10**9):  # bounded by the connection's life; ends at EOF
                data = await reader.read(CHUNK)
                if not data:
                    break
                if pair.silent or writer is None:
                    continue  # dropped on the floor, as a black-holed path does
                if pair.budget is not None:
                    if len(data) >= pair.budget:
                        data, pair.budget = data[: pair.budget], 0
                        pair.silent = True
                    else:
                        pair.budget -= len(data)
                if self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)
                if data:
                    writer.write(data)
                    await writer.drain()
                    if up:
                        self.bytes_up += len(data)
                    else:
                        self.bytes_down += len(data)
                if pair.silent and pair.then_reset:
                    self._close(pair, rst=True)
                    return
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return
        if pair.silent and pair in self._pairs:
            # A silenced connection never passes the EOF on: keep the peer hanging until
            # the client itself gives up (its EOF ends this pump; then close quietly).
            self._close(pair, rst=False)
            return
        if writer is not None and not writer.is_closing():
            with contextlib.suppress(OSError):
                writer.write_eof()  # pass the half-close on
        if pair in self._pairs and all(t.done() or t is asyncio.current_task() for t in pair.tasks):
            self._close(pair, rst=False)
