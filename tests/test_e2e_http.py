"""End to end over HTTP: a real gateway -> real chatsvc -> real Redis, all separate processes."""

from __future__ import annotations

import asyncio
import os
import random

import aiohttp
import pytest

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    # deploy/docker-compose.test.yml points the suite at a gateway it started.
    external = os.environ.get("GATEWAY_URL")
    return external.rstrip("/") if external else request.getfixturevalue("gateway_url")


@pytest.fixture
async def http(url: str):
    async with aiohttp.ClientSession(base_url=url) as session:
        yield session


def chat(prefix: str) -> str:
    return f"{prefix}{random.getrandbits(32)}:zed"


async def send(http: aiohttp.ClientSession, body: dict) -> tuple[int, dict]:
    async with http.post("/api/send", json=body) as r:
        return r.status, await r.json()


async def pull_body(http: aiohttp.ClientSession, body: dict) -> tuple[int, dict]:
    async with http.get("/api/pull", json=body) as r:
        return r.status, await r.json()


async def test_ping(http):
    async with http.get("/ping") as r:
        assert r.status == 200
        assert await r.json() == {"message": "pong"}


async def test_send_then_pull_returns_the_message(http):
    c = chat("amy")
    status, body = await send(http, {"Chat": c, "Text": "hello there", "Sender": "zed"})
    assert (status, body) == (200, {"status": "success"})
    status, body = await pull_body(http, {"Chat": c, "Cursor": 0, "Limit": 10, "Reverse": False})
    assert status == 200
    assert set(body) == {"messages", "has_more", "next_cursor"}
    [m] = body["messages"]
    assert m["chat"] == c and m["text"] == "hello there" and m["sender"] == "zed"
    assert isinstance(m["send_time"], int) and m["send_time"] > 1_600_000_000_000_000  # µs
    assert body["has_more"] is False and body["next_cursor"] == 0


async def test_reversed_chat_is_the_same_chat_and_keys_are_case_insensitive(http):
    assert (await send(http, {"chat": "zoe:adam", "TEXT": "one", "SENDER": "zoe"}))[0] == 200
    assert (await send(http, {"Chat": "adam:zoe", "text": "two", "Sender": "adam"}))[0] == 200
    status, body = await pull_body(http, {"CHAT": "zoe:adam"})
    assert status == 200
    assert [(m["chat"], m["text"]) for m in body["messages"]] == [("adam:zoe", "one"), ("adam:zoe", "two")]


async def test_pull_from_query_string(http):
    c = chat("q")
    for i in range(3):
        await send(http, {"Chat": c, "Text": f"t{i}", "Sender": "zed"})
    async with http.get("/api/pull", params={"chat": c, "cursor": "0", "limit": "2", "reverse": "true"}) as r:
        assert r.status == 200
        body = await r.json()
    assert [m["text"] for m in body["messages"]] == ["t2", "t1"]
    assert body["has_more"] is True
    async with http.get("/api/pull", params={"chat": c, "cursor": str(body["next_cursor"]), "reverse": "1"}) as r:
        assert [m["text"] for m in (await r.json())["messages"]] == ["t0"]


async def test_empty_chat_pull_has_all_keys(http):
    status, body = await pull_body(http, {"Chat": chat("nobody")})
    assert (status, body) == (200, {"messages": [], "has_more": False, "next_cursor": 0})


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"Chat": "a:b", "Text": "x", "Sender": "c"}, "invalid sender"),
        ({"Chat": "ab", "Text": "x", "Sender": "a"}, "invalid chat"),
        ({"Chat": "a:b:c", "Text": "x", "Sender": "a"}, "invalid chat"),
        ({"Chat": "a:b", "Text": "", "Sender": "a"}, "invalid text"),
        ({"Chat": "a:b", "Text": "x" * 4097, "Sender": "a"}, "invalid text"),
        ({"Chat": "a:b", "Text": 5, "Sender": "a"}, '"Text" must be a string'),
        ({}, "invalid chat"),
    ],
)
async def test_bad_sends_get_400_and_store_nothing(http, body, fragment):
    status, reply = await send(http, body)
    assert status == 400
    assert reply["status"] == "error" and reply["code"] == 400 and fragment in reply["message"]
    _, page = await pull_body(http, {"Chat": "a:b"})
    assert page["messages"] == []


@pytest.mark.parametrize(
    "raw",
    [
        b'{"Chat": "a:b", "Limit": "5"}',
        b'{"Chat": "a:b", "Limit": 5.5}',
        b'{"Chat": "a:b", "Limit": 2147483648}',
        b'{"Chat": "a:b", "Cursor": 9223372036854775808}',
        b'{"Chat": "a:b", "Reverse": "true"}',
        b'{"Chat": "a:b", "Reverse": 1}',
        b'{"Chat": "a:b",',
        b"[1, 2]",
        b'{"Chat": "a:b", "Limit": -1}',
        b'{"Chat": "a:b", "Cursor": -5}',
    ],
)
async def test_bad_pulls_get_400_json(http, raw):
    async with http.get("/api/pull", data=raw, headers=JSON) as r:
        assert r.status == 400
        body = await r.json()
    assert body["status"] == "error" and body["code"] == 400 and body["message"]


async def test_body_over_limit_is_413(http):
    async with http.post("/api/send", data=b'{"Text": "' + b"x" * 200_000 + b'"}', headers=JSON) as r:
        assert r.status == 413
        assert (await r.json())["code"] == 413


async def test_unknown_route_and_method_are_json(http):
    async with http.get("/nope") as r:
        assert r.status == 404 and (await r.json())["code"] == 404
    async with http.delete("/api/send") as r:
        assert r.status == 405 and (await r.json())["code"] == 405


async def test_limit_defaults_to_10_and_clamps_to_100(http):
    c = chat("many")
    await asyncio.gather(*[send(http, {"Chat": c, "Text": f"{i}", "Sender": "zed"}) for i in range(105)])
    _, body = await pull_body(http, {"Chat": c})
    assert len(body["messages"]) == 10 and body["has_more"] is True
    _, body = await pull_body(http, {"Chat": c, "Limit": 1000})
    assert len(body["messages"]) == 100 and body["has_more"] is True


async def test_300_concurrent_sends_page_exactly_once_in_order(http):
    """The headline consistency check: no message repeated or lost at any page boundary."""
    c = chat("load")
    texts = [f"msg-{i:03d}" for i in range(300)]
    results = await asyncio.gather(*[send(http, {"Chat": c, "Text": t, "Sender": "zed"}) for t in texts])
    assert all(status == 200 for status, _ in results)

    forward, cursor = [], 0
    while True:
        status, page = await pull_body(http, {"Chat": c, "Cursor": cursor, "Limit": 7})
        assert status == 200 and len(page["messages"]) <= 7
        forward += page["messages"]
        if not page["has_more"]:
            assert page["next_cursor"] == 0
            break
        assert page["next_cursor"] > page["messages"][-1]["send_time"]
        cursor = page["next_cursor"]

    backward, cursor = [], 0
    while True:
        status, page = await pull_body(http, {"Chat": c, "Cursor": cursor, "Limit": 11, "Reverse": True})
        assert status == 200 and len(page["messages"]) <= 11
        backward += page["messages"]
        if not page["has_more"]:
            break
        assert page["next_cursor"] < page["messages"][-1]["send_time"]
        cursor = page["next_cursor"]

    times = [m["send_time"] for m in forward]
    assert sorted(m["text"] for m in forward) == texts  # every message exactly once
    assert times == sorted(times) and len(set(times)) == 300  # strictly increasing
    assert backward == forward[::-1]


@pytest.mark.parametrize("name", ["{x", "x}", "{x}", "*", "a*b?[c]", "chat{a", "$(rm -rf)", "'; DROP", "ü{}"])
async def test_key_injection_shapes_are_stored_harmlessly(http, name):
    """Braces, globs and quotes in member names are data: each chat keeps its own messages."""
    c = f"{name}:zed"
    assert (await send(http, {"Chat": c, "Text": f"for {name}", "Sender": name}))[0] == 200
    status, page = await pull_body(http, {"Chat": c})
    assert status == 200 and [m["text"] for m in page["messages"]] == [f"for {name}"]
    _, other = await pull_body(http, {"Chat": "x:zed"})  # a neighbour the braces might alias
    assert other["messages"] == []


@pytest.mark.parametrize("name", ["a\nb", "a\rb", "a\x00b", "\x7f", "x" * 65, "é" * 33])
async def test_key_injection_shapes_are_rejected(http, name):
    status, reply = await send(http, {"Chat": f"{name}:zed", "Text": "x", "Sender": "zed"})
    assert status == 400 and "invalid chat" in reply["message"]
