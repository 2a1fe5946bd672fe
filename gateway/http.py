"""The gateway's HTTP/1.1 server: httptools' parser (llhttp, in C) under a lean ``asyncio.Protocol``.

Why not ``aiohttp.web``: its request, response, router, middleware and payload-writer objects cost
about 110 us of CPU per request on the machine the benchmarks run on, against about 35 us for the
same parsing in a bare protocol, and the whole Go gateway spends 112 us per request
(docs/performance.md). Why not aiohttp's parser under this protocol, as until the tenth session:
it makes a URL, a second multidict and a body stream for every request; httptools runs the same
llhttp and leaves the objects to the caller (side by side: +0.4% to +6.8% sends per second in
four runs, 3-6% less gateway CPU per request at a fixed rate). A body that is still arriving
when its request starts goes into aiohttp's ``StreamReader``, as before.

The API is four routes answering small JSON bodies, so what it needs of a server is small, and
all of it is here:

- keep-alive and HTTP/1.0 ``Connection`` rules (llhttp's ``should_keep_alive``), pipelined
  requests answered one at a time in order (at most ``max_pipelined`` queued, then reading
  pauses; a client that does not read its answers is not answered or read further until it
  does), ``Expect: 100-continue``, chunked request bodies, ``HEAD`` on every ``GET`` route;
- the limits aiohttp's parser kept: a request line of at most ``MAX_LINE`` bytes (414), at most
  ``MAX_HEADERS`` header fields of ``MAX_FIELD`` bytes each (431), ``Host`` in HTTP/1.1, no
  repeated singleton header (``Content-Length``, ``Host``...) and no NUL in a value (400);
- a body is read only when the handler asks for it (``Request.read``), after authentication and
  routing, within a size limit (413) and a time limit (408); a response sent before the body was
  all in closes the connection;
- a malformed request gets a JSON 400 and the connection closes; ``Upgrade`` is ignored (RFC 9110
  7.8 allows it): that request is answered as any other, and the connection stays HTTP/1.1;
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
from typing import Any, Protocol, cast

import httptools
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy
from yarl import URL

from gateway import errors
from gateway.connections import ConnectionLimiter
from gateway.responses import DateHeader, Response, error_response, render

log = logging.getLogger("gateway.http")

READ_BUFSIZE = 2**16  # the buffer for a body still arriving; beyond twice this, reading pauses
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# aiohttp's parser's limits, kept when it was replaced.
MAX_LINE = 8190  # bytes of request target
MAX_FIELD = 8190  # bytes of one header field (name and value)
MAX_HEADERS = 128
# Headers a request may carry once (RFC 9110; aiohttp's list): a second one is a 400.
SINGLETON_HEADERS = frozenset({"content-length", "content-location", "content-range", "content-type", "etag",
                               "host", "max-forwards", "server", "transfer-encoding", "user-agent"})
_NO_QUERY: MultiDictProxy[str] = MultiDictProxy(MultiDict())


class BadRequest(Exception):
    """A request refused while it is parsed: answered with ``status`` and ``message``, then closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BodyError(Exception):
    """The request body broke its framing (chunked encoding, or shorter than Content-Length)."""


class Message:
    """A request's head, decoded, and its body once there is one to read."""

    __slots__ = ("method", "target", "path", "headers", "version", "should_close", "payload", "_url")

    def __init__(self, method: str, target: str, headers: CIMultiDictProxy[str], version: tuple[int, int],
                 should_close: bool) -> None:
        self.method = method
        self.target = target  # as sent, for the access log
        self.headers = headers
        self.version = version
        self.should_close = should_close
        self.payload: Payload | None = None
        # The usual target is a plain path: nothing to split or decode. Else yarl reads it, as
        # aiohttp's parser did (origin form split at "?" and "#", any other form whole).
        if target[:1] == "/" and "?" not in target and "#" not in target and "%" not in target:
            self._url: URL | None = None
            self.path = target
        else:
            self._url = _url(method, target)
            self.path = self._url.path

    @property
    def query(self) -> MultiDictProxy[str]:
        return _NO_QUERY if self._url is None else self._url.query


def _url(method: str, target: str) -> URL:
    try:
        if method == "CONNECT":
            return URL.build(authority=target, encoded=True)
        if target[:1] == "/":
            path, _, fragment = target.partition("#")
            path, _, query = path.partition("?")
            return URL.build(path=path, query_string=query, fragment=fragment, encoded=True)
        return URL(target, encoded=True)
    except ValueError as exc:
        raise BadRequest(400, f"invalid request target: {exc}") from None


class Payload(Protocol):
    """A request's body: ``Body`` when it came whole with its head, else aiohttp's ``StreamReader``."""

    def is_eof(self) -> bool: ...
    def read_nowait(self, n: int = -1) -> bytes: ...
    async def readany(self) -> bytes: ...
    def set_exception(self, exc: BaseException) -> None: ...


class Body:
    """A body received whole with its request's head (the usual case): no stream to feed."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def is_eof(self) -> bool:
        return True

    def read_nowait(self, n: int = -1) -> bytes:
        data, self._data = self._data, b""
        return data

    async def readany(self) -> bytes:
        return self.read_nowait()

    def set_exception(self, exc: BaseException) -> None:
        pass


class Request:
    """One parsed request. ``read`` returns the body, which is read only when asked for."""

    __slots__ = ("method", "path", "headers", "_msg", "_payload", "_conn")

    def __init__(self, msg: Message, payload: Payload, conn: HttpConnection) -> None:
        self.method: str = msg.method
        self.path: str = msg.path
        self.headers: CIMultiDictProxy[str] = msg.headers
        self._msg = msg
        self._payload = payload
        self._conn = conn

    @property
    def query(self) -> MultiDictProxy[str]:
        return self._msg.query

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


async def _read_slowly(payload: Payload, limit: int, timeout: float) -> bytes:
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
_VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}


def _check_singletons(fields: list[tuple[bytes, bytes]]) -> None:
    """Refuse a head that repeats a header it may carry once (some field names repeat)."""
    seen: set[bytes] = set()
    for name, _ in fields:
        lower = name.lower()
        if lower in seen and lower.decode("latin-1") in SINGLETON_HEADERS:
            raise BadRequest(400, f"Duplicate '{name.decode('latin-1')}' header found.")
        seen.add(lower)


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests and answers them one at a time, in order."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = server.loop
        self._transport: asyncio.Transport | None = None
        self._parser: httptools.HttpRequestParser | None = None
        self._queue: deque[Message] = deque()
        self._body: StreamReader | None = None  # the last request's body, while it is arriving
        self._task: asyncio.Task[None] | None = None  # the request being answered
        self._paused = False  # reading paused (queue full, a body's buffer full, or writing paused)
        self._write_paused = False  # the transport's buffer is full: the client is not reading
        self._eof = False  # the client has half-closed: answer what was read, then close
        self._peer = ""
        # The request being parsed (the parser's callbacks, below):
        self._target = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []  # its body, until it is whole or goes into a StreamReader
        self._parsed: list[Message] = []  # heads completed by the data being fed
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
        self._parser = httptools.HttpRequestParser(self)  # calls the on_* methods below
        limiter.opened(self)
        self.waiting_since = self.last_data = self._loop.time()  # the first request's headers

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self._transport is None or self._transport.is_closing():
            return  # refused, or closing: drained until closed
        self.last_data = self._loop.time()
        try:
            self._feed(parser, data)
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
            return
        parsed = self._parsed
        if not parsed:
            return
        self._parsed = []
        last = parsed[-1]
        if last.payload is None:  # its body is still arriving: a stream, fed as it comes
            self._body = last.payload = StreamReader(cast(Any, self), READ_BUFSIZE, loop=self._loop)
            for chunk in self._chunks:
                self._body.feed_data(chunk)
            self._chunks = []
        self._queue.extend(parsed)
        if self._task is None and not self._write_paused:
            self._next()
        if len(self._queue) >= self._server.max_pipelined:
            self.pause_reading()

    def _feed(self, parser: httptools.HttpRequestParser, data: bytes) -> None:
        while True:
            try:
                parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as exc:
                # A protocol switch (Upgrade, CONNECT) this server does not make; RFC 9110 lets
                # it ignore Upgrade. The request is answered as any other, and what follows it
                # is parsed afresh as HTTP/1.1.
                data = data[exc.args[0]:]
                parser = self._parser = httptools.HttpRequestParser(self)
                if not data:
                    return

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        cause = exc.__context__
        if isinstance(cause, BadRequest):
            status, message = cause.status, cause.message
        else:
            status, message = 400, str(exc) or "malformed request"
        self._parsed = []
        if self._body is not None and not self._body.is_eof():
            self._body.set_exception(BodyError(message))
        self._bad_request(status, message)

    # -- the parser's callbacks (httptools) ------------------------------------------------------

    def on_message_begin(self) -> None:
        self._target = b""
        self._fields = []
        if self.waiting_since is None:
            self.waiting_since = self.last_data  # the next request has begun

    def on_url(self, url: bytes) -> None:
        self._target += url
        if len(self._target) > MAX_LINE:
            raise BadRequest(414, f"request target longer than {MAX_LINE} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Only measured here; decoded all at once when the head is complete, which costs less
        # than a decode in each call. llhttp has already refused control characters (NUL too).
        if len(name) + len(value) > MAX_FIELD:
            raise BadRequest(431, f"header field longer than {MAX_FIELD} bytes")
        fields = self._fields
        if len(fields) >= MAX_HEADERS:
            raise BadRequest(431, f"more than {MAX_HEADERS} header fields")
        fields.append((name, value))

    def on_headers_complete(self) -> None:
        parser = cast(httptools.HttpRequestParser, self._parser)
        fields = self._fields
        if len({name.lower() for name, _ in fields}) < len(fields):
            _check_singletons(fields)
        # llhttp strips the whitespace before a value, not after it (RFC 9110 5.5).
        decoded = [(name.decode("latin-1"), value.rstrip(b" \t").decode("utf-8", "surrogateescape"))
                   for name, value in fields]
        headers = CIMultiDictProxy(CIMultiDict(decoded))
        raw_version = parser.get_http_version()
        version = _VERSIONS.get(raw_version) or (int(raw_version[0]), int(raw_version[2]))
        if version == (1, 1) and "Host" not in headers:
            raise BadRequest(400, "Missing 'Host' header in request.")
        self._parsed.append(Message(parser.get_method().decode("ascii"),
                                    self._target.decode("utf-8", "surrogateescape"), headers, version,
                                    not parser.should_keep_alive()))
        self._chunks = []
        self.waiting_since = None

    def on_body(self, body: bytes) -> None:
        if self._body is not None:
            self._body.feed_data(body)
        else:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._body is not None:  # its head came in an earlier feed: the body was a stream
            self._body.feed_eof()
            self._body = None
        else:  # its head came in this feed, so it is the last one parsed
            chunks = self._chunks
            self._parsed[-1].payload = Body(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            self._chunks = []

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
        msg = self._queue.popleft()
        if self._paused:
            self.resume_reading()
        self.idle_since = None
        self._task = self._loop.create_task(self._answer(msg))

    async def _answer(self, msg: Message) -> None:
        server = self._server
        started = time.perf_counter() if server.access_log is not None else 0.0
        payload = cast(Payload, msg.payload)  # always set before a message is queued
        request = Request(msg, payload, self)
        try:
            response = await server.app(request)
        except Exception:
            log.exception("unhandled error on %s %s", msg.method, msg.target)
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

    def _bad_request(self, status: int, message: str) -> None:
        """A request the parser refused: a JSON 4xx (after any answers due first), then close."""
        self._parser = None
        self._queue.clear()
        data = render(error_response(status, f"bad request: {message}"), self._server.date(), close=True)
        if self._task is None:
            self.write(data)
            self.close()
        else:  # let the request being answered finish first, then this goes out
            def after(_: object) -> None:
                self.write(data)
                self.close()

            self._task.add_done_callback(after)

    def _log_access(self, msg: Message, status: int, size: int, took: float) -> None:
        if not self._peer and self._transport is not None:
            peer = self._transport.get_extra_info("peername")
            self._peer = peer[0] if isinstance(peer, tuple) else str(peer)
        assert self._server.access_log is not None
        self._server.access_log.info('%s "%s %s HTTP/%d.%d" %d %d %.6fs', self._peer, msg.method, msg.target,
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
