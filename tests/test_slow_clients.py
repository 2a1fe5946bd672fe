"""Slow and idle clients against a real gateway process, over raw sockets.

The gateway runs with short limits (flags): headers within 1.5 s, a body within 1.5 s, idle
keep-alive connections kept 4 s, and for the limit tests at most 3 open connections.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator

import pytest

from tests.procs import Proc, start_gateway

HEADER_TIMEOUT = 1.5
BODY_TIMEOUT = 1.5
KEEPALIVE_TIMEOUT = 4.0  # well above HEADER_TIMEOUT + SLACK: the tests tell them apart
MAX_CONNECTIONS = 3
SLACK = 1.5  # scheduling on a loaded 2-core machine

PING = b"GET /ping HTTP/1.1\r\nHost: gateway\r\n\r\n"


def _gateway(logdir, chatsvc_proc: Proc, *extra: str) -> Proc:
    return start_gateway(logdir, chatsvc_proc.addr, None, "--header-timeout", str(HEADER_TIMEOUT),
                         "--body-timeout", str(BODY_TIMEOUT), "--keepalive-timeout", str(KEEPALIVE_TIMEOUT),
                         "--access-log", "false", *extra)


@pytest.fixture(scope="module")
def gateway(logdir, chatsvc_proc: Proc) -> Iterator[Proc]:
    proc = _gateway(logdir, chatsvc_proc)
    yield proc
    proc.kill()


@pytest.fixture
def limited_gateway(logdir, chatsvc_proc: Proc) -> Iterator[Proc]:
    """A fresh gateway per test: the limit tests count every open connection."""
    proc = _gateway(logdir, chatsvc_proc, "--max-connections", str(MAX_CONNECTIONS))
    yield proc
    proc.kill()


@contextlib.contextmanager
def connection(port: int) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        yield sock
    finally:
        sock.close()


def read_response(sock: socket.socket, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer closes (EOF or reset) within ``timeout``; any bytes before that are ignored."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except ConnectionError:
            return True
    return False


def is_open(sock: socket.socket) -> bool:
    return not closed_within(sock, 0.05)


def ping(sock: socket.socket) -> int:
    sock.sendall(PING)
    return read_response(sock)[0]


def trickle(sock: socket.socket, data: bytes, interval: float) -> tuple[int, float]:
    """Send ``data`` one byte per ``interval`` until the server closes; (bytes sent, seconds)."""
    start = time.monotonic()
    for i, byte in enumerate(data):
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return i, time.monotonic() - start
        if closed_within(sock, interval):
            return i + 1, time.monotonic() - start
    return len(data), time.monotonic() - start


# --- timeouts ------------------------------------------------------------------------------------


def test_headers_at_one_byte_a_second_are_cut_off(gateway):
    request = b"GET /ping HTTP/1.1\r\nHost: gateway\r\nUser-Agent: slowloris\r\nAccept: */*\r\n\r\n"
    with connection(gateway.port) as sock:
        sent, took = trickle(sock, request, interval=1.0)
    assert sent < len(request), "the whole request got through"
    assert HEADER_TIMEOUT - 0.5 <= took <= HEADER_TIMEOUT + SLACK, took


def test_a_connection_that_sends_nothing_is_closed(gateway):
    with connection(gateway.port) as sock:
        start = time.monotonic()
        assert closed_within(sock, HEADER_TIMEOUT + SLACK)
        assert time.monotonic() - start >= HEADER_TIMEOUT - 0.5


def test_header_clock_restarts_for_each_request_on_a_keep_alive_connection(gateway):
    """Slow but steady clients are fine: each request gets its own header timeout."""
    with connection(gateway.port) as sock:
        for _ in range(3):
            time.sleep(HEADER_TIMEOUT * 0.6)  # idle between requests: the keep-alive timeout applies
            assert ping(sock) == 200


def test_trickled_body_gets_408_and_the_connection_closes(gateway):
    head = (b"POST /api/send HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            b"Content-Length: 60\r\n\r\n")
    with connection(gateway.port) as sock:
        sock.sendall(head + b'{"Chat": ')
        start = time.monotonic()
        while not select.select([sock], [], [], 0.5)[0]:  # until the server answers
            sock.sendall(b" ")  # two bytes a second: the body would take 25 s
            assert time.monotonic() - start < BODY_TIMEOUT + SLACK, "no answer to a trickled body"
        took = time.monotonic() - start
        status, headers, body = read_response(sock)
        assert (status, headers["connection"]) == (408, "close")
        assert json.loads(body)["code"] == 408
        assert BODY_TIMEOUT - 0.5 <= took <= BODY_TIMEOUT + SLACK, took
        # The server stops reading the rest: the connection is closed even if the client goes on.
        sent, closed_after = trickle(sock, b" " * 30, interval=0.25)
        assert sent < 30 and closed_after <= HEADER_TIMEOUT + SLACK


def test_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(gateway):
    with connection(gateway.port) as sock:
        assert ping(sock) == 200
        start = time.monotonic()
        assert closed_within(sock, KEEPALIVE_TIMEOUT + SLACK)
        assert time.monotonic() - start >= KEEPALIVE_TIMEOUT - 0.5


# --- connection limit ------------------------------------------------------------------------------


def test_connections_beyond_the_limit_get_503(limited_gateway):
    port = limited_gateway.port
    with contextlib.ExitStack() as stack:
        silent = [stack.enter_context(connection(port)) for _ in range(MAX_CONNECTIONS)]
        time.sleep(0.2)
        with connection(port) as extra:
            status, headers, body = read_response(extra)
            assert status == 503 and headers["connection"] == "close" and headers["retry-after"] == "1"
            assert json.loads(body) == {"status": "error", "code": 503,
                                        "message": f"too many connections (limit {MAX_CONNECTIONS}); retry later"}
            assert closed_within(extra, 2.0)
        # A slot frees when a connection closes.
        silent[0].close()
        time.sleep(0.2)
        with connection(port) as sock:
            assert ping(sock) == 200


def test_silent_connections_do_not_starve_active_ones(limited_gateway):
    """Connections that never send a request fill the limit: a connection in use is still served,
    and the header timeout closes the silent ones, which lets newcomers in again."""
    port = limited_gateway.port
    with connection(port) as active, contextlib.ExitStack() as stack:
        assert ping(active) == 200
        silent = [stack.enter_context(connection(port)) for _ in range(MAX_CONNECTIONS - 1)]
        deadline = time.monotonic() + HEADER_TIMEOUT + SLACK
        while not all(closed_within(s, 0.01) for s in silent):
            assert time.monotonic() < deadline, "silent connections outlived the header timeout"
            assert ping(active) == 200
            time.sleep(0.2)
        with connection(port) as newcomer:
            assert ping(newcomer) == 200
        assert ping(active) == 200


def test_idle_keep_alive_connections_make_room_for_new_ones(limited_gateway):
    """At the limit, a new connection closes the longest-idle keep-alive connection instead of
    being refused; connections in use are never closed for it."""
    port = limited_gateway.port
    with contextlib.ExitStack() as stack:
        idle = []
        for _ in range(MAX_CONNECTIONS):
            sock = stack.enter_context(connection(port))
            assert ping(sock) == 200
            idle.append(sock)
            time.sleep(0.05)  # a clear order of idleness
        for _ in range(2):
            newcomer = stack.enter_context(connection(port))
            assert ping(newcomer) == 200
        # The two longest idle were closed, the third is still open and served.
        assert closed_within(idle[0], 1.0) and closed_within(idle[1], 1.0)
        assert is_open(idle[2]) and ping(idle[2]) == 200
