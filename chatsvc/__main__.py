"""``python -m chatsvc``: run the IMService RPC server."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from chatsvc import config, runtime
from chatsvc.app import serve
from chatsvc.settings import ChatsvcSettings


def main(argv: Sequence[str] | None = None) -> int:
    settings = config.load(ChatsvcSettings, argv, prog="python -m chatsvc")
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runtime.tune_gc()
    runtime.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
