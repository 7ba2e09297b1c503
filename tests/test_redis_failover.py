"""Failover under load on the Redis Cluster store: two `chf serve` nodes on one 6-node cluster, Gy sessions
spread over both (CCR-I, CCR-U with usage, CCR-T), and in the middle of the run

- a Redis primary is killed (SIGKILL): the cluster promotes its replica; until the killed node is back as the new
  primary's replica, WAIT cannot be confirmed and its partitions answer 3004; then
- one chf node is killed mid-request (SIGKILL): its clients go on with the other node, which finds their sessions.

A client retries each request (same Session-Id and CC-Request-Number, on the other node after a lost connection)
until it is answered. Afterwards every acknowledged debit is in the store exactly once (one usage event per
answered request that reported usage, nothing charged twice) and every balance equals its opening value plus its
events (tests/corekit.check_invariants)."""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gy.client import DiameterClient, Mscc, ccr_avps
from gy.codec import find
from tests.corekit import T0, World, check_invariants
from tests.redis_cluster import RedisCluster
from tests.support import FIXTURES, REPO, free_port, require_tool

pytestmark = [pytest.mark.interop, pytest.mark.slow]

USED = 400  # bytes reported per CCR-U (a grant is 1000)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    require_tool("redis-server")
    c = RedisCluster().start()
    yield c
    c.stop()


class Node:
    def __init__(self, home: Path, cluster: RedisCluster, namespace: str) -> None:
        self.home = home
        home.mkdir()
        self.port = free_port()
        nodes = ", ".join(f'"{a}"' for a in cluster.addresses)
        self.config = home / "chf.toml"
        self.config.write_text(
            f"""
[chf]
data_dir = "{home}"
catalogue = "{FIXTURES / "core.toml"}"
log_level = "warning"

[store]
backend = "redis-cluster"
nodes = [{nodes}]
namespace = "{namespace}"
partitions = 8
wait_timeout = 0.5
op_timeout = 2.0

[gy]
listen = "127.0.0.1"
port = {self.port}
origin_host = "chf-{home.name}.test"
origin_realm = "test"
allow_unknown_peers = true
""",
            encoding="utf-8",
        )
        command = [sys.executable, "-c", "from tools.cli import main; raise SystemExit(main())", "serve"]
        self.proc = subprocess.Popen([*command, "--config", str(self.config)], cwd=REPO)
        deadline = time.monotonic() + 60
        while not (home / "chf.pid").exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, "chf serve did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


class Load:
    """Sessions that each keep one request in flight, retried until answered; acknowledged usage recorded."""

    def __init__(self, nodes: list[Node], imsis: list[str]) -> None:
        self.nodes = nodes
        self.imsis = imsis
        self.acked: dict[str, list[int]] = {}  # session -> used bytes of each answered CCR-U/T (2001)
        self.codes: dict[int, int] = {}
        self.stop = False
        self.retries = 0

    async def _client(self, n: int) -> DiameterClient:
        for _ in range(100):
            node = self.nodes[n % len(self.nodes)]
            n += 1
            if node.proc.poll() is not None:
                continue
            try:
                # An Origin-Host of its own: (Origin-Host, End-to-End-Id) names a request (RFC 6733), and each
                # client numbers its End-to-End-Ids from the same start.
                host = f"pgw-{secrets.token_hex(4)}.test"
                client, _ = await DiameterClient.connect("127.0.0.1", node.port, host, "test")
                return client
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("no chf node to connect to")

    async def _answered(self, state: dict[str, Any], avps: list[bytes]) -> int:
        """Send until answered with something else than 3004 (another node after a lost connection)."""
        while True:
            try:
                cca = await asyncio.wait_for(state["client"].ccr(avps), 15)
                result = find(cca.avps, 268)
                assert result is not None
                code = int(result.u32())
            except (TimeoutError, ConnectionError, OSError):
                self.retries += 1
                state["client"].close()
                state["node"] += 1
                state["client"] = await self._client(state["node"])
                continue
            self.codes[code] = self.codes.get(code, 0) + 1
            if code == 3004:
                self.retries += 1
                await asyncio.sleep(0.05)
                continue
            return code

    async def session(self, index: int) -> None:
        sid = f"pgw.test;{index};{secrets.token_hex(3)}"
        imsi = self.imsis[index % len(self.imsis)]
        state: dict[str, Any] = {"node": index, "client": await self._client(index)}
        used: list[int] = []
        self.acked[sid] = used

        def ccr(kind: int, number: int, mscc: list[Mscc], **kw: Any) -> list[bytes]:
            return ccr_avps(sid, kind, number, origin_host="pgw.test", origin_realm="test", mscc=mscc, **kw)

        assert await self._answered(state, ccr(1, 0, [Mscc(10, {})], imsi=imsi)) == 2001
        number = 1
        while not self.stop:
            mscc = [Mscc(10, {}, used=[{"bytes": USED}])]
            if await self._answered(state, ccr(2, number, mscc)) == 2001:
                used.append(USED)
            number += 1
        if await self._answered(state, ccr(3, number, [Mscc(10, used=[{"bytes": 10}])])) == 2001:
            used.append(10)
        state["client"].close()


def test_no_acknowledged_debit_lost_and_none_twice_across_failovers(cluster: RedisCluster, tmp_path: Path) -> None:
    namespace = "fo" + secrets.token_hex(4)
    world = World(tmp_path / "w", opener=lambda: cluster.store(namespace=namespace), now=int(time.time()))
    world.tenant()
    imsis = []
    for a in range(4):
        world.account(f"acct{a}", balance=10**12)
        for _ in range(2):
            imsis.append(world.line(f"acct{a}", plan="payg")[1])
    nodes = [Node(tmp_path / f"n{i}", cluster, namespace) for i in range(2)]
    load = Load(nodes, imsis)
    victim_primary = cluster.primaries()[0]
    try:

        async def run() -> None:
            tasks = [asyncio.create_task(load.session(i)) for i in range(16)]
            await asyncio.sleep(2)
            victim_primary.kill()  # a Redis primary dies: its replica is promoted
            await asyncio.sleep(3)
            victim_primary.start()  # back, as the new primary's replica: WAIT is confirmed again
            await asyncio.sleep(3)
            nodes[0].proc.kill()  # a chf node dies mid-request: its clients go on with the other
            await asyncio.sleep(3)
            load.stop = True
            await asyncio.wait_for(asyncio.gather(*tasks), 120)

        asyncio.run(run())
    finally:
        for node in nodes:
            node.stop()
    assert load.retries > 0  # the failovers were felt
    answered = sum(len(v) for v in load.acked.values())
    assert answered > 50, load.codes
    with world.store.read() as txn:
        check_invariants(txn)
        usage: dict[str, list[int]] = {}
        for event in txn.events():
            sid = str(event.get("session")).removeprefix("gy:")  # the Gy front-end's session keys
            if event["kind"] == "usage" and sid in load.acked:
                usage.setdefault(sid, []).append(event["used"])
    for sid, used in load.acked.items():
        # Every acknowledged report is charged, once: a retry of one already committed got the stored answer.
        assert sorted(usage.get(sid, [])) == sorted(used), sid
    world.close()
    assert time.time() > T0
