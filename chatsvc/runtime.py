"""Process-level tuning shared by chatsvc and the gateway."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Collection, Coroutine
from typing import Any

# Requests allocate many short-lived containers. With the default gen-0 threshold (700) the cyclic
# GC runs every few requests and took ~5% of CPU under load; reference counting frees almost all of
# these objects anyway, so collect far less often. Objects alive at start-up are frozen out of it.
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed, else asyncio's default one."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to completion on a new event loop (uvloop when available)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(coro)


def wait_for_child_exit(pids: Collection[int]) -> None:
    """Sleep until one of the child processes ``pids`` has exited, leaving it for its ``Popen`` to
    reap (any other child that exits meanwhile is reaped here).

    For supervisors: no polling. One that woke ten times a second to poll its children took a
    CPU from the processes it supervises, now and then for milliseconds (docs/performance.md).
    A signal's handler runs meanwhile; the wait goes on after it unless the handler raises.
    """
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:  # no child left to wait for
            return
        if info is None or info.si_pid in pids:
            return
        os.waitpid(info.si_pid, 0)
