"""Split billing (chf/core/split.py): one SIM, several payers.

Catalogue tests/fixtures/core.toml, plan `car`: infotainment (rating group 10, tariff `data`: 10 per 100 bytes at
home, 20 in the EU) is the driver's, from the line's 1000 bytes and then the prepaid wallet; the car maker, the
driver's account's parent, pays the APN "telematics.oem" and rating group 50 (tariff `telematics`: 5 per 100
bytes) from its pool (account plan `oempool`: 2000 bytes for rating group 50) and then its postpaid bill; the
account "sponsor" pays 5G (RAT NR) data in the EU at weekends. Quantum 1000 bytes. On the Redis cluster the
driver's and the car maker's accounts are in different partitions: a request touching both is one two-phase commit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chf.core.catalogue import CatalogueError
from chf.core.catalogue_loader import load_catalogue
from chf.core.model import INITIAL, RATING_FAILED, SUCCESS, TERMINATE, ChargingAnswer, ChargingRequest, UnitAnswer
from chf.export.records import to_record
from tests.corekit import CATALOGUE_TOML, World, check_invariants, initial, terminate, test_catalogue, unit, update
from tests.support import REPO
from tools.reports import build_report

TELEMATICS = "telematics.oem.mnc001.mcc208.gprs"
SATURDAY = int(datetime(2026, 3, 7, 12, 0, tzinfo=UTC).timestamp())


@pytest.fixture
def world(tmp_path: Path, open_store: Callable[..., Any]) -> Iterator[World]:
    w = World(tmp_path / "store", opener=open_store)
    w.tenant()
    w.account("oem", payment="postpaid", credit_limit=100_000, plan="oempool")
    w.account("sponsor", payment="postpaid", credit_limit=50_000)
    w.account("drv", balance=10_000, parent="oem")
    yield w
    with w.store.read() as txn:
        check_invariants(txn)  # reservations: each payer's wallet and pool hold what the sessions hold of them
    w.close()


def unit_of(answer: ChargingAnswer, rating_group: int) -> UnitAnswer:
    found = answer.unit(rating_group)
    assert found is not None, answer
    return found


def pool(world: World) -> Any:
    return next(b for b in world.account_buckets("oem") if b.kind == "pool")


def line_data(world: World, line: int) -> Any:
    return next(b for b in world.line_buckets(line) if b.name == "data")


def test_the_car_maker_pays_its_rating_group_from_its_pool_then_its_bill(world: World) -> None:
    line, imsi = world.line("drv", plan="car")
    ans = world.charge(initial("s", imsi, rg=50))
    assert (ans.result, unit_of(ans, 50).granted) == (SUCCESS, 1000)
    assert (pool(world).reserved, line_data(world, line).reserved) == (1000, 0)
    assert world.session("s").reservations[50].payer == "oem"
    world.charge(update("s", 1, imsi, used=1000, rg=50))
    world.charge(update("s", 2, imsi, used=1000, rg=50))
    assert pool(world).remaining == 0
    assert world.acct("oem").reserved == 50  # the pool is used up: the bill holds the next grant
    ans = world.charge(terminate("s", 3, imsi, used=1000, rg=50))
    assert unit_of(ans, 50).charged == 50
    assert (world.acct("oem").balance, world.acct("oem").reserved) == (-50, 0)
    assert (world.acct("drv").balance, world.acct("drv").reserved) == (10_000, 0)
    usage = [e for e in world.events() if e["kind"] == "usage"]
    assert {e["payer"] for e in usage} == {"oem"} and {e["account"] for e in usage} == {"drv"}
    assert usage[-1]["impacts"] == [
        {"balance": "account:oem:wallet", "unit": "money", "delta": -50, "after": -50},
    ]


def test_a_request_touching_two_payers_reserves_against_both(world: World) -> None:
    line, imsi = world.line("drv", plan="car")
    req = ChargingRequest(INITIAL, "s", 0, [("imsi", imsi)], [unit(10, {}), unit(50, {})])
    ans = world.charge(req)
    assert (unit_of(ans, 10).granted, unit_of(ans, 50).granted) == (1000, 1000)
    assert (line_data(world, line).reserved, pool(world).reserved) == (1000, 1000)
    done = ChargingRequest(
        TERMINATE, "s", 1, [("imsi", imsi)], [unit(10, None, {"bytes": 1500}), unit(50, None, {"bytes": 700})]
    )
    ans = world.charge(done)
    assert (unit_of(ans, 10).charged, unit_of(ans, 50).charged) == (50, 0)
    assert (line_data(world, line).remaining, pool(world).remaining) == (0, 1300)
    assert (world.acct("drv").balance, world.acct("oem").balance) == (9_950, 0)
    assert world.acct("drv").reserved == world.acct("oem").reserved == 0


def test_the_telematics_apn_is_the_car_makers_whatever_the_rating_group(world: World) -> None:
    line, imsi = world.line("drv", plan="car")
    ans = world.charge(initial("t", imsi, rg=10, apn=TELEMATICS))
    assert unit_of(ans, 10).granted == 1000
    # No pool of the car maker's covers rating group 10: its bill holds the grant; the driver's data is untouched.
    assert (world.acct("oem").reserved, line_data(world, line).reserved) == (100, 0)
    world.charge(update("t", 1, imsi, used=400))  # the update does not repeat the APN: the session remembers it
    assert world.acct("oem").balance == -40
    world.charge(terminate("t", 2, imsi, used=0))
    assert (world.acct("drv").balance, world.acct("oem").reserved) == (10_000, 0)


def test_rules_by_rat_zone_and_time(world: World) -> None:
    world.account("sp-line", balance=10_000, parent="oem")
    _, imsi = world.line("sp-line", plan="car")
    world.charge(initial("wed", imsi, serving_network="26201", rat="NR"))  # a Wednesday: the driver pays
    world.charge(terminate("wed", 1, imsi, used=2000))
    assert world.acct("sp-line").balance == 10_000 - 200  # 1000 from the bundle, 1000 at the EU price
    world.now = SATURDAY
    world.charge(initial("sat", imsi, serving_network="26201", rat="NR"))
    world.charge(initial("sat-lte", imsi, serving_network="26201", rat="EUTRAN"))
    world.charge(terminate("sat", 1, imsi, used=500))
    world.charge(terminate("sat-lte", 1, imsi, used=500))
    assert world.acct("sponsor").balance == -100  # 5G in the EU at the weekend: 500 bytes at 20 per 100
    assert world.acct("sp-line").balance == 10_000 - 200 - 100  # LTE: the driver's


def test_a_rule_whose_payer_cannot_pay_refuses_the_rating_group(world: World) -> None:
    world.account("solo", balance=10_000)  # no parent
    _, imsi = world.line("solo", plan="car")
    req = ChargingRequest(INITIAL, "s", 0, [("imsi", imsi)], [unit(10, {}), unit(50, {})])
    ans = world.charge(req)
    assert (unit_of(ans, 10).result, unit_of(ans, 50).result) == (SUCCESS, RATING_FAILED)
    assert world.acct("solo").reserved == 0 and world.acct("solo").balance == 10_000


def test_a_payer_in_another_currency_never_pays(world: World) -> None:
    world.account("usd-maker", payment="postpaid", credit_limit=100_000, currency="USD")
    world.account("drv2", balance=10_000, parent="usd-maker")
    _, imsi = world.line("drv2", plan="car")
    ans = world.charge(initial("s", imsi, rg=50))
    assert unit_of(ans, 50).result == RATING_FAILED
    assert world.acct("usd-maker").reserved == 0


def test_catalogue_checks_split_rules() -> None:
    bad = CATALOGUE_TOML.replace('payer = "account:sponsor"', 'payer = "sponsor"').replace(
        'zones = ["eu"]\n  days', 'zones = ["mars"]\n  days'
    )
    with pytest.raises(CatalogueError) as err:
        test_catalogue(bad)
    text = str(err.value)
    assert "plan 'car': split[2].payer: must be 'parent' or 'account:<account id>', got 'sponsor'" in text
    assert "plan 'car': split 'eu-5g-weekends': zones: unknown zone 'mars'" in text
    with pytest.raises(CatalogueError) as err:
        test_catalogue(CATALOGUE_TOML.replace('name = "fleet-data"', 'name = "fleet-data"\n  payment = "x"'))
    assert "split[1].payment: unknown key" in str(err.value)


def test_the_connected_car_of_the_demo_catalogue(tmp_path: Path) -> None:
    """conf/catalogue.toml and conf/demo.toml: Lena's infotainment comes out of her bundle and wallet; her car's
    telematics out of the car maker's 50 GB pool, and its APN out of the car maker's bill."""
    world = World(tmp_path / "store", catalogue=load_catalogue(REPO / "conf" / "catalogue.toml"))
    try:
        world.tenant()
        world.account("carmaker", payment="postpaid", credit_limit=1_000_000_000, plan="oem-fleet")
        world.account("lena", balance=15_000_000, parent="carmaker")
        line, imsi = world.line("lena", plan="connected-car")
        req = ChargingRequest(INITIAL, "car", 0, [("imsi", imsi)], [unit(10, {}), unit(30, {})], apn="internet")
        ans = world.charge(req)
        assert (unit_of(ans, 10).granted, unit_of(ans, 30).granted) == (10_000_000, 1_000_000)
        used = [unit(10, None, {"bytes": 4_000_000}), unit(30, None, {"bytes": 300_000})]
        world.charge(ChargingRequest(TERMINATE, "car", 1, [("imsi", imsi)], used))
        assert next(b for b in world.line_buckets(line) if b.name == "infotainment").remaining == 1_996_000_000
        fleet_pool = next(b for b in world.account_buckets("carmaker") if b.kind == "pool")
        assert fleet_pool.remaining == 50_000_000_000 - 300_000
        world.charge(initial("oem", imsi, apn="telematics.oem"))
        world.charge(terminate("oem", 1, imsi, used=2_500_000))
        assert world.acct("carmaker").balance == -99_000_000 - 30_000  # the fleet fee, 3 started MB of data-payg
        assert world.acct("lena").balance == 15_000_000 - 4_990_000  # her plan's fee only
        with world.store.read() as txn:
            check_invariants(txn)
    finally:
        world.close()


def test_exports_and_reports_name_the_payer(world: World) -> None:
    """The export record's account is the paying one (the line's own in details.lineAccount); `chf report --by
    account` counts a split-billed charge to its payer."""
    _, imsi = world.line("drv", plan="car")
    world.charge(ChargingRequest(INITIAL, "s", 0, [("imsi", imsi)], [unit(10, {}), unit(50, {})]))
    used = [unit(10, None, {"bytes": 1500}), unit(50, None, {"bytes": 2500})]
    world.charge(ChargingRequest(TERMINATE, "s", 1, [("imsi", imsi)], used))
    usage = {e["rating_group"]: e for e in world.events() if e["kind"] == "usage"}
    oem = to_record(usage[50])
    assert (oem["account"], oem["details"]["lineAccount"], oem["charge"]) == ("oem", "drv", 25)
    own = to_record(usage[10])
    assert own["account"] == "drv" and "lineAccount" not in own.get("details", {})
    day = world.now // 86_400
    report = build_report(world.store, day, day, "account")
    charges = {g["group"]: g["charges"] for g in report["groups"]}
    assert charges["oem"] == {"EUR": 25} and charges["drv"] == {"EUR": 50}


def test_a_payer_with_a_net_tax_profile_pays_the_gross(tmp_path: Path, open_store: Callable[..., Any]) -> None:
    """The payer a rule names is taxed by its own profile (prices net: 20 % added), not by the line's account's."""
    taxed = CATALOGUE_TOML + '\n[tax_profiles.vat-net]\nprices = "net"\nrate = "20%"\n'
    w = World(tmp_path / "store", catalogue=test_catalogue(taxed), opener=open_store)
    w.tenant()
    w.account("oem", payment="postpaid", credit_limit=100_000, plan="oempool", tax_profile="vat-net")
    w.account("drv", balance=10_000, parent="oem")
    _, imsi = w.line("drv", plan="car")
    w.charge(initial("s", imsi, rg=50))
    w.charge(update("s", 1, imsi, used=1000, rg=50))
    w.charge(update("s", 2, imsi, used=1000, rg=50))
    assert w.acct("oem").reserved == 60  # the pool is used up: the bill holds 50 net + 10 tax for the next grant
    ans = w.charge(terminate("s", 3, imsi, used=1000, rg=50))
    assert unit_of(ans, 50).charged == 60
    assert (w.acct("oem").balance, w.acct("oem").reserved) == (-60, 0)
    assert (w.acct("drv").balance, w.acct("drv").reserved) == (10_000, 0)
    last = [e for e in w.events() if e["kind"] == "usage"][-1]
    assert (last["payer"], last["net"], last["tax"], last["gross"], last["charge"]) == ("oem", 50, 10, 60, 60)
    with w.store.read() as txn:
        check_invariants(txn)  # each balance = its opening value + its events
    w.close()
