"""Engine scenarios on a real LMDB store on disk, with the small catalogue of tests/corekit.py.

Numbers to keep in mind: data quantum 1000 bytes (IoT rating group 30: 500), validity 100 s; tariff "data"
costs 10 micro-units per started 100 bytes at home (20 in the EU, denied elsewhere).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chf.core import events, provisioning
from chf.core.model import (
    CHECK_BALANCE,
    CREDIT_LIMIT_REACHED,
    DIRECT_DEBITING,
    END_USER_SERVICE_DENIED,
    EVENT_ACTIONS,
    FUA_REDIRECT,
    FUA_RESTRICT,
    FUA_TERMINATE,
    PRICE_ENQUIRY,
    RATING_FAILED,
    REFUND_ACCOUNT,
    SESSION_UNKNOWN,
    SUCCESS,
    USER_UNKNOWN,
    ChargingAnswer,
    ChargingRequest,
    FinalUnit,
    RequestError,
    Signal,
    UnitAnswer,
    UsageReport,
)
from chf.runtime.service import ChargingService
from store.lmdbstore import Txn
from store.schema import BalanceSet
from tests.corekit import (
    CATALOGUE_TOML,
    T0,
    World,
    check_invariants,
    event,
    initial,
    snapshot,
    terminate,
    test_catalogue,
    unit,
    update,
)


def unit_of(answer: ChargingAnswer, rating_group: int) -> UnitAnswer:
    """The answer for one rating group of a request (the test fails if there is none)."""
    found = answer.unit(rating_group)
    assert found is not None, (rating_group, answer)
    return found


def final_of(answer: ChargingAnswer, rating_group: int) -> FinalUnit:
    """The Final-Unit-Indication of one rating group's answer (the test fails if there is none)."""
    final = unit_of(answer, rating_group).final
    assert final is not None, (rating_group, answer)
    return final


def balances_of(txn: Txn, line: int) -> BalanceSet:
    """A line's balance set (the test fails if it has none)."""
    bs = txn.get_line_balances(line)
    assert bs is not None, line
    return bs


@pytest.fixture
def world(tmp_path: Path, open_store: Callable[..., Any]) -> Iterator[World]:
    w = World(tmp_path / "store", opener=open_store)
    w.tenant()
    yield w
    with w.store.read() as txn:
        check_invariants(txn)  # every scenario ends in a state that satisfies the invariants
    w.close()


def bucket_named(buckets: list, name: str):
    return next(b for b in buckets if b.name == name)


# ------------------------------------------------------------------------------------------------------------------
# Sessions: allowances first, then the wallet
# ------------------------------------------------------------------------------------------------------------------
def test_session_grants_from_allowance_then_wallet(world: World) -> None:
    world.account("a", balance=10_000)
    line, imsi = world.line("a", plan="pre")  # fee 1000 paid from the wallet, 3000 bytes of data
    assert world.acct("a").balance == 9_000

    ans = world.charge(initial("s1", imsi))
    assert ans.result == SUCCESS
    u = unit_of(ans, 10)
    assert (u.granted, u.unit, u.validity_time, u.volume_threshold, u.final) == (1000, "bytes", 100, 200, None)
    assert bucket_named(world.line_buckets(line), "data").reserved == 1000

    # Use 1000, ask again twice: the allowance runs out after 3000 bytes.
    ans = world.charge(update("s1", 1, imsi, used=1000))
    assert unit_of(ans, 10).granted == 1000 and unit_of(ans, 10).charged == 0
    ans = world.charge(update("s1", 2, imsi, used=1000))
    assert unit_of(ans, 10).granted == 1000
    data = bucket_named(world.line_buckets(line), "data")
    assert (data.remaining, data.reserved) == (1000, 1000)

    # Use 600 of the last 1000: the next grant is 400 from the allowance + 600 bought from the wallet (60).
    ans = world.charge(update("s1", 3, imsi, used=600))
    assert unit_of(ans, 10).granted == 1000
    assert world.acct("a").reserved == 60
    # Use everything: 400 from the bucket, 600 charged at 10 per 100 bytes.
    ans = world.charge(terminate("s1", 4, imsi, used=1000))
    assert ans.result == SUCCESS and unit_of(ans, 10).charged == 60 and not unit_of(ans, 10).over_grant
    account = world.acct("a")
    assert (account.balance, account.reserved) == (9_000 - 60, 0)
    assert bucket_named(world.line_buckets(line), "data").remaining == 0
    session = world.session("s1")
    assert session.closed and not session.reservations
    kinds = [e["kind"] for e in world.events()]
    assert kinds.count("usage") == 4


def test_final_unit_terminate_when_less_than_quantum_affordable(world: World) -> None:
    world.account("a", balance=35)  # 300 bytes at 10 per 100 (the last 5 micro-units buy nothing)
    _, imsi = world.line("a", plan="payg")
    ans = world.charge(initial("s1", imsi))
    u = unit_of(ans, 10)
    assert ans.result == SUCCESS and u.granted == 300
    assert u.final is not None and u.final.action == FUA_TERMINATE
    assert world.acct("a").reserved == 30


@pytest.mark.parametrize(
    ("plan", "action", "detail"),
    [
        ("redir", FUA_REDIRECT, ("redirect_address", "https://topup.example.net/")),
        ("restr", FUA_RESTRICT, ("filter_id", "throttle")),
        ("deny", FUA_TERMINATE, ("redirect_address", None)),
    ],
)
def test_final_unit_action_follows_plan_overage(world: World, plan: str, action: str, detail: tuple) -> None:
    world.account("a", balance=1_000_000)
    _line, imsi = world.line("a", plan=plan)  # 1500 bytes, no wallet overage for these plans
    assert unit_of(world.charge(initial("s1", imsi)), 10).final is None
    ans = world.charge(update("s1", 1, imsi, used=1000))
    u = unit_of(ans, 10)
    assert u.granted == 500 and u.final is not None and u.final.action == action
    assert getattr(u.final, detail[0]) == detail[1]
    assert world.acct("a").reserved == 0  # the wallet is never touched by these plans
    # Everything used: nothing more, credit limit reached, and the answer still carries the final action.
    ans = world.charge(update("s1", 2, imsi, used=500))
    u = unit_of(ans, 10)
    assert (ans.result, u.result, u.granted) == (CREDIT_LIMIT_REACHED, CREDIT_LIMIT_REACHED, 0)
    assert u.final is not None and u.final.action == action
    assert world.acct("a").balance == 1_000_000


def test_credit_limit_reached_when_nothing_affordable(world: World) -> None:
    world.account("a", balance=5)  # less than one 100-byte block
    _, imsi = world.line("a", plan="payg")
    seq = world.last_seq()
    ans = world.charge(initial("s1", imsi))
    assert ans.result == CREDIT_LIMIT_REACHED and unit_of(ans, 10).granted == 0
    assert world.acct("a").reserved == 0
    assert world.session("s1").closed  # nothing reserved: the session is closed at once
    assert world.last_seq() == seq  # nothing changed, so no event


def test_usage_beyond_grant_is_charged_and_flagged(world: World) -> None:
    world.account("a", balance=10_000)
    line, imsi = world.line("a", plan="pre")  # 3000 bytes allowance
    world.charge(initial("s1", imsi))  # 1000 granted from the allowance
    ans = world.charge(terminate("s1", 1, imsi, used=4500))
    u = unit_of(ans, 10)
    # 3000 from the allowance (1000 reserved + 2000 unreserved), 1500 from the wallet: 150.
    assert u.over_grant and u.charged == 150
    assert bucket_named(world.line_buckets(line), "data").remaining == 0
    assert world.acct("a").balance == 9_000 - 150
    usage = [e for e in world.events() if e["kind"] == "usage"][-1]
    assert usage["over_grant"] == 3500 and usage["used"] == 4500 and usage["charge"] == 150


def test_usage_beyond_grant_charged_even_below_zero(world: World) -> None:
    world.account("a", balance=100)
    _, imsi = world.line("a", plan="payg")
    assert unit_of(world.charge(initial("s1", imsi)), 10).granted == 1000  # exactly 100 worth
    ans = world.charge(terminate("s1", 1, imsi, used=3000))
    assert unit_of(ans, 10).over_grant and unit_of(ans, 10).charged == 300
    assert world.acct("a").balance == -200  # revenue is never dropped


def test_postpaid_grants_down_to_credit_limit(world: World) -> None:
    world.account("b", payment="postpaid", credit_limit=2_150)
    _line, imsi = world.line("b", plan="post")  # fee 2000 on the bill: balance -2000; 2000 bytes of data
    assert world.acct("b").balance == -2_000
    world.charge(initial("s1", imsi))
    world.charge(update("s1", 1, imsi, used=1000))
    # The allowance is gone once the next 1000 are used; then 150 of credit buys 1500 bytes, 1000 at a time.
    ans = world.charge(update("s1", 2, imsi, used=1000))
    assert unit_of(ans, 10).granted == 1000 and unit_of(ans, 10).final is None
    assert world.acct("b").reserved == 100
    ans = world.charge(update("s1", 3, imsi, used=1000))
    u = unit_of(ans, 10)
    assert u.granted == 500 and u.final is not None and u.final.action == FUA_TERMINATE
    ans = world.charge(update("s1", 4, imsi, used=500))
    assert ans.result == CREDIT_LIMIT_REACHED
    assert world.acct("b").balance == -2_150


def test_hybrid_pays_from_the_wallet_then_the_credit_limit(world: World) -> None:
    world.account("h", payment="hybrid", balance=50, credit_limit=100)
    _, imsi = world.line("h", plan="hyb")  # 1000 bytes included, no fee; 10 per 100 bytes beyond
    world.charge(initial("s1", imsi))
    ans = world.charge(update("s1", 1, imsi, used=1000))
    # Allowance gone: the wallet's 50 and then the 100 of credit buy 1500 bytes; a quantum is 1000.
    assert unit_of(ans, 10).granted == 1000 and unit_of(ans, 10).final is None
    ans = world.charge(update("s1", 2, imsi, used=1000))
    assert world.acct("h").balance == -50
    # What is left of the credit limit (50) buys 500 bytes, with a final-unit indication.
    assert unit_of(ans, 10).granted == 500 and unit_of(ans, 10).final is not None
    ans = world.charge(update("s1", 3, imsi, used=500))
    assert world.acct("h").balance == -100
    assert unit_of(ans, 10).result == CREDIT_LIMIT_REACHED


def test_tiered_price_through_engine(world: World) -> None:
    world.account("a", balance=10_000)
    line, imsi = world.line("a", plan="payg")
    world.charge(initial("s1", imsi, rg=11))
    # First 1000 bytes of the period at 10 per 100, then 5 per 100.
    ans = world.charge(update("s1", 1, imsi, used=800, rg=11))
    assert unit_of(ans, 11).charged == 80
    ans = world.charge(terminate("s1", 2, imsi, used=600, rg=11))
    assert unit_of(ans, 11).charged == 20 + 20  # 200 bytes at 10, 400 bytes at 5
    with world.store.read() as txn:
        assert balances_of(txn, line).usage[11] == 1400


def test_zone_price_and_roaming_denied(world: World) -> None:
    world.account("a", balance=10_000)
    _, imsi = world.line("a", plan="payg")
    _, imsi_home = world.line("a", plan="homeonly")
    eu = world.charge(initial("s-eu", imsi, serving_network="26201"))
    assert unit_of(eu, 10).granted == 1000
    assert unit_of(world.charge(terminate("s-eu", 1, imsi, used=1000)), 10).charged == 200  # 20 per 100 in the EU
    world_zone = world.charge(initial("s-us", imsi, serving_network="310260"))
    assert world_zone.result == END_USER_SERVICE_DENIED  # the tariff denies the world zone
    home_only = world.charge(initial("s-ho", imsi_home, serving_network="26201"))
    assert home_only.result == END_USER_SERVICE_DENIED  # roaming = false
    assert world.acct("a").reserved == 0


def test_time_of_day_band(world: World) -> None:
    world.account("a", balance=10_000)
    _, imsi = world.line("a", plan="payg")
    world.charge(initial("day", imsi, rg=20))
    assert unit_of(world.charge(terminate("day", 1, imsi, used=30, rg=20, unit_type="seconds")), 20).charged == 120
    world.now = int(datetime(2026, 3, 4, 21, 0, tzinfo=UTC).timestamp())
    world.charge(initial("night", imsi, rg=20))
    assert unit_of(world.charge(terminate("night", 1, imsi, used=30, rg=20, unit_type="seconds")), 20).charged == 60


# ------------------------------------------------------------------------------------------------------------------
# Unknown, suspended
# ------------------------------------------------------------------------------------------------------------------
def test_unknown_user_and_unknown_session(world: World) -> None:
    seq = world.last_seq()
    assert world.charge(initial("s1", "999990000000001")).result == USER_UNKNOWN
    assert world.charge(update("nope", 1, "999990000000001", used=10)).result == SESSION_UNKNOWN
    assert world.charge(terminate("nope", 1, "999990000000001", used=10)).result == SESSION_UNKNOWN
    assert world.last_seq() == seq and world.session("s1") is None


def test_suspended_line_denied_aborted_and_final_report_charged(world: World) -> None:
    world.account("a", balance=10_000)
    line, imsi = world.line("a", plan="payg")
    world.charge(initial("s1", imsi, notify={"peer": "pgw1"}))
    result = world.admin(provisioning.set_state, f"#{line}", "suspended", actor="ops", reason="fraud check")
    assert result.signals == [Signal("abort", "s1", "gy", {"peer": "pgw1"}, (10,))]
    # New sessions and new grants are denied ...
    assert world.charge(initial("s2", imsi)).result == END_USER_SERVICE_DENIED
    assert world.session("s2") is None
    ans = world.charge(update("s1", 1, imsi, used=300))
    assert unit_of(ans, 10).result == END_USER_SERVICE_DENIED and unit_of(ans, 10).charged == 30
    assert world.acct("a").reserved == 0
    # ... but the final report is still charged.
    ans = world.charge(terminate("s1", 2, imsi, used=200))
    assert ans.result == SUCCESS and unit_of(ans, 10).charged == 20
    assert world.acct("a").balance == 10_000 - 50
    # Direct debit on a suspended line is denied, a refund is not.
    assert world.charge(event("e1", imsi, DIRECT_DEBITING)).result == END_USER_SERVICE_DENIED
    with pytest.raises(RequestError):
        world.admin(provisioning.set_state, f"#{line}", "provisioned", actor="ops", reason="no way back")


# ------------------------------------------------------------------------------------------------------------------
# Renewals, promotions, family and IoT
# ------------------------------------------------------------------------------------------------------------------
def period_end_of_line(world: World, line: int) -> int:
    with world.store.read() as txn:
        return balances_of(txn, line).period_end


def test_renewal_exactly_at_period_boundary(world: World) -> None:
    world.account("a", balance=10_000)
    line, imsi = world.line("a", plan="pre")
    end = period_end_of_line(world, line)
    assert end == int(datetime(2026, 4, 1, tzinfo=UTC).timestamp())  # cycle day 1, UTC
    world.charge(initial("s1", imsi))
    world.charge(terminate("s1", 1, imsi, used=2500))
    world.now = end - 1  # one second before: nothing renews
    world.charge(event("q1", imsi, CHECK_BALANCE))
    assert bucket_named(world.line_buckets(line), "data").remaining == 500
    assert world.acct("a").balance == 9_000
    world.now = end  # exactly at the boundary: the fee is taken and the allowance starts afresh
    world.charge(initial("s2", imsi))
    data = bucket_named(world.line_buckets(line), "data")
    assert (data.remaining, data.reserved, data.valid_from) == (3000, 1000, end)
    assert world.acct("a").balance == 8_000
    renewal = [e for e in world.events() if e["kind"] == "renewal"][-1]
    assert renewal["time"] == end and renewal["charge"] == 1000 and renewal["period_index"] == 1
    expiry = [e for e in world.events() if e["kind"] == "expiry"][-1]
    assert expiry["time"] == end and expiry["impacts"][0]["delta"] == -500


def test_prepaid_renewal_without_funds_fails_then_topup_retries(world: World) -> None:
    world.account("a", balance=1_500)
    line, imsi = world.line("a", plan="pre")  # 1000 fee paid, 500 left
    end = period_end_of_line(world, line)
    world.now = end + 10
    ans = world.charge(initial("s1", imsi))
    # No allowance this period, and the wallet's 500 buys 1000 bytes of data at 10 per 100.
    assert unit_of(ans, 10).granted == 1000
    assert [b.name for b in world.line_buckets(line)] == []
    failed = [e for e in world.events() if e["kind"] == "renewal_failed"]
    assert len(failed) == 1 and failed[0]["charge"] == 0
    with world.store.read() as txn:
        assert balances_of(txn, line).renewal_pending
    world.charge(terminate("s1", 1, imsi, used=0))
    world.now = end + 20
    result = world.admin(provisioning.topup, "a", 2_000, actor="shop", reason="top-up")
    assert result.value["balance"] == 2_500 - 1_000
    data = bucket_named(world.line_buckets(line), "data")
    assert (data.remaining, data.valid_from, data.valid_to) == (3000, end + 20, period_end_of_line(world, line))
    with world.store.read() as txn:
        assert not balances_of(txn, line).renewal_pending
    assert [e["reason"] for e in world.events() if e["kind"] == "renewal"][-1] == "renewal retried"


def test_bonus_and_intro_price(world: World) -> None:
    world.account("a", balance=10_000)
    line, imsi = world.line("a", plan="promo")
    assert world.acct("a").balance == 10_000 - 400  # introductory fee for the first period
    names = {b.name: b for b in world.line_buckets(line)}
    assert names["welcome"].remaining == 500 and names["welcome"].valid_to == T0 + 86_400
    # The bonus (priority 5) is used before the monthly data (priority 10).
    world.charge(initial("s1", imsi))
    names = {b.name: b for b in world.line_buckets(line)}
    assert (names["welcome"].reserved, names["data"].reserved) == (500, 500)
    world.charge(terminate("s1", 1, imsi, used=700))
    names = {b.name: b for b in world.line_buckets(line)}
    assert (names["welcome"].remaining, names["data"].remaining) == (0, 2800)
    world.now = period_end_of_line(world, line)
    world.charge(event("q", imsi, CHECK_BALANCE))
    assert world.acct("a").balance == 10_000 - 400 - 1000  # the full fee from the second period on


def test_family_shared_allowance_used_by_two_lines(world: World) -> None:
    world.account("fam", payment="postpaid", credit_limit=100_000, plan="fam")
    assert world.acct("fam").balance == -3_000  # the account pays the fee once
    l1, imsi1 = world.line("fam", plan="fam")  # a line on its account's plan: own SMS, no second fee
    _l2, imsi2 = world.line("fam", plan="fam")
    world.charge(initial("s1", imsi1))
    world.charge(initial("s2", imsi2))
    shared = bucket_named(world.account_buckets("fam"), "family-data")
    assert (shared.remaining, shared.reserved) == (5000, 2000)
    world.charge(terminate("s1", 1, imsi1, used=1000))
    world.charge(terminate("s2", 1, imsi2, used=3500))  # 1000 granted + 2500 beyond, still from the pool
    shared = bucket_named(world.account_buckets("fam"), "family-data")
    assert (shared.remaining, shared.reserved) == (500, 0)
    ans = world.charge(initial("s3", imsi1))
    assert unit_of(ans, 10).granted == 500 and final_of(ans, 10).action == FUA_RESTRICT
    assert final_of(ans, 10).filter_id == "family-throttle"
    assert world.acct("fam").balance == -3_000  # no wallet charge on a restrict plan
    assert bucket_named(world.line_buckets(l1), "sms").remaining == 5  # per-line allowance of the family plan
    debit = world.charge(event("sms1", imsi1, DIRECT_DEBITING, amount={"events": 2}))
    assert (debit.result, debit.cost) == (SUCCESS, 0)
    assert bucket_named(world.line_buckets(l1), "sms").remaining == 3


def test_static_iot_pool(world: World) -> None:
    world.account("iot", payment="postpaid", credit_limit=100_000, plan="iotstatic")
    lines = [world.line("iot") for _ in range(3)]
    pool = bucket_named(world.account_buckets("iot"), "pool")
    assert pool.remaining == 4000 and pool.kind == "pool"
    for n, (_, imsi) in enumerate(lines):
        ans = world.charge(initial(f"s{n}", imsi, rg=30))
        assert unit_of(ans, 30).granted == 500  # the IoT quantum
    assert bucket_named(world.account_buckets("iot"), "pool").reserved == 1500
    for n, (_, imsi) in enumerate(lines):
        world.charge(terminate(f"s{n}", 1, imsi, used=1000, rg=30))
    pool = bucket_named(world.account_buckets("iot"), "pool")
    assert (pool.remaining, pool.reserved) == (1000, 0)
    assert world.acct("iot").balance == 0


def test_flexible_iot_pool_grows_with_activated_lines(world: World) -> None:
    world.account("iot", payment="postpaid", credit_limit=100_000, plan="iotflex")
    assert world.account_buckets("iot")[0].remaining == 0
    world.line("iot")
    world.line("iot")
    assert bucket_named(world.account_buckets("iot"), "pool").remaining == 2000
    line3, imsi3 = world.line("iot", state="provisioned")  # not counted until active
    assert bucket_named(world.account_buckets("iot"), "pool").remaining == 2000
    world.admin(provisioning.set_state, f"#{line3}", "active", actor="ops", reason="activated")
    pool = bucket_named(world.account_buckets("iot"), "pool")
    assert (pool.remaining, pool.initial) == (3000, 3000)
    assert world.acct("iot").active_lines == 3
    # The next period's pool is sized by the active lines at the boundary.
    world.now = int(datetime(2026, 4, 1, tzinfo=UTC).timestamp())
    world.charge(initial("s1", imsi3, rg=30))
    assert bucket_named(world.account_buckets("iot"), "pool").initial == 3000


# ------------------------------------------------------------------------------------------------------------------
# Reaper
# ------------------------------------------------------------------------------------------------------------------
def test_reaper_releases_silent_session_after_reap_factor_times_validity(world: World) -> None:
    world.account("a", balance=10_000)
    _line, imsi = world.line("a", plan="payg")
    world.charge(initial("s1", imsi))
    assert world.acct("a").reserved == 100
    factor = world.engine.config.reap_factor
    world.now = T0 + factor * 100 - 1
    assert not world.write(lambda txn: world.engine.reap(txn, "s1", world.now))
    assert world.acct("a").reserved == 100
    world.now = T0 + factor * 100
    assert world.write(lambda txn: world.engine.reap(txn, "s1", world.now))
    assert world.acct("a").reserved == 0 and world.acct("a").balance == 10_000
    release = world.events()[-1]
    assert release["kind"] == "release" and release["released"][0]["money"] == 100
    # The client comes back: its session is gone for charging purposes.
    assert world.charge(update("s1", 1, imsi, used=10)).result == SESSION_UNKNOWN
    # After the replay window the closed session is forgotten.
    world.now += world.engine.config.idempotency_window
    assert world.write(lambda txn: world.engine.reap(txn, "s1", world.now))
    assert world.session("s1") is None


# ------------------------------------------------------------------------------------------------------------------
# One-shot events
# ------------------------------------------------------------------------------------------------------------------
def test_one_shot_events(world: World) -> None:
    world.account("a", balance=1_000)
    _, imsi = world.line("a", plan="payg")
    seq = world.last_seq()
    price = world.charge(event("p1", imsi, PRICE_ENQUIRY, amount={"events": 3}))
    assert (price.result, price.cost, unit_of(price, 40).granted) == (SUCCESS, 150, 3)
    check = world.charge(event("c1", imsi, CHECK_BALANCE))
    assert (check.balance, check.enough_credit) == (1_000, True)
    assert world.last_seq() == seq  # asking changes nothing
    debit = world.charge(event("d1", imsi, DIRECT_DEBITING, amount={"events": 2}))
    assert (debit.result, debit.cost, unit_of(debit, 40).charged, debit.balance) == (SUCCESS, 100, 100, 900)
    refund = world.charge(event("r1", imsi, REFUND_ACCOUNT, amount={"events": 1}))
    assert (refund.result, refund.cost, refund.balance) == (SUCCESS, 50, 950)
    too_much = world.charge(event("d2", imsi, DIRECT_DEBITING, amount={"events": 20}))
    assert too_much.result == CREDIT_LIMIT_REACHED and final_of(too_much, 40).action == FUA_TERMINATE
    assert world.acct("a").balance == 950
    kinds = [e["kind"] for e in world.events(seq)]
    assert kinds == ["usage", "refund"]
    with pytest.raises(RequestError):
        world.charge(ChargingRequest("event", "x", 0, [("imsi", imsi)], action="teleport"))


def test_every_requested_action_has_its_function() -> None:
    """One-shot events act through one function per Requested-Action (chf.core.events.ACTIONS)."""
    assert set(events.ACTIONS) == set(EVENT_ACTIONS)


# ------------------------------------------------------------------------------------------------------------------
# Exactly once
# ------------------------------------------------------------------------------------------------------------------
def test_idempotent_replay_across_reopen(world: World) -> None:
    world.account("a", balance=10_000)
    _, imsi = world.line("a", plan="payg")
    sent = [
        initial("s1", imsi),
        update("s1", 1, imsi, used=500),
        event("d1", imsi, DIRECT_DEBITING, amount={"events": 1}),
        event("k", imsi, DIRECT_DEBITING, amount={"events": 1}, idempotency_key="shop-42"),
        event("r1", imsi, REFUND_ACCOUNT, amount={"events": 1}),
        terminate("s1", 2, imsi, used=300),
    ]
    first = [world.charge(r) for r in sent]
    topup_first = world.admin(provisioning.topup, "a", 700, actor="shop", reason="t", idempotency_key="topup-1")
    assert not topup_first.duplicate
    for reopen in (False, True):
        if reopen:
            world.reopen()
        with world.store.read() as txn:
            before = snapshot(txn)
        for req, ans in zip(sent, first, strict=True):
            again = world.charge(req)
            assert again.duplicate and again.pack() == ans.pack(), req
        topup_again = world.admin(provisioning.topup, "a", 700, actor="shop", reason="t", idempotency_key="topup-1")
        assert topup_again.duplicate and topup_again.value == topup_first.value
        with world.store.read() as txn:
            assert snapshot(txn) == before


def test_stale_request_number_is_not_applied_twice(world: World) -> None:
    """A retransmission older than the answers the session keeps must not be charged again."""
    world.account("a", balance=100_000)
    _, imsi = world.line("a", plan="payg")
    world.charge(initial("s1", imsi))
    reqs = [update("s1", n, imsi, used=100) for n in range(1, 8)]
    for r in reqs:
        world.charge(r)
    with world.store.read() as txn:
        before = snapshot(txn)
    # Number 1: its answer is no longer kept. It is refused as bad input naming the field, and changes nothing.
    with pytest.raises(RequestError) as refused:
        world.charge(reqs[0])
    assert refused.value.field == "request number"
    with world.store.read() as txn:
        assert snapshot(txn) == before, "an old retransmission was charged again"
    # The latest ones are still answered from the session, identically.
    assert world.charge(reqs[-1]).duplicate


# ------------------------------------------------------------------------------------------------------------------
# Line move and catalogue reload
# ------------------------------------------------------------------------------------------------------------------
def test_line_move_releases_and_charges_new_account(world: World) -> None:
    world.account("a", balance=10_000)
    world.account("b", balance=5_000)
    line, imsi = world.line("a", plan="payg")
    world.charge(initial("s1", imsi))
    assert world.acct("a").reserved == 100
    result = world.admin(provisioning.move_line, f"#{line}", "b", actor="ops", reason="family change")
    assert [s.kind for s in result.signals] == ["abort"]
    assert world.acct("a").reserved == 0 and world.acct("a").active_lines == 0
    assert world.acct("b").active_lines == 1
    assert world.charge(update("s1", 1, imsi, used=100)).result == SESSION_UNKNOWN
    world.charge(initial("s2", imsi))
    world.charge(terminate("s2", 1, imsi, used=1000))
    assert (world.acct("a").balance, world.acct("b").balance) == (10_000, 4_900)


async def test_catalogue_reload_applies_to_new_grants_only(tmp_path: Path, open_store: Callable[..., Any]) -> None:
    cat_path = tmp_path / "catalogue.toml"
    cat_path.write_text(CATALOGUE_TOML)
    world = World(tmp_path / "store", test_catalogue(), opener=open_store)
    world.tenant()
    world.account("a", balance=100_000)
    _, imsi = world.line("a", plan="payg")
    clock_now = [T0]
    service = ChargingService(
        world.store,
        world.engine.catalogue,
        catalogue_path=str(cat_path),
        clock=lambda: clock_now[0],
        sweep_interval=3600,
    )
    await service.start()
    try:
        assert unit_of(await service.charge(initial("old", imsi)), 10).granted == 1000
        cat_path.write_text(CATALOGUE_TOML.replace("block = 100\nprice = 10\n", "block = 100\nprice = 30\n", 1))
        service.reload_catalogue()
        assert service.catalogue.tariffs["data"].price == 30
        # The open reservation keeps the price it was granted with; a new grant uses the new one.
        assert unit_of(await service.charge(terminate("old", 1, imsi, used=1000)), 10).charged == 100
        await service.charge(initial("new", imsi))
        assert unit_of(await service.charge(terminate("new", 1, imsi, used=1000)), 10).charged == 300
        cat_path.write_text("not toml [")
        with pytest.raises(Exception):  # noqa: B017 - any load failure keeps the running catalogue
            service.reload_catalogue()
        assert service.catalogue.tariffs["data"].price == 30
    finally:
        await service.stop()
    with world.store.read() as txn:
        check_invariants(txn)
    world.close()


def test_bad_admin_input_changes_nothing(world: World) -> None:
    world.account("a", balance=100)
    seq = world.last_seq()
    for call in (
        lambda: world.admin(provisioning.topup, "a", 0, actor="x", reason="r"),
        lambda: world.admin(provisioning.topup, "a", 1.5, actor="x", reason="r"),
        lambda: world.admin(provisioning.topup, "nobody", 10, actor="x", reason="r"),
        lambda: world.admin(provisioning.adjust, "a", 10, actor="x", reason=""),
    ):
        with pytest.raises(RequestError):
            call()
    assert world.last_seq() == seq and world.acct("a").balance == 100


def test_topup_after_missed_periods_starts_the_current_period(world: World) -> None:
    """A renewal that failed for lack of funds, then months of silence, then a top-up: the fee is charged once,
    for the current period, and the allowance is valid until the current period ends."""
    world.account("a", balance=1_500)
    line, imsi = world.line("a", plan="pre")  # 500 left after the first fee
    first_end = period_end_of_line(world, line)
    world.now = first_end
    world.charge(event("q1", imsi, CHECK_BALANCE))  # renewal fails: 500 < 1000
    with world.store.read() as txn:
        assert balances_of(txn, line).renewal_pending
    world.now = int(datetime(2026, 6, 10, tzinfo=UTC).timestamp())  # two more period boundaries pass silently
    world.admin(provisioning.topup, "a", 5_000, actor="shop", reason="top-up")
    current_end = int(datetime(2026, 7, 1, tzinfo=UTC).timestamp())
    data = bucket_named(world.line_buckets(line), "data")
    assert (data.remaining, data.valid_to) == (3000, current_end)
    assert world.acct("a").balance == 500 + 5_000 - 1_000
    # Using the line afterwards charges nothing more this period.
    world.charge(event("q2", imsi, CHECK_BALANCE))
    assert world.acct("a").balance == 4_500
    assert bucket_named(world.line_buckets(line), "data").remaining == 3000


def test_multiple_rating_groups_in_one_request(world: World) -> None:
    world.account("a", balance=10_000)
    line, imsi = world.line("a", plan="pre")
    req = initial("s1", imsi)
    req.units.append(unit(20, {}))
    req.units.append(unit(99, {}))  # no tariff for 99: rated as a failure, the others still granted
    ans = world.charge(req)
    assert ans.result == SUCCESS
    assert (unit_of(ans, 10).granted, unit_of(ans, 20).granted, unit_of(ans, 99).result) == (1000, 60, RATING_FAILED)
    assert world.acct("a").reserved == 240  # 60 s of voice at 4 per second (noon)
    end = ChargingRequest(
        "terminate", "s1", 1, [("imsi", imsi)], [unit(10, None, {"bytes": 700}), unit(20, None, {"seconds": 45})]
    )
    ans = world.charge(end)
    assert (unit_of(ans, 10).charged, unit_of(ans, 20).charged) == (0, 180)
    assert world.acct("a").balance == 9_000 - 180 and world.acct("a").reserved == 0
    assert bucket_named(world.line_buckets(line), "data").remaining == 2300


def test_bucket_adjustment_idempotent_and_bounded_by_reservation(world: World) -> None:
    world.account("a", balance=10_000)
    line, imsi = world.line("a", plan="pre")
    data = bucket_named(world.line_buckets(line), "data")
    world.charge(initial("s1", imsi))  # 1000 reserved
    first = world.admin(
        provisioning.adjust,
        "a",
        -500,
        actor="ops",
        reason="goodwill reversal",
        line_id=line,
        bucket_id=data.id,
        idempotency_key="adj-1",
    )
    again = world.admin(
        provisioning.adjust,
        "a",
        -500,
        actor="ops",
        reason="goodwill reversal",
        line_id=line,
        bucket_id=data.id,
        idempotency_key="adj-1",
    )
    assert again.duplicate and again.value == first.value
    assert bucket_named(world.line_buckets(line), "data").remaining == 2500
    with pytest.raises(RequestError) as refused:
        world.admin(provisioning.adjust, "a", -2000, actor="ops", reason="too much", line_id=line, bucket_id=data.id)
    assert refused.value.field == "amount"
    assert bucket_named(world.line_buckets(line), "data").remaining == 2500


def test_terminated_line_final_report_charged(world: World) -> None:
    world.account("a", balance=10_000)
    line, imsi = world.line("a", plan="payg")
    world.charge(initial("s1", imsi))
    result = world.admin(provisioning.set_state, f"#{line}", "terminated", actor="ops", reason="churn")
    assert [s.session for s in result.signals] == ["s1"]
    assert unit_of(world.charge(terminate("s1", 1, imsi, used=400)), 10).charged == 40
    assert world.charge(initial("s2", imsi)).result == END_USER_SERVICE_DENIED
    assert world.acct("a").active_lines == 0
    with pytest.raises(RequestError):
        world.admin(provisioning.move_line, f"#{line}", "a", actor="ops", reason="x")


def test_postpaid_rollover_at_boundary(world: World) -> None:
    world.account("b", payment="postpaid", credit_limit=100_000)
    line, imsi = world.line("b", plan="post")
    world.charge(initial("s1", imsi))
    world.charge(terminate("s1", 1, imsi, used=1200))
    world.now = period_end_of_line(world, line)
    world.charge(event("q", imsi, CHECK_BALANCE))
    buckets = {b.name: b for b in world.line_buckets(line)}
    assert buckets["data"].remaining == 2000 and buckets["data-rollover"].remaining == 800
    assert buckets["data-rollover"].priority < buckets["data"].priority  # carried-over data goes first
    assert world.acct("b").balance == -4_000  # two fees on the bill


async def test_service_delivers_abort_signal_and_reaps_with_injected_clock(
    tmp_path: Path, open_store: Callable[..., Any]
) -> None:
    world = World(tmp_path / "store", opener=open_store)
    world.tenant()
    world.account("a", balance=10_000)
    line, imsi = world.line("a", plan="payg")
    clock = [T0]
    service = ChargingService(world.store, world.engine.catalogue, clock=lambda: clock[0], sweep_interval=0.01)
    received: list[Signal] = []
    service.bus.subscribe("gy", received.append)
    await service.start()
    try:
        assert (await service.charge(initial("s1", imsi))).result == SUCCESS
        assert (await service.charge(initial("s2", imsi))).result == SUCCESS
        await service.operate(
            lambda txn, engine, now: provisioning.set_state(
                txn, engine, f"#{line}", "suspended", now=now, actor="ops", reason="unpaid"
            )
        )
        assert sorted(s.session for s in received if s.kind == "abort") == ["s1", "s2"]
        await service.charge(terminate("s1", 1, imsi, used=100))
        clock[0] = T0 + world.engine.config.reap_factor * 100  # s2 stays silent: the sweeper releases it
        for _ in range(200):
            if service.reaped:
                break
            await asyncio.sleep(0.01)
        assert service.reaped == 1
        with world.store.read() as txn:
            account, session = txn.get_account("a"), txn.get_session("s2")
            assert account is not None and session is not None
            assert account.reserved == 0 and session.closed
            check_invariants(txn)
    finally:
        await service.stop()
    world.close()


def test_rollover_does_not_carry_units_in_use(world: World) -> None:
    """Data reserved by an open session at the boundary is being used: it is settled against the expired bucket
    when reported, so only the rest rolls over (carrying it too would give the same bytes twice)."""
    world.account("b", payment="postpaid", credit_limit=100_000)
    line, imsi = world.line("b", plan="post")  # 2000 bytes, rollover
    world.charge(initial("s1", imsi))  # 1000 reserved
    world.now = period_end_of_line(world, line) + 5
    ans = world.charge(terminate("s1", 1, imsi, used=1000))
    assert ans.result == SUCCESS and unit_of(ans, 10).charged == 0
    buckets = {b.name: b for b in world.line_buckets(line)}
    assert (buckets["data-rollover"].remaining, buckets["data"].remaining) == (1000, 2000)


def test_zero_usage_report_ends_the_grant(world: World) -> None:
    """A report of 0 units (validity time expired, no traffic) ends the grant: what it held is released."""
    world.account("a", balance=10_000)
    line, imsi = world.line("a", plan="pre")
    world.charge(initial("s1", imsi, rg=20))  # 60 s of voice: 240 held in the wallet
    world.charge(initial("s2", imsi))  # 1000 bytes held in the data allowance
    assert world.acct("a").reserved == 240
    # A Used-Service-Unit that is present but zero, and no new request.
    zero_voice = ChargingRequest("update", "s1", 1, [("imsi", imsi)], [unit(20, None, {"seconds": 0})])
    assert world.charge(zero_voice).result == SUCCESS
    zero_data = ChargingRequest("update", "s2", 1, [("imsi", imsi)], [unit(10, {}, None)])
    zero_data.units[0].used = [UsageReport({"bytes": 0})]
    assert unit_of(world.charge(zero_data), 10).granted == 1000  # released and granted again, not held twice
    assert world.acct("a").reserved == 0
    assert bucket_named(world.line_buckets(line), "data").reserved == 1000
    assert not world.session("s1").reservations
