"""Product catalogue loader: reads the catalogue TOML, validates it and builds the model of
:mod:`chf.core.catalogue`.

Every problem is reported with the file, the plan or tariff and the field, all problems at once, in one
:class:`CatalogueError`. Unknown keys are errors (a typo must not silently fall back to a default). Array
positions in error messages are 0-based: ``allowances[1]`` is the second ``[[...allowances]]``. Rating groups are
TOML table keys in places, hence strings there: write them quoted, ``"10" = ...``.

File format
-----------
``[settings]``
    ``currency`` (ISO 4217, 3 upper-case letters), ``timezone`` (zoneinfo name; time-of-day bands and monthly
    periods use it), ``home_zone``, ``default_zone`` (zone of a serving network not listed in ``[zones]``);
    ``effective`` (optional): when this version of the catalogue takes effect, a TOML date-time
    (``2027-01-01T00:00:00+01:00``; without an offset, or a date alone, in ``timezone``), to the second. The
    configured catalogue is this file or a directory of such files, one per version (:mod:`chf.core.versions`:
    each is in force from its ``effective`` until the next one's; at most one has none, the first).

``[grants]``
    Quota-grant defaults (docs/architecture.md): ``bytes``, ``seconds``, ``events``, ``money`` (quantum per
    unit type, > 0), ``validity_time`` (seconds, > 0), ``quota_holding_time`` (seconds, 0 = not sent),
    ``volume_threshold_percent`` and ``time_threshold_percent`` (0..99, 0 = not sent). All optional; see
    :data:`DEFAULT_GRANTS`. ``[grants.rating_groups."<rg>"]`` overrides any of them for one rating group.

``[zones]``
    ``<zone> = ["MCC-MNC", ...]``: serving networks (5 or 6 digits) per zone. A network is in at most one
    zone. Known zone names are the keys here plus ``home_zone`` and ``default_zone``.

``[tariffs.<name>]``
    ``unit``; ``block`` (> 0, price is per block of this many units; default 1); ``rounding`` = ``up`` |
    ``down`` | ``nearest`` (how a used quantity is rounded to whole blocks, default ``up``; nearest rounds a
    half block up); ``price`` (micro-units per block, >= 0; optional when tiers are given);
    ``description``.

    ``[[tariffs.<name>.tiers]]`` with ``upto`` and ``price``: tiers by cumulative usage in the current
    period. ``upto`` strictly ascending; exactly the last tier has no ``upto``.

    ``[[tariffs.<name>.bands]]`` with ``days`` (subset of mon..sun, default all), ``from`` ("HH:MM"),
    ``to`` ("HH:MM", "24:00" allowed) and ``price``: time-of-day bands in local time, half-open
    [from, to). If ``to`` < ``from`` the band wraps past midnight: it starts on a listed day and continues
    into the next morning (``days = ["fri"], from = "22:00", to = "06:00"`` covers Saturday 03:00).

    ``[tariffs.<name>.zones.<zone>]`` with either ``price`` or ``deny = true``.

    Price precedence for one charge: (1) the zone's ``price`` if the serving zone has an entry with a
    price (tiers and bands are then ignored); (2) otherwise the first matching band; (3) otherwise the tiers;
    (4) otherwise the base ``price``.

    Rounding and tiers: the used quantity is first rounded to whole blocks; the rounded quantity is then
    priced across the tiers starting at the usage already consumed in the period, each part at its tier's
    price per block; the exact sum is rounded up to a whole micro-unit once (never in the customer's favour
    by more than one micro-unit, never losing revenue).

``[plans.<name>]``
    ``payment`` = prepaid | postpaid | hybrid; ``currency`` (ISO 4217, default the ``[settings]`` one): what the
    plan's fee and the prices of its tariffs are in. Only accounts of that currency take the plan (README,
    "Currencies and reused numbers"); a plan keeps its currency across reloads (to price it in another, give it
    another name); ``fee`` (recurring, micro-units, >= 0, default 0);
    ``period`` = month | week | day | "<N>d" (default month); ``overage`` = charge | deny | redirect |
    restrict (default charge): what happens when allowances are exhausted: ``charge`` the wallet at tariff,
    or end with a Final-Unit-Indication; ``redirect_address`` (required iff overage = redirect); ``filter_id``
    and/or ``restriction_rules`` (at least one required iff overage = restrict); ``roaming`` (default true;
    false = only the home zone may be used); ``roaming_overage`` = charge | deny (absent: as ``overage``):
    what happens outside the home zone once the allowances valid there are used up; ``description``.

    ``[plans.<name>.rating]``: ``"<rg>" = "<tariff>"`` and optionally ``default = "<tariff>"`` for any other
    rating group. At least one entry is required. A rating group with no tariff is denied.

    ``[[plans.<name>.allowances]]``: ``name`` (unique in the plan), ``unit``, ``amount`` (> 0),
    ``rating_groups`` (absent = every rating group whose tariff has this unit), ``priority`` (lower is
    consumed first, default 100), ``shared`` (account-level bucket for all lines), ``rollover`` (unused
    remaining carried into the next period), ``zones`` (the zones whose usage it pays, e.g. ``["home", "eu"]``;
    absent = every zone; names from ``[zones]``, ``home_zone`` or ``default_zone``), ``fair_use`` (units: the
    most of each period's amount that usage outside the home zone may take, e.g. EU roam-like-at-home; a
    rollover of it pays at home only). A ``money`` allowance pays charges of any rating group it covers.
    Roaming usage draws only on allowances valid in its zone (chf/core/zones.py); beyond them the wallet pays at
    the tariff's zone price, or, with the plan's ``roaming_overage = "deny"``, it is refused.

    ``[[plans.<name>.promotions]]``: ``kind = "intro_price"`` with ``fee`` and ``periods`` (fee replaced for
    the first N periods; at most one per plan), or ``kind = "bonus"`` with the allowance fields above plus
    ``validity_days`` (optional, absent = no expiry): a one-off bucket granted when the plan is assigned.

    ``[[plans.<name>.split]]``: split billing (chf/core/split.py), rules tried in order; the first whose every
    condition holds routes a rating group's usage to ``payer`` = ``"parent"`` (the line's account's parent) |
    ``"account:<id>"``. Conditions, all optional: ``apn`` (APN / DNN network identifiers), ``rating_groups``,
    ``zones``, ``networks`` (MCC-MNC), ``rat`` (RAT type names), ``days`` / ``from`` / ``to`` (local time, as in
    tariff bands); ``name`` for messages. The payer's shared allowances and pools pay first, then its wallet, at
    this plan's tariffs; a payer that does not exist or holds another currency refuses the rating group.

    IoT pools (chf.core.pools): ``pool = "static"`` with ``pool_unit`` and ``pool_amount`` (fixed total per
    period shared by all lines of the account) or ``pool = "flexible"`` with ``pool_unit`` and ``pool_per_line``
    (total = per-line amount x the account's active lines, recomputed whenever a line joins, leaves or changes
    state); ``pool = "stacked"`` with ``pool_unit`` and ``pool_family`` (total = what the account's member lines
    bring: a line whose own plan has ``pool_family`` equal to it and a ``pool_contribution`` (> 0, in the pool's
    unit) brings that amount while active, or suspended on a plan with the full suspended fee; recomputed from all
    the lines whenever one joins, leaves, changes plan or state; the plans of one family share its currency);
    ``pool = "adaptive"`` (postpaid plans only) with ``pool_unit`` and ``[[pool_tiers]]`` (``amount`` > 0 strictly
    ascending, ``fee`` >= 0 never decreasing; at the period's close the cheapest tier covering what was used is
    charged) and ``pool_topoff`` (default false: the pool holds the top tier all period; true: it starts at the
    first tier and grows to the next one when exhausted, and the close charges at least the tier reached).
    ``pool_rating_groups`` optional.

    Line lifecycle (README, "Fees and the line lifecycle"): ``suspended_fee`` = ``"full"`` (default: a
    suspended line pays the fee and gets the allowances, as an active one) | ``"none"`` | a reduced fee in
    micro-units (>= 0, at most ``fee``; the allowances are held back until the line is active again);
    ``prorate`` (default false): a period that starts between two renewal dates (activation, plan change, a
    held period started on reactivation) is charged for the local days left of it, rounded down to the
    micro-unit. A provisioned line's first period starts when it is activated; a terminated line's periods
    stop at the end of the one in progress.

``[price_lists.<name>]`` (B2B2B, :mod:`chf.core.wholesale`)
    What an account pays, as another account's ``parent``, for the usage of the lines below it: ``currency``
    (ISO 4217, default the ``[settings]`` one; only accounts of that currency pay by it), ``description``,
    ``device_fee`` (micro-units, >= 0, default 0: charged per line below, per period of the line's plan), and
    ``[price_lists.<name>.rating]`` as a plan's ``[rating]``: ``"<rg>" = "<tariff>"`` and ``default``. Its
    tariffs must be flat (no ``tiers``: tiers count a line's period usage, which a payer above has none of).

``[tax_profiles.<name>]`` (:mod:`chf.core.tax`)
    ``prices`` = ``net`` | ``gross`` (catalogue prices exclude or include the tax), ``rate`` (a percentage
    string, ``"19%"``, ``"7.7%"``: 0..100, at most 4 decimals), ``description``, and ``[[tax_profiles.<name>.rates]]``
    with ``rate`` and optionally ``zones`` (the jurisdiction: zones where the service is used; fees count as
    the home zone) and ``rating_groups`` (the services; fees have none): the first entry that matches applies,
    else ``rate``.

``[addons.<name>]`` (chf.core.addons)
    A priced add-on (bolt-on), bought for a line through the API or the CLI: ``price`` (micro-units, >= 0) in
    ``currency`` (default the ``[settings]`` one); the bucket: ``unit``, ``amount`` (> 0), ``rating_groups``
    (absent = every rating group of its unit), ``priority`` (default 50); ``validity_days`` (absent = to the
    end of the line's current period); ``plans`` (the plans, of the line or else its account, it is sold with;
    absent = any plan of its currency); ``description``.
"""

from __future__ import annotations

import datetime
import difflib
import hashlib
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from chf.core.catalogue import (
    MAX_RATING_GROUP,
    OVERAGE_ACTIONS,
    PAYMENT_TYPES,
    POOL_KINDS,
    PROMOTION_KINDS,
    ROUNDING_MODES,
    UNIT_TYPES,
    AddOn,
    Allowance,
    Band,
    Catalogue,
    CatalogueError,
    GrantPolicy,
    Plan,
    PoolTier,
    PriceList,
    Promotion,
    Settings,
    SplitRule,
    Tariff,
    TaxProfile,
    TaxRule,
    Tier,
    ZoneRule,
)
from chf.core.periods import period_error
from chf.core.split import ACCOUNT_PREFIX, PARENT, check_split_zones
from chf.core.zones import ROAMING_OVERAGES, check_plan_zones

__all__ = ["DEFAULT_GRANTS", "CatalogueError", "check_replacement", "load_catalogue", "parse_catalogue"]

DAY_NAMES: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

DEFAULT_GRANTS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "bytes": 10_000_000,
        "seconds": 600,
        "events": 1,
        "money": 1_000_000,
        "validity_time": 3600,
        "quota_holding_time": 0,
        "volume_threshold_percent": 20,
        "time_threshold_percent": 20,
    }
)

# A version's name: the first digits of its file's sha256 (events and reservations carry it; chf.core.versions).
VERSION_DIGITS: Final = 12

_MISSING: Any = object()
_MCC_MNC_RE = re.compile(r"^[0-9]{5,6}$")
_RG_RE = re.compile(r"^(0|[1-9][0-9]{0,9})$")
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_TIME_RE = re.compile(r"^([01][0-9]|2[0-4]):([0-5][0-9])$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Errors:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, where: str, msg: str) -> None:
        self.items.append(f"{self.source}: {where}: {msg}" if where else f"{self.source}: {msg}")


def _fmt_where(owner: str, path: str) -> str:
    return f"{owner}: {path}" if owner and path else owner or path


class _Table:
    """Typed, error-collecting access to one TOML table; reports unknown keys on construction."""

    def __init__(self, errs: _Errors, owner: str, prefix: str, data: Any, allowed: Iterable[str]) -> None:
        self.errs = errs
        self.owner = owner  # e.g. "plan 'prepaid-s'"
        self.prefix = prefix  # e.g. "allowances[1]." or ""
        self.ok = isinstance(data, dict)
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        allowed_set = set(allowed)
        if not self.ok:
            self.err("", f"must be a table, got {_tname(data)}", prefix.rstrip("."))
            return
        for key in self.data:
            if key not in allowed_set:
                hint = difflib.get_close_matches(key, sorted(allowed_set), n=1)
                allowed_list = ", ".join(sorted(allowed_set))
                extra = f" (did you mean {hint[0]!r}?)" if hint else f"; allowed: {allowed_list}"
                self.err(key, f"unknown key{extra}")

    def err(self, key: str, msg: str, path: str | None = None) -> None:
        p = path if path is not None else f"{self.prefix}{key}"
        self.errs.add(_fmt_where(self.owner, p), msg)

    def has(self, key: str) -> bool:
        return key in self.data

    def get_int(
        self, key: str, default: Any = _MISSING, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        v = self.data.get(key, _MISSING)
        if v is _MISSING:
            if default is _MISSING:
                self.err(key, "required")
                return 0
            return int(default)
        what = "a positive integer" if minimum == 1 else "a non-negative integer" if minimum == 0 else "an integer"
        if maximum is not None and minimum is not None:
            what = f"an integer in {minimum}..{maximum}"
        if isinstance(v, bool) or not isinstance(v, int):
            self.err(key, f"must be {what}, got {v!r}")
            return 0 if minimum is None else minimum
        if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
            self.err(key, f"must be {what}, got {v!r}")
            return minimum if minimum is not None else 0
        return v

    def get_str(self, key: str, default: Any = _MISSING, *, choices: Iterable[str] | None = None) -> str:
        v = self.data.get(key, _MISSING)
        if v is _MISSING:
            if default is _MISSING:
                self.err(key, "required")
                return ""
            return str(default)
        if not isinstance(v, str):
            self.err(key, f"must be a string, got {v!r}")
            return ""
        if choices is not None:
            ch = tuple(choices)
            if v not in ch:
                self.err(key, f"must be one of {' | '.join(ch)}, got {v!r}")
                return ""
        return v

    def opt_str(self, key: str) -> str | None:
        if key not in self.data:
            return None
        s = self.get_str(key)
        if s == "":
            self.err(key, "must not be empty")
            return None
        return s

    def get_bool(self, key: str, default: bool) -> bool:
        v = self.data.get(key, _MISSING)
        if v is _MISSING:
            return default
        if not isinstance(v, bool):
            self.err(key, f"must be true or false, got {v!r}")
            return default
        return v

    def get_list(self, key: str) -> list[Any] | None:
        v = self.data.get(key, _MISSING)
        if v is _MISSING:
            return None
        if not isinstance(v, list):
            self.err(key, f"must be an array, got {v!r}")
            return None
        return v

    def rating_groups(self, key: str) -> frozenset[int] | None:
        v = self.get_list(key)
        if v is None:
            return None
        out: set[int] = set()
        if not v:
            self.err(key, "must not be empty (omit it to cover every rating group)")
        for i, rg in enumerate(v):
            if isinstance(rg, bool) or not isinstance(rg, int) or not 0 <= rg <= MAX_RATING_GROUP:
                self.err(f"{key}[{i}]", f"must be a rating group (integer 0..{MAX_RATING_GROUP}), got {rg!r}")
            elif rg in out:
                self.err(f"{key}[{i}]", f"duplicate rating group {rg}")
            else:
                out.add(rg)
        return frozenset(out)

    def array_of_tables(self, key: str) -> list[Any]:
        v = self.data.get(key, _MISSING)
        if v is _MISSING:
            return []
        if not isinstance(v, list):
            self.err(key, f"must be an array of tables ([[...{key}]]), got {_tname(v)}")
            return []
        return v


def _tname(v: object) -> str:
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return "an array"
    return repr(v)


def _parse_rg_key(key: str) -> int | None:
    if not _RG_RE.match(key):
        return None
    rg = int(key)
    return rg if rg <= MAX_RATING_GROUP else None


def _parse_time(s: str, *, allow_24: bool) -> int | None:
    m = _TIME_RE.match(s)
    if m is None:
        return None
    h, mi = int(m.group(1)), int(m.group(2))
    if h == 24:
        return 1440 if allow_24 and mi == 0 else None
    return h * 60 + mi


def _load_settings(errs: _Errors, raw: Any) -> tuple[Settings, str]:
    t = _Table(errs, "settings", "", raw, ("currency", "timezone", "home_zone", "default_zone", "effective"))
    currency = t.get_str("currency")
    if currency and not _CURRENCY_RE.match(currency):
        t.err("currency", f"must be an ISO 4217 code of 3 upper-case letters, got {currency!r}")
    tzname = t.get_str("timezone")
    tz = ZoneInfo("UTC")
    if tzname:
        try:
            tz = ZoneInfo(tzname)
        except (ZoneInfoNotFoundError, ValueError):
            t.err("timezone", f"unknown time zone {tzname!r} (use a zoneinfo name such as 'Europe/Paris')")
    home = t.get_str("home_zone")
    default = t.get_str("default_zone")
    return Settings(currency, tz, home, default), tzname


def _load_effective(errs: _Errors, raw: Any, tz: ZoneInfo) -> int | None:
    """``[settings] effective``: when this version takes effect, as epoch seconds (chf.core.versions)."""
    value = raw.get("effective") if isinstance(raw, dict) else None
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        at = value if value.tzinfo is not None else value.replace(tzinfo=tz)
    elif isinstance(value, datetime.date):
        at = datetime.datetime(value.year, value.month, value.day, tzinfo=tz)
    else:
        what = "a TOML date-time (2027-01-01T00:00:00+01:00) or date"
        errs.add("settings: effective", f"must be {what}, got {_tname(value)}")
        return None
    seconds = at.timestamp()
    if seconds != int(seconds):
        errs.add("settings: effective", "must be a whole second")
        return None
    return int(seconds)


def _grant_fields(t: _Table, base: Mapping[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in ("bytes", "seconds", "events", "money", "validity_time"):
        out[key] = t.get_int(key, base[key], minimum=1)
    out["quota_holding_time"] = t.get_int("quota_holding_time", base["quota_holding_time"], minimum=0)
    for key in ("volume_threshold_percent", "time_threshold_percent"):
        out[key] = t.get_int(key, base[key], minimum=0, maximum=99)
    return out


def _load_grants(errs: _Errors, raw: Any) -> tuple[GrantPolicy, dict[int, GrantPolicy]]:
    if raw is None:
        raw = {}
    fields = tuple(DEFAULT_GRANTS)
    t = _Table(errs, "grants", "", raw, (*fields, "rating_groups"))
    base = _grant_fields(t, DEFAULT_GRANTS)
    policy = GrantPolicy(**base)
    per_rg: dict[int, GrantPolicy] = {}
    rgs = t.data.get("rating_groups", {})
    if not isinstance(rgs, dict):
        t.err("rating_groups", f"must be a table of rating groups, got {_tname(rgs)}")
        rgs = {}
    for key, sub in rgs.items():
        rg = _parse_rg_key(key)
        if rg is None:
            t.err("", f"must be a rating group (integer 0..{MAX_RATING_GROUP})", f"rating_groups.{key}")
            continue
        st = _Table(errs, "grants", f"rating_groups.{key}.", sub, fields)
        if st.ok:
            per_rg[rg] = GrantPolicy(**_grant_fields(st, base))
    return policy, per_rg


def _load_zones(errs: _Errors, raw: Any) -> dict[str, frozenset[str]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errs.add("zones", f"must be a table of zone -> [MCC-MNC, ...], got {_tname(raw)}")
        return {}
    zones: dict[str, frozenset[str]] = {}
    seen: dict[str, str] = {}
    for zone, nets in raw.items():
        if not _NAME_RE.match(zone):
            errs.add(f"zones: {zone}", "invalid zone name")
        if not isinstance(nets, list):
            errs.add(f"zones: {zone}", f"must be an array of MCC-MNC strings, got {_tname(nets)}")
            continue
        members: set[str] = set()
        for i, net in enumerate(nets):
            if not isinstance(net, str) or not _MCC_MNC_RE.match(net):
                errs.add(f"zones: {zone}[{i}]", f"must be an MCC-MNC string of 5 or 6 digits, got {net!r}")
                continue
            other = seen.get(net)
            if other is not None:
                errs.add(f"zones: {zone}[{i}]", f"network {net} is already in zone {other!r}")
                continue
            seen[net] = zone
            members.add(net)
        zones[zone] = frozenset(members)
    return zones


_TARIFF_KEYS = ("unit", "block", "rounding", "price", "tiers", "bands", "zones", "description")


def _load_tariff(errs: _Errors, name: str, raw: Any, known_zones: frozenset[str]) -> Tariff | None:
    owner = f"tariff {name!r}"
    t = _Table(errs, owner, "", raw, _TARIFF_KEYS)
    if not t.ok:
        return None
    unit = t.get_str("unit", choices=UNIT_TYPES)
    block = t.get_int("block", 1, minimum=1)
    rounding = t.get_str("rounding", "up", choices=ROUNDING_MODES)
    description = t.get_str("description", "")
    tiers = _load_tiers(errs, owner, t)
    if tiers:
        price = t.get_int("price", tiers[0].price, minimum=0)
    else:
        price = t.get_int("price", minimum=0)
    bands = _load_bands(errs, owner, t)
    zone_rules = _load_zone_rules(errs, owner, t, known_zones)
    denied = frozenset(z for z, r in zone_rules.items() if r.deny)
    return Tariff(
        name=name,
        unit=unit,
        block=block,
        rounding=rounding or "up",
        price=price,
        tiers=tuple(tiers),
        bands=tuple(bands),
        zones=MappingProxyType(zone_rules),
        description=description,
        _denied=denied,
    )


def _load_tiers(errs: _Errors, owner: str, t: _Table) -> list[Tier]:
    """``[[tiers]]``: ``upto`` strictly ascending, and only the last tier open-ended."""
    tiers: list[Tier] = []
    raw_tiers = t.array_of_tables("tiers")
    prev_upto = 0
    for i, rt in enumerate(raw_tiers):
        tt = _Table(errs, owner, f"tiers[{i}].", rt, ("upto", "price"))
        if not tt.ok:
            continue
        price = tt.get_int("price", minimum=0)
        last = i == len(raw_tiers) - 1
        upto: int | None = None
        if last:
            if tt.has("upto"):
                tt.err("upto", "the last tier must not have 'upto' (it is open-ended)")
        else:
            upto = tt.get_int("upto", minimum=1)
            if tt.has("upto") and upto <= prev_upto:
                tt.err("upto", f"must be greater than the previous tier's upto ({prev_upto}), got {upto}")
            prev_upto = max(prev_upto, upto)
        tiers.append(Tier(upto, price))
    return tiers


def _load_bands(errs: _Errors, owner: str, t: _Table) -> list[Band]:
    bands: list[Band] = []
    for i, rb in enumerate(t.array_of_tables("bands")):
        bt = _Table(errs, owner, f"bands[{i}].", rb, ("days", "from", "to", "price"))
        if not bt.ok:
            continue
        band = _load_band(bt)
        if band is not None:
            bands.append(band)
    return bands


def _load_band(bt: _Table) -> Band | None:
    """One ``[[bands]]`` entry, or None when its times are invalid (reported)."""
    bprice = bt.get_int("price", minimum=0)
    days = _band_days(bt)
    start_s = bt.get_str("from")
    end_s = bt.get_str("to")
    start = _parse_time(start_s, allow_24=False) if start_s else None
    end = _parse_time(end_s, allow_24=True) if end_s else None
    if start_s and start is None:
        bt.err("from", f"must be a local time 'HH:MM' from 00:00 to 23:59, got {start_s!r}")
    if end_s and end is None:
        bt.err("to", f"must be a local time 'HH:MM' from 00:00 to 24:00, got {end_s!r}")
    if start is None or end is None:
        return None
    if start == end:
        bt.err("to", f"must differ from 'from' ({start_s}); use 00:00 to 24:00 for a whole day")
        return None
    return Band(frozenset(days), start, end, bprice)


def _band_days(bt: _Table) -> set[int]:
    """The weekdays of a band (Monday = 0); every day when ``days`` is absent."""
    days_raw = bt.get_list("days")
    if days_raw is None:
        return set(range(7))
    days: set[int] = set()
    if not days_raw:
        bt.err("days", "must not be empty (omit it for every day)")
    for j, d in enumerate(days_raw):
        if not isinstance(d, str) or d.lower() not in DAY_NAMES:
            bt.err(f"days[{j}]", f"must be one of {', '.join(DAY_NAMES)}, got {d!r}")
        else:
            days.add(DAY_NAMES.index(d.lower()))
    return days


def _load_zone_rules(errs: _Errors, owner: str, t: _Table, known_zones: frozenset[str]) -> dict[str, ZoneRule]:
    zone_rules: dict[str, ZoneRule] = {}
    rz = t.data.get("zones", {})
    if not isinstance(rz, dict):
        t.err("zones", f"must be a table of zone -> {{price = ...}} or {{deny = true}}, got {_tname(rz)}")
        rz = {}
    for zname, zr in rz.items():
        zt = _Table(errs, owner, f"zones.{zname}.", zr, ("price", "deny"))
        if not zt.ok:
            continue
        if zname not in known_zones:
            zt.err("", f"unknown zone {zname!r} (known: {', '.join(sorted(known_zones))})", f"zones.{zname}")
        deny = zt.get_bool("deny", False)
        if zt.has("price") and deny:
            zt.err("deny", "give either 'price' or 'deny = true', not both")
        elif zt.has("deny") and not deny:
            zt.err("deny", "'deny = false' has no effect; give a 'price' or remove the entry")
        elif not zt.has("price") and not deny:
            zt.err("price", "required (or 'deny = true')")
        zone_rules[zname] = ZoneRule(None if deny else zt.get_int("price", 0, minimum=0), deny)
    return zone_rules


_ALLOWANCE_KEYS = ("name", "unit", "amount", "rating_groups", "priority", "shared", "rollover", "zones", "fair_use")
_PLAN_KEYS = (
    "payment",
    "currency",
    "fee",
    "period",
    "overage",
    "redirect_address",
    "filter_id",
    "restriction_rules",
    "roaming",
    "description",
    "rating",
    "allowances",
    "promotions",
    "pool",
    "pool_unit",
    "pool_amount",
    "pool_per_line",
    "pool_rating_groups",
    "pool_family",
    "pool_contribution",
    "pool_tiers",
    "pool_topoff",
    "suspended_fee",
    "prorate",
    "roaming_overage",
    "split",
)


def _allowance(t: _Table) -> Allowance:
    return Allowance(
        name=t.get_str("name"),
        unit=t.get_str("unit", choices=UNIT_TYPES),
        amount=t.get_int("amount", minimum=1),
        rating_groups=t.rating_groups("rating_groups"),
        priority=t.get_int("priority", 100),
        shared=t.get_bool("shared", False),
        rollover=t.get_bool("rollover", False),
        zones=_zone_names(t, "zones"),  # checked against the catalogue's zones by chf.core.zones.check_plan_zones
        fair_use=t.get_int("fair_use", minimum=1) if t.has("fair_use") else None,
    )


def _zone_names(t: _Table, key: str) -> frozenset[str] | None:
    v = t.get_list(key)
    if v is None:
        return None
    if not v or not all(isinstance(z, str) and z for z in v):
        t.err(key, f"must be a non-empty array of names, got {v!r}")
        return None
    return frozenset(v)


def _load_plan(
    errs: _Errors, name: str, raw: Any, tariffs: Mapping[str, Tariff | None], settings: Settings
) -> Plan | None:
    owner = f"plan {name!r}"
    t = _Table(errs, owner, "", raw, _PLAN_KEYS)
    if not t.ok:
        return None
    payment = t.get_str("payment", choices=PAYMENT_TYPES)
    currency = t.get_str("currency", settings.currency)
    if t.has("currency") and currency and not _CURRENCY_RE.match(currency):  # (the default is checked once)
        t.err("currency", f"must be an ISO 4217 code of 3 upper-case letters, got {currency!r}")
    fee = t.get_int("fee", 0, minimum=0)
    period = t.get_str("period", "month")
    if period:
        perr = period_error(period)
        if perr is not None:
            t.err("period", perr)
    overage = _load_overage(t)
    roaming = t.get_bool("roaming", True)
    description = t.get_str("description", "")
    rating = _load_rating(t, tariffs)
    names: set[str] = set()  # allowance names, bonus promotions included: unique in the plan
    allowances = _load_allowances(errs, owner, t, rating, names)
    promotions, intro = _load_promotions(errs, owner, t, rating, names)
    pool = _load_pool(t, rating)
    if pool.kind == "adaptive" and payment != "postpaid":
        t.err("pool", "an adaptive pool is billed at the period's close: its plan must be postpaid")
    suspended_fee = _load_suspended_fee(t, fee)
    prorate = t.get_bool("prorate", False)
    roaming_overage = t.get_str("roaming_overage", None, choices=ROAMING_OVERAGES) if t.has("roaming_overage") else None
    split = _load_split(errs, owner, t, rating)
    by_rg, allow_default = _allowance_lookups(allowances, rating)
    return Plan(
        name=name,
        payment=payment,
        currency=currency,
        fee=fee,
        period=period,
        overage=overage.action,
        redirect_address=overage.redirect_address,
        filter_id=overage.filter_id,
        restriction_rules=tuple(overage.restriction_rules),
        allowances=tuple(allowances),
        promotions=tuple(promotions),
        pool=pool.kind,
        pool_unit=pool.unit,
        pool_amount=pool.amount,
        pool_per_line=pool.per_line,
        pool_rating_groups=pool.rating_groups,
        roaming=roaming,
        description=description,
        rating=MappingProxyType(rating.by_rg),
        default_tariff=rating.default,
        suspended_fee=suspended_fee,
        prorate=prorate,
        roaming_overage=roaming_overage,
        split=tuple(split),
        pool_family=pool.family,
        pool_contribution=pool.contribution,
        pool_tiers=pool.tiers,
        pool_topoff=pool.topoff,
        _bonuses=tuple(p for p in promotions if p.kind == "bonus"),
        _intro=intro,
        _allow_by_rg=MappingProxyType(by_rg),
        _allow_default=allow_default,
    )


def _load_suspended_fee(t: _Table, fee: int) -> int | None:
    """``suspended_fee``: ``"full"`` (the default: None), ``"none"`` (0) or a reduced fee in micro-units."""
    v = t.data.get("suspended_fee", "full")
    if v == "full":
        return None
    if v == "none":
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        t.err("suspended_fee", f"must be 'full', 'none' or a reduced fee in micro-units (an integer >= 0), got {v!r}")
        return None
    if v > fee:
        t.err("suspended_fee", f"a reduced fee must not exceed the plan's fee ({fee}), got {v}")
    return v


@dataclass(slots=True)
class _Overage:
    action: str
    redirect_address: str | None
    filter_id: str | None
    restriction_rules: list[str]


def _load_overage(t: _Table) -> _Overage:
    """``overage`` and the keys that only one of its actions takes (redirect: an address; restrict: a filter)."""
    overage = t.get_str("overage", "charge", choices=OVERAGE_ACTIONS)
    redirect_address = t.opt_str("redirect_address")
    filter_id = t.opt_str("filter_id")
    rules_raw = t.get_list("restriction_rules")
    rules: list[str] = []
    for i, r in enumerate(rules_raw or []):
        if not isinstance(r, str) or not r.strip():
            t.err(f"restriction_rules[{i}]", f"must be a non-empty string, got {r!r}")
        else:
            rules.append(r)
    if overage == "redirect" and redirect_address is None:
        t.err("redirect_address", "required when overage = 'redirect'")
    if overage != "redirect" and redirect_address is not None:
        t.err("redirect_address", f"only used when overage = 'redirect' (overage is {overage!r})")
    if overage == "restrict" and filter_id is None and not rules:
        t.err("filter_id", "filter_id or restriction_rules is required when overage = 'restrict'")
    if overage != "restrict" and (filter_id is not None or rules_raw is not None):
        key = "filter_id" if filter_id is not None else "restriction_rules"
        t.err(key, f"only used when overage = 'restrict' (overage is {overage!r})")
    return _Overage(overage, redirect_address, filter_id, rules)


@dataclass(slots=True)
class _Rating:
    """A plan's rating table as loaded, and the unit checks that the plan's allowances and pool must pass."""

    by_rg: dict[int, Tariff]
    default: Tariff | None
    units: set[str]  # the units the plan's tariffs rate
    complete: bool  # every entry names a valid tariff: only then are unit mismatches worth reporting

    def tariff_for(self, rg: int) -> Tariff | None:
        return self.by_rg.get(rg, self.default)

    def check_unit(self, tt: _Table, key: str, unit: str, rgs: frozenset[int] | None = None) -> None:
        if not unit or not self.complete or not self.units:
            return  # the unit or rating table is already reported as invalid
        if unit != "money" and unit not in self.units:
            rates = ", ".join(sorted(self.units))
            tt.err(key, f"no tariff of this plan rates {unit!r} (the plan rates: {rates})")
            return
        for rg in sorted(rgs or ()):
            tr = self.tariff_for(rg)
            if tr is None:
                tt.err(key, f"rating group {rg} has no tariff in this plan (add it to [rating] or a default)")
            elif unit not in (tr.unit, "money"):
                tt.err(key, f"{unit!r} does not match rating group {rg}'s tariff {tr.name!r} ({tr.unit!r})")


def _load_rating(t: _Table, tariffs: Mapping[str, Tariff | None]) -> _Rating:
    """``[rating]``: ``"<rg>" = "<tariff>"`` and ``default = "<tariff>"``."""
    rating: dict[int, Tariff] = {}
    default_tariff: Tariff | None = None
    rr = t.data.get("rating", _MISSING)
    if rr is _MISSING:
        t.err("rating", 'required: a table of "<rating group>" = "<tariff>" (and/or default = "<tariff>")')
        rr = {}
    elif not isinstance(rr, dict):
        t.err("rating", f"must be a table of rating group -> tariff name, got {_tname(rr)}")
        rr = {}
    elif not rr:
        t.err("rating", "must map at least one rating group (or default) to a tariff")
    for key, tname in rr.items():
        rg = None if key == "default" else _parse_rg_key(key)
        if key != "default" and rg is None:
            t.err("", f'key must be a rating group ("10") or default, got {key!r}', f"rating.{key}")
            continue
        if not isinstance(tname, str):
            t.err("", f"must be a tariff name, got {tname!r}", f"rating.{key}")
            continue
        if tname not in tariffs:
            hint = difflib.get_close_matches(tname, sorted(tariffs), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            t.err("", f"unknown tariff {tname!r}{extra}", f"rating.{key}")
            continue
        tariff = tariffs[tname]
        if tariff is None:
            continue  # the tariff itself is invalid and already reported
        if rg is None:
            default_tariff = tariff
        else:
            rating[rg] = tariff
    rated_units = {tr.unit for tr in (*rating.values(), default_tariff) if tr is not None}
    complete = all(isinstance(v, str) and tariffs.get(v) is not None for v in rr.values())
    return _Rating(rating, default_tariff, rated_units, complete)


def _claim_name(t: _Table, name: str, names: set[str]) -> None:
    if name and name in names:
        t.err("name", f"duplicate allowance name {name!r}")
    names.add(name)


def _load_allowances(errs: _Errors, owner: str, t: _Table, rating: _Rating, names: set[str]) -> list[Allowance]:
    """``[[allowances]]``, in consumption order (priority; file order among equal priorities)."""
    allowances: list[Allowance] = []
    for i, ra in enumerate(t.array_of_tables("allowances")):
        at = _Table(errs, owner, f"allowances[{i}].", ra, _ALLOWANCE_KEYS)
        if not at.ok:
            continue
        a = _allowance(at)
        rating.check_unit(at, "unit", a.unit, a.rating_groups)
        _claim_name(at, a.name, names)
        allowances.append(a)
    allowances.sort(key=lambda a: a.priority)
    return allowances


def _load_promotions(
    errs: _Errors, owner: str, t: _Table, rating: _Rating, names: set[str]
) -> tuple[list[Promotion], Promotion | None]:
    """``[[promotions]]``: the plan's promotions and its intro price (at most one)."""
    promotions: list[Promotion] = []
    intro: Promotion | None = None
    for i, rp in enumerate(t.array_of_tables("promotions")):
        pre = f"promotions[{i}]."
        kind = rp.get("kind") if isinstance(rp, dict) else None
        if kind == "intro_price":
            pt = _Table(errs, owner, pre, rp, ("kind", "fee", "periods"))
            intro_fee = pt.get_int("fee", minimum=0)
            promo = Promotion("intro_price", intro_fee, pt.get_int("periods", minimum=1), None, None)
            if intro is not None:
                pt.err("kind", "at most one intro_price promotion per plan")
            intro = promo
        elif kind == "bonus":
            pt = _Table(errs, owner, pre, rp, ("kind", *_ALLOWANCE_KEYS, "validity_days"))
            promo = _bonus(pt, rating, names)
        elif not isinstance(rp, dict):
            _Table(errs, owner, pre, rp, ())  # reports "must be a table"
            continue
        else:
            errs.add(_fmt_where(owner, f"{pre}kind"), f"must be one of {' | '.join(PROMOTION_KINDS)}, got {kind!r}")
            continue
        promotions.append(promo)
    return promotions, intro


def _bonus(pt: _Table, rating: _Rating, names: set[str]) -> Promotion:
    a = _allowance(pt)
    rating.check_unit(pt, "unit", a.unit, a.rating_groups)
    _claim_name(pt, a.name, names)
    vd = pt.get_int("validity_days", None, minimum=1) if pt.has("validity_days") else None
    return Promotion("bonus", 0, 0, a, None if vd is None else vd * 86400)


@dataclass(slots=True)
class _Pool:
    kind: str | None
    unit: str | None
    amount: int | None
    per_line: int | None
    rating_groups: frozenset[int] | None
    family: str | None = None
    contribution: int | None = None
    tiers: tuple[PoolTier, ...] = ()
    topoff: bool = False


# The keys each pool kind takes besides pool, pool_unit and pool_rating_groups (a member line plan of a stacked
# pool has no `pool`: it takes pool_family and pool_contribution).
_POOL_KIND_KEYS: Final = {
    "static": ("pool_amount",),
    "flexible": ("pool_per_line",),
    "stacked": ("pool_family",),
    "adaptive": ("pool_tiers", "pool_topoff"),
}
_POOL_KEYS: Final = ("pool_amount", "pool_per_line", "pool_family", "pool_contribution", "pool_tiers", "pool_topoff")


def _load_pool(t: _Table, rating: _Rating) -> _Pool:
    """The IoT pool keys: ``pool`` and the keys its kind takes (static: an amount; flexible: a per-line one;
    stacked: a family; adaptive: tiers); or, on a member plan of a stacked pool, its family and contribution."""
    pool = t.opt_str("pool")
    pool_unit = t.opt_str("pool_unit")
    pool_amount = t.get_int("pool_amount", minimum=1) if t.has("pool_amount") else None
    pool_per_line = t.get_int("pool_per_line", minimum=1) if t.has("pool_per_line") else None
    pool_rgs = t.rating_groups("pool_rating_groups")
    family = t.opt_str("pool_family")
    contribution = t.get_int("pool_contribution", minimum=1) if t.has("pool_contribution") else None
    tiers = _load_pool_tiers(t)
    topoff = t.get_bool("pool_topoff", False)
    out = _Pool(pool, pool_unit, pool_amount, pool_per_line, pool_rgs, family, contribution, tiers, topoff)
    if pool is None:
        _check_member_keys(t)
    elif pool not in POOL_KINDS:
        t.err("pool", f"must be one of {' | '.join(POOL_KINDS)}, got {pool!r}")
    else:
        if pool_unit is None:
            t.err("pool_unit", f"required when pool = {pool!r}")
        elif pool_unit not in UNIT_TYPES:
            t.err("pool_unit", f"must be one of {' | '.join(UNIT_TYPES)}, got {pool_unit!r}")
        else:
            rating.check_unit(t, "pool_unit", pool_unit, pool_rgs)
        _check_pool_kind_keys(t, pool)
    return out


def _check_member_keys(t: _Table) -> None:
    """A plan without a pool: no pool keys but, on a member plan of a stacked pool, its family and contribution
    (both)."""
    for key in ("pool_unit", "pool_amount", "pool_per_line", "pool_rating_groups", "pool_tiers", "pool_topoff"):
        if t.has(key):
            t.err(key, f"only used with pool = {' or '.join(repr(k) for k in POOL_KINDS)}")
    if t.has("pool_contribution") and not t.has("pool_family"):
        t.err("pool_family", "required with pool_contribution (the stacked pool this plan's lines join)")
    elif t.has("pool_family") and not t.has("pool_contribution"):
        t.err("pool_contribution", "required with pool_family (what each line brings to the stacked pool)")


def _check_pool_kind_keys(t: _Table, pool: str) -> None:
    """The keys pool kind `pool` takes are there (pool_topoff is optional); the other kinds' keys are not."""
    takes = _POOL_KIND_KEYS[pool]
    for key in _POOL_KEYS:
        if key in takes:
            if not t.has(key) and key != "pool_topoff":
                t.err(key, f"required when pool = {pool!r}")
        elif t.has(key):
            kinds = [k for k, keys in _POOL_KIND_KEYS.items() if key in keys]
            where = f"pool = {kinds[0]!r}" if kinds else "pool_family, on a member plan of a stacked pool"
            t.err(key, f"only used when {where} (this plan's pool is {pool!r})")


def _load_pool_tiers(t: _Table) -> tuple[PoolTier, ...]:
    """``[[pool_tiers]]`` (amount, fee): strictly ascending amounts; a larger tier never costs less (else the
    smaller one would never be the cheapest that covers)."""
    tiers: list[PoolTier] = []
    for i, raw in enumerate(t.array_of_tables("pool_tiers")):
        tt = _Table(t.errs, t.owner, f"pool_tiers[{i}].", raw, ("amount", "fee"))
        if not tt.ok:
            continue
        tier = PoolTier(tt.get_int("amount", minimum=1), tt.get_int("fee", minimum=0))
        if tiers and tier.amount <= tiers[-1].amount:
            tt.err("amount", f"must be above the previous tier's ({tiers[-1].amount})")
        elif tiers and tier.fee < tiers[-1].fee:
            tt.err("fee", f"must be at least the previous tier's ({tiers[-1].fee}): a larger tier never costs less")
        tiers.append(tier)
    if t.has("pool_tiers") and not tiers:
        t.err("pool_tiers", "must name at least one tier")
    return tuple(tiers)


def _check_pool_families(errs: _Errors, plans: Mapping[str, Plan | None]) -> None:
    """A stacked pool's family: the plans whose lines bring their contribution to it. Every member plan's family
    has a stacked pool plan, and the stacked plans of a family agree on its unit and currency."""
    pools: dict[str, Plan] = {}
    for name, plan in plans.items():
        if plan is None or plan.pool != "stacked" or plan.pool_family is None:
            continue
        first = pools.setdefault(plan.pool_family, plan)
        if (first.pool_unit, first.currency) != (plan.pool_unit, plan.currency):
            errs.add(
                f"plan {name!r}: pool_family",
                f"family {plan.pool_family!r} is a pool of {first.pool_unit} in {first.currency} (plan "
                f"{first.name!r}), not {plan.pool_unit} in {plan.currency}",
            )
    for name, plan in plans.items():
        if plan is None or plan.pool is not None or plan.pool_family is None:
            continue
        pool = pools.get(plan.pool_family)
        if pool is None:
            errs.add(
                f"plan {name!r}: pool_family", f"no plan has pool = 'stacked' with pool_family = {plan.pool_family!r}"
            )
        elif pool.currency != plan.currency:
            errs.add(f"plan {name!r}: pool_family", f"family {plan.pool_family!r} is priced in {pool.currency}")


_ADDON_KEYS = (
    "price",
    "currency",
    "unit",
    "amount",
    "rating_groups",
    "priority",
    "validity_days",
    "plans",
    "description",
)


def _load_addons(errs: _Errors, raw: Any, plans: Mapping[str, Plan | None], settings: Settings) -> Mapping[str, AddOn]:
    loaded: dict[str, AddOn | None] = _named_tables(
        errs, "addon", raw, lambda n, r: _load_addon(errs, n, r, plans, settings)
    )
    return MappingProxyType({k: v for k, v in loaded.items() if v is not None})


def _load_addon(
    errs: _Errors, name: str, raw: Any, plans: Mapping[str, Plan | None], settings: Settings
) -> AddOn | None:
    """``[addons.<name>]``: a bucket sold for a price (chf.core.addons)."""
    owner = f"addon {name!r}"
    t = _Table(errs, owner, "", raw, _ADDON_KEYS)
    if not t.ok:
        return None
    currency = t.get_str("currency", settings.currency)
    if t.has("currency") and currency and not _CURRENCY_RE.match(currency):
        t.err("currency", f"must be an ISO 4217 code of 3 upper-case letters, got {currency!r}")
    price = t.get_int("price", minimum=0)
    unit = t.get_str("unit", choices=UNIT_TYPES)
    allowance = Allowance(
        name,
        unit,
        t.get_int("amount", minimum=1),
        t.rating_groups("rating_groups"),
        t.get_int("priority", 50),
        False,
        False,
    )
    days = t.get_int("validity_days", minimum=1) if t.has("validity_days") else None
    for_plans: frozenset[str] | None = None
    listed = t.get_list("plans")
    if listed is not None:
        for_plans = frozenset(p for p in listed if isinstance(p, str))
        for i, p in enumerate(listed):
            plan = plans.get(p) if isinstance(p, str) else None
            if plan is None:
                t.err(f"plans[{i}]", f"no plan {p!r}")
            elif plan.currency != currency:
                t.err(f"plans[{i}]", f"plan {p!r} is priced in {plan.currency}, the add-on in {currency}")
        if not listed:
            t.err("plans", "must not be empty (omit it for every plan)")
    description = t.get_str("description", "")
    return AddOn(name, currency, price, allowance, None if days is None else days * 86400, for_plans, description)


def _allowance_lookups(
    allowances: list[Allowance], rating: _Rating
) -> tuple[dict[int, tuple[Allowance, ...]], tuple[Allowance, ...]]:
    """Precomputed `Plan.allowances_for`: the allowances usable per rating group the plan names, and for any
    other rating group (rated by the default tariff)."""
    mentioned: set[int] = set(rating.by_rg)
    for a in allowances:
        mentioned |= a.rating_groups or frozenset()
    by_rg = {rg: _usable_allowances(allowances, rating, rg) for rg in mentioned}
    default = rating.default
    if default is None:
        return by_rg, ()
    return by_rg, tuple(a for a in allowances if a.rating_groups is None and a.unit in (default.unit, "money"))


def _usable_allowances(allowances: list[Allowance], rating: _Rating, rg: int) -> tuple[Allowance, ...]:
    tariff = rating.tariff_for(rg)
    if tariff is None:
        return ()
    return tuple(a for a in allowances if a.covers(rg) and a.unit in (tariff.unit, "money"))


def _named_tables(errs: _Errors, section: str, raw: Any, build: Callable[[str, Any], Any]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errs.add(section, f"must be a table of named entries, got {_tname(raw)}")
        return {}
    out: dict[str, Any] = {}
    for name, sub in raw.items():
        if not _NAME_RE.match(name):
            errs.add(f"{section} {name!r}", "invalid name (letters, digits, '-', '_', '.'; at most 64)")
        out[name] = build(name, sub)
    return out


_PRICE_LIST_KEYS = ("currency", "description", "device_fee", "rating")
_TAX_PROFILE_KEYS = ("prices", "rate", "rates", "description")
_TAX_RULE_KEYS = ("zones", "rating_groups", "rate")
_RATE_RE = re.compile(r"^(0|[1-9][0-9]{0,2})(\.[0-9]{1,4})?%$")


def _load_price_list(
    errs: _Errors, name: str, raw: Any, tariffs: Mapping[str, Tariff | None], settings: Settings
) -> PriceList | None:
    """``[price_lists.<name>]``: a tenant's prices for the account below it (chf.core.wholesale)."""
    t = _Table(errs, f"price list {name!r}", "", raw, _PRICE_LIST_KEYS)
    if not t.ok:
        return None
    currency = t.get_str("currency", settings.currency)
    if t.has("currency") and currency and not _CURRENCY_RE.match(currency):
        t.err("currency", f"must be an ISO 4217 code of 3 upper-case letters, got {currency!r}")
    description = t.get_str("description", "")
    device_fee = t.get_int("device_fee", 0, minimum=0)
    rating = _load_rating(t, tariffs)
    for key, tariff in [*((str(rg), tr) for rg, tr in rating.by_rg.items()), ("default", rating.default)]:
        if tariff is not None and tariff.tiers:
            # Tiers count a line's usage in its plan period; a price list charges the account above, which has none.
            t.err("", f"tariff {tariff.name!r} has tiers; a price list's tariffs are flat", f"rating.{key}")
    return PriceList(name, currency, MappingProxyType(rating.by_rg), rating.default, device_fee, description)


def _parse_rate(t: _Table, key: str) -> int:
    """A tax rate "19%" / "7.7%" (at most 100 %, 4 decimals) as parts per million of the net amount."""
    v = t.get_str(key)
    m = _RATE_RE.match(v) if v else None
    if m is None or int(m.group(1)) > 100 or (int(m.group(1)) == 100 and (m.group(2) or ".0").strip(".0")):
        if v:
            t.err(key, f'must be a percentage such as "19%" or "7.7%" (0..100, at most 4 decimals), got {v!r}')
        return 0
    return int(m.group(1)) * 10_000 + int((m.group(2) or ".")[1:].ljust(4, "0"))


def _load_tax_profile(errs: _Errors, name: str, raw: Any, known_zones: frozenset[str]) -> TaxProfile | None:
    """``[tax_profiles.<name>]``: rates by jurisdiction (zone) and service (rating group), prices net or gross."""
    owner = f"tax profile {name!r}"
    t = _Table(errs, owner, "", raw, _TAX_PROFILE_KEYS)
    if not t.ok:
        return None
    prices = t.get_str("prices", choices=("net", "gross"))
    rate = _parse_rate(t, "rate")
    rules = []
    for i, rule_raw in enumerate(t.array_of_tables("rates")):
        rt = _Table(errs, owner, f"rates[{i}].", rule_raw, _TAX_RULE_KEYS)
        zones_raw = rt.get_list("zones")
        zones = None
        if zones_raw is not None:
            zones = frozenset(z for z in zones_raw if isinstance(z, str))
            unknown = [z for z in zones_raw if z not in known_zones]
            if unknown or not zones_raw:
                rt.err("zones", f"must list known zones (unknown: {unknown})" if unknown else "must not be empty")
        rules.append(TaxRule(zones, rt.rating_groups("rating_groups"), _parse_rate(rt, "rate")))
    return TaxProfile(name, prices, rate, tuple(rules), t.get_str("description", ""))


def _load_commerce(
    errs: _Errors, doc: dict[str, Any], tariffs: Mapping[str, Tariff | None], settings: Settings, known: frozenset[str]
) -> tuple[Mapping[str, PriceList], Mapping[str, TaxProfile]]:
    """``[price_lists]`` and ``[tax_profiles]`` (the valid ones: the invalid are reported in `errs`)."""
    price_lists: dict[str, PriceList | None] = _named_tables(
        errs, "price list", doc.get("price_lists"), lambda n, r: _load_price_list(errs, n, r, tariffs, settings)
    )
    tax_profiles: dict[str, TaxProfile | None] = _named_tables(
        errs, "tax profile", doc.get("tax_profiles"), lambda n, r: _load_tax_profile(errs, n, r, known)
    )
    return (
        MappingProxyType({k: v for k, v in price_lists.items() if v is not None}),
        MappingProxyType({k: v for k, v in tax_profiles.items() if v is not None}),
    )


_TOP_KEYS = ("settings", "grants", "zones", "tariffs", "plans", "addons", "price_lists", "tax_profiles")


def _check_zones(errs: _Errors, plans: Mapping[str, Plan | None], known: frozenset[str], home: str) -> None:
    """The zones plans' allowances and split-billing rules name exist (chf.core.zones), once every zone is
    known."""
    for name, plan in plans.items():
        if plan is not None:
            for where, msg in [*check_plan_zones(plan, known, home), *check_split_zones(plan, known)]:
                errs.add(_fmt_where(f"plan {name!r}", where), msg)


_SPLIT_KEYS = ("name", "payer", "apn", "rating_groups", "zones", "networks", "rat", "days", "from", "to")


def _load_split(errs: _Errors, owner: str, t: _Table, rating: _Rating) -> list[SplitRule]:
    """``[[split]]``: split-billing rules, in the order they are tried (chf.core.split)."""
    rules: list[SplitRule] = []
    for i, raw in enumerate(t.array_of_tables("split")):
        st = _Table(errs, owner, f"split[{i}].", raw, _SPLIT_KEYS)
        if not st.ok:
            continue
        payer = st.get_str("payer")
        if payer and payer != PARENT and not (payer.startswith(ACCOUNT_PREFIX) and len(payer) > len(ACCOUNT_PREFIX)):
            st.err("payer", f"must be {PARENT!r} or 'account:<account id>', got {payer!r}")
        window = None
        if any(st.has(k) for k in ("days", "from", "to")):
            st.data.setdefault("price", 0)  # a time window is a band without a price
            window = _load_band(st)
        rules.append(
            SplitRule(
                payer=payer,
                apns=_lower_names(st, "apn"),
                rating_groups=st.rating_groups("rating_groups"),
                zones=_zone_names(st, "zones"),
                networks=_lower_names(st, "networks"),
                rats=_lower_names(st, "rat"),
                window=window,
                name=st.get_str("name", f"split[{i}]"),
            )
        )
    return rules


def _lower_names(t: _Table, key: str) -> frozenset[str] | None:
    names = _zone_names(t, key)
    return frozenset(n.lower() for n in names) if names is not None else None


def parse_catalogue(text: str, source: str = "catalogue.toml") -> Catalogue:
    """Parse and validate catalogue TOML ``text``; ``source`` names the file in error messages."""
    errs = _Errors(source)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError([f"{source}: TOML syntax error: {exc}"]) from None
    for key in doc:
        if key not in _TOP_KEYS:
            hint = difflib.get_close_matches(key, _TOP_KEYS, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else f"; allowed: {', '.join(_TOP_KEYS)}"
            errs.add("", f"unknown top-level key {key!r}{extra}")
    if "settings" not in doc:
        errs.add("settings", "required table [settings] is missing")
    settings, _ = _load_settings(errs, doc.get("settings", {}))
    grants, grants_by_rg = _load_grants(errs, doc.get("grants"))
    zones = _load_zones(errs, doc.get("zones"))
    known = frozenset(zones) | {z for z in (settings.home_zone, settings.default_zone) if z}
    if settings.home_zone and settings.home_zone == settings.default_zone:
        errs.add("settings: default_zone", "must differ from home_zone (unlisted networks must not count as home)")

    tariffs: dict[str, Tariff | None] = _named_tables(
        errs, "tariff", doc.get("tariffs"), lambda n, r: _load_tariff(errs, n, r, known)
    )
    plans: dict[str, Plan | None] = _named_tables(
        errs, "plan", doc.get("plans"), lambda n, r: _load_plan(errs, n, r, tariffs, settings)
    )
    if not plans and "plans" in doc:
        errs.add("plans", "no plans defined")
    _check_zones(errs, plans, known, settings.home_zone)
    _check_pool_families(errs, plans)
    addons = _load_addons(errs, doc.get("addons"), plans, settings)
    price_lists, tax_profiles = _load_commerce(errs, doc, tariffs, settings, known)

    effective = _load_effective(errs, doc.get("settings"), settings.timezone)
    if errs.items:
        raise CatalogueError(errs.items)

    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    zone_by_network = {net: z for z, nets in zones.items() for net in nets}
    return Catalogue(
        settings=settings,
        grants=grants,
        plans=MappingProxyType({k: v for k, v in plans.items() if v is not None}),
        tariffs=MappingProxyType({k: v for k, v in tariffs.items() if v is not None}),
        zones=MappingProxyType(zones),
        source=source,
        digest=digest,
        effective=effective,
        version=digest[:VERSION_DIGITS],
        addons=addons,
        price_lists=price_lists,
        tax_profiles=tax_profiles,
        _zone_by_network=MappingProxyType(zone_by_network),
        _grants_by_rg=MappingProxyType(grants_by_rg),
    )


def load_catalogue(path: str | os.PathLike[str]) -> Catalogue:
    """Read, parse and validate a catalogue file. Errors name the file by its base name."""
    source = os.path.basename(os.fspath(path))
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise CatalogueError([f"{source}: cannot read: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CatalogueError([f"{source}: not valid UTF-8: {exc}"]) from None
    return parse_catalogue(text, source)


def check_replacement(running: Catalogue, new: Catalogue) -> None:
    """Refuse a catalogue that would replace `running` (a reload) if a plan or a price list of both changes
    currency: the lines and accounts on it hold money in the old one, and their prices would be relabelled
    (README, "Currencies and reused numbers")."""
    errors = [
        f"{new.source}: plan {name!r}: currency: was {plan.currency}, now {new.plans[name].currency}; a plan keeps "
        "its currency (give a plan in another currency another name)"
        for name, plan in running.plans.items()
        if name in new.plans and new.plans[name].currency != plan.currency
    ]
    errors += [  # the accounts paying by a price list hold money in its currency, as a plan's do
        f"{new.source}: price list {name!r}: currency: was {price_list.currency}, now "
        f"{new.price_lists[name].currency}; a price list keeps its currency (give one in another currency another "
        "name)"
        for name, price_list in running.price_lists.items()
        if name in new.price_lists and new.price_lists[name].currency != price_list.currency
    ]
    if errors:
        raise CatalogueError(errors)
