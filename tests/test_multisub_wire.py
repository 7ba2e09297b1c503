"""Multi-subscription on the wire (issue 15, item 9): a Diameter Gy client and an Nchf SMF use a line's main
plan's bytes, then its extra plan's (priority 20 after 10), then the wallet; on both stores. The rules are tested
at the engine in tests/test_multisub.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chf.core import provisioning
from chf.core.extraplans import add_plan
from gy.client import Mscc
from tests import gy_support, nchf_harness
from tests.gy_support import running_server
from tests.nchf_harness import request_body, start_chf, stop_chf, usage
from tests.nchf_openapi import specs_or_skip
from tests.test_gy_server import ccr, msccs, rc

MB = 1_000_000


def line_with_extra_plan(account: str, imsi: str) -> Any:
    """An operation: a postpaid account with one line on `multi-main` and the extra plan `multi-extra`."""

    def op(txn: Any, engine: Any, now: int) -> Any:
        if txn.get_tenant("t1") is None:
            provisioning.create_tenant(txn, "t1", "t1", "EUR", now)
        provisioning.create_account(
            txn, engine, account_id=account, tenant="t1", payment="postpaid", credit_limit=50 * MB, now=now
        )
        provisioning.add_line(txn, engine, account=account, imsi=imsi, plan="multi-main", now=now)
        return add_plan(txn, engine, imsi, "multi-extra", now=now, actor="test", reason="extra plan")

    return op


def buckets(service: Any, imsi: str) -> dict[str, tuple[int, int]]:
    """(remaining, reserved) of the line's buckets by kind."""
    with service.read() as txn:
        line = txn.get_subscriber(txn.subscriber_id_by("imsi", imsi))
        return {b.kind: (b.remaining, b.reserved) for b in txn.get_line_balances(line.id).buckets}


def wallet(service: Any, account: str) -> tuple[int, int]:
    with service.read() as txn:
        acct = txn.get_account(account)
        return acct.balance, acct.reserved


@pytest.fixture
def gy_backend(backend: str, request: pytest.FixtureRequest) -> Iterator[str]:
    if backend == "redis":
        gy_support.STORE_SECTION = gy_support.redis_section(request.getfixturevalue("redis_cluster"))
    yield backend
    gy_support.STORE_SECTION = None


async def test_gy_main_plan_then_extra_plan_then_wallet(tmp_path: Path, gy_backend: str) -> None:
    async with running_server(tmp_path) as srv:
        imsi = "208010000000301"
        added = await srv.op(line_with_extra_plan("multi", imsi))
        assert added["extra_plans"] == ["multi-extra"]
        fees = -150_000  # both plans' fees
        assert wallet(srv.service, "multi") == (fees, 0)
        client = await srv.client()
        sid = "pgw.test;multi;1"
        cca = await client.ccr(ccr(sid, 1, 0, imsi=imsi, mscc=[Mscc(10, {})]))
        assert rc(cca) == 2001 and msccs(cca)[10]["bytes"] == MB
        assert buckets(srv.service, imsi) == {"plan": (MB, MB), "extra": (MB, 0)}
        used = [{"bytes": MB, "reason": 3}]
        cca = await client.ccr(ccr(sid, 2, 1, mscc=[Mscc(10, {}, used=used)]))
        assert msccs(cca)[10]["bytes"] == MB
        assert buckets(srv.service, imsi) == {"plan": (0, 0), "extra": (MB, MB)}  # the extra plan's, after
        cca = await client.ccr(ccr(sid, 2, 2, mscc=[Mscc(10, {}, used=used)]))
        assert msccs(cca)[10]["bytes"] == MB and wallet(srv.service, "multi") == (fees, 10_000)  # then the wallet
        cca = await client.ccr(ccr(sid, 3, 3, mscc=[Mscc(10, used=[{"bytes": MB, "reason": 2}])]))
        assert rc(cca) == 2001 and wallet(srv.service, "multi") == (fees - 10_000, 0)
        assert buckets(srv.service, imsi) == {"plan": (0, 0), "extra": (0, 0)}


@pytest.fixture
def nchf_backend(open_store: Any) -> Iterator[None]:
    nchf_harness.STORE_OPENER = open_store
    yield
    nchf_harness.STORE_OPENER = None


async def test_nchf_main_plan_then_extra_plan_then_wallet(tmp_path: Path, nchf_backend: None) -> None:
    specs_or_skip()
    chf = await start_chf(tmp_path)
    try:
        imsi = "001010000000301"
        await chf.service.operate(line_with_extra_plan("multi", imsi))
        client = await chf.client()
        created = await chf.call(client, "create", request_body(1, supi=f"imsi-{imsi}", units=[usage(10)]))
        assert created.status == 201
        assert created.body["multipleUnitInformation"][0]["grantedUnit"] == {"totalVolume": 10 * MB}
        assert buckets(chf.service, imsi) == {"plan": (10 * MB, 10 * MB), "extra": (10 * MB, 0)}
        update = request_body(2, supi=f"imsi-{imsi}", units=[usage(10, {"totalVolume": 10 * MB})])
        updated = await chf.call(client, "update", update, created.ref)
        assert updated.status == 200
        assert updated.body["multipleUnitInformation"][0]["grantedUnit"] == {"totalVolume": 10 * MB}
        assert buckets(chf.service, imsi) == {"plan": (0, 0), "extra": (10 * MB, 10 * MB)}
        assert wallet(chf.service, "multi") == (-150_000, 0)
    finally:
        await stop_chf(chf)
