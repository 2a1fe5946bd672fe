"""Automatic pipelining for redis-py asyncio: commands issued in one event-loop iteration share
one round trip.

Under load, many calls are waiting on Redis at once; sending their commands one by one costs a
write and a read (and redis-py's per-command overhead) each. Queued here, everything issued before
the loop gets back to its I/O goes out as one non-transactional pipeline on one connection. Each
caller still gets its own result or its own error.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

Command = tuple[Any, ...]


class CommandBatcher:
    def __init__(self, client: aioredis.Redis, max_batch: int = 512) -> None:
        self._client = client
        self._max_batch = max_batch
        self._queue: list[tuple[Command, asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches_sent = 0

    async def execute(self, *args: Any) -> Any:
        """Run one command in the next batch; returns its reply or raises its error."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, fut))
        if len(self._queue) >= self._max_batch:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._queue:
            return
        batch, self._queue = self._queue, []
        self.batches_sent += 1
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for args, _ in batch:
            pipe.execute_command(*args)
        try:
            results = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection failed: every command in the batch fails with it
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        except BaseException:
            for _, fut in batch:
                fut.cancel()
            raise
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, Exception):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    async def close(self) -> None:
        if self._queue:
            self._flush()
        if self._tasks:
            await asyncio.wait(self._tasks)
