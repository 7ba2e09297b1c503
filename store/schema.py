"""Records kept in the balance store, and their msgpack encoding.

Every record is a msgpack array whose first element is the record's schema version, then its fields in the
order of its `Layout`: positional arrays are 1.6x faster than maps and 45% smaller (docs/architecture.md). A
reader that meets a version it does not know raises `SchemaError` instead of guessing.

Each record's fields are listed once, in its layout (below). The code that follows from the lists is derived
from them: `as_dict` when this module is imported, and the hot path (`encode`, `decode`, and store/schema.pxd,
which makes the records extension types in the compiled build) by `python -m store.codegen`, which writes it
into this file between "generated" markers. tests/test_store.py fails when that code, or an `__init__`, no
longer follows the layouts.

Money is an int in micro-units of the account currency; units are ints (octets, seconds, events).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import msgpack
import msgspec

SCHEMA_VERSION = 1

# Line lifecycle (docs/architecture.md).
PROVISIONED = "provisioned"
ACTIVE = "active"
SUSPENDED = "suspended"
TERMINATED = "terminated"
LINE_STATES = (PROVISIONED, ACTIVE, SUSPENDED, TERMINATED)
LINE_TRANSITIONS: dict[str, frozenset[str]] = {
    PROVISIONED: frozenset({ACTIVE, TERMINATED}),
    ACTIVE: frozenset({SUSPENDED, TERMINATED}),
    SUSPENDED: frozenset({ACTIVE, TERMINATED}),
    TERMINATED: frozenset(),
}

PAYMENT_TYPES = ("prepaid", "postpaid", "hybrid")

# Where a reserved or consumed amount comes from (Reservation.portions, event impacts).
SRC_LINE = 0  # a bucket of the line's own balance set
SRC_ACCOUNT = 1  # a bucket of the account's balance set (shared allowance, IoT pool)
SRC_WALLET = 2  # the account wallet (money)


class SchemaError(Exception):
    """A stored record has a schema version this code does not understand."""


def _check(version: int, kind: str) -> None:
    if version != SCHEMA_VERSION:
        raise SchemaError(f"{kind} record has schema version {version}, this code reads {SCHEMA_VERSION}")


# Records are msgpack. msgspec encodes and decodes it in about half the time of the msgpack package (a rated
# event: 1.6 against 3.4 µs to encode, 4.1 against 8.3 µs to decode), with the same bytes: the smallest
# representation of every value, bytes as bin, str as str, arrays decoded as lists, map keys of any type.
# tests/test_store.py checks that the two produce the same bytes and values. The msgpack package stays for
# `pack_template`, whose hole markers need its ext-type hook.
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def pack(obj: Any) -> bytes:
    return _encoder.encode(obj)


pack_value = _encoder.encode  # `pack` without a Python call around it, for loops packing many small values


def unpack(data: bytes) -> Any:
    return _decoder.decode(data)


class Hole:
    """A value left out of a record encoded as a template (`pack_template`); `name` says what goes there."""

    __slots__ = ("name",)

    def __init__(self, name: Any) -> None:
        self.name = name


_HOLE_EXT = 42
_HOLE_TOKEN = secrets.token_bytes(15)  # fresh per process: no real data holds it


def pack_template(obj: Any) -> tuple[list[bytes], list[Any]]:
    """Encode `obj` with its `Hole`s left out, for records that differ in a few values only (bulk import).

    Returns the bytes between the holes (one more than there are holes) and the holes' names in encoding
    order: parts[0] + pack(v0) + parts[1] + ... + pack(vN) + parts[N+1] is `pack(obj)` with hole i replaced
    by the value vi, byte for byte."""
    names: list[Any] = []

    def mark(value: Any) -> Any:
        if not isinstance(value, Hole) or len(names) > 255:
            raise TypeError(f"cannot encode {value!r}")
        names.append(value.name)
        return msgpack.ExtType(_HOLE_EXT, _HOLE_TOKEN + bytes([len(names) - 1]))  # 16 bytes: a fixext 16

    data = msgpack.Packer(use_bin_type=True, default=mark).pack(obj)
    pieces = data.split(b"\xd8" + bytes([_HOLE_EXT]) + _HOLE_TOKEN)
    parts = [pieces[0]]
    for index, piece in enumerate(pieces[1:]):
        if piece[:1] != bytes([index]):
            raise ValueError("a hole marker is out of order")
        parts.append(piece[1:])
    if len(parts) != len(names) + 1:
        raise ValueError("a hole marker is missing")
    return parts, names


# ------------------------------------------------------------------------------------------------------------------
# Record layouts: the fields of each stored record, once
# ------------------------------------------------------------------------------------------------------------------
class Many:
    """A field that holds records of another layout, stored as an array of their arrays. In memory they are a
    list, or with `key` a dict of them by that field of theirs (a session's reservations by rating group)."""

    __slots__ = ("key", "layout")

    def __init__(self, layout: Layout, key: str | None = None) -> None:
        self.layout = layout
        self.key = key


class Layout:
    """How one kind of record is stored: its fields in stored order (the msgpack array after the schema version,
    for records stored on their own; records stored inside another have no version of their own), the fields
    among them that hold records of another layout (`Many`), and what `as_dict` shows (`shown`: fields, and
    `views` computed from the record).

    A record class takes its fields in this order (`__init__`) and declares them in store/schema.pxd; its
    `encode` and `decode` (or `pack`, for a record stored inside another) are written out from the layout by
    store/codegen.py, which says why. `as_dict`, off the hot path, is built from the layout at import."""

    __slots__ = ("cls", "fields", "kind", "nested", "optional", "shown", "versioned", "views")

    def __init__(
        self,
        kind: str,
        fields: tuple[str, ...],
        *,
        nested: dict[str, Many] | None = None,
        shown: tuple[str, ...] | None = None,
        views: dict[str, Callable[[Any], Any]] | None = None,
        versioned: bool = True,
        optional: tuple[str, ...] = (),
    ) -> None:
        self.kind = kind  # in messages: "balance set record has schema version ..."
        self.fields = fields
        self.nested = nested or {}
        self.shown = shown if shown is not None else fields
        self.views = views or {}
        self.versioned = versioned
        # Trailing fields (the last of `fields`, default None) stored only when one of them is set: a record that
        # uses none of them keeps the bytes it had before they were added, and an older record reads as unset.
        if fields[len(fields) - len(optional) :] != optional:
            raise ValueError(f"{kind}: optional fields {optional} must be the last fields")
        self.optional = optional
        self.cls: Any = None  # the record class, once it is defined (end of this module)

    def position(self, name: str) -> int:
        """Where field `name` sits in the stored array."""
        return self.fields.index(name) + (1 if self.versioned else 0)

    def viewer(self) -> Callable[[Any], dict[str, Any]]:
        """`record.as_dict()`: the shown entries by name, in order (what the API and the CLI show of a record)."""
        shown = self.shown
        views = self.views

        def as_dict(record: Any) -> dict[str, Any]:
            return {name: views[name](record) if name in views else getattr(record, name) for name in shown}

        return as_dict


# A tenant's `parent` is the tenant above it (the operator above a reseller, a reseller above an enterprise:
# chf.core.wholesale); `tax_profile` names the catalogue's tax profile of its accounts (chf.core.tax).
TENANT = Layout(
    "tenant", ("id", "name", "currency", "created", "parent", "tax_profile"), optional=("parent", "tax_profile")
)
ACCOUNT = Layout(
    "account",
    (
        "id",
        "tenant",
        "payment",
        "currency",
        "balance",
        "reserved",
        "credit_limit",
        "cycle_day",
        "parent",
        "plan",
        "created",
        "active_lines",
        "price_list",
        "tax_profile",
    ),
    optional=("price_list", "tax_profile"),
    shown=(
        "id",
        "tenant",
        "payment",
        "currency",
        "balance",
        "reserved",
        "available",
        "credit_limit",
        "cycle_day",
        "parent",
        "plan",
        "active_lines",
        "created",
        "price_list",
        "tax_profile",
    ),
    views={"available": lambda account: account.available()},
)
SUBSCRIBER = Layout(
    "subscriber",
    (
        "id",
        "tenant",
        "account",
        "imsi",
        "msisdn",
        "iccid",
        "eid",
        "state",
        "state_since",
        "plan",
        "created",
        "history",
    ),
    views={
        "history": lambda sub: [
            {"from": h[0], "to": h[1], "at": h[2], "actor": h[3], "reason": h[4]} for h in sub.history
        ]
    },
)
BUCKET = Layout(
    "bucket",
    (
        "id",
        "name",
        "kind",
        "unit",
        "rating_groups",
        "priority",
        "initial",
        "remaining",
        "reserved",
        "valid_from",
        "valid_to",
        "zones",
        "fair_use_left",
    ),
    shown=(
        "id",
        "name",
        "kind",
        "unit",
        "rating_groups",
        "priority",
        "initial",
        "remaining",
        "reserved",
        "available",
        "valid_from",
        "valid_to",
        "zones",
        "fair_use_left",
    ),
    views={"available": lambda bucket: bucket.available()},
    versioned=False,
    optional=("zones", "fair_use_left"),
)
BALANCE_SET = Layout(
    "balance set",
    ("plan", "period_start", "period_end", "period_index", "buckets", "usage", "next_bucket_id", "renewal_pending"),
    nested={"buckets": Many(BUCKET)},
)
RESERVATION = Layout(
    "reservation",
    ("rating_group", "unit", "granted", "portions", "money", "tariff", "zone", "payer"),
    shown=("rating_group", "unit", "granted", "money", "tariff", "zone", "payer"),
    versioned=False,
    optional=("payer",),
)
SESSION = Layout(
    "session",
    (
        "key",
        "subscriber",
        "account",
        "protocol",
        "created",
        "updated",
        "expires",
        "last_request",
        "closed",
        "reservations",
        "answers",
        "serving_network",
        "notify",
        "seen",
        "apn",
        "rat",
    ),
    nested={"reservations": Many(RESERVATION, key="rating_group")},
    optional=("apn", "rat"),
    shown=(
        "key",
        "subscriber",
        "account",
        "protocol",
        "created",
        "updated",
        "expires",
        "last_request",
        "closed",
        "serving_network",
        "reservations",
    ),
    views={"reservations": lambda session: [r.as_dict() for r in session.reservations.values()]},
)
DEBIT = Layout(
    "debit",
    ("line", "rating_group", "seq", "event", "time", "account", "unit", "portions", "units", "money"),
    views={"portions": lambda debit: [{"source": p[0], "bucket": p[1], "units": p[2]} for p in debit.portions]},
)


class Tenant:
    __slots__ = TENANT.fields

    def __init__(
        self, id: str, name: str, currency: str, created: int, parent: str | None = None, tax_profile: str | None = None
    ) -> None:
        self.id = id
        self.name = name
        self.currency = currency
        self.created = created
        self.parent = parent
        self.tax_profile = tax_profile

    as_dict = TENANT.viewer()

    # <generated from TENANT>
    def encode(self) -> bytes:
        r = [
            SCHEMA_VERSION,
            self.id,
            self.name,
            self.currency,
            self.created,
        ]
        if self.parent is not None or self.tax_profile is not None:
            r.append(self.parent)
            r.append(self.tax_profile)
        return pack(r)

    @classmethod
    def decode(cls, data: bytes) -> Tenant:
        r = unpack(data)
        _check(r[0], "tenant")
        return cls(
            r[1],
            r[2],
            r[3],
            r[4],
            r[5] if len(r) > 5 else None,
            r[6] if len(r) > 6 else None,
        )

    # </generated>


class Account:
    """An account: its wallet (money), credit limit, billing cycle and optional account-level plan.

    `balance` is opening + credits - debits (it may go below zero for postpaid and hybrid accounts, down to
    -credit_limit, and for any account when usage beyond a grant is charged). `reserved` is money held for
    open grants. Available money = balance - reserved + credit_limit.
    """

    __slots__ = ACCOUNT.fields

    def __init__(
        self,
        id: str,
        tenant: str,
        payment: str,
        currency: str,
        balance: int = 0,
        reserved: int = 0,
        credit_limit: int = 0,
        cycle_day: int = 1,
        parent: str | None = None,
        plan: str | None = None,
        created: int = 0,
        active_lines: int = 0,
        price_list: str | None = None,
        tax_profile: str | None = None,
    ) -> None:
        self.id = id
        self.tenant = tenant
        self.payment = payment
        self.currency = currency
        self.balance = balance
        self.reserved = reserved
        self.credit_limit = credit_limit
        self.cycle_day = cycle_day
        self.parent = parent
        self.plan = plan
        self.created = created
        self.active_lines = active_lines
        # The price list this account pays by for the usage of the lines below it, when it is another account's
        # parent (chf.core.wholesale), and its tax profile (chf.core.tax; None: its tenant's).
        self.price_list = price_list
        self.tax_profile = tax_profile

    def available(self) -> int:
        return self.balance - self.reserved + self.credit_limit

    as_dict = ACCOUNT.viewer()

    # <generated from ACCOUNT>
    def encode(self) -> bytes:
        r = [
            SCHEMA_VERSION,
            self.id,
            self.tenant,
            self.payment,
            self.currency,
            self.balance,
            self.reserved,
            self.credit_limit,
            self.cycle_day,
            self.parent,
            self.plan,
            self.created,
            self.active_lines,
        ]
        if self.price_list is not None or self.tax_profile is not None:
            r.append(self.price_list)
            r.append(self.tax_profile)
        return pack(r)

    @classmethod
    def decode(cls, data: bytes) -> Account:
        r = unpack(data)
        _check(r[0], "account")
        return cls(
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            r[7],
            r[8],
            r[9],
            r[10],
            r[11],
            r[12],
            r[13] if len(r) > 13 else None,
            r[14] if len(r) > 14 else None,
        )

    # </generated>


class Subscriber:
    """One line (SIM or eSIM). Identities are indexed; `history` keeps every lifecycle transition."""

    __slots__ = SUBSCRIBER.fields

    def __init__(
        self,
        id: int,
        tenant: str,
        account: str,
        imsi: str,
        msisdn: str | None,
        iccid: str | None,
        eid: str | None,
        state: str,
        state_since: int,
        plan: str | None,
        created: int,
        history: list[list[Any]] | None = None,
    ) -> None:
        self.id = id
        self.tenant = tenant
        self.account = account
        self.imsi = imsi
        self.msisdn = msisdn
        self.iccid = iccid
        self.eid = eid
        self.state = state
        self.state_since = state_since
        self.plan = plan
        self.created = created
        self.history = history if history is not None else []

    as_dict = SUBSCRIBER.viewer()

    # <generated from SUBSCRIBER>
    def encode(self) -> bytes:
        return pack(
            [
                SCHEMA_VERSION,
                self.id,
                self.tenant,
                self.account,
                self.imsi,
                self.msisdn,
                self.iccid,
                self.eid,
                self.state,
                self.state_since,
                self.plan,
                self.created,
                self.history,
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> Subscriber:
        r = unpack(data)
        _check(r[0], "subscriber")
        return cls(
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            r[7],
            r[8],
            r[9],
            r[10],
            r[11],
            r[12],
        )

    # </generated>


class Bucket:
    """An allowance: `remaining` units of one type, `reserved` of them held for open grants."""

    __slots__ = BUCKET.fields

    def __init__(
        self,
        id: int,
        name: str,
        kind: str,
        unit: str,
        rating_groups: list[int] | None,
        priority: int,
        initial: int,
        remaining: int,
        reserved: int,
        valid_from: int,
        valid_to: int,
        zones: list[str] | None = None,
        fair_use_left: int | None = None,
    ) -> None:
        self.id = id
        self.name = name
        self.kind = kind  # plan | bonus | pool | rollover | adjustment
        self.unit = unit
        self.rating_groups = rating_groups
        self.priority = priority
        self.initial = initial
        self.remaining = remaining
        self.reserved = reserved
        self.valid_from = valid_from
        self.valid_to = valid_to
        # The zones (catalogue zone names) whose usage this bucket pays; None: every zone (chf/core/zones.py).
        self.zones = zones
        # Fair use: units of it that usage outside the home zone may still take or hold this period; None: no
        # limit. Held at a grant, given back for what the grant did not use (chf/core/zones.py).
        self.fair_use_left = fair_use_left

    def available(self) -> int:
        return self.remaining - self.reserved

    def usable(self, unit: str, rating_group: int, now: int) -> bool:
        return (
            self.unit == unit
            and self.valid_from <= now < self.valid_to
            and (self.rating_groups is None or rating_group in self.rating_groups)
        )

    as_dict = BUCKET.viewer()

    # <generated from BUCKET>
    def pack(self) -> list[Any]:
        r = [
            self.id,
            self.name,
            self.kind,
            self.unit,
            self.rating_groups,
            self.priority,
            self.initial,
            self.remaining,
            self.reserved,
            self.valid_from,
            self.valid_to,
        ]
        if self.zones is not None or self.fair_use_left is not None:
            r.append(self.zones)
            r.append(self.fair_use_left)
        return r

    # </generated>


class BalanceSet:
    """Everything that renews with an owner's plan: its buckets, usage counters and period.

    The owner is a line (its own allowances) or an account (shared allowances and IoT pools). Usage counters
    per rating group feed tiered prices and reset at each period boundary.
    """

    __slots__ = BALANCE_SET.fields

    def __init__(
        self,
        plan: str | None = None,
        period_start: int = 0,
        period_end: int = 0,
        period_index: int = 0,
        buckets: list[Bucket] | None = None,
        usage: dict[int, int] | None = None,
        next_bucket_id: int = 1,
        renewal_pending: bool = False,
    ) -> None:
        self.plan = plan
        self.period_start = period_start
        self.period_end = period_end
        self.period_index = period_index
        self.buckets = buckets if buckets is not None else []
        self.usage = usage if usage is not None else {}
        self.next_bucket_id = next_bucket_id
        # The period's fee could not be paid: its allowances were not granted.
        self.renewal_pending = renewal_pending

    def bucket(self, bucket_id: int) -> Bucket | None:
        for b in self.buckets:
            if b.id == bucket_id:
                return b
        return None

    def new_bucket_id(self) -> int:
        bid = self.next_bucket_id
        self.next_bucket_id += 1
        return bid

    # <generated from BALANCE_SET>
    def encode(self) -> bytes:
        return pack(
            [
                SCHEMA_VERSION,
                self.plan,
                self.period_start,
                self.period_end,
                self.period_index,
                [x.pack() for x in self.buckets],
                self.usage,
                self.next_bucket_id,
                self.renewal_pending,
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> BalanceSet:
        r = unpack(data)
        _check(r[0], "balance set")
        return cls(
            r[1],
            r[2],
            r[3],
            r[4],
            [Bucket(*x) for x in r[5]],
            r[6],
            r[7],
            r[8],
        )

    # </generated>


class Reservation:
    """Units granted to one rating group of a session, and the balances that hold them.

    `portions` is a list of [source, bucket_id, units] in consumption order (SRC_LINE / SRC_ACCOUNT buckets),
    `money` the wallet money held for the units beyond the buckets, priced with `tariff` in `zone`.
    """

    __slots__ = RESERVATION.fields

    def __init__(
        self,
        rating_group: int,
        unit: str,
        granted: int,
        portions: list[list[int]],
        money: int,
        tariff: str | None,
        zone: str,
        payer: str | None = None,
    ) -> None:
        self.rating_group = rating_group
        self.unit = unit
        self.granted = granted
        self.portions = portions
        self.money = money
        self.tariff = tariff
        self.zone = zone
        # The account that pays it when a split-billing rule routed it to another than the line's (chf/core/split.py):
        # its buckets hold `portions` of source SRC_ACCOUNT and its wallet `money`. None: the line's account.
        self.payer = payer

    as_dict = RESERVATION.viewer()

    # <generated from RESERVATION>
    def pack(self) -> list[Any]:
        r = [
            self.rating_group,
            self.unit,
            self.granted,
            self.portions,
            self.money,
            self.tariff,
            self.zone,
        ]
        if self.payer is not None:
            r.append(self.payer)
        return r

    # </generated>


class Session:
    """An open charging session of one line, with its reservations per rating group.

    `answers` keeps the most recent answers by request number: a retransmitted request is answered from here,
    with no extra page write (the session is rewritten on every request anyway).
    """

    __slots__ = SESSION.fields

    def __init__(
        self,
        key: str,
        subscriber: int,
        account: str,
        protocol: str,
        created: int,
        updated: int,
        expires: int,
        last_request: int,
        closed: bool,
        reservations: dict[int, Reservation],
        answers: list[list[Any]],
        serving_network: str | None,
        notify: Any = None,
        seen: int = 1,
        apn: str | None = None,
        rat: str | None = None,
    ) -> None:
        self.key = key
        self.subscriber = subscriber
        self.account = account
        self.protocol = protocol
        self.created = created
        self.updated = updated
        self.expires = expires
        self.last_request = last_request
        self.closed = closed
        self.reservations = reservations
        self.answers = answers
        self.serving_network = serving_network
        self.notify = notify  # front-end data needed to reach the client (peer, notify URI)
        # Request numbers already applied, as a bit mask below last_request (bit i: last_request - i), so that
        # requests arriving out of order are applied once each, even after their answers left `answers`.
        self.seen = seen
        # The APN / DNN and RAT type the client reported (split billing routes by them, chf/core/split.py).
        self.apn = apn
        self.rat = rat

    as_dict = SESSION.viewer()

    # <generated from SESSION>
    def encode(self) -> bytes:
        r = [
            SCHEMA_VERSION,
            self.key,
            self.subscriber,
            self.account,
            self.protocol,
            self.created,
            self.updated,
            self.expires,
            self.last_request,
            self.closed,
            [x.pack() for x in self.reservations.values()],
            self.answers,
            self.serving_network,
            self.notify,
            self.seen,
        ]
        if self.apn is not None or self.rat is not None:
            r.append(self.apn)
            r.append(self.rat)
        return pack(r)

    @classmethod
    def decode(cls, data: bytes) -> Session:
        r = unpack(data)
        _check(r[0], "session")
        return cls(
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            r[7],
            r[8],
            r[9],
            {x[0]: Reservation(*x) for x in r[10]},
            r[11],
            r[12],
            r[13],
            r[14],
            r[15] if len(r) > 15 else None,
            r[16] if len(r) > 16 else None,
        )

    # </generated>

    SEEN_WINDOW = 64

    def was_applied(self, number: int) -> bool | None:
        """True if request `number` was applied, False if not, None if it is too old to tell."""
        if number > self.last_request:
            return False
        back = self.last_request - number
        if back >= self.SEEN_WINDOW:
            return None
        return bool(self.seen >> back & 1)

    def mark_applied(self, number: int) -> None:
        if number > self.last_request:
            gap = number - self.last_request
            # A jump past the window forgets everything older (never shift by an unbounded, client-chosen gap).
            self.seen = ((self.seen << gap) | 1) & ((1 << self.SEEN_WINDOW) - 1) if gap < self.SEEN_WINDOW else 1
            self.last_request = number
        else:
            self.seen |= 1 << (self.last_request - number)

    def answer_for(self, request_number: int) -> Any:
        """The kept answer to `request_number`, as ChargingAnswer.pack() gave it, or None."""
        for num, answer in self.answers:
            if num == request_number:
                # Kept packed (bytes) since answers stopped being re-encoded with every update; a list is an
                # answer kept before that.
                return unpack(answer) if isinstance(answer, bytes) else answer
        return None


class Debit:
    """What is left of a one-shot debit (CCR-Event DIRECT_DEBITING, Nchf IEC or PEC) that a REFUND_ACCOUNT may
    still reverse (chf.core.events): the units it took from each bucket, those it charged to the wallet and their
    money, less what was refunded since. `event` is the id of the debit's usage event, which each refund names.

    Kept per line and rating group, oldest first (`Txn.debits`), and only for the refund window
    ([engine] refund_window): older debits are no longer refundable and are deleted.
    """

    __slots__ = DEBIT.fields

    def __init__(
        self,
        line: int,
        rating_group: int,
        seq: int,
        event: str,
        time: int,
        account: str,
        unit: str,
        portions: list[list[int]],
        units: int,
        money: int,
    ) -> None:
        self.line = line
        self.rating_group = rating_group
        self.seq = seq  # the debit event's sequence number
        self.event = event
        self.time = time
        self.account = account  # the account whose wallet and shared buckets paid
        self.unit = unit
        self.portions = portions  # [source, bucket id, units not yet refunded], in the order they were taken
        self.units = units  # units charged to the wallet, not yet refunded
        self.money = money  # the money charged for them, not yet refunded

    def left(self) -> int:
        """The units still refundable (buckets and wallet)."""
        total = self.units
        for portion in self.portions:
            total += portion[2]
        return total

    as_dict = DEBIT.viewer()

    # <generated from DEBIT>
    def encode(self) -> bytes:
        return pack(
            [
                SCHEMA_VERSION,
                self.line,
                self.rating_group,
                self.seq,
                self.event,
                self.time,
                self.account,
                self.unit,
                self.portions,
                self.units,
                self.money,
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> Debit:
        r = unpack(data)
        _check(r[0], "debit")
        return cls(
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            r[7],
            r[8],
            r[9],
            r[10],
        )

    # </generated>


for _layout, _cls in (
    (TENANT, Tenant),
    (ACCOUNT, Account),
    (SUBSCRIBER, Subscriber),
    (BUCKET, Bucket),
    (BALANCE_SET, BalanceSet),
    (RESERVATION, Reservation),
    (SESSION, Session),
    (DEBIT, Debit),
):
    _layout.cls = _cls
del _layout, _cls
