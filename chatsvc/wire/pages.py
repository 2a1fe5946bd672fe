"""A page of messages in Thrift's binary encoding, written and read without thriftpy2 structs.

A pull carries up to 100 messages, and a thriftpy2 struct per message (built from Redis' reply,
encoded by chatsvc, decoded into another struct by the gateway, turned into a dict) cost more
than all the rest of a pull. So chatsvc writes a page from the stored UTF-8 bytes of each
message's sender and text as Redis returns them, with a few packed bytes between them
(``write_response``), and the gateway reads such a reply in one pass that checks every size as it
goes (``read_reply``).

``write_response`` writes each Message's fields as SendTime, Text, Sender, Chat (Thrift fields may
come in any order; Kitex also writes fixed-size fields first): the first two take one packed
header, and Sender, Chat and the struct's stop are the same bytes for all of a sender's messages
in a page. ``read_reply`` takes only this layout; it returns None for any other (thriftpy2's or
Kitex's field order, a missing optional field, bad UTF-8), and the caller then decodes the reply
the general way.
"""

from __future__ import annotations

from collections.abc import Sequence
from struct import Struct
from struct import error as StructError
from typing import TYPE_CHECKING, Any, NamedTuple

from chatsvc.wire.codec import RESULT_SUCCESS
from chatsvc.wire.scan import Incomplete, ProtocolError, read_head

if TYPE_CHECKING:  # settings imports storage, which imports this module
    from chatsvc.settings import WireLimits

T_BOOL, T_I32, T_I64, T_STRING, T_STRUCT, T_LIST = 2, 8, 10, 11, 12, 15

_FIELD = Struct(">bhi")  # a field's type and id, then an i32: a string's length, or the value
_TIME_TEXT = Struct(">bhqbhi")  # Message.SendTime (field 4), then the header of Text (field 2)
_LIST = Struct(">bhbi")  # PullResponse.Messages (field 3): field header, element type, count
_END = Struct(">bh?bhqb")  # HasMore (4), NextCursor (5) and PullResponse's stop

OK_MSG = "success"
# Code 0 and Msg "success": the start of every successful PullResponse.
_OK = _FIELD.pack(T_I32, 1, 0) + _FIELD.pack(T_STRING, 2, len(OK_MSG)) + OK_MSG.encode()


class PullPage(NamedTuple):
    """A PullResponse with its messages as dicts shaped as ``idl_http.proto``'s Message
    (``chat``, ``text``, ``sender``, ``send_time``): what the HTTP API returns, as it is read."""

    code: int | None  # None: the reply had no Code
    msg: str
    messages: list[dict[str, Any]]
    has_more: bool
    next_cursor: int


def write_response(chat: str, rows: Sequence[tuple[int, bytes, bytes]], has_more: bool,
                   next_cursor: int) -> bytes:
    """A successful PullResponse struct; ``rows`` are ``(send_time, sender, text)`` of ``chat``,
    sender and text in UTF-8."""
    raw = chat.encode()
    chat_and_stop = _FIELD.pack(T_STRING, 1, len(raw)) + raw + b"\x00"
    parts = [_OK, _LIST.pack(T_LIST, 3, T_STRUCT, len(rows))]
    extend = parts.extend
    time_text = _TIME_TEXT.pack
    tails: dict[bytes, bytes] = {}  # sender -> its Sender field, the Chat field and the stop byte
    for send_time, sender, text in rows:
        tail = tails.get(sender)
        if tail is None:
            tail = tails[sender] = _FIELD.pack(T_STRING, 3, len(sender)) + sender + chat_and_stop
        extend((time_text(T_I64, 4, send_time, T_STRING, 2, len(text)), text, tail))
    parts.append(_END.pack(T_BOOL, 4, has_more, T_I64, 5, next_cursor, 0))
    return b"".join(parts)


def read_reply(payload: bytes, limits: WireLimits) -> PullPage | None:
    """A whole Pull REPLY message in ``write_response``'s layout (any Code and Msg), read in one
    pass with every size checked; None if it is laid out otherwise or is not valid."""
    try:
        _, pos = read_head(payload, 0, len(payload))
        return _read_result(payload, pos, limits)
    except (StructError, IndexError, UnicodeDecodeError, Incomplete, ProtocolError):
        return None


def _read_result(buf: bytes, pos: int, limits: WireLimits) -> PullPage | None:
    max_string = limits.max_string_bytes
    if buf[pos : pos + 3] != RESULT_SUCCESS:
        return None
    ftype, fid, code = _FIELD.unpack_from(buf, pos + 3)
    if ftype != T_I32 or fid != 1:
        return None
    ftype, fid, n = _FIELD.unpack_from(buf, pos + 10)
    if ftype != T_STRING or fid != 2 or not 0 <= n <= max_string:
        return None
    pos += 17
    msg = buf[pos : pos + n].decode()
    pos += n
    ftype, fid, etype, count = _LIST.unpack_from(buf, pos)
    if ftype != T_LIST or fid != 3 or etype != T_STRUCT or not 0 <= count <= limits.max_container_items:
        return None
    pos += 8
    messages: list[dict[str, Any]] = []
    append = messages.append
    field = _FIELD.unpack_from
    time_text = _TIME_TEXT.unpack_from
    chat_and_stop = b""  # the last message's Chat field and stop byte (a page is all one chat)
    chat = ""
    for _ in range(count):
        # Inline rather than a call per field: this loop is most of the gateway's work on a pull.
        ftype, fid, send_time, text_type, text_id, n = time_text(buf, pos)
        if ftype != T_I64 or fid != 4 or text_type != T_STRING or text_id != 2 or not 0 <= n <= max_string:
            return None
        start = pos + 18
        pos = start + n
        text = buf[start:pos].decode()
        ftype, fid, n = field(buf, pos)
        if ftype != T_STRING or fid != 3 or not 0 <= n <= max_string:
            return None
        start = pos + 7
        pos = start + n
        sender = buf[start:pos].decode()
        if not chat_and_stop or buf[pos : pos + len(chat_and_stop)] != chat_and_stop:
            ftype, fid, n = field(buf, pos)
            if ftype != T_STRING or fid != 1 or not 0 <= n <= max_string or buf[pos + 7 + n] != 0:
                return None
            chat_and_stop = buf[pos : pos + 8 + n]
            chat = buf[pos + 7 : pos + 7 + n].decode()
        pos += len(chat_and_stop)
        append({"chat": chat, "text": text, "sender": sender, "send_time": send_time})
    more_type, more_id, has_more, next_type, next_id, next_cursor, stop = _END.unpack_from(buf, pos)
    pos += _END.size  # then the result struct's stop, the message's last byte
    if (more_type != T_BOOL or more_id != 4 or next_type != T_I64 or next_id != 5 or stop
            or pos + 1 != len(buf) or buf[pos]):
        return None
    return PullPage(code, msg, messages, has_more, next_cursor)


def from_struct(reply: Any) -> PullPage:
    """A PullPage of a thriftpy2 PullResponse (a reply ``read_reply`` did not take)."""
    messages = [{"chat": m.Chat, "text": m.Text, "sender": m.Sender, "send_time": m.SendTime}
                for m in reply.Messages or ()]
    return PullPage(reply.Code, reply.Msg or "", messages, bool(reply.HasMore), reply.NextCursor or 0)
