"""B2B2B: one usage report rated once per level of the hierarchy above the line's account.

Tenants form a hierarchy (the operator above a reseller or IoT service provider, a reseller above an enterprise:
`Tenant.parent`), and so do the accounts that pay: an account's `parent` is the account that is charged again for
the usage of the lines below it, at the price list of that parent (`Account.price_list`, a `[price_lists.<name>]`
table of the catalogue, in the parent's own currency). The line's own account is rated by the line's plan as
always (the retail charge, chf.core.engine and chf.core.events); then each account up the `parent` chain is
rated by its own price list for the same units (the wholesale charge), fully decoupled from the prices below it:
the units reported, never the money charged below. Every charge is a "wholesale" event whose `account` is its
payer, with `customer` (and `customer_tenant`) the account one level below, on whose behalf it pays; all of them
are written in the transaction of the usage report, so a report is charged at every level or at none.

A wholesale charge is a debit of usage already delivered (as usage beyond a grant is): it is not reserved ahead
and not refused for lack of funds; a parent's wallet, typically postpaid, may go below zero. A level whose account
has no price list, or one not priced in its currency (never relabelled: `Catalogue.price_list_in`), charges
nothing for the report, and the levels above it are still rated.

The chain is at most MAX_LEVELS accounts long (provisioning refuses a deeper one); an account without a parent
(the single-level case) costs one attribute test per report.
"""

from __future__ import annotations

from typing import Any

from chf.core.catalogue import Catalogue, PriceList
from chf.core.context import Context, account_owner
from chf.core.model import RequestError
from chf.core.tax import annotate, profile_of
from store.interface import Txn
from store.schema import Account, Tenant

# Accounts above a line's own account that may be charged for its usage: operator <- reseller <- enterprise, and
# room for one more level (a department). chf.core.provisioning refuses a deeper chain.
MAX_LEVELS = 4


def payer_chain(ctx: Context) -> list[Account]:
    """The accounts above the line's account, nearest first. An account charged earlier in this operation is the
    same object (`Context.upline`, written back by `Context.flush`)."""
    upline = ctx.upline
    chain: list[Account] = []
    child = ctx.account
    while child.parent is not None and len(chain) < MAX_LEVELS:
        payer = upline.get(child.parent) if upline is not None else None
        if payer is None:
            payer = ctx.txn.get_account(child.parent)
            if payer is None or payer.id == ctx.account.id:
                break
        chain.append(payer)
        child = payer
    return chain


def _quantity(units: dict[str, int], unit: str, one_shot: bool) -> int:
    """The units of type `unit` in a report; bytes may come as uplink and downlink only; a one-shot event that
    names no count is one event (a sensor measurement, say)."""
    used = units.get(unit, 0)
    if unit == "bytes" and not used:
        used = units.get("bytes_in", 0) + units.get("bytes_out", 0)
    if not used and one_shot and unit == "events":
        return 1
    return used


def rate_levels(
    ctx: Context, source: dict[str, Any], units: dict[str, int], catalogue: Catalogue, *, one_shot: bool = False
) -> None:
    """Charge each account above the line's account for the units of the usage event `source` (its rating
    group, zone and session), at that account's own price list in `catalogue`, the version of the catalogue that
    priced the usage (chf.core.versions: its grant's); one "wholesale" event per charged level."""
    rg = source["rating_group"]
    zone = source.get("zone") or catalogue.settings.home_zone
    child = ctx.account
    for level, payer in enumerate(payer_chain(ctx), 1):
        price_list = catalogue.price_list_in(payer.price_list, payer.currency)
        tariff = price_list.tariff_for(rg) if price_list is not None else None
        quantity = _quantity(units, tariff.unit, one_shot) if tariff is not None else 0
        if price_list is not None and tariff is not None and quantity > 0:
            # A zone the price list bars was still served (the line's plan granted it): priced at home.
            price_zone = catalogue.settings.home_zone if tariff.is_denied(zone) else zone
            event = _event(ctx, source, payer, child, level, price_list)
            event["catalogue"] = catalogue.version
            event["tariff"] = tariff.name
            event["unit"] = tariff.unit
            event["used"] = quantity
            price = tariff.charge(quantity, price_zone, catalogue.local_time(ctx.now), 0)
            _charge(ctx, catalogue, payer, event, price, zone, rg)
        child = payer


def charge_device_fees(ctx: Context, at: int) -> None:
    """A line's period started at `at` (chf.core.renewals): each account above its account whose price list has
    a `device_fee` pays it for the line, once per period of the line's plan, at the price list of the version of
    the catalogue in force when the period started."""
    catalogue = ctx.catalogue_at(at)
    child = ctx.account
    if child.parent is None:
        return
    for level, payer in enumerate(payer_chain(ctx), 1):
        price_list = catalogue.price_list_in(payer.price_list, payer.currency)
        if price_list is not None and price_list.device_fee:
            source = {"actor": "system", "reason": "device fee", "rating_group": None}
            event = _event(ctx, source, payer, child, level, price_list)
            event["time"] = at
            event["catalogue"] = catalogue.version
            _charge(ctx, catalogue, payer, event, price_list.device_fee, catalogue.settings.home_zone, None)
        child = payer


def _charge(
    ctx: Context, catalogue: Catalogue, payer: Account, event: dict[str, Any], price: int, zone: str, rg: int | None
) -> None:
    """Debit the payer's wallet for `price` (grossed up and split by its tax profile: chf.core.tax) and append
    the event recording it."""
    if catalogue.tax_profiles:
        price = annotate(event, profile_of(catalogue, ctx.txn, payer), price, zone, rg)
    event["charge"] = price
    if price:
        if ctx.upline is None:
            ctx.upline = {}
        ctx.upline[payer.id] = payer
        payer.balance -= price
        event["impacts"].append(
            {"balance": f"{account_owner(payer.id)}:wallet", "unit": "money", "delta": -price, "after": payer.balance}
        )
    ctx.events.append(event)


def _event(
    ctx: Context, source: dict[str, Any], payer: Account, customer: Account, level: int, price_list: PriceList
) -> dict[str, Any]:
    """A wholesale event: paid by `payer` on behalf of `customer`, one level below it."""
    event = ctx.base_event("wholesale", source["actor"], source["reason"])
    event["tenant"] = payer.tenant
    event["account"] = payer.id
    event["currency"] = payer.currency
    event["customer"] = customer.id
    event["customer_tenant"] = customer.tenant
    event["level"] = level
    event["price_list"] = price_list.name
    if source.get("session") is not None:
        event["session"] = source["session"]
    if source["rating_group"] is not None:
        event["rating_group"] = source["rating_group"]
        event["service_id"] = source.get("service_id")
        event["zone"] = source.get("zone")
    return event


# -- provisioning checks (chf.core.provisioning) -------------------------------------------------------------------
def check_tenant_parent(txn: Txn, tenant_id: str, parent: str) -> None:
    """A tenant's parent exists and the chain above it stays within MAX_LEVELS tenants."""
    depth = 0
    above = txn.get_tenant(parent)
    if above is None:
        raise RequestError("parent", f"no tenant {parent!r}")
    while above is not None:
        depth += 1
        if above.id == tenant_id or depth > MAX_LEVELS:
            raise RequestError("parent", f"tenant {parent!r} is more than {MAX_LEVELS} levels deep")
        above = txn.get_tenant(above.parent) if above.parent is not None else None


def check_account_parent(txn: Txn, tenant: Tenant, parent: Account) -> None:
    """An account's parent is in the books of the account's own tenant (an enterprise above its departments) or
    of the tenant above it (a reseller's account with the operator), and the chain of payers above the account
    stays within MAX_LEVELS accounts."""
    if parent.tenant not in (tenant.id, tenant.parent):
        where = f"tenant {tenant.id!r}" + (f" or its parent {tenant.parent!r}" if tenant.parent else "")
        raise RequestError("parent", f"account {parent.id!r} is of tenant {parent.tenant!r}, not of {where}")
    depth = 1
    above = parent
    while above.parent is not None:
        depth += 1
        found = txn.get_account(above.parent)
        if depth > MAX_LEVELS or found is None:
            break
        above = found
    if depth > MAX_LEVELS:
        raise RequestError("parent", f"account {parent.id!r} already has {MAX_LEVELS} levels above it")


def check_price_list(catalogue: Catalogue, name: str, currency: str) -> None:
    """A price list an account pays by exists and is priced in the account's currency."""
    price_list = catalogue.price_lists.get(name)
    if price_list is None:
        raise RequestError("price_list", f"no price list {name!r} in the catalogue")
    if price_list.currency != currency:
        raise RequestError(
            "price_list", f"price list {name!r} is priced in {price_list.currency}, the account holds {currency}"
        )
