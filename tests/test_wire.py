"""The wire layer: ``scan`` (message boundaries and limits) and ``framing`` (transports).

Byte vectors are the worked vectors of kitex-wire.md A3.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thriftpy2.thrift import TApplicationException

from chatsvc.settings import WireLimits
from chatsvc.wire import codec, idl
from chatsvc.wire.framing import (
    Frame,
    FrameReader,
    Header,
    Refused,
    Transport,
    detect,
    encode_info,
    parse_info,
    wrap,
)
from chatsvc.wire.scan import Incomplete, MessageHead, ProtocolError, message_end, read_head, scan_message
from chatsvc.wire.writer import CoalescingWriter

LIMITS = WireLimits()

A = bytes.fromhex(
    "800100010000000453656e64000000010c00010c00010a000400000000000000000b000100000003613a62"
    "0b00020000000268690b00030000000161000000"
)
B = bytes.fromhex("0000003f") + A
C = bytes.fromhex("0000004d1000000000000001000100000000") + A
D = bytes.fromhex(
    "00000069100000000000000100080000010001000369736e0009494d536572766963651000010009000453656e64"
) + A
E = bytes.fromhex("000000511000000000000001000100000000") + bytes.fromhex("0000003f") + A

RA = bytes.fromhex(
    "800100020000000453656e64000000010c0000080001000000000b000200000007737563636573730000"
)
RC = bytes.fromhex("00000038" "1000" "0000" "00000001" "0001" "00000000") + RA
RD = bytes.fromhex("00000040" "1000" "0000" "00000001" "0003" "000010000100160001320000") + RA
PULL_CALL = bytes.fromhex(
    "800100010000000450756c6c000000020c00020a000200000000000000000800030000000a020004000b0001"
    "00000003613a620000"
)
PULL_REPLY = bytes.fromhex(
    "800100020000000450756c6c000000020c000008000100000000020004000a000500000000000000000b0002"
    "00000007737563636573730f00030c000000010a000400060a24181e40000b000100000003613a620b000200"
    "00000268690b00030000000161000000"
)
FOO_EXCEPTION = (bytes.fromhex("8001000300000003466f6f000000010b000100000012") + b"unknown method Foo"
                 + bytes.fromhex("08000200000001") + b"\x00")

VECTORS = {"A": (A, Transport.BUFFERED), "B": (B, Transport.FRAMED), "C": (C, Transport.TTHEADER),
           "D": (D, Transport.TTHEADER), "E": (E, Transport.TTHEADER_FRAMED)}


def test_vector_lengths_match_the_spec():
    assert (len(A), len(B), len(C), len(D), len(E)) == (63, 67, 81, 109, 85)
    assert (len(RA), len(RC), len(RD), len(PULL_CALL), len(PULL_REPLY), len(FOO_EXCEPTION)) == (
        42, 60, 68, 53, 104, 48)


def one_frame(data: bytes, limits: WireLimits = LIMITS) -> Frame:
    reader = FrameReader(limits)
    frames = reader.feed(data)
    assert len(frames) == 1
    assert reader.buffered == 0
    assert reader.error is None
    return frames[0]


def decode_send(payload: bytes):
    args = idl.IMService.Send_args()
    name, mtype, seqid = codec.decode_body(payload, args)
    return (name, mtype, seqid), args


# --- the five request vectors ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VECTORS))
def test_vector_decodes(name):
    data, transport = VECTORS[name]
    assert detect(data[:8]) is (Transport.TTHEADER if transport.has_header else transport)
    frame = one_frame(data)
    assert frame.transport is transport
    assert frame.payload == A
    (mname, mtype, seqid), args = decode_send(frame.payload)
    assert (mname, mtype, seqid) == ("Send", codec.CALL, 1)
    assert args.req == idl.SendRequest(message=idl.Message(Chat="a:b", Text="hi", Sender="a", SendTime=0))
    if transport.has_header:
        assert frame.header is not None
        assert frame.header.seqid == 1 and frame.header.flags == 0 and frame.header.protocol_id == 0
    else:
        assert frame.header is None


def test_vector_c_header_is_empty():
    header = one_frame(C).header
    assert header == Header(seqid=1, flags=0, protocol_id=0, strings={}, ints={}, acl_token=None)


def test_vector_d_header_info():
    header = one_frame(D).header
    assert header.strings == {"isn": "IMService"}
    assert header.ints == {9: "Send"}
    assert header.acl_token is None


def test_read_head_and_message_end_on_a():
    head, body = read_head(A, 0, len(A))
    assert head == MessageHead("Send", 1, 1)
    assert body == 16
    assert message_end(A, 0, len(A), LIMITS) == len(A)
    # At an offset inside a larger buffer, and ignoring what follows.
    buf = b"xyz" + A + b"trailing"
    assert message_end(buf, 3, len(buf), LIMITS) == 3 + len(A)


def test_kitex_field_order_decodes_to_the_same_struct():
    ours = codec.encode("Send", codec.CALL, 1, idl.IMService.Send_args(
        req=idl.SendRequest(message=idl.Message(Chat="a:b", Text="hi", Sender="a", SendTime=0))))
    assert ours != A and len(ours) == len(A)  # thriftpy2 writes field 4 last
    assert decode_send(ours) == decode_send(A)
    assert message_end(ours, 0, len(ours), LIMITS) == len(ours)

    kitex = idl.IMService.Pull_args()
    assert codec.decode_body(PULL_CALL, kitex) == ("Pull", codec.CALL, 2)
    assert kitex.req == idl.PullRequest(Chat="a:b", Cursor=0, Limit=10, Reverse=False)
    ours = codec.encode("Pull", codec.CALL, 2, idl.IMService.Pull_args(req=kitex.req))
    assert ours != PULL_CALL
    again = idl.IMService.Pull_args()
    codec.decode_body(ours, again)
    assert again == kitex
    assert one_frame(wrap(Transport.FRAMED, PULL_CALL)).payload == PULL_CALL


def test_kitex_order_pull_reply_decodes():
    result = idl.IMService.Pull_result()
    assert codec.decode_body(PULL_REPLY, result) == ("Pull", codec.REPLY, 2)
    assert result.success == idl.PullResponse(
        Code=0, Msg="success", HasMore=False, NextCursor=0,
        Messages=[idl.Message(Chat="a:b", Text="hi", Sender="a", SendTime=1700000000000000)])
    assert message_end(PULL_REPLY, 0, len(PULL_REPLY), LIMITS) == len(PULL_REPLY)


# --- truncation and byte-by-byte ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VECTORS))
def test_truncation_at_every_offset(name):
    data, transport = VECTORS[name]
    for cut in range(len(data)):
        reader = FrameReader(LIMITS)
        assert reader.feed(data[:cut]) == [], cut
        assert reader.buffered == cut
        frames = reader.feed(data[cut:])
        assert len(frames) == 1, cut
        assert frames[0].payload == A and frames[0].transport is transport
        assert reader.buffered == 0


@pytest.mark.parametrize("msg", [A, PULL_CALL, RA, PULL_REPLY, FOO_EXCEPTION])
def test_scan_truncation_is_incomplete(msg):
    for cut in range(len(msg)):
        with pytest.raises(Incomplete) as info:
            message_end(msg, 0, cut, LIMITS)
        assert info.value.need > cut
        assert info.value.need <= len(msg)
    assert message_end(msg, 0, len(msg), LIMITS) == len(msg)


@pytest.mark.parametrize("name", list(VECTORS))
def test_byte_by_byte_yields_exactly_one_frame(name):
    data, transport = VECTORS[name]
    reader = FrameReader(LIMITS)
    got = []
    for i in range(len(data)):
        frames = reader.feed(data[i : i + 1])
        if i < len(data) - 1:
            assert frames == [], i
        got += frames
    assert [(f.transport, f.payload) for f in got] == [(transport, A)]
    assert reader.buffered == 0


def test_many_frames_in_one_feed_and_split_across_feeds():
    stream = A + B + C + D + E + A
    reader = FrameReader(LIMITS)
    frames = reader.feed(stream)
    assert [f.transport for f in frames] == [Transport.BUFFERED, Transport.FRAMED, Transport.TTHEADER,
                                             Transport.TTHEADER, Transport.TTHEADER_FRAMED, Transport.BUFFERED]
    assert all(f.payload == A for f in frames)
    # The same stream cut in odd-sized pieces.
    reader = FrameReader(LIMITS)
    got = []
    for i in range(0, len(stream), 7):
        got += reader.feed(stream[i : i + 7])
    assert [f.transport for f in got] == [f.transport for f in frames]


# --- malformed frames -----------------------------------------------------------------------------


def test_frame_shorter_than_its_message_is_a_protocol_error():
    # Frame length 62: the frame ends one byte before the message does.
    with pytest.raises(ProtocolError, match="truncated"):
        FrameReader(LIMITS).feed(struct.pack(">I", 62) + A[:62])
    # Even with more bytes after the frame (they must not be read as the rest of the message).
    with pytest.raises(ProtocolError):
        FrameReader(LIMITS).feed(struct.pack(">I", 40) + A)
    # Same inside TTHeader-framed.
    inner = struct.pack(">I", 62) + A[:62]
    bad = struct.pack(">IHHiH", 10 + 4 + len(inner), 0x1000, 0, 1, 1) + b"\x00" * 4 + inner
    with pytest.raises(ProtocolError):
        FrameReader(LIMITS).feed(bad)
    # TTHeader (unframed payload) whose LENGTH cuts the message short.
    bad = struct.pack(">IHHiH", 10 + 4 + 62, 0x1000, 0, 1, 1) + b"\x00" * 4 + A[:62]
    with pytest.raises(ProtocolError):
        FrameReader(LIMITS).feed(bad)


def test_trailing_bytes_in_a_frame_are_a_protocol_error():
    with pytest.raises(ProtocolError, match="trailing"):
        FrameReader(LIMITS).feed(struct.pack(">I", 64) + A + b"\x00")
    ttheader = struct.pack(">IHHiH", 10 + 4 + 64, 0x1000, 0, 1, 1) + b"\x00" * 4 + A + b"\x00"
    with pytest.raises(ProtocolError, match="trailing"):
        FrameReader(LIMITS).feed(ttheader)
    # TTHeader-framed whose inner frame is shorter than the TTHeader's length.
    inner = struct.pack(">I", 63) + A + b"\x00"
    bad = struct.pack(">IHHiH", 10 + 4 + len(inner), 0x1000, 0, 1, 1) + b"\x00" * 4 + inner
    with pytest.raises(ProtocolError):
        FrameReader(LIMITS).feed(bad)


def test_error_after_good_frames_returns_the_good_frames_first():
    reader = FrameReader(LIMITS)
    frames = reader.feed(A + B + b"GET / HTTP/1.1\r\n\r\n")
    assert [f.transport for f in frames] == [Transport.BUFFERED, Transport.FRAMED]
    assert isinstance(reader.error, Refused)
    with pytest.raises(Refused):
        reader.feed(A)


NON_THRIFT = [
    # Non-strict (old) binary: name length first, no version word.
    bytes.fromhex("0000000453656e6401000000010c0001") + A[19:],
    b"\x00" * 16,
    b"\xff" * 16,
    b"hello world, this is telnet\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /api/send HTTP/1.1\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    bytes.fromhex("80020001") + A[4:],  # version 2
]


@pytest.mark.parametrize("data", NON_THRIFT)
def test_non_thrift_is_refused(data):
    with pytest.raises(Refused):
        FrameReader(LIMITS).feed(data)
    # Refused as soon as 8 bytes are there.
    reader = FrameReader(LIMITS)
    assert reader.feed(data[:7]) == []
    with pytest.raises(Refused):
        reader.feed(data[7:8])


def test_http2_preface_is_refused_by_detect():
    with pytest.raises(Refused, match="HTTP/2"):
        detect(b"PRI * HT")


def test_refused_is_a_protocol_error():
    assert issubclass(Refused, ProtocolError)


# --- limits enforced before the bytes arrive ------------------------------------------------------

# A strict-binary CALL header with an empty method name: 12 bytes.
HEAD = bytes.fromhex("80010001" "00000000" "00000001")


def first20(msg: bytes) -> bytes:
    return (msg + b"\x00" * 20)[:20]


def string_field(n: int) -> bytes:
    return HEAD + bytes.fromhex("0b0001") + struct.pack(">i", n)


def test_string_length_over_the_limit_before_the_bytes_arrive():
    lim = WireLimits(max_string_bytes=100)
    with pytest.raises(ProtocolError, match="string length"):
        FrameReader(lim).feed(first20(string_field(101)))
    assert FrameReader(lim).feed(first20(string_field(100))) == []  # at the limit: waits for bytes
    with pytest.raises(ProtocolError):
        FrameReader(LIMITS).feed(first20(string_field(LIMITS.max_string_bytes + 1)))
    with pytest.raises(ProtocolError):
        FrameReader(LIMITS).feed(first20(string_field(2**31 - 1)))


@pytest.mark.parametrize("n", [-1, -(2**31)])
def test_negative_string_length(n):
    with pytest.raises(ProtocolError, match="string length"):
        FrameReader(LIMITS).feed(first20(string_field(n)))


def test_method_name_length_checked():
    with pytest.raises(ProtocolError, match="name length"):
        FrameReader(LIMITS).feed(bytes.fromhex("80010001") + struct.pack(">i", 2**20) + b"x" * 12)
    with pytest.raises(ProtocolError, match="name length"):
        FrameReader(LIMITS).feed(bytes.fromhex("80010001") + struct.pack(">i", -1) + b"x" * 12)


@pytest.mark.parametrize("ctype", [0x0F, 0x0E])
def test_list_and_set_size_over_the_limit(ctype):
    lim = WireLimits(max_container_items=10)
    msg = HEAD + bytes([ctype]) + b"\x00\x01" + b"\x08" + struct.pack(">i", 11)
    assert len(msg) == 20
    with pytest.raises(ProtocolError, match="container size"):
        FrameReader(lim).feed(msg)
    ok = HEAD + bytes([ctype]) + b"\x00\x01" + b"\x08" + struct.pack(">i", 10)
    assert FrameReader(lim).feed(ok) == []
    with pytest.raises(ProtocolError, match="container size"):
        FrameReader(LIMITS).feed(HEAD + bytes([ctype]) + b"\x00\x01\x0b" + struct.pack(">i", -1))
    with pytest.raises(ProtocolError):
        FrameReader(LIMITS).feed(HEAD + bytes([ctype]) + b"\x00\x01\x0c" + struct.pack(">i", 2**31 - 1))


def test_map_size_over_the_limit():
    lim = WireLimits(max_container_items=10)
    msg = HEAD + b"\x0d\x00\x01" + b"\x0b\x0b" + struct.pack(">i", 11)  # 21 bytes: the size ends at 21
    with pytest.raises(ProtocolError, match="container size"):
        FrameReader(lim).feed(msg)
    assert FrameReader(lim).feed(HEAD + b"\x0d\x00\x01" + b"\x0b\x0b" + struct.pack(">i", 10)) == []


def nested(levels: int) -> bytes:
    """A CALL whose args struct holds ``levels`` nested structs, fully closed."""
    return HEAD + b"\x0c\x00\x01" * levels + b"\x00" * (levels + 1)


def test_nesting_deeper_than_max_depth_before_the_bytes_arrive():
    lim = WireLimits(max_depth=2)
    with pytest.raises(ProtocolError, match="nesting"):
        FrameReader(lim).feed(first20(HEAD + b"\x0c\x00\x01" * 2))
    assert FrameReader(WireLimits(max_depth=3)).feed(HEAD + b"\x0c\x00\x01" * 2) == []
    # Default limit 64: 63 nested structs are fine, 64 are too deep.
    assert message_end(nested(63), 0, len(nested(63)), LIMITS) == len(nested(63))
    with pytest.raises(ProtocolError, match="nesting"):
        message_end(nested(64), 0, len(nested(64)), LIMITS)
    # Nesting through lists counts too, and is caught before the bytes arrive.
    deep_lists = HEAD + b"\x0f\x00\x01" + (b"\x0f" + struct.pack(">i", 1)) * 100
    with pytest.raises(ProtocolError, match="nesting"):
        FrameReader(LIMITS).feed(deep_lists)


def test_nesting_through_a_list_of_structs_counts_every_level():
    # args struct (depth 0) > list field (1) > its struct elements (2) > a struct field in one (3)
    lst = bytes.fromhex("0f0001") + b"\x0c" + struct.pack(">i", 2)
    flat = HEAD + lst + b"\x00" + b"\x00" + b"\x00"  # two empty elements, then the args STOP
    inner = HEAD + lst + b"\x00" + bytes.fromhex("0c0001") + b"\x00\x00" + b"\x00"  # the second holds a struct
    assert message_end(flat, 0, len(flat), WireLimits(max_depth=3)) == len(flat)
    with pytest.raises(ProtocolError, match="nesting"):
        message_end(flat, 0, len(flat), WireLimits(max_depth=2))
    with pytest.raises(ProtocolError, match="nesting"):  # before the elements' bytes arrive
        message_end(flat, 0, len(HEAD + lst), WireLimits(max_depth=2))
    assert message_end(inner, 0, len(inner), WireLimits(max_depth=4)) == len(inner)
    with pytest.raises(ProtocolError, match="nesting"):
        message_end(inner, 0, len(inner), WireLimits(max_depth=3))
    # An empty list of structs has no element to be too deep.
    empty = HEAD + bytes.fromhex("0f0001") + b"\x0c" + struct.pack(">i", 0) + b"\x00"
    assert message_end(empty, 0, len(empty), WireLimits(max_depth=2)) == len(empty)


def pull_reply(messages: list) -> bytes:
    response = idl.PullResponse(Code=0, Msg="success", Messages=messages, HasMore=False)
    return codec.encode("Pull", codec.REPLY, 1, idl.IMService.Pull_result(success=response))


def test_limits_apply_inside_every_element_of_a_list_of_structs():
    messages = [idl.Message(Chat="a:b", Text="x" * 10, Sender="a", SendTime=i) for i in range(5)]
    messages[3].Text = "y" * 11
    data = pull_reply(messages)
    assert message_end(data, 0, len(data), WireLimits(max_string_bytes=11)) == len(data)
    with pytest.raises(ProtocolError, match="string length 11"):
        message_end(data, 0, len(data), WireLimits(max_string_bytes=10))
    assert message_end(data, 0, len(data), WireLimits(max_container_items=5)) == len(data)
    with pytest.raises(ProtocolError, match="container size 5"):
        message_end(data, 0, len(data), WireLimits(max_container_items=4))


@pytest.mark.parametrize("ftype", [0x01, 0x05, 0x07, 0x09, 0x10, 0xFF])
def test_unknown_field_type(ftype):
    msg = HEAD + bytes([ftype]) + b"\x00\x01" + b"\x00" * 8
    with pytest.raises(ProtocolError, match="unknown field type"):
        message_end(msg, 0, len(msg), LIMITS)
    nested_msg = HEAD + bytes.fromhex("0c0001") + msg[len(HEAD):]  # in a nested struct too
    with pytest.raises(ProtocolError, match="unknown field type"):
        message_end(nested_msg, 0, len(nested_msg), LIMITS)


@pytest.mark.parametrize("container", ["0f000105", "0e000100", "0f000110", "0d00010b10", "0d00010008"])
def test_unknown_element_type_even_in_an_empty_container(container):
    msg = HEAD + bytes.fromhex(container) + struct.pack(">i", 0) + b"\x00"
    with pytest.raises(ProtocolError, match="unknown element type"):
        message_end(msg, 0, len(msg), LIMITS)


def test_list_of_fixed_size_elements_needs_all_its_bytes():
    msg = HEAD + bytes.fromhex("0f00010a") + struct.pack(">i", 3) + b"\x00" * 24 + b"\x00"
    assert message_end(msg, 0, len(msg), LIMITS) == len(msg)
    with pytest.raises(Incomplete) as info:
        message_end(msg, 0, len(msg) - 2, LIMITS)
    assert info.value.need == len(msg) - 1  # the whole list, before the STOP byte


# --- property tests: every valid message scans whole, and every truncation is Incomplete ----------

texts = st.text(max_size=30) | st.sampled_from(["", "é", "✓ émoji 🙂", "x" * 100])
messages = st.builds(idl.Message, Chat=st.none() | texts, Text=st.none() | texts, Sender=st.none() | texts,
                     SendTime=st.none() | st.integers(-(2**63), 2**63 - 1))


def assert_scans_whole_and_truncations_are_incomplete(data: bytes, trailing: bytes) -> None:
    buf = data + trailing  # bytes past ``end`` must never be read
    assert message_end(buf, 0, len(buf), LIMITS) == len(data)
    assert message_end(bytearray(data), 0, len(data), LIMITS) == len(data)
    assert message_end(memoryview(data), 0, len(data), LIMITS) == len(data)
    needs = []
    for cut in range(len(data)):
        with pytest.raises(Incomplete) as info:
            message_end(buf, 0, cut, LIMITS)
        needs.append(info.value.need)
        assert cut < info.value.need <= len(data), cut
    for need in needs:  # exact: one byte short of ``need``, the scan stops at the same place
        assert needs[need - 1] == need


@settings(max_examples=150, deadline=None, derandomize=True)
@given(msgs=st.lists(messages, max_size=20), seqid=st.integers(-(2**31), 2**31 - 1),
       trailing=st.binary(max_size=8))
def test_random_pull_replies_and_send_calls(msgs, seqid, trailing):
    reply = pull_reply(msgs)
    assert scan_message(reply, 0, len(reply), LIMITS)[0] == MessageHead("Pull", codec.REPLY, 1)
    assert_scans_whole_and_truncations_are_incomplete(reply, trailing)
    send = idl.IMService.Send_args(req=idl.SendRequest(message=msgs[0] if msgs else idl.Message()))
    call = codec.encode("Send", codec.CALL, seqid, send)
    assert scan_message(call + trailing, 0, len(call), LIMITS) == (MessageHead("Send", codec.CALL, seqid), len(call))
    assert_scans_whole_and_truncations_are_incomplete(call, trailing)


FIXED_SIZES = {2: 1, 3: 1, 4: 8, 6: 2, 8: 4, 10: 8}
WIRE_TYPES = [*FIXED_SIZES, 11, 12, 13, 14, 15]


@st.composite
def thrift_value(draw: st.DrawFn, ttype: int, depth: int = 0) -> bytes:
    """Any value of wire type ``ttype``, encoded by hand: maps, sets and nested containers too."""
    if ttype in FIXED_SIZES:
        return draw(st.binary(min_size=FIXED_SIZES[ttype], max_size=FIXED_SIZES[ttype]))
    if ttype == 11:
        data = draw(st.binary(max_size=20))
        return struct.pack(">i", len(data)) + data
    inner = st.sampled_from(WIRE_TYPES if depth < 4 else [8, 11])
    if ttype == 12:
        out = b""
        for ftype in draw(st.lists(inner, max_size=4)):
            out += struct.pack(">bh", ftype, draw(st.integers(-(2**15), 2**15 - 1)))
            out += draw(thrift_value(ftype, depth + 1))
        return out + b"\x00"
    types = [draw(inner) for _ in range(2 if ttype == 13 else 1)]
    n = draw(st.integers(0, 3))
    items = b"".join(draw(thrift_value(t, depth + 1)) for _ in range(n) for t in types)
    return bytes(types) + struct.pack(">i", n) + items


@settings(max_examples=300, deadline=None, derandomize=True)
@given(body=thrift_value(12), trailing=st.binary(max_size=8))
def test_random_messages_of_every_wire_type(body, trailing):
    assert_scans_whole_and_truncations_are_incomplete(HEAD + body, trailing)


def test_frame_length_over_max_frame_bytes_before_the_bytes_arrive():
    lim = WireLimits(max_frame_bytes=1000)
    framed = struct.pack(">I", 1001) + A
    with pytest.raises(ProtocolError):
        FrameReader(lim).feed(framed[:20])
    assert FrameReader(lim).feed((struct.pack(">I", 1000) + A)[:20]) == []
    with pytest.raises(ProtocolError):
        FrameReader(LIMITS).feed((struct.pack(">I", LIMITS.max_frame_bytes + 1) + A)[:20])


def test_ttheader_length_over_the_limit_before_the_bytes_arrive():
    lim = WireLimits(max_frame_bytes=1000, max_header_bytes=64)
    big = struct.pack(">IHHiH", 1065, 0x1000, 0, 1, 1) + b"\x00" * 4 + A
    with pytest.raises(ProtocolError):
        FrameReader(lim).feed(big[:20])
    with pytest.raises(ProtocolError):
        FrameReader(LIMITS).feed((struct.pack(">IHHiH", 0x3FFFFFFF, 0x1000, 0, 1, 1) + b"\x00" * 4 + A)[:20])


def test_buffered_message_larger_than_max_frame_bytes_is_refused_early():
    # A buffered message has no length prefix; its strings are each under the string limit but
    # together exceed the frame limit.
    lim = WireLimits(max_frame_bytes=1000, max_string_bytes=800, max_header_bytes=100)
    msg = HEAD + bytes.fromhex("0b0001") + struct.pack(">i", 800) + b"x" * 800 + bytes.fromhex("0b0002") + \
        struct.pack(">i", 800)
    with pytest.raises(ProtocolError):
        FrameReader(lim).feed(msg)


# --- TTHeader header validation ------------------------------------------------------------------


def ttheader(info: bytes, payload: bytes = A, words: int | None = None) -> bytes:
    words = len(info) // 4 if words is None else words
    return struct.pack(">IHHiH", 10 + len(info) + len(payload), 0x1000, 0, 1, words) + info + payload


@pytest.mark.parametrize("block", [0x02, 0x05, 0x12, 0xFF])
def test_ttheader_bad_info_block_id(block):
    with pytest.raises(ProtocolError, match="info block id"):
        FrameReader(LIMITS).feed(ttheader(bytes([0, 0, block, 0])))


def test_ttheader_header_size_zero():
    data = struct.pack(">IHHiH", 10 + len(A), 0x1000, 0, 1, 0) + A
    with pytest.raises(ProtocolError, match="TTHeader size"):
        FrameReader(LIMITS).feed(data)


def test_ttheader_header_size_larger_than_frame():
    data = struct.pack(">IHHiH", 10 + 4 + len(A), 0x1000, 0, 1, 100) + b"\x00" * 4 + A
    with pytest.raises(ProtocolError, match="TTHeader size"):
        FrameReader(LIMITS).feed(data)


def test_ttheader_header_size_over_max_header_bytes():
    lim = WireLimits(max_header_bytes=64)
    info = b"\x00" * 68
    with pytest.raises(ProtocolError, match="TTHeader size"):
        FrameReader(lim).feed(ttheader(info)[:20])
    assert len(one_frame(ttheader(b"\x00" * 64), lim).payload) == len(A)


def test_ttheader_transforms_rejected():
    with pytest.raises(ProtocolError, match="transforms"):
        FrameReader(LIMITS).feed(ttheader(bytes([0, 1, 1, 0])))


@pytest.mark.parametrize("proto", [0x02, 0x04, 0x10, 0xFF])
def test_ttheader_unsupported_protocol_id(proto):
    with pytest.raises(ProtocolError, match="protocol id"):
        FrameReader(LIMITS).feed(ttheader(bytes([proto, 0, 0, 0])))


def test_ttheader_compact_v2_protocol_id_accepted():
    frame = one_frame(ttheader(bytes([3, 0, 0, 0])))
    assert frame.header.protocol_id == 3 and frame.payload == A


def test_ttheader_kv_block_running_past_the_header():
    info = bytes([0, 0, 0x01, 0x00, 0x01, 0x00, 0x10]) + b"k"  # key length 16, one byte of key
    info += b"\x00" * (-len(info) % 4)
    with pytest.raises(ProtocolError, match="runs past"):
        FrameReader(LIMITS).feed(ttheader(info))


def test_ttheader_payload_must_be_thrift():
    with pytest.raises(ProtocolError):
        FrameReader(LIMITS).feed(ttheader(b"\x00" * 4, b"GET / HTTP/1.1\r\n\r\n"))
    with pytest.raises(ProtocolError):
        FrameReader(LIMITS).feed(ttheader(b"\x00" * 4, C))  # TTHeader inside a TTHeader
    with pytest.raises(ProtocolError):
        FrameReader(LIMITS).feed(ttheader(b"\x00" * 4, b"\x80\x01"))  # too short


# --- encoding replies -----------------------------------------------------------------------------


def test_codec_encodes_reply_vector_ra():
    result = idl.IMService.Send_result(success=idl.SendResponse(Code=0, Msg="success"))
    assert codec.encode("Send", codec.REPLY, 1, result) == RA


def test_codec_encodes_the_exception_vector():
    exc = TApplicationException(type=TApplicationException.UNKNOWN_METHOD, message="unknown method Foo")
    assert codec.encode("Foo", codec.EXCEPTION, 1, exc) == FOO_EXCEPTION


def test_wrap_produces_rc_and_rd():
    assert wrap(Transport.TTHEADER, RA, seqid=1) == RC
    assert wrap(Transport.TTHEADER, RA, seqid=1, info=encode_info()) == RC
    assert encode_info(ints={22: "2"}) == bytes.fromhex("0000" "10" "0001" "0016" "0001" "32" "0000")
    assert wrap(Transport.TTHEADER, RA, seqid=1, info=encode_info(ints={22: "2"})) == RD


def test_wrap_buffered_framed_and_ttheader_framed():
    assert wrap(Transport.BUFFERED, A) == A
    assert wrap(Transport.FRAMED, A) == B
    assert wrap(Transport.TTHEADER, A, seqid=1) == C
    assert wrap(Transport.TTHEADER_FRAMED, A, seqid=1) == E
    assert wrap(Transport.TTHEADER, A, seqid=1, info=encode_info({"isn": "IMService"}, {9: "Send"})) == D


@pytest.mark.parametrize("transport", list(Transport))
def test_wrapped_replies_read_back(transport):
    frame = one_frame(wrap(transport, RA, seqid=7, info=encode_info(ints={22: "2"})))
    assert frame.transport is transport and frame.payload == RA
    if transport.has_header:
        assert frame.header.seqid == 7 and frame.header.ints == {22: "2"}


def test_parse_info_round_trips_encode_info():
    strings = {"isn": "IMService", "RPC_TRANSIT_x": "y", "empty": "", "ünï": "cödé 😀"}
    ints = {3: "caller", 6: "IMService", 9: "Pull", 12: "1000", 22: "1", 0xFFFF: "max"}
    info = encode_info(strings, ints)
    assert len(info) % 4 == 0
    header = parse_info(info)
    assert header.strings == strings and header.ints == ints
    assert header.protocol_id == 0 and header.acl_token is None
    assert parse_info(encode_info()) == Header()
    only_ints = parse_info(encode_info(ints={12: "50"}))
    assert only_ints.ints == {12: "50"} and only_ints.strings == {}


def test_parse_info_acl_token_built_by_hand():
    info = (bytes([0x00, 0x00])
            + bytes([0x11]) + struct.pack(">H", 5) + b"token"
            + bytes([0x01]) + struct.pack(">H", 1) + struct.pack(">H", 1) + b"k" + struct.pack(">H", 1) + b"v"
            + bytes([0x10]) + struct.pack(">H", 1) + struct.pack(">H", 12) + struct.pack(">H", 2) + b"50")
    info += b"\x00" * (-len(info) % 4)
    header = parse_info(info)
    assert header.acl_token == "token"
    assert header.strings == {"k": "v"}
    assert header.ints == {12: "50"}
    # And inside a whole TTHeader frame.
    frame = one_frame(ttheader(info))
    assert frame.header.acl_token == "token" and frame.header.ints == {12: "50"}
    assert frame.payload == A


def test_parse_info_padding_between_blocks():
    info = bytes([0, 0, 0, 0, 0x10, 0, 1, 0, 9, 0, 4]) + b"Pull" + b"\x00"
    assert parse_info(info).ints == {9: "Pull"}


def test_parse_info_too_short():
    with pytest.raises(ProtocolError):
        parse_info(b"\x00")


def test_encode_info_string_too_long():
    with pytest.raises(ValueError):
        encode_info({"k": "x" * 65536})


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False


async def test_coalescing_writer_writes_once_flush_bytes_are_queued():
    writer = CoalescingWriter(flush_bytes=100)
    writer.transport = RecordingTransport()
    writer.queue(b"a" * 60)
    assert writer.transport.writes == []
    writer.queue(b"b" * 60)  # 120 queued: written at once, in order
    assert writer.transport.writes == [b"a" * 60 + b"b" * 60]
    writer.queue(b"c" * 10)
    writer.queue(b"d" * 10)
    assert len(writer.transport.writes) == 1  # 20 bytes: they wait for the flush
    writer.flush()
    assert writer.transport.writes[1:] == [b"c" * 10 + b"d" * 10]
    writer.queue(b"e" * 99)  # the count starts again after every write
    assert len(writer.transport.writes) == 2


async def test_coalescing_writer_without_flush_bytes_waits_for_the_flush():
    writer = CoalescingWriter()
    writer.transport = RecordingTransport()
    for _ in range(100):
        writer.queue(b"x" * 1000)
    assert writer.transport.writes == []
    writer.flush()
    assert writer.transport.writes == [b"x" * 100_000]

