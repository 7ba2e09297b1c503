"""`chf store copy` and `chf store verify`: move a store's whole content into another store, and compare two stores,
through the store interface only (store.interface), so that any two backends work (LMDB -> LMDB, LMDB -> Redis
Cluster and back).

The copy reads its source in one read snapshot (`Store.read()`), so it may run while `chf serve` charges on the
source: it copies the state of one moment, and reports that moment's last event. It writes the destination, which
must be empty, in batches of durable operations: every tenant, account (with its wallet) and account balance set,
line (its identities and account membership follow) and line balance set, session (open and closed, with their
stored answers), idempotency record, refundable debit, exporter cursor and event (with its own sequence number and
id: export records keep their recordId), then the line-id counter, and last the source's store id: the destination
is the same store, moved (Nchf resource references and event ids are made from it).

The verification reads both stores, kind by kind: the number of records and an order-independent digest of them
(the sum of one hash per record, so that backends that list records in different orders compare), the counters,
the event sequence (gap-free, the same numbers), and the balance totals by currency and unit. Where a kind differs,
a second pass lists the records that are missing, extra or different, by key.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from store.interface import Store, StoreError, Txn

__all__ = ["KINDS", "copy_store", "verify_stores"]

# progress(kind, records done, records expected or 0, final)
Progress = Callable[[str, int, int, bool], None]

_canonical = msgspec.msgpack.Encoder(order="sorted")  # one encoding of a value, whatever its map order
DIFFERENCES_SHOWN = 10  # keys listed per kind and per sort of difference
_MASK = (1 << 128) - 1


@dataclass(frozen=True)
class Kind:
    """One sort of record: how to list it from a transaction ((key, canonical bytes, what to write)), how to write
    it, and which count of `Store.stat()` tells roughly how many there are (for the progress bar)."""

    name: str
    items: Callable[[Txn], Iterator[tuple[str, bytes, Any]]]
    put: Callable[[Txn, Any], None]
    stat: str = ""


def _tenants(txn: Txn) -> Iterator[tuple[str, bytes, Any]]:
    for tenant in txn.tenants():
        yield tenant.id, tenant.encode(), tenant


def _accounts(txn: Txn) -> Iterator[tuple[str, bytes, Any]]:
    for account in txn.accounts():
        # With the count of its active lines, which the store keeps from the line records (compared, not written).
        yield account.id, account.encode() + _canonical.encode(txn.active_line_count(account.id)), account


def _account_balances(txn: Txn) -> Iterator[tuple[str, bytes, Any]]:
    for account in txn.accounts():
        balances = txn.get_account_balances(account.id)
        if balances is not None:
            yield account.id, balances.encode(), (account.id, balances)


IDENTITIES = ("imsi", "msisdn", "iccid")


def _lines(txn: Txn) -> Iterator[tuple[str, bytes, Any]]:
    """Each line with, for each of its identities, whether the index finds the line by it (a terminated line
    may have released it to a newer line), and the releases of the identities it holds."""
    for sub in txn.subscribers():
        held = []
        releases: list[tuple[str, str, list[tuple[int, int]]]] = []
        for kind in IDENTITIES:
            value = getattr(sub, kind)
            held.append(bool(value) and txn.subscriber_id_by(kind, value) == sub.id)
            released = txn.released_identity(kind, value) if value else []
            if released:
                releases.append((kind, value, released))
        yield f"#{sub.id}", sub.encode() + _canonical.encode(held), (sub, releases)


def _put_line(txn: Txn, value: tuple[Any, list[tuple[str, str, list[tuple[int, int]]]]]) -> None:
    """Write a line as the source's history did: a line that took over the identity of a terminated line makes
    it release the identity first (`release_identity`), then takes it (`put_subscriber`). Lines come in id
    order, so the releasing line, always an older one, is already there."""
    sub, releases = value
    for kind, identity, released in releases:
        holder = txn.subscriber_id_by(kind, identity)
        for line_id, when in released:
            if line_id == holder and holder != sub.id:
                txn.release_identity(kind, identity, line_id, when)
    txn.put_subscriber(sub)


def _released(txn: Txn) -> Iterator[tuple[str, bytes, Any]]:
    for kind, identity, line_id, when in txn.released_identities():
        yield f"{kind} {identity} #{line_id}", _canonical.encode(when), (kind, identity, line_id, when)


def _line_balances(txn: Txn) -> Iterator[tuple[str, bytes, Any]]:
    for sub in txn.subscribers():
        balances = txn.get_line_balances(sub.id)
        if balances is not None:
            yield f"#{sub.id}", balances.encode(), (sub.id, balances)


def _sessions(txn: Txn) -> Iterator[tuple[str, bytes, Any]]:
    for session in txn.sessions():
        yield session.key, session.encode(), session


def _idempotency(txn: Txn) -> Iterator[tuple[str, bytes, Any]]:
    for key, expires, answer in txn.idempotency_records():
        yield key, _canonical.encode([expires, answer]), (key, expires, answer)


def _debits(txn: Txn) -> Iterator[tuple[str, bytes, Any]]:
    for debit in txn.all_debits():
        yield f"#{debit.line}/{debit.rating_group}/{debit.seq}", debit.encode(), debit


def _cursors(txn: Txn) -> Iterator[tuple[str, bytes, Any]]:
    for name, seq in txn.cursors():
        yield name, _canonical.encode(seq), (name, seq)


def _events(txn: Txn) -> Iterator[tuple[str, bytes, Any]]:
    for event in txn.events():
        yield str(event["seq"]), _canonical.encode(event), event


# In the order the copy writes them: a line after its account, a session after its line, events last.
KINDS = (
    Kind("tenants", _tenants, lambda txn, t: txn.put_tenant(t), "tenants"),
    Kind("accounts", _accounts, lambda txn, a: txn.put_account(a), "accounts"),
    Kind("account balance sets", _account_balances, lambda txn, x: txn.put_account_balances(*x), "accounts"),
    Kind("lines", _lines, _put_line, "subscribers"),
    # Released when the line that took them over was written; a release left over (a history the replay above
    # does not reproduce) is tried once more here, and the comparison names what still differs.
    Kind("released identities", _released, lambda txn, x: txn.release_identity(*x), "idx_released"),
    Kind("line balance sets", _line_balances, lambda txn, x: txn.put_line_balances(*x), "subscribers"),
    Kind("sessions", _sessions, lambda txn, s: txn.put_session(s), "sessions"),
    Kind("idempotency records", _idempotency, lambda txn, x: txn.put_idem(*x), "idem"),
    Kind("debits", _debits, lambda txn, d: txn.put_debit(d), "debits"),
    Kind("cursors", _cursors, lambda txn, x: txn.put_cursor(*x), "cursors"),
    Kind("events", _events, lambda txn, e: txn.put_copied_event(e), "events"),
)


def _hash(key: str, data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode() + b"\x00" + data, digest_size=16).digest(), "big")


@dataclass
class Tally:
    """The records of one kind in one store: how many, and the sum of their hashes (order-independent)."""

    count: int = 0
    digest: int = 0

    def add(self, key: str, data: bytes) -> None:
        self.count += 1
        self.digest = (self.digest + _hash(key, data)) & _MASK


@dataclass
class Totals:
    """The money and units of a store: wallets and reserved money by currency, bucket units left by unit."""

    wallets: dict[str, int] = field(default_factory=dict)
    reserved: dict[str, int] = field(default_factory=dict)
    buckets: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, value: Any) -> None:
        if kind == "accounts":
            self.wallets[value.currency] = self.wallets.get(value.currency, 0) + value.balance
            self.reserved[value.currency] = self.reserved.get(value.currency, 0) + value.reserved
        elif kind in ("account balance sets", "line balance sets"):
            for bucket in value[1].buckets:
                self.buckets[bucket.unit] = self.buckets.get(bucket.unit, 0) + bucket.remaining

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {"wallets": self.wallets, "reserved": self.reserved, "buckets": self.buckets}


@dataclass
class Snapshot:
    """What one pass over a store saw."""

    tallies: dict[str, Tally] = field(default_factory=dict)
    totals: Totals = field(default_factory=Totals)
    last_event_seq: int = 0
    last_subscriber_id: int = 0
    event_disorder: list[str] = field(default_factory=list)


def _stat(store: Store) -> dict[str, int]:
    try:
        return store.stat()
    except StoreError:
        return {}


def _walk(txn: Txn, kind: Kind, snap: Snapshot, expected: int, progress: Progress | None) -> Iterator[Any]:
    """The records of `kind`, tallied into `snap` on the way (and the event sequence checked)."""
    tally = snap.tallies.setdefault(kind.name, Tally())
    previous = 0
    for key, data, value in kind.items(txn):
        tally.add(key, data)
        snap.totals.add(kind.name, value)
        if kind.name == "events":  # listed in sequence order (gaps are allowed: the Redis store numbers per partition)
            seq = value["seq"]
            if seq <= previous and len(snap.event_disorder) < DIFFERENCES_SHOWN:
                snap.event_disorder.append(f"{previous} then {seq}")
            previous = seq
        if progress is not None and tally.count % 1024 == 0:
            progress(kind.name, tally.count, expected, False)
        yield value
    if progress is not None:
        progress(kind.name, tally.count, expected, True)


def read_snapshot(txn: Txn, store: Store, progress: Progress | None = None) -> Snapshot:
    snap = Snapshot(last_event_seq=txn.last_event_seq(), last_subscriber_id=txn.last_subscriber_id())
    counts = _stat(store)
    for kind in KINDS:
        for _ in _walk(txn, kind, snap, counts.get(kind.stat, 0), progress):
            pass
    return snap


# ----------------------------------------------------------------------------------------------------------------------
# Copy
# ----------------------------------------------------------------------------------------------------------------------
def _empty(txn: Txn) -> bool:
    return (
        txn.last_event_seq() == 0
        and txn.subscriber_count() == 0
        and next(txn.tenants(), None) is None
        and next(txn.accounts(), None) is None
    )


def copy_store(
    source: Store, destination: Store, *, batch: int = 2000, progress: Progress | None = None
) -> dict[str, Any]:
    """Copy everything of `source` (one read snapshot) into the empty `destination`, give it the source's store
    id, and verify it. Returns the report (see `verify_stores`), with what was copied and how long it took."""
    if batch < 1:
        raise ValueError(f"batch must be 1 or more, got {batch}")
    with destination.read() as txn:
        if not _empty(txn):
            raise StoreError("the destination store is not empty: a copy only goes into a new store")
    started = time.monotonic()
    counts = _stat(source)
    with source.read() as txn:
        snap = Snapshot(last_event_seq=txn.last_event_seq(), last_subscriber_id=txn.last_subscriber_id())
        for kind in KINDS:
            _copy_kind(txn, kind, destination, snap, batch, counts.get(kind.stat, 0), progress)
        last_line = snap.last_subscriber_id
        destination.write(lambda t: t.reserve_subscriber_ids(last_line))
        destination.set_store_id(source.store_id)
        copied = time.monotonic()
        report = verify_stores(source, destination, progress=progress, source_txn=txn, source_snapshot=snap)
    report["copied"] = {name: tally.count for name, tally in snap.tallies.items()}
    report["seconds"] = {"copy": round(copied - started, 3), "verify": round(time.monotonic() - copied, 3)}
    return report


def _copy_kind(
    txn: Txn, kind: Kind, destination: Store, snap: Snapshot, batch: int, expected: int, progress: Progress | None
) -> None:
    put = kind.put
    chunk: list[Any] = []

    def flush(records: list[Any]) -> None:
        def op(t: Txn) -> None:
            for record in records:
                put(t, record)

        destination.write(op)

    for value in _walk(txn, kind, snap, expected, progress):
        chunk.append(value)
        if len(chunk) >= batch:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)


# ----------------------------------------------------------------------------------------------------------------------
# Verify
# ----------------------------------------------------------------------------------------------------------------------
def verify_stores(
    source: Store,
    destination: Store,
    *,
    progress: Progress | None = None,
    source_txn: Txn | None = None,
    source_snapshot: Snapshot | None = None,
) -> dict[str, Any]:
    """Compare two stores (a copy with its source). `source_txn` and `source_snapshot`: the source as the copy read
    it (the verification then compares the destination with that moment, not with the source now)."""
    if source_txn is None:
        with source.read() as txn:
            return verify_stores(source, destination, progress=progress, source_txn=txn)
    if source_snapshot is None:
        source_snapshot = read_snapshot(source_txn, source, progress)
    with destination.read() as dtxn:
        dest_snapshot = read_snapshot(dtxn, destination, progress)
        differences = _differences(source_snapshot, dest_snapshot, source.store_id, destination.store_id)
        details = _detail(source_txn, dtxn, source_snapshot, dest_snapshot)
    src, dst = source_snapshot, dest_snapshot
    return {
        "ok": not differences and not details,
        "store_id": {"source": source.store_id, "destination": destination.store_id},
        "last_event_seq": {"source": src.last_event_seq, "destination": dst.last_event_seq},
        "last_line_id": {"source": src.last_subscriber_id, "destination": dst.last_subscriber_id},
        "counts": {
            name: {"source": tally.count, "destination": dst.tallies[name].count, "equal": name not in details}
            for name, tally in src.tallies.items()
        },
        "balances": {"source": src.totals.as_dict(), "destination": dst.totals.as_dict()},
        "differences": differences + [line for lines in details.values() for line in lines],
    }


def _differences(src: Snapshot, dst: Snapshot, src_id: str, dst_id: str) -> list[str]:
    out = []
    if src_id != dst_id:
        out.append(f"store id: source {src_id}, destination {dst_id}")
    if src.last_event_seq != dst.last_event_seq:
        out.append(f"last event: source {src.last_event_seq}, destination {dst.last_event_seq}")
    if dst.last_subscriber_id < src.last_subscriber_id:
        out.append(f"line-id counter: source {src.last_subscriber_id}, destination {dst.last_subscriber_id}")
    for name, disorder in (("source", src.event_disorder), ("destination", dst.event_disorder)):
        if disorder:
            out.append(f"events: the {name} lists them out of sequence: {', '.join(disorder)}")
    if src.totals != dst.totals:
        out.append(f"balances: source {src.totals.as_dict()}, destination {dst.totals.as_dict()}")
    return out


def _detail(stxn: Txn, dtxn: Txn, src: Snapshot, dst: Snapshot) -> dict[str, list[str]]:
    """For each kind whose tallies differ: the keys missing from the destination, extra in it, or different."""
    out: dict[str, list[str]] = {}
    for kind in KINDS:
        a, b = src.tallies[kind.name], dst.tallies[kind.name]
        if a == b:
            continue
        lines = [f"{kind.name}: {a.count} in the source, {b.count} in the destination"]
        left = {key: _hash(key, data) for key, data, _ in kind.items(stxn)}
        right = {key: _hash(key, data) for key, data, _ in kind.items(dtxn)}
        missing = [k for k in left if k not in right]
        extra = [k for k in right if k not in left]
        changed = [k for k in left if k in right and left[k] != right[k]]
        for what, keys in (("missing", missing), ("extra", extra), ("different", changed)):
            if keys:
                shown = ", ".join(keys[:DIFFERENCES_SHOWN]) + (" ..." if len(keys) > DIFFERENCES_SHOWN else "")
                lines.append(f"{kind.name}: {len(keys)} {what}: {shown}")
        out[kind.name] = lines
    return out
