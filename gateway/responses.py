"""What the gateway answers: a status and a body (JSON unless said otherwise), with extra headers."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson


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
