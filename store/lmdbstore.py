"""The LMDB balance store: environment, key layout, typed transactions and the group-commit writer.

Key layout (one LMDB environment, named sub-databases):

    meta          b"event_seq" / b"next_subscriber" -> 8-byte big-endian counters; b"store_id"; b"schema"
    tenants       tenant id -> Tenant
    accounts      account id -> Account (with its wallet)
    subscribers   8-byte line id -> Subscriber
    idx_imsi, idx_msisdn, idx_iccid
                  identity -> 8-byte line id                           (the line holding it now)
    idx_released  kind + 0x00 + identity + 0x00 + 8-byte line id -> 8-byte time
                  (identities a terminated line held and gave up, kept for searches in history)
    account_lines account id + 0x00 + 8-byte line id -> b""     (lines of an account)
    account_active
                  account id -> 8-byte line id, one duplicate per active line (LMDB dupsort): the account's
                  active lines, kept in step with the line records by put_subscriber; counted in O(1)
    balances      b"L" + line id + 0x00        -> BalanceSet of the line
                  b"L" + line id + 0x01 + key  -> Session of the line (with its reservations)
                  b"A" + account id + 0x00     -> BalanceSet of the account (shared allowances, IoT pools)
    sessions      session key -> b"L" + line id  (the index from a session to its line)
    idem          idempotency key -> [expires, answer]   (one-shot requests and API operations)
    debits        8-byte line id + 8-byte (rating group + 1) + 8-byte event sequence -> Debit
                  (one-shot debits a refund may still reverse, oldest first per line and rating group)
    events        8-byte big-endian sequence -> rated or audit event (the spool)
    cursors       exporter name -> 8-byte sequence

A line's balance set and its sessions sit under adjacent keys of one sub-database, so the common update
(commit used units from the line's buckets, reserve the next grant, remember the answer) dirties one leaf
page instead of three: with fsync, page writes are what bounds throughput (docs/architecture.md).

`Store` and `Txn` implement the Protocols of store.interface; only this module knows the keys above.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import lmdb

from store import interface
from store.interface import Owner, StoreBusy, StoreClosed, StoreError, Sweep
from store.schema import (
    ACTIVE,
    SCHEMA_VERSION,
    SESSION,
    Account,
    BalanceSet,
    Debit,
    SchemaError,
    Session,
    Subscriber,
    Tenant,
    pack,
    unpack,
)

__all__ = ["Op", "Store", "StoreBusy", "StoreClosed", "StoreError", "StoreLocked", "Txn", "lock_store_dir"]

log = logging.getLogger("chf.store")

T = TypeVar("T")

_DBS = (
    b"meta",
    b"tenants",
    b"accounts",
    b"subscribers",
    b"idx_imsi",
    b"idx_msisdn",
    b"idx_iccid",
    b"idx_released",
    b"account_lines",
    b"account_active",
    b"balances",
    b"sessions",
    b"idem",
    b"debits",
    b"events",
    b"cursors",
)


# Sub-databases with more than one value per key (fixed-size values, sorted: LMDB dupsort + dupfixed).
_DUPSORT = frozenset({b"account_active"})

# Where a session's key and expiry sit in its stored array (the sweep reads them without building a Session).
_SESSION_KEY = SESSION.position("key")
_SESSION_EXPIRES = SESSION.position("expires")


# Every process that opens the store holds a shared lock on this file inside its directory; `chf restore`, which
# swaps the directory for another, takes it exclusively (store/lmdbbackup.py). LMDB's own lock.mdb is not used
# for this: LMDB relies on fcntl locks on it, which any close() of that file by the process would drop.
LOCK_FILE = "chf.lock"
LOCK_WAIT = 60.0  # seconds an opener waits for a restore to finish
_STORE_ID = re.compile(r"[A-Za-z0-9_]{1,32}")


class StoreLocked(StoreError):
    """The store directory's lock is held: by a restore (for an opener), or by an open store (for a restore)."""


def lock_store_dir(path: str, *, exclusive: bool, wait: float) -> int:
    """Take the lock of the store directory `path` (which exists); returns the locked descriptor, to close to
    let go. Waits up to `wait` seconds for the holders of a conflicting lock, then raises StoreLocked. A restore
    may swap the directory while an opener waits: the lock taken must be the one of the directory now at `path`."""
    lock_path = os.path.join(path, LOCK_FILE)
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # between the two renames of a restore without RENAME_EXCHANGE
            fd = -1
        if fd >= 0:
            try:
                fcntl.flock(fd, mode)
                held, now_at = os.fstat(fd), os.stat(lock_path)
                if (held.st_dev, held.st_ino) == (now_at.st_dev, now_at.st_ino):
                    return fd
            except (BlockingIOError, FileNotFoundError):
                pass
            os.close(fd)
        if time.monotonic() >= deadline:
            holder = "a restore is swapping it" if not exclusive else "it is open in another process"
            raise StoreLocked(f"store {path} is locked: {holder} ({lock_path})")
        time.sleep(0.05)


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


def _debit_key(line_id: int, rating_group: int, seq: int) -> bytes:
    # A request without a rating group has -1 (chf.core.model.NO_RATING_GROUP): stored as 0, the others as rg + 1.
    return _u64(line_id) + _u64(rating_group + 1) + _u64(seq)


def _released_key(kind: str, value: str) -> bytes:
    """The prefix of the lines that gave up an identity (idx_released); the line id follows it."""
    return kind.encode() + b"\x00" + value.encode() + b"\x00"


def line_key(line_id: int) -> bytes:
    return b"L" + line_id.to_bytes(8, "big")


# The inline writer's group commit per loop iteration: at most INLINE_SLICE seconds of work (estimated from the
# measured cost per operation), at least INLINE_MIN_BATCH operations (fsync amortised over them).
INLINE_SLICE = 0.02
INLINE_MIN_BATCH = 32


class Txn:
    """A typed view of one LMDB transaction. Writes are only possible inside the group-commit writer."""

    __slots__ = ("_db", "_store", "_txn", "write", "wrote")

    def __init__(self, store: Store, txn: lmdb.Transaction, write: bool) -> None:
        self._store = store
        # Typed Any: the environment is opened without `buffers`, so py-lmdb returns bytes where its stubs say
        # bytes | memoryview.
        self._txn: Any = txn
        self._db = store._db
        self.write = write
        self.wrote = False  # whether this view changed anything (see Store._apply)

    def _put(self, key: bytes, value: bytes, db: Any, append: bool = False) -> None:
        self.wrote = True
        self._txn.put(key, value, db=db, append=append)

    def _delete(self, key: bytes, db: Any) -> None:
        self.wrote = True
        self._txn.delete(key, db=db)

    # -- counters ---------------------------------------------------------------------------------------------------
    def _counter(self, name: bytes) -> int:
        raw = self._txn.get(name, db=self._db[b"meta"])
        return int.from_bytes(raw, "big") if raw else 0

    def _bump(self, name: bytes) -> int:
        n = self._counter(name) + 1
        self._put(name, _u64(n), db=self._db[b"meta"])
        return n

    def last_event_seq(self) -> int:
        if self.write and self._store._event_seq is not None:
            return self._store._event_seq
        return self._counter(b"event_seq")

    def new_subscriber_id(self) -> int:
        return self._bump(b"next_subscriber")

    def last_subscriber_id(self) -> int:
        return self._counter(b"next_subscriber")

    def reserve_subscriber_ids(self, last: int) -> None:
        if last > self._counter(b"next_subscriber"):
            self._put(b"next_subscriber", _u64(last), db=self._db[b"meta"])

    # -- tenants and accounts ---------------------------------------------------------------------------------------
    def get_tenant(self, tenant_id: str) -> Tenant | None:
        raw = self._txn.get(tenant_id.encode(), db=self._db[b"tenants"])
        return Tenant.decode(raw) if raw is not None else None

    def put_tenant(self, tenant: Tenant) -> None:
        self._put(tenant.id.encode(), tenant.encode(), db=self._db[b"tenants"])

    def tenants(self) -> Iterator[Tenant]:
        with self._txn.cursor(db=self._db[b"tenants"]) as cur:
            for _, raw in cur:
                yield Tenant.decode(raw)

    def get_account(self, account_id: str) -> Account | None:
        raw = self._txn.get(account_id.encode(), db=self._db[b"accounts"])
        return Account.decode(raw) if raw is not None else None

    def put_account(self, account: Account) -> None:
        self._put(account.id.encode(), account.encode(), db=self._db[b"accounts"])

    def accounts(self) -> Iterator[Account]:
        with self._txn.cursor(db=self._db[b"accounts"]) as cur:
            for _, raw in cur:
                yield Account.decode(raw)

    def lines_of_account(self, account_id: str) -> Iterator[int]:
        prefix = account_id.encode() + b"\x00"
        with self._txn.cursor(db=self._db[b"account_lines"]) as cur:
            if not cur.set_range(prefix):
                return
            for key in cur.iternext(keys=True, values=False):
                if not key.startswith(prefix):
                    return
                yield int.from_bytes(key[len(prefix) :], "big")

    def active_line_count(self, account_id: str) -> int:
        with self._txn.cursor(db=self._db[b"account_active"]) as cur:
            return int(cur.count()) if cur.set_key(account_id.encode()) else 0

    # -- lines ------------------------------------------------------------------------------------------------------
    def get_subscriber(self, line_id: int) -> Subscriber | None:
        raw = self._txn.get(_u64(line_id), db=self._db[b"subscribers"])
        return Subscriber.decode(raw) if raw is not None else None

    def subscriber_id_by(self, kind: str, value: str) -> int | None:
        raw = self._txn.get(value.encode(), db=self._db[b"idx_" + kind.encode()])
        return int.from_bytes(raw, "big") if raw is not None else None

    def subscriber_by(self, kind: str, value: str) -> Subscriber | None:
        line_id = self.subscriber_id_by(kind, value)
        return self.get_subscriber(line_id) if line_id is not None else None

    def put_subscriber(self, sub: Subscriber, previous: Subscriber | None = None) -> None:
        """Write a line and keep its identity indexes, account membership and its account's active lines in step
        with it."""
        db = self._db
        key = _u64(sub.id)
        for kind in ("imsi", "msisdn", "iccid"):
            old = getattr(previous, kind) if previous is not None else None
            new = getattr(sub, kind)
            if old == new:
                continue
            idx = db[b"idx_" + kind.encode()]
            if old:
                self._delete(old.encode(), db=idx)
            if new:
                self._put(new.encode(), key, db=idx)
        if previous is None or previous.account != sub.account:
            if previous is not None:
                self._delete(previous.account.encode() + b"\x00" + key, db=db[b"account_lines"])
            self._put(sub.account.encode() + b"\x00" + key, b"", db=db[b"account_lines"])
        is_active = sub.state == ACTIVE
        if previous is not None and previous.state == ACTIVE and (not is_active or previous.account != sub.account):
            self.wrote = True
            self._txn.delete(previous.account.encode(), key, db=db[b"account_active"])
        if is_active:
            self._put(sub.account.encode(), key, db=db[b"account_active"])
        self._put(key, sub.encode(), db=db[b"subscribers"])

    def put_new_subscriber(self, sub: Subscriber) -> None:
        """`put_subscriber` for a line just numbered by `new_subscriber_id` (bulk import: the same records and
        index entries, without comparing against a previous version)."""
        db = self._db
        put = self._txn.put
        key = _u64(sub.id)
        self.wrote = True
        put(sub.imsi.encode(), key, db=db[b"idx_imsi"])
        if sub.msisdn:
            put(sub.msisdn.encode(), key, db=db[b"idx_msisdn"])
        if sub.iccid:
            put(sub.iccid.encode(), key, db=db[b"idx_iccid"])
        put(sub.account.encode() + b"\x00" + key, b"", db=db[b"account_lines"])
        if sub.state == ACTIVE:
            put(sub.account.encode(), key, db=db[b"account_active"])
        put(key, sub.encode(), db=db[b"subscribers"])

    def release_identity(self, kind: str, value: str, line_id: int, now: int) -> None:
        db = self._db
        idx = db[b"idx_" + kind.encode()]
        if self._txn.get(value.encode(), db=idx) != _u64(line_id):
            return  # not (or no longer) the line's
        self._delete(value.encode(), db=idx)
        self._put(_released_key(kind, value) + _u64(line_id), _u64(now), db=db[b"idx_released"])

    def released_identity(self, kind: str, value: str) -> list[tuple[int, int]]:
        prefix = _released_key(kind, value)
        out: list[tuple[int, int]] = []
        with self._txn.cursor(db=self._db[b"idx_released"]) as cur:
            if not cur.set_range(prefix):
                return out
            for key, raw in cur:
                if not key.startswith(prefix):
                    break
                out.append((int.from_bytes(key[len(prefix) :], "big"), int.from_bytes(raw, "big")))
        out.sort(key=lambda held: (held[1], held[0]))
        return out

    def released_identities(self) -> Iterator[tuple[str, str, int, int]]:
        with self._txn.cursor(db=self._db[b"idx_released"]) as cur:
            for key, raw in cur:
                kind, _, rest = key.partition(b"\x00")
                yield kind.decode(), rest[:-9].decode(), int.from_bytes(rest[-8:], "big"), int.from_bytes(raw, "big")

    def subscribers(self) -> Iterator[Subscriber]:
        with self._txn.cursor(db=self._db[b"subscribers"]) as cur:
            for _, raw in cur:
                yield Subscriber.decode(raw)

    def subscriber_count(self) -> int:
        return int(self._txn.stat(self._db[b"subscribers"])["entries"])

    # -- balance sets -----------------------------------------------------------------------------------------------
    def get_line_balances(self, line_id: int) -> BalanceSet | None:
        raw = self._txn.get(line_key(line_id) + b"\x00", db=self._db[b"balances"])
        return BalanceSet.decode(raw) if raw is not None else None

    def put_line_balances(self, line_id: int, balances: BalanceSet) -> None:
        self._put(line_key(line_id) + b"\x00", balances.encode(), db=self._db[b"balances"])

    def put_line_balances_encoded(self, line_id: int, encoded: bytes) -> None:
        """`put_line_balances` with the record already encoded (bulk import: many lines share one record)."""
        self._put(line_key(line_id) + b"\x00", encoded, db=self._db[b"balances"])

    def get_account_balances(self, account_id: str) -> BalanceSet | None:
        raw = self._txn.get(b"A" + account_id.encode() + b"\x00", db=self._db[b"balances"])
        return BalanceSet.decode(raw) if raw is not None else None

    def put_account_balances(self, account_id: str, balances: BalanceSet) -> None:
        self._put(b"A" + account_id.encode() + b"\x00", balances.encode(), db=self._db[b"balances"])

    def get_session(self, key: str) -> Session | None:
        owner = self._txn.get(key.encode(), db=self._db[b"sessions"])
        if owner is None:
            return None
        raw = self._txn.get(owner + b"\x01" + key.encode(), db=self._db[b"balances"])
        return Session.decode(raw) if raw is not None else None

    def put_session(self, session: Session, indexed: bool = False) -> None:
        """Write a session; `indexed` says it was read from this store and its index entry is in place."""
        owner = line_key(session.subscriber)
        k = session.key.encode()
        if not indexed:
            sessions = self._db[b"sessions"]
            if self._txn.get(k, db=sessions) != owner:
                self._put(k, owner, db=sessions)
        self._put(owner + b"\x01" + k, session.encode(), db=self._db[b"balances"])

    def delete_session(self, session: Session) -> None:
        k = session.key.encode()
        self._delete(k, db=self._db[b"sessions"])
        self._delete(line_key(session.subscriber) + b"\x01" + k, db=self._db[b"balances"])

    def sessions_of_line(self, line_id: int) -> Iterator[Session]:
        prefix = line_key(line_id) + b"\x01"
        with self._txn.cursor(db=self._db[b"balances"]) as cur:
            if not cur.set_range(prefix):
                return
            for key, raw in cur:
                if not key.startswith(prefix):
                    return
                yield Session.decode(raw)

    def sessions(self) -> Iterator[Session]:
        with self._txn.cursor(db=self._db[b"balances"]) as cur:
            for key, raw in cur:
                if key[:1] == b"L" and key[9:10] == b"\x01":
                    yield Session.decode(raw)

    def sweep(self, position: bytes, limit: int, now: int) -> Sweep:
        """The next slice of the balances sub-database (see interface.Txn.sweep); `resume` is the first key of
        the next slice."""
        expired: list[str] = []
        balances: list[tuple[Owner, BalanceSet]] = []
        with self._txn.cursor(db=self._db[b"balances"]) as cur:
            if not (cur.set_range(position) if position else cur.first()):
                return Sweep(expired, balances, b"")
            for n, (key, raw) in enumerate(cur, 1):
                if n > limit:
                    return Sweep(expired, balances, key)
                if key[:1] == b"L" and key[9:10] == b"\x01":
                    # A session of a line: only its expiry is needed, read from the array without building a
                    # Session (most sessions are not due).
                    fields = unpack(raw)
                    if fields[_SESSION_EXPIRES] <= now:
                        expired.append(fields[_SESSION_KEY])
                elif key[-1:] == b"\x00":
                    owner: Owner = (
                        ("line", int.from_bytes(key[1:9], "big"))
                        if key[:1] == b"L"
                        else (
                            "account",
                            key[1:-1].decode(),
                        )
                    )
                    balances.append((owner, BalanceSet.decode(raw)))
        return Sweep(expired, balances, b"")

    def session_count(self) -> int:
        return int(self._txn.stat(self._db[b"sessions"])["entries"])

    # -- idempotency ------------------------------------------------------------------------------------------------
    def get_idem(self, key: str, now: int) -> Any:
        raw = self._txn.get(key.encode(), db=self._db[b"idem"])
        if raw is None:
            return None
        expires, answer = unpack(raw)
        return answer if expires > now else None

    def put_idem(self, key: str, expires: int, answer: Any) -> None:
        self._put(key.encode(), pack([expires, answer]), db=self._db[b"idem"])

    def purge_idem(self, now: int, limit: int) -> int:
        """Delete up to `limit` expired idempotency records; returns how many."""
        gone = 0
        db = self._db[b"idem"]
        with self._txn.cursor(db=db) as cur:
            victims = []
            for key, raw in cur:
                if unpack(raw)[0] <= now:
                    victims.append(key)
                    if len(victims) >= limit:
                        break
        for key in victims:
            self._delete(key, db=db)
            gone += 1
        return gone

    def idempotency_records(self) -> Iterator[tuple[str, int, Any]]:
        with self._txn.cursor(db=self._db[b"idem"]) as cur:
            for key, raw in cur:
                expires, answer = unpack(raw)
                yield key.decode(), expires, answer

    # -- refundable debits (chf.core.events) ------------------------------------------------------------------------
    def put_debit(self, debit: Debit) -> None:
        self._put(_debit_key(debit.line, debit.rating_group, debit.seq), debit.encode(), db=self._db[b"debits"])

    def delete_debit(self, debit: Debit) -> None:
        self._delete(_debit_key(debit.line, debit.rating_group, debit.seq), db=self._db[b"debits"])

    def debits(self, line_id: int, rating_group: int) -> list[Debit]:
        """The kept debits of a line and rating group, oldest first."""
        prefix = _u64(line_id) + _u64(rating_group + 1)
        out: list[Debit] = []
        with self._txn.cursor(db=self._db[b"debits"]) as cur:
            if not cur.set_range(prefix):
                return out
            for key, raw in cur:
                if not key.startswith(prefix):
                    break
                out.append(Debit.decode(raw))
        return out

    def prune_debits(self, line_id: int, rating_group: int, before: int) -> int:
        """Delete the debits of a line and rating group made before `before`; returns how many."""
        prefix = _u64(line_id) + _u64(rating_group + 1)
        db = self._db[b"debits"]
        victims = []
        with self._txn.cursor(db=db) as cur:
            if cur.set_range(prefix):
                for key, raw in cur:
                    if not key.startswith(prefix) or Debit.decode(raw).time >= before:
                        break
                    victims.append(key)
        for key in victims:
            self._delete(key, db=db)
        return len(victims)

    def purge_debits(self, before: int, limit: int) -> int:
        """Delete up to `limit` debits made before `before` (out of the refund window); returns how many."""
        db = self._db[b"debits"]
        victims = []
        with self._txn.cursor(db=db) as cur:
            for key, raw in cur:
                if Debit.decode(raw).time < before:
                    victims.append(key)
                    if len(victims) >= limit:
                        break
        for key in victims:
            self._delete(key, db=db)
        return len(victims)

    def all_debits(self) -> Iterator[Debit]:
        with self._txn.cursor(db=self._db[b"debits"]) as cur:
            for _, raw in cur:
                yield Debit.decode(raw)

    # -- events -----------------------------------------------------------------------------------------------------
    def append_event(self, event: dict[str, Any]) -> int:
        """Append an event to the spool with the next sequence number and a unique id; returns the number."""
        # The counter lives in memory for the duration of a write transaction and is stored once at its end
        # (Store._begin_write / _end_write): one meta page write per batch instead of two lookups per event.
        store = self._store
        seq = store._event_seq + 1 if store._event_seq is not None else self._bump(b"event_seq")
        if store._event_seq is not None:
            store._event_seq = seq
        event["seq"] = seq
        event["id"] = f"{self._store.store_id}-{seq}"
        self._put(_u64(seq), pack(event), db=self._db[b"events"], append=True)
        return seq

    def append_encoded_events(self, encode: Callable[[int, str], list[bytes]]) -> int:
        """Append events that the caller encodes itself (bulk import renders them from templates):
        `encode(first_seq, store_id)` returns them packed, the i-th with "seq" first_seq + i and "id"
        f"{store_id}-{seq}", as `append_event` would have written them. Returns how many."""
        store = self._store
        in_batch = store._event_seq  # the writer's in-memory counter while a batch is open (see append_event)
        first = (in_batch if in_batch is not None else self._counter(b"event_seq")) + 1
        encoded = encode(first, store.store_id)
        if not encoded:
            return 0
        last = first + len(encoded) - 1
        if in_batch is not None:
            store._event_seq = last
        else:
            self._put(b"event_seq", _u64(last), db=self._db[b"meta"])
        self.wrote = True
        with self._txn.cursor(db=self._db[b"events"]) as cur:
            cur.putmulti(zip(map(_u64, range(first, last + 1)), encoded, strict=True), append=True)
        return len(encoded)

    def events(self, after: int = 0, limit: int | None = None) -> Iterator[dict[str, Any]]:
        with self._txn.cursor(db=self._db[b"events"]) as cur:
            if not cur.set_range(_u64(after + 1)):
                return
            for n, (_, raw) in enumerate(cur, 1):
                yield unpack(raw)
                if limit is not None and n >= limit:
                    return

    def put_copied_event(self, event: dict[str, Any]) -> None:
        """Append an event of another store with its own "seq" and "id" (see interface.Txn.put_copied_event)."""
        store = self._store
        in_batch = store._event_seq  # the writer's in-memory counter while a batch is open (see append_event)
        last = in_batch if in_batch is not None else self._counter(b"event_seq")
        seq = event.get("seq")
        if not isinstance(seq, int) or seq <= last or not isinstance(event.get("id"), str):
            raise StoreError(f"copied event {seq!r} does not come after event {last} (or has no id)")
        if in_batch is not None:
            store._event_seq = seq
        else:
            self._put(b"event_seq", _u64(seq), db=self._db[b"meta"])
        self._put(_u64(seq), pack(event), db=self._db[b"events"], append=True)

    def get_cursor(self, name: str) -> int:
        raw = self._txn.get(name.encode(), db=self._db[b"cursors"])
        return int.from_bytes(raw, "big") if raw else 0

    def cursors(self) -> Iterator[tuple[str, int]]:
        """Every exporter cursor: (name, sequence of the last event it has delivered)."""
        with self._txn.cursor(db=self._db[b"cursors"]) as cur:
            for key, raw in cur:
                yield key.decode(), int.from_bytes(raw, "big")

    def put_cursor(self, name: str, seq: int) -> None:
        self._put(name.encode(), _u64(seq), db=self._db[b"cursors"])


Op = Callable[[Txn], Any]


class _Pending:
    __slots__ = ("done", "fn", "future", "nested", "result")

    def __init__(
        self,
        fn: Op,
        future: asyncio.Future[Any] | None,
        nested: bool = True,
        done: Callable[[Any], None] | None = None,
    ) -> None:
        self.fn = fn
        self.future = future
        self.nested = nested
        self.done = done
        self.result: Any = None


class _BatchAborted(Exception):
    """An operation that runs without its own nested transaction failed after writing: the batch is void."""


class Store:
    """An LMDB environment with typed transactions and a group-commit writer.

    durability "fsync" (default): every commit is flushed to disk (fdatasync) before any request in it is
    answered. durability "os": commits reach the OS page cache only and are flushed every `sync_interval`
    seconds; a crash of this process loses nothing, but an OS crash or power loss can lose the commits of the
    last interval and, as LMDB documents for MDB_NOSYNC, can leave the database corrupt.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = "fsync",
        map_size: int = 32 << 30,
        max_batch: int = 4096,
        max_queue: int = 65536,
        sync_interval: float = 1.0,
        writer: str = "inline",
    ) -> None:
        if writer not in ("thread", "inline"):
            raise ValueError(f"writer must be 'thread' or 'inline', got {writer!r}")
        if durability not in ("fsync", "os"):
            raise ValueError(f"durability must be 'fsync' or 'os', got {durability!r}")
        self.path = os.fspath(path)
        os.makedirs(self.path, exist_ok=True)
        self.durability = durability
        self._lock_fd = lock_store_dir(self.path, exclusive=False, wait=LOCK_WAIT)
        try:
            self.env = lmdb.open(
                self.path,
                map_size=map_size,
                max_dbs=len(_DBS) + 2,
                sync=durability == "fsync",
                metasync=durability == "fsync",
                readahead=False,
                max_readers=256,
            )
            with self.env.begin() as txn:
                indexed = txn.get(b"account_active") is not None  # named databases are keys of the main one
            self._db = {
                name: self.env.open_db(name, dupsort=name in _DUPSORT, dupfixed=name in _DUPSORT) for name in _DBS
            }
            self.store_id: str = self._identify()
            if not indexed:
                self._index_active_lines()
        except BaseException as exc:
            self._unlock()
            if isinstance(exc, lmdb.Error):
                raise StoreError(f"{self.path}: {exc}") from exc
            raise
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.sync_interval = sync_interval
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._last_sync = time.monotonic()
        self._syncer: threading.Thread | None = None  # durability "os": the periodic flush (see start)
        self._syncer_stop = threading.Event()
        self.writer = writer
        self._inline_started = False
        self._inline_scheduled = False
        self._op_seconds = 0.0001  # seconds of work per operation in a batch (measured: _committed)
        self._event_seq: int | None = None  # the event counter while a write transaction is open
        self._event_seq_start = 0
        # Observers of each committed batch: (batch size, commit seconds). Metrics hook in here.
        self.on_commit: list[Callable[[int, float], None]] = []
        self.commits = 0
        self.committed_ops = 0

    def _identify(self) -> str:
        """The store's id; a new store gets one, and the schema version of this code."""
        with self.env.begin(write=True) as txn:
            meta = self._db[b"meta"]
            schema = txn.get(b"schema", db=meta)
            if schema is None:
                txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=meta)
                txn.put(b"store_id", secrets.token_hex(4).encode(), db=meta)
            elif int(schema) != SCHEMA_VERSION:
                raise SchemaError(f"store {self.path} has schema {int(schema)}, this code reads {SCHEMA_VERSION}")
            store_id = txn.get(b"store_id", db=meta)
        if store_id is None:
            raise StoreError(f"store {self.path} has a schema version but no store id")
        return bytes(store_id).decode()

    def _index_active_lines(self) -> None:
        """Build the index of each account's active lines from the line records (a store written before the
        index existed; a new store has no lines, and an empty index)."""
        with self.env.begin(write=True) as txn:
            db = self._db[b"account_active"]
            with txn.cursor(db=self._db[b"subscribers"]) as cur:
                for key, raw in cur:
                    sub = Subscriber.decode(raw)
                    if sub.state == ACTIVE:
                        txn.put(sub.account.encode(), key, db=db)

    def set_store_id(self, store_id: str) -> None:
        """Give the store another id (see interface.Store.set_store_id)."""
        if not _STORE_ID.fullmatch(store_id):
            raise ValueError(f"a store id is 1 to 32 letters, digits or '_', got {store_id!r}")
        with self.env.begin(write=True) as txn:
            txn.put(b"store_id", store_id.encode(), db=self._db[b"meta"])
        self.env.sync(True)
        self.store_id = store_id

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- reading ----------------------------------------------------------------------------------------------------
    def read(self) -> _ReadContext:
        """A read-only snapshot; reads never wait for the writer (LMDB MVCC)."""
        return _ReadContext(self)

    # -- writing, synchronously (CLI, tests, benchmarks, maintenance) -----------------------------------------------
    def write(self, fn: Callable[[Txn], T]) -> T:
        """Apply one operation in its own durable transaction and return its result (or raise its error)."""
        result = self.run_batch([fn])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def run_batch(self, fns: Sequence[Op]) -> list[Any]:
        """Apply operations in one write transaction, each atomically (a failing one leaves no trace), commit
        durably, and return each one's result or the exception it raised."""
        results: list[Any] = []
        started = time.perf_counter()
        try:
            with self.env.begin(write=True) as txn:
                self._begin_write(txn)
                try:
                    for fn in fns:
                        results.append(self._apply(txn, fn))
                finally:
                    self._end_write(txn)
        except lmdb.Error as exc:  # the commit failed (disk full, I/O error): nothing was written
            raise StoreError(str(exc)) from exc
        self._committed(len(fns), time.perf_counter() - started)
        return results

    def _begin_write(self, txn: lmdb.Transaction) -> None:
        # Read at the start of every write transaction: another process (the CLI) may have written since.
        raw = txn.get(b"event_seq", db=self._db[b"meta"])
        self._event_seq = int.from_bytes(raw, "big") if raw else 0
        self._event_seq_start = self._event_seq

    def _end_write(self, txn: lmdb.Transaction) -> None:
        seq = self._event_seq
        self._event_seq = None
        if seq is not None and seq != self._event_seq_start:
            txn.put(b"event_seq", _u64(seq), db=self._db[b"meta"])

    def _apply(self, txn: lmdb.Transaction, fn: Op, nested: bool = True) -> Any:
        """Apply one operation. A nested transaction makes it atomic on its own. Operations that decide
        everything before their first write (the engine's charging requests) may skip it: it costs more than
        the operation's own writes, and more still while the event loop competes for the GIL. If such an
        operation fails after writing anyway, the whole batch is abandoned (nothing in it is acknowledged)."""
        seq = self._event_seq
        if not nested:
            view = Txn(self, txn, True)
            try:
                return fn(view)
            except Exception as exc:
                if view.wrote:
                    raise _BatchAborted(f"operation failed after writing: {exc!r}") from exc
                self._event_seq = seq
                return _failure(exc)
        child = self.env.begin(write=True, parent=txn)
        try:
            result = fn(Txn(self, child, True))
        except Exception as exc:  # the operation's own failure: roll back just this operation
            child.abort()
            self._event_seq = seq  # its events were rolled back with it: no gap in the sequence
            return _failure(exc)
        child.commit()
        return result

    def _committed(self, count: int, seconds: float) -> None:
        self.commits += 1
        self.committed_ops += count
        if count >= INLINE_MIN_BATCH:  # the cost per operation, from batches large enough to say
            self._op_seconds += 0.25 * (seconds / count - self._op_seconds)
        if self.durability == "os" and self._syncer is None:  # no sync thread (see start): sync here, in time
            now = time.monotonic()
            if now - self._last_sync >= self.sync_interval:
                self.env.sync(True)
                self._last_sync = now
        for observer in self.on_commit:
            observer(count, seconds)

    # -- writing, asynchronously: the group-commit writer -----------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the writer; `submit` may be called from `loop` afterwards."""
        if self._thread is not None or self._inline_started:
            return
        self._loop = loop or asyncio.get_running_loop()
        self._closing = False
        if self.durability == "os":
            # Durability "os" flushes every sync_interval. Done after a commit, the flush (tens of milliseconds
            # for a second of writes) would stall the writer, and the event loop itself with the inline writer;
            # a thread of its own does it meanwhile (LMDB's sync is an fdatasync, safe beside a write
            # transaction, and py-lmdb releases the GIL for it).
            self._syncer_stop.clear()
            self._syncer = threading.Thread(target=self._sync_periodically, name="chf-store-sync", daemon=True)
            self._syncer.start()
        if self.writer == "inline":
            self._inline_started = True
            return
        self._thread = threading.Thread(target=self._writer, name="chf-store-writer", daemon=True)
        self._thread.start()

    def _sync_periodically(self) -> None:
        while not self._syncer_stop.wait(self.sync_interval):
            try:
                self.env.sync(True)
            except Exception:  # logged and retried at the next interval; close() syncs once more
                log.exception("event=store_sync_failed")
            self._last_sync = time.monotonic()

    def _stop_syncer(self) -> None:
        syncer = self._syncer
        if syncer is None:
            return
        self._syncer_stop.set()
        syncer.join()
        self._syncer = None

    def _drain_inline(self) -> None:
        """One group commit of what is queued, at most INLINE_SLICE seconds of work (at the measured cost per
        operation); the rest in the next loop iteration. Between them the event loop reads its sockets: under
        overload the front-ends refuse what they cannot take in milliseconds, instead of after a commit of every
        request in flight (seconds of work in one callback)."""
        self._inline_scheduled = False
        queue = self._queue
        if not queue:
            return
        size = min(len(queue), self.max_batch, max(INLINE_MIN_BATCH, int(INLINE_SLICE / self._op_seconds)))
        batch = [queue.popleft() for _ in range(size)]
        self._commit_batch(batch)
        _resolve(batch)
        if queue and self._inline_started and self._loop is not None and not self._inline_scheduled:
            self._inline_scheduled = True
            self._loop.call_soon(self._drain_inline)

    def _drain_all(self) -> None:
        queue = self._queue
        while queue:
            batch = [queue.popleft() for _ in range(min(len(queue), self.max_batch))]
            self._commit_batch(batch)
            _resolve(batch)

    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> bool:
        """Whether `submit` is being served: the writer thread is alive, or the inline writer was started."""
        return self._inline_started or (self._thread is not None and self._thread.is_alive())

    def submit(self, fn: Op, *, nested: bool = True, affinity: Any = None) -> asyncio.Future[Any]:
        """Queue an operation for the next group commit. The returned future resolves with the operation's
        result only after the transaction holding it is durable (or with its exception; nothing was written).
        `nested=False` is for operations that write only after every check passed (see `_apply`)."""
        loop = self._loop
        if loop is None:
            raise StoreClosed("store writer is not running")
        future = loop.create_future()
        self._enqueue(_Pending(fn, future, nested))
        return future

    def submit_then(self, fn: Op, done: Callable[[Any], None], *, nested: bool = True, affinity: Any = None) -> None:
        """`submit` for callers that answer from a callback: `done(result)` runs on the event loop once the
        transaction is durable; `result` is the operation's return value or the exception it raised. No
        future, no coroutine and no extra loop callback per request: on the front-ends' hot path they cost
        as much as a third of the engine's own work."""
        self._enqueue(_Pending(fn, None, nested, done))

    def _enqueue(self, pending: _Pending) -> None:
        if self._loop is None or (self._thread is None and not self._inline_started):
            raise StoreClosed("store writer is not running")
        if len(self._queue) >= self.max_queue:
            raise StoreBusy(f"write queue full ({self.max_queue} operations waiting)")
        if self._inline_started:
            self._queue.append(pending)
            if not self._inline_scheduled:
                self._inline_scheduled = True
                self._loop.call_soon(self._drain_inline)
            return
        with self._cond:
            self._queue.append(pending)
            if len(self._queue) == 1:
                self._cond.notify()

    def _writer(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue and self._closing:
                    return
                batch: list[_Pending] = []
                queue = self._queue
                while queue and len(batch) < self.max_batch:
                    batch.append(queue.popleft())
            self._commit_batch(batch)
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, batch)

    def _commit_batch(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        for attempt in (0, 1):
            try:
                with self.env.begin(write=True) as txn:
                    self._begin_write(txn)
                    try:
                        for item in batch:
                            # The second attempt isolates every operation: the one that broke the first
                            # attempt fails alone.
                            item.result = self._apply(txn, item.fn, item.nested or attempt == 1)
                    finally:
                        self._end_write(txn)
            except _BatchAborted as exc:
                log.error("event=store_batch_retried batch=%d error=%r", len(batch), exc)
                continue
            except Exception as exc:  # the commit itself failed: nothing in the batch was written
                log.error("event=store_commit_failed batch=%d error=%r", len(batch), exc)
                for item in batch:
                    item.result = StoreError(f"commit failed: {exc}")
                return
            self._committed(len(batch), time.perf_counter() - started)
            return

    async def stop(self) -> None:
        """Let the writer finish everything queued, then stop it."""
        if self._inline_started:
            self._drain_all()
            self._inline_started = False
            await asyncio.get_running_loop().run_in_executor(None, self._stop_syncer)
            return
        thread = self._thread
        if thread is None:
            await asyncio.get_running_loop().run_in_executor(None, self._stop_syncer)
            return
        with self._cond:
            self._closing = True
            self._cond.notify()
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        self._thread = None
        await asyncio.get_running_loop().run_in_executor(None, self._stop_syncer)

    def close(self) -> None:
        if self._thread is not None:
            raise StoreError("stop the writer before closing the store")
        self._stop_syncer()
        if self.durability == "os":
            self.env.sync(True)
        self.env.close()
        self._unlock()

    def stat(self) -> dict[str, int]:
        with self.env.begin() as txn:
            out = {name.decode(): int(txn.stat(self._db[name])["entries"]) for name in _DBS}
        info = self.env.info()
        out["map_size"] = int(info["map_size"])
        out["last_page"] = int(info["last_pgno"])
        out["used_bytes"] = (out["last_page"] + 1) * int(self.env.stat()["psize"])
        return out


def _failure(exc: Exception) -> Exception:
    """An operation's exception as its caller gets it: LMDB's own (the map is full, ...) as a StoreError, so that
    callers handle store failures without knowing the backend."""
    if isinstance(exc, lmdb.Error):
        failure = StoreError(str(exc))
        failure.__cause__ = exc
        return failure
    return exc


def _resolve(batch: list[_Pending]) -> None:
    for item in batch:
        done = item.done
        if done is not None:
            try:
                done(item.result)
            except Exception:  # one caller's broken callback must not cost the others their answers
                log.exception("event=store_callback_failed")
            continue
        fut = item.future
        if fut is None or fut.done():
            continue
        if isinstance(item.result, BaseException):
            fut.set_exception(item.result)
        else:
            fut.set_result(item.result)


class _ReadContext:
    __slots__ = ("_store", "_txn")

    def __init__(self, store: Store) -> None:
        self._store = store
        self._txn: lmdb.Transaction | None = None

    def __enter__(self) -> Txn:
        self._txn = self._store.env.begin(write=False)
        return Txn(self._store, self._txn, False)

    def __exit__(self, *exc: object) -> None:
        if self._txn is not None:
            self._txn.abort()
            self._txn = None


if TYPE_CHECKING:  # mypy holds the LMDB classes to the Protocols they implement

    def _implements(store: Store, txn: Txn) -> tuple[interface.Store, interface.Txn]:
        return store, txn
