"""The gateway's application factory: routes, middlewares, error rendering and the chatsvc client's lifetime."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources

import orjson
import yaml
from aiohttp import web
from aiohttp.typedefs import Middleware

from chatsvc.balancer import BalancedClient
from chatsvc.client import ChatClient, IMServiceClient
from chatsvc.errors import ChatError
from gateway import auth, connections, handlers
from gateway.errors import error_response, response_for
from gateway.keys import CHATSVC, CONNECTIONS, OPENAPI_JSON, SETTINGS
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every failure as ``{"status": "error", "code": N, "message": ...}``."""
    try:
        return await handler(request)
    except ChatError as exc:
        return response_for(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason if exc.status != 413 else (
            f"request body too large (limit {request.app[SETTINGS].max_body_bytes} bytes)")
        return error_response(exc.status, message)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal error")


async def chatsvc_client(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    addrs = settings.chatsvc_instances
    client: IMServiceClient
    if len(addrs) == 1:
        client = ChatClient(*addrs[0], settings=settings.client)
    else:
        client = BalancedClient(addrs, settings.client, settings.probe_interval)
    async with client:
        app[CHATSVC] = client
        yield


def load_openapi() -> bytes:
    """The API description (gateway/openapi.yaml, also docs/openapi.yaml) as JSON."""
    text = resources.files("gateway").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return orjson.dumps(yaml.safe_load(text))


def create_app(settings: GatewaySettings) -> web.Application:
    limiter = connections.ConnectionLimiter(settings.max_connections, settings.header_timeout)
    middlewares: list[Middleware] = [errors_middleware]
    if settings.auth:
        middlewares.append(auth.middleware(auth.TokenVerifier(settings.jwt_secret, settings.jwt_leeway)))
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[CONNECTIONS] = limiter
    app[OPENAPI_JSON] = load_openapi()
    app.cleanup_ctx.append(chatsvc_client)
    app.router.add_get("/ping", handlers.ping)
    app.router.add_get("/openapi.json", handlers.openapi)
    app.router.add_post("/api/send", handlers.send)
    app.router.add_get("/api/pull", handlers.pull)
    return app
