"""HTTP handlers: bind the request, make one chatsvc call, shape the JSON reply."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from chatsvc import errors
from chatsvc.client import RPCError
from gateway import auth, binding
from gateway.errors import RequestTimeout, from_rpc, json_response
from gateway.keys import CHATSVC, OPENAPI_JSON, SETTINGS

_SUCCESS = {"status": "success"}


async def ping(request: web.Request) -> web.Response:
    return json_response({"message": "pong"})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_JSON], content_type="application/json")


async def send(request: web.Request) -> web.Response:
    data = binding.bind_send(await _read_body(request))
    auth.check_send(request, data.sender)
    client = request.app[CHATSVC]
    try:
        reply = await client.send(data.chat, data.text, data.sender)
    except RPCError as exc:
        raise from_rpc(exc) from exc
    _check(reply)
    return json_response(_SUCCESS)


async def pull(request: web.Request) -> web.Response:
    data = binding.bind_pull(await _read_body(request), request.query)
    auth.check_pull(request, data.chat)
    client = request.app[CHATSVC]
    try:
        reply = await client.pull(data.chat, data.cursor, data.limit, data.reverse)
    except RPCError as exc:
        raise from_rpc(exc) from exc
    _check(reply)
    messages = [{"chat": m.Chat, "text": m.Text, "sender": m.Sender, "send_time": m.SendTime}
                for m in reply.Messages or ()]
    return json_response({"messages": messages, "has_more": bool(reply.HasMore),
                          "next_cursor": reply.NextCursor or 0})


async def _read_body(request: web.Request) -> bytes:
    """The body, within ``GATEWAY_BODY_TIMEOUT`` (a client trickling it gets 408)."""
    if request.content.is_eof():  # the usual case: the whole body came with the headers
        return await request.read()
    timeout = request.app[SETTINGS].body_timeout
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {timeout:g}s") from None


def _check(reply: Any) -> None:
    """Raise the domain error for a non-zero in-band Code."""
    if reply.Code != errors.OK:
        raise errors.from_code(reply.Code or 500, reply.Msg or "")
