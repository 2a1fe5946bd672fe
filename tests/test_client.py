"""chatsvc.client against scripted servers: reply checks, timeouts, pool bounds, retries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from thriftpy2.thrift import TApplicationException, TDecodeException

from chatsvc.client import ChatClient, RPCApplicationError, RPCConnectError, RPCProtocolError, RPCTimeout
from chatsvc.settings import WireLimits
from chatsvc.wire import codec, framing, idl, pages
from chatsvc.wire.framing import Transport
from chatsvc.wire.idl import IMService, PullResponse, SendResponse
from chatsvc.wire.scan import read_head

Reply = Callable[[str, int], bytes | None]  # (method, seqid) -> framed reply bytes, or None for silence


def ok_reply(method: str, seqid: int, *, name: str | None = None, seq: int | None = None) -> bytes:
    result_cls = getattr(IMService, method + "_result")
    body = SendResponse(Code=0, Msg="success") if method == "Send" else PullResponse(
        Code=0, Msg="success", Messages=[], HasMore=False, NextCursor=0)
    payload = codec.encode(name or method, codec.REPLY, seqid if seq is None else seq, result_cls(success=body))
    return framing.wrap(Transport.FRAMED, payload)


class ScriptedServer:
    """Reads framed calls and answers each with ``reply(method, seqid)``; counts connections.

    A ``reply`` that raises ConnectionResetError drops the connection mid-call."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.calls: list[str] = []
        self.payloads: list[bytes] = []

    def answer(self, method: str, seqid: int, write: Callable[[bytes], None]) -> None:
        out = self.reply(method, seqid)
        if out:
            write(out)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        frames = framing.FrameReader(WireLimits())
        try:
            while data := await reader.read(65536):
                for frame in frames.feed(data):
                    head, _ = read_head(frame.payload, 0, len(frame.payload))
                    self.calls.append(head.name)
                    self.payloads.append(frame.payload)
                    self.answer(head.name, head.seqid, writer.write)
        except ConnectionResetError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def scripted():
    servers = []

    async def start(reply: Reply) -> tuple[ScriptedServer, int]:
        script = ScriptedServer(reply)
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        servers.append(server)
        return script, server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.close()


async def test_wrong_seqid_is_a_protocol_error_and_the_connection_is_discarded(scripted):
    script, port = await scripted(lambda m, s: ok_reply(m, s, seq=s + 1000))
    async with ChatClient("127.0.0.1", port, call_timeout=2) as client:
        with pytest.raises(RPCProtocolError, match="seqid"):
            await client.send("a:b", "x", "a")
        script.reply = ok_reply
        assert (await client.send("a:b", "x", "a")).Code == 0
    assert script.connections == 2  # the broken connection was replaced


async def test_wrong_method_name_is_a_protocol_error(scripted):
    _, port = await scripted(lambda m, s: ok_reply(m, s, name="Pull" if m == "Send" else "Send"))
    async with ChatClient("127.0.0.1", port, call_timeout=2) as client:
        with pytest.raises(RPCProtocolError, match="expected a reply to Send"):
            await client.send("a:b", "x", "a")


async def test_application_exception_is_mapped(scripted):
    def reply(method: str, seqid: int) -> bytes:
        exc = TApplicationException(type=TApplicationException.UNKNOWN_METHOD, message="unknown method Send")
        return framing.wrap(Transport.FRAMED, codec.encode(method, codec.EXCEPTION, seqid, exc))

    _, port = await scripted(reply)
    async with ChatClient("127.0.0.1", port, call_timeout=2) as client:
        with pytest.raises(RPCApplicationError) as info:
            await client.send("a:b", "x", "a")
    assert info.value.type == TApplicationException.UNKNOWN_METHOD and "unknown method" in str(info.value)


async def test_reply_in_another_framing_is_rejected(scripted):
    _, port = await scripted(lambda m, s: ok_reply(m, s)[4:])  # unframed reply to a framed call
    async with ChatClient("127.0.0.1", port, call_timeout=2) as client:
        with pytest.raises(RPCProtocolError, match="framed"):
            await client.send("a:b", "x", "a")


async def test_missing_result_is_a_protocol_error(scripted):
    def reply(method: str, seqid: int) -> bytes:
        empty = getattr(IMService, method + "_result")()
        return framing.wrap(Transport.FRAMED, codec.encode(method, codec.REPLY, seqid, empty))

    _, port = await scripted(reply)
    async with ChatClient("127.0.0.1", port, call_timeout=2) as client:
        with pytest.raises(RPCProtocolError, match="no result"):
            await client.send("a:b", "x", "a")


async def test_call_timeout_and_late_reply_is_dropped(scripted):
    late: list[tuple[str, int]] = []

    def reply(method: str, seqid: int) -> bytes | None:
        if not late:
            late.append((method, seqid))
            return None  # the first call gets no answer in time
        first = ok_reply(*late.pop())  # the late reply arrives just before the second one's
        late.append(("", 0))
        return first + ok_reply(method, seqid)

    _, port = await scripted(reply)
    async with ChatClient("127.0.0.1", port, call_timeout=0.3, pool_size=1) as client:
        started = time.monotonic()
        with pytest.raises(RPCTimeout):
            await client.send("a:b", "x", "a")
        took = time.monotonic() - started
        # Deadlines are swept every call_timeout / 5: never early, at most one sweep late (+ slack).
        assert 0.29 <= took < 0.3 + 0.06 + 0.25, took  # 0.29: the loop clock ticks in ms
        assert (await client.send("a:b", "y", "a")).Code == 0  # the stale reply did not confuse it


async def test_connect_refused_is_a_connect_error():
    from tests.procs import free_port

    async with ChatClient("127.0.0.1", free_port(), connect_timeout=0.5) as client:
        with pytest.raises(RPCConnectError):
            await client.send("a:b", "x", "a")


async def test_pull_is_retried_once_on_a_fresh_connection_but_send_is_not(scripted):
    drop = {"Send": 1, "Pull": 1}

    def reply(method: str, seqid: int) -> bytes | None:
        if drop[method]:
            drop[method] -= 1
            raise ConnectionResetError  # the server drops the connection mid-call
        return ok_reply(method, seqid)

    script, port = await scripted(reply)
    async with ChatClient("127.0.0.1", port, call_timeout=2) as client:
        assert (await client.pull("a:b")).Code == 0
        with pytest.raises(RPCConnectError):
            await client.send("a:b", "x", "a")
    assert script.calls == ["Pull", "Pull", "Send"]


async def test_pool_never_exceeds_its_size(scripted):
    script, port = await scripted(ok_reply)
    async with ChatClient("127.0.0.1", port, pool_size=3, pipeline=4) as client:
        replies = await asyncio.gather(*[client.send("a:b", str(i), "a") for i in range(100)])
    assert all(r.Code == 0 for r in replies)
    assert script.connections <= 3


async def test_a_call_that_cannot_be_encoded_holds_nothing(scripted):
    script, port = await scripted(ok_reply)
    async with ChatClient("127.0.0.1", port, pool_size=1) as client:
        assert (await client.send("a:b", "first", "a")).Code == 0
        with pytest.raises(TDecodeException):  # thriftpy2's encoder: a string with no UTF-8 form
            await client.send("a:b", "\ud800", "a")
        assert [conn.in_flight for conn in client._conns] == [0]  # no call left waiting for a reply
        assert (await client.send("a:b", "after", "a")).Code == 0
    assert script.calls == ["Send", "Send"]


async def test_send_writes_what_thriftpy2_writes_for_any_argument(scripted):
    """Three str are packed by hand (wire.sends); None or another type goes through thriftpy2: the
    call on the wire is the same either way."""
    script, port = await scripted(ok_reply)
    cases = [("a:b", "héllo", "a"), ("a:b", None, "a"), (None, "x", None)]
    async with ChatClient("127.0.0.1", port) as client:
        for chat, text, sender in cases:
            assert (await client.send(chat, text, sender)).Code == 0  # type: ignore[arg-type]
    for payload, (chat, text, sender) in zip(script.payloads, cases, strict=True):
        _, _, seqid = codec.decode_body(payload, idl.IMService.Send_args())
        args = idl.IMService.Send_args(req=idl.SendRequest(message=idl.Message(chat, text, sender, 0)))
        assert payload == codec.encode("Send", codec.CALL, seqid, args)


def pull_reply(payload_of: Callable[[int], bytes]) -> Reply:
    return lambda method, seqid: framing.wrap(Transport.FRAMED, payload_of(seqid))


async def test_pull_page_reads_chatsvc_layout_and_any_other(scripted):
    """A reply laid out as chatsvc writes it is read in one pass; a valid reply in another layout
    (here Messages left out, as a server may for an optional field) the general way."""
    rows = [(5, b"a", b"hello"), (6, b"b", "wörld".encode())]
    spliced = pages.write_response("a:b", rows, True, 7)
    _, port = await scripted(pull_reply(lambda s: codec.encode_reply("Pull", s, codec.Encoded(spliced))))
    async with ChatClient("127.0.0.1", port, call_timeout=2) as client:
        page = await client.pull_page("a:b", 0, 2)
    assert page == pages.PullPage(0, "success", [{"chat": "a:b", "text": "hello", "sender": "a", "send_time": 5},
                                                 {"chat": "a:b", "text": "wörld", "sender": "b", "send_time": 6}],
                                  True, 7)
    sparse = IMService.Pull_result(success=PullResponse(Code=404, Msg="gone"))
    _, port = await scripted(pull_reply(lambda s: codec.encode("Pull", codec.REPLY, s, sparse)))
    async with ChatClient("127.0.0.1", port, call_timeout=2) as client:
        assert await client.pull_page("a:b") == pages.PullPage(404, "gone", [], False, 0)


@pytest.mark.parametrize("cut", [1, 9, 30])
async def test_a_framed_reply_cut_short_is_a_protocol_error_on_every_path(scripted, cut):
    """Framed replies are not walked as they arrive (the client checks each one as it reads it):
    a message shorter than its frame still fails the call and discards the connection, whether the
    one-pass reader or thriftpy2's decoder would have read it."""
    def reply(method: str, seqid: int) -> bytes:
        payload = ok_reply(method, seqid)[4:] if method == "Send" else codec.encode_reply(
            "Pull", seqid, codec.Encoded(pages.write_response("a:b", [], False, 0)))
        return framing.wrap(Transport.FRAMED, payload[:-cut] if len(payload) > cut else payload)

    script, port = await scripted(reply)
    async with ChatClient("127.0.0.1", port, call_timeout=2) as client:
        for call in (lambda: client.pull_page("a:b"), lambda: client.pull("a:b"), lambda: client.send("a:b", "x", "a")):
            with pytest.raises(RPCProtocolError, match="truncated|trailing"):
                await call()
    assert script.connections == 3  # each broken connection was replaced


async def test_a_send_reply_other_than_chatsvcs_usual_success_is_decoded(scripted):
    """The usual success is recognised by its bytes; any other reply (another Msg, an error Code)
    is decoded, never taken for it."""
    answers = iter([SendResponse(Code=0, Msg="success"), SendResponse(Code=0, Msg="stored"),
                    SendResponse(Code=503, Msg="storage unavailable"), SendResponse(Code=1, Msg="success")])

    def reply(method: str, seqid: int) -> bytes:
        result = IMService.Send_result(success=next(answers))
        return framing.wrap(Transport.FRAMED, codec.encode(method, codec.REPLY, seqid, result))

    _, port = await scripted(reply)
    async with ChatClient("127.0.0.1", port, call_timeout=2) as client:
        got = [await client.send("a:b", "x", "a") for _ in range(4)]
    assert [(r.Code, r.Msg) for r in got] == [(0, "success"), (0, "stored"), (503, "storage unavailable"),
                                              (1, "success")]

