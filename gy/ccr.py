"""The Credit-Control-Request as the Gy front-end reads it (RFC 4006, TS 32.299): what both CCR decoders produce
(`ParsedCCR`), the value tables they map through, and the checks they share, derived from the CCR's grammar in
gy/grammar.py.

Two decoders give the same result: `gy.ccr_reference` (written for clarity; it decides every error) and
`gy.ccr_fast` (the hot path: it takes well-formed CCRs and leaves everything else to the reference).
`gy.ccr_fast.parse_ccr` is the entry point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chf.core.model import (
    CHECK_BALANCE,
    DIRECT_DEBITING,
    EVENT,
    INITIAL,
    PRICE_ENQUIRY,
    REFUND_ACCOUNT,
    TERMINATE,
    UPDATE,
    ChargingRequest,
)
from gy.codec import encode_raw
from gy.dictionary import lookup
from gy.grammar import MESSAGES, m_bit

# What a CCR must, may once, and must not carry (IETF AVPs; the 3GPP Service-Information is read where it is used).
CCR = MESSAGES["CCR"]
REQUIRED = CCR.required()
AT_MOST_ONCE = CCR.at_most_once()
NOT_ALLOWED_IN_CCR = CCR.not_allowed()

# RFC 4006 8.3 CC-Request-Type, 8.41 Requested-Action, 8.47 Subscription-Id-Type.
REQUEST_TYPES = {1: INITIAL, 2: UPDATE, 3: TERMINATE, 4: EVENT}
EVENT_REQUEST = 4
REQUESTED_ACTIONS = {0: DIRECT_DEBITING, 1: REFUND_ACCOUNT, 2: CHECK_BALANCE, 3: PRICE_ENQUIRY}
SUBSCRIPTION_ID_TYPES = {0: "msisdn", 1: "imsi", 2: "sip", 3: "nai", 4: "private"}
# TS 32.299 7.2.175 3GPP-Reporting-Reason, passed to the core lower-cased.
REPORTING_REASONS = {
    0: "threshold",
    1: "qht",
    2: "final",
    3: "quota_exhausted",
    4: "validity_time",
    5: "other_quota_type",
    6: "rating_condition_change",
    7: "forced_reauthorisation",
    8: "pool_exhausted",
    9: "unused_quota_timer",
}
# TS 29.061 3GPP-RAT-Type values, from 1.
RAT_TYPES = dict(
    enumerate(("utran", "geran", "wlan", "gan", "hspa_evolution", "eutran", "virtual", "eutran_nb_iot"), start=1)
)
# Service-Context-Id of Gy (TS 32.299 7.1.12: "<...>32251@3gpp.org"): PS-Information is read only for it.
GY_CONTEXT_SUFFIX = "32251@3gpp.org"


@dataclass(slots=True)
class ParsedCCR:
    request: ChargingRequest
    request_type: int
    session_id: str
    origin_host: str
    origin_realm: str
    uses_mscc: bool = False
    top_level_units: bool = False
    # The Currency-Code of the CCR's CC-Money (request.currency), as received: the Failed-AVP of its refusal.
    currency_avp: bytes | None = None
    requested_action: int | None = None
    extra: dict[str, object] = field(default_factory=dict)


def example_avp(code: int, vendor: int = 0) -> bytes:
    """RFC 6733 7.5: a missing AVP is reported as an example of it with a zeroed value of minimum length."""
    d = lookup(code, vendor)
    size = {"uint32": 4, "int32": 4, "uint64": 8, "int64": 8, "time": 4, "address": 6}.get(d.type if d else "", 0)
    flags = 0x40 if d is None or m_bit(d) else 0
    return encode_raw(code, flags, vendor, b"\0" * size)
