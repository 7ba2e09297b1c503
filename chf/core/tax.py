"""Tax profiles: the net, tax and gross of every charge of an account that has one.

A tax profile (`[tax_profiles.<name>]` of the catalogue, `chf.core.catalogue.TaxProfile`) gives rates by
jurisdiction (the zone the service is used in; fees in the home zone) and service (the rating group), and says
whether the catalogue's prices are `gross` (tax included: a consumer price list) or `net` (tax added on top: a
business price list). An account pays by its own profile (`Account.tax_profile`), else its tenant's
(`Tenant.tax_profile`), else none.

What the wallet pays is always the gross: with net prices the engine grosses every price up before it reserves
or debits it (`gross_up`, `net_budget` for what a wallet can afford), with gross prices it takes the price as it
is and splits it. Each monetary event of an account with a profile then carries `net`, `tax` (net + tax = gross
= the money that moved, `charge`), `tax_rate` (ppm) and `tax_profile`. An event without them had no profile:
its tax is 0 and its net its gross (the export record and the reports read it so), and it is stored exactly as
before tax profiles existed. Integer micro-units throughout; a split rounds half up, to the micro-unit, once.

A catalogue without tax profiles costs one emptiness test per request (`profile_of`).
"""

from __future__ import annotations

from typing import Any

from chf.core.catalogue import Catalogue, TaxProfile
from chf.core.model import RequestError
from store.interface import Txn
from store.schema import Account

PPM = 1_000_000


def check_tax_profile(catalogue: Catalogue | None, name: str) -> None:
    """A tax profile an account or tenant names exists in the catalogue."""
    if catalogue is None or name not in catalogue.tax_profiles:
        raise RequestError("tax_profile", f"no tax profile {name!r} in the catalogue")


def profile_of(catalogue: Catalogue, txn: Txn, account: Account) -> TaxProfile | None:
    """The tax profile `account` pays by: its own, else its tenant's; None without one (or without any in the
    catalogue: then nothing is read)."""
    profiles = catalogue.tax_profiles
    if not profiles:
        return None
    name = account.tax_profile
    if name is None:
        tenant = txn.get_tenant(account.tenant)
        name = tenant.tax_profile if tenant is not None else None
    return profiles.get(name) if name is not None else None


def _div_half_up(numerator: int, denominator: int) -> int:
    if numerator >= 0:
        return (2 * numerator + denominator) // (2 * denominator)
    return -((-2 * numerator + denominator) // (2 * denominator))


def split(profile: TaxProfile, price: int, zone: str, rating_group: int | None) -> tuple[int, int, int, int]:
    """(net, tax, gross, rate) of a catalogue price under `profile` (a negative price, a refund, splits as its
    opposite does)."""
    rate = profile.rate_for(zone, rating_group)
    if profile.prices == "net":
        tax = _div_half_up(price * rate, PPM)
        return price, tax, price + tax, rate
    net = _div_half_up(price * PPM, PPM + rate)
    return net, price - net, price, rate


def gross_up(profile: TaxProfile | None, price: int, zone: str, rating_group: int | None) -> int:
    """What the wallet pays for a catalogue price: the price itself, or with net prices the price and its tax."""
    if profile is None or profile.prices != "net" or not price:
        return price
    return split(profile, price, zone, rating_group)[2]


def net_budget(profile: TaxProfile | None, money: int, zone: str, rating_group: int | None) -> int:
    """The largest catalogue price whose `gross_up` is at most `money` (what a wallet can afford, before tax)."""
    if profile is None or profile.prices != "net" or money <= 0:
        return money
    rate = profile.rate_for(zone, rating_group)
    net = money * PPM // (PPM + rate)
    while net > 0 and gross_up(profile, net, zone, rating_group) > money:
        net -= 1
    return net


def annotate(
    event: dict[str, Any], profile: TaxProfile | None, price: int, zone: str | None, rating_group: int | None
) -> int:
    """Record the net, tax and gross of catalogue price `price` on `event`; returns the gross, which the caller
    moves. Without a profile the event is left as it is and the gross is the price."""
    if profile is None or not price:
        return price
    net, tax, gross, rate = split(profile, price, zone or "", rating_group)
    event["net"] = net
    event["tax"] = tax
    event["gross"] = gross
    event["tax_rate"] = rate
    event["tax_profile"] = profile.name
    return gross


def annotate_gross(
    event: dict[str, Any], profile: TaxProfile | None, gross: int, zone: str | None, rating_group: int | None
) -> None:
    """Record net, tax and gross of money that moved as it is (a refund of a debit): the gross split by the rate,
    whatever the profile's prices."""
    if profile is None or not gross:
        return
    rate = profile.rate_for(zone or "", rating_group)
    net = _div_half_up(gross * PPM, PPM + rate)
    event["net"] = net
    event["tax"] = gross - net
    event["gross"] = gross
    event["tax_rate"] = rate
    event["tax_profile"] = profile.name
