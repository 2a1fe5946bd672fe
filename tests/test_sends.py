"""``wire.sends``: a Send call written by hand and read in one pass, against thriftpy2's own
encoder and decoder."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatsvc.settings import WireLimits
from chatsvc.wire import codec, idl, sends
from chatsvc.wire.scan import ProtocolError, whole_message
from tests.one_pass import mutated, read_as_general, single_byte_changes

LIMITS = WireLimits()
BODY = 16  # where a Send call's args start: version word, name length, "Send", seqid
INT64 = st.integers(-(2**63), 2**63 - 1)
texts = st.text(max_size=300)
maybe = st.none() | texts


def call(chat: str | None, text: str | None, sender: str | None, send_time: int | None = 0) -> bytes:
    """A Send call as thriftpy2 writes it."""
    message = idl.Message(Chat=chat, Text=text, Sender=sender, SendTime=send_time)
    return codec.encode("Send", codec.CALL, 9, idl.IMService.Send_args(req=idl.SendRequest(message=message)))


def decoded(payload: bytes) -> tuple[object, ...]:
    """The general way: prove the message whole, decode it with thriftpy2."""
    whole_message(payload, 0, len(payload), LIMITS)
    args = idl.IMService.Send_args()
    codec.decode_body(payload, args)
    m = args.req.message
    return m.Chat, m.Text, m.Sender, m.SendTime


def read(payload: bytes, limits: WireLimits = LIMITS) -> tuple[object, ...] | None:
    args = sends.read_args(payload, BODY, limits)
    return None if args is None else tuple(args.req.message)


@settings(max_examples=300, deadline=None)
@given(texts, texts, texts)
def test_write_args_is_what_thriftpy2_writes(chat, text, sender):
    written = codec.encode_call("Send", 9, sends.write_args(chat, text, sender))
    assert written == call(chat, text, sender)


def test_write_args_refuses_a_str_that_is_not_unicode():
    with pytest.raises(UnicodeEncodeError):
        sends.write_args("a:b", "\ud800", "a")


@settings(max_examples=300, deadline=None)
@given(maybe, maybe, maybe, st.none() | INT64)
def test_read_args_reads_what_thriftpy2_writes(chat, text, sender, send_time):
    """Any of Message's fields left out (thriftpy2 skips a None): read as the general way does."""
    payload = call(chat, text, sender, send_time)
    assert read(payload) == decoded(payload) == (chat, text, sender, send_time)


def _field(ftype: int, fid: int, value: str | int) -> bytes:
    if ftype == sends.T_STRING:
        raw = str(value).encode()
        return struct.pack(">bhi", ftype, fid, len(raw)) + raw
    return struct.pack(">bhq", ftype, fid, int(value))


def in_order(order: list[int], values: tuple[str, str, str, int]) -> bytes:
    """A Send call with Message's fields in ``order`` (Kitex writes SendTime first)."""
    fields = b"".join(_field(sends.T_I64 if fid == 4 else sends.T_STRING, fid, values[fid - 1]) for fid in order)
    body = b"\x0c\x00\x01\x0c\x00\x01" + fields + b"\x00\x00\x00"
    return call("x", "x", "x")[:BODY] + body


@settings(max_examples=300, deadline=None)
@given(st.permutations([1, 2, 3, 4]), texts, texts, texts, INT64)
def test_any_field_order_is_read(order, chat, text, sender, send_time):
    payload = in_order(order, (chat, text, sender, send_time))
    assert read(payload) == decoded(payload) == (chat, text, sender, send_time)


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_a_mutated_call_is_read_as_thriftpy2_reads_it_or_left_to_it(data):
    """Whatever the bytes, read_args never raises, and anything it returns is exactly what the
    general way makes of the same bytes."""
    read_as_general(read, decoded, mutated(data, call(data.draw(texts), data.draw(texts), data.draw(texts)), BODY))


def test_every_single_byte_change_is_read_as_thriftpy2_reads_it_or_left_to_it():
    for pos, value, payload in single_byte_changes(call("a:b", "hello", "a", 5), BODY):
        read_as_general(read, decoded, payload, (pos, value))


def test_every_truncation_and_any_trailing_byte_is_left_to_the_general_way():
    payload = call("a:b", "hello", "a")
    for cut in range(len(payload)):
        assert read(payload[:cut]) is None
    assert read(payload + b"\x00") is None
    with pytest.raises(ProtocolError):
        decoded(payload + b"\x00")


def test_other_layouts_are_left_to_the_general_way():
    """An unknown field, a field twice, a field of another type: valid Thrift that read_args does
    not take, and that thriftpy2 reads."""
    base = call("a:b", "hi", "a")
    extra = base[:-3] + _field(sends.T_STRING, 9, "unknown") + b"\x00\x00\x00"  # a field from a newer IDL
    twice = base[:-3] + _field(sends.T_STRING, 2, "again") + b"\x00\x00\x00"
    typed = in_order([1, 2, 3], ("a:b", "hi", "a", 0))[:-3] + _field(sends.T_STRING, 4, "7") + b"\x00\x00\x00"
    number = in_order([2, 3], ("a:b", "hi", "a", 0))[:-3] + _field(sends.T_I64, 1, 7) + b"\x00\x00\x00"
    for payload, general in ((extra, ("a:b", "hi", "a", 0)), (twice, ("a:b", "again", "a", 0)),
                             (typed, ("a:b", "hi", "a", None)), (number, (None, "hi", "a", None))):
        assert read(payload) is None
        assert decoded(payload) == general


def test_invalid_utf8_and_limits_are_left_to_the_general_way():
    payload = call("a:b", "hi", "zed")
    for good, bad in ((b"hi", b"h\xff"), (b"a:b", b"a:\xff"), (b"zed", b"z\xffd")):
        assert read(payload.replace(good, bad)) is None
    assert read(call("a:b", "hello", "a"), WireLimits(max_string_bytes=4)) is None
    assert read(call("a:b", "hell", "a"), WireLimits(max_string_bytes=4)) == ("a:b", "hell", "a", 0)
