"""Send's arguments in Thrift's binary encoding, written and read without thriftpy2 structs.

Every message sent crosses this encoding twice: the gateway's client writes a Send call and
chatsvc reads it. Building the three structs (``Send_args``, ``SendRequest``, ``Message``) and
encoding them cost the client ~4 us a call; walking the call to prove it whole and then decoding
it into three structs cost chatsvc ~7 us. Here the client packs the bytes thriftpy2 would write
(``write_args``), and chatsvc reads a call in one pass that checks every size as it goes
(``read_args``), for the layouts Thrift clients write: Message's four fields in any order, each
once, SendTime optional. Anything else (another field, a duplicate, a type that differs, invalid
UTF-8) returns None, and the call is checked and decoded with thriftpy2 as before.

``OK`` is the reply to every Send that succeeds: chatsvc writes it as encoded here, and the client
recognises it by comparing bytes.
"""

from __future__ import annotations

from struct import Struct
from struct import error as StructError
from typing import TYPE_CHECKING, NamedTuple

from chatsvc.errors import OK as CODE_OK
from chatsvc.wire.codec import Encoded, encoded
from chatsvc.wire.idl import SendResponse

if TYPE_CHECKING:  # settings imports storage, which imports this package
    from chatsvc.settings import WireLimits

T_I64, T_STRING, T_STRUCT = 10, 11, 12

OK = encoded(SendResponse(Code=CODE_OK, Msg="success"))  # a successful Send's SendResponse, encoded once

_FIELD = Struct(">bh")  # a field's type and id
_STRING = Struct(">bhi")  # a string field's header and length
_I64 = Struct(">q")
# Send_args.req (field 1, a struct), then SendRequest.message (field 1, a struct).
_ARGS_HEAD = _FIELD.pack(T_STRUCT, 1) * 2
# SendTime 0 (thriftpy2 writes the field; chatsvc assigns the time), then the stops of Message,
# SendRequest and Send_args.
_ARGS_TAIL = Struct(">bhq").pack(T_I64, 4, 0) + b"\x00\x00\x00"
_END = b"\x00\x00"  # the stops of SendRequest and Send_args, after Message's


class SentMessage(NamedTuple):
    """A Send call's Message as ``read_args`` reads it: the attributes of the IDL's Message."""

    Chat: str | None
    Text: str | None
    Sender: str | None
    SendTime: int | None


class SentRequest(NamedTuple):
    """A Send call's request as ``read_args`` reads it: the attribute of the IDL's SendRequest."""

    message: SentMessage


class SendArgs(NamedTuple):
    """A Send call's arguments as ``read_args`` reads them: the attribute of ``Send_args``."""

    req: SentRequest


_new_tuple = tuple.__new__  # a NamedTuple from a tuple of its fields, without its Python __new__


def write_args(chat: str, text: str, sender: str) -> Encoded:
    """``Send_args(req=SendRequest(message=Message(chat, text, sender, SendTime=0)))``, byte for
    byte as thriftpy2 encodes it. Raises UnicodeEncodeError for a str that is not valid Unicode."""
    c, t, s = chat.encode(), text.encode(), sender.encode()
    return Encoded(b"".join((_ARGS_HEAD, _STRING.pack(T_STRING, 1, len(c)), c, _STRING.pack(T_STRING, 2, len(t)),
                             t, _STRING.pack(T_STRING, 3, len(s)), s, _ARGS_TAIL)))


def read_args(payload: bytes, pos: int, limits: WireLimits) -> SendArgs | None:
    """The arguments of a whole Send call whose args struct starts at ``pos``, read in one pass with
    every size checked; None if it is laid out otherwise or is not valid."""
    try:
        return _read(payload, pos, limits.max_string_bytes)
    except (StructError, IndexError, UnicodeDecodeError):
        return None


def _read(buf: bytes, pos: int, max_string: int) -> SendArgs | None:
    if buf[pos : pos + 6] != _ARGS_HEAD:
        return None
    pos += 6
    values: list[str | int | None] = [None, None, None, None]  # Chat, Text, Sender, SendTime
    while True:
        ftype, fid = _FIELD.unpack_from(buf, pos)  # a stop is one byte: the next two are _END
        if ftype == 0:
            break
        if not 1 <= fid <= 4 or values[fid - 1] is not None:
            return None
        if ftype == T_STRING and fid != 4:
            n = _STRING.unpack_from(buf, pos)[2]
            if not 0 <= n <= max_string:
                return None
            start = pos + 7
            pos = start + n  # if this is past the end of buf, the next unpack fails (None)
            values[fid - 1] = buf[start:pos].decode()
        elif ftype == T_I64 and fid == 4:
            values[3] = _I64.unpack_from(buf, pos + 3)[0]
            pos += 11
        else:
            return None
    if buf[pos + 1 :] != _END:  # Message's stop at pos, then exactly the two others
        return None
    return _new_tuple(SendArgs, (_new_tuple(SentRequest, (_new_tuple(SentMessage, values),)),))
