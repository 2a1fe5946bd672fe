"""Several chatsvc instances behind one BalancedClient: spread, failover, probing back."""

from __future__ import annotations

import asyncio
import time

import pytest

from chatsvc.balancer import BalancedClient
from chatsvc.client import ClientSettings, RPCConnectError
from tests.procs import free_port, start_chatsvc


@pytest.fixture
def two_chatsvc(logdir, redis_url):
    procs = [start_chatsvc(logdir, redis_url), start_chatsvc(logdir, redis_url)]
    yield procs
    for p in procs:
        p.kill()


def settings() -> ClientSettings:
    return ClientSettings(connect_timeout=0.5, call_timeout=3)


async def test_calls_spread_over_every_instance(two_chatsvc):
    addrs = [("127.0.0.1", p.port) for p in two_chatsvc]
    async with BalancedClient(addrs, settings()) as client:
        replies = await asyncio.gather(*[client.send("a:b", str(i), "a") for i in range(200)])
        assert all(r.Code == 0 for r in replies)
        assert all(inst.client._conns for inst in client.instances)  # both carried calls
        page = await client.pull("a:b", 0, 100)
        assert len(page.Messages) == 100 and page.HasMore
        # pull_page's one-pass reader goes through the balancer too: the same page, as dicts.
        fast = await client.pull_page("a:b", 0, 100)
        assert fast.code == 0 and fast.has_more and fast.next_cursor == page.NextCursor
        assert fast.messages == [{"chat": m.Chat, "text": m.Text, "sender": m.Sender, "send_time": m.SendTime}
                                 for m in page.Messages]


async def test_killed_instance_is_taken_out_and_probed_back(logdir, redis_url, two_chatsvc):
    first, second = two_chatsvc
    addrs = [("127.0.0.1", first.port), ("127.0.0.1", second.port)]
    acked: list[str] = []
    failed = 0
    async with BalancedClient(addrs, settings(), probe_interval=0.2) as client:

        async def sender(n: int) -> None:
            nonlocal failed
            for i in range(60):
                text = f"s{n}-{i}"
                try:
                    reply = await client.send("k:l", text, "k")
                except RPCConnectError:
                    failed += 1  # in flight on the killed instance: outcome unknown, never retried
                else:
                    assert reply.Code == 0
                    acked.append(text)
                await asyncio.sleep(0.01)

        load = asyncio.gather(*(sender(n) for n in range(8)))
        await asyncio.sleep(0.2)
        first.kill()
        killed_at = time.monotonic()
        await load
        # Within a second of the kill every call goes to the survivor.
        assert not client.instances[0].healthy
        ok_after = await client.send("k:l", "after", "k")
        assert ok_after.Code == 0 and time.monotonic() - killed_at < 10
        acked.append("after")
        # Every acknowledged message is there, once; pulls work throughout.
        texts: list[str] = []
        cursor = 0
        while True:
            page = await client.pull("k:l", cursor, 100)
            texts += [m.Text for m in page.Messages]
            if not page.HasMore:
                break
            cursor = page.NextCursor
        assert set(acked) <= set(texts) and len(texts) == len(set(texts))
        assert failed <= 8  # at most the calls in flight at the moment of the kill
        print(f"\nbalancer failover: {len(acked)} acknowledged, {failed} failed in flight, {len(texts)} stored")

        # Restarted on the same port, it is probed back in.
        restarted = start_chatsvc(logdir, redis_url, first.port)
        try:
            deadline = time.monotonic() + 5
            while not client.instances[0].healthy and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert client.instances[0].healthy
        finally:
            restarted.kill()


async def test_unreachable_instance_is_skipped_without_failing_the_call(chatsvc_addr):
    dead = ("127.0.0.1", free_port())
    async with BalancedClient([dead, chatsvc_addr], settings()) as client:
        for i in range(5):  # whichever is picked first, the call lands on the live one
            assert (await client.send("x:y", str(i), "x")).Code == 0
        assert not client.instances[0].healthy


async def test_every_instance_down_fails_fast():
    addrs = [("127.0.0.1", free_port()), ("127.0.0.1", free_port())]
    async with BalancedClient(addrs, settings()) as client:
        start = time.monotonic()
        with pytest.raises(RPCConnectError):
            await client.pull("x:y")
        assert time.monotonic() - start < 2


async def test_gateway_with_two_chatsvc_keeps_serving_when_one_dies(logdir, redis_url, two_chatsvc):
    """CHATSVC_ADDRS: kill one instance under HTTP load; the gateway serves from the other at once."""
    import aiohttp

    from tests.procs import start_gateway

    first, second = two_chatsvc
    gateway = start_gateway(logdir, first.addr, None, "--chatsvc-addrs", f"{first.addr},{second.addr}",
                            "--call-timeout", "2")
    url = f"http://{gateway.addr}"
    acked: list[str] = []
    statuses: list[tuple[float, int]] = []
    try:
        async with aiohttp.ClientSession(url) as http:

            async def sender(n: int) -> None:
                for i in range(80):
                    text = f"g{n}-{i}"
                    async with http.post("/api/send", json={"Chat": "m:n", "Text": text, "Sender": "m"}) as r:
                        statuses.append((time.monotonic(), r.status))
                        if r.status == 200:
                            acked.append(text)
                        else:
                            assert r.status == 502, await r.text()  # in flight on the killed instance
                    await asyncio.sleep(0.01)

            load = asyncio.gather(*(sender(n) for n in range(6)))
            await asyncio.sleep(0.3)
            first.kill()
            killed = time.monotonic()
            await load
            late_failures = [s for t, s in statuses if s != 200 and t > killed + 1.0]
            assert late_failures == []  # within a second every request succeeds again
            texts: list[str] = []
            cursor = 0
            while True:
                async with http.get("/api/pull", json={"Chat": "m:n", "Cursor": cursor, "Limit": 100}) as r:
                    assert r.status == 200
                    page = await r.json()
                texts += [m["text"] for m in page["messages"]]
                if not page["has_more"]:
                    break
                cursor = page["next_cursor"]
        assert set(acked) <= set(texts) and len(texts) == len(set(texts))
        assert f"chatsvc {first.addr} taken out" in gateway.output()  # it was in use, then dropped
        failed = sum(1 for _, s in statuses if s != 200)
        print(f"\ngateway over 2 chatsvc, one killed: {len(statuses)} sent, {len(acked)} acknowledged, "
              f"{failed} failed (in flight at the kill), {len(texts)} stored")
    finally:
        gateway.kill()
