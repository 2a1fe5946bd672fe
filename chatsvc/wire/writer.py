"""Write coalescing, shared by the server's and the client's connections.

On loopback a socket write costs more than the bytes it carries (the kernel delivers the data to
the peer inside the writer's system call), so everything a connection produces in one pass of
the event loop goes out in one write at the end of that pass; or, with ``flush_bytes``, as soon as
that much is queued, so that the peer can start on the first replies of a large batch (pages of
messages) while the rest are being made.
"""

from __future__ import annotations

import asyncio


class FlushGroup:
    """Flushes many connections with one event-loop callback per pass instead of one each.

    A server answering many connections in one pass (a Redis batch completes a call on each)
    saves a callback per reply.
    """

    def __init__(self) -> None:
        self._pending: list[CoalescingWriter] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, writer: CoalescingWriter) -> None:
        if not self._pending:
            if self._loop is None:  # looked up once: in Python 3.11 each lookup is a getpid() call
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._flush)
        self._pending.append(writer)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for writer in pending:
            writer.flush()


class CoalescingWriter:
    def __init__(self, group: FlushGroup | None = None, flush_bytes: int = 0) -> None:
        """Made in a running event loop (a protocol's constructor): the one its writes go through.
        ``flush_bytes``: ``queue`` writes at once when this much is queued (0: never)."""
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._queued = 0  # bytes in _out, counted by queue
        self._flush_bytes = flush_bytes
        self._flush_scheduled = False
        self._group = group

    def write_soon(self, data: bytes) -> None:
        self._out.append(data)
        self.flush_soon()

    def queue(self, data: bytes) -> None:
        """Add ``data`` to the next write, without scheduling it (``flush`` or ``flush_soon``);
        write at once if ``flush_bytes`` are queued."""
        self._out.append(data)
        if self._flush_bytes:
            self._queued += len(data)
            if self._queued >= self._flush_bytes:
                self.flush()

    def flush_soon(self) -> None:
        """Write what is queued at the end of this loop pass."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            if self._group is not None:
                self._group.add(self)
            else:
                self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        self._queued = 0
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
