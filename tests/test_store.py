"""The LMDB store and its group-commit writer, on disk; the record layouts and their encoding."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store import codegen, interface, schema
from store.interface import StoreBusy, StoreError
from store.lmdbstore import Store, Txn
from store.schema import Account, BalanceSet, Bucket, Layout, Reservation, SchemaError, Session, Subscriber, Tenant


def _account(txn: Txn, account_id: str, balance: int = 0) -> str:
    txn.put_account(Account(account_id, "t", "prepaid", "EUR", balance=balance))
    txn.append_event({"kind": "topup", "account": account_id, "amount": balance})
    return account_id


def test_write_is_durable_across_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.write(lambda txn: _account(txn, "a1", 5))
    store_id = store.store_id
    store.close()
    again = Store(tmp_path / "db")
    with again.read() as txn:
        acc = txn.get_account("a1")
        assert acc is not None and acc.balance == 5
        events = list(txn.events())
    assert again.store_id == store_id
    assert [e["seq"] for e in events] == [1]
    assert events[0]["id"] == f"{store_id}-1"
    again.close()


def test_failing_operation_leaves_no_trace_and_no_sequence_gap(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")

    def fails(txn: Txn) -> None:
        _account(txn, "ghost", 1)
        raise ValueError("refused after writing")

    results = store.run_batch([lambda t: _account(t, "a1"), fails, lambda t: _account(t, "a2")])
    assert results[0] == "a1" and results[2] == "a2"
    assert isinstance(results[1], ValueError)
    with store.read() as txn:
        assert txn.get_account("ghost") is None
        assert [e["account"] for e in txn.events()] == ["a1", "a2"]
        assert [e["seq"] for e in txn.events()] == [1, 2]
        assert txn.last_event_seq() == 2
    store.close()


def test_schema_version_mismatch_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    with store.env.begin(write=True) as txn:
        txn.put(b"schema", b"99", db=store._db[b"meta"])
    store.close()
    with pytest.raises(SchemaError, match="schema 99"):
        Store(tmp_path / "db")


def test_durability_setting_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        Store(tmp_path / "db", durability="maybe")


@pytest.mark.parametrize("writer", ["thread", "inline"])
async def test_group_commit_batches_and_answers_only_after_commit(tmp_path: Path, writer: str) -> None:
    store = Store(tmp_path / "db", writer=writer)
    commits: list[int] = []
    store.on_commit.append(lambda n, _s: commits.append(n))
    store.start(asyncio.get_running_loop())
    seen_at_answer: list[int] = []

    async def one(i: int) -> None:
        await store.submit(lambda txn: _account(txn, f"a{i}", i))
        # The future resolves on the loop after the commit that holds the operation: its batch is counted.
        seen_at_answer.append(sum(commits))
        with store.read() as txn:
            assert txn.get_account(f"a{i}") is not None

    await asyncio.gather(*(one(i) for i in range(300)))
    await store.stop()
    assert sum(commits) == 300
    assert len(commits) < 300, "requests waiting together must share commits"
    assert max(commits) > 1
    assert all(n >= 1 for n in seen_at_answer)
    with store.read() as txn:
        seqs = [e["seq"] for e in txn.events()]
    assert seqs == list(range(1, 301))
    store.close()


@pytest.mark.parametrize("writer", ["thread", "inline"])
async def test_os_durability_flushes_from_its_own_thread(tmp_path: Path, writer: str) -> None:
    """Durability "os" flushes every sync_interval from a thread of its own, not after a commit on the writer
    (or the event loop); stop() ends that thread and close() flushes once more."""
    store = Store(tmp_path / "db", durability="os", sync_interval=0.05, writer=writer)
    store.start(asyncio.get_running_loop())
    syncer = store._syncer
    assert syncer is not None and syncer.is_alive()
    before = store._last_sync
    await store.submit(lambda txn: _account(txn, "a1", 1))
    for _ in range(100):
        if store._last_sync > before:
            break
        await asyncio.sleep(0.01)
    assert store._last_sync > before, "the sync thread never flushed"
    await store.stop()
    assert store._syncer is None and not syncer.is_alive()
    store.close()
    again = Store(tmp_path / "db", durability="os")
    with again.read() as txn:
        assert txn.get_account("a1") is not None
    again.close()


async def test_fsync_durability_has_no_sync_thread(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.start(asyncio.get_running_loop())
    assert store._syncer is None
    await store.stop()
    store.close()


async def test_operation_error_reaches_only_its_caller(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.start(asyncio.get_running_loop())

    def bad(txn: Txn) -> None:
        txn.put_tenant(Tenant("t1", "x", "EUR", 0))
        raise KeyError("nope")

    ok1 = store.submit(lambda t: _account(t, "a1"))
    failing = store.submit(bad)
    ok2 = store.submit(lambda t: _account(t, "a2"))
    assert await ok1 == "a1"
    with pytest.raises(KeyError):
        await failing
    assert await ok2 == "a2"
    await store.stop()
    with store.read() as txn:
        assert txn.get_tenant("t1") is None
    store.close()


async def test_full_queue_answers_busy(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", max_queue=5)
    store.start(asyncio.get_running_loop())
    # Hold the writer so the queue fills: the first operation blocks until released.
    gate = threading.Event()

    def slow(txn: Txn) -> str:
        gate.wait(5)
        return "slow"

    first = store.submit(slow)
    await asyncio.sleep(0.05)  # the writer has taken `slow` and waits on the gate
    queued = [store.submit(lambda t, i=i: _account(t, f"q{i}")) for i in range(5)]
    with pytest.raises(StoreBusy):
        store.submit(lambda t: _account(t, "one-too-many"))
    gate.set()
    assert await first == "slow"
    assert [await q for q in queued] == [f"q{i}" for i in range(5)]
    await store.stop()
    with store.read() as txn:
        assert txn.get_account("one-too-many") is None
    store.close()


@pytest.mark.parametrize("writer", ["thread", "inline"])
async def test_unnested_operation_failing_after_writing_fails_alone(tmp_path: Path, writer: str) -> None:
    """An operation submitted without its own nested transaction that breaks after writing must not take the
    rest of its batch down, nor leave a partial write: the batch is redone with every operation isolated."""
    store = Store(tmp_path / "db", writer=writer)
    store.start(asyncio.get_running_loop())

    def breaks_late(txn: Txn) -> None:
        _account(txn, "half-written", 1)
        raise RuntimeError("bug after the first write")

    def refuses_early(txn: Txn) -> None:
        raise ValueError("bad input, nothing written")

    before = store.submit(lambda t: _account(t, "a1"), nested=False)
    broken = store.submit(breaks_late, nested=False)
    refused = store.submit(refuses_early, nested=False)
    after = store.submit(lambda t: _account(t, "a2"), nested=False)
    assert await before == "a1"
    with pytest.raises(RuntimeError):
        await broken
    with pytest.raises(ValueError):
        await refused
    assert await after == "a2"
    await store.stop()
    with store.read() as txn:
        assert txn.get_account("half-written") is None
        assert [e["account"] for e in txn.events()] == ["a1", "a2"]
        assert [e["seq"] for e in txn.events()] == [1, 2]
    store.close()


# Records are encoded with msgspec (store.schema.pack) and were encoded with the msgpack package before; import
# templates are still cut from msgpack's output. Both must give the same bytes, and read each other's.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=300)
    | st.binary(max_size=300)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.text(max_size=20) | st.integers(min_value=-(2**31), max_value=2**31), inner, max_size=6)
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(_values)
def test_record_encoding_matches_the_msgpack_package(value: object) -> None:
    ours = schema.pack(value)
    theirs = msgpack.packb(value, use_bin_type=True)
    assert ours == theirs
    assert schema.unpack(theirs) == msgpack.unpackb(ours, raw=False, strict_map_key=False) == value


def test_bad_record_bytes_raise_value_error() -> None:
    for data in (b"\xc1", b"\x92\x01", schema.pack([1]) + b"\x01"):
        with pytest.raises(ValueError):
            schema.unpack(data)


# -- record layouts ------------------------------------------------------------------------------------------------
def _records() -> dict[str, Any]:
    """One record of each kind stored on its own, with every field set (nested records included)."""
    buckets = [
        Bucket(i, f"data-{i}", "plan", "bytes", None if i else [10, 20], 10 + i, 10**10, 9 * 10**9 - i, 10**6, T, T2)
        for i in range(3)
    ]
    answers = [
        [
            n,
            schema.pack(
                [
                    2001,
                    "sess",
                    n,
                    [[10, 2001, None, "bytes", 10**6, 3600] + [None] * 4 + [0, 0]],
                    "EUR",
                    1,
                    0,
                    True,
                    None,
                ]
            ),
        ]
        for n in (5, 6)
    ]
    return {
        "tenant": Tenant("mvno1", "MVNO One", "EUR", T),
        "account": Account("acct-000123", "mvno1", "prepaid", "EUR", 12_500_000, 250_000, 0, 1, None, "bench", T, 42),
        "subscriber": Subscriber(
            123456,
            "mvno1",
            "acct-000123",
            "208010000123456",
            "33612345678",
            "8933150000001234567",
            None,
            "active",
            T,
            "bench",
            T,
            [["provisioned", "active", T, "cli:x", None]],
        ),
        "balances": BalanceSet("bench", T, T2, 3, buckets, {10: 123_456_789, 20: 5_000}, 4, False),
        "session": Session(
            "pgw1.example;1234;5678",
            123456,
            "acct-000123",
            "gy",
            T,
            T + 100,
            T + 10_000,
            6,
            False,
            {10: Reservation(10, "bytes", 10**6, [[0, 1, 10**6]], 0, "data", "home")},
            answers,
            "20801",
            ["pgw1.example", "example"],
            (1 << 6) - 1,
        ),
    }


T, T2 = 1_700_000_000, 1_702_592_000
# The records of _records() as the hand-written encoders wrote them before the layouts (stores written then are read
# unchanged, and written byte for byte as before).
WRITTEN_BEFORE = {
    "tenant": ("9501a56d766e6f31a84d564e4f204f6e65a3455552ce6553f100"),
    "account": (
        "9d01ab616363742d303030313233a56d766e6f31a770726570616964a3455552ce00bebc20ce0003d0900001c0a562656e63"
        "68ce6553f1002a"
    ),
    "subscriber": (
        "9d01ce0001e240a56d766e6f31ab616363742d303030313233af323038303130303030313233343536ab3333363132333435"
        "363738b338393333313530303030303031323334353637c0a6616374697665ce6553f100a562656e6368ce6553f1009195ab"
        "70726f766973696f6e6564a6616374697665ce6553f100a5636c693a78c0"
    ),
    "balances": (
        "9901a562656e6368ce6553f100ce657b7e0003939b00a6646174612d30a4706c616ea56279746573920a140acf0000000254"
        "0be400cf0000000218711a00ce000f4240ce6553f100ce657b7e009b01a6646174612d31a4706c616ea56279746573c00bcf"
        "00000002540be400cf00000002187119ffce000f4240ce6553f100ce657b7e009b02a6646174612d32a4706c616ea5627974"
        "6573c00ccf00000002540be400cf00000002187119fece000f4240ce6553f100ce657b7e00820ace075bcd1514cd138804c2"
    ),
    "session": (
        "9f01b6706777312e6578616d706c653b313233343b35363738ce0001e240ab616363742d303030313233a26779ce6553f100"
        "ce6553f164ce6554181006c291970aa56279746573ce000f424091930001ce000f424000a464617461a4686f6d65929205c4"
        "2d99cd07d1a47365737305919c0acd07d1c0a56279746573ce000f4240cd0e10c0c0c0c00000a34555520100c3c09206c42d"
        "99cd07d1a47365737306919c0acd07d1c0a56279746573ce000f4240cd0e10c0c0c0c00000a34555520100c3c0a532303830"
        "3192ac706777312e6578616d706c65a76578616d706c653f"
    ),
}


@pytest.mark.parametrize("kind", sorted(WRITTEN_BEFORE))
def test_records_are_stored_as_before_the_layouts(kind: str) -> None:
    record = _records()[kind]
    stored = bytes.fromhex(WRITTEN_BEFORE[kind])
    assert record.encode() == stored
    again = type(record).decode(stored)
    assert again.encode() == stored
    layout = {v.cls: v for v in vars(schema).values() if isinstance(v, Layout)}[type(record)]
    for name in layout.fields:
        if name in layout.nested:
            assert len(getattr(again, name)) == len(getattr(record, name))
        else:
            assert getattr(again, name) == getattr(record, name), name


def test_record_code_follows_the_layouts() -> None:
    """store/schema.pxd and the generated encode/decode of store/schema.py are what store/codegen.py writes
    from the layouts, and every record's __init__ takes the layout's fields in order (decode relies on it).
    After changing a layout: `python -m store.codegen`."""
    assert codegen.stale() == []


def test_record_code_out_of_date_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pxd = tmp_path / "schema.pxd"
    pxd.write_text(codegen.PXD.read_text().replace(", seen", ""))
    monkeypatch.setattr(codegen, "PXD", pxd)
    assert codegen.stale() == ["store/schema.pxd is out of date"]
    source = codegen.SCHEMA.read_text().replace("        seen: int = 1,\n", "")
    assert any("Session.__init__" in p for p in codegen.init_mismatches(source))


def test_sessions_expired_and_balance_sets_are_swept_in_slices(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")

    def setup(txn: Txn) -> None:
        for line in (1, 2, 3):
            txn.put_line_balances(line, BalanceSet("p", 0, 100 * line))
            for n, expires in enumerate((50, 500)):
                session = Session(f"s{line}-{n}", line, "a1", "gy", 0, 0, expires, 0, False, {}, [], None)
                txn.put_session(session)
        txn.put_account_balances("a1", BalanceSet("shared", 0, 1000))

    store.write(setup)
    seen: list[Any] = []
    expired: list[str] = []
    position, slices = b"", 0
    with store.read() as txn:
        while True:
            found = txn.sweep(position, 4, now=100)
            slices += 1
            assert len(found.expired) + len(found.balances) <= 4
            expired += found.expired
            seen += [(owner, bs.period_end) for owner, bs in found.balances]
            position = found.resume
            if not position:
                break
    store.close()
    assert slices == 3  # 10 records, 4 a slice
    assert sorted(expired) == ["s1-0", "s2-0", "s3-0"]
    assert sorted(seen, key=str) == sorted(
        [(("line", 1), 100), (("line", 2), 200), (("line", 3), 300), (("account", "a1"), 1000)], key=str
    )


def test_store_failures_are_store_errors(tmp_path: Path) -> None:
    """LMDB's own errors (here: the map is full) reach callers as StoreError, which they handle without knowing
    the backend; the failed operation wrote nothing."""
    store = Store(tmp_path / "db", map_size=1 << 20)

    def fill(txn: Txn) -> None:
        for i in range(10_000):
            txn.put_tenant(Tenant(f"t{i}", "x" * 200, "EUR", 0))

    with pytest.raises(StoreError):
        store.write(fill)
    with store.read() as txn:
        assert next(txn.tenants(), None) is None
    store.close()


@pytest.mark.parametrize(("protocol", "implementation"), [(interface.Store, Store), (interface.Txn, Txn)])
def test_lmdb_classes_have_everything_the_interface_names(protocol: type, implementation: type) -> None:
    """mypy holds the signatures to the Protocols (store/lmdbstore.py, at its end); this holds the names, in the
    compiled build too, where the classes are extension types."""
    names = {n for n in vars(protocol) if not n.startswith("_")} | set(protocol.__annotations__)
    missing = [n for n in sorted(names) if not hasattr(implementation, n)]
    # Attributes set per instance (store_id, on_commit) are checked on an instance below.
    assert set(missing) <= {"store_id", "on_commit"}, missing


def test_lmdb_store_instance_has_the_interface_attributes(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    assert isinstance(store.store_id, str) and store.store_id
    assert store.on_commit == []
    store.close()


def test_the_active_lines_of_an_account_follow_the_line_records(tmp_path: Path) -> None:
    """`active_line_count` counts the account's active lines from the line records as they are written (a line
    added, its state changed, moved to another account), and a store written before the index existed gets it
    built from its lines when it is opened."""

    def line(line_id: int, account: str, state: str) -> Subscriber:
        return Subscriber(line_id, "t", account, f"00101000000{line_id:04d}", None, None, None, state, 0, None, 0)

    def counts(store: Store) -> tuple[int, int]:
        with store.read() as txn:
            return txn.active_line_count("a"), txn.active_line_count("b")

    store = Store(tmp_path / "db")

    def setup(txn: Txn) -> None:
        txn.put_subscriber(line(1, "a", "active"))
        txn.put_subscriber(line(2, "a", "provisioned"))
        txn.put_new_subscriber(line(3, "a", "active"))
        txn.put_new_subscriber(line(4, "b", "suspended"))

    store.write(setup)
    assert counts(store) == (2, 0)

    def change(line_id: int, **fields: Any) -> None:
        def op(txn: Txn) -> None:
            previous = txn.get_subscriber(line_id)
            assert previous is not None
            sub = Subscriber.decode(previous.encode())
            for name, value in fields.items():
                setattr(sub, name, value)
            txn.put_subscriber(sub, previous)

        store.write(op)

    change(2, state="active")
    assert counts(store) == (3, 0)
    change(1, state="suspended")
    change(1, state="suspended")  # written again unchanged: counted once
    assert counts(store) == (2, 0)
    change(3, account="b")
    change(4, state="active")
    assert counts(store) == (1, 2)
    change(4, state="terminated")
    assert counts(store) == (1, 1)
    store.close()

    env = lmdb.open(str(tmp_path / "db"), max_dbs=32)  # as a store written before the index: without it
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"account_active", txn=txn), delete=True)
    env.close()
    again = Store(tmp_path / "db")
    assert counts(again) == (1, 1)
    again.close()


def test_a_released_identity_leaves_its_index_and_stays_in_history(tmp_path: Path) -> None:
    def line(line_id: int, msisdn: str) -> Subscriber:
        return Subscriber(line_id, "t", "a", f"00101000000000{line_id}", msisdn, None, None, "active", 0, None, 0)

    store = Store(tmp_path / "db")
    store.write(lambda txn: txn.put_subscriber(line(1, "33600000001")))
    store.write(lambda txn: txn.release_identity("msisdn", "33600000001", 1, 100))
    with store.read() as txn:
        assert txn.subscriber_id_by("msisdn", "33600000001") is None
        assert txn.subscriber_id_by("imsi", "001010000000001") == 1  # only the identity released
        assert txn.released_identity("msisdn", "33600000001") == [(1, 100)]
        assert txn.released_identity("msisdn", "3360000000") == [] and txn.released_identity("imsi", "x") == []
    store.write(lambda txn: txn.put_subscriber(line(2, "33600000001")))
    store.write(lambda txn: txn.release_identity("msisdn", "33600000001", 1, 200))  # a late repeat: no change
    store.write(lambda txn: txn.put_new_subscriber(line(3, "33600000003")))
    store.write(lambda txn: txn.release_identity("msisdn", "33600000003", 3, 150))
    with store.read() as txn:
        assert txn.subscriber_id_by("msisdn", "33600000001") == 2
        assert txn.released_identity("msisdn", "33600000001") == [(1, 100)]
        assert txn.released_identity("msisdn", "33600000003") == [(3, 150)]
        sub = txn.get_subscriber(1)
        assert sub is not None and sub.msisdn == "33600000001"  # the record keeps it: history
    store.close()


def test_a_store_written_before_the_released_index_opens(tmp_path: Path) -> None:
    import lmdb

    store = Store(tmp_path / "db")
    store.write(lambda txn: _account(txn, "a1", 5))
    store.close()
    env = lmdb.open(str(tmp_path / "db"), max_dbs=32)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"idx_released", txn=txn), delete=True)
    env.close()
    again = Store(tmp_path / "db")
    with again.read() as txn:
        assert txn.released_identity("msisdn", "33600000001") == []
        assert txn.get_account("a1") is not None
    again.close()
