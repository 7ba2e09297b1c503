"""Provisioning and balance management: tenants, accounts, lines, plans, top-ups and adjustments.

Each function runs inside one store write transaction (`store.Txn`), validates everything before it writes
anything, writes an audit event for every balance or lifecycle change, and returns an `OpResult` whose
signals tell the front-ends which sessions to re-authorise or abort once the change is durable.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from chf.core import wholesale
from chf.core.catalogue import UNIT_TYPES, Catalogue, CatalogueError, Plan
from chf.core.context import Context, bucket_impact, line_owner
from chf.core.engine import Engine
from chf.core.model import OpResult, RequestError, Signal
from chf.core.renewals import (
    assign_plan_to,
    resize_pool,
    restart_account_plan,
    retry_pending_renewal,
    start_line_plan,
)
from chf.core.subscriptions import extra_plans
from chf.core.tax import check_tax_profile
from store.interface import Txn
from store.schema import (
    ACTIVE,
    LINE_STATES,
    LINE_TRANSITIONS,
    PAYMENT_TYPES,
    PROVISIONED,
    TERMINATED,
    Account,
    BalanceSet,
    Bucket,
    Hole,
    Subscriber,
    Tenant,
    pack,
    pack_template,
    pack_value,
)


class NotFound(RequestError):
    """The named tenant, account or line does not exist."""


class Conflict(RequestError):
    """The change contradicts what is stored (an identity already in use, a forbidden transition)."""


_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_IMSI_RE = re.compile(r"^[0-9]{6,15}$")
_MSISDN_RE = re.compile(r"^[0-9]{6,15}$")
_ICCID_RE = re.compile(r"^[0-9]{18,21}[0-9Ff]?$")
_EID_RE = re.compile(r"^[0-9]{32}$")
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")


def check_id(field: str, value: Any) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise RequestError(field, f"must be 1-64 letters, digits, '_', '.', ':' or '-', got {value!r}")
    return value


def check_identity(field: str, value: Any, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise RequestError(field, f"must be {what}, got {value!r}")
    return value


def check_amount(field: str, value: Any, *, positive: bool = True) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(field, f"must be an integer number of micro-units, got {value!r}")
    if positive and value <= 0:
        raise RequestError(field, f"must be positive, got {value}")
    return value


def _signals(txn: Txn, line_ids: list[int], kind: str) -> list[Signal]:
    out: list[Signal] = []
    for line_id in line_ids:
        for s in txn.sessions_of_line(line_id):
            if not s.closed:
                out.append(Signal(kind, s.key, s.protocol, s.notify, tuple(sorted(s.reservations))))
    return out


def idempotent(txn: Txn, key: str | None, now: int, window: int, fn: Callable[[], OpResult]) -> OpResult:
    """Run `fn` once per idempotency key: a repeat returns the stored value and changes nothing."""
    if key is None:
        return fn()
    stored_key = "api:" + key
    stored = txn.get_idem(stored_key, now)
    if stored is not None:
        return OpResult(stored, [], duplicate=True)
    result = fn()
    txn.put_idem(stored_key, now + window, result.value)
    return result


# ------------------------------------------------------------------------------------------------------------------
# Tenants and accounts
# ------------------------------------------------------------------------------------------------------------------
def create_tenant(
    txn: Txn,
    tenant_id: str,
    name: str,
    currency: str,
    now: int,
    *,
    parent: str | None = None,
    tax_profile: str | None = None,
    catalogue: Catalogue | None = None,
) -> OpResult:
    check_id("tenant", tenant_id)
    if not isinstance(currency, str) or not _CURRENCY_RE.match(currency):
        raise RequestError("currency", f"must be an ISO 4217 code such as EUR, got {currency!r}")
    if txn.get_tenant(tenant_id) is not None:
        raise Conflict("tenant", f"tenant {tenant_id!r} already exists")
    if parent is not None:
        if txn.get_tenant(check_id("parent", parent)) is None:
            raise NotFound("parent", f"no tenant {parent!r}")
        wholesale.check_tenant_parent(txn, tenant_id, parent)
    if tax_profile is not None:
        check_tax_profile(catalogue, tax_profile)
    tenant = Tenant(tenant_id, name or tenant_id, currency, now, parent, tax_profile)
    txn.put_tenant(tenant)
    return OpResult(tenant.as_dict())


def create_account(
    txn: Txn,
    engine: Engine,
    *,
    account_id: str,
    tenant: str,
    payment: str,
    now: int,
    currency: str | None = None,
    balance: int = 0,
    credit_limit: int = 0,
    cycle_day: int = 1,
    parent: str | None = None,
    plan: str | None = None,
    actor: str = "admin",
    price_list: str | None = None,
    tax_profile: str | None = None,
) -> OpResult:
    check_id("account", account_id)
    tenant_rec = txn.get_tenant(check_id("tenant", tenant))
    if tenant_rec is None:
        raise NotFound("tenant", f"no tenant {tenant!r}")
    if payment not in PAYMENT_TYPES:
        raise RequestError("payment", f"must be one of {', '.join(PAYMENT_TYPES)}, got {payment!r}")
    currency = currency or tenant_rec.currency
    if not _CURRENCY_RE.match(currency):
        raise RequestError("currency", f"must be an ISO 4217 code such as EUR, got {currency!r}")
    _check_account_terms(payment, balance, credit_limit, cycle_day)
    if parent is not None:
        parent_rec = txn.get_account(check_id("parent", parent))
        if parent_rec is None:
            raise NotFound("parent", f"no account {parent!r}")
        wholesale.check_account_parent(txn, tenant_rec, parent_rec)
    if price_list is not None:
        wholesale.check_price_list(engine.catalogue, price_list, currency)
    if tax_profile is not None:
        check_tax_profile(engine.catalogue, tax_profile)
    if txn.get_account(account_id) is not None:
        raise Conflict("account", f"account {account_id!r} already exists")
    account = Account(account_id, tenant, payment, currency, 0, 0, credit_limit, cycle_day, parent, None, now, 0)
    account.price_list = price_list
    account.tax_profile = tax_profile
    plan_rec = _plan(engine, plan, now, account) if plan is not None else None
    txn.put_account(account)
    if balance or plan_rec is not None:
        ctx = engine.account_context(txn, account.id, now)
        assert ctx is not None
        # The context read its own copy of the account back from the transaction and writes that copy on
        # flush: the opening balance and the plan must land on it, not on the record built above.
        account = ctx.account
        if balance:
            account.balance = balance
            ctx.account_dirty = True
            event = ctx.base_event("topup", actor, "opening balance")
            event["amount"] = balance
            event["impacts"].append(ctx.wallet_impact(balance))
            ctx.events.append(event)
        if plan_rec is not None:
            assign_plan_to(ctx, plan_rec, is_account=True, actor=actor, reason="account created")
        ctx.flush()
    return OpResult(account.as_dict())


def _check_account_terms(payment: str, balance: int, credit_limit: int, cycle_day: int) -> None:
    """The money terms of a new account: its opening balance, its credit limit (none when prepaid) and the day
    its monthly periods start on."""
    check_amount("balance", balance, positive=False)
    check_amount("credit_limit", credit_limit, positive=False)
    if credit_limit < 0:
        raise RequestError("credit_limit", f"must not be negative, got {credit_limit}")
    if payment == "prepaid" and credit_limit:
        raise RequestError("credit_limit", "a prepaid account has no credit limit")
    if isinstance(cycle_day, bool) or not isinstance(cycle_day, int) or not 1 <= cycle_day <= 28:
        raise RequestError("cycle_day", f"must be a day of the month from 1 to 28, got {cycle_day!r}")


def _account_context(txn: Txn, engine: Engine, account_id: str, now: int) -> Context:
    check_id("account", account_id)
    ctx = engine.account_context(txn, account_id, now)
    if ctx is None:
        raise NotFound("account", f"no account {account_id!r}")
    return ctx


def _plan(engine: Engine, name: str, now: int, account: Account | None = None) -> Plan:
    """Plan `name` of the catalogue version in force at `now` (chf.core.versions)."""
    try:
        plan = engine.catalogue_at(now).plan(name)
    except CatalogueError as exc:
        raise NotFound("plan", f"no plan {name!r} in the catalogue") from exc
    if account is not None:
        check_plan_fits(plan, account, "plan")
    return plan


def check_plan_fits(plan: Plan, account: Account, field: str) -> None:
    """The rule wherever a plan meets an account (a new line or account on a plan, a plan change, a move, an
    import): the plan's payment type is the account's, and its prices are in the account's currency (a price
    is never relabelled; README, "Currencies and reused numbers"). `field` is the request's field at fault: the
    plan, or the account a line moves to."""
    if plan.payment != account.payment:
        raise Conflict(field, f"plan {plan.name!r} is {plan.payment}, account {account.id!r} is {account.payment}")
    if plan.currency != account.currency:
        raise Conflict(
            field, f"plan {plan.name!r} is priced in {plan.currency}, account {account.id!r} is in {account.currency}"
        )


def topup(
    txn: Txn,
    engine: Engine,
    account_id: str,
    amount: int,
    *,
    now: int,
    actor: str,
    reason: str,
    idempotency_key: str | None = None,
) -> OpResult:
    """Credit the wallet; retry renewals that waited for money; re-authorise the account's open sessions."""
    check_amount("amount", amount)

    def run() -> OpResult:
        ctx = _account_context(txn, engine, account_id, now)
        account = ctx.account
        account.balance += amount
        ctx.account_dirty = True
        event = ctx.base_event("topup", actor, reason)
        event["amount"] = amount
        event["impacts"].append(ctx.wallet_impact(amount))
        ctx.events.append(event)
        retry_pending_renewal(ctx)
        lines = list(txn.lines_of_account(account.id))
        for line_id in lines:
            bs = txn.get_line_balances(line_id)
            if bs is not None and bs.renewal_pending:
                sub = txn.get_subscriber(line_id)
                if sub is None:
                    continue
                # The line context shares `account`, so the fee lands in the wallet `ctx` writes back.
                line_ctx = Context(txn, engine.catalogue_at(now), now, sub, account)
                line_ctx.tax = ctx.tax
                # The accounts above (a device fee of the period started) are the same objects for every line,
                # written once by `ctx` (chf.core.wholesale).
                if ctx.upline is None:
                    ctx.upline = {}
                line_ctx.upline = ctx.upline
                line_ctx.line_bs = bs
                retry_pending_renewal(line_ctx)
                ctx.events.extend(line_ctx.events)
                txn.put_line_balances(line_id, bs)
        ctx.flush()
        return OpResult(account.as_dict(), _signals(txn, lines, "reauth"))

    return idempotent(txn, idempotency_key, now, engine.config.idempotency_window, run)


def adjust(
    txn: Txn,
    engine: Engine,
    account_id: str,
    amount: int,
    *,
    now: int,
    actor: str,
    reason: str,
    line_id: int | None = None,
    bucket_id: int | None = None,
    idempotency_key: str | None = None,
) -> OpResult:
    """A signed correction of the wallet (or of one bucket of a line) with a mandatory reason."""
    check_amount("amount", amount, positive=False)
    if amount == 0:
        raise RequestError("amount", "an adjustment of 0 changes nothing")
    if not reason:
        raise RequestError("reason", "an adjustment needs a reason")

    def run() -> OpResult:
        if bucket_id is None:
            ctx = _account_context(txn, engine, account_id, now)
            ctx.account.balance += amount
            ctx.account_dirty = True
            event = ctx.base_event("adjustment", actor, reason)
            event["amount"] = amount
            event["impacts"].append(ctx.wallet_impact(amount))
            ctx.events.append(event)
            ctx.flush()
            return OpResult(ctx.account.as_dict())
        if line_id is None:
            raise RequestError("line", "a bucket adjustment names the line that owns the bucket")
        sub = txn.get_subscriber(line_id)
        if sub is None or sub.account != account_id:
            raise NotFound("line", f"no line {line_id} in account {account_id!r}")
        ctx = engine.context(txn, sub, now)
        bucket = ctx.line_bs.bucket(bucket_id) if ctx.line_bs is not None else None
        if bucket is None:
            raise NotFound("bucket", f"line {line_id} has no bucket {bucket_id}")
        if bucket.remaining + amount < bucket.reserved:
            raise RequestError(
                "amount", f"would leave {bucket.remaining + amount}, below the {bucket.reserved} reserved"
            )
        bucket.remaining += amount
        ctx.line_bs_dirty = True
        event = ctx.base_event("adjustment", actor, reason)
        event["amount"] = amount
        event["impacts"].append(bucket_impact(line_owner(sub.id), bucket, amount))
        ctx.events.append(event)
        ctx.flush()
        return OpResult(bucket.as_dict())

    return idempotent(txn, idempotency_key, now, engine.config.idempotency_window, run)


def grant_bucket(
    txn: Txn,
    engine: Engine,
    line_id: int,
    *,
    name: str,
    unit: str,
    amount: int,
    valid_to: int,
    now: int,
    actor: str,
    reason: str,
    rating_groups: list[int] | None = None,
    priority: int = 50,
    idempotency_key: str | None = None,
) -> OpResult:
    """Add a one-off bucket to a line (goodwill, add-on purchase); once per idempotency key, as a top-up."""
    if unit not in UNIT_TYPES:
        raise RequestError("unit", f"must be bytes, seconds, events or money, got {unit!r}")
    check_amount("amount", amount)

    def run() -> OpResult:
        sub = txn.get_subscriber(line_id)
        if sub is None:
            raise NotFound("line", f"no line {line_id}")
        ctx = engine.context(txn, sub, now)
        assert ctx.line_bs is not None
        bs = ctx.line_bs
        bucket = Bucket(
            bs.new_bucket_id(), name, "adjustment", unit, rating_groups, priority, amount, amount, 0, now, valid_to
        )
        bs.buckets.append(bucket)
        ctx.line_bs_dirty = True
        event = ctx.base_event("bucket_grant", actor, reason)
        event["impacts"].append(bucket_impact(line_owner(sub.id), bucket, amount))
        ctx.events.append(event)
        ctx.flush()
        return OpResult(bucket.as_dict(), _signals(txn, [sub.id], "reauth"))

    return idempotent(txn, idempotency_key, now, engine.config.idempotency_window, run)


# ------------------------------------------------------------------------------------------------------------------
# Lines
# ------------------------------------------------------------------------------------------------------------------
def _check_new_line(
    txn: Txn,
    engine: Engine,
    get_account: Callable[[str], Account | None],
    *,
    account: str | None,  # None: a bulk import row without it, refused here
    imsi: str | None,
    msisdn: str | None,
    iccid: str | None,
    eid: str | None,
    plan: str | None,
    state: str,
    now: int,
) -> tuple[Account, Plan | None, list[Release]]:
    """Every check of a new line, before anything is written: returns its account, its plan (or None) and the
    identities it takes over from terminated lines (`_release` them before writing the line)."""
    check_identity("imsi", imsi, _IMSI_RE, "6 to 15 digits")
    if msisdn is not None:
        check_identity("msisdn", msisdn, _MSISDN_RE, "6 to 15 digits in international format, no '+'")
    if iccid is not None:
        check_identity("iccid", iccid, _ICCID_RE, "18 to 22 digits")
    if eid is not None:
        check_identity("eid", eid, _EID_RE, "32 digits")
    if state not in (PROVISIONED, ACTIVE):
        raise RequestError("state", f"a new line is provisioned or active, got {state!r}")
    acct = get_account(check_id("account", account))
    if acct is None:
        raise NotFound("account", f"no account {account!r}")
    plan_rec = _plan(engine, plan, now, acct) if plan is not None else None
    releases = _claim_identities(txn, engine, (("imsi", imsi), ("msisdn", msisdn), ("iccid", iccid)), now)
    return acct, plan_rec, releases


Release = tuple[str, str, int]  # (kind, identity, the terminated line that gives it up)


def _claim_identities(
    txn: Txn, engine: Engine, identities: tuple[tuple[str, str | None], ...], now: int
) -> list[Release]:
    """The identities a new line asks for: free, or held by a line terminated longer ago than the quarantine
    of their kind ([engine] <kind>_quarantine_days), which then gives them up. Anything else is a Conflict."""
    releases: list[Release] = []
    for kind, value in identities:
        holder_id = txn.subscriber_id_by(kind, value) if value else None
        if holder_id is None:
            continue
        assert value is not None
        holder = txn.get_subscriber(holder_id)
        if holder is None or holder.state != TERMINATED:
            raise Conflict(kind, f"{kind} {value} is already in use by line #{holder_id}")
        free_from = holder.state_since + engine.config.identity_quarantine.get(kind, 0)
        if now < free_from:
            raise Conflict(
                kind,
                f"{kind} {value} belonged to line #{holder_id}, terminated {_day(holder.state_since)}: "
                f"in quarantine until {_day(free_from)}",
            )
        releases.append((kind, value, holder_id))
    return releases


def _release(txn: Txn, releases: list[Release], now: int) -> None:
    """Terminated lines give up identities a new line takes (checked by `_claim_identities`)."""
    for kind, value, holder_id in releases:
        txn.release_identity(kind, value, holder_id, now)


def _day(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def _write_new_line(
    engine: Engine, ctx: Context, plan_rec: Plan | None, actor: str, *, record_line: bool = True
) -> Subscriber:
    """Write a checked new line with its creation and plan events into `ctx` (not flushed). A provisioned line's
    plan is recorded on it; its first period starts when it is activated. The account's count of active lines
    and its pool are the caller's to derive (`resize_pool`), once the line is in the store."""
    sub = ctx.sub
    if record_line:
        ctx.txn.put_subscriber(sub)
    event = ctx.base_event("lifecycle", actor, "line created")
    event["state"] = sub.state
    ctx.events.append(event)
    if plan_rec is not None and sub.state == ACTIVE:
        assign_plan_to(ctx, plan_rec, is_account=False, actor=actor, reason="line created")
    ctx.line_bs_dirty = True
    return sub


def _new_subscriber(
    line_id: int,
    acct: Account,
    imsi: str,
    msisdn: str | None,
    iccid: str | None,
    eid: str | None,
    state: str,
    plan: str | None,
    now: int,
    actor: str,
) -> Subscriber:
    return Subscriber(
        line_id,
        acct.tenant,
        acct.id,
        imsi,
        msisdn,
        iccid,
        eid,
        state,
        now,
        plan,
        now,
        [[None, state, now, actor, "created"]],
    )


def add_line(
    txn: Txn,
    engine: Engine,
    *,
    account: str,
    imsi: str,
    now: int,
    msisdn: str | None = None,
    iccid: str | None = None,
    eid: str | None = None,
    plan: str | None = None,
    state: str = ACTIVE,
    actor: str = "admin",
) -> OpResult:
    acct, plan_rec, releases = _check_new_line(
        txn,
        engine,
        txn.get_account,
        account=account,
        imsi=imsi,
        msisdn=msisdn,
        iccid=iccid,
        eid=eid,
        plan=plan,
        state=state,
        now=now,
    )
    _release(txn, releases, now)
    sub = _new_subscriber(txn.new_subscriber_id(), acct, imsi, msisdn, iccid, eid, state, plan, now, actor)
    txn.put_subscriber(sub)
    ctx = engine.context(txn, sub, now)
    _write_new_line(engine, ctx, plan_rec, actor, record_line=False)
    restart_account_plan(ctx, actor, f"line {sub.id} added")
    if state == ACTIVE:
        resize_pool(ctx, f"line {sub.id} added")
    ctx.flush()
    return OpResult(sub.as_dict())


LINE_FIELDS = ("account", "imsi", "msisdn", "iccid", "eid", "plan", "state")


class _LineTemplate:
    """What `_write_new_line` writes for any new line of one (account, plan, state), as a template.

    Built by `LineTemplates` from the engine's own output for a stand-in line, and used only after it
    reproduced, byte for byte, the engine's output for a second stand-in line with other identities and another
    wallet balance. The events are encoded templates (`store.schema.pack_template`) turned into bytes formats:
    rendering a line packs its few own values (identities, bucket names, wallet balance, sequence numbers) and
    formats each event in C, where the engine builds a Context, the plan's buckets, the period and every event
    field by field, and each event is then packed (bulk import, issue #2).
    """

    __slots__ = ("balance_delta", "balances", "events", "slots")

    def __init__(self, balances: bytes, balance_delta: int, events: list[tuple[list[bytes], list[Any]]]) -> None:
        self.balances = balances  # the line's encoded balance set: nothing in it names the line
        self.balance_delta = balance_delta  # what the line does to its account's wallet (the first fee)
        # The line's own values, each packed once per line: ("sub", attribute), ("line", balance name after the
        # line id) or ("wallet", offset from the wallet before the line); then the event's sequence and id.
        self.slots: list[tuple[str, Any]] = []
        self.events: list[tuple[bytes, Callable[[list[bytes]], tuple[bytes, ...]]]] = []
        for parts, holes in events:
            indexes = []
            for hole in holes:
                if hole[0] in ("seq", "id"):
                    indexes.append(-2 if hole[0] == "seq" else -1)
                    continue
                if hole not in self.slots:
                    self.slots.append(hole)
                indexes.append(self.slots.index(hole))
            fmt = b"%b".join(part.replace(b"%", b"%%") for part in parts)
            self.events.append((fmt, itemgetter(*indexes)))  # a tuple: every event has at least seq and id

    def fits(self, account: Account) -> bool:
        """Whether the engine would take the template's path: it was traced with the first fee paid."""
        fee = -self.balance_delta
        return fee <= 0 or account.available() >= fee

    def encode(self, sub: Subscriber, wallet_before: int, first_seq: int, store_id: str) -> list[bytes]:
        """The line's events, packed as `Txn.append_events` would pack them from sequence number `first_seq`."""
        owner = line_owner(sub.id)
        values = []
        for kind, arg in self.slots:
            if kind == "sub":
                values.append(pack_value(getattr(sub, arg)))
            elif kind == "line":  # a bucket of the line: its balance name holds the line id
                values.append(pack_value(owner + arg))
            else:  # "wallet": `after` is the balance before the line plus an offset
                values.append(pack_value(wallet_before + arg))
        values += (b"", b"")
        out: list[bytes] = []
        seq = first_seq
        for fmt, pick in self.events:
            values[-2] = pack_value(seq)
            values[-1] = pack_value(f"{store_id}-{seq}")
            out.append(fmt % pick(values))
            seq += 1
        return out


# Stand-in lines for tracing templates: identities no real line has (ids far above any counter), each different.
_STAND_INS = (
    (2**62 - 2, "999999999999991", "999999999999981", "8999999999999999991", "9" * 31 + "1", 10**15),
    (2**62 - 3, "999999999999992", "999999999999982", "8999999999999999992", "9" * 31 + "2", 10**15 + 1_000_003),
)


class LineTemplates:
    """Templates of new lines for one import (`add_lines`), kept across its batches.

    A template belongs to an account as it was when the template was traced (every field but the wallet and
    the line count, which lines change, plus its shared balance set), a plan and a state, and to the import's
    catalogue, time and actor. When no template reproduces the engine exactly (a line that would change its
    account's shared balance set, say), `template` answers None and the line goes through the engine. An IoT
    pool is not the line's to change: it is derived from the account's lines after each row (`resize_pool`).
    """

    def __init__(self) -> None:
        self.rendered = 0  # lines written from a template (the others went through the engine)
        self._bound: tuple[Any, int, str] | None = None
        self._templates: dict[tuple[bytes, bytes | None, str | None, str], _LineTemplate | None] = {}

    @staticmethod
    def account_key(actx: Context) -> tuple[bytes, bytes | None]:
        shape = Account.decode(actx.account.encode())
        shape.balance = shape.active_lines = 0
        return shape.encode(), actx.acct_bs.encode() if actx.acct_bs is not None else None

    def template(
        self,
        txn: Txn,
        engine: Engine,
        actx: Context,
        account_key: tuple[bytes, bytes | None],
        plan_rec: Plan | None,
        state: str,
        actor: str,
    ) -> _LineTemplate | None:
        bound = (actx.catalogue, actx.now, actor)
        if self._bound != bound:
            self._bound = bound
            self._templates.clear()
        key = (*account_key, plan_rec.name if plan_rec is not None else None, state)
        if key not in self._templates:
            self._templates[key] = _trace_template(txn, engine, actx, plan_rec, state, actor)
        return self._templates[key]


def _trace_template(
    txn: Txn, engine: Engine, actx: Context, plan_rec: Plan | None, state: str, actor: str
) -> _LineTemplate | None:
    """Run the engine for two stand-in lines on copies of the account; a template of the first must render the
    second exactly, or there is no template."""
    traces = []
    for line_id, imsi, msisdn, iccid, eid, wallet in _STAND_INS:
        account = Account.decode(actx.account.encode())
        account.balance = wallet
        acct_bs = BalanceSet.decode(actx.acct_bs.encode()) if actx.acct_bs is not None else None
        acct_bs_before = acct_bs.encode() if acct_bs is not None else None
        plan_name = plan_rec.name if plan_rec is not None else None
        sub = _new_subscriber(line_id, account, imsi, msisdn, iccid, eid, state, plan_name, actx.now, actor)
        sub_before = sub.encode()
        ctx = Context(txn, actx.catalogue, actx.now, sub, account)
        ctx.tax = actx.tax
        ctx.line_bs = BalanceSet()
        ctx.acct_bs = acct_bs
        _write_new_line(engine, ctx, plan_rec, actor, record_line=False)  # writes nothing: ctx is not flushed
        if ctx.upline:
            return None  # the line charges the accounts above its own (a device fee): the engine does it per line
        if ctx.acct_bs_dirty or (acct_bs.encode() if acct_bs is not None else None) != acct_bs_before:
            return None  # the line changes a shared balance set: the engine does it per line
        if sub.encode() != sub_before:
            return None
        balance_delta = account.balance - wallet
        account.balance = actx.account.balance
        if account.encode() != actx.account.encode():
            return None  # the line changes more of its account than the wallet
        assert ctx.line_bs is not None
        traces.append((sub, wallet, ctx.events, ctx.line_bs.encode(), balance_delta))
    (sub_a, wallet_a, events_a, bs_a, balance_a), (sub_b, wallet_b, events_b, bs_b, balance_b) = traces
    if bs_a != bs_b or balance_a != balance_b or len(events_a) != len(events_b):
        return None
    template = _LineTemplate(bs_a, balance_a, [_event_template(e, sub_a, wallet_a) for e in events_a])
    first_seq, store_id = 2**40 + 7, "trace"
    for seq, event in enumerate(events_b, first_seq):
        event["seq"], event["id"] = seq, f"{store_id}-{seq}"
    if template.encode(sub_b, wallet_b, first_seq, store_id) != [pack(e) for e in events_b]:
        return None
    return template


def _event_template(event: dict[str, Any], sub: Subscriber, wallet_before: int) -> tuple[list[bytes], list[Any]]:
    """An event of a stand-in line as an encoded template: its identities, the balance names of its buckets,
    the wallet balance after it, its sequence number and id become holes."""
    shape = dict(event)
    for key, attr in (("subscriber", "id"), ("imsi", "imsi"), ("msisdn", "msisdn")):
        if shape.get(key) is not None and shape[key] == getattr(sub, attr):
            shape[key] = Hole(("sub", attr))
    line_prefix = line_owner(sub.id) + ":"
    impacts = []
    for impact in event.get("impacts", ()):
        balance = impact.get("balance")
        if isinstance(balance, str) and balance.startswith(line_prefix):
            impact = {**impact, "balance": Hole(("line", balance[len(line_prefix) - 1 :]))}
        elif isinstance(balance, str) and balance.endswith(":wallet") and isinstance(impact.get("after"), int):
            impact = {**impact, "after": Hole(("wallet", impact["after"] - wallet_before))}
        impacts.append(impact)
    if "impacts" in shape:
        shape["impacts"] = impacts
    shape["seq"] = Hole(("seq", None))  # what Txn.append_events adds last
    shape["id"] = Hole(("id", None))
    return pack_template(shape)


def add_lines(
    txn: Txn,
    engine: Engine,
    rows: list[dict[str, Any]],
    *,
    now: int,
    actor: str = "admin",
    templates: LineTemplates | None = None,
) -> list[int | RequestError]:
    """Add many lines in one transaction (bulk import): per row, the new line id or the RequestError that
    refused it. Each row gets exactly the checks, records and events of `add_line`; a refused row writes
    nothing (all its checks run before its first write). Rows see the lines of earlier rows, so a duplicate
    identity within `rows` is refused like one already in the store.

    Faster than `add_line` per row because each account (and its shared balance set) is read, brought up to
    date and written once per call instead of once per line, and because the records and events of a line are
    rendered from a template per (account, plan, state) that the engine's own output was checked against
    (`LineTemplates`; pass one to keep it across calls of one import); the rows' events are the same."""
    results: list[int | RequestError] = []
    accounts: dict[str, Context | None] = {}
    account_keys: dict[str, tuple[bytes, bytes | None]] = {}
    group_templates: dict[tuple[str, str | None, str], _LineTemplate | None] = {}  # this call's, by account id
    events: list[dict[str, Any] | tuple[_LineTemplate, Subscriber, int]] = []  # a template's line: its events later
    if templates is None:
        templates = LineTemplates()

    def get_account(account_id: str) -> Account | None:
        if account_id not in accounts:
            ctx = engine.account_context(txn, account_id, now)
            if ctx is not None:
                ctx.flush()  # renewals that were due when the import began, before the lines' events
                account_keys[account_id] = LineTemplates.account_key(ctx)
            accounts[account_id] = ctx
        actx = accounts[account_id]
        return actx.account if actx is not None else None

    catalogue = engine.catalogue_at(now)
    joined: set[str] = set()  # the accounts a row added a line to
    for row in rows:
        state = row.get("state") or ACTIVE
        try:
            acct, plan_rec, releases = _check_new_line(
                txn,
                engine,
                get_account,
                account=row.get("account"),
                imsi=row.get("imsi"),
                msisdn=row.get("msisdn"),
                iccid=row.get("iccid"),
                eid=row.get("eid"),
                plan=row.get("plan"),
                state=state,
                now=now,
            )
        except RequestError as exc:
            results.append(exc)
            continue
        _release(txn, releases, now)
        actx = accounts[acct.id]
        assert actx is not None
        sub = _new_subscriber(
            txn.new_subscriber_id(),
            acct,
            row["imsi"],
            row.get("msisdn"),
            row.get("iccid"),
            row.get("eid"),
            state,
            row.get("plan"),
            now,
            actor,
        )
        group = (acct.id, plan_rec.name if plan_rec is not None else None, state)
        if group in group_templates:
            template = group_templates[group]
        else:
            template = templates.template(txn, engine, actx, account_keys[acct.id], plan_rec, state, actor)
            group_templates[group] = template
        results.append(sub.id)
        joined.add(acct.id)
        # A line of an account with an IoT pool changes the pool (and so writes an event) if it is active: the pool
        # is derived after each such row, as add_line does. Other accounts' count of active lines is derived once,
        # after the last row, when the account is written.
        pooled = state == ACTIVE and _has_pool(catalogue, acct)
        if template is not None and template.fits(acct):
            txn.put_new_subscriber(sub)
            events.append((template, sub, acct.balance))
            if template.balance_delta:
                acct.balance += template.balance_delta
                actx.account_dirty = True
            txn.put_line_balances_encoded(sub.id, template.balances)
            templates.rendered += 1
            if not pooled:
                continue
            ctx = Context(txn, catalogue, now, sub, acct)
        else:
            ctx = Context(txn, catalogue, now, sub, acct)
            ctx.tax = actx.tax
            ctx.line_bs = BalanceSet()
            _write_new_line(engine, ctx, plan_rec, actor)
        ctx.acct_bs = actx.acct_bs  # shared with the account's context, which writes it
        if pooled:
            resize_pool(ctx, f"line {sub.id} added")
        # The account and its balance set are written once, after the last row.
        actx.account_dirty |= ctx.account_dirty
        actx.acct_bs_dirty |= ctx.acct_bs_dirty
        ctx.account_dirty = ctx.acct_bs_dirty = False
        # The events too are appended once, in the order the rows produced them.
        events.extend(ctx.events)
        ctx.events.clear()
        ctx.flush()

    def encode_events(first_seq: int, store_id: str) -> list[bytes]:
        encoded: list[bytes] = []
        seq = first_seq
        for item in events:
            if isinstance(item, dict):  # an event of the engine, as Txn.append_events packs it
                item["seq"], item["id"] = seq, f"{store_id}-{seq}"
                encoded.append(pack(item))
                seq += 1
            else:
                template, sub, wallet_before = item
                line_events = template.encode(sub, wallet_before, seq, store_id)
                encoded += line_events
                seq += len(line_events)
        return encoded

    txn.append_encoded_events(encode_events)
    for actx in accounts.values():
        if actx is not None:
            if actx.account.id in joined:
                restart_account_plan(actx, actor, "lines imported")
            resize_pool(actx, "lines imported")  # the count of active lines (pools were derived row by row)
            actx.flush()
    return results


def _has_pool(catalogue: Catalogue, account: Account) -> bool:
    """Whether a new active line changes the account's pool row by row. A stacked pool is derived from all its
    lines, one read each: it is derived once after the last row (`resize_pool` in `add_lines`), not per row."""
    plan = catalogue.plans.get(account.plan) if account.plan is not None else None
    return plan is not None and plan.pool is not None and plan.pool != "stacked"


def get_line(txn: Txn, ref: str) -> Subscriber:
    """A line by internal id ("#12" or "12"), IMSI, MSISDN or ICCID."""
    ref = str(ref).strip()
    if ref.startswith("#") and ref[1:].isdigit() and len(ref) <= 20:  # a line id is a 64-bit key: 19 digits
        sub = txn.get_subscriber(int(ref[1:]))
        if sub is not None:
            return sub
    for kind in ("imsi", "msisdn", "iccid"):
        sub = txn.subscriber_by(kind, ref)
        if sub is not None:
            return sub
    if ref.isdigit() and len(ref) <= 9:
        sub = txn.get_subscriber(int(ref))
        if sub is not None:
            return sub
    raise NotFound("line", f"no line with id, IMSI, MSISDN or ICCID {ref!r}")


def set_state(txn: Txn, engine: Engine, line_ref: str, state: str, *, now: int, actor: str, reason: str) -> OpResult:
    """A lifecycle transition. Suspending or terminating a line aborts its open sessions (their final usage is
    still charged when the client reports it). Activation starts the line's plan: its first period, or a period
    whose allowances were held back while it was suspended (chf.core.renewals, `start_line_plan`). The account's
    active lines and its pool follow (`resize_pool`)."""
    if state not in LINE_STATES:
        raise RequestError("state", f"must be one of {', '.join(LINE_STATES)}, got {state!r}")
    sub = get_line(txn, line_ref)
    if state == sub.state:
        return OpResult(sub.as_dict())
    if state not in LINE_TRANSITIONS[sub.state]:
        raise Conflict("state", f"a {sub.state} line cannot become {state}")
    previous = Subscriber.decode(sub.encode())
    ctx = engine.context(txn, sub, now)  # periods that ended before now renew in the state they ended in
    sub.history.append([sub.state, state, now, actor, reason])
    sub.state = state
    sub.state_since = now
    txn.put_subscriber(sub, previous)
    event = ctx.base_event("lifecycle", actor, reason)
    event["from"] = previous.state
    event["state"] = state
    ctx.events.append(event)
    if state == ACTIVE:
        start_line_plan(ctx, actor, "line activated")
    resize_pool(ctx, f"line {sub.id} {state}")
    ctx.flush()
    signals = _signals(txn, [sub.id], "abort") if state != ACTIVE else []
    return OpResult(sub.as_dict(), signals)


def move_line(
    txn: Txn, engine: Engine, line_ref: str, account_id: str, *, now: int, actor: str, reason: str
) -> OpResult:
    """Transfer a line to another account of the same tenant. Open sessions are released (their reservations
    were made against the old account) and aborted; the client reconnects and is charged to the new one."""
    sub = get_line(txn, line_ref)
    if sub.state == TERMINATED:
        raise Conflict("line", "a terminated line cannot be moved")
    target = txn.get_account(check_id("account", account_id))
    if target is None:
        raise NotFound("account", f"no account {account_id!r}")
    if target.id == sub.account:
        return OpResult(sub.as_dict())
    if target.tenant != sub.tenant:
        raise Conflict("account", f"account {account_id!r} belongs to another tenant")
    if sub.plan is not None:  # a line without a plan of its own is rated by its account's plan, which fits it
        plan = engine.catalogue_at(now).plans.get(sub.plan)
        if plan is None:
            raise Conflict("plan", f"line #{sub.id} is on plan {sub.plan!r}, no longer in the catalogue: set its plan")
        check_plan_fits(plan, target, "account")
    _check_money_moves(txn, sub, target, now)
    signals = _signals(txn, [sub.id], "abort")
    for signal in signals:
        engine.release_session(txn, signal.session, now, "line moved to another account", actor)
    previous = Subscriber.decode(sub.encode())
    old_ctx = engine.context(txn, sub, now)
    event = old_ctx.base_event("line_move", actor, reason)
    event["to_account"] = target.id
    old_ctx.events.append(event)
    sub.account = target.id
    sub.history.append([sub.state, sub.state, now, actor, f"moved from {previous.account} to {target.id}"])
    txn.put_subscriber(sub, previous)
    resize_pool(old_ctx, f"line {sub.id} moved to {target.id}")
    old_ctx.flush()
    new_ctx = engine.context(txn, sub, now)
    restart_account_plan(new_ctx, actor, f"line {sub.id} moved from {previous.account}")
    resize_pool(new_ctx, f"line {sub.id} moved from {previous.account}")
    new_ctx.flush()
    return OpResult(sub.as_dict(), signals)


def _check_money_moves(txn: Txn, sub: Subscriber, target: Account, now: int) -> None:
    """A line's money buckets (goodwill or add-on money, a plan's money allowance) are in its account's currency:
    moved to an account in another currency they would be spent there as that currency (relabelled). Such a move
    is refused while one holds money; the operator spends or adjusts it away first (README, "Currencies")."""
    source = txn.get_account(sub.account)
    if source is None or source.currency == target.currency:
        return
    bs = txn.get_line_balances(sub.id)
    for bucket in bs.buckets if bs is not None else ():
        if bucket.unit == "money" and bucket.remaining > 0 and bucket.valid_to > now:
            raise Conflict(
                "account",
                f"line #{sub.id} holds {bucket.remaining} micro-units of {source.currency} in bucket {bucket.id} "
                f"({bucket.name}); account {target.id!r} is in {target.currency}",
            )


def assign_plan(
    txn: Txn,
    engine: Engine,
    plan: str,
    *,
    now: int,
    actor: str,
    reason: str,
    line_ref: str | None = None,
    account_id: str | None = None,
) -> OpResult:
    """Put a line (or an account: shared allowances, IoT pools) on a plan from now; re-authorise sessions."""
    if (line_ref is None) == (account_id is None):
        raise RequestError("target", "name exactly one of a line or an account")
    if line_ref is not None:
        sub = get_line(txn, line_ref)
        if sub.state == TERMINATED:
            raise Conflict("line", f"line #{sub.id} is terminated: its plan cannot change")
        plan_rec = _plan(engine, plan, now, txn.get_account(sub.account))
        if sub.plan == plan_rec.name and _runs(txn.get_line_balances(sub.id), plan_rec, sub.state):
            return OpResult(sub.as_dict())  # already on it: a PUT repeated (RFC 9110 9.2.2) charges nothing
        if plan_rec.name in extra_plans(txn.get_line_balances(sub.id)):
            # The same plan as main and extra would charge its fee and grant its allowances twice.
            raise Conflict("plan", f"line #{sub.id} runs plan {plan_rec.name!r} as an extra plan: remove it first")
        previous = Subscriber.decode(sub.encode())
        sub.plan = plan_rec.name
        txn.put_subscriber(sub, previous)
        ctx = engine.context(txn, sub, now)
        if sub.state == PROVISIONED:
            # No period runs before activation: the plan is recorded, its first period starts then.
            change = ctx.base_event("plan_change", actor, reason)
            change["plan"] = plan_rec.name
            change["previous_plan"] = previous.plan
            ctx.events.append(change)
        else:
            assign_plan_to(ctx, plan_rec, is_account=False, actor=actor, reason=reason)
        resize_pool(ctx, f"line {sub.id} on plan {plan_rec.name}")  # a stacked pool: what the line brings changed
        ctx.flush()
        return OpResult(sub.as_dict(), _signals(txn, [sub.id], "reauth"))
    assert account_id is not None
    ctx = _account_context(txn, engine, account_id, now)
    plan_rec = _plan(engine, plan, now, ctx.account)
    if ctx.account.plan == plan_rec.name and _runs(ctx.acct_bs, plan_rec, ACTIVE):
        return OpResult(ctx.account.as_dict())  # already on it (the periods brought up to date are not written)
    assign_plan_to(ctx, plan_rec, is_account=True, actor=actor, reason=reason)
    ctx.flush()
    return OpResult(ctx.account.as_dict(), _signals(txn, list(txn.lines_of_account(account_id)), "reauth"))


def _runs(bs: BalanceSet | None, plan: Plan, state: str) -> bool:
    """Whether `plan` is what the balance set's periods run (a provisioned line: what it will run when activated).
    Putting a line or account on that plan again changes nothing: its fee is not charged twice for one period."""
    if state == PROVISIONED:
        return True
    return bs is not None and bs.plan == plan.name


IDENTITY_KINDS = ("imsi", "msisdn", "iccid")


def identity_lines(txn: Txn, value: str) -> list[dict[str, Any]]:
    """Every line that holds or held `value` as its IMSI, MSISDN or ICCID, oldest first per kind: the lines that
    gave it up at their termination (`until`: when), then the one holding it now (`until` None)."""
    value = str(value).strip()
    out: list[dict[str, Any]] = []
    for kind in IDENTITY_KINDS:
        held: list[tuple[int, int | None]] = [*txn.released_identity(kind, value)]
        holder = txn.subscriber_id_by(kind, value)
        if holder is not None:
            held.append((holder, None))
        for line_id, until in held:
            sub = txn.get_subscriber(line_id)
            if sub is not None:
                entry = {"kind": kind, "line": sub.id, "account": sub.account, "state": sub.state}
                out.append({**entry, "since": sub.created, "until": until})
    if not out:
        raise NotFound("identity", f"no line holds or held IMSI, MSISDN or ICCID {value!r}")
    return out


def line_view(txn: Txn, engine: Engine, sub: Subscriber, now: int) -> dict[str, Any]:
    """A line with its account, buckets (its own and shared) and open sessions, as the CLI and API show it; with
    the identities it gave up (`released`: kind -> when) and the lines that gave its identities up to it."""
    out = sub.as_dict()
    released: dict[str, int] = {}
    former: list[dict[str, Any]] = []
    for kind in IDENTITY_KINDS:
        value = getattr(sub, kind)
        for line_id, until in txn.released_identity(kind, value) if value else ():
            if line_id == sub.id:
                released[kind] = until
            elif until <= sub.created:  # it gave the identity up before this line took it, not after
                former.append({"kind": kind, "line": line_id, "until": until})
    out["released"] = released
    out["former_holders"] = former
    account = txn.get_account(sub.account)
    out["account_detail"] = account.as_dict() if account is not None else None
    bs = txn.get_line_balances(sub.id)
    out["buckets"] = [b.as_dict() for b in bs.buckets] if bs is not None else []
    out["period"] = (
        {
            "plan": bs.plan,
            "start": bs.period_start,
            "end": bs.period_end,
            "index": bs.period_index,
            "renewal_pending": bs.renewal_pending,
            "usage": bs.usage,
        }
        if bs is not None and bs.plan is not None
        else None
    )
    if account is not None:
        abs_ = txn.get_account_balances(account.id)
        out["shared_buckets"] = [b.as_dict() for b in abs_.buckets] if abs_ is not None else []
    out["sessions"] = [s.as_dict() for s in txn.sessions_of_line(sub.id) if not s.closed]
    return out
