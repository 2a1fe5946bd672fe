"""The gateway application: authentication, routing and error rendering around the handlers.

``Gateway`` is the ``gateway.http`` server's app: ``await gateway(request)`` always returns a
response. The order of the checks is part of the contract: authentication first (with auth on,
an unknown path is a 401 too, and a body is never read for an unauthenticated client), then the
route (404, or 405 with ``Allow``), then the handler, which reads the body (413, 408) and calls
chatsvc.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources

import orjson
import yaml

from chatsvc.balancer import BalancedClient
from chatsvc.client import ChatClient, IMServiceClient
from chatsvc.errors import ChatError
from gateway import auth, handlers
from gateway.errors import response_for
from gateway.http import Request
from gateway.responses import Response, error_response
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway")

Handler = Callable[["Gateway", Request, "auth.Identity | None"], Awaitable[Response]]

# path -> method -> handler; every GET route also answers HEAD (gateway.http drops the body).
ROUTES: dict[str, dict[str, Handler]] = {
    "/ping": {"GET": handlers.ping},
    "/openapi.json": {"GET": handlers.openapi},
    "/api/send": {"POST": handlers.send},
    "/api/pull": {"GET": handlers.pull},
}
_TABLE = {path: {**methods, **({"HEAD": methods["GET"]} if "GET" in methods else {})}
          for path, methods in ROUTES.items()}


def load_openapi() -> bytes:
    """The API description (gateway/openapi.yaml, also docs/openapi.yaml) as JSON."""
    text = resources.files("gateway").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return orjson.dumps(yaml.safe_load(text))


@asynccontextmanager
async def chatsvc_client(settings: GatewaySettings) -> AsyncIterator[IMServiceClient]:
    """The chatsvc client for the settings: one pool, or a balancer over several instances."""
    addrs = settings.chatsvc_instances
    client: IMServiceClient
    if len(addrs) == 1:
        client = ChatClient(*addrs[0], settings=settings.client)
    else:
        client = BalancedClient(addrs, settings.client, settings.probe_interval)
    async with client:
        yield client


class Gateway:
    """Dispatches each request to its handler and renders every failure as JSON."""

    def __init__(self, settings: GatewaySettings, client: IMServiceClient) -> None:
        self.settings = settings
        self.client = client
        self.openapi_json = load_openapi()
        self.verifier = auth.TokenVerifier(settings.jwt_secret, settings.jwt_leeway) if settings.auth else None

    async def __call__(self, request: Request) -> Response:
        try:
            identity = None
            if self.verifier is not None and request.path not in auth.PUBLIC_PATHS:
                identity = self.verifier.authenticate(request.headers.get("Authorization"))
            methods = _TABLE.get(request.path)
            if methods is None:
                return error_response(404, "Not Found")
            handler = methods.get(request.method)
            if handler is None:
                return error_response(405, "Method Not Allowed", (("Allow", ", ".join(methods)),))
            return await handler(self, request, identity)
        except ChatError as exc:
            return response_for(exc)
