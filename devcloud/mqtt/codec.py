"""MQTT 3.1.1 packets as frozen dataclasses, and a sans-I/O codec for them.

Theory of operation
-------------------
:func:`encode` turns one packet event into bytes; :class:`Decoder` turns a byte
stream into packet events. Neither touches a socket: the server feeds whatever
``recv`` returned into :meth:`Decoder.feed` and gets back every packet that is now
complete; a partial packet stays buffered until the rest arrives.

Every event validates itself when constructed (``__post_init__``), so an invalid
packet can neither be decoded nor encoded: a decoded event is always one that
:func:`encode` can write back byte for byte (for the canonical encoding).

This codec speaks the subset of MQTT 3.1.1 that Azure IoT Hub and DPS speak:
QoS 0 and 1 only. PUBREC/PUBREL/PUBCOMP, PUBLISH or a will with QoS 2 are
malformed here (the hub closes such connections). SUBSCRIBE may *request* QoS 2,
as the spec allows; the server grants at most 1.

Rules enforced (MQTT 3.1.1 section in brackets): reserved packet types 0 and 15
[2.2.1]; the fixed-header flags of each type [2.2.2]; remaining length at most four
bytes [2.2.3]; UTF-8 strings well-formed and without U+0000 [1.5.3]; packet ids
non-zero [2.3.1]; topic names without wildcards and topic filters with ``#`` only
as the whole last level and ``+`` only as a whole level [4.7]; CONNECT's reserved
flag, will flags without a will, a password without a user name [3.1.2]; QoS 0
PUBLISH without DUP [3.3.1.1]; CONNACK session-present only when accepted
[3.2.2.2]; SUBSCRIBE/UNSUBSCRIBE with at least one filter [3.8.3, 3.10.3]; no bytes
left over inside a packet. A CONNECT naming a protocol other than ("MQTT", 4) is
decoded only up to its level and keep-alive (the payload layout is not known), so
the server can still answer it with CONNACK 1.

Errors: :class:`MQTTError` is the root. :class:`MalformedPacket` says what was wrong;
:class:`PacketTooLarge` carries the size and the limit and is raised as soon as a
fixed header announces a packet over the limit, before its body is buffered. Once a
decoder has raised, it stays failed and raises the same error on every later call
(packets completed earlier in the failing ``feed`` call are discarded with it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from devcloud.errors import DevCloudError

__all__ = [
    "MAX_REMAINING_LENGTH",
    "ConnAck",
    "Connect",
    "Decoder",
    "Disconnect",
    "MQTTError",
    "MalformedPacket",
    "Packet",
    "PacketTooLarge",
    "PingReq",
    "PingResp",
    "PubAck",
    "Publish",
    "SubAck",
    "Subscribe",
    "UnsubAck",
    "Unsubscribe",
    "encode",
    "validate_topic_filter",
    "validate_topic_name",
]

#: The largest remaining length four variable-length bytes can carry [2.2.3].
MAX_REMAINING_LENGTH = 268_435_455
_MAX_FIELD = 65_535  # strings and binary fields carry a two-byte length

# Control packet types [2.2.1].
_CONNECT, _CONNACK, _PUBLISH, _PUBACK = 1, 2, 3, 4
_PUBREC, _PUBREL, _PUBCOMP = 5, 6, 7
_SUBSCRIBE, _SUBACK, _UNSUBSCRIBE, _UNSUBACK = 8, 9, 10, 11
_PINGREQ, _PINGRESP, _DISCONNECT = 12, 13, 14

#: The fixed-header flags each non-PUBLISH type must carry [2.2.2].
_REQUIRED_FLAGS = {
    _CONNECT: 0,
    _CONNACK: 0,
    _PUBACK: 0,
    _SUBSCRIBE: 0b0010,
    _SUBACK: 0,
    _UNSUBSCRIBE: 0b0010,
    _UNSUBACK: 0,
    _PINGREQ: 0,
    _PINGRESP: 0,
    _DISCONNECT: 0,
}
_SUBACK_CODES = frozenset({0x00, 0x01, 0x80})


class MQTTError(DevCloudError):
    """Root of every error the MQTT codec and the WebSocket layer raise."""


class MalformedPacket(MQTTError, ValueError):
    """Bytes (or an event) that are not a valid MQTT 3.1.1 packet for this server."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"malformed MQTT packet: {problem}")


class PacketTooLarge(MQTTError, ValueError):
    """A packet larger than the decoder's (or the protocol's) limit."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"MQTT packet of {size} bytes exceeds the limit of {limit} bytes")


# --- validation shared by events (on construction) and the decoder ---------------------


def _check_text(value: str, what: str) -> bytes:
    """Return ``value`` as UTF-8, refusing U+0000, lone surrogates and over-long strings."""
    if "\x00" in value:
        raise MalformedPacket(f"{what} contains U+0000")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedPacket(f"{what} is not valid UTF-8") from exc
    if len(raw) > _MAX_FIELD:
        raise MalformedPacket(f"{what} is {len(raw)} bytes long (at most {_MAX_FIELD})")
    return raw


def _check_packet_id(packet_id: int | None) -> None:
    if packet_id is None or not 1 <= packet_id <= _MAX_FIELD:
        raise MalformedPacket(f"packet id {packet_id!r} is not in 1..65535")


def validate_topic_name(topic: str) -> None:
    """Raise :class:`MalformedPacket` unless ``topic`` is a valid PUBLISH topic name."""
    _check_text(topic, "topic name")
    if not topic:
        raise MalformedPacket("empty topic name")
    if "+" in topic or "#" in topic:
        raise MalformedPacket(f"topic name {topic!r} contains a wildcard")


def validate_topic_filter(topic_filter: str) -> None:
    """Raise :class:`MalformedPacket` unless ``topic_filter`` is a valid topic filter."""
    _check_text(topic_filter, "topic filter")
    if not topic_filter:
        raise MalformedPacket("empty topic filter")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise MalformedPacket(
                f"topic filter {topic_filter!r}: '#' must be the whole last level"
            )
        if "+" in level and level != "+":
            raise MalformedPacket(f"topic filter {topic_filter!r}: '+' must be a whole level")


def _check_qos(qos: int, what: str, allowed: tuple[int, ...] = (0, 1)) -> None:
    if qos not in allowed:
        raise MalformedPacket(f"{what} QoS {qos!r} is not supported (allowed: {allowed})")


# --- events --------------------------------------------------------------------------


@dataclass(frozen=True)
class Connect:
    """CONNECT [3.1]. For a protocol other than ("MQTT", 4) only the header is decoded."""

    client_id: str
    username: str | None = None
    password: bytes | None = None
    clean_session: bool = True
    keep_alive_s: int = 60
    will_topic: str | None = None
    will_payload: bytes | None = None
    will_qos: int = 0
    will_retain: bool = False
    protocol_name: str = "MQTT"
    protocol_level: int = 4

    def __post_init__(self) -> None:
        _check_text(self.client_id, "client id")
        _check_text(self.protocol_name, "protocol name")
        if self.username is not None:
            _check_text(self.username, "user name")
        if self.password is not None:
            if self.username is None:
                raise MalformedPacket("password without a user name")
            if len(self.password) > _MAX_FIELD:
                raise MalformedPacket("password longer than 65535 bytes")
        if not 0 <= self.keep_alive_s <= _MAX_FIELD:
            raise MalformedPacket(f"keep alive {self.keep_alive_s} is not in 0..65535")
        if not 0 <= self.protocol_level <= 255:
            raise MalformedPacket(f"protocol level {self.protocol_level} is not a byte")
        if self.will_topic is None:
            if self.will_payload is not None or self.will_qos or self.will_retain:
                raise MalformedPacket("will QoS, retain or payload without a will")
        else:
            validate_topic_name(self.will_topic)
            if self.will_payload is None:
                raise MalformedPacket("will topic without a will payload")
            if len(self.will_payload) > _MAX_FIELD:
                raise MalformedPacket("will payload longer than 65535 bytes")
            _check_qos(self.will_qos, "will")


@dataclass(frozen=True)
class ConnAck:
    """CONNACK [3.2]: return code 0 accepts; 1..5 refuse (see ``endpoint.CONNACK_*``)."""

    session_present: bool
    return_code: int

    def __post_init__(self) -> None:
        if not 0 <= self.return_code <= 5:
            raise MalformedPacket(f"CONNACK return code {self.return_code} is reserved")
        if self.session_present and self.return_code != 0:
            raise MalformedPacket("CONNACK refuses but says a session is present")


@dataclass(frozen=True)
class Publish:
    """PUBLISH [3.3]. ``packet_id`` is set exactly when ``qos`` is 1."""

    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None

    def __post_init__(self) -> None:
        validate_topic_name(self.topic)
        _check_qos(self.qos, "PUBLISH")
        if self.qos == 0:
            if self.packet_id is not None:
                raise MalformedPacket("QoS 0 PUBLISH with a packet id")
            if self.dup:
                raise MalformedPacket("QoS 0 PUBLISH with DUP set")
        else:
            _check_packet_id(self.packet_id)


@dataclass(frozen=True)
class PubAck:
    """PUBACK [3.4]."""

    packet_id: int

    def __post_init__(self) -> None:
        _check_packet_id(self.packet_id)


@dataclass(frozen=True)
class Subscribe:
    """SUBSCRIBE [3.8]: ``topics`` is ``((filter, requested_qos), ...)``, QoS 0..2."""

    packet_id: int
    topics: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        _check_packet_id(self.packet_id)
        if not self.topics:
            raise MalformedPacket("SUBSCRIBE without a topic filter")
        for topic_filter, qos in self.topics:
            validate_topic_filter(topic_filter)
            _check_qos(qos, "requested", (0, 1, 2))


@dataclass(frozen=True)
class SubAck:
    """SUBACK [3.9]: one return code per filter, 0 or 1 (granted QoS) or 0x80 (failure)."""

    packet_id: int
    return_codes: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_packet_id(self.packet_id)
        if not self.return_codes:
            raise MalformedPacket("SUBACK without a return code")
        for code in self.return_codes:
            if code not in _SUBACK_CODES:
                raise MalformedPacket(f"SUBACK return code {code:#x} is not 0, 1 or 0x80")


@dataclass(frozen=True)
class Unsubscribe:
    """UNSUBSCRIBE [3.10]."""

    packet_id: int
    topics: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_packet_id(self.packet_id)
        if not self.topics:
            raise MalformedPacket("UNSUBSCRIBE without a topic filter")
        for topic_filter in self.topics:
            validate_topic_filter(topic_filter)


@dataclass(frozen=True)
class UnsubAck:
    """UNSUBACK [3.11]."""

    packet_id: int

    def __post_init__(self) -> None:
        _check_packet_id(self.packet_id)


@dataclass(frozen=True)
class PingReq:
    """PINGREQ [3.12]."""


@dataclass(frozen=True)
class PingResp:
    """PINGRESP [3.13]."""


@dataclass(frozen=True)
class Disconnect:
    """DISCONNECT [3.14]."""


Packet = (
    Connect
    | ConnAck
    | Publish
    | PubAck
    | Subscribe
    | SubAck
    | Unsubscribe
    | UnsubAck
    | PingReq
    | PingResp
    | Disconnect
)


# --- encoding ------------------------------------------------------------------------


def _encode_remaining_length(length: int) -> bytes:
    if not 0 <= length <= MAX_REMAINING_LENGTH:
        raise PacketTooLarge(length, MAX_REMAINING_LENGTH)
    out = bytearray()
    while True:
        length, digit = divmod(length, 128)
        out.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(out)


def _string(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def _binary(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _encode_remaining_length(len(body)) + body


def encode(packet: Packet) -> bytes:
    """Return the wire bytes of ``packet`` (the canonical, shortest encoding)."""
    match packet:
        case Connect():
            flags = (
                (0x80 if packet.username is not None else 0)
                | (0x40 if packet.password is not None else 0)
                | (0x20 if packet.will_retain else 0)
                | (packet.will_qos << 3)
                | (0x04 if packet.will_topic is not None else 0)
                | (0x02 if packet.clean_session else 0)
            )
            body = bytearray(_string(packet.protocol_name))
            body += struct.pack("!BBH", packet.protocol_level, flags, packet.keep_alive_s)
            body += _string(packet.client_id)
            if packet.will_topic is not None and packet.will_payload is not None:
                body += _string(packet.will_topic) + _binary(packet.will_payload)
            if packet.username is not None:
                body += _string(packet.username)
            if packet.password is not None:
                body += _binary(packet.password)
            return _packet(_CONNECT << 4, bytes(body))
        case ConnAck():
            return _packet(_CONNACK << 4, bytes([packet.session_present, packet.return_code]))
        case Publish():
            first = _PUBLISH << 4 | packet.dup << 3 | packet.qos << 1 | int(packet.retain)
            body = bytearray(_string(packet.topic))
            if packet.packet_id is not None:
                body += struct.pack("!H", packet.packet_id)
            body += packet.payload
            return _packet(first, bytes(body))
        case PubAck():
            return _packet(_PUBACK << 4, struct.pack("!H", packet.packet_id))
        case Subscribe():
            body = bytearray(struct.pack("!H", packet.packet_id))
            for topic_filter, qos in packet.topics:
                body += _string(topic_filter) + bytes([qos])
            return _packet(_SUBSCRIBE << 4 | 0b0010, bytes(body))
        case SubAck():
            codes = bytes(packet.return_codes)
            return _packet(_SUBACK << 4, struct.pack("!H", packet.packet_id) + codes)
        case Unsubscribe():
            body = bytearray(struct.pack("!H", packet.packet_id))
            for topic_filter in packet.topics:
                body += _string(topic_filter)
            return _packet(_UNSUBSCRIBE << 4 | 0b0010, bytes(body))
        case UnsubAck():
            return _packet(_UNSUBACK << 4, struct.pack("!H", packet.packet_id))
        case PingReq():
            return bytes([_PINGREQ << 4, 0])
        case PingResp():
            return bytes([_PINGRESP << 4, 0])
        case Disconnect():
            return bytes([_DISCONNECT << 4, 0])
    raise TypeError(f"not an MQTT packet event: {packet!r}")  # pragma: no cover


# --- decoding ------------------------------------------------------------------------


class _Reader:
    """Reads the fields of one packet body; running short or leftovers are malformed."""

    def __init__(self, body: bytes, what: str) -> None:
        self._body = body
        self._offset = 0
        self._what = what

    def take(self, count: int) -> bytes:
        end = self._offset + count
        if end > len(self._body):
            raise MalformedPacket(f"{self._what} is truncated")
        chunk = self._body[self._offset : end]
        self._offset = end
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack("!H", self.take(2))[0]
        return value

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self, field: str) -> str:
        raw = self.binary()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedPacket(f"{self._what} {field} is not valid UTF-8") from exc

    def rest(self) -> bytes:
        chunk = self._body[self._offset :]
        self._offset = len(self._body)
        return chunk

    @property
    def at_end(self) -> bool:
        return self._offset == len(self._body)

    def finish(self) -> None:
        if not self.at_end:
            raise MalformedPacket(f"{self._what} has {len(self._body) - self._offset} extra bytes")


def _decode_connect(body: bytes) -> Connect:
    reader = _Reader(body, "CONNECT")
    protocol_name = reader.string("protocol name")
    protocol_level = reader.byte()
    flags = reader.byte()
    keep_alive_s = reader.u16()
    if flags & 0x01:
        raise MalformedPacket("CONNECT reserved flag is set")
    clean_session = bool(flags & 0x02)
    if (protocol_name, protocol_level) != ("MQTT", 4):
        # Another protocol (version): its payload layout is not ours to parse.
        return Connect(
            client_id="",
            clean_session=clean_session,
            keep_alive_s=keep_alive_s,
            protocol_name=protocol_name,
            protocol_level=protocol_level,
        )
    client_id = reader.string("client id")
    will_topic: str | None = None
    will_payload: bytes | None = None
    if flags & 0x04:
        will_topic = reader.string("will topic")
        will_payload = reader.binary()
    username = reader.string("user name") if flags & 0x80 else None
    password = reader.binary() if flags & 0x40 else None
    reader.finish()
    return Connect(
        client_id=client_id,
        username=username,
        password=password,
        clean_session=clean_session,
        keep_alive_s=keep_alive_s,
        will_topic=will_topic,
        will_payload=will_payload,
        will_qos=(flags >> 3) & 0x03,
        will_retain=bool(flags & 0x20),
        protocol_name=protocol_name,
        protocol_level=protocol_level,
    )


def _decode_body(packet_type: int, flags: int, body: bytes) -> Packet:
    match packet_type:
        case 1:  # CONNECT
            return _decode_connect(body)
        case 2:  # CONNACK
            reader = _Reader(body, "CONNACK")
            ack_flags, return_code = reader.take(2)
            reader.finish()
            if ack_flags & 0xFE:
                raise MalformedPacket("CONNACK reserved flags are set")
            return ConnAck(session_present=bool(ack_flags & 1), return_code=return_code)
        case 3:  # PUBLISH
            reader = _Reader(body, "PUBLISH")
            qos = (flags >> 1) & 0x03
            topic = reader.string("topic name")
            packet_id = reader.u16() if qos else None
            return Publish(
                topic=topic,
                payload=reader.rest(),
                qos=qos,
                retain=bool(flags & 0x01),
                dup=bool(flags & 0x08),
                packet_id=packet_id,
            )
        case 4 | 11:  # PUBACK, UNSUBACK
            reader = _Reader(body, "PUBACK" if packet_type == _PUBACK else "UNSUBACK")
            packet_id = reader.u16()
            reader.finish()
            return PubAck(packet_id) if packet_type == _PUBACK else UnsubAck(packet_id)
        case 8:  # SUBSCRIBE
            reader = _Reader(body, "SUBSCRIBE")
            packet_id = reader.u16()
            topics: list[tuple[str, int]] = []
            while not reader.at_end:
                topic_filter = reader.string("topic filter")
                options = reader.byte()
                if options & 0xFC:
                    raise MalformedPacket("SUBSCRIBE reserved option bits are set")
                topics.append((topic_filter, options))
            return Subscribe(packet_id, tuple(topics))
        case 9:  # SUBACK
            reader = _Reader(body, "SUBACK")
            packet_id = reader.u16()
            return SubAck(packet_id, tuple(reader.rest()))
        case 10:  # UNSUBSCRIBE
            reader = _Reader(body, "UNSUBSCRIBE")
            packet_id = reader.u16()
            filters: list[str] = []
            while not reader.at_end:
                filters.append(reader.string("topic filter"))
            return Unsubscribe(packet_id, tuple(filters))
        case 12 | 13 | 14:  # PINGREQ, PINGRESP, DISCONNECT
            if body:
                raise MalformedPacket(f"packet type {packet_type} must have no body")
            return (PingReq(), PingResp(), Disconnect())[packet_type - _PINGREQ]
    raise MalformedPacket(f"packet type {packet_type} is not supported")  # pragma: no cover


def _check_first_byte(first: int) -> None:
    """Refuse a fixed header's first byte as soon as it arrives."""
    packet_type, flags = first >> 4, first & 0x0F
    if packet_type in (_PUBREC, _PUBREL, _PUBCOMP):
        raise MalformedPacket(f"packet type {packet_type} is QoS 2, which is not supported")
    if packet_type == _PUBLISH:
        if (flags >> 1) & 0x03 == 3:
            raise MalformedPacket("PUBLISH with QoS 3")
        return
    required = _REQUIRED_FLAGS.get(packet_type)
    if required is None:
        raise MalformedPacket(f"packet type {packet_type} is reserved")
    if flags != required:
        raise MalformedPacket(f"packet type {packet_type} with reserved flags {flags:#06b}")


class Decoder:
    """Turns a byte stream into packet events; buffers partial packets.

    ``max_packet_size`` bounds a whole packet (fixed header included).
    """

    def __init__(self, max_packet_size: int = MAX_REMAINING_LENGTH + 5) -> None:
        self.max_packet_size = max_packet_size
        self._buffer = bytearray()
        self._error: MQTTError | None = None
        self._needed = 1  # the buffer cannot hold a packet before it has this many bytes

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete packet."""
        return len(self._buffer)

    @property
    def failed(self) -> bool:
        """True once :meth:`feed` has raised; every later call raises again."""
        return self._error is not None

    def feed(self, data: bytes) -> list[Packet]:
        """Add ``data`` and return the packets it completes, in order.

        Raises :class:`MalformedPacket` or :class:`PacketTooLarge`; after that the
        decoder is failed and raises the same error again on every call.
        """
        if self._error is not None:
            raise self._error
        self._buffer += data
        if len(self._buffer) < self._needed:
            return []
        try:
            return self._drain()
        except MQTTError as exc:
            self._error = exc
            self._buffer.clear()
            raise

    def _drain(self) -> list[Packet]:
        packets: list[Packet] = []
        offset = 0
        buffer = self._buffer
        try:
            while offset < len(buffer):
                header = self._parse_fixed_header(buffer, offset)
                if header is None:
                    break
                header_length, remaining = header
                end = offset + header_length + remaining
                if end > len(buffer):
                    self._needed = end - offset
                    break
                first = buffer[offset]
                body = bytes(buffer[offset + header_length : end])
                packets.append(_decode_body(first >> 4, first & 0x0F, body))
                offset = end
            else:
                self._needed = 1
        finally:
            del buffer[:offset]
        return packets

    def _parse_fixed_header(self, buffer: bytearray, offset: int) -> tuple[int, int] | None:
        """Return ``(header length, remaining length)`` or None if more bytes are needed."""
        _check_first_byte(buffer[offset])
        remaining = 0
        for index in range(4):
            position = offset + 1 + index
            if position >= len(buffer):
                self._needed = position - offset + 1
                return None
            digit = buffer[position]
            remaining += (digit & 0x7F) << (7 * index)
            if not digit & 0x80:
                header_length = 2 + index
                size = header_length + remaining
                if size > self.max_packet_size:
                    raise PacketTooLarge(size, self.max_packet_size)
                return header_length, remaining
        raise MalformedPacket("remaining length is longer than four bytes")
