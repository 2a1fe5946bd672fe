"""A real Redis Cluster for tests: 3 masters + 3 replicas of Debian's redis-server on loopback.

``start_cluster`` starts six ``redis-server --cluster-enabled yes`` processes on free ports (each
with its own cluster bus port, so nothing depends on ``port + 10000`` being free), joins them with
``redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`` and waits until every node
reports ``cluster_state:ok`` and every replica ``master_link_status:up``.

Fixtures: ``redis_cluster`` (one per session) and ``cluster_url`` (that cluster, flushed: every
master's keys deleted). Under CI=true a missing ``redis-server`` or ``redis-cli`` fails the test
(``tests.procs.need_tool``); locally it skips.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.procs import Proc, free_port, need_tool, spawn

NODE_TIMEOUT_MS = 1000
HEALTHY_TIMEOUT = 30.0


@dataclass(frozen=True)
class NodeInfo:
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    role: str  # "master" or "replica"
    master_id: str | None  # a replica's master
    failed: bool
    slots: tuple[tuple[int, int], ...]


def _ports_of(address: str) -> int:
    # "127.0.0.1:7000@17000" (Redis 7 may add ",hostname")
    return int(address.split("@")[0].rsplit(":", 1)[1])


def parse_cluster_nodes(text: str) -> list[NodeInfo]:
    nodes = []
    for line in text.strip().splitlines():
        parts = line.split()
        node_id, address, flags, master = parts[0], parts[1], parts[2].split(","), parts[3]
        slots = []
        for spec in parts[8:]:
            if spec.startswith("["):
                continue  # a slot being migrated
            lo, _, hi = spec.partition("-")
            slots.append((int(lo), int(hi or lo)))
        role = "master" if "master" in flags else "replica"
        nodes.append(NodeInfo(node_id, _ports_of(address), role, None if master == "-" else master,
                              "fail" in flags or "fail?" in flags, tuple(slots)))
    return nodes


@dataclass
class Cluster:
    """Six redis-server processes forming one Redis Cluster; ``stop()`` kills them all."""

    logdir: Path
    datadir: Path
    nodes: dict[int, Proc] = field(default_factory=dict)  # port -> process

    @property
    def ports(self) -> list[int]:
        return sorted(self.nodes)

    @property
    def url(self) -> str:
        """chatsvc's REDIS_URL for this cluster: every node as a startup node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def alive(self) -> list[int]:
        return [p for p, proc in sorted(self.nodes.items()) if proc.popen.poll() is None]

    def client(self, port: int) -> redis.Redis:
        """A plain client of one node; CLUSTER NODES and CLUSTER INFO come back as raw text."""
        c = redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=2,
                        socket_connect_timeout=1)
        for command in ("CLUSTER NODES", "CLUSTER INFO"):
            c.set_response_callback(command, lambda response, **options: response)
        return c

    def topology(self) -> list[NodeInfo]:
        """CLUSTER NODES as seen by the first live node."""
        last: Exception | None = None
        for port in self.alive():
            try:
                with self.client(port) as c:
                    return parse_cluster_nodes(c.execute_command("CLUSTER NODES"))
            except redis.RedisError as exc:
                last = exc
        raise RuntimeError(f"no live cluster node answers CLUSTER NODES: {last}")

    def masters(self) -> list[int]:
        """Ports of the masters that serve slots and are not failed."""
        return sorted(n.port for n in self.topology() if n.role == "master" and n.slots and not n.failed)

    def master_of_key(self, key: str) -> int:
        """The port of the master that holds ``key``'s slot (CLUSTER KEYSLOT, then the slot map)."""
        port = self.alive()[0]
        with self.client(port) as c:
            slot = int(c.execute_command("CLUSTER KEYSLOT", key))
        for node in self.topology():
            if node.role == "master" and not node.failed and any(lo <= slot <= hi for lo, hi in node.slots):
                return node.port
        raise LookupError(f"no master holds slot {slot}")

    def replica_of(self, master_port: int) -> int:
        nodes = self.topology()
        master_id = next(n.node_id for n in nodes if n.port == master_port)
        return next(n.port for n in nodes if n.master_id == master_id and n.port in self.alive())

    def wait_healthy(self, timeout: float = HEALTHY_TIMEOUT, masters: int = 3) -> None:
        """Every live node: cluster_state:ok, all slots assigned, the same view of ``masters``
        serving masters; every live replica: master_link_status:up."""
        deadline = time.monotonic() + timeout
        problem = "not checked"
        while time.monotonic() < deadline:
            problem = self._health_problem(masters)
            if problem is None:
                return
            time.sleep(0.1)
        raise TimeoutError(f"cluster not healthy after {timeout}s: {problem}\n{self.logs()}")

    def _health_problem(self, masters: int) -> str | None:
        live = self.alive()
        for port in live:
            try:
                with self.client(port) as c:
                    info = c.execute_command("CLUSTER INFO")
                    if "cluster_state:ok" not in info or "cluster_slots_assigned:16384" not in info:
                        return f"{port}: {info.splitlines()[:2]}"
                    view = parse_cluster_nodes(c.execute_command("CLUSTER NODES"))
                    serving = [n for n in view if n.role == "master" and n.slots and not n.failed]
                    if len(serving) != masters:
                        return f"{port} sees {len(serving)} serving masters"
                    if any(n.failed and n.port in live for n in view):
                        return f"{port} still flags a live node as failed"
                    me = next(n for n in view if n.port == port)
                    if me.role == "replica":
                        repl = c.info("replication")
                        if repl.get("master_link_status") != "up":
                            return f"replica {port}: master_link_status {repl.get('master_link_status')}"
            except redis.RedisError as exc:
                return f"{port}: {exc}"
        return None

    def flushall(self) -> None:
        for port in self.masters():
            with self.client(port) as c:
                c.flushall()
                c.script_flush()

    def kill(self, port: int) -> None:
        self.nodes[port].kill()

    def restart(self, port: int) -> Proc:
        """Start a killed node again with its arguments, data dir and nodes.conf: it rejoins."""
        old = self.nodes[port]
        self.nodes[port] = spawn(old.args, port, self.logdir, "redis-cluster")
        return self.nodes[port]

    def logs(self) -> str:
        return "\n".join(f"--- redis {p} (exit {proc.popen.poll()})\n{proc.output()[-1500:]}"
                         for p, proc in sorted(self.nodes.items()))

    def stop(self) -> None:
        for proc in self.nodes.values():
            proc.kill()


def cluster_tools() -> tuple[str, str]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    need_tool(server is not None and cli is not None,
              "redis-server and redis-cli not found (apt-get install redis-server)")
    assert server is not None and cli is not None
    return server, cli


def start_cluster(logdir: Path, masters: int = 3, replicas: int = 1, *extra: str) -> Cluster:
    """Start ``masters * (1 + replicas)`` nodes and create the cluster; returns it healthy."""
    server, cli = cluster_tools()
    datadir = Path(tempfile.mkdtemp(prefix="redis-cluster-", dir=logdir))
    cluster = Cluster(logdir, datadir)
    try:
        for _ in range(masters * (1 + replicas)):
            port = free_port()
            node_dir = datadir / str(port)
            node_dir.mkdir()
            args = [server, "--port", str(port), "--cluster-port", str(free_port()), "--bind", "127.0.0.1",
                    "--dir", str(node_dir), "--protected-mode", "no", "--save", "",
                    "--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--appendonly", "yes", *extra]
            cluster.nodes[port] = spawn(args, port, logdir, "redis-cluster")
        create = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in cluster.ports),
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout}\n{create.stderr}")
        cluster.wait_healthy(masters=masters)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def redis_cluster(logdir: Path) -> Iterator[Cluster]:
    cluster = start_cluster(logdir)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: Cluster) -> str:
    """chatsvc's REDIS_URL for the session's cluster, every master flushed."""
    with contextlib.suppress(TimeoutError):
        redis_cluster.wait_healthy(timeout=10)
    redis_cluster.flushall()
    return redis_cluster.url
