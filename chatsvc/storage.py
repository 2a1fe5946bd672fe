"""Message storage in Redis: the only module that knows key names and Redis commands.

One Redis Stream per chat, key ``chat:{<canonical chat>}``: the braces make the chat id a Redis
Cluster hash tag. An entry's id is ``<send_time>-0`` (send_time in microseconds) and its fields are
``s`` (sender) and ``x`` (text), so paging by send_time is a plain ``XRANGE``/``XREVRANGE``.
Replies are read as bytes, not decoded: a page's sender and text bytes go into the Pull reply as
they are (``wire.pages``), with no str or struct per message.

Every command touches exactly one key, so a chat lives wholly on one Redis Cluster shard and the
same commands run unchanged on a single Redis or on a cluster: ``from_url`` picks the client
(``redis+cluster://host:port[,host:port...]`` or ``cluster=True`` for redis-py's ``RedisCluster``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from chatsvc.batching import ClusterBatcher, CommandBatcher, as_connection_error, known_arguments
from chatsvc.config import parse_addr
from chatsvc.errors import StorageUnavailable

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS
REDIS_DEFAULT_PORT = 6379
# Redis errors, and the one redis-py cluster error that is not a RedisError (no node reachable).
STORAGE_ERRORS = (RedisError, RedisClusterException, OSError)

# send_time is chatsvc's clock in µs, raised past the chat's last send_time when it is not above it,
# assigned atomically with the write so that concurrent sends to one chat (from any number of
# chatsvc processes) never share a time and always increase in the order stored. The usual case is
# one plain XADD with that time as the entry's id: a stream refuses an id not above its last, which
# is the whole check, and costs Redis ~4 us of CPU against ~14 us for the script below. Only when
# it refuses (another chatsvc's clock ahead of this one, or a clock gone back) does SEND_SCRIPT run:
# it reads the last id and stores at max(Redis clock, last + 1). An XADD refused for any other
# reason (a key that is not a stream, out of memory) fails the send. Numbers are formatted with
# %.0f because Lua's own number-to-string conversion keeps only 14 significant digits.
SEND_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local id = string.format('%.0f', now)
local added = redis.pcall('XADD', KEYS[1], id .. '-0', 's', ARGV[1], 'x', ARGV[2])
if type(added) == 'table' and added.err then
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  if not last then return added end
  local prev = tonumber(string.match(last[1], '^(%d+)'))
  if prev < now then return added end
  id = string.format('%.0f', prev + 1)
  redis.call('XADD', KEYS[1], id .. '-0', 's', ARGV[1], 'x', ARGV[2])
end
return id
"""
SEND_SCRIPT_SHA = hashlib.sha1(SEND_SCRIPT.encode()).hexdigest()
known_arguments("EVALSHA", SEND_SCRIPT_SHA, "XADD", "s", "x", "XRANGE", "XREVRANGE", "+", "-", "COUNT")
# How Redis refuses an XADD id that is not above the stream's last (t_stream.c, Redis 5 to 7).
ID_TOO_SMALL = "equal or smaller than the target stream top item"


class StoredMessage(NamedTuple):
    """A stored message: its send_time (µs), and its sender and text as stored (UTF-8)."""

    send_time: int
    sender_utf8: bytes
    text_utf8: bytes

    @classmethod
    def of(cls, sender: str, text: str, send_time: int) -> StoredMessage:
        return cls(send_time, sender.encode(), text.encode())

    @property
    def sender(self) -> str:
        return self.sender_utf8.decode()

    @property
    def text(self) -> str:
        return self.text_utf8.decode()


# Builds a NamedTuple from a tuple of its fields in C (``StoredMessage._make`` without its Python
# frame), for the per-row loop of a page.
_new_tuple = tuple.__new__


def chat_key(canonical_chat: str) -> str:
    return "chat:{" + canonical_chat + "}"


@dataclass(frozen=True)
class ClusterAddress:
    """Where a Redis Cluster is: its startup nodes and credentials."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterAddress:
    """``redis+cluster://[user:password@]host:port[,host:port...][/0]`` (``rediss+cluster`` for TLS),
    or a plain ``redis://``/``rediss://`` URL naming one startup node. Raises ValueError."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in {*CLUSTER_SCHEMES, "redis", "rediss"}:
        raise ValueError(f"not a Redis URL: {url!r}")
    netloc, _, path = rest.partition("/")
    path, _, query = path.partition("?")
    if query or path not in ("", "0"):
        raise ValueError(f"a Redis Cluster URL takes no query and only database 0: {url!r}")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = tuple(parse_addr(h, REDIS_DEFAULT_PORT) for h in hosts.split(",") if h.strip())
    if not nodes:
        raise ValueError(f"no Redis Cluster node in {url!r}")
    if any(not 0 < port < 65536 for _, port in nodes):
        raise ValueError(f"port out of range in {url!r}")
    tls = CLUSTER_SCHEMES.get(scheme, scheme == "rediss")
    return ClusterAddress(nodes, username, password, tls)


class Executor(Protocol):
    async def execute(self, *args: Any) -> Any: ...
    async def close(self) -> None: ...


class BoundedClusterCommands:
    """Cluster commands one by one through ``RedisCluster.execute_command`` (REDIS_BATCH=false).

    Two redis-py 8 habits are worked around here. Its cluster node pools raise MaxConnectionsError
    when all their connections are busy instead of waiting for one: at most ``limit`` commands
    run at once, so no node's pool (``max_connections=limit``) runs out, and a command waits up
    to ``timeout`` for its turn. And commands issued while it loads the slot map for the first
    time can go to the wrong node (they come back MOVED): the map is loaded before any command.
    """

    def __init__(self, cluster: RedisCluster, limit: int, timeout: float) -> None:
        self._cluster = cluster
        self._slots = asyncio.Semaphore(limit)
        self._timeout = timeout
        self._init_lock = asyncio.Lock()

    async def execute(self, *args: Any) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise RedisConnectionError(f"no Redis connection free within {self._timeout}s") from None
        try:
            if self._cluster._initialize:  # the slot map is not loaded (or redis-py dropped it)
                async with self._init_lock:
                    await self._cluster.initialize()
            return await self._cluster.execute_command(*args)
        except RuntimeError as exc:  # uvloop: a write to a connection the server has just closed
            failure = as_connection_error(exc)
            if failure is exc:
                raise
            raise failure from exc
        finally:
            self._slots.release()

    async def close(self) -> None:
        pass


class RedisStorage:
    """Append and range-read chat messages in Redis (one server or a Redis Cluster)."""

    def __init__(self, client: aioredis.Redis | RedisCluster, batch: bool = True, *,
                 executor: Executor | None = None) -> None:
        self._redis = client
        self._batcher: Executor | None = executor
        if executor is None and batch:
            assert isinstance(client, aioredis.Redis), "a RedisCluster needs an executor"
            self._batcher = CommandBatcher(client)
        # One command, through the batcher (automatic pipelining) when it is on; bound once, as
        # every call goes through it.
        self._command: Callable[..., Awaitable[Any]] = (
            self._batcher.execute if self._batcher is not None else client.execute_command)
        self._last_time = 0  # the last send_time _clock gave

    @classmethod
    def from_url(cls, url: str, *, pool_size: int, timeout: float, connect_timeout: float,
                 batch: bool = True, cluster: bool = False, wait_replicas: int = 0,
                 wait_timeout: float = 0.5) -> RedisStorage:
        """A storage over ``url``: one Redis, or a Redis Cluster when ``url`` is a
        ``redis+cluster://`` URL or ``cluster`` is true (``wait_replicas``: see ClusterBatcher)."""
        if cluster or is_cluster_url(url):
            return cls._cluster(parse_cluster_url(url), pool_size=pool_size, timeout=timeout,
                                connect_timeout=connect_timeout, batch=batch, wait_replicas=wait_replicas,
                                wait_timeout=wait_timeout)
        # No automatic retries: a retried script could store a message twice.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,  # bytes: a page's are passed on as they are
        )
        return cls(aioredis.Redis(connection_pool=pool), batch)

    @classmethod
    def _cluster(cls, address: ClusterAddress, *, pool_size: int, timeout: float, connect_timeout: float,
                 batch: bool, wait_replicas: int, wait_timeout: float) -> RedisStorage:
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
            username=address.username,
            password=address.password,
            ssl=address.tls,
            decode_responses=False,  # as from_url's
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout,
            max_connections=pool_size,  # per node
            # No retries of connection errors, timeouts or CLUSTERDOWN (a send could run twice);
            # MOVED, ASK and TRYAGAIN (never executed) are still followed.
            retry=Retry(NoBackoff(), 0),
            # The URL's nodes stay the ones asked for the slot map (names, not the IPs that
            # CLUSTER SLOTS reports, which may change when a container restarts).
            dynamic_startup_nodes=False,
            # Keep serving the slots that have a master while another shard fails over.
            require_full_coverage=False,
            # On MOVED, redis-py re-reads the slot map every reinitialize_steps-th time by closing
            # every connection, cutting off the commands in flight on all nodes: patch the one
            # slot instead (ClusterBatcher does its own refreshes).
            reinitialize_steps=0,
        )
        executor: Executor = (ClusterBatcher(client, wait_replicas=wait_replicas, wait_timeout=wait_timeout)
                              if batch else BoundedClusterCommands(client, pool_size, timeout))
        return cls(client, batch, executor=executor)

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        if isinstance(self._redis, RedisCluster):
            await self._redis.aclose()
            # aclose() skips a client that redis-py did not initialize itself (ClusterBatcher reads
            # the slot map through its NodesManager): close the nodes' connections here.
            for nodes in ("nodes_cache", "startup_nodes"):
                with contextlib.suppress(*STORAGE_ERRORS):
                    await self._redis.nodes_manager.aclose(nodes)
        else:
            await self._redis.aclose(close_connection_pool=True)

    async def ping(self) -> bool:
        """Does Redis answer (on a cluster: every master)?"""
        try:
            if isinstance(self._redis, RedisCluster):
                return bool(await self._redis.ping(target_nodes=RedisCluster.PRIMARIES))
            return bool(await self._redis.ping())
        except STORAGE_ERRORS:
            return False

    async def append(self, chat: str, sender: str, text: str) -> int:
        """Store a message in ``chat``; returns its send_time (µs)."""
        key = chat_key(chat)
        send_time = self._clock()
        try:
            try:
                await self._command("XADD", key, b"%d-0" % send_time, "s", sender, "x", text)
                return send_time
            except ResponseError as exc:
                if ID_TOO_SMALL not in str(exc):
                    raise
            return int(await self._send_script(key, sender, text))
        except STORAGE_ERRORS as exc:
            raise StorageUnavailable(type(exc).__name__) from exc

    def _clock(self) -> int:
        """Now in µs, and above every time this process has used: its own sends never collide."""
        now = self._last_time = max(time.time_ns() // 1000, self._last_time + 1)
        return now

    async def _send_script(self, key: str, sender: str, text: str) -> Any:
        try:
            return await self._command("EVALSHA", SEND_SCRIPT_SHA, 1, key, sender, text)
        except NoScriptError:
            # Not executed (a restarted Redis, or a replica promoted by a failover, has an empty
            # script cache): EVAL runs it once more, on the same node, and caches it there.
            return await self._command("EVAL", SEND_SCRIPT, 1, key, sender, text)

    async def page(self, chat: str, cursor: int, count: int, reverse: bool) -> list[StoredMessage]:
        """Up to ``count`` messages from ``cursor`` (inclusive) in the given direction.

        Forward: send_time >= cursor, oldest first. Reverse: send_time <= cursor (cursor 0 means
        from the newest), newest first.
        """
        key = chat_key(chat)
        try:
            if reverse:
                entries = await self._command("XREVRANGE", key, str(cursor) if cursor else "+", "-", "COUNT", count)
            else:
                entries = await self._command("XRANGE", key, str(cursor), "+", "COUNT", count)
        except STORAGE_ERRORS as exc:
            raise StorageUnavailable(type(exc).__name__) from exc
        # The layout SEND_SCRIPT writes (``[s, sender, x, text]``, raw from the batcher) is read
        # inline, the rows built with tuple.__new__ rather than two Python calls each (_message and
        # the NamedTuple's constructor): 21 rows took 19 us, then 14 us (micro-benchmark).
        return [_new_tuple(StoredMessage, (int(eid[: eid.index(b"-")]), f[1], f[3]))
                if type(f) is list and len(f) == 4 and f[0] == b"s" and f[2] == b"x" else _message(eid, f)
                for eid, f in entries]


def _message(entry_id: bytes, fields: Any) -> StoredMessage:
    """A stream entry in another field order, raw (``[k, v, ...]``, from the batcher) or parsed by
    redis-py (a dict)."""
    send_time = int(entry_id[: entry_id.index(b"-")])
    if not isinstance(fields, dict):
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    return StoredMessage(send_time, fields[b"s"], fields[b"x"])
