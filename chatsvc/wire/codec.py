"""Complete Thrift messages to thriftpy2 structs and back, with thriftpy2's Cython codec.

Only complete messages reach this module (``framing`` proved each one whole), because the Cython
decoder over a memory buffer reads past a short message without raising.
"""

from __future__ import annotations

from struct import Struct
from typing import Any, NamedTuple

from thriftpy2.thrift import TApplicationException, TMessageType

try:  # the Cython codec; the pure-Python one is a fallback for platforms without a wheel
    from thriftpy2.protocol.cybin import TCyBinaryProtocol as _Protocol  # type: ignore[attr-defined]
    from thriftpy2.transport.memory import TCyMemoryBuffer as _Buffer  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    from thriftpy2.protocol.binary import TBinaryProtocol as _Protocol
    from thriftpy2.transport.memory import TMemoryBuffer as _Buffer

from chatsvc.wire.scan import VERSION_1, ProtocolError

CALL, REPLY, EXCEPTION, ONEWAY = (TMessageType.CALL, TMessageType.REPLY, TMessageType.EXCEPTION,
                                  TMessageType.ONEWAY)


_MESSAGE_HEAD = Struct(">Ii")  # strict binary: version word with the type, name length
_I32 = Struct(">i")
RESULT_SUCCESS = b"\x0c\x00\x00"  # field 0 ("success", a struct) of a method's result struct


class Encoded(NamedTuple):
    """A struct already in its binary encoding, written as is: a handler's result (a page from
    ``wire.pages``, or a reply made once with ``encoded``), or a call's args (``wire.sends``)."""

    data: bytes


def encoded(struct: Any) -> Encoded:
    """``struct`` in thriftpy2's binary encoding, for a reply that is always the same."""
    buf = _Buffer()
    _Protocol(buf).write_struct(struct)
    return Encoded(buf.getvalue())


def _head(name: str, mtype: int, seqid: int) -> bytes:
    """A strict-binary message header."""
    raw = name.encode()
    return _MESSAGE_HEAD.pack(VERSION_1 | mtype, len(raw)) + raw + _I32.pack(seqid)


def encode_reply(name: str, seqid: int, result: Encoded) -> bytes:
    """A REPLY whose result struct's ``success`` is ``result``: what ``encode`` writes for it."""
    return b"".join((_head(name, REPLY, seqid), RESULT_SUCCESS, result.data, b"\x00"))


def encode_call(name: str, seqid: int, args: Encoded) -> bytes:
    """A CALL whose args struct is ``args``: what ``encode`` writes for it."""
    return _head(name, CALL, seqid) + args.data


def encode(name: str, mtype: int, seqid: int, struct: Any) -> bytes:
    """One strict-binary message."""
    buf = _Buffer()
    proto = _Protocol(buf)
    proto.write_message_begin(name, mtype, seqid)
    proto.write_struct(struct)
    proto.write_message_end()
    return buf.getvalue()  # type: ignore[no-any-return]


def decode_body(payload: bytes, struct: Any) -> tuple[str, int, int]:
    """Read the message header and fill ``struct`` from the body; returns (name, type, seqid)."""
    return _read(_Protocol(_Buffer(payload)), struct)


def _read(proto: Any, struct: Any) -> tuple[str, int, int]:
    try:
        name, mtype, seqid = proto.read_message_begin()
        proto.read_struct(struct)
    except Exception as exc:  # thriftpy2 raises assorted errors on malformed input
        raise ProtocolError(f"cannot decode message: {exc}") from None
    return name, mtype, seqid


class Codec:
    """``encode`` and ``decode_body`` over two buffers kept from one message to the next: a new
    buffer and protocol per message cost up to half as much as encoding a Send reply itself.

    Not thread-safe: one per event loop (the server's). A buffer that grew past
    ``KEEP_BYTES`` for a large message is replaced, so that it does not stay that large.
    """

    KEEP_BYTES = 64 * 1024

    def __init__(self) -> None:
        self._out = _Buffer()
        self._writer = _Protocol(self._out)
        self._in = _Buffer()
        self._reader = _Protocol(self._in)

    def encode(self, name: str, mtype: int, seqid: int, struct: Any) -> bytes:
        """One strict-binary message (as the module's ``encode``)."""
        self._out.setvalue(b"")
        writer = self._writer
        writer.write_message_begin(name, mtype, seqid)
        writer.write_struct(struct)
        writer.write_message_end()
        data: bytes = self._out.getvalue()
        if len(data) > self.KEEP_BYTES:
            self._out = _Buffer()
            self._writer = _Protocol(self._out)
        return data

    def decode_body(self, payload: bytes, struct: Any) -> tuple[str, int, int]:
        """Read the message header and fill ``struct`` from the body (as the module's ``decode_body``)."""
        if len(payload) > self.KEEP_BYTES:
            return decode_body(payload, struct)
        self._in.setvalue(payload)
        return _read(self._reader, struct)


def application_error(message: str, kind: int) -> TApplicationException:
    return TApplicationException(type=kind, message=message)
