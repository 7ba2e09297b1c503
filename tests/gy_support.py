"""Shared pieces of the Gy tests: a real `chf serve` process core (tools.serve.run) on an ephemeral port,
a test catalogue, and provisioning through chf.provisioning."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chf.core import provisioning
from chf.runtime.config import Config, parse_config
from chf.runtime.service import ChargingService
from gy.client import DiameterClient
from gy.server import GyServer
from tests.support import SHARED, fixture_text, free_port
from tools.serve import run

REPO = Path(__file__).resolve().parents[1]
CAPTURES = SHARED / "captures"

CATALOGUE = fixture_text("gy.toml")


# The [store] section of the servers the Gy tests start: LMDB in the test's directory unless a test module sets
# another (tests/test_gy_server.py runs each test on LMDB and on the Redis cluster).
STORE_SECTION: str | None = None


def make_config(tmp: Path, port: int, *, gy: str = "", durability: str = "os") -> Config:
    catalogue = tmp / "catalogue.toml"
    if not catalogue.exists():
        catalogue.write_text(CATALOGUE)
    text = f"""
[chf]
data_dir = "{tmp}"
catalogue = "{catalogue}"
log_level = "warning"

{STORE_SECTION or _lmdb_section(tmp, durability)}

[gy]
listen = "127.0.0.1"
port = {port}
origin_host = "chf.test"
origin_realm = "test"
peers = [{{ host = "pgw.test", realm = "test" }}]
{gy}
"""
    return parse_config(text, str(tmp / "chf.toml"))


def _lmdb_section(tmp: Path, durability: str) -> str:
    return f"""[store]
path = "{tmp / "chf.lmdb"}"
durability = "{durability}"
map_size_mb = 64
"""


def redis_section(cluster: Any) -> str:
    """[store] on the test cluster, in a namespace of its own."""
    import secrets

    nodes = ", ".join(f'"{a}"' for a in cluster.addresses)
    return f"""[store]
backend = "redis-cluster"
nodes = [{nodes}]
namespace = "g{secrets.token_hex(5)}"
partitions = 8
"""


@dataclass
class Running:
    service: ChargingService
    port: int
    task: asyncio.Task[None]
    config: Config
    clients: list[DiameterClient] = field(default_factory=list)

    @property
    def gy(self) -> GyServer:
        handler = self.service.bus._handlers["gy"][0]
        server = getattr(handler, "__self__", None)  # the bound method GyServer subscribed
        assert isinstance(server, GyServer)
        return server

    async def client(self, origin_host: str = "pgw.test", realm: str = "test", **kw: Any) -> DiameterClient:
        client, cea = await DiameterClient.connect("127.0.0.1", self.port, origin_host, realm, **kw)
        result_code = None if cea is None else cea.find(268)
        assert cea is None or (result_code is not None and result_code.u32() == 2001)
        self.clients.append(client)
        return client

    async def op(self, fn: Any) -> Any:
        return (await self.service.operate(fn)).value


@contextlib.asynccontextmanager
async def running_server(tmp: Path, *, gy: str = "", port: int | None = None) -> AsyncIterator[Running]:
    port = port or free_port()
    config = make_config(tmp, port, gy=gy)
    ready: asyncio.Future[ChargingService] = asyncio.get_running_loop().create_future()

    def started(service: ChargingService) -> None:
        ready.set_result(service)

    task = asyncio.create_task(run(config, started=started))
    waiters: list[asyncio.Future[Any]] = [ready, task]
    done, _ = await asyncio.wait(waiters, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    running = Running(ready.result(), port, task, config)
    try:
        yield running
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # run() handles SIGTERM: the same shutdown path as `chf serve`
        await asyncio.wait_for(task, 30)
        for c in running.clients:
            c.close()


def provision(
    tenant: str = "t1",
    account: str = "a1",
    imsi: str = "208010000000001",
    msisdn: str | None = "33600000001",
    plan: str = "payg",
    balance: int = 10_000_000,
    currency: str = "EUR",
    state: str = "active",
) -> Any:
    """An operation for `service.operate`: tenant (if missing), account with a balance, one line on `plan`."""

    def op(txn: Any, engine: Any, now: int) -> Any:
        if txn.get_tenant(tenant) is None:
            provisioning.create_tenant(txn, tenant, tenant, currency, now)
        provisioning.create_account(
            txn,
            engine,
            account_id=account,
            tenant=tenant,
            payment="prepaid",
            now=now,
            balance=balance,
            currency=currency,
        )
        return provisioning.add_line(
            txn, engine, account=account, imsi=imsi, msisdn=msisdn, plan=plan, now=now, state=state
        )

    return op


def balance_of(running: Running, account: str) -> int:
    with running.service.read() as txn:
        acct = txn.get_account(account)
        assert acct is not None
        return int(acct.balance)


def line_buckets(running: Running, imsi: str) -> list[Any]:
    with running.service.read() as txn:
        sub = txn.subscriber_by("imsi", imsi)
        assert sub is not None
        bs = txn.get_line_balances(sub.id)
        return list(bs.buckets) if bs is not None else []
