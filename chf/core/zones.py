"""Zones that matter: where an allowance pays, its fair-use limit outside the home zone, and what a plan does with
roaming usage no allowance valid there covers.

An allowance (or a bonus promotion) may name the catalogue zones whose usage it pays (``zones = ["home", "eu"]``);
its buckets carry them (``Bucket.zones``), and usage from a serving network in another zone never draws on them
(`chf.core.context.Context.usable_buckets`). A bucket without zones pays in every zone, as every bucket stored
before zones existed does.

Fair use (EU roam-like-at-home): ``fair_use`` caps the units of one period's bucket that usage outside the home
zone may take. The bucket keeps what is left of the cap (``Bucket.fair_use_left``); a grant made outside the home
zone holds its bucket units against it as it holds them against the bucket, and what the grant did not use is given
back when it is settled or released, so that concurrent roaming sessions can never take more than the cap.

Beyond the allowances valid in the zone, usage is charged to the wallet at the zone's tariff price, unless the
plan says ``roaming_overage = "deny"``: then it is refused (outside the home zone only).

Sans-IO helpers of the engine (chf/core/engine.py), one-shot events (chf/core/events.py) and renewals; the
catalogue loader checks the zone names (`check_plan_zones`).
"""

from __future__ import annotations

from collections.abc import Iterable

from chf.core.catalogue import Allowance, Plan
from store.schema import Bucket

# The values a plan's `roaming_overage` takes (absent: as the plan's `overage`).
ROAMING_OVERAGES = ("charge", "deny")


def bucket_zones(allowance: Allowance) -> list[str] | None:
    """What a bucket granted from `allowance` stores as its zones (sorted: stored bytes do not depend on set
    order)."""
    return sorted(allowance.zones) if allowance.zones is not None else None


def room(bucket: Bucket, zone: str | None, home: str) -> int:
    """Units of `bucket` that usage in `zone` may take now: what is available, and outside the home zone no more
    than its fair use leaves. (A zone the bucket does not pay in is filtered out before: `admits`.)"""
    available = bucket.available()
    left = bucket.fair_use_left
    if left is None or zone is None or zone == home:
        return available
    return min(available, max(left, 0))


def admits(bucket: Bucket, zone: str | None) -> bool:
    """Whether `bucket` pays usage in `zone` (None: the caller does not rate by zone, e.g. a refund)."""
    zones = bucket.zones
    return zones is None or zone is None or zone in zones


def hold(bucket: Bucket, zone: str | None, home: str, units: int) -> None:
    """Count `units` taken or held by usage in `zone` against the bucket's fair use (outside the home zone)."""
    if bucket.fair_use_left is not None and zone is not None and zone != home:
        bucket.fair_use_left -= units


def give_back(bucket: Bucket, zone: str | None, home: str, units: int) -> None:
    """Return `units` a grant in `zone` held against the fair use and did not use."""
    if bucket.fair_use_left is not None and zone is not None and zone != home:
        bucket.fair_use_left += units


def overage_in(plan: Plan, zone: str, home: str) -> str:
    """What happens to usage in `zone` that the allowances valid there do not cover: the plan's overage, or
    outside the home zone its `roaming_overage` when it names one."""
    if zone != home and plan.roaming_overage is not None:
        return plan.roaming_overage
    return plan.overage


def check_plan_zones(plan: Plan, known: Iterable[str], home: str) -> list[tuple[str, str]]:
    """(where, message) for each zone problem of a plan's allowances and bonus promotions: unknown zone names, a
    fair use on an allowance that pays in the home zone only."""
    known_zones = frozenset(known)
    allowances = list(plan.allowances)
    allowances += [p.allowance for p in plan.bonus_allowances() if p.allowance is not None]
    problems: list[tuple[str, str]] = []
    for a in allowances:
        where = f"allowance {a.name!r}"
        for z in sorted(a.zones or ()):
            if z not in known_zones:
                problems.append((f"{where}: zones", f"unknown zone {z!r} (known: {', '.join(sorted(known_zones))})"))
        if a.fair_use is not None and a.zones is not None and a.zones <= {home}:
            problems.append((f"{where}: fair_use", "limits usage outside the home zone, where it never pays"))
    return problems
