"""Hot backup and restore of the LMDB store (`chf backup`, `chf restore`; README "Backup and restore").

A backup is a directory holding `data.mdb`, a compacted copy of the store made from one read transaction (a
consistent snapshot that never blocks the writer), and `chf-backup.json`, its manifest: the store id, schema,
counters, and the number of records and a digest of the keys and values of every sub-database, all taken from
that same transaction. The copy appends every sub-database's records in key order into a new environment (full
pages, no free ones), in the same pass that digests them; not LMDB's own compacting copy (MDB_CP_COMPACT), which in
LMDB 0.9.36 (py-lmdb 3.0) crashes with SIGSEGV on a DUPFIXED sub-database whose duplicates outgrew a page, as
`account_active` does for an account of a few hundred active lines. The copy is written under a temporary name
beside its final one, fsync'd, checked (it opens, every record decodes, the indexes agree with the records, and
every count and digest equals the snapshot's), then renamed and the directory fsync'd.

A restore checks the backup against its manifest, copies it beside the store, checks the copy again, gives it a
new store id (unless asked to keep it) and swaps it in with one atomic rename (RENAME_EXCHANGE); the previous store
is kept aside under `<store>.pre-restore-<UTC time>`. It holds the store directory's lock exclusively
(lmdbstore.lock_store_dir): it refuses while any process has the store open, and a process that opens the store
meanwhile waits for the swap.

Only store/ knows the key layout; this module checks it as store/lmdbstore.py writes it.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import lmdb

from store.lmdbstore import (
    _DBS,
    _DUPSORT,
    Store,
    StoreError,
    StoreLocked,
    _debit_key,
    _released_key,
    _u64,
    lock_store_dir,
)
from store.schema import ACTIVE, SCHEMA_VERSION, Account, BalanceSet, Debit, Session, Subscriber, Tenant, unpack

__all__ = ["MANIFEST", "backup", "restore", "verify_backup"]

MANIFEST = "chf-backup.json"
MANIFEST_FORMAT = 1
DATA_FILE = "data.mdb"
PROBLEMS_SHOWN = 20  # problems listed by name; all of them are counted
CHUNK = 20_000  # records read, digested and (for a backup) appended to the copy at a time

# A sink of records read: (sub-database, [(key, value), ...] in key order). The backup's copy is one.
Sink = Callable[[bytes, list[tuple[bytes, bytes]]], None]


# ----------------------------------------------------------------------------------------------------------------------
# Reading a whole environment: counts, digests and (optionally) every record checked
# ----------------------------------------------------------------------------------------------------------------------
class Problems:
    """What a check found wrong: the first PROBLEMS_SHOWN described, all counted."""

    def __init__(self) -> None:
        self.shown: list[str] = []
        self.count = 0

    def add(self, text: str) -> None:
        self.count += 1
        if len(self.shown) < PROBLEMS_SHOWN:
            self.shown.append(text)

    def as_list(self) -> list[str]:
        more = self.count - len(self.shown)
        return self.shown + ([f"... and {more} more"] if more > 0 else [])


class _Reader:
    """One pass over every sub-database of one read transaction."""

    def __init__(self, txn: Any, dbs: dict[bytes, Any], check: bool, sink: Sink | None = None) -> None:
        self.txn = txn
        self.dbs = dbs
        self.check = check
        self.sink = sink
        self.problems = Problems()
        self.counts: dict[str, int] = {}
        self.digests: dict[str, str] = {}
        meta = dbs[b"meta"]
        self.event_seq = _int(txn.get(b"event_seq", db=meta))
        self.next_subscriber = _int(txn.get(b"next_subscriber", db=meta))
        self.last_event = 0
        # What the indexes must hold, counted from the records: with every record's own entries checked, equal
        # counts mean the indexes hold nothing else.
        self.indexed = dict.fromkeys(
            ("idx_imsi", "idx_msisdn", "idx_iccid", "idx_released", "account_lines", "account_active", "sessions"), 0
        )
        self.active = txn.cursor(db=dbs[b"account_active"]) if check else None
        checks: dict[bytes, Callable[[bytes, bytes], None]] = {
            b"tenants": self._tenant,
            b"accounts": self._account,
            b"subscribers": self._subscriber,
            b"balances": self._balance,
            b"idem": self._idem,
            b"debits": self._debit,
            b"events": self._event,
            b"cursors": self._cursor,
        }
        self.checks = checks

    def run(self) -> dict[str, Any]:
        for name in _DBS:
            self._pass(name)
        meta = self.dbs[b"meta"]
        schema = self.txn.get(b"schema", db=meta)
        store_id = self.txn.get(b"store_id", db=meta)
        if self.check:
            self._check_meta(schema, store_id)
        return {
            "store_id": bytes(store_id).decode() if store_id is not None else None,
            "schema": int(schema) if schema is not None else None,
            "last_event_seq": self.event_seq,
            "last_subscriber_id": self.next_subscriber,
            "counts": self.counts,
            "digests": self.digests,
        }

    def _pass(self, name: bytes) -> None:
        digest = hashlib.blake2b(digest_size=16)
        check = self.checks.get(name) if self.check else None
        count = 0
        with self.txn.cursor(db=self.dbs[name]) as cur:
            pairs = iter(cur)
            while chunk := list(itertools.islice(pairs, CHUNK)):
                count += len(chunk)
                for key, value in chunk:
                    digest.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big"))
                    digest.update(value)
                    if check is not None:
                        try:
                            check(key, value)
                        except Exception as exc:  # a record that does not decode: reported, the pass goes on
                            self.problems.add(f"{name.decode()} {key!r}: {exc}")
                if self.sink is not None:
                    self.sink(name, chunk)
        self.counts[name.decode()] = count
        self.digests[name.decode()] = digest.hexdigest()

    def _check_meta(self, schema: bytes | None, store_id: bytes | None) -> None:
        if schema is None or int(schema) != SCHEMA_VERSION:
            self.problems.add(f"meta: schema {schema!r}, this code reads {SCHEMA_VERSION}")
        if not store_id:
            self.problems.add("meta: no store id")
        if self.last_event != self.event_seq:
            self.problems.add(f"events: the last is {self.last_event}, the counter says {self.event_seq}")
        for name, expected in self.indexed.items():
            if self.counts[name] != expected:
                self.problems.add(f"{name}: {self.counts[name]} entries, the records need {expected}")

    def _get(self, db: bytes, key: bytes) -> Any:
        return self.txn.get(key, db=self.dbs[db])

    def _require(self, ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(what)

    # -- one checker per sub-database (key, value) ------------------------------------------------------------------
    def _tenant(self, key: bytes, value: bytes) -> None:
        self._require(Tenant.decode(value).id == key.decode(), "key and id differ")

    def _account(self, key: bytes, value: bytes) -> None:
        self._require(Account.decode(value).id == key.decode(), "key and id differ")

    def _subscriber(self, key: bytes, value: bytes) -> None:
        sub = Subscriber.decode(value)
        account = sub.account.encode()
        # Counted before any check: a failed check must not shift the counts.
        self.indexed["account_lines"] += 1
        active = sub.state == ACTIVE
        if active:
            self.indexed["account_active"] += 1
        unindexed = [kind for kind in ("imsi", "msisdn", "iccid") if not self._identity(sub, kind, key)]
        self._require(not unindexed, f"{', '.join(unindexed)} neither indexed nor released")
        self._require(_u64(sub.id) == key, "key and id differ")
        self._require(sub.id <= self.next_subscriber, f"line id {sub.id} above the counter {self.next_subscriber}")
        self._require(self._get(b"account_lines", account + b"\x00" + key) is not None, "not listed")
        self._require(self._get(b"accounts", account) is not None, f"no account {sub.account}")
        if active and self.active is not None:
            self._require(self.active.set_key_dup(account, key), "not among its account's active lines")

    def _identity(self, sub: Subscriber, kind: str, key: bytes) -> bool:
        """Whether the line's `kind` identity (if it has one) is indexed to it or was released by it, counted."""
        identity = getattr(sub, kind)
        if not identity:
            return True
        if self._get(b"idx_" + kind.encode(), identity.encode()) == key:
            self.indexed["idx_" + kind] += 1
            return True
        if self._get(b"idx_released", _released_key(kind, identity) + key) is not None:
            self.indexed["idx_released"] += 1  # a terminated line that gave it up to a new line
            return True
        self.indexed["idx_" + kind] += 1  # it should be there: counted, and reported by the caller
        return False

    def _balance(self, key: bytes, value: bytes) -> None:
        if key[:1] == b"L" and key[9:10] == b"\x01":
            self.indexed["sessions"] += 1
            session = Session.decode(value)
            self._require(session.key.encode() == key[10:], "key and session key differ")
            self._require(_u64(session.subscriber) == key[1:9], "session of another line")
            self._require(self._get(b"sessions", key[10:]) == key[:9], "session not indexed")
            return
        self._require(key[-1:] == b"\x00", "not a balance set key")
        BalanceSet.decode(value)
        if key[:1] == b"L":
            self._require(self._get(b"subscribers", key[1:9]) is not None, "balance set of no line")
        else:
            self._require(key[:1] == b"A", "unknown owner kind")
            self._require(self._get(b"accounts", key[1:-1]) is not None, "balance set of no account")

    def _idem(self, key: bytes, value: bytes) -> None:
        expires, _ = unpack(value)
        self._require(isinstance(expires, int), "expiry is not an integer")

    def _debit(self, key: bytes, value: bytes) -> None:
        debit = Debit.decode(value)
        self._require(_debit_key(debit.line, debit.rating_group, debit.seq) == key, "key and debit differ")

    def _event(self, key: bytes, value: bytes) -> None:
        # Sequence numbers increase (keys are sorted); a store copied from the Redis store keeps its gaps.
        seq = self.last_event = int.from_bytes(key, "big")
        event = unpack(value)
        self._require(event.get("seq") == seq, f"holds event {event.get('seq')!r}")

    def _cursor(self, key: bytes, value: bytes) -> None:
        self._require(len(value) == 8 and _int(value) <= self.event_seq, "beyond the last event")


def _int(raw: bytes | None) -> int:
    return int.from_bytes(raw, "big") if raw else 0


def read_environment(
    env: lmdb.Environment,
    txn: Any = None,
    dbs: dict[bytes, Any] | None = None,
    *,
    check: bool,
    sink: Sink | None = None,
) -> tuple[dict[str, Any], Problems]:
    """The summary of an environment (in `txn` with the handles `dbs` of an open store, else a new read
    transaction of a copy) and, with `check`, what is wrong with it; every record read goes to `sink` too."""
    if dbs is None:
        dbs = {}
        missing = Problems()
        for name in _DBS:
            try:
                dbs[name] = env.open_db(name, create=False, dupsort=name in _DUPSORT, dupfixed=name in _DUPSORT)
            except lmdb.NotFoundError:
                missing.add(f"sub-database {name.decode()} is missing")
        if missing.count:
            return {}, missing
    own = txn is None
    if own:
        txn = env.begin()
    try:
        reader = _Reader(txn, dbs, check, sink)
        return reader.run(), reader.problems
    finally:
        if own:
            txn.abort()


def compare(summary: dict[str, Any], expected: dict[str, Any], problems: Problems, against: str) -> None:
    """Every count, digest, counter and the store id of `summary` equal `expected` (a snapshot or a manifest)."""
    for field in ("store_id", "schema", "last_event_seq", "last_subscriber_id"):
        if summary.get(field) != expected.get(field):
            problems.add(f"{field}: {summary.get(field)!r}, {against} says {expected.get(field)!r}")
    for name in _DBS:
        db = name.decode()
        count, want = summary["counts"].get(db), expected.get("counts", {}).get(db)
        if count != want:
            problems.add(f"{db}: {count} records, {against} says {want}")
        elif summary["digests"].get(db) != expected.get("digests", {}).get(db):
            problems.add(f"{db}: the records differ from what {against} says (digest)")


def _open_copy(path: str) -> lmdb.Environment:
    """A backup or a staged copy, read-only and without LMDB's lock file: no other process uses it."""
    if not os.path.isfile(os.path.join(path, DATA_FILE)):
        raise StoreError(f"{path}: no {DATA_FILE}: not an LMDB store or backup")
    try:
        return lmdb.open(path, readonly=True, lock=False, max_dbs=len(_DBS) + 2, readahead=False)
    except lmdb.Error as exc:
        raise StoreError(f"{path}: {exc}") from exc


def verify_backup(path: str, expected: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Open the backup at `path`, check every record, and compare it with `expected` (default: its manifest).
    Returns its summary and the problems found (none: it is good)."""
    if expected is None:
        expected = read_manifest(path)
    env = _open_copy(path)
    try:
        summary, problems = read_environment(env, check=True)
    finally:
        env.close()
    if summary and expected is not None:
        compare(summary, expected, problems, "the manifest" if "format" in expected else "the snapshot")
    elif summary:
        problems.add(f"no {MANIFEST}: the records were checked, not compared with the snapshot they came from")
    return summary, problems.as_list()


def read_manifest(path: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: {MANIFEST} cannot be read: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise StoreError(f"{path}: {MANIFEST} is not a backup manifest of format {MANIFEST_FORMAT}")
    return manifest


# ----------------------------------------------------------------------------------------------------------------------
# Backup
# ----------------------------------------------------------------------------------------------------------------------
def backup(store: Store, dest: str) -> dict[str, Any]:
    """A consistent, compacted copy of `store` (open, possibly serving) in the new directory `dest`, with its
    manifest; checked before it takes its name. Returns the manifest and the timings."""
    dest = os.path.abspath(dest)
    if os.path.lexists(dest):
        raise StoreError(f"{dest} exists: a backup never overwrites anything")
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(dest) + ".", suffix=".partial", dir=parent)
    try:
        started = time.monotonic()
        with store.env.begin() as txn:  # the snapshot: the copy and the manifest are both of it
            copy = _Copy(tmp, int(store.env.info()["map_size"]))
            try:
                snapshot, _ = read_environment(store.env, txn, store._db, check=False, sink=copy)
            finally:
                copy.close()
        copied = time.monotonic()
        manifest = {
            "format": MANIFEST_FORMAT,
            "created": int(time.time()),
            "source": os.path.abspath(store.path),
            **snapshot,
        }
        _write_json(os.path.join(tmp, MANIFEST), manifest)
        _fsync_path(tmp)
        _, problems = verify_backup(tmp, snapshot)
        if problems:
            raise StoreError(f"the backup in {tmp} failed its check: " + "; ".join(problems))
        os.rename(tmp, dest)
        _fsync_path(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finished = time.monotonic()
    return {
        **manifest,
        "path": dest,
        "bytes": os.path.getsize(os.path.join(dest, DATA_FILE)),
        "store_bytes": os.path.getsize(os.path.join(store.path, DATA_FILE)),
        "seconds": {"copy": round(copied - started, 3), "verify": round(finished - copied, 3)},
        "verified": True,
    }


class _Copy:
    """The compacted copy: every sub-database's records appended in key order (MDB_APPEND, MDB_APPENDDUP for
    `account_active`) to a new environment, one write transaction per chunk, synced once at the end."""

    def __init__(self, path: str, map_size: int) -> None:
        self.env = lmdb.open(
            path, map_size=map_size, max_dbs=len(_DBS) + 2, lock=False, sync=False, metasync=False, readahead=False
        )
        self.dbs = {name: self.env.open_db(name, dupsort=name in _DUPSORT, dupfixed=name in _DUPSORT) for name in _DBS}

    def __call__(self, name: bytes, chunk: list[tuple[bytes, bytes]]) -> None:
        dup = name in _DUPSORT
        with self.env.begin(write=True) as txn, txn.cursor(db=self.dbs[name]) as cur:
            _, added = cur.putmulti(chunk, dupdata=dup, append=True)
        if added != len(chunk):
            raise StoreError(f"{name.decode()}: {len(chunk) - added} records out of order in the copy")

    def close(self) -> None:
        try:
            self.env.sync(True)
        finally:
            self.env.close()


def _write_json(path: str, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------------------------
# Restore
# ----------------------------------------------------------------------------------------------------------------------
def restore(source: str, store_path: str, *, keep_id: bool = False) -> dict[str, Any]:
    """Put the backup `source` in place of the store at `store_path`, which no process may have open; the
    previous store, if any, is kept aside. Returns what was done."""
    source = os.path.abspath(source)
    store_path = os.path.abspath(store_path)
    manifest = read_manifest(source)
    if manifest is None:
        raise StoreError(f"{source}: no {MANIFEST}: not a backup made by chf backup")
    _, problems = verify_backup(source, manifest)
    if problems:
        raise StoreError(f"the backup {source} failed its check: " + "; ".join(problems))
    parent = os.path.dirname(store_path)
    os.makedirs(store_path, exist_ok=True)
    try:
        lock = lock_store_dir(store_path, exclusive=True, wait=0)
    except StoreLocked:
        raise StoreLocked(
            f"store {store_path} is open in another process (chf serve, or a chf command): stop it first"
        ) from None
    try:
        aside = _aside_name(store_path) if os.path.exists(os.path.join(store_path, DATA_FILE)) else None
        stage = tempfile.mkdtemp(prefix=os.path.basename(store_path) + ".", suffix=".restoring", dir=parent)
        try:
            store_id = _stage(source, stage, manifest, keep_id)
            _same_owner(stage, store_path)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)  # nothing was swapped: only the staged copy goes
            raise
        _swap(stage, store_path, aside)
    finally:
        os.close(lock)
    return {
        "restored": store_path,
        "from": source,
        "backup_created": manifest.get("created"),
        "previous_store": aside,
        "store_id": store_id,
        "backup_store_id": manifest["store_id"],
        "last_event_seq": manifest["last_event_seq"],
        "counts": manifest["counts"],
        "verified": True,
    }


def _stage(source: str, stage: str, manifest: dict[str, Any], keep_id: bool) -> str:
    """Copy the backup into `stage`, check the copy, give it its store id; returns the id."""
    data = os.path.join(stage, DATA_FILE)
    shutil.copyfile(os.path.join(source, DATA_FILE), data)
    _fsync_path(data)
    _, problems = verify_backup(stage, manifest)
    if problems:
        raise StoreError("the copy of the backup failed its check: " + "; ".join(problems))
    store_id: str = manifest["store_id"]
    if not keep_id:
        store = Store(stage)
        try:
            store.set_store_id(secrets.token_hex(4))
            store_id = store.store_id
        finally:
            store.close()
    _fsync_path(stage)
    return store_id


def _same_owner(stage: str, store_path: str) -> None:
    """Give the staged store the mode and, run as root, the owner of the directory it replaces: a restore run as
    root must not leave a store that `chf serve`, run as its own user, cannot open."""
    like = os.stat(store_path)
    os.chmod(stage, like.st_mode & 0o7777)
    if os.geteuid() != 0:
        return
    for name in [stage, *(os.path.join(stage, entry) for entry in os.listdir(stage))]:
        os.chown(name, like.st_uid, like.st_gid)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Swap two directories in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where not supported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system or kernel cannot
        return False
    raise OSError(errno, os.strerror(errno), b)


def _aside_name(store_path: str) -> str:
    """Where the previous store goes: `<store>.pre-restore-<UTC time>`, made unique."""
    base = f"{store_path}.pre-restore-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    name, n = base, 1
    while os.path.lexists(name):
        n += 1
        name = f"{base}-{n}"
    return name


def _swap(stage: str, store_path: str, aside: str | None) -> None:
    """Put `stage` at `store_path`; the directory that was there goes to `aside` (or away: it held no store)."""
    parent = os.path.dirname(store_path)
    if _exchange(stage, store_path):
        # `stage` now names the previous directory (with the lock this process holds).
        if aside is not None:
            try:
                os.rename(stage, aside)
            except OSError as exc:
                raise StoreError(f"restored, but the previous store stays in {stage}: {exc}") from exc
        else:
            shutil.rmtree(stage)
    else:
        # Two renames. An opener that comes between them waits (lmdbstore.lock_store_dir), unless it creates the
        # missing directory itself first (Store does, for a new store): the second rename then fails, and the
        # previous store is in `aside`. File systems without RENAME_EXCHANGE only (ext4, XFS, btrfs, tmpfs have it).
        if aside is not None:
            os.rename(store_path, aside)
        else:
            shutil.rmtree(store_path)
        os.rename(stage, store_path)
    _fsync_path(parent)
