"""Complete Thrift messages to thriftpy2 structs and back, with thriftpy2's Cython codec.

Only complete messages reach this module (``framing`` proved each one whole), because the Cython
decoder over a memory buffer reads past a short message without raising.
"""

from __future__ import annotations

from typing import Any

from thriftpy2.thrift import TApplicationException, TMessageType

try:  # the Cython codec; the pure-Python one is a fallback for platforms without a wheel
    from thriftpy2.protocol.cybin import TCyBinaryProtocol as _Protocol  # type: ignore[attr-defined]
    from thriftpy2.transport.memory import TCyMemoryBuffer as _Buffer  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    from thriftpy2.protocol.binary import TBinaryProtocol as _Protocol
    from thriftpy2.transport.memory import TMemoryBuffer as _Buffer

from chatsvc.wire.scan import ProtocolError

CALL, REPLY, EXCEPTION, ONEWAY = (TMessageType.CALL, TMessageType.REPLY, TMessageType.EXCEPTION,
                                  TMessageType.ONEWAY)


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
    proto = _Protocol(_Buffer(payload))
    try:
        name, mtype, seqid = proto.read_message_begin()
        proto.read_struct(struct)
    except Exception as exc:  # thriftpy2 raises assorted errors on malformed input
        raise ProtocolError(f"cannot decode message: {exc}") from None
    return name, mtype, seqid


def application_error(message: str, kind: int) -> TApplicationException:
    return TApplicationException(type=kind, message=message)
