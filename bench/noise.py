"""Emulated CPU contention for the fixed-rate tail: ``make bench ARGS="--rate 1000 --noise 2/10"``.

On a shared VM the tail at a fixed rate follows the machine: the host takes a vCPU away for
milliseconds at a time, and kernel threads such as kdamond hold one for up to 4 ms
(docs/performance.md). That noise comes and goes by the hour, so runs an hour apart cannot be
compared, and a change meant to make the tail less sensitive to it cannot be measured. ``Noise``
is a repeatable stand-in: on each CPU a process at real-time priority (``SCHED_FIFO``, which no
ordinary process preempts) spins for BUSY ms every PERIOD ms, each CPU at its own random phase.
The bench runs it during every round of every target, so all of them get the same disturbance.

It needs the right to use ``SCHED_FIFO`` (root, or ``CAP_SYS_NICE``); without it the bench stops
with an error rather than measure a weaker disturbance. A spinner stops when its parent is gone,
and at most half of each period is taken.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from types import TracebackType

from bench.system import ROOT

START_TIMEOUT_S = 10.0  # for every spinner to be at its priority (a loaded machine starts Python slowly)
FIFO_PRIORITY = 1
READY = b"ready\n"  # a spinner's line on stdout once it runs on its CPU at SCHED_FIFO


class NoiseUnavailable(Exception):
    """The spinners could not run at real-time priority."""


@dataclass(frozen=True)
class NoiseSpec:
    busy_ms: float
    period_ms: float

    @classmethod
    def parse(cls, text: str) -> NoiseSpec:
        """``BUSY/PERIOD`` in milliseconds, e.g. ``2/10``."""
        busy, _, period = text.partition("/")  # no "/": period is "", refused below
        try:
            spec = cls(float(busy), float(period))
        except ValueError:
            raise ValueError(f"expected BUSY/PERIOD in milliseconds (e.g. 2/10), got {text!r}") from None
        if spec.busy_ms <= 0 or spec.period_ms < 2 * spec.busy_ms:
            raise ValueError(f"expected 0 < BUSY <= PERIOD / 2 (milliseconds), got {text!r}")
        return spec

    def describe(self) -> str:
        return f"{self.busy_ms:g} ms of every {self.period_ms:g} ms on each CPU, at SCHED_FIFO"


class Noise:
    """One spinner per CPU for the duration of an ``async with`` block."""

    def __init__(self, spec: NoiseSpec, cpus: Collection[int] | None = None) -> None:
        self.spec = spec
        self.cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))  # those it may use
        self.procs: list[subprocess.Popen[bytes]] = []

    async def __aenter__(self) -> Noise:
        """Returns once every spinner runs at its priority, so that the first round has the whole
        disturbance; raises NoiseUnavailable if one cannot."""
        for cpu in self.cpus:
            cmd = [sys.executable, "-m", "bench.noise", "--cpu", str(cpu), "--busy", str(self.spec.busy_ms),
                   "--period", str(self.spec.period_ms), "--parent", str(os.getpid())]
            self.procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        try:
            lines = await asyncio.wait_for(asyncio.gather(*(self._first_line(p) for p in self.procs)),
                                           START_TIMEOUT_S)
        except TimeoutError:
            self.stop()
            raise NoiseUnavailable(f"the spinners were not running within {START_TIMEOUT_S:g} s") from None
        except BaseException:  # cancelled (Ctrl-C): no spinner outlives the block
            self.stop()
            raise
        for p, line in zip(self.procs, lines, strict=True):
            if line != READY:  # it exited: its error is on stderr
                message = p.communicate()[1].decode(errors="replace").strip()
                self.stop()
                raise NoiseUnavailable(message or f"a spinner exited with code {p.returncode}")
        return self

    @staticmethod
    async def _first_line(proc: subprocess.Popen[bytes]) -> bytes:
        assert proc.stdout is not None
        return await asyncio.to_thread(proc.stdout.readline)  # b"" once it exits; stop() ends a wait

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            p.wait()
            for pipe in (p.stdout, p.stderr):
                if pipe is not None:
                    pipe.close()
        self.procs.clear()


def spin(cpu: int, busy_s: float, period_s: float, parent: int) -> None:
    """On ``cpu``, at real-time priority: busy for ``busy_s`` of every ``period_s``, until ``parent``
    is gone (or SIGTERM)."""
    os.sched_setaffinity(0, {cpu})
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(FIFO_PRIORITY))
    sys.stdout.buffer.write(READY)
    sys.stdout.buffer.flush()
    time.sleep(random.random() * period_s)
    clock = time.monotonic
    while os.getppid() == parent:
        started = clock()
        while clock() - started < busy_s:
            pass
        time.sleep(period_s - busy_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.noise", description="one spinner (see bench.noise)")
    p.add_argument("--cpu", type=int, required=True)
    p.add_argument("--busy", type=float, required=True, help="ms")
    p.add_argument("--period", type=float, required=True, help="ms")
    p.add_argument("--parent", type=int, required=True, help="stop when this process is no longer the parent")
    a = p.parse_args(argv)
    try:
        spec = NoiseSpec.parse(f"{a.busy}/{a.period}")  # the bounds of the bench's option
    except ValueError as exc:
        p.error(str(exc))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        spin(a.cpu, spec.busy_ms / 1000, spec.period_ms / 1000, a.parent)
    except PermissionError:
        print("--noise needs the right to run at SCHED_FIFO priority (root or CAP_SYS_NICE)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
