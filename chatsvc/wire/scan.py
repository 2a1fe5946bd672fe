"""Find where a strict-binary Thrift message ends, without decoding it.

An unframed ("buffered") stream has no length prefix, so the only way to cut it into messages is
to walk the encoding. The walk also checks every declared size against the limits before a byte
of it is allocated, and it is what proves a frame holds one *complete* message: thriftpy2's
Cython decoder over a memory buffer does not raise on a short read, it decodes garbage.
"""

from __future__ import annotations

from struct import Struct
from typing import NamedTuple

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


def read_head(buf: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[MessageHead, int]:
    """Read the strict-binary message header at ``pos``; return it and where the body starts."""
    if pos + 8 > end:  # a short read: check the version word if it is there, then wait for more
        if pos + 4 <= end:
            _check_version(_U32.unpack_from(buf, pos)[0])
        raise Incomplete(pos + 4 if pos + 4 > end else pos + 8)
    word, n = _HEAD.unpack_from(buf, pos)  # both words at once: the usual case
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
    return MessageHead(name, word & 0xFF, seqid), body


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
    return head, _skip(buf, body, end, _STRUCT, 0, limits)


def message_end(buf: bytes | bytearray | memoryview, pos: int, end: int, limits: WireLimits) -> int:
    """Offset just past the message starting at ``pos`` (see ``scan_message``)."""
    return scan_message(buf, pos, end, limits)[1]


def _skip(buf: bytes | bytearray | memoryview, pos: int, end: int, ttype: int, depth: int,
          lim: WireLimits) -> int:
    fixed = _FIXED.get(ttype)
    if fixed is not None:
        pos += fixed
        if pos > end:
            raise Incomplete(pos)
        return pos
    if ttype == _STRING:
        return _skip_string(buf, pos, end, lim)
    if depth >= lim.max_depth:
        raise ProtocolError(f"nesting deeper than {lim.max_depth}")
    if ttype == _STRUCT:
        # Scalars are skipped inline and strings by a small function: most fields are one of them,
        # and the general recursive call per field would dominate the scan.
        while True:
            if pos >= end:
                raise Incomplete(pos + 1)
            ftype = buf[pos]
            if ftype == 0:
                return pos + 1
            pos += 3
            fixed = _FIXED.get(ftype)
            if fixed is not None:
                pos += fixed
                if pos > end:
                    raise Incomplete(pos)
            elif ftype == _STRING:
                pos = _skip_string(buf, pos, end, lim)
            elif ftype in _VALID:
                pos = _skip(buf, pos, end, ftype, depth + 1, lim)
            else:
                raise ProtocolError(f"unknown field type {ftype}")
    if ttype in (_LIST, _SET):
        if pos + 5 > end:
            raise Incomplete(pos + 5)
        etype = buf[pos]
        n = _I32.unpack_from(buf, pos + 1)[0]
        return _skip_items(buf, pos + 5, end, (etype,), n, depth, lim)
    if ttype == _MAP:
        if pos + 6 > end:
            raise Incomplete(pos + 6)
        ktype, vtype = buf[pos], buf[pos + 1]
        n = _I32.unpack_from(buf, pos + 2)[0]
        return _skip_items(buf, pos + 6, end, (ktype, vtype), n, depth, lim)
    raise ProtocolError(f"unknown type {ttype}")


def _skip_string(buf: bytes | bytearray | memoryview, pos: int, end: int, lim: WireLimits) -> int:
    if pos + 4 > end:
        raise Incomplete(pos + 4)
    n = _I32.unpack_from(buf, pos)[0]
    if n < 0 or n > lim.max_string_bytes:
        raise ProtocolError(f"string length {n} out of bounds")
    pos += 4 + n
    if pos > end:
        raise Incomplete(pos)
    return pos


def _skip_items(buf: bytes | bytearray | memoryview, pos: int, end: int, types: tuple[int, ...],
                n: int, depth: int, lim: WireLimits) -> int:
    if n < 0 or n > lim.max_container_items:
        raise ProtocolError(f"container size {n} out of bounds")
    if any(t not in _VALID for t in types):
        raise ProtocolError(f"unknown element type {types}")
    sizes = [_FIXED.get(t) for t in types]
    if n and all(s is not None for s in sizes):
        pos += n * sum(s for s in sizes if s is not None)
        if pos > end:
            raise Incomplete(pos)
        return pos
    for _ in range(n):
        for t in types:
            pos = _skip(buf, pos, end, t, depth + 1, lim)
    return pos
