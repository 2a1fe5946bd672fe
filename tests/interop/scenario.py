"""The scenario every foreign client runs, and what the server must have answered.

Each client (Python/Node/Go Apache Thrift, or chatsvc's own client against the Go server) runs:

1. Send "m0".."m4" to CHAT, senders alternating between the two members (first member first);
2. Pull forward with Limit 2 from Cursor 0, following NextCursor until HasMore is false;
3. Pull Reverse=true, Cursor 0, Limit 3;
4. Send from "carol", who is not a member (must be an in-band Code 400, not an exception);
5. Pull forward, Cursor 0, Limit 10 on the same connection (it survived the error).

and reports a JSON-like dict::

    {"sends": [{"code", "msg"} x5],
     "forward": [page, ...], "reverse": page, "invalid": {"code", "msg"}, "after": page}
    page = {"code", "msg", "messages": [{"chat", "text", "sender", "send_time"}],
            "has_more": bool|None, "next_cursor": int|None}
"""

from __future__ import annotations

import itertools
import time
from typing import Any

TEXTS = [f"m{i}" for i in range(5)]


def page_of(resp: Any) -> dict[str, Any]:
    """A page dict from a PullResponse struct (Apache Thrift or thriftpy2 generated)."""
    return {
        "code": resp.Code,
        "msg": resp.Msg,
        "messages": [{"chat": m.Chat, "text": m.Text, "sender": m.Sender, "send_time": m.SendTime}
                     for m in (resp.Messages or [])],
        "has_more": resp.HasMore,
        "next_cursor": resp.NextCursor,
    }


def _ok(page: dict[str, Any], what: str) -> None:
    assert (page["code"], page["msg"]) == (0, "success"), f"{what}: {page}"


def check_scenario(result: dict[str, Any], chat: str) -> None:
    a, b = chat.split(":")
    canonical = ":".join(sorted((a, b)))

    assert result["sends"] == [{"code": 0, "msg": "success"}] * 5, result["sends"]

    # Forward paging, Limit 2: [m0 m1] [m2 m3] [m4], each message exactly once, oldest first.
    pages = result["forward"]
    for i, page in enumerate(pages):
        _ok(page, f"forward page {i}")
    assert [len(p["messages"]) for p in pages] == [2, 2, 1], pages
    assert [p["has_more"] for p in pages] == [True, True, False], pages
    messages = [m for p in pages for m in p["messages"]]
    assert [m["text"] for m in messages] == TEXTS
    assert [m["sender"] for m in messages] == [a, b, a, b, a]
    assert {m["chat"] for m in messages} == {canonical}
    times = [int(m["send_time"]) for m in messages]
    assert all(t2 > t1 for t1, t2 in itertools.pairwise(times)), f"send_time not strictly increasing: {times}"
    now_us = time.time() * 1e6
    assert all(abs(t - now_us) < 600e6 for t in times), f"send_time is not 'now' in microseconds: {times}"
    # NextCursor is the (inclusive) send_time of the first message not returned.
    for i in range(len(pages) - 1):
        assert pages[i]["next_cursor"] == pages[i + 1]["messages"][0]["send_time"], pages
    assert pages[-1]["next_cursor"] in (0, None), pages[-1]

    # Reverse from the newest, Limit 3: m4 m3 m2, more to come from m1.
    rev = result["reverse"]
    _ok(rev, "reverse page")
    assert rev["messages"] == messages[:1:-1], rev
    assert rev["has_more"] is True, rev
    assert rev["next_cursor"] == messages[1]["send_time"], rev

    invalid = result["invalid"]
    assert invalid["code"] == 400, invalid
    assert isinstance(invalid["msg"], str) and invalid["msg"], invalid

    after = result["after"]
    _ok(after, "pull after the invalid send")
    assert after["messages"] == messages, after
    assert after["has_more"] is False, after
