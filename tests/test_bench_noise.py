"""bench.noise: the emulated CPU contention of ``make bench ARGS="--noise BUSY/PERIOD"``."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.__main__ import options
from bench.noise import Noise, NoiseSpec, NoiseUnavailable
from tests.procs import ROOT, need_tool

TICKS = os.sysconf("SC_CLK_TCK")


def fifo_allowed() -> bool:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except PermissionError:
        return False
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return True


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


@pytest.mark.parametrize("text,busy,period", [("2/10", 2.0, 10.0), ("0.5/1", 0.5, 1.0), ("5/10", 5.0, 10.0)])
def test_spec_parses_busy_and_period(text, busy, period):
    assert NoiseSpec.parse(text) == NoiseSpec(busy, period)
    assert options(["--rate", "1000", "--noise", text]).noise == NoiseSpec(busy, period)


@pytest.mark.parametrize("text", ["2", "2/", "/10", "a/10", "0/10", "-1/10", "6/10", "2/3"])
def test_spec_refuses_what_would_not_leave_half_of_each_period(text):
    with pytest.raises(ValueError):
        NoiseSpec.parse(text)
    with pytest.raises(SystemExit):
        options(["--rate", "1000", "--noise", text])


def test_noise_does_not_apply_to_memory(capsys):
    with pytest.raises(SystemExit):
        options(["--memory", "--noise", "2/10"])
    assert "--noise applies to the loads" in capsys.readouterr().err


def test_spinners_take_their_share_of_each_cpu_at_realtime_priority():
    need_tool(fifo_allowed(), "SCHED_FIFO needs root or CAP_SYS_NICE")
    cpus = sorted(os.sched_getaffinity(0))

    async def measure() -> tuple[list[int], list[float]]:
        async with Noise(NoiseSpec(2, 10)) as noise:
            pids = [p.pid for p in noise.procs]
            policies = [os.sched_getscheduler(pid) for pid in pids]
            affinities = [os.sched_getaffinity(pid) for pid in pids]
            before = [cpu_seconds(pid) for pid in pids]
            await asyncio.sleep(1.5)
            used = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
        assert policies == [os.SCHED_FIFO] * len(cpus)
        assert affinities == [{cpu} for cpu in cpus]
        return pids, used

    pids, used = asyncio.run(measure())
    for seconds in used:  # 2 ms of every 10: 0.3 s of 1.5 s, give or take the clock ticks
        assert 0.15 <= seconds <= 0.5, used
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)  # stopped with the block


def test_a_spinner_stops_when_its_parent_is_gone():
    need_tool(fifo_allowed(), "SCHED_FIFO needs root or CAP_SYS_NICE")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "bench.noise", "--cpu", "0", "--busy", "1", "--period", "10",
                           "--parent", "1"], cwd=ROOT, timeout=10)  # pid 1 is not its parent
    assert done.returncode == 0
    assert time.monotonic() - started < 5


def test_without_the_right_to_realtime_the_bench_says_so():
    need_tool(os.geteuid() == 0 and shutil.which("setpriv") is not None, "needs root and setpriv to drop it")
    unprivileged = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                    "--bounding-set=-all"]
    done = subprocess.run([*unprivileged, sys.executable, "-m", "bench.noise", "--cpu", "0", "--busy", "1",
                           "--period", "10", "--parent", str(os.getpid())], cwd=ROOT, capture_output=True,
                          text=True, timeout=10)
    assert done.returncode == 2
    assert "needs the right to run at SCHED_FIFO" in done.stderr


def slow_start(monkeypatch, seconds: float, command: list[str] | None = None) -> None:
    """Spinners (or ``command`` instead) that start ``seconds`` late, as on a loaded machine."""
    real_popen = subprocess.Popen

    def late(cmd, **kwargs):
        return real_popen(["sh", "-c", f'sleep {seconds}; exec "$0" "$@"', *(command or cmd)], **kwargs)

    monkeypatch.setattr("bench.noise.subprocess.Popen", late)


def test_the_block_starts_only_once_every_spinner_runs_at_its_priority(monkeypatch):
    need_tool(fifo_allowed(), "SCHED_FIFO needs root or CAP_SYS_NICE")
    slow_start(monkeypatch, 0.6)

    async def policies() -> list[int]:
        async with Noise(NoiseSpec(1, 10)) as noise:
            return [os.sched_getscheduler(p.pid) for p in noise.procs]

    assert asyncio.run(policies()) == [os.SCHED_FIFO] * len(os.sched_getaffinity(0))


@pytest.mark.parametrize("late", [0, 0.6])
def test_a_refused_spinner_fails_the_noise_with_its_message(monkeypatch, late):
    # The unprivileged case in process: every spinner exits with its error, at once or after a slow start.
    slow_start(monkeypatch, late, [sys.executable, "-c", "import sys; sys.exit('refused for the test')"])
    noise = Noise(NoiseSpec(20, 40), cpus=[0])

    async def enter() -> None:
        async with noise:
            pass

    with pytest.raises(NoiseUnavailable, match="refused for the test"):
        asyncio.run(enter())
    assert noise.procs == []
