"""`chf tenant|account|subscriber|catalogue|events`: provisioning, balances, catalogue and the event spool.

Every change goes through a chf.core.provisioning function (which validates and writes the audit events) inside
one durable store transaction; a refused change writes nothing. Errors are `RequestError(field, message)`, which `chf`
prints as `chf: FIELD: MESSAGE` with exit status 2 (bad input) or 1 (not found, conflict).

"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from chf.core import provisioning
from chf.core.addons import buy_addon
from chf.core.catalogue import AddOn, Catalogue, CatalogueError, Plan
from chf.core.engine import Engine
from chf.core.model import OpResult, RequestError
from chf.core.provisioning import LINE_STATES, PAYMENT_TYPES
from chf.core.versions import CatalogueVersions, changes, load_versions
from chf.runtime.storage import Txn
from tools.cli_env import EXIT_OK, EXIT_USAGE, Env, actor
from tools.cli_format import fields, money, parse_money, parse_units, quantity, table, when
from tools.cli_import import register_import


def change(env: Env, fn: Callable[[Txn, Engine, int], OpResult]) -> OpResult:
    """Run one chf.core.provisioning operation in its own durable transaction."""
    engine = env.engine
    now = env.now()
    return env.store.write(lambda txn: fn(txn, engine, now))


def need_text(field: str, value: str | None) -> str:
    if value is None or not value.strip():
        raise RequestError(field, "must not be empty")
    return value


# ----------------------------------------------------------------------------------------------------------------------
# tenant
# ----------------------------------------------------------------------------------------------------------------------
def cmd_tenant_create(env: Env) -> int:
    a = env.args
    result = change(
        env,
        lambda txn, engine, now: provisioning.create_tenant(
            txn,
            a.id,
            a.name or a.id,
            a.currency,
            now,
            parent=a.parent,
            tax_profile=a.tax_profile,
            catalogue=engine.catalogue,
        ),
    )
    t = result.value
    env.out(t, f"tenant {t['id']} created ({t['name']}, {t['currency']})")
    return EXIT_OK


def cmd_tenant_list(env: Env) -> int:
    with env.store.read() as txn:
        tenants = [t.as_dict() for t in txn.tenants()]
    env.out(tenants, lambda: table([[t["id"], t["name"], t["currency"]] for t in tenants], ["ID", "NAME", "CURRENCY"]))
    return EXIT_OK


# ----------------------------------------------------------------------------------------------------------------------
# account
# ----------------------------------------------------------------------------------------------------------------------
def cmd_account_create(env: Env) -> int:
    a = env.args
    # Parsed before the store is opened: a bad amount must not even create the store.
    balance = parse_money("balance", a.balance, allow_negative=True) if a.balance is not None else 0
    credit_limit = parse_money("credit_limit", a.credit_limit) if a.credit_limit is not None else 0
    who = actor()

    def run(txn: Txn, engine: Engine, now: int) -> OpResult:
        return provisioning.create_account(
            txn,
            engine,
            account_id=a.id,
            tenant=a.tenant,
            payment=a.payment,
            now=now,
            currency=a.currency,
            balance=balance,
            credit_limit=credit_limit,
            cycle_day=a.cycle_day,
            parent=a.parent,
            plan=a.plan,
            actor=who,
            price_list=a.price_list,
            tax_profile=a.tax_profile,
        )

    acct = change(env, run).value
    env.out(acct, lambda: f"account {acct['id']} created\n" + account_text(acct))
    return EXIT_OK


def account_text(acct: dict[str, Any]) -> str:
    cur = acct["currency"]
    return fields(
        [
            ("account", acct["id"]),
            ("tenant", acct["tenant"]),
            ("payment", acct["payment"]),
            ("wallet", money(acct["balance"], cur)),
            ("reserved", money(acct["reserved"], cur)),
            ("available", money(acct["available"], cur)),
            ("credit limit", money(acct["credit_limit"], cur)),
            ("cycle day", acct["cycle_day"]),
            ("parent", acct["parent"]),
            ("plan", acct["plan"]),
            ("active lines", acct["active_lines"]),
        ]
        # B2B2B and tax (README, "Commerce models"): shown when set.
        + [
            (name, acct[key])
            for name, key in (("price list", "price_list"), ("tax profile", "tax_profile"))
            if acct.get(key)
        ]
    )


def buckets_text(buckets: list[dict[str, Any]], currency: str | None) -> str:
    rows = [
        [
            b["id"],
            b["name"],
            b["kind"],
            quantity(b["remaining"], b["unit"], currency),
            quantity(b["reserved"], b["unit"], currency),
            quantity(b["initial"], b["unit"], currency),
            ",".join(str(rg) for rg in b["rating_groups"]) if b["rating_groups"] is not None else "all",
            _zones_text(b, currency),
            when(b["valid_to"]),
        ]
        for b in buckets
    ]
    headers = ["BUCKET", "NAME", "KIND", "REMAINING", "RESERVED", "INITIAL", "RATING GROUPS", "ZONES", "VALID TO"]
    return table(rows, headers)


def _zones_text(bucket: dict[str, Any], currency: str | None) -> str:
    """Where a bucket pays (chf/core/zones.py), and what its fair use leaves to roaming."""
    zones = bucket.get("zones")
    text = ",".join(zones) if zones else "all"
    left = bucket.get("fair_use_left")
    if left is not None:
        text += f" (roaming: {quantity(left, bucket['unit'], currency)} left)"
    return text


ACCOUNT_LINES_SHOWN = 100  # an IoT account can hold a million lines: show the first ones and the count


def cmd_account_show(env: Env) -> int:
    account_id = provisioning.check_id("account", env.args.id)
    now = env.now()
    with env.store.read() as txn:
        account = txn.get_account(account_id)
        if account is None:
            raise provisioning.NotFound("account", f"no account {account_id!r}")
        view = account.as_dict()
        bs = txn.get_account_balances(account_id)
        view["shared_buckets"] = [b.as_dict() for b in bs.buckets if b.valid_to > now] if bs is not None else []
        view["period"] = (
            {"plan": bs.plan, "start": bs.period_start, "end": bs.period_end, "renewal_pending": bs.renewal_pending}
            if bs is not None and bs.plan is not None
            else None
        )
        lines: list[dict[str, Any]] = []
        count = 0
        for line_id in txn.lines_of_account(account_id):
            count += 1
            if len(lines) < env.args.lines:
                sub = txn.get_subscriber(line_id)
                if sub is not None:
                    lines.append(
                        {"id": sub.id, "imsi": sub.imsi, "msisdn": sub.msisdn, "state": sub.state, "plan": sub.plan}
                    )
        view["line_count"] = count
        view["lines"] = lines
        view["children"] = [a.id for a in txn.accounts() if a.parent == account_id] if env.args.children else None

    def text() -> str:
        out = [account_text(view), f"lines:        {count}"]
        if view["period"] is not None:
            p = view["period"]
            pending = " (allowances held back: fee unpaid or line suspended)" if p["renewal_pending"] else ""
            out.append(f"period:       {when(p['start'])} .. {when(p['end'])}{pending}")
        if view["shared_buckets"]:
            out += ["", "shared buckets:", buckets_text(view["shared_buckets"], account.currency)]
        if lines:
            out += ["", f"lines (first {len(lines)} of {count}):" if count > len(lines) else "lines:"]
            out.append(
                table(
                    [[f"#{x['id']}", x["imsi"], x["msisdn"], x["state"], x["plan"]] for x in lines],
                    ["LINE", "IMSI", "MSISDN", "STATE", "PLAN"],
                )
            )
        return "\n".join(out)

    env.out(view, text)
    return EXIT_OK


def cmd_account_topup(env: Env) -> int:
    a = env.args
    amount = parse_money("amount", a.amount, allow_zero=False)
    reason = need_text("reason", a.reason)
    who = actor()
    result = change(
        env,
        lambda txn, engine, now: provisioning.topup(
            txn, engine, a.id, amount, now=now, actor=who, reason=reason, idempotency_key=a.idempotency_key
        ),
    )
    acct = result.value
    note = " (repeated idempotency key: nothing changed)" if result.duplicate else ""
    out = {"account": acct, "duplicate": result.duplicate, "sessions_to_reauthorise": len(result.signals)}
    env.out(out, lambda: f"topped up {money(amount, acct['currency'])}{note}\n" + account_text(acct))
    return EXIT_OK


def cmd_account_adjust(env: Env) -> int:
    a = env.args
    reason = need_text("reason", a.reason)
    if (a.line is None) != (a.bucket is None):
        raise RequestError("line" if a.line is None else "bucket", "a bucket adjustment names both --line and --bucket")
    who = actor()
    account_id = provisioning.check_id("account", a.id)
    # A wallet adjustment is money; a bucket adjustment is in the bucket's unit (money buckets: decimal too).
    wallet_amount = parse_money("amount", a.amount, allow_negative=True, allow_zero=False) if a.line is None else 0

    def run(txn: Txn, engine: Engine, now: int) -> OpResult:
        if a.line is None:
            return provisioning.adjust(txn, engine, account_id, wallet_amount, now=now, actor=who, reason=reason)
        sub = provisioning.get_line(txn, a.line)
        bs = txn.get_line_balances(sub.id)
        bucket = bs.bucket(a.bucket) if bs is not None else None
        if bucket is None:
            raise provisioning.NotFound("bucket", f"line #{sub.id} has no bucket {a.bucket}")
        if bucket.unit == "money":
            amount = parse_money("amount", a.amount, allow_negative=True, allow_zero=False)
        else:
            amount = parse_units("amount", a.amount)
        return provisioning.adjust(
            txn, engine, account_id, amount, now=now, actor=who, reason=reason, line_id=sub.id, bucket_id=a.bucket
        )

    value = change(env, run).value
    if a.line is None:
        shown = money(wallet_amount, value["currency"])
        env.out(value, lambda: f"adjusted the wallet by {shown}\n" + account_text(value))
    else:
        env.out(value, lambda: "adjusted bucket\n" + buckets_text([value], None))
    return EXIT_OK


def cmd_account_set_plan(env: Env) -> int:
    a = env.args
    who = actor()
    reason = a.reason or "plan changed"
    result = change(
        env,
        lambda txn, engine, now: provisioning.assign_plan(
            txn, engine, a.plan, now=now, actor=who, reason=reason, account_id=provisioning.check_id("account", a.id)
        ),
    )
    acct = result.value
    env.out(acct, lambda: f"account {acct['id']} is on plan {acct['plan']}\n" + account_text(acct))
    return EXIT_OK


def cmd_account_list(env: Env) -> int:
    with env.store.read() as txn:
        accounts = [x.as_dict() for x in txn.accounts() if env.args.tenant is None or x.tenant == env.args.tenant]
    env.out(
        accounts,
        lambda: table(
            [
                [x["id"], x["tenant"], x["payment"], money(x["balance"], x["currency"]), x["plan"], x["active_lines"]]
                for x in accounts
            ],
            ["ACCOUNT", "TENANT", "PAYMENT", "WALLET", "PLAN", "ACTIVE LINES"],
        ),
    )
    return EXIT_OK


# ----------------------------------------------------------------------------------------------------------------------
# subscriber
# ----------------------------------------------------------------------------------------------------------------------
def line_text(view: dict[str, Any]) -> str:
    acct = view.get("account_detail") or {}
    cur = acct.get("currency")
    out = [
        fields(
            [
                ("line", f"#{view['id']}"),
                ("imsi", view["imsi"]),
                ("msisdn", view["msisdn"]),
                ("iccid", view["iccid"]),
                ("eid", view["eid"]),
                ("state", f"{view['state']} since {when(view['state_since'])}"),
                ("plan", view["plan"] or (f"{acct.get('plan')} (account plan)" if acct.get("plan") else None)),
                ("account", f"{view['account']} ({acct.get('payment')}, tenant {view['tenant']})"),
                ("wallet", money(acct.get("balance"), cur) if acct else None),
                ("available", money(acct.get("available"), cur) if acct else None),
            ]
        )
    ]
    out += identity_history_text(view)
    period = view.get("period")
    if period:
        pending = " (allowances held back: fee unpaid or line suspended)" if period["renewal_pending"] else ""
        out.append(f"period:    {period['plan']} #{period['index']} {when(period['start'])} .. {when(period['end'])}")
        out[-1] += pending
        if period["usage"]:
            out.append("usage:     " + ", ".join(f"rg {rg}: {units}" for rg, units in sorted(period["usage"].items())))
    if view["buckets"]:
        out += ["", "buckets:", buckets_text(view["buckets"], cur)]
    if view.get("shared_buckets"):
        out += ["", "shared buckets (account):", buckets_text(view["shared_buckets"], cur)]
    sessions = view["sessions"]
    out += ["", f"open sessions: {len(sessions)}"]
    if sessions:
        rows = []
        for s in sessions:
            held = ", ".join(
                f"rg {r['rating_group']}: {quantity(r['granted'], r['unit'], cur)}" for r in s["reservations"]
            )
            rows.append([s["key"], s["protocol"], when(s["updated"]), when(s["expires"]), held or "-"])
        out.append(table(rows, ["SESSION", "PROTOCOL", "UPDATED", "EXPIRES", "RESERVED"]))
    return "\n".join(out)


def identity_history_text(view: dict[str, Any]) -> list[str]:
    """The identities a terminated line gave up, and the lines that held this line's identities before it."""
    out = []
    released = view.get("released") or {}
    if released:
        gave_up = ", ".join(f"{kind} {view[kind]} on {when(at)}" for kind, at in released.items())
        out.append(f"released:  {gave_up} (free for other lines)")
    for former in view.get("former_holders") or ():
        kind = former["kind"]
        out.append(f"before:    {kind} {view[kind]} was line #{former['line']}'s until {when(former['until'])}")
    return out


def cmd_subscriber_add(env: Env) -> int:
    a = env.args
    who = actor()
    result = change(
        env,
        lambda txn, engine, now: provisioning.add_line(
            txn,
            engine,
            account=a.account,
            imsi=a.imsi,
            now=now,
            msisdn=a.msisdn,
            iccid=a.iccid,
            eid=a.eid,
            plan=a.plan,
            state=a.state,
            actor=who,
        ),
    )
    sub = result.value
    env.out(sub, lambda: f"line #{sub['id']} added: imsi {sub['imsi']}, account {sub['account']}, {sub['state']}")
    return EXIT_OK


def cmd_subscriber_show(env: Env) -> int:
    with env.store.read() as txn:
        sub = provisioning.get_line(txn, env.args.ref)
        view = provisioning.line_view(txn, env.engine, sub, env.now())
    env.out(view, lambda: line_text(view))
    return EXIT_OK


def cmd_subscriber_find(env: Env) -> int:
    with env.store.read() as txn:
        found = provisioning.identity_lines(txn, env.args.identity)
    rows = [
        [
            x["kind"],
            f"#{x['line']}",
            x["account"],
            x["state"],
            when(x["since"]),
            when(x["until"]) if x["until"] else "now",
        ]
        for x in found
    ]
    env.out(found, lambda: table(rows, ["AS", "LINE", "ACCOUNT", "STATE", "FROM", "UNTIL"]))
    return EXIT_OK


def cmd_subscriber_set_state(env: Env) -> int:
    a = env.args
    reason = need_text("reason", a.reason)
    who = actor()
    result = change(
        env,
        lambda txn, engine, now: provisioning.set_state(txn, engine, a.ref, a.state, now=now, actor=who, reason=reason),
    )
    sub = result.value
    out = {"line": sub, "sessions_to_abort": len(result.signals)}
    note = f"; {len(result.signals)} open session(s) to abort" if result.signals else ""
    env.out(out, lambda: f"line #{sub['id']} is {sub['state']}{note}")
    return EXIT_OK


def cmd_subscriber_move(env: Env) -> int:
    a = env.args
    reason = need_text("reason", a.reason)
    who = actor()
    result = change(
        env,
        lambda txn, engine, now: provisioning.move_line(
            txn, engine, a.ref, a.account, now=now, actor=who, reason=reason
        ),
    )
    sub = result.value
    out = {"line": sub, "sessions_released": len(result.signals)}
    env.out(out, lambda: f"line #{sub['id']} is in account {sub['account']}")
    return EXIT_OK


def cmd_subscriber_set_plan(env: Env) -> int:
    a = env.args
    who = actor()
    reason = a.reason or "plan changed"
    result = change(
        env,
        lambda txn, engine, now: provisioning.assign_plan(
            txn, engine, a.plan, now=now, actor=who, reason=reason, line_ref=a.ref
        ),
    )
    sub = result.value
    env.out(sub, lambda: f"line #{sub['id']} is on plan {sub['plan']}")
    return EXIT_OK


def cmd_subscriber_buy_addon(env: Env) -> int:
    a = env.args
    who = actor()
    reason = a.reason or f"add-on {a.addon}"
    result = change(
        env,
        lambda txn, engine, now: buy_addon(
            txn, engine, a.ref, a.addon, now=now, actor=who, reason=reason, idempotency_key=a.idempotency_key
        ),
    )
    value = result.value
    account = value["account"]
    note = " (repeated idempotency key: nothing changed)" if result.duplicate else ""

    def text() -> str:
        head = f"bought {value['addon']} for {money(value['price'], account['currency'])}{note}"
        return head + "\n" + buckets_text([value["bucket"]], account["currency"]) + "\n" + account_text(account)

    env.out({**value, "duplicate": result.duplicate}, text)
    return EXIT_OK


# ----------------------------------------------------------------------------------------------------------------------
# catalogue
# ----------------------------------------------------------------------------------------------------------------------
def plans_in_use(env: Env) -> dict[str, dict[str, int]]:
    """Plans that accounts and lines of the store are on: per plan, how many in each account currency."""
    used: dict[str, dict[str, int]] = {}
    currency_of: dict[str, str] = {}

    def count(plan: str, currency: str) -> None:
        per_currency = used.setdefault(plan, {})
        per_currency[currency] = per_currency.get(currency, 0) + 1

    with env.store.read() as txn:
        for account in txn.accounts():
            currency_of[account.id] = account.currency
            if account.plan:
                count(account.plan, account.currency)
        for sub in txn.subscribers():
            if sub.plan:
                count(sub.plan, currency_of.get(sub.account, "?"))
    return used


def check_catalogue(env: Env, path: str) -> CatalogueVersions:
    """Validate a catalogue file (or the directory of its versions, chf.core.versions); with --store also check
    that every plan in use is in each version in force now or later, priced in the currency of the accounts on it
    (a plan in another currency would no longer rate them)."""
    versions = load_versions(path)
    if getattr(env.args, "store", False):
        in_use = plans_in_use(env)
        first = versions.at(int(time.time()))[0]
        errors = []
        for catalogue in versions.versions[versions.versions.index(first) :]:
            errors += _plans_in_use_errors(catalogue, in_use)
        if errors:
            raise CatalogueError(errors)
    return versions


def _plans_in_use_errors(catalogue: Catalogue, in_use: dict[str, dict[str, int]]) -> list[str]:
    source = catalogue.source
    errors = []
    for name, currencies in in_use.items():
        plan = catalogue.plans.get(name)
        if plan is None:
            errors.append(
                f"{source}: plan {name!r}: missing, but {sum(currencies.values())} account(s) or line(s) are on it"
            )
            continue
        errors += [
            f"{source}: plan {name!r}: currency: {plan.currency}, but {n} account(s) or line(s) in {currency} are on it"
            for currency, n in sorted(currencies.items())
            if currency != plan.currency
        ]
    return errors


def version_timeline(versions: CatalogueVersions, now: int) -> list[dict[str, Any]]:
    """Each version of the catalogue: when it takes effect, whether it is in force at `now`, and what it changes
    from the version before it (`chf catalogue check`)."""
    in_force = versions.at(now)[0]
    out: list[dict[str, Any]] = []
    previous: Catalogue | None = None
    for c in versions.versions:
        out.append(
            {
                "version": c.version,
                "file": c.source,
                "effective": c.effective,
                "effective_text": _effective_text(c, first=previous is None),
                "in_force": c is in_force,
                "past": c is not in_force and (c.effective or 0) <= now,
                "plans": len(c.plans),
                "tariffs": len(c.tariffs),
                "changes": changes(previous, c) if previous is not None else [],
            }
        )
        previous = c
    return out


def _effective_text(c: Catalogue, *, first: bool) -> str:
    if c.effective is None:
        return "from the start"
    at = datetime.fromtimestamp(c.effective, c.settings.timezone).strftime("%Y-%m-%d %H:%M %Z")
    # The first version is in force before its effective time too (chf.core.versions).
    return f"from the start (effective {at}, the first version)" if first else at


def _timeline_text(path: str, timeline: list[dict[str, Any]]) -> str:
    lines = [f"{path}: valid, {len(timeline)} versions"]
    for v in timeline:
        state = " (in force now)" if v["in_force"] else " (replaced)" if v["past"] else ""
        lines.append(
            f"  {v['effective_text']}: version {v['version']} ({v['file']}){state}, "
            f"{v['plans']} plans, {v['tariffs']} tariffs"
        )
        lines.extend(f"    {change}" for change in v["changes"] or (["no change"] if v is not timeline[0] else []))
    return "\n".join(lines)


def cmd_catalogue_check(env: Env) -> int:
    path = env.args.file or env.config.catalogue
    try:
        versions = check_catalogue(env, path)
    except CatalogueError as exc:
        if env.json:
            env.out({"file": path, "valid": False, "errors": exc.errors})
        else:
            print("\n".join(f"chf: {e}" for e in exc.errors), file=sys.stderr)
            print(f"chf: {path}: {len(exc.errors)} error(s)", file=sys.stderr)
        return EXIT_USAGE
    catalogue = versions.latest()
    timeline = version_timeline(versions, int(time.time()))
    out = {
        "file": path,
        "valid": True,
        "digest": catalogue.digest,
        "plans": len(catalogue.plans),
        "tariffs": len(catalogue.tariffs),
        "versions": timeline,
    }
    if len(timeline) == 1:
        env.out(out, f"{path}: valid, {len(catalogue.plans)} plans, {len(catalogue.tariffs)} tariffs")
    else:
        env.out(out, _timeline_text(path, timeline))
    return EXIT_OK


def plan_summary(plan: Plan) -> dict[str, Any]:
    return {
        "name": plan.name,
        "payment": plan.payment,
        "currency": plan.currency,
        "fee": plan.fee,
        "fee_text": money(plan.fee, plan.currency),
        "period": plan.period,
        "overage": plan.overage,
        "roaming": plan.roaming,
        "pool": plan.pool,
        "description": plan.description,
    }


def addon_summary(addon: AddOn) -> dict[str, Any]:
    a = addon.allowance
    days = addon.validity_seconds // 86400 if addon.validity_seconds is not None else None
    return {
        "name": addon.name,
        "currency": addon.currency,
        "price": addon.price,
        "price_text": money(addon.price, addon.currency),
        "unit": a.unit,
        "amount": a.amount,
        "rating_groups": sorted(a.rating_groups) if a.rating_groups is not None else None,
        "validity_days": days,
        "plans": sorted(addon.plans) if addon.plans is not None else None,
        "bucket": quantity(a.amount, a.unit, addon.currency),
        "validity": f"{days} days" if days is not None else "to the period's end",
        "description": addon.description,
    }


def plan_detail(plan: Plan) -> dict[str, Any]:
    out = plan_summary(plan)
    out["allowances"] = [
        {
            "name": a.name,
            "unit": a.unit,
            "amount": a.amount,
            "rating_groups": sorted(a.rating_groups) if a.rating_groups is not None else None,
            "priority": a.priority,
            "shared": a.shared,
            "rollover": a.rollover,
        }
        for a in plan.allowances
    ]
    out["rating"] = {str(rg): t.name for rg, t in sorted(plan.rating.items())}
    if plan.default_tariff is not None:
        out["rating"]["default"] = plan.default_tariff.name
    out["promotions"] = [
        {
            "kind": p.kind,
            "fee": p.fee,
            "periods": p.periods,
            "allowance": p.allowance.name if p.allowance is not None else None,
            "amount": p.allowance.amount if p.allowance is not None else None,
            "unit": p.allowance.unit if p.allowance is not None else None,
            "validity_seconds": p.validity_seconds,
        }
        for p in plan.promotions
    ]
    out["pool_unit"] = plan.pool_unit
    out["pool_amount"] = plan.pool_amount
    out["pool_per_line"] = plan.pool_per_line
    out["pool_family"] = plan.pool_family
    out["pool_contribution"] = plan.pool_contribution
    out["pool_tiers"] = [{"amount": t.amount, "fee": t.fee} for t in plan.pool_tiers]
    out["pool_topoff"] = plan.pool_topoff
    out["suspended_fee"] = plan.suspended_fee  # None: the full fee (README, "Fees and the line lifecycle")
    out["prorate"] = plan.prorate
    return out


def pool_text(d: dict[str, Any], currency: str) -> list[str]:
    """A plan's stacked-pool family (as a pool or as a member) and adaptive tiers, as `catalogue show` says them."""
    out = []
    unit = d["pool_unit"] or "bytes"
    if d["pool_family"] and d["pool"] == "stacked":
        out.append(f"pool family: {d['pool_family']} (each member line brings its plan's contribution)")
    elif d["pool_family"]:
        brings = quantity(d["pool_contribution"], unit, currency)
        out.append(f"pool family: {d['pool_family']}, each line brings {brings} to its account's stacked pool")
    for n, tier in enumerate(d["pool_tiers"]):
        out.append(f"pool tier {n + 1}: {quantity(tier['amount'], unit, currency)} for {money(tier['fee'], currency)}")
    if d["pool_topoff"]:
        out.append("pool top-off: starts at the first tier, grows a tier when exhausted")
    return out


def suspended_text(fee: int | None, currency: str) -> str:
    if fee is None:
        return "the full fee, with the allowances"
    return f"{money(fee, currency)} per period, allowances held back" if fee else "nothing, allowances held back"


def cmd_catalogue_show(env: Env) -> int:
    path = env.args.file or env.config.catalogue
    catalogue = load_versions(path).at(int(time.time()))[0]  # the version in force now
    currency = catalogue.settings.currency
    if env.args.plan is None:
        plans = [plan_summary(p) for p in catalogue.plans.values()]
        addons = [addon_summary(a) for a in catalogue.addons.values()]

        def listing() -> str:
            out = table(
                [[p["name"], p["payment"], p["fee_text"], p["period"], p["overage"], p["description"]] for p in plans],
                ["PLAN", "PAYMENT", "FEE", "PERIOD", "OVERAGE", "DESCRIPTION"],
            )
            if addons:
                rows = [[a["name"], a["price_text"], a["bucket"], a["validity"], a["description"]] for a in addons]
                out += "\n\n" + table(rows, ["ADD-ON", "PRICE", "BUCKET", "VALID", "DESCRIPTION"])
            return out

        env.out(
            {"file": path, "digest": catalogue.digest, "currency": currency, "plans": plans, "addons": addons}, listing
        )
        return EXIT_OK
    plan = catalogue.plans.get(env.args.plan)
    if plan is None:
        raise provisioning.NotFound(
            "plan", f"no plan {env.args.plan!r} in {path} (plans: {', '.join(catalogue.plans)})"
        )
    d = plan_detail(plan)
    currency = plan.currency

    def text() -> str:
        out = [
            fields(
                [
                    ("plan", d["name"]),
                    ("description", d["description"]),
                    ("payment", d["payment"]),
                    ("fee", f"{d['fee_text']} per {d['period']}"),
                    ("suspended", suspended_text(d["suspended_fee"], currency)),
                    ("prorated", "yes: a partial period costs its days left" if d["prorate"] else "no"),
                    ("overage", d["overage"]),
                    ("roaming", "yes" if d["roaming"] else "no"),
                    ("pool", f"{d['pool']} ({d['pool_unit']})" if d["pool"] else None),
                ]
            ),
            "",
            "rating: " + ", ".join(f"{rg} -> {t}" for rg, t in d["rating"].items()),
        ]
        if d["allowances"]:
            rows = [
                [
                    x["name"],
                    quantity(x["amount"], x["unit"], currency),
                    ",".join(map(str, x["rating_groups"])) if x["rating_groups"] is not None else "all",
                    x["priority"],
                    "shared" if x["shared"] else "line",
                    "yes" if x["rollover"] else "no",
                ]
                for x in d["allowances"]
            ]
            out += ["", table(rows, ["ALLOWANCE", "AMOUNT", "RATING GROUPS", "PRIORITY", "OWNER", "ROLLOVER"])]
        out += pool_text(d, currency)
        for p in d["promotions"]:
            if p["kind"] == "intro_price":
                out.append(f"promotion: {money(p['fee'], currency)} for the first {p['periods']} period(s)")
            else:
                out.append(f"promotion: bonus {p['allowance']} {quantity(p['amount'], p['unit'], currency)}")
        return "\n".join(out)

    env.out(d, text)
    return EXIT_OK


def server_pid(env: Env) -> tuple[int | None, str]:
    """The pid of the running `chf serve` from <data_dir>/chf.pid, checked to be alive and to be chf; or None
    and the reason why there is none."""
    pid_path = os.path.join(env.config.data_dir, "chf.pid")
    try:
        with open(pid_path, encoding="ascii") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None, f"no chf serve is running (no pid file {pid_path})"
    if not text.isdigit():
        return None, f"pid file {pid_path} does not hold a process id"
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None, f"no chf serve is running (stale pid file {pid_path}: pid {pid})"
    except PermissionError:
        pass  # alive, another user's: the SIGHUP below reports the refusal
    cmdline_path = f"/proc/{pid}/cmdline"
    if os.path.exists(cmdline_path):  # Linux: make sure a recycled pid is not some other program
        with open(cmdline_path, "rb") as f:
            cmdline = f.read()
        if b"chf" not in cmdline and b"tools.cli" not in cmdline:
            return None, f"pid {pid} in {pid_path} is not chf serve (stale pid file)"
    return pid, ""


def server_path(pid: int | None, path: str) -> str:
    """A relative catalogue path as the server resolves it: from its working directory (Linux), not ours."""
    if pid is None or os.path.isabs(path):
        return path
    try:
        return os.path.join(os.readlink(f"/proc/{pid}/cwd"), path)
    except OSError:
        return path


def cmd_catalogue_reload(env: Env) -> int:
    pid, why_not = server_pid(env)
    path = server_path(pid, env.config.catalogue)
    catalogue = check_catalogue(env, path).latest()  # an invalid file never reaches the server
    if pid is None:
        raise provisioning.NotFound("server", f"{why_not}; {path} is valid but nothing was reloaded")
    try:
        os.kill(pid, signal.SIGHUP)
    except PermissionError:
        raise RequestError("server", f"not allowed to signal pid {pid}") from None
    out = {"file": path, "digest": catalogue.digest, "plans": len(catalogue.plans), "pid": pid, "signalled": True}
    env.out(
        out,
        f"{path}: valid ({len(catalogue.plans)} plans, digest {catalogue.digest[:12]}); "
        f"sent SIGHUP to chf serve (pid {pid}), which logs event=catalogue_reloaded",
    )
    return EXIT_OK


# ----------------------------------------------------------------------------------------------------------------------
# events
# ----------------------------------------------------------------------------------------------------------------------
def event_text(e: dict[str, Any]) -> str:
    cur = e.get("currency")
    parts = [f"{e.get('seq'):>8}", when(e.get("time")), f"{e.get('kind', '?'):<14}", f"account={e.get('account')}"]
    if e.get("subscriber"):
        parts.append(f"line=#{e['subscriber']}")
    if e.get("session"):
        parts.append(f"session={e['session']}")
    if e.get("plan"):
        parts.append(f"plan={e['plan']}")
    if e.get("state"):
        parts.append(f"state={e['state']}")
    if e.get("amount") is not None:
        parts.append(f"amount={money(e['amount'], cur)}")
    if e.get("charge"):
        parts.append(f"charge={money(e['charge'], cur)}")
    for imp in e.get("impacts") or []:
        unit = imp.get("unit", "")
        delta = imp.get("delta", 0)
        sign = "+" if delta >= 0 else ""
        shown = money(delta, cur) if unit == "money" else f"{delta} {unit}"
        parts.append(f"{imp.get('balance')}{sign}{shown}")
    parts.append(f"actor={e.get('actor')}")
    if e.get("reason"):
        parts.append(f"reason={e['reason']!r}")
    return " ".join(parts)


class EventFilter:
    def __init__(self, line_id: int | None, kind: str | None) -> None:
        self.line_id = line_id
        self.kind = kind

    def __call__(self, event: dict[str, Any]) -> bool:
        if self.kind is not None and event.get("kind") != self.kind:
            return False
        return self.line_id is None or event.get("subscriber") == self.line_id


TAIL_WINDOW = 2000  # events read per step when scanning backwards for filtered matches


def last_matching(txn: Txn, count: int, keep: EventFilter) -> list[dict[str, Any]]:
    """The last `count` events that pass the filter, oldest first, scanning the spool backwards in windows."""
    found: list[dict[str, Any]] = []
    upper = txn.last_event_seq()
    while upper > 0 and len(found) < count:
        lower = max(0, upper - TAIL_WINDOW)
        window = [e for e in txn.events(after=lower, limit=upper - lower) if keep(e)]
        found = window[-(count - len(found)) :] + found if window else found
        upper = lower
    return found


def follow(env: Env, after: int, keep: EventFilter, interval: float) -> Iterator[dict[str, Any]]:
    """Events committed after `after`, as they are committed (each poll is a fresh read snapshot)."""
    deadline = time.monotonic() + env.args.follow_for if env.args.follow_for else None
    while deadline is None or time.monotonic() < deadline:
        with env.store.read() as txn:
            batch = list(txn.events(after=after, limit=10_000))
        for event in batch:
            after = event["seq"]
            if keep(event):
                yield event
        if not batch:
            time.sleep(interval)


def cmd_events_tail(env: Env) -> int:
    a = env.args
    if a.n < 0:
        raise RequestError("n", f"must be 0 or more, got {a.n}")
    line_id = None
    with env.store.read() as txn:
        if a.line is not None:
            line_id = provisioning.get_line(txn, a.line).id
        keep = EventFilter(line_id, a.kind)
        events = last_matching(txn, a.n, keep) if a.n else []
        last = txn.last_event_seq()
    for event in events:
        print_event(env, event)
    if a.follow:
        for event in follow(env, last, keep, 0.2):
            print_event(env, event)
    return EXIT_OK


def print_event(env: Env, event: dict[str, Any]) -> None:
    import json

    # One JSON object per line (JSON Lines) so `--follow --json` can be piped into a consumer.
    print(json.dumps(event, sort_keys=True, default=str) if env.json else event_text(event), flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# argument parsing
# ----------------------------------------------------------------------------------------------------------------------
MONEY_HELP = "decimal amount in currency units, e.g. 10.50 (at most 6 decimals)"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the tenant, account, subscriber, catalogue and events command groups to the `chf` parser."""

    def group(name: str, help_text: str) -> Any:
        p = sub.add_parser(name, parents=[common], help=help_text)
        return p.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")

    g = group("tenant", "tenants (an MVNO brand or reseller)")
    p = g.add_parser("create", parents=[common], help="create a tenant")
    p.add_argument("id", help="tenant id (letters, digits, '_', '.', ':', '-')")
    p.add_argument("--name", help="display name (default: the id)")
    p.add_argument("--currency", required=True, help="ISO 4217 code, e.g. EUR")
    p.add_argument("--parent", help="the tenant above (a reseller's operator, an enterprise's reseller)")
    p.add_argument("--tax-profile", help="tax profile of its accounts (catalogue [tax_profiles])")
    p.set_defaults(func=cmd_tenant_create)
    p = g.add_parser("list", parents=[common], help="list tenants")
    p.set_defaults(func=cmd_tenant_list)

    g = group("account", "accounts: wallet, credit limit, plan, lines")
    p = g.add_parser("create", parents=[common], help="create an account")
    p.add_argument("id", help="account id")
    p.add_argument("--tenant", required=True)
    p.add_argument("--payment", required=True, choices=PAYMENT_TYPES)
    p.add_argument("--currency", help="ISO 4217 code (default: the tenant's)")
    p.add_argument("--balance", help=f"opening wallet balance, {MONEY_HELP}")
    p.add_argument("--credit-limit", help=f"postpaid/hybrid credit limit, {MONEY_HELP}")
    p.add_argument("--cycle-day", type=int, default=1, help="billing cycle day of the month, 1-28")
    p.add_argument("--parent", help="parent account (enterprise hierarchy; charged again at its price list)")
    p.add_argument("--plan", help="account-level plan (shared allowances, IoT pools)")
    p.add_argument("--price-list", help="price list it pays for the lines below it (catalogue [price_lists])")
    p.add_argument("--tax-profile", help="tax profile (catalogue [tax_profiles]; default: the tenant's)")
    p.set_defaults(func=cmd_account_create)

    p = g.add_parser("show", parents=[common], help="wallet, reservations, credit, plan, shared buckets, lines")
    p.add_argument("id")
    p.add_argument("--lines", type=int, default=ACCOUNT_LINES_SHOWN, help="lines listed at most (all are counted)")
    p.add_argument("--children", action="store_true", help="also list child accounts (scans all accounts)")
    p.set_defaults(func=cmd_account_show)

    p = g.add_parser("list", parents=[common], help="list accounts")
    p.add_argument("--tenant")
    p.set_defaults(func=cmd_account_list)

    p = g.add_parser("topup", parents=[common], help="credit the wallet")
    p.add_argument("id")
    p.add_argument("amount", help=MONEY_HELP)
    p.add_argument("--reason", required=True, help="recorded in the audit event")
    p.add_argument("--idempotency-key", help="a repeated key changes nothing and answers as the first time")
    p.set_defaults(func=cmd_account_topup)

    p = g.add_parser(
        "adjust",
        parents=[common],
        help="signed correction of the wallet, or of one bucket of a line",
        description="AMOUNT is money (decimal, may be negative) for the wallet; with --line and --bucket it is "
        "in the bucket's unit: whole bytes, seconds or events, or a decimal amount for a money bucket.",
    )
    p.add_argument("id")
    p.add_argument("amount", help="signed amount, e.g. -2.50 (use -- before a negative amount: adjust ID -- -2.50)")
    p.add_argument("--reason", required=True)
    p.add_argument("--line", help="line (IMSI, MSISDN, ICCID or #id) owning the bucket")
    p.add_argument("--bucket", type=int, help="bucket number, as `chf subscriber show` lists it")
    p.set_defaults(func=cmd_account_adjust)

    p = g.add_parser("set-plan", parents=[common], help="put the account on a plan from now")
    p.add_argument("id")
    p.add_argument("plan")
    p.add_argument("--reason")
    p.set_defaults(func=cmd_account_set_plan)

    g = group("subscriber", "lines (SIM or eSIM): identities, lifecycle, plan")
    p = g.add_parser("add", parents=[common], help="add a line to an account")
    p.add_argument("--account", required=True)
    p.add_argument("--imsi", required=True)
    p.add_argument("--msisdn")
    p.add_argument("--iccid")
    p.add_argument("--eid")
    p.add_argument("--plan")
    p.add_argument("--state", default="active", choices=("provisioned", "active"))
    p.set_defaults(func=cmd_subscriber_add)

    p = g.add_parser("show", parents=[common], help="a line with buckets, period and open sessions")
    p.add_argument("ref", help="IMSI, MSISDN, ICCID or #id")
    p.set_defaults(func=cmd_subscriber_show)

    p = g.add_parser(
        "find",
        parents=[common],
        help="every line that holds or held an IMSI, MSISDN or ICCID (numbers reused after termination)",
    )
    p.add_argument("identity", help="IMSI, MSISDN or ICCID")
    p.set_defaults(func=cmd_subscriber_find)

    p = g.add_parser("set-state", parents=[common], help="lifecycle: provisioned -> active <-> suspended -> terminated")
    p.add_argument("ref")
    p.add_argument("state", choices=LINE_STATES)
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_subscriber_set_state)

    p = g.add_parser("move", parents=[common], help="move a line to another account of the same tenant")
    p.add_argument("ref")
    p.add_argument("account")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_subscriber_move)

    p = g.add_parser("set-plan", parents=[common], help="put a line on a plan from now")
    p.add_argument("ref")
    p.add_argument("plan")
    p.add_argument("--reason")
    p.set_defaults(func=cmd_subscriber_set_plan)

    p = g.add_parser(
        "buy-addon",
        parents=[common],
        help="sell a catalogue add-on to a line: its price from the wallet, its bucket to the line, or nothing",
    )
    p.add_argument("ref")
    p.add_argument("addon", help="an [addons.<name>] of the catalogue")
    p.add_argument("--reason", help="recorded in the audit event")
    p.add_argument("--idempotency-key", help="a repeated key changes nothing and answers as the first time")
    p.set_defaults(func=cmd_subscriber_buy_addon)

    register_import(g, common)

    g = group("catalogue", "plans and tariffs")
    p = g.add_parser("check", parents=[common], help="validate a catalogue file; every error names file/plan/field")
    p.add_argument("file", nargs="?", help="default: the configured catalogue")
    p.add_argument("--store", action="store_true", help="also check that every plan in use in the store is defined")
    p.set_defaults(func=cmd_catalogue_check)
    p = g.add_parser("show", parents=[common], help="list plans, or show one")
    p.add_argument("plan", nargs="?")
    p.add_argument("--file", help="default: the configured catalogue")
    p.set_defaults(func=cmd_catalogue_show)
    p = g.add_parser("reload", parents=[common], help="validate the configured catalogue, then SIGHUP `chf serve`")
    p.add_argument("--store", action="store_true", help="also check that every plan in use in the store is defined")
    p.set_defaults(func=cmd_catalogue_reload)

    g = group("events", "the rated and audit event spool")
    p = g.add_parser("tail", parents=[common], help="the last events, optionally following new ones")
    p.add_argument("-n", type=int, default=10, help="how many (default 10)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing events as they are committed")
    p.add_argument("--follow-for", type=float, default=None, help=argparse.SUPPRESS)  # tests: stop after seconds
    p.add_argument("--line", help="only events of this line (IMSI, MSISDN, ICCID or #id)")
    p.add_argument("--kind", help="only events of this kind (usage, topup, adjustment, lifecycle, renewal, ...)")
    p.set_defaults(func=cmd_events_tail)
