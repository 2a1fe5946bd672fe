"""Byte-level interop: the Kitex wire vectors (kitex-wire.md section A3; see docs/wire.md), raw to chatsvc.

Requests are the exact bytes a Kitex client puts on the wire (strict binary in Kitex FastWrite
field order; buffered, framed, TTHeader and TTHeader-framed). Replies are read off the socket and
parsed here by an independent strict-binary / TTHeader parser (no chatsvc or thriftpy2 code), then
checked: the framing matches the request's, the seqid is echoed, a TTHeader reply carries a valid
header (MsgType 22 = "2" when the call carried Kitex int keys, otherwise an empty `00 00 00 00`
info area, as a default Kitex server replies), and the payload is Code 0 "success".
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import pytest

pytestmark = pytest.mark.interop

# --- the vectors, verbatim from kitex-wire.md A3 -------------------------------------------------

# Send(req=SendRequest{message=Message{Chat:"a:b", Text:"hi", Sender:"a", SendTime:0}}), seqid 1.
VECTOR_A = bytes.fromhex(
    "800100010000000453656e64000000010c00010c00010a000400000000000000000b000100000003613a620b"
    "00020000000268690b00030000000161000000")
VECTOR_B = bytes.fromhex("0000003f") + VECTOR_A
VECTOR_C = bytes.fromhex("0000004d1000000000000001000100000000") + VECTOR_A
VECTOR_D = bytes.fromhex(
    "00000069100000000000000100080000010001000369736e0009494d536572766963651000010009000453656e64"
) + VECTOR_A
VECTOR_E = bytes.fromhex("000000511000000000000001000100000000") + bytes.fromhex("0000003f") + VECTOR_A
# Pull(req=PullRequest{Chat:"a:b", Cursor:0, Limit:10, Reverse:false}), seqid 2, fields 2,3,4,1.
PULL_CALL = bytes.fromhex(
    "800100010000000450756c6c000000020c00020a000200000000000000000800030000000a020004000b00010000"
    "0003613a620000")
# Replies of a default Kitex server, for reference in failure messages.
REPLY_RA = bytes.fromhex("800100020000000453656e64000000010c0000080001000000000b00020000000773756363657373"
                         "0000")

BUFFERED, FRAMED, TTHEADER, TTHEADER_FRAMED = "buffered", "framed", "ttheader", "ttheader_framed"
TTHEADER_MAGIC = 0x1000
MSG_TYPE, TO_METHOD = 22, 9  # Kitex int keys
CALL, REPLY, EXCEPTION = 1, 2, 3
T_STOP, T_BOOL, T_BYTE, T_DOUBLE, T_I16, T_I32, T_I64, T_STRING, T_STRUCT, T_MAP, T_SET, T_LIST = (
    0, 2, 3, 4, 6, 8, 10, 11, 12, 13, 14, 15)
UNKNOWN_METHOD = 1


# --- encoders (checked against the vectors above by test_encoders_reproduce_the_vectors) ----------

def _str(s: str) -> bytes:
    raw = s.encode()
    return struct.pack(">i", len(raw)) + raw


def message_begin(name: str, mtype: int, seqid: int) -> bytes:
    return struct.pack(">I", 0x80010000 | mtype) + _str(name) + struct.pack(">i", seqid)


def send_call(seqid: int, chat: str = "a:b", text: str = "hi", sender: str = "a") -> bytes:
    """A Send CALL in Kitex FastWrite order: Message field 4 (SendTime) first, then 1, 2, 3."""
    message = (b"\x0a\x00\x04" + struct.pack(">q", 0) + b"\x0b\x00\x01" + _str(chat)
               + b"\x0b\x00\x02" + _str(text) + b"\x0b\x00\x03" + _str(sender) + b"\x00")
    return message_begin("Send", CALL, seqid) + b"\x0c\x00\x01" + b"\x0c\x00\x01" + message + b"\x00\x00"


def pull_call(seqid: int, chat: str = "a:b", cursor: int = 0, limit: int = 10, reverse: bool = False) -> bytes:
    """A Pull CALL (args field id 2) in Kitex FastWrite order: PullRequest fields 2, 3, 4, 1."""
    req = (b"\x0a\x00\x02" + struct.pack(">q", cursor) + b"\x08\x00\x03" + struct.pack(">i", limit)
           + b"\x02\x00\x04" + bytes([reverse]) + b"\x0b\x00\x01" + _str(chat) + b"\x00")
    return message_begin("Pull", CALL, seqid) + b"\x0c\x00\x02" + req + b"\x00"


def header_info(strings: dict[str, str] | None = None, ints: dict[int, str] | None = None) -> bytes:
    """TTHeader info area: protocol 0 (binary), 0 transforms, KV blocks, zero padding to 4 bytes."""
    out = bytearray(b"\x00\x00")
    if strings:
        out += b"\x01" + struct.pack(">H", len(strings))
        for k, v in strings.items():
            out += struct.pack(">H", len(k)) + k.encode() + struct.pack(">H", len(v)) + v.encode()
    if ints:
        out += b"\x10" + struct.pack(">H", len(ints))
        for ik, v in ints.items():
            out += struct.pack(">HH", ik, len(v)) + v.encode()
    out += b"\x00" * (-len(out) % 4)
    return bytes(out)


def wrap(kind: str, payload: bytes, seqid: int = 0, info: bytes = b"\x00\x00\x00\x00") -> bytes:
    if kind == BUFFERED:
        return payload
    if kind == FRAMED:
        return struct.pack(">I", len(payload)) + payload
    if kind == TTHEADER_FRAMED:
        payload = struct.pack(">I", len(payload)) + payload
    return struct.pack(">IHHiH", 10 + len(info) + len(payload), TTHEADER_MAGIC, 0, seqid, len(info) // 4) + info + payload


def kitex_info(method: str, framed: bool) -> bytes:
    """What a Kitex client with ClientTTHeaderHandler sends (plus the isn string key)."""
    return header_info(strings={"isn": "IMService"},
                       ints={3: "demo.gateway", 20: "/api/" + method.lower(), 6: "demo.rpc", 9: method,
                             22: "1", 1: "framed" if framed else "unframed", 12: "1000"})


# --- an independent strict-binary and TTHeader reader ---------------------------------------------

class Short(Exception):
    """Not enough bytes yet."""


class Struct(dict):  # field id -> value, with the wire type of each field in .types
    def __init__(self) -> None:
        super().__init__()
        self.types: dict[int, int] = {}


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise Short
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def value(self, t: int) -> Any:
        fixed = {T_BOOL: ">?", T_BYTE: ">b", T_DOUBLE: ">d", T_I16: ">h", T_I32: ">i", T_I64: ">q"}
        if t in fixed:
            return self.unpack(fixed[t])
        if t == T_STRING:
            return self.take(self.unpack(">i"))
        if t == T_STRUCT:
            s = Struct()
            while (ft := self.unpack(">b")) != T_STOP:
                fid = self.unpack(">h")
                s[fid], s.types[fid] = self.value(ft), ft
            return s
        if t == T_MAP:
            kt, vt, n = self.unpack(">b"), self.unpack(">b"), self.unpack(">i")
            return {self.value(kt): self.value(vt) for _ in range(n)}
        if t in (T_SET, T_LIST):
            et, n = self.unpack(">b"), self.unpack(">i")
            return [self.value(et) for _ in range(n)]
        raise AssertionError(f"invalid Thrift type {t}")


@dataclass
class Msg:
    name: str
    mtype: int
    seqid: int
    body: Struct


def parse_message(data: bytes) -> tuple[Msg, int]:
    """One strict-binary message from the start of ``data``; returns it and its length."""
    r = _Reader(data)
    word = r.unpack(">I")
    assert word & 0xFFFF0000 == 0x80010000, f"not strict binary: {data[:8].hex()}"
    name = r.take(r.unpack(">i")).decode()
    seqid = r.unpack(">i")
    body = r.value(T_STRUCT)
    return Msg(name, word & 0xFF, seqid, body), r.pos


@dataclass
class TTHeader:
    length: int
    flags: int
    seqid: int
    info: bytes
    protocol: int = 0
    transforms: int = 0
    strings: dict[str, str] = field(default_factory=dict)
    ints: dict[int, str] = field(default_factory=dict)


def parse_info(h: TTHeader) -> None:
    r = _Reader(h.info)
    h.protocol, h.transforms = r.unpack(">B"), r.unpack(">B")
    r.take(h.transforms)
    while r.pos < len(h.info):
        block = r.unpack(">B")
        if block == 0x00:
            continue
        if block == 0x01:
            for _ in range(r.unpack(">H")):
                k = r.take(r.unpack(">H")).decode()
                h.strings[k] = r.take(r.unpack(">H")).decode()
        elif block == 0x10:
            for _ in range(r.unpack(">H")):
                ik = r.unpack(">H")
                h.ints[ik] = r.take(r.unpack(">H")).decode()
        elif block == 0x11:
            r.take(r.unpack(">H"))
        else:
            raise AssertionError(f"invalid TTHeader info block id {block:#x} in {h.info.hex()}")


@dataclass
class Reply:
    kind: str
    raw: bytes
    msg: Msg
    header: TTHeader | None = None


class Conn:
    def __init__(self, addr: tuple[str, int]) -> None:
        self.sock = socket.create_connection(addr, timeout=5)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed by chatsvc; unread bytes: {self.buf.hex()}")
        self.buf += chunk

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_reply(self, kind: str) -> Reply:
        """Read one reply framed as ``kind``; the framing must hold exactly one message."""
        if kind == BUFFERED:
            while True:
                try:
                    msg, n = parse_message(self.buf)
                    break
                except Short:
                    self._fill()
            return Reply(kind, self.read_exact(n), msg)
        if kind == FRAMED:
            size = struct.unpack(">I", self.read_exact(4))[0]
            payload = self.read_exact(size)
            msg, n = parse_message(payload)
            assert n == size, f"frame of {size} bytes holds a {n}-byte message"
            return Reply(kind, struct.pack(">I", size) + payload, msg)
        fixed = self.read_exact(14)
        length, magic, flags, seqid, words = struct.unpack(">IHHiH", fixed)
        assert magic == TTHEADER_MAGIC, f"reply is not a TTHeader: {fixed.hex()}"
        assert length & 0x80000000 == 0 and words >= 1 and 10 + 4 * words <= length, fixed.hex()
        rest = self.read_exact(length - 10)
        header = TTHeader(length, flags, seqid, rest[:4 * words])
        parse_info(header)
        payload = rest[4 * words:]
        if kind == TTHEADER_FRAMED:
            size = struct.unpack(">I", payload[:4])[0]
            assert size == len(payload) - 4, f"TTHeader-framed inner length {size}, payload {len(payload) - 4}"
            payload = payload[4:]
        else:
            assert payload[:2] == b"\x80\x01", f"TTHeader payload is not unframed strict binary: {payload[:8].hex()}"
        msg, n = parse_message(payload)
        assert n == len(payload), f"{len(payload) - n} trailing bytes after the message"
        return Reply(kind, fixed + rest, msg, header)


@pytest.fixture
def conn(chatsvc_addr: tuple[str, int]):
    c = Conn(chatsvc_addr)
    yield c
    c.close()


# --- checks ---------------------------------------------------------------------------------------

def check_header(reply: Reply, seqid: int, kitex_keys: bool, msg_type: str = "2") -> None:
    h = reply.header
    if reply.kind in (BUFFERED, FRAMED):
        assert h is None
        return
    assert h is not None
    assert h.length == len(reply.raw) - 4
    assert (h.flags, h.seqid, h.protocol, h.transforms) == (0, seqid, 0, 0), h
    if kitex_keys:
        assert h.ints.get(MSG_TYPE) == msg_type, h  # what Kitex's ServerTTHeaderHandler writes
    else:
        assert h.info == b"\x00\x00\x00\x00", h  # a default Kitex server's fresh, empty header


def check_send_ok(reply: Reply, seqid: int) -> None:
    m = reply.msg
    assert (m.name, m.mtype, m.seqid) == ("Send", REPLY, seqid), f"{m}; raw {reply.raw.hex()}; expected like {REPLY_RA.hex()}"
    assert list(m.body) == [0] and m.body.types[0] == T_STRUCT, m.body  # result field 0 "success"
    resp = m.body[0]
    assert (resp.types.get(1), resp.types.get(2)) == (T_I32, T_STRING), resp
    assert (resp[1], resp[2]) == (0, b"success"), resp


def check_pull_ok(reply: Reply, seqid: int, texts: list[bytes], chat: bytes = b"a:b") -> Struct:
    m = reply.msg
    assert (m.name, m.mtype, m.seqid) == ("Pull", REPLY, seqid), m
    assert list(m.body) == [0] and m.body.types[0] == T_STRUCT, m.body
    resp = m.body[0]
    assert (resp[1], resp[2]) == (0, b"success"), resp
    assert resp.types[3] == T_LIST and resp.types[4] == T_BOOL, resp
    assert [msg[2] for msg in resp[3]] == texts, resp
    assert all(msg[1] == chat and isinstance(msg[4], int) and msg[4] > 0 for msg in resp[3]), resp
    assert resp[4] is False, resp
    return resp


# --- tests ----------------------------------------------------------------------------------------

def test_encoders_reproduce_the_vectors() -> None:
    """Guards this module's own encoders against the documented bytes."""
    assert send_call(1) == VECTOR_A and len(VECTOR_A) == 63
    assert wrap(FRAMED, VECTOR_A) == VECTOR_B and len(VECTOR_B) == 67
    assert wrap(TTHEADER, VECTOR_A, 1) == VECTOR_C and len(VECTOR_C) == 81
    assert wrap(TTHEADER, VECTOR_A, 1, header_info({"isn": "IMService"}, {9: "Send"})) == VECTOR_D
    assert len(VECTOR_D) == 109
    assert wrap(TTHEADER_FRAMED, VECTOR_A, 1) == VECTOR_E and len(VECTOR_E) == 85
    assert pull_call(2) == PULL_CALL and len(PULL_CALL) == 53
    assert parse_message(REPLY_RA)[0].body == {0: {1: 0, 2: b"success"}}


# (request bytes, transport, whether the header carries Kitex int keys)
VECTORS = {
    "A-buffered": (VECTOR_A, BUFFERED, False),
    "B-framed": (VECTOR_B, FRAMED, False),
    "C-ttheader-minimal": (VECTOR_C, TTHEADER, False),
    "D-ttheader-isn-tomethod": (VECTOR_D, TTHEADER, True),
    "E-ttheader-framed": (VECTOR_E, TTHEADER_FRAMED, False),
}


@pytest.mark.parametrize("name", list(VECTORS))
def test_send_vector(conn: Conn, name: str) -> None:
    data, kind, kitex_keys = VECTORS[name]
    conn.send(data)
    reply = conn.read_reply(kind)
    check_header(reply, 1, kitex_keys)
    check_send_ok(reply, 1)
    if name == "D-ttheader-isn-tomethod":
        assert reply.header is not None and reply.header.ints == {MSG_TYPE: "2"}, reply.header
    if name.startswith(("C", "E")):
        assert reply.raw[4:14] == bytes.fromhex("10000000000000010001"), reply.raw.hex()


@pytest.mark.parametrize("name", list(VECTORS))
def test_pull_in_kitex_field_order(conn: Conn, name: str) -> None:
    """Send (the vector), then the Pull CALL with fields 2,3,4,1, in the same framing and connection."""
    data, kind, kitex_keys = VECTORS[name]
    conn.send(data)
    check_send_ok(conn.read_reply(kind), 1)
    info = header_info({"isn": "IMService"}, {TO_METHOD: "Pull"}) if kitex_keys else b"\x00" * 4
    conn.send(wrap(kind, PULL_CALL, seqid=2, info=info))
    reply = conn.read_reply(kind)
    check_header(reply, 2, kitex_keys)
    resp = check_pull_ok(reply, 2, [b"hi"])
    assert resp[3][0][3] == b"a" and resp[3][0].types[4] == T_I64, resp


# (transport, header style): Kitex's meta handler keys, or the minimal header of a plain TTHeader client.
TWO_CALLS = [(TTHEADER, "kitex"), (TTHEADER_FRAMED, "minimal"), (TTHEADER_FRAMED, "kitex")]


@pytest.mark.parametrize("pipelined", [False, True], ids=["one-at-a-time", "pipelined"])
@pytest.mark.parametrize(("kind", "style"), TWO_CALLS, ids=[f"{k}-{s}" for k, s in TWO_CALLS])
def test_two_ttheader_calls_on_one_connection(conn: Conn, kind: str, style: str, pipelined: bool) -> None:
    """Two Kitex-style calls back to back on one connection, each with its own seqid and header.

    One at a time (as a Kitex client does): Send then Pull. Pipelined (both written at once):
    two Sends, then a Pull to check both were stored; chatsvc may run pipelined calls
    concurrently, so only the set of stored texts is fixed, not their order. The seqids are ones a
    long-running Kitex process produces (large, and negative after wrap).
    """
    kitex = style == "kitex"
    framed_payload = kind == TTHEADER_FRAMED

    def call(payload: bytes, seqid: int, method: str) -> bytes:
        return wrap(kind, payload, seqid, kitex_info(method, framed_payload) if kitex else b"\x00" * 4)

    seq1, seq2, seq3 = 0x7FFFFFF0, -2147483000, 3
    first = call(send_call(seq1, "a:b", "first", "b"), seq1, "Send")
    if pipelined:
        conn.send(first + call(send_call(seq2, "b:a", "second", "a"), seq2, "Send"))
        replies = [conn.read_reply(kind), conn.read_reply(kind)]
        for reply, seqid in zip(replies, (seq1, seq2), strict=True):
            check_header(reply, seqid, kitex)
            check_send_ok(reply, seqid)
        conn.send(call(pull_call(seq3, "b:a", cursor=0, limit=5), seq3, "Pull"))
        pulled = conn.read_reply(kind)
        check_header(pulled, seq3, kitex)
        texts = [m[2] for m in pulled.msg.body[0][3]]
        check_pull_ok(pulled, seq3, texts)
        assert sorted(texts) == [b"first", b"second"], texts
    else:
        conn.send(first)
        replies = [conn.read_reply(kind)]
        check_header(replies[0], seq1, kitex)
        check_send_ok(replies[0], seq1)
        conn.send(call(pull_call(seq2, "b:a", cursor=0, limit=5), seq2, "Pull"))
        replies.append(conn.read_reply(kind))
        check_header(replies[1], seq2, kitex)
        check_pull_ok(replies[1], seq2, [b"first"])  # the canonical chat "a:b", though asked as "b:a"
    if kitex:
        assert all(r.header is not None and r.header.ints == {MSG_TYPE: "2"} for r in replies), replies


FOO_CALL = message_begin("Foo", CALL, 77) + b"\x00"  # an empty args struct


@pytest.mark.parametrize(("kind", "kitex_keys"), [(BUFFERED, False), (FRAMED, False), (TTHEADER, True),
                                                  (TTHEADER_FRAMED, False)],
                         ids=[BUFFERED, FRAMED, "ttheader-kitex", TTHEADER_FRAMED])
def test_unknown_method(conn: Conn, kind: str, kitex_keys: bool) -> None:
    info = kitex_info("Foo", kind == TTHEADER_FRAMED) if kitex_keys else b"\x00" * 4
    conn.send(wrap(kind, FOO_CALL, seqid=77, info=info))
    reply = conn.read_reply(kind)
    check_header(reply, 77, kitex_keys, msg_type="3")
    m = reply.msg
    assert (m.name, m.mtype, m.seqid) == ("Foo", EXCEPTION, 77), m
    # TApplicationException {1: message STRING, 2: type I32}
    assert m.body.types == {1: T_STRING, 2: T_I32}, m.body
    assert m.body[2] == UNKNOWN_METHOD, m.body
    assert b"Foo" in m.body[1], m.body
