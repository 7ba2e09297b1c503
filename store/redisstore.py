"""The Redis Cluster balance store: the Protocols of store.interface on a Redis Cluster (issue 13).

Partitions and keys
-------------------
The store's records are spread over `partitions` partitions (fixed when the store is created, 256 by default).
Partition i has a hash tag `{<namespace>.<i>.<k>}` chosen so that its hash slot lies in the i-th equal slice of
the 16384 slots: with slots assigned in equal ranges (`redis-cli --cluster create`), the partitions spread evenly
over the primaries, and resharding moves whole partitions. An account belongs to partition crc32(account id) % P,
and everything of an account lives under that partition's tag:

    a:<account>  Account        ab:<account>  its BalanceSet     al:<account>  zset of its line ids
    l:<line>     Subscriber     lb:<line>     its BalanceSet     ls:<line>     zset of its session keys
    s:<key>      Session        sess          zset session key -> expiry (sweep, sessions())
    accts        zset of the partition's account ids            lines         zset of its line ids
    im:<key>     idempotency record [expires, answer] (expires by itself: PXAT)
    dv:<line>:<rg> / d:<line>:<rg>   the version and the hash (event counter -> Debit) of a line's debits
    ev           the partition's event stream (entry id "<c>-0")   evc   its event counter c
    lock         a cross-partition transaction holding the partition (see below)

so that one charging request (a session, its line, the line's and the account's balance sets, the stored
answers inside the session, the events) is a single-slot transaction. Global records live under `{<namespace>}`
(meta, tenants, the line counter, exporter cursors). Lookups from any node go through pointers, each under the
partition of what it is looked up by:

    sx:<session key> -> [account, line]     ln:<line> -> account     ip:<idempotency key> -> partition
    i:<imsi|msisdn|iccid>:<value> -> line id   (the identity indexes: transactional, see below)

Transactions
------------
An operation (a function of a `Txn`) reads with plain GETs (a partition's records in one MGET) and buffers its
writes. Every record is stored behind an 8-byte version stamp (random per commit). The commit is one Lua script
(EVALSHA) on the partition's primary: it checks that every record read in that partition still has the version
read (optimistic concurrency), then applies the writes and appends the events to the partition's stream, all
atomically; a conflict runs the operation again from its first read (the rating stays in Python). An operation
that writes several partitions (provisioning: a new line also writes its identity indexes and the line
counter; a line moving between accounts) commits them with a two-phase commit: each partition is locked and
checked (PREPARE), the decision is recorded in the first partition (DECIDE, the commit point), then each
partition is applied and unlocked (APPLY). A lock left by a crashed node is resolved by whoever meets it after
its deadline: rolled forward when the decision was recorded, released otherwise. Reads in partitions an
operation does not write are not checked: they are lookups (an identity, a pointer) whose target record is read
and checked in the partition written.

Pointers (sx, ln, ip) are written before the commit and are hints: a pointer whose record does not exist (a
commit that failed) reads as nothing.

Durability: the commit script and then `WAIT <min_replicas_acked> <wait_timeout>` go down one connection in
one round trip (in a batch, store.redisbatch: the batch's scripts for one primary, then one WAIT, which confirms
every write the connection sent before it); an operation is answered only when both returned and the replicas
confirmed. A commit whose
outcome is unknown (connection lost) or not confirmed by enough replicas is answered StoreBusy (Diameter 3004,
HTTP 503): a client retry is answered from the stored answer, so nothing is charged twice.

Events: the script takes the partition's next event counters c (INCRBY) and appends each event as stream entry
"c-0"; the event's sequence number is c * P + partition, its id "<store id>-<seq>". Sequence numbers are
unique in the store and increase with commit order within a partition (so within an account), but they are not
consecutive across the store and there is no total order of commits across partitions: a global gap-free
counter would be one hot key every commit in the cluster waits on. `events()` merges the partitions by
sequence number; exporters read each partition's stream with a consumer group (`EventFeed`).
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import hashlib
import heapq
import logging
import os
import queue
import random
import re
import secrets
import socket
import ssl
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import hiredis
import msgpack
from hiredis import pack_command
from redis._parsers.base import BaseParser as _PARSER
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    AuthenticationError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from store import interface
from store.interface import Owner, StoreBusy, StoreClosed, StoreError, Sweep
from store.schema import (
    ACTIVE,
    SCHEMA_VERSION,
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

__all__ = ["RedisStore", "RedisTxn", "StoreBusy", "StoreClosed", "StoreError"]

log = logging.getLogger("chf.store.redis")

SLOTS = 16384
_STORE_ID = re.compile(r"[A-Za-z0-9_]{1,32}")
ABSENT = b""  # the version of a record that does not exist
# Provisional sequence numbers of the events of an operation not committed yet (chf.core.events keeps a debit's
# event sequence and id before the commit assigns them): far above any real one, told apart by `_MARK`.
_MARK = 1 << 62

# Where the event counter and entries of one partition go in the commit's argument (see _COMMON_LUA).
_COMMON_LUA = r"""
local function checks(c)
  for i = 1, #c, 2 do
    if redis.call('GETRANGE', c[i], 0, 7) ~= c[i + 1] then return c[i] end
  end
  return nil
end
local function apply(w)
  local s = w[1]
  for i = 1, #s, 3 do
    if s[i + 2] > 0 then redis.call('SET', s[i], s[i + 1], 'PXAT', s[i + 2])
    else redis.call('SET', s[i], s[i + 1]) end
  end
  for _, k in ipairs(w[2]) do redis.call('DEL', k) end
  local z = w[3]
  for i = 1, #z, 4 do
    if z[i] == 1 then redis.call('ZADD', z[i + 1], z[i + 3], z[i + 2])
    else redis.call('ZREM', z[i + 1], z[i + 2]) end
  end
  local parts, part = w[11], w[12]
  local cp = w[4]
  for i = 1, #cp, 3 do  -- events copied from another store: their own sequence number and id
    local n = redis.call('INCR', w[6])
    redis.call('XADD', w[5], string.format('%d-0', n), 'e', cp[i], 's', string.format('%d', cp[i + 1]), 'i', cp[i + 2])
    local top = tonumber(redis.call('GET', w[13]) or '0')
    if cp[i + 1] > top then redis.call('SET', w[13], string.format('%d', cp[i + 1])) end
  end
  local ev = w[7]
  local c = 0
  local first = 0
  if #ev > 0 then
    first = tonumber(redis.call('GET', w[6]) or '0')
    -- Above every sequence number copied into the store (set_store_id spreads their maximum to each partition).
    local floor = tonumber(redis.call('GET', w[14]) or '0')
    local least = math.floor((floor - part) / parts)
    if first < least then first = least end
    c = first + #ev
    redis.call('SET', w[6], string.format('%d', c))
    redis.call('SET', w[15], string.format('%d', c * parts + part))
    for i, e in ipairs(ev) do redis.call('XADD', w[5], string.format('%d-0', first + i), 'e', e) end
  end
  local d = w[8]
  for i = 1, #d, 3 do
    redis.call('HSET', d[i], string.format('%d', (first + d[i + 1]) * parts + part), d[i + 2])
  end
  d = w[9]
  for i = 1, #d, 2 do redis.call('HDEL', d[i], d[i + 1]) end
  d = w[10]
  for i = 1, #d, 3 do
    if d[i + 1] ~= '' then redis.call('HSET', d[i], d[i + 1], d[i + 2]) end
  end
  return c
end
"""

# KEYS: every key the commit touches (the first is the partition's lock). ARGV[1]: [checks, writes].
_COMMIT_LUA = (
    _COMMON_LUA
    + r"""
local a = cmsgpack.unpack(ARGV[1])
local lock = redis.call('GET', KEYS[1])
if lock then return {'LOCKED', lock} end
local bad = checks(a[1])
if bad then return {'CONFLICT', bad} end
return {'OK', apply(a[2])}
"""
)

# KEYS[1]: the lock. ARGV: [checks] packed, the lock value.
_PREPARE_LUA = (
    _COMMON_LUA
    + r"""
local a = cmsgpack.unpack(ARGV[1])
local lock = redis.call('GET', KEYS[1])
if lock then return {'LOCKED', lock} end
local bad = checks(a)
if bad then return {'CONFLICT', bad} end
redis.call('SET', KEYS[1], ARGV[2])
return {'OK', 0}
"""
)

# KEYS[1]: the home partition's lock, KEYS[2]: the intent. ARGV[1]: the lock value, ARGV[2]: the intent.
_DECIDE_LUA = r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'ABORTED', 0} end
redis.call('SET', KEYS[2], ARGV[2])
return {'OK', 0}
"""

# KEYS[1]: the lock, then the keys written. ARGV[1]: the lock value, ARGV[2]: the writes packed.
_APPLY_LUA = (
    _COMMON_LUA
    + r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'GONE', 0} end
local c = apply(cmsgpack.unpack(ARGV[2]))
redis.call('DEL', KEYS[1])
return {'OK', c}
"""
)

# KEYS[1]: the lock. ARGV[1]: the lock value.
_RELEASE_LUA = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""

# KEYS[1]: a lease. ARGV: owner, milliseconds. Take it when free or ours; returns 1 when held.
_LEASE_LUA = r"""
local owner = redis.call('GET', KEYS[1])
if owner == false or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


def slot_of(key: str | bytes) -> int:
    """The hash slot of a key (CRC16-XMODEM of its hash tag, as Redis Cluster computes it)."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return binascii.crc_hqx(raw, 0) % SLOTS


def _crc16(data: bytes) -> int:
    return binascii.crc_hqx(data, 0)


def partition_tags(namespace: str, partitions: int) -> list[str]:
    """The hash tag of each partition: the first `<namespace>.<i>.<k>` whose slot lies in the i-th slice."""
    tags = []
    for i in range(partitions):
        low, high = i * SLOTS // partitions, (i + 1) * SLOTS // partitions
        k = 0
        while True:
            tag = f"{namespace}.{i}.{k}"
            if low <= _crc16(tag.encode()) % SLOTS < high:
                break
            k += 1
        tags.append(tag)
    return tags


def _part(value: str | bytes, partitions: int) -> int:
    raw = value.encode() if isinstance(value, str) else value
    return zlib.crc32(raw) % partitions


class Retry(Exception):
    """The operation met a concurrent change (a version that moved, a locked partition): run it again."""

    def __init__(self, reason: str, wait: float = 0.0) -> None:
        super().__init__(reason)
        self.wait = wait


class Miss(BaseException):
    """A read of a record its batch has not fetched yet (store.redisbatch): the operation stops here and runs again
    once the batch has read `keys` (of hash slot `slot`). A BaseException, so that no `except Exception` of an
    operation takes it for the operation's own failure."""

    __slots__ = ("keys", "slot")

    def __init__(self, slot: int, keys: list[str]) -> None:
        super().__init__(slot)
        self.slot = slot
        self.keys = keys


class _Writes:
    """What one operation writes into one partition (the argument of its commit or APPLY script)."""

    __slots__ = ("copied", "debit_sets", "debits", "dels", "events", "hdels", "keys", "sets", "zops")

    def __init__(self) -> None:
        self.sets: list[Any] = []  # key, value, pxat (0: none)
        self.dels: list[str] = []
        self.zops: list[Any] = []  # 1 (ZADD) or 0 (ZREM), key, member, score: in the order they were made
        self.copied: list[Any] = []  # event, sequence number, id (events copied from another store)
        self.events: list[bytes] = []
        self.debits: list[Any] = []  # hash key, 1-based index of the event, record
        self.hdels: list[Any] = []  # hash key, field
        self.debit_sets: list[Any] = []  # hash key, field, record (debits that already have their sequence)
        self.keys: set[str] = set()

    def payload(self, tag: str, partitions: int, p: int) -> list[Any]:
        return [
            self.sets,
            self.dels,
            self.zops,
            self.copied,
            f"{{{tag}}}:ev",
            f"{{{tag}}}:evc",
            self.events,
            self.debits,
            self.hdels,
            self.debit_sets,
            partitions,
            max(p, 0),
            f"{{{tag}}}:evmax",  # the highest copied sequence number
            f"{{{tag}}}:evfloor",  # new sequence numbers stay above it
            f"{{{tag}}}:evlast",  # the last new sequence number
        ]


class RedisTxn:
    """A typed view of one operation on the cluster: reads go to Redis (and are remembered with their version),
    writes are buffered until the commit. Read-only from `RedisStore.read()`."""

    def __init__(self, store: RedisStore, write: bool) -> None:
        self._store = store
        self.write = write
        self.wrote = False
        self._versions: dict[str, bytes] = {}  # key -> version read (ABSENT: not there)
        self._values: dict[str, bytes | None] = {}  # key -> payload read or written (None: absent or deleted)
        self._dirty: dict[str, tuple[int, bytes | None, int]] = {}  # key -> (partition, payload or None, pxat)
        self._zops: list[tuple[int, str, float | None, str]] = []  # (partition, key, score or None: ZREM, member)
        self._events: list[tuple[int, bytes]] = []  # (partition, event without seq and id)
        self._debits: list[tuple[int, str, int, bytes]] = []  # (partition, hash key, op event index, record)
        self._debit_sets: list[tuple[int, str, str, bytes]] = []
        self._hdels: list[tuple[int, str, str]] = []
        self._checked: set[int] = set()  # partitions whose lock was checked
        self._line_acct: dict[int, str] = {}  # line -> account, as this operation knows it
        self._ahead: dict[str, bytes] = {}  # pointers to write before the commit
        self._idem_absent: dict[str, None] = {}  # idempotency keys found absent (no pointer)
        self._idem_put: dict[str, tuple[int, bytes]] = {}  # key -> (expires, record)
        self._next_line: int | None = None
        self._copied: list[tuple[int, bytes, int, str]] = []  # (partition, event, its seq, its id)
        self._copy_floor: int | None = None
        # In a batch (store.redisbatch): the records the batch has read, raw (version stamp first; None: absent).
        # A read of anything else raises Miss instead of going to the network.
        self._seed: dict[str, bytes | None] | None = None

    # -- keys -------------------------------------------------------------------------------------------------------
    def _k(self, p: int, suffix: str) -> str:
        return f"{{{self._store.tag(p)}}}:{suffix}"

    def _g(self, suffix: str) -> str:
        return f"{{{self._store.namespace}}}:{suffix}"

    def _acct_part(self, account_id: str) -> int:
        return self._store.account_part(account_id)

    # -- reading records ---------------------------------------------------------------------------------------------
    def _load(self, p: int, keys: Sequence[str]) -> None:
        """Read the records `keys` of partition `p` (-1: global) in one round trip, with the partition's lock."""
        wanted = [k for k in keys if k not in self._values]
        check_lock = self.write and p not in self._checked
        if not wanted and not check_lock:
            return
        fetch = list(wanted)
        if check_lock:
            fetch.append(self._k(p, "lock"))
        store = self._store
        seed = self._seed
        if seed is not None:
            missing = [k for k in fetch if k not in seed]
            if missing:
                raise Miss(store.slot_of_partition(p), missing)
            raws = [seed[k] for k in fetch]
        else:
            raws = store.mget(fetch) if p < 0 else list(store._slot_get(store._slots[p], fetch))
        if check_lock:
            lock = raws.pop()
            if lock is not None:
                self._store.locked(p, lock)  # raises Retry (after resolving a lock whose holder died)
            self._checked.add(p)
        for key, raw in zip(wanted, raws, strict=True):
            if raw is None:
                self._versions[key] = ABSENT
                self._values[key] = None
            else:
                self._versions[key] = raw[:8]
                self._values[key] = raw[8:]

    def _get(self, p: int, key: str) -> bytes | None:
        if key not in self._values:
            self._load(p, [key])
        return self._values[key]

    def _set(self, p: int, key: str, value: bytes | None, pxat: int = 0) -> None:
        self.wrote = True
        self._values[key] = value
        self._dirty[key] = (p, value, pxat)

    def _zadd(self, p: int, key: str, score: float, member: str) -> None:
        self.wrote = True
        self._zops.append((p, key, score, member))

    def _zrem(self, p: int, key: str, member: str) -> None:
        self.wrote = True
        self._zops.append((p, key, None, member))

    def _prefetch_account(self, account_id: str, line_id: int | None, session_key: str | None = None) -> None:
        """Everything of one request in one MGET: account, its balance set, the line, its balance set, the
        session."""
        p = self._acct_part(account_id)
        keys = [self._k(p, "a:" + account_id), self._k(p, "ab:" + account_id)]
        if line_id is not None:
            keys += [self._k(p, f"l:{line_id}"), self._k(p, f"lb:{line_id}")]
        if session_key is not None:
            keys.append(self._k(p, "s:" + session_key))
        self._load(p, keys)

    # -- pointers ---------------------------------------------------------------------------------------------------
    def _pointer(self, kind: str, value: str) -> tuple[str, bytes | None]:
        """A pointer's key and raw value (a hint: no version is kept)."""
        q = _part(value, self._store.partitions)
        key = self._k(q, f"{kind}:{value}")
        if key in self._ahead:
            return key, self._ahead[key]
        seed = self._seed
        if seed is not None:
            if key not in seed:
                raise Miss(self._store.slot_of_partition(q), [key])
            return key, seed[key]
        return key, self._store.get(key)

    def _point(self, key: str, value: bytes, current: bytes | None) -> None:
        if current != value:
            self._ahead[key] = value

    def _account_of_line(self, line_id: int) -> str | None:
        acct = self._line_acct.get(line_id)
        if acct is not None:
            return acct
        hint = self._store.hints.get(("ln", line_id))
        if hint is not None:
            p = self._acct_part(hint)
            rec = self._get(p, self._k(p, f"l:{line_id}"))
            if rec is not None and Subscriber.decode(rec).account == hint:
                self._line_acct[line_id] = hint
                return hint
        _, raw = self._pointer("ln", str(line_id))
        if raw is None:
            return None
        acct = raw.decode()
        self._line_acct[line_id] = acct
        self._store.hints.put(("ln", line_id), acct)
        return acct

    # -- counters ---------------------------------------------------------------------------------------------------
    def last_event_seq(self) -> int:
        """The highest sequence number of the store: of its own events, or of those copied into it."""
        store = self._store
        keys = [self._k(p, k) for p in range(store.partitions) for k in ("evlast", "evmax")]
        return max([int(raw) for raw in store.mget(keys) if raw] or [0])

    def last_subscriber_id(self) -> int:
        raw = self._get(-1, self._g("nextline"))
        return int(raw) if raw else 0

    def reserve_subscriber_ids(self, last: int) -> None:
        if last > (self._next_line if self._next_line is not None else self.last_subscriber_id()):
            self._next_line = last
            self._set(-1, self._g("nextline"), str(last).encode())

    def new_subscriber_id(self) -> int:
        if self._next_line is None:
            raw = self._get(-1, self._g("nextline"))
            self._next_line = int(raw) if raw else 0
        self._next_line += 1
        self._set(-1, self._g("nextline"), str(self._next_line).encode())
        return self._next_line

    # -- tenants and accounts ---------------------------------------------------------------------------------------
    def get_tenant(self, tenant_id: str) -> Tenant | None:
        raw = self._get(-1, self._g("t:" + tenant_id))
        return Tenant.decode(raw) if raw is not None else None

    def put_tenant(self, tenant: Tenant) -> None:
        self._set(-1, self._g("t:" + tenant.id), tenant.encode())
        self._zadd(-1, self._g("tenants"), 0, tenant.id)

    def tenants(self) -> Iterator[Tenant]:
        ids = self._store.call(-1, "ZRANGE", self._g("tenants"), 0, -1)
        for raw in self._store.mget([self._g("t:" + i.decode()) for i in ids]):
            if raw is not None:
                yield Tenant.decode(raw[8:])

    def get_account(self, account_id: str) -> Account | None:
        p = self._acct_part(account_id)
        raw = self._get(p, self._k(p, "a:" + account_id))
        return Account.decode(raw) if raw is not None else None

    def put_account(self, account: Account) -> None:
        p = self._acct_part(account.id)
        self._set(p, self._k(p, "a:" + account.id), account.encode())
        self._zadd(p, self._k(p, "accts"), 0, account.id)

    def accounts(self) -> Iterator[Account]:
        store = self._store
        per_part = store.each_partition(lambda p: ("ZRANGE", self._k(p, "accts"), 0, -1))
        ids = heapq.merge(*[[(m.decode(), p) for m in members] for p, members in enumerate(per_part)])
        for chunk in _chunks(ids, 500):
            raws = store.mget([self._k(p, "a:" + a) for a, p in chunk])
            for raw in raws:
                if raw is not None:
                    yield Account.decode(raw[8:])

    def _zmembers(self, p: int, key: str) -> dict[str, float]:
        """A sorted set's members and scores as this operation sees it: the stored set, then its own changes."""
        raw = self._store.call(p, "ZRANGE", key, 0, -1, "WITHSCORES")
        members = {m.decode(): float(score) for m, score in raw}
        for _, k, score, member in self._zops:
            if k != key:
                continue
            if score is None:
                members.pop(member, None)
            else:
                members[member] = score
        return members

    def lines_of_account(self, account_id: str) -> Iterator[int]:
        p = self._acct_part(account_id)
        yield from sorted(int(m) for m in self._zmembers(p, self._k(p, "al:" + account_id)))

    def active_line_count(self, account_id: str) -> int:
        p = self._acct_part(account_id)
        return len(self._zmembers(p, self._k(p, "aa:" + account_id)))

    # -- lines ------------------------------------------------------------------------------------------------------
    def get_subscriber(self, line_id: int) -> Subscriber | None:
        acct = self._account_of_line(line_id)
        if acct is None:
            return None
        p = self._acct_part(acct)
        self._prefetch_account(acct, line_id)
        raw = self._values[self._k(p, f"l:{line_id}")]
        if raw is None:
            return None
        sub = Subscriber.decode(raw)
        return sub if sub.account == acct else None

    def subscriber_id_by(self, kind: str, value: str) -> int | None:
        p = _part(value, self._store.partitions)
        raw = self._get(p, self._k(p, f"i:{kind}:{value}"))
        return int(raw) if raw is not None else None

    def subscriber_by(self, kind: str, value: str) -> Subscriber | None:
        line_id = self.subscriber_id_by(kind, value)
        if line_id is None:
            return None
        sub = self.get_subscriber(line_id)
        # The index is read without a version check (it lives in another partition): the line must agree.
        return sub if sub is not None and getattr(sub, kind) == value else None

    def put_subscriber(self, sub: Subscriber, previous: Subscriber | None = None) -> None:
        parts = self._store.partitions
        for kind in ("imsi", "msisdn", "iccid"):
            old = getattr(previous, kind) if previous is not None else None
            new = getattr(sub, kind)
            if old == new:
                continue
            if old:
                q = _part(old, parts)
                key = self._k(q, f"i:{kind}:{old}")
                if self._get(q, key) == str(sub.id).encode():
                    self._set(q, key, None)
            if new:
                q = _part(new, parts)
                key = self._k(q, f"i:{kind}:{new}")
                self._get(q, key)  # read: its version is checked, so two lines cannot claim one identity
                self._set(q, key, str(sub.id).encode())
        p = self._acct_part(sub.account)
        line = str(sub.id)
        is_active = sub.state == ACTIVE
        if previous is not None and previous.state == ACTIVE and (not is_active or previous.account != sub.account):
            q = self._acct_part(previous.account)
            self._zrem(q, self._k(q, "aa:" + previous.account), line)
        if is_active:
            self._zadd(p, self._k(p, "aa:" + sub.account), sub.id, line)
        old_acct = previous.account if previous is not None else self._line_acct.get(sub.id)
        if old_acct is not None and old_acct != sub.account:
            self._move_line(sub.id, old_acct, sub.account)
        elif previous is None:
            self._zadd(p, self._k(p, "lines"), sub.id, line)
            self._zadd(p, self._k(p, "al:" + sub.account), sub.id, line)
        self._line_acct[sub.id] = sub.account
        key, current = self._pointer("ln", line)
        self._point(key, sub.account.encode(), current)
        self._set(p, self._k(p, "l:" + line), sub.encode())

    def _move_line(self, line_id: int, old: str, new: str) -> None:
        """A line changes account: its record and balance set move to the new account's partition. Its closed
        sessions stay where they are (their pointers name the old account) for their replay window."""
        q, p = self._acct_part(old), self._acct_part(new)
        line = str(line_id)
        bs = self._get(q, self._k(q, "lb:" + line))
        self._get(q, self._k(q, "l:" + line))
        self._set(q, self._k(q, "l:" + line), None)
        self._set(q, self._k(q, "lb:" + line), None)
        self._zrem(q, self._k(q, "lines"), line)
        self._zrem(q, self._k(q, "al:" + old), line)
        self._get(p, self._k(p, "lb:" + line))
        if bs is not None:
            self._set(p, self._k(p, "lb:" + line), bs)
        self._zadd(p, self._k(p, "lines"), line_id, line)
        self._zadd(p, self._k(p, "al:" + new), line_id, line)

    def put_new_subscriber(self, sub: Subscriber) -> None:
        self.put_subscriber(sub, None)

    def release_identity(self, kind: str, value: str, line_id: int, now: int) -> None:
        q = _part(value, self._store.partitions)
        key = self._k(q, f"i:{kind}:{value}")
        if self._get(q, key) != str(line_id).encode():
            return  # not (or no longer) the line's
        self._set(q, key, None)
        self._zadd(q, self._k(q, f"ir:{kind}:{value}"), now, str(line_id))
        self._zadd(q, self._k(q, "irs"), 0, f"{kind}:{value}")

    def released_identities(self) -> Iterator[tuple[str, str, int, int]]:
        store = self._store
        for q in range(store.partitions):
            for member in store.call(q, "ZRANGE", self._k(q, "irs"), 0, -1):
                kind, _, value = member.decode().partition(":")
                for line_id, when in self.released_identity(kind, value):
                    yield kind, value, line_id, when

    def released_identity(self, kind: str, value: str) -> list[tuple[int, int]]:
        q = _part(value, self._store.partitions)
        members = self._zmembers(q, self._k(q, f"ir:{kind}:{value}"))
        return sorted(((int(m), int(t)) for m, t in members.items()), key=lambda held: (held[1], held[0]))

    def subscribers(self) -> Iterator[Subscriber]:
        store = self._store
        per_part = store.each_partition(lambda p: ("ZRANGE", self._k(p, "lines"), 0, -1))
        ids = heapq.merge(*[[(int(m), p) for m in members] for p, members in enumerate(per_part)])
        for chunk in _chunks(ids, 500):
            for raw in store.mget([self._k(p, f"l:{i}") for i, p in chunk]):
                if raw is not None:
                    yield Subscriber.decode(raw[8:])

    def subscriber_count(self) -> int:
        return sum(self._store.each_partition(lambda p: ("ZCARD", self._k(p, "lines"))))

    # -- balance sets -----------------------------------------------------------------------------------------------
    def _line_key(self, line_id: int, suffix: str) -> tuple[int, str] | None:
        acct = self._account_of_line(line_id)
        if acct is None:
            return None
        p = self._acct_part(acct)
        return p, self._k(p, f"{suffix}:{line_id}")

    def get_line_balances(self, line_id: int) -> BalanceSet | None:
        where = self._line_key(line_id, "lb")
        if where is None:
            return None
        raw = self._get(*where)
        return BalanceSet.decode(raw) if raw is not None else None

    def put_line_balances(self, line_id: int, balances: BalanceSet) -> None:
        self.put_line_balances_encoded(line_id, balances.encode())

    def put_line_balances_encoded(self, line_id: int, encoded: bytes) -> None:
        where = self._line_key(line_id, "lb")
        if where is None:
            raise StoreError(f"line {line_id} has no account: write the line before its balances")
        self._set(where[0], where[1], encoded)

    def get_account_balances(self, account_id: str) -> BalanceSet | None:
        p = self._acct_part(account_id)
        raw = self._get(p, self._k(p, "ab:" + account_id))
        return BalanceSet.decode(raw) if raw is not None else None

    def put_account_balances(self, account_id: str, balances: BalanceSet) -> None:
        p = self._acct_part(account_id)
        self._set(p, self._k(p, "ab:" + account_id), balances.encode())

    # -- sessions ---------------------------------------------------------------------------------------------------
    def _session_home(self, key: str) -> tuple[str, int] | None:
        hint = self._store.hints.get(("sx", key))
        if hint is None:
            _, raw = self._pointer("sx", key)
            if raw is None:
                return None
            acct, line = unpack(raw)
            hint = (acct, line)
            self._store.hints.put(("sx", key), hint)
        return hint

    def get_session(self, key: str) -> Session | None:
        home = self._session_home(key)
        if home is None:
            return None
        acct, line = home
        self._line_acct.setdefault(line, acct)
        self._prefetch_account(acct, line, key)
        p = self._acct_part(acct)
        raw = self._values[self._k(p, "s:" + key)]
        if raw is None:
            # The hint may be stale (a session key used again for another line): ask the pointer once.
            self._store.hints.drop(("sx", key))
            _, ptr = self._pointer("sx", key)
            if ptr is not None and tuple(unpack(ptr)) != (acct, line):
                acct, line = unpack(ptr)
                self._store.hints.put(("sx", key), (acct, line))
                self._line_acct.setdefault(line, acct)
                self._prefetch_account(acct, line, key)
                raw = self._values[self._k(self._acct_part(acct), "s:" + key)]
            if raw is None:
                return None
        return Session.decode(raw)

    def put_session(self, session: Session, indexed: bool = False) -> None:
        acct, line = session.account, session.subscriber
        p = self._acct_part(acct)
        key = session.key
        self._set(p, self._k(p, "s:" + key), session.encode())
        self._zadd(p, self._k(p, "sess"), session.expires, key)
        if not indexed:
            self._zadd(p, self._k(p, f"ls:{line}"), 0, key)
            pkey, current = self._pointer("sx", key)
            self._point(pkey, pack([acct, line]), current)
            self._store.hints.put(("sx", key), (acct, line))

    def delete_session(self, session: Session) -> None:
        p = self._acct_part(session.account)
        key = session.key
        self._set(p, self._k(p, "s:" + key), None)
        self._zrem(p, self._k(p, "sess"), key)
        self._zrem(p, self._k(p, f"ls:{session.subscriber}"), key)

    def sessions_of_line(self, line_id: int) -> Iterator[Session]:
        acct = self._account_of_line(line_id)
        if acct is None:
            return
        p = self._acct_part(acct)
        keys = [m.decode() for m in self._store.call(p, "ZRANGE", self._k(p, f"ls:{line_id}"), 0, -1)]
        if not keys:
            return
        self._load(p, [self._k(p, "s:" + k) for k in keys])
        for k in keys:
            raw = self._values[self._k(p, "s:" + k)]
            if raw is not None:
                yield Session.decode(raw)

    def sessions(self) -> Iterator[Session]:
        store = self._store
        for p in range(store.partitions):
            keys = store.call(p, "ZRANGE", self._k(p, "sess"), 0, -1)
            for chunk in _chunks(iter(keys), 500):
                for raw in store.mget([self._k(p, "s:" + k.decode()) for k in chunk]):
                    if raw is not None:
                        yield Session.decode(raw[8:])

    def session_count(self) -> int:
        return sum(self._store.each_partition(lambda p: ("ZCARD", self._k(p, "sess"))))

    def sweep(self, position: bytes, limit: int, now: int) -> Sweep:
        """A slice of one partition this node holds the sweep lease of: position b"<partition>:<offset>"."""
        store = self._store
        p, offset = (int(x) for x in position.split(b":")) if position else (0, 0)
        expired: list[str] = []
        balances: list[tuple[Owner, BalanceSet]] = []
        while p < store.partitions and not store.lease(p, "sweep"):
            p, offset = p + 1, 0
        if p >= store.partitions:
            return Sweep(expired, balances, b"")
        if offset == 0:
            expired = [k.decode() for k in store.call(p, "ZRANGE", self._k(p, "sess"), "-inf", now, "BYSCORE")]
            accts = [a.decode() for a in store.call(p, "ZRANGE", self._k(p, "accts"), 0, -1)]
            for acct, raw in zip(accts, store.mget([self._k(p, "ab:" + a) for a in accts]), strict=True):
                if raw is not None:
                    balances.append((("account", acct), BalanceSet.decode(raw[8:])))
        lines = [int(m) for m in store.call(p, "ZRANGE", self._k(p, "lines"), offset, offset + limit - 1)]
        for line, raw in zip(lines, store.mget([self._k(p, f"lb:{i}") for i in lines]), strict=True):
            if raw is not None:
                balances.append((("line", line), BalanceSet.decode(raw[8:])))
        if len(lines) == limit:
            return Sweep(expired, balances, f"{p}:{offset + limit}".encode())
        if p + 1 < store.partitions:
            return Sweep(expired, balances, f"{p + 1}:0".encode())
        return Sweep(expired, balances, b"")

    # -- idempotency ------------------------------------------------------------------------------------------------
    def get_idem(self, key: str, now: int) -> Any:
        if key in self._idem_put:
            expires, record = self._idem_put[key]
            return unpack(record)[1] if expires > now else None
        _, raw = self._pointer("ip", key)
        if raw is None:
            self._idem_absent[key] = None
            return None
        p = int(raw)
        rec = self._get(p, self._k(p, "im:" + key))
        if rec is None:
            return None
        expires, answer = unpack(rec)
        return answer if expires > now else None

    def put_idem(self, key: str, expires: int, answer: Any) -> None:
        self.wrote = True
        self._idem_put[key] = (expires, pack([expires, answer]))

    def idempotency_records(self) -> Iterator[tuple[str, int, Any]]:
        store = self._store
        for p in range(store.partitions):
            keys = [m.decode() for m in store.call(p, "ZRANGE", self._k(p, "ims"), 0, -1)]
            for key, raw in zip(keys, store.mget([self._k(p, "im:" + k) for k in keys]), strict=True):
                if raw is not None:  # gone: expired a day past its time
                    expires, answer = unpack(raw[8:])
                    yield key, int(expires), answer

    def purge_idem(self, now: int, limit: int) -> int:
        return 0  # idempotency records expire by themselves (SET ... PXAT)

    # -- refundable debits ------------------------------------------------------------------------------------------
    def _debit_keys(self, account_id: str, line_id: int, rating_group: int) -> tuple[int, str, str]:
        p = self._acct_part(account_id)
        suffix = f"{line_id}:{rating_group}"
        return p, self._k(p, "dv:" + suffix), self._k(p, "d:" + suffix)

    def _touch_debits(self, p: int, version_key: str, hash_key: str) -> None:
        self._get(p, version_key)
        self._set(p, version_key, b"")
        self._zadd(p, self._k(p, "dsets"), 0, hash_key)

    def put_debit(self, debit: Debit) -> None:
        p, vkey, hkey = self._debit_keys(debit.account, debit.line, debit.rating_group)
        self._touch_debits(p, vkey, hkey)
        if debit.seq >= _MARK:  # made by this operation: its event's number is known at the commit
            index = debit.seq - _MARK
            saved = debit.seq, debit.event
            debit.seq, debit.event = 0, ""
            self._debits.append((p, hkey, index, debit.encode()))
            debit.seq, debit.event = saved
        else:
            self._debit_sets.append((p, hkey, str(debit.seq), self._stored_debit(debit)))

    def _stored_debit(self, debit: Debit) -> bytes:
        """A debit as kept: its sequence number is the hash field; its event id is left out when it is the one
        this store gives that number (a debit copied from another store keeps the id its events have)."""
        saved = debit.seq, debit.event
        debit.seq = 0
        if debit.event == f"{self._store.store_id}-{saved[0]}":
            debit.event = ""
        try:
            return debit.encode()
        finally:
            debit.seq, debit.event = saved

    def delete_debit(self, debit: Debit) -> None:
        p, vkey, hkey = self._debit_keys(debit.account, debit.line, debit.rating_group)
        self._touch_debits(p, vkey, hkey)
        self._hdels.append((p, hkey, str(debit.seq)))

    def debits(self, line_id: int, rating_group: int) -> list[Debit]:
        acct = self._account_of_line(line_id)
        if acct is None:
            return []
        return self._debits_of(acct, line_id, rating_group)

    def _debits_of(self, acct: str, line_id: int, rating_group: int) -> list[Debit]:
        p, vkey, hkey = self._debit_keys(acct, line_id, rating_group)
        self._get(p, vkey)
        raw = self._store.call(p, "HGETALL", hkey)
        out = []
        gone = {f for q, h, f in self._hdels if h == hkey}
        for field, rec in sorted(raw.items(), key=lambda kv: int(kv[0])):
            if field.decode() in gone:
                continue
            out.append(self._debit_of(field, rec))
        return out

    def _debit_of(self, field: bytes, rec: bytes) -> Debit:
        debit = Debit.decode(rec)
        debit.seq = int(field)
        debit.event = debit.event or f"{self._store.store_id}-{debit.seq}"
        return debit

    def all_debits(self) -> Iterator[Debit]:
        store = self._store
        for p in range(store.partitions):
            found = []
            for hkey in store.call(p, "ZRANGE", self._k(p, "dsets"), 0, -1):
                for field, rec in store.call(p, "HGETALL", hkey.decode()).items():
                    found.append(self._debit_of(field, rec))
            found.sort(key=lambda d: (d.line, d.rating_group, d.seq))
            yield from found

    def prune_debits(self, line_id: int, rating_group: int, before: int) -> int:
        gone = 0
        for debit in self.debits(line_id, rating_group):
            if debit.time >= before:
                break
            self.delete_debit(debit)
            gone += 1
        return gone

    def purge_debits(self, before: int, limit: int) -> int:
        """Old debits of one partition (the next one this node holds the sweep lease of) per call."""
        store = self._store
        p = store.next_purge_partition()
        if p is None:
            return 0
        gone = 0
        for hkey in store.call(p, "ZRANGE", self._k(p, "dsets"), 0, -1):
            line, rg = hkey.decode().rsplit(":", 2)[-2:]
            raw = store.call(p, "HGETALL", hkey.decode())
            if not raw:
                self._zrem(p, self._k(p, "dsets"), hkey.decode())
                continue
            acct = Debit.decode(next(iter(raw.values()))).account
            for debit in self._debits_of(acct, int(line), int(rg)):
                if debit.time < before and gone < limit:
                    self.delete_debit(debit)
                    gone += 1
            if gone >= limit:
                break
        return gone

    # -- events -----------------------------------------------------------------------------------------------------
    def append_event(self, event: dict[str, Any]) -> int:
        event.pop("seq", None)
        event.pop("id", None)
        p = self._acct_part(event.get("account") or "")
        self._events.append((p, pack(event)))
        index = len(self._events) - 1
        seq = _MARK + index
        event["seq"] = seq
        event["id"] = f"{self._store.store_id}-~{index}"
        self.wrote = True
        return seq

    def append_encoded_events(self, encode: Callable[[int, str], list[bytes]]) -> int:
        encoded = encode(_MARK, self._store.store_id)
        for raw in encoded:
            event = unpack(raw)
            event.pop("seq", None)
            event.pop("id", None)
            self._events.append((self._acct_part(event.get("account") or ""), pack(event)))
        if encoded:
            self.wrote = True
        return len(encoded)

    def events(self, after: int = 0, limit: int | None = None) -> Iterator[dict[str, Any]]:
        store = self._store
        parts = store.partitions
        streams = [self._partition_events(p, after, parts) for p in range(parts)]
        for n, (_, event) in enumerate(heapq.merge(*streams, key=lambda se: se[0]), 1):
            yield event
            if limit is not None and n >= limit:
                return

    def _partition_events(self, p: int, after: int, parts: int) -> Iterator[tuple[int, dict[str, Any]]]:
        store = self._store
        # Entry c holds sequence number c * parts + p, but for events copied from another store (their own numbers,
        # in fields): a partition holding some is read from its start.
        copied = store.get(self._k(p, "evmax")) is not None
        c = 1 if copied or after < p else max(0, (after - p) // parts) + 1
        key = self._k(p, "ev")
        while True:
            entries = store.call(p, "XRANGE", key, f"{c}-0", "+", "COUNT", 500)
            for entry_id, fields in entries:
                event = _event_of(store, p, entry_id, fields)
                if event["seq"] > after:
                    yield event["seq"], event
                c = int(entry_id.split(b"-", 1)[0]) + 1
            if len(entries) < 500:
                return

    def put_copied_event(self, event: dict[str, Any]) -> None:
        seq, event_id = int(event["seq"]), str(event["id"])
        if self._copy_floor is None:
            self._copy_floor = self.last_event_seq()
        if seq <= self._copy_floor:
            raise StoreError(f"event {event_id}: sequence {seq} is not above the store's last, {self._copy_floor}")
        self._copy_floor = seq
        body = {k: v for k, v in event.items() if k not in ("seq", "id")}
        self._copied.append((self._acct_part(body.get("account") or ""), pack(body), seq, event_id))
        self.wrote = True

    # -- exporter cursors -------------------------------------------------------------------------------------------
    def get_cursor(self, name: str) -> int:
        raw = self._get(-1, self._g("c:" + name))
        return int(raw) if raw else 0

    def cursors(self) -> Iterator[tuple[str, int]]:
        names = [m.decode() for m in self._store.call(-1, "ZRANGE", self._g("cursors"), 0, -1)]
        for name, raw in zip(names, self._store.mget([self._g("c:" + n) for n in names]), strict=True):
            if raw is not None:
                yield name, int(raw[8:])

    def put_cursor(self, name: str, seq: int) -> None:
        self._set(-1, self._g("c:" + name), str(seq).encode())
        self._zadd(-1, self._g("cursors"), 0, name)

    # -- the commit -------------------------------------------------------------------------------------------------
    def _writes(self) -> dict[int, _Writes]:
        """The buffered writes by partition, ready for the scripts."""
        by_part: dict[int, _Writes] = {}

        def w(p: int) -> _Writes:
            found = by_part.get(p)
            if found is None:
                found = by_part[p] = _Writes()
            return found

        self._place_idempotency()
        stamp = secrets.token_bytes(8)
        for key, (p, value, pxat) in self._dirty.items():
            ws = w(p)
            ws.keys.add(key)
            if value is None:
                ws.dels.append(key)
            else:
                ws.sets += (key, stamp + value, pxat)
        for p, key, score, member in self._zops:
            ws = w(p)
            ws.keys.add(key)
            ws.zops += (0, key, member, 0) if score is None else (1, key, member, score)
        index_in_part: list[int] = []
        for p, raw in self._events:
            ws = w(p)
            ws.events.append(raw)
            index_in_part.append(len(ws.events))
        for p, raw, seq, event_id in self._copied:
            ws = w(p)
            ws.copied += (raw, seq, event_id)
            ws.keys.add(self._k(p, "evmax"))
        for p in {p for p, _ in self._events} | {p for p, _, _, _ in self._copied}:
            ws = by_part[p]
            ws.keys.update(self._k(p, k) for k in ("ev", "evc", "evfloor", "evlast"))
        for p, hkey, index, rec in self._debits:
            ws = w(p)
            ws.keys.add(hkey)
            ws.debits += (hkey, index_in_part[index], rec)
        for p, hkey, field, rec in self._debit_sets:
            ws = w(p)
            ws.keys.add(hkey)
            ws.debit_sets += (hkey, field, rec)
        for p, hkey, field in self._hdels:
            ws = w(p)
            ws.keys.add(hkey)
            ws.hdels += (hkey, field)
        return by_part

    def _place_idempotency(self) -> None:
        """Idempotency records go with the operation's other writes (one partition: one commit), else by key."""
        if not self._idem_put:
            return
        written = {p for p, _, _ in self._dirty.values()} | {p for p, _ in self._events}
        written.discard(-1)
        for key, (expires, record) in self._idem_put.items():
            p = next(iter(written)) if len(written) == 1 else _part(key, self._store.partitions)
            rkey = self._k(p, "im:" + key)
            if key in self._idem_absent:
                self._versions.setdefault(rkey, ABSENT)
            else:
                self._get(p, rkey)
            # Redis forgets the record a day after it expired (by the operation's clock, or by Redis's own if that
            # is later: a test clock may lag the wall clock); until then `get_idem` judges by the caller's `now`.
            self._set(p, rkey, record, (max(expires, int(time.time())) + 86_400) * 1000)
            self._zadd(p, self._k(p, "ims"), 0, key)
            pkey, current = self._pointer("ip", key)
            self._point(pkey, str(p).encode(), current)

    def checks_of(self, p: int) -> list[Any]:
        prefix = f"{{{self._store.tag(p)}}}:"
        out: list[Any] = []
        for key, version in self._versions.items():
            if key.startswith(prefix):
                out += (key, version)
        return out


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Hints:
    """Where sessions and lines live (from their pointers), kept per process: a hint is checked against the record
    it leads to, so a stale one only costs a pointer read."""

    def __init__(self, size: int = 1 << 18) -> None:
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        return self._data.get(key)

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            if len(self._data) > self._size:
                self._data.popitem(last=False)

    def drop(self, key: Any) -> None:
        with self._lock:
            self._data.pop(key, None)


class _ConnectionSettings:
    __slots__ = ("connect_timeout", "password", "timeout", "tls", "username")

    def __init__(
        self,
        username: str | None,
        password: str | None,
        tls: ssl.SSLContext | None,
        connect_timeout: float,
        timeout: float,
    ) -> None:
        self.username = username
        self.password = password
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.timeout = timeout


def _tls_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    if cert:
        context.load_cert_chain(cert, key)
    return context


class _RawConnection:
    """One socket to one node with hiredis's reply parser and nothing else: the hot path's two round trips per
    request (the MGET, the commit script and WAIT) cost a third of the CPU they cost through redis-py's client."""

    __slots__ = ("reader", "sock")

    def __init__(self, host: str, port: int, settings: _ConnectionSettings) -> None:
        sock = socket.create_connection((host, port), timeout=settings.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if settings.tls is not None:
            sock = settings.tls.wrap_socket(sock, server_hostname=host)
        sock.settimeout(settings.timeout)
        self.sock = sock
        self.reader = hiredis.Reader()
        if settings.password is not None:
            auth = ("AUTH", settings.username, settings.password) if settings.username else ("AUTH", settings.password)
            (answer,) = self.call([auth])
            if isinstance(answer, Exception):
                self.close()
                raise AuthenticationError(str(answer))

    def call(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send the commands in one write, read their answers; an error answer is its redis-py exception."""
        self.send(commands)
        return self.receive(len(commands))

    def send(self, commands: Sequence[tuple[Any, ...]]) -> None:
        self.sock.sendall(b"".join([pack_command(c) for c in commands]))

    def receive(self, count: int) -> list[Any]:
        reader = self.reader
        out: list[Any] = []
        while len(out) < count:
            answer = reader.gets()
            if answer is False:
                data = self.sock.recv(1 << 16)
                if not data:
                    raise RedisConnectionError("connection closed by the node")
                reader.feed(data)
                continue
            out.append(_PARSER.parse_error(str(answer)) if isinstance(answer, hiredis.ReplyError) else answer)
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class _Pending:
    __slots__ = ("affinity", "done", "fn", "future", "result")

    def __init__(
        self, fn: Any, future: asyncio.Future[Any] | None, done: Callable[[Any], None] | None, affinity: Any = None
    ) -> None:
        self.fn = fn
        self.future = future
        self.done = done
        self.affinity = affinity  # the session key of a charging request (its records are fetched before it runs)
        self.result: Any = None


class RedisStore:
    """A balance store on a Redis Cluster: typed optimistic transactions, run in batches by a few worker threads.

    The engine's operations are synchronous functions of a `Txn`, and a read from Redis is a round trip. Each of
    `workers` threads runs what is queued for it in batches of up to `max_batch` operations (store.redisbatch):
    the batch's reads go in one pipeline per primary, its commits in another, with one WAIT per primary, so a
    request costs a share of a few round trips instead of two of its own. Operations of one account (found from
    the session key, `affinity`) go to the same thread, in order; operations without one go to thread 0.
    `apply()` runs one operation alone, synchronously (the CLI, tests).
    """

    def __init__(
        self,
        nodes: Sequence[str],
        *,
        namespace: str = "chf",
        partitions: int = 256,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        min_replicas_acked: int = 1,
        wait_timeout: float = 1.0,
        workers: int = 4,
        max_batch: int = 256,
        max_queue: int = 65536,
        connect_timeout: float = 2.0,
        op_timeout: float = 5.0,
        max_attempts: int = 64,
        lock_lease: float = 10.0,
    ) -> None:
        if not nodes:
            raise StoreError("redis-cluster: no nodes given")
        self.namespace = namespace
        self.min_replicas_acked = min_replicas_acked
        self.wait_timeout_ms = int(wait_timeout * 1000)
        self.max_queue = max_queue
        self.op_timeout = op_timeout
        self.max_attempts = max_attempts
        self.lock_lease_ms = int(lock_lease * 1000)
        self.on_commit: list[Callable[[int, float], None]] = []
        self.hints = _Hints()
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(3)}"
        self.commits = 0
        self.conflicts = 0
        self._leases: dict[tuple[int, str], float] = {}
        self._denied: dict[tuple[int, str], float] = {}
        self._stat_cache: tuple[float, dict[str, int]] | None = None
        self._local = threading.local()  # each thread's raw connections, by node (see _raw)
        self.account_parts: dict[str, int] = {}  # account id -> partition, computed once
        self._purge_next = 0
        startup = []
        for node in nodes:
            host, _, port = node.rpartition(":")
            if not host or not port.isdigit():
                raise StoreError(f"redis-cluster: node {node!r} is not host:port")
            startup.append(ClusterNode(host, int(port)))
        kwargs: dict[str, Any] = {
            "username": username,
            "password": password,
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": max(op_timeout, wait_timeout + 1.0),
            "require_full_coverage": True,
        }
        if tls:
            kwargs.update(ssl=True, ssl_ca_certs=tls_ca, ssl_certfile=tls_cert, ssl_keyfile=tls_key)
        self._conn_settings = _ConnectionSettings(
            username, password, _tls_context(tls_ca, tls_cert, tls_key) if tls else None, connect_timeout,
            kwargs["socket_timeout"],
        )  # fmt: skip
        self._where = ", ".join(nodes)
        try:
            self.rc = RedisCluster(startup_nodes=startup, **kwargs)
        except AuthenticationError as exc:
            raise StoreError(f"redis-cluster {self._where}: authentication failed: {exc}") from exc
        except (RedisClusterException, RedisError) as exc:
            raise StoreError(f"redis-cluster {self._where}: cannot reach the cluster: {_reason(exc)}") from exc
        self._scripts = {
            name: (src, _sha1(src))
            for name, src in (
                ("commit", _COMMIT_LUA),
                ("prepare", _PREPARE_LUA),
                ("decide", _DECIDE_LUA),
                ("apply", _APPLY_LUA),
                ("release", _RELEASE_LUA),
                ("lease", _LEASE_LUA),
            )
        }
        self.partitions, self.store_id = self._identify(partitions)
        self.tags = partition_tags(namespace, self.partitions)
        self._slots = [slot_of(f"{{{t}}}") for t in self.tags]
        self._workers = workers
        self.max_batch = max_batch
        self._queues: list[queue.SimpleQueue[_Pending | None]] = []
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queued = 0
        self._queued_lock = threading.Lock()

    def _identify(self, partitions: int) -> tuple[int, str]:
        meta = f"{{{self.namespace}}}:meta"
        self.call(-1, "HSETNX", meta, "schema", SCHEMA_VERSION)
        self.call(-1, "HSETNX", meta, "partitions", partitions)
        self.call(-1, "HSETNX", meta, "store_id", secrets.token_hex(4))
        schema, parts, store_id = self.call(-1, "HMGET", meta, "schema", "partitions", "store_id")
        if int(schema) != SCHEMA_VERSION:
            raise SchemaError(f"store {self.namespace} has schema {int(schema)}, this code reads {SCHEMA_VERSION}")
        self._wait_node(self.rc.get_node_from_key(meta))
        return int(parts), store_id.decode()

    def _wait_node(self, node: ClusterNode) -> None:
        if self.min_replicas_acked:
            node.redis_connection.execute_command("WAIT", self.min_replicas_acked, self.wait_timeout_ms)

    # -- talking to the cluster -------------------------------------------------------------------------------------
    def tag(self, p: int) -> str:
        """The hash tag of partition `p`; -1 is the global partition (meta, tenants, counters, cursors)."""
        return self.tags[p] if p >= 0 else self.namespace

    def lock_key(self, p: int) -> str:
        return f"{{{self.tag(p)}}}:lock"

    def _key_of(self, p: int) -> str:
        return f"{{{self.tag(p)}}}:x"

    def account_part(self, account_id: str) -> int:
        """The partition of an account (computed once per account)."""
        parts = self.account_parts
        p = parts.get(account_id)
        if p is None:
            p = parts[account_id] = _part(account_id, self.partitions)
            if len(parts) > 1 << 20:
                parts.clear()
        return p

    def slot_of_partition(self, p: int) -> int:
        return self._slots[p] if p >= 0 else slot_of(self._key_of(p))

    def node_of_partition(self, p: int) -> ClusterNode:
        return self._node(p)

    def node_of_slot(self, slot: int) -> ClusterNode | None:
        """The primary serving `slot` as this process last learnt it (None: unknown; the cluster map is refreshed)."""
        try:
            return self.rc.nodes_manager.slots_cache[slot][0]
        except (KeyError, IndexError):
            self._refresh()
            return None

    def node_of_key(self, key: str) -> ClusterNode:
        return self.rc.get_node_from_key(key)

    def script_sha(self, name: str) -> str:
        return self._scripts[name][1]

    def refresh(self) -> None:
        """Learn the cluster's map again (after a redirection or a lost connection)."""
        self._refresh()

    def direct_reads(self, reset: bool = False) -> bool:
        """Whether this thread read from the cluster through `call`, `get`, `mget` or `each_partition` since the
        last reset (store.redisbatch: such reads do not see the writes of the batch not committed yet)."""
        local = self._local
        found = bool(getattr(local, "direct", False))
        if reset:
            local.direct = False
        return found

    def call(self, p: int, *args: Any) -> Any:
        """One command on partition `p` (-1: global), through the cluster client (redirections handled)."""
        self._local.direct = True
        return self._retrying(lambda: self.rc.execute_command(*args))

    def _node(self, p: int) -> ClusterNode:
        slot = self._slots[p] if p >= 0 else slot_of(self._key_of(p))
        try:
            return self.rc.nodes_manager.slots_cache[slot][0]
        except (KeyError, IndexError):
            self._refresh()
            return self.rc.get_node_from_key(self._key_of(p))

    def get(self, key: str) -> bytes | None:
        self._local.direct = True
        return self._retrying(lambda: self.rc.execute_command("GET", key))

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of keys of any slots: one MGET per slot, pipelined per node."""
        self._local.direct = True
        if not keys:
            return []
        if len(keys) == 1:
            return [self.get(keys[0])]
        by_slot: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            by_slot.setdefault(slot_of(key), []).append(i)
        out: list[bytes | None] = [None] * len(keys)
        if len(by_slot) == 1:
            return list(self._slot_get(next(iter(by_slot)), keys))

        def fetch() -> None:
            pipe = self.rc.pipeline()
            order = []
            for idxs in by_slot.values():
                pipe.execute_command("MGET", *[keys[i] for i in idxs])
                order.append(idxs)
            for idxs, values in zip(order, pipe.execute(), strict=True):
                for i, v in zip(idxs, values, strict=True):
                    out[i] = v

        self._retrying(fetch)
        return out

    def each_partition(self, command: Callable[[int], tuple[Any, ...]]) -> list[Any]:
        """One command per partition, pipelined per node; the answers in partition order."""
        self._local.direct = True

        def run() -> list[Any]:
            pipe = self.rc.pipeline()
            for p in range(self.partitions):
                args = command(p)
                pipe.execute_command(*args)
            return list(pipe.execute())

        return self._retrying(run)

    def _retrying(self, fn: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self.op_timeout
        delay = 0.01
        while True:
            try:
                return fn()
            except AuthenticationError as exc:
                raise StoreError(f"redis-cluster {self._where}: authentication failed: {exc}") from exc
            except (
                RedisConnectionError,
                RedisTimeoutError,
                ClusterDownError,
                TryAgainError,
                RedisClusterException,
                MovedError,
                AskError,
            ) as exc:
                if time.monotonic() + delay > deadline:
                    raise StoreBusy(f"redis-cluster unavailable: {_reason(exc)}") from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                self._refresh()

    def _refresh(self) -> None:
        try:
            self.rc.nodes_manager.initialize()
        except Exception as exc:  # the next attempt says what is wrong
            log.debug("event=redis_refresh_failed error=%r", exc)

    def _script(self, p: int, name: str, keys: Sequence[str], args: Sequence[Any], wait: bool = True) -> Any:
        """Run a script on the primary of partition `p`, then WAIT for the replicas, in one round trip on one
        connection. Returns the script's answer. Raises StoreBusy when the outcome is unknown or not replicated."""
        src, sha = self._scripts[name]
        deadline = time.monotonic() + self.op_timeout
        delay = 0.01
        asking: ClusterNode | None = None
        while True:
            node = asking or self._node(p)
            commands: list[tuple[Any, ...]] = [("ASKING",)] if asking is not None else []
            commands.append(("EVALSHA", sha, len(keys), *keys, *args))
            if wait and self.min_replicas_acked:
                commands.append(("WAIT", self.min_replicas_acked, self.wait_timeout_ms))
            try:
                results = self._raw(node, commands)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                # Sent, maybe applied: unknown. The operation is answered busy; a retry finds its stored answer.
                self._refresh()
                raise StoreBusy(f"redis-cluster: commit outcome unknown: {_reason(exc)}") from exc
            if asking is not None:
                results = results[1:]
            answer = results[0]
            asking = None
            if isinstance(answer, NoScriptError) or (
                isinstance(answer, ResponseError) and str(answer).startswith("NOSCRIPT")
            ):
                self._raw(node, [("SCRIPT", "LOAD", src)])
                continue
            if isinstance(answer, AskError):
                asking = self._node_at(answer.node_addr)
                continue
            if isinstance(answer, (MovedError, TryAgainError, ClusterDownError, RedisConnectionError)):
                if time.monotonic() + delay > deadline:
                    raise StoreBusy(f"redis-cluster unavailable: {_reason(answer)}")
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                self._refresh()
                continue
            if isinstance(answer, Exception):
                raise StoreError(f"redis-cluster: {name} script failed: {answer}")
            if wait and self.min_replicas_acked:
                acked = results[1]
                if isinstance(acked, Exception) or int(acked) < self.min_replicas_acked:
                    raise StoreBusy(
                        f"redis-cluster: {self.min_replicas_acked} replica(s) did not confirm the commit within "
                        f"{self.wait_timeout_ms} ms (got {acked})"
                    )
            return answer

    def _raw(self, node: ClusterNode, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Commands pipelined on this thread's own connection to `node`, without redis-py's client layers (they
        cost more CPU than the engine itself per request); each answer, or the error it is."""
        conns: dict[str, _RawConnection] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(node.name)
        if conn is None:
            conn = conns[node.name] = _RawConnection(node.host, node.port, self._conn_settings)
        try:
            return conn.call(commands)
        except BaseException:
            conns.pop(node.name, None)
            conn.close()
            raise

    def raw_pipelines(
        self, work: dict[str, tuple[ClusterNode, list[tuple[Any, ...]]]]
    ) -> dict[str, list[Any] | BaseException]:
        """Each node's commands pipelined on this thread's connection to it, every node's sent before any answer is
        read (the nodes work at the same time). Per node: its answers (an error answer is its exception), or the
        exception that lost the connection (then the node's commands may or may not have run)."""
        conns: dict[str, _RawConnection] = self._local.__dict__.setdefault("conns", {})
        out: dict[str, list[Any] | BaseException] = {}
        sent: list[tuple[str, _RawConnection, int]] = []
        for name, (node, commands) in work.items():
            if not commands:
                out[name] = []
                continue
            try:
                conn = conns.get(name)
                if conn is None:
                    conn = conns[name] = _RawConnection(node.host, node.port, self._conn_settings)
                conn.send(commands)
            except (RedisError, OSError) as exc:
                self._drop(conns, name)
                out[name] = exc
                continue
            sent.append((name, conn, len(commands)))
        for name, conn, count in sent:
            try:
                out[name] = conn.receive(count)
            except (RedisError, OSError) as exc:
                self._drop(conns, name)
                out[name] = exc
        return out

    @staticmethod
    def _drop(conns: dict[str, _RawConnection], name: str) -> None:
        conn = conns.pop(name, None)
        if conn is not None:
            conn.close()

    def _slot_get(self, slot: int, keys: Sequence[str]) -> list[bytes | None]:
        """MGET of keys of one slot on its primary's raw connection (see _raw), redirections retried."""
        deadline = time.monotonic() + self.op_timeout
        delay = 0.005
        while True:
            try:
                node = self.rc.nodes_manager.slots_cache[slot][0]
                (answer,) = self._raw(node, [("MGET", *keys)])
            except (RedisConnectionError, RedisTimeoutError, OSError, KeyError, IndexError) as exc:
                answer = exc
            if not isinstance(answer, Exception):
                return answer
            if isinstance(answer, AuthenticationError):
                raise StoreError(f"redis-cluster {self._where}: authentication failed: {answer}")
            if isinstance(answer, ResponseError) and not isinstance(
                answer, (MovedError, AskError, TryAgainError, ClusterDownError)
            ):
                raise StoreError(f"redis-cluster: MGET failed: {answer}")
            if time.monotonic() + delay > deadline:
                raise StoreBusy(f"redis-cluster unavailable: {_reason(answer)}")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
            self._refresh()

    def _node_at(self, addr: tuple[str, int] | str) -> ClusterNode:
        host, port = addr if isinstance(addr, tuple) else (addr.rsplit(":", 1)[0], int(addr.rsplit(":", 1)[1]))
        node = self.rc.get_node(host=host, port=int(port))
        if node is None:
            self._refresh()
            node = self.rc.get_node(host=host, port=int(port))
        if node is None:
            raise StoreBusy(f"redis-cluster: no node {host}:{port}")
        return node

    def _point_ahead(self, pointers: dict[str, bytes]) -> None:
        """Write pointers (hints) before the commit they lead to, durably."""
        nodes: dict[str, tuple[ClusterNode, list[tuple[str, bytes]]]] = {}
        for key, value in pointers.items():
            node = self.rc.get_node_from_key(key)
            nodes.setdefault(node.name, (node, []))[1].append((key, value))

        def run() -> None:
            for node, items in nodes.values():
                pipe = node.redis_connection.pipeline(transaction=False)
                for key, value in items:
                    pipe.execute_command("SET", key, value)
                if self.min_replicas_acked:
                    pipe.execute_command("WAIT", self.min_replicas_acked, self.wait_timeout_ms)
                results = pipe.execute()
                if self.min_replicas_acked and int(results[-1]) < self.min_replicas_acked:
                    raise StoreBusy("redis-cluster: replicas did not confirm a pointer write")

        self._retrying(run)

    # -- locks of cross-partition commits ---------------------------------------------------------------------------
    def locked(self, p: int, lock: bytes) -> None:
        """Partition `p` is held by a cross-partition commit: wait for it, or resolve it if its holder died."""
        txid, _, deadline, _ = lock.decode().split("|")
        if time.time() * 1000 < int(deadline):
            raise Retry(f"partition {p} locked by {txid}", wait=0.005)
        self._recover(lock)
        raise Retry(f"partition {p} lock of {txid} resolved")

    def _recover(self, lock: bytes) -> None:
        """Resolve a cross-partition commit whose holder is past its deadline (lock: txid|home|deadline|parts)."""
        txid, home_s, _, parts_s = lock.decode().split("|")
        home = int(home_s)
        intent_key = f"{{{self.tag(home)}}}:tx:{txid}"
        raw = self.get(intent_key)
        if raw is not None:  # decided: roll forward every partition still held
            for p, (keys, writes) in msgpack.unpackb(raw, raw=True):
                self._script(p, "apply", [k.decode() for k in keys], [lock, _lua_pack(writes)])
            self.call(home, "DEL", intent_key)
            log.warning("event=redis_txn_rolled_forward txid=%s", txid)
            return
        # Undecided: take the decision away from the holder (its DECIDE needs the home lock), then release.
        self._script(home, "release", [self.lock_key(home)], [lock])
        for p in (int(x) for x in parts_s.split(",")):
            self._script(p, "release", [self.lock_key(p)], [lock])
        log.warning("event=redis_txn_aborted txid=%s", txid)

    # -- leases of background work -----------------------------------------------------------------------------------
    def lease(self, p: int, work: str, seconds: float = 30.0) -> bool:
        """Whether this process holds (or now takes) the lease of `work` on partition `p`."""
        now = time.monotonic()
        held = self._leases.get((p, work))
        if held is not None and held > now + seconds / 3:
            return True
        if self._denied.get((p, work), 0.0) > now:  # another process held it a moment ago: ask again later
            return False
        try:
            got = self._script(p, "lease", [f"{{{self.tag(p)}}}:lease:{work}"], [self.owner, int(seconds * 1000)])
        except StoreError:
            return False
        if got == 1:
            self._leases[(p, work)] = now + seconds
            return True
        self._leases.pop((p, work), None)
        self._denied[(p, work)] = now + seconds / 3
        return False

    def next_purge_partition(self) -> int | None:
        for _ in range(self.partitions):
            p = self._purge_next
            self._purge_next = (p + 1) % self.partitions
            if self.lease(p, "sweep"):
                return p
        return None

    def set_store_id(self, store_id: str) -> None:
        """Give the store another id (a store copied into this one takes its source's). Also lifts every
        partition's sequence numbers above the highest copied one, so that new event ids stay unique."""
        if not _STORE_ID.fullmatch(store_id):
            raise ValueError(f"a store id is 1 to 32 letters, digits or '_', got {store_id!r}")
        with self.read() as txn:
            floor = txn.last_event_seq()
        for p in range(self.partitions):
            key = f"{{{self.tag(p)}}}:evfloor"
            self.call(p, "SET", key, floor)
        self.call(-1, "HSET", f"{{{self.namespace}}}:meta", "store_id", store_id)
        self.store_id = store_id

    def event_feed(self, name: str) -> EventFeed:
        """What an exporter reads instead of a cursor over one sequence (see EventFeed)."""
        return EventFeed(self, name)

    # -- reading ----------------------------------------------------------------------------------------------------
    def read(self) -> _ReadContext:
        """A read-only view. Each record read is as committed; records read at different moments may be of
        different commits (there is no snapshot across a cluster)."""
        return _ReadContext(self)

    def stat(self) -> dict[str, int]:
        """Counts and memory, read at most every `STAT_MAX_AGE` seconds (they cost a few round trips per node: the
        metrics gauges read them when scraped)."""
        cached = self._stat_cache
        if cached is not None and time.monotonic() - cached[0] < self.STAT_MAX_AGE:
            return dict(cached[1])
        out = self._stat()
        self._stat_cache = (time.monotonic(), out)
        return dict(out)

    STAT_MAX_AGE = 5.0

    def _stat(self) -> dict[str, int]:
        with self.read() as txn:
            out = {
                "tenants": len(list(txn.tenants())),
                "accounts": sum(self.each_partition(lambda p: ("ZCARD", txn._k(p, "accts")))),
                "subscribers": txn.subscriber_count(),
                "sessions": txn.session_count(),
                "events": sum(int(x or 0) for x in self.mget([txn._k(p, "evc") for p in range(self.partitions)])),
                "partitions": self.partitions,
            }
        used = 0
        limit = 0
        for node in self.rc.get_primaries():
            info = node.redis_connection.info("memory")
            used += int(info.get("used_memory", 0))
            limit += int(info.get("maxmemory", 0))
        out["used_bytes"] = used
        out["map_size"] = limit
        return out

    # -- applying operations -----------------------------------------------------------------------------------------
    def apply(self, fn: Callable[[RedisTxn], Any]) -> Any:
        """Run one operation to its commit (again after a conflict); returns its result or the exception."""
        started = time.perf_counter()
        deadline = time.monotonic() + self.op_timeout
        for attempt in range(self.max_attempts):
            txn = RedisTxn(self, True)
            try:
                result = fn(txn)
                if txn.wrote or txn._ahead:
                    self._commit(txn)
            except Retry as exc:
                self.conflicts += 1
                if time.monotonic() > deadline:
                    return StoreBusy(f"redis-cluster: gave up after {attempt + 1} attempts: {exc}")
                time.sleep(exc.wait + random.random() * 0.002 * min(attempt + 1, 20))
                continue
            except (StoreError, SchemaError) as exc:
                return exc
            except Exception as exc:  # the operation's own failure: nothing was written
                return exc
            self.commits += 1
            for observer in self.on_commit:
                observer(1, time.perf_counter() - started)
            return result
        return StoreBusy(f"redis-cluster: gave up after {self.max_attempts} conflicting attempts")

    def _commit(self, txn: RedisTxn) -> None:
        self.commit_parts(txn, txn._writes())

    def commit_parts(self, txn: RedisTxn, by_part: dict[int, _Writes]) -> None:
        """Commit an operation's writes (`txn._writes()`): its pointers, then one script, or the two-phase commit."""
        if txn._ahead:
            self._point_ahead(txn._ahead)
        if not by_part:
            return
        if len(by_part) == 1:
            ((p, ws),) = by_part.items()
            keys = [self.lock_key(p), *sorted(ws.keys)]
            answer = self._script(
                p, "commit", keys, [_lua_pack([txn.checks_of(p), ws.payload(self.tag(p), self.partitions, p)])]
            )
            self._answered(answer, p)
            return
        self._two_phase(txn, by_part)

    def _answered(self, answer: Any, p: int) -> None:
        status = answer[0].decode() if isinstance(answer[0], bytes) else str(answer[0])
        if status == "OK":
            return
        if status == "LOCKED":
            self.locked(p, answer[1])
        raise Retry(f"{status} {answer[1]!r}")

    def _two_phase(self, txn: RedisTxn, by_part: dict[int, _Writes]) -> None:
        """Commit writes to several partitions atomically (see the module docstring)."""
        order = sorted(by_part)
        home = order[0]
        txid = secrets.token_hex(8)
        deadline = int(time.time() * 1000) + self.lock_lease_ms
        lock = f"{txid}|{home}|{deadline}|{','.join(map(str, order))}".encode()
        held: list[int] = []
        try:
            for p in order:
                # Each step is confirmed by the replicas: a lock or a decision lost in a failover would let
                # another commit in between.
                answer = self._script(p, "prepare", [self.lock_key(p)], [_lua_pack(txn.checks_of(p)), lock])
                status = answer[0].decode()
                if status != "OK":
                    if status == "LOCKED":
                        self.locked(p, answer[1])
                    raise Retry(f"prepare {status} in partition {p}")
                held.append(p)
            intent: list[Any] = []
            for p in order:
                ws = by_part[p]
                intent.append([p, [[self.lock_key(p), *sorted(ws.keys)], ws.payload(self.tag(p), self.partitions, p)]])
            intent_key = f"{{{self.tag(home)}}}:tx:{txid}"
            answer = self._script(home, "decide", [self.lock_key(home), intent_key], [lock, _lua_pack(intent)])
            if answer[0].decode() != "OK":
                raise Retry(f"transaction {txid} lost its locks before the decision")
        except BaseException:
            for p in held:
                try:
                    self._script(p, "release", [self.lock_key(p)], [lock], wait=False)
                except StoreError:
                    log.warning("event=redis_txn_release_failed txid=%s partition=%d", txid, p)
            raise
        # Decided: from here the transaction happens, by us or by whoever recovers it.
        for p, (keys, writes) in intent:
            self._script(p, "apply", keys, [lock, _lua_pack(writes)])
        self.call(home, "DEL", intent_key)

    # -- synchronous writing ---------------------------------------------------------------------------------------
    def write(self, fn: Callable[[Any], Any]) -> Any:
        result = self.apply(fn)
        if isinstance(result, BaseException):
            raise result
        return result

    def run_batch(self, fns: Sequence[Callable[[Any], Any]]) -> list[Any]:
        return [self.apply(fn) for fn in fns]

    # -- the worker threads ------------------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if self._threads:
            return
        self._loop = loop or asyncio.get_running_loop()
        self._queues = [queue.SimpleQueue() for _ in range(self._workers)]
        from store.redisbatch import BatchWorker  # it builds on this module

        for i, q in enumerate(self._queues):
            worker = BatchWorker(self, q, self.max_batch)
            t = threading.Thread(target=worker.run, name=f"chf-redis-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def finished(self, items: list[_Pending]) -> None:
        """Operations of a batch are done: answer them on the event loop, in one call."""
        if not items:
            return
        with self._queued_lock:
            self._queued -= len(items)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_resolve_all, items)

    async def stop(self) -> None:
        threads, self._threads = self._threads, []
        for q in self._queues:
            q.put(None)
        loop = asyncio.get_running_loop()
        for t in threads:
            await loop.run_in_executor(None, t.join)
        self._queues = []

    def close(self) -> None:
        if self._threads:
            raise StoreError("stop the workers before closing the store")
        self.rc.close()

    @property
    def running(self) -> bool:
        return bool(self._threads)

    def queued(self) -> int:
        return self._queued

    def submit(self, fn: Any, *, nested: bool = True, affinity: Any = None) -> asyncio.Future[Any]:
        loop = self._loop
        if loop is None or not self._threads:
            raise StoreClosed("store workers are not running")
        future = loop.create_future()
        self._enqueue(_Pending(fn, future, None, affinity), affinity)
        return future

    def submit_then(self, fn: Any, done: Callable[[Any], None], *, nested: bool = True, affinity: Any = None) -> None:
        self._enqueue(_Pending(fn, None, done, affinity), affinity)

    def _enqueue(self, pending: _Pending, affinity: Any) -> None:
        if self._loop is None or not self._threads:
            raise StoreClosed("store workers are not running")
        if self._queued >= self.max_queue:
            raise StoreBusy(f"work queue full ({self.max_queue} operations waiting)")
        with self._queued_lock:
            self._queued += 1
        if affinity is None:
            index = 0
        else:
            # A session whose account is known goes to its account's thread: the requests of one shared wallet
            # or pool are then applied one after the other on this node instead of conflicting with each other
            # (the first request of a new session goes by the session id; its client waits for its answer).
            home = self.hints.get(("sx", affinity))
            index = hash(home[0] if home is not None else affinity) % len(self._queues)
        self._queues[index].put(pending)


def _resolve_all(items: list[_Pending]) -> None:
    for item in items:
        _resolve(item)


def _resolve(item: _Pending) -> None:
    if item.done is not None:
        try:
            item.done(item.result)
        except Exception:
            log.exception("event=store_callback_failed")
        return
    fut = item.future
    if fut is None or fut.done():
        return
    if isinstance(item.result, BaseException):
        fut.set_exception(item.result)
    else:
        fut.set_result(item.result)


class _ReadContext:
    __slots__ = ("_store",)

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    def __enter__(self) -> RedisTxn:
        return RedisTxn(self._store, False)

    def __exit__(self, *exc: object) -> None:
        return None


def _lua_pack(obj: Any) -> bytes:
    """msgpack for Redis's Lua cmsgpack, which knows no bin type: bytes go as raw strings."""
    return msgpack.packb(obj, use_bin_type=False)


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


if TYPE_CHECKING:  # mypy holds the Redis classes to the Protocols they implement

    def _implements(store: RedisStore, txn: RedisTxn) -> tuple[interface.Store, interface.Txn]:
        return store, txn


class EventFeed:
    """The events of every partition for one exporter: consumer group `export:<name>` on each partition's
    stream, read by the process holding the partition's export lease (one at a time; another takes over when
    the lease lapses). Entries delivered but not acknowledged stay pending and are read again first, so delivery
    is at least once and in order within a partition (so within an account). Synchronous: call it from a thread.
    """

    CONSUMER = "owner"  # one consumer name: a new lease holder reads what the last one left pending

    def __init__(self, store: RedisStore, name: str) -> None:
        self.store = store
        self.name = name
        self.group = "export:" + name
        self._groups: set[int] = set()
        self._next = 0

    def _key(self, p: int) -> str:
        return f"{{{self.store.tag(p)}}}:ev"

    def _ensure_group(self, p: int) -> None:
        if p in self._groups:
            return
        try:
            self.store.call(p, "XGROUP", "CREATE", self._key(p), self.group, "0", "MKSTREAM")
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(p)

    def take(self, limit: int) -> tuple[list[dict[str, Any]], Any]:
        """The next batch of one partition (its pending entries first): (events, token for `ack`)."""
        store = self.store
        parts = store.partitions
        for i in range(parts):
            p = (self._next + i) % parts
            if not store.lease(p, self.group):
                continue
            self._ensure_group(p)
            for start in ("0", ">"):
                answer = store.call(
                    p, "XREADGROUP", "GROUP", self.group, self.CONSUMER, "COUNT", limit, "STREAMS", self._key(p), start
                )
                entries = _stream_entries(answer)
                if entries:
                    self._next = p  # stay on this partition until it is drained
                    events = [_event_of(store, p, entry_id, fields) for entry_id, fields in entries]
                    return events, (p, [entry_id for entry_id, _ in entries])
        self._next = (self._next + 1) % parts
        return [], None

    def ack(self, token: Any) -> None:
        p, ids = token
        self.store.call(p, "XACK", self._key(p), self.group, *ids)

    def backlog(self) -> int:
        """Events not yet acknowledged, over every partition (lag + pending of the group)."""
        total = 0
        for p in range(self.store.partitions):
            try:
                groups = self.store.call(p, "XINFO", "GROUPS", self._key(p))
            except ResponseError:  # no stream yet
                continue
            for group in groups:
                info = dict(zip(group[::2], group[1::2], strict=False)) if isinstance(group, list) else group
                name = info.get(b"name") or info.get("name")
                if name in (self.group, self.group.encode()):
                    lag = info.get(b"lag", info.get("lag"))
                    pending = info.get(b"pending", info.get("pending")) or 0
                    total += int(lag or 0) + int(pending)
        return total


def _stream_entries(answer: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    if not answer:
        return []
    if isinstance(answer, dict):  # RESP3
        streams = list(answer.values())
        return [(e[0], e[1]) for e in streams[0][0]] if streams and streams[0] else []
    return [(entry_id, fields) for entry_id, fields in answer[0][1] if fields is not None]


def _event_of(store: RedisStore, p: int, entry_id: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
    event: dict[str, Any] = unpack(fields[b"e"])
    if b"s" in fields:  # copied from another store: its own number and id
        event["seq"] = int(fields[b"s"])
        event["id"] = fields[b"i"].decode()
        return event
    seq = int(entry_id.split(b"-", 1)[0]) * store.partitions + p
    event["seq"] = seq
    event["id"] = f"{store.store_id}-{seq}"
    return event
