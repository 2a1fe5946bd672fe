"""The domain errors of the chat service, each with its in-band RPC ``Code`` and HTTP status.

    ChatError                     Code 500, HTTP 500   (base: internal error)
    ├── InvalidArgument           Code 400, HTTP 400   (a rule was broken; nothing was changed)
    └── StorageUnavailable        Code 503, HTTP 503   (Redis down, timed out or overloaded)

chatsvc returns these in-band (a normal reply with ``Code != 0`` and ``Msg``); the gateway maps a
reply's Code back to the same class with ``from_code`` and renders it as JSON.
"""

from __future__ import annotations

OK = 0


class ChatError(Exception):
    code = 500
    http_status = 500

    def __init__(self, message: str = "internal error") -> None:
        self.message = message
        super().__init__(message)


class InvalidArgument(ChatError):
    code = 400
    http_status = 400

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"invalid {field}: {detail}")


class StorageUnavailable(ChatError):
    code = 503
    http_status = 503

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"storage unavailable: {detail}" if detail else "storage unavailable")


def from_code(code: int, msg: str) -> ChatError:
    """The error for a non-zero in-band ``Code`` (unknown codes are internal errors)."""
    cls: type[ChatError] = {400: InvalidArgument, 503: StorageUnavailable}.get(code, ChatError)
    err = cls.__new__(cls)
    ChatError.__init__(err, msg or f"error code {code}")
    return err
