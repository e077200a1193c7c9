"""The sans-I/O RFC 6455 server side: handshake, framing, and every refusal."""

from __future__ import annotations

import itertools
import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devcloud.mqtt.websocket import Received, ServerWebSocket, WebSocketError, accept_key

PATH = "/$iothub/websocket"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3


def request(**overrides: str | None) -> bytes:
    """An upgrade request as paho sends it; ``None`` drops a header."""
    line = overrides.pop("request_line", None) or f"GET {PATH} HTTP/1.1"
    headers: dict[str, str | None] = {
        "Host": "127.0.0.1:8443",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Origin": "https://127.0.0.1:8443",
        "Sec-WebSocket-Key": KEY,
        "Sec-Websocket-Version": "13",
        "Sec-Websocket-Protocol": "mqtt",
    }
    headers.update({name.replace("_", "-"): value for name, value in overrides.items()})
    lines = [line] + [f"{name}: {value}" for name, value in headers.items() if value is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def client_frame(
    payload: bytes, opcode: int = 0x2, *, fin: bool = True, mask: bytes = b"\x37\xfa\x21\x3d"
) -> bytes:
    """A masked client frame."""
    length = len(payload)
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def opened() -> ServerWebSocket:
    ws = ServerWebSocket(PATH)
    assert ws.feed(request()).reply.startswith(b"HTTP/1.1 101 ")
    assert ws.open
    return ws


def test_accept_key_example_from_rfc() -> None:
    assert accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_handshake_response() -> None:
    ws = ServerWebSocket(PATH)
    result = ws.feed(request())
    head, _, rest = result.reply.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 101 Switching Protocols"
    assert sorted(lines[1:]) == sorted(
        [
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            "Sec-WebSocket-Protocol: mqtt",
        ]
    )
    assert rest == b""
    assert (result.data, result.closed) == (b"", False)
    assert ws.request_headers["origin"] == "https://127.0.0.1:8443"


def test_handshake_fed_one_byte_at_a_time_then_frame_in_same_chunk() -> None:
    ws = ServerWebSocket(PATH)
    wire = request() + client_frame(b"\x10\x00")
    replies = b""
    data = b""
    for index in range(len(wire)):
        result = ws.feed(wire[index : index + 1])
        replies += result.reply
        data += result.data
    assert replies.startswith(b"HTTP/1.1 101 ")
    assert data == b"\x10\x00"


def test_query_string_and_several_offered_subprotocols_are_accepted() -> None:
    ws = ServerWebSocket(PATH)
    result = ws.feed(
        request(
            request_line=f"GET {PATH}?iothub-no-client-cert=true HTTP/1.1",
            Sec_Websocket_Protocol="mqttv3.1, MQTT",
            Connection="keep-alive, Upgrade",
        )
    )
    assert b"Sec-WebSocket-Protocol: mqtt\r\n" in result.reply


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"request_line": f"POST {PATH} HTTP/1.1"}, 405),
        ({"request_line": f"GET {PATH} HTTP/1.0"}, 400),
        ({"request_line": "GET /mqtt HTTP/1.1"}, 404),
        ({"request_line": "GET"}, 400),
        ({"Host": None}, 400),
        ({"Upgrade": None}, 400),
        ({"Upgrade": "h2c"}, 400),
        ({"Connection": "keep-alive"}, 400),
        ({"Sec_Websocket_Version": "8"}, 426),
        ({"Sec_WebSocket_Key": None}, 400),
        ({"Sec_WebSocket_Key": "c2hvcnQ="}, 400),
        ({"Sec_WebSocket_Key": "not base64!"}, 400),
        ({"Sec_Websocket_Protocol": None}, 400),
        ({"Sec_Websocket_Protocol": "amqp"}, 400),
    ],
)
def test_bad_handshakes_get_an_http_error(overrides: dict[str, str | None], status: int) -> None:
    ws = ServerWebSocket(PATH)
    with pytest.raises(WebSocketError) as caught:
        ws.feed(request(**overrides))
    assert caught.value.http_status == status
    assert caught.value.reply.startswith(f"HTTP/1.1 {status} ".encode())
    if status == 426:
        assert b"Sec-WebSocket-Version: 13\r\n" in caught.value.reply
    with pytest.raises(WebSocketError):  # it stays failed
        ws.feed(request())
    assert not ws.open


def test_non_http_bytes_are_refused_at_once() -> None:
    with pytest.raises(WebSocketError) as caught:
        ServerWebSocket(PATH).feed(b"\x10\x0c")  # an MQTT CONNECT on the WebSocket port
    assert caught.value.http_status == 400


def test_oversized_handshake_is_refused() -> None:
    ws = ServerWebSocket(PATH, max_handshake_size=1024)
    with pytest.raises(WebSocketError) as caught:
        ws.feed(b"GET " + b"x" * 2000)
    assert caught.value.http_status == 400


def test_masked_frame_example_from_rfc_as_binary() -> None:
    # RFC 6455 section 5.7: "Hello" masked with 37 fa 21 3d (binary opcode here).
    ws = opened()
    frame = bytes.fromhex("8285 37fa213d 7f9f4d5158")
    assert ws.feed(frame) == Received(data=b"Hello")


def test_fragmented_message_and_interleaved_ping() -> None:
    ws = opened()
    result = ws.feed(
        client_frame(b"Hel", fin=False)
        + client_frame(b"ping!", 0x9)
        + client_frame(b"lo", 0x0, fin=True)
    )
    assert result.data == b"Hello"
    assert result.reply == b"\x8a\x05ping!"  # unmasked pong with the same payload


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536, 70_000])
def test_length_encodings(length: int) -> None:
    ws = opened()
    payload = os.urandom(length)
    assert ws.feed(client_frame(payload)).data == payload
    framed = ws.send(payload)
    if length < 126:
        assert framed[:2] == bytes([0x82, length])
    elif length < 65536:
        assert framed[:4] == b"\x82\x7e" + struct.pack("!H", length)
    else:
        assert framed[:10] == b"\x82\x7f" + struct.pack("!Q", length)
    assert framed.endswith(payload)


def test_client_close_is_echoed_and_closes() -> None:
    ws = opened()
    result = ws.feed(client_frame(struct.pack("!H", 1000) + b"bye", 0x8))
    assert result == Received(reply=b"\x88\x02\x03\xe8", closed=True)
    assert not ws.open
    assert ws.feed(client_frame(b"late")) == Received(closed=True)


def test_empty_close_is_echoed_empty() -> None:
    ws = opened()
    assert ws.feed(client_frame(b"", 0x8)) == Received(reply=b"\x88\x00", closed=True)


def test_server_close_then_client_echo() -> None:
    ws = opened()
    assert ws.close(1001) == b"\x88\x02\x03\xe9"
    assert ws.close() == b""  # only once
    assert ws.feed(client_frame(b"ignored after our close")) == Received()
    assert ws.feed(client_frame(struct.pack("!H", 1001), 0x8)) == Received(closed=True)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(b"text", 0x1), 1003),
        (client_frame(b"x", 0x3), 1002),
        (client_frame(b"x", 0x2)[:1] + b"\x01x", 1002),  # unmasked
        (bytes([0x82 | 0x40]) + client_frame(b"x")[1:], 1002),  # RSV1
        (client_frame(b"x", 0x0), 1002),  # continuation without a message
        (client_frame(b"x" * 126, 0x9), 1002),  # control frame too long
        (client_frame(b"x", 0x9, fin=False), 1002),  # fragmented control frame
        (client_frame(b"\x03", 0x8), 1002),  # 1-byte close payload
        (client_frame(struct.pack("!H", 1005), 0x8), 1002),  # reserved close code
        (client_frame(struct.pack("!H", 1000) + b"\xff", 0x8), 1007),
        (b"\x82\xff" + b"\x80" + b"\x00" * 7 + b"mask", 1002),  # 64-bit length top bit
        (client_frame(b"x" * 2000), 1009),
    ],
)
def test_protocol_errors_answer_with_a_close_code(frame: bytes, code: int) -> None:
    ws = ServerWebSocket(PATH, max_frame_size=1024)
    ws.feed(request())
    with pytest.raises(WebSocketError) as caught:
        ws.feed(frame)
    assert caught.value.reply == b"\x88\x02" + struct.pack("!H", code)
    with pytest.raises(WebSocketError):
        ws.feed(client_frame(b"valid"))


def test_new_message_inside_a_fragmented_one_is_refused() -> None:
    ws = opened()
    ws.feed(client_frame(b"a", fin=False))
    with pytest.raises(WebSocketError):
        ws.feed(client_frame(b"b"))


@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=5),
    st.data(),
)
def test_any_framing_and_chunking_yields_the_same_bytes(
    messages: list[bytes], data: st.DataObject
) -> None:
    wire = bytearray()
    for message in messages:
        cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=3)))
        pieces = [message[a:b] for a, b in itertools.pairwise([0, *cuts, len(message)])]
        for index, piece in enumerate(pieces):
            mask = data.draw(st.binary(min_size=4, max_size=4))
            opcode = 0x2 if index == 0 else 0x0
            wire += client_frame(piece, opcode, fin=index == len(pieces) - 1, mask=mask)
            if data.draw(st.booleans()):
                wire += client_frame(b"", 0xA, mask=mask)  # unsolicited pong: ignored
    ws = opened()
    received = b""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    for a, b in itertools.pairwise([0, *cuts, len(wire)]):
        result = ws.feed(bytes(wire[a:b]))
        assert result.reply == b"" and not result.closed
        received += result.data
    assert received == b"".join(messages)


@given(st.binary(max_size=200))
def test_garbage_after_the_handshake_raises_only_websocket_errors(garbage: bytes) -> None:
    ws = opened()
    try:
        ws.feed(garbage)
    except WebSocketError as exc:
        assert exc.reply.startswith(b"\x88\x02")
