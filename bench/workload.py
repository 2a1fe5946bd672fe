"""The two HTTP loads (as bench/send.lua and bench/pull.lua make them), the probe and the preload."""

from __future__ import annotations

import json
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

NCHATS = 1000
TEXT_BYTES = 100
PULL_CHAT = "pa:pb"
PULL_LIMIT = 20
PRELOAD = 60
JSON_HEADERS = {"Content-Type": "application/json"}
PULL_BODY = json.dumps({"Chat": PULL_CHAT, "Cursor": 0, "Limit": PULL_LIMIT, "Reverse": False},
                       separators=(",", ":")).encode()


class ProbeFailed(RuntimeError):
    """The target answered wrongly: benchmarking it would measure an error path."""


def message_text(tag: str, counter: int) -> str:
    """Exactly TEXT_BYTES bytes, unique per (tag, counter): ``m<tag>-<counter> xxxx...``."""
    head = f"m{tag}-{counter:010d} "
    return head + "x" * (TEXT_BYTES - len(head))


class SendBodies:
    """POST /api/send bodies: a random chat ``uN:vN`` of NCHATS, random member order, sender first."""

    def __init__(self, tag: str | None = None, seed: int | None = None) -> None:
        self.tag = tag or secrets.token_hex(2)
        self.counter = 0
        self._rng = random.Random(seed)

    def chat(self) -> tuple[str, str]:
        i = self._rng.randint(1, NCHATS)
        a, b = f"u{i}", f"v{i}"
        return (b, a) if self._rng.random() < 0.5 else (a, b)

    def message(self) -> tuple[str, str, str]:
        """(chat, text, sender) of the next message."""
        self.counter += 1
        a, b = self.chat()
        return f"{a}:{b}", message_text(self.tag, self.counter), a

    def next(self) -> bytes:
        chat, text, sender = self.message()
        return json.dumps({"Chat": chat, "Text": text, "Sender": sender}, separators=(",", ":")).encode()


Bodies = Callable[[], bytes]


def _send_bodies() -> Bodies:
    return SendBodies().next


def _pull_bodies() -> Bodies:
    return lambda: PULL_BODY


@dataclass(frozen=True)
class HttpLoad:
    """A load: its name, method, path, wrk script (in bench/) and a maker of body factories."""

    name: str
    method: str
    path: str
    script: str
    new_bodies: Callable[[], Bodies]


SEND = HttpLoad("send", "POST", "/api/send", "send.lua", _send_bodies)
PULL = HttpLoad("pull", "GET", "/api/pull", "pull.lua", _pull_bodies)
LOADS = {"send": SEND, "pull": PULL}


async def _get_json(session: aiohttp.ClientSession, method: str, url: str, body: bytes | None) -> tuple[int, str]:
    try:
        async with session.request(method, url, data=body, headers=JSON_HEADERS if body else None,
                                   timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return resp.status, await resp.text()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise ProbeFailed(f"{method} {url}: {exc.__class__.__name__}: {exc}") from None


async def probe(session: aiohttp.ClientSession, base: str, pull: bool = True) -> None:
    """/ping answers pong, a send answers 200 success, the pull answers 20 messages and has_more."""
    status, text = await _get_json(session, "GET", f"{base}/ping", None)
    if status != 200 or "pong" not in text:
        raise ProbeFailed(f"{base}/ping answered {status}: {text[:300]}")
    body = json.dumps({"Chat": "probe:x", "Text": "probe", "Sender": "probe"}).encode()
    status, text = await _get_json(session, "POST", f"{base}/api/send", body)
    if status != 200 or "success" not in text:
        raise ProbeFailed(f"{base}/api/send answered {status}: {text[:300]}")
    if pull:
        await probe_pull(session, base)


async def probe_pull(session: aiohttp.ClientSession, base: str) -> None:
    status, text = await _get_json(session, "GET", f"{base}/api/pull", PULL_BODY)
    try:
        page = json.loads(text)
        count, has_more = len(page["messages"]), page["has_more"]
    except (ValueError, KeyError, TypeError):
        raise ProbeFailed(f"{base}/api/pull answered {status}: {text[:300]}") from None
    if status != 200 or count != PULL_LIMIT or has_more is not True:
        raise ProbeFailed(f"{base}/api/pull answered {status} with {count} messages, has_more={has_more}: "
                          f"{text[:300]}")


async def preload(session: aiohttp.ClientSession, base: str, count: int = PRELOAD) -> None:
    """Send ``count`` 100-byte messages to PULL_CHAT through the gateway, in order."""
    sender = PULL_CHAT.split(":")[0]
    for i in range(1, count + 1):
        text = f"preload message {i:04d} ".ljust(TEXT_BYTES, "y")
        body = json.dumps({"Chat": PULL_CHAT, "Text": text, "Sender": sender}).encode()
        status, answer = await _get_json(session, "POST", f"{base}/api/send", body)
        if status != 200:
            raise ProbeFailed(f"preload: {base}/api/send answered {status}: {answer[:300]}")
