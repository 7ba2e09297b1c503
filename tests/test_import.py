"""Bulk provisioning (`chf.core.provisioning.add_lines`, behind `chf subscriber import`) writes exactly what `add_line`
writes row by row: the same lines, indexes, balance sets, accounts and audit events, byte for byte.

add_lines renders most lines from templates traced from the engine (issue #2: 1,000,000 lines in under a
minute); these tests hold it to the engine's own output on a real LMDB store, across every kind of plan of the
test catalogue: fees paid and not paid (the wallet runs dry mid-import), lines on their account's shared
plan, IoT pools that grow with each activated line, provisioned lines, and refused rows in between.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Any

import pytest

from chf.core import provisioning
from chf.core.model import RequestError
from store.lmdbstore import Txn
from store.schema import unpack
from tests.corekit import World, check_invariants

ACCOUNTS: list[tuple[str, dict[str, Any]]] = [
    ("rich", {"payment": "prepaid", "balance": 10**9}),
    ("poor", {"payment": "prepaid", "balance": 2_500}),  # two fees of 1000, then renewals fail
    ("post", {"payment": "postpaid", "credit_limit": 3_000}),  # beyond the limit: the engine decides
    ("hyb", {"payment": "hybrid", "balance": 10_000, "credit_limit": 1_000}),
    ("fam", {"payment": "postpaid", "plan": "fam", "credit_limit": 10**6}),  # lines on the shared plan pay no fee
    ("flex", {"payment": "postpaid", "plan": "iotflex"}),  # the pool grows with each active line
    ("static", {"payment": "postpaid", "plan": "iotstatic"}),
]
PLANS: dict[str, list[str | None]] = {
    "rich": [None, "pre", "promo", "payg", "redir"],
    "poor": ["pre", "promo", None],
    "post": ["post", None],
    "hyb": ["hyb", None],
    "fam": ["fam", None, "post"],
    "flex": [None, "post"],
    "static": [None],
}


def planted_rows() -> list[dict[str, Any]]:
    """Every account x plan x state x (with or without MSISDN), twice over, then refused rows among them."""
    rows: list[dict[str, Any]] = []
    serial = itertools.count(1)
    for _ in range(2):
        for account, plans in PLANS.items():
            for plan, state, with_msisdn in itertools.product(plans, ("active", "provisioned"), (True, False)):
                n = next(serial)
                row = {"account": account, "imsi": f"00101{n:010d}", "plan": plan, "state": state}
                if with_msisdn:
                    row["msisdn"] = f"99{n:010d}"
                    row["iccid"] = f"8900101{n:012d}"
                rows.append(row)
    bad = [
        {"account": "rich", "imsi": "not-an-imsi"},
        {"account": "rich", "imsi": rows[0]["imsi"]},  # duplicate of an earlier row
        {"account": "rich", "imsi": "001019999999901", "msisdn": rows[0]["msisdn"]},
        {"account": "rich", "imsi": "001019999999902", "plan": "post"},  # a postpaid plan on a prepaid account
        {"account": "rich", "imsi": "001019999999903", "plan": "no-such-plan"},
        {"account": "nobody", "imsi": "001019999999904"},
        {"account": "rich", "imsi": "001019999999905", "state": "suspended"},
    ]
    for i, row in enumerate(bad):
        rows.insert(5 + i * 11, row)
    return rows


def provision(world: World) -> None:
    world.tenant()
    for account_id, kwargs in ACCOUNTS:
        world.account(account_id, **kwargs)


# Every sub-database but the events (compared decoded) and meta (its event counter only).
SUB_DATABASES = (
    b"tenants",
    b"accounts",
    b"subscribers",
    b"idx_imsi",
    b"idx_msisdn",
    b"idx_iccid",
    b"account_lines",
    b"account_active",
    b"balances",
    b"sessions",
    b"idem",
)


def dump(world: World) -> dict[str, Any]:
    """Every record of the store; events decoded, their ids without the store's own random prefix."""
    env = world.store.env
    out: dict[str, Any] = {}
    with env.begin() as txn:
        for name in SUB_DATABASES:
            out[name.decode()] = list(txn.cursor(db=env.open_db(name, txn=txn)))
        events = []
        for key, raw in txn.cursor(db=env.open_db(b"events", txn=txn)):
            event = unpack(raw)
            assert event["id"] == f"{world.store.store_id}-{event['seq']}"
            event["id"] = event["seq"]
            events.append((key, event))
        out["events"] = events
        out["event_seq"] = txn.get(b"event_seq", db=env.open_db(b"meta", txn=txn))
    return out


def outcome(result: Any) -> Any:
    if isinstance(result, RequestError):
        return (type(result).__name__, result.field, result.message)
    return result


def add_one(txn: Txn, world: World, row: dict[str, Any]) -> int:
    """`add_line` for one import row (a row's state None means the default)."""
    fields = {k: v for k, v in row.items() if k != "state" or v is not None}
    return provisioning.add_line(txn, world.engine, now=world.now, actor="cli:test", **fields).value["id"]


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_bulk_import_writes_exactly_what_add_line_writes(tmp_path: Path, batch: int) -> None:
    rows = planted_rows()
    bulk, single = World(tmp_path / "bulk"), World(tmp_path / "single")
    try:
        provision(bulk)
        provision(single)
        templates = provisioning.LineTemplates()
        got: list[Any] = []
        for start in range(0, len(rows), batch):
            chunk = [dict(r) for r in rows[start : start + batch]]
            add_chunk = functools.partial(
                provisioning.add_lines,
                engine=bulk.engine,
                rows=chunk,
                now=bulk.now,
                actor="cli:test",
                templates=templates,
            )
            got += bulk.store.write(add_chunk)
        expected = single.store.run_batch([functools.partial(add_one, world=single, row=row) for row in rows])
        assert [outcome(r) for r in got] == [outcome(r) for r in expected]
        assert sum(isinstance(r, RequestError) for r in got) == 7

        # Most lines came from templates; the unpaid fees went through the engine.
        assert templates.rendered > len(rows) // 2
        lines = len(rows) - 7
        assert templates.rendered < lines
        mine, theirs = dump(bulk), dump(single)
        for name in theirs:
            assert mine[name] == theirs[name], name
        kinds = {e["kind"] for _, e in theirs["events"]}
        assert {"renewal", "renewal_failed", "bonus", "pool_resize", "plan_change", "lifecycle"} <= kinds
        with bulk.store.read() as txn:
            check_invariants(txn)
    finally:
        bulk.close()
        single.close()


def test_a_pool_is_derived_after_each_templated_line(tmp_path: Path) -> None:
    """A line does not write its account's IoT pool: the pool is derived from the account's active lines after
    each row (chf.core.renewals.resize_pool), so active lines of a flexible pool render from a template too."""
    world = World(tmp_path / "w")
    try:
        provision(world)
        templates = provisioning.LineTemplates()
        serial = itertools.count()

        def templated(state: str, account: str = "flex", plan: str | None = None) -> bool:
            before = templates.rendered
            row = {"account": account, "imsi": f"0010100000001{next(serial):02d}", "state": state, "plan": plan}
            world.store.write(
                lambda txn: provisioning.add_lines(txn, world.engine, [row], now=world.now, templates=templates)
            )
            return templates.rendered > before

        assert templated("active")
        assert templated("provisioned")
        # A fee, a wallet balance after it, buckets, a bonus: all rendered from the template.
        assert templated("active", "rich", "promo") and templated("active", "rich", "promo")
        pool = [b for b in world.account_buckets("flex") if b.kind == "pool"]
        assert [b.remaining for b in pool] == [1000]  # one active line (the provisioned one does not count)
        assert templated("active")
        pool = [b for b in world.account_buckets("flex") if b.kind == "pool"]
        assert [b.remaining for b in pool] == [2000] and world.acct("flex").active_lines == 2
    finally:
        world.close()


def test_renewals_due_when_the_import_begins_come_first_in_one_gap_free_sequence(tmp_path: Path) -> None:
    """The account's period ended before the import: its renewal events are written when the account is first
    read, before the lines' events, and the sequence stays gap-free with unique ids."""
    world = World(tmp_path / "w")
    try:
        provision(world)
        world.line("fam")  # a line in service: the account's plan renews (README, "Fees and the line lifecycle")
        world.now += 40 * 86400  # past the end of the accounts' first monthly period
        rows = [{"account": "fam", "imsi": f"0010100000002{i:02d}", "plan": "fam"} for i in range(5)]
        results = world.store.write(lambda txn: provisioning.add_lines(txn, world.engine, rows, now=world.now))
        assert all(isinstance(r, int) for r in results)
        events = world.events()
        renewals = [e["seq"] for e in events if e["kind"] == "renewal" and e["subscriber"] is None]
        created = [e["seq"] for e in events if e["kind"] == "lifecycle" and e["time"] == world.now]
        assert renewals and created and max(renewals) < min(created)
        with world.store.read() as txn:
            check_invariants(txn)
    finally:
        world.close()
