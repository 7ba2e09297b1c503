"""Plans and their periods: assigning a plan, renewing periods at their boundaries, expiring buckets.

A line (or an account, for shared allowances and IoT pools) on a plan has a balance set whose period runs from
`period_start` to `period_end`. Every operation brings the balance sets it loads up to date first
(`bring_up_to_date`): each period that ended before `now` is renewed at its exact boundary (its fee charged, its
allowances granted, unused allowances rolled over where the plan says so), and buckets whose validity ended
expire, each with its event at the time it happened. A prepaid period whose fee cannot be paid stays pending
until a top-up (`retry_pending_renewal`).

A line's periods follow its lifecycle (README, "Fees and the line lifecycle"): at each boundary the line's
state at that moment decides. Active: the fee and the allowances. Suspended: as the plan says
(`Plan.suspended_fee`): the full fee and the allowances, or a reduced fee (or none) with the allowances held
back (`renewal_pending`) until the line is active again. Provisioned or terminated: no period at all; the chain
of periods stops at that boundary and only activation starts a new one (`start_line_plan`). Where the plan
prorates, a period that starts between two boundaries is charged for the days left of it. An account's plan
renews while one of its lines is not terminated at the boundary (`account_state_at`); with none its chain of
periods stops the same way, and a line joining the account starts it again (`restart_account_plan`).

An IoT pool's size is derived from its members (chf.core.pools): `resize_pool` sets it from the account's lines
whenever one joins, leaves or changes plan or state, with an event for each change. An adaptive pool is billed at
its period's close (`chf.core.pools.bill_adaptive`), before its bucket expires.

Everything here works on a `Context` and the catalogue it was loaded with; it writes nothing itself (the
caller flushes the context).
"""

from __future__ import annotations

from typing import Any

from chf.core.catalogue import Catalogue, Plan
from chf.core.context import Context, account_owner, bucket_impact, line_owner
from chf.core.periods import period_end, prorate
from chf.core.pools import active_lines, bill_adaptive, derived_size, period_allowance
from chf.core.tax import annotate, gross_up
from chf.core.wholesale import charge_device_fees
from chf.core.zones import bucket_zones
from store.schema import ACTIVE, SUSPENDED, TERMINATED, BalanceSet, Bucket, Subscriber

FOREVER = 2**62  # valid_to of a bonus bucket that never expires


def period_end_of(catalogue: Catalogue, plan: Plan, start: int, cycle_day: int) -> int:
    return period_end(plan.period, start, cycle_day, catalogue.settings.timezone)


def needs_upkeep(bs: BalanceSet, now: int) -> bool:
    """Whether a balance set has a period that ended or a bucket whose validity ended (the sweeper asks too)."""
    if bs.plan is not None and now >= bs.period_end:
        return True
    # A loop, not any(...): chf/core/renewals.pxd compiles this as a cpdef function, which cannot hold a generator.
    for b in bs.buckets:  # noqa: SIM110
        if b.valid_to <= now:
            return True
    return False


def bring_up_to_date(ctx: Context) -> None:
    """Renew periods that ended and expire buckets whose validity ended, each at its exact boundary."""
    now = ctx.now
    if ctx.line_bs is not None and needs_upkeep(ctx.line_bs, now):
        _renew_owner(ctx, ctx.line_bs, is_account=False)
    if ctx.acct_bs is not None and needs_upkeep(ctx.acct_bs, now):
        _renew_owner(ctx, ctx.acct_bs, is_account=True)


def state_at(sub: Subscriber, at: int) -> str:
    """The line's lifecycle state at `at`, from its history: the state its last transition before `at` left it
    in. A transition at `at` itself is not counted: every operation on a line renews the periods that ended by
    `now` before it changes the line's state."""
    state = None
    for entry in sub.history:
        if entry[2] >= at:
            break
        state = entry[1]
    return state if state is not None else sub.state


def account_state_at(ctx: Context, at: int) -> str:
    """The state in which an account's plan renews at boundary `at` (README, "Fees and the line lifecycle"): active
    while at least one of its lines is not terminated at `at` (provisioned and suspended lines keep an account
    plan, as a family or fleet plan is sold to the account); terminated when it has none (every line terminated,
    moved away, or none yet), so that its periods stop there, like a line's, until a line joins the account
    (`restart_account_plan`). The lines are the account's now, in their state at `at`; a line created after `at`
    was not there. Read at each of the account's boundaries only, and a first line in service ends the search."""
    txn = ctx.txn
    for line_id in txn.lines_of_account(ctx.account.id):
        sub = ctx.sub if line_id == ctx.sub.id else txn.get_subscriber(line_id)
        if sub is None or (sub.history and sub.history[0][2] >= at):
            continue
        if state_at(sub, at) != TERMINATED:
            return ACTIVE
    return TERMINATED


def restart_account_plan(ctx: Context, actor: str, reason: str) -> None:
    """A line joined the account (added, imported, moved in): if the account's plan stopped at a boundary for want
    of a line in service (`account_state_at`), it starts again now (`assign_plan_to`: its fee, prorated where the
    plan says, and its shared allowances and pool)."""
    account = ctx.account
    bs = ctx.acct_bs
    if account.plan is None or bs is None or bs.plan is not None:
        return
    plan = ctx.catalogue.plan_in(account.plan, account.currency)  # another currency's fee is never charged
    if plan is not None:
        assign_plan_to(ctx, plan, is_account=True, actor=actor, reason=reason)


def line_terms(plan: Plan, state: str, period_index: int) -> tuple[int, bool]:
    """The fee of a line's period that starts while the line is in `state`, and whether its allowances are
    granted: active, or suspended on a plan whose suspended fee is full: the period's fee and the allowances;
    suspended otherwise: the suspended fee (at most the period's) and no allowances; provisioned or terminated:
    nothing (no period runs)."""
    fee = plan.fee_for_period(period_index)
    if state == ACTIVE or (state == SUSPENDED and plan.suspended_fee is None):
        return fee, True
    if state == SUSPENDED:
        return min(fee, plan.suspended_fee or 0), False
    return 0, False


def _renew_owner(ctx: Context, bs: BalanceSet, *, is_account: bool) -> None:
    owner = account_owner(ctx.account.id) if is_account else line_owner(ctx.sub.id)
    in_force_now = ctx.catalogue
    try:
        _renew_periods(ctx, bs, owner, is_account=is_account)
    finally:
        ctx.catalogue = in_force_now
    _expire_buckets(ctx, bs, owner, ctx.now, period_ended=False)
    if is_account:
        ctx.acct_bs_dirty = True
    else:
        ctx.line_bs_dirty = True


def _renew_periods(ctx: Context, bs: BalanceSet, owner: str, *, is_account: bool) -> None:
    """The periods of `bs` that started by `now`, each priced by the version of the catalogue in force when it
    started (chf.core.versions): the context's catalogue is that version while the period is started."""
    # Periods: at most one catch-up per missed period, bounded so a long-idle line cannot stall a batch.
    for _ in range(400):
        if ctx.now < bs.period_end:
            break
        boundary = bs.period_end
        catalogue = ctx.catalogue = ctx.catalogue_at(boundary)
        plan = catalogue.plan_in(bs.plan, ctx.account.currency)  # another currency's fee is never charged
        if plan is None:
            break
        if is_account and plan.pool == "adaptive":  # the period that ends is billed, whether another follows
            bill_adaptive(ctx, bs, plan, boundary, "period closed")
        state = account_state_at(ctx, boundary) if is_account else state_at(ctx.sub, boundary)
        if state not in (ACTIVE, SUSPENDED):
            _end_line_plan(ctx, bs, owner, boundary, state)
            break
        _expire_buckets(ctx, bs, owner, boundary, period_ended=True)
        bs.period_start = boundary
        bs.period_end = period_end(plan.period, boundary, ctx.account.cycle_day, catalogue.settings.timezone)
        bs.period_index += 1
        bs.usage = {}
        _start_period(ctx, bs, plan, owner, is_account=is_account, at=boundary, reason="renewal", state=state)


def _event(ctx: Context, kind: str, actor: str, reason: str | None, owner: str) -> dict[str, Any]:
    """An event about `owner`'s balance set. An account's (shared allowances, a pool, the account's plan fee)
    names no line, whichever line's request brought it up to date."""
    event = ctx.base_event(kind, actor, reason)
    if owner.startswith("account:"):
        event["subscriber"] = event["imsi"] = event["msisdn"] = None
    return event


def _end_line_plan(ctx: Context, bs: BalanceSet, owner: str, at: int, state: str) -> None:
    """A line that is not (or no longer) in service at a boundary, or an account with no line in service: its
    plan's periods stop there. Its buckets expire as they end, nothing rolls over, no fee is charged and nothing
    is granted; the line (or account) keeps its plan (`Subscriber.plan`, `Account.plan`), which starts again only
    if the line is activated (or a line joins the account)."""
    _expire_buckets(ctx, bs, owner, at, period_ended=False)
    who = "no line in service" if owner.startswith("account:") else f"line {state}"
    event = _event(ctx, "plan_change", "system", f"{who}: its periods stop", owner)
    event["time"] = at
    event["plan"] = None
    event["previous_plan"] = bs.plan
    ctx.events.append(event)
    bs.plan = None
    bs.renewal_pending = False
    bs.usage = {}


def _expire_buckets(ctx: Context, bs: BalanceSet, owner: str, at: int, *, period_ended: bool) -> None:
    """Expire the buckets whose validity ended by `at`; at the end of a period, a plan allowance with rollover
    carries what is left of it into a rollover bucket valid for the next period."""
    plan = ctx.catalogue.plans.get(bs.plan) if bs.plan is not None else None
    keep: list[Bucket] = []
    for b in bs.buckets:
        if b.valid_to > at:
            keep.append(b)
            continue
        event = _event(ctx, "expiry", "system", "validity ended", owner)
        event["time"] = b.valid_to
        remaining = b.remaining
        b.remaining = 0
        event["impacts"].append(bucket_impact(owner, b, -remaining))
        # Units held by an open grant at the boundary are in use: the report that follows is settled against
        # this (now expired) bucket, so carrying them over too would hand them out twice.
        carried = remaining - b.reserved
        if period_ended and plan is not None and b.kind == "plan" and carried > 0:
            rolled = _rollover(ctx, bs, plan, b, carried, at)
            if rolled is not None:
                keep.append(rolled)
                event["impacts"].append(bucket_impact(owner, rolled, carried))
                event["reason"] = "rollover"
        ctx.events.append(event)
    bs.buckets = keep


def _rollover(ctx: Context, bs: BalanceSet, plan: Plan, b: Bucket, carried: int, at: int) -> Bucket | None:
    """The bucket that carries `carried` units of plan bucket `b` into the period starting `at`, if its
    allowance rolls over."""
    allowance = next((a for a in plan.allowances if a.name == b.name and a.rollover), None)
    if allowance is None:
        return None
    return Bucket(
        bs.new_bucket_id(),
        b.name + "-rollover",
        "rollover",
        b.unit,
        b.rating_groups,
        b.priority - 1,
        carried,
        carried,
        0,
        at,
        period_end_of(ctx.catalogue, plan, at, ctx.account.cycle_day),
        b.zones,
        # Fair use is per period: what a fair-use bucket carries over pays at home only (chf/core/zones.py).
        0 if b.fair_use_left is not None else None,
    )


def _start_period(
    ctx: Context,
    bs: BalanceSet,
    plan: Plan,
    owner: str,
    *,
    is_account: bool,
    at: int,
    reason: str,
    state: str = ACTIVE,
) -> None:
    """Charge the period's fee and grant the period's allowances (line: own ones; account: shared and pool), as
    the line's `state` at `at` allows (`line_terms`). A period starting after its nominal start (`at` inside
    it) is charged for the days left of it when the plan prorates."""
    event = _event(ctx, "renewal", "system", reason, owner)
    event["time"] = at
    event["plan"] = plan.name
    event["period_index"] = bs.period_index
    fee, grants = line_terms(plan, ACTIVE if is_account else state, bs.period_index)
    if not is_account and ctx.account.plan == plan.name:
        fee = 0  # a line on its account's plan: the account pays the fee once
    account = ctx.account
    if fee and plan.prorate:
        fee = prorate(fee, plan.period, at, bs.period_end, account.cycle_day, ctx.catalogue.settings.timezone)
    if fee and not _pay_fee(ctx, event, fee):
        bs.renewal_pending = True
        event["kind"] = "renewal_failed"
        event["reason"] = "insufficient balance for the plan fee"
        event["charge"] = 0
        ctx.events.append(event)
        return
    bs.renewal_pending = not grants
    if not grants:
        event["state"] = state
        event["held"] = "allowances held back until the line is active"
        ctx.events.append(event)
        return
    if not is_account:
        charge_device_fees(ctx, at)  # B2B2B: the accounts above pay for the line too (chf.core.wholesale)
    valid_to = bs.period_end
    allowances = [a for a in plan.allowances if a.shared == is_account]
    if is_account and plan.pool is not None:
        pool = period_allowance(ctx, plan)
        if pool is not None:
            allowances.append(pool)
    for a in allowances:
        kind = "pool" if a.name == "pool" and is_account and plan.pool else "plan"
        rgs = sorted(a.rating_groups) if a.rating_groups is not None else None
        b = Bucket(bs.new_bucket_id(), a.name, kind, a.unit, rgs, a.priority, a.amount, a.amount, 0, at, valid_to)
        b.zones = bucket_zones(a)
        b.fair_use_left = a.fair_use
        bs.buckets.append(b)
        event["impacts"].append(bucket_impact(owner, b, a.amount))
    ctx.events.append(event)


def _pay_fee(ctx: Context, event: dict[str, Any], fee: int) -> bool:
    """Debit a period's fee (with its tax when the account's prices are net: chf.core.tax); False, and nothing
    debited, when a prepaid wallet cannot pay it."""
    account = ctx.account
    home = ctx.catalogue.settings.home_zone
    gross = gross_up(ctx.tax, fee, home, None) if ctx.tax is not None else fee
    if account.payment == "prepaid" and account.available() < gross:
        return False
    if ctx.tax is not None:
        annotate(event, ctx.tax, fee, home, None)
    account.balance -= gross
    ctx.account_dirty = True
    event["charge"] = gross
    event["impacts"].append(ctx.wallet_impact(-gross))
    return True


def assign_plan_to(ctx: Context, plan: Plan, *, is_account: bool, actor: str, reason: str | None) -> None:
    """Start `plan` now on the line (or its account): expire the old plan's buckets, charge the first fee,
    grant allowances and one-off bonuses."""
    now = ctx.now
    if is_account:
        if ctx.acct_bs is None:
            ctx.acct_bs = BalanceSet()
        bs = ctx.acct_bs
        ctx.account.plan = plan.name
        ctx.account_dirty = True
        ctx.acct_bs_dirty = True
        owner = account_owner(ctx.account.id)
    else:
        if ctx.line_bs is None:
            ctx.line_bs = BalanceSet()
        bs = ctx.line_bs
        ctx.line_bs_dirty = True
        owner = line_owner(ctx.sub.id)
    previous = ctx.catalogue.plan_in(bs.plan, ctx.account.currency) if is_account else None
    if previous is not None and previous.pool == "adaptive":
        bill_adaptive(ctx, bs, previous, now, f"plan changed to {plan.name}")
    for b in bs.buckets:
        if b.kind in ("plan", "pool", "rollover"):
            b.valid_to = min(b.valid_to, now)
    _expire_buckets(ctx, bs, owner, now, period_ended=False)
    change = _event(ctx, "plan_change", actor, reason, owner)
    change["plan"] = plan.name
    change["previous_plan"] = bs.plan
    ctx.events.append(change)
    bs.plan = plan.name
    bs.period_start = now
    bs.period_end = period_end_of(ctx.catalogue, plan, now, ctx.account.cycle_day)
    bs.period_index = 0
    bs.usage = {}
    state = ACTIVE if is_account else ctx.sub.state
    _start_period(ctx, bs, plan, owner, is_account=is_account, at=now, reason="plan assigned", state=state)
    if not is_account:
        _grant_bonuses(ctx, bs, plan, owner, actor)


def _grant_bonuses(ctx: Context, bs: BalanceSet, plan: Plan, owner: str, actor: str) -> None:
    """The plan's one-off bonus buckets, granted when a line is put on it."""
    now = ctx.now
    for promo in plan.bonus_allowances():
        a = promo.allowance
        if a is None:
            continue
        valid_to = now + promo.validity_seconds if promo.validity_seconds else FOREVER
        rgs = sorted(a.rating_groups) if a.rating_groups is not None else None
        b = Bucket(bs.new_bucket_id(), a.name, "bonus", a.unit, rgs, a.priority, a.amount, a.amount, 0, now, valid_to)
        b.zones = bucket_zones(a)
        b.fair_use_left = a.fair_use
        bs.buckets.append(b)
        event = ctx.base_event("bonus", actor, f"promotion {a.name}")
        event["impacts"].append(bucket_impact(owner, b, a.amount))
        ctx.events.append(event)


def retry_pending_renewal(ctx: Context, reason: str = "renewal retried") -> None:
    """After a top-up or an activation: a period whose allowances were held back (its fee could not be paid, or
    the line was suspended) is started now, allowances valid to its end, if the line's state now allows it."""
    catalogue = ctx.catalogue
    for bs, is_account in ((ctx.line_bs, False), (ctx.acct_bs, True)):
        if bs is None or not bs.renewal_pending or bs.plan is None:
            continue
        plan = catalogue.plan_in(bs.plan, ctx.account.currency)
        if plan is None:
            continue
        # An account's now: its lines after every change up to and including `now` (account_state_at).
        state = account_state_at(ctx, ctx.now + 1) if is_account else ctx.sub.state
        if not line_terms(plan, state, bs.period_index)[1]:
            continue  # still suspended (or no longer in service): the allowances stay held back
        owner = account_owner(ctx.account.id) if is_account else line_owner(ctx.sub.id)
        # Periods that ended while the fee stayed unpaid and nobody touched the line (service down, sweeper
        # not there yet) are skipped, not charged: the retried renewal starts the period holding `now`.
        while ctx.now >= bs.period_end:
            bs.period_start = bs.period_end
            bs.period_end = period_end_of(catalogue, plan, bs.period_start, ctx.account.cycle_day)
            bs.period_index += 1
            bs.usage = {}
        _start_period(ctx, bs, plan, owner, is_account=is_account, at=ctx.now, reason=reason, state=state)
        if is_account:
            ctx.acct_bs_dirty = True
        else:
            ctx.line_bs_dirty = True


def start_line_plan(ctx: Context, actor: str, reason: str) -> None:
    """A line becomes active: its plan's first period starts now if none runs (a provisioned line, or one whose
    periods stopped), else a period whose allowances were held back while it was suspended starts now."""
    sub = ctx.sub
    bs = ctx.line_bs
    if sub.plan is None or bs is None:
        return
    plan = ctx.catalogue.plan_in(sub.plan, ctx.account.currency)  # another currency's plan is never started
    if plan is None:
        return
    if bs.plan is None:
        assign_plan_to(ctx, plan, is_account=False, actor=actor, reason=reason)
    else:
        retry_pending_renewal(ctx, reason)


def resize_pool(ctx: Context, reason: str) -> None:
    """Derive the account's count of active lines and its pool's size for the current period from its member
    lines, after a line joined or left the account or changed plan or state (or several did: a bulk import). A
    flexible or stacked pool's bucket is set to that size (what was used of it stays used: a pool that shrinks
    below its use is exhausted until it grows again or the period ends); every change of the size is a
    pool_resize event (a stacked pool's names what each member plan brings)."""
    active = active_lines(ctx)
    bs = ctx.acct_bs
    account = ctx.account
    plan = ctx.catalogue.plans.get(account.plan) if account.plan is not None else None
    if bs is None or plan is None or plan.pool is None or bs.plan != plan.name:
        return
    size, members = derived_size(ctx, plan)
    if size is None:
        return
    now = ctx.now
    for b in bs.buckets:
        if b.kind != "pool" or not b.valid_from <= now < b.valid_to or b.initial == size:
            continue
        delta = size - b.initial
        b.initial = size
        b.remaining += delta
        ctx.acct_bs_dirty = True
        event = ctx.base_event("pool_resize", "system", reason)
        event["active_lines"] = active
        event["pool_size"] = size
        if members is not None:
            event["members"] = members
        event["impacts"].append(bucket_impact(account_owner(account.id), b, delta))
        ctx.events.append(event)
