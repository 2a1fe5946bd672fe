"""HTTP errors of the gateway, on top of chatsvc's domain errors (``chatsvc.errors``).

    ChatError (chatsvc.errors)        status from the class: 400, 503, 500
    ├── BadRequest                    400: malformed JSON, wrong types
    ├── Unauthorized                  401: no bearer token, or a bad one (``WWW-Authenticate: Bearer``)
    ├── Forbidden                     403: a valid token, but not the sender / not a member of the chat
    ├── RequestTimeout                408: the request body did not arrive in time (connection closed)
    ├── UpstreamUnavailable           502: chatsvc unreachable or answered garbage
    └── UpstreamTimeout               504: chatsvc did not answer in time

Every error leaves the gateway as ``{"status": "error", "code": N, "message": "..."}``
(``response_for`` adds the headers an error needs).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from chatsvc.client import RPCError, RPCTimeout
from chatsvc.errors import ChatError

REALM = "pychat"


class BadRequest(ChatError):
    code = 400
    http_status = 400


class Unauthorized(ChatError):
    code = 401
    http_status = 401

    def __init__(self, message: str, *, error: str | None = "invalid_token") -> None:
        """``error`` is RFC 6750's code for the challenge; None when no token was sent at all."""
        super().__init__(message)
        self.challenge = f'Bearer realm="{REALM}"' + (f', error="{error}"' if error else "")


class Forbidden(ChatError):
    code = 403
    http_status = 403


class RequestTimeout(ChatError):
    code = 408
    http_status = 408


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


def response_for(exc: ChatError) -> web.Response:
    """The JSON error response for ``exc``, with the headers its status calls for."""
    response = error_response(exc.http_status, exc.message)
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = exc.challenge
    elif isinstance(exc, RequestTimeout):
        response.force_close()  # the rest of a slow body is not worth waiting for
    return response
