"""Plans and their periods: assigning a plan, renewing periods at their boundaries, expiring buckets.

A line (or an account, for shared allowances and IoT pools) on a plan has a balance set whose period runs from
`period_start` to `period_end`. Every operation brings the balance sets it loads up to date first
(`bring_up_to_date`): each period that ended before `now` is renewed at its exact boundary (its fee charged, its
allowances granted, unused allowances rolled over where the plan says so), and buckets whose validity ended
expire, each with its event at the time it happened. A prepaid period whose fee cannot be paid stays pending
until a top-up (`retry_pending_renewal`).

Everything here works on a `Context` and the catalogue it was loaded with; it writes nothing itself (the
caller flushes the context).
"""

from __future__ import annotations

from chf.core.catalogue import Catalogue, Plan
from chf.core.context import Context, account_owner, bucket_impact, line_owner
from chf.core.periods import period_end
from store.schema import BalanceSet, Bucket

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


def _renew_owner(ctx: Context, bs: BalanceSet, *, is_account: bool) -> None:
    catalogue = ctx.catalogue
    owner = account_owner(ctx.account.id) if is_account else line_owner(ctx.sub.id)
    plan = catalogue.plans.get(bs.plan) if bs.plan is not None else None
    # Periods: at most one catch-up per missed period, bounded so a long-idle line cannot stall a batch.
    for _ in range(400):
        if plan is None or ctx.now < bs.period_end:
            break
        boundary = bs.period_end
        _expire_buckets(ctx, bs, owner, boundary, period_ended=True)
        bs.period_start = boundary
        bs.period_end = period_end(plan.period, boundary, ctx.account.cycle_day, catalogue.settings.timezone)
        bs.period_index += 1
        bs.usage = {}
        _start_period(ctx, bs, plan, owner, is_account=is_account, at=boundary, reason="renewal")
    _expire_buckets(ctx, bs, owner, ctx.now, period_ended=False)
    if is_account:
        ctx.acct_bs_dirty = True
    else:
        ctx.line_bs_dirty = True


def _expire_buckets(ctx: Context, bs: BalanceSet, owner: str, at: int, *, period_ended: bool) -> None:
    """Expire the buckets whose validity ended by `at`; at the end of a period, a plan allowance with rollover
    carries what is left of it into a rollover bucket valid for the next period."""
    plan = ctx.catalogue.plans.get(bs.plan) if bs.plan is not None else None
    keep: list[Bucket] = []
    for b in bs.buckets:
        if b.valid_to > at:
            keep.append(b)
            continue
        event = ctx.base_event("expiry", "system", "validity ended")
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
    )


def _start_period(
    ctx: Context, bs: BalanceSet, plan: Plan, owner: str, *, is_account: bool, at: int, reason: str
) -> None:
    """Charge the period's fee and grant the period's allowances (line: own ones; account: shared and pool)."""
    event = ctx.base_event("renewal", "system", reason)
    event["time"] = at
    event["plan"] = plan.name
    event["period_index"] = bs.period_index
    fee = plan.fee_for_period(bs.period_index)
    if not is_account and ctx.account.plan == plan.name:
        fee = 0  # a line on its account's plan: the account pays the fee once
    account = ctx.account
    if fee:
        if account.payment == "prepaid" and account.available() < fee:
            bs.renewal_pending = True
            event["kind"] = "renewal_failed"
            event["reason"] = "insufficient balance for the plan fee"
            event["charge"] = 0
            ctx.events.append(event)
            return
        account.balance -= fee
        ctx.account_dirty = True
        event["charge"] = fee
        event["impacts"].append(ctx.wallet_impact(-fee))
    bs.renewal_pending = False
    valid_to = bs.period_end
    allowances = [a for a in plan.allowances if a.shared == is_account]
    if is_account:
        pool = plan.pool_allowance(account.active_lines)
        if pool is not None:
            allowances.append(pool)
    for a in allowances:
        kind = "pool" if a.name == "pool" and is_account and plan.pool else "plan"
        rgs = sorted(a.rating_groups) if a.rating_groups is not None else None
        b = Bucket(bs.new_bucket_id(), a.name, kind, a.unit, rgs, a.priority, a.amount, a.amount, 0, at, valid_to)
        bs.buckets.append(b)
        event["impacts"].append(bucket_impact(owner, b, a.amount))
    ctx.events.append(event)


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
    for b in bs.buckets:
        if b.kind in ("plan", "pool", "rollover"):
            b.valid_to = min(b.valid_to, now)
    _expire_buckets(ctx, bs, owner, now, period_ended=False)
    change = ctx.base_event("plan_change", actor, reason)
    change["plan"] = plan.name
    change["previous_plan"] = bs.plan
    ctx.events.append(change)
    bs.plan = plan.name
    bs.period_start = now
    bs.period_end = period_end_of(ctx.catalogue, plan, now, ctx.account.cycle_day)
    bs.period_index = 0
    bs.usage = {}
    _start_period(ctx, bs, plan, owner, is_account=is_account, at=now, reason="plan assigned")
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
        bs.buckets.append(b)
        event = ctx.base_event("bonus", actor, f"promotion {a.name}")
        event["impacts"].append(bucket_impact(owner, b, a.amount))
        ctx.events.append(event)


def retry_pending_renewal(ctx: Context) -> None:
    """After a top-up: a period whose fee could not be paid is started now (allowances valid to its end)."""
    catalogue = ctx.catalogue
    for bs, is_account in ((ctx.line_bs, False), (ctx.acct_bs, True)):
        if bs is None or not bs.renewal_pending or bs.plan is None:
            continue
        plan = catalogue.plans.get(bs.plan)
        if plan is None:
            continue
        owner = account_owner(ctx.account.id) if is_account else line_owner(ctx.sub.id)
        # Periods that ended while the fee stayed unpaid and nobody touched the line (service down, sweeper
        # not there yet) are skipped, not charged: the retried renewal starts the period holding `now`.
        while ctx.now >= bs.period_end:
            bs.period_start = bs.period_end
            bs.period_end = period_end_of(catalogue, plan, bs.period_start, ctx.account.cycle_day)
            bs.period_index += 1
            bs.usage = {}
        _start_period(ctx, bs, plan, owner, is_account=is_account, at=ctx.now, reason="renewal retried")
        if is_account:
            ctx.acct_bs_dirty = True
        else:
            ctx.line_bs_dirty = True
