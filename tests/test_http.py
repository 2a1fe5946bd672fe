"""HTTP/1.1 as the gateway's server (gateway/http.py) speaks it, over raw sockets to a real gateway.

Keep-alive and HTTP/1.0, pipelining (answers in order), HEAD, Expect: 100-continue, bodies split
across packets or chunked, the body limit on both, malformed requests, and the Date header.
"""

from __future__ import annotations

import email.utils
import json
import random
import socket
import time

import pytest

from tests.procs import Proc, start_gateway
from tests.test_slow_clients import closed_within, connection, is_open
from tests.test_slow_clients import read_response as read_one

MAX_BODY = 2048


class Responses:
    """Reads pipelined responses off one socket, keeping the bytes past each one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        self.sock.settimeout(5)
        chunk = self.sock.recv(65536)
        assert chunk, f"connection closed; unread: {self.buf!r}"
        self.buf += chunk

    def next(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        size = int(headers["content-length"])
        while len(rest) < size:
            self._fill()
            rest = self.buf.partition(b"\r\n\r\n")[2]
        self.buf = rest[size:]
        return int(status_line.split()[1]), headers, rest[:size]


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    return read_one(sock)


@pytest.fixture(scope="module")
def port(logdir, chatsvc_proc: Proc):
    proc = start_gateway(logdir, chatsvc_proc.addr, None, "--max-body-bytes", str(MAX_BODY))
    yield proc.port
    proc.kill()


def chat() -> str:
    return f"h{random.getrandbits(32)}:zed"


def send_request(c: str, text: str, *, version: str = "1.1", extra: str = "") -> bytes:
    body = json.dumps({"Chat": c, "Text": text, "Sender": "zed"}).encode()
    return (f"POST /api/send HTTP/{version}\r\nHost: gw\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def pull_texts(port: int, c: str) -> list[str]:
    with connection(port) as sock:
        sock.sendall(f"GET /api/pull?chat={c}&limit=100 HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        status, _, body = read_response(sock)
    assert status == 200, body
    return [m["text"] for m in json.loads(body)["messages"]]


def test_keep_alive_serves_many_requests_on_one_connection(port):
    with connection(port) as sock:
        for _ in range(5):
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: gw\r\n\r\n")
            status, headers, body = read_response(sock)
            assert (status, json.loads(body)) == (200, {"message": "pong"})
            assert headers.get("connection", "") != "close"
        assert is_open(sock)


def test_pipelined_requests_are_answered_in_order(port):
    c = chat()
    with connection(port) as sock:
        sock.sendall(b"".join(send_request(c, f"p{i}") for i in range(10)) + b"GET /ping HTTP/1.1\r\nHost: gw\r\n\r\n")
        responses = Responses(sock)
        statuses = [responses.next()[0] for _ in range(10)]
        status, _, body = responses.next()
    assert statuses == [200] * 10
    assert (status, json.loads(body)) == (200, {"message": "pong"})
    assert pull_texts(port, c) == [f"p{i}" for i in range(10)]  # handled one at a time, in order


def test_connection_close_and_http_1_0(port):
    with connection(port) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert (status, headers["connection"]) == (200, "close")
        assert closed_within(sock, 2)
    with connection(port) as sock:  # HTTP/1.0 closes by default
        sock.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
        assert read_response(sock)[0] == 200
        assert closed_within(sock, 2)
    with connection(port) as sock:  # unless it asks to keep the connection
        sock.sendall(b"GET /ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert (status, headers["connection"].lower()) == (200, "keep-alive")
        assert is_open(sock)


def test_head_gives_the_headers_of_get_without_a_body(port):
    with connection(port) as sock:
        sock.sendall(b"HEAD /ping HTTP/1.1\r\nHost: gw\r\n\r\n")
        sock.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 18" in head and rest == b""
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: gw\r\n\r\n")  # the connection is still in step
        assert read_response(sock)[0] == 200


def test_expect_100_continue_then_the_body(port):
    c = chat()
    body = json.dumps({"Chat": c, "Text": "after continue", "Sender": "zed"}).encode()
    with connection(port) as sock:
        sock.sendall(f"POST /api/send HTTP/1.1\r\nHost: gw\r\nContent-Length: {len(body)}\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        sock.settimeout(5)
        interim = sock.recv(4096)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert read_response(sock)[0] == 200
    assert pull_texts(port, c) == ["after continue"]


def test_body_split_across_packets(port):
    c = chat()
    raw = send_request(c, "in pieces")
    with connection(port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(raw), 7):
            sock.sendall(raw[i:i + 7])
            time.sleep(0.002)
        assert read_response(sock)[0] == 200
    assert pull_texts(port, c) == ["in pieces"]


def test_chunked_body(port):
    c = chat()
    body = json.dumps({"Chat": c, "Text": "chunked", "Sender": "zed"}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 10]), body[i:i + 10]) for i in range(0, len(body), 10))
    with connection(port) as sock:
        sock.sendall(b"POST /api/send HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
        assert read_response(sock)[0] == 200
        assert is_open(sock)
    assert pull_texts(port, c) == ["chunked"]


def test_body_over_the_limit_is_413_by_length_or_by_chunks(port):
    c = chat()
    big = "x" * MAX_BODY
    with connection(port) as sock:  # Content-Length over the limit: refused before the body is read
        sock.sendall(send_request(c, big))
        status, headers, body = read_response(sock)
        assert status == 413 and json.loads(body)["code"] == 413 and headers["connection"] == "close"
        assert closed_within(sock, 2)
    payload = json.dumps({"Chat": c, "Text": big, "Sender": "zed"}).encode()
    with connection(port) as sock:  # chunked: counted as it comes
        sock.sendall(b"POST /api/send HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(payload), 500):
            piece = payload[i:i + 500]
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.01)
        status, _, body = read_response(sock)
        assert status == 413 and json.loads(body)["message"] == f"request body too large (limit {MAX_BODY} bytes)"
    assert pull_texts(port, c) == []


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET /ping HTTP/1.1\r\nHost: gw\r\nContent-Length: nope\r\n\r\n",
    b"GET /ping HTTP/1.1\r\nBad Header Line\r\n\r\n",
    b"POST /api/send HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n",
])
def test_malformed_requests_get_a_json_400_and_the_connection_closes(port, raw):
    with connection(port) as sock:
        sock.sendall(raw)
        status, headers, body = read_response(sock)
        assert 400 <= status < 500 and headers["connection"] == "close"
        err = json.loads(body)
        assert err["status"] == "error" and err["code"] == status and err["message"]
        assert closed_within(sock, 2)


PING_HEAD = "GET /ping HTTP/1.1\r\nHost: gw\r\n"


@pytest.mark.parametrize("raw, status, message", [
    (b"GET /" + b"a" * 8191 + b" HTTP/1.1\r\nHost: gw\r\n\r\n", 414, "request target longer than 8190 bytes"),
    ((PING_HEAD + "X-Big: " + "b" * 8190 + "\r\n\r\n").encode(), 431, "header field longer than 8190 bytes"),
    ((PING_HEAD + "".join(f"X-{i}: v\r\n" for i in range(128)) + "\r\n").encode(), 431, "more than 128 header fields"),
    (b"POST /api/send HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", 400, ""),
    ((PING_HEAD + "Host: other\r\n\r\n").encode(), 400, "Duplicate 'Host' header found."),
    ((PING_HEAD + "User-Agent: a\r\nuser-agent: b\r\n\r\n").encode(), 400, "Duplicate 'user-agent' header found."),
    ((PING_HEAD + "X-Nul: a\x00b\r\n\r\n").encode(), 400, ""),
    (b"GET /ping HTTP/1.1\r\nUser-Agent: t\r\n\r\n", 400, "Missing 'Host' header in request."),
])
def test_the_limits_and_rules_of_a_request_head(port, raw, status, message):
    """The limits aiohttp's parser enforced, kept by the gateway's own server: the request line,
    header fields (size and number), singleton headers sent twice, NUL in a value, no Host."""
    with connection(port) as sock:
        sock.sendall(raw)
        got, headers, body = read_response(sock)
        err = json.loads(body)
        assert (got, err["code"], headers["connection"]) == (status, status, "close")
        assert err["message"].startswith("bad request: ") and message in err["message"]
        assert closed_within(sock, 2)


def test_heads_at_the_limits_are_served(port):
    with connection(port) as sock:
        sock.sendall(b"GET /ping?" + b"a" * (8190 - len("/ping?")) + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert read_response(sock)[0] == 200
        sock.sendall((PING_HEAD + "X-Big: " + "b" * (8190 - len("X-Big")) + "\r\n\r\n").encode())
        assert read_response(sock)[0] == 200
        sock.sendall((PING_HEAD + "".join(f"X-{i}: v\r\n" for i in range(127)) + "\r\n").encode())
        assert read_response(sock)[0] == 200
        assert is_open(sock)


def test_an_upgrade_is_ignored_and_the_connection_stays_http(port):
    """RFC 9110 7.8: a server may ignore Upgrade. The request is answered as any other, and the
    requests after it on the connection (here in the same packet) too."""
    with connection(port) as sock:
        sock.sendall((PING_HEAD + "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                      "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n" + PING_HEAD + "\r\n").encode())
        responses = Responses(sock)
        first, second = responses.next(), responses.next()
        assert (first[0], json.loads(first[2]), second[0]) == (200, {"message": "pong"}, 200)
        assert "upgrade" not in first[1]
        sock.sendall((PING_HEAD + "\r\n").encode())
        assert responses.next()[0] == 200


def test_targets_are_decoded_and_split_as_aiohttp_did(port):
    """Percent-encoded paths are decoded before routing, the query is split off the path, an
    absolute-form target is routed by its path, and a target with a bad escape is still served."""
    c = chat()
    with connection(port) as sock:
        sock.sendall(send_request(c, "routed"))
        assert read_response(sock)[0] == 200
        for target in ("/p%69ng", "/ping?x=1&y=%20", "http://gw/ping", "/ping?a=%zz"):
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
            status, _, body = read_response(sock)
            assert (status, json.loads(body)) == (200, {"message": "pong"}), target
        sock.sendall(f"GET /api/p%75ll?chat={c}&limit=5 HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        status, _, body = read_response(sock)
        assert status == 200 and [m["text"] for m in json.loads(body)["messages"]] == ["routed"]


def test_a_body_finished_in_the_packet_of_the_next_requests(port):
    """A request whose body starts in one packet and ends in the next, with two more requests
    after it in that packet: each body goes to its own request, and all three in order."""
    c = chat()
    first, second = send_request(c, "split " * 20), send_request(c, "whole")
    cut = len(first) - 40
    with connection(port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(first[:cut])
        time.sleep(0.05)
        sock.sendall(first[cut:] + second + b"GET /ping HTTP/1.1\r\nHost: gw\r\n\r\n")
        responses = Responses(sock)
        assert [responses.next()[0] for _ in range(3)] == [200, 200, 200]
    assert pull_texts(port, c) == ["split " * 20, "whole"]


def test_a_400_waits_for_the_answer_before_it(port):
    """A good request, then garbage before its answer: the good one is answered first, then the 400.

    (Both in one packet, the packet is refused whole, as aiohttp's own server does.)
    """
    c = chat()
    with connection(port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(send_request(c, "before garbage"))
        time.sleep(0.05)
        sock.sendall(b"GARBAGE\r\n\r\n")
        responses = Responses(sock)
        assert responses.next()[0] == 200
        assert responses.next()[0] == 400
    assert pull_texts(port, c) == ["before garbage"]


def test_responses_carry_a_current_date(port):
    with connection(port) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: gw\r\n\r\n")
        _, headers, _ = read_response(sock)
    sent = email.utils.parsedate_to_datetime(headers["date"]).timestamp()
    assert abs(sent - time.time()) < 5


def test_the_date_of_a_constant_response_moves_on(port):
    """The gateway keeps the bytes of its last usual response (the same /ping answer within a
    second): a second later they carry the new Date."""
    with connection(port) as sock:
        dates = []
        for _ in range(2):
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: gw\r\n\r\n")
            status, headers, body = read_response(sock)
            assert (status, json.loads(body)) == (200, {"message": "pong"})
            dates.append(email.utils.parsedate_to_datetime(headers["date"]).timestamp())
            time.sleep(1.1)
    assert dates[1] - dates[0] >= 1


def test_a_client_that_does_not_read_its_answers_is_not_read_either(port):
    """Pipelined requests from a client that reads no answers: once the answers waiting for it
    fill the gateway's buffers, the gateway stops answering and reading, so the client's own sends
    stall (without flow control the gateway would read on and buffer every answer). Every request
    sent is still answered once the client reads."""
    request = (b"GET /openapi.json HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"p" * 7000 + b"\r\n\r\n")  # ~9 KB answer
    limit = 40 * 1024 * 1024  # bytes of requests a gateway without flow control would take in
    sent = 0
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.connect(("127.0.0.1", port))
        sock.settimeout(2)
        try:
            while sent < limit:
                sent += sock.send(request * 16)
        except TimeoutError:
            pass
        assert sent < limit, "the gateway kept reading a client that reads none of its answers"
        sock.shutdown(socket.SHUT_WR)  # the gateway answers every whole request, then closes
        responses = Responses(sock)
        answered = 0
        while True:
            try:
                status, _, body = responses.next()
            except AssertionError:  # closed: every answer is in
                break
            assert status == 200 and body.startswith(b'{"openapi"')
            answered += 1
    assert answered == sent // len(request)
