"""Automatic pipelining for redis-py asyncio: concurrent callers' commands share round trips.

Under load many calls wait on Redis at once. Sending their commands one by one costs a write, a
read and redis-py's per-command machinery each. Here every command goes into a queue; a small,
fixed set of dedicated redis-py connections each takes the whole queue (up to ``max_batch``)
as one pipelined write, reads the replies in order, and comes back for more. While all
connections are busy the queue grows, so batches grow with the load by themselves. Each caller
still gets its own reply or its own error.

On a Redis Cluster, ``ClusterBatcher`` keeps one such batcher per master and sends each command to
the master of its key's hash slot (see its docstring for redirections, failures and failovers);
``ReplicatedBatcher`` adds ``WAIT`` to batches that write (REDIS_CLUSTER_WAIT_REPLICAS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

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


class _Link:
    """A dedicated connection, and the deadline of the batch in flight on it.

    Each batch must be answered within ``timeout`` seconds of being sent. Instead of a timer
    created and cancelled per batch (``asyncio.timeout`` was ~5% of chatsvc's profile samples at
    2,000 sends/s, where batches are small), one timer per connection is re-armed lazily: when it
    fires, it looks at the batch in flight then (if any) and cancels it if that batch is late,
    else waits for that batch's deadline.
    """

    __slots__ = ("conn", "task", "expired", "_timeout", "_loop", "_sent_at", "_timer")

    def __init__(self, conn: Any, timeout: float | None) -> None:
        self.conn = conn
        self.task: asyncio.Task[None] | None = None  # the batch's task, set by the dispatcher
        self.expired = False  # the timer cancelled the batch in flight
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sent_at: float | None = None  # while a batch is in flight
        self._timer: asyncio.TimerHandle | None = None

    def begin(self) -> None:
        """A batch is being sent now."""
        if self._timeout is None:
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self.expired = False
        self._sent_at = now = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(now + self._timeout, self._check)

    def end(self) -> None:
        self._sent_at = None

    def _check(self) -> None:
        self._timer = None
        if self._sent_at is None or self._timeout is None or self._loop is None:
            return  # no batch in flight: the next one arms the timer again
        due = self._sent_at + self._timeout
        if self._loop.time() < due:  # a later batch: wait for its deadline
            self._timer = self._loop.call_at(due, self._check)
        elif self.task is not None:
            self.expired = True
            self.task.cancel()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class CommandBatcher:
    """Automatic pipelining over ``connections`` dedicated connections to one Redis server.

    The connections come from ``client``'s pool settings, or from ``make_connection`` (a Redis
    Cluster node's, see ``ClusterBatcher``). Each batch must be answered within ``timeout``
    seconds (``client``'s ``socket_timeout`` by default): one deadline per batch (see ``_Link``)
    replaces redis-py's timeout per read and per write (a timer per reply, a task per write), which
    cost more than reading the replies.
    """

    def __init__(self, client: aioredis.Redis | None = None, connections: int = 4, max_batch: int = 512, *,
                 make_connection: Callable[[], Any] | None = None, timeout: float | None = None) -> None:
        connect: Callable[[], Any]
        if make_connection is not None:
            connect = make_connection
        else:
            assert client is not None, "CommandBatcher needs a client or make_connection"
            connect, pool_timeout = _untimed_connections(client.connection_pool)
            timeout = pool_timeout if timeout is None else timeout
        self._idle: list[_Link] = [_Link(connect(), timeout or None) for _ in range(connections)]
        self._all = list(self._idle)
        self._max_batch = max_batch
        self._queue: list[tuple[Command, asyncio.Future[Any]]] = []
        self._batch_starting = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches_sent = 0

    async def execute(self, *args: Any) -> Any:
        """Run one command in the next batch; returns its reply or raises its error."""
        loop = self._loop
        if loop is None:  # the connections' loop, looked up once (each lookup is a getpid() call)
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, fut))
        if self._idle and not self._batch_starting:
            self._start_batch(loop)
        return await fut

    def _start_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start a task on an idle connection. It takes its batch when it first runs, in the next
        loop pass: every command queued until then (up to ``max_batch``). Starting the task at
        once, rather than from a callback in the next pass, saves a loop pass per batch."""
        self._batch_starting = True
        link = self._idle.pop()
        link.task = loop.create_task(self._run(link))
        self._tasks.add(link.task)

    async def _run(self, link: _Link) -> None:
        self._batch_starting = False
        batch = self._queue[: self._max_batch]
        del self._queue[: self._max_batch]
        if self._queue and self._idle:  # more than one batch is waiting
            self._start_batch(self._loop or asyncio.get_running_loop())
        try:
            if batch:
                self.batches_sent += 1
                await self._exchange(link, batch)
        finally:
            # Bookkeeping as the batch ends, rather than in a done callback (one less callback).
            self._tasks.discard(link.task)
            self._idle.append(link)
            if self._queue and not self._batch_starting:
                self._start_batch(self._loop or asyncio.get_running_loop())

    async def _exchange(self, link: _Link, batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        conn = link.conn
        try:
            await self._timed(link, batch)
        except Exception as exc:  # the connection failed: every command still waiting fails with it
            await conn.disconnect(nowait=True)
            failure = as_connection_error(exc)
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(failure)
        except BaseException:
            await conn.disconnect(nowait=True)
            for _, fut in batch:
                fut.cancel()
            raise

    async def _timed(self, link: _Link, batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        """``_send_and_read``, raising TimeoutError if ``link``'s timer cut it off."""
        link.begin()
        try:
            await self._send_and_read(link.conn, batch)
        except asyncio.CancelledError:
            if not link.expired or link.task is None:
                raise
            link.task.uncancel()
            raise TimeoutError from None
        finally:
            link.end()

    @staticmethod
    async def _send_and_read(conn: Any, batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        await conn.send_packed_command(pack_commands(conn, [args for args, _ in batch]), check_health=False)
        for _, fut in batch:
            try:
                reply = await conn.read_response()
            except ResponseError as exc:  # this command failed; the connection is still in step
                if not fut.done():
                    fut.set_exception(exc)
                continue
            if not fut.done():
                fut.set_result(reply)

    async def close(self) -> None:
        while self._queue or self._tasks:
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            else:
                self._start_batch(asyncio.get_running_loop())
        for link in self._all:
            link.close()
            await link.conn.disconnect()


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

    async def _exchange(self, link: _Link, batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        loop = asyncio.get_running_loop()
        held: list[tuple[asyncio.Future[Any], asyncio.Future[Any]]] = []  # (caller's future, proxy)
        sent: list[tuple[Command, asyncio.Future[Any]]] = []
        for args, fut in batch:
            if args[0] in WRITE_COMMANDS:
                proxy: asyncio.Future[Any] = loop.create_future()
                held.append((fut, proxy))
                sent.append((args, proxy))
            else:
                sent.append((args, fut))
        if not held:
            return await super()._exchange(link, batch)
        waited: asyncio.Future[Any] = loop.create_future()
        sent.append((self._wait, waited))
        try:
            await super()._exchange(link, sent)
        finally:
            self._settle(held, waited)

    def _settle(self, held: list[tuple[asyncio.Future[Any], asyncio.Future[Any]]],
                waited: asyncio.Future[Any]) -> None:
        failure: BaseException | None = None
        if not waited.done() or waited.cancelled():
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
