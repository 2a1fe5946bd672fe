"""Faults with real processes: Redis and chatsvc killed with SIGKILL (or frozen with SIGSTOP) under load.

Every test starts its own redis-server (append-only file on), chatsvc and gateway on free loopback
ports, with short timeouts, and drives them over HTTP with aiohttp. What must hold whatever dies:

- every send that got 200 is stored, exactly once, in the order it was acknowledged by its sender;
- nothing is stored that was never sent, and no text is stored twice;
- a failed send fails within the configured timeouts with 503 (Redis down), 502 (chatsvc down) or
  504 (chatsvc not answering), never with a hang and never with a 200 for a lost write;
- each service reconnects by itself once its dependency is back.

Run with ``-s`` to see the figures each load test prints.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatsvc.client import ChatClient, RPCConnectError
from tests.procs import Proc, free_port, start_chatsvc, start_gateway, start_redis

# Short timeouts, so that the outage windows of these tests stay short.
REDIS_TIMEOUT = 0.5
CALL_TIMEOUT = 2.0
CHATSVC_FLAGS = ("--redis-timeout", str(REDIS_TIMEOUT), "--redis-connect-timeout", str(REDIS_TIMEOUT),
                 "--drain-timeout", "3")
GATEWAY_FLAGS = ("--call-timeout", str(CALL_TIMEOUT), "--connect-timeout", "0.5", "--drain-timeout", "3",
                 "--access-log", "false")
# A failed request must end within the gateway's call timeout; the margin covers the HTTP round
# trip and a loaded, shared CI machine.
MAX_LATENCY = CALL_TIMEOUT + 1.5


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Stack:
    """Redis (AOF on), chatsvc and gateway, each a real process; everything is killed at teardown."""

    logdir: Path
    datadir: Path
    procs: list[Proc] = field(default_factory=list)
    redis: Proc | None = None
    chatsvc: Proc | None = None
    gateway: Proc | None = None

    def _track(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return f"redis://{self.redis.addr}/0"

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return f"http://{self.gateway.addr}"

    def start_redis(self, port: int | None = None) -> Proc:
        self.redis = self._track(start_redis(self.logdir, port, datadir=self.datadir, appendonly=True))
        return self.redis

    def start_chatsvc(self, port: int | None = None, *extra: str) -> Proc:
        self.chatsvc = self._track(start_chatsvc(self.logdir, self.redis_url, port, *CHATSVC_FLAGS, *extra))
        return self.chatsvc

    def start_gateway(self, *extra: str) -> Proc:
        assert self.chatsvc is not None
        self.gateway = self._track(start_gateway(self.logdir, self.chatsvc.addr, None, *GATEWAY_FLAGS, *extra))
        return self.gateway

    def start_all(self) -> Stack:
        self.start_redis()
        self.start_chatsvc()
        self.start_gateway()
        return self

    def logs(self) -> str:
        return "\n".join(f"--- {p.args[0] if 'redis' in p.args[0] else p.args[2]} :{p.port} "
                         f"(exit {p.popen.poll()})\n{p.output()[-3000:]}" for p in self.procs)

    def kill_all(self) -> None:
        for proc in self.procs:
            proc.kill()  # SIGKILL, which also ends a process stopped with SIGSTOP


def new_stack(logdir: Path, tmp_path: Path) -> Iterator[Stack]:
    """The body of a ``stack`` fixture (test_shutdown.py has one too)."""
    datadir = tmp_path / "redis-data"
    datadir.mkdir()
    s = Stack(logdir, datadir)
    try:
        yield s
    finally:
        s.kill_all()


@pytest.fixture
def stack(logdir: Path, tmp_path: Path) -> Iterator[Stack]:
    yield from new_stack(logdir, tmp_path)


def signal_proc(proc: Proc, sig: int) -> None:
    proc.popen.send_signal(sig)


# --- load ---------------------------------------------------------------------------------------


@dataclass
class Attempt:
    worker: int
    seq: int
    chat: str
    text: str
    status: int | str  # the HTTP status, or the client exception's name when there was no response
    start: float  # time.monotonic()
    elapsed: float


class Load:
    """``senders`` concurrent HTTP senders over ``chats`` chats until ``stop()``.

    Sender ``i`` writes to chat ``i % chats`` as one of its two members; its texts are
    ``w<i>-<seq>`` with ``seq`` counting every attempt, so each text is unique and a sender's
    texts must appear in a chat in increasing ``seq`` order.
    """

    def __init__(self, url: str, senders: int = 16, chats: int = 4, request_timeout: float = 15.0) -> None:
        self.url = url
        self.senders = senders
        self.chats = [f"a{k}:b{k}" for k in range(chats)]
        self.attempts: list[Attempt] = []
        self._stop = asyncio.Event()
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Load:
        self._session = aiohttp.ClientSession(timeout=self._timeout,
                                              connector=aiohttp.TCPConnector(limit=self.senders * 2))
        self._tasks = [asyncio.create_task(self._sender(i)) for i in range(self.senders)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks)
            self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    def chat_of(self, worker: int) -> str:
        return self.chats[worker % len(self.chats)]

    async def _sender(self, i: int) -> None:
        assert self._session is not None
        chat = self.chat_of(i)
        sender = chat.split(":")[i // len(self.chats) % 2]
        seq = 0
        while not self._stop.is_set():
            seq += 1
            text = f"w{i:02d}-{seq:06d}"
            start = time.monotonic()
            status: int | str
            try:
                async with self._session.post(f"{self.url}/api/send",
                                              json={"Chat": chat, "Text": text, "Sender": sender}) as r:
                    await r.read()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            self.attempts.append(Attempt(i, seq, chat, text, status, start, time.monotonic() - start))
            if status != 200:
                await asyncio.sleep(0.02)  # do not spin on a refused connection

    # -- observations

    def acked(self) -> list[Attempt]:
        return [a for a in self.attempts if a.status == 200]

    def statuses(self) -> Counter[int | str]:
        return Counter(a.status for a in self.attempts)

    def first_ok_after(self, t: float) -> float | None:
        """Seconds from ``t`` to the end of the first 200 among the sends started after ``t``."""
        ends = [a.start + a.elapsed for a in self.attempts if a.status == 200 and a.start >= t]
        return min(ends) - t if ends else None

    async def wait_ok_after(self, t: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            took = self.first_ok_after(t)
            if took is not None:
                return took
            await asyncio.sleep(0.05)
        return None

    async def wait_acked(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked()) < n:
            assert time.monotonic() < deadline, f"only {len(self.acked())} sends acknowledged: {self.statuses()}"
            await asyncio.sleep(0.05)


# --- reading everything back --------------------------------------------------------------------

Stored = tuple[str, str, int]  # sender, text, send_time
PageFn = Callable[[str, int], Awaitable[tuple[list[Stored], bool, int]]]


async def pull_all(page: PageFn, chat: str) -> list[Stored]:
    """Every message of ``chat``, oldest first, paging with next_cursor."""
    out: list[Stored] = []
    cursor = 0
    while True:
        messages, has_more, next_cursor = await page(chat, cursor)
        out.extend(messages)
        if not has_more:
            return out
        assert next_cursor > cursor
        cursor = next_cursor


def http_pages(session: aiohttp.ClientSession, url: str) -> PageFn:
    async def page(chat: str, cursor: int) -> tuple[list[Stored], bool, int]:
        async with session.get(f"{url}/api/pull", json={"Chat": chat, "Cursor": cursor, "Limit": 100}) as r:
            body = await r.json()
            assert r.status == 200, body
        return ([(m["sender"], m["text"], m["send_time"]) for m in body["messages"]], body["has_more"],
                body["next_cursor"])
    return page


def rpc_pages(client: ChatClient) -> PageFn:
    async def page(chat: str, cursor: int) -> tuple[list[Stored], bool, int]:
        reply = await client.pull(chat, cursor=cursor, limit=100)
        assert reply.Code == 0, reply.Msg
        return ([(m.Sender, m.Text, m.SendTime) for m in reply.Messages or ()], bool(reply.HasMore),
                reply.NextCursor or 0)
    return page


async def pull_everything_http(url: str, chats: list[str]) -> dict[str, list[Stored]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        page = http_pages(session, url)
        return {c: await pull_all(page, c) for c in chats}


async def pull_everything_rpc(addr: str, chats: list[str]) -> dict[str, list[Stored]]:
    host, port = addr.split(":")
    async with ChatClient(host, int(port)) as client:
        page = rpc_pages(client)
        return {c: await pull_all(page, c) for c in chats}


@dataclass
class Verdict:
    found: int
    acked: int
    failed_but_stored: int  # sends that got no 200 but were stored: their outcome was unknown


def check_stored(load: Load, stored: dict[str, list[Stored]]) -> Verdict:
    """Every 200 stored exactly once, in each sender's order; nothing stored that was not sent."""
    attempts = {a.text: a for a in load.attempts}
    texts = [text for msgs in stored.values() for _, text, _ in msgs]
    dupes = [t for t, n in Counter(texts).items() if n > 1]
    assert not dupes, f"stored more than once: {dupes[:20]}"
    phantom = [t for t in texts if t not in attempts]
    assert not phantom, f"stored but never sent: {phantom[:20]}"
    for chat, msgs in stored.items():
        times = [t for _, _, t in msgs]
        assert times == sorted(times) and len(set(times)) == len(times), f"{chat}: send_time not increasing"
        last_seq: dict[int, int] = {}
        for sender, text, _ in msgs:
            a = attempts[text]
            assert a.chat == chat and chat.split(":")[a.worker // len(load.chats) % 2] == sender, (text, chat, sender)
            assert a.seq > last_seq.get(a.worker, 0), f"{chat}: {text} stored after seq {last_seq[a.worker]}"
            last_seq[a.worker] = a.seq
    found = set(texts)
    lost = [a.text for a in load.acked() if a.text not in found]
    assert not lost, f"{len(lost)} acknowledged sends missing, e.g. {lost[:20]}"
    return Verdict(len(found), len(load.acked()), sum(1 for t in found if attempts[t].status != 200))


def report(title: str, load: Load, verdict: Verdict, **extra: Any) -> None:
    latencies = sorted(a.elapsed for a in load.attempts)
    failed = {k: v for k, v in load.statuses().items() if k != 200}
    print(f"\n[{title}] senders={load.senders} sent={len(load.attempts)} acknowledged={verdict.acked} "
          f"failed={sum(failed.values())} {dict(failed)} found={verdict.found} "
          f"failed_but_stored={verdict.failed_but_stored} lost=0 duplicates=0 "
          f"max_latency={latencies[-1]:.2f}s "
          + " ".join(f"{k}={v:.2f}s" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items()),
          flush=True)


def assert_no_hang(load: Load) -> None:
    slow = [(a.text, a.status, round(a.elapsed, 2)) for a in load.attempts if a.elapsed > MAX_LATENCY]
    assert not slow, f"requests over {MAX_LATENCY}s: {slow[:10]}"


# --- tests --------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_redis_kill9_under_load_loses_no_acknowledged_write(stack: Stack) -> None:
    """SIGKILL Redis under 16 HTTP senders, restart it on the same port and AOF: chatsvc recovers
    alone; every 200 is there exactly once and in order; sends in the outage got 503 in time."""
    stack.start_all()
    redis = stack.redis
    assert redis is not None
    assert redis.args[redis.args.index("--appendonly") + 1] == "yes"
    async with Load(stack.url, senders=16) as load:
        await load.wait_acked(200)
        await asyncio.sleep(1.5)  # long enough for Redis to have fsynced the AOF at least once
        killed_at = time.monotonic()
        await asyncio.to_thread(redis.kill)
        # appendfsync everysec: these were acknowledged but most likely not fsynced yet.
        acked_last_second = sum(1 for a in load.acked() if killed_at - 1 <= a.start + a.elapsed <= killed_at)
        acked_before_kill = sum(1 for a in load.acked() if a.start + a.elapsed <= killed_at)
        await asyncio.sleep(1.5)  # the outage
        restarted_at = await asyncio.to_thread(restart, stack.start_redis, redis.port)  # same port and data
        recovered = await load.wait_ok_after(restarted_at, timeout=5.0)
        assert recovered is not None, f"no 200 within 5 s of Redis restarting: {load.statuses()}\n{stack.logs()}"
        await asyncio.sleep(1.0)
    assert any(stack.datadir.glob("appendonly*")), list(stack.datadir.iterdir())  # the AOF, replayed
    during = Counter(a.status for a in load.attempts if killed_at + 0.1 < a.start < restarted_at - 0.3)
    statuses = load.statuses()
    assert set(statuses) <= {200, 503}, f"unexpected statuses {statuses}\n{stack.logs()}"
    assert during and set(during) == {503}, during
    assert_no_hang(load)
    stored = await pull_everything_http(stack.url, load.chats)
    verdict = check_stored(load, stored)
    report("redis kill -9", load, verdict, acked_before_kill=acked_before_kill,
           acked_in_last_second_before_kill=acked_last_second, outage_503=during[503],
           recovered_after_restart=recovered)


def restart(start: Callable[[int], Proc], port: int) -> float:
    """Start a process again on ``port``; returns when it began listening (time.monotonic())."""
    start(port)
    return time.monotonic()


@pytest.mark.slow
async def test_chatsvc_kill9_under_load_gateway_recovers(stack: Stack) -> None:
    """SIGKILL chatsvc under 16 HTTP senders, start a new one on the same port: the gateway
    reconnects by itself, sends in between get 502 (or 504), every 200 is stored exactly once."""
    stack.start_all()
    old = stack.chatsvc
    assert old is not None
    async with Load(stack.url, senders=16) as load:
        await load.wait_acked(200)
        killed_at = time.monotonic()
        await asyncio.to_thread(old.kill)
        await asyncio.sleep(1.0)
        restarted_at = await asyncio.to_thread(restart, stack.start_chatsvc, old.port)
        recovered = await load.wait_ok_after(restarted_at, timeout=5.0)
        assert recovered is not None, f"gateway did not recover: {load.statuses()}\n{stack.logs()}"
        await asyncio.sleep(1.0)
    statuses = load.statuses()
    during = Counter(a.status for a in load.attempts if killed_at + 0.1 < a.start < restarted_at - 0.3)
    assert set(statuses) <= {200, 502, 504}, f"unexpected statuses {statuses}\n{stack.logs()}"
    assert during and set(during) == {502}, during  # connection refused: fails fast
    assert_no_hang(load)
    verdict = check_stored(load, await pull_everything_http(stack.url, load.chats))
    report("chatsvc kill -9", load, verdict, outage_502=during[502], recovered_after_restart=recovered)


async def test_chatsvc_starts_before_redis_and_recovers(stack: Stack, logdir: Path) -> None:
    """chatsvc up with no Redis answers 503 at once; once Redis starts, sends succeed."""
    redis_port = free_port()
    stack.procs.append(start_chatsvc(logdir, f"redis://127.0.0.1:{redis_port}/0", None, *CHATSVC_FLAGS))
    stack.chatsvc = stack.procs[-1]
    stack.start_gateway()
    async with aiohttp.ClientSession() as http:
        body = {"Chat": "a:b", "Text": "early", "Sender": "a"}
        t0 = time.monotonic()
        async with http.post(f"{stack.url}/api/send", json=body) as r:
            assert r.status == 503, await r.text()
            assert (await r.json())["message"].startswith("storage unavailable")
        assert time.monotonic() - t0 < MAX_LATENCY
        await asyncio.to_thread(stack.start_redis, redis_port)
        deadline = time.monotonic() + 5
        while True:
            async with http.post(f"{stack.url}/api/send", json={**body, "Text": "late"}) as r:
                if r.status == 200:
                    break
                assert r.status == 503 and time.monotonic() < deadline, await r.text()
            await asyncio.sleep(0.1)
    stored = await pull_everything_http(stack.url, ["a:b"])
    assert [t for _, t, _ in stored["a:b"]] == ["late"]


async def test_pull_is_retried_on_a_fresh_connection_send_is_not(stack: Stack,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """chatsvc restarted between two calls of one client: the pooled connection is dead. A pull
    is retried once on a fresh connection and succeeds; a send fails and is not stored."""
    caplog.set_level(logging.INFO, logger="chatsvc.client")
    stack.start_redis()
    old = stack.start_chatsvc()
    async with ChatClient("127.0.0.1", old.port, call_timeout=CALL_TIMEOUT, pool_size=1) as client:
        assert (await client.send("a:b", "one", "a")).Code == 0
        # Blocking calls: the client's event loop does not run, so it has not yet seen the old
        # connection close and will use it for the next call.
        old.kill()
        new = stack.start_chatsvc(old.port)
        reply = await client.pull("a:b")
        assert reply.Code == 0 and [m.Text for m in reply.Messages] == ["one"]
        assert "retrying Pull once on a fresh connection" in caplog.text

        assert (await client.send("a:b", "two", "a")).Code == 0  # the pool has a live connection again
        new.kill()
        stack.start_chatsvc(old.port)
        with pytest.raises(RPCConnectError):
            await client.send("a:b", "three", "a")
        assert "retrying Send" not in caplog.text
        # The failed send went nowhere and was not repeated behind the caller's back.
        reply = await client.pull("a:b")
        assert [m.Text for m in reply.Messages] == ["one", "two"]


@pytest.mark.slow
async def test_timed_out_send_is_not_retried_and_is_stored_once(stack: Stack) -> None:
    """chatsvc frozen (SIGSTOP): send and pull get 504 after the call timeout, not a hang and not
    a retry. Thawed, chatsvc finishes the send it had read: stored exactly once. This is why a
    send is never retried automatically; a client that retries after a 504 may store it twice."""
    stack.start_all()
    chatsvc = stack.chatsvc
    assert chatsvc is not None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        async with http.post(f"{stack.url}/api/send", json={"Chat": "a:b", "Text": "before", "Sender": "a"}) as r:
            assert r.status == 200
        signal_proc(chatsvc, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            async with http.post(f"{stack.url}/api/send", json={"Chat": "a:b", "Text": "frozen", "Sender": "b"}) as r:
                assert r.status == 504, await r.text()
            took = time.monotonic() - t0
            assert CALL_TIMEOUT - 0.1 <= took < MAX_LATENCY, took
            t1 = time.monotonic()
            async with http.get(f"{stack.url}/api/pull", params={"chat": "a:b"}) as r:
                assert r.status == 504, await r.text()
            # A timeout is not retried, even for a pull: a retry would take a second call timeout.
            assert time.monotonic() - t1 < MAX_LATENCY < 2 * CALL_TIMEOUT
        finally:
            signal_proc(chatsvc, signal.SIGCONT)
        deadline = time.monotonic() + 5
        while True:
            stored = await pull_everything_http(stack.url, ["a:b"])
            texts = [t for _, t, _ in stored["a:b"]]
            if texts == ["before", "frozen"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert texts == ["before", "frozen"], texts
        print(f"\n[chatsvc SIGSTOP] send got 504 after {took:.2f}s (call timeout {CALL_TIMEOUT}s); "
              f"stored once after SIGCONT", flush=True)


async def test_chatsvc_down_gives_502_at_once(stack: Stack) -> None:
    """Nothing listening on chatsvc's port: 502 fast (connection refused), both send and pull."""
    stack.start_all()
    assert stack.chatsvc is not None
    stack.chatsvc.kill()
    async with aiohttp.ClientSession() as http:
        t0 = time.monotonic()
        async with http.post(f"{stack.url}/api/send", json={"Chat": "a:b", "Text": "x", "Sender": "a"}) as r:
            assert r.status == 502, await r.text()
        async with http.get(f"{stack.url}/api/pull", params={"chat": "a:b"}) as r:
            assert r.status == 502, await r.text()
        assert time.monotonic() - t0 < 1.5


@pytest.mark.slow
async def test_redis_frozen_under_load_gives_503_within_the_redis_timeout(stack: Stack) -> None:
    """Redis frozen (SIGSTOP: connections hang instead of failing) under 16 HTTP senders: every
    failure is a 503 within 2 x REDIS_TIMEOUT (a command queued behind a hung batch waits for it
    to time out first), never a 504; every 200 stored. Sends that timed out may still be stored
    once Redis thaws: a 503 does not say a message was not stored."""
    stack.start_all()
    assert stack.redis is not None
    async with Load(stack.url, senders=16) as load:
        await load.wait_acked(200)
        frozen_at = time.monotonic()
        signal_proc(stack.redis, signal.SIGSTOP)
        try:
            await asyncio.sleep(2.0)
        finally:
            signal_proc(stack.redis, signal.SIGCONT)
        thawed_at = time.monotonic()
        recovered = await load.wait_ok_after(thawed_at, timeout=5.0)
        assert recovered is not None, f"no 200 within 5 s of Redis thawing: {load.statuses()}\n{stack.logs()}"
        await asyncio.sleep(0.5)
    statuses = load.statuses()
    assert set(statuses) <= {200, 503}, f"unexpected statuses {statuses}\n{stack.logs()}"
    during = [a for a in load.attempts if frozen_at + 0.1 < a.start < thawed_at - 2 * REDIS_TIMEOUT - 0.2]
    assert during and {a.status for a in during} == {503}, Counter(a.status for a in during)
    worst = max(a.elapsed for a in load.attempts if a.status == 503)
    assert worst < 2 * REDIS_TIMEOUT + 0.5, worst
    verdict = check_stored(load, await pull_everything_http(stack.url, load.chats))
    report("redis SIGSTOP", load, verdict, slowest_503=worst, recovered_after_thaw=recovered)
