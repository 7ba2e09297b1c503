"""A real Redis Cluster on loopback for the tests and the benchmarks: 3 primaries and 3 replicas (Debian's
redis-server 7), created with `redis-cli --cluster create`, each node with `appendonly yes` and
`appendfsync always` in a temporary directory, on free ports. Stopped (and its files removed) by `stop()`.

The suite starts one cluster per session (tests/conftest.py: the `redis_cluster` fixture); each test gets a store
of its own under a fresh namespace (`RedisCluster.store()`).
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too; Redis refuses ports above 55535."""
    for _ in range(1000):
        port = random.randrange(20000, 45000)
        if all(_free(port + d) for d in (0, 10000)):
            return port
    raise RuntimeError("no free port pair for a Redis cluster node")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisNode:
    def __init__(self, server: str, root: Path, port: int, password: str | None) -> None:
        self.server = server
        self.port = port
        self.dir = root / str(port)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [
            self.server,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "1000",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
            "--protected-mode", "no",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
        self.proc = None


class RedisCluster:
    """Six redis-server processes joined into one cluster (3 primaries, 3 replicas)."""

    def __init__(self, password: str | None = None, nodes: int = 6) -> None:
        self.server = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/sbin") or ""
        self.cli = shutil.which("redis-cli") or ""
        self.root = Path(tempfile.mkdtemp(prefix="chf-redis-"))
        self.password = password
        self.nodes = [RedisNode(self.server, self.root, cluster_port(), password) for _ in range(nodes)]

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    def start(self) -> RedisCluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            self._wait_ping(node)
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        subprocess.run(
            [self.cli, *auth, "--cluster", "create", *self.addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        self.wait_ok()

    def redis_cli(self, node: RedisNode, *args: str, timeout: float = 10) -> str:
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        out = subprocess.run(
            [self.cli, *auth, "-p", str(node.port), *args], capture_output=True, text=True, timeout=timeout
        )
        return out.stdout

    def _wait_ping(self, node: RedisNode, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "PONG" in self.redis_cli(node, "PING"):
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on {node.address} did not start (see {node.dir / 'redis.log'})")

    def wait_ok(self, timeout: float = 30, replicas: bool = True) -> None:
        """Until every live node says cluster_state:ok (and, with `replicas`, every primary has a replica)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [n for n in self.nodes if n.proc is not None]
            ok = all("cluster_state:ok" in self.redis_cli(n, "CLUSTER", "INFO") for n in live)
            if ok and (not replicas or self._replicated(live)):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis cluster did not become ready")

    def _replicated(self, live: list[RedisNode]) -> bool:
        """Every primary has a replica whose link is up (state=online)."""
        primaries = 0
        for node in live:
            info = self.redis_cli(node, "INFO", "replication")
            if "role:master" in info:
                primaries += 1
                if "state=online" not in info:
                    return False
        return primaries > 0

    def primaries(self) -> list[RedisNode]:
        out = []
        for node in self.nodes:
            if node.proc is not None and "role:master" in self.redis_cli(node, "INFO", "replication"):
                out.append(node)
        return out

    def primary_of_slot(self, slot: int) -> RedisNode:
        text = self.redis_cli(self.nodes[0], "CLUSTER", "NODES")
        for line in text.splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for rng in fields[8:]:
                low, _, high = rng.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    port = int(fields[1].split(":")[1].split("@")[0])
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no primary serves slot {slot}")

    def store(self, **kwargs: Any) -> Any:
        """A store of its own on this cluster (a fresh namespace)."""
        from store.redisstore import RedisStore

        kwargs.setdefault("partitions", 8)
        kwargs.setdefault("namespace", "t" + secrets.token_hex(4))
        if self.password:
            kwargs.setdefault("password", self.password)
        return RedisStore(self.addresses, **kwargs)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill(signal.SIGTERM if node.proc is not None else signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def available() -> bool:
    return bool(shutil.which("redis-server") or os.path.exists("/usr/bin/redis-server")) and bool(
        shutil.which("redis-cli")
    )
