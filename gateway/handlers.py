"""HTTP handlers: a fixed answer, or the request bound into one chatsvc call and its reply shaped.

A call route is split in two plain functions, ``prepare`` (bind and authorize the request, build
the call) and the call's ``finish`` (the reply to the response), so that ``gateway.app`` can run
it without a Task when the body is already in and a connection has room (the usual case), and
as a coroutine otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from chatsvc import errors
from chatsvc.client import pull_args, send_args
from gateway import auth, binding
from gateway.http import Request
from gateway.responses import Response

if TYPE_CHECKING:  # gateway.app imports this module
    from gateway.app import Gateway

PONG = Response(200, orjson.dumps({"message": "pong"}))
SUCCESS = Response(200, orjson.dumps({"status": "success"}))


class Call(NamedTuple):
    """One chatsvc call for a request, and how its reply becomes the response."""

    method: str
    args: Any
    finish: Callable[[Any], Response]  # the reply's ``success`` struct -> the response
    idempotent: bool = False  # retried once on a fresh connection if the connection drops


class Fixed(NamedTuple):
    """A route answered without chatsvc."""

    answer: Callable[[Gateway], Response]


class Rpc(NamedTuple):
    """A route answered by one chatsvc call: ``prepare(request, body, identity)``."""

    prepare: Callable[[Request, bytes, auth.Identity | None], Call]


def _pong(gw: Gateway) -> Response:
    return PONG


def _openapi(gw: Gateway) -> Response:
    return Response(200, gw.openapi_json)


def prepare_send(request: Request, body: bytes, identity: auth.Identity | None) -> Call:
    data = binding.bind_send(body)
    auth.check_send(identity, data.sender)
    return Call("Send", send_args(data.chat, data.text, data.sender), _sent)


def _sent(reply: Any) -> Response:
    _check(reply)
    return SUCCESS


def prepare_pull(request: Request, body: bytes, identity: auth.Identity | None) -> Call:
    data = binding.bind_pull(body, request.query)
    auth.check_pull(identity, data.chat)
    return Call("Pull", pull_args(data.chat, data.cursor, data.limit, data.reverse), _pulled, idempotent=True)


def _pulled(reply: Any) -> Response:
    _check(reply)
    messages = [{"chat": m.Chat, "text": m.Text, "sender": m.Sender, "send_time": m.SendTime}
                for m in reply.Messages or ()]
    return Response(200, orjson.dumps({"messages": messages, "has_more": bool(reply.HasMore),
                                       "next_cursor": reply.NextCursor or 0}))


def _check(reply: Any) -> None:
    """Raise the domain error for a non-zero in-band Code."""
    if reply.Code != errors.OK:
        raise errors.from_code(reply.Code or 500, reply.Msg or "")


ping = Fixed(_pong)
openapi = Fixed(_openapi)
send = Rpc(prepare_send)
pull = Rpc(prepare_pull)
