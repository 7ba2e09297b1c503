"""Product catalogue model: plans, tariffs, zones and quota-grant defaults, as the engine reads them.

The catalogue is data, not code: :mod:`chf.core.catalogue_loader` reads it from TOML, validates it and builds
these immutable records (the file format is described there). Their lookups are precomputed when they are
built, so the hot path (compiled, see native-modules.txt) does no parsing and little allocation.

Conventions
-----------
* Money is integer micro-units (1 EUR = 1_000_000). Floats are rejected everywhere.
* Units are one of ``bytes``, ``seconds``, ``events`` (e.g. SMS) or ``money``.
* Rating groups are integers 0..2**32-1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final
from zoneinfo import ZoneInfo

__all__ = [
    "OVERAGE_ACTIONS",
    "PAYMENT_TYPES",
    "UNIT_TYPES",
    "UNLIMITED",
    "AddOn",
    "Allowance",
    "Band",
    "Catalogue",
    "CatalogueError",
    "GrantPolicy",
    "Plan",
    "PoolTier",
    "PriceList",
    "Promotion",
    "Settings",
    "SplitRule",
    "Tariff",
    "TaxProfile",
    "TaxRule",
    "Tier",
    "ZoneRule",
]

UNIT_TYPES: Final = ("bytes", "seconds", "events", "money")
PAYMENT_TYPES: Final = ("prepaid", "postpaid", "hybrid")
OVERAGE_ACTIONS: Final = ("charge", "deny", "redirect", "restrict")
ROUNDING_MODES: Final = ("up", "down", "nearest")
# static: a fixed size; flexible: per active line; stacked: the sum of what each member line's plan brings;
# adaptive: tiers billed at the period's close (chf.core.pools).
POOL_KINDS: Final = ("static", "flexible", "stacked", "adaptive")
PROMOTION_KINDS: Final = ("intro_price", "bonus")
#: Returned by :meth:`Tariff.affordable` when the applicable price is zero.
UNLIMITED: Final = 2**62
MAX_RATING_GROUP: Final = 2**32 - 1


def _empty_map() -> Mapping[Any, Any]:
    return MappingProxyType({})


class CatalogueError(Exception):
    """The catalogue is invalid (or a lookup failed). ``errors`` holds one message per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


@dataclass(frozen=True, slots=True)
class Settings:
    currency: str
    timezone: ZoneInfo
    home_zone: str
    default_zone: str


@dataclass(frozen=True, slots=True)
class GrantPolicy:
    bytes: int
    seconds: int
    events: int
    money: int
    validity_time: int
    quota_holding_time: int
    volume_threshold_percent: int
    time_threshold_percent: int

    def quantum(self, unit: str) -> int:
        """The grant quantum for a unit type (``bytes``, ``seconds``, ``events`` or ``money``)."""
        if unit == "bytes":
            return self.bytes
        if unit == "seconds":
            return self.seconds
        if unit == "events":
            return self.events
        if unit == "money":
            return self.money
        raise ValueError(f"unknown unit type {unit!r}")


@dataclass(frozen=True, slots=True)
class Tier:
    upto: int | None  # cumulative units in the period; None = open-ended (last tier)
    price: int  # micro-units per block


@dataclass(frozen=True, slots=True)
class Band:
    days: frozenset[int]  # weekday numbers, Monday = 0
    start_minute: int  # minute of day, inclusive, 0..1439
    end_minute: int  # minute of day, exclusive, 1..1440; < start_minute wraps past midnight
    price: int

    def matches(self, local: datetime) -> bool:
        minute = local.hour * 60 + local.minute
        wd = local.weekday()
        if self.start_minute < self.end_minute:
            return wd in self.days and self.start_minute <= minute < self.end_minute
        # wraps: evening part on a listed day, morning part on the day after a listed day
        if minute >= self.start_minute:
            return wd in self.days
        return minute < self.end_minute and (wd - 1) % 7 in self.days


@dataclass(frozen=True, slots=True)
class ZoneRule:
    price: int | None  # None when deny is true
    deny: bool


@dataclass(frozen=True, slots=True)
class Tariff:
    name: str
    unit: str
    block: int
    rounding: str
    price: int
    tiers: tuple[Tier, ...]
    bands: tuple[Band, ...]
    zones: Mapping[str, ZoneRule]
    description: str = ""
    _denied: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def is_denied(self, zone: str) -> bool:
        return zone in self._denied

    def blocks(self, units: int) -> int:
        """``units`` rounded to whole blocks by this tariff's rounding rule (a block count)."""
        b = self.block
        if self.rounding == "up":
            return -(-units // b)
        if self.rounding == "down":
            return units // b
        return (2 * units + b) // (2 * b)  # nearest, half up

    def _flat_price(self, zone: str, local: datetime) -> int | None:
        """The per-block price when it is flat for this call, or None when the tiers apply."""
        rule = self.zones.get(zone)
        if rule is not None and rule.price is not None:
            return rule.price
        for band in self.bands:
            if band.matches(local):
                return band.price
        if self.tiers:
            return None
        return self.price

    def charge(self, units: int, zone: str, local: datetime, period_usage: int) -> int:
        """Money (micro-units) for ``units`` used now, after ``period_usage`` units already used this period.

        A denied zone is priced as if it had no zone entry (late-reported usage is still charged); check
        :meth:`is_denied` before granting.
        """
        if units <= 0:
            if units < 0:
                raise ValueError(f"units must be >= 0, got {units}")
            return 0
        n = self.blocks(units)
        if n == 0:
            return 0
        price = self._flat_price(zone, local)
        if price is not None:
            return n * price
        return -(-self._tier_cost(n * self.block, period_usage) // self.block)

    def _tier_cost(self, units: int, period_usage: int) -> int:
        """Exact cost of ``units`` across the tiers, in micro-units x block (divide by block, rounding up)."""
        pos = period_usage if period_usage > 0 else 0
        remaining = units
        total = 0
        for tier in self.tiers:
            if tier.upto is None:
                total += remaining * tier.price
                break
            if pos >= tier.upto:
                continue
            take = min(remaining, tier.upto - pos)
            total += take * tier.price
            pos += take
            remaining -= take
            if remaining == 0:
                break
        return total

    def affordable(self, money: int, zone: str, local: datetime, period_usage: int) -> int:
        """The largest whole number of blocks (as units) whose :meth:`charge` is <= ``money``.

        0 if nothing is affordable or the zone is denied; :data:`UNLIMITED` if the applicable price is 0.
        """
        if money < 0 or zone in self._denied:
            return 0
        b = self.block
        price = self._flat_price(zone, local)
        if price is not None:
            if price == 0:
                return UNLIMITED
            return min((money // price) * b, UNLIMITED)
        # Tiered: charge(k blocks) <= money  <=>  tier_cost(k*b) <= money*b (tier_cost is an integer).
        budget = money * b
        pos = period_usage if period_usage > 0 else 0
        start = pos
        for tier in self.tiers:
            if tier.upto is None or tier.upto > pos:
                span = None if tier.upto is None else tier.upto - pos
                if tier.price == 0:
                    if span is None:
                        return UNLIMITED
                    pos += span
                    continue
                can = budget // tier.price
                if span is None or can < span:
                    pos += can
                    break
                budget -= span * tier.price
                pos += span
        return min(((pos - start) // b) * b, UNLIMITED)


@dataclass(frozen=True, slots=True)
class Allowance:
    name: str
    unit: str
    amount: int
    rating_groups: frozenset[int] | None  # None = every rating group whose tariff has this unit
    priority: int
    shared: bool
    rollover: bool
    # The zones whose usage the allowance pays (chf.core.zones); None: every zone.
    zones: frozenset[str] | None = None
    # Fair use: the most of each period's amount that usage outside the home zone may take; None: no limit.
    fair_use: int | None = None

    def covers(self, rating_group: int) -> bool:
        """True if the allowance's rating-group list admits ``rating_group`` (None = any).

        This does not check units; :meth:`Plan.allowances_for` does both.
        """
        return self.rating_groups is None or rating_group in self.rating_groups


@dataclass(frozen=True, slots=True)
class Promotion:
    kind: str  # "intro_price" | "bonus"
    fee: int  # intro_price: the fee during the first `periods` periods; bonus: 0
    periods: int  # intro_price: number of periods; bonus: 0
    allowance: Allowance | None  # bonus: the bucket to grant; intro_price: None
    validity_seconds: int | None  # bonus: lifetime of the bucket (None = no expiry); intro_price: None


@dataclass(frozen=True, slots=True)
class SplitRule:
    """Split billing (chf.core.split): usage that matches every condition the rule sets is paid by `payer`."""

    payer: str  # "parent" (the line's account's parent account) | "account:<id>"
    apns: frozenset[str] | None = None  # APN / DNN network identifiers, lower case; None: any
    rating_groups: frozenset[int] | None = None
    zones: frozenset[str] | None = None
    networks: frozenset[str] | None = None  # serving networks (MCC-MNC)
    rats: frozenset[str] | None = None  # RAT types as the front-ends name them, lower case
    window: Band | None = None  # local days and hours (price unused)
    name: str = ""


@dataclass(frozen=True, slots=True)
class PoolTier:
    """A tier of an adaptive pool: `amount` units for the period at `fee` (micro-units)."""

    amount: int
    fee: int


@dataclass(frozen=True, slots=True)
class AddOn:
    """A priced add-on (bolt-on): `price` from the wallet buys a bucket of `allowance` on a line
    (chf.core.addons). `validity_seconds` None: valid to the end of the line's current period."""

    name: str
    currency: str
    price: int
    allowance: Allowance
    validity_seconds: int | None
    plans: frozenset[str] | None  # the line plans that may buy it (None: any plan of its currency)
    description: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    payment: str
    currency: str  # what its prices are in: the plan's own `currency`, else the catalogue's (ISO 4217)
    fee: int
    period: str
    overage: str
    redirect_address: str | None
    filter_id: str | None
    restriction_rules: tuple[str, ...]
    allowances: tuple[Allowance, ...]  # sorted by priority (stable: file order among equal priorities)
    promotions: tuple[Promotion, ...]
    pool: str | None  # None | "static" | "flexible"
    pool_unit: str | None
    pool_amount: int | None
    pool_per_line: int | None
    pool_rating_groups: frozenset[int] | None
    roaming: bool
    description: str
    rating: Mapping[int, Tariff]
    default_tariff: Tariff | None
    # The fee of a period that starts while the line is suspended: None = the full fee, with the allowances, as
    # for an active line; an amount (0 = none) = that fee, capped at the period's fee, and the allowances held
    # back until the line is active again (chf.core.renewals).
    suspended_fee: int | None = None
    # A period that starts between two renewal dates (activation, plan change, a held or unpaid period started
    # later) is charged for the local days left of it, rounded down to the micro-unit (chf.core.periods.prorate).
    prorate: bool = False
    # Usage outside the home zone beyond the allowances valid there: None = as `overage` says; "deny" = refused
    # (chf.core.zones.overage_in).
    roaming_overage: str | None = None
    # Split billing: the first rule that matches a rating group's usage names who pays it (chf.core.split).
    split: tuple[SplitRule, ...] = ()
    # Stacked pools (chf.core.pools): a line plan of family `pool_family` brings `pool_contribution` units to its
    # account's stacked pool of the same family; an account plan with pool = "stacked" names its family.
    pool_family: str | None = None
    pool_contribution: int | None = None
    # Adaptive pools: the tiers (ascending amounts and fees), and whether an exhausted pool is topped off to the
    # next tier mid-period (else it holds the top tier from the start and the close picks the cheapest tier).
    pool_tiers: tuple[PoolTier, ...] = ()
    pool_topoff: bool = False
    _bonuses: tuple[Promotion, ...] = field(default=(), repr=False, compare=False)
    _intro: Promotion | None = field(default=None, repr=False, compare=False)
    _allow_by_rg: Mapping[int, tuple[Allowance, ...]] = field(default_factory=_empty_map, repr=False, compare=False)
    _allow_default: tuple[Allowance, ...] = field(default=(), repr=False, compare=False)

    def tariff_for(self, rating_group: int) -> Tariff | None:
        """The tariff rating ``rating_group``: its rating-table entry, else ``default``, else None (deny)."""
        t = self.rating.get(rating_group)
        return t if t is not None else self.default_tariff

    def allowances_for(self, rating_group: int) -> tuple[Allowance, ...]:
        """Allowances usable for ``rating_group``, in consumption (priority) order.

        An allowance qualifies if it covers the rating group and its unit is the unit of the group's tariff,
        or it is a ``money`` allowance covering the group. Empty if the group has no tariff. Bonus buckets
        (:meth:`bonus_allowances`) and IoT pools (:meth:`pool_allowance`) are not included: they are
        granted once / per period as buckets and the engine checks ``covers()`` on them directly.
        """
        r = self._allow_by_rg.get(rating_group)
        return r if r is not None else self._allow_default

    def fee_for_period(self, period_index: int) -> int:
        """Recurring fee for the 0-based period ``period_index`` since the plan was assigned."""
        intro = self._intro
        if intro is not None and period_index < intro.periods:
            return intro.fee
        return self.fee

    def bonus_allowances(self) -> tuple[Promotion, ...]:
        """The plan's ``bonus`` promotions (each with ``allowance`` set), to grant once on assignment."""
        return self._bonuses

    def pool_allowance(self, active_lines: int) -> Allowance | None:
        """The IoT pool as a shared account-level allowance for one period (None if the plan has no pool). A
        stacked or an adaptive pool's size is not the plan's alone: chf.core.pools derives it."""
        if self.pool is None or self.pool_unit is None:
            return None
        if self.pool == "static":
            amount = self.pool_amount or 0
        elif self.pool == "flexible":
            amount = (self.pool_per_line or 0) * max(active_lines, 0)
        else:
            amount = 0
        return Allowance("pool", self.pool_unit, amount, self.pool_rating_groups, 0, True, False)


@dataclass(frozen=True, slots=True)
class PriceList:
    """What a tenant charges the account below it for the usage of the lines under that account (B2B2B,
    chf.core.wholesale): tariffs by rating group in its own currency, whatever the line's plan is."""

    name: str
    currency: str
    rating: Mapping[int, Tariff]
    default_tariff: Tariff | None
    device_fee: int = 0  # per line below, per period of the line's plan (a device per month, on monthly plans)
    description: str = ""

    def tariff_for(self, rating_group: int) -> Tariff | None:
        t = self.rating.get(rating_group)
        return t if t is not None else self.default_tariff


@dataclass(frozen=True, slots=True)
class TaxRule:
    """One rate of a tax profile: where it applies (zones: the jurisdiction; rating groups: the service; None =
    any) and the rate in parts per million of the net amount (19 % = 190_000)."""

    zones: frozenset[str] | None
    rating_groups: frozenset[int] | None
    rate: int

    def matches(self, zone: str, rating_group: int | None) -> bool:
        return (self.zones is None or zone in self.zones) and (
            self.rating_groups is None or (rating_group is not None and rating_group in self.rating_groups)
        )


@dataclass(frozen=True, slots=True)
class TaxProfile:
    """How the money of an account is taxed (chf.core.tax): the rules in order (the first that matches applies,
    else `rate`), and whether catalogue prices include the tax (`gross`) or have it added on top (`net`)."""

    name: str
    prices: str  # "net" | "gross"
    rate: int  # ppm, when no rule matches
    rules: tuple[TaxRule, ...]
    description: str = ""

    def rate_for(self, zone: str, rating_group: int | None) -> int:
        for rule in self.rules:
            if rule.matches(zone, rating_group):
                return rule.rate
        return self.rate


@dataclass(frozen=True, slots=True)
class Catalogue:
    settings: Settings
    grants: GrantPolicy
    plans: Mapping[str, Plan]
    tariffs: Mapping[str, Tariff]
    zones: Mapping[str, frozenset[str]]  # zone name -> MCC-MNCs
    source: str
    digest: str  # sha256 hex of the file text
    # When this version of the catalogue takes effect (epoch seconds; None: in force from the start), and its name
    # in events and reservations: the digest's first 12 hex digits (chf.core.versions).
    effective: int | None = None
    version: str = ""
    addons: Mapping[str, AddOn] = field(default_factory=_empty_map)
    price_lists: Mapping[str, PriceList] = field(default_factory=_empty_map)  # chf.core.wholesale
    tax_profiles: Mapping[str, TaxProfile] = field(default_factory=_empty_map)  # chf.core.tax
    _zone_by_network: Mapping[str, str] = field(default_factory=_empty_map, repr=False, compare=False)
    _grants_by_rg: Mapping[int, GrantPolicy] = field(default_factory=_empty_map, repr=False, compare=False)

    def grant_policy(self, rating_group: int) -> GrantPolicy:
        """Grant defaults for ``rating_group`` with its per-rating-group overrides applied."""
        return self._grants_by_rg.get(rating_group, self.grants)

    def zone_of(self, mcc_mnc: str | None) -> str:
        """Zone of a serving network; None/"" (not reported) -> home zone; unlisted -> default zone."""
        if not mcc_mnc:
            return self.settings.home_zone
        return self._zone_by_network.get(mcc_mnc, self.settings.default_zone)

    def local_time(self, epoch_seconds: int) -> datetime:
        """Aware datetime of ``epoch_seconds`` in the catalogue's time zone."""
        return datetime.fromtimestamp(epoch_seconds, self.settings.timezone)

    def plan(self, name: str) -> Plan:
        p = self.plans.get(name)
        if p is None:
            raise CatalogueError([f"{self.source}: plan {name!r}: no such plan"])
        return p

    def plan_in(self, name: str | None, currency: str) -> Plan | None:
        """Plan ``name`` if it is priced in ``currency``, else None: a price is never charged to a wallet of
        another currency (relabelled). Provisioning refuses such a pairing; this keeps the engine from applying
        one that got into the store anyway (a line stored before the check, a catalogue edited under it)."""
        p = self.plans.get(name) if name is not None else None
        return p if p is not None and p.currency == currency else None

    def price_list_in(self, name: str | None, currency: str) -> PriceList | None:
        """Price list ``name`` if it is priced in ``currency``, else None (as :meth:`plan_in`)."""
        p = self.price_lists.get(name) if name is not None else None
        return p if p is not None and p.currency == currency else None

    def is_denied(self, plan: Plan, rating_group: int, zone: str) -> bool:
        """True if usage of ``rating_group`` in ``zone`` is barred under ``plan``.

        Barred when the rating group has no tariff, the tariff denies the zone, or the plan has
        ``roaming = false`` and the zone is not the home zone.
        """
        if not plan.roaming and zone != self.settings.home_zone:
            return True
        tariff = plan.tariff_for(rating_group)
        return tariff is None or tariff.is_denied(zone)
