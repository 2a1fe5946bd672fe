"""``GATEWAY_WORKERS=N``: N gateway processes sharing one port with ``SO_REUSEPORT``.

The kernel spreads new connections over the workers. This process only supervises: it forwards
SIGINT/SIGTERM to every worker (each drains its requests) and, if one worker dies, stops the rest
and exits non-zero so that the process manager restarts the whole gateway.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import Sequence

from chatsvc.runtime import wait_for_child_exit

log = logging.getLogger("gateway")


def supervise(argv: Sequence[str], workers: int) -> int:
    cmd = [sys.executable, "-m", "gateway", *argv, "--workers", "1", "--reuse-port", "true"]
    procs = [subprocess.Popen(cmd) for _ in range(workers)]
    pids = {p.pid for p in procs}
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    log.info("gateway supervisor: %d workers (pids %s)", workers, ", ".join(str(p.pid) for p in procs))
    while any(p.poll() is None for p in procs):
        if not stopping and any(p.poll() is not None for p in procs):
            log.error("a gateway worker exited; stopping the others")
            stop(signal.SIGTERM, None)
        wait_for_child_exit(pids)
    codes = [p.returncode for p in procs]
    return 0 if stopping and all(c in (0, -signal.SIGTERM) for c in codes) else 1
