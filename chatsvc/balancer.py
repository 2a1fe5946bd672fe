"""Calls spread over several chatsvc instances: least outstanding calls, with health checks.

chatsvc is stateless (everything is in Redis), so any instance can serve any call. Each call goes
to the healthy instance with the fewest calls in progress. An instance that cannot be reached is
taken out at once; a background probe calls it every ``probe_interval`` seconds and puts it back
when it answers. A call that was never sent (connection refused) moves on to another instance; one
that may have reached a dying instance is retried elsewhere only if it is idempotent (a pull), so a
send is never stored twice.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from chatsvc.client import ChatClient, ClientSettings, IMServiceClient, ReplyReader, RPCConnectError, RPCUnreachable
from chatsvc.wire.idl import IMService, PullRequest

log = logging.getLogger("chatsvc.balancer")

DEFAULT_PROBE_INTERVAL = 0.5


@dataclass(eq=False)
class Instance:
    addr: tuple[str, int]
    client: ChatClient
    healthy: bool = True
    failures: int = field(default=0)

    @property
    def name(self) -> str:
        return f"{self.addr[0]}:{self.addr[1]}"


class BalancedClient(IMServiceClient):
    def __init__(self, addrs: list[tuple[str, int]], settings: ClientSettings | None = None,
                 probe_interval: float = DEFAULT_PROBE_INTERVAL) -> None:
        if not addrs:
            raise ValueError("no chatsvc address")
        self.settings = settings or ClientSettings()
        self.instances = [Instance(a, ChatClient(*a, settings=self.settings)) for a in addrs]
        self._probe_interval = probe_interval
        self._prober: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
        for inst in self.instances:
            await inst.client.close()

    async def call(self, method: str, args: Any, *, idempotent: bool = False, retry: bool = True,
                   reader: ReplyReader | None = None) -> Any:
        tried: set[Instance] = set()
        while True:
            inst = self._pick(tried)
            try:
                return await inst.client.call(method, args, retry=False, reader=reader)
            except RPCConnectError as exc:
                self._mark_down(inst, exc)
                tried.add(inst)
                elsewhere = retry and (idempotent or isinstance(exc, RPCUnreachable))
                if not elsewhere or len(tried) == len(self.instances):
                    raise

    def _pick(self, tried: set[Instance]) -> Instance:
        """The healthy, untried instance with the fewest calls in progress (any untried if none is healthy)."""
        candidates = [i for i in self.instances if i not in tried]
        healthy = [i for i in candidates if i.healthy] or candidates
        return min(healthy, key=lambda i: i.client.outstanding)

    def _mark_down(self, inst: Instance, exc: Exception) -> None:
        inst.failures += 1
        if inst.healthy:
            log.warning("chatsvc %s taken out: %s", inst.name, exc)
            inst.healthy = False
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        while any(not i.healthy for i in self.instances):
            await asyncio.sleep(self._probe_interval)
            await asyncio.gather(*(self._probe(i) for i in self.instances if not i.healthy))

    async def _probe(self, inst: Instance) -> None:
        """Any reply means the instance serves calls again (an empty chat gets an in-band 400)."""
        probe = IMService.Pull_args(req=PullRequest(Chat="", Cursor=0, Limit=1))
        try:
            await inst.client.call("Pull", probe, retry=False)
        except Exception as exc:  # noqa: BLE001 - any failure keeps it out
            log.debug("chatsvc %s still down: %s", inst.name, exc)
            return
        log.warning("chatsvc %s is back", inst.name)
        inst.healthy, inst.failures = True, 0
