"""``ThriftServer`` in-process over real sockets: ordering, errors, timeouts, limits, shutdown.

Most tests serve a handler double (no Redis); the last ones run the real wiring
(``chatsvc.app.running``) over the ``redis_url`` database.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator, Callable

import pytest
from thriftpy2.thrift import TApplicationException

from chatsvc.app import running
from chatsvc.handler import ARGS_READERS
from chatsvc.server import ServerLimits, ThriftServer
from chatsvc.settings import ChatsvcSettings, WireLimits
from chatsvc.wire import codec, idl
from chatsvc.wire.framing import RPC_TIMEOUT, Frame, FrameReader, Transport, encode_info, wrap

A = bytes.fromhex(
    "800100010000000453656e64000000010c00010c00010a000400000000000000000b000100000003613a62"
    "0b00020000000268690b00030000000161000000"
)
READ_TIMEOUT = 5.0


class Double:
    """A handler double: Send sleeps ``delays[text]`` seconds (or until ``gates[text]`` is set)."""

    def __init__(self) -> None:
        self.delays: dict[str, float | None] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []
        self.completed: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.any_started = asyncio.Event()

    async def Send(self, req):  # noqa: N802
        text = req.message.Text
        self.started.append(text)
        self.any_started.set()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if text == "crash":
                raise RuntimeError("handler bug")
            if text in self.gates:
                await self.gates[text].wait()
            delay = self.delays.get(text, 0)
            if delay is not None:  # None: answer without yielding to the event loop at all
                await asyncio.sleep(delay)
        finally:
            self.in_flight -= 1
        self.completed.append(text)
        return idl.SendResponse(Code=0, Msg=f"done {text}")

    async def Pull(self, req):  # noqa: N802
        return idl.PullResponse(Code=0, Msg="success", Messages=[], HasMore=False, NextCursor=0)


def send_call(text: str, seqid: int, transport: Transport = Transport.FRAMED, ints: dict[int, str] | None = None,
              name: str = "Send") -> bytes:
    args = idl.IMService.Send_args(
        req=idl.SendRequest(message=idl.Message(Chat="a:b", Text=text, Sender="a", SendTime=0)))
    payload = codec.encode(name, codec.CALL, seqid, args)
    info = encode_info(ints=ints) if ints else b"\x00" * 4
    return wrap(transport, payload, seqid, info)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames = FrameReader(WireLimits())
        self.pending: list[Frame] = []

    open_clients: list[Client] = []

    @classmethod
    async def connect(cls, port: int) -> Client:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        cls.open_clients.append(client)
        return client

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self, timeout: float = READ_TIMEOUT) -> Frame:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError("connection closed before a reply")
            self.pending += self.frames.feed(data)
        return self.pending.pop(0)

    async def reply(self, method: str = "Send", timeout: float = READ_TIMEOUT):
        """The next reply as (frame, mtype, seqid, result-or-exception)."""
        frame = await self.frame(timeout)
        result = getattr(idl.IMService, method + "_result")()
        name, mtype, seqid = codec.decode_body(frame.payload, result)
        if mtype == codec.EXCEPTION:
            exc = TApplicationException()
            codec.decode_body(frame.payload, exc)
            return frame, mtype, seqid, exc
        assert name == method
        return frame, mtype, seqid, result.success

    async def call(self, text: str, seqid: int = 1, transport: Transport = Transport.FRAMED) -> str:
        self.write(send_call(text, seqid, transport))
        frame, mtype, got_seqid, resp = await self.reply()
        assert (mtype, got_seqid, frame.transport) == (codec.REPLY, seqid, transport)
        return resp.Msg

    async def eof(self, timeout: float = READ_TIMEOUT) -> bool:
        """True if the server closed the connection (EOF or reset) with no more bytes."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except (ConnectionResetError, BrokenPipeError):
            return True
        assert data == b"", f"expected EOF, got {data!r}"
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def start_server(handler, **limits) -> tuple[ThriftServer, int]:
    wire = limits.pop("wire", WireLimits())
    server = ThriftServer(idl.IMService, handler, ServerLimits(wire, **limits), readers=ARGS_READERS)
    await server.start("127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    """Close every client a test opened, even when the test failed half-way."""
    yield
    while Client.open_clients:
        await Client.open_clients.pop().close()


@pytest.fixture
def double() -> Double:
    return Double()


@pytest.fixture
async def served(double) -> AsyncIterator[tuple[ThriftServer, int]]:
    server, port = await start_server(double)
    yield server, port
    await server.close(1.0)


# --- ordering ------------------------------------------------------------------------------------


async def settled(condition: Callable[[], bool], timeout: float = READ_TIMEOUT) -> None:
    """Until ``condition()`` holds, at most ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


@pytest.mark.parametrize("transport", list(Transport))
async def test_pipelined_replies_come_in_request_order(served, double, transport):
    _, port = served
    client = await Client.connect(port)
    names = [f"m{i}" for i in range(10)]
    double.gates.update({name: asyncio.Event() for name in names})
    client.write(b"".join(send_call(name, 100 + i, transport) for i, name in enumerate(names)))
    await settled(lambda: len(double.started) == 10)
    # The handler finishes them last first, each after the one behind it: the server must reorder.
    # (Gates, not delays: on a loaded machine, timers 5 ms apart could fire in either order.)
    for name in reversed(names):
        double.gates[name].set()
        await settled(lambda name=name: double.completed[-1:] == [name])
    replies = [await client.reply() for _ in range(10)]
    for i, (frame, mtype, seqid, resp) in enumerate(replies):
        assert mtype == codec.REPLY
        assert seqid == 100 + i
        assert resp == idl.SendResponse(Code=0, Msg=f"done m{i}")
        assert frame.transport is transport
        if transport.has_header:
            assert frame.header.seqid == 100 + i
    assert double.completed == list(reversed(names))
    assert double.max_in_flight == 10
    await client.close()


@pytest.mark.parametrize("flush_bytes", [0, 1, 8192])
async def test_replies_completing_together_keep_their_order_however_they_are_flushed(double, flush_bytes):
    """Replies that complete in one loop pass are written at its end (0), each at once (1), or in
    writes of 8 KiB: in every case in the calls' order, none lost."""
    server, port = await start_server(double, flush_bytes=flush_bytes)
    try:
        client = await Client.connect(port)
        # The first call is slowest: the other 39 complete first and wait, then all go together.
        double.delays["m0"] = 0.05
        client.write(b"".join(send_call(f"m{i}" + "x" * 300, 100 + i) for i in range(40)))
        replies = [await client.reply() for _ in range(40)]
        assert [(seqid, resp.Msg) for _, _, seqid, resp in replies] == [
            (100 + i, f"done m{i}" + "x" * 300) for i in range(40)]
        await client.close()
    finally:
        await server.close(1.0)


async def test_replies_match_each_calls_transport_on_one_connection(served, double):
    _, port = served
    client = await Client.connect(port)
    transports = list(Transport) * 2
    double.delays.update({f"t{i}": (len(transports) - i) * 0.003 for i in range(len(transports))})
    client.write(b"".join(send_call(f"t{i}", i, t) for i, t in enumerate(transports)))
    for i, t in enumerate(transports):
        frame, mtype, seqid, resp = await client.reply()
        assert (frame.transport, seqid, resp.Msg) == (t, i, f"done t{i}")
    await client.close()


async def test_ttheader_reply_header(served):
    _, port = served
    client = await Client.connect(port)
    client.write(send_call("x", 5, Transport.TTHEADER))
    frame, *_ = await client.reply()
    assert frame.header.seqid == 5 and frame.header.ints == {} and frame.header.strings == {}
    # A caller that sends Kitex's int keys gets MsgType 22 = "2" (REPLY) back.
    client.write(send_call("y", 6, Transport.TTHEADER, ints={9: "Send", 22: "1"}))
    frame, mtype, seqid, _ = await client.reply()
    assert (mtype, seqid, frame.header.ints) == (codec.REPLY, 6, {22: "2"})
    await client.close()


async def test_max_pipeline_bounds_calls_in_flight(double):
    """CHATSVC_MAX_PIPELINE is documented as "calls in flight per connection"."""
    server, port = await start_server(double, max_pipeline=2)
    try:
        client = await Client.connect(port)
        for i in range(10):
            double.delays[f"p{i}"] = 0.02
        client.write(b"".join(send_call(f"p{i}", i) for i in range(10)))
        seqids = [(await client.reply())[2] for _ in range(10)]
        assert seqids == list(range(10))
        assert double.max_in_flight <= 2, f"{double.max_in_flight} calls ran at once with max_pipeline=2"
        await client.close()
    finally:
        await server.close(1.0)


async def test_max_pipeline_across_separate_writes(double):
    server, port = await start_server(double, max_pipeline=2)
    try:
        client = await Client.connect(port)
        for i in range(6):
            double.delays[f"q{i}"] = 0.05
            client.write(send_call(f"q{i}", i))
            await client.writer.drain()
            await asyncio.sleep(0.005)
        seqids = [(await client.reply())[2] for _ in range(6)]
        assert seqids == list(range(6))
        assert double.max_in_flight <= 2
        await client.close()
    finally:
        await server.close(1.0)


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                                     b"\x00" * 64, b"hello\r\n\r\nhello\r\n"])
async def test_garbage_connection_closed_without_reply_server_survives(served, garbage):
    server, port = served
    bad = await Client.connect(port)
    bad.write(garbage)
    assert await bad.eof()
    await bad.close()
    good = await Client.connect(port)
    assert await good.call("still alive") == "done still alive"
    await good.close()


async def test_undecodable_framed_message_gets_protocol_error_then_eof(served):
    _, port = served
    for bad in (struct.pack(">I", 64) + A + b"\x00",  # trailing byte in the frame
                struct.pack(">I", 62) + A[:62],  # frame ends inside the message
                struct.pack(">I", 23) + A[:19] + struct.pack(">i", -5)):  # negative string length
        client = await Client.connect(port)
        client.write(bad)
        frame, mtype, _seqid, exc = await client.reply()
        assert frame.transport is Transport.FRAMED
        assert mtype == codec.EXCEPTION
        assert isinstance(exc, TApplicationException)
        assert exc.type == TApplicationException.PROTOCOL_ERROR == 7
        assert await client.eof()
        await client.close()


async def test_protocol_error_after_good_calls_answers_them_first(served, double):
    _, port = served
    client = await Client.connect(port)
    double.delays["slow"] = 0.05
    client.write(send_call("slow", 1) + send_call("fast", 2) + struct.pack(">I", 64) + A + b"\x00")
    assert [(await client.reply())[2] for _ in range(2)] == [1, 2]
    _frame, mtype, _, exc = await client.reply()
    assert mtype == codec.EXCEPTION and exc.type == TApplicationException.PROTOCOL_ERROR
    assert await client.eof()
    await client.close()


_REPLY_TO_SERVER = codec.encode("Send", codec.REPLY, 3, idl.IMService.Send_result(
    success=idl.SendResponse(Code=0, Msg="x")))


@pytest.mark.parametrize("ending, kind", [
    (struct.pack(">I", 64) + A + b"\x00", TApplicationException.PROTOCOL_ERROR),  # a broken message
    (wrap(Transport.FRAMED, _REPLY_TO_SERVER), TApplicationException.INVALID_MESSAGE_TYPE),  # not a call
])
async def test_calls_after_a_message_that_closes_the_connection_are_never_run(served, double, ending, kind):
    """A call is decoded as it is read: one that follows, in the same write, a message that closes
    the connection is not run (it would store a message that no reply acknowledges)."""
    _, port = served
    client = await Client.connect(port)
    client.write(send_call("before", 1) + ending + send_call("after", 2))
    assert (await client.reply())[2] == 1
    assert (await client.reply())[3].type == kind
    assert await client.eof()
    assert double.started == ["before"]
    await client.close()


async def test_protocol_error_while_calls_wait_for_the_pipeline(double):
    """Calls waiting for a place (max_pipeline) when the stream breaks are never run; the calls
    running are answered, then PROTOCOL_ERROR, then the connection closes."""
    server, port = await start_server(double, max_pipeline=1)
    try:
        double.gates["first"] = asyncio.Event()
        client = await Client.connect(port)
        client.write(send_call("first", 1) + send_call("waiting", 2) + struct.pack(">I", 64) + A + b"\x00")
        await double.any_started.wait()
        await asyncio.sleep(0.05)
        double.gates["first"].set()
        assert (await client.reply())[2] == 1
        assert (await client.reply())[3].type == TApplicationException.PROTOCOL_ERROR
        assert await client.eof()
        assert double.started == ["first"]
        await client.close()
    finally:
        await server.close(1.0)


async def test_a_send_call_in_another_layout_is_decoded_by_thriftpy2(served, double):
    """The one-pass reader takes the layouts Thrift clients write; any other valid call (here a
    Message field from a newer IDL) is checked and decoded the general way, as before."""
    _, port = served
    client = await Client.connect(port)
    payload = codec.encode("Send", codec.CALL, 4, idl.IMService.Send_args(
        req=idl.SendRequest(message=idl.Message(Chat="a:b", Text="newer", Sender="a", SendTime=0))))
    payload = payload[:-3] + struct.pack(">bhi", 11, 9, 1) + b"z" + b"\x00\x00\x00"
    client.write(wrap(Transport.FRAMED, payload))
    assert (await client.reply())[3].Msg == "done newer"
    await client.close()


async def test_oversized_declared_frame_is_rejected_at_once(double):
    server, port = await start_server(double, wire=WireLimits(max_frame_bytes=1000))
    try:
        client = await Client.connect(port)
        client.write(struct.pack(">I", 10**6) + A[:16])  # claims 1 MB, sends 20 bytes
        _frame, mtype, _, exc = await client.reply(timeout=2)
        assert mtype == codec.EXCEPTION and exc.type == TApplicationException.PROTOCOL_ERROR
        assert await client.eof(timeout=2)
        await client.close()
    finally:
        await server.close(1.0)


@pytest.mark.parametrize("transport", list(Transport))
async def test_unknown_method_keeps_connection_usable(served, transport):
    _, port = served
    client = await Client.connect(port)
    client.write(send_call("x", 9, transport, name="Foo"))
    frame, mtype, seqid, exc = await client.reply()
    assert (frame.transport, mtype, seqid) == (transport, codec.EXCEPTION, 9)
    assert exc.type == TApplicationException.UNKNOWN_METHOD == 1
    assert exc.message == "unknown method Foo"
    assert await client.call("after", 10, transport) == "done after"
    # Method names are case-sensitive.
    client.write(send_call("x", 11, transport, name="send"))
    assert (await client.reply())[3].type == TApplicationException.UNKNOWN_METHOD
    await client.close()


async def test_reply_or_exception_message_type_from_client_closes(served):
    _, port = served
    client = await Client.connect(port)
    payload = codec.encode("Send", codec.REPLY, 3, idl.IMService.Send_result(
        success=idl.SendResponse(Code=0, Msg="x")))
    client.write(wrap(Transport.FRAMED, payload))
    _, mtype, seqid, exc = await client.reply()
    assert (mtype, seqid, exc.type) == (codec.EXCEPTION, 3, TApplicationException.INVALID_MESSAGE_TYPE)
    assert await client.eof()
    await client.close()


async def test_handler_crash_is_an_internal_error_exception(served):
    """kitex-wire.md A4/B4: an unexpected crash in the handler is EXCEPTION type 6 (INTERNAL_ERROR)
    for that call (its seqid), not a protocol error."""
    _, port = served
    client = await Client.connect(port)
    client.write(send_call("crash", 31))
    _, mtype, seqid, exc = await client.reply()
    assert mtype == codec.EXCEPTION
    assert (exc.type, seqid) == (TApplicationException.INTERNAL_ERROR, 31), (exc.type, seqid, exc.message)


# --- deadlines and timeouts ----------------------------------------------------------------------


async def test_rpc_timeout_from_ttheader(served, double):
    _, port = served
    double.delays["slow"] = 1.0
    client = await Client.connect(port)
    start = time.monotonic()
    client.write(send_call("slow", 21, Transport.TTHEADER, ints={RPC_TIMEOUT: "50"}))
    frame, mtype, seqid, exc = await client.reply(timeout=2)
    elapsed = time.monotonic() - start
    assert elapsed < 0.5, elapsed
    assert (mtype, seqid) == (codec.EXCEPTION, 21)
    assert exc.type == TApplicationException.INTERNAL_ERROR
    assert frame.header.seqid == 21 and frame.header.ints == {22: "3"}
    assert "slow" not in double.completed
    # The connection stays usable, and a generous deadline does not cut a quick call.
    double.delays["quick"] = 0.05
    client.write(send_call("quick", 22, Transport.TTHEADER, ints={RPC_TIMEOUT: "5000"}))
    _, mtype, seqid, resp = await client.reply()
    assert (mtype, seqid, resp.Msg) == (codec.REPLY, 22, "done quick")
    await client.close()


async def test_no_rpc_timeout_means_no_deadline(served, double):
    _, port = served
    double.delays["slowish"] = 0.3
    client = await Client.connect(port)
    for ints in (None, {RPC_TIMEOUT: "0"}, {RPC_TIMEOUT: "abc"}):
        client.write(send_call("slowish", 1, Transport.TTHEADER, ints=ints))
        _, mtype, _, resp = await client.reply()
        assert mtype == codec.REPLY and resp.Msg == "done slowish"
    await client.close()


async def test_idle_connection_is_closed(double):
    server, port = await start_server(double, idle_timeout=0.3)
    try:
        client = await Client.connect(port)
        start = time.monotonic()
        assert await client.eof(timeout=3)
        assert 0.25 <= time.monotonic() - start < 1.5
        for _ in range(100):
            if not server.connections:
                break
            await asyncio.sleep(0.01)
        assert not server.connections
    finally:
        await server.close(1.0)


async def test_call_in_flight_longer_than_idle_timeout_is_not_cut(double):
    server, port = await start_server(double, idle_timeout=0.3)
    try:
        client = await Client.connect(port)
        double.delays["long"] = 0.9
        client.write(send_call("long", 4))
        _, mtype, seqid, resp = await client.reply(timeout=3)
        assert (mtype, seqid, resp.Msg) == (codec.REPLY, 4, "done long")
        # Then idle again: closed after about idle_timeout.
        start = time.monotonic()
        assert await client.eof(timeout=3)
        assert time.monotonic() - start >= 0.2
        await client.close()
    finally:
        await server.close(1.0)


async def test_active_connection_is_not_idle(double):
    server, port = await start_server(double, idle_timeout=0.3)
    try:
        client = await Client.connect(port)
        for i in range(8):  # 0.8 s of traffic, a call every 0.1 s
            assert await client.call(f"k{i}", i) == f"done k{i}"
            await asyncio.sleep(0.1)
        await client.close()
    finally:
        await server.close(1.0)


# --- connection limit ----------------------------------------------------------------------------


async def test_max_connections(double):
    server, port = await start_server(double, max_connections=2)
    try:
        c1, c2 = await Client.connect(port), await Client.connect(port)
        assert await c1.call("one") == "done one"
        assert await c2.call("two") == "done two"
        c3 = await Client.connect(port)
        start = time.monotonic()
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            c3.write(send_call("three", 3))
        assert await c3.eof(timeout=2)
        assert time.monotonic() - start < 1
        assert "three" not in double.started
        assert len(server.connections) == 2
        assert await c1.call("one again", 2) == "done one again"
        assert await c2.call("two again", 2) == "done two again"
        await c3.close()
        # A slot frees up when a connection closes.
        await c1.close()
        for _ in range(100):
            if len(server.connections) < 2:
                break
            await asyncio.sleep(0.01)
        c4 = await Client.connect(port)
        assert await c4.call("four") == "done four"
        await c2.close()
        await c4.close()
    finally:
        await server.close(1.0)


# --- shutdown ------------------------------------------------------------------------------------


async def test_close_drains_calls_in_flight(double):
    server, port = await start_server(double)
    client = await Client.connect(port)
    double.delays["draining"] = 0.3
    client.write(send_call("draining", 77))
    await asyncio.wait_for(double.any_started.wait(), 2)
    closing = asyncio.create_task(server.close(drain_timeout=3.0))
    await asyncio.sleep(0.05)
    # No new connections while draining.
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    _, mtype, seqid, resp = await client.reply(timeout=3)
    assert (mtype, seqid, resp.Msg) == (codec.REPLY, 77, "done draining")
    assert await client.eof(timeout=3)
    await asyncio.wait_for(closing, 3)
    await client.close()


async def test_close_gives_up_after_drain_timeout(double):
    server, port = await start_server(double)
    client = await Client.connect(port)
    gate = double.gates["stuck"] = asyncio.Event()
    client.write(send_call("stuck", 1))
    await asyncio.wait_for(double.any_started.wait(), 2)
    start = time.monotonic()
    await asyncio.wait_for(server.close(drain_timeout=0.2), 3)
    assert 0.15 <= time.monotonic() - start < 1.5
    assert await client.eof(timeout=2)
    gate.set()
    await asyncio.sleep(0.05)  # let the abandoned call finish
    await client.close()


# --- the real wiring (chatsvc.app.running) over Redis --------------------------------------------


@pytest.fixture
async def chatsvc(redis_url) -> AsyncIterator[int]:
    settings = ChatsvcSettings(host="127.0.0.1", port=0, redis_url=redis_url, drain_timeout=1.0)
    async with running(settings) as server:
        yield server.sockets[0].getsockname()[1]


def pull_call(chat: str, seqid: int, transport: Transport, cursor=0, limit=10, reverse=None) -> bytes:
    args = idl.IMService.Pull_args(req=idl.PullRequest(Chat=chat, Cursor=cursor, Limit=limit, Reverse=reverse))
    return wrap(transport, codec.encode("Pull", codec.CALL, seqid, args), seqid)


@pytest.mark.parametrize("transport", list(Transport))
async def test_app_send_and_pull_over_redis(chatsvc, transport):
    client = await Client.connect(chatsvc)
    for i in range(3):  # one at a time: pipelined calls run concurrently, in no fixed storage order
        client.write(send_call(f"hello {i}", i, transport))
        _, mtype, seqid, resp = await client.reply()
        assert (mtype, seqid, resp.Code, resp.Msg) == (codec.REPLY, i, 0, "success")
    client.write(pull_call("b:a", 10, transport, limit=2))
    _, mtype, seqid, page = await client.reply("Pull")
    assert (mtype, seqid, page.Code) == (codec.REPLY, 10, 0)
    assert [(m.Chat, m.Text, m.Sender) for m in page.Messages] == [("a:b", "hello 0", "a"), ("a:b", "hello 1", "a")]
    assert page.HasMore is True and page.NextCursor > page.Messages[1].SendTime
    client.write(pull_call("a:b", 11, transport, cursor=page.NextCursor, limit=2))
    _, _, _, rest = await client.reply("Pull")
    assert [m.Text for m in rest.Messages] == ["hello 2"]
    assert rest.HasMore is False and rest.NextCursor == 0
    await client.close()


async def test_app_invalid_request_is_in_band_400(chatsvc):
    client = await Client.connect(chatsvc)
    args = idl.IMService.Send_args(req=idl.SendRequest(message=idl.Message(Chat="a:b", Text="x", Sender="c")))
    client.write(wrap(Transport.FRAMED, codec.encode("Send", codec.CALL, 1, args)))
    _, mtype, _, resp = await client.reply()
    assert (mtype, resp.Code) == (codec.REPLY, 400) and resp.Msg.startswith("invalid sender")
    # An empty args struct (no req at all): still a normal reply with every field set.
    client.write(wrap(Transport.FRAMED, codec.encode("Pull", codec.CALL, 2, idl.IMService.Pull_args())))
    _, mtype, _, page = await client.reply("Pull")
    assert (mtype, page.Code) == (codec.REPLY, 400)
    assert page.Messages == [] and page.HasMore is False and page.NextCursor == 0
    await client.close()


async def test_app_invalid_utf8_on_the_wire_is_400(chatsvc):
    # Vector A with Text "hi" replaced by the invalid UTF-8 bytes ff fe: thriftpy2 decodes it to bytes.
    text_at = A.index(bytes.fromhex("0b000200000002")) + 7
    bad = A[:text_at] + b"\xff\xfe" + A[text_at + 2 :]
    client = await Client.connect(chatsvc)
    client.write(wrap(Transport.FRAMED, bad))
    _, mtype, seqid, resp = await client.reply()
    assert (mtype, seqid, resp.Code) == (codec.REPLY, 1, 400)
    assert resp.Msg.startswith("invalid text")
    client.write(pull_call("a:b", 2, Transport.FRAMED))
    _, _, _, page = await client.reply("Pull")
    assert page.Code == 0 and page.Messages == []
    await client.close()


async def test_app_with_redis_down_answers_503():
    from tests.procs import free_port

    settings = ChatsvcSettings(host="127.0.0.1", port=0, redis_url=f"redis://127.0.0.1:{free_port()}/0",
                               redis_timeout=0.5, redis_connect_timeout=0.3, drain_timeout=0.5)
    async with running(settings) as server:
        client = await Client.connect(server.sockets[0].getsockname()[1])
        start = time.monotonic()
        client.write(send_call("x", 1))
        _, mtype, _, resp = await client.reply(timeout=3)
        assert (mtype, resp.Code) == (codec.REPLY, 503)
        assert resp.Msg.startswith("storage unavailable")
        assert time.monotonic() - start < 3
        await client.close()


async def test_slow_sender_is_cut_by_the_read_timeout(double):
    """One byte a second keeps a connection busy but never completes a message: it is closed."""
    server = ThriftServer(idl.IMService, double, ServerLimits(WireLimits(), read_timeout=0.5), readers=ARGS_READERS)
    await server.start("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        message = send_call("slow", 1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()
        closed = False
        for byte in message[:-1]:
            writer.write(bytes([byte]))
            try:
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            try:
                if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed, "the slow sender was never cut off"
        assert 0.4 < time.monotonic() - start < 3
        writer.close()
        # A sender that completes its messages is not affected.
        client = await Client.connect(port)
        assert await client.call("fast", 2) == "done fast"
        await client.close()
    finally:
        await server.close(1.0)


async def test_calls_sent_before_a_half_close_are_answered(double):
    """A client that sends its calls and shuts its side (nc -q, shutdown(SHUT_WR)) gets every reply,
    whether the reply is ready before or after the server sees the end of the stream."""
    server, port = await start_server(double)
    try:
        for i in range(40):
            double.delays["half"] = 0.02 if i % 2 else None
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(send_call("half", i + 1) + send_call("half", i + 1000))
            writer.write_eof()
            data = await asyncio.wait_for(reader.read(), 5)
            frames = FrameReader(WireLimits()).feed(data)
            assert [f.head.seqid for f in frames] == [i + 1, i + 1000], data
            writer.close()
    finally:
        await server.close(1.0)
