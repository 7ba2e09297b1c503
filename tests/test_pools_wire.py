"""Stacked and adaptive pools on the wire (issue 15, items 1 and 2): a Diameter Gy client and an Nchf SMF draw
on an account's stacked pool, and an exhausted adaptive pool with top-off grows a tier before the wallet is
asked, on both stores. The pools' rules are tested at the engine in tests/test_pools.py."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from chf.core import provisioning
from gy.client import Mscc
from tests import gy_support, nchf_harness
from tests.gy_support import running_server
from tests.nchf_harness import request_body, start_chf, stop_chf, usage
from tests.nchf_openapi import specs_or_skip
from tests.test_gy_server import ccr, msccs, rc

MB = 1_000_000


def pool_account(account: str, plan: str, lines: Sequence[tuple[str, str | None]]) -> Any:
    """An operation: a postpaid account on `plan` (a pool) with lines (IMSI, own plan)."""

    def op(txn: Any, engine: Any, now: int) -> Any:
        if txn.get_tenant("t1") is None:
            provisioning.create_tenant(txn, "t1", "t1", "EUR", now)
        provisioning.create_account(
            txn, engine, account_id=account, tenant="t1", payment="postpaid", credit_limit=50 * MB, plan=plan, now=now
        )
        for imsi, line_plan in lines:
            provisioning.add_line(txn, engine, account=account, imsi=imsi, plan=line_plan, now=now)
        return provisioning.OpResult(None)

    return op


def pool_of(service: Any, account: str) -> Any:
    with service.read() as txn:
        bs = txn.get_account_balances(account)
        return next(b for b in bs.buckets if b.kind == "pool")


def wallet(service: Any, account: str) -> tuple[int, int]:
    with service.read() as txn:
        acct = txn.get_account(account)
        return acct.balance, acct.reserved


def kinds(service: Any, kind: str) -> list[dict[str, Any]]:
    with service.read() as txn:
        return [e for e in txn.events(0) if e["kind"] == kind]


# ------------------------------------------------------------------------------------------------------------------
# Gy
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def gy_backend(backend: str, request: pytest.FixtureRequest) -> Iterator[str]:
    if backend == "redis":
        gy_support.STORE_SECTION = gy_support.redis_section(request.getfixturevalue("redis_cluster"))
    yield backend
    gy_support.STORE_SECTION = None


async def test_gy_stacked_pool_then_adaptive_top_off(tmp_path: Path, gy_backend: str) -> None:
    async with running_server(tmp_path) as srv:
        fleet = [("208010000000101", "fleet-member"), ("208010000000102", "fleet-member")]
        await srv.op(pool_account("fleet", "fleetpool", fleet))
        await srv.op(pool_account("ent", "topoff", [("208010000000201", None)]))
        assert pool_of(srv.service, "fleet").initial == 2 * MB  # two members, 1 MB each
        client = await srv.client()
        sid = "pgw.test;pool;1"
        cca = await client.ccr(ccr(sid, 1, 0, imsi="208010000000101", mscc=[Mscc(10, {})]))
        assert rc(cca) == 2001 and msccs(cca)[10]["bytes"] == MB
        used = [{"bytes": MB, "reason": 3}]
        cca = await client.ccr(ccr(sid, 2, 1, mscc=[Mscc(10, {}, used=used)]))
        assert msccs(cca)[10]["bytes"] == MB and wallet(srv.service, "fleet") == (0, 0)  # the pool's second MB
        cca = await client.ccr(ccr(sid, 2, 2, mscc=[Mscc(10, {}, used=used)]))
        assert msccs(cca)[10]["bytes"] == MB and wallet(srv.service, "fleet") == (0, 10_000)  # the wallet's
        cca = await client.ccr(ccr(sid, 3, 3, mscc=[Mscc(10, used=[{"bytes": MB, "reason": 2}])]))
        assert rc(cca) == 2001 and wallet(srv.service, "fleet") == (-10_000, 0)

        sid = "pgw.test;pool;2"
        cca = await client.ccr(ccr(sid, 1, 0, imsi="208010000000201", mscc=[Mscc(10, {})]))
        assert msccs(cca)[10]["bytes"] == MB and pool_of(srv.service, "ent").initial == MB
        cca = await client.ccr(ccr(sid, 2, 1, mscc=[Mscc(10, {}, used=used)]))  # exhausted: topped off to 2 MB
        assert rc(cca) == 2001 and msccs(cca)[10]["bytes"] == MB and "fua" not in msccs(cca)[10]
        assert (pool_of(srv.service, "ent").initial, wallet(srv.service, "ent")) == (2 * MB, (0, 0))
        (topoff,) = kinds(srv.service, "pool_topoff")
        assert topoff["tier"] == {"index": 1, "amount": 2 * MB, "fee": 1_500_000}
        cca = await client.ccr(ccr(sid, 3, 2, mscc=[Mscc(10, used=[{"bytes": MB, "reason": 2}])]))
        assert rc(cca) == 2001 and pool_of(srv.service, "ent").remaining == 0


# ------------------------------------------------------------------------------------------------------------------
# Nchf
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def nchf_backend(open_store: Any) -> Iterator[None]:
    nchf_harness.STORE_OPENER = open_store
    yield
    nchf_harness.STORE_OPENER = None


async def test_nchf_stacked_pool_then_adaptive_top_off(tmp_path: Path, nchf_backend: None) -> None:
    specs_or_skip()
    chf = await start_chf(tmp_path)
    try:
        fleet = [("001010000000101", "fleet-member"), ("001010000000102", "fleet-member")]
        await chf.service.operate(pool_account("fleet", "fleetpool", fleet))
        await chf.service.operate(pool_account("ent", "topoff", [("001010000000201", None)]))
        assert pool_of(chf.service, "fleet").initial == 20 * MB
        client = await chf.client()
        body = request_body(1, supi="imsi-001010000000102", units=[usage(10)])
        created = await chf.call(client, "create", body)
        assert created.status == 201 and created.body["multipleUnitInformation"][0]["grantedUnit"] == {
            "totalVolume": 10 * MB
        }
        assert pool_of(chf.service, "fleet").reserved == 10 * MB

        body = request_body(1, supi="imsi-001010000000201", units=[usage(10)])
        created = await chf.call(client, "create", body)
        assert created.status == 201
        update = request_body(2, supi="imsi-001010000000201", units=[usage(10, {"totalVolume": 10 * MB})])
        updated = await chf.call(client, "update", update, created.ref)
        [mui] = updated.body["multipleUnitInformation"]
        assert (
            updated.status == 200
            and mui["grantedUnit"] == {"totalVolume": 10 * MB}
            and "finalUnitIndication" not in mui
        )
        assert (pool_of(chf.service, "ent").initial, wallet(chf.service, "ent")) == (20 * MB, (0, 0))
        (topoff,) = kinds(chf.service, "pool_topoff")
        assert topoff["why"] == f"{10 * MB} of {10 * MB} bytes used, 0 reserved"
    finally:
        await stop_chf(chf)
