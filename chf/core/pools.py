"""IoT and enterprise pools: what an account's pool holds, derived, never counted up and down by hand.

An account on a plan with a pool has one shared bucket of kind "pool" per period (chf.core.renewals grants it at
the period's start). Its size depends on the kind of pool (README, "Commerce models"):

- static: the plan's `pool_amount`;
- flexible: `pool_per_line` x the account's active lines;
- stacked: the sum of what each member line brings: a line whose own plan is of the pool's `pool_family` brings
  its plan's `pool_contribution` while it is in service (active, or suspended on a plan that keeps its allowances
  while suspended). 10 SIMs on a 100 MB plan and 5 on a 1 GB plan of one family make a 6 GB pool. The size is
  recomputed from the member lines, all of them, whenever one joins, leaves, changes plan or state
  (`derived_size`, called by `chf.core.renewals.resize_pool`), never adjusted by the difference one line makes;
- adaptive: tiers (`pool_tiers`, amount and fee). At the period's close the pool is billed at the cheapest tier
  that covers what was used (`bill_adaptive`, rate-plan optimisation); usage beyond the top tier is rated by the
  plan's tariffs like any usage beyond allowances. Without `pool_topoff` the pool holds the top tier from the
  start. With it, the pool starts at the first tier and, when exhausted, is topped off to the next one
  (`top_off`, from the engine's grant): a tier reached is a tier owed, so the close bills the tier reached.
  Every tier decision is an event that says which tier and why.

Works on a `Context` (chf.core.context) and writes nothing itself; the caller flushes it.
"""

from __future__ import annotations

from typing import Any

from chf.core.catalogue import Allowance, Plan, PoolTier
from chf.core.context import Context, account_owner, bucket_impact
from chf.core.tax import annotate
from store.schema import ACTIVE, SUSPENDED, BalanceSet, Subscriber


def active_lines(ctx: Context) -> int:
    """The account's active lines, counted from its line records (the store's index of them); the account
    record keeps the count for display."""
    account = ctx.account
    active = ctx.txn.active_line_count(account.id)
    if account.active_lines != active:
        account.active_lines = active
        ctx.account_dirty = True
    return active


def brings_allowances(plan: Plan, state: str) -> bool:
    """Whether a line in `state` on `plan` has its allowances (its share of a stacked pool with them): active, or
    suspended on a plan whose suspended fee is the full one (chf.core.renewals.line_terms)."""
    return state == ACTIVE or (state == SUSPENDED and plan.suspended_fee is None)


def member_share(ctx: Context, pool_plan: Plan, sub: Subscriber) -> tuple[str, int] | None:
    """What line `sub` brings to the account's stacked pool now: (its plan, units), or None."""
    plan = ctx.catalogue.plan_in(sub.plan, ctx.account.currency)
    if plan is None or plan.pool_family != pool_plan.pool_family or not plan.pool_contribution:
        return None
    if not brings_allowances(plan, sub.state):
        return None
    return plan.name, plan.pool_contribution


def stacked_size(ctx: Context, plan: Plan) -> tuple[int, dict[str, list[int]]]:
    """A stacked pool's size, summed over every line of the account as the store holds it now, and what each
    member plan brings: {plan: [lines, units]}. One read per line of the account."""
    txn = ctx.txn
    size = 0
    members: dict[str, list[int]] = {}
    for line_id in txn.lines_of_account(ctx.account.id):
        sub = txn.get_subscriber(line_id)
        share = member_share(ctx, plan, sub) if sub is not None else None
        if share is None:
            continue
        name, units = share
        size += units
        entry = members.setdefault(name, [0, 0])
        entry[0] += 1
        entry[1] += units
    return size, members


def derived_size(ctx: Context, plan: Plan) -> tuple[int | None, dict[str, list[int]] | None]:
    """The size a pool that follows its members has now, and (stacked) what each member plan brings; None for a
    pool whose size does not follow its members (static, adaptive) or no pool."""
    if plan.pool == "stacked":
        return stacked_size(ctx, plan)
    if plan.pool == "flexible":
        pool = plan.pool_allowance(active_lines(ctx))
        return (pool.amount if pool is not None else None), None
    return None, None


def period_allowance(ctx: Context, plan: Plan) -> Allowance | None:
    """The pool bucket a period of the account's plan starts with (None: the plan has no pool)."""
    if plan.pool is None or plan.pool_unit is None:
        return None
    if plan.pool == "stacked":
        amount = stacked_size(ctx, plan)[0]
    elif plan.pool == "adaptive":
        tiers = plan.pool_tiers
        amount = (tiers[0] if plan.pool_topoff else tiers[-1]).amount if tiers else 0
    else:
        return plan.pool_allowance(active_lines(ctx))
    return Allowance("pool", plan.pool_unit, amount, plan.pool_rating_groups, 0, True, False)


def _pool_buckets(bs: BalanceSet) -> list[Any]:
    return [b for b in bs.buckets if b.kind == "pool"]


def _tier_of(tiers: tuple[PoolTier, ...], amount: int) -> int | None:
    for i, tier in enumerate(tiers):
        if tier.amount == amount:
            return i
    return None


def bill_adaptive(ctx: Context, bs: BalanceSet, plan: Plan, at: int, reason: str) -> None:
    """Bill the period of an adaptive pool that ends at `at` (its close, or a plan change): the cheapest tier that
    covers what was used, or the tier the pool was topped off to if that is higher; one `pool_tier` event.

    What was used is what was settled against the pool by `at`; units still reserved then are settled against it
    afterwards, as any bucket that expires under an open grant (chf.core.renewals)."""
    # The period is priced by the version of the catalogue in force when it started (chf.core.versions).
    priced_by = ctx.catalogue_at(bs.period_start)
    plan = priced_by.plan_in(bs.plan, ctx.account.currency) or plan
    tiers = plan.pool_tiers
    buckets = _pool_buckets(bs)
    if not tiers or not buckets:
        return
    used = sum(b.initial - b.remaining for b in buckets)
    size = max(b.initial for b in buckets)
    covering = next((i for i, tier in enumerate(tiers) if tier.amount >= used), len(tiers) - 1)
    reached = _tier_of(tiers, size) if plan.pool_topoff else None
    chosen = covering
    why = f"the cheapest of {len(tiers)} tiers that covers the {used} {plan.pool_unit} used"
    if reached is not None and reached > covering:
        chosen = reached
        why = f"the tier the pool was topped off to ({used} {plan.pool_unit} used of it)"
    elif used > tiers[-1].amount:
        why = f"the top tier: {used} {plan.pool_unit} used, beyond it rated as overage"
    tier = tiers[chosen]
    event = ctx.base_event("pool_tier", "system", reason)
    event["subscriber"] = event["imsi"] = event["msisdn"] = None  # the account's, whichever line brought it here
    event["time"] = at
    event["catalogue"] = priced_by.version
    event["plan"] = plan.name
    event["pool_used"] = used
    event["tier"] = {"index": chosen, "amount": tier.amount, "fee": tier.fee}
    event["why"] = why
    fee = tier.fee
    if ctx.tax is not None:  # the tier's fee with its tax split (net prices: added) (chf.core.tax)
        fee = annotate(event, ctx.tax, fee, priced_by.settings.home_zone, None)
    event["charge"] = fee
    if fee:
        ctx.account.balance -= fee
        ctx.account_dirty = True
        event["impacts"].append(ctx.wallet_impact(-fee))
    ctx.events.append(event)


def top_off(ctx: Context, unit: str, rg: int) -> bool:
    """An exhausted adaptive pool with `pool_topoff` grows to its next tier (True), with a `pool_topoff` event;
    False when there is no such pool for `unit` and `rg`, it is not exhausted, or it is at its top tier. The
    engine asks only when the buckets could not cover a grant."""
    bs = ctx.acct_bs
    if bs is None or bs.plan is None:
        return False
    plan = ctx.catalogue.plan_in(bs.plan, ctx.account.currency)
    if plan is None or not plan.pool_topoff:
        return False
    now = ctx.now
    for b in _pool_buckets(bs):
        if not b.usable(unit, rg, now) or b.available() > 0:
            continue
        following = [t for t in plan.pool_tiers if t.amount > b.initial]
        if not following:
            return False
        tier = following[0]
        delta = tier.amount - b.initial
        event = ctx.base_event("pool_topoff", "system", "pool exhausted")
        event["plan"] = plan.name
        event["tier"] = {"index": plan.pool_tiers.index(tier), "amount": tier.amount, "fee": tier.fee}
        event["why"] = f"{b.initial - b.remaining} of {b.initial} {b.unit} used, {b.reserved} reserved"
        b.initial = tier.amount
        b.remaining += delta
        ctx.acct_bs_dirty = True
        event["impacts"].append(bucket_impact(account_owner(ctx.account.id), b, delta))
        ctx.events.append(event)
        return True
    return False
