"""Client connections: how many may be open, and how long a request may take to arrive.

aiohttp bounds neither. Its keep-alive timer is the only clock on a connection that has not sent
a whole request, so a client trickling its headers a byte at a time holds a connection (and a
file descriptor) for the whole keep-alive timeout, and nothing caps how many do. Here each
connection's protocol (aiohttp's ``RequestHandler``) is wrapped in a ``GuardedConnection``, made
by a ``ConnectionLimiter`` and served through ``LimitedSite``:

- at most ``max_connections`` are open. A new connection beyond that closes the one that has
  been idle longest between two keep-alive requests (HTTP/1.1 lets a server close an idle
  connection at any time); if none is idle, it is answered 503 in the project's error format and
  closed, before a byte of it is parsed;
- a request's headers must be in within ``header_timeout`` of its first byte (of the connection's
  start, for the first request), or the connection is closed without a reply, as Go's
  ``ReadHeaderTimeout`` does;
- a body must be in within ``GATEWAY_BODY_TIMEOUT`` once its headers are (the handlers' 408), and
  an idle keep-alive connection is closed after aiohttp's ``keepalive_timeout``.

While a handler runs, the header clock is stopped; it restarts with the next request's first byte.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from typing import cast

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from yarl import URL

log = logging.getLogger("gateway.connections")

# How long a refused connection may still send (its request, unread) before it is closed: closing
# a socket with unread data resets it, and the client could lose the 503 it was sent.
REFUSED_LINGER = 1.0
# At most one warning about refused connections per this many seconds (a flood must not flood the log).
REFUSED_LOG_INTERVAL = 10.0


def _refusal(limit: int) -> bytes:
    body = orjson.dumps({"status": "error", "code": 503,
                         "message": f"too many connections (limit {limit}); retry later"})
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
    return head.encode() + body


class ConnectionLimiter:
    """Counts open connections, makes a ``GuardedConnection`` for each new one, and sweeps them.

    The header clock costs nothing per request: each connection notes when a request's first
    bytes arrived without its headers being complete, and one timer per process sweeps the open
    connections every ``header_timeout / 4`` for those that have waited too long.
    """

    def __init__(self, max_connections: int, header_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self._refusal = _refusal(max_connections)
        self._open: set[GuardedConnection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self.refused = 0  # since start
        self._refused_logged = (0, float("-inf"))  # (count, loop time) at the last warning

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def protocol_factory(self, server: Callable[[], RequestHandler]) -> Callable[[], asyncio.Protocol]:
        """The protocol factory for ``loop.create_server``, around aiohttp's ``server``."""
        return lambda: GuardedConnection(self, server)

    def _admit(self) -> bool:
        if len(self._open) < self.max_connections:
            return True
        idle = [c for c in self._open if c.idle]
        if idle:  # the one idle longest makes room, as its client is the least likely to miss it
            min(idle, key=lambda c: c.last_data).evict()
            return True
        self.refused += 1
        now = asyncio.get_running_loop().time()
        count, at = self._refused_logged
        if now - at >= REFUSED_LOG_INTERVAL:
            log.warning("refused %d connection(s): %d open, none idle (GATEWAY_MAX_CONNECTIONS)",
                        self.refused - count, len(self._open))
            self._refused_logged = (self.refused, now)
        return False

    def _opened(self, conn: GuardedConnection) -> None:
        self._open.add(conn)
        if self._sweeper is None:
            self._schedule_sweep()

    def _closed(self, conn: GuardedConnection) -> None:
        self._open.discard(conn)

    def _schedule_sweep(self) -> None:
        self._sweeper = asyncio.get_running_loop().call_later(self.header_timeout / 4, self._sweep)

    def _sweep(self) -> None:
        """Close connections whose request headers have been arriving for over ``header_timeout``."""
        self._sweeper = None
        deadline = asyncio.get_running_loop().time() - self.header_timeout
        for conn in [c for c in self._open if c.waiting_since is not None and c.waiting_since <= deadline]:
            conn.expire()
        if self._open:
            self._schedule_sweep()


class GuardedConnection(asyncio.Protocol):
    """One client connection: aiohttp's protocol inside, the header clock and the count outside.

    aiohttp's ``RequestHandler`` counts the requests whose headers it has parsed
    (``_request_count``) and flags a running handler (``_request_in_progress``); reading the two
    after each chunk tells whether the chunk completed a request's headers or left them partial,
    with no per-request timer or middleware. (tests/test_slow_clients.py pins this behaviour.)
    """

    def __init__(self, limiter: ConnectionLimiter, server: Callable[[], RequestHandler]) -> None:
        self._limiter = limiter
        self._server = server
        self._inner: RequestHandler | None = None
        self._transport: asyncio.Transport | None = None
        # Since when a request has been arriving without complete headers (None: not waiting).
        self.waiting_since: float | None = None
        self.last_data = 0.0  # loop time of the last bytes received

    # -- asyncio.Protocol, forwarded to aiohttp's protocol ----------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self._transport = transport
        if not self._limiter._admit():
            self._refuse(transport)
            return
        self._inner = self._server()
        self._limiter._opened(self)
        self.waiting_since = asyncio.get_running_loop().time()  # the first request's headers
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        inner = self._inner
        if inner is None:
            return  # refused: drained until closed
        now = self.last_data = asyncio.get_running_loop().time()
        before = inner._request_count
        inner.data_received(data)
        if inner._request_count != before:
            self.waiting_since = None  # a request's headers are in: its handler takes over
        elif self.waiting_since is None and not inner._request_in_progress:
            self.waiting_since = now  # a new request has begun

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            self._inner.eof_received()
        return None  # close the transport (as aiohttp's protocol does)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._limiter._closed(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)
        self._transport = None

    # -- the limiter's side ----------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Between two keep-alive requests, with nothing left to write.

        aiohttp hands a response to the transport without yielding once its handler returns
        (unless the transport's buffer is full), so an empty buffer means nothing is pending.
        """
        transport, inner = self._transport, self._inner
        return not (transport is None or inner is None or inner._request_in_progress or inner._messages
                    or self.waiting_since is not None or transport.get_write_buffer_size())

    def evict(self) -> None:
        """Close this idle connection to admit a new one (HTTP/1.1 allows it at any time)."""
        log.debug("closing an idle keep-alive connection to admit a new one")
        self._limiter._closed(self)
        if self._transport is not None:
            self._transport.close()

    def expire(self) -> None:
        """The headers did not arrive in time: close without a reply, as Go's ReadHeaderTimeout."""
        self.waiting_since = None
        inner = self._inner
        if self._transport is not None and inner is not None and not inner._request_in_progress:
            log.debug("closed a connection: no complete request headers within %gs (GATEWAY_HEADER_TIMEOUT)",
                      self._limiter.header_timeout)
            self._transport.close()

    def _refuse(self, transport: asyncio.Transport) -> None:
        transport.write(self._limiter._refusal)
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(min(REFUSED_LINGER, self._limiter.header_timeout), transport.close)


class LimitedSite(web.BaseSite):
    """A TCP site whose connections go through a ``ConnectionLimiter``."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limiter: ConnectionLimiter, *,
                 reuse_port: bool | None = None, backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._limiter = limiter
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host, port=self._port))

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._limiter.protocol_factory(server), self._host, self._port,
            backlog=self._backlog, reuse_port=self._reuse_port)


def raise_fd_limit(connections: int, spare: int = 256) -> None:
    """Raise the soft open-file limit to fit ``connections`` (up to the hard limit), or warn."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + spare
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
        if soft < wanted:
            log.warning("open-file limit %d is below GATEWAY_MAX_CONNECTIONS + %d: connections beyond it "
                        "fail to be accepted; raise `ulimit -n` or lower GATEWAY_MAX_CONNECTIONS", soft, spare)

