"""Unit tests of every business rule in ``chatsvc.service`` and of the RPC handler.

The service runs over ``MemoryStorage``, an honest in-memory implementation of the ``Storage``
protocol (a sorted list per chat, strictly increasing send_times), so the rules are tested fast and
without Redis. ``MemoryStorage`` also records every call, which is how "nothing is stored when a
rule fails" is checked.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable

import pytest

from chatsvc.errors import ChatError, InvalidArgument, StorageUnavailable
from chatsvc.handler import IMServiceHandler
from chatsvc.service import INT64_MAX, Chat, ChatService, Message, Page, PullQuery, parse_chat, parse_pull
from chatsvc.settings import Limits
from chatsvc.storage import StoredMessage
from chatsvc.wire import codec, idl

LIMITS = Limits()


class MemoryStorage:
    """The ``Storage`` protocol in memory: per-chat lists sorted by send_time.

    ``append`` assigns ``max(clock(), last + 1)`` like the Redis script, so send_times are unique
    and strictly increasing per chat. ``page`` follows the documented cursor semantics: forward
    ``send_time >= cursor`` ascending; reverse ``send_time <= cursor`` descending, cursor 0 meaning
    from the newest.
    """

    def __init__(self, clock: Callable[[], int] | None = None) -> None:
        self.chats: dict[str, list[StoredMessage]] = {}
        self.clock = clock or (lambda: time.time_ns() // 1000)
        self.appends: list[tuple[str, str, str]] = []
        self.pages: list[tuple[str, int, int, bool]] = []

    async def append(self, chat: str, sender: str, text: str) -> int:
        self.appends.append((chat, sender, text))
        rows = self.chats.setdefault(chat, [])
        now = self.clock()
        if rows and rows[-1].send_time >= now:
            now = rows[-1].send_time + 1
        rows.append(StoredMessage.of(sender, text, now))
        return now

    async def page(self, chat: str, cursor: int, count: int, reverse: bool) -> list[StoredMessage]:
        self.pages.append((chat, cursor, count, reverse))
        rows = self.chats.get(chat, [])
        times = [r.send_time for r in rows]
        if reverse:
            stop = len(rows) if cursor == 0 else bisect.bisect_right(times, cursor)
            return list(reversed(rows[:stop]))[:count]
        start = bisect.bisect_left(times, cursor)
        return rows[start : start + count]


class FailingStorage:
    """Storage whose every call raises ``exc``."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def append(self, chat: str, sender: str, text: str) -> int:
        raise self.exc

    async def page(self, chat: str, cursor: int, count: int, reverse: bool) -> list[StoredMessage]:
        raise self.exc


def ticking(times: list[int]) -> Callable[[], int]:
    it = iter(times)
    return lambda: next(it)


@pytest.fixture
def store() -> MemoryStorage:
    return MemoryStorage()


@pytest.fixture
def svc(store: MemoryStorage) -> ChatService:
    return ChatService(store, LIMITS)


async def rejected(svc: ChatService, store: MemoryStorage, chat: object, text: object, sender: object,
                   field: str) -> InvalidArgument:
    """Send must fail with InvalidArgument on ``field`` and store nothing."""
    with pytest.raises(InvalidArgument) as info:
        await svc.send(chat, text, sender)
    assert info.value.code == 400
    assert info.value.message.startswith(f"invalid {field}: "), info.value.message
    assert store.appends == []
    assert store.chats == {}
    return info.value


# --- the storage double itself (so the rule tests rest on an honest double) -----------------------


async def test_memory_storage_assigns_strictly_increasing_times_even_when_clock_stalls():
    store = MemoryStorage(clock=lambda: 1000)
    times = [await store.append("a:b", "a", str(i)) for i in range(5)]
    assert times == [1000, 1001, 1002, 1003, 1004]


# --- chat shape ----------------------------------------------------------------------------------


@pytest.mark.parametrize("chat", ["", "ab", "a:b:c", "a::b", "::", ":a:", "a:b:"])
async def test_chat_must_have_exactly_one_colon(svc, store, chat):
    await rejected(svc, store, chat, "hi", "a", "chat")
    with pytest.raises(InvalidArgument, match="^invalid chat: "):
        parse_chat(chat, LIMITS)


@pytest.mark.parametrize("chat", [":b", "a:", ":"])
async def test_chat_members_must_be_non_empty(svc, store, chat):
    err = await rejected(svc, store, chat, "hi", chat.strip(":") or "a", "chat")
    assert "empty" in err.message


async def test_chat_none_is_the_empty_string_and_rejected(svc, store):
    await rejected(svc, store, None, "hi", "a", "chat")


def test_member_at_most_64_utf8_bytes_counted_in_bytes_not_characters():
    assert parse_chat("a" * 64 + ":b", LIMITS) == Chat("a" * 64, "b")
    assert parse_chat("é" * 32 + ":b", LIMITS).id == "b:" + "é" * 32  # 64 bytes, 32 characters
    assert parse_chat("b:" + "\U0001F600" * 16, LIMITS).second == "\U0001F600" * 16  # 16 x 4 bytes
    for too_long in ("a" * 65 + ":b", "é" * 33 + ":b", "b:" + "é" * 32 + "a", "b:" + "\U0001F600" * 16 + "x"):
        with pytest.raises(InvalidArgument, match="at most 64 bytes"):
            parse_chat(too_long, LIMITS)


async def test_member_too_long_is_rejected_by_send(svc, store):
    await rejected(svc, store, "é" * 33 + ":b", "hi", "b", "chat")
    assert await svc.send("é" * 32 + ":b", "hi", "b") > 0


def test_member_limit_is_configurable():
    limits = Limits(max_member_bytes=3)
    assert parse_chat("abc:xyz", limits).id == "abc:xyz"
    with pytest.raises(InvalidArgument, match="at most 3 bytes"):
        parse_chat("abcd:xyz", limits)
    with pytest.raises(InvalidArgument):
        parse_chat("ab:éé", limits)  # 4 bytes


@pytest.mark.parametrize("ctrl", ["\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\x85", "\x9f"])
async def test_member_with_control_character_rejected(svc, store, ctrl):
    err = await rejected(svc, store, f"a{ctrl}:b", "hi", "b", "chat")
    assert "control" in err.message
    await rejected(svc, store, f"a:{ctrl}", "hi", "a", "chat")


def test_non_control_unicode_in_member_is_allowed():
    # Space, format characters and non-ASCII letters are not control characters.
    for name in (" a", "a b", "名字", "a\u200db", "\u00a0"):
        assert parse_chat(f"{name}:z", LIMITS).has_member(name)


def test_names_are_case_sensitive_and_never_trimmed():
    chat = parse_chat("Bob:bob", LIMITS)
    assert chat == Chat("Bob", "bob")  # two different members, 'B' < 'b'
    assert chat.id == "Bob:bob"
    assert parse_chat(" a:b", LIMITS) == Chat(" a", "b")
    assert parse_chat("a :b ", LIMITS) == Chat("a ", "b ")
    assert parse_chat("b: a", LIMITS).id == " a:b"  # ' ' sorts before 'b'


def test_chat_is_canonical_sorted_by_code_point():
    assert parse_chat("b:a", LIMITS) == parse_chat("a:b", LIMITS) == Chat("a", "b")
    assert parse_chat("bob:Alice", LIMITS).id == "Alice:bob"
    # Code point order, not locale or case-folded order: 'Z' (0x5a) < 'a' (0x61) < 'é' (0xe9).
    assert parse_chat("é:Z", LIMITS).id == "Z:é"
    assert parse_chat("a:Z", LIMITS).id == "Z:a"
    # Astral characters sort by code point too (UTF-16 order would differ from this).
    assert parse_chat("\U0001F600:\uffff", LIMITS).id == "\uffff:\U0001F600"


async def test_self_chat_allowed(svc, store):
    t = await svc.send("a:a", "note to self", "a")
    assert store.chats == {"a:a": [StoredMessage.of("a", "note to self", t)]}
    page = await svc.pull(parse_pull("a:a", 0, 10, False, LIMITS))
    assert [m.text for m in page.messages] == ["note to self"]


async def test_a_b_and_b_a_are_the_same_chat(svc, store):
    t1 = await svc.send("b:a", "one", "b")
    t2 = await svc.send("a:b", "two", "a")
    assert list(store.chats) == ["a:b"]
    for spelling in ("a:b", "b:a"):
        page = await svc.pull(parse_pull(spelling, 0, 10, False, LIMITS))
        assert page.messages == [Message("a:b", "one", "b", t1), Message("a:b", "two", "a", t2)]


async def test_case_variants_are_different_chats(svc, store):
    await svc.send("alice:bob", "x", "bob")
    await svc.send("Alice:bob", "y", "bob")
    assert sorted(store.chats) == ["Alice:bob", "alice:bob"]
    page = await svc.pull(parse_pull("bob:alice", 0, 10, False, LIMITS))
    assert [m.text for m in page.messages] == ["x"]


# --- sender --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["c", "", None, "A", "a ", " a", "a:b", "b:a"])
async def test_sender_must_be_a_member(svc, store, sender):
    await rejected(svc, store, "a:b", "hi", sender, "sender")


async def test_either_member_may_send(svc, store):
    await svc.send("a:b", "from a", "a")
    await svc.send("a:b", "from b", "b")
    assert [(m.sender, m.text) for m in store.chats["a:b"]] == [("a", "from a"), ("b", "from b")]


async def test_sender_is_not_trimmed(svc, store):
    await svc.send(" a:b", "hi", " a")
    assert store.appends == [(" a:b", " a", "hi")]
    store.appends.clear()
    store.chats.clear()
    await rejected(svc, store, " a:b", "hi", "a", "sender")


# --- text ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", None])
async def test_text_must_not_be_empty(svc, store, text):
    err = await rejected(svc, store, "a:b", text, "a", "text")
    assert "empty" in err.message


async def test_text_at_most_4096_utf8_bytes(svc, store):
    await rejected(svc, store, "a:b", "x" * 4097, "a", "text")
    await rejected(svc, store, "a:b", "é" * 2048 + "x", "a", "text")  # 4097 bytes, 2049 chars
    await rejected(svc, store, "a:b", "\U0001F600" * 1025, "a", "text")  # 4100 bytes, 1025 chars
    await svc.send("a:b", "x" * 4096, "a")
    await svc.send("a:b", "é" * 2048, "a")
    await svc.send("a:b", "\U0001F600" * 1024, "a")
    assert [len(m.text.encode()) for m in store.chats["a:b"]] == [4096, 4096, 4096]


async def test_text_limit_is_configurable(store):
    svc = ChatService(store, Limits(max_text_bytes=5))
    await svc.send("a:b", "12345", "a")
    with pytest.raises(InvalidArgument, match="at most 5 bytes"):
        await svc.send("a:b", "123456", "a")
    with pytest.raises(InvalidArgument):
        await svc.send("a:b", "éé" + "é", "a")  # 6 bytes, 3 chars
    assert [m.text for m in store.chats["a:b"]] == ["12345"]


async def test_text_may_contain_anything_else(svc, store):
    text = "line1\nline2\t\x00 {braces} * é 😀"
    t = await svc.send("a:b", text, "a")
    assert store.chats["a:b"] == [StoredMessage.of("a", text, t)]


async def test_text_is_not_trimmed(svc, store):
    await svc.send("a:b", "  spaced  ", "a")
    assert store.chats["a:b"][0].text == "  spaced  "
    await svc.send("a:b", " ", "a")  # whitespace only is non-empty
    assert store.chats["a:b"][1].text == " "


# --- invalid UTF-8 and non-strings ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("chat", "text", "sender", "field"),
    [
        (b"a:b", "hi", "a", "chat"),
        (b"\xff:b", "hi", "a", "chat"),
        ("a:b", b"hi", "a", "text"),
        ("a:b", b"\xc3(", "a", "text"),
        ("a:b", "hi", b"a", "sender"),
        ("a:b", "hi", b"\xff", "sender"),
    ],
)
async def test_bytes_fields_rejected(svc, store, chat, text, sender, field):
    err = await rejected(svc, store, chat, text, sender, field)
    assert "UTF-8" in err.message


@pytest.mark.parametrize(
    ("chat", "text", "sender", "field"),
    [
        ("\ud800:b", "hi", "b", "chat"),
        ("a:\udfff", "hi", "a", "chat"),
        ("a:b", "hi\ud800", "a", "text"),
        ("a:b", "\udc80", "a", "text"),
    ],
)
async def test_lone_surrogates_rejected(svc, store, chat, text, sender, field):
    err = await rejected(svc, store, chat, text, sender, field)
    assert "UTF-8" in err.message


async def test_lone_surrogate_sender_rejected(svc, store):
    await rejected(svc, store, "a:b", "hi", "\ud800", "sender")


@pytest.mark.parametrize(
    ("chat", "text", "sender", "field"),
    [(123, "hi", "a", "chat"), ("a:b", 5, "a", "text"), ("a:b", "hi", 1, "sender"), (["a:b"], "hi", "a", "chat")],
)
async def test_non_string_fields_rejected(svc, store, chat, text, sender, field):
    await rejected(svc, store, chat, text, sender, field)


async def test_send_returns_the_storage_time_and_stores_canonical_chat(store):
    svc = ChatService(MemoryStorage(clock=ticking([111, 222])), LIMITS)
    assert await svc.send("z:y", "a", "z") == 111
    assert await svc.send("y:z", "b", "y") == 222


async def test_send_passes_canonical_chat_sender_and_text_to_storage(svc, store):
    await svc.send("zed:amy", "hello", "zed")
    assert store.appends == [("amy:zed", "zed", "hello")]


# --- pull arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(("limit", "expected"), [(None, 10), (0, 10), (1, 1), (10, 10), (99, 99),
                                                 (100, 100), (101, 100), (2**31 - 1, 100)])
def test_limit_default_and_clamp(limit, expected):
    assert parse_pull("a:b", 0, limit, False, LIMITS).limit == expected


def test_limit_default_and_max_are_configurable():
    limits = Limits(default_limit=3, max_limit=7)
    assert parse_pull("a:b", 0, 0, False, limits).limit == 3
    assert parse_pull("a:b", 0, None, False, limits).limit == 3
    assert parse_pull("a:b", 0, 8, False, limits).limit == 7


@pytest.mark.parametrize("limit", [-1, -(2**31), True, 1.5, "10"])
def test_bad_limit_rejected(limit):
    with pytest.raises(InvalidArgument, match="^invalid limit: "):
        parse_pull("a:b", 0, limit, False, LIMITS)


@pytest.mark.parametrize("cursor", [-1, -(2**63), INT64_MAX + 1, True, 1.0, "0"])
def test_bad_cursor_rejected(cursor):
    with pytest.raises(InvalidArgument, match="^invalid cursor: "):
        parse_pull("a:b", cursor, 10, False, LIMITS)


@pytest.mark.parametrize(("cursor", "expected"), [(None, 0), (0, 0), (1, 1), (INT64_MAX, INT64_MAX)])
def test_cursor_values(cursor, expected):
    assert parse_pull("a:b", cursor, 10, False, LIMITS).cursor == expected


@pytest.mark.parametrize(("reverse", "expected"), [(None, False), (False, False), (True, True)])
def test_reverse_default(reverse, expected):
    q = parse_pull("a:b", 0, 10, reverse, LIMITS)
    assert q.reverse is expected


def test_pull_chat_is_validated_and_canonical():
    assert parse_pull("b:a", 0, 0, None, LIMITS) == PullQuery(Chat("a", "b"), 0, 10, False)
    for bad in ("ab", None, b"a:b", "a\n:b", "a:" + "x" * 65, "\ud800:b"):
        with pytest.raises(InvalidArgument, match="^invalid chat: "):
            parse_pull(bad, 0, 10, False, LIMITS)


async def test_pull_with_invalid_arguments_never_reaches_storage(store):
    handler = IMServiceHandler(ChatService(store, LIMITS))
    for req in (idl.PullRequest(Chat="ab", Cursor=0, Limit=1), idl.PullRequest(Chat="a:b", Cursor=-1, Limit=1),
                idl.PullRequest(Chat="a:b", Cursor=0, Limit=-1)):
        reply = await call_pull(handler, req)
        assert reply.Code == 400
    assert store.pages == []


# --- pull paging ---------------------------------------------------------------------------------


@pytest.fixture
async def b4() -> ChatService:
    """The worked example of kitex-wire.md B4: times [10, 20, 30, 40, 50] in chat a:b."""
    store = MemoryStorage(clock=ticking([10, 20, 30, 40, 50]))
    svc = ChatService(store, LIMITS)
    for i in range(5):
        await svc.send("a:b", f"m{i}", "a" if i % 2 else "b")
    assert [m.send_time for m in store.chats["a:b"]] == [10, 20, 30, 40, 50]
    return svc


async def pull(svc: ChatService, cursor: int, limit: int, reverse: bool, chat: str = "a:b") -> tuple[list[int], bool, int]:
    page = await svc.pull(parse_pull(chat, cursor, limit, reverse, svc.limits))
    return [m.send_time for m in page.messages], page.has_more, page.next_cursor


@pytest.mark.parametrize(
    ("cursor", "reverse", "times", "has_more", "next_cursor"),
    [
        (0, False, [10, 20], True, 30),
        (30, False, [30, 40], True, 50),
        (50, False, [50], False, 0),
        (0, True, [50, 40], True, 30),
        (30, True, [30, 20], True, 10),
        (10, True, [10], False, 0),
    ],
)
async def test_b4_worked_example(b4, cursor, reverse, times, has_more, next_cursor):
    assert await pull(b4, cursor, 2, reverse) == (times, has_more, next_cursor)


async def test_following_next_cursor_visits_every_message_once(b4):
    for reverse, expected in ((False, [10, 20, 30, 40, 50]), (True, [50, 40, 30, 20, 10])):
        for limit in (1, 2, 3, 4, 5, 6):
            seen, cursor, more = [], 0, True
            while more:
                times, more, cursor = await pull(b4, cursor, limit, reverse)
                seen += times
            assert seen == expected, (reverse, limit)


@pytest.mark.parametrize(
    ("cursor", "reverse", "limit", "expected"),
    [
        (25, False, 2, ([30, 40], True, 50)),  # cursor between two times
        (25, True, 2, ([20, 10], False, 0)),
        (51, False, 2, ([], False, 0)),  # past the newest
        (9, True, 2, ([], False, 0)),  # before the oldest
        (60, True, 2, ([50, 40], True, 30)),
        (0, False, 5, ([10, 20, 30, 40, 50], False, 0)),  # exactly all: no more
        (0, False, 4, ([10, 20, 30, 40], True, 50)),
        (0, True, 0, ([50, 40, 30, 20, 10], False, 0)),  # limit 0 = default 10
        (INT64_MAX, True, 1, ([50], True, 40)),
    ],
)
async def test_paging_edges(b4, cursor, reverse, limit, expected):
    assert await pull(b4, cursor, limit, reverse) == expected


async def test_unknown_chat_is_an_empty_page(svc):
    page = await svc.pull(parse_pull("no:body", 0, 10, False, LIMITS))
    assert page == Page("body:no", [], False, 0)


async def test_pull_asks_storage_for_limit_plus_one(store, svc):
    await svc.pull(parse_pull("b:a", 7, 0, True, LIMITS))
    await svc.pull(parse_pull("a:b", 0, 1000, False, LIMITS))
    assert store.pages == [("a:b", 7, 11, True), ("a:b", 0, 101, False)]


async def test_limit_above_max_is_clamped_and_has_more_set(store, svc):
    for i in range(150):
        await svc.send("a:b", str(i), "a")
    page = await svc.pull(parse_pull("a:b", 0, 1000, False, LIMITS))
    assert len(page.messages) == 100
    assert page.has_more is True
    assert page.next_cursor == store.chats["a:b"][100].send_time
    rest = await svc.pull(parse_pull("a:b", page.next_cursor, 1000, False, LIMITS))
    assert [m.text for m in page.messages + rest.messages] == [str(i) for i in range(150)]
    assert rest.has_more is False and rest.next_cursor == 0


async def test_default_limit_is_10(svc):
    for i in range(12):
        await svc.send("a:b", str(i), "b")
    page = await svc.pull(parse_pull("a:b", 0, None, None, LIMITS))
    assert [m.text for m in page.messages] == [str(i) for i in range(10)]
    assert page.has_more is True


async def test_messages_carry_canonical_chat_and_fields(svc, store):
    t = await svc.send("zoe:Adam", "hello", "zoe")
    page = await svc.pull(parse_pull("zoe:Adam", 0, 10, False, LIMITS))
    assert page.messages == [Message("Adam:zoe", "hello", "zoe", t)]


# --- errors from storage propagate ---------------------------------------------------------------


async def test_storage_errors_propagate_from_service():
    svc = ChatService(FailingStorage(StorageUnavailable("down")), LIMITS)
    with pytest.raises(StorageUnavailable):
        await svc.send("a:b", "hi", "a")
    with pytest.raises(StorageUnavailable):
        await svc.pull(parse_pull("a:b", 0, 10, False, LIMITS))


# --- handler -------------------------------------------------------------------------------------


def send_req(chat: object = "a:b", text: object = "hi", sender: object = "a", send_time: int | None = 0):
    return idl.SendRequest(message=idl.Message(Chat=chat, Text=text, Sender=sender, SendTime=send_time))


def check_send_reply(reply, code: int) -> None:
    assert isinstance(reply, idl.SendResponse)
    assert reply.Code == code
    assert isinstance(reply.Msg, str) and reply.Msg
    if code == 0:
        assert reply.Msg == "success"


def as_struct(method: str, reply):
    """A handler's reply as a client decodes it: an already encoded one goes through the wire."""
    if not isinstance(reply, codec.Encoded):
        return reply
    decoded = getattr(idl.IMService, method + "_result")()
    codec.decode_body(codec.encode_reply(method, 1, reply), decoded)
    return decoded.success


async def call_send(handler: IMServiceHandler, req):
    return as_struct("Send", await handler.Send(req))


async def call_pull(handler: IMServiceHandler, req):
    return as_struct("Pull", await handler.Pull(req))


def check_pull_reply(reply, code: int) -> None:
    assert isinstance(reply, idl.PullResponse)
    assert reply.Code == code
    assert isinstance(reply.Msg, str) and reply.Msg
    assert isinstance(reply.Messages, list)
    assert type(reply.HasMore) is bool
    assert type(reply.NextCursor) is int
    if code != 0:
        assert reply.Messages == [] and reply.HasMore is False and reply.NextCursor == 0
    else:
        assert reply.Msg == "success"
    # Every field survives the wire: thriftpy2 would silently drop a None.
    result = idl.IMService.Pull_result(success=reply)
    decoded = idl.IMService.Pull_result()
    codec.decode_body(codec.encode("Pull", codec.REPLY, 1, result), decoded)
    assert decoded.success == reply


@pytest.fixture
def handler(store) -> IMServiceHandler:
    return IMServiceHandler(ChatService(store, LIMITS))


async def test_handler_send_ok_ignores_client_send_time(handler, store):
    reply = await call_send(handler, send_req("b:a", "hello", "b", send_time=42))
    check_send_reply(reply, 0)
    [stored] = store.chats["a:b"]
    assert stored.sender == "b" and stored.text == "hello" and stored.send_time != 42


@pytest.mark.parametrize(
    ("req", "prefix"),
    [
        (send_req(chat="ab"), "invalid chat: "),
        (send_req(sender="c"), "invalid sender: "),
        (send_req(text=""), "invalid text: "),
        (send_req(text="x" * 4097), "invalid text: "),
        (send_req(text=b"\xff"), "invalid text: "),
        (send_req(chat=None, text=None, sender=None), "invalid chat: "),
        (idl.SendRequest(message=None), "invalid chat: "),
        (None, "invalid chat: "),
    ],
)
async def test_handler_send_invalid_is_in_band_400(handler, store, req, prefix):
    reply = await call_send(handler, req)
    check_send_reply(reply, 400)
    assert reply.Msg.startswith(prefix), reply.Msg
    assert store.appends == []


async def test_handler_pull_ok(handler, store):
    for chat, text, sender in (("b:a", "one", "a"), ("a:b", "two", "b"), ("a:b", "three", "a")):
        check_send_reply(await call_send(handler, send_req(chat, text, sender)), 0)
    t1, t2, t3 = (m.send_time for m in store.chats["a:b"])
    reply = await call_pull(handler, idl.PullRequest(Chat="b:a", Cursor=0, Limit=2, Reverse=None))
    check_pull_reply(reply, 0)
    assert reply.Messages == [idl.Message(Chat="a:b", Text="one", Sender="a", SendTime=t1),
                              idl.Message(Chat="a:b", Text="two", Sender="b", SendTime=t2)]
    assert reply.HasMore is True and reply.NextCursor == t3
    last = await call_pull(handler, idl.PullRequest(Chat="a:b", Cursor=t3, Limit=2, Reverse=False))
    check_pull_reply(last, 0)
    assert [m.Text for m in last.Messages] == ["three"]
    assert last.HasMore is False and last.NextCursor == 0


async def test_handler_pull_empty_chat_sets_every_field(handler):
    reply = await call_pull(handler, idl.PullRequest(Chat="a:b"))  # Cursor, Limit, Reverse absent
    check_pull_reply(reply, 0)
    assert reply.Messages == [] and reply.HasMore is False and reply.NextCursor == 0


@pytest.mark.parametrize(
    ("req", "prefix"),
    [
        (None, "invalid chat: "),
        (idl.PullRequest(), "invalid chat: "),
        (idl.PullRequest(Chat="a:b:c", Cursor=0, Limit=10), "invalid chat: "),
        (idl.PullRequest(Chat=b"a:\xff", Cursor=0, Limit=10), "invalid chat: "),
        (idl.PullRequest(Chat="a:b", Cursor=-1, Limit=10), "invalid cursor: "),
        (idl.PullRequest(Chat="a:b", Cursor=0, Limit=-5), "invalid limit: "),
    ],
)
async def test_handler_pull_invalid_is_in_band_400(handler, req, prefix):
    reply = await call_pull(handler, req)
    check_pull_reply(reply, 400)
    assert reply.Msg.startswith(prefix), reply.Msg


@pytest.mark.parametrize(
    ("exc", "code", "msg"),
    [
        (RuntimeError("boom"), 500, "internal error"),
        (KeyError("x"), 500, "internal error"),
        (ChatError(), 500, "internal error"),
        (StorageUnavailable("TimeoutError"), 503, "storage unavailable: TimeoutError"),
        (StorageUnavailable(), 503, "storage unavailable"),
    ],
)
async def test_handler_storage_failures(exc, code, msg, caplog):
    handler = IMServiceHandler(ChatService(FailingStorage(exc), LIMITS))
    send = await call_send(handler, send_req())
    check_send_reply(send, code)
    assert send.Msg == msg
    pulled = await call_pull(handler, idl.PullRequest(Chat="a:b", Cursor=0, Limit=10, Reverse=True))
    check_pull_reply(pulled, code)
    assert pulled.Msg == msg
    # An internal error must not leak its details to the client.
    assert "boom" not in send.Msg + pulled.Msg


async def test_handler_send_reply_encodes_every_required_field(handler):
    for reply in (await call_send(handler, send_req()), await call_send(handler, None)):
        decoded = idl.IMService.Send_result()
        codec.decode_body(codec.encode("Send", codec.REPLY, 1, idl.IMService.Send_result(success=reply)), decoded)
        assert decoded.success.Code is not None and decoded.success.Msg is not None
        assert decoded.success == reply
