"""Multi-subscription: a line with extra plans beside its main plan (a connectivity plan plus a service plan).

Each extra plan is an entry of the line's balance set (`BalanceSet.extras`: [plan, period_start, period_end,
period_index]) with its own period and fee; its allowances are buckets of kind "extra" named
"<plan>:<allowance>" in the line's bucket list, so that one reservation's portions and one bucket-id space cover
them all. The order of consumption is the one the engine already uses for every bucket: the catalogue's
allowance `priority` (lowest first), whichever plan granted it. The line's tariffs (what usage beyond every
bucket costs) stay its main plan's: an extra plan contributes allowances and a fee, not prices.

Money as for the main plan (chf.core.renewals.line_terms): the fee is charged at each of the extra plan's
boundaries while the line is in service (suspended: as the plan says), never for a provisioned or terminated
line, whose extra plans stop at their next boundary. Adding an extra plan charges its first fee (prorated where
the plan says) and refuses whole when a prepaid wallet cannot pay it. Removing one ends its period now and its
buckets with it; no part of the fee is refunded (no rule grants one).
"""

from __future__ import annotations

from typing import Any

from chf.core.catalogue import Plan
from chf.core.context import Context, bucket_impact, line_owner
from chf.core.periods import period_end, prorate
from chf.core.zones import bucket_zones
from store.schema import ACTIVE, SUSPENDED, BalanceSet, Bucket

EXTRA = "extra"  # Bucket.kind of an extra plan's allowance


def bucket_name(plan: str, allowance: str) -> str:
    return f"{plan}:{allowance}"


def extra_plans(bs: BalanceSet | None) -> list[str]:
    return [e[0] for e in bs.extras] if bs is not None and bs.extras else []


def extras_due(bs: BalanceSet, now: int) -> bool:
    """Whether one of the extra plans' periods ended by `now` (chf.core.renewals.needs_upkeep)."""
    if not bs.extras:
        return False
    for e in bs.extras:  # noqa: SIM110 (compiled callers: no generators)
        if now >= e[2]:
            return True
    return False


def start_extra(ctx: Context, bs: BalanceSet, plan: Plan, at: int, index: int, reason: str, state: str) -> bool:
    """Charge one period of extra plan `plan` starting at `at` and grant its allowances, as the line's `state`
    allows; False, nothing charged nor granted, when a prepaid wallet cannot pay the fee."""
    from chf.core.renewals import _pay_fee, line_terms  # renewals calls renew_extras: imported when used

    for e in bs.extras or []:
        if e[0] == plan.name:
            end = e[2]
            break
    else:
        return False
    owner = line_owner(ctx.sub.id)
    event = ctx.base_event("renewal", "system", reason)
    event["time"] = at
    event["plan"] = plan.name
    event["extra"] = True
    event["period_index"] = index
    fee, grants = line_terms(plan, state, index)
    if fee and plan.prorate:
        fee = prorate(fee, plan.period, at, end, ctx.account.cycle_day, ctx.catalogue.settings.timezone)
    if fee and not _pay_fee(ctx, event, fee):
        event["kind"] = "renewal_failed"
        event["reason"] = "insufficient balance for the plan fee"
        event["charge"] = 0
        ctx.events.append(event)
        return False
    if grants:
        for a in plan.allowances:
            if a.shared:
                continue
            rgs = sorted(a.rating_groups) if a.rating_groups is not None else None
            name = bucket_name(plan.name, a.name)
            b = Bucket(bs.new_bucket_id(), name, EXTRA, a.unit, rgs, a.priority, a.amount, a.amount, 0, at, end)
            b.zones = bucket_zones(a)
            b.fair_use_left = a.fair_use
            bs.buckets.append(b)
            event["impacts"].append(bucket_impact(owner, b, a.amount))
    else:
        event["state"] = state
        event["held"] = "allowances held back until the line is active"
    ctx.events.append(event)
    ctx.line_bs_dirty = True
    return True


def renew_extras(ctx: Context, bs: BalanceSet) -> None:
    """Renew each extra plan whose period ended, at its exact boundaries, in the version of the catalogue in
    force at each; a line not in service at a boundary (or a plan gone from the catalogue) ends it there.
    The buckets of the period that ended expire by their validity (chf.core.renewals._expire_buckets)."""
    from chf.core.renewals import state_at

    if not bs.extras:
        return
    kept: list[list[Any]] = []
    for e in bs.extras:
        for _ in range(400):  # bounded catch-up, as the main plan's
            if ctx.now < e[2]:
                break
            boundary = e[2]
            catalogue = ctx.catalogue_at(boundary)
            plan = catalogue.plan_in(e[0], ctx.account.currency)
            state = state_at(ctx.sub, boundary)
            if plan is None or state not in (ACTIVE, SUSPENDED):
                _ended(ctx, e[0], boundary, "line not in service: its periods stop" if plan else "plan withdrawn")
                e = []
                break
            e[1] = boundary
            e[2] = period_end(plan.period, boundary, ctx.account.cycle_day, catalogue.settings.timezone)
            e[3] += 1
            saved = ctx.catalogue
            ctx.catalogue = catalogue
            try:
                start_extra(ctx, bs, plan, boundary, e[3], "renewal", state)
            finally:
                ctx.catalogue = saved
        if e:
            kept.append(e)
    bs.extras = kept or None
    ctx.line_bs_dirty = True


def _ended(ctx: Context, plan: str, at: int, reason: str, actor: str = "system") -> None:
    event = ctx.base_event("plan_change", actor, reason)
    event["time"] = at
    event["plan"] = None
    event["previous_plan"] = plan
    event["extra"] = True
    ctx.events.append(event)


def add_extra(ctx: Context, plan: Plan, *, actor: str, reason: str) -> None:
    """Start extra plan `plan` on the context's line now (the caller checked the line and the plan)."""
    bs = ctx.line_bs
    assert bs is not None
    now = ctx.now
    end = period_end(plan.period, now, ctx.account.cycle_day, ctx.catalogue.settings.timezone)
    bs.extras = [*(bs.extras or []), [plan.name, now, end, 0]]
    change = ctx.base_event("plan_change", actor, reason)
    change["plan"] = plan.name
    change["previous_plan"] = None
    change["extra"] = True
    # The change and the first period are one operation: refused whole when the fee cannot be paid.
    events_before = len(ctx.events)
    ctx.events.append(change)
    if not start_extra(ctx, bs, plan, now, 0, reason, ctx.sub.state):
        del ctx.events[events_before:]
        bs.extras = [e for e in bs.extras if e[0] != plan.name] or None
        raise ValueError("fee")
    ctx.line_bs_dirty = True


def remove_extra(ctx: Context, plan_name: str, *, actor: str, reason: str) -> None:
    """End extra plan `plan_name` now: its buckets expire (units held by open grants are settled against them as
    at any expiry), no fee is refunded."""
    from chf.core.renewals import _expire_buckets

    bs = ctx.line_bs
    assert bs is not None
    now = ctx.now
    prefix = plan_name + ":"
    for b in bs.buckets:
        if b.kind == EXTRA and b.name.startswith(prefix):
            b.valid_to = min(b.valid_to, now)
    _expire_buckets(ctx, bs, line_owner(ctx.sub.id), now, period_ended=False)
    bs.extras = [e for e in bs.extras or [] if e[0] != plan_name] or None
    _ended(ctx, plan_name, now, reason, actor)
    ctx.line_bs_dirty = True
