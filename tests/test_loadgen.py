"""The open-loop load generator (bench.loadgen.open_loop) against small HTTP servers started here.

Each server is an asyncio protocol on a loopback port whose answers the test scripts: immediate,
delayed, stalled, split over several writes, coalesced with an interim response, chunked,
non-2xx, or cut off. The generator runs in its own thread, so the server keeps answering on the
test's loop meanwhile.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bench import loadgen, openloop
from bench.http1 import ProtocolError, ResponseParser
from bench.workload import SEND

OK = b'{"status":"success"}'


def response(status: int = 200, body: bytes = OK, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status, len(body), extra, body))


class Exchange:
    """One request as the server saw it: its number (in arrival order, over all connections)."""

    def __init__(self, n: int, transport: asyncio.Transport) -> None:
        self.n = n
        self.transport = transport

    def write(self, data: bytes, delay: float = 0.0) -> None:
        if delay:
            asyncio.get_running_loop().call_later(delay, self._write, data)
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)


Handler = Callable[[Exchange], None]


class Server(asyncio.Protocol):
    def __init__(self, handler: Handler, counter: list[int]) -> None:
        self.handler, self.counter = handler, counter
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15:].split(b"\r\n", 1)[0]) if i >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            self.counter[0] += 1
            assert self.transport is not None
            self.handler(Exchange(self.counter[0], self.transport))


Serve = Callable[[Handler], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.AbstractServer] = []

    async def start(handler: Handler) -> str:
        counter = [0]
        server = await asyncio.get_running_loop().create_server(lambda: Server(handler, counter), "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture(autouse=True)
def quick_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openloop, "SWEEP_INTERVAL", 0.05)


RATE, CLIENTS, DURATION = 200.0, 4, 0.3


async def run(base: str, rate: float = RATE, clients: int = CLIENTS, duration: float = DURATION) -> loadgen.Measurement:
    m = await loadgen.open_loop(base, SEND, rate, clients, duration)
    assert abs(m.extra["issued"] - rate * duration) <= 1
    assert m.extra["offered_rps"] == rate and m.extra["clients"] == clients
    return m


async def test_fast_server_every_request_answered(serve: Serve) -> None:
    base = await serve(lambda ex: ex.write(response()))
    m = await run(base)
    assert m.requests == m.extra["issued"] and m.errors == 0 and m.sockerr == 0
    assert m.p50_ms < 20 and m.extra["issue_lag_p99_ms"] < 20
    assert m.duration_s == DURATION


async def test_latency_includes_a_server_delay(serve: Serve) -> None:
    base = await serve(lambda ex: ex.write(response(), delay=0.05))
    m = await run(base)
    assert m.requests == m.extra["issued"] and m.sockerr == 0
    assert 50 <= m.p50_ms < 150
    assert m.max_ms >= 50


async def test_without_kernel_timestamps(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the kernel gives no receive timestamps the engine times answers as they arrive."""
    monkeypatch.setattr(openloop, "TIMESTAMPS", False)
    base = await serve(lambda ex: ex.write(response(), delay=0.3 if ex.n == 10 else 0.02))
    m = await run(base)
    assert m.requests == m.extra["issued"] and m.sockerr == 0
    assert 20 <= m.p50_ms < 100
    assert m.max_ms >= 300


async def test_one_stalled_request_shows(serve: Serve) -> None:
    base = await serve(lambda ex: ex.write(response(), delay=0.3 if ex.n == 10 else 0.0))
    m = await run(base)
    assert m.requests == m.extra["issued"] and m.sockerr == 0
    assert m.max_ms >= 300
    assert m.p50_ms < 50


async def test_wait_for_a_connection_counts(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    """One connection, answers taking 20 ms, a request every 10 ms: each request waits longer than
    the one before for the connection, and that wait is part of its latency (from its scheduled
    time), not just the 20 ms the server took once it was sent."""
    monkeypatch.setattr(loadgen, "CONNS_PER_CLIENT", 1)
    base = await serve(lambda ex: ex.write(response(), delay=0.02))
    m = await run(base, rate=100, clients=1, duration=0.3)
    assert m.requests == 30 and m.sockerr == 0
    assert m.p50_ms >= 100  # request k waits ~10 ms * k: the median one ~150 ms
    assert m.max_ms >= 250


async def test_responses_split_over_several_writes(serve: Serve) -> None:
    def split(ex: Exchange) -> None:
        data = response()
        ex.write(data[:7])
        ex.write(data[7:30], delay=0.005)
        ex.write(data[30:-5], delay=0.010)
        ex.write(data[-5:], delay=0.015)

    m = await run(await serve(split))
    assert m.requests == m.extra["issued"] and m.errors == 0 and m.sockerr == 0
    assert m.p50_ms >= 15  # timed at the last piece


async def test_interim_and_final_response_in_one_write(serve: Serve) -> None:
    base = await serve(lambda ex: ex.write(b"HTTP/1.1 100 Continue\r\n\r\n" + response(201)))
    m = await run(base)
    assert m.requests == m.extra["issued"] and m.errors == 0 and m.sockerr == 0


async def test_chunked_responses(serve: Serve) -> None:
    def chunked(ex: Exchange) -> None:
        ex.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        ex.write(b"7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n", delay=0.005)

    m = await run(await serve(chunked))
    assert m.requests == m.extra["issued"] and m.errors == 0 and m.sockerr == 0


async def test_server_closing_after_each_answer(serve: Serve) -> None:
    def once(ex: Exchange) -> None:
        ex.write(response(extra=b"Connection: close\r\n"))
        ex.transport.close()

    m = await run(await serve(once))
    assert m.requests == m.extra["issued"] and m.sockerr == 0


async def test_non_2xx_counted(serve: Serve) -> None:
    base = await serve(lambda ex: ex.write(response(500 if ex.n % 2 else 200, b'{"status":"error"}')))
    m = await run(base)
    assert m.requests == m.extra["issued"] and m.sockerr == 0
    assert m.errors == (m.requests + 1) // 2


async def test_connection_refused_counted() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    m = await run(f"http://127.0.0.1:{port}")
    assert m.requests == 0 and m.sockerr == m.extra["issued"]


async def test_connection_reset_counted(serve: Serve) -> None:
    def flaky(ex: Exchange) -> None:
        if ex.n % 5 == 0:
            ex.transport.abort()  # an RST, no answer
        else:
            ex.write(response())

    m = await run(await serve(flaky))
    assert m.sockerr == m.extra["issued"] // 5
    assert m.requests + m.sockerr == m.extra["issued"]


async def test_timeout_counted(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadgen, "OPEN_TIMEOUT", 0.2)
    base = await serve(lambda ex: None if ex.n in (3, 4) else ex.write(response()))
    m = await run(base)
    assert m.sockerr == 2
    assert m.requests == m.extra["issued"] - 2
    assert m.max_ms < 200


def parse_all(parser: ResponseParser, data: bytes) -> list[int]:
    parser.feed(data)
    statuses = []
    while (status := parser.next()) is not None:
        statuses.append(status)
    return statuses


def test_parser_several_responses_in_one_read() -> None:
    chunked = b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    data = (response(200) + b"HTTP/1.1 100 Continue\r\n\r\n" + response(503) + chunked
            + b"HTTP/1.1 204 No Content\r\n\r\n" + b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n")
    parser = ResponseParser()
    assert parse_all(parser, data) == [200, 503, 404, 204, 304]
    assert not parser.pending


def test_parser_byte_by_byte() -> None:
    data = response(200, b"x" * 300) + response(500) + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    data += b"a\r\n0123456789\r\n0\r\n\r\n"
    parser = ResponseParser()
    statuses = []
    for i in range(len(data)):
        statuses += parse_all(parser, data[i:i + 1])
    assert statuses == [200, 500, 200]
    assert not parser.pending


def test_parser_framing_and_errors() -> None:
    parser = ResponseParser()
    assert parse_all(parser, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n") == [200]
    assert parser.close
    parser = ResponseParser()
    assert parse_all(parser, b"HTTP/1.0 200 OK\r\n\r\nthe body runs to the close") == []
    assert parser.pending and parser.eof() == 200
    for bad in (b"HTTP/1.1 2x0 OK\r\n\r\n", b"SPDY/3 200 OK\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
        with pytest.raises(ProtocolError):
            parse_all(ResponseParser(), bad)
