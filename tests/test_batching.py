"""Automatic pipelining against a real Redis: fewer round trips, and each caller its own outcome."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from chatsvc.batching import CommandBatcher
from chatsvc.storage import RedisStorage


@pytest.fixture
async def client(redis_url):
    c = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    await c.aclose()


async def test_concurrent_commands_share_batches(client):
    batcher = CommandBatcher(client)
    results = await asyncio.gather(*[batcher.execute("INCR", "n") for _ in range(200)])
    assert sorted(results) == list(range(1, 201))
    assert batcher.batches_sent < 20  # 200 commands issued in one tick: a handful of pipelines


async def test_an_error_fails_only_its_own_command(client):
    await client.set("plain", "x")
    batcher = CommandBatcher(client)
    ok, bad, ok2 = await asyncio.gather(
        batcher.execute("INCR", "counter"), batcher.execute("XRANGE", "plain", "-", "+"),
        batcher.execute("GET", "plain"), return_exceptions=True)
    assert ok == 1 and ok2 == "x"
    assert isinstance(bad, ResponseError) and "WRONGTYPE" in str(bad)


async def test_max_batch_splits_large_bursts(client):
    batcher = CommandBatcher(client, max_batch=10)
    await asyncio.gather(*[batcher.execute("PING") for _ in range(35)])
    assert batcher.batches_sent == 4


@pytest.mark.parametrize("batch", [True, False])
async def test_send_script_is_reloaded_after_script_flush(redis_url, client, batch):
    """A Redis restarted without its script cache answers NOSCRIPT: the send must still succeed once."""
    storage = RedisStorage.from_url(redis_url, pool_size=4, timeout=2, connect_timeout=1, batch=batch)
    try:
        await storage.append("a:b", "a", "one")
        await client.script_flush()
        await asyncio.gather(*[storage.append("a:b", "a", f"m{i}") for i in range(5)])
        rows = await storage.page("a:b", 0, 100, reverse=False)
        assert [r.text for r in rows][0] == "one" and len(rows) == 6
    finally:
        await storage.close()


async def test_connection_failure_fails_every_waiting_command():
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=None)
    batcher = CommandBatcher(dead)
    results = await asyncio.gather(*[batcher.execute("PING") for _ in range(5)], return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)
    await dead.aclose()
