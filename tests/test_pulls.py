"""``wire.pulls``: a Pull call written by hand and read in one pass, against thriftpy2's own
encoder and decoder."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatsvc.client import _pull_args
from chatsvc.settings import WireLimits
from chatsvc.wire import codec, idl, pulls
from chatsvc.wire.scan import ProtocolError, whole_message
from tests.one_pass import mutated, read_as_general, single_byte_changes

LIMITS = WireLimits()
BODY = 16  # where a Pull call's args start: version word, name length, "Pull", seqid
INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
texts = st.text(max_size=300)


def call(chat: str | None, cursor: int | None, limit: int | None, reverse: bool | None) -> bytes:
    """A Pull call as thriftpy2 writes it."""
    req = idl.PullRequest(Chat=chat, Cursor=cursor, Limit=limit, Reverse=reverse)
    return codec.encode("Pull", codec.CALL, 9, idl.IMService.Pull_args(req=req))


def decoded(payload: bytes) -> tuple[object, ...]:
    """The general way: prove the message whole, decode it with thriftpy2."""
    whole_message(payload, 0, len(payload), LIMITS)
    args = idl.IMService.Pull_args()
    codec.decode_body(payload, args)
    r = args.req
    return r.Chat, r.Cursor, r.Limit, r.Reverse


def read(payload: bytes, limits: WireLimits = LIMITS) -> tuple[object, ...] | None:
    args = pulls.read_args(payload, BODY, limits)
    return None if args is None else tuple(args.req)


@settings(max_examples=300, deadline=None)
@given(texts, INT64, INT32, st.booleans())
def test_write_args_is_what_thriftpy2_writes(chat, cursor, limit, reverse):
    assert codec.encode_call("Pull", 9, pulls.write_args(chat, cursor, limit, reverse)) == call(chat, cursor, limit, reverse)


def test_write_args_refuses_what_thriftpy2_cannot_write():
    with pytest.raises(UnicodeEncodeError):
        pulls.write_args("a:\ud800", 0, 10, False)
    with pytest.raises(struct.error):
        pulls.write_args("a:b", 0, 2**31, False)
    with pytest.raises(struct.error):
        pulls.write_args("a:b", 2**63, 10, False)


def test_the_client_packs_the_usual_call_and_leaves_the_rest_to_thriftpy2():
    assert isinstance(_pull_args("a:b", 5, 20, True), codec.Encoded)
    for odd in (("a:b", 5, 20, None), (None, 5, 20, False), ("a:b", 2**63, 20, False), ("a:\ud800", 0, 1, False),
                ("a:b", True, 20, False)):
        assert isinstance(_pull_args(*odd), idl.IMService.Pull_args), odd


@settings(max_examples=300, deadline=None)
@given(st.none() | texts, st.none() | INT64, st.none() | INT32, st.none() | st.booleans())
def test_read_args_reads_what_thriftpy2_writes(chat, cursor, limit, reverse):
    """Any of PullRequest's fields left out (thriftpy2 skips a None): read as the general way does."""
    payload = call(chat, cursor, limit, reverse)
    assert read(payload) == decoded(payload) == (chat, cursor, limit, reverse)


def _field(fid: int, value: str | int | bool) -> bytes:
    if fid == 1:
        raw = str(value).encode()
        return struct.pack(">bhi", pulls.T_STRING, fid, len(raw)) + raw
    if fid == 2:
        return struct.pack(">bhq", pulls.T_I64, fid, int(value))
    if fid == 3:
        return struct.pack(">bhi", pulls.T_I32, fid, int(value))
    return struct.pack(">bh?", pulls.T_BOOL, fid, bool(value))


def in_order(order: list[int], values: tuple[str, int, int, bool]) -> bytes:
    """A Pull call with PullRequest's fields in ``order`` (Kitex writes fixed-size fields first)."""
    body = b"\x0c\x00\x02" + b"".join(_field(fid, values[fid - 1]) for fid in order) + b"\x00\x00"
    return call("x", 0, 0, False)[:BODY] + body


@settings(max_examples=300, deadline=None)
@given(st.permutations([1, 2, 3, 4]), texts, INT64, INT32, st.booleans())
def test_any_field_order_is_read(order, chat, cursor, limit, reverse):
    payload = in_order(order, (chat, cursor, limit, reverse))
    assert read(payload) == decoded(payload) == (chat, cursor, limit, reverse)


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_a_mutated_call_is_read_as_thriftpy2_reads_it_or_left_to_it(data):
    """Whatever the bytes, read_args never raises, and anything it returns is exactly what the
    general way makes of the same bytes."""
    payload = call(data.draw(texts), data.draw(INT64), data.draw(INT32), data.draw(st.booleans()))
    read_as_general(read, decoded, mutated(data, payload, BODY))


def test_every_single_byte_change_is_read_as_thriftpy2_reads_it_or_left_to_it():
    changed = 0
    for pos, value, payload in single_byte_changes(call("a:b", 5, 20, True), BODY):
        got = read_as_general(read, decoded, payload, (pos, value))
        changed += got is not None and got != ("a:b", 5, 20, True)
    assert changed  # some changes (a number's bytes, Reverse's) are read, not only refused


def test_every_truncation_and_any_trailing_byte_is_left_to_the_general_way():
    payload = call("a:b", 5, 20, True)
    for cut in range(len(payload)):
        assert read(payload[:cut]) is None
    assert read(payload + b"\x00") is None
    with pytest.raises(ProtocolError):
        decoded(payload + b"\x00")


def test_other_layouts_are_left_to_the_general_way():
    """An unknown field, a field twice, a field of another type: valid Thrift that read_args does
    not take, and that thriftpy2 reads."""
    base = call("a:b", 5, 20, True)
    extra = base[:-2] + _field(1, "x")[:1] + b"\x00\x09" + _field(1, "unknown")[3:] + b"\x00\x00"
    twice = base[:-2] + _field(3, 7) + b"\x00\x00"
    typed = in_order([1, 2, 4], ("a:b", 5, 0, True))[:-2] + struct.pack(">bhq", pulls.T_I64, 3, 7) + b"\x00\x00"
    for payload, general in ((extra, ("a:b", 5, 20, True)), (twice, ("a:b", 5, 7, True)),
                             (typed, ("a:b", 5, None, True))):
        assert read(payload) is None
        assert decoded(payload) == general


def test_invalid_utf8_and_limits_are_left_to_the_general_way():
    assert read(call("a:b", 0, 10, False).replace(b"a:b", b"a:\xff")) is None
    assert read(call("a:bcd", 0, 10, False), WireLimits(max_string_bytes=4)) is None
    assert read(call("a:bc", 0, 10, False), WireLimits(max_string_bytes=4)) == ("a:bc", 0, 10, False)
