"""``python -m gateway``: run the HTTP API."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from chatsvc import config, runtime
from gateway.app import Gateway, chatsvc_client
from gateway.connections import ConnectionLimiter, raise_fd_limit
from gateway.http import HttpServer
from gateway.settings import GatewaySettings
from gateway.workers import supervise

log = logging.getLogger("gateway")


async def serve(settings: GatewaySettings) -> None:
    """Serve until SIGINT or SIGTERM, then stop accepting and drain (``drain_timeout``)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    raise_fd_limit(settings.max_connections)
    limiter = ConnectionLimiter(settings.max_connections, settings.header_timeout, settings.keepalive_timeout)
    async with chatsvc_client(settings) as client:
        server = HttpServer(Gateway(settings, client), limiter, max_pipelined=settings.max_pipelined,
                            access_log=logging.getLogger("gateway.access") if settings.access_log else None)
        await server.start(settings.host, settings.port, reuse_port=settings.reuse_port)
        await stop.wait()
        log.info("gateway stopping")
        await server.close(settings.drain_timeout)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    settings = config.load(GatewaySettings, argv, prog="python -m gateway")
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.workers > 1:
        return supervise(argv, settings.workers)
    targets = ", ".join(f"{h}:{p}" for h, p in settings.chatsvc_instances)
    log.info("gateway on http://%s:%d -> chatsvc %s (%s)", settings.host,
                                      settings.port, targets, settings.chatsvc_transport)
    runtime.tune_gc()
    runtime.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
