"""Redis memory per stored message: ``messages`` 100-byte messages over NCHATS chats, sent through
chatsvc's Thrift client into a fresh redis-server; (used_memory after - before) / messages."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import redis.asyncio as aioredis

from bench.workload import NCHATS, ProbeFailed, message_text
from chatsvc.client import ChatClient


async def used_memory(client: aioredis.Redis) -> int:
    info = await client.info("memory")
    return int(info["used_memory"])


async def _fill(chat: ChatClient, messages: int, concurrency: int) -> None:
    """Message ``i`` goes to chat ``u<i % NCHATS>:v<...>``: the same number in every chat."""
    tag = secrets.token_hex(2)

    async def worker(first: int) -> None:
        for i in range(first, messages, concurrency):
            n = i % NCHATS + 1
            reply = await chat.send(f"u{n}:v{n}", message_text(tag, i), f"u{n}")
            if reply.Code != 0:
                raise ProbeFailed(f"Send answered Code {reply.Code}: {reply.Msg}")

    await asyncio.gather(*(worker(w) for w in range(concurrency)))


async def measure(chatsvc: tuple[str, int], redis_addr: tuple[str, int], messages: int,
                  concurrency: int = 64) -> dict[str, Any]:
    store = aioredis.Redis(host=redis_addr[0], port=redis_addr[1])
    try:
        keys_before, before = await store.dbsize(), await used_memory(store)
        start = time.monotonic()
        async with ChatClient(*chatsvc) as chat:
            await _fill(chat, messages, concurrency)
        elapsed = time.monotonic() - start
        keys_after, after = await store.dbsize(), await used_memory(store)
    finally:
        await store.aclose()
    return {"messages": messages, "chats": NCHATS, "text_bytes": len(message_text("0000", 0)),
            "used_memory_before": before, "used_memory_after": after,
            "bytes_per_message": round((after - before) / messages, 1),
            "keys_before": keys_before, "keys_after": keys_after,
            "fill_s": round(elapsed, 2), "fill_rps": round(messages / elapsed, 1)}
