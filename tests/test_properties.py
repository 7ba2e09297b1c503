"""Stateful property test of the charging core: random interleavings of everything the core does, with the
invariants of docs/architecture.md checked after every step.

Lines on prepaid, postpaid and hybrid accounts, a family shared allowance and a flexible IoT pool get session
requests, one-shot events, top-ups, adjustments, clock jumps (to exact period boundaries too), suspensions,
line moves and reaping, in any order. After every step: conservation (balances recomputable from the events,
`after` fields consistent), reservations consistent with the open sessions and never above what a bucket
holds, new money grants within the account's funds, gap-free event sequence, unique ids. Any earlier request
re-sent returns the identical answer and changes nothing.

Default run: 200 examples of up to 50 steps (~20 s). `HYPOTHESIS_PROFILE=long` runs many more.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from chf.core import provisioning
from chf.core.engine import EngineConfig
from chf.core.model import (
    CHECK_BALANCE,
    DIRECT_DEBITING,
    PRICE_ENQUIRY,
    REFUND_ACCOUNT,
    SUCCESS,
    ChargingRequest,
    RequestError,
    UnitRequest,
    UsageReport,
)
from chf.core.periods import period_end
from chf.runtime.service import ChargingService
from store.lmdbstore import Txn
from store.schema import Subscriber
from tests.corekit import World, check_invariants, event, initial, snapshot, terminate, update

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"

# account id -> (payment, account plan, credit limit, opening balance)
ACCOUNTS: dict[str, tuple[str, str | None, int, int]] = {
    "pre1": ("prepaid", None, 0, 3_000),
    "pre2": ("prepaid", None, 0, 500),
    "post": ("postpaid", None, 4_000, 0),
    "hyb": ("hybrid", None, 5_000, 400),
    "fam": ("postpaid", "fam", 10_000, 0),
    "iot": ("postpaid", "iotflex", 2_000, 0),
}
# (account, line plan, rating group it uses)
LINES = [
    ("pre1", "payg", 10),
    ("pre1", "pre", 10),
    ("pre2", "payg", 40),
    ("post", "post", 10),
    ("hyb", "hyb", 10),
    ("fam", "fam", 10),
    ("fam", "fam", 40),
    ("iot", "iotflex", 30),
    ("iot", "iotflex", 30),
]
LAST_IOT_LINE = len(LINES) - 1  # the one line that may be terminated (for good)
PREPAID_ACCOUNTS = ("pre1", "pre2")
VOICE_TOO = (
    1  # this line's session requests also carry rating group 20 (voice, seconds)  # lines of these move between them
)


def _line(txn: Txn, line_id: int) -> Subscriber:
    sub = txn.get_subscriber(line_id)
    assert sub is not None, line_id
    return sub


class ChargingCore(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="chf-prop-"))
        # Two kept answers per session (default 4): retransmissions older than the kept answers come up often.
        # Durability "os": these tests never lose power, and fsync per step would make shrinking crawl.
        self.world = World(self.dir / "store", config=EngineConfig(answers_kept=2), durability="os")
        self.lines: list[tuple[int, str, int]] = []  # (line id, imsi, rating group)
        self.open: dict[str, list[int]] = {}  # session key -> [line index, last request number]
        self.sessions_made = 0
        self.events_made = 0
        # Every request sent whose answer must be replayable: (request, first answer, time sent)
        self.history: list[tuple[Any, Any, int]] = []

    def teardown(self) -> None:
        self.world.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @initialize()
    def provision(self) -> None:
        w = self.world
        w.tenant()
        for account_id, (payment, plan, credit_limit, balance) in ACCOUNTS.items():
            w.account(account_id, payment=payment, plan=plan, credit_limit=credit_limit, balance=balance)
        for account_id, plan, rg in LINES:
            line_id, imsi = w.line(account_id, plan=plan)
            self.lines.append((line_id, imsi, rg))

    # -- helpers ----------------------------------------------------------------------------------------------------
    def snap(self) -> dict[str, Any]:
        with self.world.store.read() as txn:
            return snapshot(txn)

    def _voice_line(self, req: ChargingRequest) -> bool:
        return req.identities[0][1] == self.lines[VOICE_TOO][1]

    def _add_voice(self, req: ChargingRequest) -> None:
        """Mirror the data unit of a request as a voice unit (used seconds = used bytes / 20)."""
        data = req.units[0]
        used = [UsageReport({"seconds": r.units.get("bytes", 0) // 20}, r.reason) for r in data.used]
        requested: dict[str, int] | None = None if data.requested is None else {}
        req.units.append(UnitRequest(rating_group=20, requested=requested, used=used, reason=data.reason))

    def charge(self, req: ChargingRequest) -> Any:
        """Send a session or event request and check the no-overspend rules that depend on it."""
        w = self.world
        if req.kind != "event" and req.units and req.units[0].rating_group == 10 and self._voice_line(req):
            self._add_voice(req)
        answer = w.charge(req)
        if req.kind == "event":
            return answer
        if answer.duplicate:
            return answer
        session = w.session(req.session)
        for n, ua in enumerate(answer.units):
            if ua.granted:
                policy = w.engine.catalogue.grant_policy(ua.rating_group)
                assert ua.unit is not None and ua.granted <= policy.quantum(ua.unit), ua
                assert session is not None and ua.rating_group in session.reservations
                reservation = session.reservations[ua.rating_group]
                assert reservation.granted == ua.granted
                if reservation.money:
                    # A new money grant: the account's holdings fitted its funds right after it. Usage beyond a
                    # grant reported for a later rating group of the same request may have been charged since.
                    charged_after = sum(u.charged for u in answer.units[n + 1 :])
                    account = w.acct(session.account)
                    limit = account.balance + account.credit_limit  # hybrid too: wallet, then credit
                    assert account.reserved <= limit + charged_after, (account.as_dict(), reservation.pack())
        return answer

    # -- sessions ---------------------------------------------------------------------------------------------------
    @rule(line=st.integers(0, len(LINES) - 1), network=st.sampled_from([None, None, "20801", "26201", "310260"]))
    def start_session(self, line: int, network: str | None) -> None:
        _, imsi, rg = self.lines[line]
        self.sessions_made += 1
        key = f"s{self.sessions_made}"
        req = initial(key, imsi, rg=rg, serving_network=network)
        if rg == 40:
            req.units[0].requested = {"events": 1}
        answer = self.charge(req)
        session = self.world.session(key)
        if session is not None:
            self.history.append((req, answer, self.world.now))
            if not session.closed:
                self.open[key] = [line, 0]

    def _unit_type(self, line: int) -> str:
        return "events" if self.lines[line][2] == 40 else "bytes"

    @precondition(lambda self: self.open)
    @rule(data=st.data(), reports=st.lists(st.integers(0, 2500), min_size=1, max_size=4), more=st.booleans())
    def update_session(self, data: st.DataObject, reports: list[int], more: bool) -> None:
        """One to four updates in a row (sessions long enough that early answers are no longer kept)."""
        key = data.draw(st.sampled_from(sorted(self.open)))
        line = self.open[key][0]
        _, imsi, rg = self.lines[line]
        unit_type = self._unit_type(line)
        for n, used in enumerate(reports):
            number = self.open[key][1] + 1
            ask = more or n < len(reports) - 1
            req = update(
                key,
                number,
                imsi,
                used=min(used, 2) if unit_type == "events" else used,
                rg=rg,
                unit_type=unit_type,
                more=ask,
            )
            answer = self.charge(req)
            self.open[key][1] = number
            self.history.append((req, answer, self.world.now))

    @precondition(lambda self: self.open)
    @rule(data=st.data(), used=st.integers(0, 2500))
    def terminate_session(self, data: st.DataObject, used: int) -> None:
        key = data.draw(st.sampled_from(sorted(self.open)))
        line, number = self.open.pop(key)
        _, imsi, rg = self.lines[line]
        req = terminate(key, number + 1, imsi, used=used, rg=rg, unit_type=self._unit_type(line))
        answer = self.charge(req)
        self.history.append((req, answer, self.world.now))

    # -- one-shot events and money ----------------------------------------------------------------------------------
    @rule(
        line=st.integers(0, len(LINES) - 1),
        action=st.sampled_from([DIRECT_DEBITING, DIRECT_DEBITING, REFUND_ACCOUNT, CHECK_BALANCE, PRICE_ENQUIRY]),
        count=st.integers(1, 30),
        keyed=st.booleans(),
    )
    def one_shot_event(self, line: int, action: str, count: int, keyed: bool) -> None:
        _, imsi, _ = self.lines[line]
        self.events_made += 1
        key = f"e{self.events_made}"
        req = event(key, imsi, action, rg=40, amount={"events": count}, idempotency_key=f"k-{key}" if keyed else None)
        line_id = self.lines[line][0]
        with self.world.store.read() as txn:
            account = txn.get_account(_line(txn, line_id).account)
            assert account is not None
            funds = account.balance - account.reserved + account.credit_limit
        answer = self.charge(req)
        if action == DIRECT_DEBITING and answer.result == SUCCESS and not answer.duplicate:
            assert answer.cost <= max(funds, 0), (answer, funds)  # a debit never spends money that is not there
        if action in (DIRECT_DEBITING, REFUND_ACCOUNT):
            self.history.append((req, answer, self.world.now))

    @rule(line=st.integers(0, len(LINES) - 1), amount=st.integers(1, 3_000), days=st.integers(0, 40))
    def grant_bucket(self, line: int, amount: int, days: int) -> None:
        w = self.world
        line_id, _, rg = self.lines[line]
        unit_type = "events" if rg == 40 else "bytes"
        w.admin(
            provisioning.grant_bucket,
            line_id,
            name="goodwill",
            unit=unit_type,
            amount=amount,
            valid_to=w.now + days * 86_400 + 1,
            actor="prop",
            reason="goodwill",
            rating_groups=[rg],
        )

    @rule(line=st.sampled_from([0, 1]), plan=st.sampled_from(["pre", "payg", "promo"]))
    def change_plan(self, line: int, plan: str) -> None:
        line_id, _, _ = self.lines[line]
        self.world.admin(provisioning.assign_plan, plan, actor="prop", reason="plan change", line_ref=f"#{line_id}")

    @rule()
    def terminate_line(self) -> None:
        line_id, _, _ = self.lines[LAST_IOT_LINE]
        with self.world.store.read() as txn:
            if _line(txn, line_id).state == "terminated":
                return
        self.world.admin(provisioning.set_state, f"#{line_id}", "terminated", actor="prop", reason="churn")

    @rule()
    def sweep(self) -> None:
        """What the service's sweeper does: renew ended periods of idle owners, reap silent sessions."""
        w = self.world
        service = ChargingService(w.store, w.engine.catalogue, clock=lambda: w.now)
        service.engine = w.engine
        while True:
            expired, due = service.sweep_slice_once(w.now)
            for owner in due:
                w.write(functools.partial(service._upkeep, owner=owner))
            for key in expired:
                w.write(functools.partial(w.engine.reap, session_key=key, now=w.now))
                self.open.pop(key, None)
            if service._sweep_from == b"":
                break

    @rule(account=st.sampled_from(sorted(ACCOUNTS)), amount=st.integers(1, 5_000), keyed=st.booleans())
    def topup(self, account: str, amount: int, keyed: bool) -> None:
        self.events_made += 1
        key = f"t{self.events_made}" if keyed else None
        result = self.world.admin(
            provisioning.topup, account, amount, actor="prop", reason="top-up", idempotency_key=key
        )
        if key is not None:
            self.history.append((("topup", account, amount, key), result.value, self.world.now))

    @rule(account=st.sampled_from(sorted(ACCOUNTS)), amount=st.integers(-3_000, 3_000).filter(bool))
    def adjust_wallet(self, account: str, amount: int) -> None:
        self.world.admin(provisioning.adjust, account, amount, actor="prop", reason="correction")

    # -- time, lifecycle, moves, reaper -----------------------------------------------------------------------------
    @rule(step=st.sampled_from([1, 50, 199, 200, 3_599, 86_400, 10 * 86_400, "boundary"]))
    def clock_jump(self, step: int | str) -> None:
        w = self.world
        if step == "boundary":
            # Every account renews on cycle day 1 and every plan here is monthly: land exactly on the next one.
            w.now = period_end("month", w.now, 1, w.engine.catalogue.settings.timezone)
        else:
            w.now += int(step)

    @rule(line=st.integers(0, len(LINES) - 1), state=st.sampled_from(["suspended", "active"]))
    def set_state(self, line: int, state: str) -> None:
        line_id, _, _ = self.lines[line]
        with self.world.store.read() as txn:
            before = _line(txn, line_id).state
            open_sessions = {s.key for s in txn.sessions_of_line(line_id) if not s.closed}
        if before == "terminated":
            return
        result = self.world.admin(provisioning.set_state, f"#{line_id}", state, actor="prop", reason="lifecycle")
        if state == "suspended" and before == "active":
            assert {s.session for s in result.signals if s.kind == "abort"} == open_sessions

    @rule(line=st.sampled_from([i for i, spec in enumerate(LINES) if spec[0] in PREPAID_ACCOUNTS]))
    def move_line(self, line: int) -> None:
        line_id, _, _ = self.lines[line]
        with self.world.store.read() as txn:
            current = _line(txn, line_id).account
        target = PREPAID_ACCOUNTS[1] if current == PREPAID_ACCOUNTS[0] else PREPAID_ACCOUNTS[0]
        result = self.world.admin(provisioning.move_line, f"#{line_id}", target, actor="prop", reason="move")
        for signal in result.signals:
            self.open.pop(signal.session, None)  # released and aborted

    @rule()
    def reap(self) -> None:
        w = self.world
        with w.store.read() as txn:
            keys = [s.key for s in txn.sessions() if s.expires <= w.now]
        for key in keys:
            w.write(functools.partial(w.engine.reap, session_key=key, now=w.now))
            self.open.pop(key, None)

    # -- exactly once -----------------------------------------------------------------------------------------------
    @precondition(lambda self: self.history)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        w = self.world
        recent = data.draw(st.booleans())  # half the time one of the latest requests, the likely retransmission
        request, first, sent_at = data.draw(st.sampled_from(self.history[-6:] if recent else self.history))
        window = w.engine.config.idempotency_window
        before = self.snap()
        if isinstance(request, tuple):  # an admin top-up with an idempotency key
            _, account, amount, key = request
            if w.now >= sent_at + window:
                return  # the key has expired: a new top-up by design
            topup_again = w.admin(
                provisioning.topup, account, amount, actor="prop", reason="top-up", idempotency_key=key
            )
            assert topup_again.duplicate and topup_again.value == first
        elif request.kind == "event":
            if w.now >= sent_at + window:
                return
            again = w.charge(request)
            assert again.duplicate and again.pack() == first.pack()
        else:
            session = w.session(request.session)
            if session is None:
                return  # forgotten after its replay window: out of scope
            kept = session.answer_for(request.number)
            if kept is not None:
                again = w.charge(request)
                assert again.duplicate and again.pack() == first.pack()
            elif request.kind == "initial":
                return  # an initial request re-using an open session id restarts it (design question, reported)
            else:
                try:
                    again = w.charge(request)
                except RequestError:
                    pass  # refused: the answer is gone and applying it again would charge twice
                else:
                    assert again.result != SUCCESS, again
        assert self.snap() == before, "a replayed request changed the store"

    @precondition(lambda self: any(n >= 3 for _, n in self.open.values()))
    @rule(data=st.data())
    def retransmit_old_update(self, data: st.DataObject) -> None:
        """A retransmission older than the answers the session keeps must change nothing."""
        key = data.draw(st.sampled_from(sorted(k for k, (_, n) in self.open.items() if n >= 3)))
        old = next(
            r for r, _, _ in self.history if isinstance(r, ChargingRequest) and r.session == key and r.number == 1
        )
        before = self.snap()
        try:
            again = self.world.charge(old)
        except RequestError:
            pass
        else:
            assert again.duplicate or again.result != SUCCESS, again
        assert self.snap() == before, "an old retransmission was applied again"

    # -- after every step -------------------------------------------------------------------------------------------
    @invariant()
    def invariants_hold(self) -> None:
        if not self.lines:
            return
        with self.world.store.read() as txn:
            check_invariants(txn)


ChargingCore.TestCase.settings = settings(
    max_examples=2000 if LONG else 200,
    stateful_step_count=80 if LONG else 50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestChargingCore = ChargingCore.TestCase
