"""Money and the line lifecycle (issue 11, items 3 and 4), at the engine: which periods a line pays for in each
state, proration, and an IoT pool whose size is derived from its member lines.

The policy is the README's ("Fees and the line lifecycle"). The catalogue is tests/corekit.py's (cycle day 1,
UTC) with three plans more: `keep` (a reduced fee while suspended, prorated), `halt` (no fee while suspended)
and `pre` as it is (the full fee while suspended, not prorated).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chf.core import provisioning
from chf.core.model import RequestError
from chf.core.renewals import needs_upkeep, state_at
from store.lmdbstore import Txn
from store.schema import BalanceSet, Subscriber
from tests.corekit import CATALOGUE_TOML, T0, World, check_invariants, initial, terminate, test_catalogue

EXTRA_PLANS = """
[plans.keep]
payment = "prepaid"
fee = 3000
suspended_fee = 500
prorate = true
  [plans.keep.rating]
  "10" = "data"
  [[plans.keep.allowances]]
  name = "data"
  unit = "bytes"
  amount = 3000
  rating_groups = [10]
  priority = 10

[plans.famp]
payment = "prepaid"
fee = 3000
  [plans.famp.rating]
  "10" = "data"
  [[plans.famp.allowances]]
  name = "family-data"
  unit = "bytes"
  amount = 5000
  rating_groups = [10]
  shared = true

[plans.halt]
payment = "prepaid"
fee = 3000
suspended_fee = "none"
  [plans.halt.rating]
  "10" = "data"
  [[plans.halt.allowances]]
  name = "data"
  unit = "bytes"
  amount = 3000
  rating_groups = [10]
  priority = 10
"""


def at(year: int, month: int, day: int, hour: int = 0) -> int:
    return int(datetime(year, month, day, hour, tzinfo=UTC).timestamp())


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "store", catalogue=test_catalogue(CATALOGUE_TOML + EXTRA_PLANS))
    w.tenant()
    yield w
    with w.store.read() as txn:
        check_invariants(txn)
    w.close()


def sweep(world: World) -> int:
    """What the service's sweeper does when the clock has moved on: bring every balance set that needs it up to
    date (chf.runtime.service, `_upkeep`). Returns how many it touched."""

    def run(txn: Txn) -> int:
        touched = 0
        for sub in list(txn.subscribers()):
            bs = txn.get_line_balances(sub.id)
            if bs is not None and needs_upkeep(bs, world.now):
                world.engine.context(txn, sub, world.now).flush()
                touched += 1
        for account in list(txn.accounts()):
            bs = txn.get_account_balances(account.id)
            if bs is not None and needs_upkeep(bs, world.now):
                ctx = world.engine.account_context(txn, account.id, world.now)
                assert ctx is not None
                ctx.flush()
                touched += 1
        return touched

    return world.write(run)


def state(world: World, line: int, to: str, reason: str = "ops") -> Any:
    return world.admin(provisioning.set_state, f"#{line}", to, actor="ops", reason=reason)


def fees(world: World, line: int) -> list[tuple[int, int]]:
    """The line's period fees as (time, money taken from the wallet), in order."""
    out = []
    for e in world.events():
        if e["kind"] == "renewal" and e["subscriber"] == line:
            out.append((e["time"], -sum(i["delta"] for i in e["impacts"] if i["balance"].endswith(":wallet"))))
    return out


def balances(world: World, line: int) -> BalanceSet:
    with world.store.read() as txn:
        bs = txn.get_line_balances(line)
    assert bs is not None
    return bs


def data_bucket(world: World, line: int) -> Any:
    return next((b for b in world.line_buckets(line) if b.name == "data"), None)


# ------------------------------------------------------------------------------------------------------------------
# Fees per state (item 3)
# ------------------------------------------------------------------------------------------------------------------
def test_the_audit_four_periods_later_no_fee_for_a_terminated_or_provisioned_line(world: World) -> None:
    """The audit: a terminated, a suspended and a provisioned line on a monthly plan were each charged the full fee
    for four periods when the clock moved on. Now: the terminated line pays nothing after its period in progress
    and its periods stop, the provisioned one never pays, the suspended one pays as its plan says (`pre`: the full
    fee, with its allowances, like the active line next to them)."""
    world.account("a", balance=100_000)
    terminated, _ = world.line("a", plan="pre")
    suspended, _ = world.line("a", plan="pre")
    provisioned, _ = world.line("a", plan="pre", state="provisioned")
    active, _ = world.line("a", plan="pre")
    assert world.acct("a").balance == 100_000 - 3 * 1000  # the provisioned line paid nothing
    assert fees(world, provisioned) == [] and world.line_buckets(provisioned) == []
    world.now = T0 + 3600
    state(world, terminated, "terminated")
    state(world, suspended, "suspended")

    world.now = at(2026, 7, 15)  # four boundaries: 1 April, May, June, July
    sweep(world)
    boundaries = [at(2026, m, 1) for m in (4, 5, 6, 7)]
    assert fees(world, active)[1:] == [(b, 1000) for b in boundaries]
    assert fees(world, suspended)[1:] == [(b, 1000) for b in boundaries]
    assert data_bucket(world, suspended).valid_from == boundaries[-1]  # suspended on `pre`: allowances too
    assert fees(world, terminated) == [(T0, 1000)]  # its first period, paid while it was active: nothing since
    assert fees(world, provisioned) == []
    assert world.acct("a").balance == 100_000 - 3 * 1000 - 2 * 4 * 1000

    ended = balances(world, terminated)
    assert ended.plan is None and ended.buckets == [] and not ended.renewal_pending
    stop = [e for e in world.events() if e["kind"] == "plan_change" and e["subscriber"] == terminated][-1]
    assert (stop["time"], stop["plan"], stop["previous_plan"]) == (boundaries[0], None, "pre")
    assert balances(world, provisioned).plan is None

    world.now = at(2027, 3, 15)  # a year on: the terminated and provisioned lines are never touched again
    seq = world.last_seq()
    sweep(world)
    assert not [e for e in world.events(seq) if e["subscriber"] in (terminated, provisioned)]


@pytest.mark.parametrize(
    ("plan", "fee", "suspended_fee", "allowances"),
    [("pre", 1000, 1000, True), ("keep", 3000, 500, False), ("halt", 3000, 0, False)],
)
def test_suspended_line_pays_what_its_plan_says(
    world: World, plan: str, fee: int, suspended_fee: int, allowances: bool
) -> None:
    world.account("a", balance=100_000)
    world.now = at(2026, 3, 1)  # a whole first period: no proration
    line, _imsi = world.line("a", plan=plan)
    assert fees(world, line) == [(world.now, fee)]
    world.now = at(2026, 3, 20)
    state(world, line, "suspended")
    world.now = at(2026, 7, 15)
    sweep(world)
    assert [charge for _, charge in fees(world, line)[1:]] == [suspended_fee] * 4
    assert world.acct("a").balance == 100_000 - fee - 4 * suspended_fee
    assert (data_bucket(world, line) is not None) == allowances
    assert balances(world, line).renewal_pending == (not allowances)
    # A top-up while it is suspended does not start the held allowances (nor charge for them).
    before = world.acct("a").balance
    world.admin(provisioning.topup, "a", 1000, actor="shop", reason="top-up")
    assert world.acct("a").balance == before + 1000
    assert (data_bucket(world, line) is not None) == allowances


def test_reactivation_starts_the_held_period_prorated(world: World) -> None:
    world.account("a", balance=100_000)
    line, _imsi = world.line("a", plan="keep")  # 4 March: 28 of March's 31 days left
    assert fees(world, line) == [(T0, 3000 * 28 // 31)]
    world.now = at(2026, 3, 20)
    state(world, line, "suspended")
    world.now = at(2026, 4, 11, 9)
    state(world, line, "active", "back")  # 1 April renewed first (suspended: 500, held), then the rest of April
    assert fees(world, line)[1:] == [(at(2026, 4, 1), 500), (world.now, 3000 * 20 // 30)]
    data = data_bucket(world, line)
    assert (data.remaining, data.valid_from, data.valid_to) == (3000, world.now, at(2026, 5, 1))
    assert not balances(world, line).renewal_pending
    kinds = [e["kind"] for e in world.events() if e["subscriber"] == line and e["time"] == world.now]
    assert kinds == ["lifecycle", "renewal"]  # the period starts after the line is active again
    world.now = at(2026, 5, 1)
    sweep(world)
    assert fees(world, line)[-1] == (at(2026, 5, 1), 3000)  # a whole period: the whole fee


def test_provisioned_line_pays_from_activation_for_the_days_left(world: World) -> None:
    world.account("a", balance=100_000)
    prorated, _ = world.line("a", plan="keep", state="provisioned")
    whole, _ = world.line("a", plan="pre", state="provisioned")
    world.now = at(2026, 6, 10)
    sweep(world)  # three boundaries passed: nothing
    assert world.acct("a").balance == 100_000 and world.line_buckets(prorated) == []
    world.now = at(2026, 6, 28, 15)
    state(world, prorated, "active", "sold")
    state(world, whole, "active", "sold")
    # June has 30 days; the 28th, 29th and 30th are left (the day of activation is paid for).
    assert fees(world, prorated) == [(world.now, 3000 * 3 // 30)]
    assert fees(world, whole) == [(world.now, 1000)]  # a plan that does not prorate: the whole fee
    for line in (prorated, whole):
        data = data_bucket(world, line)
        assert (data.remaining, data.valid_from, data.valid_to) == (3000, world.now, at(2026, 7, 1))
        bs = balances(world, line)
        assert (bs.period_start, bs.period_end, bs.period_index) == (world.now, at(2026, 7, 1), 0)
    change = [e for e in world.events() if e["kind"] == "plan_change" and e["subscriber"] == prorated][-1]
    assert (change["reason"], change["previous_plan"], change["plan"]) == ("line activated", None, "keep")
    world.now = at(2026, 7, 1)
    sweep(world)
    assert fees(world, prorated)[-1] == (at(2026, 7, 1), 3000)


def test_set_plan_on_provisioned_and_terminated_lines(world: World) -> None:
    world.account("a", balance=100_000)
    stock, _ = world.line("a", plan="pre", state="provisioned")
    world.admin(provisioning.assign_plan, "keep", actor="ops", reason="upsell", line_ref=f"#{stock}")
    assert world.acct("a").balance == 100_000 and world.line_buckets(stock) == []
    state(world, stock, "active", "sold")
    assert fees(world, stock) == [(T0, 3000 * 28 // 31)]  # the plan set while in stock, from activation
    gone, _ = world.line("a", plan="pre")
    state(world, gone, "terminated")
    seq, balance = world.last_seq(), world.acct("a").balance
    with pytest.raises(RequestError) as refused:
        world.admin(provisioning.assign_plan, "pre", actor="ops", reason="x", line_ref=f"#{gone}")
    assert refused.value.field == "line" and "terminated" in refused.value.message
    assert (world.last_seq(), world.acct("a").balance) == (seq, balance)


def test_a_period_running_on_a_provisioned_line_stops_at_its_end(world: World) -> None:
    """A store written before this policy has provisioned lines whose periods run (their first fee was taken at
    creation): they stop at their next boundary."""
    world.account("a", balance=100_000)
    line, _ = world.line("a", plan="pre", state="provisioned")
    world.write(lambda txn: txn.put_line_balances(line, BalanceSet("pre", T0, at(2026, 4, 1), 0)))
    world.now = at(2026, 5, 15)
    sweep(world)
    assert balances(world, line).plan is None and fees(world, line) == []
    assert world.acct("a").balance == 100_000


def test_state_at_a_boundary_comes_from_the_history() -> None:
    sub = Subscriber(1, "t", "a", "1", None, None, None, "terminated", 0, "pre", 0)
    sub.history = [[None, "active", 100, "x", "created"], ["active", "suspended", 200, "x", ""]]
    sub.history.append(["suspended", "terminated", 300, "x", ""])
    assert [state_at(sub, t) for t in (100, 150, 200, 250, 300, 301)] == [
        "terminated",  # nothing before: the current state
        "active",
        "active",  # a transition at the boundary itself happens after the renewal
        "suspended",
        "suspended",
        "terminated",
    ]


# ------------------------------------------------------------------------------------------------------------------
# IoT pools derived from their members (item 4)
# ------------------------------------------------------------------------------------------------------------------
def pool(world: World, account: str) -> Any:
    return next(b for b in world.account_buckets(account) if b.kind == "pool")


def test_flexible_pool_is_derived_from_its_active_lines(world: World) -> None:
    """The audit: suspending and re-activating a line of a flexible pool three times took it to 250 MB with 2
    active lines. Its size is now derived from its members at every change, each change an event."""
    world.account("iot", payment="postpaid", credit_limit=100_000, plan="iotflex")
    first, _ = world.line("iot")
    world.line("iot")
    assert (pool(world, "iot").initial, world.acct("iot").active_lines) == (2000, 2)
    seq = world.last_seq()
    for _ in range(3):
        state(world, first, "suspended")
        assert (pool(world, "iot").initial, world.acct("iot").active_lines) == (1000, 1)
        state(world, first, "active")
    p = pool(world, "iot")
    assert (p.initial, p.remaining, world.acct("iot").active_lines) == (2000, 2000, 2)
    resized = [e for e in world.events(seq) if e["kind"] == "pool_resize"]
    assert [e["impacts"][0]["delta"] for e in resized] == [-1000, 1000] * 3
    assert [e["pool_size"] for e in resized] == [1000, 2000] * 3

    stock, _ = world.line("iot", state="provisioned")
    assert pool(world, "iot").initial == 2000  # not counted until active
    state(world, stock, "active")
    assert pool(world, "iot").initial == 3000
    state(world, stock, "terminated")
    assert pool(world, "iot").initial == 2000

    world.account("iot2", payment="postpaid", credit_limit=100_000, plan="iotflex")
    world.admin(provisioning.move_line, f"#{first}", "iot2", actor="ops", reason="split")
    assert (pool(world, "iot").initial, pool(world, "iot2").initial) == (1000, 1000)
    assert (world.acct("iot").active_lines, world.acct("iot2").active_lines) == (1, 1)

    seq = world.last_seq()
    rows = [{"account": "iot", "imsi": f"20801990000000{n}"} for n in range(3)]
    rows.append({"account": "iot", "imsi": "208019900000009", "state": "provisioned"})
    world.write(lambda txn: provisioning.add_lines(txn, world.engine, rows, now=world.now))
    assert (pool(world, "iot").initial, world.acct("iot").active_lines) == (4000, 4)
    resized = [e for e in world.events(seq) if e["kind"] == "pool_resize"]
    assert [e["impacts"][0]["delta"] for e in resized] == [1000] * 3  # one per active line, as add_line does

    world.now = at(2026, 4, 1)  # the next period's pool: from the active lines at the boundary
    sweep(world)
    assert pool(world, "iot").initial == 4000 and pool(world, "iot").valid_from == world.now


def test_a_pool_that_shrinks_keeps_what_was_used(world: World) -> None:
    """A line leaving takes its share out of the pool's size, never out of what was used: a pool used beyond its
    new size is exhausted (usage is charged at the tariff) until it grows again, and then has exactly its size
    less what was used, not more."""
    world.account("iot", payment="postpaid", credit_limit=100_000, plan="iotflex")
    first, imsi = world.line("iot")
    _second, imsi2 = world.line("iot")
    world.charge(initial("s1", imsi, rg=30))
    world.charge(terminate("s1", 1, imsi, used=1500, rg=30))
    third, _ = world.line("iot")
    p = pool(world, "iot")
    assert (p.initial, p.remaining, world.acct("iot").balance) == (3000, 1500, 0)
    state(world, first, "suspended")
    state(world, third, "suspended")
    p = pool(world, "iot")
    assert (p.initial, p.remaining) == (1000, -500)  # used beyond its size: exhausted, nothing taken back
    world.charge(initial("s2", imsi2, rg=30))  # the wallet pays at the tariff: the pool has nothing to give
    assert pool(world, "iot").reserved == 0 and world.acct("iot").reserved > 0
    world.charge(terminate("s2", 1, imsi2, used=0, rg=30))
    state(world, first, "active")
    state(world, third, "active")
    p = pool(world, "iot")
    assert (p.initial, p.remaining) == (3000, 1500)  # 3000 less the 1500 used: no inflation


def test_an_account_fee_renewed_by_a_line_request_names_no_line(world: World) -> None:
    """A line's request (here a provisioned line's move) may be what brings its account's plan up to date: the
    account's renewal and expiries are the account's, not charged to that line (found by the money oracle)."""
    world.account("fam", payment="postpaid", credit_limit=100_000, plan="fam")
    world.account("other", payment="postpaid", credit_limit=100_000)
    line, _ = world.line("fam", plan="fam", state="provisioned")
    world.now = at(2026, 4, 2)
    seq = world.last_seq()
    world.admin(provisioning.move_line, f"#{line}", "other", actor="ops", reason="split")
    renewals = [e for e in world.events(seq) if e["kind"] in ("renewal", "expiry")]
    assert renewals and all(e["subscriber"] is None and e["account"] == "fam" for e in renewals)
    assert [e["charge"] for e in renewals if e["kind"] == "renewal"] == [3000]


# ------------------------------------------------------------------------------------------------------------------
# An account's plan and its lines
# ------------------------------------------------------------------------------------------------------------------
def account_fees(world: World, account: str, after: int = 0) -> list[tuple[int, int]]:
    """The account plan's period fees as (time, money taken from the wallet)."""
    return [
        (e["time"], e.get("charge") or 0)
        for e in world.events(after)
        if e["kind"] == "renewal" and e["account"] == account and e["subscriber"] is None
    ]


def account_plan(world: World, account: str) -> str | None:
    with world.store.read() as txn:
        bs = txn.get_account_balances(account)
    assert bs is not None
    return bs.plan


def test_an_account_plan_stops_when_no_line_is_in_service_and_starts_when_one_joins(world: World) -> None:
    """An account's plan (a family plan: its fee and shared allowances) renews at a boundary only while at least
    one of its lines is not terminated then. With every line terminated (or moved away) its periods stop at the
    next boundary: no fee, nothing granted, one plan_change naming no line; a line that joins the account (added
    or moved in) starts the plan again at once, fee and allowances."""
    world.account("fam", payment="postpaid", credit_limit=100_000, plan="fam")
    first, _ = world.line("fam")
    second, _ = world.line("fam", state="provisioned")
    assert account_fees(world, "fam") == [(T0, 3000)]
    world.now = at(2026, 4, 10)  # the provisioned and the active line keep the plan: 1 April is charged
    sweep(world)
    assert account_fees(world, "fam")[1:] == [(at(2026, 4, 1), 3000)]
    world.now = at(2026, 4, 20)
    state(world, first, "terminated")
    state(world, second, "terminated")

    world.now = at(2026, 7, 15)  # three boundaries: 1 May, June, July
    seq = world.last_seq()
    sweep(world)
    assert account_fees(world, "fam", seq) == []
    assert world.acct("fam").balance == -2 * 3000
    [stop] = [e for e in world.events(seq) if e["kind"] == "plan_change"]
    assert (stop["time"], stop["plan"], stop["previous_plan"]) == (at(2026, 5, 1), None, "fam")
    assert stop["account"] == "fam" and stop["subscriber"] is None and stop["reason"].startswith("no line")
    assert account_plan(world, "fam") is None and world.acct("fam").plan == "fam"  # kept, to start again
    assert all(b.remaining == 0 or b.valid_to <= world.now for b in world.account_buckets("fam"))
    world.now = at(2027, 3, 15)
    seq = world.last_seq()
    sweep(world)
    assert [e for e in world.events(seq) if e["account"] == "fam"] == []

    third, _ = world.line("fam")  # a line joins: the plan starts again now, with its fee and allowances
    assert account_fees(world, "fam", seq) == [(world.now, 3000)] and account_plan(world, "fam") == "fam"
    family = next(b for b in world.account_buckets("fam") if b.name == "family-data")
    assert (family.remaining, family.valid_from, family.valid_to) == (5000, world.now, at(2027, 4, 1))
    world.now = at(2027, 4, 2)
    sweep(world)
    assert account_fees(world, "fam", seq)[1:] == [(at(2027, 4, 1), 3000)]
    assert world.acct("fam").balance == -4 * 3000

    # A line moved away is no longer the account's: the same holds, and moving it back starts the plan again.
    world.account("other", payment="postpaid", credit_limit=100_000)
    world.admin(provisioning.move_line, f"#{third}", "other", actor="ops", reason="split")
    world.now = at(2027, 5, 2)
    seq = world.last_seq()
    sweep(world)
    assert account_fees(world, "fam", seq) == [] and account_plan(world, "fam") is None
    world.admin(provisioning.move_line, f"#{third}", "fam", actor="ops", reason="back")
    assert account_fees(world, "fam", seq) == [(world.now, 3000)]
    assert world.acct("fam").balance == -5 * 3000


def test_a_line_holding_money_does_not_move_to_an_account_in_another_currency(world: World) -> None:
    """A line's money bucket (here a goodwill grant) is in its account's currency: a move to an account of the
    same tenant in another currency would spend it as that currency. Refused, naming the account, changing
    nothing; once the money is gone (adjusted away) the line moves."""
    world.account("eur", payment="postpaid", credit_limit=10_000)
    world.account("usd", payment="postpaid", credit_limit=10_000, currency="USD")
    line, _ = world.line("eur")
    granted = world.admin(
        provisioning.grant_bucket,
        line,
        name="goodwill",
        unit="money",
        amount=2_000_000,
        valid_to=world.now + 30 * 86_400,
        actor="ops",
        reason="goodwill",
    )
    seq = world.last_seq()
    with pytest.raises(RequestError) as refused:
        world.admin(provisioning.move_line, f"#{line}", "usd", actor="ops", reason="x")
    assert refused.value.field == "account" and "EUR" in refused.value.message and "USD" in refused.value.message
    assert world.last_seq() == seq
    with world.store.read() as txn:
        assert txn.get_subscriber(line).account == "eur"  # type: ignore[union-attr]
    bucket = granted.value["id"]
    world.admin(provisioning.adjust, "eur", -2_000_000, actor="ops", reason="spent", line_id=line, bucket_id=bucket)
    world.admin(provisioning.move_line, f"#{line}", "usd", actor="ops", reason="x")
    with world.store.read() as txn:
        assert txn.get_subscriber(line).account == "usd"  # type: ignore[union-attr]


def test_a_top_up_does_not_start_a_held_account_period_with_no_line_in_service(world: World) -> None:
    """A prepaid account plan whose fee could not be paid waits for a top-up (renewal_pending). If by then every
    line of the account is terminated, the top-up starts nothing: no fee, no allowances; a line in service does."""
    world.account("fam", plan="famp")
    line, _ = world.line("fam")
    with world.store.read() as txn:
        assert txn.get_account_balances("fam").renewal_pending  # type: ignore[union-attr]
    world.now += 3600
    state(world, line, "terminated")
    world.now += 3600
    seq = world.last_seq()
    world.admin(provisioning.topup, "fam", 10_000, actor="ops", reason="shop")
    assert account_fees(world, "fam", seq) == [] and world.acct("fam").balance == 10_000
    assert not [b for b in world.account_buckets("fam") if b.name == "family-data"]
    world.line("fam")  # a line in service: the held period starts with the next top-up
    world.admin(provisioning.topup, "fam", 1, actor="ops", reason="shop")
    assert account_fees(world, "fam", seq) == [(world.now, 3000)] and world.acct("fam").balance == 10_001 - 3000


def test_an_import_into_an_account_whose_plan_stopped_starts_it_once(world: World) -> None:
    """Bulk import (chf import, add_lines): rows joining an account whose plan stopped start it once, after the
    rows; a row refused does not (no line joined)."""
    world.account("fam", payment="postpaid", credit_limit=100_000, plan="fam")
    line, _ = world.line("fam")
    state(world, line, "terminated")
    world.now = at(2026, 4, 2)
    sweep(world)
    assert account_plan(world, "fam") is None
    seq = world.last_seq()
    bad = [{"account": "fam", "imsi": "12"}]
    world.write(lambda txn: provisioning.add_lines(txn, world.engine, bad, now=world.now))
    assert account_fees(world, "fam", seq) == [] and account_plan(world, "fam") is None
    rows = [{"account": "fam", "imsi": f"20801880000000{n}"} for n in range(3)]
    world.write(lambda txn: provisioning.add_lines(txn, world.engine, rows, now=world.now))
    assert account_fees(world, "fam", seq) == [(world.now, 3000)] and account_plan(world, "fam") == "fam"
    assert world.acct("fam").balance == -2 * 3000  # at creation, and once for the import
