"""Automatic pipelining against a real Redis: fewer round trips, and each caller its own outcome."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from chatsvc.batching import CommandBatcher, known_arguments, pack_commands
from chatsvc.errors import StorageUnavailable
from chatsvc.storage import SEND_SCRIPT_SHA, RedisStorage
from tests.procs import start_redis


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


async def test_a_lone_command_is_one_write_on_the_first_connection(client):
    """At low load each command goes out at once, in its own write, on the one connection that is
    open: no connection is opened that a command did not need."""
    batcher = CommandBatcher(client, connections=4)
    await client.config_resetstat()
    for i in range(10):
        assert await batcher.execute("INCR", "n") == i + 1
    assert batcher.batches_sent == 10
    info = await client.info("stats")
    assert info["total_connections_received"] == 1
    await batcher.close()


async def test_a_slow_command_does_not_hold_up_the_next_ones(client):
    """A command goes to a connection with no reply due: a BLPOP blocking one connection does not
    delay a PING, which goes out on another."""
    batcher = CommandBatcher(client, connections=2)
    blocked = asyncio.ensure_future(batcher.execute("BLPOP", "nothing", "1"))
    await asyncio.sleep(0.05)
    start = time.monotonic()
    assert await batcher.execute("PING") == "PONG"
    assert time.monotonic() - start < 0.5
    assert await blocked is None
    await batcher.close()


async def test_a_connection_the_server_drops_fails_its_commands_and_the_next_one_reconnects(client):
    batcher = CommandBatcher(client, connections=1)
    blocked = asyncio.ensure_future(batcher.execute("BLPOP", "nothing", "5"))
    await asyncio.sleep(0.05)
    assert await client.client_kill_filter(_type="normal", skipme=True) >= 1
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(blocked, 2)
    assert await batcher.execute("PING") == "PONG"
    await batcher.close()


@contextlib.asynccontextmanager
async def fake_redis(answer):
    """A server speaking just enough RESP: ``answer(command)`` gives each command's reply bytes
    (the handshake's HELLO and CLIENT are answered here)."""
    import hiredis

    async def serve(reader, writer):
        requests = hiredis.Reader()
        while data := await reader.read(65536):
            requests.feed(data)
            while (command := requests.gets()) is not False:
                name = command[0].upper()
                writer.write(b"%1\r\n+proto\r\n:3\r\n" if name == b"HELLO" else b"+OK\r\n" if name == b"CLIENT"
                             else answer(command))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_an_error_reply_redis_py_counts_as_a_connection_error_fails_its_command():
    """A restarted Redis answers LOADING while it reads its AOF, which redis-py turns into a
    BusyLoadingError, a ConnectionError rather than a ResponseError: the send must fail (503),
    never pass as stored (a kill -9 test caught it)."""
    from redis.exceptions import BusyLoadingError

    async with fake_redis(lambda command: b"-LOADING Redis is loading the dataset in memory\r\n") as port:
        storage = RedisStorage.from_url(f"redis://127.0.0.1:{port}/0", pool_size=4, timeout=2, connect_timeout=1)
        with pytest.raises(StorageUnavailable) as info:
            await storage.append("a:b", "a", "hi")
        assert isinstance(info.value.__cause__, BusyLoadingError)
        await storage.close()


async def test_a_false_reply_is_a_reply():
    """RESP3 has booleans, and hiredis gives False for #f: it is that command's reply, and the
    next command still gets its own."""
    async with fake_redis(lambda command: b"#f\r\n" if command[0] == b"F" else b"$2\r\nok\r\n") as port:
        batcher = CommandBatcher(make_connection=lambda: aioredis.Connection(host="127.0.0.1", port=port),
                                 connections=1, timeout=2)
        assert await asyncio.gather(batcher.execute("F"), batcher.execute("G")) == [False, b"ok"]
        await batcher.close()


async def test_the_url_s_password_and_database_are_used(logdir):
    """redis-py opens each connection (AUTH, SELECT) before the batcher takes its socket."""
    proc = start_redis(logdir, None, None, False, "--requirepass", "s3cret")
    try:
        storage = RedisStorage.from_url(f"redis://:s3cret@{proc.addr}/3", pool_size=4, timeout=2,
                                        connect_timeout=1)
        try:
            await storage.append("a:b", "a", "hi")
            assert [r.text for r in await storage.page("a:b", 0, 10, reverse=False)] == ["hi"]
        finally:
            await storage.close()
        raw = aioredis.Redis.from_url(f"redis://:s3cret@{proc.addr}/3")
        assert await raw.exists("chat:{a:b}") == 1
        assert await raw.execute_command("SELECT", 0) and await raw.dbsize() == 0
        await raw.aclose()
        wrong = RedisStorage.from_url(f"redis://:wrong@{proc.addr}/3", pool_size=4, timeout=2, connect_timeout=1)
        try:
            with pytest.raises(StorageUnavailable):
                await wrong.append("a:b", "a", "hi")
        finally:
            await wrong.close()
    finally:
        proc.kill()


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
    batcher's timeout (one timer per connection, see _Link), and so does every command in it.
    The hung handshake is abandoned, so closing the batcher does not wait for it."""
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
