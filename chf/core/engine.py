"""The charging engine: rating, quota grants, commits, renewals and reservation release.

Sans-IO: every entry point takes a store transaction (`store.Txn`), a request and `now` (epoch seconds from
an injected clock), decides from what it reads, writes its changes and events into the same transaction and
returns an answer. It never opens a socket or reads the clock.

Order of work for one session request (DESIGN.md section 4):
1. answer a retransmission from the stored answer (exactly once);
2. renew the line's and the account's plan periods that ended before `now`, expire lapsed buckets;
3. per rating group, commit the used units against the reservation behind them (buckets in priority order,
   then wallet money at the tariff price; usage beyond the grant is still charged, and flagged);
4. release what is left of the reservation, then reserve the next grant:
   min(requested, quantum, what the balances can cover), with a Final-Unit-Indication when less than the
   quantum is affordable;
5. write balances, session (with the answer, for replay) and one event per balance change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from chf.core.catalogue import Catalogue, Plan, Tariff
from chf.core.model import (
    CHECK_BALANCE,
    CREDIT_LIMIT_REACHED,
    DIRECT_DEBITING,
    END_USER_SERVICE_DENIED,
    EVENT,
    EVENT_ACTIONS,
    FUA_REDIRECT,
    FUA_RESTRICT,
    FUA_TERMINATE,
    INITIAL,
    PRICE_ENQUIRY,
    RATING_FAILED,
    REASON_FINAL,
    REFUND_ACCOUNT,
    SESSION_UNKNOWN,
    SUCCESS,
    TERMINATE,
    USER_UNKNOWN,
    ChargingAnswer,
    ChargingRequest,
    FinalUnit,
    RequestError,
    UnitAnswer,
    UnitRequest,
    UsageReport,
)
from chf.core.periods import period_end
from store.lmdbstore import Txn
from store.schema import (
    ACTIVE,
    SRC_ACCOUNT,
    SRC_LINE,
    Account,
    BalanceSet,
    Bucket,
    Reservation,
    Session,
    Subscriber,
    pack,
)

log = logging.getLogger("chf.engine")

FOREVER = 2**62


@dataclass(slots=True)
class EngineConfig:
    idempotency_window: int = 3600  # seconds a stored answer is kept for replay
    answers_kept: int = 4  # recent answers kept in a session for retransmissions (older: refused)
    reap_factor: int = 2  # a session silent for reap_factor x validity time is released


def line_owner(line_id: int) -> str:
    return f"line:{line_id}"


def account_owner(account_id: str) -> str:
    return f"account:{account_id}"


class Context:
    """The state one operation reads and changes, loaded once and written back once."""

    __slots__ = (
        "account",
        "account_dirty",
        "acct_bs",
        "acct_bs_dirty",
        "catalogue",
        "events",
        "line_bs",
        "line_bs_dirty",
        "now",
        "sub",
        "txn",
    )

    def __init__(self, txn: Txn, catalogue: Catalogue, now: int, sub: Subscriber, account: Account) -> None:
        self.txn = txn
        self.catalogue = catalogue
        self.now = now
        self.sub = sub
        self.account = account
        self.account_dirty = False
        self.line_bs: BalanceSet | None = None
        self.line_bs_dirty = False
        self.acct_bs: BalanceSet | None = None
        self.acct_bs_dirty = False
        self.events: list[dict[str, Any]] = []

    def flush(self) -> None:
        txn = self.txn
        if self.account_dirty:
            txn.put_account(self.account)
        if self.line_bs_dirty and self.line_bs is not None:
            txn.put_line_balances(self.sub.id, self.line_bs)
        if self.acct_bs_dirty and self.acct_bs is not None:
            txn.put_account_balances(self.account.id, self.acct_bs)
        for event in self.events:
            txn.append_event(event)
        self.events.clear()

    def base_event(self, kind: str, actor: str, reason: str | None) -> dict[str, Any]:
        sub = self.sub
        line = sub.id or None  # 0: an account-level operation, no line
        return {
            "kind": kind,
            "time": self.now,
            "actor": actor,
            "reason": reason,
            "tenant": sub.tenant,
            "account": self.account.id,
            "subscriber": line,
            "imsi": sub.imsi if line else None,
            "msisdn": sub.msisdn if line else None,
            "currency": self.account.currency,
            "impacts": [],
        }

    def wallet_impact(self, delta: int) -> dict[str, Any]:
        return {
            "balance": f"{account_owner(self.account.id)}:wallet",
            "unit": "money",
            "delta": delta,
            "after": self.account.balance,
        }


# Helpers of the per-request methods, outside them: chf/engine.pxd compiles those as cpdef methods, which cannot
# hold closures (generator expressions, lambdas).
def _any_final(reports: list[UsageReport]) -> bool:
    return any(r.reason == REASON_FINAL for r in reports)


def _all_failed(units: list[UnitAnswer]) -> bool:
    return all(u.result != SUCCESS for u in units)


def _first_reported(units: dict[str, int]) -> str | None:
    """The first unit type with a non-zero amount."""
    for u, v in units.items():
        if v:
            return u
    return None


def _keep_replay_state(previous: Session, session: Session) -> None:
    """A CCR-INITIAL on a session still open starts it afresh (its reservations were released) but keeps what
    recognises a retransmission of the session's earlier requests: the numbers applied and the answers kept.
    Without them a retransmitted CCR-UPDATE after it (say with the T flag, after a failover and a restart) was
    charged a second time."""
    session.last_request = previous.last_request
    session.seen = previous.seen
    session.answers = previous.answers


def _priority_order(found: tuple[int, int, Bucket, int, str]) -> tuple[int, int]:
    return (found[0], found[1])


def _bucket_impact(owner: str, bucket: Bucket, delta: int) -> dict[str, Any]:
    return {
        "balance": f"{owner}:bucket:{bucket.id}",
        "name": bucket.name,
        "unit": bucket.unit,
        "delta": delta,
        "after": bucket.remaining,
    }


class Engine:
    # Catalogues replaced by a reload stay reachable by their digest for this many reloads, so that usage inside
    # a grant is charged at the price the grant was made with (DESIGN.md: reloads apply to new grants).
    KEPT_CATALOGUES = 8

    def __init__(self, catalogue: Catalogue, config: EngineConfig | None = None) -> None:
        self._by_version: dict[str, Catalogue] = {}
        self.catalogue = catalogue
        self.config = config or EngineConfig()

    @property
    def catalogue(self) -> Catalogue:
        return self._catalogue

    @catalogue.setter
    def catalogue(self, catalogue: Catalogue) -> None:
        self._catalogue = catalogue
        self._version = catalogue.digest[:12]
        self._by_version.pop(self._version, None)
        self._by_version[self._version] = catalogue
        while len(self._by_version) > self.KEPT_CATALOGUES:
            del self._by_version[next(iter(self._by_version))]

    # ==============================================================================================================
    # Loading what a request needs
    # ==============================================================================================================
    def resolve_line(self, txn: Txn, identities: list[tuple[str, str]]) -> Subscriber | None:
        """Find a line by any of its identities (IMSI, MSISDN, ICCID; NAI and SIP URIs by their user part)."""
        for kind, value in identities:
            if not value:
                continue
            if kind in ("imsi", "msisdn", "iccid"):
                found = txn.subscriber_by(kind, value)
            elif kind in ("nai", "sip"):
                user = value.split(":", 1)[-1].split("@", 1)[0].split(";", 1)[0].lstrip("+")
                found = txn.subscriber_by("imsi", user) or txn.subscriber_by("msisdn", user)
            else:
                found = None
            if found is not None:
                return found
        return None

    def context(self, txn: Txn, sub: Subscriber, now: int, account_id: str | None = None) -> Context:
        account = txn.get_account(account_id or sub.account)
        if account is None:
            raise RequestError("account", f"line {sub.id} belongs to unknown account {sub.account!r}")
        ctx = Context(txn, self.catalogue, now, sub, account)
        ctx.line_bs = txn.get_line_balances(sub.id) or BalanceSet()
        if account.plan is not None:
            ctx.acct_bs = txn.get_account_balances(account.id) or BalanceSet()
        self.bring_up_to_date(ctx)
        return ctx

    def account_context(self, txn: Txn, account_id: str, now: int) -> Context | None:
        """A context for account-level work (top-up, shared allowances, pools): no line, events name none."""
        account = txn.get_account(account_id)
        if account is None:
            return None
        pseudo = Subscriber(0, account.tenant, account.id, "", None, None, None, ACTIVE, 0, account.plan, 0)
        ctx = Context(txn, self._catalogue, now, pseudo, account)
        if account.plan is not None:
            ctx.acct_bs = txn.get_account_balances(account.id) or BalanceSet()
            self.bring_up_to_date(ctx)
        return ctx

    def bring_up_to_date(self, ctx: Context) -> None:
        """Renew periods that ended and expire buckets whose validity ended, each at its exact boundary."""
        now = ctx.now
        if ctx.line_bs is not None and self.needs_upkeep(ctx.line_bs, now):
            self._renew_owner(ctx, ctx.line_bs, is_account=False)
        if ctx.acct_bs is not None and self.needs_upkeep(ctx.acct_bs, now):
            self._renew_owner(ctx, ctx.acct_bs, is_account=True)

    @staticmethod
    def needs_upkeep(bs: BalanceSet, now: int) -> bool:
        if bs.plan is not None and now >= bs.period_end:
            return True
        return any(b.valid_to <= now for b in bs.buckets)

    def line_plan(self, ctx: Context) -> Plan | None:
        name = ctx.sub.plan or ctx.account.plan
        if name is None:
            return None
        return self._catalogue.plans.get(name)

    # ==============================================================================================================
    # Plans, periods and renewals
    # ==============================================================================================================
    def _renew_owner(self, ctx: Context, bs: BalanceSet, *, is_account: bool) -> None:
        owner = account_owner(ctx.account.id) if is_account else line_owner(ctx.sub.id)
        plan = self._catalogue.plans.get(bs.plan) if bs.plan is not None else None
        # Periods: at most one catch-up per missed period, bounded so a long-idle line cannot stall a batch.
        for _ in range(400):
            if plan is None or ctx.now < bs.period_end:
                break
            boundary = bs.period_end
            self._expire_buckets(ctx, bs, owner, boundary, period_end=True)
            bs.period_start = boundary
            bs.period_end = period_end(plan.period, boundary, ctx.account.cycle_day, self._catalogue.settings.timezone)
            bs.period_index += 1
            bs.usage = {}
            self._start_period(ctx, bs, plan, owner, is_account=is_account, at=boundary, reason="renewal")
        self._expire_buckets(ctx, bs, owner, ctx.now, period_end=False)
        if is_account:
            ctx.acct_bs_dirty = True
        else:
            ctx.line_bs_dirty = True

    def _expire_buckets(self, ctx: Context, bs: BalanceSet, owner: str, at: int, *, period_end: bool) -> None:
        plan = self._catalogue.plans.get(bs.plan) if bs.plan is not None else None
        keep: list[Bucket] = []
        for b in bs.buckets:
            if b.valid_to > at:
                keep.append(b)
                continue
            event = ctx.base_event("expiry", "system", "validity ended")
            event["time"] = b.valid_to
            remaining = b.remaining
            b.remaining = 0
            event["impacts"].append(_bucket_impact(owner, b, -remaining))
            rolled = None
            # Units held by an open grant at the boundary are in use: the report that follows is settled against
            # this (now expired) bucket, so carrying them over too would hand them out twice.
            carried = remaining - b.reserved
            if period_end and plan is not None and b.kind == "plan" and carried > 0:
                allowance = next((a for a in plan.allowances if a.name == b.name and a.rollover), None)
                if allowance is not None:
                    rolled = Bucket(
                        bs.new_bucket_id(),
                        b.name + "-rollover",
                        "rollover",
                        b.unit,
                        b.rating_groups,
                        b.priority - 1,
                        carried,
                        carried,
                        0,
                        at,
                        period_end_of(self._catalogue, plan, at, ctx.account.cycle_day),
                    )
                    keep.append(rolled)
                    event["impacts"].append(_bucket_impact(owner, rolled, carried))
                    event["reason"] = "rollover"
            ctx.events.append(event)
        bs.buckets = keep

    def _start_period(
        self, ctx: Context, bs: BalanceSet, plan: Plan, owner: str, *, is_account: bool, at: int, reason: str
    ) -> None:
        """Charge the period's fee and grant the period's allowances (line: own ones; account: shared and pool)."""
        event = ctx.base_event("renewal", "system", reason)
        event["time"] = at
        event["plan"] = plan.name
        event["period_index"] = bs.period_index
        fee = plan.fee_for_period(bs.period_index)
        if not is_account and ctx.account.plan == plan.name:
            fee = 0  # a line on its account's plan: the account pays the fee once
        account = ctx.account
        if fee:
            if account.payment == "prepaid" and account.available() < fee:
                bs.renewal_pending = True
                event["kind"] = "renewal_failed"
                event["reason"] = "insufficient balance for the plan fee"
                event["charge"] = 0
                ctx.events.append(event)
                return
            account.balance -= fee
            ctx.account_dirty = True
            event["charge"] = fee
            event["impacts"].append(ctx.wallet_impact(-fee))
        bs.renewal_pending = False
        valid_to = bs.period_end
        allowances = [a for a in plan.allowances if a.shared == is_account]
        if is_account:
            pool = plan.pool_allowance(account.active_lines)
            if pool is not None:
                allowances.append(pool)
        for a in allowances:
            kind = "pool" if a.name == "pool" and is_account and plan.pool else "plan"
            rgs = sorted(a.rating_groups) if a.rating_groups is not None else None
            b = Bucket(bs.new_bucket_id(), a.name, kind, a.unit, rgs, a.priority, a.amount, a.amount, 0, at, valid_to)
            bs.buckets.append(b)
            event["impacts"].append(_bucket_impact(owner, b, a.amount))
        ctx.events.append(event)

    def assign_plan_to(self, ctx: Context, plan: Plan, *, is_account: bool, actor: str, reason: str | None) -> None:
        """Start `plan` now on the line (or its account): expire the old plan's buckets, charge the first fee,
        grant allowances and one-off bonuses."""
        now = ctx.now
        if is_account:
            if ctx.acct_bs is None:
                ctx.acct_bs = BalanceSet()
            bs = ctx.acct_bs
            ctx.account.plan = plan.name
            ctx.account_dirty = True
            ctx.acct_bs_dirty = True
            owner = account_owner(ctx.account.id)
        else:
            if ctx.line_bs is None:
                ctx.line_bs = BalanceSet()
            bs = ctx.line_bs
            ctx.line_bs_dirty = True
            owner = line_owner(ctx.sub.id)
        for b in bs.buckets:
            if b.kind in ("plan", "pool", "rollover"):
                b.valid_to = min(b.valid_to, now)
        self._expire_buckets(ctx, bs, owner, now, period_end=False)
        change = ctx.base_event("plan_change", actor, reason)
        change["plan"] = plan.name
        change["previous_plan"] = bs.plan
        ctx.events.append(change)
        bs.plan = plan.name
        bs.period_start = now
        bs.period_end = period_end_of(self._catalogue, plan, now, ctx.account.cycle_day)
        bs.period_index = 0
        bs.usage = {}
        self._start_period(ctx, bs, plan, owner, is_account=is_account, at=now, reason="plan assigned")
        if not is_account:
            for promo in plan.bonus_allowances():
                a = promo.allowance
                if a is None:
                    continue
                valid_to = now + promo.validity_seconds if promo.validity_seconds else FOREVER
                rgs = sorted(a.rating_groups) if a.rating_groups is not None else None
                b = Bucket(
                    bs.new_bucket_id(), a.name, "bonus", a.unit, rgs, a.priority, a.amount, a.amount, 0, now, valid_to
                )
                bs.buckets.append(b)
                event = ctx.base_event("bonus", actor, f"promotion {a.name}")
                event["impacts"].append(_bucket_impact(owner, b, a.amount))
                ctx.events.append(event)

    def retry_pending_renewal(self, ctx: Context) -> None:
        """After a top-up: a period whose fee could not be paid is started now (allowances valid to its end)."""
        for bs, is_account in ((ctx.line_bs, False), (ctx.acct_bs, True)):
            if bs is None or not bs.renewal_pending or bs.plan is None:
                continue
            plan = self._catalogue.plans.get(bs.plan)
            if plan is None:
                continue
            owner = account_owner(ctx.account.id) if is_account else line_owner(ctx.sub.id)
            # Periods that ended while the fee stayed unpaid and nobody touched the line (service down, sweeper
            # not there yet) are skipped, not charged: the retried renewal starts the period holding `now`.
            while ctx.now >= bs.period_end:
                bs.period_start = bs.period_end
                bs.period_end = period_end_of(self._catalogue, plan, bs.period_start, ctx.account.cycle_day)
                bs.period_index += 1
                bs.usage = {}
            self._start_period(ctx, bs, plan, owner, is_account=is_account, at=ctx.now, reason="renewal retried")
            if is_account:
                ctx.acct_bs_dirty = True
            else:
                ctx.line_bs_dirty = True

    # ==============================================================================================================
    # Session requests
    # ==============================================================================================================
    def charge(self, txn: Txn, req: ChargingRequest, now: int) -> ChargingAnswer:
        """Decide one charging request inside the store transaction `txn`."""
        if req.kind == EVENT:
            return self._event(txn, req, now)
        session = txn.get_session(req.session)
        if session is not None:
            stored = session.answer_for(req.number)
            if stored is not None:
                return ChargingAnswer.unpack(stored, duplicate=True)
            if session.closed:
                return ChargingAnswer(SESSION_UNKNOWN, req.session, req.number, detail="session already terminated")
            applied = session.was_applied(req.number)
            if applied is None or applied:
                # Applied before but its answer is no longer kept, or older than anything we can vouch for:
                # applying it again could charge twice, so it is refused and changes nothing.
                raise RequestError(
                    "request number",
                    f"{req.number} was already applied or is too old for session {req.session} "
                    f"(last request {session.last_request})",
                )
        if req.kind == INITIAL:
            sub = self.resolve_line(txn, req.identities)
            if sub is None:
                return ChargingAnswer(USER_UNKNOWN, req.session, req.number, detail="no line with these identities")
            if session is not None:
                ctx = self.context(txn, sub, now, session.account)
                self._release_all(ctx, session)
            else:
                ctx = self.context(txn, sub, now)
            replay = session  # an open session's replay state outlives a new CCR-INITIAL: see _keep_replay_state
            session = Session(
                req.session,
                sub.id,
                sub.account,
                req.protocol,
                now,
                now,
                0,
                req.number,
                False,
                {},
                [],
                req.serving_network,
                req.notify,
            )
            if replay is not None:
                _keep_replay_state(replay, session)
        else:
            if session is None:
                return ChargingAnswer(SESSION_UNKNOWN, req.session, req.number, detail="no such session")
            sub = txn.get_subscriber(session.subscriber)
            if sub is None:
                raise RequestError("session", f"session {req.session} belongs to a deleted line")
            ctx = self.context(txn, sub, now, session.account)
            if req.serving_network:
                session.serving_network = req.serving_network
            if req.notify is not None:
                session.notify = req.notify
        answer = ChargingAnswer(SUCCESS, req.session, req.number, currency=ctx.account.currency)
        if sub.state != ACTIVE and req.kind == INITIAL:
            answer.result = END_USER_SERVICE_DENIED
            answer.detail = f"line is {sub.state}"
            return answer  # nothing was reserved: no session is stored
        plan = self.line_plan(ctx)
        terminating = req.kind == TERMINATE
        validity = 0
        for unit_req in req.units:
            unit_answer = UnitAnswer(unit_req.rating_group, service_id=unit_req.service_id)
            answer.units.append(unit_answer)
            if unit_req.used:
                self._commit_usage(ctx, session, unit_req, unit_answer, plan)
            final_report = terminating or unit_req.reason == REASON_FINAL or _any_final(unit_req.used)
            if final_report or unit_req.requested is not None:
                self._release(ctx, session, unit_req.rating_group)
            if terminating or unit_req.requested is None or unit_req.reason == REASON_FINAL:
                continue
            if sub.state != ACTIVE:
                unit_answer.result = END_USER_SERVICE_DENIED
                continue
            self._grant(ctx, session, unit_req, unit_answer, plan, req.serving_network or session.serving_network)
            if unit_answer.validity_time:
                validity = max(validity, unit_answer.validity_time)
        if terminating:
            self._release_all(ctx, session)
        if req.units and _all_failed(answer.units):
            # Every rating group failed: the request as a whole carries the (first) failure.
            answer.result = answer.units[0].result
        self._finish(ctx, session, req, answer, validity, terminating)
        return answer

    def _finish(
        self, ctx: Context, session: Session, req: ChargingRequest, answer: ChargingAnswer, validity: int, closed: bool
    ) -> None:
        now = ctx.now
        session.updated = now
        session.mark_applied(req.number)
        if closed or (not session.reservations and req.kind == INITIAL and answer.result != SUCCESS):
            session.closed = True
            session.reservations = {}
            session.expires = now + self.config.idempotency_window
        else:
            if not validity:
                validity = self._catalogue.grants.validity_time
            session.expires = now + self.config.reap_factor * validity
        answers = session.answers
        # Packed once here: every later update of the session then carries the kept answers as opaque bytes
        # instead of unpacking and repacking their fields.
        answers.append([req.number, pack(answer.pack())])
        if len(answers) > self.config.answers_kept:
            del answers[: len(answers) - self.config.answers_kept]
        ctx.line_bs_dirty = True  # the session lives beside the line's balances: one page either way
        ctx.flush()
        ctx.txn.put_session(session, indexed=req.kind != INITIAL)

    # -- commit -----------------------------------------------------------------------------------------------------
    def _commit_usage(
        self,
        ctx: Context,
        session: Session,
        unit_req: UnitRequest,
        unit_answer: UnitAnswer,
        plan: Plan | None,
    ) -> None:
        """Charge the units reported for one rating group and end the grant they were used from.

        Several reports of one rating group (RFC 4006 allows more than one Used-Service-Unit, e.g. around a
        tariff change) are charged together at the current price."""
        rg = unit_req.rating_group
        reports = unit_req.used
        if len(reports) == 1:
            units = reports[0].units
        else:
            units = {}
            for r in reports:
                for k, v in r.units.items():
                    units[k] = units.get(k, 0) + v
        reason = reports[-1].reason or unit_req.reason
        reservation = session.reservations.get(rg)
        tariff = self._tariff(plan, rg, reservation)
        unit = reservation.unit if reservation is not None else (tariff.unit if tariff is not None else None)
        if unit is None:
            # No tariff and nothing reserved: rate by the first unit type reported, against buckets only.
            unit = _first_reported(units)
            if unit is None:
                return
        used = units.get(unit, 0)
        if unit == "bytes" and not used:
            used = units.get("bytes_in", 0) + units.get("bytes_out", 0)
        if used < 0:
            raise RequestError("used units", f"negative {unit} reported for rating group {rg}")
        if used == 0:
            # Nothing used (e.g. a report on validity-time expiry), but a report ends its grant: release it.
            self._release(ctx, session, rg)
            return
        session.reservations.pop(rg, None)
        event = ctx.base_event("usage", "network:" + session.protocol, reason)
        event["session"] = session.key
        event["rating_group"] = rg
        event["service_id"] = unit_req.service_id
        event["units"] = units if all(units.values()) else {k: v for k, v in units.items() if v}
        event["unit"] = unit
        event["used"] = used
        # The container this report closes: from the session's previous request (its grant) to now.
        event["opened"] = session.updated
        event["session_started"] = session.created
        impacts = event["impacts"]
        left = used
        granted = 0
        zone = self._catalogue.zone_of(session.serving_network)
        if reservation is not None:
            granted = reservation.granted
            zone = reservation.zone
            # Reserved bucket units first, in the order they were reserved (priority order); what is left of
            # the grant is released.
            for portion in reservation.portions:
                src, bucket_id, amount = portion
                bucket, owner = self._bucket(ctx, src, bucket_id)
                take = min(left, amount)
                if bucket is not None:
                    bucket.reserved -= amount
                    if take:
                        bucket.remaining -= take
                        impacts.append(_bucket_impact(owner, bucket, -take))
                    self._mark(ctx, src)
                left -= take
            if reservation.money:
                ctx.account.reserved -= reservation.money
                ctx.account_dirty = True
        over = max(0, used - granted) if reservation is not None else used
        if left > 0 and over > 0:
            # Usage nobody reserved for: unreserved allowance first.
            for bucket, src, owner in self._usable_buckets(ctx, plan, unit, rg):
                take = min(left, over, bucket.available())
                if take <= 0:
                    continue
                bucket.remaining -= take
                impacts.append(_bucket_impact(owner, bucket, -take))
                self._mark(ctx, src)
                left -= take
                over -= take
                if left == 0 or over == 0:
                    break
        charge = 0
        if left > 0:
            if tariff is None:
                event["flag"] = "unrated"
            else:
                local = self._catalogue.local_time(ctx.now)
                usage = ctx.line_bs.usage.get(rg, 0) if ctx.line_bs is not None else 0
                # Usage reported from a zone the tariff bars (it was never granted there) is still charged,
                # at the home price: revenue is never dropped.
                price_zone = self._catalogue.settings.home_zone if tariff.is_denied(zone) else zone
                charge = tariff.charge(left, price_zone, local, usage)
                if charge:
                    ctx.account.balance -= charge
                    ctx.account_dirty = True
                    impacts.append(ctx.wallet_impact(-charge))
                event["tariff"] = tariff.name
        if ctx.line_bs is not None:
            ctx.line_bs.usage[rg] = ctx.line_bs.usage.get(rg, 0) + used
            ctx.line_bs_dirty = True
        if reservation is not None and used > granted:
            unit_answer.over_grant = True
            event["over_grant"] = used - granted
        event["zone"] = zone
        event["charge"] = charge
        unit_answer.charged += charge
        ctx.events.append(event)

    def _tariff(self, plan: Plan | None, rg: int, reservation: Reservation | None) -> Tariff | None:
        """The tariff that prices usage: the one the reservation was granted with ("name@catalogue-version"),
        from the catalogue of that version while it is kept (after a restart, the current one)."""
        if reservation is not None and reservation.tariff is not None:
            name, _, version = reservation.tariff.partition("@")
            catalogue = self._by_version.get(version, self._catalogue)
            t = catalogue.tariffs.get(name) or self._catalogue.tariffs.get(name)
            if t is not None:
                return t
        return plan.tariff_for(rg) if plan is not None else None

    def _bucket(self, ctx: Context, src: int, bucket_id: int) -> tuple[Bucket | None, str]:
        if src == SRC_LINE:
            bs = ctx.line_bs
            owner = line_owner(ctx.sub.id)
        else:
            bs = ctx.acct_bs
            owner = account_owner(ctx.account.id)
        return (bs.bucket(bucket_id) if bs is not None else None), owner

    @staticmethod
    def _mark(ctx: Context, src: int) -> None:
        if src == SRC_LINE:
            ctx.line_bs_dirty = True
        elif src == SRC_ACCOUNT:
            ctx.acct_bs_dirty = True
        else:
            ctx.account_dirty = True

    def _usable_buckets(self, ctx: Context, plan: Plan | None, unit: str, rg: int) -> list[tuple[Bucket, int, str]]:
        now = ctx.now
        found: list[tuple[int, int, Bucket, int, str]] = []
        if ctx.line_bs is not None:
            owner = line_owner(ctx.sub.id)
            for b in ctx.line_bs.buckets:
                if b.usable(unit, rg, now) and b.available() > 0:
                    found.append((b.priority, b.valid_to, b, SRC_LINE, owner))
        if ctx.acct_bs is not None:
            owner = account_owner(ctx.account.id)
            for b in ctx.acct_bs.buckets:
                if b.usable(unit, rg, now) and b.available() > 0:
                    found.append((b.priority, b.valid_to, b, SRC_ACCOUNT, owner))
        if len(found) > 1:
            found.sort(key=_priority_order)
        return [(f[2], f[3], f[4]) for f in found]

    # -- release ----------------------------------------------------------------------------------------------------
    def _release(self, ctx: Context, session: Session, rg: int) -> None:
        reservation = session.reservations.pop(rg, None)
        if reservation is None:
            return
        for src, bucket_id, amount in reservation.portions:
            bucket, _ = self._bucket(ctx, src, bucket_id)
            if bucket is not None:
                bucket.reserved -= amount
                self._mark(ctx, src)
        if reservation.money:
            ctx.account.reserved -= reservation.money
            ctx.account_dirty = True

    def _release_all(self, ctx: Context, session: Session) -> None:
        for rg in list(session.reservations):
            self._release(ctx, session, rg)

    def release_session(self, txn: Txn, session_key: str, now: int, reason: str, actor: str = "system") -> bool:
        """Release every reservation of a session (reaper: client silent; line moved) and close it. An event
        records the release. Returns False when there was nothing to release."""
        session = txn.get_session(session_key)
        if session is None or session.closed:
            return False
        sub = txn.get_subscriber(session.subscriber)
        if sub is None:
            txn.delete_session(session)
            return True
        ctx = self.context(txn, sub, now, session.account)
        event = ctx.base_event("release", actor, reason)
        event["session"] = session.key
        event["released"] = [
            {"rating_group": r.rating_group, "unit": r.unit, "units": r.granted, "money": r.money}
            for r in session.reservations.values()
        ]
        self._release_all(ctx, session)
        ctx.events.append(event)
        session.closed = True
        session.expires = now + self.config.idempotency_window
        ctx.line_bs_dirty = True
        ctx.flush()
        txn.put_session(session)
        return True

    def reap(self, txn: Txn, session_key: str, now: int) -> bool:
        """Release a session silent past its expiry, or forget a closed one whose replay window ended."""
        session = txn.get_session(session_key)
        if session is None or session.expires > now:
            return False
        if session.closed:
            txn.delete_session(session)
            return True
        return self.release_session(txn, session_key, now, "reservation timeout: client silent")

    # -- grant ------------------------------------------------------------------------------------------------------
    def _grant(
        self,
        ctx: Context,
        session: Session,
        unit_req: UnitRequest,
        unit_answer: UnitAnswer,
        plan: Plan | None,
        serving_network: str | None,
    ) -> None:
        rg = unit_req.rating_group
        catalogue = self._catalogue
        if plan is None:
            unit_answer.result = RATING_FAILED
            return
        zone = catalogue.zone_of(serving_network)
        tariff = plan.tariff_for(rg)
        if tariff is None:
            unit_answer.result = RATING_FAILED
            return
        if catalogue.is_denied(plan, rg, zone):
            unit_answer.result = END_USER_SERVICE_DENIED
            return
        unit = tariff.unit
        policy = catalogue.grant_policy(rg)
        quantum = policy.quantum(unit)
        requested = unit_req.requested or {}
        want = requested.get(unit) or quantum
        if want > quantum:
            want = quantum
        portions: list[list[int]] = []
        covered = 0
        for bucket, src, _owner in self._usable_buckets(ctx, plan, unit, rg):
            take = min(want - covered, bucket.available())
            if take <= 0:
                continue
            bucket.reserved += take
            self._mark(ctx, src)
            portions.append([src, bucket.id, take])
            covered += take
            if covered >= want:
                break
        money = 0
        granted = covered
        if covered < want and plan.overage == "charge":
            # Beyond the allowances the wallet pays at the tariff price (postpaid: down to its credit limit).
            local = catalogue.local_time(ctx.now)
            usage = ctx.line_bs.usage.get(rg, 0) if ctx.line_bs is not None else 0
            funds = max(self._funds(ctx.account), 0)
            units = min(want - covered, tariff.affordable(funds, zone, local, usage))
            if units:
                money = tariff.charge(units, zone, local, usage)
                granted += units
                if money:
                    ctx.account.reserved += money
                    ctx.account_dirty = True
        unit_answer.unit = unit
        unit_answer.validity_time = policy.validity_time
        if policy.quota_holding_time:
            unit_answer.quota_holding_time = policy.quota_holding_time
        if granted < want:
            unit_answer.final = self._final_unit(plan)
        if granted == 0:
            unit_answer.result = CREDIT_LIMIT_REACHED
            unit_answer.granted = 0
            return
        unit_answer.granted = granted
        if unit == "bytes" and policy.volume_threshold_percent:
            unit_answer.volume_threshold = granted * policy.volume_threshold_percent // 100
        elif unit == "seconds" and policy.time_threshold_percent:
            unit_answer.time_threshold = granted * policy.time_threshold_percent // 100
        session.reservations[rg] = Reservation(
            rg, unit, granted, portions, money, f"{tariff.name}@{self._version}", zone
        )

    @staticmethod
    def _final_unit(plan: Plan) -> FinalUnit:
        if plan.overage == "redirect":
            return FinalUnit(FUA_REDIRECT, redirect_address=plan.redirect_address)
        if plan.overage == "restrict":
            return FinalUnit(
                FUA_RESTRICT, filter_id=plan.filter_id, restriction_rules=list(plan.restriction_rules) or None
            )
        return FinalUnit(FUA_TERMINATE)

    # ==============================================================================================================
    # One-shot events (RFC 4006 CCR-Event)
    # ==============================================================================================================
    def _event(self, txn: Txn, req: ChargingRequest, now: int) -> ChargingAnswer:
        if req.action not in EVENT_ACTIONS:
            raise RequestError("requested action", f"unsupported action {req.action!r}")
        key = req.idempotency_key or f"{req.session}#{req.number}"
        stored = txn.get_idem(key, now)
        if stored is not None:
            return ChargingAnswer.unpack(stored, duplicate=True)
        sub = self.resolve_line(txn, req.identities)
        if sub is None:
            return ChargingAnswer(USER_UNKNOWN, req.session, req.number, detail="no line with these identities")
        ctx = self.context(txn, sub, now)
        answer = ChargingAnswer(SUCCESS, req.session, req.number, currency=ctx.account.currency)
        plan = self.line_plan(ctx)
        zone = self._catalogue.zone_of(req.serving_network)
        local = self._catalogue.local_time(now)
        writes = False
        if sub.state != ACTIVE and req.action in (DIRECT_DEBITING, CHECK_BALANCE):
            answer.result = END_USER_SERVICE_DENIED
            answer.detail = f"line is {sub.state}"
        elif req.action == CHECK_BALANCE and not req.units:
            answer.balance = ctx.account.balance
            answer.enough_credit = ctx.account.available() > 0
        else:
            total_cost = 0
            for unit_req in req.units or [UnitRequest()]:
                ua = UnitAnswer(unit_req.rating_group, service_id=unit_req.service_id)
                answer.units.append(ua)
                rg = unit_req.rating_group
                tariff = plan.tariff_for(rg) if plan is not None else None
                if tariff is None or plan is None:
                    ua.result = RATING_FAILED
                    continue
                if self._catalogue.is_denied(plan, rg, zone):
                    ua.result = END_USER_SERVICE_DENIED
                    continue
                amounts = unit_req.requested or (unit_req.used[0].units if unit_req.used else {})
                units = amounts.get(tariff.unit) or (1 if tariff.unit == "events" else 0)
                ua.unit = tariff.unit
                usage = ctx.line_bs.usage.get(rg, 0) if ctx.line_bs is not None else 0
                from_buckets = 0
                buckets = self._usable_buckets(ctx, plan, tariff.unit, rg)
                if req.action in (DIRECT_DEBITING, CHECK_BALANCE):
                    from_buckets = min(units, sum(b.available() for b, _, _ in buckets))
                cost = tariff.charge(units - from_buckets, zone, local, usage)
                total_cost += cost
                if req.action == PRICE_ENQUIRY:
                    ua.granted = units
                elif req.action == CHECK_BALANCE:
                    answer.enough_credit = cost <= self._funds(ctx.account)
                elif req.action == REFUND_ACCOUNT:
                    ctx.account.balance += cost
                    ctx.account_dirty = True
                    event = ctx.base_event("refund", f"network:{req.protocol}", "REFUND_ACCOUNT")
                    event.update(
                        session=req.session,
                        rating_group=rg,
                        unit=tariff.unit,
                        used=-units,
                        charge=-cost,
                        tariff=tariff.name,
                        zone=zone,
                    )
                    event["impacts"].append(ctx.wallet_impact(cost))
                    ctx.events.append(event)
                    ua.granted = units
                    writes = True
                else:  # DIRECT_DEBITING
                    if cost > self._funds(ctx.account):
                        ua.result = CREDIT_LIMIT_REACHED
                        ua.final = FinalUnit(FUA_TERMINATE)
                        continue
                    event = ctx.base_event("usage", f"network:{req.protocol}", "DIRECT_DEBITING")
                    event.update(
                        session=req.session,
                        rating_group=rg,
                        service_id=unit_req.service_id,
                        unit=tariff.unit,
                        used=units,
                        tariff=tariff.name,
                        zone=zone,
                        charge=cost,
                    )
                    left = from_buckets
                    for bucket, src, owner in buckets:
                        take = min(left, bucket.available())
                        if take <= 0:
                            continue
                        bucket.remaining -= take
                        self._mark(ctx, src)
                        event["impacts"].append(_bucket_impact(owner, bucket, -take))
                        left -= take
                        if left == 0:
                            break
                    if cost:
                        ctx.account.balance -= cost
                        ctx.account_dirty = True
                        event["impacts"].append(ctx.wallet_impact(-cost))
                    if ctx.line_bs is not None:
                        ctx.line_bs.usage[rg] = usage + units
                        ctx.line_bs_dirty = True
                    ctx.events.append(event)
                    ua.granted = units
                    ua.charged = cost
                    writes = True
            answer.cost = total_cost
            answer.balance = ctx.account.balance
            if req.units and _all_failed(answer.units):
                answer.result = answer.units[0].result
        ctx.flush()
        if writes or req.action in (DIRECT_DEBITING, REFUND_ACCOUNT):
            txn.put_idem(key, now + self.config.idempotency_window, answer.pack())
        return answer

    @staticmethod
    def _funds(account: Account) -> int:
        """Money a grant or debit may take: the wallet, then the credit limit (postpaid and hybrid; a prepaid
        account has none). A hybrid account differs from a postpaid one in being topped up, not in this."""
        return account.available()


def period_end_of(catalogue: Catalogue, plan: Plan, start: int, cycle_day: int) -> int:
    return period_end(plan.period, start, cycle_day, catalogue.settings.timezone)
