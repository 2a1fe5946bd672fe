"""`make bench`'s accounting: CPU per request, the processes of a stack it did not start
(``--vs-pid``), the summary table, and the order of the rounds."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from bench import report, runner, system
from bench.__main__ import options
from bench.report import summary_table
from bench.stats import LoadResult, Measurement, Summary
from bench.system import LOADGEN, CpuMeter, System


def result(requests: int, cpu_s: dict[str, float], target: str = "pychat", rnd: int = 1) -> LoadResult:
    m = Measurement(requests=requests, duration_s=1.0, p50_ms=1.0, p90_ms=2.0, p99_ms=3.0, max_ms=4.0)
    return LoadResult(target, "send", rnd, "wrk", m, cpu_s)


def test_cpu_per_request_is_the_median_over_rounds_of_each_rounds_ratio():
    rounds = [result(10_000, {"gateway": 3.0, "redis": 0.3}, rnd=1),
              result(20_000, {"gateway": 1.0, "redis": 0.4}, rnd=2),
              result(5_000, {"gateway": 1.0, "redis": 0.2}, rnd=3)]
    assert rounds[0].cpu_us_per_request == {"gateway": 300.0, "redis": 30.0}
    summary = Summary.of(rounds)
    # Gateway per round: 300, 50 and 200 µs. The median of those is 200; the ratio of the medians
    # (1.0 s over 10,000 requests) would be 100.
    assert summary.cpu_us_per_request == {"gateway": 200.0, "redis": 30.0}
    assert result(0, {"gateway": 1.0}).cpu_us_per_request == {}  # no request: no ratio
    assert rounds[0].as_dict()["cpu_us_per_request"] == {"gateway": 300.0, "redis": 30.0}


def test_summary_table_puts_other_stacks_processes_before_the_load_generator():
    ours = Summary.of([result(1_000, {"gateway": 0.1, "chatsvc": 0.05, LOADGEN: 0.02})])
    theirs = Summary.of([result(1_000, {"gateway": 0.09, "rpcserver": 0.06, LOADGEN: 0.02}, target="go-ref")])
    header = summary_table([ours, theirs]).splitlines()[0].split("  ")
    cpu_columns = [h.strip() for h in header if h.strip().endswith("µs/req")]
    assert cpu_columns == ["gateway µs/req", "chatsvc µs/req", "rpcserver µs/req", "loadgen µs/req"]


def test_a_watched_process_is_metered_with_its_name():
    meter = CpuMeter(None, [("me", os.getpid())])
    meter.start()
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # burn 0.2 s of this process's CPU
        pass
    used = meter.stop()
    assert used["me"] >= 0.15 and used[LOADGEN] >= 0.15  # this process is also the load generator


def test_vs_pid_options():
    opts = options(["--vs", "http://127.0.0.1:9080", "--vs-pid", f"gateway={os.getpid()}"])
    assert opts.vs_pids == (("gateway", os.getpid()),)
    for argv in (["--vs-pid", f"gateway={os.getpid()}"],  # no --vs
                 ["--vs", "http://x", "--vs-pid", "gateway"],  # no pid
                 ["--vs", "http://x", "--vs-pid", "gateway=not-a-pid"]):
        with pytest.raises(SystemExit):
            options(argv)


def test_rounds_alternate_which_target_goes_first(monkeypatch):
    """A B, B A, A B for each load: a target's place in a round does not favour it over the run."""
    monkeypatch.setattr(runner, "PAUSE_S", 0)
    calls: list[tuple[str, str, str]] = []

    async def probe(target: runner.Target) -> None:
        calls.append(("probe", target.label, ""))

    async def measure(target: runner.Target, load: str) -> Measurement:
        calls.append(("measure", target.label, load))
        return Measurement(requests=1, duration_s=1.0, p50_ms=1.0, p90_ms=1.0, p99_ms=1.0, max_ms=1.0)

    targets = [runner.Target("A", "http://a"), runner.Target("B", "http://b")]
    opts = runner.Options(mode="http", loads=("send", "pull"), rounds=3)
    results = asyncio.run(runner.interleaved(targets, opts.loads, opts, probe, measure))
    measured = [(label, load) for kind, label, load in calls if kind == "measure"]
    assert measured == [("A", "send"), ("B", "send"), ("B", "send"), ("A", "send"), ("A", "send"), ("B", "send"),
                        ("A", "pull"), ("B", "pull"), ("B", "pull"), ("A", "pull"), ("A", "pull"), ("B", "pull")]
    assert [kind for kind, _, _ in calls] == ["probe", "measure"] * 12  # each measurement after its probe
    assert [(r.target, r.round) for r in results[:6]] == [("A", 1), ("B", 1), ("B", 2), ("A", 2), ("A", 3), ("B", 3)]


def test_each_round_reports_the_cpu_time_the_hypervisor_stole(monkeypatch):
    """The fixed-rate tail follows the host's load (docs/performance.md): each round says how much
    of the machine's CPU time the hypervisor took, from /proc/stat's steal column."""
    monkeypatch.setattr(runner, "PAUSE_S", 0)
    stats = iter(["cpu  100 0 50 800 0 0 10 40 0 0\n", "cpu  200 0 100 1500 0 0 20 180 0 0\n"])
    parse = system.cpu_ticks
    monkeypatch.setattr(system, "cpu_ticks", lambda: parse(next(stats)))

    async def measure(target: runner.Target, load: str) -> Measurement:
        return Measurement(requests=1, duration_s=1.0, p50_ms=1.0, p90_ms=1.0, p99_ms=1.0, max_ms=1.0)

    async def probe(target: runner.Target) -> None:
        pass

    opts = runner.Options(mode="http", loads=("send",), rounds=1)
    [result] = asyncio.run(runner.interleaved([runner.Target("A", "http://a")], opts.loads, opts, probe, measure))
    # 140 of 1,000 ticks: steal 180 - 40, total 2,000 - 1,000
    assert result.as_dict()["host_steal_pct"] == 14.0
    assert report.round_line(result, 1).endswith("steal=14.0%")
    assert parse("intr 1 2 3\n") is None


def test_the_bench_starts_one_gateway_worker_per_core_and_one_more():
    """With one per core, cores sat idle while the workers waited on chatsvc (docs/performance.md)."""
    cores = len(os.sched_getaffinity(0))
    assert options([]).gateway_workers == cores + 1
    assert runner.Options(mode="http", loads=("send",)).gateway_workers == cores + 1
    with System() as system:
        assert system.gateway_workers == cores + 1
    assert options(["--gateway-workers", "2"]).gateway_workers == 2
