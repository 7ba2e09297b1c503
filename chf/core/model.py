"""The core's protocol-neutral requests and answers.

Front-ends (gy/, nchf/, the management API) translate wire messages into these and back; the engine knows
nothing of Diameter AVPs or JSON. Answers are stored for exactly-once replay, so they pack to plain lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Request kinds.
INITIAL = "initial"
UPDATE = "update"
TERMINATE = "terminate"
EVENT = "event"

# One-shot event actions (RFC 4006 Requested-Action, and the Nchf one-time events: IEC is a direct debit).
DIRECT_DEBITING = "debit"
REFUND_ACCOUNT = "refund"
CHECK_BALANCE = "check_balance"
PRICE_ENQUIRY = "price_enquiry"
# Nchf one-time event PEC (TS 32.290 Post Event Charging): units already delivered, charged once.
POST_EVENT = "post_event"
EVENT_ACTIONS = (DIRECT_DEBITING, REFUND_ACCOUNT, CHECK_BALANCE, PRICE_ENQUIRY, POST_EVENT)

# Results. Front-ends map them: Diameter Result-Code in brackets, Nchf causes in the nchf front-end.
SUCCESS = "success"  # 2001
END_USER_SERVICE_DENIED = "end_user_service_denied"  # 4010
CREDIT_CONTROL_NOT_APPLICABLE = "credit_control_not_applicable"  # 4011
CREDIT_LIMIT_REACHED = "credit_limit_reached"  # 4012
SESSION_UNKNOWN = "session_unknown"  # 5002
USER_UNKNOWN = "user_unknown"  # 5030
RATING_FAILED = "rating_failed"  # 5031

# Final-Unit-Action.
FUA_TERMINATE = "terminate"
FUA_REDIRECT = "redirect"
FUA_RESTRICT = "restrict_access"

# Reporting reasons we act on (TS 32.299 Reporting-Reason); others are recorded as given.
REASON_FINAL = "final"

NO_RATING_GROUP = -1  # a unit request that names no rating group (RFC 4006 without MSCC, or MSCC without RG)


class RequestError(Exception):
    """The request is malformed in a way the front-end could not see: `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass
class UsageReport:
    """Units used since the last report, by unit type ("bytes", "seconds", "events", "money")."""

    units: dict[str, int]
    reason: str | None = None


@dataclass
class UnitRequest:
    """One rating group of a request. `requested` None means no new grant is wanted; an empty dict means
    "grant what you see fit" (an empty Requested-Service-Unit, the normal case)."""

    rating_group: int = NO_RATING_GROUP
    service_id: int | None = None
    requested: dict[str, int] | None = None
    used: list[UsageReport] = field(default_factory=list)
    reason: str | None = None


@dataclass
class ChargingRequest:
    kind: str
    session: str  # protocol-prefixed session key, e.g. "gy:<Session-Id>" or "nchf:<ChargingDataRef>"
    number: int  # CC-Request-Number / invocationSequenceNumber
    identities: list[tuple[str, str]]  # (imsi | msisdn | iccid | nai | sip, value)
    units: list[UnitRequest] = field(default_factory=list)
    protocol: str = "gy"
    action: str | None = None  # for EVENT
    serving_network: str | None = None  # MCC-MNC of the serving network (roaming zones)
    rat: str | None = None
    apn: str | None = None
    notify: Any = None  # what the front-end needs to reach the client later (peer, notify URI)
    idempotency_key: str | None = None  # for EVENT; defaults to session + number
    # The currency of the money the request names (ISO 4217; Gy: its CC-Money's Currency-Code); None: the
    # account's. Money in another currency is refused, never converted (chf/core/currency.py).
    currency: str | None = None

    def pack(self) -> list[Any]:
        """Positional lists (msgpack-friendly): front-end worker processes send requests to the core this way.
        `notify` must itself be packable (Gy: [host, realm], Nchf: the notify URI)."""
        return [
            1,  # version: a worker and a core of different releases refuse each other's requests
            self.kind,
            self.session,
            self.number,
            [list(i) for i in self.identities],
            [
                [u.rating_group, u.service_id, u.requested, [[r.units, r.reason] for r in u.used], u.reason]
                for u in self.units
            ],
            self.protocol,
            self.action,
            self.serving_network,
            self.rat,
            self.apn,
            self.notify,
            self.idempotency_key,
            self.currency,
        ]

    @classmethod
    def unpack(cls, r: list[Any]) -> ChargingRequest:
        if not r or r[0] != 1:
            raise ValueError(f"unsupported ChargingRequest version {r[0] if r else None!r}")
        units = [UnitRequest(u[0], u[1], u[2], [UsageReport(x[0], x[1]) for x in u[3]], u[4]) for u in r[5]]
        identities = [(i[0], i[1]) for i in r[4]]
        currency = r[13] if len(r) > 13 else None  # (a worker of the release before sends none)
        return cls(r[1], r[2], r[3], identities, units, r[6], r[7], r[8], r[9], r[10], r[11], r[12], currency)


@dataclass
class FinalUnit:
    action: str
    redirect_address: str | None = None
    filter_id: str | None = None
    restriction_rules: list[str] | None = None

    def pack(self) -> list[Any]:
        return [self.action, self.redirect_address, self.filter_id, self.restriction_rules]


@dataclass
class UnitAnswer:
    rating_group: int
    result: str = SUCCESS
    service_id: int | None = None
    unit: str | None = None
    granted: int | None = None
    validity_time: int | None = None
    volume_threshold: int | None = None
    time_threshold: int | None = None
    quota_holding_time: int | None = None
    final: FinalUnit | None = None
    charged: int = 0  # money charged for the units reported in this request
    over_grant: bool = False  # usage beyond the grant was reported (and charged)

    def pack(self) -> list[Any]:
        return [
            self.rating_group,
            self.result,
            self.service_id,
            self.unit,
            self.granted,
            self.validity_time,
            self.volume_threshold,
            self.time_threshold,
            self.quota_holding_time,
            self.final.pack() if self.final is not None else None,
            self.charged,
            self.over_grant,
        ]

    @classmethod
    def unpack(cls, r: list[Any]) -> UnitAnswer:
        final = FinalUnit(*r[9]) if r[9] is not None else None
        return cls(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], final, r[10], r[11])


def all_failed(units: list[UnitAnswer]) -> bool:
    """Whether every rating group of an answer failed (the request as a whole then carries the first failure)."""
    return all(u.result != SUCCESS for u in units)


@dataclass
class ChargingAnswer:
    result: str
    session: str
    number: int
    units: list[UnitAnswer] = field(default_factory=list)
    currency: str | None = None
    balance: int | None = None  # remaining wallet money (check balance, informational)
    cost: int | None = None  # price enquiry and direct debit: the cost of the units
    enough_credit: bool | None = None  # check balance
    detail: str | None = None  # why, for logs and ProblemDetails; never sent as a Diameter AVP
    duplicate: bool = False  # answered from the stored first answer (not stored itself)

    def pack(self) -> list[Any]:
        return [
            self.result,
            self.session,
            self.number,
            [u.pack() for u in self.units],
            self.currency,
            self.balance,
            self.cost,
            self.enough_credit,
            self.detail,
        ]

    @classmethod
    def unpack(cls, r: list[Any], duplicate: bool = False) -> ChargingAnswer:
        units = [UnitAnswer.unpack(u) for u in r[3]]
        return cls(r[0], r[1], r[2], units, r[4], r[5], r[6], r[7], r[8], duplicate)

    def unit(self, rating_group: int) -> UnitAnswer | None:
        for u in self.units:
            if u.rating_group == rating_group:
                return u
        return None


@dataclass(slots=True, frozen=True)
class Signal:
    """Something a front-end must tell a client after a commit: re-authorise (top-up, plan change) or abort
    (line suspended or terminated, line moved)."""

    kind: str  # "reauth" | "abort"
    session: str
    protocol: str
    notify: Any = None
    rating_groups: tuple[int, ...] = ()

    def pack(self) -> list[Any]:
        return [self.kind, self.session, self.protocol, self.notify, list(self.rating_groups)]

    @classmethod
    def unpack(cls, r: list[Any]) -> Signal:
        return cls(r[0], r[1], r[2], r[3], tuple(r[4]))


@dataclass(slots=True)
class OpResult:
    """What a management operation returns: a value for the caller and signals for the front-ends."""

    value: Any
    signals: list[Signal] = field(default_factory=list)
    duplicate: bool = False
