"""Priced add-ons (bolt-ons): a bucket bought from the catalogue (`[addons.<name>]`) for a line, paid from its
account's wallet, as one operation.

The wallet debit and the bucket grant are one event (`addon`) in one transaction: every check (the add-on, the
line and its state, the plan it is sold for, the currency, what the wallet can pay) runs before anything changes,
so a purchase the wallet cannot pay is refused whole and writes nothing. What the wallet can pay is what a grant
may take (chf.core.context.funds): a prepaid wallet's balance less what is reserved, a postpaid one down to its
credit limit. The bucket (kind "addon") is the line's, used in its priority like any other; a plan change does not
take it away (only plan, pool and rollover buckets end with their plan). Called by the API and the CLI.
"""

from __future__ import annotations

from chf.core.context import bucket_impact, funds, line_owner
from chf.core.engine import Engine
from chf.core.model import OpResult
from chf.core.provisioning import Conflict, NotFound, _signals, get_line, idempotent
from chf.core.tax import annotate, gross_up
from store.interface import Txn
from store.schema import ACTIVE, Bucket


def buy_addon(
    txn: Txn,
    engine: Engine,
    line_ref: str,
    addon_name: str,
    *,
    now: int,
    actor: str,
    reason: str,
    idempotency_key: str | None = None,
) -> OpResult:
    """Sell add-on `addon_name` to a line: the price from the wallet, the add-on's bucket to the line."""

    def run() -> OpResult:
        sub = get_line(txn, line_ref)
        ctx = engine.context(txn, sub, now)
        addon = ctx.catalogue.addons.get(addon_name)  # as the version of the catalogue in force now sells it
        if addon is None:
            raise NotFound("addon", f"no add-on {addon_name!r} in the catalogue")
        if sub.state != ACTIVE:
            raise Conflict("line", f"line #{sub.id} is {sub.state}: add-ons are sold to active lines")
        account = ctx.account
        if addon.currency != account.currency:
            raise Conflict(
                "addon", f"add-on {addon.name!r} is priced in {addon.currency}, the account in {account.currency}"
            )
        rated_by = sub.plan or account.plan
        if addon.plans is not None and rated_by not in addon.plans:
            raise Conflict(
                "addon", f"add-on {addon.name!r} is sold with plans {', '.join(sorted(addon.plans))}, not {rated_by!r}"
            )
        bs = ctx.line_bs
        assert bs is not None
        if addon.validity_seconds is not None:
            valid_to = now + addon.validity_seconds
        elif bs.plan is not None and bs.period_end > now:
            valid_to = bs.period_end
        else:
            raise Conflict(
                "addon",
                f"add-on {addon.name!r} is valid to the end of the line's period: line #{sub.id} has none running",
            )
        available = funds(account)
        home = ctx.catalogue.settings.home_zone
        price = gross_up(ctx.tax, addon.price, home, None) if ctx.tax is not None else addon.price  # chf.core.tax
        if available < price:
            raise Conflict("wallet", f"the wallet cannot pay {price} micro-units: {max(available, 0)} available")
        a = addon.allowance
        rgs = sorted(a.rating_groups) if a.rating_groups is not None else None
        bucket = Bucket(
            bs.new_bucket_id(), a.name, "addon", a.unit, rgs, a.priority, a.amount, a.amount, 0, now, valid_to
        )
        bs.buckets.append(bucket)
        ctx.line_bs_dirty = True
        account.balance -= price
        ctx.account_dirty = True
        event = ctx.base_event("addon", actor, reason)
        event["addon"] = addon.name
        event["price"] = addon.price
        event["charge"] = price
        if ctx.tax is not None:
            annotate(event, ctx.tax, addon.price, home, None)
        if price:
            event["impacts"].append(ctx.wallet_impact(-price))
        event["impacts"].append(bucket_impact(line_owner(sub.id), bucket, a.amount))
        ctx.events.append(event)
        ctx.flush()
        value = {"addon": addon.name, "price": addon.price, "bucket": bucket.as_dict(), "account": account.as_dict()}
        return OpResult(value, _signals(txn, [sub.id], "reauth"))

    return idempotent(txn, idempotency_key, now, engine.config.idempotency_window, run)
