"""Property-based fuzzing of chatsvc's wire input: random bytes, truncations, bit flips, absurd
lengths and deep nesting, in every framing.

In process, the frame reader must only ever return whole frames or raise ``ProtocolError``. Against
a real chatsvc process, after every case the server must still answer a valid call on a new
connection, and its memory must stay bounded.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatsvc.settings import WireLimits
from chatsvc.wire import codec, framing
from chatsvc.wire.framing import Transport
from chatsvc.wire.idl import IMService, Message, PullRequest, SendRequest
from chatsvc.wire.scan import MAX_NAME_BYTES, ProtocolError

LIMITS = WireLimits(max_frame_bytes=1 << 20, max_string_bytes=1 << 20, max_container_items=10_000)


def valid_payloads() -> list[bytes]:
    send = IMService.Send_args(req=SendRequest(message=Message(Chat="a:b", Text="hi", Sender="a", SendTime=0)))
    pull = IMService.Pull_args(req=PullRequest(Chat="a:b", Cursor=0, Limit=5, Reverse=True))
    return [codec.encode("Send", codec.CALL, 1, send), codec.encode("Pull", codec.CALL, 2, pull)]


PAYLOADS = valid_payloads()


def in_framing(payload: bytes, transport: Transport) -> bytes:
    info = framing.encode_info(strings={"isn": "IMService"}, ints={framing.TO_METHOD: "Send"})
    return framing.wrap(transport, payload, 1, info)


def absurd_length(payload: bytes, offset: int, value: int) -> bytes:
    """Overwrite 4 bytes at ``offset`` (a length field, or not) with ``value``."""
    offset %= max(len(payload) - 4, 1)
    return payload[:offset] + struct.pack(">i", value) + payload[offset + 4:]


def deep_nesting(depth: int) -> bytes:
    """A Send call whose args struct holds ``depth`` nested structs (unknown field ids)."""
    head = codec.encode("Send", codec.CALL, 1, IMService.Send_args())[:-1]  # drop the args STOP
    return head + b"\x0c\x00\x63" * depth + b"\x00" * (depth + 1)


@st.composite
def hostile_inputs(draw: st.DrawFn) -> bytes:
    transport = draw(st.sampled_from(list(Transport)))
    base = in_framing(draw(st.sampled_from(PAYLOADS)), transport)
    kind = draw(st.sampled_from(["random", "truncate", "bitflip", "length", "nesting", "splice"]))
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=300))
    if kind == "truncate":
        return base[: draw(st.integers(1, len(base) - 1))]
    if kind == "bitflip":
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if kind == "length":
        value = draw(st.sampled_from([-1, -(2**31), 2**31 - 1, 1 << 24, 1 << 28, 70_000, 0x10000000]))
        return absurd_length(base, draw(st.integers(0, len(base))), value)
    if kind == "nesting":
        return framing.wrap(transport, deep_nesting(draw(st.integers(60, 5000))), 1)
    return base + draw(st.binary(min_size=1, max_size=64))  # trailing garbage after a valid call


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(data=hostile_inputs(), chunk=st.integers(1, 64))
def test_frame_reader_returns_whole_frames_or_raises_protocol_error(data, chunk):
    reader = framing.FrameReader(LIMITS)
    frames = []
    try:
        for i in range(0, len(data), chunk):
            frames += reader.feed(data[i : i + chunk])
    except ProtocolError:
        pass
    for frame in frames:  # every frame returned decodes as a complete message
        args = getattr(IMService, frame.head.name + "_args", IMService.Send_args)()
        try:
            codec.decode_body(frame.payload, args)
        except ProtocolError:
            pass  # well-formed framing around a body thriftpy2 rejects: the server answers PROTOCOL_ERROR
    assert reader.buffered <= LIMITS.max_frame_bytes + LIMITS.max_header_bytes


def _read_all(reader: framing.FrameReader, data: bytes, chunk: int) -> tuple[list, str | None]:
    frames: list = []
    try:
        for i in range(0, len(data), chunk):
            frames += reader.feed(data[i : i + chunk])
    except ProtocolError as exc:
        return frames, str(exc)
    return frames, None if reader.error is None else str(reader.error)


@st.composite
def framed_calls(draw: st.DrawFn) -> bytes:
    """Framed calls, one of them with its method name's length set to anything near its size."""
    payloads = draw(st.lists(st.sampled_from(PAYLOADS), min_size=1, max_size=4))
    frames = [framing.wrap(Transport.FRAMED, p) for p in payloads]
    i = draw(st.integers(0, len(frames) - 1))
    n = draw(st.integers(-2, len(frames[i])))
    frames[i] = frames[i][:8] + struct.pack(">i", n) + frames[i][12:]
    if draw(st.booleans()):  # a call with a method name at, or just over, the longest allowed
        n = draw(st.sampled_from([MAX_NAME_BYTES, MAX_NAME_BYTES + 1]))
        frames.append(framing.wrap(Transport.FRAMED, struct.pack(">Ii", 0x80010001, n) + b"m" * n + b"\0" * 5))
    return b"".join(frames)


@settings(max_examples=2000, deadline=None, derandomize=True)
@given(data=st.one_of(hostile_inputs(), framed_calls()), more=st.lists(st.sampled_from(PAYLOADS), max_size=3),
       chunk=st.integers(1, 300), max_frame=st.sampled_from([1 << 20, 40, 64]))
def test_framed_fast_path_reads_as_the_general_path(data, more, chunk, max_frame):
    """A reader that does not walk cuts framed messages with one unpack (``_framed``): its frames,
    transport and errors must be exactly those of the general path, on any input and chunking."""
    data += b"".join(framing.wrap(Transport.FRAMED, p) for p in more)
    limits = WireLimits(max_frame_bytes=max_frame, max_string_bytes=1 << 20)
    fast = framing.FrameReader(limits, walk=False)
    general = framing.FrameReader(limits, walk=False)
    general._framed = lambda buf, pos: None  # type: ignore[method-assign]
    assert _read_all(fast, data, chunk) == _read_all(general, data, chunk)
    assert fast.last_transport == general.last_transport and fast.buffered == general.buffered


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def exchange(port: int, data: bytes, timeout: float = 0.3) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.settimeout(timeout)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)
        except (TimeoutError, ConnectionError):
            return b""


def valid_call_works(port: int) -> bool:
    reply = exchange(port, in_framing(PAYLOADS[1], Transport.FRAMED), timeout=5)
    frames = framing.FrameReader(LIMITS).feed(reply)
    assert len(frames) == 1, f"reply to a valid call: {reply!r}"
    result = IMService.Pull_result()
    codec.decode_body(frames[0].payload, result)
    assert result.success is not None and result.success.Code == 0, result
    return True


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory, redis_proc):
    from tests.procs import start_chatsvc

    logdir = tmp_path_factory.mktemp("fuzz")
    proc = start_chatsvc(logdir, f"redis://{redis_proc.addr}/0", None, "--max-frame-bytes", str(1 << 20),
                         "--read-timeout", "0.5")
    yield proc
    proc.kill()


CASES = {"tried": 0}


@pytest.mark.slow
@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=hostile_inputs())
def test_live_server_survives_hostile_input(fuzz_target, data):
    exchange(fuzz_target.port, data)
    CASES["tried"] += 1
    assert fuzz_target.popen.poll() is None, fuzz_target.output()
    assert valid_call_works(fuzz_target.port)


@pytest.mark.slow
def test_live_server_memory_stays_bounded(fuzz_target):
    """After the hostile cases (run first, in file order), memory has not grown without bound."""
    before = rss_kib(fuzz_target.popen.pid)
    for size in (1 << 24, 1 << 28, 2**31 - 1):  # declared sizes far over the limit, never sent
        for transport in Transport:
            exchange(fuzz_target.port, absurd_length(in_framing(PAYLOADS[0], transport), 0, size))
            exchange(fuzz_target.port, framing.wrap(transport, absurd_length(PAYLOADS[0], 16, size), 1))
    after = rss_kib(fuzz_target.popen.pid)
    print(f"\nwire fuzz: {CASES['tried']} live cases; chatsvc RSS {before} KiB -> {after} KiB")
    assert after - before < 32 * 1024
    assert valid_call_works(fuzz_target.port)
