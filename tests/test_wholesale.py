"""B2B2B (chf.core.wholesale) and tax profiles (chf.core.tax) on the charging core, on both stores.

The hierarchy of these tests: the operator (tenant "op", EUR) sells to the IoT service provider "iot" (tenant
"iot", USD, parent "op") through the account "iot-at-op" (in the operator's books, EUR, price list
"op-wholesale"); "iot" sells to the enterprise "acme" (tenant "acme", USD, parent "iot") through the account
"acme-at-iot" (in iot's books, price list "iot-enterprise"); acme's account "acme-fleet" holds the lines, on the
retail plan "pre-usd". One report of 1000 bytes on rating group 10 is rated three times: "pre-usd" for
acme-fleet (its allowance, then 10 per 100 bytes), "iot-enterprise" for acme-at-iot (tariff data: 10 per 100
bytes = 100 USD micro-units), "op-wholesale" for iot-at-op (tariff iot: 1 per 100 bytes = 10 EUR micro-units).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chf.core import addons, provisioning
from chf.core.catalogue import CatalogueError
from chf.core.catalogue_loader import check_replacement, parse_catalogue
from chf.core.model import (
    DIRECT_DEBITING,
    EVENT,
    POST_EVENT,
    REFUND_ACCOUNT,
    SUCCESS,
    ChargingRequest,
    RequestError,
    UnitRequest,
    UsageReport,
)
from chf.core.tax import split
from chf.export.chfrecord import ChfRecordEncoder
from chf.export.records import to_record
from tests.corekit import CATALOGUE_TOML, World, check_invariants, event, initial, terminate, update
from tools.reconcile import DAY
from tools.reports import build_report, margin_text

COMMERCE_TOML = """
[tariffs.sensor]
unit = "events"
block = 1
price = 3

[tariffs.free-events]
unit = "events"
block = 1
price = 0

[plans.pre-usd]
payment = "prepaid"
currency = "USD"
fee = 1000
overage = "charge"
  [plans.pre-usd.rating]
  "10" = "data"
  "50" = "free-events"
  [[plans.pre-usd.allowances]]
  name = "data"
  unit = "bytes"
  amount = 3000
  rating_groups = [10]
  priority = 10

[price_lists.iot-enterprise]
currency = "USD"
device_fee = 7
  [price_lists.iot-enterprise.rating]
  "10" = "data"
  "50" = "sensor"

[price_lists.op-wholesale]
currency = "EUR"
  [price_lists.op-wholesale.rating]
  default = "iot"

[tax_profiles.vat-net]
prices = "net"
rate = "19%"
  [[tax_profiles.vat-net.rates]]
  zones = ["eu"]
  rate = "0%"

[tax_profiles.vat-gross]
prices = "gross"
rate = "25%"
"""


def commerce_catalogue() -> Any:
    return parse_catalogue(CATALOGUE_TOML + COMMERCE_TOML, "commerce.toml")


@pytest.fixture
def world(tmp_path: Path, open_store: Callable[..., Any]) -> Iterator[World]:
    w = World(tmp_path / "store", catalogue=commerce_catalogue(), opener=open_store)
    w.tenant()
    yield w
    with w.store.read() as txn:
        check_invariants(txn)
        check_tax_fields(txn)
    w.close()


def check_tax_fields(txn: Any) -> None:
    """Every event that carries a tax split has net + tax = gross = the money that moved."""
    for ev in txn.events():
        if "gross" in ev:
            assert ev["net"] + ev["tax"] == ev["gross"], ev
            assert ev["gross"] == ev["charge"], ev


def set_tax_profile(txn: Any, account_id: str, profile: str) -> None:
    """A profile given to an account after its creation (the record as a later store write would leave it)."""
    acct = txn.get_account(account_id)
    acct.tax_profile = profile
    txn.put_account(acct)


def tenant(world: World, tenant_id: str, currency: str, **kw: Any) -> None:
    world.write(
        lambda txn: provisioning.create_tenant(
            txn, tenant_id, tenant_id, currency, world.now, catalogue=world.engine.catalogue, **kw
        )
    )


def account(world: World, account_id: str, tenant_id: str, payment: str = "postpaid", **kw: Any) -> None:
    if payment != "prepaid":
        kw.setdefault("credit_limit", 10**9)
    world.admin(provisioning.create_account, account_id=account_id, tenant=tenant_id, payment=payment, **kw)


def hierarchy(world: World, **fleet: Any) -> tuple[int, str]:
    """The three levels of the module docstring; returns the line (id, IMSI) of acme-fleet."""
    tenant(world, "op", "EUR")
    tenant(world, "iot", "USD", parent="op")
    tenant(world, "acme", "USD", parent="iot")
    account(world, "iot-at-op", "op", price_list="op-wholesale")
    account(world, "acme-at-iot", "iot", parent="iot-at-op", price_list="iot-enterprise")
    account(world, "acme-fleet", "acme", "prepaid", parent="acme-at-iot", balance=100_000, **fleet)
    world._imsi += 1
    imsi = str(world._imsi)
    result = world.admin(provisioning.add_line, account="acme-fleet", imsi=imsi, plan="pre-usd", state="active")
    return result.value["id"], imsi


def of_kind(world: World, kind: str) -> list[dict[str, Any]]:
    """The events of one kind, in the order of their level (the Redis store numbers events per partition, and
    the levels' accounts live in different ones), then of their sequence numbers."""
    return sorted((e for e in world.events() if e["kind"] == kind), key=lambda e: (e.get("level", 0), e["seq"]))


# ------------------------------------------------------------------------------------------------------------------
# B2B2B
# ------------------------------------------------------------------------------------------------------------------
def test_one_report_is_rated_once_per_level(world: World) -> None:
    line, imsi = hierarchy(world)
    fees = of_kind(world, "wholesale")  # the line's first period: the device fee of iot-enterprise
    assert [(e["account"], e["customer"], e["charge"], e["currency"]) for e in fees] == [
        ("acme-at-iot", "acme-fleet", 7, "USD")
    ]
    assert world.acct("acme-at-iot").balance == -7
    assert world.charge(initial("s1", imsi)).result == SUCCESS
    assert world.charge(update("s1", 1, imsi, used=1000)).result == SUCCESS
    usage = [e for e in of_kind(world, "usage") if e["session"] == "s1"]
    assert [(e["account"], e["used"], e["charge"]) for e in usage] == [("acme-fleet", 1000, 0)]  # its allowance
    rated = [e for e in of_kind(world, "wholesale") if e.get("session") == "s1"]
    assert [
        (e["level"], e["account"], e["tenant"], e["customer"], e["customer_tenant"], e["currency"]) for e in rated
    ] == [(1, "acme-at-iot", "iot", "acme-fleet", "acme", "USD"), (2, "iot-at-op", "op", "acme-at-iot", "iot", "EUR")]
    assert [(e["price_list"], e["tariff"], e["unit"], e["used"], e["charge"]) for e in rated] == [
        ("iot-enterprise", "data", "bytes", 1000, 100),
        ("op-wholesale", "iot", "bytes", 1000, 10),
    ]
    assert all(e["subscriber"] == line and e["imsi"] == imsi and e["rating_group"] == 10 for e in rated)
    assert world.acct("acme-at-iot").balance == -107
    assert world.acct("iot-at-op").balance == -10
    # Each level is rated by its own prices only: the retail wallet paid the fee, nothing for the usage.
    assert world.acct("acme-fleet").balance == 100_000 - 1000


def test_usage_beyond_the_allowance_is_rated_at_every_level(world: World) -> None:
    _, imsi = hierarchy(world)
    world.charge(initial("s1", imsi))
    world.charge(terminate("s1", 1, imsi, used=4000))  # 3000 from the allowance, 1000 at 10 per 100 bytes
    usage = [e for e in world.events() if e.get("session") == "s1" and e["kind"] in ("usage", "wholesale")]
    assert sorted((e["kind"], e["account"], e["charge"]) for e in usage) == [
        ("usage", "acme-fleet", 100),
        ("wholesale", "acme-at-iot", 400),
        ("wholesale", "iot-at-op", 40),
    ]


def test_per_event_charge_of_a_reseller(world: World) -> None:
    """A sensor measurement, free at retail, is charged per event by the reseller (and by the data tariff of
    the operator's default: its unit is bytes, so the measurement costs the reseller nothing there)."""
    _, imsi = hierarchy(world)
    before = world.acct("acme-at-iot").balance
    ans = world.charge(event("m1", imsi, DIRECT_DEBITING, rg=50))
    assert ans.result == SUCCESS and ans.units[0].charged == 0
    rated = [e for e in of_kind(world, "wholesale") if e.get("session") == "m1"]
    assert [(e["account"], e["unit"], e["used"], e["charge"]) for e in rated] == [("acme-at-iot", "events", 1, 3)]
    assert world.acct("acme-at-iot").balance == before - 3
    # Five measurements reported after the fact (Nchf PEC): five events at every level that prices them.
    units = [UnitRequest(rating_group=50, used=[UsageReport({"events": 5})])]
    world.charge(ChargingRequest(EVENT, "m2", 0, [("imsi", imsi)], units, action=POST_EVENT))
    rated = [e for e in of_kind(world, "wholesale") if e.get("session") == "m2"]
    assert [(e["account"], e["used"], e["charge"]) for e in rated] == [("acme-at-iot", 5, 15)]


def test_device_fee_each_period(world: World) -> None:
    _, imsi = hierarchy(world)
    world.now += 40 * 86_400  # past the first monthly renewal of the line's plan
    world.charge(initial("s1", imsi))
    fees = [e for e in of_kind(world, "wholesale") if e["reason"] == "device fee"]
    assert [(e["account"], e["charge"]) for e in fees] == [("acme-at-iot", 7), ("acme-at-iot", 7)]
    assert fees[1]["time"] > fees[0]["time"]


def test_a_level_without_price_list_charges_nothing_but_the_levels_above_do(world: World) -> None:
    """An enterprise's departments: the department's parent is the enterprise's own account, in the same
    tenant's books, without a price list (it pays nothing per report); the reseller above pays the operator."""
    tenant(world, "op", "EUR")
    tenant(world, "iot", "EUR", parent="op")
    account(world, "iot-at-op", "op", price_list="op-wholesale")
    account(world, "acme", "iot", parent="iot-at-op")
    account(world, "acme-fleet", "iot", "prepaid", parent="acme", balance=100_000)
    world._imsi += 1
    imsi = str(world._imsi)
    world.admin(provisioning.add_line, account="acme-fleet", imsi=imsi, plan="pre", state="active")
    world.charge(initial("s1", imsi))
    world.charge(update("s1", 1, imsi, used=500))
    rated = of_kind(world, "wholesale")
    assert [(e["level"], e["account"], e["customer"], e["charge"]) for e in rated] == [(2, "iot-at-op", "acme", 5)]
    assert world.acct("acme").balance == 0


def test_single_level_events_are_recorded_as_before(world: World) -> None:
    """No parent, no tax profile: the usage event has exactly the fields it had without them (with the catalogue
    version of chf.core.versions)."""
    world.account("a", balance=10_000)
    _, imsi = world.line("a", plan="pre")
    world.charge(initial("s1", imsi))
    world.charge(update("s1", 1, imsi, used=4000))
    (usage,) = of_kind(world, "usage")
    assert set(usage) == {
        "kind", "time", "actor", "reason", "tenant", "account", "subscriber", "imsi", "msisdn", "currency",
        "impacts", "session", "rating_group", "service_id", "units", "unit", "used", "opened", "session_started",
        "zone", "charge", "tariff", "over_grant", "catalogue", "id", "seq",
    }  # fmt: skip
    assert not of_kind(world, "wholesale")


def test_hierarchy_refusals(world: World) -> None:
    tenant(world, "op", "EUR")
    tenant(world, "iot", "USD", parent="op")
    tenant(world, "other", "EUR")
    account(world, "iot-at-op", "op", price_list="op-wholesale")
    with pytest.raises(RequestError, match="priced in USD, the account holds EUR"):
        account(world, "x1", "op", price_list="iot-enterprise")
    with pytest.raises(RequestError, match="no price list 'nope'"):
        account(world, "x2", "op", price_list="nope")
    with pytest.raises(RequestError, match="is of tenant 'op', not of tenant 'other'"):
        account(world, "x3", "other", parent="iot-at-op")
    with pytest.raises(RequestError, match="no tenant 'nope'"):
        tenant(world, "x4", "EUR", parent="nope")
    with pytest.raises(RequestError, match="no tax profile 'nope'"):
        account(world, "x5", "op", tax_profile="nope")
    account(world, "l1", "iot", parent="iot-at-op")
    account(world, "l2", "iot", parent="l1")
    account(world, "l3", "iot", parent="l2")
    account(world, "l4", "iot", parent="l3")  # four accounts above it: the most a line's account may have
    with pytest.raises(RequestError, match="already has 4 levels above it"):
        account(world, "l5", "iot", parent="l4")
    with world.store.read() as txn:
        assert txn.get_account("x1") is None and txn.get_tenant("x4") is None


# ------------------------------------------------------------------------------------------------------------------
# Tax profiles
# ------------------------------------------------------------------------------------------------------------------
def test_gross_prices_are_split_and_move_as_before(world: World) -> None:
    world.account("a", balance=10_000, tax_profile="vat-gross")
    _, imsi = world.line("a", plan="pre")  # fee 1000, gross: net 800 + tax 200
    (renewal,) = of_kind(world, "renewal")
    assert (renewal["charge"], renewal["net"], renewal["tax"], renewal["gross"]) == (1000, 800, 200, 1000)
    assert renewal["tax_rate"] == 250_000 and renewal["tax_profile"] == "vat-gross"
    world.charge(initial("s1", imsi))
    world.charge(terminate("s1", 1, imsi, used=4000))  # 1000 bytes beyond the allowance: 100
    (usage,) = of_kind(world, "usage")
    assert (usage["charge"], usage["net"], usage["tax"], usage["gross"]) == (100, 80, 20, 100)
    assert world.acct("a").balance == 10_000 - 1000 - 100


def test_net_prices_add_the_tax_to_grants_and_debits(world: World) -> None:
    world.account("a", balance=1_190 + 119, tax_profile="vat-net")
    _, imsi = world.line("a", plan="pre")  # fee 1000 + 19 % = 1190
    (renewal,) = of_kind(world, "renewal")
    assert (renewal["charge"], renewal["net"], renewal["tax"]) == (1190, 1000, 190)
    assert world.acct("a").balance == 119
    world.charge(initial("s1", imsi))
    for n in range(1, 4):
        world.charge(update("s1", n, imsi, used=1000))  # the allowance: 3000 bytes
    # The wallet holds 119: 100 net at 10 per 100 bytes = 1000 bytes, whose gross 119 it can pay, no more.
    ans = world.charge(update("s1", 4, imsi, used=0))
    assert ans.units[0].granted == 1000
    assert world.acct("a").reserved == 119
    world.charge(terminate("s1", 5, imsi, used=1000))
    usage = [e for e in of_kind(world, "usage") if e["charge"]]
    assert [(e["charge"], e["net"], e["tax"], e["tax_rate"]) for e in usage] == [(119, 100, 19, 190_000)]
    assert world.acct("a").balance == 0


def test_tax_by_jurisdiction(world: World) -> None:
    world.account("a", balance=10_000, tax_profile="vat-net")
    _, imsi = world.line("a", plan="pre")
    world.charge(initial("s1", imsi, serving_network="26201"))  # the EU zone: 0 %
    world.charge(terminate("s1", 1, imsi, used=4000))
    usage = [e for e in of_kind(world, "usage") if e["charge"]]
    assert [(e["zone"], e["charge"], e["net"], e["tax"]) for e in usage] == [("eu", 200, 200, 0)]


def test_tenant_tax_profile_applies_to_its_accounts_and_refunds_split(world: World) -> None:
    tenant(world, "t2", "EUR", tax_profile="vat-gross")
    account(world, "b", "t2", balance=10_000)
    world._imsi += 1
    imsi = str(world._imsi)
    world.admin(provisioning.add_line, account="b", imsi=imsi, plan="post", state="active")
    world.charge(event("e1", imsi, DIRECT_DEBITING, rg=40))  # an SMS: 50
    world.charge(event("e2", imsi, REFUND_ACCOUNT, rg=40))
    usage = [e for e in of_kind(world, "usage") if e["charge"]]
    assert [(e["charge"], e["net"], e["tax"]) for e in usage] == [(50, 40, 10)]
    (refund,) = of_kind(world, "refund")
    assert (refund["charge"], refund["net"], refund["tax"], refund["gross"]) == (-50, -40, -10, -50)


def test_wholesale_charges_are_taxed_by_the_payers_profile(world: World) -> None:
    _, imsi = hierarchy(world)
    world.write(lambda txn: set_tax_profile(txn, "iot-at-op", "vat-net"))
    world.charge(initial("s1", imsi))
    world.charge(update("s1", 1, imsi, used=10_000))
    rated = [e for e in of_kind(world, "wholesale") if e.get("session") == "s1"]
    assert [(e["account"], e["charge"], e.get("net"), e.get("tax")) for e in rated] == [
        ("acme-at-iot", 1000, None, None),
        ("iot-at-op", 119, 100, 19),
    ]


def test_split_rounds_half_up_in_integers() -> None:
    catalogue = commerce_catalogue()
    net = catalogue.tax_profiles["vat-net"]
    gross = catalogue.tax_profiles["vat-gross"]
    assert split(net, 1, "home", None) == (1, 0, 1, 190_000)  # 0.19 rounds to 0
    assert split(net, 3, "home", None) == (3, 1, 4, 190_000)  # 0.57 rounds to 1
    assert split(gross, 5, "home", None) == (4, 1, 5, 250_000)
    assert split(gross, -5, "home", None) == (-4, -1, -5, 250_000)


# ------------------------------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------------------------------
def test_margin_per_reseller(world: World) -> None:
    _, imsi = hierarchy(world)
    world.write(lambda txn: set_tax_profile(txn, "acme-fleet", "vat-gross"))
    world.charge(initial("s1", imsi))
    world.charge(terminate("s1", 1, imsi, used=4000))
    day = world.now // DAY
    groups = {g["group"]: g for g in build_report(world.store, day, day, "tenant")["groups"]}
    # acme sold 1000 (fee) + 100 (usage) at retail and paid iot 7 (device fee) + 400 for it.
    assert groups["acme"]["revenue"] == {"USD": 1100} and groups["acme"]["costs"] == {"USD": 407}
    assert groups["acme"]["margin"] == {"USD": 693}
    # Only the usage was charged under the profile (given after the fee): 100 gross = 80 net + 20 tax.
    assert groups["acme"]["net"] == {"USD": 1080} and groups["acme"]["tax"] == {"USD": 20}
    # iot sold 407 USD to acme and paid the operator 40 EUR: currencies are never converted.
    assert groups["iot"]["wholesale"] == {"USD": 407}
    assert groups["iot"]["margin"] == {"EUR": -40, "USD": 407}
    assert groups["op"]["margin"] == {"EUR": 40} and groups["op"]["costs"] == {}
    text = margin_text({**build_report(world.store, day, day, "tenant"), "report": "margin"})
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in text.splitlines()[3:6]}
    assert rows[("acme", "USD")] == ["0.0011", "0.000407", "0.000693"]
    assert rows[("iot", "EUR")] == ["0.00", "0.00004", "-0.00004"]


# ------------------------------------------------------------------------------------------------------------------
# Export records and CDRs
# ------------------------------------------------------------------------------------------------------------------
def test_export_records_carry_payer_customer_and_tax(world: World) -> None:
    _, imsi = hierarchy(world)
    world.write(lambda txn: set_tax_profile(txn, "acme-fleet", "vat-gross"))
    world.charge(initial("s1", imsi))
    world.charge(terminate("s1", 1, imsi, used=4000))
    events = [e for e in world.events() if e.get("session") == "s1" and e["kind"] in ("usage", "wholesale")]
    records = sorted((to_record(e) for e in events), key=lambda r: r.get("hierarchyLevel", 0))
    usage, level1, level2 = records
    assert (usage["account"], usage["charge"], usage["netAmount"], usage["taxAmount"], usage["grossAmount"]) == (
        "acme-fleet", 100, 80, 20, 100
    )  # fmt: skip
    assert usage["taxRate"] == 250_000 and usage["taxProfile"] == "vat-gross"
    assert (level1["recordType"], level1["account"], level1["customer"], level1["customerTenant"]) == (
        "wholesale", "acme-at-iot", "acme-fleet", "acme"
    )  # fmt: skip
    assert (level1["hierarchyLevel"], level1["priceList"], level1["charge"], level1["currency"]) == (
        1, "iot-enterprise", 400, "USD"
    )  # fmt: skip
    assert "netAmount" not in level1 and "details" not in level1  # acme-at-iot has no tax profile
    assert (level2["account"], level2["customer"], level2["charge"], level2["currency"]) == (
        "iot-at-op", "acme-at-iot", 40, "EUR"
    )  # fmt: skip
    # A CDR describes the network usage once (the usage record); the wholesale charges are billing records.
    encoder = ChfRecordEncoder("5b1c6a52-5c87-4b0e-9c4e-8d0c3a1f2e77")
    assert encoder.encode(usage) is not None
    assert encoder.encode(level1) is None and encoder.encode(level2) is None


def test_catalogue_errors_and_reload_keep_a_price_lists_currency() -> None:
    bad = """
[tariffs.tiered-wh]
unit = "bytes"
  [[tariffs.tiered-wh.tiers]]
  upto = 1000
  price = 1
  [[tariffs.tiered-wh.tiers]]
  price = 2

[price_lists.pl]
currency = "eur"
device_fee = -1
colour = "red"
  [price_lists.pl.rating]
  "10" = "tiered-wh"
  "11" = "nope"

[tax_profiles.tp]
prices = "both"
rate = "101%"
  [[tax_profiles.tp.rates]]
  zones = ["mars"]
  rate = "7,5%"
"""
    with pytest.raises(CatalogueError) as exc:
        parse_catalogue(CATALOGUE_TOML + bad, "bad.toml")
    errors = "\n".join(exc.value.errors)
    for expected in (
        "price list 'pl': currency: must be an ISO 4217 code",
        "price list 'pl': device_fee: must be a non-negative integer",
        "price list 'pl': colour: unknown key",
        "price list 'pl': rating.10: tariff 'tiered-wh' has tiers",
        "price list 'pl': rating.11: unknown tariff 'nope'",
        "tax profile 'tp': prices: must be one of net | gross",
        "tax profile 'tp': rate: must be a percentage",
        "tax profile 'tp': rates[0].zones: must list known zones",
        "tax profile 'tp': rates[0].rate: must be a percentage",
    ):
        assert expected in errors, errors
    running = commerce_catalogue()
    moved = parse_catalogue(
        CATALOGUE_TOML + COMMERCE_TOML.replace('currency = "USD"\ndevice_fee', 'currency = "GBP"\ndevice_fee'),
        "new.toml",
    )
    with pytest.raises(CatalogueError, match="price list 'iot-enterprise': currency: was USD, now GBP"):
        check_replacement(running, moved)
    check_replacement(running, commerce_catalogue())


def test_an_add_on_of_a_net_priced_account_costs_its_price_and_tax(world: World) -> None:
    world.account("a", balance=10_000, tax_profile="vat-net")
    line, _ = world.line("a", plan="pre")  # fee 1000 + 190
    before = world.acct("a").balance
    result = world.admin(addons.buy_addon, f"#{line}", "data-1k", actor="t", reason="bought")  # 300 + 19 %
    (bought,) = of_kind(world, "addon")
    assert (bought["price"], bought["net"], bought["tax"], bought["gross"], bought["charge"]) == (
        300,
        300,
        57,
        357,
        357,
    )
    assert world.acct("a").balance == before - 357 and result.value["price"] == 300
