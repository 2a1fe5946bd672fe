"""HTTP errors of the gateway, on top of chatsvc's domain errors (``chatsvc.errors``).

    ChatError (chatsvc.errors)        status from the class: 400, 503, 500
    ├── BadRequest                    400: malformed JSON, wrong types
    ├── UpstreamUnavailable           502: chatsvc unreachable or answered garbage
    └── UpstreamTimeout               504: chatsvc did not answer in time

Every error leaves the gateway as ``{"status": "error", "code": N, "message": "..."}``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from chatsvc.client import RPCError, RPCTimeout
from chatsvc.errors import ChatError


class BadRequest(ChatError):
    code = 400
    http_status = 400


class UpstreamUnavailable(ChatError):
    code = 502
    http_status = 502


class UpstreamTimeout(ChatError):
    code = 504
    http_status = 504


def from_rpc(exc: RPCError) -> ChatError:
    if isinstance(exc, RPCTimeout):
        return UpstreamTimeout(f"chatsvc timed out: {exc}")
    return UpstreamUnavailable(f"chatsvc unavailable: {exc}")


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    return json_response({"status": "error", "code": status, "message": message}, status)
