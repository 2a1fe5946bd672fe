"""Write coalescing, shared by the server's and the client's connections.

On loopback a socket write costs more than the bytes it carries (the kernel delivers the data to
the peer inside the writer's system call), so everything a connection produces in one pass of
the event loop goes out in one write at the end of that pass.
"""

from __future__ import annotations

import asyncio


class CoalescingWriter:
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False

    def write_soon(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
