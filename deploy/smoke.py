"""End-to-end smoke check of a running stack, through the gateway only: ping, send, pull.

Standard library only, so it runs in a stock ``python:3.11-slim`` container (the ``tests`` service
of deploy/docker-compose.test.yml) or from any shell::

    GATEWAY_URL=http://127.0.0.1:8080 python deploy/smoke.py

Environment: GATEWAY_URL (default http://127.0.0.1:8080), SMOKE_SEND_PATH (/api/send),
SMOKE_PULL_PATH (/api/pull), SMOKE_WAIT (seconds to wait for /ping, default 60), and
GATEWAY_JWT_SECRET when the gateway runs with GATEWAY_AUTH: the checks then send a bearer token
(HS256) for their sender, signed with it.
Exits 0 when every check passes, 1 with a message otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

BASE = os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080").rstrip("/")
SEND_PATH = os.environ.get("SMOKE_SEND_PATH", "/api/send")
PULL_PATH = os.environ.get("SMOKE_PULL_PATH", "/api/pull")
WAIT = float(os.environ.get("SMOKE_WAIT", "60"))
TIMEOUT = 5.0
SECRET = os.environ.get("GATEWAY_JWT_SECRET", "")
HEADERS: dict[str, str] = {}  # Authorization, when SECRET is set


class SmokeError(Exception):
    pass


def request(method: str, path: str, params: dict[str, str] | None = None,
            body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    url = BASE + path
    if params:
        url += "?" + urllib.parse.urlencode(params)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=HEADERS)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for_ping() -> None:
    deadline = time.monotonic() + WAIT
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, body = request("GET", "/ping")
        except OSError as exc:
            last = exc
        else:
            if status == 200 and json.loads(body) == {"message": "pong"}:
                return
            last = f"HTTP {status}: {body[:200]!r}"
        time.sleep(0.5)
    raise SmokeError(f"GET /ping did not answer 200 {{'message': 'pong'}} within {WAIT:g}s: {last}")


def send(chat: str, text: str, sender: str) -> None:
    fields = {"chat": chat, "text": text, "sender": sender}
    # The Go gateway bound the request from either the query string or a JSON body; send both so the
    # check does not depend on which one this gateway reads.
    status, body = request("POST", SEND_PATH, params=fields, body=fields)
    if not 200 <= status < 300:
        raise SmokeError(f"POST {SEND_PATH} answered HTTP {status}: {body[:300]!r}")


def texts_in(doc: Any) -> list[str]:
    """Every ``text`` value of a message object anywhere in the pull response, in order."""
    found: list[str] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key.lower() == "text" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(texts_in(value))
    elif isinstance(doc, list):
        for item in doc:
            found.extend(texts_in(item))
    return found


def pull(chat: str, limit: int = 10) -> list[str]:
    params = {"chat": chat, "cursor": "0", "limit": str(limit), "reverse": "false"}
    status, body = request("GET", PULL_PATH, params=params)
    if status != 200:
        raise SmokeError(f"GET {PULL_PATH} answered HTTP {status}: {body[:300]!r}")
    try:
        return texts_in(json.loads(body))
    except ValueError:
        raise SmokeError(f"GET {PULL_PATH} did not answer JSON: {body[:300]!r}") from None


def hs256_token(subject: str, ttl: int = 600) -> str:
    """A JWT for ``subject`` as the gateway checks it (HS256, ``sub`` and ``exp``), stdlib only."""
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    now = int(time.time())
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"sub": subject, "iat": now, "exp": now + ttl}).encode())
    signature = hmac.new(SECRET.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{b64(signature)}"


def main() -> int:
    run = uuid.uuid4().hex[:12]
    chat = f"smoke-{run}:bot-{run}"
    if SECRET:
        HEADERS["Authorization"] = f"Bearer {hs256_token(f'smoke-{run}')}"
    sent = [f"hello {run} #{i}" for i in range(3)]
    try:
        wait_for_ping()
        print(f"ok   GET /ping ({BASE})")
        for text in sent:
            send(chat, text, f"smoke-{run}")
        print(f"ok   POST {SEND_PATH} x{len(sent)} to {chat}")
        deadline = time.monotonic() + 10
        got: list[str] = []
        while time.monotonic() < deadline:
            got = pull(chat)
            if got == sent:
                break
            time.sleep(0.2)
        if got != sent:
            raise SmokeError(f"GET {PULL_PATH} returned {got!r}, expected {sent!r} in send order")
        print(f"ok   GET {PULL_PATH} returned the {len(sent)} messages in order")
    except (SmokeError, OSError) as exc:
        print(f"FAIL {exc}", file=sys.stderr)
        return 1
    print("smoke: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
