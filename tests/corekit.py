"""Shared helpers for the charging-core tests: a small catalogue with round numbers, a store-on-disk world
with an injected clock, request builders and the invariant checker (docs/architecture.md, the invariants).

The catalogue (tests/fixtures/core.toml) is deliberately small (quanta of 1000 bytes, prices of a few
micro-units) so every expected number in a test can be worked out by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from chf.core import provisioning
from chf.core.catalogue import Catalogue
from chf.core.catalogue_loader import parse_catalogue
from chf.core.context import account_owner, line_owner
from chf.core.engine import Engine, EngineConfig
from chf.core.model import (
    EVENT,
    INITIAL,
    TERMINATE,
    UPDATE,
    ChargingAnswer,
    ChargingRequest,
    UnitRequest,
    UsageReport,
)
from store.lmdbstore import Store, Txn
from store.schema import SRC_LINE
from tests.support import fixture_text

T = TypeVar("T")

# Wednesday 4 March 2026, 12:00 UTC: a weekday noon, far from any period boundary.
T0 = int(datetime(2026, 3, 4, 12, 0, tzinfo=UTC).timestamp())

TENANT = "t1"

CATALOGUE_TOML = fixture_text("core.toml")


def test_catalogue(text: str = CATALOGUE_TOML) -> Catalogue:
    return parse_catalogue(text, "corekit-catalogue.toml")


test_catalogue.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite its name


class World:
    """A store (on disk, or on the Redis cluster with `opener`), an engine and a clock that only moves when the
    test moves it."""

    def __init__(
        self,
        path: Path,
        catalogue: Catalogue | None = None,
        now: int = T0,
        config: EngineConfig | None = None,
        durability: str = "fsync",
        opener: Callable[[], Any] | None = None,
    ) -> None:
        self.path = path
        self.durability = durability
        self.opener = opener or (lambda: Store(path, durability=durability))
        self.store = self.opener()
        self.engine = Engine(catalogue or test_catalogue(), config or EngineConfig())
        self.now = now
        self._imsi = 208010000000000

    def reopen(self) -> None:
        self.store.close()
        self.store = self.opener()

    def close(self) -> None:
        self.store.close()

    def write(self, fn: Callable[[Txn], T]) -> T:
        return self.store.write(fn)

    def charge(self, req: ChargingRequest) -> ChargingAnswer:
        return self.store.write(lambda txn: self.engine.charge(txn, req, self.now))

    def admin(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a chf.core.provisioning function that takes (txn, engine, ..., now=...)."""
        return self.store.write(lambda txn: fn(txn, self.engine, *args, now=self.now, **kwargs))

    # -- provisioning shortcuts -----------------------------------------------------------------------------------
    def tenant(self, tenant_id: str = TENANT) -> None:
        self.store.write(lambda txn: provisioning.create_tenant(txn, tenant_id, tenant_id, "EUR", self.now))

    def account(self, account_id: str, payment: str = "prepaid", **kwargs: Any) -> dict[str, Any]:
        result = self.admin(
            provisioning.create_account, account_id=account_id, tenant=TENANT, payment=payment, **kwargs
        )
        return result.value

    def line(self, account_id: str, plan: str | None = None, state: str = "active") -> tuple[int, str]:
        """Add a line; returns (line id, IMSI)."""
        self._imsi += 1
        imsi = str(self._imsi)
        result = self.admin(provisioning.add_line, account=account_id, imsi=imsi, plan=plan, state=state)
        return result.value["id"], imsi

    # -- reading --------------------------------------------------------------------------------------------------
    def acct(self, account_id: str) -> Any:
        with self.store.read() as txn:
            return txn.get_account(account_id)

    def line_buckets(self, line_id: int) -> list[Any]:
        with self.store.read() as txn:
            bs = txn.get_line_balances(line_id)
            return list(bs.buckets) if bs is not None else []

    def account_buckets(self, account_id: str) -> list[Any]:
        with self.store.read() as txn:
            bs = txn.get_account_balances(account_id)
            return list(bs.buckets) if bs is not None else []

    def session(self, key: str) -> Any:
        with self.store.read() as txn:
            return txn.get_session(key)

    def events(self, after: int = 0) -> list[dict[str, Any]]:
        with self.store.read() as txn:
            return list(txn.events(after))

    def last_seq(self) -> int:
        with self.store.read() as txn:
            return txn.last_event_seq()


# -- request builders -------------------------------------------------------------------------------------------
def unit(
    rg: int = 10, requested: dict[str, int] | None = None, used: dict[str, int] | None = None, final: bool = False
) -> UnitRequest:
    reports = [UsageReport(used, "final" if final else None)] if used else []
    return UnitRequest(rating_group=rg, requested=requested, used=reports, reason="final" if final else None)


def initial(
    session: str, imsi: str, rg: int = 10, requested: dict[str, int] | None = None, **kw: Any
) -> ChargingRequest:
    return ChargingRequest(INITIAL, session, 0, [("imsi", imsi)], [unit(rg, requested or {})], **kw)


def update(
    session: str,
    number: int,
    imsi: str,
    used: int,
    rg: int = 10,
    unit_type: str = "bytes",
    requested: dict[str, int] | None = None,
    more: bool = True,
) -> ChargingRequest:
    req_units = (requested if requested is not None else {}) if more else None
    return ChargingRequest(
        UPDATE, session, number, [("imsi", imsi)], [unit(rg, req_units, {unit_type: used} if used else None)]
    )


def terminate(
    session: str, number: int, imsi: str, used: int, rg: int = 10, unit_type: str = "bytes"
) -> ChargingRequest:
    units = [unit(rg, None, {unit_type: used} if used else None)] if used else []
    return ChargingRequest(TERMINATE, session, number, [("imsi", imsi)], units)


def event(
    key: str, imsi: str, action: str, rg: int = 40, amount: dict[str, int] | None = None, **kw: Any
) -> ChargingRequest:
    units = [UnitRequest(rating_group=rg, requested=amount or {"events": 1})]
    return ChargingRequest(EVENT, key, 0, [("imsi", imsi)], units, action=action, **kw)


# -- invariants -----------------------------------------------------------------------------------------------------
def balances_now(txn: Txn) -> dict[str, int]:
    """Every balance by the name events use for it: wallets and buckets, with their current value."""
    out: dict[str, int] = {}
    for account in txn.accounts():
        out[f"{account_owner(account.id)}:wallet"] = account.balance
        bs = txn.get_account_balances(account.id)
        if bs is not None:
            for b in bs.buckets:
                out[f"{account_owner(account.id)}:bucket:{b.id}"] = b.remaining
    for sub in txn.subscribers():
        bs = txn.get_line_balances(sub.id)
        if bs is not None:
            for b in bs.buckets:
                out[f"{line_owner(sub.id)}:bucket:{b.id}"] = b.remaining
    return out


def snapshot(txn: Txn) -> dict[str, Any]:
    """Everything a replayed request must leave untouched: balances, reservations and the event count."""
    reserved: dict[str, int] = {}
    for account in txn.accounts():
        reserved[account.id] = account.reserved
    return {"balances": balances_now(txn), "reserved": reserved, "events": txn.last_event_seq()}


def check_invariants(txn: Txn) -> dict[str, Any]:
    """Assert conservation, no overspend and traceability on one committed state (docs/architecture.md, the
    invariants); returns a few totals for the caller.

    - events: sequence numbers 1..N without gaps, ids unique;
    - conservation: for every balance the deltas of all event impacts sum to its current value (a balance that
      is gone, like an expired bucket, must sum to 0), and each impact's `after` is the running sum;
    - reservations: every bucket has 0 <= reserved <= remaining (a pool that shrank: 0 <= reserved); each
      bucket's `reserved` and each account's reserved money equal what the open sessions hold against them
      (nothing leaks, nothing is double-held).
    """
    running, count = _check_events(txn)
    current = _check_conservation(txn, running)
    _check_reservations(txn)
    return {"events": count, "balances": current}


def event_partitions(txn: Any) -> int:
    """How many event sequences a store keeps: 1 (LMDB: 1, 2, 3...), or a Redis store's partitions, each with its
    own counter c (sequence number c * partitions + partition)."""
    store = getattr(txn, "_store", None)
    return int(getattr(store, "partitions", 1)) if hasattr(store, "tags") else 1


def _check_events(txn: Txn) -> tuple[dict[str, int], int]:
    """Events are gap-free (per partition of a Redis store) and unique; each impact's `after` is the running sum.
    Returns the sums and the count."""
    running: dict[str, int] = {}
    ids: set[str] = set()
    parts = event_partitions(txn)
    counters: dict[int, int] = {}
    expected_seq = 0
    last = 0
    for ev in txn.events():
        expected_seq += 1
        p = ev["seq"] % parts
        counters[p] = counters.get(p, 0) + 1
        expect = counters[p] * parts + p
        assert ev["seq"] == expect, f"event sequence gap: expected {expect}, found {ev['seq']}"
        last = max(last, ev["seq"])
        assert ev["id"] not in ids, f"duplicate event id {ev['id']}"
        ids.add(ev["id"])
        for impact in ev["impacts"]:
            assert isinstance(impact["delta"], int) and isinstance(impact["after"], int), impact
            value = running.get(impact["balance"], 0) + impact["delta"]
            running[impact["balance"]] = value
            assert impact["after"] == value, f"event {ev['seq']} {ev['kind']}: after {impact['after']} != {value}"
    assert txn.last_event_seq() == last, "event counter and spool disagree"
    return running, expected_seq


def _check_conservation(txn: Txn, running: dict[str, int]) -> dict[str, int]:
    """Every balance is what its events sum to; a balance that is gone summed to 0. Returns the balances."""
    current = balances_now(txn)
    for name, value in current.items():
        assert isinstance(value, int), f"{name} is not an int: {value!r}"
        assert running.get(name, 0) == value, f"{name}: events sum to {running.get(name, 0)}, balance is {value}"
    for name, value in running.items():
        if name not in current:
            assert value == 0, f"{name} is gone but its events sum to {value}"
    return current


def _check_reservations(txn: Txn) -> None:
    """What buckets and accounts hold reserved is exactly what the open sessions hold against them."""
    held_bucket: dict[tuple[str, int], int] = {}
    held_money: dict[str, int] = {}
    for session in txn.sessions():
        if session.closed:
            assert not session.reservations, f"closed session {session.key} still holds reservations"
            continue
        for r in session.reservations.values():
            assert r.granted > 0 and r.money >= 0, f"session {session.key}: reservation {r.pack()}"
            assert sum(p[2] for p in r.portions) <= r.granted, f"session {session.key}: portions exceed the grant"
            payer = r.payer or session.account  # split billing: the payer's wallet and buckets hold it
            held_money[payer] = held_money.get(payer, 0) + r.money
            for src, bucket_id, amount in r.portions:
                assert amount > 0
                owner = line_owner(session.subscriber) if src == SRC_LINE else account_owner(payer)
                held_bucket[(owner, bucket_id)] = held_bucket.get((owner, bucket_id), 0) + amount
    for account in txn.accounts():
        assert account.reserved == held_money.get(account.id, 0), (
            f"account {account.id}: reserved {account.reserved}, sessions hold {held_money.get(account.id, 0)}"
        )
    owners: list[tuple[str, Any]] = [(account_owner(a.id), txn.get_account_balances(a.id)) for a in txn.accounts()]
    owners += [(line_owner(s.id), txn.get_line_balances(s.id)) for s in txn.subscribers()]
    for owner, bs in owners:
        if bs is None:
            continue
        for b in bs.buckets:
            # A flexible pool that shrank (a line left it) keeps what was used and granted of it: its remaining
            # (size - used) may then fall below what open grants hold, even below 0 (chf.core.renewals.resize_pool).
            assert b.reserved >= 0 and (b.reserved <= b.remaining or b.kind == "pool"), (
                f"{owner} bucket {b.id}: reserved {b.reserved} of {b.remaining}"
            )
            held = held_bucket.get((owner, b.id), 0)
            assert b.reserved == held, f"{owner} bucket {b.id}: reserved {b.reserved}, sessions hold {held}"


def fill_every_kind(world: World) -> dict[str, str]:
    """Records of every kind a store keeps (tests of backups and store copies): tenant, accounts with and without
    an account balance set (family sharing, an IoT pool), lines with and without MSISDN / ICCID, an open and a
    closed session, an idempotency record and a refundable debit (a one-shot DIRECT_DEBITING), an exporter cursor
    and the events of all of it. Returns the IMSIs by role."""
    from chf.core.model import DIRECT_DEBITING

    world.tenant()
    world.account("a", balance=1_000_000)
    world.account("fam", payment="postpaid", credit_limit=1_000_000, plan="fam")
    world.account("iot", payment="postpaid", credit_limit=1_000_000, plan="iotstatic")
    _, payg = world.line("a", plan="payg")
    _, pre = world.line("a", plan="pre")
    world.admin(
        provisioning.add_line, account="a", imsi="208019900000001", msisdn="33799000001", iccid="8933999000000000001"
    )
    _, fam = world.line("fam")
    _, iot = world.line("iot")
    answers = [
        world.charge(initial("s-open", pre)),
        world.charge(update("s-open", 1, pre, 500)),
        world.charge(initial("s-closed", pre)),
        world.charge(terminate("s-closed", 1, pre, 700)),
        world.charge(event("d1", payg, DIRECT_DEBITING, amount={"events": 3})),
        world.charge(initial("s-fam", fam)),
        world.charge(initial("s-iot", iot, rg=30)),
    ]
    assert all(a.result == "success" for a in answers), [a.result for a in answers]
    world.write(lambda txn: txn.put_cursor("files", 5))
    # A terminated line whose MSISDN a new line takes over after the quarantine (the released identities).
    world.admin(provisioning.add_line, account="a", imsi="208019900000002", msisdn="33799000002")
    world.admin(provisioning.set_state, "208019900000002", "terminated", actor="test", reason="ported out")
    world.now += 91 * 86_400
    world.admin(provisioning.add_line, account="a", imsi="208019900000003", msisdn="33799000002")
    return {"payg": payg, "pre": pre, "fam": fam, "iot": iot}
