"""Just enough HTTP/1.1 for a load generator: pre-encoded requests, and the framing of responses.

``ResponseParser`` splits the bytes a server sends into responses and reports each one's status.
It reads the status line and the three headers that frame a response (``Content-Length``,
``Transfer-Encoding: chunked``, ``Connection``), skips the body without keeping it, and handles a
response split over many reads as well as several responses in one read (interim ``1xx``
responses are skipped). A response with neither length nor chunking ends with the connection
(``eof``). Anything else is a ``ProtocolError``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024  # a longer status line + headers is refused, as a broken server

# parser states
_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE = range(7)


class ProtocolError(Exception):
    """The bytes received are not a well-framed HTTP/1.x response."""


def split_base(base: str) -> tuple[str, int, str]:
    """``http://host:port`` -> (host, port, the Host header). Only plain http is supported."""
    parts = urlsplit(base)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"the load generator speaks plain http only: {base!r}")
    return parts.hostname, parts.port or 80, parts.netloc


class RequestEncoder:
    """The bytes of one request (``Content-Type: application/json``, explicit ``Content-Length``)."""

    __slots__ = ("_prefix",)

    def __init__(self, method: str, path: str, host: str) -> None:
        self._prefix = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
                        "Content-Type: application/json\r\nContent-Length: ").encode("latin-1")

    def __call__(self, body: bytes) -> bytes:
        return b"%s%d\r\n\r\n%s" % (self._prefix, len(body), body)


def _header(head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (lower case, with its colon) in a lower-cased response head."""
    i = head.find(name)
    if i < 0:
        return None
    start = i + len(name)
    end = head.find(b"\r\n", start)
    return head[start:end if end >= 0 else len(head)].strip(b" \t")


class ResponseParser:
    """Incremental framing of HTTP/1.x responses: ``feed`` bytes, then call ``next`` until None."""

    __slots__ = ("_buf", "_state", "_status", "_need", "close", "bodiless")

    def __init__(self, bodiless: bool = False) -> None:
        self._buf = b""
        self._state = _HEAD
        self._status = 0
        self._need = 0
        self.close = False  # the last complete response ends its connection (Connection: close, HTTP/1.0)
        self.bodiless = bodiless  # answers to HEAD requests have no body whatever their headers say

    @property
    def pending(self) -> bool:
        """Bytes of a response not complete yet (or of one not asked for) are buffered."""
        return bool(self._buf) or self._state != _HEAD

    def feed(self, data: bytes) -> None:
        self._buf = self._buf + data if self._buf else data

    def next(self) -> int | None:
        """The status of the next complete response, or None until more bytes arrive."""
        while True:
            state, buf = self._state, self._buf
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise ProtocolError(f"no end of the response head in {len(buf)} bytes")
                    return None
                self._buf = buf[end + 4:]
                if self._head(buf[:end + 2]):
                    return self._status
            elif state == _BODY:
                need, have = self._need, len(buf)
                if have < need:
                    self._need, self._buf = need - have, b""
                    return None
                self._buf, self._state = buf[need:], _HEAD
                return self._status
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise ProtocolError("chunk size line too long")
                    return None
                size_text = buf[:end].split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {size_text[:40]!r}") from None
                self._buf = buf[end + 2:]
                self._state, self._need = (_CHUNK_DATA, size) if size else (_TRAILER, 0)
            elif state == _CHUNK_DATA:
                need, have = self._need, len(buf)
                if have < need:
                    self._need, self._buf = need - have, b""
                    return None
                self._buf, self._state = buf[need:], _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return None
                if buf[:2] != b"\r\n":
                    raise ProtocolError("chunk data longer than its size")
                self._buf, self._state = buf[2:], _CHUNK_SIZE
            elif state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    return None
                self._buf = buf[end + 2:]
                if end == 0:
                    self._state = _HEAD
                    return self._status
            else:  # _UNTIL_CLOSE: the body runs to the end of the connection
                self._buf = b""
                return None

    def eof(self) -> int | None:
        """The connection ended: the status of the response it completed (a body delimited by the
        close), else None. Call ``pending`` first to know whether anything was cut short."""
        if self._state == _UNTIL_CLOSE:
            self._state, self._buf = _HEAD, b""
            return self._status
        return None

    def _head(self, head: bytes) -> bool:
        """Read a status line and headers (ending with CRLF); True for a final response."""
        if not head.startswith(b"HTTP/1.") or head[8:9] != b" " or head[12:13] not in (b" ", b"\r"):
            raise ProtocolError(f"not an HTTP/1.x status line: {head[:40]!r}")
        try:
            status = int(head[9:12])
        except ValueError:
            raise ProtocolError(f"bad status in {head[:40]!r}") from None
        if status < 200:  # 100 Continue, 103 Early Hints...: interim, no body, the answer follows
            if status < 100:
                raise ProtocolError(f"bad status {status}")
            return False
        lower = head.lower()
        self._status = status
        connection = _header(lower, b"\r\nconnection:")
        self.close = (b"close" in connection if connection is not None
                      else head[7:8] == b"0")  # HTTP/1.0 closes unless it says keep-alive
        if self.bodiless or status in (204, 304):
            self._state = _HEAD
            return True
        encoding = _header(lower, b"\r\ntransfer-encoding:")
        if encoding is not None and encoding.endswith(b"chunked"):
            self._state = _CHUNK_SIZE
            return False
        length = _header(lower, b"\r\ncontent-length:")
        if length is not None:
            try:
                self._need = int(length)
            except ValueError:
                raise ProtocolError(f"bad Content-Length {length[:40]!r}") from None
            if self._need < 0:
                raise ProtocolError(f"bad Content-Length {length[:40]!r}")
            self._state = _BODY
            return False
        self._state = _UNTIL_CLOSE
        self.close = True
        return False
