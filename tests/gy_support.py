"""Shared pieces of the Gy tests: a real `chf serve` process core (tools.serve.run) on an ephemeral port,
a test catalogue, and provisioning through chf.provisioning."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chf.core import provisioning
from chf.runtime.config import Config, parse_config
from chf.runtime.service import ChargingService
from gy.client import DiameterClient
from gy.server import GyServer
from tools.serve import run

REPO = Path(__file__).resolve().parents[1]
CAPTURES = REPO.parent / "shared" / "captures"

CATALOGUE = textwrap.dedent(
    """
    [settings]
    currency = "EUR"
    timezone = "UTC"
    home_zone = "home"
    default_zone = "world"

    [grants]
    bytes = 1_000_000
    seconds = 600
    events = 1
    money = 2_000_000
    validity_time = 600
    volume_threshold_percent = 20
    time_threshold_percent = 20
    quota_holding_time = 0

    [grants.rating_groups."20"]
    quota_holding_time = 30

    # Rating groups of the Magma captures: the OCS there granted 2,000 octets at a time.
    [grants.rating_groups."1"]
    bytes = 2_000
    [grants.rating_groups."2"]
    bytes = 2_000
    [grants.rating_groups."3"]
    bytes = 2_000

    [zones]
    home = ["20801", "00101", "34001"]
    eu = ["26201"]

    [tariffs.data]
    unit = "bytes"
    block = 1_000_000
    rounding = "up"
    price = 10_000
      [tariffs.data.zones.world]
      deny = true

    [tariffs.voice]
    unit = "seconds"
    block = 60
    price = 100_000

    [tariffs.sms]
    unit = "events"
    price = 80_000

    [tariffs.money]
    unit = "money"
    price = 1

    [plans.payg]
    payment = "prepaid"
    overage = "charge"
      [plans.payg.rating]
      "20" = "voice"
      "40" = "sms"
      default = "data"

    [plans.capped]
    payment = "prepaid"
    overage = "deny"
      [plans.capped.rating]
      default = "data"
      [[plans.capped.allowances]]
      name = "data"
      unit = "bytes"
      amount = 2_500_000

    [plans.redirect]
    payment = "prepaid"
    overage = "redirect"
    redirect_address = "https://topup.example.net/"
      [plans.redirect.rating]
      default = "data"
      [[plans.redirect.allowances]]
      name = "data"
      unit = "bytes"
      amount = 1_500_000

    [plans.restrict]
    payment = "prepaid"
    overage = "restrict"
    filter_id = "throttle-64k"
    restriction_rules = ["permit out ip from any to 192.0.2.1"]
      [plans.restrict.rating]
      default = "data"
      [[plans.restrict.allowances]]
      name = "data"
      unit = "bytes"
      amount = 1_500_000

    [plans.data-only]
    payment = "prepaid"
    overage = "charge"
      [plans.data-only.rating]
      "10" = "data"

    # Sized against the usage in the Magma FUI captures (see test_gy_captures.py).
    [plans.capture-fui-1rg]
    payment = "prepaid"
    overage = "deny"
      [plans.capture-fui-1rg.rating]
      default = "data"
      [[plans.capture-fui-1rg.allowances]]
      name = "data"
      unit = "bytes"
      amount = 7_000

    [plans.capture-fui-2rg]
    payment = "prepaid"
    overage = "deny"
      [plans.capture-fui-2rg.rating]
      default = "data"
      [[plans.capture-fui-2rg.allowances]]
      name = "data"
      unit = "bytes"
      amount = 7_000

    [plans.wallet]
    payment = "prepaid"
    overage = "charge"
      [plans.wallet.rating]
      default = "money"
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(tmp: Path, port: int, *, gy: str = "", durability: str = "os") -> Config:
    catalogue = tmp / "catalogue.toml"
    if not catalogue.exists():
        catalogue.write_text(CATALOGUE)
    text = f"""
[chf]
data_dir = "{tmp}"
catalogue = "{catalogue}"
log_level = "warning"

[store]
path = "{tmp / "chf.lmdb"}"
durability = "{durability}"
map_size_mb = 64

[gy]
listen = "127.0.0.1"
port = {port}
origin_host = "chf.test"
origin_realm = "test"
peers = [{{ host = "pgw.test", realm = "test" }}]
{gy}
"""
    return parse_config(text, str(tmp / "chf.toml"))


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
        return handler.__self__  # type: ignore[attr-defined, no-any-return]

    async def client(self, origin_host: str = "pgw.test", realm: str = "test", **kw: Any) -> DiameterClient:
        client, cea = await DiameterClient.connect("127.0.0.1", self.port, origin_host, realm, **kw)
        assert cea is None or cea.find(268).u32() == 2001  # type: ignore[union-attr]
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
    done, _ = await asyncio.wait([ready, task], timeout=20, return_when=asyncio.FIRST_COMPLETED)
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
