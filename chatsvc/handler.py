"""IMService's RPC handler: Thrift structs in, the service's rules, Thrift structs out.

Errors are in-band: every reply is a normal REPLY with ``Code`` and ``Msg`` set (0 and "success",
or the error's code and message). Every required field is always set, since thriftpy2 would
silently leave out a None and a Kitex client would then reject the reply. A page of messages is
returned already encoded (``wire.pages``), the stored messages spliced in as they are.
"""

from __future__ import annotations

import logging
from typing import Any

from chatsvc.errors import ChatError
from chatsvc.service import ChatService, Page, parse_pull
from chatsvc.wire import pages, pulls, sends
from chatsvc.wire.codec import Encoded
from chatsvc.wire.idl import PullResponse, SendResponse

log = logging.getLogger("chatsvc.handler")

# Calls the server reads in one pass (ThriftServer's readers); a Send's ``req`` is then a
# ``sends.SentRequest`` and a Pull's a ``pulls.PulledRequest``, with the attributes of the IDL's
# SendRequest and PullRequest.
ARGS_READERS = {"Send": sends.read_args, "Pull": pulls.read_args}


class IMServiceHandler:
    def __init__(self, service: ChatService) -> None:
        self._service = service

    async def Send(self, req: Any) -> Any:  # noqa: N802 - the IDL's method name
        message = getattr(req, "message", None)
        try:
            await self._service.send(
                getattr(message, "Chat", None), getattr(message, "Text", None), getattr(message, "Sender", None)
            )
        except Exception as exc:  # noqa: BLE001 - every failure becomes an in-band Code
            code, msg = _error(exc)
            return SendResponse(Code=code, Msg=msg)
        return sends.OK

    async def Pull(self, req: Any) -> Any:  # noqa: N802 - the IDL's method name
        try:
            query = parse_pull(
                getattr(req, "Chat", None), getattr(req, "Cursor", None), getattr(req, "Limit", None),
                getattr(req, "Reverse", None), self._service.limits,
            )
            page = await self._service.pull(query)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an in-band Code
            code, msg = _error(exc)
            return PullResponse(Code=code, Msg=msg, Messages=[], HasMore=False, NextCursor=0)
        return _pull_response(page)


def _pull_response(page: Page) -> Encoded:
    return Encoded(pages.write_response(page.chat, page.rows, page.has_more, page.next_cursor))


def _error(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, ChatError):
        if exc.code >= 500:
            log.warning("%s", exc.message)
        return exc.code, exc.message
    log.exception("unexpected error in handler")
    return 500, "internal error"
