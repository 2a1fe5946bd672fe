"""The open-loop engine behind ``bench.loadgen.open_loop``: a fixed-rate HTTP/1.1 client in one thread.

The model is wrk2's: request ``n`` is due at ``start + n / rate`` and belongs to client
``n % clients``; each client has up to ``conns_per_client`` keep-alive connections with one
request in flight each, opened as needed; a request that finds them all busy waits for one; a
request's latency runs from its scheduled time to the arrival of the end of its answer, so late
sends and waits for a connection are counted (no coordinated omission).

It has to be cheap: on the 2-core VM of docs/performance.md each wake-up of a sleeping process
costs ~15-20 us of CPU in the kernel alone and a pass of an asyncio (uvloop) loop ~35 us, so a
generator that wakes once to send each request and again for each answer spends ~70 us per
request before doing any work (aiohttp's client spent ~470 us), takes that CPU from the server it
measures and lags its own schedule. So the engine wakes once per scheduled request and does
everything due then:

- it sleeps with ``time.sleep`` (``clock_nanosleep``, timer slack lowered to 1 us) until the next
  request's scheduled time, so requests leave as soon after it as the CPU scheduler lets the thread
  run (~0.1 ms with a core free) rather than within the ~1 ms of an event loop's timers;
- on waking it reads whatever answers arrived (one ``epoll`` poll that does not wait), then sends
  every request now due on an idle connection of its client. An answer's arrival time is the
  kernel's receive timestamp of its last bytes (``SO_TIMESTAMPNS``), so reading it up to one
  interval later does not change its latency, and the generator's own scheduling delays are not
  charged to the server;
- requests (bodies from the load's ``Bodies``) are encoded before the start, up to AHEAD_SECONDS
  of the schedule, then in the slack between two requests; latencies are kept as plain floats and
  put in histograms at the end; the cyclic GC is off during the run (nothing here makes cycles).

It waits on the sockets instead (waking for each answer, which is then timed as it arrives)
whenever that matters more than the CPU: while connections are being opened, while a request
waits for a connection, while a write is unfinished, after the last request was issued, and if the
kernel gives no receive timestamps. Responses are framed by ``bench.http1.ResponseParser``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import math
import platform
import select
import socket
import struct
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable
from typing import Any

from bench.http1 import ProtocolError, ResponseParser
from bench.stats import Histogram, now

# Python 3.11 lacks the name; 35 is SO_TIMESTAMPNS(_OLD) in asm-generic, which these machines use
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
TIMESTAMPS = sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64", "riscv64")
PR_SET_TIMERSLACK = 29
RECV_BYTES = 65536
ANC_BYTES = socket.CMSG_SPACE(16) if hasattr(socket, "CMSG_SPACE") else 64
SWEEP_INTERVAL = 0.25  # timeouts are checked this often (and the stop flag at least this often)
AHEAD_SECONDS = 30.0  # requests encoded ahead: this many seconds of the schedule (all, for most runs)...
AHEAD_MIN = 1024  # ...but at least this many
REFILL_MARGIN = 0.0002  # stop encoding ahead this long before the next scheduled request

_IN = select.EPOLLIN | select.EPOLLRDHUP
_OUT = select.EPOLLOUT
_timespec = struct.Struct("@qq")

Waiting = tuple[float, float, bytes]  # (latency start, issue time, request bytes)
Address = tuple[socket.AddressFamily, tuple[Any, ...]]  # (family, sockaddr) as getaddrinfo gives them


def _reduce_timer_slack() -> None:
    """Ask Linux to wake this thread within 1 us of its deadline (default slack: 50 us)."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)


class _Conn:
    __slots__ = ("sock", "fd", "pool", "parser", "since", "sent_at", "busy", "connecting", "out")

    def __init__(self, sock: socket.socket, pool: _Pool) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.pool = pool
        self.parser = ResponseParser()
        self.since = 0.0  # the latency's start: the request's scheduled time
        self.sent_at = 0.0  # when the request was issued (timeouts run from it); or the connect began
        self.busy = False
        self.connecting = True
        self.out = b""  # the unsent rest of a request


class _Pool:
    """One client's connections and the requests waiting for one of them."""

    __slots__ = ("idle", "waiting", "size", "opening")

    def __init__(self) -> None:
        self.idle: list[_Conn] = []  # the most recently used last
        self.waiting: deque[Waiting] = deque()
        self.size = 0  # connections open or being opened
        self.opening = 0


class Engine:
    """One open-loop run; ``run`` blocks (call it in a thread) until every request was answered or
    failed, or until ``stop`` is set. The results: ``latencies`` (s), ``lags`` (s, one per issued
    request), ``responses``, ``non2xx``, ``sockerr``, ``issued``."""

    def __init__(self, addr: Address | None, encode: Callable[[bytes], bytes],
                 bodies: Callable[[], bytes], rate: float, clients: int, duration: float,
                 conns_per_client: int, timeout: float, start_delay: float = 0.05) -> None:
        self.addr = addr  # None: the name did not resolve, every request fails to connect
        self.encode, self.bodies = encode, bodies
        self.rate, self.clients, self.duration = rate, clients, duration
        self.conns_per_client, self.timeout, self.start_delay = conns_per_client, timeout, start_delay
        self.stop = False
        self.timestamps = TIMESTAMPS  # kernel receive timestamps, until a socket refuses them
        self.latencies = array("d")
        self.lags = array("d")
        self.non2xx = self.sockerr = self.issued = 0
        self._pools = [_Pool() for _ in range(clients)]
        self._conns: dict[int, _Conn] = {}
        self._ep = select.epoll()
        self._outstanding = 0  # issued and neither answered nor failed
        self._waiting = 0  # requests waiting for a connection, all clients
        self._connecting = 0
        self._unsent = 0  # connections with part of a request still to write
        self._ahead: deque[bytes] = deque()
        self._unencoded = 0

    # -- the schedule ---------------------------------------------------------------------------

    def run(self) -> None:
        _reduce_timer_slack()
        collecting = gc.isenabled()
        gc.disable()  # nothing here makes reference cycles; a collection would only delay requests
        try:
            self._run()
        finally:
            if collecting:
                gc.enable()
            for conn in list(self._conns.values()):
                conn.sock.close()
            self._conns.clear()
            self._ep.close()

    def _run(self) -> None:
        step, clients, pools, lags, ahead = 1.0 / self.rate, self.clients, self._pools, self.lags, self._ahead
        ahead_max = max(AHEAD_MIN, int(self.rate * AHEAD_SECONDS))
        self._unencoded = math.ceil(self.rate * self.duration) + 1  # the schedule's length, give or take one
        self._refill(ahead_max, math.inf)
        start = now() + self.start_delay
        end = start + self.duration
        n, due = 0, start
        next_sweep = start + SWEEP_INTERVAL
        events = self._ep.poll(0)
        while not self.stop:
            if events:
                self._handle(events)
            t = now()
            while due < end and due <= t:
                lags.append(t - due)
                pool = pools[n % clients]
                payload = ahead.popleft() if ahead else self.encode(self.bodies())
                self._outstanding += 1
                if pool.idle:
                    self._send(pool.idle.pop(), due, t, payload)
                else:
                    pool.waiting.append((due, t, payload))
                    self._waiting += 1
                    self._grow(pool)
                n += 1
                due = start + n * step
                t = now()
            self.issued = n
            if t >= next_sweep:
                self._sweep(t)
                next_sweep = t + SWEEP_INTERVAL
            scheduling = due < end
            if not scheduling and self._outstanding == 0:
                break
            if scheduling and len(self._ahead) < ahead_max // 2 and self._unencoded > 0:
                self._refill(ahead_max, due - REFILL_MARGIN)
            wake = min(due, next_sweep) if scheduling else next_sweep
            timeout = wake - now()
            if (not scheduling or not self.timestamps or self._waiting or self._connecting or self._unsent):
                events = self._ep.poll(timeout if timeout > 0.0 else 0.0)
            else:
                if timeout > 0.0:
                    time.sleep(timeout)
                events = self._ep.poll(0)

    def _refill(self, ahead_max: int, until: float) -> None:
        """Encode requests ahead of time: up to ``ahead_max`` waiting, none beyond the schedule's end,
        and (past the first) only until ``until``."""
        ahead, encode, bodies = self._ahead, self.encode, self.bodies
        while len(ahead) < ahead_max and self._unencoded > 0:
            ahead.append(encode(bodies()))
            self._unencoded -= 1
            if len(ahead) % 16 == 0 and now() >= until:
                return

    # -- connections ----------------------------------------------------------------------------

    def _grow(self, pool: _Pool) -> None:
        """Open connections for the requests waiting beyond those being opened, within the bound."""
        while pool.opening < len(pool.waiting) and pool.size < self.conns_per_client and not self.stop:
            if not self._open(pool):  # failed at once: that costs the oldest waiting request
                self._fail_waiting(pool)

    def _open(self, pool: _Pool) -> bool:
        if self.addr is None:
            return False
        family, address = self.addr
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            return False
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.timestamps:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                except OSError:
                    self.timestamps = False
            err = sock.connect_ex(address)
        except OSError:
            sock.close()
            return False
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            return False
        conn = _Conn(sock, pool)
        conn.sent_at = now()
        self._conns[conn.fd] = conn
        self._ep.register(conn.fd, _IN | _OUT)
        pool.size += 1
        pool.opening += 1
        self._connecting += 1
        return True

    def _connected(self, conn: _Conn) -> None:
        """A connecting socket is ready: connected, or failed."""
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not err:
            try:
                conn.sock.getpeername()
            except OSError as exc:  # a stale event (its descriptor was reused): still connecting
                if exc.errno == errno.ENOTCONN:
                    return
                err = exc.errno or errno.ECONNABORTED
        pool = conn.pool
        conn.connecting = False
        pool.opening -= 1
        self._connecting -= 1
        if err:
            self._close(conn)
            self._fail_waiting(pool)
            self._grow(pool)
            return
        self._ep.modify(conn.fd, _IN)
        self._ready(conn)

    def _ready(self, conn: _Conn) -> None:
        """``conn`` is free: it takes the client's oldest waiting request, or goes idle."""
        pool = conn.pool
        if pool.waiting:
            self._waiting -= 1
            since, sent_at, payload = pool.waiting.popleft()
            self._send(conn, since, sent_at, payload)
        else:
            pool.idle.append(conn)

    def _send(self, conn: _Conn, since: float, sent_at: float, payload: bytes) -> None:
        conn.since, conn.sent_at, conn.busy = since, sent_at, True
        try:
            sent = conn.sock.send(payload)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._fail(conn)
            return
        if sent < len(payload):
            conn.out = payload[sent:]
            self._unsent += 1
            self._ep.modify(conn.fd, _IN | _OUT)

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError:
            self._fail(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self._unsent -= 1
            self._ep.modify(conn.fd, _IN)

    def _close(self, conn: _Conn) -> None:
        """Forget ``conn`` (its request, if any, was settled by the caller)."""
        if self._conns.pop(conn.fd, None) is None:
            return
        pool = conn.pool
        pool.size -= 1
        if conn.connecting:
            conn.connecting = False
            pool.opening -= 1
            self._connecting -= 1
        if conn.out:
            conn.out = b""
            self._unsent -= 1
        if conn in pool.idle:
            pool.idle.remove(conn)
        with contextlib.suppress(OSError):
            self._ep.unregister(conn.fd)
        conn.sock.close()

    def _fail(self, conn: _Conn) -> None:
        """A broken exchange: its request is a sockerr and the connection goes; another may open."""
        if conn.busy:
            conn.busy = False
            self.sockerr += 1
            self._outstanding -= 1
        self._close(conn)
        self._grow(conn.pool)

    def _fail_waiting(self, pool: _Pool) -> None:
        if pool.waiting:
            pool.waiting.popleft()
            self._waiting -= 1
            self.sockerr += 1
            self._outstanding -= 1

    # -- answers --------------------------------------------------------------------------------

    def _handle(self, events: list[tuple[int, int]]) -> None:
        conns = self._conns
        offset = 0
        if self.timestamps:  # kernel receive times (CLOCK_REALTIME) -> this process's now() clock
            offset = time.time_ns() - time.perf_counter_ns()
        t = now()
        for fd, mask in events:
            conn = conns.get(fd)
            if conn is None:
                continue
            if conn.connecting:
                self._connected(conn)
                continue
            if conn.out and mask & _OUT:
                self._flush(conn)
            if mask & ~_OUT and fd in conns:
                self._read(conn, offset, t)

    def _read(self, conn: _Conn, offset: int, t: float) -> None:
        try:
            if self.timestamps:
                data, ancillary, _, _ = conn.sock.recvmsg(RECV_BYTES, ANC_BYTES)
            else:
                data, ancillary = conn.sock.recv(RECV_BYTES), []
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._fail(conn)
            return
        parser = conn.parser
        if not data:  # the server closed: an answer delimited by the close, an error, or an idle end
            status = parser.eof() if conn.busy else None
            if status is not None:
                self._answered(conn, status, t)
            self._fail(conn)
            return
        parser.feed(data)
        try:
            status = parser.next()
        except ProtocolError:
            self._fail(conn)
            return
        if status is None:
            return
        if not conn.busy:  # an answer to nothing: the connection cannot be trusted
            self._fail(conn)
            return
        arrived = t
        if ancillary and ancillary[0][1] == SCM_TIMESTAMPNS:  # the only kind asked for
            sec, nsec = _timespec.unpack_from(ancillary[0][2])
            arrived = (sec * 1_000_000_000 + nsec - offset) * 1e-9
            if arrived > t or arrived < conn.sent_at:  # came in after t, or a clock step: now will do
                arrived = now()
        elif self.timestamps:  # the kernel gives none after all: time answers as they arrive from now on
            self.timestamps = False
            arrived = now()
        self._answered(conn, status, arrived)
        if parser.close or parser.pending:  # the server ends it, or sent more than the one answer
            self._close(conn)
            self._grow(conn.pool)
        elif conn.pool.waiting:
            self._ready(conn)
        else:
            conn.pool.idle.append(conn)

    def _answered(self, conn: _Conn, status: int, arrived: float) -> None:
        conn.busy = False
        self._outstanding -= 1
        self.latencies.append(arrived - conn.since)
        if not 200 <= status < 300:
            self.non2xx += 1

    @property
    def responses(self) -> int:
        return len(self.latencies)

    def _sweep(self, t: float) -> None:
        """Requests issued (and connects begun) ``timeout`` ago or more fail as sockerr."""
        limit = t - self.timeout
        for pool in self._pools:
            while pool.waiting and pool.waiting[0][1] <= limit:
                self._fail_waiting(pool)
        for conn in [c for c in self._conns.values() if (c.busy or c.connecting) and c.sent_at <= limit]:
            if conn.connecting:
                self._close(conn)
                self._fail_waiting(conn.pool)
            else:
                self._fail(conn)
        for pool in self._pools:
            self._grow(pool)


def histogram(samples: array[float]) -> Histogram:
    hist = Histogram()
    for seconds in samples:
        hist.record(seconds)
    return hist
