"""Shared fixtures: a real redis-server, chatsvc and gateway, each a process on a free port.

Session-scoped processes are shared; each test gets a clean database (``flushdb``) through the
autouse-free ``redis_url`` fixture only when it asks for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import hypothesis  # noqa: F401 - see below
import pytest
import redis

from tests.procs import Proc, start_chatsvc, start_gateway, start_redis

# hypothesis is imported up front: its pytest plugin otherwise imports it at the end of the session,
# where CPython 3.11.7's parser can fail with "AST constructor recursion depth mismatch"
# (gh-106905, fixed in 3.11.8) after tests that ran deep asyncio call chains.


@pytest.fixture(scope="session")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("procs")


@pytest.fixture(scope="session")
def redis_proc(logdir: Path) -> Iterator[Proc]:
    proc = start_redis(logdir)
    yield proc
    proc.kill()


@pytest.fixture
def redis_url(redis_proc: Proc) -> str:
    """A real, empty Redis database."""
    url = f"redis://{redis_proc.addr}/0"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


@pytest.fixture(scope="session")
def chatsvc_proc(logdir: Path, redis_proc: Proc) -> Iterator[Proc]:
    proc = start_chatsvc(logdir, f"redis://{redis_proc.addr}/0")
    yield proc
    proc.kill()


@pytest.fixture(scope="session")
def gateway_proc(logdir: Path, chatsvc_proc: Proc) -> Iterator[Proc]:
    proc = start_gateway(logdir, chatsvc_proc.addr)
    yield proc
    proc.kill()


@pytest.fixture
def chatsvc_addr(chatsvc_proc: Proc, redis_url: str) -> tuple[str, int]:
    """(host, port) of a running chatsvc process over an empty Redis."""
    return ("127.0.0.1", chatsvc_proc.port)


@pytest.fixture
def gateway_url(gateway_proc: Proc, redis_url: str) -> str:
    """Base URL of a running gateway -> chatsvc -> empty Redis."""
    return f"http://127.0.0.1:{gateway_proc.port}"
