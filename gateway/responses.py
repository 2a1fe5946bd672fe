"""What the gateway answers: a status and a body (JSON unless said otherwise), with extra headers,
and its bytes on the wire (``render``)."""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, NamedTuple

import orjson

_REASONS = {s.value: s.phrase for s in HTTPStatus}


class Response(NamedTuple):
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False  # close the connection after this response
    content_type: str = "application/json"


def json_response(body: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = (),
                  close: bool = False) -> Response:
    return Response(status, orjson.dumps(body), headers, close)


def error_response(status: int, message: str, headers: tuple[tuple[str, str], ...] = (),
                   close: bool = False) -> Response:
    """``{"status": "error", "code": N, "message": ...}``, the shape of every error."""
    return json_response({"status": "error", "code": status, "message": message}, status, headers, close)


class DateHeader:
    """``Date: ...`` (RFC 9110 asks an origin server for it), formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def __call__(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = formatdate(second, usegmt=True)
        return self._value


def render(response: Response, date: str, *, head_only: bool = False, close: bool = False,
           keep_alive_10: bool = False) -> bytes:
    """A response's bytes: status line, headers and (unless HEAD) the body."""
    body = response.body
    extra = "".join(f"{k}: {v}\r\n" for k, v in response.headers) if response.headers else ""
    if close:
        extra += "Connection: close\r\n"
    elif keep_alive_10:  # HTTP/1.0 closes unless told otherwise
        extra += "Connection: keep-alive\r\n"
    head = (f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}\r\n"
            f"Content-Type: {response.content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Date: {date}\r\n{extra}\r\n").encode("latin-1")
    return head if head_only else head + body
