"""Client connections: how many may be open, and how long a request may take to arrive.

The ``ConnectionLimiter`` keeps the gateway's connections (``gateway.http.HttpConnection``) within
bounds that a client cannot stretch:

- at most ``max_connections`` are open. A new connection beyond that closes the one that has
  been idle longest between two keep-alive requests (HTTP/1.1 lets a server close an idle
  connection at any time); if none is idle, it is answered 503 in the project's error format and
  closed, before a byte of it is parsed;
- a request's headers must be in within ``header_timeout`` of its first byte (of the connection's
  start, for the first request), or the connection is closed without a reply, as Go's
  ``ReadHeaderTimeout`` does;
- an idle keep-alive connection is closed after ``keepalive_timeout``;
- a body must be in within ``GATEWAY_BODY_TIMEOUT`` once the handler asks for it (408, in
  ``gateway.http.Request.read``).

While a request is being answered, the header clock is stopped; it restarts with the next
request's first byte. The clocks cost nothing per request: each connection notes the loop time
when it started waiting, and one timer per process sweeps the open connections.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from email.utils import formatdate
from typing import TYPE_CHECKING

from gateway.responses import error_response, render

if TYPE_CHECKING:  # gateway.http imports this module
    from gateway.http import HttpConnection

log = logging.getLogger("gateway.connections")

# How long a refused connection may still send (its request, unread) before it is closed: closing
# a socket with unread data resets it, and the client could lose the 503 it was sent.
REFUSED_LINGER = 1.0
# At most one warning about refused connections per this many seconds (a flood must not flood the log).
REFUSED_LOG_INTERVAL = 10.0


class ConnectionLimiter:
    """Counts the open connections, admits or refuses new ones, and sweeps them for the two clocks."""

    def __init__(self, max_connections: int, header_timeout: float, keepalive_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.connections: set[HttpConnection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self.refused = 0  # since start
        self._refused_logged = (0, float("-inf"))  # (count, loop time) at the last warning

    def admit(self) -> bool:
        """Room for a new connection (made by closing the longest-idle one if need be)?"""
        if len(self.connections) < self.max_connections:
            return True
        idle = [c for c in self.connections if c.idle]
        if idle:  # the one idle longest makes room, as its client is the least likely to miss it
            victim = min(idle, key=lambda c: c.last_data)
            log.debug("closing an idle keep-alive connection to admit a new one")
            self.closed(victim)
            victim.close()
            return True
        self.refused += 1
        now = asyncio.get_running_loop().time()
        count, at = self._refused_logged
        if now - at >= REFUSED_LOG_INTERVAL:
            log.warning("refused %d connection(s): %d open, none idle (GATEWAY_MAX_CONNECTIONS)",
                        self.refused - count, len(self.connections))
            self._refused_logged = (self.refused, now)
        return False

    def refuse(self, transport: asyncio.Transport) -> None:
        """Answer 503 and close, leaving the client a moment to read it."""
        message = f"too many connections (limit {self.max_connections}); retry later"
        refusal = error_response(503, message, (("Retry-After", "1"),), close=True)
        transport.write(render(refusal, formatdate(usegmt=True), close=True))
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(min(REFUSED_LINGER, self.header_timeout), transport.close)

    def opened(self, conn: HttpConnection) -> None:
        self.connections.add(conn)
        if self._sweeper is None:
            self._schedule_sweep()

    def closed(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _schedule_sweep(self) -> None:
        period = min(self.header_timeout, self.keepalive_timeout) / 4
        self._sweeper = asyncio.get_running_loop().call_later(period, self._sweep)

    def _sweep(self) -> None:
        """Close connections whose headers are late, and keep-alive connections idle too long."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        late, stale = now - self.header_timeout, now - self.keepalive_timeout
        for conn in list(self.connections):
            if conn.waiting_since is not None and conn.waiting_since <= late and not conn.busy:
                log.debug("closed a connection: no complete request headers within %gs (GATEWAY_HEADER_TIMEOUT)",
                          self.header_timeout)
                conn.close()
            elif conn.idle_since is not None and conn.idle_since <= stale and conn.idle:
                conn.close()
        if self.connections:
            self._schedule_sweep()


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

