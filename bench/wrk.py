"""Run wrk with bench/send.lua or bench/pull.lua and parse the SUMMARY line their done() prints."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

from bench.stats import Measurement
from bench.workload import PULL_CHAT, HttpLoad

HERE = Path(__file__).resolve().parent
_SUMMARY = re.compile(
    r"^SUMMARY req/s=(?P<rps>[\d.]+) p50=(?P<p50>[\d.]+)ms p90=(?P<p90>[\d.]+)ms p99=(?P<p99>[\d.]+)ms "
    r"max=(?P<max>[\d.]+)ms non2xx=(?P<non2xx>\d+) sockerr=(?P<sockerr>\d+) requests=(?P<requests>\d+) "
    r"duration=(?P<duration>[\d.]+)s$", re.MULTILINE)


class WrkFailed(RuntimeError):
    pass


def binary() -> str | None:
    return shutil.which("wrk")


def parse_summary(output: str) -> Measurement:
    match = _SUMMARY.search(output)
    if match is None:
        raise WrkFailed(f"no SUMMARY line in wrk's output:\n{output[-2000:]}")
    g = match.groupdict()
    return Measurement(requests=int(g["requests"]), duration_s=float(g["duration"]), p50_ms=float(g["p50"]),
                       p90_ms=float(g["p90"]), p99_ms=float(g["p99"]), max_ms=float(g["max"]),
                       errors=int(g["non2xx"]), sockerr=int(g["sockerr"]))


async def run(wrk: str, base: str, load: HttpLoad, conns: int, duration: float, threads: int = 1) -> Measurement:
    """``wrk -t1 -c<conns> -d<duration>s --latency -s <script> <base><path>`` (wrk takes whole seconds)."""
    args = [wrk, f"-t{threads}", f"-c{conns}", f"-d{max(1, round(duration))}s", "--latency",
            "-s", str(HERE / load.script), base + load.path]
    env = {**os.environ, "PULL_CHAT": PULL_CHAT}
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, env=env)
    try:
        out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:  # cancelled (Ctrl-C): do not leave wrk running
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise WrkFailed(f"wrk exited with {proc.returncode}:\n{text[-2000:]}")
    return parse_summary(text)
