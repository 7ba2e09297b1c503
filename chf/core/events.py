"""One-shot events (RFC 4006 CCR-Event with a Requested-Action): direct debit, refund, balance check, price
enquiry.

An event is rated and acted on in one request: no session, no reservation (TS 32.299 immediate event charging).
Each is answered once per idempotency key (the session and request number unless the client gives one); a
retransmission is answered from the stored answer and changes nothing.

Per rating group, `_price` rates the units the request names (what buckets do not pay, at the tariff price),
then the action's function in `ACTIONS` acts on it. Another action (a future IEC/PEC variant) is one more
function there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from chf.core.catalogue import Plan, Tariff
from chf.core.context import Context, bucket_impact, funds
from chf.core.model import (
    CHECK_BALANCE,
    CREDIT_LIMIT_REACHED,
    DIRECT_DEBITING,
    END_USER_SERVICE_DENIED,
    EVENT_ACTIONS,
    FUA_TERMINATE,
    PRICE_ENQUIRY,
    RATING_FAILED,
    REFUND_ACCOUNT,
    SUCCESS,
    USER_UNKNOWN,
    ChargingAnswer,
    ChargingRequest,
    FinalUnit,
    RequestError,
    UnitAnswer,
    UnitRequest,
    all_failed,
)
from store.lmdbstore import Txn
from store.schema import ACTIVE, Bucket

if TYPE_CHECKING:
    from chf.core.engine import Engine


@dataclass(slots=True)
class Priced:
    """One rating group of an event, rated."""

    rating_group: int
    tariff: Tariff
    zone: str
    units: int  # the units the request names (1 for an events tariff that names none)
    usage: int  # the line's usage of the rating group in the period, before this event
    buckets: list[tuple[Bucket, int, str]]  # the buckets that may pay, in consumption order
    from_buckets: int  # the units they pay (debit and balance check only)
    cost: int  # money for the rest, at the tariff price


def charge_event(engine: Engine, txn: Txn, req: ChargingRequest, now: int) -> ChargingAnswer:
    """Decide one event request inside the store transaction `txn`."""
    if req.action not in EVENT_ACTIONS:
        raise RequestError("requested action", f"unsupported action {req.action!r}")
    key = req.idempotency_key or f"{req.session}#{req.number}"
    stored = txn.get_idem(key, now)
    if stored is not None:
        return ChargingAnswer.unpack(stored, duplicate=True)
    sub = engine.resolve_line(txn, req.identities)
    if sub is None:
        return ChargingAnswer(USER_UNKNOWN, req.session, req.number, detail="no line with these identities")
    ctx = engine.context(txn, sub, now)
    answer = ChargingAnswer(SUCCESS, req.session, req.number, currency=ctx.account.currency)
    writes = False
    if sub.state != ACTIVE and req.action in (DIRECT_DEBITING, CHECK_BALANCE):
        answer.result = END_USER_SERVICE_DENIED
        answer.detail = f"line is {sub.state}"
    elif req.action == CHECK_BALANCE and not req.units:
        answer.balance = ctx.account.balance
        answer.enough_credit = ctx.account.available() > 0
    else:
        writes = _rate_units(ctx, engine.line_plan(ctx), req, answer)
    ctx.flush()
    if writes or req.action in (DIRECT_DEBITING, REFUND_ACCOUNT):
        txn.put_idem(key, now + engine.config.idempotency_window, answer.pack())
    return answer


def _rate_units(ctx: Context, plan: Plan | None, req: ChargingRequest, answer: ChargingAnswer) -> bool:
    """Rate and act on each rating group of the request (one without a rating group when it names none).
    Returns whether anything was written."""
    catalogue = ctx.catalogue
    zone = catalogue.zone_of(req.serving_network)
    local = catalogue.local_time(ctx.now)
    act = ACTIONS[req.action]
    writes = False
    total_cost = 0
    for unit_req in req.units or [UnitRequest()]:
        ua = UnitAnswer(unit_req.rating_group, service_id=unit_req.service_id)
        answer.units.append(ua)
        priced = _price(ctx, plan, req.action, unit_req, ua, zone, local)
        if priced is None:
            continue
        total_cost += priced.cost
        if act(ctx, req, unit_req, ua, answer, priced):
            writes = True
    answer.cost = total_cost
    answer.balance = ctx.account.balance
    if req.units and all_failed(answer.units):
        answer.result = answer.units[0].result
    return writes


def _price(
    ctx: Context,
    plan: Plan | None,
    action: str | None,
    unit_req: UnitRequest,
    ua: UnitAnswer,
    zone: str,
    local: datetime,
) -> Priced | None:
    """Rate one rating group, or answer why it cannot be (no tariff, barred zone) and return None."""
    rg = unit_req.rating_group
    tariff = plan.tariff_for(rg) if plan is not None else None
    if tariff is None or plan is None:
        ua.result = RATING_FAILED
        return None
    if ctx.catalogue.is_denied(plan, rg, zone):
        ua.result = END_USER_SERVICE_DENIED
        return None
    amounts = unit_req.requested or (unit_req.used[0].units if unit_req.used else {})
    units = amounts.get(tariff.unit) or (1 if tariff.unit == "events" else 0)
    ua.unit = tariff.unit
    usage = ctx.line_bs.usage.get(rg, 0) if ctx.line_bs is not None else 0
    from_buckets = 0
    buckets = ctx.usable_buckets(tariff.unit, rg)
    if action in (DIRECT_DEBITING, CHECK_BALANCE):
        from_buckets = min(units, sum(b.available() for b, _, _ in buckets))
    cost = tariff.charge(units - from_buckets, zone, local, usage)
    return Priced(rg, tariff, zone, units, usage, buckets, from_buckets, cost)


# -- the actions: each acts on one rated rating group and returns whether it wrote anything ---------------------------
def _price_enquiry(
    ctx: Context, req: ChargingRequest, unit_req: UnitRequest, ua: UnitAnswer, answer: ChargingAnswer, p: Priced
) -> bool:
    ua.granted = p.units
    return False


def _check_balance(
    ctx: Context, req: ChargingRequest, unit_req: UnitRequest, ua: UnitAnswer, answer: ChargingAnswer, p: Priced
) -> bool:
    answer.enough_credit = p.cost <= funds(ctx.account)
    return False


def _refund(
    ctx: Context, req: ChargingRequest, unit_req: UnitRequest, ua: UnitAnswer, answer: ChargingAnswer, p: Priced
) -> bool:
    """Credit the wallet with the price of the units (buckets are not refunded)."""
    ctx.account.balance += p.cost
    ctx.account_dirty = True
    event = ctx.base_event("refund", f"network:{req.protocol}", "REFUND_ACCOUNT")
    event.update(
        session=req.session,
        rating_group=p.rating_group,
        unit=p.tariff.unit,
        used=-p.units,
        charge=-p.cost,
        tariff=p.tariff.name,
        zone=p.zone,
    )
    event["impacts"].append(ctx.wallet_impact(p.cost))
    ctx.events.append(event)
    ua.granted = p.units
    return True


def _debit(
    ctx: Context, req: ChargingRequest, unit_req: UnitRequest, ua: UnitAnswer, answer: ChargingAnswer, p: Priced
) -> bool:
    """Take the units from the buckets that may pay them, the rest's price from the wallet; refused whole when
    the funds do not cover the price."""
    if p.cost > funds(ctx.account):
        ua.result = CREDIT_LIMIT_REACHED
        ua.final = FinalUnit(FUA_TERMINATE)
        return False
    event = ctx.base_event("usage", f"network:{req.protocol}", "DIRECT_DEBITING")
    event.update(
        session=req.session,
        rating_group=p.rating_group,
        service_id=unit_req.service_id,
        unit=p.tariff.unit,
        used=p.units,
        tariff=p.tariff.name,
        zone=p.zone,
        charge=p.cost,
    )
    left = p.from_buckets
    for bucket, src, owner in p.buckets:
        take = min(left, bucket.available())
        if take <= 0:
            continue
        bucket.remaining -= take
        ctx.mark(src)
        event["impacts"].append(bucket_impact(owner, bucket, -take))
        left -= take
        if left == 0:
            break
    if p.cost:
        ctx.account.balance -= p.cost
        ctx.account_dirty = True
        event["impacts"].append(ctx.wallet_impact(-p.cost))
    if ctx.line_bs is not None:
        ctx.line_bs.usage[p.rating_group] = p.usage + p.units
        ctx.line_bs_dirty = True
    ctx.events.append(event)
    ua.granted = p.units
    ua.charged = p.cost
    return True


_Action = Callable[[Context, ChargingRequest, UnitRequest, UnitAnswer, ChargingAnswer, Priced], bool]
ACTIONS: dict[str | None, _Action] = {
    PRICE_ENQUIRY: _price_enquiry,
    CHECK_BALANCE: _check_balance,
    REFUND_ACCOUNT: _refund,
    DIRECT_DEBITING: _debit,
}
