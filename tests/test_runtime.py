"""Process tuning shared by both services."""

from __future__ import annotations

import gc

from chatsvc import runtime


def test_tune_gc_raises_thresholds_and_freezes_startup_objects():
    before_threshold, before_frozen = gc.get_threshold(), gc.get_freeze_count()
    try:
        runtime.tune_gc()
        assert gc.get_threshold() == runtime.GC_THRESHOLDS
        assert gc.get_freeze_count() > before_frozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*before_threshold)


def test_run_uses_uvloop_when_installed():
    import asyncio

    import uvloop

    seen = []

    async def probe() -> None:
        seen.append(type(asyncio.get_running_loop()))

    runtime.run(probe())
    assert seen == [uvloop.Loop]
