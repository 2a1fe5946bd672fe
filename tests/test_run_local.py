"""`make run`'s launcher: Redis, chatsvc and gateway come up, serve, and stop cleanly on Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.procs import ROOT, children, redis_server_binary, wait_port, wakeups

EPHEMERAL_LOW = 32768  # Linux's default ip_local_port_range starts here


def fixed_ports(n: int) -> list[int]:
    """``n`` consecutive free ports below the ephemeral range.

    The launcher gives the chatsvc instances consecutive ports and starts them one after another.
    A port from ``free_port()`` is an ephemeral one: by the time the second instance binds
    ``port + 1``, the first one's outgoing Redis connections (or any other process's) may hold it
    as their local port. Ports below the ephemeral range are never handed out that way.
    """
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, EPHEMERAL_LOW - n)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + n):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return list(range(base, base + n))
    raise RuntimeError("no block of free ports below the ephemeral range")


def stop_launcher(proc: subprocess.Popen[str]) -> None:
    """After a failed check: Ctrl-C, so that the launcher stops its children. They run in sessions
    of their own and would outlive a SIGKILL of the launcher."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize("instances,workers", [(1, 1), (2, 2)])
def test_make_run_serves_and_stops_on_ctrl_c(tmp_path, instances, workers):
    assert redis_server_binary() is not None
    svc, *_, gw, rd = fixed_ports(instances + 2)  # chatsvc instances on svc, svc + 1, ...
    env = {**os.environ, "GATEWAY_PORT": str(gw), "CHATSVC_PORT": str(svc), "REDIS_PORT": str(rd),
           "VAR_DIR": str(tmp_path), "CHATSVC_INSTANCES": str(instances), "GATEWAY_WORKERS": str(workers)}
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen([sys.executable, "scripts/run_local.py"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        try:
            wait_port(gw, proc, timeout=30)
        except RuntimeError:
            proc.kill()
            raise RuntimeError(f"make run did not start:\n{proc.communicate()[0]}") from None
        time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{gw}/ping", timeout=5) as r:
            assert json.load(r) == {"message": "pong"}
        body = json.dumps({"Chat": "alice:bob", "Text": "hi", "Sender": "alice"}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{gw}/api/send", body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.load(r) == {"status": "success"}
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        stop_launcher(proc)
    assert proc.returncode == 0, out
    assert out.count("stopped (exit code 0)") == 2 + instances, out  # redis, each chatsvc, gateway
    assert (tmp_path / "redis" / "appendonlydir").is_dir()  # the embedded Redis keeps an AOF


def test_make_run_sleeps_until_a_child_exits_then_stops_the_rest(tmp_path):
    """The launcher waits for its children instead of polling them (it woke five times a second),
    and still notices at once when one exits by itself."""
    svc, gw, rd = fixed_ports(3)
    env = {**os.environ, "GATEWAY_PORT": str(gw), "CHATSVC_PORT": str(svc), "REDIS_PORT": str(rd),
           "VAR_DIR": str(tmp_path), "CHATSVC_INSTANCES": "1", "GATEWAY_WORKERS": "1"}
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen([sys.executable, "scripts/run_local.py"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(gw, proc, timeout=30)
        time.sleep(0.3)
        before = wakeups(proc.pid)
        time.sleep(1.0)
        assert wakeups(proc.pid) - before <= 1
        chatsvc = [pid for pid in children(proc.pid)
                   if b"chatsvc" in open(f"/proc/{pid}/cmdline", "rb").read()]
        assert len(chatsvc) == 1
        os.kill(chatsvc[0], signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        stop_launcher(proc)
    assert "chatsvc exited with code -9; stopping the rest" in out, out
    assert out.count("stopped (exit code 0)") == 2, out  # the gateway and Redis, in order
    assert proc.returncode == 1, out
