"""The four modes: HTTP closed loop (wrk or asyncio), HTTP fixed rate, Thrift, and Redis memory.

Every mode starts what it needs in a ``System`` (or targets what it is given), probes each target
before each load, runs the loads in interleaved rounds (load by load: A B, B A, A B ...), and returns
its results; ``run`` then prints the tables and writes the JSON and the plot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp

from bench import loadgen, memory, report, thrift, workload, wrk
from bench.noise import Noise, NoiseSpec
from bench.stats import LoadResult, Measurement, summarize
from bench.system import ROOT, CpuMeter, Proc, StealMeter, System, default_gateway_workers
from chatsvc.client import ChatClient

PAUSE_S = 0.5  # between two loads: lets sockets and queues drain
T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    mode: str  # "http", "rate", "thrift" or "memory"
    loads: tuple[str, ...]
    label: str = "pychat"
    url: str | None = None
    vs: str | None = None
    vs_label: str | None = None
    vs_pids: tuple[tuple[str, int], ...] = ()  # processes of the --vs stack whose CPU is measured
    chatsvc: str | None = None
    transport: str = "framed"  # Thrift transport of --thrift
    conns: int = 64
    duration: float = 10.0
    rounds: int = 3
    rate: float = 0.0
    clients: int = 20
    generator: str = "auto"  # "auto", "wrk" or "python"
    messages: int = 100_000
    results_dir: Path = ROOT / "bench" / "results"
    gateway_workers: int = field(default_factory=default_gateway_workers)
    chatsvc_args: tuple[str, ...] = ()
    redis_cluster: int = 0  # masters of a Redis Cluster to start instead of one redis-server (0: none)
    cluster_replicas: int = 1
    noise: NoiseSpec | None = None  # emulated CPU contention during every round (bench.noise)


@dataclass(frozen=True)
class Target:
    """What a load goes to: a gateway base URL, or a chatsvc ``host:port`` in Thrift mode.
    ``system`` holds its processes when the bench started them, ``watched`` those of a stack it
    did not start (``--vs-pid``); the CPU of both is measured."""

    label: str
    address: str
    system: System | None = None
    watched: tuple[tuple[str, int], ...] = ()


@dataclass
class Outcome:
    results: list[LoadResult] = field(default_factory=list)
    generator: str = ""
    memory: dict[str, Any] | None = None


Probe = Callable[[Target], Awaitable[None]]
Measure = Callable[[Target, str], Awaitable[Measurement]]


async def interleaved(targets: list[Target], loads: tuple[str, ...], opts: Options, probe: Probe,
                      measure: Measure, name_of: Callable[[str], str] = str) -> list[LoadResult]:
    """For each load, ``rounds`` rounds of every target in turn, each after a correctness probe.

    Even rounds run the targets in reverse (A B, B A, A B ...): on this kind of machine the
    position in a round is worth a few per cent by itself, and alternating cancels it out."""
    results: list[LoadResult] = []
    for load in loads:
        for rnd in range(1, opts.rounds + 1):
            for target in targets if rnd % 2 else targets[::-1]:
                await probe(target)
                async with Noise(opts.noise) if opts.noise else contextlib.nullcontext():
                    meter, steal = CpuMeter(target.system, target.watched), StealMeter()
                    meter.start()
                    steal.start()
                    m = await measure(target, load)
                    cpu = meter.stop()
                    stolen = steal.stop()
                if stolen is not None:
                    m.extra["host_steal_pct"] = stolen
                if target.system is not None:
                    target.system.check_alive()
                result = LoadResult(target.label, name_of(load), rnd, "", m, cpu)
                results.append(result)
                print(report.round_line(result, opts.rounds), flush=True)
                await asyncio.sleep(PAUSE_S)
    return results


def http_generator(opts: Options) -> tuple[str, Measure]:
    """The generator's name and how it measures one load against one target."""
    if opts.mode == "rate":
        return "open loop (bench/openloop.py)", lambda t, load: loadgen.open_loop(
            t.address, workload.LOADS[load], opts.rate, opts.clients, opts.duration)
    wrk_bin = wrk.binary() if opts.generator != "python" else None
    if opts.generator == "wrk" and wrk_bin is None:
        raise wrk.WrkFailed("--generator wrk: wrk is not on PATH")
    if wrk_bin is not None:
        return "wrk", lambda t, load: wrk.run(wrk_bin, t.address, workload.LOADS[load], opts.conns, opts.duration)
    return "asyncio closed loop", lambda t, load: loadgen.closed_loop(
        t.address, workload.LOADS[load], opts.conns, opts.duration)


async def run_http(opts: Options, targets: list[Target]) -> Outcome:
    generator, measure = http_generator(opts)
    print(f"load generator: {generator}", flush=True)
    async with aiohttp.ClientSession() as session:
        for target in targets:
            await workload.probe(session, target.address, pull=False)
            await workload.preload(session, target.address)

        async def probe(t: Target) -> None:
            await workload.probe(session, t.address)

        def name_of(load: str) -> str:
            return f"{load}@{opts.rate:g}/s" if opts.mode == "rate" else load

        results = await interleaved(targets, opts.loads, opts, probe, measure, name_of)
    return Outcome(_tagged(results, generator), generator)


async def run_thrift(opts: Options, target: Target) -> Outcome:
    async with ChatClient(*thrift.parse_addr(target.address), transport=opts.transport) as client:
        await thrift.preload(client)

        async def probe(t: Target) -> None:
            await thrift.probe(client)

        async def measure(t: Target, op: str) -> Measurement:
            return await thrift.closed_loop(client, op, opts.conns, opts.duration)

        results = await interleaved([target], opts.loads, opts, probe, measure)
    generator = f"thrift ChatClient, {opts.transport}"
    return Outcome(_tagged(results, generator), generator)


async def run_memory(opts: Options, system: System) -> Outcome:
    svc, redis = system.find("chatsvc"), system.find("redis")
    print(f"storing {opts.messages:,} messages of {workload.TEXT_BYTES} bytes over {workload.NCHATS} chats "
          f"through chatsvc {svc.addr} (Thrift) into a fresh redis {redis.addr}...", flush=True)
    mem = await memory.measure(thrift.parse_addr(svc.addr), thrift.parse_addr(redis.addr), opts.messages)
    return Outcome(memory=mem, generator="thrift (ChatClient)")


def _tagged(results: list[LoadResult], generator: str) -> list[LoadResult]:
    return [dataclasses.replace(r, generator=generator) for r in results]


def start_redis(opts: Options, system: System) -> Proc | str:
    """One redis-server, or a Redis Cluster (its URL) with ``--redis-cluster N``."""
    if opts.redis_cluster:
        return system.start_redis_cluster(opts.redis_cluster, opts.cluster_replicas)
    return system.start_redis()


def start_targets(opts: Options, system: System) -> list[Target]:
    """Start what the mode needs, unless told where it runs; then the ``--vs`` target."""
    if opts.mode in ("thrift", "memory"):
        if opts.chatsvc and opts.mode == "thrift":
            return [Target(opts.label, opts.chatsvc)]
        svc = system.start_chatsvc(start_redis(opts, system))
        return [Target(opts.label, svc.addr, system)]
    if opts.url:
        targets = [Target(opts.label, opts.url.rstrip("/"))]
    else:
        gateway = system.start_gateway(system.start_chatsvc(start_redis(opts, system)))
        targets = [Target(opts.label, f"http://{gateway.addr}", system)]
    if opts.vs:
        targets.append(Target(opts.vs_label or urlsplit(opts.vs).netloc or opts.vs, opts.vs.rstrip("/"),
                              watched=opts.vs_pids))
    return targets


async def dispatch(opts: Options, targets: list[Target], system: System) -> Outcome:
    if opts.mode == "memory":
        return await run_memory(opts, system)
    if opts.mode == "thrift":
        return await run_thrift(opts, targets[0])
    return await run_http(opts, targets)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """On uvloop when installed (as the services run), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def run(opts: Options) -> None:
    """Run one benchmark, print its tables, write its JSON (and PNG)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    load_before = os.getloadavg()
    with System(opts.gateway_workers, opts.chatsvc_args) as system:
        targets = start_targets(opts, system)
        for t in targets:
            print(f"target {t.label}: {t.address}{_started(t)}", flush=True)
        if opts.noise:
            print(f"noise during every round: {opts.noise.describe()}", flush=True)
        outcome = run_async(dispatch(opts, targets, system))
        peaks = system.peak_rss()  # before the processes stop
    doc = document(opts, stamp, targets, outcome, peaks, host_info(load_before))
    print_tables(opts, doc, targets, outcome)
    path = opts.results_dir / f"{stamp}-{report.safe_name(opts.label)}.json"
    report.write_json(path, doc)
    print(f"\nresults: {path}")
    if outcome.results:
        title = f"{opts.mode}: {' vs '.join(t.label for t in targets)} ({outcome.generator})"
        print(report.plot(opts.results_dir / f"{stamp}.png", summarize(outcome.results), title))


def _started(target: Target) -> str:
    if target.system is None:
        return ""
    return " (started " + ", ".join(f"{p.name} pid {p.popen.pid} on {p.addr}" for p in target.system.procs) + ")"


def document(opts: Options, stamp: str, targets: list[Target], outcome: Outcome,
             peaks: dict[str, dict[str, int]], host: dict[str, Any]) -> dict[str, Any]:
    """The JSON record of a run."""
    summaries = summarize(outcome.results)
    comparison = (report.comparisons(summaries, targets[0].label, targets[1].label)
                  if len(targets) == 2 else [])
    return {"label": opts.label, "mode": opts.mode, "timestamp": stamp, "command": sys.argv[1:],
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(opts).items()},
            "generator": outcome.generator, "host": host,
            "targets": [{"label": t.label, "address": t.address, "started_by_bench": t.system is not None}
                        for t in targets],
            "rounds": [r.as_dict() for r in outcome.results],
            "summary": [dataclasses.asdict(s) for s in summaries],
            "comparison": comparison, "processes": peaks, "memory": outcome.memory}


def print_tables(opts: Options, doc: dict[str, Any], targets: list[Target], outcome: Outcome) -> None:
    summaries = summarize(outcome.results)
    if summaries:
        print(f"\nmedians over {opts.rounds} round(s); latency in ms; µs/req = a process's CPU time "
              "(user + system) per request served")
        print(report.summary_table(summaries))
    if doc["comparison"]:
        print("\n" + report.comparison_table(doc["comparison"], targets[0].label, targets[1].label))
    if outcome.memory is not None:
        print("\n" + report.memory_table(outcome.memory))
    if doc["processes"]:
        print("\n" + report.process_table(doc["processes"]))


def host_info(load_before: tuple[float, float, float]) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "python": sys.version.split()[0], "python_executable": os.path.realpath(sys.executable),
            "platform": platform.platform(), "git": _git_head(),
            "wrk": _wrk_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _git_head() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _wrk_version() -> str | None:
    binary = wrk.binary()
    if binary is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=5)
    return (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else None
