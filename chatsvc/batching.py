"""Automatic pipelining for redis-py asyncio: concurrent callers' commands share round trips.

Under load many calls wait on Redis at once. Sending their commands one by one costs a write, a
read and redis-py's per-command machinery each. Here every command goes into a queue; a small,
fixed set of dedicated redis-py connections each takes the whole queue (up to ``max_batch``)
as one pipelined write, reads the replies in order, and comes back for more. While all
connections are busy the queue grows, so batches grow with the load by themselves. Each caller
still gets its own reply or its own error.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

log = logging.getLogger("chatsvc.batching")

Command = tuple[Any, ...]


class CommandBatcher:
    def __init__(self, client: aioredis.Redis, connections: int = 4, max_batch: int = 512) -> None:
        pool = client.connection_pool
        self._idle: list[Any] = [pool.make_connection() for _ in range(connections)]  # type: ignore[no-untyped-call]
        self._all = list(self._idle)
        self._max_batch = max_batch
        self._queue: list[tuple[Command, asyncio.Future[Any]]] = []
        self._dispatch_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches_sent = 0

    async def execute(self, *args: Any) -> Any:
        """Run one command in the next batch; returns its reply or raises its error."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((args, fut))
        if self._idle and not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)
        return await fut

    def _dispatch(self) -> None:
        """Hand queued commands to idle connections, one batch each."""
        self._dispatch_scheduled = False
        loop = asyncio.get_running_loop()
        while self._queue and self._idle:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            self.batches_sent += 1
            task = loop.create_task(self._run(self._idle.pop(), batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, conn: Any, batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        try:
            await self._exchange(conn, batch)
        finally:
            self._idle.append(conn)
            if self._queue and not self._dispatch_scheduled:
                self._dispatch_scheduled = True
                asyncio.get_running_loop().call_soon(self._dispatch)

    @staticmethod
    async def _exchange(conn: Any, batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        try:
            await conn.send_packed_command(conn.pack_commands([args for args, _ in batch]), check_health=False)
            for _, fut in batch:
                try:
                    reply = await conn.read_response()
                except ResponseError as exc:  # this command failed; the connection is still in step
                    if not fut.done():
                        fut.set_exception(exc)
                    continue
                if not fut.done():
                    fut.set_result(reply)
        except Exception as exc:  # the connection failed: every command still waiting fails with it
            await conn.disconnect(nowait=True)
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
        except BaseException:
            await conn.disconnect(nowait=True)
            for _, fut in batch:
                fut.cancel()
            raise

    async def close(self) -> None:
        while self._queue or self._tasks:
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            else:
                self._dispatch()
        for conn in self._all:
            await conn.disconnect()
