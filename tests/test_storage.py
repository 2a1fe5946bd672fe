"""``RedisStorage`` against a real Redis 7 (the ``redis_url`` fixture: a flushed database)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import pytest
import redis

from chatsvc.errors import StorageUnavailable
from chatsvc.storage import RedisStorage, StoredMessage, chat_key


def now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture(params=[True, False], ids=["batched", "unbatched"])
def batch(request: pytest.FixtureRequest) -> bool:
    """Both command paths of RedisStorage: automatic pipelining on (the default) and off."""
    return bool(request.param)


@pytest.fixture
async def storage(redis_url: str, batch: bool) -> AsyncIterator[RedisStorage]:
    st = RedisStorage.from_url(redis_url, pool_size=16, timeout=2.0, connect_timeout=1.0, batch=batch)
    yield st
    await st.close()


@pytest.fixture
def raw(redis_url: str):
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        yield client


async def test_append_returns_microsecond_time_close_to_now(storage):
    before = now_us()
    t = await storage.append("a:b", "a", "hi")
    after = now_us()
    assert isinstance(t, int)
    # µs, not ms or s: within a few seconds of the local clock (same host as Redis).
    assert before - 3_000_000 <= t <= after + 3_000_000


async def test_append_times_strictly_increase(storage):
    times = [await storage.append("a:b", "a" if i % 2 else "b", f"m{i}") for i in range(50)]
    assert all(b > a for a, b in zip(times, times[1:], strict=False))


async def test_concurrent_appends_get_distinct_increasing_times(storage, raw):
    n = 300
    times = await asyncio.gather(*(storage.append("a:b", "a", f"msg {i}") for i in range(n)))
    assert len(set(times)) == n
    rows = await storage.page("a:b", 0, n + 10, False)
    assert len(rows) == n
    assert [r.send_time for r in rows] == sorted(times)
    assert all(b.send_time > a.send_time for a, b in zip(rows, rows[1:], strict=False))
    # Each call got back the time under which its own text was stored.
    by_text = {r.text: r.send_time for r in rows}
    assert by_text == {f"msg {i}": t for i, t in enumerate(times)}
    assert raw.xlen("chat:{a:b}") == n


async def test_page_forward_and_reverse(storage):
    times = [await storage.append("a:b", "a", f"m{i}") for i in range(6)]
    rows = await storage.page("a:b", 0, 100, False)
    assert rows == [StoredMessage.of("a", f"m{i}", t) for i, t in enumerate(times)]
    assert await storage.page("a:b", 0, 100, True) == rows[::-1]
    # Inclusive cursor in both directions.
    assert [r.send_time for r in await storage.page("a:b", times[2], 2, False)] == times[2:4]
    assert [r.send_time for r in await storage.page("a:b", times[2], 2, True)] == [times[2], times[1]]
    # Between two times.
    assert [r.send_time for r in await storage.page("a:b", times[2] + 1, 10, False)] == times[3:]
    assert [r.send_time for r in await storage.page("a:b", times[3] - 1, 10, True)] == times[2::-1]
    # Count.
    assert len(await storage.page("a:b", 0, 1, False)) == 1
    assert [r.text for r in await storage.page("a:b", 0, 3, True)] == ["m5", "m4", "m3"]
    # Beyond both ends.
    assert await storage.page("a:b", times[-1] + 1, 10, False) == []
    assert await storage.page("a:b", times[0] - 1, 10, True) == []
    assert [r.send_time for r in await storage.page("a:b", 2**63 - 1, 2, True)] == [times[5], times[4]]


async def test_reverse_cursor_zero_is_from_newest(storage):
    times = [await storage.append("a:b", "b", str(i)) for i in range(3)]
    rows = await storage.page("a:b", 0, 2, True)
    assert [r.send_time for r in rows] == [times[2], times[1]]


async def test_page_of_unknown_chat_is_empty(storage, raw):
    assert await storage.page("no:one", 0, 10, False) == []
    assert await storage.page("no:one", 0, 10, True) == []
    assert raw.keys("*") == []  # reading creates nothing


async def test_key_is_a_stream_named_chat_braces(storage, raw):
    t = await storage.append("a:b", "a", "hello")
    assert chat_key("a:b") == "chat:{a:b}"
    assert raw.keys("*") == ["chat:{a:b}"]
    assert raw.type("chat:{a:b}") == "stream"
    [(entry_id, fields)] = raw.xrange("chat:{a:b}")
    assert entry_id == f"{t}-0"
    assert fields == {"s": "a", "x": "hello"}


async def test_entries_in_another_field_order_are_read(storage, raw):
    """An entry whose fields are not in SEND_SCRIPT's order (written by hand, or by another tool)
    takes the general path, in order with the others."""
    old = now_us() - 1_000_000
    raw.xadd("chat:{a:b}", {"x": "fields in the other order", "s": "b"}, id=f"{old}-0")
    t = await storage.append("a:b", "a", "new")
    rows = [StoredMessage.of("b", "fields in the other order", old), StoredMessage.of("a", "new", t)]
    assert await storage.page("a:b", 0, 10, False) == rows
    assert await storage.page("a:b", 0, 10, True) == rows[::-1]


async def test_time_never_goes_backwards_when_the_clock_does(storage, raw):
    future = now_us() + 10_000_000
    raw.xadd("chat:{x:y}", {"s": "x", "x": "y"}, id=f"{future}-0")
    t1 = await storage.append("x:y", "y", "after")
    t2 = await storage.append("x:y", "x", "again")
    assert t1 == future + 1
    assert t2 == future + 2
    rows = await storage.page("x:y", 0, 10, False)
    assert rows == [StoredMessage.of("x", "y", future), StoredMessage.of("y", "after", future + 1),
                    StoredMessage.of("x", "again", future + 2)]
    # Another chat is unaffected by x:y's future entry.
    assert await storage.append("a:b", "a", "now") < future


async def test_concurrent_appends_within_one_microsecond_get_increasing_times(storage, raw):
    """Many appends to one chat in one batch, most of them inside the same microsecond of the
    clock, still get distinct increasing times, in the order they were stored."""
    times = await asyncio.gather(*(storage.append("m:n", "m", f"t{i}") for i in range(200)))
    assert len(set(times)) == 200
    rows = await storage.page("m:n", 0, 300, False)
    assert sorted(r.text for r in rows) == sorted(f"t{i}" for i in range(200))
    assert [r.send_time for r in rows] == sorted(times)
    assert {r.text: r.send_time for r in rows} == {f"t{i}": t for i, t in enumerate(times)}


def command_calls(raw) -> dict[str, int]:
    return {name: int(stats["calls"]) for name, stats in
            ((k.removeprefix("cmdstat_"), v) for k, v in raw.info("commandstats").items())}


async def test_the_usual_append_is_one_xadd_and_runs_no_script(storage, raw):
    raw.config_resetstat()
    times = [await storage.append("a:b", "a", f"m{i}") for i in range(20)]
    calls = command_calls(raw)
    assert calls.get("xadd") == 20
    assert "evalsha" not in calls and "eval" not in calls
    assert [(r.send_time, r.text) for r in await storage.page("a:b", 0, 30, False)] == [
        (t, f"m{i}") for i, t in enumerate(times)]


async def test_concurrent_appends_behind_a_chat_ahead_of_the_clock_get_consecutive_times(storage, raw):
    """Another chatsvc whose clock is ahead wrote last: every append is refused by the stream and
    goes through the send script, which gives the next times after the chat's last, in order."""
    future = now_us() + 10_000_000
    raw.xadd("chat:{m:n}", {"s": "m", "x": "ahead"}, id=f"{future}-0")
    raw.config_resetstat()
    times = await asyncio.gather(*(storage.append("m:n", "m", f"t{i}") for i in range(100)))
    assert sorted(times) == list(range(future + 1, future + 101))
    rows = await storage.page("m:n", 0, 300, False)
    assert [(r.send_time, r.text) for r in rows[1:]] == sorted((t, f"t{i}") for i, t in enumerate(times))
    assert command_calls(raw).get("evalsha") == 100


async def test_two_processes_clocks_apart_never_share_a_time(redis_url, raw, batch):
    """Two chatsvc processes, one's clock 5 s ahead, sending to one chat in turn: each time is above
    the last stored, whichever process stored it."""
    ahead, behind = (RedisStorage.from_url(redis_url, pool_size=4, timeout=2.0, connect_timeout=1.0, batch=batch)
                     for _ in range(2))
    ahead._last_time = now_us() + 5_000_000
    try:
        times = [await (ahead if i % 3 == 0 else behind).append("a:b", "a", f"m{i}") for i in range(12)]
    finally:
        await ahead.close()
        await behind.close()
    assert all(b > a for a, b in zip(times, times[1:], strict=False))
    assert times[1] == times[0] + 1  # behind's clock is below ahead's last: the script's last + 1
    rows = raw.xrange("chat:{a:b}")
    assert [int(eid.split("-")[0]) for eid, _ in rows] == times


async def test_append_to_a_key_that_is_not_a_stream_fails_and_changes_nothing(storage, raw):
    raw.set("chat:{p:q}", "not a stream")
    with pytest.raises(StorageUnavailable):  # the XADD error (WRONGTYPE), as before the fast path
        await storage.append("p:q", "p", "hello")
    assert raw.get("chat:{p:q}") == "not a stream"


async def test_large_times_keep_full_precision(storage, raw):
    # Beyond Lua's 14 significant digits (the %.0f formatting in the script).
    big = 1_700_000_000_000_001 + 10**15
    raw.xadd("chat:{a:b}", {"s": "a", "x": "seed"}, id=f"{big}-0")
    assert await storage.append("a:b", "b", "next") == big + 1
    assert [r.send_time for r in await storage.page("a:b", big, 10, False)] == [big, big + 1]


@pytest.mark.parametrize(
    "text",
    [
        "héllo wörld 你好 😀 \U0010ffff",
        "line1\nline2\r\nline3\n",
        "{braces} {{double}} }{",
        "*",
        "* ? [a-z] \\ % %d %s %.0f",
        "\x00\x01 nul and controls \x7f",
        "  leading and trailing spaces  ",
        'quotes \' " ` and -- lua ]] [[',
        "x" * 4096,
        "é" * 2048,
    ],
)
async def test_texts_round_trip_exactly(storage, text):
    t = await storage.append("a:b", "a", text)
    assert await storage.page("a:b", 0, 10, False) == [StoredMessage.of("a", text, t)]
    assert await storage.page("a:b", 0, 10, True) == [StoredMessage.of("a", text, t)]


async def test_senders_round_trip_exactly(storage):
    for sender in ("é", " a ", "{x}", "*", "名"):
        await storage.append("a:b", sender, "t")
    assert [r.sender for r in await storage.page("a:b", 0, 10, False)] == ["é", " a ", "{x}", "*", "名"]


INJECTION_CHATS = [
    "a:b",
    "a:b}",
    "{a:b",
    "{a:b}",
    "a}:{b",
    "a:b}:chat:{a:b",
    "a*:b",
    "*:*",
    "a?:b",
    "[a]:b",
    "a b:c",
    "a:b\nxadd",
    "é:😀",
    "x" * 5000 + ":" + "y" * 5000,
    "x" * 5000 + ":" + "y" * 4999,
]


async def test_key_injection_shapes_map_to_distinct_keys(storage, raw):
    assert len({chat_key(c) for c in INJECTION_CHATS}) == len(INJECTION_CHATS)
    times = {}
    for chat in INJECTION_CHATS:
        times[chat] = await storage.append(chat, "s", f"text of {chat}")
    assert set(raw.keys("*")) == {chat_key(c) for c in INJECTION_CHATS}
    for chat in INJECTION_CHATS:
        assert raw.type(chat_key(chat)) == "stream"
        assert await storage.page(chat, 0, 10, False) == [StoredMessage.of("s", f"text of {chat}", times[chat])]
        assert await storage.page(chat, 0, 10, True) == [StoredMessage.of("s", f"text of {chat}", times[chat])]


async def test_glob_like_chat_does_not_touch_other_chats(storage, raw):
    await storage.append("a:b", "a", "victim")
    await storage.append("*:*", "*", "glob")
    await storage.append("a:b}", "a", "brace")
    assert [r.text for r in await storage.page("a:b", 0, 10, False)] == ["victim"]
    assert raw.xlen("chat:{a:b}") == 1


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_redis_down_gives_storage_unavailable_quickly(batch):
    st = RedisStorage.from_url(f"redis://127.0.0.1:{closed_port()}/0", pool_size=4, timeout=1.0,
                               connect_timeout=0.5, batch=batch)
    try:
        for op in (lambda: st.append("a:b", "a", "hi"), lambda: st.page("a:b", 0, 10, False),
                   lambda: st.page("a:b", 0, 10, True)):
            start = time.monotonic()
            with pytest.raises(StorageUnavailable) as info:
                await asyncio.wait_for(op(), 10)
            assert time.monotonic() - start < 3
            assert info.value.code == 503
        assert await st.ping() is False
    finally:
        await st.close()


async def test_redis_not_answering_gives_storage_unavailable_within_timeout(batch):
    """A server that accepts connections but never replies (a hung Redis) must not hang us."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    st = RedisStorage.from_url(f"redis://127.0.0.1:{port}/0", pool_size=4, timeout=0.5, connect_timeout=0.5,
                               batch=batch)
    try:
        for op in (lambda: st.append("a:b", "a", "hi"), lambda: st.page("a:b", 0, 10, False)):
            start = time.monotonic()
            with pytest.raises(StorageUnavailable):
                await asyncio.wait_for(op(), 10)
            assert time.monotonic() - start < 3
        assert accepted, "the client never connected: the test did not exercise a hung server"
    finally:
        await st.close()
        for w in accepted:
            w.close()
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


def connected_clients(raw) -> int:
    return int(raw.info("clients")["connected_clients"])


async def settle(raw, baseline: int) -> int:
    """Connected clients beyond ``baseline`` once closing connections have gone (up to 2 s)."""
    deadline = time.monotonic() + 2
    while connected_clients(raw) > baseline and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return connected_clients(raw) - baseline


async def test_close_releases_redis_connections(redis_url, raw, batch):
    baseline = connected_clients(raw)
    st = RedisStorage.from_url(redis_url, pool_size=8, timeout=2.0, connect_timeout=1.0, batch=batch)
    await asyncio.gather(*(st.append("a:b", "a", str(i)) for i in range(40)))
    opened = connected_clients(raw) - baseline
    assert opened > 0
    await st.close()
    leaked = await settle(raw, baseline)
    assert leaked == 0, f"RedisStorage.close() left {leaked} of {opened} Redis connections open"


async def test_memory_per_message(storage, raw):
    """Bytes of Redis memory per stored 100-byte message (INFO memory used_memory deltas).

    used_memory also counts client buffers, which Redis grows and shrinks on its own schedule, so
    the figure asserted is the drop in used_memory when the messages' keys are deleted (one DEL,
    no other client activity); the growth while storing is printed alongside.
    """
    await asyncio.gather(*(storage.append("warm:up", "warm", "x") for _ in range(200)))  # open the pool
    raw.delete(chat_key("warm:up"))
    before = int(raw.info("memory")["used_memory"])
    text = "m" * 100
    chats = [f"user{i:02d}:peer{i:02d}" for i in range(20)]
    n = 2000
    for start in range(0, n, 100):
        await asyncio.gather(*(storage.append(chats[i % 20], chats[i % 20].split(":")[0], text)
                               for i in range(start, start + 100)))
    for chat in chats:
        rows = await storage.page(chat, 0, 101, False)
        assert len(rows) == 100 and all(r.text == text for r in rows)
    stored = int(raw.info("memory")["used_memory"])
    usage = sum(raw.memory_usage(chat_key(c), samples=0) for c in chats) / n
    assert raw.delete(*(chat_key(c) for c in chats)) == len(chats)
    freed = int(raw.info("memory")["used_memory"])
    per_message = (stored - freed) / n
    print(f"\nRedis memory per 100-byte message: {per_message:.1f} bytes (used_memory drop on DEL of "
          f"{n} messages in {len(chats)} chats); growth while storing {(stored - before) / n:.1f}; "
          f"MEMORY USAGE {usage:.1f}")
    assert 100 < per_message < 250
