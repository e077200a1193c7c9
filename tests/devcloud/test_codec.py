"""The MQTT 3.1.1 codec: spec vectors, every rule it enforces, and round-trip properties."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devcloud.mqtt import codec
from devcloud.mqtt.codec import (
    ConnAck,
    Connect,
    Decoder,
    Disconnect,
    MalformedPacket,
    MQTTError,
    Packet,
    PacketTooLarge,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    encode,
)

# --- strategies ------------------------------------------------------------------------

_char = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
texts = st.text(alphabet=_char, max_size=20)
_level = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00/+#"), max_size=6
)
topic_names = st.lists(_level, min_size=1, max_size=5).map("/".join).filter(bool)


@st.composite
def topic_filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.one_of(_level, st.just("+")), max_size=5))
    if draw(st.booleans()):
        levels.append("#")
    joined = "/".join(levels)
    return joined or "#"


packet_ids = st.integers(1, 65535)
payloads = st.binary(max_size=300)


@st.composite
def connects(draw: st.DrawFn) -> Connect:
    username = draw(st.none() | texts)
    has_will = draw(st.booleans())
    return Connect(
        client_id=draw(texts),
        username=username,
        password=None if username is None else draw(st.none() | st.binary(max_size=40)),
        clean_session=draw(st.booleans()),
        keep_alive_s=draw(st.integers(0, 65535)),
        will_topic=draw(topic_names) if has_will else None,
        will_payload=draw(st.binary(max_size=40)) if has_will else None,
        will_qos=draw(st.integers(0, 1)) if has_will else 0,
        will_retain=draw(st.booleans()) if has_will else False,
    )


@st.composite
def publishes(draw: st.DrawFn) -> Publish:
    qos = draw(st.integers(0, 1))
    return Publish(
        topic=draw(topic_names),
        payload=draw(payloads),
        qos=qos,
        retain=draw(st.booleans()),
        dup=draw(st.booleans()) if qos else False,
        packet_id=draw(packet_ids) if qos else None,
    )


@st.composite
def connacks(draw: st.DrawFn) -> ConnAck:
    code = draw(st.integers(0, 5))
    return ConnAck(session_present=draw(st.booleans()) if code == 0 else False, return_code=code)


packets: st.SearchStrategy[Packet] = st.one_of(
    connects(),
    connacks(),
    publishes(),
    st.builds(PubAck, packet_ids),
    st.builds(
        Subscribe,
        packet_ids,
        st.lists(st.tuples(topic_filters(), st.integers(0, 2)), min_size=1, max_size=4).map(tuple),
    ),
    st.builds(
        SubAck,
        packet_ids,
        st.lists(st.sampled_from([0, 1, 0x80]), min_size=1, max_size=4).map(tuple),
    ),
    st.builds(
        Unsubscribe, packet_ids, st.lists(topic_filters(), min_size=1, max_size=4).map(tuple)
    ),
    st.builds(UnsubAck, packet_ids),
    st.just(PingReq()),
    st.just(PingResp()),
    st.just(Disconnect()),
)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """Split ``data`` at random points (possibly empty chunks)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --- round-trip properties -------------------------------------------------------------


@given(packets)
def test_round_trip_fed_whole(packet: Packet) -> None:
    decoder = Decoder()
    assert decoder.feed(encode(packet)) == [packet]
    assert decoder.buffered == 0


@given(packets)
def test_round_trip_one_byte_at_a_time(packet: Packet) -> None:
    wire = encode(packet)
    decoder = Decoder()
    for index in range(len(wire) - 1):
        assert decoder.feed(wire[index : index + 1]) == []
    assert decoder.buffered == len(wire) - 1
    assert decoder.feed(wire[-1:]) == [packet]


@given(st.lists(packets, min_size=1, max_size=6), st.data())
def test_round_trip_random_chunks(sequence: list[Packet], data: st.DataObject) -> None:
    wire = b"".join(encode(packet) for packet in sequence)
    decoder = Decoder()
    decoded: list[Packet] = []
    for chunk in data.draw(chunked(wire)):
        decoded += decoder.feed(chunk)
    assert decoded == sequence
    assert decoder.buffered == 0


@given(packets, packets, st.data())
def test_trailing_data_stays_buffered_then_yields_next(
    first: Packet, second: Packet, data: st.DataObject
) -> None:
    tail = encode(second)
    cut = data.draw(st.integers(0, len(tail) - 1))
    decoder = Decoder()
    assert decoder.feed(encode(first) + tail[:cut]) == [first]
    assert decoder.buffered == cut
    assert decoder.feed(tail[cut:]) == [second]


@given(st.binary(max_size=200), st.data())
@settings(max_examples=300)
def test_garbage_raises_only_mqtt_errors(garbage: bytes, data: st.DataObject) -> None:
    decoder = Decoder(max_packet_size=1024)
    try:
        for chunk in data.draw(chunked(garbage)):
            for packet in decoder.feed(chunk):
                # Whatever it accepted is a valid packet that re-encodes.
                assert Decoder().feed(encode(packet)) == [packet]
    except MQTTError:
        assert decoder.failed
        with pytest.raises(MQTTError):
            decoder.feed(encode(PingReq()))


@given(packets, st.integers(2, 400))
def test_packet_over_the_limit_is_refused_from_its_header(packet: Packet, limit: int) -> None:
    wire = encode(packet)
    decoder = Decoder(max_packet_size=limit)
    if len(wire) <= limit:
        assert decoder.feed(wire) == [packet]
        return
    header_end = next(i for i in range(1, 6) if not wire[i] & 0x80) + 1
    with pytest.raises(PacketTooLarge) as caught:
        decoder.feed(wire[:header_end])  # refused before the body arrives
    assert (caught.value.size, caught.value.limit) == (len(wire), limit)


# --- hand-written vectors from the MQTT 3.1.1 specification ------------------------------

REMAINING_LENGTHS = [
    (0, b"\x00"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (16_383, b"\xff\x7f"),
    (16_384, b"\x80\x80\x01"),
    (2_097_151, b"\xff\xff\x7f"),
    (2_097_152, b"\x80\x80\x80\x01"),
    (268_435_455, b"\xff\xff\xff\x7f"),
]


@pytest.mark.parametrize(("length", "wire"), REMAINING_LENGTHS)
def test_remaining_length_examples(length: int, wire: bytes) -> None:
    assert codec._encode_remaining_length(length) == wire
    # Decoding: a PUBLISH header announcing that length, over a limit one byte too small.
    size = 1 + len(wire) + length
    with pytest.raises(PacketTooLarge) as caught:
        Decoder(max_packet_size=size - 1).feed(b"\x30" + wire)
    assert caught.value.size == size
    if length:  # within the limit, the decoder waits for the body
        decoder = Decoder(max_packet_size=size)
        assert decoder.feed(b"\x30" + wire) == []
        assert decoder.buffered == 1 + len(wire)
    else:  # a PINGREQ is the one packet with remaining length 0
        assert Decoder().feed(b"\xc0" + wire) == [PingReq()]


def test_remaining_length_limit_on_encode() -> None:
    with pytest.raises(PacketTooLarge):
        codec._encode_remaining_length(268_435_456)


def test_large_publish_with_three_byte_length_round_trips_in_chunks() -> None:
    packet = Publish("devices/d/messages/events/", bytes(range(256)) * 1100, qos=1, packet_id=7)
    wire = encode(packet)
    assert wire[:4] == b"\x32\x9e\x98\x11"  # 2 + 26 + 2 + 281600 = 281630
    decoder = Decoder(max_packet_size=300_000)
    decoded: list[Packet] = []
    for start in range(0, len(wire), 4096):
        decoded += decoder.feed(wire[start : start + 4096])
    assert decoded == [packet]


SPEC_VECTORS: list[tuple[Packet, bytes]] = [
    # [3.1.2.10] the variable header example: flags 0xCE, keep alive 10.
    (
        Connect(
            client_id="c",
            username="u",
            password=b"p",
            clean_session=True,
            keep_alive_s=10,
            will_topic="w",
            will_payload=b"x",
            will_qos=1,
        ),
        b"\x10\x19\x00\x04MQTT\x04\xce\x00\x0a\x00\x01c\x00\x01w\x00\x01x\x00\x01u\x00\x01p",
    ),
    (ConnAck(session_present=True, return_code=0), b"\x20\x02\x01\x00"),
    (ConnAck(session_present=False, return_code=5), b"\x20\x02\x00\x05"),
    # [3.3.2.3] topic "a/b", packet id 10.
    (Publish("a/b", b"", qos=1, packet_id=10), b"\x32\x07\x00\x03a/b\x00\x0a"),
    (Publish("a/b", b"hi", qos=0, retain=True), b"\x31\x07\x00\x03a/bhi"),
    (Publish("a/b", b"", qos=1, dup=True, packet_id=1), b"\x3a\x07\x00\x03a/b\x00\x01"),
    (PubAck(10), b"\x40\x02\x00\x0a"),
    # [3.8.3.1] "a/b" QoS 1 and "c/d" QoS 2 (a request; the server grants at most 1).
    (
        Subscribe(10, (("a/b", 1), ("c/d", 2))),
        b"\x82\x0e\x00\x0a\x00\x03a/b\x01\x00\x03c/d\x02",
    ),
    (SubAck(10, (0, 1, 0x80)), b"\x90\x05\x00\x0a\x00\x01\x80"),
    (Unsubscribe(10, ("a/b", "c/d")), b"\xa2\x0c\x00\x0a\x00\x03a/b\x00\x03c/d"),
    (UnsubAck(10), b"\xb0\x02\x00\x0a"),
    (PingReq(), b"\xc0\x00"),
    (PingResp(), b"\xd0\x00"),
    (Disconnect(), b"\xe0\x00"),
]


@pytest.mark.parametrize(("packet", "wire"), SPEC_VECTORS)
def test_spec_vectors(packet: Packet, wire: bytes) -> None:
    assert encode(packet) == wire
    assert Decoder().feed(wire) == [packet]


def test_connect_of_another_protocol_decodes_its_header_only() -> None:
    # MQTT 5 CONNECT: properties follow keep alive; we stop before them.
    wire = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03abc"
    (packet,) = Decoder().feed(wire)
    assert isinstance(packet, Connect)
    assert (packet.protocol_name, packet.protocol_level) == ("MQTT", 5)
    assert (packet.clean_session, packet.keep_alive_s) == (True, 60)
    assert packet.client_id == ""


# --- malformed input -------------------------------------------------------------------

MALFORMED: list[tuple[str, bytes]] = [
    ("reserved type 0", b"\x00\x00"),
    ("reserved type 15", b"\xf0\x00"),
    ("PUBREC (QoS 2)", b"\x50\x02\x00\x01"),
    ("PUBREL (QoS 2)", b"\x62\x02\x00\x01"),
    ("PUBCOMP (QoS 2)", b"\x70\x02\x00\x01"),
    ("PUBLISH QoS 2", b"\x34\x07\x00\x03a/b\x00\x01"),
    ("PUBLISH QoS 3", b"\x36\x07\x00\x03a/b\x00\x01"),
    ("QoS 0 PUBLISH with DUP", b"\x38\x05\x00\x03a/b"),
    ("SUBSCRIBE without its required flags", b"\x80\x08\x00\x01\x00\x03a/b\x01"),
    ("UNSUBSCRIBE without its required flags", b"\xa0\x07\x00\x01\x00\x03a/b"),
    ("PINGREQ with a flag", b"\xc1\x00"),
    ("CONNACK with a flag", b"\x28\x02\x00\x00"),
    ("remaining length of five bytes", b"\x30\xff\xff\xff\xff\x7f"),
    ("invalid UTF-8 topic", b"\x30\x04\x00\x02\xff\xfe"),
    ("overlong UTF-8 encoding", b"\x30\x04\x00\x02\xc0\xaf"),
    ("UTF-16 surrogate in UTF-8", b"\x30\x05\x00\x03\xed\xa0\x80"),
    ("U+0000 in topic", b"\x30\x05\x00\x03a\x00b"),
    ("empty topic", b"\x30\x02\x00\x00"),
    ("wildcard in topic name", b"\x30\x05\x00\x03a/+"),
    ("hash in topic name", b"\x30\x05\x00\x03a/#"),
    ("packet id 0 in PUBLISH", b"\x32\x07\x00\x03a/b\x00\x00"),
    ("packet id 0 in PUBACK", b"\x40\x02\x00\x00"),
    ("packet id 0 in SUBSCRIBE", b"\x82\x08\x00\x00\x00\x03a/b\x01"),
    ("PUBACK too long", b"\x40\x03\x00\x01\x00"),
    ("PUBACK too short", b"\x40\x01\x00"),
    ("PINGREQ with a body", b"\xc0\x01\x00"),
    ("DISCONNECT with a body", b"\xe0\x01\x00"),
    ("SUBSCRIBE without filters", b"\x82\x02\x00\x01"),
    ("SUBSCRIBE requests QoS 3", b"\x82\x08\x00\x01\x00\x03a/b\x03"),
    ("SUBSCRIBE reserved option bits", b"\x82\x08\x00\x01\x00\x03a/b\x41"),
    ("SUBSCRIBE filter '#' not last", b"\x82\x0a\x00\x01\x00\x05a/#/b\x01"),
    ("SUBSCRIBE filter 'a+'", b"\x82\x07\x00\x01\x00\x02a+\x01"),
    ("SUBSCRIBE filter 'a#'", b"\x82\x07\x00\x01\x00\x02a#\x01"),
    ("SUBSCRIBE empty filter", b"\x82\x05\x00\x01\x00\x00\x01"),
    ("SUBSCRIBE truncated filter", b"\x82\x07\x00\x01\x00\x09a/b\x01"),
    ("SUBSCRIBE filter without QoS byte", b"\x82\x07\x00\x01\x00\x03a/b"),
    ("UNSUBSCRIBE without filters", b"\xa2\x02\x00\x01"),
    ("UNSUBSCRIBE bad filter", b"\xa2\x06\x00\x01\x00\x02#a"),
    ("SUBACK with QoS 2 granted", b"\x90\x03\x00\x01\x02"),
    ("SUBACK without codes", b"\x90\x02\x00\x01"),
    ("CONNACK reserved flags", b"\x20\x02\x02\x00"),
    ("CONNACK reserved return code", b"\x20\x02\x00\x06"),
    ("CONNACK refused with session present", b"\x20\x02\x01\x05"),
    ("CONNECT reserved flag", b"\x10\x0d\x00\x04MQTT\x04\x03\x00\x0a\x00\x01c"),
    ("CONNECT will QoS without will", b"\x10\x0d\x00\x04MQTT\x04\x0a\x00\x0a\x00\x01c"),
    ("CONNECT will retain without will", b"\x10\x0d\x00\x04MQTT\x04\x22\x00\x0a\x00\x01c"),
    (
        "CONNECT will QoS 2",
        b"\x10\x13\x00\x04MQTT\x04\x16\x00\x0a\x00\x01c\x00\x01w\x00\x01x",
    ),
    (
        "CONNECT password without user name",
        b"\x10\x10\x00\x04MQTT\x04\x42\x00\x0a\x00\x01c\x00\x01p",
    ),
    ("CONNECT with bytes left over", b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x0a\x00\x01cX"),
    ("CONNECT cut inside its payload", b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x0a\x00\x01"),
    ("CONNECT with invalid UTF-8 client id", b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x0a\x00\x01\xff"),
    ("CONNECT with invalid UTF-8 protocol name", b"\x10\x0a\x00\x04MQ\xffT\x04\x02\x00\x0a"),
]


@pytest.mark.parametrize(("why", "wire"), MALFORMED, ids=[why for why, _ in MALFORMED])
def test_malformed_packets_are_refused(why: str, wire: bytes) -> None:
    decoder = Decoder()
    with pytest.raises(MalformedPacket) as caught:
        decoder.feed(wire)
    assert caught.value.problem
    assert isinstance(caught.value, ValueError)
    # The decoder stays failed, even for valid input.
    with pytest.raises(MalformedPacket):
        decoder.feed(encode(PingReq()))
    assert decoder.failed


@pytest.mark.parametrize(("why", "wire"), MALFORMED, ids=[why for why, _ in MALFORMED])
def test_malformed_packets_are_refused_one_byte_at_a_time(why: str, wire: bytes) -> None:
    decoder = Decoder()
    with pytest.raises(MalformedPacket):
        for index in range(len(wire)):
            decoder.feed(wire[index : index + 1])


def test_bad_first_byte_is_refused_before_the_rest_arrives() -> None:
    with pytest.raises(MalformedPacket):
        Decoder().feed(b"\x50")


def test_packet_too_large_is_a_value_error_with_data() -> None:
    decoder = Decoder(max_packet_size=100)
    with pytest.raises(PacketTooLarge) as caught:
        decoder.feed(b"\x30\x63")  # 2 + 99
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, MQTTError)
    assert (caught.value.size, caught.value.limit) == (101, 100)
    with pytest.raises(PacketTooLarge):
        decoder.feed(b"")


def test_exactly_at_the_limit_is_accepted() -> None:
    packet = Publish("t", b"x" * 95, qos=0)
    assert len(encode(packet)) == 100
    assert Decoder(max_packet_size=100).feed(encode(packet)) == [packet]


def test_valid_packets_before_garbage_in_separate_feeds_are_delivered() -> None:
    decoder = Decoder()
    assert decoder.feed(encode(PingReq())) == [PingReq()]
    with pytest.raises(MalformedPacket):
        decoder.feed(b"\x00\x00")


# --- events validate themselves ---------------------------------------------------------

INVALID_EVENTS = [
    lambda: Publish("a/+", b"", qos=0),
    lambda: Publish("", b"", qos=0),
    lambda: Publish("a", b"", qos=2, packet_id=1),
    lambda: Publish("a", b"", qos=1),
    lambda: Publish("a", b"", qos=0, packet_id=3),
    lambda: Publish("a", b"", qos=0, dup=True),
    lambda: Publish("a\x00", b"", qos=0),
    lambda: Publish("\ud800", b"", qos=0),
    lambda: Publish("a" * 65536, b"", qos=0),
    lambda: PubAck(0),
    lambda: PubAck(65536),
    lambda: Subscribe(1, ()),
    lambda: Subscribe(1, (("a/#/b", 0),)),
    lambda: Subscribe(1, (("a", 3),)),
    lambda: SubAck(1, (2,)),
    lambda: Unsubscribe(1, ("",)),
    lambda: ConnAck(False, 6),
    lambda: ConnAck(True, 1),
    lambda: Connect("c", password=b"p"),
    lambda: Connect("c", will_qos=1),
    lambda: Connect("c", will_topic="w"),
    lambda: Connect("c", will_topic="w/#", will_payload=b""),
    lambda: Connect("c", will_topic="w", will_payload=b"", will_qos=2),
    lambda: Connect("c", keep_alive_s=65536),
    lambda: Connect("c", protocol_level=256),
]


@pytest.mark.parametrize("make", INVALID_EVENTS)
def test_invalid_events_cannot_be_built(make: object) -> None:
    assert callable(make)
    with pytest.raises(MalformedPacket):
        make()


@pytest.mark.parametrize(
    ("topic_filter", "valid"),
    [
        ("#", True),
        ("+", True),
        ("/", True),
        ("a//b", True),
        ("+/+/#", True),
        ("$iothub/methods/POST/#", True),
        ("sport/tennis#", False),
        ("sport/tennis/#/ranking", False),
        ("sport+", False),
        ("", False),
    ],
)
def test_topic_filter_rules(topic_filter: str, valid: bool) -> None:
    if valid:
        codec.validate_topic_filter(topic_filter)
    else:
        with pytest.raises(MalformedPacket):
            codec.validate_topic_filter(topic_filter)
