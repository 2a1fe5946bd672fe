"""Wiring for the chatsvc process: settings -> storage -> service -> handler -> Thrift server."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from chatsvc.handler import ARGS_READERS, IMServiceHandler
from chatsvc.server import ServerLimits, ThriftServer
from chatsvc.service import ChatService
from chatsvc.settings import ChatsvcSettings
from chatsvc.storage import RedisStorage
from chatsvc.wire.idl import IMService

log = logging.getLogger("chatsvc")

# Time to close the Redis pool once the drain is over (used up or not).
STORAGE_CLOSE_GRACE = 0.5


@asynccontextmanager
async def running(settings: ChatsvcSettings) -> AsyncIterator[ThriftServer]:
    """A started chatsvc; leaving the block drains calls in flight and closes Redis."""
    storage = RedisStorage.from_url(settings.redis_url, pool_size=settings.redis_pool_size,
                                    timeout=settings.redis_timeout,
                                    connect_timeout=settings.redis_connect_timeout,
                                    batch=settings.redis_batch,
                                    cluster=settings.redis_cluster,
                                    wait_replicas=settings.redis_cluster_wait_replicas,
                                    wait_timeout=settings.redis_cluster_wait_timeout)
    handler = IMServiceHandler(ChatService(storage, settings.limits))
    limits = ServerLimits(settings.wire_limits, settings.max_connections, settings.max_pipeline,
                          settings.idle_timeout, settings.read_timeout, settings.flush_bytes)
    server = ThriftServer(IMService, handler, limits, readers=ARGS_READERS)
    probe: asyncio.Task[None] | None = None
    try:
        await server.start(settings.host, settings.port)
        # In the background: a Redis slow to answer (up to REDIS_TIMEOUT) must not hold up a
        # SIGTERM that comes meanwhile, which is only handled once this block has been entered.
        probe = asyncio.create_task(_warn_if_unreachable(storage, settings.redis_url))
        yield server
    finally:
        if probe is not None:
            probe.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.drain_timeout
        await server.close(settings.drain_timeout)
        # Calls still running past the drain timeout have been cut off (their connections are
        # closed): do not wait up to REDIS_TIMEOUT more for their Redis commands.
        try:
            async with asyncio.timeout_at(max(deadline, loop.time() + STORAGE_CLOSE_GRACE)):
                await storage.close()
        except TimeoutError:
            log.warning("Redis commands of abandoned calls still pending; not waiting for them")


async def _warn_if_unreachable(storage: RedisStorage, url: str) -> None:
    if not await storage.ping():
        log.warning("Redis at %s is not answering yet; calls get Code 503 until it does", url)


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
