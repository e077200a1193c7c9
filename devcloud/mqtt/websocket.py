"""The server side of RFC 6455 WebSockets, sans-I/O, as MQTT-over-WebSockets needs it.

Theory of operation
-------------------
A :class:`ServerWebSocket` sits between the TLS stream and the MQTT decoder. The
server feeds it every received byte with :meth:`ServerWebSocket.feed`, which returns a
:class:`Received`: the application bytes that arrived (the payload of binary frames,
in order, fragments included), the bytes to write back now (the handshake response,
a pong, the echo of a close frame) and whether the WebSocket is now closed. Outgoing
MQTT bytes are framed with :meth:`ServerWebSocket.send`; :meth:`ServerWebSocket.close`
gives the server's close frame.

States: ``HANDSHAKE`` (buffering the HTTP upgrade request) -> ``OPEN`` -> ``CLOSING``
(we sent a close frame; what follows is ignored until the peer's close) -> ``CLOSED``.
Any violation raises :class:`WebSocketError` carrying the bytes to send before
dropping the connection (an HTTP error response during the handshake, a close frame
with the RFC's status code after it) and moves to ``FAILED``, where every later call
raises the same error again.

What is enforced: a ``GET`` for the configured path over HTTP/1.1 with ``Host``,
``Upgrade: websocket``, ``Connection: Upgrade``, a 16-byte base64
``Sec-WebSocket-Key``, version 13 (else 426), and the subprotocol (``mqtt``) among those
offered; client frames masked, no RSV bits (no extension is negotiated), known opcodes,
control frames unfragmented and at most 125 bytes, continuation frames only inside a
fragmented message, data frames at most ``max_frame_size`` (1009), close payloads well
formed (1002/1007). Text frames are refused with 1003: MQTT travels in binary frames
only (MQTT 3.1.1 section 6).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass
from enum import Enum

from devcloud.mqtt.codec import MQTTError

__all__ = ["Received", "ServerWebSocket", "WebSocketError", "accept_key"]

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_VALID_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})
_REASONS = {
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    426: "Upgrade Required",
}

# Close codes (RFC 6455 section 7.4.1).
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
INVALID_PAYLOAD = 1007
MESSAGE_TOO_BIG = 1009


class WebSocketError(MQTTError, ValueError):
    """The peer broke RFC 6455 (or MQTT's use of it). Send ``reply``, then close."""

    def __init__(self, problem: str, *, reply: bytes, http_status: int | None = None) -> None:
        self.problem = problem
        #: Bytes to write before closing: an HTTP error response or a close frame.
        self.reply = reply
        #: The HTTP status sent when the handshake was refused, else None (a close frame).
        self.http_status = http_status
        super().__init__(f"websocket: {problem}")


@dataclass(frozen=True)
class Received:
    """What one :meth:`ServerWebSocket.feed` produced."""

    #: Application bytes, in order (binary frame payloads).
    data: bytes = b""
    #: Bytes to write to the peer now.
    reply: bytes = b""
    #: The closing handshake is complete: write ``reply``, then close the transport.
    closed: bool = False


class _State(Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 section 4.2.2)."""
    digest = hashlib.sha1((key + _GUID).encode("ascii")).digest()  # noqa: S324 - RFC 6455
    return base64.b64encode(digest).decode("ascii")


def _frame(opcode: int, payload: bytes) -> bytes:
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return header + payload


def _close_frame(code: int, reason: str = "") -> bytes:
    return _frame(_CLOSE, struct.pack("!H", code) + reason.encode("utf-8")[:123])


def _unmask(mask: bytes, payload: bytes) -> bytes:
    length = len(payload)
    if not length:
        return b""
    key = (mask * (length // 4 + 1))[:length]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")
    return value.to_bytes(length, "big")


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",") if token.strip()}


class ServerWebSocket:
    """One server-side WebSocket: the HTTP upgrade, then binary frames both ways."""

    def __init__(
        self,
        path: str,
        subprotocol: str = "mqtt",
        *,
        max_frame_size: int = 1 << 20,
        max_handshake_size: int = 16 * 1024,
    ) -> None:
        self.path = path
        self.subprotocol = subprotocol
        self.max_frame_size = max_frame_size
        self.max_handshake_size = max_handshake_size
        #: Request headers (lower-case names) once the handshake is done.
        self.request_headers: dict[str, str] = {}
        self._state = _State.HANDSHAKE
        self._buffer = bytearray()
        self._in_message = False  # a fragmented binary message is in progress
        self._error: WebSocketError | None = None

    @property
    def open(self) -> bool:
        """True once the handshake succeeded and until a close frame was sent or received."""
        return self._state is _State.OPEN

    def feed(self, data: bytes) -> Received:
        """Consume received bytes; see :class:`Received`. Raises :class:`WebSocketError`."""
        if self._error is not None:
            raise self._error
        if self._state is _State.CLOSED:
            return Received(closed=True)
        self._buffer += data
        try:
            return self._process()
        except WebSocketError as exc:
            self._error = exc
            self._state = _State.FAILED
            self._buffer.clear()
            raise

    def send(self, data: bytes) -> bytes:
        """Frame ``data`` as one unmasked binary message."""
        return _frame(_BINARY, data)

    def close(self, code: int = 1000, reason: str = "") -> bytes:
        """Return the server's close frame (once; empty if the socket is not open)."""
        if self._state is not _State.OPEN:
            return b""
        self._state = _State.CLOSING
        return _close_frame(code, reason)

    # --- internals -------------------------------------------------------------------

    def _process(self) -> Received:
        reply = bytearray()
        if self._state is _State.HANDSHAKE:
            if self._buffer and not 0x41 <= self._buffer[0] <= 0x5A:
                # Not an HTTP method (e.g. MQTT bytes on the WebSocket port): refuse now.
                raise self._http_error(400, f"not an HTTP request: {bytes(self._buffer[:8])!r}")
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > self.max_handshake_size:
                    raise self._http_error(400, "handshake request too large")
                return Received()
            request = bytes(self._buffer[:end])
            del self._buffer[: end + 4]
            reply += self._handshake(request)
            self._state = _State.OPEN
        data = bytearray()
        closed = False
        while not closed:
            frame = self._next_frame()
            if frame is None:
                break
            fin, opcode, payload = frame
            if opcode in (_BINARY, _CONTINUATION):
                if (opcode == _CONTINUATION) != self._in_message:
                    raise self._fail(PROTOCOL_ERROR, "unexpected continuation or new message")
                self._in_message = not fin
                if self._state is _State.OPEN:
                    data += payload
            elif opcode == _PING:
                if self._state is _State.OPEN:
                    reply += _frame(_PONG, payload)
            elif opcode == _CLOSE:
                code = self._check_close_payload(payload)
                if self._state is _State.OPEN:
                    reply += _close_frame(code) if code else _frame(_CLOSE, b"")
                self._state = _State.CLOSED
                closed = True
            # A pong is ignored: we never ping.
        return Received(bytes(data), bytes(reply), closed)

    def _handshake(self, request: bytes) -> bytes:
        try:
            text = request.decode("ascii")
        except UnicodeDecodeError:
            raise self._http_error(400, "handshake request is not ASCII") from None
        request_line, *header_lines = text.split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3:
            raise self._http_error(400, f"bad request line {request_line!r}")
        method, target, version = parts
        if method != "GET":
            raise self._http_error(405, f"method {method!r} is not GET")
        if version != "HTTP/1.1":
            raise self._http_error(400, f"version {version!r} is not HTTP/1.1")
        headers: dict[str, str] = {}
        for line in header_lines:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise self._http_error(400, f"bad header line {line!r}")
            key = name.lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if target.split("?", 1)[0] != self.path:
            raise self._http_error(404, f"no WebSocket at {target!r}")
        if "host" not in headers:
            raise self._http_error(400, "no Host header")
        if "websocket" not in _tokens(headers.get("upgrade", "")):
            raise self._http_error(400, "Upgrade is not websocket")
        if "upgrade" not in _tokens(headers.get("connection", "")):
            raise self._http_error(400, "Connection does not include Upgrade")
        if headers.get("sec-websocket-version") != "13":
            raise self._http_error(426, "Sec-WebSocket-Version is not 13")
        key = headers.get("sec-websocket-key", "")
        try:
            valid_key = len(base64.b64decode(key, validate=True)) == 16
        except binascii.Error:
            valid_key = False
        if not valid_key:
            raise self._http_error(400, f"bad Sec-WebSocket-Key {key!r}")
        offered = _tokens(headers.get("sec-websocket-protocol", ""))
        if self.subprotocol.lower() not in offered:
            raise self._http_error(400, f"subprotocol {self.subprotocol!r} not offered")
        self.request_headers = headers
        return (
            "HTTP/1.1 101 Switching Protocols\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(key)}\r\n"
            f"Sec-WebSocket-Protocol: {self.subprotocol}\r\n"
            "\r\n"
        ).encode("ascii")

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        """Take one complete frame off the buffer: ``(fin, opcode, unmasked payload)``."""
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        first, second = buffer[0], buffer[1]
        fin, opcode = bool(first & 0x80), first & 0x0F
        if first & 0x70:
            raise self._fail(PROTOCOL_ERROR, "RSV bits set without an extension")
        if opcode == _TEXT:
            raise self._fail(UNSUPPORTED_DATA, "text frame (MQTT needs binary frames)")
        if opcode not in (_CONTINUATION, _BINARY, _CLOSE, _PING, _PONG):
            raise self._fail(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if not second & 0x80:
            raise self._fail(PROTOCOL_ERROR, "client frame is not masked")
        length, offset = second & 0x7F, 2
        if opcode >= _CLOSE and (length > 125 or not fin):
            raise self._fail(PROTOCOL_ERROR, "control frame fragmented or over 125 bytes")
        if length == 126:
            if len(buffer) < 4:
                return None
            (length,) = struct.unpack_from("!H", buffer, 2)
            offset = 4
        elif length == 127:
            if len(buffer) < 10:
                return None
            (length,) = struct.unpack_from("!Q", buffer, 2)
            if length >> 63:
                raise self._fail(PROTOCOL_ERROR, "64-bit length with its top bit set")
            offset = 10
        if length > self.max_frame_size:
            raise self._fail(MESSAGE_TOO_BIG, f"frame of {length} bytes")
        end = offset + 4 + length
        if len(buffer) < end:
            return None
        mask = bytes(buffer[offset : offset + 4])
        payload = _unmask(mask, bytes(buffer[offset + 4 : end]))
        del buffer[:end]
        return fin, opcode, payload

    def _check_close_payload(self, payload: bytes) -> int:
        """Return the close code in ``payload`` (0 if none); refuse malformed ones."""
        if not payload:
            return 0
        if len(payload) == 1:
            raise self._fail(PROTOCOL_ERROR, "close frame with a 1-byte payload")
        code = int.from_bytes(payload[:2], "big")
        if code not in _VALID_CLOSE_CODES and not 3000 <= code <= 4999:
            raise self._fail(PROTOCOL_ERROR, f"invalid close code {code}")
        try:
            payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail(INVALID_PAYLOAD, "close reason is not UTF-8") from None
        return code

    def _fail(self, code: int, problem: str) -> WebSocketError:
        reply = _close_frame(code) if self._state is _State.OPEN else b""
        return WebSocketError(problem, reply=reply)

    def _http_error(self, status: int, problem: str) -> WebSocketError:
        extra = "Sec-WebSocket-Version: 13\r\n" if status == 426 else ""
        response = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n{extra}Content-Length: 0\r\n\r\n"
        ).encode("ascii")
        return WebSocketError(problem, reply=response, http_status=status)
