"""The gateway application: authentication, routing and error rendering around the handlers.

``Gateway`` is the ``gateway.http`` server's app: ``gateway(request)`` gives the response, at
once or later (``gateway.http.Outcome``), and never raises for a client's mistake. The order of
the checks is part of the contract: authentication first (with auth on, an unknown path is a 401
too, and a body is never read for an unauthenticated client), then the route (404, or 405 with
``Allow``), then the body (413, 408), the handler's binding (400) and the chatsvc call.

The usual request, whose body came with its headers, is answered without a Task: the call is sent
at once on a connection with room, and the response is written from the reply's callback.
Anything that has to wait (a body still arriving, no free connection, a retry) runs as a coroutine.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources

import orjson
import yaml

from chatsvc.balancer import BalancedClient
from chatsvc.client import ChatClient, IMServiceClient, PendingCall, RPCConnectError, RPCError
from chatsvc.errors import ChatError
from gateway import auth, handlers
from gateway.errors import from_rpc, response_for
from gateway.handlers import Call, Fixed, Rpc
from gateway.http import Deferred, Outcome, Request
from gateway.responses import Response, error_response
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway")

Handler = Fixed | Rpc

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

    def __call__(self, request: Request) -> Outcome:
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
            if isinstance(handler, Fixed):
                return handler.answer(self)
            body = request.ready_body(self.settings.max_body_bytes)
            if body is None:
                return self._read_then_call(request, handler, identity)
            call = handler.prepare(request, body, identity)
        except ChatError as exc:
            return response_for(exc)
        pending = self.client.start(call.method, call.args)
        if pending is None:  # no connection with room: wait for one
            return self._call(call)
        return Deferred(pending.future, partial(self._replied, pending, call))

    def _replied(self, pending: PendingCall, call: Call) -> Outcome:
        try:
            reply = pending.outcome()
        except RPCConnectError as exc:
            if call.idempotent:  # one more attempt, as ChatClient.call would make
                return self._call(call, retry=False)
            return response_for(from_rpc(exc))
        except RPCError as exc:
            return response_for(from_rpc(exc))
        return _finish(call, reply)

    async def _call(self, call: Call, retry: bool = True) -> Response:
        try:
            reply = await self.client.call(call.method, call.args, idempotent=call.idempotent, retry=retry)
        except RPCError as exc:
            return response_for(from_rpc(exc))
        return _finish(call, reply)

    async def _read_then_call(self, request: Request, handler: Rpc, identity: auth.Identity | None) -> Response:
        try:
            body = await request.read(self.settings.max_body_bytes, self.settings.body_timeout)
            call = handler.prepare(request, body, identity)
        except ChatError as exc:
            return response_for(exc)
        return await self._call(call)


def _finish(call: Call, reply: object) -> Response:
    try:
        return call.finish(reply)
    except ChatError as exc:
        return response_for(exc)
