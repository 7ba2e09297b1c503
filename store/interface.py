"""What the charging core needs from a balance store: the `Store` and its transaction view `Txn`, as Protocols.

`store.lmdbstore` implements them on LMDB; a second backend implements the same Protocols and nothing in `chf/`
changes. The Protocols speak of records (`store.schema`), identifiers and sequence numbers only: how records are
keyed and laid out on disk is the backend's business (docs/architecture.md).

What every backend guarantees:
- An operation (`Op`: a function of a `Txn`) applied by the store is atomic: it takes effect whole or, if it
  raises, not at all. Operations are applied one at a time in submission order; the writes of one are visible to
  the next.
- `submit`/`submit_then` answer only once the operation's effects are durable (per the store's durability setting).
- `read()` is a consistent snapshot that never waits for the writer.
- Events appended by committed operations get consecutive sequence numbers, with no gaps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from store.schema import Account, BalanceSet, Debit, Session, Subscriber, Tenant

__all__ = [
    "Op",
    "Owner",
    "Store",
    "StoreBusy",
    "StoreClosed",
    "StoreError",
    "Sweep",
    "Txn",
]


class StoreError(Exception):
    """Base class of store failures (a commit that failed, a store that cannot be opened or is full)."""


class StoreBusy(StoreError):
    """The write queue is full: the caller answers "too busy" (docs/architecture.md)."""


class StoreClosed(StoreError):
    """The store's writer is not running (not started yet, or stopping): nothing was queued."""


# The owner of a balance set: ("line", line id) or ("account", account id).
Owner = tuple[str, int | str]


class Sweep:
    """One slice of the sweep over every balance set and session of the store (`Txn.sweep`)."""

    __slots__ = ("balances", "expired", "resume")

    def __init__(self, expired: list[str], balances: list[tuple[Owner, BalanceSet]], resume: bytes) -> None:
        self.expired = expired  # keys of the sessions whose `expires` has come
        self.balances = balances  # the balance sets met, with their owners
        # Where the next slice starts, opaque to the caller; b"" once this slice ended a full pass.
        self.resume = resume


class Txn(Protocol):
    """A typed view of one store transaction: read-only from `Store.read()`, writable inside an `Op`.

    `get_*` return None for a record that does not exist; `put_*` create or replace. Iterators are valid only
    while the transaction is open."""

    # -- counters -------------------------------------------------------------------------------------------------
    def last_event_seq(self) -> int:
        """The sequence number of the last event appended (0: none yet)."""
        ...

    def new_subscriber_id(self) -> int:
        """The next line id: 1, 2, 3... never reused."""
        ...

    def last_subscriber_id(self) -> int:
        """The last line id `new_subscriber_id` handed out (0: none yet); read-only."""
        ...

    def reserve_subscriber_ids(self, last: int) -> None:
        """Make `new_subscriber_id` return ids above `last` from now on (a store copied into this one: its lines
        keep their ids). Never lowers the counter."""
        ...

    # -- tenants and accounts -------------------------------------------------------------------------------------
    def get_tenant(self, tenant_id: str) -> Tenant | None: ...

    def put_tenant(self, tenant: Tenant) -> None: ...

    def tenants(self) -> Iterator[Tenant]: ...

    def get_account(self, account_id: str) -> Account | None: ...

    def put_account(self, account: Account) -> None: ...

    def accounts(self) -> Iterator[Account]: ...

    def lines_of_account(self, account_id: str) -> Iterator[int]:
        """The ids of the lines of an account, in id order."""
        ...

    def active_line_count(self, account_id: str) -> int:
        """How many lines of the account are active, counted from the line records as `put_subscriber` and
        `put_new_subscriber` wrote them (an index the store keeps in step with them, not a running tally)."""
        ...

    # -- lines ----------------------------------------------------------------------------------------------------
    def get_subscriber(self, line_id: int) -> Subscriber | None: ...

    def subscriber_id_by(self, kind: str, value: str) -> int | None:
        """The line id of an identity: `kind` is "imsi", "msisdn" or "iccid"."""
        ...

    def subscriber_by(self, kind: str, value: str) -> Subscriber | None: ...

    def put_subscriber(self, sub: Subscriber, previous: Subscriber | None = None) -> None:
        """Write a line and keep its identity indexes, its account membership and its account's active lines in
        step with it; `previous` is the line as read before the change (None for a new line)."""
        ...

    def put_new_subscriber(self, sub: Subscriber) -> None:
        """`put_subscriber` for a line just numbered by `new_subscriber_id` (bulk import)."""
        ...

    def release_identity(self, kind: str, value: str, line_id: int, now: int) -> None:
        """Line `line_id` gives up identity `value` ("imsi", "msisdn" or "iccid"), if the index names that line:
        the entry goes, so another line can take the identity, and the line stays findable by it in
        `released_identity`; else nothing changes. The line record itself keeps the identity (its history)."""
        ...

    def released_identity(self, kind: str, value: str) -> list[tuple[int, int]]:
        """The lines that held identity `value` and released it, as (line id, release time), oldest first."""
        ...

    def released_identities(self) -> Iterator[tuple[str, str, int, int]]:
        """Every identity a line released, as (kind, identity, line id, release time) (a store copy)."""
        ...

    def subscribers(self) -> Iterator[Subscriber]:
        """Every line, in id order (a store copy replays the identity releases in that order)."""
        ...

    def subscriber_count(self) -> int: ...

    # -- balance sets ---------------------------------------------------------------------------------------------
    def get_line_balances(self, line_id: int) -> BalanceSet | None: ...

    def put_line_balances(self, line_id: int, balances: BalanceSet) -> None: ...

    def put_line_balances_encoded(self, line_id: int, encoded: bytes) -> None:
        """`put_line_balances` with the record already encoded (`BalanceSet.encode`; bulk import)."""
        ...

    def get_account_balances(self, account_id: str) -> BalanceSet | None: ...

    def put_account_balances(self, account_id: str, balances: BalanceSet) -> None: ...

    # -- sessions -------------------------------------------------------------------------------------------------
    def get_session(self, key: str) -> Session | None: ...

    def put_session(self, session: Session, indexed: bool = False) -> None:
        """Write a session; `indexed` says it was read from this store, so its index entry is in place."""
        ...

    def delete_session(self, session: Session) -> None: ...

    def sessions_of_line(self, line_id: int) -> Iterator[Session]: ...

    def sessions(self) -> Iterator[Session]:
        """Every session of the store, open or closed (closed ones stay for their replay window)."""
        ...

    def session_count(self) -> int: ...

    def sweep(self, position: bytes, limit: int, now: int) -> Sweep:
        """The next slice of a pass over every balance set and session, of at most `limit` records, starting at
        `position` (b"": a new pass; else the `resume` of the previous slice). Sessions whose `expires` is at or
        before `now` are listed by key; balance sets are returned whole with their owner, for the caller to decide
        which need upkeep."""
        ...

    # -- idempotency ----------------------------------------------------------------------------------------------
    def get_idem(self, key: str, now: int) -> Any:
        """The answer kept under an idempotency key, or None if there is none or it expired by `now`."""
        ...

    def put_idem(self, key: str, expires: int, answer: Any) -> None: ...

    def purge_idem(self, now: int, limit: int) -> int:
        """Delete up to `limit` expired idempotency records; returns how many."""
        ...

    def idempotency_records(self) -> Iterator[tuple[str, int, Any]]:
        """Every idempotency record as (key, expires, answer), expired ones included (a store copy)."""
        ...

    # -- refundable debits (chf.core.events) ----------------------------------------------------------------------
    def put_debit(self, debit: Debit) -> None:
        """Keep (or update) what is left of a one-shot debit, under its line, rating group and event sequence."""
        ...

    def delete_debit(self, debit: Debit) -> None: ...

    def debits(self, line_id: int, rating_group: int) -> list[Debit]:
        """The kept debits of a line and rating group, oldest first."""
        ...

    def prune_debits(self, line_id: int, rating_group: int, before: int) -> int:
        """Delete the debits of a line and rating group made before `before`; returns how many."""
        ...

    def purge_debits(self, before: int, limit: int) -> int:
        """Delete up to `limit` debits of any line made before `before`; returns how many."""
        ...

    def all_debits(self) -> Iterator[Debit]:
        """Every kept debit of the store (a store copy); by line, rating group and sequence in LMDB."""
        ...

    # -- events ---------------------------------------------------------------------------------------------------
    def append_event(self, event: dict[str, Any]) -> int:
        """Append an event with the next sequence number ("seq") and a unique id ("id": "<store id>-<seq>", both
        set in `event`); returns the sequence number."""
        ...

    def append_encoded_events(self, encode: Callable[[int, str], list[bytes]]) -> int:
        """Append events the caller encodes itself: `encode(first_seq, store_id)` returns them packed, the i-th
        with "seq" first_seq + i and "id" f"{store_id}-{seq}", as `append_event` would have. Returns how many."""
        ...

    def events(self, after: int = 0, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Events with a sequence number above `after`, in sequence order."""
        ...

    def put_copied_event(self, event: dict[str, Any]) -> None:
        """Append an event read from another store as it is, with its own "seq" and "id" (a store copy keeps
        both, so export records keep their recordId), in the source's order: its "seq" must be above
        `last_event_seq()` (else StoreError), and becomes it. The source's numbering is kept, gaps included (a
        store copied from the Redis store, which numbers per partition, has gaps)."""
        ...

    # -- exporter cursors -----------------------------------------------------------------------------------------
    def get_cursor(self, name: str) -> int:
        """The sequence number of the last event the named exporter has delivered (0: none)."""
        ...

    def cursors(self) -> Iterator[tuple[str, int]]: ...

    def put_cursor(self, name: str, seq: int) -> None: ...


Op = Callable[[Txn], Any]


class Store(Protocol):
    """A balance store: typed transactions and a group-commit writer (see the module docstring for what every
    implementation guarantees)."""

    store_id: str  # stable for the life of the store; prefixes every event id
    on_commit: list[Callable[[int, float], None]]  # observers of each commit: (operations, seconds)

    def set_store_id(self, store_id: str) -> None:
        """Give the store another id, durably: a copy takes its source's (it is the same store, moved), a restored
        backup a new one (its events after the backup are lost, so its new events must not reuse their ids).
        Only while nothing serves the store; the ids of events already appended do not change."""
        ...

    # -- reading --------------------------------------------------------------------------------------------------
    def read(self) -> AbstractContextManager[Txn]:
        """A read-only snapshot; it never waits for the writer."""
        ...

    def stat(self) -> dict[str, int]:
        """Record counts by kind ("tenants", "accounts", "subscribers", "sessions", "events", ...) and sizes in bytes:
        "map_size" (the most the store can hold) and "used_bytes" (what it uses of that)."""
        ...

    # -- writing, synchronously (CLI, tests, benchmarks, maintenance) ---------------------------------------------
    def write(self, fn: Op) -> Any:
        """Apply one operation durably and return its result (or raise its error)."""
        ...

    def run_batch(self, fns: Sequence[Op]) -> list[Any]:
        """Apply operations in one durable commit, each atomically; returns each one's result or the exception
        it raised."""
        ...

    # -- writing, asynchronously: the group-commit writer ---------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the writer; `submit` may be called from `loop` afterwards."""
        ...

    async def stop(self) -> None:
        """Apply everything queued, then stop the writer."""
        ...

    def close(self) -> None: ...

    @property
    def running(self) -> bool:
        """Whether `submit` is being served."""
        ...

    def queued(self) -> int:
        """Operations waiting for the writer."""
        ...

    def submit(self, fn: Op, *, nested: bool = True) -> asyncio.Future[Any]:
        """Queue an operation; the future resolves with its result once it is durable, or with its exception
        (nothing written). Raises StoreBusy when the queue is full, StoreClosed when the writer is not running.
        `nested=False` is for operations that write only after every check passed: the store may then skip
        isolating them (a cost on the hot path), and must still leave no trace of one that fails."""
        ...

    def submit_then(self, fn: Op, done: Callable[[Any], None], *, nested: bool = True) -> None:
        """`submit` for callers that answer from a callback: `done(result or exception)` runs on the event loop
        once the operation is durable."""
        ...
