"""Wiring for the chatsvc process: settings -> storage -> service -> handler -> Thrift server."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from chatsvc.handler import IMServiceHandler
from chatsvc.server import ServerLimits, ThriftServer
from chatsvc.service import ChatService
from chatsvc.settings import ChatsvcSettings
from chatsvc.storage import RedisStorage
from chatsvc.wire.idl import IMService

log = logging.getLogger("chatsvc")


@asynccontextmanager
async def running(settings: ChatsvcSettings) -> AsyncIterator[ThriftServer]:
    """A started chatsvc; leaving the block drains calls in flight and closes Redis."""
    storage = RedisStorage.from_url(settings.redis_url, pool_size=settings.redis_pool_size,
                                    timeout=settings.redis_timeout,
                                    connect_timeout=settings.redis_connect_timeout,
                                    batch=settings.redis_batch)
    handler = IMServiceHandler(ChatService(storage, settings.limits))
    limits = ServerLimits(settings.wire_limits, settings.max_connections, settings.max_pipeline,
                          settings.idle_timeout)
    server = ThriftServer(IMService, handler, limits)
    try:
        await server.start(settings.host, settings.port)
        if not await storage.ping():
            log.warning("Redis at %s is not answering yet; calls get Code 503 until it does",
                        settings.redis_url)
        yield server
    finally:
        await server.close(settings.drain_timeout)
        await storage.close()


async def serve(settings: ChatsvcSettings) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings) as server:
        addrs = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets)
        log.info("chatsvc listening on %s (Thrift IMService; Redis %s)", addrs, settings.redis_url)
        await stop.wait()
        log.info("chatsvc stopping")
