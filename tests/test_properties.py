"""The oracle: a stateful property test of the whole charging function, checked for conservation after every step.

Two tenants (EUR and USD), prepaid, postpaid and hybrid accounts, a family shared allowance, two flexible IoT
pools, a stacked pool and an adaptive pool with top-off (issue 15), lines in every lifecycle state. At random, in
any order:
- session usage through the charging service's request path (`ChargingService.charge_then`, group commit):
  Gy-like requests and Nchf-like ones (made from ChargingDataRequest JSON by nchf.mapping), INITIAL / UPDATE /
  TERMINATE with used and requested units, several requests in one batch, a session restarted by a new
  INITIAL; clients that answer an abort with their final report;
- one-shot events (CCR-E): direct debits, refunds, balance checks, price enquiries;
- retransmissions: any earlier request again, also long after and after other requests, also in the same batch;
- lifecycle changes (activate, suspend, terminate), new lines (provisioned or active, pool members), moves between
  accounts, plan changes of lines and accounts, top-ups, wallet and bucket adjustments, goodwill buckets, add-ons
  bought (or refused whole), with and without an idempotency key;
- the clock: small steps, days, exact period boundaries; the sweeper (renewals of idle owners, reaper);
- the catalogue in four versions (chf.core.versions: prices, fees and an allowance change on 7 March, on 3 April
  (two days after a period boundary: the periods of idle lines renewed then start in the version before) and on
  1 May (a period boundary itself)): the clock lands on a change, just before it, or past it; reloads bring edited
  versions (or the first ones back); no grant outlives the version it was made in and every usage event
  names the version of its grant;
- B2B2B and tax (the wholesale block below): a reseller hierarchy (operator <- reseller <- enterprise <- the lines'
  accounts) whose lines take part in every rule above, each report rated again at every level's price list; net
  and gross tax profiles on accounts and a tenant.
After every step tests/oracle.py judges the new events and the stored state (its docstring lists the rules), and
every answer names the request it answers. A retransmission returns the first answer and changes nothing.

Default run: 100 examples of up to 50 steps (the suite). `HYPOTHESIS_PROFILE=long` (`make bench-properties`):
20,000 examples of up to 80 steps.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from chf.core import provisioning
from chf.core.addons import buy_addon
from chf.core.catalogue_loader import parse_catalogue
from chf.core.context import account_owner, line_owner
from chf.core.model import (
    CHECK_BALANCE,
    DIRECT_DEBITING,
    EVENT,
    INITIAL,
    POST_EVENT,
    PRICE_ENQUIRY,
    REFUND_ACCOUNT,
    SUCCESS,
    TERMINATE,
    UPDATE,
    ChargingAnswer,
    ChargingRequest,
    OpResult,
    RequestError,
    UnitRequest,
    UsageReport,
)
from chf.core.periods import period_end
from chf.core.versions import CatalogueVersions, version_of_tariff
from store.schema import ACTIVE, TERMINATED
from tests.corekit import CATALOGUE_TOML, snapshot
from tests.oracle import Ledger, verify
from tests.oracle_fronts import SCRATCH, UNIT_OF, System, gy_request, nchf_event, nchf_request, unit_request
from tests.support import fixture_text

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"

TENANTS = {"eu": "EUR", "us": "USD"}
# account id -> (tenant, payment, account plan, credit limit, opening balance)
ACCOUNTS: dict[str, tuple[str, str, str | None, int, int]] = {
    "pre1": ("eu", "prepaid", None, 0, 3_000),
    "pre2": ("eu", "prepaid", None, 0, 500),
    "post": ("eu", "postpaid", None, 4_000, 0),
    "hyb": ("eu", "hybrid", None, 5_000, 400),
    "fam": ("eu", "postpaid", "fam", 10_000, 0),
    "iot": ("eu", "postpaid", "iotflex", 2_000, 0),
    "iot2": ("eu", "postpaid", "iotflex", 2_000, 0),
    "usd": ("us", "prepaid", None, 0, 2_000),
    # Split billing (issue 15 item 4): the car maker pays its cars' rating group 50 from its pool, then its bill.
    "oem": ("eu", "postpaid", "oempool", 3_000, 0),
    "drv": ("eu", "prepaid", None, 0, 1_000),
}
# account id -> its parent (the payer split-billing rules name "parent"); parents are created first (above).
PARENTS = {"drv": "oem"}
# (account, line plan, initial state)
LINES: list[tuple[str, str | None, str]] = [
    ("pre1", "payg", "active"),
    ("pre1", "pre", "active"),
    ("pre1", "pre", "provisioned"),
    ("pre2", "payg", "active"),
    ("post", "post", "active"),
    ("hyb", "hyb", "active"),
    ("fam", "fam", "active"),
    ("fam", "fam", "active"),
    ("iot", "iotflex", "active"),
    ("iot", "iotflex", "active"),
    ("iot2", "iotflex", "provisioned"),
    ("usd", "payg", "active"),
    ("usd", "pre", "active"),
    # Zones (issue 15 item 5): EU roam like at home with a fair use; roaming beyond it refused.
    ("pre1", "rlah", "active"),
    ("pre2", "rlah-deny", "active"),
    # Split billing: rating group 10 the driver's, 50 the car maker's.
    ("drv", "car", "active"),
    ("drv", "car", "active"),
]
# -- issue 15: pools and add-ons (chf/core/pools.py, chf/core/addons.py) ------------------------------------------
# A stacked pool (fleet-s lines bring 100 bytes, fleet-l lines 1000 and nothing while suspended) and an adaptive
# pool with top-off (1000 then 2000 bytes, billed at the close). Add-ons are bought by the `buy_addon` rule.
ACCOUNTS.update({"fleet": ("eu", "postpaid", "fleetpool", 3_000, 0), "ent": ("eu", "postpaid", "topoff", 3_000, 0)})
LINES += [("fleet", "fleet-s", "active"), ("fleet", "fleet-l", "active"), ("ent", None, "active")]
POOL_LINE_PLANS = ["fleet-s", "fleet-l"]
POOL_ACCOUNT_PLANS = ["fleetpool", "tiered", "topoff"]
# ------------------------------------------------------------------------------------------------------------------
# The wholesale block (B2B2B and tax profiles): account id -> (tenant, payment, credit limit, opening balance,
# hierarchy and tax), and its lines (account, plan).
WHOLESALE_ACCOUNTS: dict[str, tuple[str, str, int, int, dict[str, Any]]] = {
    "resl-at-op": ("op", "postpaid", 10**9, 0, {"price_list": "op-wh", "tax_profile": "vat-net"}),
    "biz-at-resl": ("resl", "postpaid", 10**9, 0, {"parent": "resl-at-op", "price_list": "resl-biz"}),
    "biz-fleet": ("biz", "prepaid", 0, 1_200, {"parent": "biz-at-resl"}),  # short of the second month's fee
    "biz-post": ("biz", "postpaid", 4_000, 0, {"parent": "biz-at-resl", "tax_profile": "vat-net"}),
}
WHOLESALE_LINES = [("biz-fleet", "payg"), ("biz-fleet", "pre"), ("biz-post", "post")]
MAX_LINES = len(LINES) + len(WHOLESALE_LINES) + 4
LINE_PLANS = [
    "pre",
    "promo",
    "payg",
    "post",
    "hyb",
    "fam",
    "iotflex",
    "deny",
    "redir",
    *POOL_LINE_PLANS,
    "rlah",
    "rlah-deny",
]
ACCOUNT_PLANS = ["fam", "iotflex", "iotstatic", *POOL_ACCOUNT_PLANS]
NETWORKS = [None, None, "20801", "26201", "310260"]
# One-shot events: Gy CCR-Event Requested-Actions, and Nchf one-time event types.
ONE_SHOT = [
    DIRECT_DEBITING,
    DIRECT_DEBITING,
    REFUND_ACCOUNT,
    REFUND_ACCOUNT,
    CHECK_BALANCE,
    PRICE_ENQUIRY,
    "IEC",
    "PEC",
]
# Units a report claims: mostly plausible, now and then what a broken or hostile client may send (issue 11 item 12).
USAGE = st.integers(0, 2500) | st.sampled_from([2**32, 2**63, 2**64 - 1])


# -- the effective-dated catalogue (chf.core.versions) --------------------------------------------------------------
def _version(text: str, effective: str, changes: list[tuple[str, str]]) -> str:
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text.replace('default_zone = "world"\n', f'default_zone = "world"\neffective = {effective}\n', 1)


# From 7 March: dearer data, a dearer `pre` with more data; from 3 April: cheaper SMS, a dearer family plan, a
# cheaper postpaid one; from 1 May (a period boundary of every account): `pre` cheaper again.
V2_TOML = _version(
    CATALOGUE_TOML,
    "2026-03-07T00:00:00Z",
    [
        ("block = 100\nprice = 10\n", "block = 100\nprice = 30\n"),
        ('[plans.pre]\npayment = "prepaid"\nfee = 1000', '[plans.pre]\npayment = "prepaid"\nfee = 1500'),
        ('  name = "data"\n  unit = "bytes"\n  amount = 3000', '  name = "data"\n  unit = "bytes"\n  amount = 4000'),
    ],
)
V3_TOML = _version(
    V2_TOML.replace("effective = 2026-03-07T00:00:00Z\n", ""),
    "2026-04-03T00:00:00Z",
    [
        (
            '[tariffs.sms]\nunit = "events"\nblock = 1\nprice = 50',
            '[tariffs.sms]\nunit = "events"\nblock = 1\nprice = 40',
        ),
        ('[plans.fam]\npayment = "postpaid"\nfee = 3000', '[plans.fam]\npayment = "postpaid"\nfee = 3500'),
        ('[plans.post]\npayment = "postpaid"\nfee = 2000', '[plans.post]\npayment = "postpaid"\nfee = 1800'),
    ],
)


V4_TOML = _version(
    V3_TOML.replace("effective = 2026-04-03T00:00:00Z\n", ""),
    "2026-05-01T00:00:00Z",
    [('[plans.pre]\npayment = "prepaid"\nfee = 1500', '[plans.pre]\npayment = "prepaid"\nfee = 1200')],
)


def _sms_dearer(text: str) -> str:
    """What a reload may bring instead (the operator edits every version): SMS 5 micro-units dearer."""
    for old, new in (
        ("block = 1\nprice = 50", "block = 1\nprice = 55"),
        ("block = 1\nprice = 40", "block = 1\nprice = 45"),
    ):
        text = text.replace(f'[tariffs.sms]\nunit = "events"\n{old}', f'[tariffs.sms]\nunit = "events"\n{new}', 1)
    return text


def catalogue_versions(edited: bool = False) -> CatalogueVersions:
    # Every version has the wholesale block's price lists and tax profiles (their prices change with the tariffs).
    wholesale = fixture_text("wholesale.toml")
    base = [text + wholesale for text in (CATALOGUE_TOML, V2_TOML, V3_TOML, V4_TOML)]
    texts = base
    if edited:
        texts = [_sms_dearer(t) for t in texts]
        assert not set(texts) & set(base)
    name = "corekit-catalogue.toml" if not edited else "v1-edited.toml"
    first = parse_catalogue(texts[0], name)
    later = [parse_catalogue(text, f"v{n}{'-edited' if edited else ''}.toml") for n, text in enumerate(texts[1:], 2)]
    return CatalogueVersions([first, *later])


@dataclass
class Line:
    id: int
    imsi: str | None  # None once its identities went to another line


@dataclass
class Sess:
    key: str
    line: int  # index into ChargingSystem.lines
    protocol: str
    rating_group: int
    number: int  # the last request number sent


@dataclass
class Sent:
    request: Any  # a ChargingRequest, or ("topup", account, amount, key)
    answer: Any
    at: int


class ChargingSystem(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="chf-oracle-", dir=SCRATCH))
        self.versions = catalogue_versions()
        self.catalogue = self.versions.versions[0]
        self.sys = System(self.dir / "store", self.versions)
        self.ledger = Ledger(self.catalogue, self.versions)
        self.lines: list[Line] = []
        self.open: dict[str, Sess] = {}
        self.made = 0  # sessions, events and keys made so far (their names)
        self.imsi = 208010000000000
        self.history: list[Sent] = []  # every request whose answer must be replayable
        self.admin: dict[tuple[str, str], int] = {}  # (kind, balance) -> what the test credited or debited
        self.restarted: set[str] = set()  # keys of sessions that got a new INITIAL while open
        self.debited: set[tuple[int, int]] = set()  # (line index, rating group) of one-shot debits

    def teardown(self) -> None:
        self.sys.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers ----------------------------------------------------------------------------------------------------
    def name(self, prefix: str) -> str:
        self.made += 1
        return f"{prefix}{self.made}"

    def _count(self, kind: str, balance: str, amount: int) -> None:
        self.admin[(kind, balance)] = self.admin.get((kind, balance), 0) + amount

    def _add_line(self, account: str, plan: str | None, state: str, imsi: str | None = None) -> Line | None:
        if imsi is None:
            self.imsi += 1
            imsi = str(self.imsi)
        result = self.sys.operate(provisioning.add_line, account=account, imsi=imsi, plan=plan, state=state)
        if isinstance(result, RequestError):
            return None
        line = Line(result.value["id"], imsi)
        self.lines.append(line)
        return line

    def read(self) -> Any:
        return self.sys.store.read()

    def line_record(self, index: int) -> Any:
        with self.read() as txn:
            return txn.get_subscriber(self.lines[index].id)

    def rating_groups(self, index: int) -> list[int]:
        """The rating groups the line's plan rates (10 without a plan)."""
        with self.read() as txn:
            sub = txn.get_subscriber(self.lines[index].id)
            account = txn.get_account(sub.account)
        plan = self.catalogue.plans.get(sub.plan or account.plan or "")
        return sorted(plan.rating) if plan is not None and plan.rating else [10]

    def send(self, requests: list[ChargingRequest], *, record: bool = True) -> list[Any]:
        """Charge requests in one batch; every answer must name its own request. Answers go to the history."""
        grants = self._grant_versions(requests[0]) if len(requests) == 1 else None
        answers = self.sys.charge(requests)
        if grants is not None:
            self._check_usage_versions(requests[0], *grants)
        for request, answer in zip(requests, answers, strict=True):
            if isinstance(answer, RequestError):
                continue
            if isinstance(answer, BaseException):  # Gy 5012, Nchf 500: our own bug
                verify("no_internal_error", False, f"{request.session}#{request.number}: {answer!r}")
                continue
            verify(
                "identity",
                (answer.session, answer.number) == (request.session, request.number),
                f"{request.session}#{request.number} answered as {answer.session}#{answer.number}",
            )
            if record and not answer.duplicate:
                self.history.append(Sent(request, answer, self.sys.now))
        self._forget_closed()
        return answers

    def _forget_closed(self) -> None:
        with self.read() as txn:
            for key, sess in list(self.open.items()):
                session = txn.get_session(self._session_key(sess))
                if session is None or session.closed:
                    del self.open[key]

    def _request(self, sess: Sess, kind: str, used: int, more: bool, uplink: int | None = None) -> ChargingRequest:
        line = self.lines[sess.line]
        imsi = line.imsi or "0"
        unit = unit_request(sess.rating_group, more and kind != TERMINATE, used, uplink=uplink)
        units = [unit] if used or unit.requested is not None else []
        if sess.protocol == "nchf":
            return nchf_request(kind, sess.key, sess.number, imsi, units)
        return gy_request(kind, sess.key, sess.number, imsi, units)

    def _check_directions(self, req: ChargingRequest, sent: UnitRequest, seq: int) -> None:
        """Octets reported by direction (`sent`, as the client meant them, before a front-end's mapping) are rated
        and recorded in that direction: uplink (from the UE) is bytes_in on Gy and on Nchf alike (the export's
        datavolumeUplink)."""
        reported = [r.units for r in sent.used if "bytes_in" in r.units]
        if not reported:
            return
        with self.read() as txn:
            rated = [e["units"] for e in txn.events(seq) if e["kind"] == "usage" and e["session"] == req.session]
        for units in reported:
            verify("direction", units in rated, f"{req.session}#{req.number}: reported {units}, rated {rated}")

    def _check_grant(self, answer: ChargingAnswer, session_key: str) -> None:
        """A new money grant fits the account's funds right after it (no overspend)."""
        with self.read() as txn:
            session = txn.get_session(session_key)
            if session is None:
                return
            accounts = {a.id: a for a in txn.accounts()}
        for n, ua in enumerate(answer.units):
            if not ua.granted or ua.unit is None or ua.rating_group not in session.reservations:
                continue
            policy = self.catalogue.grant_policy(ua.rating_group)
            assert ua.granted <= policy.quantum(ua.unit), ua
            self._check_validity(ua.validity_time or 0, ua)
            reservation = session.reservations[ua.rating_group]
            account = accounts[reservation.payer or session.account]  # split billing: the payer's funds
            assert reservation.granted == ua.granted
            if reservation.money:
                charged_after = sum(u.charged for u in answer.units[n + 1 :])
                limit = account.balance + account.credit_limit
                assert account.reserved <= limit + charged_after, (account.as_dict(), reservation.pack())

    # -- versioned: the effective-dated catalogue (chf.core.versions) -----------------------------------------------
    def _check_validity(self, validity: int, unit_answer: Any) -> None:
        """No grant outlives the version of the catalogue it was made in: its validity ends by the next change."""
        until = self.versions.at(self.sys.now)[2]
        verify(
            "versioned",
            validity > 0 and self.sys.now + validity <= until,
            f"at {self.sys.now} a grant valid {validity} s spans the change at {until}: {unit_answer}",
        )

    def _grant_versions(self, request: ChargingRequest) -> tuple[dict[int, str | None], int]:
        """Before a request: the versions its session's reservations were granted in, and the spool's end."""
        with self.read() as txn:
            session = txn.get_session(request.session)
            last = txn.last_event_seq()
        if session is None or session.closed:
            return {}, last
        return {rg: version_of_tariff(r.tariff) for rg, r in session.reservations.items()}, last

    def _check_usage_versions(self, request: ChargingRequest, grants: dict[int, str | None], last: int) -> None:
        """Usage is priced by the version its grant was made in; usage without a grant by the version in force."""
        now_version = self.versions.at(self.sys.now)[0].version
        with self.read() as txn:
            events = [e for e in txn.events(last) if e["kind"] == "usage" and e.get("session") == request.session]
        for ev in events:
            expected = grants.get(ev["rating_group"]) or now_version
            verify(
                "versioned",
                ev["catalogue"] == expected,
                f"usage of {request.session} rg {ev['rating_group']}: version {ev['catalogue']}, granted in {expected}",
            )

    @rule(edited=st.booleans())
    def reload_catalogue(self, edited: bool) -> None:
        """A reload (SIGHUP, API) that brings edited versions (dearer SMS in each), or the first ones back: new
        grants and periods use the running versions; open grants keep the version they were made in."""
        self.versions = catalogue_versions(edited)
        self.sys.engine.versions = self.versions
        self.ledger.reload(self.versions)

    @rule(where=st.sampled_from(["on", "before", "after"]))
    def clock_to_a_version_change(self, where: str) -> None:
        """The clock lands on the next change of the catalogue, a second before it, or a minute past it."""
        until = self.versions.at(self.sys.now)[2]
        if until >= 2**62:
            return
        self.sys.now = until + {"on": 0, "before": -1, "after": 60}[where]

    # -- setup ------------------------------------------------------------------------------------------------------
    @initialize()
    def provision(self) -> None:
        for tenant, currency in TENANTS.items():
            self.sys.operate(
                lambda txn, engine, now, t=tenant, c=currency: provisioning.create_tenant(txn, t, t, c, now)
            )
        for account_id, (tenant, payment, plan, credit_limit, balance) in ACCOUNTS.items():
            result = self.sys.operate(
                provisioning.create_account,
                account_id=account_id,
                tenant=tenant,
                payment=payment,
                plan=plan,
                credit_limit=credit_limit,
                balance=balance,
                parent=PARENTS.get(account_id),
            )
            if not isinstance(result, RequestError) and balance:
                self._count("topup", f"{account_owner(account_id)}:wallet", balance)
        for account_id, plan, state in LINES:
            self._add_line(account_id, plan, state)

    # -- sessions ---------------------------------------------------------------------------------------------------
    @rule(data=st.data(), protocol=st.sampled_from(["gy", "nchf"]), network=st.sampled_from(NETWORKS))
    def start_session(self, data: st.DataObject, protocol: str, network: str | None) -> None:
        index = data.draw(st.integers(0, len(self.lines) - 1), label="line")
        line = self.lines[index]
        if line.imsi is None:
            return
        rg = data.draw(st.sampled_from(self.rating_groups(index)), label="rating group")
        key = self.name("s")
        sess = Sess(key, index, protocol, rg, 0)
        unit = unit_request(rg, True, 0)
        if protocol == "nchf":
            req = nchf_request(INITIAL, key, 0, line.imsi, [unit], network)
        else:
            req = gy_request(INITIAL, key, 0, line.imsi, [unit], serving_network=network)
        (answer,) = self.send([req])
        if isinstance(answer, ChargingAnswer) and answer.result == SUCCESS:
            self.open[key] = sess
            self._check_grant(answer, req.session)
            self._forget_closed()

    def _session_key(self, sess: Sess) -> str:
        return ("nchf:" if sess.protocol == "nchf" else "gy:") + sess.key

    @precondition(lambda self: self.open)
    @rule(data=st.data(), reports=st.lists(USAGE, min_size=1, max_size=4), more=st.booleans())
    def update_session(self, data: st.DataObject, reports: list[int], more: bool) -> None:
        """One to four updates in a row (sessions long enough that early answers are no longer kept)."""
        sess = self.open[data.draw(st.sampled_from(sorted(self.open)), label="session")]
        for n, used in enumerate(reports):
            if sess.key not in {s.key for s in self.open.values()}:
                return
            sess.number += 1
            if sess.rating_group == 40 and used <= 2500:
                used = min(used, 2)
            uplink = data.draw(st.none() | st.integers(0, max(used, 0)), label="uplink")
            req = self._request(sess, UPDATE, used, more or n < len(reports) - 1, uplink)
            with self.read() as txn:
                seq = txn.last_event_seq()
            (answer,) = self.send([req])
            if isinstance(answer, ChargingAnswer) and not answer.duplicate:
                self._check_grant(answer, req.session)
                self._check_directions(req, unit_request(sess.rating_group, False, used, uplink=uplink), seq)

    @precondition(lambda self: self.open)
    @rule(data=st.data(), used=st.integers(0, 2500))
    def terminate_session(self, data: st.DataObject, used: int) -> None:
        sess = self.open.pop(data.draw(st.sampled_from(sorted(self.open)), label="session"))
        sess.number += 1
        self.send([self._request(sess, TERMINATE, used, False)])

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def restart_session(self, data: st.DataObject) -> None:
        """A new INITIAL on an open session (a client that lost its state, or a reused Session-Id)."""
        sess = self.open[data.draw(st.sampled_from(sorted(self.open)), label="session")]
        sess.number += 1
        self.restarted.add(self._session_key(sess))
        self.send([self._request(sess, INITIAL, 0, True)])

    @precondition(lambda self: self.open or self.history)
    @rule(data=st.data(), size=st.integers(2, 4))
    def batch(self, data: st.DataObject, size: int) -> None:
        """Several requests in one group commit: updates of open sessions (one session's several times, in
        order), and retransmissions of recent requests, the one just sent among them."""
        requests: list[ChargingRequest] = []
        for _ in range(size):
            if bool(self.open) and data.draw(st.booleans(), label="update"):
                sess = self.open[data.draw(st.sampled_from(sorted(self.open)), label="session")]
                sess.number += 1
                used = data.draw(st.integers(0, 2 if sess.rating_group == 40 else 2500), label="used")
                requests.append(self._request(sess, UPDATE, used, True))
            elif bool(requests) and data.draw(st.booleans(), label="again"):
                requests.append(data.draw(st.sampled_from(requests), label="retransmission"))
            elif self.history:
                sent = data.draw(st.sampled_from(self.history[-6:]), label="recent")
                if isinstance(sent.request, ChargingRequest) and self._replayable(sent):
                    requests.append(sent.request)
        if not requests:
            return
        before = len(self.history)
        self.send(requests)
        # A retransmission in the same batch as its first copy is answered from the first (a refusal, which
        # changed nothing and was not kept, may be decided again).
        applied: set[tuple[str, int]] = set()
        for sent in self.history[before:]:
            key = (sent.request.session, sent.request.number)
            success = sent.answer.result == SUCCESS
            verify("exactly_once", not (success and key in applied), f"{key} applied twice in one batch")
            if success:
                applied.add(key)

    # -- one-shot events --------------------------------------------------------------------------------------------
    @rule(
        data=st.data(),
        action=st.sampled_from(ONE_SHOT),
        rg=st.sampled_from([40, 40, 10]),
        count=st.integers(1, 30),
        keyed=st.booleans(),
    )
    def one_shot_event(self, data: st.DataObject, action: str, rg: int, count: int, keyed: bool) -> None:
        """A Gy CCR-Event (debit, refund, balance check, price enquiry) or an Nchf one-time event (IEC, PEC).
        Half the refunds are for a line and rating group that was debited (there is something to refund)."""
        index = data.draw(st.integers(0, len(self.lines) - 1), label="line")
        if action == REFUND_ACCOUNT and self.debited and data.draw(st.booleans(), label="refund a debit"):
            index, rg = data.draw(st.sampled_from(sorted(self.debited)), label="debited")
        line = self.lines[index]
        if line.imsi is None:
            return
        key = self.name("e")
        amount = {UNIT_OF[rg]: count if rg == 40 else count * 100}
        if action in ("IEC", "PEC"):
            req = nchf_event(key, line.imsi, action, rg, amount)
        else:
            units = [UnitRequest(rating_group=rg, requested=amount)]
            idem = f"k-{key}" if keyed else None
            req = gy_request(EVENT, key, 0, line.imsi, units, action=action, idempotency_key=idem)
        with self.read() as txn:
            account = txn.get_account(txn.get_subscriber(line.id).account)
            funds = account.available()
        (answer,) = self.send([req], record=req.action in (DIRECT_DEBITING, REFUND_ACCOUNT, POST_EVENT))
        if not isinstance(answer, ChargingAnswer) or answer.result != SUCCESS:
            return
        if req.action in (DIRECT_DEBITING, POST_EVENT):
            self.debited.add((index, rg))
        if req.action == DIRECT_DEBITING:
            assert (answer.cost or 0) <= max(funds, 0), (answer, funds)  # a debit never spends what is not there

    @rule(
        data=st.data(),
        currency=st.sampled_from([None, "EUR", "USD", "GBP"]),
        amount=st.integers(1, 3_000),
        in_session=st.booleans(),
    )
    def money_in_a_currency(self, data: st.DataObject, currency: str | None, amount: int, in_session: bool) -> None:
        """Money named on the wire with its currency (Gy CC-Money's Currency-Code): as a one-shot debit, or as money
        reported used in an open session. Money in a currency other than the account's is refused and changes
        nothing (oracle rule currency); no rule converts currencies."""
        sess = None
        if in_session and self.open:
            sess = self.open[data.draw(st.sampled_from(sorted(self.open)), label="session")]
            if sess.protocol != "gy":  # (Nchf has no monetary units)
                return
            line = self.lines[sess.line]
            units = [UnitRequest(sess.rating_group, requested={}, used=[UsageReport({"money": amount})])]
            req = gy_request(UPDATE, sess.key, sess.number + 1, line.imsi or "0", units, currency=currency)
        else:
            line = self.lines[data.draw(st.integers(0, len(self.lines) - 1), label="line")]
            if line.imsi is None:
                return
            units = [UnitRequest(rating_group=40, requested={"money": amount})]
            req = gy_request(EVENT, self.name("m"), 0, line.imsi, units, action=DIRECT_DEBITING, currency=currency)
        with self.read() as txn:
            held = txn.get_account(txn.get_subscriber(line.id).account).currency
            seq = txn.last_event_seq()
        (answer,) = self.send([req])
        if currency is None or currency == held:
            if sess is not None and isinstance(answer, ChargingAnswer):
                sess.number += 1
            return
        refused = isinstance(answer, RequestError) and answer.field == "currency"
        verify("currency", refused, f"money in {currency} for a {held} account: {answer!r}")
        with self.read() as txn:
            verify("currency", txn.last_event_seq() == seq, f"money in {currency} for a {held} account wrote events")

    # -- money ------------------------------------------------------------------------------------------------------
    @rule(account=st.sampled_from(sorted(ACCOUNTS)), amount=st.integers(1, 5_000), keyed=st.booleans())
    def topup(self, account: str, amount: int, keyed: bool) -> None:
        key = self.name("t") if keyed else None
        result = self.sys.operate(
            provisioning.topup, account, amount, actor="oracle", reason="top-up", idempotency_key=key
        )
        if isinstance(result, RequestError):
            return
        self._count("topup", f"{account_owner(account)}:wallet", amount)
        if key is not None:
            self.history.append(Sent(("topup", account, amount, key), result.value, self.sys.now))

    @rule(account=st.sampled_from(sorted(ACCOUNTS)), amount=st.integers(1, 3_000) | st.integers(-3_000, -1))
    def adjust_wallet(self, account: str, amount: int) -> None:
        result = self.sys.operate(provisioning.adjust, account, amount, actor="oracle", reason="correction")
        if not isinstance(result, RequestError):
            self._count("adjustment", f"{account_owner(account)}:wallet", amount)

    @rule(data=st.data(), amount=st.integers(1, 2_000) | st.integers(-2_000, -1))
    def adjust_bucket(self, data: st.DataObject, amount: int) -> None:
        index = data.draw(st.integers(0, len(self.lines) - 1), label="line")
        sub = self.line_record(index)
        with self.read() as txn:
            bs = txn.get_line_balances(sub.id)
            buckets = [b.id for b in bs.buckets] if bs is not None else []
        if not buckets:
            return
        bucket = data.draw(st.sampled_from(buckets), label="bucket")
        result = self.sys.operate(
            provisioning.adjust,
            sub.account,
            amount,
            actor="oracle",
            reason="correction",
            line_id=sub.id,
            bucket_id=bucket,
        )
        if not isinstance(result, RequestError):
            self._count("adjustment", f"{line_owner(sub.id)}:bucket:{bucket}", amount)

    @rule(data=st.data(), amount=st.integers(1, 3_000), days=st.integers(0, 40), keyed=st.booleans())
    def grant_bucket(self, data: st.DataObject, amount: int, days: int, keyed: bool) -> None:
        index = data.draw(st.integers(0, len(self.lines) - 1), label="line")
        rg = data.draw(st.sampled_from(self.rating_groups(index)), label="rating group")
        line_id = self.lines[index].id
        grant = ("grant", line_id, rg, amount, self.sys.now + days * 86_400 + 1, self.name("g") if keyed else None)
        result = self._grant(grant)
        if not isinstance(result, RequestError):
            self._count("bucket_grant", f"{line_owner(line_id)}:bucket:{result.value['id']}", amount)
            if keyed:
                self.history.append(Sent(grant, result.value, self.sys.now))

    def _grant(self, grant: tuple[Any, ...]) -> OpResult | RequestError:
        _, line_id, rg, amount, valid_to, key = grant
        return self.sys.operate(
            provisioning.grant_bucket,
            line_id,
            name="goodwill",
            unit=UNIT_OF.get(rg, "bytes"),
            amount=amount,
            valid_to=valid_to,
            actor="oracle",
            reason="goodwill",
            rating_groups=[rg],
            idempotency_key=key,
        )

    # -- plans, lifecycle, moves, new lines -------------------------------------------------------------------------
    @rule(data=st.data(), plan=st.sampled_from(LINE_PLANS))
    def change_plan(self, data: st.DataObject, plan: str) -> None:
        index = data.draw(st.integers(0, len(self.lines) - 1), label="line")
        self.sys.operate(
            provisioning.assign_plan, plan, actor="oracle", reason="plan change", line_ref=f"#{self.lines[index].id}"
        )

    @rule(account=st.sampled_from(["fam", "iot", "iot2", "fleet", "ent"]), plan=st.sampled_from(ACCOUNT_PLANS))
    def change_account_plan(self, account: str, plan: str) -> None:
        self.sys.operate(provisioning.assign_plan, plan, actor="oracle", reason="plan change", account_id=account)

    @rule(data=st.data(), state=st.sampled_from(["active", "active", "suspended", "suspended", "terminated"]))
    def set_state(self, data: st.DataObject, state: str) -> None:
        index = data.draw(st.integers(0, len(self.lines) - 1), label="line")
        self._set_state(data, self.lines[index], state)

    @rule(data=st.data(), account=st.sampled_from(["fam", "iot", "iot2"]))
    def close_account(self, data: st.DataObject, account: str) -> None:
        """Every line of an account on a plan terminated (a family or fleet leaves): at the next boundaries its
        plan must charge and grant nothing (oracle rule fee_state), until a line joins it again."""
        with self.read() as txn:
            members = set(txn.lines_of_account(account))
        for line in [ln for ln in self.lines if ln.id in members]:
            self._set_state(data, line, TERMINATED)

    def _set_state(self, data: st.DataObject, line: Line, state: str) -> None:
        with self.read() as txn:
            open_sessions = {s.key for s in txn.sessions_of_line(line.id) if not s.closed}
            before = txn.get_subscriber(line.id).state
        result = self.sys.operate(provisioning.set_state, f"#{line.id}", state, actor="oracle", reason="lifecycle")
        if isinstance(result, RequestError):
            return
        aborted = {s.session for s in result.signals if s.kind == "abort"}
        if state != ACTIVE and before != state:
            assert aborted == open_sessions, (aborted, open_sessions)
        # The clients answer an abort with their final report (charged although the line is no longer active).
        final = data.draw(st.integers(0, 2500), label="final usage")
        for sess in [s for s in self.open.values() if self._session_key(s) in aborted]:
            sess.number += 1
            self.send([self._request(sess, TERMINATE, min(final, 2) if sess.rating_group == 40 else final, False)])

    @rule(data=st.data(), account=st.sampled_from(sorted(ACCOUNTS)))
    def move_line(self, data: st.DataObject, account: str) -> None:
        index = data.draw(st.integers(0, len(self.lines) - 1), label="line")
        self.sys.operate(provisioning.move_line, f"#{self.lines[index].id}", account, actor="oracle", reason="move")
        self._forget_closed()

    @precondition(lambda self: len(self.lines) < MAX_LINES)
    @rule(
        account=st.sampled_from(sorted(ACCOUNTS)),
        plan=st.sampled_from([None, "payg", "pre", "post", "iotflex", "fam", *POOL_LINE_PLANS]),
        state=st.sampled_from(["active", "provisioned"]),
        reuse=st.booleans(),
    )
    def add_line(self, account: str, plan: str | None, state: str, reuse: bool) -> None:
        """A new line (an IoT pool member, a provisioned SIM), or one taking a terminated line's identity."""
        old = None
        if reuse:
            with self.read() as txn:
                old = next(
                    (n for n, ln in enumerate(self.lines) if ln.imsi and txn.get_subscriber(ln.id).state == TERMINATED),
                    None,
                )
        imsi = self.lines[old].imsi if old is not None else None
        if self._add_line(account, plan, state, imsi) is not None and old is not None:
            self.lines[old].imsi = None  # the number is the new line's now

    # -- issue 15: add-ons ------------------------------------------------------------------------------------------
    @rule(data=st.data(), addon=st.sampled_from(["data-1k", "sms-5", "nope"]), keyed=st.booleans())
    def buy_addon(self, data: st.DataObject, addon: str, keyed: bool) -> None:
        """An add-on for a line: bought whole (price and bucket in one event) or refused with nothing changed."""
        index = data.draw(st.integers(0, len(self.lines) - 1), label="line")
        key = self.name("a") if keyed else None
        with self.read() as txn:
            before = snapshot(txn)
        result = self.sys.operate(
            buy_addon, f"#{self.lines[index].id}", addon, actor="oracle", reason="bolt-on", idempotency_key=key
        )
        with self.read() as txn:
            after = snapshot(txn)
        if isinstance(result, RequestError):
            verify("addon", after == before, f"a refused add-on {addon} ({result}) changed the store")
            return
        if key is not None:
            again = self.sys.operate(
                buy_addon, f"#{self.lines[index].id}", addon, actor="oracle", reason="bolt-on", idempotency_key=key
            )
            assert isinstance(again, OpResult) and again.duplicate and again.value == result.value
            with self.read() as txn:
                verify("exactly_once", snapshot(txn) == after, f"add-on {addon} bought again with key {key}")

    # -- time and background work -----------------------------------------------------------------------------------
    @rule(step=st.sampled_from([1, 50, 199, 200, 3_599, 86_400, 10 * 86_400, "boundary"]))
    def clock_jump(self, step: int | str) -> None:
        if step == "boundary":
            # Every account renews on cycle day 1 and every plan here is monthly: land exactly on the next one.
            self.sys.now = period_end("month", self.sys.now, 1, self.catalogue.settings.timezone)
        else:
            self.sys.now += int(step)

    @rule()
    def sweep(self) -> None:
        self.sys.sweep()
        self._forget_closed()

    # -- B2B2B and tax profiles (chf.core.wholesale, chf.core.tax; tests/fixtures/wholesale.toml) ------------------
    @initialize()
    def provision_wholesale(self) -> None:
        """The operator "op" sells to the reseller "resl" (its account "resl-at-op", net prices taxed at 19 %),
        which sells to the enterprise "biz" (its account "biz-at-resl", with a device fee; the tenant's accounts
        pay gross prices taxed at 25 %); biz's accounts hold lines that every other rule charges too."""
        for tenant, parent, profile in (("op", None, None), ("resl", "op", None), ("biz", "resl", "vat-gross")):
            self.sys.operate(
                lambda txn, engine, now, t=tenant, p=parent, f=profile: provisioning.create_tenant(
                    txn, t, t, "EUR", now, parent=p, tax_profile=f, catalogue=engine.catalogue
                )
            )
        for account_id, (tenant, payment, credit_limit, balance, extra) in WHOLESALE_ACCOUNTS.items():
            result = self.sys.operate(
                provisioning.create_account,
                account_id=account_id,
                tenant=tenant,
                payment=payment,
                credit_limit=credit_limit,
                balance=balance,
                **extra,
            )
            assert not isinstance(result, RequestError), result
            if balance:
                self._count("topup", f"{account_owner(account_id)}:wallet", balance)
        for account_id, plan in WHOLESALE_LINES:
            self._add_line(account_id, plan, "active")

    @rule(amount=st.integers(1, 3_000))
    def topup_wholesale(self, amount: int) -> None:
        """A top-up of the prepaid account below the hierarchy: periods left unpaid start, with their device fees."""
        result = self.sys.operate(provisioning.topup, "biz-fleet", amount, actor="oracle", reason="top-up")
        if not isinstance(result, RequestError):
            self._count("topup", f"{account_owner('biz-fleet')}:wallet", amount)

    @precondition(lambda self: len(self.lines) < MAX_LINES)
    @rule(account=st.sampled_from(["biz-fleet", "biz-post"]), plan=st.sampled_from(["payg", "pre", "post"]))
    def add_wholesale_line(self, account: str, plan: str) -> None:
        """A new line below the hierarchy: its first period's device fee is charged at the levels above."""
        self._add_line(account, plan, "active")

    # -- exactly once -----------------------------------------------------------------------------------------------
    @precondition(lambda self: self.history)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """Any earlier request again: the first answer, and no change; or, once forgotten, refused."""
        recent = data.draw(st.booleans(), label="recent")  # half the time one of the latest: the likely retransmission
        sent = data.draw(st.sampled_from(self.history[-6:] if recent else self.history), label="sent")
        window = self.sys.engine.config.idempotency_window
        with self.read() as txn:
            before = snapshot(txn)
        if isinstance(sent.request, tuple):  # an admin top-up or bucket grant with an idempotency key
            if self.sys.now >= sent.at + window:
                return  # the key has expired: a new top-up (grant) by design
            if sent.request[0] == "grant":
                again = self._grant(sent.request)
            else:
                _, account, amount, key = sent.request
                again = self.sys.operate(
                    provisioning.topup, account, amount, actor="oracle", reason="top-up", idempotency_key=key
                )
            assert isinstance(again, OpResult) and again.duplicate and again.value == sent.answer
        elif not self._replay_request(sent):
            return
        rule = self._replay_rule(sent.request) if isinstance(sent.request, ChargingRequest) else "exactly_once"
        with self.read() as txn:
            verify(rule, snapshot(txn) == before, f"a retransmission of {sent.request} changed the store")

    def _replayable(self, sent: Sent) -> bool:
        """Whether a retransmission of `sent` is in scope: a session request while its session is kept (after its
        replay window a closed session is forgotten, and an INITIAL again is a new session), a one-shot event
        within the idempotency window (as `_replay_request`)."""
        request: ChargingRequest = sent.request
        if request.kind == EVENT:
            return self.sys.now < sent.at + self.sys.engine.config.idempotency_window
        with self.read() as txn:
            return txn.get_session(request.session) is not None

    def _replay_rule(self, request: ChargingRequest) -> str:
        """Retransmissions on a session restarted by a new INITIAL while open are their own rule."""
        return "restart_keeps_replays" if request.session in self.restarted else "exactly_once"

    def _replay_request(self, sent: Sent) -> bool:
        """Send a recorded request again; False when it is out of scope (its replay window is over)."""
        request: ChargingRequest = sent.request
        if request.kind == EVENT:
            if self.sys.now >= sent.at + self.sys.engine.config.idempotency_window:
                return False
        else:
            with self.read() as txn:
                session = txn.get_session(request.session)
            if session is None:
                return False  # forgotten after its replay window
        # A refusal changed nothing and was not kept: the same request sent again later was decided anew.
        latest = next(s for s in reversed(self.history) if s.request is request or s.request == request)
        rule = self._replay_rule(request)
        (again,) = self.send([request], record=False)
        if isinstance(again, RequestError):
            return True  # refused: its answer is gone and applying it again could charge twice
        assert isinstance(again, ChargingAnswer)
        if again.duplicate:
            verify(rule, again.pack() == latest.answer.pack(), f"{again} differs from {latest.answer}")
        else:
            verify(rule, again.result != SUCCESS, f"{request.session}#{request.number} applied again")
        return True

    # -- zones (issue 15 item 5) --------------------------------------------------------------------------------------
    @rule(
        data=st.data(),
        network=st.sampled_from(NETWORKS),
        action=st.sampled_from([DIRECT_DEBITING, "PEC", PRICE_ENQUIRY]),
        count=st.integers(1, 30),
    )
    def roaming_event(self, data: st.DataObject, network: str | None, action: str, count: int) -> None:
        """A one-shot data event from a serving network (the session rules start sessions from any network too): it
        draws only on allowances of its zone, within their fair use ("zoned")."""
        index = data.draw(st.integers(0, len(self.lines) - 1), label="line")
        line = self.lines[index]
        if line.imsi is None:
            return
        key = self.name("z")
        amount = {"bytes": count * 100}
        if action == "PEC":
            req = nchf_event(key, line.imsi, action, 10, amount)
            req.serving_network = network
        else:
            units = [UnitRequest(rating_group=10, requested=amount)]
            req = gy_request(EVENT, key, 0, line.imsi, units, action=action, serving_network=network)
        (answer,) = self.send([req], record=action != PRICE_ENQUIRY)
        if isinstance(answer, ChargingAnswer) and answer.result == SUCCESS and action != PRICE_ENQUIRY:
            self.debited.add((index, 10))

    # -- after every step -------------------------------------------------------------------------------------------
    @invariant()
    def money_is_conserved(self) -> None:
        with self.read() as txn:
            for kind in self.ledger.follow(txn):
                event(f"spool: {kind}")  # how often each kind of event comes up (--hypothesis-show-statistics)
            self.ledger.check_state(txn, self.admin)


ChargingSystem.TestCase.settings = settings(
    max_examples=int(os.environ.get("ORACLE_EXAMPLES", 20_000 if LONG else 100)),
    stateful_step_count=80 if LONG else 50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
TestChargingSystem = ChargingSystem.TestCase
