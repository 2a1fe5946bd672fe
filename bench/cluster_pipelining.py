"""How chatsvc should pipeline Redis Cluster commands: a storage-level comparison (no HTTP, no Thrift).

    python -m bench.cluster_pipelining [--duration 3] [--rounds 5] [--callers 128]

Starts a Redis Cluster (3 masters + 3 replicas, persistence off) and one redis-server, then drives
``chatsvc.storage.RedisStorage`` in this process with ``--callers`` concurrent callers, closed loop:
``append`` to a random chat of 1,000, then ``page`` (21 messages) of one preloaded chat. Variants,
in interleaved rounds (A B C D A B C D ...):

- ``node-batches``: chatsvc's ``ClusterBatcher``: commands routed by slot to a ``CommandBatcher``
  per master (4 dedicated connections each; batches grow with the load);
- ``cluster-pipeline``: the alternative, prototyped here: commands queued per event-loop tick and
  sent as one redis-py ``ClusterPipeline`` per batch (redis-py splits it per node), at most 4
  batches in flight, as many as the batcher has connections;
- ``unbatched``: ``RedisCluster.execute_command`` per command (REDIS_BATCH=false);
- ``single``: the single-node ``CommandBatcher`` on one redis-server, for reference;
- ``wait-1`` (only with ``--variants``): ``node-batches`` with REDIS_CLUSTER_WAIT_REPLICAS=1.

Prints per round ops/s and this process's CPU microseconds per operation (the figure that
matters: chatsvc is one Python process and its CPU is what runs out first), then medians.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.cluster import RedisCluster

from bench.runner import run_async
from bench.system import System
from chatsvc.storage import RedisStorage

NCHATS = 1000
PAGE = 21
TEXT = "x" * 100


class ClusterPipelineBatcher:
    """Automatic pipelining with one redis-py ClusterPipeline per batch (the alternative design)."""

    def __init__(self, cluster: RedisCluster, concurrency: int = 4, max_batch: int = 512) -> None:
        self._cluster = cluster
        self._free = concurrency
        self._max_batch = max_batch
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def execute(self, *args: Any) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((args, fut))
        self._schedule()
        return await fut

    def _schedule(self) -> None:
        if self._free and self._queue and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._scheduled = False
        while self._queue and self._free:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch:]
            self._free -= 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        pipe = self._cluster.pipeline()
        for args, _ in batch:
            pipe.execute_command(*args)
        try:
            results = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
        finally:
            self._free += 1
            self._schedule()

    async def close(self) -> None:
        while self._tasks or self._queue:
            await asyncio.sleep(0.01)


def storage_for(variant: str, cluster_url: str, single_url: str) -> RedisStorage:
    common: dict[str, Any] = {"pool_size": 64, "timeout": 2.0, "connect_timeout": 1.0}
    if variant == "single":
        return RedisStorage.from_url(single_url, **common)
    if variant == "unbatched":
        return RedisStorage.from_url(cluster_url, batch=False, **common)
    if variant == "wait-1":
        return RedisStorage.from_url(cluster_url, wait_replicas=1, **common)
    storage = RedisStorage.from_url(cluster_url, **common)
    if variant == "cluster-pipeline":
        assert isinstance(storage._redis, RedisCluster)
        return RedisStorage(storage._redis, executor=ClusterPipelineBatcher(storage._redis))
    return storage


async def closed_loop(op: Callable[[int], Awaitable[Any]], callers: int, duration: float) -> tuple[float, float]:
    """(ops/s, CPU µs of this process per op) of ``callers`` coroutines calling ``op`` back to back."""
    done = 0
    stop = False

    async def caller(seed: int) -> None:
        nonlocal done
        rng = random.Random(seed)
        while not stop:
            await op(rng.randrange(NCHATS))
            done += 1

    tasks = [asyncio.create_task(caller(i)) for i in range(callers)]
    await asyncio.sleep(0.3)  # warm-up: connections, caches
    start, cpu0, done0 = time.perf_counter(), time.process_time(), done
    await asyncio.sleep(duration)
    ops, elapsed, cpu = done - done0, time.perf_counter() - start, time.process_time() - cpu0
    stop = True
    await asyncio.gather(*tasks)
    return ops / elapsed, cpu / max(ops, 1) * 1e6


async def measure(variant: str, load: str, cluster_url: str, single_url: str, callers: int,
                  duration: float) -> tuple[float, float]:
    storage = storage_for(variant, cluster_url, single_url)
    try:
        if load == "append":
            async def op(i: int) -> Any:
                return await storage.append(f"u{i}:v{i}", f"u{i}", TEXT)
        else:
            if not await storage.page("pa:pb", 0, PAGE, False):
                await asyncio.gather(*(storage.append("pa:pb", "pa", TEXT) for _ in range(60)))

            async def op(i: int) -> Any:
                rows = await storage.page("pa:pb", 0, PAGE, False)
                assert len(rows) == PAGE
                return rows
        return await closed_loop(op, callers, duration)
    finally:
        await storage.close()


VARIANTS = ("node-batches", "cluster-pipeline", "unbatched", "single")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster_pipelining", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=3.0, help="seconds per load and variant; default 3")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; default 5")
    p.add_argument("--callers", type=int, default=128, help="concurrent callers; default 128")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated, of {', '.join((*VARIANTS, 'wait-1'))}; default all but wait-1")
    p.add_argument("--loads", default="append,page", help="comma-separated, of append and page; default both")
    a = p.parse_args(argv)
    variants = a.variants.split(",")
    for v in variants:
        if v not in (*VARIANTS, "wait-1"):
            p.error(f"unknown variant {v!r}")
    with System() as system:
        cluster_url = system.start_redis_cluster(3, 1)
        single_url = f"redis://{system.start_redis().addr}/0"
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for load in a.loads.split(","):
            for rnd in range(1, a.rounds + 1):
                for variant in variants:
                    rate, cpu = run_async(measure(variant, load, cluster_url, single_url, a.callers, a.duration))
                    results.setdefault((load, variant), []).append((rate, cpu))
                    print(f"round {rnd}/{a.rounds} {load:6} {variant:16} ops/s={rate:8.0f} "
                          f"cpu/op={cpu:6.1f}us", flush=True)
    print(f"\nmedians over {a.rounds} rounds, {a.callers} callers, {a.duration:g} s each")
    print(f"{'load':6} {'variant':16} {'ops/s':>8} {'cpu/op us':>10}")
    for (load, variant), rows in results.items():
        print(f"{load:6} {variant:16} {statistics.median(r for r, _ in rows):8.0f} "
              f"{statistics.median(c for _, c in rows):10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
