"""Bearer-token authentication: gateway/auth.py on its own, then a real gateway with GATEWAY_AUTH on.

The end-to-end tests run redis-server, chatsvc and a gateway as separate processes (tests.procs),
the gateway started with ``GATEWAY_AUTH=true`` and a secret in its environment.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import aiohttp
import jwt
import pytest

from chatsvc import config
from gateway import auth
from gateway.app import ROUTES
from gateway.errors import Forbidden, Unauthorized
from gateway.settings import GatewaySettings
from tests.procs import ROOT, Proc, start_gateway

SECRET = "unit-test-secret-0123456789abcdef"  # 33 bytes
OTHER_SECRET = "another-secret-0123456789abcdef-xyz"


def token(sub: object = "alice", *, secret: str = SECRET, ttl: int = 600, algorithm: str = "HS256",
          **claims: object) -> str:
    now = int(time.time())
    body = {"sub": sub, "iat": now, "exp": now + ttl, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret, algorithm=algorithm)


def unsigned_token(sub: str = "alice") -> str:
    """``alg: none``: no signature at all (the classic JWT forgery)."""
    def b64(doc: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'sub': sub, 'exp': int(time.time()) + 600})}."


def hs512_token(sub: str) -> str:
    """Signed with the right secret, by another algorithm than the one the gateway accepts."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)  # 33 bytes < 64 for HS512
        return token(sub, algorithm="HS512")


# --- unit: tokens -------------------------------------------------------------------------------


@pytest.fixture
def verifier() -> auth.TokenVerifier:
    return auth.TokenVerifier(SECRET, leeway=0)


def test_valid_token_names_its_user(verifier):
    assert verifier.verify(token("alice")) == auth.Identity("alice")
    assert verifier.authenticate(f"Bearer {token('bob')}") == auth.Identity("bob")
    assert verifier.authenticate(f"bearer   {token('bob')}  ") == auth.Identity("bob")  # scheme is case-insensitive


def test_issue_token_round_trips(verifier):
    assert verifier.verify(auth.issue_token(SECRET, "carol", ttl=60)) == auth.Identity("carol")


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_token_is_401_without_an_error_code(verifier, header):
    with pytest.raises(Unauthorized) as info:
        verifier.authenticate(header)
    assert info.value.http_status == 401
    assert info.value.challenge == 'Bearer realm="pychat"'


@pytest.mark.parametrize("header", ["Basic YWxpY2U6cHc=", "Bearer", "Bearer ", "Token abc", "Bearer a b"])
def test_malformed_header_is_401(verifier, header):
    with pytest.raises(Unauthorized) as info:
        verifier.authenticate(header)
    assert 'error="invalid_token"' in info.value.challenge


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (lambda: token(secret=OTHER_SECRET), "Signature verification failed"),
        (lambda: token(ttl=-3600), "expired"),
        (unsigned_token, "invalid token"),
        (lambda: hs512_token("alice"), "alg value is not allowed"),
        (lambda: token(exp=None), "exp"),
        (lambda: token(sub=None), "sub"),
        (lambda: token(sub=""), "sub"),
        (lambda: token(sub=42), "sub"),
        (lambda: token(nbf=int(time.time()) + 3600), "not yet valid"),
        (lambda: "not.a.jwt", "invalid token"),
        (lambda: "garbage", "invalid token"),
    ],
    ids=["bad-signature", "expired", "alg-none", "hs512", "no-exp", "no-sub", "empty-sub", "int-sub",
         "not-yet-valid", "not-base64", "not-a-jwt"],
)
def test_bad_tokens_are_401(verifier, bad, fragment):
    with pytest.raises(Unauthorized) as info:
        verifier.verify(bad())
    assert fragment.lower() in info.value.message.lower()
    assert info.value.code == 401


def test_leeway_forgives_clock_skew():
    expired_a_bit = token(ttl=-5)
    with pytest.raises(Unauthorized):
        auth.TokenVerifier(SECRET, leeway=0).verify(expired_a_bit)
    assert auth.TokenVerifier(SECRET, leeway=30).verify(expired_a_bit) == auth.Identity("alice")


@pytest.mark.parametrize("secret", ["", "short", "x" * 31])
def test_short_or_missing_secret_is_refused(secret):
    with pytest.raises(ValueError, match="GATEWAY_JWT_SECRET"):
        auth.TokenVerifier(secret)
    with pytest.raises(ValueError, match="GATEWAY_JWT_SECRET"):
        auth.issue_token(secret, "alice", 60)


def test_secret_length_counts_utf8_bytes():
    auth.TokenVerifier("é" * 16)  # 32 bytes in 16 characters


# --- unit: ownership --------------------------------------------------------------------------


ALICE = auth.Identity("alice")


def test_sender_must_be_the_tokens_user():
    auth.check_send(ALICE, "alice")
    with pytest.raises(Forbidden) as info:
        auth.check_send(ALICE, "bob")
    assert info.value.http_status == 403


@pytest.mark.parametrize("chat", ["alice:bob", "bob:alice", "alice:alice"])
def test_members_may_pull(chat):
    auth.check_pull(ALICE, chat)


@pytest.mark.parametrize("chat", ["bob:carol", "alice", "", "alice:bob:carol", "xalice:bob", "Alice:bob", ":alice"])
def test_others_may_not_pull(chat):
    with pytest.raises(Forbidden):
        auth.check_pull(ALICE, chat)


def test_auth_off_checks_nothing():
    """No identity: the dispatcher (gateway.app.Gateway) passes None only when auth is off."""
    auth.check_send(None, "anyone")
    auth.check_pull(None, "bob:carol")


# --- settings and startup -------------------------------------------------------------------------


def test_auth_is_off_by_default():
    assert config.load(GatewaySettings, [], environ={}).auth is False


@pytest.mark.parametrize(("environ", "fragment"), [
    ({"GATEWAY_AUTH": "true"}, "GATEWAY_JWT_SECRET is not set"),
    ({"GATEWAY_AUTH": "true", "GATEWAY_JWT_SECRET": "tooshort"}, "too short: 8 bytes"),
])
def test_settings_refuse_auth_without_a_good_secret(capsys, environ, fragment):
    with pytest.raises(SystemExit) as info:
        config.load(GatewaySettings, [], environ=environ)
    assert info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_secret_is_not_in_the_settings_repr():
    settings = config.load(GatewaySettings, [], environ={"GATEWAY_AUTH": "1", "GATEWAY_JWT_SECRET": SECRET})
    assert settings.jwt_secret == SECRET and SECRET not in repr(settings)


def test_gateway_process_exits_at_startup_without_a_secret():
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_JWT_SECRET"}
    result = subprocess.run([sys.executable, "-m", "gateway", "--port", "1"], capture_output=True, text=True,
                            timeout=30, cwd=ROOT, env={**env, "GATEWAY_AUTH": "true"})
    assert result.returncode == 2
    assert "GATEWAY_JWT_SECRET is not set" in result.stderr


# --- python -m gateway.token ---------------------------------------------------------------------


def run_token_cmd(*args: str, secret: str | None = SECRET) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_JWT_SECRET"}
    if secret is not None:
        env["GATEWAY_JWT_SECRET"] = secret
    return subprocess.run([sys.executable, "-m", "gateway.token", *args], capture_output=True, text=True,
                          timeout=30, cwd=ROOT, env=env)


def test_token_command_prints_a_token_the_gateway_accepts():
    result = run_token_cmd("alice", "--ttl", "120")
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    assert auth.TokenVerifier(SECRET).verify(printed) == auth.Identity("alice")
    claims = jwt.decode(printed, SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 120


@pytest.mark.parametrize(("args", "secret", "fragment"), [
    (("alice",), None, "GATEWAY_JWT_SECRET is not set"),
    (("alice",), "short", "too short"),
    (("a:b",), SECRET, "without ':'"),
    (("alice", "--ttl", "0"), SECRET, "--ttl must be positive"),
])
def test_token_command_refuses(args, secret, fragment):
    result = run_token_cmd(*args, secret=secret)
    assert result.returncode == 2 and fragment in result.stderr, result.stderr


# --- end to end: a real gateway with GATEWAY_AUTH on -------------------------------------------


@pytest.fixture(scope="module")
def auth_gateway(logdir, chatsvc_proc: Proc) -> Iterator[Proc]:
    proc = start_gateway(logdir, chatsvc_proc.addr, env={"GATEWAY_AUTH": "true", "GATEWAY_JWT_SECRET": SECRET})
    yield proc
    proc.kill()


@pytest.fixture
async def http(auth_gateway: Proc):
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{auth_gateway.port}") as session:
        yield session


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def new_chat() -> tuple[str, str, str]:
    a, b = f"amy{random.getrandbits(32)}", f"ben{random.getrandbits(32)}"
    return f"{a}:{b}", a, b


async def call(http, method: str, path: str, **kwargs) -> tuple[int, dict, Any]:
    async with http.request(method, path, **kwargs) as r:
        return r.status, await r.json(), r.headers


def assert_error(status: int, body: dict, expected: int) -> None:
    assert status == expected, body
    assert body["status"] == "error" and body["code"] == expected and body["message"]


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, 'Bearer realm="pychat"'),
        (bearer(token("amy", secret=OTHER_SECRET)), 'Bearer realm="pychat", error="invalid_token"'),
        (bearer(token("amy", ttl=-3600)), 'Bearer realm="pychat", error="invalid_token"'),
        (bearer(unsigned_token("amy")), 'Bearer realm="pychat", error="invalid_token"'),
        (bearer("not-a-token"), 'Bearer realm="pychat", error="invalid_token"'),
        ({"Authorization": "Basic YW15OnB3"}, 'Bearer realm="pychat", error="invalid_token"'),
    ],
    ids=["no-token", "bad-signature", "expired", "alg-none", "malformed", "basic-scheme"],
)
async def test_without_a_valid_token_send_and_pull_are_401(http, headers, challenge):
    chat, a, _ = new_chat()
    status, body, hdrs = await call(http, "POST", "/api/send", json={"Chat": chat, "Text": "hi", "Sender": a},
                                    headers=headers)
    assert_error(status, body, 401)
    assert hdrs["WWW-Authenticate"] == challenge
    status, body, hdrs = await call(http, "GET", "/api/pull", params={"chat": chat}, headers=headers)
    assert_error(status, body, 401)
    assert hdrs["WWW-Authenticate"] == challenge
    # Nothing was stored.
    status, body, _ = await call(http, "GET", "/api/pull", params={"chat": chat}, headers=bearer(token(a)))
    assert (status, body["messages"]) == (200, [])


async def test_own_send_and_pull_are_200(http):
    chat, a, b = new_chat()
    status, body, _ = await call(http, "POST", "/api/send", json={"Chat": chat, "Text": "hi ben", "Sender": a},
                                 headers=bearer(token(a)))
    assert (status, body) == (200, {"status": "success"})
    # The other member reads it, by query string and by JSON body.
    status, body, _ = await call(http, "GET", "/api/pull", params={"chat": f"{b}:{a}"}, headers=bearer(token(b)))
    assert status == 200 and [m["text"] for m in body["messages"]] == ["hi ben"]
    status, body, _ = await call(http, "GET", "/api/pull", json={"Chat": chat}, headers=bearer(token(a)))
    assert status == 200 and [m["sender"] for m in body["messages"]] == [a]


async def test_sending_as_someone_else_is_403(http):
    chat, a, b = new_chat()
    status, body, hdrs = await call(http, "POST", "/api/send", json={"Chat": chat, "Text": "forged", "Sender": b},
                                    headers=bearer(token(a)))
    assert_error(status, body, 403)
    assert "WWW-Authenticate" not in hdrs
    status, body, _ = await call(http, "GET", "/api/pull", params={"chat": chat}, headers=bearer(token(b)))
    assert body["messages"] == []


async def test_pulling_someone_elses_chat_is_403(http):
    chat, a, _ = new_chat()
    await call(http, "POST", "/api/send", json={"Chat": chat, "Text": "private", "Sender": a}, headers=bearer(token(a)))
    eve = bearer(token("eve"))
    status, body, _ = await call(http, "GET", "/api/pull", params={"chat": chat}, headers=eve)
    assert_error(status, body, 403)
    status, body, _ = await call(http, "GET", "/api/pull", json={"Chat": chat}, headers=eve)
    assert_error(status, body, 403)
    # The body wins over the query string: eve cannot smuggle her own chat into the query.
    status, body, _ = await call(http, "GET", "/api/pull", params={"chat": f"eve:{a}"}, json={"Chat": chat}, headers=eve)
    assert_error(status, body, 403)


async def test_ping_and_openapi_stay_open(http):
    status, body, _ = await call(http, "GET", "/ping")
    assert (status, body) == (200, {"message": "pong"})
    status, body, _ = await call(http, "GET", "/openapi.json")
    assert status == 200 and body["openapi"].startswith("3.")


async def test_every_other_route_needs_a_token(http):
    """The dispatcher authenticates every route but the public ones before routing: a new route is
    protected without anyone remembering to protect it."""
    protected = {(m, p) for p, methods in ROUTES.items() for m in methods if p not in auth.PUBLIC_PATHS}
    assert {("POST", "/api/send"), ("GET", "/api/pull")} <= protected
    for method, path in sorted(protected):
        status, body, _ = await call(http, method, path)
        assert_error(status, body, 401)
    status, body, _ = await call(http, "GET", "/no/such/path")
    assert_error(status, body, 401)


async def test_token_is_checked_before_the_body_is_read(http):
    """An unauthenticated client cannot make the gateway read (or wait for) a body: 401, not 413."""
    status, body, _ = await call(http, "POST", "/api/send", data=b"x" * 200_000,
                                 headers={"Content-Type": "application/json"})
    assert_error(status, body, 401)
