"""``wire.pages``: a Pull reply written from stored bytes, and read back in one pass, against
thriftpy2's own encoder and decoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatsvc.settings import WireLimits
from chatsvc.wire import codec, idl, pages
from chatsvc.wire.scan import ProtocolError, whole_message

LIMITS = WireLimits()
INT64 = st.integers(-(2**63), 2**63 - 1)
names = st.text(max_size=12)
texts = st.text(max_size=300)
rows_st = st.lists(st.tuples(texts, names, INT64), max_size=25)


def reference(chat: str, rows: list[tuple[str, str, int]], has_more: bool, next_cursor: int,
              code: int = 0, msg: str = "success") -> bytes:
    """What thriftpy2 writes for this Pull reply."""
    messages = [idl.Message(chat, text, sender, t) for text, sender, t in rows]
    reply = idl.PullResponse(Code=code, Msg=msg, Messages=messages, HasMore=has_more, NextCursor=next_cursor)
    return codec.encode("Pull", codec.REPLY, 7, idl.IMService.Pull_result(success=reply))


def spliced(chat: str, rows: list[tuple[str, str, int]], has_more: bool, next_cursor: int) -> bytes:
    stored = [(t, sender.encode(), text.encode()) for text, sender, t in rows]
    return codec.encode_reply("Pull", 7, codec.Encoded(pages.write_response(chat, stored, has_more, next_cursor)))


def decoded(payload: bytes) -> pages.PullPage:
    """The general way: prove the message whole, decode it with thriftpy2, convert."""
    whole_message(payload, 0, len(payload), LIMITS)
    result = idl.IMService.Pull_result()
    codec.decode_body(payload, result)
    return pages.from_struct(result.success)


@settings(max_examples=300, deadline=None)
@given(names, rows_st, st.booleans(), INT64)
def test_thriftpy2_reads_a_spliced_reply_as_the_same_reply(chat, rows, has_more, next_cursor):
    """Another field order than thriftpy2's, the same struct: what any Thrift client decodes."""
    payload = spliced(chat, rows, has_more, next_cursor)
    assert len(payload) == len(reference(chat, rows, has_more, next_cursor))
    result = idl.IMService.Pull_result()
    codec.decode_body(payload, result)
    assert result.success == idl.PullResponse(Code=0, Msg="success", HasMore=has_more, NextCursor=next_cursor,
                                              Messages=[idl.Message(chat, text, sender, t) for text, sender, t in rows])


@settings(max_examples=300, deadline=None)
@given(names, rows_st, st.booleans(), INT64)
def test_read_reply_reads_a_spliced_reply(chat, rows, has_more, next_cursor):
    payload = spliced(chat, rows, has_more, next_cursor)
    page = pages.read_reply(payload, LIMITS)
    assert page == decoded(payload)
    assert page.messages == [{"chat": chat, "text": text, "sender": sender, "send_time": t}
                             for text, sender, t in rows]


@settings(max_examples=300, deadline=None)
@given(names, rows_st, st.booleans(), INT64, st.integers(-(2**31), 2**31 - 1), texts)
def test_thriftpy2s_field_order_is_left_to_the_general_way(chat, rows, has_more, next_cursor, code, msg):
    """An error reply, or an empty page, is in both layouts at once; any other reply in thriftpy2's
    order (a server other than chatsvc) is decoded the general way."""
    payload = reference(chat, rows, has_more, next_cursor, code, msg)
    page = pages.read_reply(payload, LIMITS)
    assert page == (decoded(payload) if not rows else None)


@settings(max_examples=300, deadline=None)
@given(rows_st.filter(bool), st.data())
def test_a_mutated_reply_is_read_as_thriftpy2_reads_it_or_left_to_it(rows, data):
    """Whatever the bytes, read_reply never raises, and anything it returns is exactly what the
    general way makes of the same bytes: it trusts nothing it has not checked."""
    payload = bytearray(spliced("a:b", rows, True, 5))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(payload) - 1))
        payload[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    mutated = bytes(payload[:cut])
    page = pages.read_reply(mutated, LIMITS)
    if page is not None:
        assert page == decoded(mutated)


def test_every_single_byte_change_is_read_as_thriftpy2_reads_it_or_left_to_it():
    """Each byte of a two-message reply set to each value that means something in this layout (a
    type, a field id, a stop, a length byte): never a page that the general way would not give."""
    payload = spliced("a:b", [("hello", "a", 1), ("world", "b", 2)], True, 3)
    values = {0, 1, 2, 3, 4, 5, 8, 10, 11, 12, 15, 0x7F, 0x80, 0xFF}
    for pos in range(len(payload)):
        for value in values | {payload[pos] ^ 1}:
            mutated = payload[:pos] + bytes((value,)) + payload[pos + 1 :]
            page = pages.read_reply(mutated, LIMITS)
            if page is not None:
                assert page == decoded(mutated), (pos, value)


def test_every_truncation_and_any_trailing_byte_is_left_to_the_general_way():
    payload = spliced("a:b", [("hello", "a", 1), ("world", "b", 2)], True, 3)
    for cut in range(len(payload)):
        assert pages.read_reply(payload[:cut], LIMITS) is None
    assert pages.read_reply(payload + b"\x00", LIMITS) is None
    with pytest.raises(ProtocolError):
        decoded(payload + b"\x00")


def test_other_layouts_are_left_to_the_general_way():
    """Other field orders, optional fields left out: valid replies that read_reply does not take,
    and that the general way reads."""
    message = idl.Message("a:b", "hi", "a", 1)
    for reply in (idl.PullResponse(Code=0, Msg="success"),  # no Messages, HasMore, NextCursor
                  idl.PullResponse(Code=0, Msg="success", Messages=[message]),
                  idl.PullResponse(Code=0, Msg="success", Messages=[message], HasMore=False,
                                   NextCursor=0)):  # thriftpy2's order within the Message
        payload = codec.encode("Pull", codec.REPLY, 1, idl.IMService.Pull_result(success=reply))
        assert pages.read_reply(payload, LIMITS) is None
        assert decoded(payload).code == 0
    # The same reply with PullResponse's fields in reverse order (Kitex writes by its own order).
    body = pages.write_response("a:b", [(1, b"a", b"hi")], False, 0)
    fields = [body[:7], body[7:21], body[21:-16], body[-16:-12], body[-12:-1]]  # Code, Msg, Messages...
    reordered = codec.encode_reply("Pull", 1, codec.Encoded(b"".join(reversed(fields)) + b"\x00"))
    assert pages.read_reply(reordered, LIMITS) is None
    assert decoded(reordered) == pages.PullPage(0, "success", [{"chat": "a:b", "text": "hi", "sender": "a",
                                                                 "send_time": 1}], False, 0)


def test_invalid_utf8_and_limits_are_left_to_the_general_way():
    for good, bad in ((b"hi", b"h\xff"), (b"x:y", b"x:\xff"), (b"zed", b"z\xffd")):  # text, chat, sender
        payload = spliced("x:y", [("hi", "zed", 1)], False, 0)
        assert pages.read_reply(payload, LIMITS) is not None
        assert pages.read_reply(payload.replace(good, bad), LIMITS) is None
    tight = WireLimits(max_string_bytes=4)
    assert pages.read_reply(spliced("a:b", [("hello", "a", 1)], False, 0), tight) is None
    assert pages.read_reply(spliced("a:b", [("hell", "a", 1)], False, 0), tight) is None  # Msg "success"
    assert pages.read_reply(spliced("a:b", [("a", "a", 1)] * 3, False, 0), WireLimits(max_container_items=2)) is None
    assert pages.read_reply(spliced("a:b", [("a", "a", 1)] * 3, False, 0), WireLimits(max_container_items=3))
