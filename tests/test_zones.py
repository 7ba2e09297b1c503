"""Zones that matter (chf/core/zones.py): allowances and promotions pay only in their zones, a fair-use limit caps
what roaming takes of a home bundle, and beyond them the wallet pays at the zone's price or the plan refuses.

Catalogue tests/fixtures/core.toml: plan `rlah` (fee 1000) has 3000 bytes of data valid at home and in the EU with
a fair use of 1000, and an EU-only bonus of 500 (used first); `rlah-deny` refuses roaming beyond its allowances.
Tariff `data-roam`: 10 per 100 bytes at home, 20 in the EU, 50 in the world zone; quantum 1000 bytes. Networks:
20801 home, 26201 EU, 310260 world.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chf.core.catalogue import CatalogueError
from chf.core.catalogue_loader import load_catalogue
from chf.core.model import (
    CREDIT_LIMIT_REACHED,
    DIRECT_DEBITING,
    END_USER_SERVICE_DENIED,
    FUA_TERMINATE,
    SUCCESS,
    ChargingAnswer,
    UnitAnswer,
)
from store.schema import BalanceSet, Bucket
from tests.corekit import CATALOGUE_TOML, T0, World, check_invariants, event, initial, terminate, test_catalogue, update
from tests.support import REPO

HOME, EU, US = "20801", "26201", "310260"


@pytest.fixture
def world(tmp_path: Path, open_store: Callable[..., Any]) -> Iterator[World]:
    w = World(tmp_path / "store", opener=open_store)
    w.tenant()
    yield w
    with w.store.read() as txn:
        check_invariants(txn)
    w.close()


def unit_of(answer: ChargingAnswer, rating_group: int = 10) -> UnitAnswer:
    found = answer.unit(rating_group)
    assert found is not None, answer
    return found


def buckets(world: World, line: int) -> dict[str, Bucket]:
    return {b.name: b for b in world.line_buckets(line)}


def roaming_line(world: World, plan: str = "rlah", balance: int = 10_000) -> tuple[int, str]:
    world.account("a", balance=balance)
    return world.line("a", plan=plan)


def test_buckets_carry_their_allowance_zones(world: World) -> None:
    line, _ = roaming_line(world)
    b = buckets(world, line)
    assert (b["data"].zones, b["data"].fair_use_left) == (["eu", "home"], 1000)
    assert (b["eu-bonus"].zones, b["eu-bonus"].fair_use_left) == (["eu"], None)
    assert b["data"].as_dict()["zones"] == ["eu", "home"]


def test_roaming_outside_the_allowance_zones_pays_the_zone_price(world: World) -> None:
    """The issue's case: data used in the US no longer comes out of the home bundle at 0."""
    line, imsi = roaming_line(world)
    assert world.acct("a").balance == 9_000
    ans = world.charge(initial("us", imsi, serving_network=US))
    assert (ans.result, unit_of(ans).granted) == (SUCCESS, 1000)
    assert world.acct("a").reserved == 500  # 1000 bytes at 50 per 100, from the wallet
    assert buckets(world, line)["data"].reserved == 0
    ans = world.charge(terminate("us", 1, imsi, used=500))
    assert unit_of(ans).charged == 250
    acct = world.acct("a")
    assert (acct.balance, acct.reserved) == (8_750, 0)
    b = buckets(world, line)
    assert (b["data"].remaining, b["eu-bonus"].remaining, b["data"].fair_use_left) == (3000, 500, 1000)
    usage = [e for e in world.events() if e["kind"] == "usage"][-1]
    assert usage["zone"] == "world"
    assert [i["balance"].rsplit(":", 1)[-1] for i in usage["impacts"]] == ["wallet"]


def test_eu_roaming_takes_the_bonus_then_the_fair_use_then_the_wallet(world: World) -> None:
    line, imsi = roaming_line(world)
    ans = world.charge(initial("eu", imsi, serving_network=EU))
    assert unit_of(ans).granted == 1000
    b = buckets(world, line)
    assert (b["eu-bonus"].reserved, b["data"].reserved, b["data"].fair_use_left) == (500, 500, 500)
    assert world.acct("a").reserved == 0

    ans = world.charge(update("eu", 1, imsi, used=1000))
    assert (unit_of(ans).granted, unit_of(ans).charged) == (1000, 0)
    b = buckets(world, line)
    # 500 bytes of fair use left: held for this grant; the other 500 from the wallet at the EU price.
    assert (b["eu-bonus"].remaining, b["data"].remaining, b["data"].reserved) == (0, 2500, 500)
    assert b["data"].fair_use_left == 0
    assert world.acct("a").reserved == 100

    ans = world.charge(update("eu", 2, imsi, used=1000))
    assert unit_of(ans).charged == 100
    b = buckets(world, line)
    assert (b["data"].remaining, b["data"].reserved, b["data"].fair_use_left) == (2000, 0, 0)
    assert world.acct("a").reserved == 200  # the fair use is spent: the whole grant is the wallet's
    world.charge(terminate("eu", 3, imsi, used=0))

    # At home the rest of the bundle still pays.
    ans = world.charge(initial("home", imsi, serving_network=HOME))
    assert unit_of(ans).granted == 1000
    assert buckets(world, line)["data"].reserved == 1000
    assert world.acct("a").reserved == 0
    ans = world.charge(terminate("home", 1, imsi, used=1000))
    assert unit_of(ans).charged == 0
    assert buckets(world, line)["data"].fair_use_left == 0


def test_fair_use_a_grant_did_not_use_is_given_back(world: World) -> None:
    line, imsi = roaming_line(world)
    world.charge(initial("eu", imsi, serving_network=EU))
    assert buckets(world, line)["data"].fair_use_left == 500
    world.charge(terminate("eu", 1, imsi, used=700))  # bonus 500 (reserved first), then 200 of the data
    b = buckets(world, line)
    assert (b["eu-bonus"].remaining, b["data"].remaining, b["data"].fair_use_left) == (0, 2800, 800)
    # A grant released unused (a new INITIAL restarts the session) gives all of it back.
    world.charge(initial("eu2", imsi, serving_network=EU))
    assert buckets(world, line)["data"].fair_use_left == 0  # the grant holds all 800 of it (no bonus left)
    world.charge(terminate("eu2", 1, imsi, used=0))
    assert buckets(world, line)["data"].fair_use_left == 800


def test_usage_beyond_the_grant_respects_the_fair_use(world: World) -> None:
    line, imsi = roaming_line(world)
    world.charge(initial("eu", imsi, serving_network=EU))  # 500 bonus + 500 data held
    ans = world.charge(terminate("eu", 1, imsi, used=2000))  # 1000 beyond the grant
    # Beyond the grant: the fair use left (500) pays, the other 500 bytes the wallet at 20 per 100.
    assert unit_of(ans).charged == 100
    b = buckets(world, line)
    assert (b["data"].remaining, b["data"].fair_use_left) == (2000, 0)


def test_the_plan_may_refuse_roaming_beyond_its_allowances(world: World) -> None:
    line, imsi = roaming_line(world, plan="rlah-deny")
    ans = world.charge(initial("us", imsi, serving_network=US))
    assert (ans.result, unit_of(ans).result) == (END_USER_SERVICE_DENIED, END_USER_SERVICE_DENIED)
    final = unit_of(ans).final
    assert final is not None and final.action == FUA_TERMINATE
    ans = world.charge(initial("eu", imsi, serving_network=EU))
    assert unit_of(ans).granted == 1000  # the fair use
    ans = world.charge(update("eu", 1, imsi, used=1000))
    assert unit_of(ans).result == END_USER_SERVICE_DENIED
    assert world.acct("a").balance == 10_000 and world.acct("a").reserved == 0
    ans = world.charge(initial("home", imsi, serving_network=HOME))
    assert unit_of(ans).granted == 1000
    # Out of everything at home: the plan's own overage (charge), not the roaming refusal.
    assert buckets(world, line)["data"].remaining == 2000


def test_home_usage_of_a_plan_without_money_is_credit_limit_not_a_refusal(world: World) -> None:
    _, imsi = roaming_line(world, plan="rlah-deny", balance=0)
    ans = world.charge(initial("h", imsi, serving_network=HOME, requested={"bytes": 1000}))
    assert unit_of(ans).granted == 1000
    for n in range(1, 3):
        ans = world.charge(update("h", n, imsi, used=1000))
    ans = world.charge(update("h", 3, imsi, used=1000))
    assert unit_of(ans).result == CREDIT_LIMIT_REACHED


def test_one_shot_events_draw_on_allowances_of_their_zone(world: World) -> None:
    line, imsi = roaming_line(world)
    us = world.charge(event("d-us", imsi, DIRECT_DEBITING, rg=10, amount={"bytes": 300}, serving_network=US))
    assert (us.result, us.cost) == (SUCCESS, 150)  # the wallet at the world price
    eu = world.charge(event("d-eu", imsi, DIRECT_DEBITING, rg=10, amount={"bytes": 800}, serving_network=EU))
    assert (eu.result, eu.cost) == (SUCCESS, 0)  # the EU bonus (500) and 300 of the data's fair use
    b = buckets(world, line)
    assert (b["eu-bonus"].remaining, b["data"].remaining, b["data"].fair_use_left) == (0, 2700, 700)
    assert world.acct("a").balance == 9_000 - 150


def test_rollover_of_a_fair_use_bucket_pays_at_home_only(world: World) -> None:
    line, imsi = roaming_line(world)
    world.now = T0 + 40 * 86_400  # the next period started: the unused data rolled over
    world.charge(initial("h", imsi, serving_network=HOME))
    b = buckets(world, line)
    assert (b["data-rollover"].zones, b["data-rollover"].fair_use_left) == (["eu", "home"], 0)
    assert (b["data"].fair_use_left, b["data-rollover"].reserved) == (1000, 1000)  # the rollover goes first
    world.charge(terminate("h", 1, imsi, used=0))
    world.charge(initial("eu", imsi, serving_network=EU))
    b = buckets(world, line)
    assert (b["data-rollover"].reserved, b["eu-bonus"].reserved, b["data"].reserved) == (0, 500, 500)


def test_buckets_without_zones_are_stored_as_before() -> None:
    plain = Bucket(1, "data", "plan", "bytes", [10], 10, 100, 100, 0, 0, 10)
    assert len(plain.pack()) == 11  # the bytes of a store written before zones existed
    zoned = Bucket(1, "data", "plan", "bytes", [10], 10, 100, 100, 0, 0, 10, ["eu", "home"], 40)
    again = BalanceSet.decode(BalanceSet(buckets=[plain, zoned]).encode())
    assert [(b.zones, b.fair_use_left) for b in again.buckets] == [(None, None), (["eu", "home"], 40)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('zones = ["home", "eu"]\n  fair_use = 1000', None),
        ('zones = ["home", "mars"]', "plan 'rlah': allowance 'data': zones: unknown zone 'mars'"),
        ('zones = ["home"]\n  fair_use = 1000', "allowance 'data': fair_use: limits usage outside the home zone"),
        ("zones = []", "allowances[0].zones: must be a non-empty array of names"),
        ('zones = ["home", "eu"]\n  fair_use = 0', "allowances[0].fair_use: must be a positive integer"),
    ],
)
def test_catalogue_checks_allowance_zones(change: str, message: str | None) -> None:
    text = CATALOGUE_TOML.replace('zones = ["home", "eu"]\n  fair_use = 1000', change, 1)
    assert text != CATALOGUE_TOML or message is None
    if message is None:
        test_catalogue(text)
        return
    with pytest.raises(CatalogueError) as err:
        test_catalogue(text)
    assert message in str(err.value)


def test_catalogue_checks_roaming_overage() -> None:
    text = CATALOGUE_TOML.replace('roaming_overage = "deny"', 'roaming_overage = "redirect"')
    with pytest.raises(CatalogueError) as err:
        test_catalogue(text)
    assert "plan 'rlah-deny': roaming_overage: must be one of charge | deny" in str(err.value)
    catalogue = test_catalogue()
    assert catalogue.plans["rlah-deny"].roaming_overage == "deny"
    assert catalogue.plans["rlah"].roaming_overage is None


def test_the_issue_case_on_the_demo_catalogue(tmp_path: Path) -> None:
    """conf/catalogue.toml: 5 MB used roaming in the US on prepaid-s no longer come out of the home data bundle at 0
    EUR: they cost 0.20 EUR per MB; at home and in the EU the bundle pays."""
    catalogue = load_catalogue(REPO / "conf" / "catalogue.toml")
    world = World(tmp_path / "store", catalogue=catalogue)
    try:
        world.tenant()
        world.account("alice", balance=20_000_000)
        line, imsi = world.line("alice", plan="prepaid-s")  # 4.99 EUR, the intro price
        world.charge(initial("us", imsi, serving_network=US))
        ans = world.charge(terminate("us", 1, imsi, used=5_000_000))
        assert unit_of(ans).charged == 1_000_000
        assert buckets(world, line)["data"].remaining == 5_000_000_000
        for key, network in (("eu", EU), ("home", HOME)):
            world.charge(initial(key, imsi, serving_network=network))
            assert unit_of(world.charge(terminate(key, 1, imsi, used=5_000_000))).charged == 0
        b = buckets(world, line)
        # The welcome bonus (home only, used first) paid at home; the EU took its 5 MB of the data's fair use.
        assert (b["data"].remaining, b["data"].fair_use_left) == (4_995_000_000, 1_995_000_000)
        assert b["welcome-data"].remaining == 995_000_000
        assert world.acct("alice").balance == 20_000_000 - 4_990_000 - 1_000_000
        with world.store.read() as txn:
            check_invariants(txn)
    finally:
        world.close()
