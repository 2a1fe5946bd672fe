"""Automatic pipelining for Redis: concurrent callers' commands share round trips.

Under load many calls wait on Redis at once. Sending their commands one by one costs a write, a
read and redis-py's per-command machinery each. Here the commands queued in one pass of the event
loop go out in one pipelined write on one connection, and hiredis reads the replies as they come,
in order, straight from the socket (an ``asyncio.Protocol``, ``_Link``): no task, stream or
coroutine per batch or per reply. A lone command at low load costs one write and one read. Each
connection carries one batch at a time; while all of them wait for replies, commands queue, and
the first connection to be answered takes the queue as its next batch, so batches grow with the
load by themselves. Each caller still gets its own reply or its own error. redis-py still opens
each connection (TLS, AUTH, SELECT... as the URL says) before the link takes its socket.

On a Redis Cluster, ``ClusterBatcher`` keeps one such batcher per master and sends each command to
the master of its key's hash slot (see its docstring for redirections, failures and failovers);
``ReplicatedBatcher`` adds ``WAIT`` to batches that write (REDIS_CLUSTER_WAIT_REPLICAS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    InvalidResponse,
    MovedError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chatsvc.wire.writer import CoalescingWriter

log = logging.getLogger("chatsvc.batching")

Command = tuple[Any, ...]


def as_connection_error(exc: Exception) -> Exception:
    """``exc``, or a redis ConnectionError for uvloop's RuntimeError on a write to a connection that
    the server has just closed (redis-py passes it through; it is a lost connection like any other)."""
    if type(exc) is RuntimeError:
        return RedisConnectionError(f"connection lost: {exc}")
    if type(exc) is TimeoutError:  # the batch's deadline passed (see _Link)
        return RedisTimeoutError("Timeout reading from Redis")
    return exc


def _untimed_connections(pool: Any) -> tuple[Callable[[], Any], float | None]:
    """A factory of ``pool``'s connections without a socket timeout, and that timeout."""
    kwargs = dict(pool.connection_kwargs)
    timeout = kwargs.get("socket_timeout")
    kwargs["socket_timeout"] = None
    connection_class = pool.connection_class

    def make_connection() -> Any:
        return connection_class(**kwargs)

    return make_connection, timeout


# RESP of string arguments that recur in every command (names, the send script's SHA1, "+"...):
# looked up rather than encoded again, for a fifth of pack_commands' time. See known_arguments.
_KNOWN_ARGUMENTS: dict[str, bytes] = {}


def known_arguments(*args: str) -> None:
    """Pre-encode ``args``, strings that many commands carry (never data: the table only grows)."""
    for arg in args:
        raw = arg.encode()
        _KNOWN_ARGUMENTS[arg] = b"$%d\r\n%b\r\n" % (len(raw), raw)


def pack_commands(conn: Any, commands: list[Command]) -> bytes | list[bytes]:
    """``commands`` in RESP, byte for byte as ``conn.pack_commands`` (redis-py) packs them.

    chatsvc's commands are a name and str (in UTF-8, redis-py's default), bytes or int arguments:
    those are packed here, in a third of redis-py's time. Anything else (a float, a memoryview, a
    bool, a name with a space such as "CONFIG GET") goes to redis-py's packer.
    """
    out: list[bytes] = []
    append = out.append
    known = _KNOWN_ARGUMENTS.get
    for args in commands:
        name = args[0]
        if type(name) is not str or " " in name:
            return conn.pack_commands(commands)  # type: ignore[no-any-return]
        append(b"*%d\r\n" % len(args))
        for arg in args:
            if type(arg) is str:
                encoded = known(arg)
                if encoded is not None:
                    append(encoded)
                    continue
                arg = arg.encode()
            elif type(arg) is int:
                arg = b"%d" % arg
            elif type(arg) is not bytes:
                return conn.pack_commands(commands)  # type: ignore[no-any-return]
            append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


def parse_error(response: str) -> ResponseError:
    """A Redis error reply as redis-py's exception for it (NOSCRIPT, MOVED, ASK, WRONGTYPE...)."""
    return BaseParser.parse_error(response)  # type: ignore[no-any-return,no-untyped-call]


async def take_over(conn: Any) -> asyncio.StreamWriter:
    """Connect ``conn`` (a redis-py asyncio connection) and take its socket from it.

    redis-py does everything a connection needs before its first command: TCP or TLS, AUTH,
    SELECT, CLIENT SETNAME, HELLO, as its URL says. After that the socket's transport carries on
    under a ``_Link``, without redis-py's stream reader in the way, and redis-py no longer holds
    it (its finalizer would close it). The caller keeps the returned stream writer until it has
    closed the transport: from Python 3.13 a writer closes its transport when it is collected.
    """
    await conn.connect()
    writer: asyncio.StreamWriter = conn._writer
    conn._reader = conn._writer = None
    return writer


CLOSED, CONNECTING, OPEN = 0, 1, 2
INCOMPLETE = object()  # hiredis' answer while a reply is not all in (False is a RESP3 reply)


class _Link(CoalescingWriter, asyncio.Protocol):
    """One Redis connection carrying pipelined commands.

    Every command queued on it in one pass of the event loop goes out in one write at the end of
    that pass (or as soon as ``max_batch`` are queued); replies are read by hiredis as they arrive
    and handed to the commands in order. Each command must be answered within ``timeout`` seconds
    of being queued: one timer per connection, re-armed for the oldest command still waiting,
    rather than a timer per command. A late reply, a malformed one or a lost connection fails every
    command still waiting on the connection (their replies can no longer be matched), and the next
    command opens a fresh one.
    """

    def __init__(self, batcher: CommandBatcher) -> None:
        super().__init__()
        self._batcher = batcher
        self.conn = batcher.make_connection()  # the next connection's handshake, and the packer
        self.state = CLOSED
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()  # (command, queued at)
        self._batch = 0  # commands queued since the last write
        self._timer: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._stream: asyncio.StreamWriter | None = None  # see take_over
        self._reader = self._new_reader()

    def _new_reader(self) -> Any:
        encoder = getattr(self.conn, "encoder", None)
        decode = {"encoding": encoder.encoding, "errors": encoder.encoding_errors} if (
            encoder is not None and encoder.decode_responses) else {}
        return hiredis.Reader(protocolError=InvalidResponse, replyError=parse_error, notEnoughData=INCOMPLETE,
                              **decode)

    def add(self, args: Command, fut: asyncio.Future[Any]) -> None:
        """Queue one command in this pass's write; its reply (or error) goes to ``fut``."""
        self.append(args, fut)
        if self._batch >= self._batcher.max_batch:
            self._batcher.sealed(self)
            self.flush()
        else:
            self.flush_soon()

    def append(self, args: Command, fut: asyncio.Future[Any]) -> None:
        """``add`` without ending the batch or scheduling the write."""
        self._out.append(_pack(self.conn, args))
        self.waiting.append((fut, self._loop.time()))
        self._batch += 1
        if self._timer is None and self._batcher.timeout is not None:
            self._timer = self._loop.call_later(self._batcher.timeout, self._check)
        if self.state == CLOSED:
            self._connect()

    def flush(self) -> None:
        self._flush_scheduled = False
        if self.state != OPEN or not self._out:
            return  # written once the connection is open
        self._batcher.sealed(self)
        self._batch = 0
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._batcher.batches_sent += 1
        assert self.transport is not None
        if not self.transport.is_closing():  # else the server has just closed it: connection_lost follows
            self.transport.write(data)

    # -- the connection

    def _connect(self) -> None:
        self.state = CONNECTING
        self._connecting = self._loop.create_task(self._open(self.conn))

    async def _open(self, conn: Any) -> None:
        try:
            stream = await take_over(conn)
        except Exception as exc:  # every way a connect fails fails the commands waiting for it
            if self.conn is conn:
                self._reset(as_connection_error(exc))
            return
        except asyncio.CancelledError:  # _reset: the commands it was for timed out (a hung server)
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            raise
        finally:
            if self._connecting is asyncio.current_task():
                self._connecting = None
        if self.conn is not conn:  # the commands it was for timed out meanwhile
            stream.close()
            return
        self._stream = stream
        self.transport = transport = cast(asyncio.Transport, stream.transport)
        self.state = OPEN
        transport.set_protocol(self)
        self.flush()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self.waiting
        try:
            while (reply := reader.gets()) is not INCOMPLETE:
                fut = waiting.popleft()[0]
                if fut.done():
                    continue
                if isinstance(reply, Exception):  # an error reply: a ResponseError, or LOADING's
                    fut.set_exception(reply)      # BusyLoadingError, a ConnectionError
                else:
                    fut.set_result(reply)
        except (InvalidResponse, IndexError) as exc:  # IndexError: a reply to no command
            problem = str(exc) if isinstance(exc, InvalidResponse) else "a reply to no command"
            log.warning("dropping a Redis connection: %s", problem)
            self._reset(RedisConnectionError(f"Redis protocol error: {problem}"))
            return
        if not waiting:
            self._batcher.idle(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._reset(RedisConnectionError(f"connection lost: {exc or 'closed by server'}"))

    def _reset(self, failure: Exception) -> None:
        """Drop the connection and fail every command waiting on it; the next command connects again."""
        if self.transport is not None:
            self.transport.set_protocol(asyncio.Protocol())  # its last callbacks are not ours
            self.transport.abort()
            self.transport = None
            self._stream = None
        if self._connecting is not None and self._connecting is not asyncio.current_task():
            self._connecting.cancel()
        self.state = CLOSED
        self._out.clear()
        self._batch = 0
        self.conn = self._batcher.make_connection()
        self._reader = self._new_reader()
        waiting, self.waiting = self.waiting, deque()
        for fut, _ in waiting:
            if not fut.done():
                fut.set_exception(failure)
        self._batcher.dropped(self)
        self._batcher.idle(self)

    def _check(self) -> None:
        """The timer: drop the connection if its oldest command is late, else wait for that one."""
        self._timer = None
        if not self.waiting or self._batcher.timeout is None:
            return
        due = self.waiting[0][1] + self._batcher.timeout
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check)
        else:
            self._reset(RedisTimeoutError("Timeout reading from Redis"))

    async def close(self) -> None:
        """Once every command queued here is answered (or has failed), close the connection."""
        self.flush()
        if self.waiting:
            await asyncio.wait([fut for fut, _ in self.waiting])
        if self._connecting is not None:
            await asyncio.wait([self._connecting])
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()
            self.transport = None
            self._stream = None
        self.state = CLOSED


def _pack(conn: Any, args: Command) -> bytes:
    packed = pack_commands(conn, [args])
    return packed if isinstance(packed, bytes) else b"".join(packed)


class CommandBatcher:
    """Automatic pipelining over up to ``connections`` connections to one Redis server.

    The connections are made by ``client``'s pool settings, or by ``make_connection`` (a Redis
    Cluster node's, see ``ClusterBatcher``), and opened when first needed. A connection carries
    one batch at a time: the commands of one loop pass go to an idle connection in one write (at
    low load, always the first connection, and each command at once); while every connection
    waits for replies, commands queue, and the first connection to have all its replies takes
    the queue (up to ``max_batch``) as its next batch, so batches grow with the load. Each
    command must be answered within ``timeout`` seconds (``client``'s ``socket_timeout`` by
    default; see ``_Link``).
    """

    def __init__(self, client: aioredis.Redis | None = None, connections: int = 4, max_batch: int = 512, *,
                 make_connection: Callable[[], Any] | None = None, timeout: float | None = None) -> None:
        if make_connection is None:
            assert client is not None, "CommandBatcher needs a client or make_connection"
            make_connection, pool_timeout = _untimed_connections(client.connection_pool)
            timeout = pool_timeout if timeout is None else timeout
        self.make_connection = make_connection
        self.timeout = timeout or None
        self.max_batch = max_batch
        self._connections = connections
        self._links: list[_Link] = []  # made in the event loop, with the first command
        self._filling: _Link | None = None  # the connection taking this pass's commands
        self._queue: deque[tuple[Command, asyncio.Future[Any]]] = deque()  # while none is idle
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches_sent = 0  # writes

    async def execute(self, *args: Any) -> Any:
        """Run one command in the next batch; returns its reply or raises its error."""
        loop = self._loop
        if loop is None:  # looked up once: each lookup is a getpid() call in Python 3.11
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        link = self._filling or self._idle_link()
        if link is None:
            self._queue.append((args, fut))
        else:
            self._assign(link, args, fut)
        return await fut

    def _idle_link(self) -> _Link | None:
        if not self._links:
            self._links = [_Link(self) for _ in range(self._connections)]
        for link in self._links:
            if not link.waiting:
                self._filling = link
                return link
        return None

    def _assign(self, link: _Link, args: Command, fut: asyncio.Future[Any]) -> None:
        link.add(args, fut)

    def idle(self, link: _Link) -> None:
        """``link`` has every reply it waited for: it takes the queue, if any, as its next batch."""
        if not self._queue or self._filling is not None:
            return
        self._filling = link
        queue = self._queue
        for _ in range(min(len(queue), self.max_batch)):
            args, fut = queue.popleft()
            if not fut.done():  # its caller has given up
                self._assign(link, args, fut)

    def sealed(self, link: _Link) -> None:
        """``link``'s batch is complete and about to be written: the next command starts another."""
        if self._filling is link:
            self._filling = None

    def dropped(self, link: _Link) -> None:
        """``link``'s connection was dropped, and the commands on it failed."""
        if self._filling is link:
            self._filling = None

    async def close(self) -> None:
        """Once every command given to the batcher is answered (or has failed), close the connections."""
        if self._queue:
            await asyncio.wait([fut for _, fut in self._queue])
        await asyncio.gather(*(link.close() for link in self._links))


# --- Redis Cluster ---------------------------------------------------------------------------------

# Where a command's key is (for ClusterBatcher's routing); every other command: argument 1.
KEY_INDEX = {"EVALSHA": 3, "EVAL": 3, "FCALL": 3, "FCALL_RO": 3}
# Commands that write (ReplicatedBatcher holds their replies until WAIT has counted the replicas).
WRITE_COMMANDS = frozenset({"EVALSHA", "EVAL", "XADD"})
# A command redirected more often than this (MOVED, TRYAGAIN) fails: the topology is in flux.
MAX_REDIRECTS = 5
TRYAGAIN_DELAY = 0.05
# Topology refreshes (CLUSTER SLOTS) run in the background, at most once per this many seconds.
REFRESH_INTERVAL = 0.2
NO_RETRY = Retry(NoBackoff(), 0)


class NotReplicated(RedisError):
    """WAIT counted fewer replicas than required: the write is on the master only, and a failover
    before it replicates would lose it. The caller cannot tell whether it will survive."""


class ReplicatedBatcher(CommandBatcher):
    """A ``CommandBatcher`` whose batches with writes end with ``WAIT <replicas> <timeout_ms>``.

    WAIT, on the connection that carried the writes, returns once that many replicas have
    acknowledged every write before it (or when the timeout runs out): one WAIT covers the whole
    batch. A write succeeds only if WAIT counted enough replicas, else it fails with
    ``NotReplicated``; reads in the batch are answered as soon as their reply is read.
    """

    def __init__(self, *args: Any, replicas: int, timeout_ms: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._replicas = replicas
        self._wait: Command = ("WAIT", replicas, timeout_ms)
        # per connection, the writes of the batch being filled: (caller's future, reply's future)
        self._held: dict[_Link, list[tuple[asyncio.Future[Any], asyncio.Future[Any]]]] = {}

    def _assign(self, link: _Link, args: Command, fut: asyncio.Future[Any]) -> None:
        if args[0] not in WRITE_COMMANDS:
            return link.add(args, fut)
        proxy: asyncio.Future[Any] = link._loop.create_future()  # the reply, held until WAIT's
        self._held.setdefault(link, []).append((fut, proxy))
        link.add(args, proxy)

    def sealed(self, link: _Link) -> None:
        held = self._held.pop(link, None)
        if held:
            waited: asyncio.Future[Any] = link._loop.create_future()
            link.append(self._wait, waited)
            waited.add_done_callback(lambda w: self._settle(held, w))
        super().sealed(link)

    def dropped(self, link: _Link) -> None:
        held = self._held.pop(link, None)
        if held:  # their replies failed with the connection: so do they
            self._settle(held, None)
        super().dropped(link)

    def _settle(self, held: list[tuple[asyncio.Future[Any], asyncio.Future[Any]]],
                waited: asyncio.Future[Any] | None) -> None:
        failure: BaseException | None = None
        if waited is None or not waited.done() or waited.cancelled():
            failure = NotReplicated("WAIT did not complete")
        elif waited.exception() is not None:
            failure = NotReplicated(f"WAIT failed: {waited.exception()}")
        elif int(waited.result()) < self._replicas:
            failure = NotReplicated(f"WAIT counted {waited.result()} of {self._replicas} replicas in time")
        for fut, proxy in held:
            if fut.done():
                continue
            if not proxy.done() or proxy.cancelled():
                fut.cancel()
            elif proxy.exception() is not None:
                fut.set_exception(proxy.exception())  # type: ignore[arg-type]
            elif failure is not None:
                fut.set_exception(failure)
            else:
                fut.set_result(proxy.result())


class ClusterBatcher:
    """Automatic pipelining over a Redis Cluster: one ``CommandBatcher`` per master.

    Each command goes to the batcher of the master that serves its key's hash slot, so batches
    still grow with the load, per node, on dedicated connections. The slot map comes from
    redis-py's ``RedisCluster`` (its ``NodesManager`` reads CLUSTER SLOTS from the startup
    nodes) and is loaded on the first command.

    What is sent again and what is not:

    - MOVED (the slot has another owner: the route of that slot is patched and a full refresh
      scheduled), ASK (the slot is being migrated: the command goes once to the importing node
      after ASKING) and TRYAGAIN are answers to a command that was *not executed*: the command is
      sent again, up to ``MAX_REDIRECTS`` times.
    - A connection error or a timeout may come after the command ran (a send would be stored
      twice if it were sent again): the call fails, and a topology refresh is scheduled so that
      the next commands reach the new master once a replica has been promoted. CLUSTERDOWN
      (a failover in progress) fails the call too, and schedules a refresh.

    Refreshes run in the background, at most once per ``refresh_interval`` while errors keep
    coming; masters that left the map have their batcher closed once its commands are answered.
    """

    def __init__(self, cluster: RedisCluster, connections: int = 4, max_batch: int = 512, *,
                 wait_replicas: int = 0, wait_timeout: float = 0.5,
                 refresh_interval: float = REFRESH_INTERVAL) -> None:
        self._cluster = cluster
        self._connections = connections
        self._max_batch = max_batch
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = max(1, round(wait_timeout * 1000))
        self._refresh_interval = refresh_interval
        self._route: list[CommandBatcher | None] = []  # slot -> its master's batcher; [] until loaded
        self._by_node: dict[str, CommandBatcher] = {}  # "host:port" -> batcher
        self._load_lock = asyncio.Lock()
        self._stale = False
        self._refresher: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    async def execute(self, *args: Any) -> Any:
        """Run one command in the next batch to its key's master; returns its reply or raises."""
        key = args[KEY_INDEX.get(args[0], 1)]
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        if not self._route:
            await self._load()
        batcher = self._route[slot]
        redirects = 0
        while True:
            if batcher is None:
                self._schedule_refresh()
                raise ClusterDownError(f"CLUSTERDOWN no master serves slot {slot}")
            try:
                return await batcher.execute(*args)
            except MovedError as exc:  # before AskError, its base class
                batcher = self._moved(exc)
            except AskError as exc:
                return await self._asking(exc, args)
            except TryAgainError:
                await asyncio.sleep(TRYAGAIN_DELAY)
                batcher = self._route[slot]
            except (ClusterDownError, RedisConnectionError, RedisTimeoutError, OSError):
                self._schedule_refresh()
                raise
            redirects += 1
            if redirects > MAX_REDIRECTS:
                self._schedule_refresh()
                raise ClusterError(f"slot {slot}: still redirected after {MAX_REDIRECTS} attempts")

    # -- topology

    async def _load(self) -> None:
        async with self._load_lock:
            if not self._route:
                await self._refresh()

    async def _refresh(self) -> None:
        """Read CLUSTER SLOTS again and route every slot to its master's batcher."""
        try:
            await self._cluster.nodes_manager.initialize()
        except RedisClusterException as exc:  # not a RedisError: no startup node answered
            raise RedisConnectionError(f"Redis Cluster topology unavailable: {exc}") from exc
        route: list[CommandBatcher | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        masters: dict[str, CommandBatcher] = {}
        for slot, nodes in self._cluster.nodes_manager.slots_cache.items():
            if not nodes:
                continue
            node = nodes[0]
            batcher = masters.get(node.name)
            if batcher is None:
                batcher = masters[node.name] = self._by_node.get(node.name) or self._new_batcher(node)
            route[slot] = batcher
        gone = [b for name, b in self._by_node.items() if name not in masters]
        self._by_node = masters
        self._route = route
        for batcher in gone:
            self._close_later(batcher)

    def _schedule_refresh(self) -> None:
        self._stale = True
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while self._stale:
            self._stale = False
            try:
                await self._refresh()
            except Exception as exc:  # the next failing command asks again
                log.warning("Redis Cluster topology refresh failed: %s", exc)
            await asyncio.sleep(self._refresh_interval)

    def _moved(self, exc: MovedError) -> CommandBatcher:
        """Route ``exc``'s slot to the node it names; a full refresh follows in the background."""
        batcher = self._batcher_at(exc.host, exc.port)
        if self._route:
            self._route[exc.slot_id] = batcher
        self._schedule_refresh()
        return batcher

    def _node(self, host: str, port: int) -> ClusterNode:
        known = self._cluster.nodes_manager.get_node(host, port)
        if known is not None:
            return known
        kwargs: dict[str, Any] = dict(self._cluster.get_connection_kwargs())
        return ClusterNode(host, port, **kwargs)

    def _batcher_at(self, host: str, port: int) -> CommandBatcher:
        node = self._node(host, port)
        batcher = self._by_node.get(node.name)
        if batcher is None:
            batcher = self._by_node[node.name] = self._new_batcher(node)
        return batcher

    def _new_batcher(self, node: ClusterNode) -> CommandBatcher:
        # No retries (see the class docstring); the batcher times each batch instead of each read.
        kwargs = {**node.connection_kwargs, "retry": NO_RETRY, "socket_timeout": None}
        timeout = node.connection_kwargs.get("socket_timeout")

        def make_connection() -> Any:
            return node.connection_class(**kwargs)

        if self._wait_replicas:
            return ReplicatedBatcher(None, self._connections, self._max_batch, make_connection=make_connection,
                                     timeout=timeout, replicas=self._wait_replicas,
                                     timeout_ms=self._wait_timeout_ms)
        return CommandBatcher(None, self._connections, self._max_batch, make_connection=make_connection,
                              timeout=timeout)

    async def _asking(self, exc: AskError, args: Command) -> Any:
        """``args`` once on the importing node, after ASKING on the same connection (slot migration only)."""
        node = self._node(exc.host, exc.port)
        conn = node.connection_class(**{**node.connection_kwargs, "retry": NO_RETRY})
        try:
            await conn.send_packed_command(conn.pack_commands([("ASKING",), args]), check_health=False)
            await conn.read_response()
            return await conn.read_response()
        except (RedisConnectionError, RedisTimeoutError, OSError, RuntimeError) as exc:
            self._schedule_refresh()
            failure = as_connection_error(exc)
            if failure is exc:
                raise
            raise failure from exc
        finally:
            await conn.disconnect()

    def _close_later(self, batcher: CommandBatcher) -> None:
        task = asyncio.get_running_loop().create_task(batcher.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        batchers = list(self._by_node.values())
        self._by_node, self._route = {}, []
        await asyncio.gather(*(b.close() for b in batchers), *self._closing, return_exceptions=True)
