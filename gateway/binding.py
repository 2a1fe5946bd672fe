"""Request binding with Go's ``encoding/json`` rules, as the Hertz gateway bound its structs.

Object keys match field names case-insensitively (an exact match wins; with duplicates the last
one wins), unknown keys are ignored, ``null`` leaves the zero value, and types are strict: a
string where a number belongs, a float, an out-of-range integer or a non-boolean ``reverse`` is a
400. The business rules (chat shape, limits) are chatsvc's; this module only checks types.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from gateway.errors import BadRequest

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
_INT_RE = re.compile(r"[+-]?[0-9]{1,20}")  # ASCII digits only, as Go's strconv (not \d: "٣", "１")
_BOOLS = {"true": True, "1": True, "false": False, "0": False}


@dataclass(frozen=True)
class Field:
    name: str
    kind: type
    bounds: tuple[int, int] | None = None


class Fields(tuple[Field, ...]):
    """A request's fields, with the spellings clients use (``Chat``, ``chat``, ``CHAT``) found by
    one dict lookup; any other case-insensitive match takes the slow path in ``_match``. Field
    names differ case-insensitively, so either path finds the same field."""

    spellings: dict[str, Field]

    def __new__(cls, *fields: Field) -> Fields:
        self = super().__new__(cls, fields)
        self.spellings = {s: f for f in fields for s in (f.name, f.name.capitalize(), f.name.upper())}
        return self


SEND_FIELDS = Fields(Field("chat", str), Field("text", str), Field("sender", str))
PULL_FIELDS = Fields(Field("chat", str), Field("cursor", int, INT64), Field("limit", int, INT32),
                     Field("reverse", bool))


class SendInput(NamedTuple):
    chat: str = ""
    text: str = ""
    sender: str = ""


class PullInput(NamedTuple):
    chat: str = ""
    cursor: int = 0
    limit: int = 0
    reverse: bool = False


# The spellings of a request's keys that clients send (idl_http.proto's and the Go structs'): a
# body with exactly these keys, of the right types, is bound without the general loop.
_SEND_KEYS = (("Chat", "Text", "Sender"), ("chat", "text", "sender"))
_PULL_KEYS = (("Chat", "Cursor", "Limit", "Reverse"), ("chat", "cursor", "limit", "reverse"))
_new_tuple = tuple.__new__  # a NamedTuple from a tuple of its fields, without its Python __new__


def parse_body(body: bytes) -> dict[str, Any]:
    """A JSON object, or {} for an empty body."""
    if not body.strip():
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    return value


def _match(key: str, fields: Fields) -> Field | None:
    if (f := fields.spellings.get(key)) is not None:
        return f
    for f in fields:
        if key == f.name:
            return f
    folded = key.casefold()
    for f in fields:
        if folded == f.name.casefold():
            return f
    return None


def _check(f: Field, key: str, value: Any) -> Any:
    if f.kind is bool:
        ok = isinstance(value, bool)
    elif f.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, f.kind)
    if not ok:
        raise BadRequest(f'field "{key}" must be {_kind_name(f)}')
    if f.bounds is not None and not f.bounds[0] <= value <= f.bounds[1]:
        raise BadRequest(f'field "{key}" is out of range for {_kind_name(f)}')
    return value


def _kind_name(f: Field) -> str:
    if f.kind is int:
        return "an int32" if f.bounds == INT32 else "an int64"
    return {str: "a string", bool: "a boolean"}[f.kind]


def bind(obj: Mapping[str, Any], fields: Fields) -> dict[str, Any]:
    """Field values from a decoded JSON object, keyed by the canonical field names."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        f = _match(key, fields)
        if f is None or value is None:
            continue
        out[f.name] = _check(f, key, value)
    return out


def query_values(query: Mapping[str, str], fields: Fields) -> dict[str, Any]:
    """The same fields from a query string (``?chat=a:b&cursor=0&limit=20&reverse=true``)."""
    out: dict[str, Any] = {}
    for key, raw in query.items():
        f = _match(key, fields)
        if f is None:
            continue
        if f.kind is str:
            out[f.name] = raw
        elif f.kind is bool:
            if raw.lower() not in _BOOLS:
                raise BadRequest(f'query parameter "{key}" must be true, false, 1 or 0')
            out[f.name] = _BOOLS[raw.lower()]
        else:
            if not _INT_RE.fullmatch(raw):
                raise BadRequest(f'query parameter "{key}" must be an integer')
            out[f.name] = _check(f, key, int(raw))
    return out


def bind_send(body: bytes) -> SendInput:
    obj = parse_body(body)
    if len(obj) == 3:  # the usual body: what bind gives for it, without its loop
        for chat_key, text_key, sender_key in _SEND_KEYS:
            chat, text, sender = obj.get(chat_key), obj.get(text_key), obj.get(sender_key)
            if type(chat) is str and type(text) is str and type(sender) is str:
                return _new_tuple(SendInput, (chat, text, sender))
    return SendInput(**bind(obj, SEND_FIELDS))


def bind_pull(body: bytes, query: Mapping[str, str]) -> PullInput:
    """Query parameters, overridden by the JSON body where both give a field."""
    obj = parse_body(body)
    if len(obj) == 4:  # the usual body, every field in it (so the query cannot matter)
        for keys in _PULL_KEYS:
            chat, cursor, limit, reverse = map(obj.get, keys)
            if (type(chat) is str and type(cursor) is int and INT64[0] <= cursor <= INT64[1]
                    and type(limit) is int and INT32[0] <= limit <= INT32[1] and type(reverse) is bool):
                return _new_tuple(PullInput, (chat, cursor, limit, reverse))
    values = query_values(query, PULL_FIELDS)
    values.update(bind(obj, PULL_FIELDS))
    return PullInput(**values)
