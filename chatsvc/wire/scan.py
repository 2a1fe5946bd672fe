"""Find where a strict-binary Thrift message ends, without decoding it.

An unframed ("buffered") stream has no length prefix, so the only way to cut it into messages is
to walk the encoding. The walk also checks every declared size against the limits before a byte
of it is allocated, and it is what proves a frame holds one *complete* message: thriftpy2's
Cython decoder over a memory buffer does not raise on a short read, it decodes garbage.
"""

from __future__ import annotations

from struct import Struct
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # settings imports storage, which imports this module's users
    from chatsvc.settings import WireLimits


_I32 = Struct(">i")
_U32 = Struct(">I")
_HEAD = Struct(">Ii")  # version word, method name length

VERSION_MASK = 0xFFFF0000
VERSION_1 = 0x80010000
MAX_NAME_BYTES = 1024

# Thrift wire types with a fixed size: BOOL, BYTE, DOUBLE, I16, I32, I64.
_FIXED = {2: 1, 3: 1, 4: 8, 6: 2, 8: 4, 10: 8}
_STRING, _STRUCT, _MAP, _SET, _LIST = 11, 12, 13, 14, 15
_VALID = set(_FIXED) | {_STRING, _STRUCT, _MAP, _SET, _LIST}
_SIZES = tuple(_FIXED.get(t, 0) for t in range(256))  # by wire type byte; 0: not fixed


class ProtocolError(Exception):
    """The bytes are not a valid message, or break a limit. The connection must be closed."""


class Incomplete(Exception):
    """More bytes are needed. ``need`` is the total length known to be required (0 if unknown)."""

    def __init__(self, need: int = 0) -> None:
        super().__init__(need)
        self.need = need


class MessageHead(NamedTuple):  # a tuple: built once per message, and cheaper than a dataclass
    name: str
    mtype: int
    seqid: int


_new_tuple = tuple.__new__


def read_head(buf: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[MessageHead, int]:
    """Read the strict-binary message header at ``pos``; return it and where the body starts."""
    if pos + 8 > end:  # a short read: check the version word if it is there, then wait for more
        if pos + 4 <= end:
            _check_version(_U32.unpack_from(buf, pos)[0])
        raise Incomplete(pos + 4 if pos + 4 > end else pos + 8)
    word, n = _HEAD.unpack_from(buf, pos)  # both words at once: the usual case
    if word & VERSION_MASK != VERSION_1:
        _check_version(word)
    if not 0 <= n <= MAX_NAME_BYTES:
        raise ProtocolError(f"bad method name length {n}")
    body = pos + 8 + n + 4
    if body > end:
        raise Incomplete(body)
    try:
        name = str(buf[pos + 8 : pos + 8 + n], "utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("method name is not valid UTF-8") from None
    seqid = _I32.unpack_from(buf, pos + 8 + n)[0]
    return _new_tuple(MessageHead, (name, word & 0xFF, seqid)), body  # skips NamedTuple's Python __new__


def _check_version(word: int) -> None:
    if word & VERSION_MASK != VERSION_1:
        raise ProtocolError(f"not a strict binary Thrift message (first word {word:#010x})")


def scan_message(buf: bytes | bytearray | memoryview, pos: int, end: int,
                 limits: WireLimits) -> tuple[MessageHead, int]:
    """The header of the message starting at ``pos``, and the offset just past it.

    Raises:
        Incomplete: the message runs past ``end``.
        ProtocolError: not strict binary, an unknown type, or a size over ``limits``.
    """
    head, body = read_head(buf, pos, end)
    return head, _skip_structs(buf, body, end, 1, 0, limits)


def whole_message(buf: bytes | bytearray | memoryview, pos: int, end: int, limits: WireLimits) -> MessageHead:
    """The header of the message that fills ``buf[pos:end]`` exactly (a frame's payload).

    Raises:
        ProtocolError: the message is cut short, is followed by other bytes, or is not valid.
    """
    try:
        head, stop = scan_message(buf, pos, end, limits)
    except Incomplete:
        raise ProtocolError("truncated message in frame") from None
    if stop != end:
        raise ProtocolError(f"{end - stop} trailing bytes after the message in a frame")
    return head


def message_end(buf: bytes | bytearray | memoryview, pos: int, end: int, limits: WireLimits) -> int:
    """Offset just past the message starting at ``pos`` (see ``scan_message``)."""
    return scan_message(buf, pos, end, limits)[1]


def _skip_structs(buf: bytes | bytearray | memoryview, pos: int, end: int, count: int, depth: int,
                  lim: WireLimits) -> int:
    """Skip ``count`` (at least 1) consecutive structs at nesting ``depth``.

    Strings and scalars are skipped inline, and a list of structs is one call, not one per element:
    a call per field or element would cost more than all the rest of the scan.
    """
    if depth >= lim.max_depth:
        raise ProtocolError(f"nesting deeper than {lim.max_depth}")
    max_string = lim.max_string_bytes
    while True:
        if pos >= end:
            raise Incomplete(pos + 1)
        ftype = buf[pos]
        if ftype == 11:  # STRING
            if pos + 7 > end:  # the 3-byte field header and the 4-byte length
                raise Incomplete(pos + 7)
            n = _I32.unpack_from(buf, pos + 3)[0]
            if n < 0 or n > max_string:
                raise ProtocolError(f"string length {n} out of bounds")
            pos += 7 + n
            if pos > end:
                raise Incomplete(pos)
        elif ftype == 0:
            pos += 1
            count -= 1
            if not count:
                return pos
        elif size := _SIZES[ftype]:
            pos += 3 + size
            if pos > end:
                raise Incomplete(pos)
        elif ftype == 12:  # STRUCT
            pos = _skip_structs(buf, pos + 3, end, 1, depth + 1, lim)
        elif ftype in _VALID:
            pos = _skip(buf, pos + 3, end, ftype, depth + 1, lim)
        else:
            raise ProtocolError(f"unknown field type {ftype}")


def _skip(buf: bytes | bytearray | memoryview, pos: int, end: int, ttype: int, depth: int,
          lim: WireLimits) -> int:
    """Skip one value of type ``ttype`` at nesting ``depth``."""
    fixed = _FIXED.get(ttype)
    if fixed is not None:
        pos += fixed
        if pos > end:
            raise Incomplete(pos)
        return pos
    if ttype == _STRING:
        if pos + 4 > end:
            raise Incomplete(pos + 4)
        n = _I32.unpack_from(buf, pos)[0]
        if n < 0 or n > lim.max_string_bytes:
            raise ProtocolError(f"string length {n} out of bounds")
        pos += 4 + n
        if pos > end:
            raise Incomplete(pos)
        return pos
    if ttype == _STRUCT:
        return _skip_structs(buf, pos, end, 1, depth, lim)
    if depth >= lim.max_depth:
        raise ProtocolError(f"nesting deeper than {lim.max_depth}")
    if ttype == _LIST or ttype == _SET:
        if pos + 5 > end:
            raise Incomplete(pos + 5)
        etype = buf[pos]
        n = _I32.unpack_from(buf, pos + 1)[0]
        pos += 5
        types: tuple[int, ...] = (etype,)
    elif ttype == _MAP:
        if pos + 6 > end:
            raise Incomplete(pos + 6)
        types = (buf[pos], buf[pos + 1])
        n = _I32.unpack_from(buf, pos + 2)[0]
        pos += 6
    else:
        raise ProtocolError(f"unknown type {ttype}")
    if n < 0 or n > lim.max_container_items:
        raise ProtocolError(f"container size {n} out of bounds")
    if any(t not in _VALID for t in types):
        raise ProtocolError(f"unknown element type {types}")
    if not n:  # nothing to walk, and no element to be too deep
        return pos
    if types == (_STRUCT,):
        return _skip_structs(buf, pos, end, n, depth + 1, lim)
    if all(_SIZES[t] for t in types):  # every element the same fixed size: no walk
        pos += n * sum(_SIZES[t] for t in types)
        if pos > end:
            raise Incomplete(pos)
        return pos
    for _ in range(n):
        for t in types:
            pos = _skip(buf, pos, end, t, depth + 1, lim)
    return pos
