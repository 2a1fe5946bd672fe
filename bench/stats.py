"""Latency histogram and the result of one load run."""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

now = time.perf_counter  # the clock of every latency (under uvloop, loop.time() ticks in whole ms)
_BUCKETS_PER_E = 200  # log buckets: about 0.5% relative error, bounded memory for any run length


@dataclass
class Histogram:
    """Latencies in seconds, kept as counts in logarithmic buckets."""

    buckets: Counter[int] = field(default_factory=Counter)
    count: int = 0
    max_s: float = 0.0

    def record(self, seconds: float) -> None:
        micros = max(seconds * 1e6, 1.0)
        self.buckets[round(math.log(micros) * _BUCKETS_PER_E)] += 1
        self.count += 1
        self.max_s = max(self.max_s, seconds)

    def merge(self, other: Histogram) -> None:
        self.buckets.update(other.buckets)
        self.count += other.count
        self.max_s = max(self.max_s, other.max_s)

    def percentile_ms(self, pct: float) -> float:
        if not self.count:
            return 0.0
        rank = math.ceil(self.count * pct / 100)
        seen = 0
        for key in sorted(self.buckets):
            seen += self.buckets[key]
            if seen >= rank:
                return min(math.exp(key / _BUCKETS_PER_E) / 1000, self.max_s * 1000)
        return self.max_s * 1000


@dataclass
class Measurement:
    """What one load generator run measured. ``errors``: non-2xx (HTTP) or non-zero Code (Thrift);
    ``sockerr``: connect/read/write errors and timeouts."""

    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int = 0
    sockerr: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @classmethod
    def from_histogram(cls, hist: Histogram, requests: int, duration_s: float, errors: int = 0,
                       sockerr: int = 0, **extra: Any) -> Measurement:
        return cls(requests, duration_s, hist.percentile_ms(50), hist.percentile_ms(90),
                   hist.percentile_ms(99), hist.max_s * 1000, errors, sockerr, dict(extra))


@dataclass
class LoadResult:
    """One load (``send``, ``pull``, ...) against one target in one round."""

    target: str
    load: str
    round: int
    generator: str
    m: Measurement
    cpu_s: dict[str, float]

    @property
    def cpu_us_per_request(self) -> dict[str, float]:
        """Each process's CPU time per request served, in microseconds: what compares across
        targets and rounds of different throughput."""
        n = self.m.requests
        return {name: round(secs / n * 1e6, 1) for name, secs in self.cpu_s.items()} if n else {}

    def as_dict(self) -> dict[str, Any]:
        m = self.m
        return {"target": self.target, "load": self.load, "round": self.round, "generator": self.generator,
                "requests": m.requests, "duration_s": round(m.duration_s, 3), "rps": round(m.rps, 1),
                "p50_ms": round(m.p50_ms, 3), "p90_ms": round(m.p90_ms, 3), "p99_ms": round(m.p99_ms, 3),
                "max_ms": round(m.max_ms, 3), "errors": m.errors, "sockerr": m.sockerr, "cpu_s": self.cpu_s,
                "cpu_us_per_request": self.cpu_us_per_request, **m.extra}


@dataclass
class Summary:
    """Medians over the rounds of one (target, load)."""

    target: str
    load: str
    rounds: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    sockerr: int
    cpu_s: dict[str, float]
    cpu_us_per_request: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, results: list[LoadResult]) -> Summary:
        first = results[0]
        names = sorted({n for r in results for n in r.cpu_s})
        cpu = {n: round(statistics.median(r.cpu_s.get(n, 0.0) for r in results), 2) for n in names}
        per_request = [r.cpu_us_per_request for r in results]
        cpu_us = {n: round(statistics.median(p[n] for p in per_request if n in p), 1)
                  for n in names if any(n in p for p in per_request)}
        return cls(first.target, first.load, len(results),
                   _median(r.m.rps for r in results), _median(r.m.p50_ms for r in results),
                   _median(r.m.p90_ms for r in results), _median(r.m.p99_ms for r in results),
                   _median(r.m.max_ms for r in results), sum(r.m.errors for r in results),
                   sum(r.m.sockerr for r in results), cpu, cpu_us)


def _median(values: Iterable[float]) -> float:
    return float(statistics.median(values))


def summarize(results: list[LoadResult]) -> list[Summary]:
    """One Summary per (target, load), in the order they first ran."""
    groups: dict[tuple[str, str], list[LoadResult]] = {}
    for r in results:
        groups.setdefault((r.target, r.load), []).append(r)
    return [Summary.of(group) for group in groups.values()]
