"""The charging engine: session charging (rating, quota grants, commits, reservation release).

Sans-IO: every entry point takes a store transaction (`store.Txn`), a request and `now` (epoch seconds from
an injected clock), decides from what it reads, writes its changes and events into the same transaction and
returns an answer. It never opens a socket or reads the clock.

Order of work for one session request (docs/architecture.md):
1. answer a retransmission from the stored answer (exactly once);
2. renew the line's and the account's plan periods that ended before `now`, expire lapsed buckets
   (`chf.core.renewals`);
3. per rating group, commit the used units against the reservation behind them (buckets in priority order,
   then wallet money at the tariff price; usage beyond the grant is still charged, and flagged);
4. release what is left of the reservation, then reserve the next grant:
   min(requested, quantum, what the balances can cover), with a Final-Unit-Indication when less than the
   quantum is affordable;
5. write balances, session (with the answer, for replay) and one event per balance change.

One-shot events (CCR-Event) are decided by `chf.core.events`; the state a request works on is a
`chf.core.context.Context`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chf.core.catalogue import Catalogue, GrantPolicy, Plan, Tariff
from chf.core.context import Context, bucket_impact, funds
from chf.core.currency import check_currency
from chf.core.events import charge_event
from chf.core.model import (
    CREDIT_LIMIT_REACHED,
    END_USER_SERVICE_DENIED,
    EVENT,
    FUA_REDIRECT,
    FUA_RESTRICT,
    FUA_TERMINATE,
    INITIAL,
    RATING_FAILED,
    REASON_FINAL,
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
    all_failed,
)
from chf.core.pools import top_off
from chf.core.renewals import bring_up_to_date
from chf.core.split import payer_id, rule_for
from chf.core.tax import annotate, gross_up, net_budget, profile_of
from chf.core.versions import CatalogueVersions
from chf.core.wholesale import rate_levels
from chf.core.zones import give_back, hold, overage_in, room
from store.interface import Txn
from store.schema import ACTIVE, BalanceSet, Reservation, Session, Subscriber, pack

# Protocols whose sessions the charging function names, not the client (Nchf: the ChargingDataRef of a create).
# Their client cannot retransmit an initial request after it used the session (it learns the name from the
# answer), so an initial request on such a session closed by a later request is a new one: it is not answered
# from the closed session's stored answer (the front-end names a new session for it).
SESSIONS_NAMED_BY_US = frozenset({"nchf"})

# Defaults of EngineConfig.max_report: octets 2^40 (1 TiB), seconds 7 days, events 10^6. Unit types not named
# here (e.g. money) are bounded by MAX_REPORT_OTHER so that no sum can overflow a 64-bit field.
MAX_REPORT = {"bytes": 1 << 40, "seconds": 7 * 86_400, "events": 1_000_000}
MAX_REPORT_OTHER = (1 << 62) - 1
# RequestError.field of a report over the bound: "usage/<unit request index>/<report index>/<unit type>", the
# report at which the request's sum of that unit type passed it (front-ends name its AVP or JSON pointer).
USAGE_BOUND_FIELD = "usage"

IDENTITY_QUARANTINE = {"imsi": 90 * 86400, "msisdn": 90 * 86400, "iccid": 90 * 86400}


@dataclass(slots=True)
class EngineConfig:
    idempotency_window: int = 3600  # seconds a stored answer is kept for replay
    answers_kept: int = 4  # recent answers kept in a session for retransmissions (older: refused)
    reap_factor: int = 2  # a session silent for reap_factor x validity time is released
    # Seconds a one-shot debit stays refundable by REFUND_ACCOUNT (chf.core.events); 0: no refunds.
    refund_window: int = 7 * 86_400
    # Seconds after its line's termination before an identity may go to another line ([engine]
    # <kind>_quarantine_days; chf.core.provisioning releases it then).
    identity_quarantine: dict[str, int] = field(default_factory=lambda: dict(IDENTITY_QUARANTINE))
    # The most one request may report used, per unit type, summed over its rating groups and reports ([engine]
    # max_report_*); more is implausible and refused whole (USAGE_BOUND_FIELD) before anything is written.
    max_report: dict[str, int] = field(default_factory=lambda: dict(MAX_REPORT))


# Helpers of the per-request methods, outside them: chf/core/engine.pxd compiles those as cpdef methods, which
# cannot hold closures (generator expressions, lambdas).
def _report_bound(bounds: dict[str, int], unit: str) -> int:
    if unit in ("bytes_in", "bytes_out"):
        unit = "bytes"
    return bounds.get(unit, MAX_REPORT_OTHER)


def check_usage_bounds(req: ChargingRequest, bounds: dict[str, int]) -> None:
    """Refuse (RequestError, field USAGE_BOUND_FIELD/i/j/unit) a request whose used units, one report or the sum
    over its reports of a unit type, exceed the bound of that unit type, or are negative. Runs before anything is
    read or written, so a refused request changes nothing."""
    sums: dict[str, int] = {}
    for i, unit_req in enumerate(req.units):
        for j, report in enumerate(unit_req.used):
            for unit, value in report.units.items():
                bound = _report_bound(bounds, unit)
                total = sums.get(unit, 0) + value
                sums[unit] = total
                if value < 0 or total > bound:
                    what = "negative" if value < 0 else f"more than {bound}"
                    raise RequestError(
                        f"{USAGE_BOUND_FIELD}/{i}/{j}/{unit}",
                        f"{what} {unit} reported used in this request (rating group {unit_req.rating_group})",
                    )


def _any_final(reports: list[UsageReport]) -> bool:
    return any(r.reason == REASON_FINAL for r in reports)


def _first_reported(units: dict[str, int]) -> str | None:
    """The first unit type with a non-zero amount."""
    for u, v in units.items():
        if v:
            return u
    return None


def _reported(reports: list[UsageReport]) -> dict[str, int]:
    """The units of one rating group's reports, summed by unit type."""
    if len(reports) == 1:
        return reports[0].units
    units: dict[str, int] = {}
    for r in reports:
        for k, v in r.units.items():
            units[k] = units.get(k, 0) + v
    return units


def _used(units: dict[str, int], unit: str) -> int:
    """The units of type `unit` reported used; bytes may come as uplink and downlink only."""
    used = units.get(unit, 0)
    if unit == "bytes" and not used:
        used = units.get("bytes_in", 0) + units.get("bytes_out", 0)
    return used


def _set_thresholds(unit_answer: UnitAnswer, unit: str, policy: GrantPolicy, granted: int) -> None:
    """The volume or time threshold at which the client reports before the grant is used up (TS 32.299)."""
    if unit == "bytes" and policy.volume_threshold_percent:
        unit_answer.volume_threshold = granted * policy.volume_threshold_percent // 100
    elif unit == "seconds" and policy.time_threshold_percent:
        unit_answer.time_threshold = granted * policy.time_threshold_percent // 100


def _final_unit(plan: Plan) -> FinalUnit:
    """What the client does when the grant runs out and nothing more can be granted (the plan's overage)."""
    if plan.overage == "redirect":
        return FinalUnit(FUA_REDIRECT, redirect_address=plan.redirect_address)
    if plan.overage == "restrict":
        return FinalUnit(FUA_RESTRICT, filter_id=plan.filter_id, restriction_rules=list(plan.restriction_rules) or None)
    return FinalUnit(FUA_TERMINATE)


def _keep_replay_state(previous: Session, session: Session) -> None:
    """A CCR-INITIAL on a session still open starts it afresh (its reservations were released) but keeps what
    recognises a retransmission of the session's earlier requests: the numbers applied and the answers kept.
    Without them a retransmitted CCR-UPDATE after it (say with the T flag, after a failover and a restart) was
    charged a second time."""
    session.last_request = previous.last_request
    session.seen = previous.seen
    session.answers = previous.answers


class Engine:
    # Catalogues replaced by a reload stay reachable by their version for this many reloads, so that usage inside
    # a grant is charged at the price the grant was made with (docs/architecture.md: reloads apply to new grants).
    # The versions of the running catalogue (chf.core.versions) are always reachable.
    KEPT_CATALOGUES = 8

    def __init__(self, catalogue: Catalogue | CatalogueVersions, config: EngineConfig | None = None) -> None:
        self._by_version: dict[str, Catalogue] = {}
        self.versions = CatalogueVersions.of(catalogue)
        self.config = config or EngineConfig()

    @property
    def versions(self) -> CatalogueVersions:
        return self._versions

    @versions.setter
    def versions(self, versions: CatalogueVersions) -> None:
        self._versions = versions
        for c in versions.versions:
            self._by_version.pop(c.version, None)
            self._by_version[c.version] = c
        while len(self._by_version) > self.KEPT_CATALOGUES + len(versions.versions):
            del self._by_version[next(iter(self._by_version))]
        self._span = versions.at(0)

    def remember(self, catalogue: Catalogue) -> None:
        """Make a version that is not (or no longer) among the running ones reachable by its name, for the open
        reservations granted in it (chf.runtime.catalogues reads the kept ones back after a restart)."""
        if catalogue.version not in self._by_version:
            self._by_version[catalogue.version] = catalogue
            self.versions = self._versions  # evicts beyond KEPT_CATALOGUES, the running versions kept

    @property
    def catalogue(self) -> Catalogue:
        """The version that takes effect last (with one version: the catalogue). Requests use `catalogue_at`."""
        return self._versions.latest()

    @catalogue.setter
    def catalogue(self, catalogue: Catalogue) -> None:
        self.versions = CatalogueVersions.of(catalogue)

    def catalogue_at(self, now: int) -> Catalogue:
        """The version of the catalogue in force at `now` (chf.core.versions). The last one found is kept with
        the span it is in force (one tuple, replaced whole: the Redis store runs requests in several threads), so
        that a request in that span costs two comparisons."""
        span = self._span
        if span[1] <= now < span[2]:
            return span[0]
        span = self._versions.at(now)
        self._span = span
        return span[0]

    def _validity_until_change(self, now: int, validity: int) -> int:
        """A grant's Validity-Time, cut so that it ends when the next version of the catalogue takes effect: a
        grant never spans a change, and its usage is priced by the version it was made in (chf.core.versions)."""
        span = self._span
        until = span[2] if span[1] <= now < span[2] else self._versions.at(now)[2]
        if now + validity > until:
            return until - now
        return validity

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
        ctx = Context(txn, self.catalogue_at(now), now, sub, account)
        ctx.versions = self._versions
        if ctx.catalogue.tax_profiles:
            ctx.tax = profile_of(ctx.catalogue, txn, account)
        ctx.line_bs = txn.get_line_balances(sub.id) or BalanceSet()
        if account.plan is not None:
            ctx.acct_bs = txn.get_account_balances(account.id) or BalanceSet()
        bring_up_to_date(ctx)
        return ctx

    def account_context(self, txn: Txn, account_id: str, now: int) -> Context | None:
        """A context for account-level work (top-up, shared allowances, pools): no line, events name none."""
        account = txn.get_account(account_id)
        if account is None:
            return None
        pseudo = Subscriber(0, account.tenant, account.id, "", None, None, None, ACTIVE, 0, account.plan, 0)
        ctx = Context(txn, self.catalogue_at(now), now, pseudo, account)
        ctx.versions = self._versions
        if ctx.catalogue.tax_profiles:
            ctx.tax = profile_of(ctx.catalogue, txn, account)
        if account.plan is not None:
            ctx.acct_bs = txn.get_account_balances(account.id) or BalanceSet()
            bring_up_to_date(ctx)
        return ctx

    def line_plan(self, ctx: Context) -> Plan | None:
        """The plan that rates the line: its own, else its account's; None (nothing is granted) when it is not in
        the catalogue or not priced in the account's currency (never relabelled: chf.core.catalogue.plan_in)."""
        return ctx.catalogue.plan_in(ctx.sub.plan or ctx.account.plan, ctx.account.currency)

    # ==============================================================================================================
    # Session requests
    # ==============================================================================================================
    def charge(self, txn: Txn, req: ChargingRequest, now: int) -> ChargingAnswer:
        """Decide one charging request inside the store transaction `txn`."""
        check_usage_bounds(req, self.config.max_report)
        if req.kind == EVENT:
            return charge_event(self, txn, req, now)
        session = txn.get_session(req.session)
        if session is not None:
            replay = self._replay(session, req)
            if replay is not None:
                return replay
        if req.kind == INITIAL:
            sub = self.resolve_line(txn, req.identities)
            if sub is None:
                return ChargingAnswer(USER_UNKNOWN, req.session, req.number, detail="no line with these identities")
            if session is not None:
                # A repeated initial request restarts the session: what the old one held is released.
                ctx = self.context(txn, sub, now, session.account)
                self._release_all(ctx, session)
            else:
                ctx = self.context(txn, sub, now)
            previous = session  # its replay state outlives a new CCR-INITIAL: see _keep_replay_state
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
            session.apn = req.apn
            session.rat = req.rat
            if previous is not None:
                _keep_replay_state(previous, session)
        else:
            if session is None:
                return ChargingAnswer(SESSION_UNKNOWN, req.session, req.number, detail="no such session")
            sub = txn.get_subscriber(session.subscriber)
            if sub is None:
                raise RequestError("session", f"session {req.session} belongs to a deleted line")
            ctx = self.context(txn, sub, now, session.account)
            self._follow_client(session, req)
        if req.currency is not None:  # before anything is written (the context buffers its changes)
            check_currency(req, ctx.account)
        answer = ChargingAnswer(SUCCESS, req.session, req.number, currency=ctx.account.currency)
        if sub.state != ACTIVE and req.kind == INITIAL:
            answer.result = END_USER_SERVICE_DENIED
            answer.detail = f"line is {sub.state}"
            return answer  # nothing was reserved: no session is stored
        plan = self.line_plan(ctx)
        terminating = req.kind == TERMINATE
        serving_network = req.serving_network or session.serving_network
        validity = 0
        for unit_req in req.units:
            unit_answer = self._charge_unit(ctx, session, unit_req, plan, serving_network, terminating)
            answer.units.append(unit_answer)
            if unit_answer.validity_time:
                validity = max(validity, unit_answer.validity_time)
        if terminating:
            self._release_all(ctx, session)
        if req.units and all_failed(answer.units):
            # Every rating group failed: the request as a whole carries the (first) failure.
            answer.result = answer.units[0].result
        self._finish(ctx, session, req, answer, validity, terminating)
        return answer

    def _replay(self, session: Session, req: ChargingRequest) -> ChargingAnswer | None:
        """The answer to a request the session has seen: its stored answer, or SESSION_UNKNOWN once the session
        is closed; None for a new request. A request applied before whose answer is no longer kept is refused."""
        stored = session.answer_for(req.number)
        if stored is not None and not (
            session.closed
            and req.kind == INITIAL
            and req.protocol in SESSIONS_NAMED_BY_US
            and session.last_request != req.number
        ):
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
        return None

    def _follow_client(self, session: Session, req: ChargingRequest) -> None:
        """A request may come from another serving network (roaming) or name another way to reach the client."""
        if req.serving_network:
            session.serving_network = req.serving_network
        if req.apn:
            session.apn = req.apn
        if req.rat:
            session.rat = req.rat
        if req.notify is not None:
            session.notify = req.notify

    def _charge_unit(
        self,
        ctx: Context,
        session: Session,
        unit_req: UnitRequest,
        plan: Plan | None,
        serving_network: str | None,
        terminating: bool,
    ) -> UnitAnswer:
        """One rating group of a session request: commit what was used, release the grant it ends, grant anew."""
        unit_answer = UnitAnswer(unit_req.rating_group, service_id=unit_req.service_id)
        if unit_req.used:
            self._commit_usage(ctx, session, unit_req, unit_answer, plan)
        final_report = terminating or unit_req.reason == REASON_FINAL or _any_final(unit_req.used)
        if final_report or unit_req.requested is not None:
            self._release(ctx, session, unit_req.rating_group)
        if terminating or unit_req.requested is None or unit_req.reason == REASON_FINAL:
            return unit_answer
        if ctx.sub.state != ACTIVE:
            unit_answer.result = END_USER_SERVICE_DENIED
            return unit_answer
        self._grant(ctx, session, unit_req, unit_answer, plan, serving_network)
        return unit_answer

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
                validity = ctx.catalogue.grants.validity_time
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
        units = _reported(reports)
        reservation = session.reservations.get(rg)
        tariff = self._tariff(ctx, plan, rg, reservation)
        unit = reservation.unit if reservation is not None else (tariff.unit if tariff is not None else None)
        if unit is None:
            # No tariff and nothing reserved: rate by the first unit type reported, against buckets only.
            unit = _first_reported(units)
            if unit is None:
                return
        used = _used(units, unit)
        if used < 0:
            raise RequestError("used units", f"negative {unit} reported for rating group {rg}")
        if used == 0:
            # Nothing used (e.g. a report on validity-time expiry), but a report ends its grant: release it.
            self._release(ctx, session, rg)
            return
        session.reservations.pop(rg, None)
        event = self._usage_event(ctx, session, unit_req, units, unit, used)
        if reservation is not None and reservation.tariff is not None:
            version = reservation.tariff.partition("@")[2]
            if version in self._by_version:
                event["catalogue"] = version  # the grant's version priced it (chf.core.versions)
        impacts = event["impacts"]
        left = used
        granted = 0
        zone = ctx.catalogue.zone_of(session.serving_network)
        if reservation is not None:
            granted = reservation.granted
            zone = reservation.zone
        pay = self._usage_payer(ctx, session, reservation, plan, rg, zone)
        if reservation is not None:
            left = self._settle_reservation(pay, reservation, left, impacts)
        if pay is not ctx:
            event["payer"] = pay.account.id
        over = max(0, used - granted) if reservation is not None else used
        if left > 0 and over > 0:
            left = self._take_unreserved(pay, unit, rg, left, over, impacts, zone)
        charge = 0
        if left > 0:
            charge = self._charge_wallet(ctx, tariff, rg, zone, left, event, pay)
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
        if ctx.account.parent is not None:
            # B2B2B: the same units, once per level above, by the version that priced them (chf.core.wholesale).
            rate_levels(ctx, event, units, self._by_version.get(event["catalogue"], ctx.catalogue))

    def _usage_event(
        self, ctx: Context, session: Session, unit_req: UnitRequest, units: dict[str, int], unit: str, used: int
    ) -> dict[str, Any]:
        """The usage event of one rating group's report, before its impacts and charge are known."""
        reason = unit_req.used[-1].reason or unit_req.reason
        event = ctx.base_event("usage", "network:" + session.protocol, reason)
        event["session"] = session.key
        event["rating_group"] = unit_req.rating_group
        event["service_id"] = unit_req.service_id
        event["units"] = units if all(units.values()) else {k: v for k, v in units.items() if v}
        event["unit"] = unit
        event["used"] = used
        # The container this report closes: from the session's previous request (its grant) to now.
        event["opened"] = session.updated
        event["session_started"] = session.created
        return event

    def _settle_reservation(self, ctx: Context, reservation: Reservation, left: int, impacts: list[Any]) -> int:
        """Take the used units from the bucket units reserved for them, in the order they were reserved (priority
        order), and release the rest of the reservation, its money included. Returns the units still to pay."""
        for portion in reservation.portions:
            src, bucket_id, amount = portion
            bucket, owner = ctx.bucket(src, bucket_id)
            take = min(left, amount)
            if bucket is not None:
                bucket.reserved -= amount
                if bucket.fair_use_left is not None and take < amount:
                    give_back(bucket, reservation.zone, ctx.catalogue.settings.home_zone, amount - take)
                if take:
                    bucket.remaining -= take
                    impacts.append(bucket_impact(owner, bucket, -take))
                ctx.mark(src)
            left -= take
        if reservation.money:
            ctx.account.reserved -= reservation.money
            ctx.account_dirty = True
        return left

    def _take_unreserved(
        self, ctx: Context, unit: str, rg: int, left: int, over: int, impacts: list[Any], zone: str
    ) -> int:
        """Usage beyond the grant (`over` units of it): unreserved allowance valid in `zone` pays first. Returns the
        units still to pay."""
        home = ctx.catalogue.settings.home_zone
        for bucket, src, owner in ctx.usable_buckets(unit, rg, zone):
            take = min(left, over, bucket.available() if bucket.fair_use_left is None else room(bucket, zone, home))
            if take <= 0:
                continue
            if bucket.fair_use_left is not None:
                hold(bucket, zone, home, take)
            bucket.remaining -= take
            impacts.append(bucket_impact(owner, bucket, -take))
            ctx.mark(src)
            left -= take
            over -= take
            if left == 0 or over == 0:
                break
        return left

    def _charge_wallet(
        self, ctx: Context, tariff: Tariff | None, rg: int, zone: str, units: int, event: dict[str, Any], pay: Context
    ) -> int:
        """Charge `units` that no bucket paid to the wallet of `pay` (the line's context, or its split-billing
        payer's) at the tariff price, tiers counted on the line's usage; returns the money charged."""
        if tariff is None:
            event["flag"] = "unrated"
            return 0
        local = ctx.catalogue.local_time(ctx.now)
        usage = ctx.line_bs.usage.get(rg, 0) if ctx.line_bs is not None else 0
        # Usage reported from a zone the tariff bars (it was never granted there) is still charged, at the home
        # price: revenue is never dropped.
        price_zone = ctx.catalogue.settings.home_zone if tariff.is_denied(zone) else zone
        charge = tariff.charge(units, price_zone, local, usage)
        if pay.tax is not None:
            charge = annotate(event, pay.tax, charge, zone, rg)  # the gross: net + tax (chf.core.tax)
        if charge:
            pay.account.balance -= charge
            pay.account_dirty = True
            event["impacts"].append(pay.wallet_impact(-charge))
        event["tariff"] = tariff.name
        return charge

    def _tariff(self, ctx: Context, plan: Plan | None, rg: int, reservation: Reservation | None) -> Tariff | None:
        """The tariff that prices usage: the one the reservation was granted with ("name@catalogue-version"),
        from the catalogue of that version while it is kept (after a restart, the version in force now)."""
        if reservation is not None and reservation.tariff is not None:
            name, _, version = reservation.tariff.partition("@")
            catalogue = self._by_version.get(version, ctx.catalogue)
            t = catalogue.tariffs.get(name) or ctx.catalogue.tariffs.get(name)
            if t is not None:
                return t
        return plan.tariff_for(rg) if plan is not None else None

    # -- release ----------------------------------------------------------------------------------------------------
    def _release(self, ctx: Context, session: Session, rg: int) -> None:
        reservation = session.reservations.pop(rg, None)
        if reservation is None:
            return
        if reservation.payer is not None:
            ctx = self._payer_by_id(ctx, reservation.payer) or ctx
        for src, bucket_id, amount in reservation.portions:
            bucket, _ = ctx.bucket(src, bucket_id)
            if bucket is not None:
                bucket.reserved -= amount
                if bucket.fair_use_left is not None:
                    give_back(bucket, reservation.zone, ctx.catalogue.settings.home_zone, amount)
                ctx.mark(src)
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

    # -- split billing (chf/core/split.py) ---------------------------------------------------------------------------
    def _payer(self, ctx: Context, session: Session, plan: Plan, rg: int, zone: str) -> Context | None:
        """The context of whoever pays rating group `rg` of this session: the line's (no split rule matches), its
        payer's, or None when a rule names a payer that cannot pay (missing, or another currency than the plan's)."""
        local = ctx.catalogue.local_time(ctx.now)
        rule = rule_for(plan, rg, session.apn, session.rat, zone, session.serving_network, local)
        if rule is None:
            return ctx
        account_id = payer_id(rule, ctx.account)
        pay = self._payer_by_id(ctx, account_id) if account_id is not None else None
        if pay is None or pay.account.currency != plan.currency:
            return None
        return pay

    def _usage_payer(
        self, ctx: Context, session: Session, reservation: Reservation | None, plan: Plan | None, rg: int, zone: str
    ) -> Context:
        """Who pays usage being committed: the payer of the grant it was used from; without a grant, whom the plan's
        rules name (the line's account when none matches, or the one named cannot pay: revenue is never dropped)."""
        if reservation is not None:
            if reservation.payer is None:
                return ctx
            return self._payer_by_id(ctx, reservation.payer) or ctx
        if plan is None or not plan.split:
            return ctx
        return self._payer(ctx, session, plan, rg, zone) or ctx

    def _payer_by_id(self, ctx: Context, account_id: str) -> Context | None:
        """The context of account `account_id` in this operation (loaded once, flushed with `ctx`)."""
        if account_id == ctx.account.id:
            return ctx
        pay = ctx.payers.get(account_id)
        if pay is None:
            pay = self.account_context(ctx.txn, account_id, ctx.now)
            if pay is None:
                return None
            ctx.payers[account_id] = pay
        return pay

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
        catalogue = ctx.catalogue
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
        pay: Context | None = ctx
        if plan.split:
            # Split billing: another account may pay this rating group (chf/core/split.py).
            pay = self._payer(ctx, session, plan, rg, zone)
        if pay is None:
            unit_answer.result = RATING_FAILED
            return
        unit = tariff.unit
        policy = catalogue.grant_policy(rg)
        quantum = policy.quantum(unit)
        requested = unit_req.requested or {}
        want = requested.get(unit) or quantum
        if want > quantum:
            want = quantum
        portions: list[list[int]] = []
        covered = self._reserve_allowances(pay, unit, rg, want, portions, zone)
        money = 0
        granted = covered
        overage = plan.overage if plan.roaming_overage is None else overage_in(plan, zone, catalogue.settings.home_zone)
        if covered < want and overage == "charge":
            # Beyond the allowances the wallet pays at the tariff price (postpaid: down to its credit limit).
            units, money = self._reserve_money(ctx, pay, tariff, rg, zone, want - covered)
            granted += units
        unit_answer.unit = unit
        unit_answer.validity_time = self._validity_until_change(ctx.now, policy.validity_time)
        if policy.quota_holding_time:
            unit_answer.quota_holding_time = policy.quota_holding_time
        # Outside the home zone the plan may refuse what the allowances valid there do not cover (chf/core/zones.py).
        refused = overage == "deny" and overage != plan.overage
        if granted < want:
            unit_answer.final = FinalUnit(FUA_TERMINATE) if refused else _final_unit(plan)
        if granted == 0:
            unit_answer.result = END_USER_SERVICE_DENIED if refused else CREDIT_LIMIT_REACHED
            unit_answer.granted = 0
            return
        unit_answer.granted = granted
        _set_thresholds(unit_answer, unit, policy, granted)
        session.reservations[rg] = Reservation(
            rg, unit, granted, portions, money, f"{tariff.name}@{catalogue.version}", zone
        )
        if pay is not ctx:
            session.reservations[rg].payer = pay.account.id

    def _reserve_allowances(
        self, pay: Context, unit: str, rg: int, want: int, portions: list[list[int]], zone: str
    ) -> int:
        """Reserve up to `want` units from the buckets of whoever pays (`pay`: the line's context or a split-billing
        payer's, chf/core/split.py). An adaptive pool with top-off grows to its next tier when exhausted
        (chf.core.pools), before the wallet. Returns the units reserved."""
        covered = self._reserve_buckets(pay, unit, rg, want, portions, zone)
        while covered < want and top_off(pay, unit, rg):
            covered += self._reserve_buckets(pay, unit, rg, want - covered, portions, zone)
        return covered

    def _reserve_money(
        self, ctx: Context, pay: Context, tariff: Tariff, rg: int, zone: str, want: int
    ) -> tuple[int, int]:
        """Reserve in the wallet of `pay` (the line's account or its split-billing payer's) the money for up to
        `want` units at the tariff price, tiers counted on the line's usage. Returns (units, money)."""
        local = ctx.catalogue.local_time(ctx.now)
        usage = ctx.line_bs.usage.get(rg, 0) if ctx.line_bs is not None else 0
        budget = max(funds(pay.account), 0)
        if pay.tax is not None:
            budget = net_budget(pay.tax, budget, zone, rg)  # net prices: the tax is reserved too
        units = min(want, tariff.affordable(budget, zone, local, usage))
        money = tariff.charge(units, zone, local, usage) if units else 0
        if money and pay.tax is not None:
            money = gross_up(pay.tax, money, zone, rg)
        if money:
            pay.account.reserved += money
            pay.account_dirty = True
        return units, money

    def _reserve_buckets(
        self, ctx: Context, unit: str, rg: int, want: int, portions: list[list[int]], zone: str
    ) -> int:
        """Reserve up to `want` units from the buckets usable in `zone` in consumption order, recording each
        bucket's part in `portions` ([source, bucket id, units]). Returns the units reserved."""
        covered = 0
        home = ctx.catalogue.settings.home_zone
        for bucket, src, _owner in ctx.usable_buckets(unit, rg, zone):
            take = min(want - covered, bucket.available() if bucket.fair_use_left is None else room(bucket, zone, home))
            if take <= 0:
                continue
            if bucket.fair_use_left is not None:
                hold(bucket, zone, home, take)
            bucket.reserved += take
            ctx.mark(src)
            portions.append([src, bucket.id, take])
            covered += take
            if covered >= want:
                break
        return covered
