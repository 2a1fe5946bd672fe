"""A Thrift server on ``asyncio.Protocol``: any transport Kitex speaks, many calls per connection.

Each connection cuts its byte stream into whole messages (``wire.framing``), decodes each one as
it is read (with a method's one-pass reader if it has one, else thriftpy2's Cython codec) and runs
the handler. Calls that arrive back to back on one connection run concurrently (up to
``max_pipeline``), but their replies are written in the order the calls came, each in the framing
of its call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from thriftpy2.thrift import TApplicationException

from chatsvc.settings import WireLimits
from chatsvc.wire import codec, framing
from chatsvc.wire.framing import Frame, Header, Transport
from chatsvc.wire.scan import ProtocolError
from chatsvc.wire.writer import CoalescingWriter, FlushGroup

log = logging.getLogger("chatsvc.server")


@dataclass(frozen=True)
class ServerLimits:
    wire: WireLimits
    max_connections: int = 10_000
    max_pipeline: int = 64
    idle_timeout: float = 600.0
    read_timeout: float = 10.0  # a message started must be complete within this
    flush_bytes: int = 8192  # write queued replies once this many bytes are (0: only at the end of a loop pass)


class Reply:
    """The bytes to write back for one message, and whether to close the connection after them."""

    __slots__ = ("data", "close")

    def __init__(self, data: bytes, close: bool = False) -> None:
        self.data = data
        self.close = close


# Reads a call's arguments in one pass (``wire.sends.read_args``): from the whole message and where
# its args struct starts, an object with the args struct's attributes, or None for a call it does
# not take (it must then have trusted nothing in it; the call is checked and decoded as any other).
ArgsReader = Callable[[bytes, int, WireLimits], Any]


class _Method:
    """What the server needs to run one of the service's methods, looked up once."""

    __slots__ = ("args", "result", "arg_names", "read", "body")

    def __init__(self, service: Any, name: str, read: ArgsReader | None) -> None:
        self.args = getattr(service, name + "_args")
        self.result = getattr(service, name + "_result")
        self.arg_names = [spec[1] for spec in self.args.thrift_spec.values()]
        self.read = read
        self.body = 12 + len(name.encode())  # where a call's args start: version, name, seqid


class ThriftServer:
    """Serves ``service`` (a thriftpy2 service) with ``handler`` (async methods named as the IDL's);
    ``readers``: one-pass readers of some methods' calls (see ArgsReader)."""

    def __init__(self, service: Any, handler: Any, limits: ServerLimits,
                 readers: Mapping[str, ArgsReader] | None = None) -> None:
        self.service = service
        self.handler = handler
        self.limits = limits
        self.connections: set[_Connection] = set()
        self.stopping = False
        self._server: asyncio.Server | None = None
        readers = readers or {}
        self._methods = {name: _Method(service, name, readers.get(name)) for name in service.thrift_services}
        self.flushes = FlushGroup()  # every connection's replies of one loop pass, then one flush
        self._codec = codec.Codec()

    async def start(self, host: str, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, reuse_address=True)
        return self._server

    @property
    def sockets(self) -> list[Any]:
        return list(self._server.sockets) if self._server else []

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Stop accepting and reading new calls; answer the calls already read (up to
        ``drain_timeout``), then close every connection."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in self.connections:
            conn.stop_reading()
        deadline = asyncio.get_running_loop().time() + drain_timeout
        while any(conn.busy for conn in self.connections):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                log.warning("drain timeout: closing connections with calls in flight")
                break
            pending = [t for conn in self.connections for t in conn.tasks]
            if pending:
                await asyncio.wait(pending, timeout=left)
            else:
                await asyncio.sleep(0.01)  # replies are queued for the next loop pass
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()

    def decode(self, frame: Frame) -> list[Any] | Reply:
        """A call's arguments, or the Reply that refuses it (not a call, an unknown method).

        Raises:
            ProtocolError: the message is not whole and valid; the connection answers
                PROTOCOL_ERROR and closes.
        """
        head = frame.head
        method = self._methods.get(head.name)
        if method is not None and method.read is not None and head.mtype == codec.CALL:
            args = method.read(frame.payload, method.body, self.limits.wire)
            if args is not None:
                return [getattr(args, name) for name in method.arg_names]
        payload = framing.checked_payload(frame, self.limits.wire)
        if head.mtype != codec.CALL:
            return self._exception(frame, head.name, head.seqid, "invalid message type",
                                   TApplicationException.INVALID_MESSAGE_TYPE, close=True)
        if method is None:
            return self._exception(frame, head.name, head.seqid, f"unknown method {head.name}",
                                   TApplicationException.UNKNOWN_METHOD)
        args = method.args()
        self._codec.decode_body(payload, args)
        return [getattr(args, name) for name in method.arg_names]

    async def call(self, frame: Frame, call_args: list[Any]) -> Reply:
        """Run one decoded call; returns the bytes to write back."""
        head = frame.head
        header = frame.header
        if header is not None and log.isEnabledFor(logging.DEBUG):
            _log_header(head.name, header)
        handle = getattr(self.handler, head.name)
        deadline = None if header is None else _deadline(header)
        try:
            if deadline is None:
                result = await handle(*call_args)
            else:
                async with asyncio.timeout(deadline):
                    result = await handle(*call_args)
        except TimeoutError:
            return self._exception(frame, head.name, head.seqid, "deadline exceeded (RPCTimeout)",
                                   TApplicationException.INTERNAL_ERROR)
        except Exception as exc:  # a bug in a handler: Kitex answers INTERNAL_ERROR and keeps the connection
            log.exception("handler %s failed", head.name)
            return self._exception(frame, head.name, head.seqid, f"internal error: {type(exc).__name__}",
                                   TApplicationException.INTERNAL_ERROR)
        if type(result) is codec.Encoded:  # a handler's reply already encoded (wire.pages)
            payload = codec.encode_reply(head.name, head.seqid, result)
        else:
            result_struct = self._methods[head.name].result(success=result)
            payload = self._codec.encode(head.name, codec.REPLY, head.seqid, result_struct)
        return Reply(_wrap(frame, payload, reply_type="2"))

    def _exception(self, frame: Frame, name: str, seqid: int, message: str, kind: int,
                   close: bool = False) -> Reply:
        payload = codec.encode(name, codec.EXCEPTION, seqid, TApplicationException(type=kind, message=message))
        return Reply(_wrap(frame, payload, reply_type="3"), close)

    def protocol_error(self, transport: Transport | None, message: str) -> bytes:
        """A PROTOCOL_ERROR exception in ``transport``, for a message that could not be decoded."""
        exc = TApplicationException(type=TApplicationException.PROTOCOL_ERROR, message=message)
        payload = codec.encode("", codec.EXCEPTION, 0, exc)
        return framing.wrap(transport or Transport.BUFFERED, payload)


def _deadline(header: Header) -> float | None:
    """The caller's RPCTimeout (TTHeader int key 12, milliseconds) in seconds, if it sent one."""
    raw = header.ints.get(framing.RPC_TIMEOUT, "")
    return int(raw) / 1000 if raw.isdigit() and int(raw) > 0 else None


def _wrap(frame: Frame, payload: bytes, reply_type: str) -> bytes:
    if frame.header is None:
        return framing.wrap(frame.transport, payload)
    # Kitex's meta handler marks replies with MsgType when the caller sent Kitex's int keys.
    info = framing.encode_info(ints={framing.MSG_TYPE: reply_type}) if frame.header.ints else b"\x00" * 4
    return framing.wrap(frame.transport, payload, frame.header.seqid, info)


def _log_header(method: str, header: Header) -> None:
    log.debug("call %s from %s.%s log_id=%s", method, header.ints.get(framing.FROM_SERVICE, "-"),
              header.ints.get(framing.FROM_METHOD, "-"), header.ints.get(framing.LOG_ID, "-"))


class _Slot:
    """A call's place in its connection's reply order; ``reply`` is set when it is ready, and
    ``task`` (the call's task) lets the call take itself out of ``tasks`` as it ends."""

    __slots__ = ("reply", "task")

    def __init__(self, reply: Reply | None = None) -> None:
        self.reply = reply
        self.task: asyncio.Task[None] | None = None


class _Connection(CoalescingWriter, asyncio.Protocol):
    def __init__(self, server: ThriftServer) -> None:
        super().__init__(server.flushes, server.limits.flush_bytes)
        self.server = server
        self._loop = asyncio.get_running_loop()
        # Framed messages are not walked as they are read: ThriftServer.decode reads or checks each.
        self.reader = framing.FrameReader(server.limits.wire, walk=False)
        self.tasks: set[asyncio.Task[None]] = set()  # calls running (at most max_pipeline)
        self._slots: deque[_Slot] = deque()  # calls whose replies are not written yet, in order
        # calls over max_pipeline, not started: the message, its arguments, its place
        self._waiting: deque[tuple[Frame, list[Any], _Slot]] = deque()
        self._paused = False
        self._closing = False
        self._last_active = time.monotonic()
        self._idle: asyncio.TimerHandle | None = None
        self._partial: asyncio.TimerHandle | None = None  # armed while a message is half read
        self._eof = False

    @property
    def busy(self) -> bool:
        return bool(self._slots)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        if len(self.server.connections) >= self.server.limits.max_connections:
            log.warning("connection refused: %d connections open", len(self.server.connections))
            self.transport.abort()  # type: ignore[union-attr]
            return
        self.server.connections.add(self)
        self._schedule_idle(self.server.limits.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._waiting.clear()
        self.server.connections.discard(self)
        for timer in (self._idle, self._partial):
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.flush()
            self.transport.close()

    def stop_reading(self) -> None:
        """Take no new calls (shutdown); calls already read are still answered."""
        if self.transport is not None and not self._paused and not self._closing:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        """The client finished sending: answer the calls it sent, then close."""
        self._eof = True
        if not self.busy:
            self.close()  # writes any reply still queued for this loop pass first
        return True  # this protocol closes the transport itself, once nothing is owed

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._last_active = time.monotonic()
        reader = self.reader
        try:
            frames = reader.feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            return
        for frame in frames:
            if not self._dispatch(frame):
                return
        if reader.error is not None:
            self._fail(reader.error)
        elif reader.buffered:
            if self._partial is None:
                self._partial = self._loop.call_later(
                    self.server.limits.read_timeout, self._read_timed_out, reader.frames_read)
        elif self._partial is not None:
            self._partial.cancel()
            self._partial = None

    def _read_timed_out(self, frames_read: int) -> None:
        """A message that stays incomplete for ``read_timeout`` (a slow or stuck sender) is dropped."""
        self._partial = None
        if self.reader.buffered and self.reader.frames_read == frames_read and not self._closing:
            log.info("closing connection: message incomplete after %ss", self.server.limits.read_timeout)
            self._drop_waiting()
            self._slots.append(_Slot(Reply(b"", close=True)))
            self._closing = True
            self._emit_ready()
        elif self.reader.buffered:  # progress since: time the message now being read
            self._partial = asyncio.get_running_loop().call_later(
                self.server.limits.read_timeout, self._read_timed_out, self.reader.frames_read)

    def _fail(self, exc: ProtocolError, transport: Transport | None = None) -> None:
        """Answer a broken stream with PROTOCOL_ERROR (unless it is not Thrift at all), then close."""
        log.info("closing connection: %s", exc)
        data = b"" if isinstance(exc, framing.Refused) else self.server.protocol_error(
            transport or self.reader.last_transport, str(exc))
        self._drop_waiting()
        self._slots.append(_Slot(Reply(data, close=True)))
        self._closing = True  # read nothing more; write what is owed, then close
        self._emit_ready()

    def _drop_waiting(self) -> None:
        """Never start the calls waiting for a place in the pipeline (the connection is closing):
        their places in the reply order are passed over, so that the replies owed before them
        and the last one still go out."""
        for _, _, slot in self._waiting:
            slot.reply = Reply(b"")
        self._waiting.clear()

    def _dispatch(self, frame: Frame) -> bool:
        """Decode ``frame`` and start its call; False if the connection is closing after it."""
        try:
            call = self.server.decode(frame)
        except ProtocolError as exc:
            self._fail(exc, frame.transport)
            return False
        if type(call) is Reply:  # refused without running: its place in the order is kept
            if call.close:
                self._drop_waiting()
                self._closing = True
            self._slots.append(_Slot(call))
            self._emit_ready()
            return not self._closing
        assert type(call) is list
        slot = _Slot()
        self._slots.append(slot)
        if len(self.tasks) < self.server.limits.max_pipeline:
            self._start(frame, call, slot)
            return True
        self._waiting.append((frame, call, slot))
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        return True

    def _start(self, frame: Frame, call_args: list[Any], slot: _Slot) -> None:
        slot.task = task = self._loop.create_task(self._serve(frame, call_args, slot))
        self.tasks.add(task)

    async def _serve(self, frame: Frame, call_args: list[Any], slot: _Slot) -> None:
        try:
            slot.reply = await self.server.call(frame, call_args)
            self._emit_ready()
        finally:
            # The call's place in the pipeline is freed as it ends, rather than in a done callback,
            # which would cost one more event-loop callback per call.
            self.tasks.discard(slot.task)
            self._call_done()

    def _call_done(self) -> None:
        self._last_active = time.monotonic()
        while self._waiting and len(self.tasks) < self.server.limits.max_pipeline:
            self._start(*self._waiting.popleft())
        if self._paused and not self._waiting and not self._closing and not self.server.stopping:
            self._paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    def _emit_ready(self) -> None:
        """Write every reply that is next in order.

        When no other reply is owed on this connection they are written at once: nothing more can
        join them in this loop pass (a call needs a pass of its own to run). Otherwise, at the end
        of this pass, together with the replies that complete in it.
        """
        slots = self._slots
        queued = False
        while slots and slots[0].reply is not None:
            reply = slots.popleft().reply
            assert reply is not None
            if reply.data:
                self.queue(reply.data)
                queued = True
            if reply.close:
                slots.clear()
                self._waiting.clear()
                self.close()
                return
        if self._eof and not slots:
            self.close()
        elif queued:
            if slots:
                self.flush_soon()
            else:
                self.flush()

    def _schedule_idle(self, delay: float) -> None:
        self._idle = self._loop.call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        """Close a connection with no call in flight and no bytes for ``idle_timeout``."""
        idle = time.monotonic() - self._last_active
        timeout = self.server.limits.idle_timeout
        if not self.busy and idle >= timeout:
            log.info("closing idle connection")
            self.close()
        else:
            self._schedule_idle(max(timeout - idle, 0.05) if not self.busy else timeout)
