"""``python -m chatsvc``: run the IMService RPC server."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from chatsvc import config
from chatsvc.app import serve
from chatsvc.settings import ChatsvcSettings


def run_loop(coro: object) -> None:
    """Run ``coro`` on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    settings = config.load(ChatsvcSettings, argv, prog="python -m chatsvc")
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_loop(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
