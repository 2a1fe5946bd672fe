"""HTTP handlers: bind the request, make one chatsvc call, shape the JSON reply."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from chatsvc import errors
from chatsvc.client import RPCError
from gateway import auth, binding
from gateway.errors import from_rpc
from gateway.http import Request
from gateway.responses import Response

if TYPE_CHECKING:  # gateway.app imports this module
    from gateway.app import Gateway

PONG = Response(200, orjson.dumps({"message": "pong"}))
SUCCESS = Response(200, orjson.dumps({"status": "success"}))


async def ping(gw: Gateway, request: Request, identity: auth.Identity | None) -> Response:
    return PONG


async def openapi(gw: Gateway, request: Request, identity: auth.Identity | None) -> Response:
    return Response(200, gw.openapi_json)


async def send(gw: Gateway, request: Request, identity: auth.Identity | None) -> Response:
    data = binding.bind_send(await request.read(gw.settings.max_body_bytes, gw.settings.body_timeout))
    auth.check_send(identity, data.sender)
    try:
        reply = await gw.client.send(data.chat, data.text, data.sender)
    except RPCError as exc:
        raise from_rpc(exc) from exc
    _check(reply.Code, reply.Msg)
    return SUCCESS


async def pull(gw: Gateway, request: Request, identity: auth.Identity | None) -> Response:
    body = await request.read(gw.settings.max_body_bytes, gw.settings.body_timeout)
    data = binding.bind_pull(body, request.query)
    auth.check_pull(identity, data.chat)
    try:
        page = await gw.client.pull_page(data.chat, data.cursor, data.limit, data.reverse)
    except RPCError as exc:
        raise from_rpc(exc) from exc
    _check(page.code, page.msg)
    return Response(200, orjson.dumps({"messages": page.messages, "has_more": page.has_more,
                                       "next_cursor": page.next_cursor}))


def _check(code: int | None, msg: str | None) -> None:
    """Raise the domain error for a non-zero in-band Code (a missing one counts as 500)."""
    if code != errors.OK:
        raise errors.from_code(code or 500, msg or "")
