"""Pull's arguments in Thrift's binary encoding, written and read without thriftpy2 structs.

The counterpart of ``wire.sends`` for the other call: the gateway's client packs the bytes
thriftpy2 would write for ``Pull_args(req=PullRequest(...))`` (``write_args``), and chatsvc reads
a call in one pass that checks every size as it goes (``read_args``), for the layouts Thrift
clients write: PullRequest's four fields in any order, each at most once. Anything else (another
field, a duplicate, a type that differs, invalid UTF-8) returns None, and the call is checked and
decoded with thriftpy2 as before. Building and encoding the two structs cost the client ~2 us a
call, and checking and decoding them cost chatsvc ~4 us; the one-pass forms take a fraction of
that (docs/performance.md).
"""

from __future__ import annotations

from struct import Struct
from struct import error as StructError
from typing import TYPE_CHECKING, NamedTuple

from chatsvc.wire.codec import Encoded

if TYPE_CHECKING:  # settings imports storage, which imports this package
    from chatsvc.settings import WireLimits

T_BOOL, T_I32, T_I64, T_STRING, T_STRUCT = 2, 8, 10, 11, 12

_ID = Struct(">h")  # a field's id, after its type byte
_I32 = Struct(">i")
_I64 = Struct(">q")
_STRING = Struct(">bhi")  # a string field's header and length
_ARGS_HEAD = Struct(">bh").pack(T_STRUCT, 2)  # Pull_args.req: field 2, a struct
# Cursor (field 2, i64), Limit (3, i32) and Reverse (4, bool) as thriftpy2 writes them after Chat,
# then the stops of PullRequest and Pull_args.
_REST = Struct(">bhqbhibh?bb")


class PulledRequest(NamedTuple):
    """A Pull call's request as ``read_args`` reads it: the attributes of the IDL's PullRequest."""

    Chat: str | None
    Cursor: int | None
    Limit: int | None
    Reverse: bool | None


class PullArgs(NamedTuple):
    """A Pull call's arguments as ``read_args`` reads them: the attribute of ``Pull_args``."""

    req: PulledRequest


_new_tuple = tuple.__new__  # a NamedTuple from a tuple of its fields, without its Python __new__


def write_args(chat: str, cursor: int, limit: int, reverse: bool) -> Encoded:
    """``Pull_args(req=PullRequest(chat, cursor, limit, reverse))``, byte for byte as thriftpy2
    encodes it. Raises UnicodeEncodeError for a str that is not valid Unicode, and struct.error
    for a number out of its type's range."""
    raw = chat.encode()
    return Encoded(b"".join((_ARGS_HEAD, _STRING.pack(T_STRING, 1, len(raw)), raw,
                             _REST.pack(T_I64, 2, cursor, T_I32, 3, limit, T_BOOL, 4, reverse, 0, 0))))


def read_args(payload: bytes, pos: int, limits: WireLimits) -> PullArgs | None:
    """The arguments of a whole Pull call whose args struct starts at ``pos``, read in one pass with
    every size checked; None if it is laid out otherwise or is not valid."""
    try:
        return _read(payload, pos, limits.max_string_bytes)
    except (StructError, IndexError, UnicodeDecodeError):
        return None


def _read(buf: bytes, pos: int, max_string: int) -> PullArgs | None:
    if buf[pos : pos + 3] != _ARGS_HEAD:
        return None
    pos += 3
    values: list[str | int | bool | None] = [None, None, None, None]  # Chat, Cursor, Limit, Reverse
    while True:
        ftype = buf[pos]
        if ftype == 0:  # PullRequest's stop
            break
        fid = _ID.unpack_from(buf, pos + 1)[0]
        if not 1 <= fid <= 4 or values[fid - 1] is not None:
            return None
        if ftype == T_STRING and fid == 1:
            n = _I32.unpack_from(buf, pos + 3)[0]
            if not 0 <= n <= max_string:
                return None
            start = pos + 7
            pos = start + n  # if this is past the end of buf, the next read fails (None)
            values[0] = buf[start:pos].decode()
        elif ftype == T_I64 and fid == 2:
            values[1] = _I64.unpack_from(buf, pos + 3)[0]
            pos += 11
        elif ftype == T_I32 and fid == 3:
            values[2] = _I32.unpack_from(buf, pos + 3)[0]
            pos += 7
        elif ftype == T_BOOL and fid == 4:
            values[3] = buf[pos + 3] != 0
            pos += 4
        else:
            return None
    if buf[pos + 1 :] != b"\x00":  # then exactly Pull_args' stop
        return None
    return _new_tuple(PullArgs, (_new_tuple(PulledRequest, values),))
