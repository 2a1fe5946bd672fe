"""The gateway's chatsvc calls, in front of scripted Thrift servers, so that the upstream can drop
or hold a call on cue: a pull is retried once and a send never, and a malformed request that
arrives while the one before it waits on chatsvc is answered after it, in order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest

from chatsvc.client import ChatClient
from gateway.app import Gateway
from gateway.connections import ConnectionLimiter
from gateway.http import HttpServer
from gateway.settings import GatewaySettings
from tests.procs import free_port
from tests.test_client import ScriptedServer, ok_reply

SEND = b'{"Chat":"a:b","Text":"hi","Sender":"a"}'
PULL = b'{"Chat":"a:b","Cursor":0,"Limit":5}'


def http(method: str, path: str, body: bytes) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, object]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length"))
    body = await reader.readexactly(length)
    return int(lines[0].split()[1]), json.loads(body)


class Upstream(ScriptedServer):
    """A scripted server that hands each call to ``handler(method, seqid, write)``, which may
    answer at once, later, or never."""

    def __init__(self, handler: Callable[[str, int, Callable[[bytes], None]], None]) -> None:
        super().__init__(lambda method, seqid: None)
        self.handler = handler

    def answer(self, method: str, seqid: int, write: Callable[[bytes], None]) -> None:
        self.handler(method, seqid, write)


@pytest.fixture
async def stack() -> AsyncIterator[Callable[..., object]]:
    closers: list[Callable[[], object]] = []

    async def start(answer: Callable[[str, int, Callable[[bytes], None]], None],
                    **client: object) -> tuple[Upstream, int, ChatClient]:
        upstream = Upstream(answer)
        server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
        closers.append(server.close)
        settings = GatewaySettings(access_log=False)
        chat = ChatClient("127.0.0.1", server.sockets[0].getsockname()[1], settings=settings.client, **client)
        await chat.__aenter__()
        http_server = HttpServer(Gateway(settings, chat), ConnectionLimiter(100, 10, 75))
        port = free_port()
        await http_server.start("127.0.0.1", port)

        async def stop() -> None:
            await http_server.close(1)
            await chat.close()

        closers.append(stop)
        return upstream, port, chat

    yield start
    for close in reversed(closers):
        result = close()
        if asyncio.iscoroutine(result):
            await result


async def test_a_pull_whose_connection_drops_is_retried_once_a_send_is_not(stack):
    drop = {"Send": 0, "Pull": 0}

    def answer(method: str, seqid: int, write: Callable[[bytes], None]) -> None:
        if drop[method]:
            drop[method] -= 1
            raise ConnectionResetError  # the server drops the connection mid-call
        write(ok_reply(method, seqid))

    upstream, port, _ = await stack(answer)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(http("POST", "/api/send", SEND))  # opens the pooled connection
    assert (await read_answer(reader))[0] == 200

    drop["Pull"] = 1
    writer.write(http("GET", "/api/pull", PULL))
    assert (await read_answer(reader))[0] == 200
    assert upstream.calls == ["Send", "Pull", "Pull"]

    drop["Send"] = 1
    writer.write(http("POST", "/api/send", SEND))
    status, body = await read_answer(reader)
    assert status == 502 and body["code"] == 502
    assert upstream.calls == ["Send", "Pull", "Pull", "Send"]  # the send was not repeated
    writer.close()


async def test_a_malformed_request_behind_a_pending_call_is_answered_after_it(stack):
    held: list[tuple[str, int, Callable[[bytes], None]]] = []

    def answer(method: str, seqid: int, write: Callable[[bytes], None]) -> None:
        held.append((method, seqid, write))

    _, port, client = await stack(answer)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client_ready = asyncio.ensure_future(client.pull("a:b"))  # opens the pooled connection
    while not held:
        await asyncio.sleep(0.01)
    method, seqid, write = held.pop()
    write(ok_reply(method, seqid))
    await client_ready

    writer.write(http("POST", "/api/send", SEND))
    while not held:
        await asyncio.sleep(0.01)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")  # a second packet, while the send waits on chatsvc
    await asyncio.sleep(0.1)
    method, seqid, write = held.pop()
    write(ok_reply(method, seqid))
    assert (await read_answer(reader))[0] == 200
    status, body = await read_answer(reader)
    assert status == 400 and body["status"] == "error"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # then the connection closes
    writer.close()
