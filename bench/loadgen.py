"""HTTP load generators in asyncio + aiohttp.

``closed_loop``: the fallback when wrk is missing. ``conns`` connections, each sending its next
request as soon as the previous answer arrived, for ``duration`` seconds.

``open_loop``: a fixed total rate, whatever the server does (wrk2's model). ``clients`` clients,
each with its own connection pool, issue requests on a fixed schedule; a request is issued at its
scheduled time even when earlier ones have not been answered, and its latency is measured from
the *scheduled* time, so a stalled server is charged for every request it delayed (no coordinated
omission). If the generator itself falls behind, ``issue_lag`` says by how much.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp

from bench.stats import Histogram, Measurement, now
from bench.workload import JSON_HEADERS, Bodies, HttpLoad

CLOSED_TIMEOUT = 2.0  # wrk's default socket timeout
OPEN_TIMEOUT = 5.0
CONNS_PER_CLIENT = 16  # open loop: requests beyond this wait for a connection (and that wait counts)


@dataclass
class Tally:
    hist: Histogram = field(default_factory=Histogram)
    responses: int = 0
    non2xx: int = 0
    sockerr: int = 0

    def measurement(self, elapsed: float, **extra: object) -> Measurement:
        return Measurement.from_histogram(self.hist, self.responses, elapsed, self.non2xx, self.sockerr, **extra)


async def _request(session: aiohttp.ClientSession, method: str, url: str, body: bytes, since: float,
                   tally: Tally) -> None:
    """One request; its latency runs from ``since`` (``now()``) to the end of the response body."""
    try:
        async with session.request(method, url, data=body, headers=JSON_HEADERS) as resp:
            await resp.read()
            status = resp.status
    except (TimeoutError, aiohttp.ClientError, OSError):
        tally.sockerr += 1
        return
    tally.hist.record(now() - since)
    tally.responses += 1
    if not 200 <= status < 300:
        tally.non2xx += 1


async def _closed_worker(session: aiohttp.ClientSession, method: str, url: str, bodies: Bodies,
                         deadline: float, tally: Tally) -> None:
    while (started := now()) < deadline:
        await _request(session, method, url, bodies(), started, tally)


async def closed_loop(base: str, load: HttpLoad, conns: int, duration: float) -> Measurement:
    """``conns`` connections doing requests back to back for ``duration`` seconds."""
    url, bodies, tally = base + load.path, load.new_bodies(), Tally()
    connector = aiohttp.TCPConnector(limit=conns)
    timeout = aiohttp.ClientTimeout(total=CLOSED_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = now()
        await asyncio.gather(*(_closed_worker(session, load.method, url, bodies, start + duration, tally)
                               for _ in range(conns)))
        elapsed = now() - start
    return tally.measurement(elapsed)


@dataclass(frozen=True)
class Schedule:
    """Client ``i`` of ``clients`` issues at ``first + k * interval`` while that is before ``end``."""

    first: float
    interval: float
    end: float


async def _scheduled_client(session: aiohttp.ClientSession, method: str, url: str, bodies: Bodies,
                            plan: Schedule, tally: Tally, lag: Histogram) -> int:
    in_flight: set[asyncio.Task[None]] = set()
    issued, due = 0, plan.first
    while due < plan.end:
        delay = due - now()
        if delay > 0:
            await asyncio.sleep(delay)
        lag.record(max(now() - due, 0.0))
        task = asyncio.create_task(_request(session, method, url, bodies(), due, tally))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        issued += 1
        due = plan.first + issued * plan.interval
    if in_flight:
        await asyncio.gather(*in_flight)
    return issued


async def open_loop(base: str, load: HttpLoad, rate: float, clients: int, duration: float) -> Measurement:
    """``rate`` requests/s in total from ``clients`` clients for ``duration`` s, on a fixed schedule."""
    url, bodies, tally, lag = base + load.path, load.new_bodies(), Tally(), Histogram()
    interval = clients / rate
    timeout = aiohttp.ClientTimeout(total=OPEN_TIMEOUT)
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNS_PER_CLIENT), timeout=timeout)
                for _ in range(clients)]
    try:
        start = now() + 0.05
        plans = [Schedule(start + i * interval / clients, interval, start + duration) for i in range(clients)]
        issued = await asyncio.gather(*(_scheduled_client(s, load.method, url, bodies, plan, tally, lag)
                                        for s, plan in zip(sessions, plans, strict=True)))
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    # req/s: answers per second of the schedule (the last answers may arrive a little after its end)
    return tally.measurement(duration, offered_rps=rate, clients=clients, issued=sum(issued),
                             issue_lag_p99_ms=round(lag.percentile_ms(99), 3),
                             issue_lag_max_ms=round(lag.max_s * 1000, 3))
