"""Thrift transports as a Kitex server sees them: unframed, framed, TTHeader and TTHeader-framed.

Detection follows Kitex's ``DecodeMeta`` on the first 8 bytes of each message (see
``docs/wire.md``): bytes 4-5 ``10 00`` is a TTHeader; a strict-binary version word at byte 0 is
unframed, at byte 4 framed; the HTTP/2 preface and anything else are refused.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from struct import Struct
from typing import NamedTuple

from chatsvc.settings import WireLimits
from chatsvc.wire.scan import (
    MAX_NAME_BYTES,
    VERSION_1,
    VERSION_MASK,
    Incomplete,
    MessageHead,
    ProtocolError,
    read_head,
    scan_message,
    whole_message,
)

_U16 = Struct(">H")
_U32 = Struct(">I")
_TWO_U32 = Struct(">II")
_TTHEADER_FIXED = Struct(">IHHiH")  # length, magic, flags, seqid, header size in words
_FRAMED_HEAD = Struct(">IIi")  # a framed message's frame size, version word and method name length
_I32 = Struct(">i")
_new_tuple = tuple.__new__  # a NamedTuple from a tuple of its fields, without its Python __new__

TTHEADER_MAGIC = 0x1000
HTTP2_PREFACE = b"PRI * HT"

# TTHeader info block ids.
INFO_PADDING, INFO_KEYVALUE, INFO_INTKEYVALUE, INFO_ACL_TOKEN = 0x00, 0x01, 0x10, 0x11
# TTHeader protocol ids we accept: binary, and compact-v2 (Kitex sniffs the payload anyway).
_PROTOCOLS = {0x00, 0x03}

# Kitex int keys (transmeta) that chatsvc reads or writes.
FROM_SERVICE, TO_SERVICE, LOG_ID, TO_METHOD, RPC_TIMEOUT, FROM_METHOD, MSG_TYPE = 3, 6, 2, 9, 12, 20, 22


class Transport(enum.Enum):
    BUFFERED = "buffered"
    FRAMED = "framed"
    TTHEADER = "ttheader"
    TTHEADER_FRAMED = "ttheader_framed"

    @property
    def has_header(self) -> bool:
        return self in (Transport.TTHEADER, Transport.TTHEADER_FRAMED)


class Refused(ProtocolError):
    """Not a Thrift transport we speak (HTTP/2, HTTP/1, telnet...): close without replying."""


@dataclass
class Header:
    """A TTHeader's fixed fields and info blocks."""

    seqid: int = 0
    flags: int = 0
    protocol_id: int = 0
    strings: dict[str, str] = field(default_factory=dict)
    ints: dict[int, str] = field(default_factory=dict)
    acl_token: str | None = None


class Frame(NamedTuple):
    """One complete strict-binary message, its message header, and how it was carried (a tuple:
    one is built per message)."""

    transport: Transport
    payload: bytes
    head: MessageHead
    header: Header | None = None


def detect(first8: bytes | bytearray | memoryview, pos: int = 0) -> Transport:
    """The transport of a message from its first 8 bytes (TTHeader payloads are sniffed later)."""
    if pos:
        first8 = memoryview(first8)[pos : pos + 8]
    first4, second4 = _TWO_U32.unpack_from(first8, 0)
    if first4 == 0x50524920 and bytes(first8[:8]) == HTTP2_PREFACE:  # "PRI "
        raise Refused("HTTP/2 is not supported")
    if second4 & 0xFFFF0000 == TTHEADER_MAGIC << 16:
        return Transport.TTHEADER
    if first4 & VERSION_MASK == VERSION_1:
        return Transport.BUFFERED
    if second4 & VERSION_MASK == VERSION_1:
        return Transport.FRAMED
    raise Refused(f"invalid payload (first4Bytes={first4:#010x}, second4Bytes={second4:#010x})")


class FrameReader:
    """Cuts a byte stream into ``Frame``s, checking every size before it is allocated.

    A framed message (framed, TTHeader) is walked to prove it whole and within the limits, unless
    ``walk`` is false: then only its message header is read, and the reader's user must check the
    payload (``checked_payload``, or a reader that checks every size itself) before decoding
    it. An unframed message is always walked: that is how its end is found.
    """

    def __init__(self, limits: WireLimits, *, walk: bool = True) -> None:
        self._limits = limits
        self._walk = walk
        self._buf = bytearray()
        self._need = 0  # don't rescan until the buffer holds this many bytes
        self.last_transport: Transport | None = None
        # An error found after some complete frames: the caller answers those frames first.
        self.error: ProtocolError | None = None
        self.frames_read = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data``; return the complete frames now available, in order.

        A protocol error is raised at once if no frame came before it; otherwise it is kept in
        ``error`` and the frames before it are returned.
        """
        if self.error is not None:
            raise self.error
        if self._buf:
            buf = self._buf
            buf += data
            if len(buf) < self._need:
                return []
            frames, pos = self._cut(buf)
            if self.error is not None:
                return frames
            if pos:
                del buf[:pos]
        else:
            # Nothing pending (the usual case: whole messages per read): cut ``data`` itself, so a
            # message that fills it is passed on without a copy. Only a remainder is kept.
            frames, pos = self._cut(data)
            if self.error is not None:
                return frames
            if pos < len(data):
                self._buf += memoryview(data)[pos:]
        if len(self._buf) > self._limits.max_frame_bytes + self._limits.max_header_bytes:
            raise ProtocolError(f"message larger than {self._limits.max_frame_bytes} bytes")
        return frames

    def _cut(self, buf: bytes | bytearray) -> tuple[list[Frame], int]:
        """The complete frames at the start of ``buf``, and where the first incomplete one starts."""
        frames: list[Frame] = []
        pos = 0
        try:
            while len(buf) - pos >= 8:
                cut = None if self._walk else self._framed(buf, pos)
                if cut is None:
                    frame, pos = self._next(buf, pos)
                else:
                    frame, pos = cut
                frames.append(frame)
                self.frames_read += 1
            self._need = 0
        except Incomplete as inc:
            if inc.need - pos > self._limits.max_frame_bytes + self._limits.max_header_bytes:
                raise ProtocolError(f"message larger than {self._limits.max_frame_bytes} bytes") from None
            self._need = inc.need - pos
        except ProtocolError as exc:
            if not frames:
                raise
            self.error = exc
        return frames, pos

    def _next(self, buf: bytes | bytearray, pos: int) -> tuple[Frame, int]:
        transport = detect(buf, pos)
        self.last_transport = transport
        if transport is Transport.BUFFERED:
            head, end = scan_message(buf, pos, len(buf), self._limits)
            return Frame(transport, bytes(buf[pos:end]), head), end
        if transport is Transport.FRAMED:
            start, end = self._frame_bounds(buf, pos, len(buf))
            return Frame(transport, *self._whole_message(buf, start, end)), end
        return self._ttheader(buf, pos)

    def _framed(self, buf: bytes | bytearray, pos: int) -> tuple[Frame, int] | None:
        """The usual message, when not walking: a whole framed message, read with one unpack and
        no Frame or MessageHead constructor call. None for anything else (or anything wrong), which
        ``_next`` then reads, or refuses with the right error."""
        if len(buf) - pos < 12:
            return None
        size, word, n = _FRAMED_HEAD.unpack_from(buf, pos)
        end = pos + 4 + size
        # size <= max_frame_bytes (< 256 MiB) rules out an unframed message and the HTTP/2
        # preface at pos; the version word rules out a TTHeader.
        if (word & VERSION_MASK != VERSION_1 or size > self._limits.max_frame_bytes or end > len(buf)
                or not 0 <= n <= MAX_NAME_BYTES or pos + 16 + n > end):
            return None
        try:
            name = buf[pos + 12 : pos + 12 + n].decode()
        except UnicodeDecodeError:
            return None
        head = _new_tuple(MessageHead, (name, word & 0xFF, _I32.unpack_from(buf, pos + 12 + n)[0]))
        self.last_transport = Transport.FRAMED
        return _new_tuple(Frame, (Transport.FRAMED, bytes(buf[pos + 4 : end]), head, None)), end

    def _frame_bounds(self, buf: bytes | bytearray, pos: int, limit: int) -> tuple[int, int]:
        if pos + 4 > limit:
            raise Incomplete(pos + 4)
        size = _U32.unpack_from(buf, pos)[0]
        if size > self._limits.max_frame_bytes:
            raise ProtocolError(f"frame of {size} bytes exceeds {self._limits.max_frame_bytes}")
        end = pos + 4 + size
        if end > limit:
            raise Incomplete(end)
        return pos + 4, end

    def _whole_message(self, buf: bytes | bytearray, start: int, end: int) -> tuple[bytes, MessageHead]:
        """The frame's payload, which must be exactly one complete message, and its header."""
        if self._walk:
            head = whole_message(buf, start, end, self._limits)
        else:
            try:
                head = read_head(buf, start, end)[0]
            except Incomplete:
                raise ProtocolError("truncated message in frame") from None
        return bytes(buf[start:end]), head

    def _ttheader(self, buf: bytes | bytearray, pos: int) -> tuple[Frame, int]:
        lim = self._limits
        if pos + 14 > len(buf):
            raise Incomplete(pos + 14)
        length, _magic, flags, seqid, words = _TTHEADER_FIXED.unpack_from(buf, pos)
        hbytes = words * 4
        if length > lim.max_frame_bytes + lim.max_header_bytes:
            raise ProtocolError(f"TTHeader frame of {length} bytes is too large")
        if words < 1 or hbytes > lim.max_header_bytes or 10 + hbytes > length:
            raise ProtocolError(f"bad TTHeader size {words} words for a {length}-byte frame")
        end = pos + 4 + length
        if end > len(buf):
            raise Incomplete(end)
        header = parse_info(bytes(buf[pos + 14 : pos + 14 + hbytes]))
        header.seqid, header.flags = seqid, flags
        start = pos + 14 + hbytes
        if end - start < 8:
            raise ProtocolError("TTHeader payload too short")
        inner = detect(buf, start)
        if inner is Transport.FRAMED:
            start, inner_end = self._frame_bounds(buf, start, end)
            if inner_end != end:
                raise ProtocolError("TTHeader-framed payload length does not match the header")
            return Frame(Transport.TTHEADER_FRAMED, *self._whole_message(buf, start, end), header), end
        if inner is not Transport.BUFFERED:
            raise ProtocolError("TTHeader inside a TTHeader")
        return Frame(Transport.TTHEADER, *self._whole_message(buf, start, end), header), end


def parse_info(info: bytes) -> Header:
    """Parse a TTHeader's header-info area (protocol id, transforms, info blocks, padding)."""
    if len(info) < 2:
        raise ProtocolError("TTHeader info too short")
    header = Header(protocol_id=info[0])
    if header.protocol_id not in _PROTOCOLS:
        raise ProtocolError(f"unsupported TTHeader protocol id {header.protocol_id}")
    if info[1]:
        raise ProtocolError("TTHeader transforms are not supported")
    pos = 2
    try:
        while pos < len(info):
            block = info[pos]
            pos += 1
            if block == INFO_PADDING:
                continue
            if block == INFO_KEYVALUE:
                count, pos = _u16(info, pos)
                for _ in range(count):
                    key, pos = _str16(info, pos)
                    header.strings[key], pos = _str16(info, pos)
            elif block == INFO_INTKEYVALUE:
                count, pos = _u16(info, pos)
                for _ in range(count):
                    ikey, pos = _u16(info, pos)
                    header.ints[ikey], pos = _str16(info, pos)
            elif block == INFO_ACL_TOKEN:
                header.acl_token, pos = _str16(info, pos)
            else:
                raise ProtocolError(f"invalid TTHeader info block id {block:#04x}")
    except IndexError:
        raise ProtocolError("TTHeader info block runs past the header") from None
    return header


def _u16(data: bytes, pos: int) -> tuple[int, int]:
    if pos + 2 > len(data):
        raise IndexError
    return _U16.unpack_from(data, pos)[0], pos + 2


def _str16(data: bytes, pos: int) -> tuple[str, int]:
    n, pos = _u16(data, pos)
    if pos + n > len(data):
        raise IndexError
    return data[pos : pos + n].decode("utf-8", "replace"), pos + n


def encode_info(strings: dict[str, str] | None = None, ints: dict[int, str] | None = None) -> bytes:
    """A header-info area: binary protocol, no transforms, KV blocks, zero padding to 4 bytes."""
    out = bytearray(b"\x00\x00")
    if strings:
        out += bytes([INFO_KEYVALUE]) + _U16.pack(len(strings))
        for key, value in strings.items():
            out += _pack_str16(key) + _pack_str16(value)
    if ints:
        out += bytes([INFO_INTKEYVALUE]) + _U16.pack(len(ints))
        for ikey, value in ints.items():
            out += _U16.pack(ikey) + _pack_str16(value)
    out += b"\x00" * (-len(out) % 4)
    return bytes(out)


def _pack_str16(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("TTHeader string longer than 65535 bytes")
    return _U16.pack(len(raw)) + raw


def checked_payload(frame: Frame, limits: WireLimits) -> bytes:
    """``frame``'s payload, proved one whole message within ``limits``: what thriftpy2's decoder
    may be given. A reader that does not walk has walked only the unframed ones."""
    if frame.transport is not Transport.BUFFERED:
        whole_message(frame.payload, 0, len(frame.payload), limits)
    return frame.payload


def wrap(transport: Transport, payload: bytes, seqid: int = 0, info: bytes = b"\x00\x00\x00\x00") -> bytes:
    """Put one message on the wire in ``transport``; ``seqid`` and ``info`` are for TTHeader."""
    if transport is Transport.BUFFERED:
        return payload
    if transport is Transport.FRAMED:
        return _U32.pack(len(payload)) + payload
    if transport is Transport.TTHEADER_FRAMED:
        payload = _U32.pack(len(payload)) + payload
    length = 10 + len(info) + len(payload)
    return _TTHEADER_FIXED.pack(length, TTHEADER_MAGIC, 0, seqid, len(info) // 4) + info + payload
