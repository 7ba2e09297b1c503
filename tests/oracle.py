"""The money oracle: what must hold of a store after any sequence of charging and management operations.

`Ledger` follows the event spool (only the events appended since it last looked) and judges each event by what
justifies it; `check_state` compares the stored state with the ledger and with what the catalogue derives. The
stateful test (tests/test_properties.py) calls both after every step. The rules, each with its name:

- conservation   events are gap-free with unique ids; every impact's `after` is its balance's running sum; every
                 balance (wallet and bucket) equals its opening value (0, before its first event) plus its events.
- justified      every credit has a rule behind it, by event kind: money enters a wallet only by top-up,
                 adjustment or refund; units enter a bucket only as a plan's allowance, a promotion, a rollover of
                 what expired, a pool's derivation, a goodwill grant, an adjustment or a refund. The stateful test
                 adds up top-ups, adjustments and grants it made and compares them with the ledger's.
- refund_bounded a refund credits a balance at most what usage of the same line and rating group debited from
                 that same balance and no refund has given back yet (so it goes back where the debit came from).
- fee_state      a period fee (or a period's allowances) is charged for a line only in a billable state at the
                 period's start: never provisioned or terminated; suspended only as its plan says; never more
                 than the plan's fee for that period. An account's plan renews (at a boundary, or a held period
                 started by a top-up) only while one of its lines (by the lifecycle and line_move events) is not
                 terminated then. Putting a line or account on the plan it runs again starts no period.
- currency       a wallet is only ever moved in its account's currency, by prices in that currency; a request
                 naming money in another currency (Gy CC-Money's Currency-Code) is refused and writes nothing
                 (the stateful test's money_in_a_currency step checks its answer and the spool).
- pool_derived   a pool's size for the current period is what its plan derives from the account's lines (a
                 stacked pool: the sum of what its member lines' plans bring, in the states that keep allowances;
                 an adaptive pool: a tier, the first with top-off, else the top one); an account's count of active
                 lines is the number of its lines that are active.
- pool_tier      an adaptive pool's close bills one of its tiers: the cheapest that covers what was used, or the
                 tier it was topped off to if higher; a top-off grows the pool by exactly one tier step.
- addon          an add-on purchase debits its catalogue price from the wallet and credits its amount to one new
                 bucket of the line, in one event, in the add-on's currency.
- plan_payment   a line's own plan has its account's payment type (and currency).
- reservations   what buckets and wallets hold reserved is what the open sessions hold against them.
- direction      octets reported by direction are rated in that direction: uplink (Gy CC-Input-Octets, Nchf
                 uplinkVolume) is bytes_in on both front-ends (checked by the stateful test on each update).
- usage_bounded  no usage event commits an implausible amount (PLAUSIBLE: more than a terabyte, a month of
                 seconds, ... in one report).
- split          (issue 15 item 4, chf/core/split.py) usage of a rating group a plan's unconditional split rule
                 routes is paid by the payer the rule names (the line's account's parent), never by the line's
                 account or buckets; a usage event with a payer moves only that payer's balances.
- zoned          (issue 15 item 5, chf/core/zones.py) usage takes units only from buckets that pay in its zone;
                 what usage outside the home zone took of a fair-use bucket never exceeds its fair use, and the fair
                 use a bucket has left is its limit less what roaming took and what open roaming grants hold.
- versioned      (effective-dated catalogue, chf.core.versions) every event names a version of the catalogue; a
                 period's renewal names the version in force when the period starts and is judged by that
                 version's plan (fee_state, justified); the stateful test checks that no grant outlives the
                 version it was made in and that usage names the version of its grant.
- wholesale_rated (B2B2B) right after each usage event come exactly the wholesale events of the accounts above
                 the line's account whose price list prices it, nearest first: each names its payer (`account`),
                 the account below (`customer`) and its level, in the payer's currency, for the usage's units at
                 the price list's price; a device fee is the price list's, for a line of the chain's bottom.
- tax_split      an event with a tax split has net + tax = gross = its charge, at a rate of the profile it names,
                 rounded half up once; a charge (usage, fee, refund, wholesale, pool tier, add-on) of an account
                 with a tax profile (its own, else its tenant's) always carries one, an account without none.
The stateful test checks more on the answers: identity (every answer names the request it answers),
exactly_once (a retransmission gets the first answer and changes nothing; restart_keeps_replays: also after a new
INITIAL on the open session) and no_internal_error (a request is answered or refused as the client's fault,
never failed by our own error).

A rule that today's code breaks because of an open item of issue 11 is listed in KNOWN_OPEN with that item: its
check runs but does not fail the test until the item is fixed and the entry removed. ORACLE_ENFORCE=all (or
rule names, comma-separated) fails on them too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from chf.core.catalogue import Catalogue, Plan
from chf.core.context import account_owner, line_owner
from chf.core.versions import CatalogueVersions
from store.lmdbstore import Txn
from store.schema import ACTIVE, PROVISIONED, SRC_LINE, SUSPENDED, TERMINATED, Account, BalanceSet

# Rule -> the open item of issue 11 that breaks it today (see the module docstring).
KNOWN_OPEN: dict[str, str] = {}
# ORACLE_ENFORCE=all (or a comma-separated list of rules) fails on known open rules too.
ENFORCE = frozenset(os.environ.get("ORACLE_ENFORCE", "").split(","))

# Which event kinds may move a balance in which direction (see "justified").
WALLET_CREDITS = frozenset({"topup", "adjustment", "refund"})
WALLET_DEBITS = frozenset({"usage", "renewal", "adjustment", "pool_tier", "addon", "wholesale"})
BUCKET_CREDITS = frozenset(
    {"renewal", "expiry", "bonus", "bucket_grant", "adjustment", "pool_resize", "refund", "pool_topoff", "addon"}
)
BUCKET_DEBITS = frozenset({"usage", "expiry", "adjustment", "pool_resize"})
# Credits the stateful test makes itself and counts: (kind, balance) -> amount.
ADMIN_KINDS = frozenset({"topup", "adjustment", "bucket_grant"})
BILLABLE = {ACTIVE: True, PROVISIONED: False, TERMINATED: False}
PLAUSIBLE = 2**40  # more units than any one report can honestly claim, whatever the unit


class OracleFailure(AssertionError):
    pass


def verify(rule: str, condition: bool, message: str) -> None:
    """Fail with the rule's name, unless the rule is broken by a known open item (KNOWN_OPEN)."""
    if condition:
        return
    if rule in KNOWN_OPEN and rule not in ENFORCE and "all" not in ENFORCE:
        return
    raise OracleFailure(f"[{rule}] {message}")


def price_currency(catalogue: Catalogue, plan: str | None) -> str:
    """The currency a plan's fee and its tariffs' prices are in: its own if it names one, else the catalogue's."""
    currency = getattr(catalogue.plans.get(plan or ""), "currency", None)
    return str(currency) if currency else catalogue.settings.currency


def max_fee(plan: Plan, state: str, period_index: int) -> int:
    """The most a period of `plan` may cost a line in `state` (the fee policy of the README)."""
    full = plan.fee_for_period(period_index)
    if state == SUSPENDED:
        policy = getattr(plan, "suspended_fee", None)
        return full if policy is None else min(full, int(policy))
    return full if BILLABLE.get(state, False) else 0


def _split(balance: str) -> tuple[str, str]:
    """'line:7:bucket:3' -> ('line:7', 'bucket'); 'account:a:wallet' -> ('account:a', 'wallet')."""
    parts = balance.split(":")
    return ":".join(parts[:2]), parts[2]


class Ledger:
    """Follows the event spool and keeps what the rules need: running sums, lines' states, open debits."""

    def __init__(self, catalogue: Catalogue, versions: CatalogueVersions | None = None) -> None:
        self.catalogue = catalogue
        self.versions = versions or CatalogueVersions.of(catalogue)  # the running versions (`reload` swaps them)
        self.known: dict[str, Catalogue] = {c.version: c for c in self.versions.versions}  # every version loaded
        self.seq = 0
        self.ids: set[str] = set()
        self.running: dict[str, int] = {}
        # line id -> [(time, seq, state)] in spool order
        self.states: dict[int, list[tuple[int, int, str]]] = {}
        # (line, rating group, balance) -> what usage debited and no refund gave back yet
        self.refundable: dict[tuple[int | None, int | None, str], int] = {}
        # usage event id -> (line, rating group, currency, {balance: what it debited and no refund gave back yet})
        self.debits: dict[str, tuple[int | None, int | None, str | None, dict[str, int]]] = {}
        self.admin: dict[tuple[str, str], int] = {}  # (kind, balance) -> sum of deltas of top-ups, adjustments, ...
        self.plans: dict[str, str | None] = {}  # balance owner -> its plan, as the plan changes set it
        self.members: dict[int, str] = {}  # line id -> its account, as creations and moves set it
        self.fees: int = 0
        self.levels = Levels(self.version_of)
        self.zones = Zones(catalogue)
        self.parents: dict[str, str | None] = {}  # account id -> its parent

    # -- following the spool ----------------------------------------------------------------------------------------
    def follow(self, txn: Txn) -> set[str]:
        """Judge the events appended since the last call; returns their kinds (with the reason of the refunds
        and renewals)."""
        currencies = {a.id: a.currency for a in txn.accounts()}
        self.levels.read(txn)
        self.parents = {a.id: a.parent for a in txn.accounts()}
        self.zones.learn(Stored(txn))
        kinds: set[str] = set()
        for ev in txn.events(self.seq):
            self._event(ev, currencies)
            self.levels.judge(ev)
            kinds.add(ev["kind"] if ev["kind"] not in ("renewal", "refund") else f"{ev['kind']} ({ev.get('reason')})")
        self.levels.judge(None)
        verify("conservation", txn.last_event_seq() == self.seq, "event counter and spool disagree")
        return kinds

    def _event(self, ev: dict[str, Any], currencies: dict[str, str]) -> None:
        self.seq += 1
        where = f"event {ev.get('seq')} {ev.get('kind')} ({ev.get('reason')})"
        verify("conservation", ev["seq"] == self.seq, f"sequence gap: expected {self.seq}, found {ev['seq']}")
        verify("conservation", ev["id"] not in self.ids, f"duplicate event id {ev['id']}")
        self.ids.add(ev["id"])
        for impact in ev["impacts"]:
            delta, after = impact["delta"], impact["after"]
            verify("conservation", type(delta) is int and type(after) is int, f"{where}: not integers: {impact}")
            value = self.running.get(impact["balance"], 0) + delta
            self.running[impact["balance"]] = value
            verify("conservation", after == value, f"{where}: {impact['balance']} after {after}, events sum {value}")
            self._justified(ev, impact, where)
            if impact["balance"].endswith(":wallet"):
                self._currency(ev, impact, currencies, where)
        self._versioned(ev, where)
        kind = ev["kind"]
        if kind == "plan_change":  # putting an owner on the plan it runs again starts no new period (fee_state)
            verify("fee_state", ev.get("plan") != ev.get("previous_plan"), f"{where}: plan {ev.get('plan')} again")
        if kind == "plan_change" and ev.get("plan") is not None:  # (None: a line's periods stop, its plan stays)
            owner = line_owner(ev["subscriber"]) if ev.get("subscriber") is not None else account_owner(ev["account"])
            self.plans[owner] = ev["plan"]
        if kind == "lifecycle" and ev.get("subscriber") is not None:
            self.states.setdefault(ev["subscriber"], []).append((ev["time"], ev["seq"], ev["state"]))
            self.members.setdefault(ev["subscriber"], ev["account"])
        elif kind == "line_move":
            self.members[ev["subscriber"]] = ev["to_account"]
        elif kind == "usage":
            self._debited(ev)
            self.zones.usage(ev, where)
            self._split_payer(ev, where)
            used = ev.get("used", 0)
            verify("usage_bounded", abs(used) <= PLAUSIBLE, f"{where}: {used} {ev.get('unit')} committed")
        elif kind == "refund":
            self._refund(ev, where)
        elif kind in ("renewal", "renewal_failed"):
            self._renewal(ev, where)
        elif kind == "expiry":
            self._expiry(ev, where)
        elif kind == "bonus":
            self._bonus(ev, where)
        elif kind in ("pool_tier", "pool_topoff", "addon"):
            self._commerce(ev, where)
        if kind in ADMIN_KINDS:
            for impact in ev["impacts"]:
                key = (kind, impact["balance"])
                self.admin[key] = self.admin.get(key, 0) + impact["delta"]

    # -- the rules, per event ---------------------------------------------------------------------------------------
    def _justified(self, ev: dict[str, Any], impact: dict[str, Any], where: str) -> None:
        kind, delta = ev["kind"], impact["delta"]
        if delta == 0:
            return
        wallet = impact["balance"].endswith(":wallet")
        if wallet:
            allowed = WALLET_CREDITS if delta > 0 else WALLET_DEBITS
        else:
            allowed = BUCKET_CREDITS if delta > 0 else BUCKET_DEBITS
        verify("justified", kind in allowed, f"{where}: {impact['balance']} moved by {delta}: no rule allows it")

    def _currency(self, ev: dict[str, Any], impact: dict[str, Any], currencies: dict[str, str], where: str) -> None:
        owner, _ = _split(impact["balance"])
        wallet_currency = currencies.get(owner.partition(":")[2])
        verify(
            "currency",
            ev.get("currency") == wallet_currency,
            f"{where}: {ev.get('currency')} in a {wallet_currency} wallet",
        )
        if ev["kind"] == "addon":
            addon = self.version_of(ev).addons.get(ev.get("addon") or "")
            priced = addon.currency if addon is not None else None
            verify("currency", priced == wallet_currency, f"{where}: {priced} add-on, {wallet_currency} wallet")
        if ev["kind"] in ("usage", "renewal", "pool_tier"):
            plan = ev.get("plan")
            if ev["kind"] == "usage":  # priced by the plan that rates the line: its own, else its account's
                line = ev.get("subscriber")
                plan = self.plans.get(line_owner(line)) if line is not None else None
                plan = plan or self.plans.get(account_owner(ev["account"]))
            priced = price_currency(self.catalogue, plan)
            verify(
                "currency",
                priced == wallet_currency,
                f"{where}: priced in {priced}, charged to a {wallet_currency} wallet",
            )

    def _debited(self, ev: dict[str, Any]) -> None:
        taken: dict[str, int] = {}
        for impact in ev["impacts"]:
            if impact["delta"] < 0:
                key = (ev.get("subscriber"), ev.get("rating_group"), impact["balance"])
                self.refundable[key] = self.refundable.get(key, 0) - impact["delta"]
                taken[impact["balance"]] = taken.get(impact["balance"], 0) - impact["delta"]
        if taken:
            self.debits[ev["id"]] = (ev.get("subscriber"), ev.get("rating_group"), ev.get("currency"), taken)

    def _refund(self, ev: dict[str, Any], where: str) -> None:
        line, rg = ev.get("subscriber"), ev.get("rating_group")
        debit = self.debits.get(ev.get("reverses") or "")
        if debit is not None:  # the refund names the debit it reverses: it is bounded by that debit, balance by balance
            verify(
                "refund_bounded", debit[:2] == (line, rg), f"{where}: reverses a debit of line {debit[0]} rg {debit[1]}"
            )
            verify(
                "currency",
                debit[2] == ev.get("currency"),
                f"{where}: a {debit[2]} debit refunded in {ev.get('currency')}",
            )
        for impact in ev["impacts"]:
            if impact["delta"] <= 0:
                continue
            key = (line, rg, impact["balance"])
            open_debit = self.refundable.get(key, 0)
            verify(
                "refund_bounded",
                impact["delta"] <= open_debit,
                f"{where}: refunds {impact['delta']} to {impact['balance']}, line {line} rating group {rg} "
                f"has {open_debit} debited there and not refunded",
            )
            self.refundable[key] = open_debit - impact["delta"]
            if debit is not None:
                left = debit[3].get(impact["balance"], 0)
                verify(
                    "refund_bounded",
                    impact["delta"] <= left,
                    f"{where}: refunds {impact['delta']} to {impact['balance']}, its debit left {left} to refund there",
                )
                debit[3][impact["balance"]] = left - impact["delta"]

    def state_at(self, line: int, time: int, seq: int) -> str | None:
        """The line's state at `time`, as its lifecycle events set it (at the same time: the earlier events)."""
        state = None
        for at, at_seq, to in self.states.get(line, ()):
            if at < time or (at == time and at_seq < seq):
                state = to
        return state

    def _renewal(self, ev: dict[str, Any], where: str) -> None:
        plan = self.version_of(ev).plans.get(ev.get("plan") or "")
        fee = -sum(i["delta"] for i in ev["impacts"] if i["balance"].endswith(":wallet"))
        fee = ev.get("net", fee)  # the plan's fee before tax (chf.core.tax: a net-priced profile adds the tax)
        self.fees += fee
        line = ev.get("subscriber")
        if plan is None:
            verify("justified", not ev["impacts"], f"{where}: a renewal of an unknown plan moves balances")
            return
        granted = {i["name"]: i["delta"] for i in ev["impacts"] if ":bucket:" in i["balance"]}
        for name, amount in granted.items():
            self._allowance_amount(plan, name, amount, where)
        if line is None:
            verify("fee_state", fee <= plan.fee_for_period(ev.get("period_index", 0)), f"{where}: fee {fee}")
            # At a boundary, on a retry after a top-up or an activation; not on an operator's assignment of the plan.
            if ev.get("reason") != "plan assigned" and (fee or granted):
                in_service = [
                    member
                    for member, account in self.members.items()
                    if account == ev["account"]
                    and self.state_at(member, ev["time"], ev["seq"]) not in (None, TERMINATED)
                ]
                verify(
                    "fee_state", bool(in_service), f"{where}: account {ev['account']} renewed with no line in service"
                )
            return
        state = self.state_at(line, ev["time"], ev["seq"])
        most = max_fee(plan, state or ACTIVE, ev.get("period_index", 0))
        verify("fee_state", fee <= most, f"{where}: line {line} {state} charged {fee} (at most {most})")
        verify(
            "fee_state",
            not granted or state == ACTIVE or (state == SUSPENDED and getattr(plan, "suspended_fee", None) is None),
            f"{where}: line {line} {state} granted a period's allowances {granted}",
        )

    def _allowance_amount(self, plan: Plan, name: str, amount: int, where: str) -> None:
        if name == "pool" and plan.pool is not None:
            return  # the pool's size is checked against its derivation on the stored state (pool_derived)
        amounts = [a.amount for a in plan.allowances if a.name == name]
        verify("justified", amount in amounts, f"{where}: {name} granted {amount}, plan {plan.name} gives {amounts}")

    def _expiry(self, ev: dict[str, Any], where: str) -> None:
        # The expiring bucket goes to 0 (up from below 0 for a pool that shrank below its use); a rollover is a new
        # bucket, at most what expired.
        expired = -sum(i["delta"] for i in ev["impacts"] if i["after"] == 0)
        rolled = sum(i["delta"] for i in ev["impacts"] if i["after"] != 0)
        verify("justified", rolled <= max(expired, 0), f"{where}: {rolled} rolled over out of {expired} expired")

    def _bonus(self, ev: dict[str, Any], where: str) -> None:
        amounts = {
            p.allowance.amount
            for catalogue in self.known.values()
            for plan in catalogue.plans.values()
            for p in plan.bonus_allowances()
            if p.allowance
        }
        for impact in ev["impacts"]:
            verify("justified", impact["delta"] in amounts, f"{where}: a bonus of {impact['delta']}")

    def _split_payer(self, ev: dict[str, Any], where: str) -> None:
        """The "split" rule: who paid a usage event."""
        payer = ev.get("payer")
        if payer is not None:
            for impact in ev["impacts"]:
                verify("split", impact["balance"].startswith(f"account:{payer}:"), f"{where}: {impact} for {payer}")
        line = ev.get("subscriber")
        plan = self.catalogue.plans.get(self.plans.get(line_owner(line)) or "") if line is not None else None
        for rule in plan.split if plan is not None else ():
            unconditional = rule.apns is rule.rats is rule.zones is rule.networks is rule.window is None
            if unconditional and rule.rating_groups and ev.get("rating_group") in rule.rating_groups:
                expected = self.parents.get(ev["account"]) if rule.payer == "parent" else rule.payer.partition(":")[2]
                if expected is None:
                    return  # no such payer: grants are refused, usage reported anyway is the line's (revenue kept)
                rg = ev.get("rating_group")
                verify(
                    "split",
                    payer == expected or (payer is None and not ev["impacts"]),
                    f"{where}: rating group {rg} paid by {payer}, rule {rule.name} names {expected}",
                )
                return

    # -- issue 15: adaptive pools and add-ons ------------------------------------------------------------------------
    def _commerce(self, ev: dict[str, Any], where: str) -> None:
        wallet = sum(i["delta"] for i in ev["impacts"] if i["balance"].endswith(":wallet"))
        buckets = [i for i in ev["impacts"] if ":bucket:" in i["balance"]]
        if ev["kind"] == "addon":
            self._addon(ev, wallet, buckets, where)
            return
        plan = self.version_of(ev).plans.get(ev.get("plan") or "")
        tiers = [(t.amount, t.fee) for t in plan.pool_tiers] if plan is not None else []
        tier = ev.get("tier") or {}
        verify("pool_tier", (tier.get("amount"), tier.get("fee")) in tiers, f"{where}: tier {tier} not in {tiers}")
        if ev["kind"] == "pool_topoff":
            (impact,) = buckets
            below = [a for a, _ in tiers if a < tier.get("amount", 0)]
            verify("pool_tier", bool(below) and impact["delta"] == tier["amount"] - below[-1], f"{where}: {impact}")
            return
        covering = next((t for t in tiers if t[0] >= ev["pool_used"]), tiers[-1] if tiers else None)
        verify(
            "pool_tier", covering is not None and tier["fee"] >= covering[1], f"{where}: {tier} for {ev['pool_used']}"
        )
        verify("pool_tier", -wallet == ev["charge"], f"{where}: charged {-wallet}, the event says {ev['charge']}")
        verify("pool_tier", self.levels.priced(ev) == tier["fee"], f"{where}: charged {-wallet} for {tier}")
        if plan is not None and not plan.pool_topoff:
            verify("pool_tier", (tier["amount"], tier["fee"]) == covering, f"{where}: {tier}, cheapest {covering}")

    def _addon(self, ev: dict[str, Any], wallet: int, buckets: list[dict[str, Any]], where: str) -> None:
        addon = self.version_of(ev).addons.get(ev.get("addon") or "")
        verify("addon", addon is not None, f"{where}: no add-on {ev.get('addon')!r} in the catalogue")
        if addon is None:
            return
        verify("addon", -wallet == ev["charge"], f"{where}: paid {-wallet}, charged {ev['charge']}")
        verify("addon", self.levels.priced(ev) == addon.price, f"{where}: paid {-wallet}, price {addon.price}")
        deltas = [i["delta"] for i in buckets]
        verify("addon", deltas == [addon.allowance.amount], f"{where}: granted {deltas}")
        verify("addon", all(i["balance"].startswith("line:") for i in buckets), f"{where}: not a line's")

    # -- versioned: the effective-dated catalogue --------------------------------------------------------------------
    def reload(self, versions: CatalogueVersions) -> None:
        """The catalogue was reloaded: events from now on are made by these versions."""
        self.versions = versions
        self.known.update((c.version, c) for c in versions.versions)

    def version_of(self, ev: dict[str, Any]) -> Catalogue:
        """The version of the catalogue the event names (the first when it names none: `versioned` fails)."""
        return self.known.get(ev.get("catalogue") or "") or self.versions.versions[0]

    def _versioned(self, ev: dict[str, Any], where: str) -> None:
        named = self.known.get(ev.get("catalogue") or "")
        verify("versioned", named is not None, f"{where}: names catalogue version {ev.get('catalogue')!r}")
        if ev["kind"] in ("renewal", "renewal_failed") and named is not None:
            in_force = self.versions.at(ev["time"])[0]
            verify(
                "versioned",
                named is in_force,
                f"{where}: a period starting at {ev['time']} priced by {named.source}, not {in_force.source}",
            )

    # -- the rules, on the stored state -----------------------------------------------------------------------------
    def check_state(self, txn: Txn, admin_expected: dict[tuple[str, str], int]) -> None:
        """After `follow`: the stored state agrees with the spool, the test's own credits and the catalogue."""
        state = Stored(txn)
        current = state.balances()
        for name, value in current.items():
            verify("conservation", type(value) is int, f"{name} is not an int: {value!r}")
            events = self.running.get(name, 0)
            verify("conservation", events == value, f"{name}: opening 0 + events {events} != balance {value}")
        for name, value in self.running.items():
            if name not in current:
                verify("conservation", value == 0, f"{name} is gone but its events sum to {value}")
        for key in set(self.admin) | set(admin_expected):
            made, seen = admin_expected.get(key, 0), self.admin.get(key, 0)
            verify("justified", made == seen, f"{key[0]} of {key[1]}: the test made {made}, the spool holds {seen}")
        _reservations(txn, state)
        self._lines_and_pools(state)
        self.zones.check_state(txn, state)

    def _lines_and_pools(self, state: Stored) -> None:
        catalogue = self.catalogue
        accounts = state.accounts
        active: dict[str, int] = dict.fromkeys(accounts, 0)
        for sub in state.lines:
            account = accounts[sub.account]
            if sub.state == ACTIVE:
                active[sub.account] += 1
            plan = catalogue.plans.get(sub.plan or "")
            if plan is not None and sub.state != TERMINATED:
                verify(
                    "plan_payment",
                    plan.payment == account.payment,
                    f"line {sub.id}: {plan.payment} plan {plan.name} in {account.payment} account {account.id}",
                )
                priced = price_currency(catalogue, plan.name)
                verify(
                    "currency", priced == account.currency, f"line {sub.id}: {priced} plan, {account.currency} account"
                )
        for account in accounts.values():
            verify(
                "pool_derived",
                account.active_lines == active[account.id],
                f"account {account.id}: active_lines {account.active_lines}, {active[account.id]} lines active",
            )
            lines = [sub for sub in state.lines if sub.account == account.id]
            self._pool(state.account_sets.get(account.id), account, active[account.id], lines)

    def _pool(self, bs: BalanceSet | None, account: Account, active: int, lines: list[Any]) -> None:
        plan = self.catalogue.plans.get(account.plan or "")
        if plan is None or plan.pool is None or bs is None:
            return
        if plan.pool == "adaptive":
            tiers = [t.amount for t in plan.pool_tiers]
            allowed = tiers if plan.pool_topoff else tiers[-1:]
            for bucket in bs.buckets:
                if bucket.kind == "pool":
                    verify("pool_derived", bucket.initial in allowed, f"account {account.id}: pool {bucket.initial}")
            return
        if plan.pool == "stacked":
            size = self._stacked_size(plan, lines)
        else:
            expected = plan.pool_allowance(active)
            size = expected.amount if expected is not None else 0
        for bucket in bs.buckets:
            if bucket.kind == "pool":
                verify(
                    "pool_derived",
                    bucket.initial == size,
                    f"account {account.id}: pool of {bucket.initial}, {size} derived from {active} active lines",
                )

    def _stacked_size(self, plan: Plan, lines: list[Any]) -> int:
        """The members: lines whose own plan is of the pool's family, in a state that keeps allowances."""
        size = 0
        for sub in lines:
            member = self.catalogue.plans.get(sub.plan or "")
            if member is None or member.pool_family != plan.pool_family or not member.pool_contribution:
                continue
            if sub.state == ACTIVE or (sub.state == SUSPENDED and member.suspended_fee is None):
                size += member.pool_contribution
        return size


class Stored:
    """What the state checks read, read once: accounts, lines and their balance sets."""

    def __init__(self, txn: Txn) -> None:
        self.accounts: dict[str, Account] = {a.id: a for a in txn.accounts()}
        self.account_sets = {a: txn.get_account_balances(a) for a in self.accounts}
        self.lines = list(txn.subscribers())
        self.line_sets = {sub.id: txn.get_line_balances(sub.id) for sub in self.lines}

    def owners(self) -> list[tuple[str, BalanceSet | None]]:
        """(owner name as events give it, its balance set) of every account and line."""
        out = [(account_owner(a), bs) for a, bs in self.account_sets.items()]
        out += [(line_owner(line), bs) for line, bs in self.line_sets.items()]
        return out

    def balances(self) -> dict[str, int]:
        """Every balance by the name events use for it: wallets and buckets, with their current value."""
        out = {f"{account_owner(a.id)}:wallet": a.balance for a in self.accounts.values()}
        for owner, bs in self.owners():
            for b in bs.buckets if bs is not None else ():
                out[f"{owner}:bucket:{b.id}"] = b.remaining
        return out


def _reservations(txn: Txn, state: Stored) -> None:
    """What buckets and wallets hold reserved is what the open sessions hold against them ("reservations")."""
    held_bucket: dict[tuple[str, int], int] = {}
    held_money: dict[str, int] = {}
    for session in txn.sessions():
        if session.closed:
            verify("reservations", not session.reservations, f"closed session {session.key} holds reservations")
            continue
        for r in session.reservations.values():
            verify("reservations", r.granted > 0 and r.money >= 0, f"session {session.key}: {r.pack()}")
            verify("reservations", sum(p[2] for p in r.portions) <= r.granted, f"session {session.key}: {r.pack()}")
            payer = r.payer or session.account  # split billing: the payer's wallet and buckets hold it
            held_money[payer] = held_money.get(payer, 0) + r.money
            for src, bucket_id, amount in r.portions:
                owner = line_owner(session.subscriber) if src == SRC_LINE else account_owner(payer)
                held_bucket[(owner, bucket_id)] = held_bucket.get((owner, bucket_id), 0) + amount
    for account in state.accounts.values():
        held = held_money.get(account.id, 0)
        verify("reservations", account.reserved == held, f"account {account.id}: reserved {account.reserved}, {held}")
    for owner, bs in state.owners():
        for b in bs.buckets if bs is not None else ():
            held = held_bucket.get((owner, b.id), 0)
            # A pool that shrank below its use (a member left) is exhausted, its grants kept (README, IoT pools).
            most = b.remaining if b.kind != "pool" else max(b.remaining, b.reserved)
            verify("reservations", 0 <= b.reserved <= most, f"{owner} bucket {b.id}: {b.reserved}/{b.remaining}")
            verify("reservations", b.reserved == held, f"{owner} bucket {b.id}: reserved {b.reserved}, sessions {held}")


# ------------------------------------------------------------------------------------------------------------------
# B2B2B and tax profiles (chf.core.wholesale, chf.core.tax): wholesale_rated, tax_split
# ------------------------------------------------------------------------------------------------------------------
PPM = 1_000_000
MAX_LEVELS = 4
MONEY_KINDS = frozenset({"usage", "renewal", "refund", "wholesale", "pool_tier", "addon"})


def _half_up(numerator: int, denominator: int) -> int:
    sign = -1 if numerator < 0 else 1
    return sign * ((2 * abs(numerator) + denominator) // (2 * denominator))


class Levels:
    """What the wholesale events must be, worked out from the catalogue and the accounts, and the tax splits."""

    def __init__(self, version_of: Callable[[dict[str, Any]], Catalogue]) -> None:
        self.version_of = version_of  # the ledger's: every version loaded, by the name an event gives
        self.catalogue = version_of({})  # the version that priced the event being judged
        self.accounts: dict[str, Account] = {}
        self.tenant_profiles: dict[str, str | None] = {}
        # (payer, customer, level, charge, catalogue version) still to come
        self.expected: list[tuple[str, str, int, int, str]] = []
        self.after = ""  # the usage event they follow

    def read(self, txn: Txn) -> None:
        self.accounts = {a.id: a for a in txn.accounts()}
        self.tenant_profiles = {t.id: t.tax_profile for t in txn.tenants()}

    def profile(self, account_id: str) -> Any:
        account = self.accounts.get(account_id)
        if account is None:
            return None
        name = account.tax_profile or self.tenant_profiles.get(account.tenant)
        return self.catalogue.tax_profiles.get(name or "")

    def chain(self, account_id: str) -> list[Account]:
        out: list[Account] = []
        account = self.accounts.get(account_id)
        while account is not None and account.parent is not None and len(out) < MAX_LEVELS:
            account = self.accounts.get(account.parent)
            if account is not None:
                out.append(account)
        return out

    def priced(self, ev: dict[str, Any]) -> int:
        """The catalogue price behind an event's charge: the charge itself, or with a tax split the net (net
        prices) or the gross (gross prices)."""
        if "gross" not in ev:
            return int(ev.get("charge") or 0)
        profile = self.version_of(ev).tax_profiles.get(ev.get("tax_profile") or "")
        return int(ev["net"] if profile is not None and profile.prices == "net" else ev["gross"])

    def gross(self, account_id: str, price: int, zone: str, rg: int | None) -> int:
        profile = self.profile(account_id)
        if profile is None or profile.prices != "net":
            return price
        return price + _half_up(price * profile.rate_for(zone, rg), PPM)

    def judge(self, ev: dict[str, Any] | None) -> None:
        if ev is not None:
            # Each charge is priced by the version its event names (a usage event: its grant's; its levels too).
            self.catalogue = self.version_of(ev)
        if ev is not None and ev["kind"] == "wholesale" and ev.get("reason") != "device fee":
            where = f"event {ev['seq']} wholesale after {self.after}"
            verify("wholesale_rated", bool(self.expected), f"{where}: no level was left to charge")
            if self.expected:
                got = (ev["account"], ev["customer"], ev["level"], ev["charge"], ev.get("catalogue"))
                verify("wholesale_rated", got == self.expected[0], f"{where}: {got}, expected {self.expected[0]}")
                self.expected.pop(0)
            return
        verify("wholesale_rated", not self.expected, f"levels not charged after {self.after}: {self.expected}")
        self.expected = []
        if ev is None:
            return
        if ev["kind"] == "usage":
            self.after = f"event {ev['seq']} usage"
            self.expected = self._levels(ev)
        elif ev["kind"] == "wholesale":
            self._device_fee(ev)
        self._tax(ev)

    def _levels(self, ev: dict[str, Any]) -> list[tuple[str, str, int, int, str]]:
        """The wholesale charges a usage event calls for, nearest level first."""
        home = self.catalogue.settings.home_zone
        zone = ev.get("zone") or home
        one_shot = "units" not in ev
        units = ev["units"] if not one_shot else {ev.get("unit"): ev.get("used", 0)}
        out = []
        customer = ev["account"]
        for level, payer in enumerate(self.chain(ev["account"]), 1):
            price_list = self.catalogue.price_list_in(payer.price_list, payer.currency)
            tariff = price_list.tariff_for(ev["rating_group"]) if price_list is not None else None
            if tariff is not None:
                quantity = units.get(tariff.unit, 0)
                if tariff.unit == "bytes" and not quantity:
                    quantity = units.get("bytes_in", 0) + units.get("bytes_out", 0)
                if one_shot and tariff.unit == "events" and not quantity:
                    quantity = 1
                if quantity > 0:
                    price_zone = home if tariff.is_denied(zone) else zone
                    price = tariff.charge(quantity, price_zone, self.catalogue.local_time(ev["time"]), 0)
                    charge = self.gross(payer.id, price, zone, ev["rating_group"])
                    out.append((payer.id, customer, level, charge, self.catalogue.version))
            customer = payer.id
        return out

    def _device_fee(self, ev: dict[str, Any]) -> None:
        where = f"event {ev['seq']} device fee"
        chain = self.chain(ev["customer"])
        payer = self.accounts.get(ev["account"])
        price_list = self.catalogue.price_list_in(payer.price_list, payer.currency) if payer is not None else None
        fee = price_list.device_fee if price_list is not None else 0
        verify("wholesale_rated", bool(fee), f"{where}: {ev['account']} has no device fee to charge")
        home = self.catalogue.settings.home_zone
        verify("wholesale_rated", ev["charge"] == self.gross(ev["account"], fee, home, None), f"{where}: {ev}")
        below = [a.id for a in [self.accounts.get(ev["customer"]), *chain] if a is not None]
        verify("wholesale_rated", ev["account"] in below[1:], f"{where}: {ev['account']} is not above {below[0]}")

    def _tax(self, ev: dict[str, Any]) -> None:
        where = f"event {ev['seq']} {ev['kind']}"
        charge = ev.get("charge") or 0
        if ev["kind"] not in MONEY_KINDS or not charge:
            verify("tax_split", "gross" not in ev, f"{where}: a tax split of no charge")
            return
        profile = self.profile(ev["account"])
        verify("tax_split", (profile is not None) == ("gross" in ev), f"{where}: profile {profile}, event {ev}")
        if profile is None or "gross" not in ev:
            return
        net, tax, gross, rate = ev["net"], ev["tax"], ev["gross"], ev["tax_rate"]
        verify("tax_split", net + tax == gross == charge, f"{where}: {net} + {tax} != {gross} / {charge}")
        rates = {profile.rate, *(r.rate for r in profile.rules)}
        verify("tax_split", ev["tax_profile"] == profile.name and rate in rates, f"{where}: {ev}")
        if profile.prices == "net" and ev["kind"] != "refund":
            verify("tax_split", tax == _half_up(net * rate, PPM), f"{where}: tax {tax} of {net} at {rate}")
        else:
            verify("tax_split", net == _half_up(gross * PPM, PPM + rate), f"{where}: net {net} of {gross} at {rate}")


# ======================================================================================================================
# Zones (issue 15 item 5): the "zoned" rule
# ======================================================================================================================
class Zones:
    """What the "zoned" rule keeps: each bucket's zones and fair use as first seen stored, and what usage outside the
    home zone took of each fair-use bucket."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.home = catalogue.settings.home_zone
        self.seen: dict[str, tuple[list[str] | None, int | None]] = {}  # bucket balance -> (zones, fair-use limit)
        self.roamed: dict[str, int] = {}  # bucket balance -> units roaming usage took of it
        # The fair use a bucket starts with: its allowance's (the fixtures give it by name), none on a rollover.
        self.limits: dict[str, int] = {}
        for plan in catalogue.plans.values():
            allowances = [*plan.allowances, *(p.allowance for p in plan.bonus_allowances() if p.allowance)]
            for a in allowances:
                if a.fair_use is not None:
                    self.limits[a.name] = max(self.limits.get(a.name, 0), a.fair_use)

    def learn(self, state: Stored) -> None:
        """Note the zones of buckets not seen before (before the events that take from them are judged)."""
        for owner, bs in state.owners():
            for b in bs.buckets if bs is not None else ():
                name = f"{owner}:bucket:{b.id}"
                if name not in self.seen:
                    limit = None
                    if b.fair_use_left is not None:
                        limit = 0 if b.kind == "rollover" else self.limits.get(b.name, 0)
                    self.seen[name] = (b.zones, limit)

    def usage(self, ev: dict[str, Any], where: str) -> None:
        zone = ev.get("zone")
        for impact in ev["impacts"]:
            name = impact["balance"]
            if impact["delta"] >= 0 or ":bucket:" not in name or name not in self.seen:
                continue
            zones, limit = self.seen[name]
            verify("zoned", zones is None or zone in zones, f"{where}: {name} pays in {zones}, used in {zone}")
            if limit is not None and zone != self.home:
                took = self.roamed.get(name, 0) - impact["delta"]
                self.roamed[name] = took
                verify("zoned", took <= limit, f"{where}: roaming took {took} of {name}, its fair use is {limit}")

    def check_state(self, txn: Txn, state: Stored) -> None:
        held: dict[str, int] = {}  # bucket balance -> units open grants outside the home zone hold of it
        for session in txn.sessions():
            for r in session.reservations.values() if not session.closed else ():
                if r.zone == self.home:
                    continue
                for src, bucket_id, amount in r.portions:
                    owner = (
                        line_owner(session.subscriber) if src == SRC_LINE else account_owner(r.payer or session.account)
                    )
                    name = f"{owner}:bucket:{bucket_id}"
                    held[name] = held.get(name, 0) + amount
        for owner, bs in state.owners():
            for b in bs.buckets if bs is not None else ():
                name = f"{owner}:bucket:{b.id}"
                limit = self.seen.get(name, (None, None))[1]
                if b.fair_use_left is None or limit is None:
                    continue
                accounted = b.fair_use_left + held.get(name, 0) + self.roamed.get(name, 0)
                verify(
                    "zoned",
                    b.fair_use_left >= 0 and accounted == limit,
                    f"{name}: fair use left {b.fair_use_left}, held {held.get(name, 0)}, roamed "
                    f"{self.roamed.get(name, 0)}: {accounted}, its limit {limit}",
                )
