"""``python -m gateway``: run the HTTP API."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from chatsvc import config, runtime
from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.workers import supervise

ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    settings = config.load(GatewaySettings, argv, prog="python -m gateway")
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.workers > 1:
        return supervise(argv, settings.workers)
    host, port = settings.chatsvc
    logging.getLogger("gateway").info("gateway on http://%s:%d -> chatsvc %s:%d (%s)", settings.host,
                                      settings.port, host, port, settings.chatsvc_transport)
    runtime.tune_gc()
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        reuse_port=settings.reuse_port or None,
        access_log=logging.getLogger("gateway.access") if settings.access_log else None,
        access_log_format=ACCESS_LOG_FORMAT,
        shutdown_timeout=settings.drain_timeout,
        print=None,
        loop=runtime.new_event_loop(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
