"""One-shot events: RFC 4006 CCR-Event with a Requested-Action (direct debit, refund, balance check, price
enquiry) and the Nchf one-time events (TS 32.290: IEC is a direct debit, PEC a post-event charge).

An event is rated and acted on in one request: no session, no reservation (TS 32.299 immediate event charging).
Each is answered once per idempotency key (the session and request number unless the client gives one); a
retransmission is answered from the stored answer and changes nothing.

Per rating group, the action's function in `ACTIONS` acts on it: debits and enquiries rate the units first
(`_price`: what buckets do not pay, at the tariff price); a refund rates nothing, it reverses debits.

Refunds (README "Refunds"). Every debit of units (direct debit, post-event charge) is kept as a `Debit` record:
the units it took from each bucket, the units it charged to the wallet and their money. A REFUND_ACCOUNT of a
line and rating group reverses those debits, newest first, within [engine] refund_window seconds: wallet money
back to the wallet it came from, then allowance units back to their bucket if that bucket still exists and is
valid (an expired allowance is not refunded, in units or in money). It never returns more than the debits took
and was not refunded yet, and each reversal is a "refund" event naming the debit it reverses (`reverses`). Debits
made while the line belonged to another account are not refunded here (the money went to that account). With
nothing to refund, the rating group gets RATING_FAILED (Diameter 5031) and nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chf.core.catalogue import Plan, Tariff
from chf.core.context import Context, bucket_impact, funds
from chf.core.currency import check_currency
from chf.core.model import (
    CHECK_BALANCE,
    CREDIT_LIMIT_REACHED,
    DIRECT_DEBITING,
    END_USER_SERVICE_DENIED,
    EVENT_ACTIONS,
    FUA_TERMINATE,
    POST_EVENT,
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
from chf.core.tax import annotate, annotate_gross, gross_up
from chf.core.wholesale import rate_levels
from chf.core.zones import hold, room
from store.interface import Txn
from store.schema import ACTIVE, SUSPENDED, Bucket, Debit

if TYPE_CHECKING:
    from chf.core.engine import Engine

# The line states in which an action may change or quote a balance. A direct debit (and its balance check) comes
# before the service: active lines only. A post-event charge reports a service delivered already: charged on a
# suspended line too (it may predate the suspension), never on a line that cannot have had service (provisioned)
# or is gone (terminated). A refund returns what a debit took, whatever the line's state; a price enquiry asks.
_LINE_STATES: dict[str | None, tuple[str, ...]] = {
    DIRECT_DEBITING: (ACTIVE,),
    CHECK_BALANCE: (ACTIVE,),
    POST_EVENT: (ACTIVE, SUSPENDED),
}
# Actions whose answer is kept for replay even when nothing was written (a retransmission must not act twice).
_REMEMBERED = (DIRECT_DEBITING, REFUND_ACCOUNT, POST_EVENT)


@dataclass(slots=True)
class Priced:
    """One rating group of an event, rated."""

    rating_group: int
    tariff: Tariff
    zone: str
    units: int  # the units the request names (1 for an events tariff that names none)
    usage: int  # the line's usage of the rating group in the period, before this event
    buckets: list[tuple[Bucket, int, str]]  # the buckets that may pay, in consumption order
    from_buckets: int  # the units they pay (debits and balance check only)
    cost: int  # money for the rest, at the tariff price (with the tax, when prices are net: chf.core.tax)
    price: int  # the tariff price of the rest, before tax
    used_in: str = ""  # the zone of the serving network (`zone` prices; a barred zone is priced at home)


@dataclass(slots=True)
class Job:
    """One event request being decided: what every action works with."""

    ctx: Context
    plan: Plan | None
    req: ChargingRequest
    answer: ChargingAnswer
    refund_window: int
    cost: int = 0  # money priced, charged or refunded over the rating groups
    # Debits made by this request, with their events: stored once the events have their ids (after the flush).
    made: list[tuple[Debit, dict[str, Any]]] = field(default_factory=list)


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
    check_currency(req, ctx.account)  # before anything is written (the context buffers its changes)
    answer = ChargingAnswer(SUCCESS, req.session, req.number, currency=ctx.account.currency)
    writes = False
    job = Job(ctx, engine.line_plan(ctx), req, answer, engine.config.refund_window)
    if sub.state not in _LINE_STATES.get(req.action, (sub.state,)):
        answer.result = END_USER_SERVICE_DENIED
        answer.detail = f"line is {sub.state}"
    elif req.action == CHECK_BALANCE and not req.units:
        answer.balance = ctx.account.balance
        answer.enough_credit = ctx.account.available() > 0
    else:
        writes = _rate_units(job)
    ctx.flush()
    for debit, event in job.made:
        debit.seq = event["seq"]
        debit.event = event["id"]
        txn.put_debit(debit)
    if writes or req.action in _REMEMBERED:
        txn.put_idem(key, now + engine.config.idempotency_window, answer.pack())
    return answer


def _rate_units(job: Job) -> bool:
    """Act on each rating group of the request (one without a rating group when it names none, but for a
    post-event charge, which then reports nothing to charge). Returns whether anything was written."""
    req = job.req
    answer = job.answer
    act = ACTIONS[req.action]
    writes = False
    units = req.units
    if not units and req.action != POST_EVENT:
        units = [UnitRequest()]
    for unit_req in units:
        ua = UnitAnswer(unit_req.rating_group, service_id=unit_req.service_id)
        answer.units.append(ua)
        if act(job, unit_req, ua):
            writes = True
    answer.cost = job.cost
    answer.balance = job.ctx.account.balance
    if answer.units and all_failed(answer.units):
        answer.result = answer.units[0].result
    return writes


def _named_units(unit_req: UnitRequest, unit: str, *, delivered: bool) -> int:
    """The units of type `unit` a request names: its requested units, else the sum of its used-unit reports
    (`delivered`, a post-event charge: the reports only). Bytes may be reported as uplink and downlink only."""
    amounts = None if delivered else unit_req.requested
    if unit_req.used and not amounts:
        amounts = {}
        for report in unit_req.used:
            for name, value in report.units.items():
                amounts[name] = amounts.get(name, 0) + value
    if not amounts:
        return 0
    units = amounts.get(unit, 0)
    if unit == "bytes" and not units:
        units = amounts.get("bytes_in", 0) + amounts.get("bytes_out", 0)
    return units


def _price(job: Job, unit_req: UnitRequest, ua: UnitAnswer, *, from_buckets: bool) -> Priced | None:
    """Rate one rating group, or answer why it cannot be (no tariff, barred zone) and return None. With
    `from_buckets`, the units the line's usable buckets hold are taken off before pricing."""
    ctx = job.ctx
    plan = job.plan
    catalogue = ctx.catalogue
    rg = unit_req.rating_group
    tariff = plan.tariff_for(rg) if plan is not None else None
    if tariff is None or plan is None:
        ua.result = RATING_FAILED
        return None
    post_event = job.req.action == POST_EVENT
    zone = catalogue.zone_of(job.req.serving_network)
    used_in = zone  # allowances pay by where the event happened, whatever zone prices it (chf/core/zones.py)
    if catalogue.is_denied(plan, rg, zone):
        if not post_event:
            ua.result = END_USER_SERVICE_DENIED
            return None
        # Delivered where the tariff bars it (never granted there): charged at the home price, as session usage
        # is (chf/core/engine.py): revenue is never dropped.
        zone = catalogue.settings.home_zone
    units = _named_units(unit_req, tariff.unit, delivered=post_event) or (1 if tariff.unit == "events" else 0)
    ua.unit = tariff.unit
    usage = ctx.line_bs.usage.get(rg, 0) if ctx.line_bs is not None else 0
    taken = 0
    buckets = ctx.usable_buckets(tariff.unit, rg, used_in)
    if from_buckets:
        held = 0
        home = catalogue.settings.home_zone
        for b, _src, _owner in buckets:
            held += room(b, used_in, home)
        taken = min(units, held)
    price = tariff.charge(units - taken, zone, catalogue.local_time(ctx.now), usage)
    cost = gross_up(ctx.tax, price, zone, rg) if ctx.tax is not None else price
    return Priced(rg, tariff, zone, units, usage, buckets, taken, cost, price, used_in)


# -- the actions: each acts on one rating group and returns whether it wrote anything --------------------------------
def _price_enquiry(job: Job, unit_req: UnitRequest, ua: UnitAnswer) -> bool:
    p = _price(job, unit_req, ua, from_buckets=False)
    if p is not None:
        job.cost += p.cost
        ua.granted = p.units
    return False


def _check_balance(job: Job, unit_req: UnitRequest, ua: UnitAnswer) -> bool:
    p = _price(job, unit_req, ua, from_buckets=True)
    if p is not None:
        job.cost += p.cost
        job.answer.enough_credit = p.cost <= funds(job.ctx.account)
    return False


def _debit(job: Job, unit_req: UnitRequest, ua: UnitAnswer) -> bool:
    """Direct debit (and Nchf IEC): refused whole when the funds do not cover the price."""
    p = _price(job, unit_req, ua, from_buckets=True)
    if p is None:
        return False
    if p.cost > funds(job.ctx.account):
        ua.result = CREDIT_LIMIT_REACHED
        ua.final = FinalUnit(FUA_TERMINATE)
        return False
    _take(job, unit_req, ua, p, "DIRECT_DEBITING")
    return True


def _post_event(job: Job, unit_req: UnitRequest, ua: UnitAnswer) -> bool:
    """Post-event charge (Nchf PEC): the units reported were delivered already, so they are charged whatever the
    funds, as usage beyond a grant is (the wallet may go below zero)."""
    p = _price(job, unit_req, ua, from_buckets=True)
    if p is None:
        return False
    _take(job, unit_req, ua, p, "POST_EVENT")
    return True


def _take(job: Job, unit_req: UnitRequest, ua: UnitAnswer, p: Priced, reason: str) -> None:
    """Take the units from the buckets that may pay them, the rest's price from the wallet, and keep the debit
    for the refunds that may follow."""
    ctx = job.ctx
    req = job.req
    event = ctx.base_event("usage", f"network:{req.protocol}", reason)
    event.update(
        session=req.session,
        rating_group=p.rating_group,
        service_id=unit_req.service_id,
        unit=p.tariff.unit,
        used=p.units,
        tariff=p.tariff.name,
        zone=p.used_in,  # where it happened, as for session usage (a barred zone is priced at home)
        charge=p.cost,
    )
    portions: list[list[int]] = []
    left = p.from_buckets
    home = ctx.catalogue.settings.home_zone
    for bucket, src, owner in p.buckets:
        if left == 0:
            break
        take = min(left, room(bucket, p.used_in, home))
        if take <= 0:
            continue
        hold(bucket, p.used_in, home, take)
        bucket.remaining -= take
        ctx.mark(src)
        event["impacts"].append(bucket_impact(owner, bucket, -take))
        portions.append([src, bucket.id, take])
        left -= take
    if ctx.tax is not None:
        annotate(event, ctx.tax, p.price, p.zone, p.rating_group)
    if p.cost:
        ctx.account.balance -= p.cost
        ctx.account_dirty = True
        event["impacts"].append(ctx.wallet_impact(-p.cost))
    if ctx.line_bs is not None:
        ctx.line_bs.usage[p.rating_group] = p.usage + p.units
        ctx.line_bs_dirty = True
    ctx.events.append(event)
    if ctx.account.parent is not None:
        rate_levels(ctx, event, {p.tariff.unit: p.units}, ctx.catalogue, one_shot=True)  # B2B2B (chf.core.wholesale)
    ua.granted = p.units
    ua.charged = p.cost
    job.cost += p.cost
    if p.units:
        line = ctx.sub.id
        # Debits out of the refund window can no longer be refunded: this rating group's are dropped here.
        ctx.txn.prune_debits(line, p.rating_group, ctx.now - job.refund_window)
        paid = p.units - p.from_buckets  # the units charged to the wallet, for p.cost
        debit = Debit(line, p.rating_group, 0, "", ctx.now, ctx.account.id, p.tariff.unit, portions, paid, p.cost)
        job.made.append((debit, event))


def _refund(job: Job, unit_req: UnitRequest, ua: UnitAnswer) -> bool:
    """Reverse the line's debits of this rating group, newest first, up to the units the request names."""
    ctx = job.ctx
    rg = unit_req.rating_group
    since = ctx.now - job.refund_window
    candidates: list[Debit] = []
    if job.refund_window > 0:
        for debit in reversed(ctx.txn.debits(ctx.sub.id, rg)):
            if debit.time >= since and debit.account == ctx.account.id and debit.left() > 0:
                candidates.append(debit)
    if not candidates:
        ua.result = RATING_FAILED
        job.answer.detail = f"nothing to refund: no debit of rating group {rg} on this line within the refund window"
        return False
    unit = candidates[0].unit
    ua.unit = unit
    want = _named_units(unit_req, unit, delivered=False) or (1 if unit == "events" else 0)
    done = 0
    for debit in candidates:
        if done >= want:
            break
        if debit.unit == unit:
            done += _reverse(job, debit, want - done)
    if done == 0:
        ua.result = RATING_FAILED
        job.answer.detail = f"nothing to refund: the allowances rating group {rg} was debited from have expired"
        return False
    ua.granted = done
    return True


def _reverse(job: Job, debit: Debit, want: int) -> int:
    """Return up to `want` units of one debit where they came from: the wallet's share first (the last taken),
    then the buckets in the reverse order of the debit, each only while it exists and is valid. One refund event
    names the debit. Returns the units refunded."""
    ctx = job.ctx
    req = job.req
    event = ctx.base_event("refund", f"network:{req.protocol}", "REFUND_ACCOUNT")
    impacts = event["impacts"]
    done = 0
    money = 0
    if debit.units:
        done = min(want, debit.units)
        money = debit.money if done == debit.units else debit.money * done // debit.units
        debit.units -= done
        debit.money -= money
        if money:
            ctx.account.balance += money
            ctx.account_dirty = True
            impacts.append(ctx.wallet_impact(money))
    now = ctx.now
    for portion in reversed(debit.portions):
        if done >= want:
            break
        src, bucket_id, left = portion
        if left <= 0:
            continue
        bucket, owner = ctx.bucket(src, bucket_id)
        if bucket is None or not bucket.valid_from <= now < bucket.valid_to:
            continue  # that allowance is gone: its units are not refunded
        take = min(want - done, left)
        bucket.remaining += take
        ctx.mark(src)
        portion[2] = left - take
        impacts.append(bucket_impact(owner, bucket, take))
        done += take
    if done == 0:
        return 0
    bs = ctx.line_bs
    rg = debit.rating_group
    if bs is not None and debit.time >= bs.period_start and bs.usage.get(rg, 0) > 0:
        bs.usage[rg] = max(0, bs.usage[rg] - done)  # the units no longer count towards this period's tiers
        ctx.line_bs_dirty = True
    event.update(session=req.session, rating_group=rg, unit=debit.unit, used=-done, charge=-money, reverses=debit.event)
    if ctx.tax is not None:
        annotate_gross(event, ctx.tax, -money, ctx.catalogue.zone_of(req.serving_network), rg)
    ctx.events.append(event)
    if debit.left() > 0:
        ctx.txn.put_debit(debit)
    else:
        ctx.txn.delete_debit(debit)
    job.cost += money
    return done


_Action = Callable[[Job, UnitRequest, UnitAnswer], bool]
ACTIONS: dict[str | None, _Action] = {
    PRICE_ENQUIRY: _price_enquiry,
    CHECK_BALANCE: _check_balance,
    REFUND_ACCOUNT: _refund,
    DIRECT_DEBITING: _debit,
    POST_EVENT: _post_event,
}
