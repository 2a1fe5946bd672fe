"""The business rules of the chat service, all in one place.

Inputs arrive as decoded from the wire: a string may be ``None`` (a field the client left out,
which counts as its zero value) or ``bytes`` (thriftpy2's result for invalid UTF-8, rejected).
Every rule failure raises ``InvalidArgument`` before storage is touched.
"""

from __future__ import annotations

import unicodedata
from typing import NamedTuple, Protocol

from chatsvc.errors import InvalidArgument
from chatsvc.settings import Limits
from chatsvc.storage import StoredMessage

# send_time is in microseconds and Redis stream ids are unsigned 64-bit: any int64 cursor fits.
INT64_MAX = 2**63 - 1


class Storage(Protocol):
    async def append(self, chat: str, sender: str, text: str) -> int: ...

    async def page(self, chat: str, cursor: int, count: int, reverse: bool) -> list[StoredMessage]: ...


class Chat(NamedTuple):
    """A chat between two members, in canonical form (members sorted by code point)."""

    first: str
    second: str

    @property
    def id(self) -> str:
        return f"{self.first}:{self.second}"

    def has_member(self, name: str) -> bool:
        return name in (self.first, self.second)


class Message(NamedTuple):
    chat: str
    text: str
    sender: str
    send_time: int


class PullQuery(NamedTuple):
    """A validated page request: the limit defaulted and clamped, the direction explicit."""

    chat: Chat
    cursor: int
    limit: int
    reverse: bool


class Page(NamedTuple):
    """A page of ``chat``: its messages as stored (``rows``), which the handler sends on as they are."""

    chat: str
    rows: list[StoredMessage]
    has_more: bool
    next_cursor: int

    @property
    def messages(self) -> list[Message]:
        """The rows as Messages (sender and text decoded)."""
        return [Message(self.chat, row.text, row.sender, row.send_time) for row in self.rows]


def _text(value: object, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        raise InvalidArgument(field, "not valid UTF-8")
    if not isinstance(value, str):
        raise InvalidArgument(field, "must be a string")
    return value


def _utf8_len(value: str, field: str) -> int:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates
        raise InvalidArgument(field, "not valid UTF-8") from None


def parse_chat(raw: object, limits: Limits) -> Chat:
    """``a:b`` or ``b:a`` to the canonical ``Chat``; names are case-sensitive and never trimmed."""
    value = raw if type(raw) is str else _text(raw, "chat")
    # Fast path for the usual chat id: printable ASCII (so no control characters, one byte per
    # character) with two short, non-empty names. Anything else takes the checks below, which
    # also pick the error to report.
    if value.isascii() and value.isprintable():
        first, _, second = value.partition(":")
        size = limits.max_member_bytes
        if first and second and ":" not in second and len(first) <= size and len(second) <= size:
            return Chat(first, second) if first <= second else Chat(second, first)
    if value.count(":") != 1:
        raise InvalidArgument("chat", 'must be "<member1>:<member2>" with exactly one ":"')
    first, second = value.split(":")
    for name in (first, second):
        if not name:
            raise InvalidArgument("chat", "member names must not be empty")
        if _utf8_len(name, "chat") > limits.max_member_bytes:
            raise InvalidArgument("chat", f"member names must be at most {limits.max_member_bytes} bytes")
        if any(unicodedata.category(ch) == "Cc" for ch in name):
            raise InvalidArgument("chat", "member names must not contain control characters")
    return Chat(*sorted((first, second)))


def parse_pull(chat: object, cursor: object, limit: object, reverse: object, limits: Limits) -> PullQuery:
    """Validate a pull: Limit 0 or absent means the default, above the maximum is clamped."""
    parsed = parse_chat(chat, limits)
    cursor = 0 if cursor is None else cursor
    limit = 0 if limit is None else limit
    if not isinstance(cursor, int) or isinstance(cursor, bool) or not 0 <= cursor <= INT64_MAX:
        raise InvalidArgument("cursor", "must be a non-negative integer")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise InvalidArgument("limit", "must be a non-negative integer")
    limit = min(limit or limits.default_limit, limits.max_limit)
    return PullQuery(parsed, cursor, limit, bool(reverse))


class ChatService:
    """Send and pull messages, enforcing every rule before storage sees the request."""

    def __init__(self, storage: Storage, limits: Limits) -> None:
        self._storage = storage
        self.limits = limits

    async def send(self, chat: object, text: object, sender: object) -> int:
        """Store a message; returns its send_time in µs, assigned by storage.

        Args:
            chat: ``"a:b"``; stored under the canonical (sorted) form.
            text: 1 to ``max_text_bytes`` UTF-8 bytes.
            sender: exactly one of the chat's two members.
        """
        parsed = parse_chat(chat, self.limits)
        # A str (the usual case) needs none of _text's checks: skip the call.
        who = sender if type(sender) is str else _text(sender, "sender")
        if not parsed.has_member(who):
            raise InvalidArgument("sender", "must be one of the chat's two members")
        body = text if type(text) is str else _text(text, "text")
        size = len(body) if body.isascii() else _utf8_len(body, "text")
        if size == 0:
            raise InvalidArgument("text", "must not be empty")
        if size > self.limits.max_text_bytes:
            raise InvalidArgument("text", f"must be at most {self.limits.max_text_bytes} bytes")
        return await self._storage.append(parsed.id, who, body)

    async def pull(self, query: PullQuery) -> Page:
        """One page of ``query.chat`` from ``query.cursor`` (inclusive).

        Returns:
            Up to ``limit`` messages in the query's direction; ``has_more`` iff another message
            exists beyond them, and then ``next_cursor`` is its send_time (else 0).
        """
        chat_id = query.chat.id
        limit = query.limit
        rows = await self._storage.page(chat_id, query.cursor, limit + 1, query.reverse)
        if len(rows) > limit:
            return Page(chat_id, rows[:limit], True, rows[limit].send_time)
        return Page(chat_id, rows, False, 0)
