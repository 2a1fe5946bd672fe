"""The Python client of IMService: a bounded pool of persistent, pipelined Thrift connections.

Any IMService server will do (chatsvc, a Kitex server, an Apache Thrift server): every server
answers a connection's calls in order, so several calls can be in flight on one connection and
replies are matched to calls by seqid. A connection that breaks the protocol is discarded and a
fresh one is dialled for the next call.

Errors::

    RPCError                    base; the call's outcome is unknown unless said otherwise
    ├── RPCConnectError         could not connect, or the connection dropped mid-call
    │   └── RPCUnreachable      could not connect: the call was not sent
    ├── RPCTimeout              no reply within the call timeout
    ├── RPCProtocolError        the reply was malformed (the connection is discarded)
    └── RPCApplicationError     the server answered with a TApplicationException (``.type``)
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from struct import error as StructError
from typing import Any, NamedTuple, Self

from thriftpy2.thrift import TApplicationException

from chatsvc.settings import WireLimits
from chatsvc.wire import codec, framing, pages, pulls, sends
from chatsvc.wire.framing import Transport
from chatsvc.wire.idl import IMService, Message, PullRequest, SendRequest, SendResponse
from chatsvc.wire.scan import ProtocolError
from chatsvc.wire.writer import CoalescingWriter

log = logging.getLogger("chatsvc.client")

DEFAULT_CONNECT_TIMEOUT = 1.0
DEFAULT_CALL_TIMEOUT = 5.0
DEFAULT_POOL_SIZE = 4
DEFAULT_PIPELINE = 32


class RPCError(Exception):
    pass


class RPCConnectError(RPCError):
    pass


class RPCUnreachable(RPCConnectError):
    """Could not connect: the call was never sent, so it is safe to send it elsewhere."""


class RPCTimeout(RPCError):
    pass


class RPCProtocolError(RPCError):
    pass


class RPCApplicationError(RPCError):
    def __init__(self, message: str, type: int) -> None:  # noqa: A002 - Thrift's field name
        super().__init__(message)
        self.type = type


@dataclass(frozen=True)
class ClientSettings:
    """Timeouts and bounds of a client. ``pool_size * pipeline`` calls may be in flight at once."""

    transport: Transport = Transport.FRAMED
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    call_timeout: float = DEFAULT_CALL_TIMEOUT
    pool_size: int = DEFAULT_POOL_SIZE
    pipeline: int = DEFAULT_PIPELINE
    wire: WireLimits = WireLimits()


class ReplyReader(NamedTuple):
    """A way to read a method's reply without thriftpy2 structs.

    ``read(payload, limits)`` returns the reply's success value, or None for a reply it does not
    take (it must then have trusted nothing in it); that reply is checked and decoded the general
    way, and its success value passed through ``convert``.
    """

    read: Callable[[bytes, WireLimits], Any]
    convert: Callable[[Any], Any]


PULL_PAGE = ReplyReader(pages.read_reply, pages.from_struct)

# A successful Send's reply after its message header ("Send" and the seqid: 16 bytes), as chatsvc
# writes every one of them: recognised by comparison, with no decoding.
_SEND_OK_HEAD = 16
_SEND_OK_BODY = codec.RESULT_SUCCESS + sends.OK.data + b"\x00"


def _read_send_ok(payload: bytes, limits: WireLimits) -> Any:
    if payload[_SEND_OK_HEAD:] == _SEND_OK_BODY:
        return SendResponse(Code=0, Msg="success")
    return None


SEND_OK = ReplyReader(_read_send_ok, lambda response: response)

_seqids = itertools.count(1)


def _next_seqid() -> int:
    """Process-wide seqids, 1 to 2**31-1 and never 0, as Kitex numbers them."""
    seqid = next(_seqids) % 0x7FFFFFFF
    return seqid or _next_seqid()


class _Connection(CoalescingWriter, asyncio.Protocol):
    """One TCP connection; calls in flight are matched to replies by seqid."""

    def __init__(self, client: ChatClient) -> None:
        super().__init__()
        self._client = client
        # Framed replies are not walked as they arrive: _outcome checks each one (checked_payload),
        # or a ReplyReader reads it with every size checked, in one pass instead of two.
        self._reader = framing.FrameReader(client.settings.wire, walk=False)
        # seqid -> (method, result class, reader, future, deadline), in the order the calls were sent
        self._pending: dict[int, tuple[str, Any, ReplyReader | None, asyncio.Future[Any], float]] = {}
        self._abandoned: set[int] = set()  # seqids of calls that timed out; their replies are dropped
        self.broken = False

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RPCConnectError(f"connection lost: {exc or 'closed by server'}"))

    def send(self, method: str, args: Any, result_cls: Any, deadline: float,
             reader: ReplyReader | None = None) -> tuple[int, asyncio.Future[Any]]:
        """Send one call; its future gets the reply's success value (read by ``reader`` if given),
        and fails with TimeoutError once ``deadline`` (loop time) passes."""
        seqid = _next_seqid()
        if type(args) is codec.Encoded:  # args packed by the caller (wire.sends)
            payload = codec.encode_call(method, seqid, args)
        else:
            payload = self._client.codec.encode(method, codec.CALL, seqid, args)  # may raise: nothing is held yet
        info = self._client.header_info(method)
        self.write_soon(framing.wrap(self._client.settings.transport, payload, seqid, info))
        fut: asyncio.Future[Any] = self._client.loop.create_future()
        self._pending[seqid] = (method, result_cls, reader, fut, deadline)
        self._client.watch_deadlines()
        return seqid, fut

    def abandon(self, seqid: int) -> None:
        if self._pending.pop(seqid, None) is not None and len(self._abandoned) < 10_000:
            self._abandoned.add(seqid)

    def data_received(self, data: bytes) -> None:
        try:
            for frame in self._reader.feed(data):
                self._deliver(frame)
            if self._reader.error is not None:
                raise self._reader.error
        except (ProtocolError, RPCProtocolError) as exc:
            log.warning("discarding connection: %s", exc)
            self._fail(RPCProtocolError(str(exc)))

    def _deliver(self, frame: framing.Frame) -> None:
        if frame.transport is not self._client.settings.transport:
            raise RPCProtocolError(f"reply framed as {frame.transport.value}, expected "
                                   f"{self._client.settings.transport.value}")
        head = frame.head
        entry = self._pending.pop(head.seqid, None)
        if entry is None:
            if head.seqid in self._abandoned:
                self._abandoned.discard(head.seqid)
                return
            if head.mtype == codec.EXCEPTION:  # e.g. a PROTOCOL_ERROR with seqid 0
                exc = TApplicationException()
                codec.decode_body(framing.checked_payload(frame, self._client.settings.wire), exc)
                raise RPCProtocolError(f"server error: {exc.message}")
            raise RPCProtocolError(f"reply with unexpected seqid {head.seqid}")
        method, result_cls, reader, fut, _ = entry
        try:
            outcome = self._outcome(frame, method, result_cls, reader)
        except (ProtocolError, RPCProtocolError) as exc:
            if not fut.done():
                fut.set_exception(RPCProtocolError(str(exc)))
            raise
        if fut.done():
            return
        if isinstance(outcome, RPCError):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)

    def _outcome(self, frame: framing.Frame, method: str, result_cls: Any, reader: ReplyReader | None) -> Any:
        """The reply's success value, or the RPCError to fail the call with (the connection stays)."""
        head = frame.head
        if head.mtype == codec.REPLY and head.name == method and reader is not None:
            value = reader.read(frame.payload, self._client.settings.wire)
            if value is not None:
                return value
        payload = framing.checked_payload(frame, self._client.settings.wire)
        if head.mtype == codec.EXCEPTION:
            exc = TApplicationException()
            codec.decode_body(payload, exc)
            return RPCApplicationError(exc.message or "application error", exc.type or 0)
        if head.mtype != codec.REPLY or head.name != method:
            raise RPCProtocolError(f"expected a reply to {method}, got type {head.mtype} for {head.name!r}")
        result = result_cls()
        self._client.codec.decode_body(payload, result)
        if result.success is None:
            return RPCProtocolError(f"{method}: reply has no result")
        return result.success if reader is None else reader.convert(result.success)

    def _fail(self, exc: RPCError) -> None:
        self.broken = True
        pending, self._pending = self._pending, {}
        for _, _, _, fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def expire(self, now: float) -> bool:
        """Fail the calls whose deadline has passed; whether any call is still pending."""
        for _, _, _, fut, deadline in self._pending.values():
            if deadline <= now and not fut.done():
                fut.set_exception(TimeoutError())
        return bool(self._pending)

    def close(self) -> None:
        self._fail(RPCConnectError("client closed"))


class IMServiceClient:
    """IMService's two methods over ``call``, for every kind of client."""

    async def call(self, method: str, args: Any, *, idempotent: bool = False, retry: bool = True,
                   reader: ReplyReader | None = None) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, chat: str, text: str, sender: str) -> Any:
        """IMService.Send; returns the SendResponse (check ``Code``). Never retried once sent."""
        return await self.call("Send", _send_args(chat, text, sender), reader=SEND_OK)

    async def pull(self, chat: str, cursor: int = 0, limit: int = 10, reverse: bool = False) -> Any:
        """IMService.Pull; returns the PullResponse. Retried once on a fresh connection."""
        return await self.call("Pull", _pull_args(chat, cursor, limit, reverse), idempotent=True)

    async def pull_page(self, chat: str, cursor: int = 0, limit: int = 10, reverse: bool = False) -> pages.PullPage:
        """IMService.Pull, its reply as a ``PullPage`` (messages as dicts, read in one pass when the
        server lays the reply out as chatsvc does). Check ``code``. Retried as ``pull``."""
        return await self.call("Pull", _pull_args(chat, cursor, limit, reverse), idempotent=True,  # type: ignore[no-any-return]
                               reader=PULL_PAGE)


def _send_args(chat: str, text: str, sender: str) -> Any:
    """Send's args packed by hand (wire.sends) in the usual case; else (None, another type, a str
    with no UTF-8 form) a thriftpy2 struct, which thriftpy2 writes or refuses as it always has."""
    if type(chat) is str and type(text) is str and type(sender) is str:
        try:
            return sends.write_args(chat, text, sender)
        except UnicodeEncodeError:
            pass
    return IMService.Send_args(req=SendRequest(message=Message(Chat=chat, Text=text, Sender=sender, SendTime=0)))


def _pull_args(chat: str, cursor: int, limit: int, reverse: bool) -> Any:
    """Pull's args packed by hand (wire.pulls) in the usual case; else (None, another type, a
    number out of range, a str with no UTF-8 form) a thriftpy2 struct, written or refused by
    thriftpy2 as it always has been."""
    if type(chat) is str and type(cursor) is int and type(limit) is int and type(reverse) is bool:
        try:
            return pulls.write_args(chat, cursor, limit, reverse)
        except (UnicodeEncodeError, StructError):
            pass
    return IMService.Pull_args(req=PullRequest(Chat=chat, Cursor=cursor, Limit=limit, Reverse=reverse))


class ChatClient(IMServiceClient):
    """``async with ChatClient(host, port) as c: await c.send("a:b", "hi", "a")``.

    A call that could not be sent (no connection) is retried once; one that may have reached the
    server is retried only when ``idempotent``.
    """

    def __init__(self, host: str, port: int, *, transport: Transport | str = Transport.FRAMED,
                 settings: ClientSettings | None = None, **overrides: Any) -> None:
        base = settings or ClientSettings()
        chosen = Transport(transport) if settings is None else base.transport
        self.settings = dataclasses.replace(base, transport=chosen, **overrides)
        self.host, self.port = host, port
        self._conns: list[_Connection] = []
        self._opening = 0
        self._dialled = asyncio.Condition()  # notified whenever a dial ends
        self._slots = asyncio.Semaphore(self.settings.pool_size * self.settings.pipeline)
        self._infos: dict[str, bytes] = {}
        self._closed = False
        self.outstanding = 0  # calls in progress, for load balancing
        # One timer sweeps the calls in flight for their deadlines, rather than a timer per call
        # (creating and cancelling one costs ~4 us a call); it runs only while calls are pending.
        self._sweep_every = min(self.settings.call_timeout / 5, 0.1)
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.codec = codec.Codec()  # buffers reused by every call of this client (one event loop)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def watch_deadlines(self) -> None:
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = self.loop.time()
        pending = False
        for conn in self._conns:
            pending = conn.expire(now) or pending
        if pending:
            self.watch_deadlines()

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in self._conns:
            conn.close()
        self._conns.clear()

    async def call(self, method: str, args: Any, *, idempotent: bool = False, retry: bool = True,
                   reader: ReplyReader | None = None) -> Any:
        """Call ``method`` and return the reply's ``success`` value (``retry=False``: one attempt;
        ``reader``: see ReplyReader)."""
        self.outstanding += 1
        try:
            return await self._call_once(method, args, reader)
        except RPCConnectError as exc:
            if not retry or self._closed or not (idempotent or isinstance(exc, RPCUnreachable)):
                raise
            log.info("retrying %s once on a fresh connection", method)
            return await self._call_once(method, args, reader)
        finally:
            self.outstanding -= 1

    async def _call_once(self, method: str, args: Any, reader: ReplyReader | None) -> Any:
        deadline = self.loop.time() + self.settings.call_timeout
        try:
            if self._slots.locked():  # every slot busy: wait, within the call's time
                async with asyncio.timeout_at(deadline):
                    await self._slots.acquire()
            else:
                await self._slots.acquire()
        except TimeoutError:
            raise RPCTimeout(f"{method}: no free connection within {self.settings.call_timeout}s") from None
        try:
            conn = self._idle_connection()
            if conn is None:
                try:
                    async with asyncio.timeout_at(deadline):
                        conn = await self._connection()
                except TimeoutError:
                    raise RPCTimeout(f"{method}: no connection within {self.settings.call_timeout}s") from None
            return await self._exchange(conn, method, args, deadline, reader)
        finally:
            self._slots.release()

    async def _exchange(self, conn: _Connection, method: str, args: Any, deadline: float,
                        reader: ReplyReader | None) -> Any:
        """Send one call on ``conn`` and wait for its reply until ``deadline``."""
        seqid, fut = conn.send(method, args, getattr(IMService, method + "_result"), deadline, reader)
        try:
            return await fut
        except TimeoutError:
            conn.abandon(seqid)
            raise RPCTimeout(f"{method}: no reply within {self.settings.call_timeout}s") from None

    def _idle_connection(self) -> _Connection | None:
        """Fast path: the first live connection with room for another call.

        Calls are packed onto as few connections as they fit (``pipeline`` each) rather than
        spread: one write and one read then carry many calls at both ends, which measured
        cheaper than more, emptier connections (docs/performance.md).
        """
        limit = self.settings.pipeline
        for conn in self._conns:
            if conn.in_flight < limit and not conn.broken:
                return conn
        return None

    async def _connection(self) -> _Connection:
        """A live connection with room, dialling a new one while the pool has room."""
        while True:
            self._conns = [c for c in self._conns if not c.broken]
            conn = self._idle_connection()
            if conn is not None:
                return conn
            if len(self._conns) + self._opening < self.settings.pool_size:
                return await self._open()
            if self._conns and not self._opening:  # every slot busy at once: the least busy
                return min(self._conns, key=lambda c: c.in_flight)
            async with self._dialled:  # every slot is being dialled: wait for one
                await self._dialled.wait()

    async def _open(self) -> _Connection:
        self._opening += 1
        try:
            conn = await self._dial()
            if self._closed:
                conn.close()
                raise RPCConnectError("client closed")
            self._conns.append(conn)
            return conn
        finally:
            self._opening -= 1
            async with self._dialled:
                self._dialled.notify_all()

    async def _dial(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except TimeoutError:
            raise RPCUnreachable(f"connect to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            raise RPCUnreachable(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from None
        return conn

    def header_info(self, method: str) -> bytes:
        """TTHeader info for ``method``: Kitex's service name, method and RPC timeout keys."""
        info = self._infos.get(method)
        if info is None:
            timeout_ms = str(int(self.settings.call_timeout * 1000))
            info = framing.encode_info(strings={"isn": "IMService"},
                                       ints={framing.TO_METHOD: method, framing.RPC_TIMEOUT: timeout_ms})
            self._infos[method] = info
        return info
