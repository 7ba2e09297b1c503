"""Split billing: one SIM, several payers.

A plan's ``[[split]]`` rules route a rating group's usage to another account than the line's: the first rule whose
every condition holds (APN / DNN, rating group, zone, serving network, RAT type, local days and hours) names the
payer, ``"parent"`` (the line's account's parent: a car maker paying its cars' telematics APN while the drivers'
infotainment is paid from their own prepaid wallets) or ``"account:<id>"``. Usage no rule matches is the line's
account's, as before.

The payer's account-level buckets (its shared allowances and pools: "from a postpaid pool") pay first, then its
wallet (postpaid: down to its credit limit) at the line's plan's tariff; the line's own allowances never pay for
another payer's usage. A request whose rating groups go to two payers is rated and reserved against both in the
one store transaction (the Redis store commits the two accounts' partitions with its two-phase commit). The grant
remembers its payer (`Reservation.payer`), so that the usage it covers is settled against the same account. A rule
whose payer does not exist, or holds another currency than the plan's prices (never relabelled), refuses the
rating group (5031) rather than charging the line's account for what another must pay.

The session keeps the APN and RAT type its client reported (`Session.apn`, `.rat`): an update that does not repeat
them is routed like the request that did.
"""

from __future__ import annotations

from datetime import datetime

from chf.core.catalogue import Plan, SplitRule
from store.schema import Account

PARENT = "parent"
ACCOUNT_PREFIX = "account:"


def apn_id(apn: str | None) -> str | None:
    """The APN network identifier (TS 23.003 9.1): lower case, without the operator identifier
    ("telematics.mnc001.mcc208.gprs" -> "telematics")."""
    if not apn:
        return None
    apn = apn.lower()
    cut = apn.find(".mnc")
    return apn[:cut] if cut > 0 and apn.endswith(".gprs") else apn


def matches(
    rule: SplitRule,
    rating_group: int,
    apn: str | None,
    rat: str | None,
    zone: str,
    network: str | None,
    local: datetime,
) -> bool:
    """Whether usage of `rating_group` with these attributes meets every condition `rule` sets."""
    if rule.rating_groups is not None and rating_group not in rule.rating_groups:
        return False
    if rule.apns is not None and apn_id(apn) not in rule.apns:
        return False
    if rule.rats is not None and (rat or "").lower() not in rule.rats:
        return False
    if rule.zones is not None and zone not in rule.zones:
        return False
    if rule.networks is not None and (network or "") not in rule.networks:
        return False
    return rule.window is None or rule.window.matches(local)


def rule_for(
    plan: Plan, rating_group: int, apn: str | None, rat: str | None, zone: str, network: str | None, local: datetime
) -> SplitRule | None:
    """The first of the plan's split rules that routes this usage, or None (the line's account pays)."""
    for rule in plan.split:
        if matches(rule, rating_group, apn, rat, zone, network, local):
            return rule
    return None


def payer_id(rule: SplitRule, account: Account) -> str | None:
    """The account `rule` names as payer for a line of `account`; None when it names none (no parent)."""
    if rule.payer == PARENT:
        return account.parent or None
    return rule.payer[len(ACCOUNT_PREFIX) :] or None


def check_split_zones(plan: Plan, known: frozenset[str]) -> list[tuple[str, str]]:
    """(where, message) for each zone a plan's split rules name that the catalogue does not know."""
    problems: list[tuple[str, str]] = []
    names = ", ".join(sorted(known))
    for rule in plan.split:
        for z in sorted(rule.zones or ()):
            if z not in known:
                problems.append((f"split {rule.name!r}: zones", f"unknown zone {z!r} (known: {names})"))
    return problems
