"""``python -m bench`` (``make bench ARGS="..."``): see ``--help`` and docs/performance.md."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from bench.noise import NoiseSpec, NoiseUnavailable
from bench.runner import Options, run
from bench.system import ROOT, StartError, default_gateway_workers
from bench.workload import ProbeFailed
from bench.wrk import WrkFailed
from chatsvc.client import RPCError
from chatsvc.wire.framing import Transport

EPILOG = """\
modes (default: HTTP closed loop against the gateway, with wrk when installed):
  --rate R --clients C   fixed-rate open loop (latency from the scheduled send time)
  --thrift               chatsvc alone over Thrift (ChatClient), no HTTP
  --memory               Redis bytes per stored 100-byte message (fresh redis-server)

examples:
  python -m bench --duration 3 --rounds 1
  python -m bench --vs http://127.0.0.1:9080 --rounds 3
  python -m bench --vs http://127.0.0.1:9080 --vs-pid gateway=$(pgrep -f go-ref/bin/gateway) \
      --vs-pid rpcserver=$(pgrep -f go-ref/bin/rpcserver)
  python -m bench --url http://127.0.0.1:8080 --only pull
  python -m bench --rate 1000 --clients 20 --duration 10
  python -m bench --rate 1000 --noise 2/10 --vs http://127.0.0.1:9080
  python -m bench --thrift --chatsvc 127.0.0.1:8888
  python -m bench --redis-cluster 3 --vs http://127.0.0.1:9080 --rounds 5
"""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def noise_spec(text: str) -> NoiseSpec:
    try:
        return NoiseSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def named_pid(text: str) -> tuple[str, int]:
    """``NAME=PID`` of a running process."""
    name, sep, pid = text.partition("=")
    if not sep or not name or not pid.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=PID, got {text!r}")
    if not Path(f"/proc/{pid}").exists():
        raise argparse.ArgumentTypeError(f"no process {pid}")
    return name, int(pid)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Load tests of the chat gateway and chatsvc. Without --url it starts "
                                            "redis-server, chatsvc and the gateway on spare loopback ports and "
                                            "stops them at the end.")
    target = p.add_argument_group("targets")
    target.add_argument("--url", default=os.environ.get("GATEWAY_URL"),
                        help="benchmark this running gateway instead of starting one (env GATEWAY_URL)")
    target.add_argument("--vs", metavar="URL", help="a second gateway: same loads, interleaved rounds A B A B...")
    target.add_argument("--label", default="pychat", help="name of our target in tables and of the JSON file")
    target.add_argument("--vs-label", help="name of the --vs target (default: its host:port)")
    target.add_argument("--vs-pid", action="append", default=[], metavar="NAME=PID", type=named_pid,
                        help="a process of the --vs stack whose CPU is measured like the bench's own (with its "
                             "children), e.g. --vs-pid gateway=1234 --vs-pid rpcserver=1240; repeatable")
    target.add_argument("--chatsvc", metavar="HOST:PORT", help="with --thrift: a running chatsvc to target")
    target.add_argument("--transport", choices=[t.value for t in Transport], default=Transport.FRAMED.value,
                        help="with --thrift: the Thrift transport (buffered for an Apache Thrift Go server); "
                             "default framed, as the gateway")
    target.add_argument("--gateway-workers", type=positive_int, default=default_gateway_workers(),
                        help="gateway processes the bench starts (GATEWAY_WORKERS); default one per core "
                             "and one more (%(default)s here)")
    target.add_argument("--chatsvc-arg", action="append", default=[], metavar="ARG",
                        help="extra flag for the chatsvc the bench starts, e.g. --chatsvc-arg=--redis-batch=false")
    target.add_argument("--redis-cluster", type=positive_int, default=0, metavar="N",
                        help="start a Redis Cluster of N masters (at least 3; redis-server and redis-cli "
                             "from PATH) instead of one redis-server; chatsvc gets its redis+cluster:// URL")
    target.add_argument("--cluster-replicas", type=int, default=1, metavar="R",
                        help="with --redis-cluster: replicas per master; default 1")
    load = p.add_argument_group("load")
    load.add_argument("--only", choices=("send", "pull"), help="run one load only (default: send, then pull)")
    load.add_argument("--conns", type=positive_int, default=64,
                      help="connections (HTTP) or concurrent callers (--thrift); default 64")
    load.add_argument("--duration", type=positive_float, default=10.0, help="seconds per load run; default 10")
    load.add_argument("--rounds", type=positive_int, default=3, help="runs per load and target; default 3")
    load.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto",
                      help="HTTP closed-loop generator: wrk when installed (auto), or asyncio")
    modes = p.add_argument_group("modes (one at most)")
    mode = modes.add_mutually_exclusive_group()
    mode.add_argument("--rate", type=positive_float, help="fixed total rate in requests/s (open loop)")
    mode.add_argument("--thrift", action="store_true", help="benchmark chatsvc alone over Thrift")
    mode.add_argument("--memory", action="store_true", help="Redis memory per stored message")
    modes.add_argument("--clients", type=positive_int, default=20, help="with --rate: clients sharing it; default 20")
    modes.add_argument("--messages", type=positive_int, default=100_000,
                       help="with --memory: messages to store; default 100000")
    p.add_argument("--noise", type=noise_spec, metavar="BUSY/PERIOD",
                   help="emulated CPU contention during every round: on each CPU a real-time spinner busy for "
                        "BUSY ms of every PERIOD ms (e.g. 2/10; needs root or CAP_SYS_NICE)")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results",
                   help="output directory (default bench/results)")
    return p


def options(argv: Sequence[str] | None = None) -> Options:
    p = parser()
    a = p.parse_args(argv)
    mode = "rate" if a.rate else "thrift" if a.thrift else "memory" if a.memory else "http"
    if a.vs_pid and not a.vs:
        p.error("--vs-pid needs --vs")
    if a.vs and mode in ("thrift", "memory"):
        p.error(f"--vs compares gateways; it does not apply to --{mode}")
    if a.chatsvc and mode != "thrift":
        p.error("--chatsvc needs --thrift")
    if a.redis_cluster and (a.url or a.chatsvc or mode == "memory"):
        p.error("--redis-cluster applies to the system the bench starts (not with --url, --chatsvc or --memory)")
    if a.redis_cluster and a.redis_cluster < 3:
        p.error("--redis-cluster: a Redis Cluster needs at least 3 masters")
    if a.cluster_replicas < 0:
        p.error("--cluster-replicas must not be negative")
    if a.noise and mode == "memory":
        p.error("--noise applies to the loads, not to --memory")
    default_loads = ("send",) if mode == "rate" else ("send", "pull")
    return Options(mode=mode, loads=(a.only,) if a.only else default_loads, label=a.label, url=a.url, vs=a.vs,
                   vs_label=a.vs_label, vs_pids=tuple(a.vs_pid), chatsvc=a.chatsvc, transport=a.transport, conns=a.conns,
                   duration=a.duration, rounds=a.rounds, rate=a.rate or 0.0, clients=a.clients,
                   generator=a.generator, messages=a.messages, results_dir=a.results,
                   gateway_workers=a.gateway_workers, chatsvc_args=tuple(a.chatsvc_arg),
                   redis_cluster=a.redis_cluster, cluster_replicas=a.cluster_replicas, noise=a.noise)


def _terminate(signum: int, frame: FrameType | None) -> None:
    signal.raise_signal(signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    opts = options(argv)
    # Ctrl-C (even when started with SIGINT ignored, as by nohup or &) and SIGTERM both end up as
    # KeyboardInterrupt: asyncio's runner first cancels the running load (wrk is killed), then
    # System.__exit__ stops the processes the bench started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        run(opts)
    except KeyboardInterrupt:
        print("\ninterrupted: stopped the processes the bench started", file=sys.stderr)
        return 130
    except (ProbeFailed, StartError, WrkFailed, RPCError, NoiseUnavailable) as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
