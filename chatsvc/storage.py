"""Message storage in Redis: the only module that knows key names and Redis commands.

One Redis Stream per chat, key ``chat:{<canonical chat>}``: the braces make the chat id a Redis
Cluster hash tag. An entry's id is ``<send_time>-0`` (send_time in microseconds) and its fields are
``s`` (sender) and ``x`` (text), so paging by send_time is a plain ``XRANGE``/``XREVRANGE``.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from chatsvc.batching import CommandBatcher
from chatsvc.errors import StorageUnavailable

# send_time = max(Redis clock in µs, last send_time + 1), assigned atomically with the write so
# that concurrent sends to one chat never share a time. Numbers are formatted with %.0f because
# Lua's own number-to-string conversion keeps only 14 significant digits.
SEND_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if last then
  local prev = tonumber(string.match(last[1], '^(%d+)'))
  if prev >= now then now = prev + 1 end
end
local id = string.format('%.0f', now)
redis.call('XADD', KEYS[1], id .. '-0', 's', ARGV[1], 'x', ARGV[2])
return id
"""
SEND_SCRIPT_SHA = hashlib.sha1(SEND_SCRIPT.encode()).hexdigest()


class StoredMessage(NamedTuple):
    sender: str
    text: str
    send_time: int


def chat_key(canonical_chat: str) -> str:
    return "chat:{" + canonical_chat + "}"


class RedisStorage:
    """Append and range-read chat messages in Redis."""

    def __init__(self, client: aioredis.Redis, batch: bool = True) -> None:
        self._redis = client
        self._batcher = CommandBatcher(client) if batch else None

    @classmethod
    def from_url(cls, url: str, *, pool_size: int, timeout: float, connect_timeout: float,
                 batch: bool = True) -> RedisStorage:
        # No automatic retries: a retried script could store a message twice.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        return cls(aioredis.Redis(connection_pool=pool), batch)

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        await self._redis.aclose(close_connection_pool=True)

    async def _command(self, *args: Any) -> Any:
        """One command, through the batcher (automatic pipelining) when it is on."""
        if self._batcher is not None:
            return await self._batcher.execute(*args)
        return await self._redis.execute_command(*args)  # type: ignore[no-untyped-call]

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def append(self, chat: str, sender: str, text: str) -> int:
        """Store a message in ``chat``; returns its send_time (µs)."""
        args = ("EVALSHA", SEND_SCRIPT_SHA, 1, chat_key(chat), sender, text)
        try:
            try:
                send_time = await self._command(*args)
            except NoScriptError:  # not executed: safe to load the script and run it once more
                await self._redis.script_load(SEND_SCRIPT)
                send_time = await self._command(*args)
        except (RedisError, OSError) as exc:
            raise StorageUnavailable(type(exc).__name__) from exc
        return int(send_time)

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
        except (RedisError, OSError) as exc:
            raise StorageUnavailable(type(exc).__name__) from exc
        return [_message(eid, fields) for eid, fields in entries]


def _message(entry_id: str, fields: Any) -> StoredMessage:
    """A stream entry, raw (``[k, v, ...]``, from the batcher) or parsed by redis-py (a dict)."""
    send_time = int(entry_id[: entry_id.index("-")])
    if isinstance(fields, list) and len(fields) == 4 and fields[0] == "s" and fields[2] == "x":
        return StoredMessage(fields[1], fields[3], send_time)  # the layout SEND_SCRIPT writes
    if not isinstance(fields, dict):
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    return StoredMessage(fields["s"], fields["x"], send_time)
