"""HTTP load generators.

``closed_loop`` (asyncio + aiohttp): the fallback when wrk is missing. ``conns`` connections, each
sending its next request as soon as the previous answer arrived, for ``duration`` seconds.

``open_loop``: a fixed total rate, whatever the server does (wrk2's model). ``clients`` clients,
each with its own pool of up to CONNS_PER_CLIENT keep-alive connections, issue requests on a fixed
schedule; a request is issued at its scheduled time even when earlier ones have not been answered
(on an idle connection of its client; if all are busy it waits for one, opening another within the
bound), and its latency is measured from the *scheduled* time, so a stalled server is charged for
every request it delayed (no coordinated omission), waits for a connection included. If the
generator itself falls behind, ``issue_lag`` says by how much. Its engine (``bench.openloop``)
speaks HTTP/1.1 itself from one thread and wakes once per request: ~120 us of CPU per request on
the 2-core VM, most of it the kernel's, where aiohttp's client took ~460-500 us and lagged its own
schedule by up to hundreds of milliseconds.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

import aiohttp

from bench.http1 import RequestEncoder, split_base
from bench.openloop import Address, Engine, histogram
from bench.stats import Histogram, Measurement, now
from bench.workload import JSON_HEADERS, Bodies, HttpLoad

CLOSED_TIMEOUT = 2.0  # wrk's default socket timeout
OPEN_TIMEOUT = 5.0
CONNS_PER_CLIENT = 16  # open loop: requests beyond this wait for a connection (and that wait counts)
START_DELAY = 0.05  # open loop: from the call to the first scheduled request


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


async def _resolve(host: str, port: int) -> Address | None:
    """The first address of ``host`` that accepts a connection (as aiohttp would try them in turn);
    failing that, the first address, or None if the name does not resolve."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return None
    candidates: list[Address] = [(family, address) for family, _, _, _, address in infos]
    for family, address in candidates if len(candidates) > 1 else ():
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, address), OPEN_TIMEOUT)
            except (OSError, TimeoutError):
                continue
        return family, address
    return candidates[0] if candidates else None


async def open_loop(base: str, load: HttpLoad, rate: float, clients: int, duration: float) -> Measurement:
    """``rate`` requests/s in total from ``clients`` clients for ``duration`` s, on a fixed schedule."""
    host, port, netloc = split_base(base)
    engine = Engine(await _resolve(host, port), RequestEncoder(load.method, load.path, netloc), load.new_bodies(),
                    rate, clients, duration, CONNS_PER_CLIENT, OPEN_TIMEOUT, START_DELAY)
    finished = asyncio.get_running_loop().run_in_executor(None, engine.run)
    try:
        await asyncio.shield(finished)
    finally:  # also when cancelled (Ctrl-C): the engine stops within SWEEP_INTERVAL
        engine.stop = True
        await asyncio.wait([finished])
    tally = Tally(histogram(engine.latencies), engine.responses, engine.non2xx, engine.sockerr)
    lag = histogram(engine.lags)
    # req/s: answers per second of the schedule (the last answers may arrive a little after its end)
    return tally.measurement(duration, offered_rps=rate, clients=clients, issued=engine.issued,
                             issue_lag_p99_ms=round(lag.percentile_ms(99), 3),
                             issue_lag_max_ms=round(lag.max_s * 1000, 3))
