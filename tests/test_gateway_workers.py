"""GATEWAY_WORKERS: several gateway processes on one port, supervised as one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from tests.procs import children, start_gateway, wakeups


def wait_for(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def gateway2(logdir, chatsvc_proc):
    proc = start_gateway(logdir, chatsvc_proc.addr, None, "--workers", "2")
    assert wait_for(lambda: len(children(proc.popen.pid)) == 2)
    yield proc
    workers = children(proc.popen.pid)  # before the supervisor dies: then they are init's
    proc.kill()
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_two_workers_serve_one_port_and_stop_cleanly(gateway2, redis_url):
    for i in range(20):  # fresh connections: the kernel spreads them over both workers
        body = json.dumps({"Chat": "w:x", "Text": f"t{i}", "Sender": "w"}).encode()
        req = urllib.request.Request(f"http://{gateway2.addr}/api/send", body, method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
    with urllib.request.urlopen(f"http://{gateway2.addr}/api/pull?chat=w:x&limit=50", timeout=5) as r:
        assert len(json.load(r)["messages"]) == 20
    workers = children(gateway2.popen.pid)
    assert gateway2.stop(signal.SIGTERM) == 0
    assert wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers))


def test_a_dead_worker_stops_the_gateway_with_an_error(gateway2):
    first, second = children(gateway2.popen.pid)
    os.kill(first, signal.SIGKILL)
    assert gateway2.popen.wait(10) == 1
    assert wait_for(lambda: not Path(f"/proc/{second}").exists())


def test_the_supervisor_sleeps_while_its_workers_serve(gateway2):
    """It waits for a worker to exit instead of polling them (it woke ten times a second)."""
    supervisor = gateway2.popen.pid
    before = wakeups(supervisor)
    for _ in range(10):
        with urllib.request.urlopen(f"http://{gateway2.addr}/ping", timeout=5) as r:
            assert r.status == 200
        time.sleep(0.1)
    assert wakeups(supervisor) - before <= 1
