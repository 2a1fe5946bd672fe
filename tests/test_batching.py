"""Automatic pipelining against a real Redis: fewer round trips, and each caller its own outcome."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from chatsvc.batching import CommandBatcher, known_arguments, pack_commands
from chatsvc.storage import SEND_SCRIPT_SHA, RedisStorage


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
    """A Redis restarted without its script cache answers NOSCRIPT: the send must still succeed once.
    The chat's last entry is ahead of the clock, so every send needs the script (a plain XADD is
    refused)."""
    storage = RedisStorage.from_url(redis_url, pool_size=4, timeout=2, connect_timeout=1, batch=batch)
    try:
        ahead = time.time_ns() // 1000 + 10_000_000
        await client.xadd("chat:{a:b}", {"s": "a", "x": "one"}, id=f"{ahead}-0")
        await storage.append("a:b", "a", "two")  # loads the script
        await client.script_flush()
        await client.config_resetstat()
        times = await asyncio.gather(*[storage.append("a:b", "a", f"m{i}") for i in range(5)])
        assert (await client.info("commandstats"))["cmdstat_eval"]["calls"] >= 1  # NOSCRIPT, then EVAL
        rows = await storage.page("a:b", 0, 100, reverse=False)
        assert [r.text for r in rows[:2]] == ["one", "two"]
        assert sorted((r.send_time, r.text) for r in rows[2:]) == sorted(
            (t, f"m{i}") for i, t in enumerate(times))
        assert sorted(times) == list(range(ahead + 2, ahead + 7))
    finally:
        await storage.close()


async def test_connection_failure_fails_every_waiting_command():
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=None)
    batcher = CommandBatcher(dead)
    results = await asyncio.gather(*[batcher.execute("PING") for _ in range(5)], return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)
    await dead.aclose()


async def test_a_batch_that_stays_unanswered_times_out():
    """A server that accepts and never answers: the batch fails with a redis TimeoutError after the
    batcher's timeout (one timer per connection, see _Link), and so does every command in it."""
    from redis.exceptions import TimeoutError as RedisTimeoutError

    async def silent(reader, writer):
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    batcher = CommandBatcher(make_connection=lambda: aioredis.Connection(host="127.0.0.1", port=port),
                             connections=1, timeout=0.3)
    loop = asyncio.get_running_loop()
    start = loop.time()
    results = await asyncio.gather(batcher.execute("PING"), batcher.execute("PING"), return_exceptions=True)
    assert all(isinstance(r, RedisTimeoutError) for r in results), results
    assert 0.25 <= loop.time() - start < 2
    await batcher.close()
    server.close()
    await server.wait_closed()


async def test_the_timeout_applies_to_each_batch_not_to_a_run_of_them(client):
    """Batches back to back on one connection, each answered within the timeout but together
    taking longer: none times out (the per-connection timer follows the batch in flight). A batch
    slower than the timeout does, and the next one runs on a fresh connection."""
    from redis.exceptions import TimeoutError as RedisTimeoutError

    batcher = CommandBatcher(client, connections=1, timeout=0.5)
    for _ in range(4):  # BLPOP on an empty list answers nil after its own timeout, 0.2 s
        assert await batcher.execute("BLPOP", "nothing", "0.2") is None
    with pytest.raises(RedisTimeoutError):
        await batcher.execute("BLPOP", "nothing", "2")
    assert await batcher.execute("PING") == "PONG"
    await batcher.close()


@pytest.mark.parametrize("commands", [
    [("EVALSHA", SEND_SCRIPT_SHA, 1, "chat:{é:b}", "é", "x" * 7000), ("XRANGE", "k", "0", "+", "COUNT", 21)],
    [("XADD", "chat:{é:b}", b"%d-0" % 1_795_790_919_606_091, "s", "é", "x", "x" * 7000)],  # a send
    [("PING",), ("SET", b"k", b"v" * 10), ("XREVRANGE", "k", "+", "-", "COUNT", 1), ("GET", "")],
    [("CONFIG GET", "maxmemory")],  # a name with a space: redis-py splits it
    [("SET", "f", 1.5)],  # a float: redis-py's own packer
])
def test_pack_commands_is_byte_for_byte_redis_pys(commands):
    known_arguments("k")  # a known argument, as the storage's constants are
    conn = aioredis.Connection()
    packed = pack_commands(conn, commands)
    assert (packed if isinstance(packed, bytes) else b"".join(packed)) == b"".join(conn.pack_commands(commands))
