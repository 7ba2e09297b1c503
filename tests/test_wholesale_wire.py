"""B2B2B and tax profiles over the wire: a Gy session and event, an Nchf session and IEC, on both stores.

The hierarchy (as tests/test_wholesale.py, in EUR): operator "op" <- IoT service provider "iot" (its account
"iot-at-op" pays by "op-wholesale": 0.001 EUR per started MB) <- enterprise "acme" (its account "acme-at-iot"
pays by "iot-enterprise": 0.005 EUR per started MB, 0.002 EUR per SMS / sensor message) <- the line's account
"acme-fleet" (retail plan of the front-end's test catalogue, prices net of the 19 % of tax profile "vat-net").
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chf.api.server import ApiConfig, ApiServer
from chf.core import provisioning
from chf.core.catalogue_loader import load_catalogue
from chf.runtime.service import ChargingService
from gy.client import Mscc
from store.lmdbstore import Store
from store.schema import SCHEMA_VERSION, Account, Tenant, pack
from tests import gy_support, nchf_harness
from tests.gy_support import running_server
from tests.nchf_harness import Chf, request_body, start_chf, stop_chf, usage
from tests.nchf_openapi import specs_or_skip
from tests.test_api import TOKEN, Api, assert_problem
from tests.test_gy_server import ccr, msccs, rc

COMMERCE = """
[tariffs.wh-data]
unit = "bytes"
block = 1_000_000
price = 1_000

[tariffs.ent-data]
unit = "bytes"
block = 1_000_000
price = 5_000

[tariffs.sensor]
unit = "events"
price = 2_000

[price_lists.op-wholesale]
  [price_lists.op-wholesale.rating]
  default = "wh-data"

[price_lists.iot-enterprise]
  [price_lists.iot-enterprise.rating]
  "40" = "sensor"
  default = "ent-data"

[tax_profiles.vat-net]
prices = "net"
rate = "19%"
"""

IMSI = "001010000000077"
CONF_CATALOGUE = Path(__file__).resolve().parents[1] / "conf" / "catalogue.toml"
MB = 1_000_000


def hierarchy(plan: str) -> Any:
    """An operation for `service.operate`: the three tenants and accounts, and one line of acme-fleet."""

    def op(txn: Any, engine: Any, now: int) -> Any:
        for tenant, parent in (("op", None), ("iot", "op"), ("acme", "iot")):
            provisioning.create_tenant(txn, tenant, tenant, "EUR", now, parent=parent)
        for account, tenant, parent, price_list in (
            ("iot-at-op", "op", None, "op-wholesale"),
            ("acme-at-iot", "iot", "iot-at-op", "iot-enterprise"),
        ):
            provisioning.create_account(
                txn,
                engine,
                account_id=account,
                tenant=tenant,
                payment="postpaid",
                now=now,
                credit_limit=10**9,
                parent=parent,
                price_list=price_list,
            )
        provisioning.create_account(
            txn,
            engine,
            account_id="acme-fleet",
            tenant="acme",
            payment="prepaid",
            now=now,
            balance=1_000_000,
            parent="acme-at-iot",
            tax_profile="vat-net",
        )
        return provisioning.add_line(txn, engine, account="acme-fleet", imsi=IMSI, plan=plan, now=now)

    return op


def balances(txn: Any) -> dict[str, int]:
    return {a: txn.get_account(a).balance for a in ("acme-fleet", "acme-at-iot", "iot-at-op")}


def wholesale(txn: Any) -> list[tuple[str, str, int]]:
    return sorted((e["account"], e["customer"], e["charge"]) for e in txn.events() if e["kind"] == "wholesale")


# ------------------------------------------------------------------------------------------------------------------
# Gy
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def gy_backend(backend: str, request: pytest.FixtureRequest) -> Iterator[str]:
    if backend == "redis":
        gy_support.STORE_SECTION = gy_support.redis_section(request.getfixturevalue("redis_cluster"))
    yield backend
    gy_support.STORE_SECTION = None


async def test_gy_session_and_event_are_rated_at_every_level(tmp_path: Path, gy_backend: str) -> None:
    (tmp_path / "catalogue.toml").write_text(gy_support.CATALOGUE + COMMERCE)
    async with running_server(tmp_path) as srv:
        await srv.op(hierarchy("payg"))
        client = await srv.client()
        sid = "pgw.test;77;1"
        cca = await client.ccr(ccr(sid, 1, 0, imsi=IMSI, mscc=[Mscc(10, {})]))
        assert rc(cca) == 2001 and msccs(cca)[10]["bytes"] == MB
        cca = await client.ccr(ccr(sid, 3, 1, mscc=[Mscc(10, used=[{"bytes": 3 * MB, "reason": 2}])]))
        assert rc(cca) == 2001
        # An SMS (a sensor's message) as a direct debit: 0.08 EUR net + 19 % at retail, 0.002 EUR to acme-at-iot.
        cca = await client.ccr(
            ccr("pgw.test;77;2", 4, 0, imsi=IMSI, requested_action=0, mscc=[Mscc(40, {"events": 1})])
        )
        assert rc(cca) == 2001 and msccs(cca)[40]["events"] == 1
        with srv.service.read() as txn:
            # 3 MB at 0.01 EUR net = 30,000 + 5,700 tax; the SMS 80,000 + 15,200.
            assert balances(txn) == {
                "acme-fleet": 1_000_000 - 35_700 - 95_200,
                "acme-at-iot": -15_000 - 2_000,
                "iot-at-op": -3_000,  # the operator prices bytes only: the SMS costs iot nothing
            }
            assert wholesale(txn) == [
                ("acme-at-iot", "acme-fleet", 2_000),
                ("acme-at-iot", "acme-fleet", 15_000),
                ("iot-at-op", "acme-at-iot", 3_000),
            ]
            taxed = sorted((e["net"], e["tax"], e["gross"]) for e in txn.events() if e["kind"] == "usage")
            assert taxed == [(30_000, 5_700, 35_700), (80_000, 15_200, 95_200)]


# ------------------------------------------------------------------------------------------------------------------
# Nchf
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture
async def chf(tmp_path: Path, open_store: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Chf]:
    specs_or_skip()
    monkeypatch.setattr(nchf_harness, "STORE_OPENER", open_store)
    monkeypatch.setattr(nchf_harness, "CATALOGUE", nchf_harness.CATALOGUE + COMMERCE)
    running = await start_chf(tmp_path)
    await running.service.operate(hierarchy("basic"))
    try:
        yield running
    finally:
        await stop_chf(running)


async def test_nchf_session_and_iec_are_rated_at_every_level(chf: Chf) -> None:
    client = await chf.client()
    body = request_body(1, supi="imsi-" + IMSI, units=[usage(10)])
    created = await chf.call(client, "create", body)
    assert created.status == 201
    body = request_body(2, supi="imsi-" + IMSI, units=[usage(10, {"totalVolume": 3 * MB}, request=False, final=True)])
    released = await chf.call(client, "release", body, created.ref)
    assert released.status == 204
    iec = request_body(
        0, supi="imsi-" + IMSI, units=[{"ratingGroup": 40, "requestedUnit": {"serviceSpecificUnits": 2}}]
    )
    iec["nfConsumerIdentification"]["nodeFunctionality"] = "SMSF"
    iec["oneTimeEvent"] = True
    iec["oneTimeEventType"] = "IEC"
    debited = await chf.call(client, "create", iec)
    assert debited.status == 201, debited.body
    await client.close()
    with chf.store.read() as txn:
        # The data came from the plan's allowance (no retail money); two SMS: 160,000 net + 30,400 tax.
        assert balances(txn) == {"acme-fleet": 1_000_000 - 190_400, "acme-at-iot": -15_000 - 4_000, "iot-at-op": -3_000}
        assert wholesale(txn) == [
            ("acme-at-iot", "acme-fleet", 4_000),
            ("acme-at-iot", "acme-fleet", 15_000),
            ("iot-at-op", "acme-at-iot", 3_000),
        ]


# ------------------------------------------------------------------------------------------------------------------
# Management API and CLI
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    store = Store(tmp_path / "chf.lmdb")
    service = ChargingService(store, load_catalogue(CONF_CATALOGUE), catalogue_path=str(CONF_CATALOGUE))
    await service.start()
    server = ApiServer(service, ApiConfig(port=0, tokens={"crm": TOKEN}))
    await server.start()
    async with aiohttp.ClientSession() as http:
        yield Api(server, http, service)
    await server.stop()
    await service.stop()
    store.close()


async def test_api_creates_the_hierarchy_and_refuses_what_does_not_fit(api: Api) -> None:
    assert (await api.call("POST", "/v1/tenants", {"id": "op", "currency": "EUR"}))[0] == 201
    status, tenant, _ = await api.call(
        "POST", "/v1/tenants", {"id": "resl", "currency": "EUR", "parent": "op", "tax_profile": "fr-business"}
    )
    assert status == 201 and (tenant["parent"], tenant["tax_profile"]) == ("op", "fr-business")
    body = {"id": "resl-at-op", "tenant": "op", "payment": "postpaid", "price_list": "operator-to-reseller"}
    status, acct, _ = await api.call("POST", "/v1/accounts", body)
    assert status == 201 and acct["price_list"] == "operator-to-reseller" and acct["tax_profile"] is None
    body = {"id": "ent", "tenant": "resl", "payment": "postpaid", "parent": "resl-at-op", "tax_profile": "nope"}
    before = api.snapshot()
    status, problem, resp = await api.call("POST", "/v1/accounts", body)
    assert_problem(status, problem, resp, 400, "tax_profile")
    status, problem, resp = await api.call("POST", "/v1/tenants", {"id": "x", "currency": "EUR", "parent": "nope"})
    assert_problem(status, problem, resp, 404, "parent")
    assert api.snapshot() == before
    body = {"id": "ent", "tenant": "resl", "payment": "postpaid", "parent": "resl-at-op"}
    status, acct, _ = await api.call("POST", "/v1/accounts", body)
    assert status == 201 and acct["parent"] == "resl-at-op"


def test_records_stored_before_read_the_added_fields_as_none() -> None:
    """A tenant and an account record as stores held them before parents, price lists and tax profiles."""
    tenant = Tenant.decode(pack([SCHEMA_VERSION, "t", "T", "EUR", 5]))
    assert (tenant.parent, tenant.tax_profile) == (None, None)
    assert tenant.encode() == pack([SCHEMA_VERSION, "t", "T", "EUR", 5])  # written back as it was
    old = [SCHEMA_VERSION, "a", "t", "prepaid", "EUR", 1, 0, 0, 1, None, None, 5, 0]
    account = Account.decode(pack(old))
    assert (account.price_list, account.tax_profile) == (None, None) and account.encode() == pack(old)
    account.price_list = "wholesale"
    again = Account.decode(account.encode())
    assert (again.price_list, again.tax_profile) == ("wholesale", None)
