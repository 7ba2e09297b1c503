"""Stacked and adaptive pools and priced add-ons (issue 15, items 1, 2 and 8), at the engine, on both stores.

The plans and add-ons are tests/fixtures/core.toml's: `fleetpool` (a stacked pool of family "fleet"; `fleet-s`
lines bring 100 bytes, `fleet-l` lines 1000 and nothing while suspended), `tiered` (adaptive: 1000 / 2000 / 4000
bytes for 100 / 150 / 250), `topoff` (adaptive with top-off: 1000 / 2000 for 100 / 150), the add-ons `data-1k`
(1000 bytes of rating group 10 for 300, 7 days) and `sms-5` (5 SMS for 100, to the end of the line's period).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chf.core import provisioning
from chf.core.addons import buy_addon
from chf.core.catalogue import CatalogueError
from chf.core.catalogue_loader import parse_catalogue
from chf.core.model import RequestError
from chf.core.versions import CatalogueVersions
from tests.corekit import (
    CATALOGUE_TOML,
    T0,
    World,
    check_invariants,
    initial,
    snapshot,
    terminate,
    test_catalogue,
    update,
)
from tools.reports import build_report


@pytest.fixture
def world(tmp_path: Path, open_store: Callable[..., Any]) -> Iterator[World]:
    w = World(tmp_path / "store", opener=open_store)
    w.tenant()
    yield w
    with w.store.read() as txn:
        check_invariants(txn)
    w.close()


def at(year: int, month: int, day: int) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp())


def pool(world: World, account: str) -> Any:
    return next(b for b in world.account_buckets(account) if b.kind == "pool")


def kinds(world: World, kind: str, after: int = 0) -> list[dict[str, Any]]:
    return [e for e in world.events(after) if e["kind"] == kind]


def state(world: World, line: int, to: str) -> Any:
    return world.admin(provisioning.set_state, f"#{line}", to, actor="ops", reason="ops")


# ------------------------------------------------------------------------------------------------------------------
# Stacked pools (item 1)
# ------------------------------------------------------------------------------------------------------------------
def test_stacked_pool_is_what_its_member_lines_bring(world: World) -> None:
    """10 SIMs at 100 MB + 5 at 1 GB = 6 GB, in small: 3 x 100 + 2 x 1000 = 2300, recomputed from all the members
    at every join, leave, plan or state change."""
    world.account("fleet", payment="postpaid", credit_limit=100_000, plan="fleetpool")
    small = [world.line("fleet", plan="fleet-s")[0] for _ in range(3)]
    large = [world.line("fleet", plan="fleet-l")[0] for _ in range(2)]
    assert (pool(world, "fleet").initial, pool(world, "fleet").remaining) == (2300, 2300)
    seq = world.last_seq()
    state(world, large[0], "suspended")  # fleet-l keeps no allowances while suspended: its share leaves the pool
    assert pool(world, "fleet").initial == 1300
    state(world, small[0], "suspended")  # fleet-s keeps them (full fee): its share stays
    assert pool(world, "fleet").initial == 1300
    state(world, small[1], "terminated")
    assert pool(world, "fleet").initial == 1200
    world.admin(provisioning.assign_plan, "fleet-l", actor="ops", reason="upgrade", line_ref=f"#{small[2]}")
    assert pool(world, "fleet").initial == 2100
    world.line("fleet")  # no plan of the family: brings nothing
    provisioned, _ = world.line("fleet", plan="fleet-l", state="provisioned")
    assert pool(world, "fleet").initial == 2100
    state(world, provisioned, "active")
    assert pool(world, "fleet").initial == 3100
    resized = kinds(world, "pool_resize", seq)
    assert [e["pool_size"] for e in resized] == [1300, 1200, 2100, 3100]
    assert resized[-1]["members"] == {"fleet-s": [1, 100], "fleet-l": [3, 3000]}
    assert [e["impacts"][0]["delta"] for e in resized] == [-1000, -100, 900, 1000]

    world.account("fleet2", payment="postpaid", credit_limit=100_000, plan="fleetpool")
    world.admin(provisioning.move_line, f"#{large[1]}", "fleet2", actor="ops", reason="split")
    assert (pool(world, "fleet").initial, pool(world, "fleet2").initial) == (2100, 1000)

    seq = world.last_seq()
    rows = [{"account": "fleet", "imsi": f"20801990000000{n}", "plan": "fleet-s"} for n in range(3)]
    world.write(lambda txn: provisioning.add_lines(txn, world.engine, rows, now=world.now))
    assert pool(world, "fleet").initial == 2400
    assert [e["pool_size"] for e in kinds(world, "pool_resize", seq)] == [2400]  # derived once, after the rows

    world.now = at(2026, 4, 1)  # the next period's pool: from the members at the boundary
    world.charge(initial("s0", "208019900000000", rg=30))
    assert (pool(world, "fleet").initial, pool(world, "fleet").valid_from) == (2400, world.now)


def test_stacked_pool_pays_its_members_usage_then_the_wallet(world: World) -> None:
    world.account("fleet", payment="postpaid", credit_limit=100_000, plan="fleetpool")
    _, imsi = world.line("fleet", plan="fleet-s")
    world.line("fleet", plan="fleet-s")
    assert pool(world, "fleet").initial == 200
    ans = world.charge(initial("s1", imsi, rg=30))
    assert ans.units[0].granted == 500  # 200 from the pool, 300 from the wallet at the iot tariff
    world.charge(terminate("s1", 1, imsi, used=500, rg=30))
    assert pool(world, "fleet").remaining == 0
    assert world.acct("fleet").balance == -3  # 300 bytes at 1 per 100


def test_stacked_pool_catalogue_checks() -> None:
    base = CATALOGUE_TOML
    with pytest.raises(CatalogueError, match="plan 'x': pool_family: no plan has pool = 'stacked'"):
        test_catalogue(
            base + '[plans.x]\npayment = "postpaid"\npool_family = "nope"\npool_contribution = 5\n'
            '[plans.x.rating]\n"30" = "iot"\n'
        )
    with pytest.raises(CatalogueError, match="plan 'x': pool_contribution: required with pool_family"):
        test_catalogue(
            base + '[plans.x]\npayment = "postpaid"\npool_family = "fleet"\n[plans.x.rating]\n"30" = "iot"\n'
        )
    with pytest.raises(CatalogueError, match="plan 'x': pool_family: required when pool = 'stacked'"):
        test_catalogue(
            base + '[plans.x]\npayment = "postpaid"\npool = "stacked"\npool_unit = "bytes"\n'
            '[plans.x.rating]\n"30" = "iot"\n'
        )


# ------------------------------------------------------------------------------------------------------------------
# Adaptive pools (item 2)
# ------------------------------------------------------------------------------------------------------------------
def use(world: World, session: str, imsi: str, units: int) -> None:
    """Use `units` bytes of rating group 30 in one session, a grant (500) at a time."""
    world.charge(initial(session, imsi, rg=30))
    n = 1
    while units > 500:
        world.charge(update(session, n, imsi, used=500, rg=30, requested={}))
        units -= 500
        n += 1
    world.charge(terminate(session, n, imsi, used=units, rg=30))


def test_adaptive_pool_is_billed_at_the_cheapest_tier_covering_the_use(world: World) -> None:
    world.account("ent", payment="postpaid", credit_limit=100_000, plan="tiered")
    _, imsi = world.line("ent")
    assert (pool(world, "ent").initial, world.acct("ent").balance) == (4000, 0)  # the top tier from the start
    use(world, "s1", imsi, 1500)
    assert world.acct("ent").balance == 0  # nothing billed before the close
    world.now = at(2026, 4, 1)
    world.charge(initial("s2", imsi, rg=30))
    (bill,) = kinds(world, "pool_tier")
    assert (bill["pool_used"], bill["tier"], bill["charge"]) == (1500, {"index": 1, "amount": 2000, "fee": 150}, 150)
    assert "cheapest" in bill["why"] and bill["time"] == world.now and bill["subscriber"] is None
    assert world.acct("ent").balance == -150
    world.charge(terminate("s2", 1, imsi, used=0, rg=30))
    world.now = at(2026, 5, 1)  # nothing used: the first tier
    world.charge(initial("s3", imsi, rg=30))
    assert [e["tier"]["amount"] for e in kinds(world, "pool_tier")] == [2000, 1000]
    assert world.acct("ent").balance == -250


def test_adaptive_pool_of_an_account_whose_lines_all_ended_bills_its_last_period_then_stops(world: World) -> None:
    """The period that ends is billed at its close even when no line is in service any more (its usage happened);
    then the account's plan stops (README, "Fees and the line lifecycle"): no tier after that."""
    world.account("ent", payment="postpaid", credit_limit=100_000, plan="tiered")
    line, imsi = world.line("ent")
    use(world, "s1", imsi, 1500)
    state(world, line, "terminated")
    world.now = at(2026, 5, 2)  # two boundaries: 1 April bills March's use, then the plan stops
    world.admin(provisioning.topup, "ent", 1, actor="ops", reason="brings the account up to date")
    assert [(e["time"], e["charge"]) for e in kinds(world, "pool_tier")] == [(at(2026, 4, 1), 150)]
    assert world.acct("ent").balance == -150 + 1


def test_adaptive_pool_beyond_the_top_tier_is_overage_and_a_plan_change_bills_the_period(world: World) -> None:
    world.account("ent", payment="postpaid", credit_limit=100_000, plan="tiered")
    _, imsi = world.line("ent")
    use(world, "s1", imsi, 4300)  # 300 beyond the top tier: at the iot tariff, 1 per 100
    assert (pool(world, "ent").remaining, world.acct("ent").balance) == (0, -3)
    world.admin(provisioning.assign_plan, "iotflex", actor="ops", reason="downgrade", account_id="ent")
    (bill,) = kinds(world, "pool_tier")
    assert (bill["tier"]["amount"], bill["charge"], bill["reason"]) == (4000, 250, "plan changed to iotflex")
    assert world.acct("ent").balance == -253


def test_adaptive_pool_with_top_off_grows_a_tier_when_exhausted(world: World) -> None:
    world.account("ent", payment="postpaid", credit_limit=100_000, plan="topoff")
    _, imsi = world.line("ent")
    assert pool(world, "ent").initial == 1000  # the first tier
    use(world, "s1", imsi, 1000)
    assert not kinds(world, "pool_topoff")
    ans = world.charge(initial("s2", imsi, rg=30))  # exhausted: topped off before the wallet is asked
    assert ans.units[0].granted == 500 and world.acct("ent").reserved == 0
    (topoff,) = kinds(world, "pool_topoff")
    assert topoff["tier"] == {"index": 1, "amount": 2000, "fee": 150} and topoff["impacts"][0]["delta"] == 1000
    assert topoff["why"] == "1000 of 1000 bytes used, 0 reserved"
    assert (pool(world, "ent").initial, pool(world, "ent").reserved) == (2000, 500)
    world.charge(terminate("s2", 1, imsi, used=0, rg=30))  # a tier reached is owed, whatever is used of it
    world.now = at(2026, 4, 1)
    world.charge(initial("s3", imsi, rg=30))
    (bill,) = kinds(world, "pool_tier")
    assert (bill["pool_used"], bill["tier"]["amount"], bill["charge"]) == (1000, 2000, 150)
    assert "topped off" in bill["why"]
    assert pool(world, "ent").initial == 1000  # each period starts at the first tier again


def test_adaptive_pool_catalogue_checks() -> None:
    tier = "[[plans.x.pool_tiers]]\namount = {}\nfee = {}\n"
    head = '[plans.x]\npayment = "{}"\npool = "adaptive"\npool_unit = "bytes"\n'
    rating = '[plans.x.rating]\n"30" = "iot"\n'
    with pytest.raises(CatalogueError, match="pool: an adaptive pool is billed at the period's close"):
        test_catalogue(CATALOGUE_TOML + head.format("prepaid") + tier.format(10, 1) + rating)
    with pytest.raises(CatalogueError, match=r"pool_tiers\[1\].fee: must be at least the previous tier's"):
        test_catalogue(CATALOGUE_TOML + head.format("postpaid") + tier.format(10, 5) + tier.format(20, 4) + rating)
    with pytest.raises(CatalogueError, match=r"pool_tiers\[1\].amount: must be above the previous tier's"):
        test_catalogue(CATALOGUE_TOML + head.format("postpaid") + tier.format(10, 5) + tier.format(10, 6) + rating)
    with pytest.raises(CatalogueError, match="pool_tiers: required when pool = 'adaptive'"):
        test_catalogue(CATALOGUE_TOML + head.format("postpaid") + rating)


# ------------------------------------------------------------------------------------------------------------------
# Priced add-ons (item 8)
# ------------------------------------------------------------------------------------------------------------------
def buy(world: World, line: int, addon: str, key: str | None = None) -> Any:
    return world.admin(buy_addon, f"#{line}", addon, actor="shop", reason="bought", idempotency_key=key)


def test_addon_debits_the_wallet_and_grants_the_bucket_in_one_event(world: World) -> None:
    world.account("a", balance=2_000)
    line, imsi = world.line("a", plan="pre")  # fee 1000
    seq = world.last_seq()
    result = buy(world, line, "data-1k")
    assert result.value["price"] == 300 and result.value["bucket"]["remaining"] == 1000
    (ev,) = world.events(seq)
    assert (ev["kind"], ev["addon"], ev["charge"], ev["actor"]) == ("addon", "data-1k", 300, "shop")
    assert [(i["delta"], i["after"]) for i in ev["impacts"]] == [(-300, 700), (1000, 1000)]
    bucket = next(b for b in world.line_buckets(line) if b.kind == "addon")
    assert (bucket.name, bucket.valid_to, bucket.rating_groups) == ("data-1k", world.now + 7 * 86400, [10])
    ans = world.charge(initial("s1", imsi))  # priority 5: before the plan's data (priority 10)
    assert ans.units[0].granted == 1000 and bucket.id in [p[1] for p in world.session("s1").reservations[10].portions]
    sms = buy(world, line, "sms-5").value["bucket"]
    assert sms["valid_to"] == at(2026, 4, 1)  # to the end of the line's period
    again = buy(world, line, "data-1k", key="k1")
    assert buy(world, line, "data-1k", key="k1").duplicate and again.value["account"]["balance"] == 300
    assert world.acct("a").balance == 300


def test_addon_the_wallet_cannot_pay_is_refused_whole(world: World) -> None:
    world.account("a", balance=1_200)
    line, _ = world.line("a", plan="pre")  # 200 left
    with world.store.read() as txn:
        before = snapshot(txn)
    for addon, field in (("data-1k", "wallet"), ("nope", "addon")):
        with pytest.raises(RequestError) as exc:
            buy(world, line, addon)
        assert exc.value.field == field
    with world.store.read() as txn:
        assert snapshot(txn) == before
    assert buy(world, line, "sms-5").value["account"]["balance"] == 100  # what it can pay, it buys


def test_addon_checks_the_line_and_its_plan(world: World) -> None:
    world.account("iot", payment="postpaid", credit_limit=100_000, plan="iotflex")
    line, _ = world.line("iot")
    with pytest.raises(RequestError, match="sold with plans"):
        buy(world, line, "sms-5")  # not for the IoT plan
    assert buy(world, line, "data-1k").value["account"]["balance"] == -300  # postpaid: within the credit limit
    state(world, line, "suspended")
    with pytest.raises(RequestError, match="add-ons are sold to active lines"):
        buy(world, line, "data-1k")
    assert world.acct("iot").balance == -300


def test_addon_catalogue_checks() -> None:
    with pytest.raises(CatalogueError, match=r"addon 'x': plans\[0\]: no plan 'nope'"):
        test_catalogue(CATALOGUE_TOML + '[addons.x]\nprice = 1\nunit = "bytes"\namount = 1\nplans = ["nope"]\n')
    with pytest.raises(CatalogueError, match="addon 'x': amount: required"):
        test_catalogue(CATALOGUE_TOML + '[addons.x]\nprice = 1\nunit = "bytes"\n')


def test_revenue_report_counts_pool_tiers_and_addons_as_fees(world: World) -> None:
    """`chf report revenue`: an adaptive pool's tier and an add-on's price are fees; their buckets are grants."""
    world.account("ent", payment="postpaid", credit_limit=100_000, plan="tiered")
    _, imsi = world.line("ent")
    world.account("a", balance=2_000)
    line, _ = world.line("a", plan="pre")  # fee 1000
    buy(world, line, "data-1k")
    use(world, "s1", imsi, 1500)
    world.now = at(2026, 4, 1)
    world.charge(initial("s2", imsi, rg=30))
    day = 86_400
    report = build_report(world.store, T0 // day, world.now // day, "account")
    groups = {g["group"]: g for g in report["groups"]}
    assert groups["ent"]["fees"] == {"EUR": 150} and groups["a"]["fees"] == {"EUR": 1000 + 300}
    allowances = {a["name"]: a for a in groups["a"]["allowances"]}
    assert allowances["data-1k"]["granted"] == 1000


def test_adaptive_pool_close_is_priced_by_the_version_its_period_started_in(
    tmp_path: Path, open_store: Callable[..., Any]
) -> None:
    """An effective-dated catalogue (chf.core.versions) that makes the tiers dearer from 15 March: the March
    period, started in the old version, is billed at the old tier fee on 1 April; the event names that version."""
    dearer = CATALOGUE_TOML.replace("  amount = 2000\n  fee = 150\n", "  amount = 2000\n  fee = 180\n", 1)
    dearer = dearer.replace('default_zone = "world"\n', 'default_zone = "world"\neffective = 2026-03-15T00:00:00Z\n')
    v1, v2 = test_catalogue(), parse_catalogue(dearer, "v2.toml")
    w = World(tmp_path / "store", opener=open_store)
    w.engine.versions = CatalogueVersions([v1, v2])
    try:
        w.tenant()
        w.account("ent", payment="postpaid", credit_limit=100_000, plan="tiered")
        _, imsi = w.line("ent")
        use(w, "s1", imsi, 1500)
        w.now = at(2026, 4, 1)
        w.charge(initial("s2", imsi, rg=30))
        (bill,) = kinds(w, "pool_tier")
        assert (bill["tier"]["fee"], bill["catalogue"]) == (150, v1.version)
        w.now = at(2026, 4, 20)
        w.charge(terminate("s2", 1, imsi, used=1500, rg=30))
        w.now = at(2026, 5, 1)  # the April period started in the dearer version
        w.charge(initial("s3", imsi, rg=30))
        assert [(e["tier"]["fee"], e["catalogue"]) for e in kinds(w, "pool_tier")][1] == (180, v2.version)
    finally:
        w.close()
