"""`chf report usage|revenue|margin --from DATE --to DATE [--by plan|tenant|account]`: usage, revenue and margins
from the spool.

Both reports read the store's event spool (every rated and audit event, in sequence order) in one pass, and
group what falls between --from and --to (UTC days, both inclusive) by tenant (default), account or plan.
The plan of an event is the plan the line (or else its account) was on when the event happened, followed
through the spool's plan changes; a line whose plan change is no longer in the spool counts under its current
plan. Money is integer micro-units, shown with the currency; nothing is rounded through a float.

usage
    Units used by unit type (bytes, seconds, events, money) and rated usage events; charges for usage;
    active lines (lines with at least one usage event); allowance utilisation per allowance name: units
    granted in the period (plan renewals, bonuses, pool growth and top-offs, rollovers, goodwill buckets,
    add-ons, positive bucket adjustments) against the units consumed from those same buckets by usage up to --to.

revenue
    Per currency: usage charges, fees (recurring plan fees, adaptive pool tiers billed at a period's close,
    add-on prices), refunds (negative), wholesale charges to the accounts below (B2B2B: what a reseller charges
    its enterprises, an operator its resellers), revenue = usage + fees + refunds + wholesale; wallet
    adjustments are shown apart and not counted as revenue (they are corrections). Active lines are lines with a
    usage event or a fee of their own in the period (a fee paid by an account for its shared plan names no
    line); ARPU = revenue / active lines, rounded half to even to a micro-unit. Revenue is gross; its net and tax
    are the totals of the events' own (an event without a tax profile: tax 0).

margin
    Per group (a reseller, by tenant) and currency: sales (the revenue above), cost (the wholesale charges the
    level above charged for the group's customers' usage: the events whose `customer` is of the group) and
    margin = sales - cost. Currencies are never converted: a reseller that sells in USD and buys in EUR has a
    USD row and an EUR row.

Both end with the usage not yet exported: for each exporter cursor, the events after it (all kinds) and the
usage events among them by unit type, with their charges, whatever their day. Without any cursor the report
says that no exporter has delivered anything.

On a terminal, and without --json, a progress bar of the pass over the spool is drawn on stderr (--progress draws
it anyway).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from chf.runtime.storage import Store
from tools.cli_env import Env
from tools.progress import Progress, wanted
from tools.reconcile import DAY, ReconcileError, day_text, parse_day

GROUPINGS = ("tenant", "account", "plan")
UNITS = ("bytes", "seconds", "events", "money")
# Events whose positive bucket impacts grant allowance units.
GRANT_KINDS = frozenset(
    {"renewal", "bonus", "pool_resize", "bucket_grant", "expiry", "adjustment", "pool_topoff", "addon"}
)
NO_PLAN = "(no plan)"


def money(amount: int, currency: str = "") -> str:
    """Micro-units as a decimal with at least two places: 24990000 -> "24.99", 1 -> "0.000001"."""
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 1_000_000)
    digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}{whole}.{digits}" + (f" {currency}" if currency else "")


def percent(part: int, whole: int) -> str | None:
    """part/whole as a percentage with two decimals, rounded half up, exact in integers."""
    if whole <= 0:
        return None
    hundredths = (part * 10_000 * 2 + whole) // (2 * whole)
    return f"{hundredths // 100}.{hundredths % 100:02d}"


def divide_half_even(numerator: int, denominator: int) -> int:
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


@dataclass(slots=True)
class Group:
    used: dict[str, int] = field(default_factory=lambda: dict.fromkeys(UNITS, 0))
    usage_events: dict[str, int] = field(default_factory=lambda: dict.fromkeys(UNITS, 0))
    charges: dict[str, int] = field(default_factory=dict)  # per currency
    fees: dict[str, int] = field(default_factory=dict)
    refunds: dict[str, int] = field(default_factory=dict)
    adjustments: dict[str, int] = field(default_factory=dict)
    wholesale: dict[str, int] = field(default_factory=dict)  # charged to the group's accounts for those below
    costs: dict[str, int] = field(default_factory=dict)  # charged to the level above for the group's customers
    net: dict[str, int] = field(default_factory=dict)  # of the revenue (chf.core.tax)
    tax: dict[str, int] = field(default_factory=dict)
    usage_lines: set[int] = field(default_factory=set)
    revenue_lines: dict[str, set[int]] = field(default_factory=dict)  # per currency
    allowances: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (name, unit) -> [granted, used]


@dataclass(slots=True)
class Backlog:
    name: str
    cursor: int
    events: int = 0
    usage_events: int = 0
    used: dict[str, int] = field(default_factory=lambda: dict.fromkeys(UNITS, 0))
    charges: dict[str, int] = field(default_factory=dict)


def _add(totals: dict[str, int], key: str, amount: int) -> None:
    totals[key] = totals.get(key, 0) + amount


class _Plans:
    """The plan of each line and account as of the event being read, from the spool's plan changes."""

    def __init__(self, txn: Any) -> None:
        self.txn = txn
        self.line: dict[int, str | None] = {}
        self.account: dict[str, str | None] = {}

    def follow(self, event: dict[str, Any]) -> None:
        if event.get("kind") != "plan_change":
            return
        if event.get("subscriber"):
            self.line[event["subscriber"]] = event.get("plan")
        else:
            self.account[event.get("account", "")] = event.get("plan")

    def of(self, event: dict[str, Any]) -> str:
        line = event.get("subscriber")
        account = event.get("account") or ""
        if line:
            if line not in self.line:
                sub = self.txn.get_subscriber(line)
                self.line[line] = sub.plan if sub is not None else None
            if self.line[line]:
                return str(self.line[line])
        if account not in self.account:
            acct = self.txn.get_account(account)
            self.account[account] = acct.plan if acct is not None else None
        return str(self.account[account] or NO_PLAN)


def build_report(store: Store, day_from: int, day_to: int, by: str, show_progress: bool = False) -> dict[str, Any]:
    """Everything both reports show, as plain data (ints and strings)."""
    if by not in GROUPINGS:
        raise ReconcileError(f"--by: must be one of {', '.join(GROUPINGS)}, got {by!r}")
    first = day_from * DAY
    stop = (day_to + 1) * DAY
    groups: dict[str, Group] = {}
    granted_in_period: dict[str, tuple[str, tuple[str, str]]] = {}  # bucket balance id -> (group, allowance)
    with store.read() as txn:
        cursors = sorted(txn.cursors())
        backlogs = [Backlog(name, seq) for name, seq in cursors]
        oldest_cursor = min((seq for _, seq in cursors), default=None)
        last_seq = txn.last_event_seq()
        plans = _Plans(txn)
        progress = Progress(last_seq, show_progress, unit="events", label="spool")
        scanned = 0
        for event in txn.events():
            scanned += 1
            if not scanned & 4095:
                progress.update(event.get("seq", 0), scanned)
            kind = event.get("kind")
            if kind == "plan_change":
                plans.follow(event)
            if oldest_cursor is not None and event.get("seq", 0) > oldest_cursor:
                _backlog(backlogs, event)
            when = event.get("time")
            if not isinstance(when, int) or not first <= when < stop:
                continue
            if by == "plan":
                name = plans.of(event)
            elif by == "account":  # the paying account: a split-billed usage's payer (chf/core/split.py)
                name = str(event.get("payer") or event.get("account") or "(none)")
            else:
                name = str(event.get(by) or "(none)")
            group = groups.get(name)
            if group is None:
                group = groups[name] = Group()
            _tally(group, name, event, granted_in_period, groups)
            if kind == "wholesale":
                _add(_cost_group(groups, by, name, event).costs, str(event.get("currency") or ""), _charge(event))
        progress.update(last_seq, scanned, final=True)
    out_groups = [_group_dict(name, groups[name]) for name in sorted(groups)]
    return {
        "from": day_text(day_from),
        "to": day_text(day_to),
        "by": by,
        "groups": out_groups,
        "unexported": _backlog_dict(backlogs, last_seq),
    }


def _charge(event: dict[str, Any]) -> int:
    return int(event.get("charge", 0) or 0)


def _cost_group(groups: dict[str, Group], by: str, name: str, event: dict[str, Any]) -> Group:
    """The group a wholesale charge is a cost of: that of the customer it was charged for (by plan: the line's)."""
    if by == "tenant":
        name = str(event.get("customer_tenant") or "(none)")
    elif by == "account":
        name = str(event.get("customer") or "(none)")
    group = groups.get(name)
    if group is None:
        group = groups[name] = Group()
    return group


_REVENUE_KINDS = frozenset({"usage", "renewal", "refund", "wholesale"})


def _tally_money(group: Group, event: dict[str, Any], currency: str) -> None:
    """Wholesale charges, and the net and tax of every charge (no tax profile: net = gross, tax 0)."""
    if event.get("kind") not in _REVENUE_KINDS:
        return
    charge = _charge(event)
    if event.get("kind") == "wholesale":
        _add(group.wholesale, currency, charge)
    _add(group.net, currency, int(event.get("net", charge)))
    _add(group.tax, currency, int(event.get("tax", 0)))


def _tally(
    group: Group,
    name: str,
    event: dict[str, Any],
    granted_in_period: dict[str, tuple[str, tuple[str, str]]],
    groups: dict[str, Group],
) -> None:
    kind = event.get("kind")
    currency = str(event.get("currency") or "")
    line = event.get("subscriber")
    _tally_money(group, event, currency)
    if kind == "usage":
        unit = event.get("unit")
        if unit in group.used:
            group.used[unit] += int(event.get("used", 0))
            group.usage_events[unit] += 1
        _add(group.charges, currency, int(event.get("charge", 0)))
        if line:
            group.usage_lines.add(line)
            group.revenue_lines.setdefault(currency, set()).add(line)
        for impact in event.get("impacts", ()):
            grant = granted_in_period.get(impact.get("balance", ""))
            delta = int(impact.get("delta", 0))
            if grant is not None and delta < 0:
                owner, allowance = grant
                groups[owner].allowances[allowance][1] += -delta
    elif kind in ("renewal", "pool_tier", "addon"):
        fee = int(event.get("charge", 0))
        if fee:
            _add(group.fees, currency, fee)
            if line:
                group.revenue_lines.setdefault(currency, set()).add(line)
    elif kind == "refund":
        _add(group.refunds, currency, int(event.get("charge", 0)))
    elif kind == "adjustment" and not any(":bucket:" in i.get("balance", "") for i in event.get("impacts", ())):
        _add(group.adjustments, currency, int(event.get("amount", 0)))
    if kind in GRANT_KINDS:
        for impact in event.get("impacts", ()):
            balance = impact.get("balance", "")
            delta = int(impact.get("delta", 0))
            if ":bucket:" not in balance or delta <= 0:
                continue
            allowance = (str(impact.get("name") or "bucket " + balance.rsplit(":", 1)[-1]), str(impact.get("unit")))
            granted_in_period[balance] = (name, allowance)
            totals = group.allowances.setdefault(allowance, [0, 0])
            totals[0] += delta


def _backlog(backlogs: list[Backlog], event: dict[str, Any]) -> None:
    seq = event.get("seq", 0)
    for b in backlogs:
        if seq <= b.cursor:
            continue
        b.events += 1
        if event.get("kind") == "usage":
            b.usage_events += 1
            unit = event.get("unit")
            if unit in b.used:
                b.used[unit] += int(event.get("used", 0))
            _add(b.charges, str(event.get("currency") or ""), int(event.get("charge", 0)))


def _group_dict(name: str, g: Group) -> dict[str, Any]:
    revenue: dict[str, int] = {}
    for totals in (g.charges, g.fees, g.refunds, g.wholesale):
        for currency, amount in totals.items():
            _add(revenue, currency, amount)
    arpu: dict[str, int | None] = {}
    active: dict[str, int] = {}
    for currency, amount in revenue.items():
        lines = len(g.revenue_lines.get(currency, ()))
        active[currency] = lines
        arpu[currency] = divide_half_even(amount, lines) if lines else None
    return {
        "group": name,
        "usage": {u: {"used": g.used[u], "events": g.usage_events[u]} for u in UNITS},
        "usage_lines": len(g.usage_lines),
        "charges": dict(sorted(g.charges.items())),
        "fees": dict(sorted(g.fees.items())),
        "refunds": dict(sorted(g.refunds.items())),
        "adjustments": dict(sorted(g.adjustments.items())),
        "wholesale": dict(sorted(g.wholesale.items())),
        "revenue": dict(sorted(revenue.items())),
        "net": dict(sorted(g.net.items())),
        "tax": dict(sorted(g.tax.items())),
        "costs": dict(sorted(g.costs.items())),
        "margin": {c: revenue.get(c, 0) - g.costs.get(c, 0) for c in sorted(revenue.keys() | g.costs.keys())},
        "active_lines": dict(sorted(active.items())),
        "arpu": dict(sorted(arpu.items())),
        "allowances": [
            {
                "name": allowance,
                "unit": unit,
                "granted": granted,
                "consumed": consumed,
                "utilisation_percent": percent(consumed, granted),
            }
            for (allowance, unit), (granted, consumed) in sorted(g.allowances.items())
        ],
    }


def _backlog_dict(backlogs: list[Backlog], last_seq: int) -> dict[str, Any]:
    return {
        "last_event": last_seq,
        "note": None if backlogs else "no exporter cursor in the store: no exporter has delivered any event",
        "cursors": [
            {
                "name": b.name,
                "cursor": b.cursor,
                "pending_events": b.events,
                "pending_usage_events": b.usage_events,
                "pending_used": dict(b.used),
                "pending_charges": dict(sorted(b.charges.items())),
            }
            for b in backlogs
        ],
    }


# ----------------------------------------------------------------------------------------------------------------------
# Text output
# ----------------------------------------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> list[str]:
    """Columns padded to their widest cell: the first `text_columns` aligned left, numbers right."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def render(cells: list[str]) -> str:
        return "  " + "  ".join(
            c.ljust(w) if i < text_columns else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [render(header)] + [render(row) for row in rows]


def _money_cell(totals: dict[str, Any]) -> str:
    return ", ".join(money(v, c) if v is not None else f"- {c}" for c, v in totals.items()) or "0.00"


def usage_text(report: dict[str, Any]) -> str:
    lines = [f"usage {report['from']} .. {report['to']} (UTC days) by {report['by']}", ""]
    rows = []
    for g in report["groups"]:
        u = g["usage"]
        rows.append(
            [
                g["group"],
                f"{u['bytes']['used']:,}",
                f"{u['seconds']['used']:,}",
                f"{u['events']['used']:,}",
                str(sum(v["events"] for v in u.values())),
                str(g["usage_lines"]),
                _money_cell(g["charges"]),
            ]
        )
    lines += _table([report["by"], "bytes", "seconds", "events", "rated", "lines", "charges"], rows)
    allowance_rows = [
        [g["group"], a["name"], a["unit"], f"{a['granted']:,}", f"{a['consumed']:,}", (a["utilisation_percent"] or "-")]
        for g in report["groups"]
        for a in g["allowances"]
    ]
    lines += ["", "allowance utilisation (granted in the period, consumed from those buckets)"]
    if allowance_rows:
        header = [report["by"], "allowance", "unit", "granted", "consumed", "used %"]
        lines += _table(header, allowance_rows, text_columns=3)
    else:
        lines.append("  no allowance was granted in the period")
    return "\n".join([*lines, "", *backlog_text(report["unexported"])])


def revenue_text(report: dict[str, Any]) -> str:
    lines = [f"revenue {report['from']} .. {report['to']} (UTC days) by {report['by']}", ""]
    rows = []
    for g in report["groups"]:
        for currency in sorted(g["revenue"].keys() | g["adjustments"].keys()):
            rows.append(
                [
                    g["group"],
                    currency,
                    money(g["charges"].get(currency, 0)),
                    money(g["fees"].get(currency, 0)),
                    money(g["refunds"].get(currency, 0)),
                    money(g["revenue"].get(currency, 0)),
                    str(g["active_lines"].get(currency, 0)),
                    money(g["arpu"][currency]) if g["arpu"].get(currency) is not None else "-",
                    money(g["adjustments"].get(currency, 0)),
                ]
            )
    header = [report["by"], "cur", "usage", "fees", "refunds", "revenue", "lines", "ARPU", "adjustments"]
    if any(g["wholesale"] for g in report["groups"]):
        # B2B2B: the wholesale charges as a column of their own, before the revenue that includes them.
        header[4:4] = ["wholesale"]
        for row in rows:
            group = next(g for g in report["groups"] if g["group"] == row[0])
            row[4:4] = [money(group["wholesale"].get(row[1], 0))]
    lines += _table(header, rows, text_columns=2) if rows else ["  no revenue in the period"]
    lines += tax_text(report)
    return "\n".join([*lines, "", *backlog_text(report["unexported"])])


def tax_text(report: dict[str, Any]) -> list[str]:
    """The net and tax of the revenue, when any event was taxed (chf.core.tax)."""
    rows = [
        [g["group"], c, money(g["net"].get(c, 0)), money(g["tax"].get(c, 0)), money(g["revenue"].get(c, 0))]
        for g in report["groups"]
        for c in sorted(g["revenue"])
    ]
    if not any(g["tax"].get(c) for g in report["groups"] for c in g["tax"]):
        return []
    return ["", "revenue net and tax", *_table([report["by"], "cur", "net", "tax", "gross"], rows, text_columns=2)]


def margin_text(report: dict[str, Any]) -> str:
    lines = [f"margin {report['from']} .. {report['to']} (UTC days) by {report['by']}", ""]
    rows = [
        [g["group"], c, money(g["revenue"].get(c, 0)), money(g["costs"].get(c, 0)), money(m)]
        for g in report["groups"]
        for c, m in g["margin"].items()
    ]
    header = [report["by"], "cur", "sales", "cost", "margin"]
    lines += _table(header, rows, text_columns=2) if rows else ["  no sales or costs in the period"]
    return "\n".join([*lines, "", *backlog_text(report["unexported"])])


def backlog_text(unexported: dict[str, Any]) -> list[str]:
    lines = [f"not yet exported (last event {unexported['last_event']})"]
    if unexported["note"]:
        return [*lines, "  " + unexported["note"]]
    rows = [
        [
            c["name"],
            str(c["cursor"]),
            str(c["pending_events"]),
            str(c["pending_usage_events"]),
            f"{c['pending_used']['bytes']:,}",
            f"{c['pending_used']['seconds']:,}",
            f"{c['pending_used']['events']:,}",
            _money_cell(c["pending_charges"]),
        ]
        for c in unexported["cursors"]
    ]
    return lines + _table(["exporter", "cursor", "events", "usage", "bytes", "seconds", "events", "charges"], rows)


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------
def cmd_report(env: Env) -> int:
    args = env.args
    try:
        day_from = parse_day(args.date_from, "--from")
        day_to = parse_day(args.date_to, "--to")
        if day_to < day_from:
            raise ReconcileError(f"--to: {args.date_to} is before --from {args.date_from}")
        report = build_report(env.store, day_from, day_to, args.by, wanted(env.json, args.progress))
    except ReconcileError as exc:
        print(f"chf: {exc}", file=sys.stderr)
        return 2
    report["report"] = args.kind
    if env.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        texts = {"usage": usage_text, "revenue": revenue_text, "margin": margin_text}
        print(texts[args.kind](report))
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "report",
        parents=[common],
        help="usage, revenue and margin reports from the event spool",
        description=(__doc__ or "").partition("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", choices=("usage", "revenue", "margin"), help="which report")
    p.add_argument("--from", dest="date_from", required=True, metavar="DATE", help="first UTC day, YYYY-MM-DD")
    p.add_argument("--to", dest="date_to", required=True, metavar="DATE", help="last UTC day (inclusive)")
    p.add_argument("--by", choices=GROUPINGS, default="tenant", help="grouping (default tenant)")
    p.add_argument("--progress", action="store_true", help="progress bar on stderr even when it is not a terminal")
    p.set_defaults(func=cmd_report)
