"""HTTP errors of the gateway, on top of chatsvc's domain errors (``chatsvc.errors``).

    ChatError (chatsvc.errors)        status from the class: 400, 503, 500
    ├── BadRequest                    400: malformed JSON, wrong types
    ├── Unauthorized                  401: no bearer token, or a bad one (``WWW-Authenticate: Bearer``)
    ├── Forbidden                     403: a valid token, but not the sender / not a member of the chat
    ├── RequestTimeout                408: the request body did not arrive in time (connection closed)
    ├── PayloadTooLarge               413: a body over GATEWAY_MAX_BODY_BYTES (connection closed)
    ├── UpstreamUnavailable           502: chatsvc unreachable or answered garbage
    └── UpstreamTimeout               504: chatsvc did not answer in time

Every error leaves the gateway as ``{"status": "error", "code": N, "message": "..."}``
(``response_for`` adds the headers an error needs).
"""

from __future__ import annotations

from chatsvc.client import RPCError, RPCTimeout
from chatsvc.errors import ChatError
from gateway.responses import Response, error_response

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


class PayloadTooLarge(ChatError):
    code = 413
    http_status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body too large (limit {limit} bytes)")


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


def response_for(exc: ChatError) -> Response:
    """The JSON error response for ``exc``, with the headers its status calls for."""
    if isinstance(exc, Unauthorized):
        return error_response(exc.http_status, exc.message, (("WWW-Authenticate", exc.challenge),))
    # The rest of a slow or oversized body is not worth waiting for.
    return error_response(exc.http_status, exc.message, close=isinstance(exc, (RequestTimeout, PayloadTooLarge)))
