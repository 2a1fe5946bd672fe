"""`make run`'s launcher: Redis, chatsvc and gateway come up, serve, and stop cleanly on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.procs import ROOT, free_port, redis_server_binary, wait_port


@pytest.mark.parametrize("instances,workers", [(1, 1), (2, 2)])
def test_make_run_serves_and_stops_on_ctrl_c(tmp_path, instances, workers):
    assert redis_server_binary() is not None
    gw, svc, rd = free_port(), free_port(), free_port()
    while svc + 1 in (gw, rd):
        svc = free_port()
    env = {**os.environ, "GATEWAY_PORT": str(gw), "CHATSVC_PORT": str(svc), "REDIS_PORT": str(rd),
           "VAR_DIR": str(tmp_path), "CHATSVC_INSTANCES": str(instances), "GATEWAY_WORKERS": str(workers)}
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen([sys.executable, "scripts/run_local.py"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(gw, proc, timeout=30)
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
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert out.count("stopped (exit code 0)") == 2 + instances, out  # redis, each chatsvc, gateway
    assert (tmp_path / "redis" / "appendonlydir").is_dir()  # the embedded Redis keeps an AOF
