"""The gateway's HTTP/1.1 server: aiohttp's parser (llhttp, in C) under a lean ``asyncio.Protocol``.

Why not ``aiohttp.web``: its request, response, router, middleware and payload-writer objects cost
about 110 us of CPU per request on the machine the benchmarks run on, against about 35 us for the
same parsing in a bare protocol, and the whole Go gateway spends 112 us per request
(docs/performance.md). The API is four routes answering small JSON bodies, so what it needs of a
server is small, and all of it is here:

- keep-alive and HTTP/1.0 ``Connection`` rules (the parser's ``should_close``), pipelined
  requests answered one at a time in order (at most ``max_pipelined`` queued, then reading
  pauses; a client that does not read its answers is not answered or read further until it
  does), ``Expect: 100-continue``, chunked request bodies, ``HEAD`` on every ``GET`` route;
- a body is read only when the handler asks for it (``Request.read``), after authentication and
  routing, within a size limit (413) and a time limit (408); a response sent before the body was
  all in closes the connection;
- a malformed request gets a JSON 400 and the connection closes;
- the connection limits and clocks of ``gateway.connections`` (at most ``max_connections`` open,
  headers within ``header_timeout``, idle keep-alive closed after ``keepalive_timeout``);
- shutdown drains: stop accepting, answer the requests in flight (each with
  ``Connection: close``), close idle connections, and cut what is left at the drain timeout.

The application is one coroutine function, ``app(request) -> Response``, that never raises for a
client's mistake (gateway.app renders every error as JSON).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp.http import HttpProcessingError, HttpRequestParser, RawRequestMessage
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy, MultiDictProxy

from gateway import errors
from gateway.connections import ConnectionLimiter
from gateway.responses import DateHeader, Response, error_response, render

log = logging.getLogger("gateway.http")

READ_BUFSIZE = 2**16  # the parser's buffer for a body; beyond twice this, reading pauses
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class BodyError(Exception):
    """The request body broke its framing (chunked encoding, or shorter than Content-Length)."""


class Request:
    """One parsed request. ``read`` returns the body, which is read only when asked for."""

    __slots__ = ("method", "path", "headers", "_msg", "_payload", "_conn")

    def __init__(self, msg: RawRequestMessage, payload: StreamReader, conn: HttpConnection) -> None:
        self.method: str = msg.method
        self.path: str = msg.url.path
        self.headers: CIMultiDictProxy[str] = msg.headers
        self._msg = msg
        self._payload = payload
        self._conn = conn

    @property
    def query(self) -> MultiDictProxy[str]:
        return self._msg.url.query

    async def read(self, limit: int, timeout: float) -> bytes:
        """The whole body: 413 beyond ``limit`` bytes, 408 if it takes longer than ``timeout``."""
        length = self.headers.get("Content-Length")
        if length is not None and int(length) > limit:  # the parser has checked it is a number
            raise errors.PayloadTooLarge(limit)
        payload = self._payload
        if payload.is_eof():  # the usual case: the body came with the headers
            body = payload.read_nowait(-1)
        else:
            if self.headers.get("Expect", "").lower() == "100-continue":
                self._conn.write(CONTINUE)
            body = await _read_slowly(payload, limit, timeout)
        if len(body) > limit:
            raise errors.PayloadTooLarge(limit)
        return body


async def _read_slowly(payload: StreamReader, limit: int, timeout: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while chunk := await payload.readany():
                size += len(chunk)
                if size > limit:
                    raise errors.PayloadTooLarge(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise errors.RequestTimeout(f"request body not received within {timeout:g}s") from None
    except (BodyError, RuntimeError) as exc:  # RuntimeError: the connection closed meanwhile
        raise errors.BadRequest(f"malformed request body: {exc}") from None
    return b"".join(chunks)


App = Callable[[Request], Awaitable[Response]]


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests and answers them one at a time, in order."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = server.loop
        self._transport: asyncio.Transport | None = None
        self._parser: HttpRequestParser | None = None
        self._queue: deque[tuple[RawRequestMessage, StreamReader]] = deque()
        self._body: StreamReader | None = None  # the last request's body, while it is arriving
        self._task: asyncio.Task[None] | None = None  # the request being answered
        self._paused = False  # reading paused (queue full, a body's buffer full, or writing paused)
        self._write_paused = False  # the transport's buffer is full: the client is not reading
        self._eof = False  # the client has half-closed: answer what was read, then close
        self._peer = ""
        # Read by the ConnectionLimiter's sweep:
        self.waiting_since: float | None = None  # since when a request has lacked complete headers
        self.idle_since: float | None = None  # since when it has been idle between requests
        self.last_data = 0.0  # loop time of the last bytes received

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        limiter = self._server.limiter
        if not limiter.admit():
            limiter.refuse(transport)
            return
        # The parser and a body's buffer use the protocol duck-typed: pause_reading,
        # resume_reading and connected, all below.
        self._parser = HttpRequestParser(cast(Any, self), self._loop, READ_BUFSIZE, payload_exception=BodyError,
                                         auto_decompress=False)
        limiter.opened(self)
        self.waiting_since = self.last_data = self._loop.time()  # the first request's headers

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self._transport is None or self._transport.is_closing():
            return  # refused, or closing: drained until closed
        now = self.last_data = self._loop.time()
        try:
            messages, _upgraded, _tail = parser.feed_data(data)
        except HttpProcessingError as exc:
            self._bad_request(exc)
            return
        if messages:
            self._queue.extend(messages)
            self._body = messages[-1][1]
            self.waiting_since = None
            if self._task is None and not self._write_paused:
                self._next()
            if len(self._queue) >= self._server.max_pipelined:
                self.pause_reading()
        elif self.waiting_since is None and (self._body is None or self._body.is_eof()):
            self.waiting_since = now  # not body bytes: the next request has begun

    def eof_received(self) -> bool | None:
        if self._task is None and not self._queue:
            return None  # nothing to answer: close
        self._eof = True
        return True  # keep the write side open for the answers

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.limiter.closed(self)
        self._queue.clear()
        if self._body is not None and not self._body.is_eof():
            self._body.set_exception(BodyError("connection closed"))
        self._transport = None

    def pause_reading(self, *args: Any, **kwargs: Any) -> None:
        """Also called by a body's buffer (aiohttp's StreamReader) when it is full."""
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def resume_reading(self, *args: Any, **kwargs: Any) -> None:
        if (self._paused and not self._write_paused and self._transport is not None
                and len(self._queue) < self._server.max_pipelined):
            self._paused = False
            self._transport.resume_reading()

    def pause_writing(self) -> None:
        """The transport's buffer is over its high-water mark: a client that pipelines requests
        without reading the answers. Answer and read nothing more until it drains, so that the
        answers waiting for it stay bounded."""
        self._write_paused = True
        self.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self.resume_reading()
        if self._task is None and self._queue and self._transport is not None:
            self._next()

    # -- answering --------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _next(self) -> None:
        msg, payload = self._queue.popleft()
        if self._paused:
            self.resume_reading()
        self.idle_since = None
        self._task = self._loop.create_task(self._answer(msg, payload))

    async def _answer(self, msg: RawRequestMessage, payload: StreamReader) -> None:
        server = self._server
        started = time.perf_counter() if server.access_log is not None else 0.0
        request = Request(msg, payload, self)
        try:
            response = await server.app(request)
        except Exception:
            log.exception("unhandled error on %s %s", msg.method, msg.path)
            response = error_response(500, "internal error")
        self._task = None
        # Unread body bytes would have to be read past; closing is simpler and rare. A client
        # that has half-closed gets the answers to every request it sent, then the close.
        close = (response.close or msg.should_close or server.stopping or not payload.is_eof()
                 or (self._eof and not self._queue))
        head_only = msg.method == "HEAD"
        if close or head_only or msg.version < (1, 1):
            data = render(response, server.date(), head_only=head_only, close=close,
                          keep_alive_10=not close and msg.version < (1, 1))
        else:  # the usual answer: keep-alive HTTP/1.1 with a body
            data = server.render_usual(response)
        self.write(data)
        if server.access_log is not None:
            self._log_access(msg, response.status, len(data), time.perf_counter() - started)
        if close:
            self.close()
        elif self._queue:
            if not self._write_paused:  # else resume_writing starts the next one
                self._next()
        else:
            self.idle_since = self._loop.time()

    def _bad_request(self, exc: HttpProcessingError) -> None:
        """A request the parser refused: a JSON 400 (after any answers due first), then close."""
        self._parser = None
        self._queue.clear()
        status = exc.code if 400 <= exc.code < 500 else 400
        message = f"bad request: {exc.message}" if exc.message else "bad request"
        data = render(error_response(status, message), self._server.date(), close=True)
        if self._task is None:
            self.write(data)
            self.close()
        else:  # let the request being answered finish first, then this goes out
            def after(_: object) -> None:
                self.write(data)
                self.close()

            self._task.add_done_callback(after)

    def _log_access(self, msg: RawRequestMessage, status: int, size: int, took: float) -> None:
        if not self._peer and self._transport is not None:
            peer = self._transport.get_extra_info("peername")
            self._peer = peer[0] if isinstance(peer, tuple) else str(peer)
        assert self._server.access_log is not None
        self._server.access_log.info('%s "%s %s HTTP/%d.%d" %d %d %.6fs', self._peer, msg.method, msg.path,
                                     msg.version[0], msg.version[1], status, size, took)

    @property
    def connected(self) -> bool:
        """Read by a body's buffer (aiohttp's StreamReader) before it waits for more."""
        return self._transport is not None

    # -- for the limiter and the server -----------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A request is being answered or waits its turn."""
        return self._task is not None or bool(self._queue)

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    @property
    def idle(self) -> bool:
        """Between two keep-alive requests, with nothing left to write."""
        transport = self._transport
        return (transport is not None and self.idle_since is not None and self.waiting_since is None
                and not self.busy and not transport.get_write_buffer_size())

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class HttpServer:
    """Serves ``app`` on a TCP port through ``HttpConnection``s, within ``limiter``'s bounds."""

    def __init__(self, app: App, limiter: ConnectionLimiter, *, max_pipelined: int = 32,
                 access_log: logging.Logger | None = None) -> None:
        self.app = app
        self.limiter = limiter
        self.max_pipelined = max_pipelined
        self.access_log = access_log
        self.date = DateHeader()
        self._last: tuple[Response | None, str, bytes] = (None, "", b"")  # see render_usual
        self.stopping = False
        self._server: asyncio.Server | None = None
        self.loop = asyncio.get_running_loop()

    def render_usual(self, response: Response) -> bytes:
        """``render(response)`` for a keep-alive HTTP/1.1 request that is not HEAD, the last one
        kept: the same response object (a constant such as a send's success) within the same
        second renders to the same bytes."""
        date = self.date()
        last, last_date, data = self._last
        if response is last and date is last_date:
            return data
        data = render(response, date)
        self._last = (response, date, data)
        return data

    async def start(self, host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024) -> None:
        self._server = await self.loop.create_server(lambda: HttpConnection(self), host, port,
                                                     backlog=backlog, reuse_port=reuse_port or None)

    async def close(self, drain_timeout: float) -> None:
        """Stop accepting; answer the requests in flight within ``drain_timeout``; close the rest."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.limiter.connections):
            if not conn.busy:
                conn.close()
        pending = [c.task for c in self.limiter.connections if c.task is not None]
        if pending:
            _done, late = await asyncio.wait(pending, timeout=drain_timeout)
            if late:
                log.warning("drain timeout: closing %d connection(s) with requests in flight", len(late))
                for task in late:
                    task.cancel()
        for conn in list(self.limiter.connections):
            conn.abort() if conn.busy else conn.close()
        self.limiter.stop()
