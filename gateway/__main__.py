"""``python -m gateway``: run the HTTP API."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from chatsvc import config, runtime
from gateway.app import create_app
from gateway.connections import LimitedSite, raise_fd_limit
from gateway.keys import CONNECTIONS
from gateway.settings import GatewaySettings
from gateway.workers import supervise

ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'


async def serve(app: web.Application, settings: GatewaySettings) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then stop accepting and drain (``drain_timeout``).

    ``web.run_app`` without its fixed TCP site: connections go through ``LimitedSite``, which
    bounds how many are open and how long their headers may take (gateway.connections).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    raise_fd_limit(settings.max_connections)
    runner = web.AppRunner(
        app,
        access_log=logging.getLogger("gateway.access") if settings.access_log else None,
        access_log_format=ACCESS_LOG_FORMAT,
        keepalive_timeout=settings.keepalive_timeout,
        shutdown_timeout=settings.drain_timeout,
    )
    await runner.setup()
    try:
        site = LimitedSite(runner, settings.host, settings.port, app[CONNECTIONS],
                           reuse_port=settings.reuse_port or None)
        await site.start()
        await stop.wait()
        logging.getLogger("gateway").info("gateway stopping")
    finally:
        # aiohttp waits shutdown_timeout for handlers, cancels them, then may wait as long again:
        # bound the whole drain to GATEWAY_DRAIN_TIMEOUT (plus a moment to close sockets).
        try:
            async with asyncio.timeout(settings.drain_timeout + 0.5):
                await runner.cleanup()
        except TimeoutError:
            logging.getLogger("gateway").warning("drain timeout: closing requests still in flight")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    settings = config.load(GatewaySettings, argv, prog="python -m gateway")
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.workers > 1:
        return supervise(argv, settings.workers)
    targets = ", ".join(f"{h}:{p}" for h, p in settings.chatsvc_instances)
    logging.getLogger("gateway").info("gateway on http://%s:%d -> chatsvc %s (%s)", settings.host,
                                      settings.port, targets, settings.chatsvc_transport)
    runtime.tune_gc()
    runtime.run(serve(create_app(settings), settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
