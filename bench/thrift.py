"""chatsvc alone over Thrift, with chatsvc.client.ChatClient: no HTTP, no gateway.

``callers`` coroutines share one ChatClient (4 pipelined connections, as the gateway's pool) and
each calls Send (or Pull, Limit 20, on the preloaded chat) again as soon as its reply arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from bench.stats import Histogram, Measurement, now
from bench.workload import PRELOAD, PULL_CHAT, PULL_LIMIT, TEXT_BYTES, ProbeFailed, SendBodies
from chatsvc.client import ChatClient, RPCError

Call = Callable[[], Awaitable[Any]]


def parse_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def make_call(client: ChatClient, op: str) -> Call:
    """A zero-argument coroutine function doing one ``op`` ("send" or "pull") call."""
    if op == "pull":
        return lambda: client.pull(PULL_CHAT, 0, PULL_LIMIT)
    bodies = SendBodies()

    def send() -> Awaitable[Any]:
        return client.send(*bodies.message())
    return send


async def probe(client: ChatClient) -> None:
    """Send answers Code 0; Pull answers 20 messages and HasMore."""
    try:
        sent = await client.send("probe:x", "probe", "probe")
        page = await client.pull(PULL_CHAT, 0, PULL_LIMIT)
    except RPCError as exc:
        raise ProbeFailed(f"chatsvc {client.host}:{client.port}: {exc.__class__.__name__}: {exc}") from None
    if sent.Code != 0:
        raise ProbeFailed(f"Send answered Code {sent.Code}: {sent.Msg}")
    count = len(page.Messages or ())
    if page.Code != 0 or count != PULL_LIMIT or page.HasMore is not True:
        raise ProbeFailed(f"Pull answered Code {page.Code} ({page.Msg}) with {count} messages, "
                          f"HasMore={page.HasMore}")


async def preload(client: ChatClient, count: int = PRELOAD) -> None:
    sender = PULL_CHAT.split(":")[0]
    for i in range(1, count + 1):
        reply = await client.send(PULL_CHAT, f"preload message {i:04d} ".ljust(TEXT_BYTES, "y"), sender)
        if reply.Code != 0:
            raise ProbeFailed(f"preload: Send answered Code {reply.Code}: {reply.Msg}")


async def _caller(call: Call, deadline: float, hist: Histogram, counts: dict[str, int]) -> None:
    while (start := now()) < deadline:
        try:
            reply = await call()
        except RPCError:
            counts["sockerr"] += 1
            continue
        hist.record(now() - start)
        counts["requests"] += 1
        if reply.Code != 0:
            counts["errors"] += 1


async def closed_loop(client: ChatClient, op: str, callers: int, duration: float) -> Measurement:
    """``callers`` concurrent callers doing ``op`` back to back for ``duration`` seconds."""
    call, hist = make_call(client, op), Histogram()
    counts = {"requests": 0, "errors": 0, "sockerr": 0}
    start = now()
    await asyncio.gather(*(_caller(call, start + duration, hist, counts) for _ in range(callers)))
    return Measurement.from_histogram(hist, counts["requests"], now() - start, counts["errors"],
                                      counts["sockerr"])
