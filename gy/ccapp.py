"""The Diameter credit-control application (RFC 4006, TS 32.299 Gy): CCR -> ChargingRequest, ChargingAnswer -> CCA.

Only translation lives here (DESIGN.md section 1). Every check that RFC 6733 / RFC 4006 asks of a receiver is
made before the request reaches the core, so a malformed CCR changes nothing and gets a precise Result-Code
with Failed-AVP.

Speed (DESIGN.md section 8): `parse_ccr` walks a well-formed CCR once with precompiled structs and gives up on
anything else, which `parse_ccr_reference` then decides; `AnswerEncoder.encode_cca` builds the CCA from
pre-encoded runs. Both are checked against their references in tests/test_gy_fastpath.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from chf.core.model import (
    CHECK_BALANCE,
    CREDIT_CONTROL_NOT_APPLICABLE,
    CREDIT_LIMIT_REACHED,
    DIRECT_DEBITING,
    END_USER_SERVICE_DENIED,
    EVENT,
    FUA_REDIRECT,
    FUA_RESTRICT,
    INITIAL,
    NO_RATING_GROUP,
    PRICE_ENQUIRY,
    RATING_FAILED,
    REFUND_ACCOUNT,
    SESSION_UNKNOWN,
    SUCCESS,
    TERMINATE,
    UPDATE,
    USER_UNKNOWN,
    ChargingAnswer,
    ChargingRequest,
    FinalUnit,
    UnitAnswer,
    UnitRequest,
    UsageReport,
)
from gy.codec import AVP_RESERVED_BITS, FLAG_PROXIABLE, HEADER_LEN, Avp, DecodeError, E, Message, encode_raw, find
from gy.dictionary import BY_KEY, VENDOR_3GPP, lookup

APP_CREDIT_CONTROL = 4
CMD_CC = 272

RESULT_CODES = {
    SUCCESS: 2001,
    END_USER_SERVICE_DENIED: 4010,
    CREDIT_CONTROL_NOT_APPLICABLE: 4011,
    CREDIT_LIMIT_REACHED: 4012,
    SESSION_UNKNOWN: 5002,
    USER_UNKNOWN: 5030,
    RATING_FAILED: 5031,
}
UNABLE_TO_COMPLY = 5012

REQUEST_TYPES = {1: INITIAL, 2: UPDATE, 3: TERMINATE, 4: EVENT}
REQUEST_TYPE_CODES = {v: k for k, v in REQUEST_TYPES.items()}
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
# TS 29.061 3GPP-RAT-Type values.
RAT_TYPES = {
    1: "utran", 2: "geran", 3: "wlan", 4: "gan", 5: "hspa_evolution", 6: "eutran", 7: "virtual", 8: "eutran_nb_iot"
}  # fmt: skip
FINAL_UNIT_ACTIONS = {"terminate": 0, FUA_REDIRECT: 1, FUA_RESTRICT: 2}
# ISO 4217 numeric codes (Currency-Code is numeric on the wire).
CURRENCIES = {
    "EUR": 978, "USD": 840, "GBP": 826, "CHF": 756, "INR": 356, "JPY": 392, "SEK": 752, "NOK": 578, "DKK": 208,
    "PLN": 985, "CZK": 203, "HUF": 348, "RON": 946, "CAD": 124, "AUD": 36, "BRL": 986, "MXN": 484, "ZAR": 710,
    "TRY": 949, "CNY": 156, "MAD": 504, "XOF": 952, "XAF": 950, "NGN": 566, "KES": 404, "IDR": 360, "PHP": 608,
}  # fmt: skip
GY_CONTEXT_SUFFIX = "32251@3gpp.org"

# AVP codes (base / RFC 4006 unless marked 3GPP).
SESSION_ID = 263
ORIGIN_HOST = 264
ORIGIN_REALM = 296
DESTINATION_REALM = 283
AUTH_APPLICATION_ID = 258
SERVICE_CONTEXT_ID = 461
CC_REQUEST_TYPE = 416
CC_REQUEST_NUMBER = 415
REQUESTED_ACTION = 436
SUBSCRIPTION_ID = 443
SUBSCRIPTION_ID_TYPE = 450
SUBSCRIPTION_ID_DATA = 444
USER_NAME = 1
MSCC = 456
RSU = 437
USU = 446
RATING_GROUP = 432
SERVICE_IDENTIFIER = 439
CC_TIME = 420
CC_MONEY = 413
CC_TOTAL_OCTETS = 421
CC_INPUT_OCTETS = 412
CC_OUTPUT_OCTETS = 414
CC_SSU = 417
UNIT_VALUE = 445
VALUE_DIGITS = 447
EXPONENT = 429
CURRENCY_CODE = 425
TARIFF_CHANGE_USAGE = 452
REPORTING_REASON_3GPP = 872
SERVICE_INFORMATION_3GPP = 873
PS_INFORMATION_3GPP = 874
SGSN_MCC_MNC_3GPP = 18
RAT_TYPE_3GPP = 21
CALLED_STATION_ID = 30

REQUIRED = (SESSION_ID, ORIGIN_HOST, ORIGIN_REALM, DESTINATION_REALM, AUTH_APPLICATION_ID, SERVICE_CONTEXT_ID,
            CC_REQUEST_TYPE, CC_REQUEST_NUMBER)  # fmt: skip
AT_MOST_ONCE = frozenset(
    (*REQUIRED, 293, USER_NAME, 55, REQUESTED_ACTION, RSU, 295, 278, SERVICE_IDENTIFIER, SERVICE_INFORMATION_3GPP)
)
_KNOWN_BASE = frozenset(code for code in range(1, 2**16) if lookup(code, 0) is not None)
# AVPs that belong to answers and make no sense in a CCR (RFC 6733 7.1.5 DIAMETER_AVP_NOT_ALLOWED).
NOT_ALLOWED_IN_CCR = frozenset((268, 297, 431, 430, 423, 422, 294, 448))


@dataclass(slots=True)
class ParsedCCR:
    request: ChargingRequest
    request_type: int
    session_id: str
    origin_host: str
    origin_realm: str
    uses_mscc: bool = False
    top_level_units: bool = False
    currency_code: int | None = None
    requested_action: int | None = None
    extra: dict[str, object] = field(default_factory=dict)


def example_avp(code: int, vendor: int = 0) -> bytes:
    """RFC 6733 7.5: a missing AVP is reported as an example of it with a zeroed value of minimum length."""
    d = lookup(code, vendor)
    size = {"uint32": 4, "int32": 4, "uint64": 8, "int64": 8, "time": 4, "address": 6}.get(d.type if d else "", 0)
    flags = 0x40 if d is None or d.mandatory else 0
    return encode_raw(code, flags, vendor, b"\0" * size)


def _once(avps: list[Avp], code: int, vendor: int = 0) -> Avp | None:
    found = None
    for a in avps:
        if a.code == code and a.vendor == vendor:
            if found is not None:
                raise DecodeError(5009, f"AVP {code} occurs more than once", a.raw())
            found = a
    return found


def _check_flags(avps: list[Avp]) -> None:
    for a in avps:
        if a.flags & AVP_RESERVED_BITS:
            raise DecodeError(3009, f"{a!r}: reserved flag bits set", a.raw())
        if a.flags & 0x40 and lookup(a.code, a.vendor) is None:
            raise DecodeError(5001, f"AVP {a.code} (vendor {a.vendor}) with the M bit is not supported", a.raw())


def _invalid(a: Avp, why: str) -> DecodeError:
    return DecodeError(5004, f"{a!r}: {why}", a.raw())


def money_micro(cc_money: Avp) -> tuple[int, int | None]:
    """CC-Money -> (integer micro-units, Currency-Code). Unit-Value = Value-Digits x 10^Exponent, exactly."""
    children = cc_money.children
    unit_value = _once(children, UNIT_VALUE)
    if unit_value is None:
        raise DecodeError(5005, "CC-Money without Unit-Value", example_avp(UNIT_VALUE))
    digits_avp = _once(unit_value.children, VALUE_DIGITS)
    if digits_avp is None:
        raise DecodeError(5005, "Unit-Value without Value-Digits", example_avp(VALUE_DIGITS))
    digits = digits_avp.i64()
    exponent_avp = _once(unit_value.children, EXPONENT)
    exponent = exponent_avp.i32() if exponent_avp is not None else 0
    shift = exponent + 6
    if shift >= 0:
        if shift > 18:
            raise _invalid(unit_value, f"exponent {exponent} out of range")
        micro = digits * 10**shift
    else:
        divisor = 10**-shift if shift > -19 else 0
        if divisor == 0 or digits % divisor:
            raise _invalid(unit_value, f"{digits}e{exponent} is not a whole number of micro-units")
        micro = digits // divisor
    if micro < 0:
        raise _invalid(unit_value, "negative amount")
    currency = _once(children, CURRENCY_CODE)
    return micro, currency.u32() if currency is not None else None


def parse_units(group: Avp, ccr: ParsedCCR) -> dict[str, int]:
    units: dict[str, int] = {}
    for a in group.children:
        if a.vendor:
            continue
        c = a.code
        if c == CC_TOTAL_OCTETS:
            units["bytes"] = a.u64()
        elif c == CC_INPUT_OCTETS:
            units["bytes_in"] = a.u64()
        elif c == CC_OUTPUT_OCTETS:
            units["bytes_out"] = a.u64()
        elif c == CC_TIME:
            units["seconds"] = a.u32()
        elif c == CC_SSU:
            units["events"] = a.u64()
        elif c == CC_MONEY:
            units["money"], currency = money_micro(a)
            if currency is not None:
                ccr.currency_code = currency
    if "bytes" not in units and ("bytes_in" in units or "bytes_out" in units):
        units["bytes"] = units.get("bytes_in", 0) + units.get("bytes_out", 0)
    return units


def _reason(avps: list[Avp]) -> str | None:
    a = _once(avps, REPORTING_REASON_3GPP, VENDOR_3GPP)
    if a is None:
        return None
    value = a.i32()
    return REPORTING_REASONS.get(value, str(value))


def parse_usage(usu: Avp, ccr: ParsedCCR) -> UsageReport:
    children = usu.children
    _check_flags(children)
    report = UsageReport(parse_units(usu, ccr), _reason(children))
    tcu = _once(children, TARIFF_CHANGE_USAGE)
    if tcu is not None:
        value = tcu.i32()
        if value not in (0, 1, 2):
            raise _invalid(tcu, f"Tariff-Change-Usage {value} is not 0, 1 or 2")
    return report


def parse_mscc(mscc: Avp, ccr: ParsedCCR) -> UnitRequest:
    children = mscc.children
    _check_flags(children)
    rg = _once(children, RATING_GROUP)
    si = find(children, SERVICE_IDENTIFIER)
    rsu = _once(children, RSU)
    unit = UnitRequest(
        rating_group=rg.u32() if rg is not None else NO_RATING_GROUP,
        service_id=si.u32() if si is not None else None,
        requested=parse_units(rsu, ccr) if rsu is not None else None,
        used=[parse_usage(u, ccr) for u in children if u.code == USU and not u.vendor],
        reason=_reason(children),
    )
    return unit


def parse_ccr_reference(msg: Message) -> ParsedCCR:
    """A CCR's AVPs -> ParsedCCR, or DecodeError with the Result-Code and Failed-AVP.

    The reference mapping, written for clarity: `parse_ccr` takes a fast path for well-formed CCRs and comes
    here for everything else, so every error (its Result-Code, Failed-AVP and text) is decided by this code.
    """
    avps = msg.avps
    # One pass over the top level: flag bits, unknown mandatory AVPs, AVPs a CCR must not carry, repeats.
    seen: set[int] = set()
    for a in avps:
        flags = a.flags
        if flags & AVP_RESERVED_BITS:
            raise DecodeError(3009, f"{a!r}: reserved flag bits set", a.raw())
        if a.vendor:
            if flags & 0x40 and lookup(a.code, a.vendor) is None:
                raise DecodeError(5001, f"AVP {a.code} (vendor {a.vendor}) with the M bit is not supported", a.raw())
            continue
        code = a.code
        if code in AT_MOST_ONCE:
            if code in seen:
                raise DecodeError(5009, f"{a!r} occurs more than once", a.raw())
            seen.add(code)
        elif code in NOT_ALLOWED_IN_CCR:
            raise DecodeError(5008, f"{a!r} is not allowed in a CCR", a.raw())
        elif flags & 0x40 and code not in _KNOWN_BASE:
            raise DecodeError(5001, f"AVP {code} with the M bit is not supported", a.raw())
    for code in REQUIRED:
        if code not in seen:
            raise DecodeError(5005, f"missing AVP {lookup(code).name}", example_avp(code))  # type: ignore[union-attr]
    session_avp = find(avps, SESSION_ID)
    assert session_avp is not None
    session_id = session_avp.text()
    if not session_id:
        raise _invalid(session_avp, "empty Session-Id")
    app = find(avps, AUTH_APPLICATION_ID)
    assert app is not None
    if app.u32() != APP_CREDIT_CONTROL:
        raise _invalid(app, "Auth-Application-Id must be 4 (credit control)")
    type_avp = find(avps, CC_REQUEST_TYPE)
    assert type_avp is not None
    request_type = type_avp.i32()
    kind = REQUEST_TYPES.get(request_type)
    if kind is None:
        raise _invalid(type_avp, f"CC-Request-Type {request_type} is not 1 to 4")
    number_avp = find(avps, CC_REQUEST_NUMBER)
    assert number_avp is not None
    number = number_avp.u32()
    context = find(avps, SERVICE_CONTEXT_ID).text()  # type: ignore[union-attr]
    host = find(avps, ORIGIN_HOST).data.decode("utf-8", "replace")  # type: ignore[union-attr]
    realm = find(avps, ORIGIN_REALM).data.decode("utf-8", "replace")  # type: ignore[union-attr]
    request = ChargingRequest(kind, "gy:" + session_id, number, [], notify=[host, realm])
    ccr = ParsedCCR(request, request_type, session_id, host, realm)
    identities = request.identities
    for sid in avps:
        if sid.code != SUBSCRIPTION_ID or sid.vendor:
            continue
        children = sid.children
        id_type = _once(children, SUBSCRIPTION_ID_TYPE)
        id_data = _once(children, SUBSCRIPTION_ID_DATA)
        if id_type is None:
            raise DecodeError(5005, "Subscription-Id without Subscription-Id-Type", example_avp(SUBSCRIPTION_ID_TYPE))
        if id_data is None:
            raise DecodeError(5005, "Subscription-Id without Subscription-Id-Data", example_avp(SUBSCRIPTION_ID_DATA))
        name = SUBSCRIPTION_ID_TYPES.get(id_type.i32())
        if name is None:
            raise _invalid(id_type, f"Subscription-Id-Type {id_type.i32()} is not 0 to 4")
        value = id_data.text()
        if name == "msisdn":
            value = value.lstrip("+")
        identities.append((name, value))
    user_name = find(avps, USER_NAME)
    if user_name is not None:
        identities.append(("nai", user_name.text()))
    if kind == EVENT:
        action_avp = find(avps, REQUESTED_ACTION)
        action = action_avp.i32() if action_avp is not None else 0  # RFC 4006 8.41: default DIRECT_DEBITING
        if action not in REQUESTED_ACTIONS:
            raise _invalid(action_avp, f"Requested-Action {action} is not 0 to 3")  # type: ignore[arg-type]
        request.action = REQUESTED_ACTIONS[action]
        ccr.requested_action = action
    top_si = find(avps, SERVICE_IDENTIFIER)
    for a in avps:
        if a.code == MSCC and not a.vendor:
            request.units.append(parse_mscc(a, ccr))
            ccr.uses_mscc = True
    top_rsu = find(avps, RSU)
    top_usu = [a for a in avps if a.code == USU and not a.vendor]
    if top_rsu is not None or top_usu:
        if ccr.uses_mscc:
            culprit = top_rsu if top_rsu is not None else top_usu[0]
            raise DecodeError(5008, "RSU/USU beside Multiple-Services-Credit-Control", culprit.raw())
        ccr.top_level_units = True
        request.units.append(
            UnitRequest(
                service_id=top_si.u32() if top_si is not None else None,
                requested=parse_units(top_rsu, ccr) if top_rsu is not None else None,
                used=[parse_usage(u, ccr) for u in top_usu],
            )
        )
    if context.endswith(GY_CONTEXT_SUFFIX):
        _service_information(avps, request)
    return ccr


def _service_information(avps: list[Avp], request: ChargingRequest) -> None:
    si = _once(avps, SERVICE_INFORMATION_3GPP, VENDOR_3GPP)
    if si is None:
        return
    ps = _once(si.children, PS_INFORMATION_3GPP, VENDOR_3GPP)
    if ps is None:
        return
    children = ps.children
    mcc_mnc = _once(children, SGSN_MCC_MNC_3GPP, VENDOR_3GPP)
    if mcc_mnc is not None:
        value = mcc_mnc.text()
        if not value.isdigit() or len(value) not in (5, 6):
            raise _invalid(mcc_mnc, f"3GPP-SGSN-MCC-MNC {value!r} is not 5 or 6 digits")
        request.serving_network = value
    rat = _once(children, RAT_TYPE_3GPP, VENDOR_3GPP)
    if rat is not None and rat.end > rat.start:
        code = rat.buf[rat.start]
        request.rat = RAT_TYPES.get(code, str(code))
    apn = _once(children, CALLED_STATION_ID)
    if apn is not None:
        request.apn = apn.text()


# ----------------------------------------------------------------------------------------------------------------
# The fast path
# ----------------------------------------------------------------------------------------------------------------
# `parse_ccr_reference` builds an `Avp` object per AVP and scans the AVP lists once per field it looks for: about
# 200 µs for a PGW's CCR-U. The fast path below walks each AVP list once with precompiled structs, keeps only
# the (start, end) offsets of what the mapping needs, and checks everything the reference checks. It never
# decides an error: on anything unusual (a malformed or unexpected AVP, a duplicate, CC-Money, ...) it gives up
# and the reference parses the message, so errors and rare shapes behave exactly as before.
# tests/test_gy_fastpath.py compares the two on valid and mutated CCRs.
#
# It works in two steps. `_walk` reads only AVP headers (codes, flags, lengths, vendors) and returns a `_Layout`:
# where the data of every AVP the mapping needs lies, with every check that depends on headers alone made.
# `_build` reads the values at those offsets, makes the checks that depend on values, and builds the request.
# The walk is most of the work and a client sends the same shape over and over (a session's CCR-Us differ only
# in values), so layouts are cached: a CCR of the same length whose headers at the walked offsets are byte for
# byte those of a cached layout has that layout, since the walk saw nothing else (one `itemgetter` of slices and
# a tuple comparison instead of the walk).
class _Fallback(Exception):
    pass


_FALLBACK = _Fallback()
_unpack_hdr = struct.Struct("!II").unpack_from
_unpack_vhdr = struct.Struct("!III").unpack_from
_unpack_u32 = struct.Struct("!I").unpack_from
_unpack_i32 = struct.Struct("!i").unpack_from
_unpack_u64 = struct.Struct("!Q").unpack_from
_KNOWN = frozenset(BY_KEY)
_KNOWN_BASE_CODES = frozenset(code for code, vendor in BY_KEY if vendor == 0)
_REQUIRED_SET = frozenset(REQUIRED)
_FLAG_RESERVED = AVP_RESERVED_BITS << 24
_FLAG_MANDATORY = 0x40 << 24
_FLAG_VENDOR = 0x80 << 24

Span = tuple[int, int]  # (data start, data end) of one AVP
# A unit AVP of a Requested- or Used-Service-Unit: (key in the units dict, 64 bits wide, data start, data end).
UnitSpan = tuple[str, bool, int, int]
# A Used-Service-Unit: (its unit AVPs, 3GPP-Reporting-Reason, Tariff-Change-Usage).
UsageLayout = tuple[tuple[UnitSpan, ...], Span | None, Span | None]
# A Multiple-Services-Credit-Control: (Rating-Group, first Service-Identifier, Requested-Service-Unit's unit AVPs,
# Used-Service-Units, 3GPP-Reporting-Reason).
MsccLayout = tuple[Span | None, Span | None, tuple[UnitSpan, ...] | None, tuple[UsageLayout, ...], Span | None]
_UNIT_AVPS: dict[int, tuple[str, bool]] = {
    CC_TOTAL_OCTETS: ("bytes", True),
    CC_INPUT_OCTETS: ("bytes_in", True),
    CC_OUTPUT_OCTETS: ("bytes_out", True),
    CC_TIME: ("seconds", False),
    CC_SSU: ("events", True),
}
# What `_Layout.ps` holds when Service-Information cannot be taken by the fast path (repeated or malformed); that
# matters only for a Gy Service-Context-Id, a value, so `_build` decides.
_PS_UNUSABLE = (None, None, None, None)


class _Layout:
    """Where the data of a CCR's AVPs lies, from its headers alone (see above)."""

    __slots__ = ("check", "headers", "msccs", "once", "ps", "subscription_ids", "top_rsu", "top_usus")

    def __init__(self) -> None:
        self.check: itemgetter[Any] | None = None  # the walked headers of a CCR, as a tuple of bytes
        self.headers: Any = None  # check(the walked CCR)
        self.once: dict[int, Span] = {}  # base AVPs that may occur at most once
        self.subscription_ids: list[tuple[Span, Span]] = []  # (Subscription-Id-Type, Subscription-Id-Data)
        self.msccs: list[MsccLayout] = []
        self.top_rsu: tuple[UnitSpan, ...] | None = None
        self.top_usus: list[UsageLayout] = []
        # PS-Information's (3GPP-SGSN-MCC-MNC, 3GPP-RAT-Type, Called-Station-Id), () without PS-Information, None
        # without Service-Information, _PS_UNUSABLE.
        self.ps: tuple[Span | None, ...] | None = None


def _frame(buf: bytes, pos: int, end: int, heads: list[slice]) -> list[tuple[int, int, int, int, int]]:
    """The AVPs of a group as (code, vendor, flag word, data start, data end); their headers go to `heads`."""
    out = []
    while pos < end:
        if end - pos < 8:
            raise _FALLBACK
        if buf[pos + 4] & 0x80:
            if end - pos < 12:
                raise _FALLBACK
            code, word, vendor = _unpack_vhdr(buf, pos)
            length = word & 0xFFFFFF
            if length < 12 or pos + length > end:
                raise _FALLBACK
            heads.append(slice(pos, pos + 12))
            out.append((code, vendor, word, pos + 12, pos + length))
        else:
            code, word = _unpack_hdr(buf, pos)
            length = word & 0xFFFFFF
            if length < 8 or pos + length > end:
                raise _FALLBACK
            heads.append(slice(pos, pos + 8))
            out.append((code, 0, word, pos + 8, pos + length))
        pos += (length + 3) & ~3
    return out


def _fast_u32(buf: bytes, start: int, end: int) -> int:
    if end - start != 4:
        raise _FALLBACK
    return _unpack_u32(buf, start)[0]  # type: ignore[no-any-return]


def _fast_i32(buf: bytes, start: int, end: int) -> int:
    if end - start != 4:
        raise _FALLBACK
    return _unpack_i32(buf, start)[0]  # type: ignore[no-any-return]


def _fast_u64(buf: bytes, start: int, end: int) -> int:
    if end - start != 8:
        raise _FALLBACK
    return _unpack_u64(buf, start)[0]  # type: ignore[no-any-return]


def _reason_name(value: int | None) -> str | None:
    return None if value is None else REPORTING_REASONS.get(value, str(value))


# -- the walk: headers only. The group walkers check flags and repeats in one pass over the children; the order in
# which they notice a problem does not matter, since any problem sends the message to the reference.
def _walk_units(children: list[tuple[int, int, int, int, int]]) -> tuple[UnitSpan, ...]:
    units = []
    for code, vendor, _w, start, end in children:
        if vendor:
            continue
        unit = _UNIT_AVPS.get(code)
        if unit is not None:
            units.append((unit[0], unit[1], start, end))
        elif code == CC_MONEY:
            raise _FALLBACK  # money and its Currency-Code: rare on Gy, left to the reference
    return tuple(units)


def _walk_usage(buf: bytes, start: int, end: int, heads: list[slice]) -> UsageLayout:
    units = []
    reason = tariff_change = None
    for code, vendor, word, s, e in _frame(buf, start, end, heads):
        if word & _FLAG_RESERVED:
            raise _FALLBACK
        if vendor:
            if code == REPORTING_REASON_3GPP and vendor == VENDOR_3GPP:
                if reason is not None:
                    raise _FALLBACK
                reason = (s, e)
            elif word & _FLAG_MANDATORY and (code, vendor) not in _KNOWN:
                raise _FALLBACK
            continue
        unit = _UNIT_AVPS.get(code)
        if unit is not None:
            units.append((unit[0], unit[1], s, e))
        elif code == TARIFF_CHANGE_USAGE:
            if tariff_change is not None:
                raise _FALLBACK
            tariff_change = (s, e)
        elif code == CC_MONEY or (word & _FLAG_MANDATORY and code not in _KNOWN_BASE_CODES):
            raise _FALLBACK
    return tuple(units), reason, tariff_change


def _walk_mscc(buf: bytes, start: int, end: int, heads: list[slice]) -> MsccLayout:
    rating_group = service_id = reason = None
    requested: tuple[UnitSpan, ...] | None = None
    used: list[UsageLayout] = []
    for code, vendor, word, s, e in _frame(buf, start, end, heads):
        if word & _FLAG_RESERVED:
            raise _FALLBACK
        if vendor:
            if code == REPORTING_REASON_3GPP and vendor == VENDOR_3GPP:
                if reason is not None:
                    raise _FALLBACK
                reason = (s, e)
            elif word & _FLAG_MANDATORY and (code, vendor) not in _KNOWN:
                raise _FALLBACK
        elif code == USU:
            used.append(_walk_usage(buf, s, e, heads))
        elif code == RATING_GROUP:
            if rating_group is not None:
                raise _FALLBACK
            rating_group = (s, e)
        elif code == RSU:
            if requested is not None:
                raise _FALLBACK
            requested = _walk_units(_frame(buf, s, e, heads))
        elif code == SERVICE_IDENTIFIER:
            if service_id is None:  # the first one counts (the reference uses `find`)
                service_id = (s, e)
        elif word & _FLAG_MANDATORY and code not in _KNOWN_BASE_CODES:
            raise _FALLBACK
    return rating_group, service_id, requested, tuple(used), reason


def _fast_once(children: list[tuple[int, int, int, int, int]], code: int, vendor: int) -> Span | None:
    found = None
    for c, v, _w, s, e in children:
        if c == code and v == vendor:
            if found is not None:
                raise _FALLBACK
            found = (s, e)
    return found


def _walk_ps_information(buf: bytes, pos: int, end: int, heads: list[slice]) -> tuple[Span | None, ...]:
    """(3GPP-SGSN-MCC-MNC, 3GPP-RAT-Type, Called-Station-Id) of a PS-Information, each at most once. A PGW sends
    a dozen more children on every request: walked for the framing and the repeats only, no tuples built."""
    mcc_mnc = rat = apn = None
    while pos < end:
        if end - pos < 8:
            raise _FALLBACK
        if buf[pos + 4] & 0x80:
            if end - pos < 12:
                raise _FALLBACK
            code, word, vendor = _unpack_vhdr(buf, pos)
            length = word & 0xFFFFFF
            if length < 12 or pos + length > end:
                raise _FALLBACK
            heads.append(slice(pos, pos + 12))
            if vendor == VENDOR_3GPP:
                if code == SGSN_MCC_MNC_3GPP:
                    if mcc_mnc is not None:
                        raise _FALLBACK
                    mcc_mnc = (pos + 12, pos + length)
                elif code == RAT_TYPE_3GPP:
                    if rat is not None:
                        raise _FALLBACK
                    rat = (pos + 12, pos + length)
        else:
            code, word = _unpack_hdr(buf, pos)
            length = word & 0xFFFFFF
            if length < 8 or pos + length > end:
                raise _FALLBACK
            heads.append(slice(pos, pos + 8))
            if code == CALLED_STATION_ID:
                if apn is not None:
                    raise _FALLBACK
                apn = (pos + 8, pos + length)
        pos += (length + 3) & ~3
    return mcc_mnc, rat, apn


def _walk(buf: bytes) -> _Layout:
    """The layout of a CCR; raises _FALLBACK on anything its headers make unusual."""
    # One pass over the top level: framing, the checks of the reference's first loop, and where things are.
    layout = _Layout()
    heads: list[slice] = []
    end = len(buf)
    pos = HEADER_LEN
    once = layout.once
    subscription_ids: list[Span] = []
    msccs: list[Span] = []
    top_usus: list[Span] = []
    service_info: list[Span] = []
    while pos < end:
        if end - pos < 8:
            raise _FALLBACK
        if buf[pos + 4] & 0x80:
            if end - pos < 12:
                raise _FALLBACK
            code, word, vendor = _unpack_vhdr(buf, pos)
            length = word & 0xFFFFFF
            if length < 12 or pos + length > end or word & _FLAG_RESERVED:
                raise _FALLBACK
            heads.append(slice(pos, pos + 12))
            if code == SERVICE_INFORMATION_3GPP and vendor == VENDOR_3GPP:
                service_info.append((pos + 12, pos + length))
            elif word & _FLAG_MANDATORY and (code, vendor) not in _KNOWN:
                raise _FALLBACK
        else:
            code, word = _unpack_hdr(buf, pos)
            length = word & 0xFFFFFF
            if length < 8 or pos + length > end or word & _FLAG_RESERVED:
                raise _FALLBACK
            heads.append(slice(pos, pos + 8))
            if code in AT_MOST_ONCE:
                if code in once:
                    raise _FALLBACK
                once[code] = (pos + 8, pos + length)
            elif code == MSCC:
                msccs.append((pos + 8, pos + length))
            elif code == SUBSCRIPTION_ID:
                subscription_ids.append((pos + 8, pos + length))
            elif code == USU:
                top_usus.append((pos + 8, pos + length))
            elif code in NOT_ALLOWED_IN_CCR or (word & _FLAG_MANDATORY and code not in _KNOWN_BASE):
                raise _FALLBACK
        pos += (length + 3) & ~3
    if not once.keys() >= _REQUIRED_SET:
        raise _FALLBACK
    for start, stop in subscription_ids:
        children = _frame(buf, start, stop, heads)
        id_type = _fast_once(children, SUBSCRIPTION_ID_TYPE, 0)
        id_data = _fast_once(children, SUBSCRIPTION_ID_DATA, 0)
        if id_type is None or id_data is None:
            raise _FALLBACK
        layout.subscription_ids.append((id_type, id_data))
    layout.msccs = [_walk_mscc(buf, start, stop, heads) for start, stop in msccs]
    top_rsu = once.get(RSU)
    if top_rsu is not None or top_usus:
        if msccs:
            raise _FALLBACK
        if top_rsu is not None:
            layout.top_rsu = _walk_units(_frame(buf, top_rsu[0], top_rsu[1], heads))
        layout.top_usus = [_walk_usage(buf, start, stop, heads) for start, stop in top_usus]
    cacheable = True
    if len(service_info) > 1:
        layout.ps = _PS_UNUSABLE
    elif service_info:
        try:
            ps = _fast_once(_frame(buf, *service_info[0], heads), PS_INFORMATION_3GPP, VENDOR_3GPP)
            layout.ps = () if ps is None else _walk_ps_information(buf, ps[0], ps[1], heads)
        except _Fallback:
            layout.ps = _PS_UNUSABLE
            cacheable = False  # the walk of Service-Information stopped half-way: its headers were not all seen
    if cacheable:
        layout.check = itemgetter(*heads)
        layout.headers = layout.check(buf)
    return layout


# -- the build: values at the layout's offsets.
def _units(buf: bytes, spans: tuple[UnitSpan, ...]) -> dict[str, int]:
    units: dict[str, int] = {}
    for key, wide, start, end in spans:
        units[key] = _fast_u64(buf, start, end) if wide else _fast_u32(buf, start, end)
    if "bytes" not in units and ("bytes_in" in units or "bytes_out" in units):
        units["bytes"] = units.get("bytes_in", 0) + units.get("bytes_out", 0)
    return units


def _usage(buf: bytes, usage: UsageLayout) -> UsageReport:
    spans, reason, tariff_change = usage
    if tariff_change is not None and _fast_i32(buf, *tariff_change) not in (0, 1, 2):
        raise _FALLBACK
    return UsageReport(_units(buf, spans), None if reason is None else _reason_name(_fast_i32(buf, *reason)))


def _unit_request(buf: bytes, mscc: MsccLayout) -> UnitRequest:
    rating_group, service_id, requested, used, reason = mscc
    return UnitRequest(
        rating_group=NO_RATING_GROUP if rating_group is None else _fast_u32(buf, *rating_group),
        service_id=None if service_id is None else _fast_u32(buf, *service_id),
        requested=None if requested is None else _units(buf, requested),
        used=[_usage(buf, u) for u in used],
        reason=None if reason is None else _reason_name(_fast_i32(buf, *reason)),
    )


def _build(buf: bytes, layout: _Layout) -> ParsedCCR:
    once = layout.once
    start, stop = once[SESSION_ID]
    session_id = buf[start:stop].decode()
    if not session_id or _fast_u32(buf, *once[AUTH_APPLICATION_ID]) != APP_CREDIT_CONTROL:
        raise _FALLBACK
    request_type = _fast_i32(buf, *once[CC_REQUEST_TYPE])
    kind = REQUEST_TYPES.get(request_type)
    if kind is None:
        raise _FALLBACK
    number = _fast_u32(buf, *once[CC_REQUEST_NUMBER])
    start, stop = once[SERVICE_CONTEXT_ID]
    context = buf[start:stop].decode()
    start, stop = once[ORIGIN_HOST]
    host = buf[start:stop].decode("utf-8", "replace")
    start, stop = once[ORIGIN_REALM]
    realm = buf[start:stop].decode("utf-8", "replace")
    identities: list[tuple[str, str]] = []
    for id_type, id_data in layout.subscription_ids:
        name = SUBSCRIPTION_ID_TYPES.get(_fast_i32(buf, *id_type))
        if name is None:
            raise _FALLBACK
        value = buf[id_data[0] : id_data[1]].decode()
        identities.append((name, value.lstrip("+") if name == "msisdn" else value))
    user_name = once.get(USER_NAME)
    if user_name is not None:
        identities.append(("nai", buf[user_name[0] : user_name[1]].decode()))
    request = ChargingRequest(kind, "gy:" + session_id, number, identities, notify=[host, realm])
    requested_action = None
    if kind == EVENT:
        action_at = once.get(REQUESTED_ACTION)
        requested_action = _fast_i32(buf, *action_at) if action_at is not None else 0
        action = REQUESTED_ACTIONS.get(requested_action)
        if action is None:
            raise _FALLBACK
        request.action = action
    units = request.units
    for mscc in layout.msccs:
        units.append(_unit_request(buf, mscc))
    top_rsu = layout.top_rsu
    top_usus = layout.top_usus
    top_level_units = top_rsu is not None or bool(top_usus)
    if top_level_units:
        top_si = once.get(SERVICE_IDENTIFIER)
        units.append(
            UnitRequest(
                service_id=_fast_u32(buf, *top_si) if top_si is not None else None,
                requested=_units(buf, top_rsu) if top_rsu is not None else None,
                used=[_usage(buf, u) for u in top_usus],
            )
        )
    ps = layout.ps
    if ps is not None and context.endswith(GY_CONTEXT_SUFFIX):
        if ps is _PS_UNUSABLE:
            raise _FALLBACK
        if ps:
            mcc_mnc, rat, apn = ps
            if mcc_mnc is not None:
                value = buf[mcc_mnc[0] : mcc_mnc[1]].decode()
                if not value.isdigit() or len(value) not in (5, 6):
                    raise _FALLBACK
                request.serving_network = value
            if rat is not None and rat[1] > rat[0]:
                rat_code = buf[rat[0]]
                request.rat = RAT_TYPES.get(rat_code, str(rat_code))
            if apn is not None:
                request.apn = buf[apn[0] : apn[1]].decode()
    return ParsedCCR(
        request, request_type, session_id, host, realm,
        uses_mscc=bool(layout.msccs), top_level_units=top_level_units, requested_action=requested_action,
    )  # fmt: skip


# Cached layouts by message length, the last walked first. Bounded: a peer sending ever new shapes costs a walk
# per CCR (as without the cache), never memory.
_LAYOUTS: dict[int, list[_Layout]] = {}
_LAYOUT_LENGTHS = 1024
_LAYOUTS_PER_LENGTH = 4


def _parse_ccr_fast(buf: bytes) -> ParsedCCR:
    size = len(buf)
    cached = _LAYOUTS.get(size)
    if cached is not None:
        for layout in cached:
            if layout.check(buf) == layout.headers:  # type: ignore[misc]
                return _build(buf, layout)
    layout = _walk(buf)
    if layout.check is not None:
        if cached is None:
            if len(_LAYOUTS) >= _LAYOUT_LENGTHS:
                _LAYOUTS.clear()
            _LAYOUTS[size] = [layout]
        else:
            cached.insert(0, layout)
            del cached[_LAYOUTS_PER_LENGTH:]
    return _build(buf, layout)


def parse_ccr(msg: Message) -> ParsedCCR:
    """A CCR's AVPs -> ParsedCCR, or DecodeError with the Result-Code and Failed-AVP (see `parse_ccr_reference`)."""
    try:
        return _parse_ccr_fast(msg.buf)
    except (_Fallback, UnicodeDecodeError):
        return parse_ccr_reference(msg)


# ----------------------------------------------------------------------------------------------------------------
# Answers
# ----------------------------------------------------------------------------------------------------------------
_E_SESSION = E("Session-Id")
_E_RESULT = E("Result-Code")
_E_TYPE = E("CC-Request-Type")
_E_NUMBER = E("CC-Request-Number")
_E_MSCC = E("Multiple-Services-Credit-Control")
_E_GSU = E("Granted-Service-Unit")
_E_RG = E("Rating-Group")
_E_SI = E("Service-Identifier")
_E_VALIDITY = E("Validity-Time")
_E_TOTAL = E("CC-Total-Octets")
_E_TIME = E("CC-Time")
_E_SSU = E("CC-Service-Specific-Units")
_E_MONEY = E("CC-Money")
_E_UNIT_VALUE = E("Unit-Value")
_E_DIGITS = E("Value-Digits")
_E_EXPONENT = E("Exponent")
_E_CURRENCY = E("Currency-Code")
_E_VQT = E("Volume-Quota-Threshold")
_E_TQT = E("Time-Quota-Threshold")
_E_QHT = E("Quota-Holding-Time")
_E_FUI = E("Final-Unit-Indication")
_E_FUA = E("Final-Unit-Action")
_E_REDIRECT = E("Redirect-Server")
_E_REDIRECT_TYPE = E("Redirect-Address-Type")
_E_REDIRECT_ADDRESS = E("Redirect-Server-Address")
_E_FILTER_ID = E("Filter-Id")
_E_RESTRICTION = E("Restriction-Filter-Rule")
_E_CHECK_BALANCE = E("Check-Balance-Result")
_E_COST = E("Cost-Information")
_E_FAILED = E("Failed-AVP")
_E_ERROR_MESSAGE = E("Error-Message")


def money_avp(micro: int, currency: str | None) -> list[bytes]:
    """Unit-Value (and Currency-Code) for an amount in micro-units: Value-Digits x 10^-6, exactly."""
    out = [_E_UNIT_VALUE.grouped((_E_DIGITS.i64(micro), _E_EXPONENT.i32(-6)))]
    code = CURRENCIES.get(currency or "")
    if code is not None:
        out.append(_E_CURRENCY.u32(code))
    return out


def _granted(unit: str | None, amount: int, currency: str | None) -> bytes:
    if unit == "bytes":
        return _E_GSU.octets(_E_TOTAL.u64(amount))
    if unit == "seconds":
        return _E_GSU.octets(_E_TIME.u32(amount))
    if unit == "events":
        return _E_GSU.octets(_E_SSU.u64(amount))
    return _E_GSU.octets(_E_MONEY.grouped(money_avp(amount, currency)))


def _redirect_type(address: str) -> int:
    if "://" in address:
        return 2  # URL
    if address.startswith("sip:"):
        return 3  # SIP URI
    if ":" in address:
        return 1  # IPv6
    return 0  # IPv4


def final_unit_avp(final: FinalUnit) -> bytes:
    parts = [_E_FUA.i32(FINAL_UNIT_ACTIONS.get(final.action, 0))]
    if final.action == FUA_REDIRECT and final.redirect_address:
        parts.append(
            _E_REDIRECT.grouped(
                (_E_REDIRECT_TYPE.i32(_redirect_type(final.redirect_address)),
                 _E_REDIRECT_ADDRESS.text(final.redirect_address))
            )
        )  # fmt: skip
    elif final.action == FUA_RESTRICT:
        parts.extend(_E_RESTRICTION.octets(rule.encode()) for rule in final.restriction_rules or ())
        if final.filter_id:
            parts.append(_E_FILTER_ID.text(final.filter_id))
    return _E_FUI.grouped(parts)


_E_ACTION = E("Requested-Action")
RATING_FAILED_CODE = RESULT_CODES[RATING_FAILED]


def rating_failed_avp(ccr: ParsedCCR, answer: ChargingAnswer) -> bytes:
    """The Failed-AVP of a CCA whose Result-Code is 5031 DIAMETER_RATING_FAILED, which RFC 4006 9.1 says MUST
    carry one: the Multiple-Services-Credit-Control of the first rating group that could not be rated (with its
    Rating-Group and Service-Identifier); without MSCC, the Requested-Action of a refund with nothing to refund,
    else an example Rating-Group (the rating input that was missing)."""
    if ccr.uses_mscc:
        for u in answer.units:
            if u.result == RATING_FAILED:
                parts = [_E_RG.u32(u.rating_group)] if u.rating_group != NO_RATING_GROUP else []
                if u.service_id is not None:
                    parts.append(_E_SI.u32(u.service_id))
                return _E_FAILED.grouped([_E_MSCC.grouped(parts)])
    if ccr.requested_action is not None and ccr.request.action == REFUND_ACCOUNT:
        return _E_FAILED.grouped([_E_ACTION.i32(ccr.requested_action)])
    return _E_FAILED.octets(example_avp(_E_RG.code))


def unit_avps(u: UnitAnswer, currency: str | None) -> list[bytes]:
    """GSU, Validity-Time, thresholds, QHT and FUI of one rating group (inside MSCC or at top level)."""
    out: list[bytes] = []
    if u.granted:
        out.append(_granted(u.unit, u.granted, currency))
    if u.validity_time and u.result in (SUCCESS, CREDIT_LIMIT_REACHED):
        out.append(_E_VALIDITY.u32(u.validity_time))
    if u.volume_threshold:
        out.append(_E_VQT.u32(u.volume_threshold))
    if u.time_threshold:
        out.append(_E_TQT.u32(u.time_threshold))
    if u.quota_holding_time:
        out.append(_E_QHT.u32(u.quota_holding_time))
    if u.final is not None:
        out.append(final_unit_avp(u.final))
    return out


_pack_header = struct.Struct("!IIIII").pack
_pack_avp_header = struct.Struct("!II").pack
_pack_avp_u32 = struct.Struct("!III").pack
_SESSION_WORD = _E_SESSION.word
_NUMBER_WORD = _E_NUMBER.word | 12
_MSCC_WORD = _E_MSCC.word
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")
_RESULT_AVPS = {code: _E_RESULT.u32(code) for code in (*RESULT_CODES.values(), UNABLE_TO_COMPLY)}
# Granted-Service-Unit holding one unit AVP, as one struct: GSU header, unit header, value.
_GSU_U64 = struct.Struct("!IIIIQ").pack
_GSU_U32 = struct.Struct("!IIIII").pack
_GSU_TOTAL = (_E_GSU.code, _E_GSU.word | 24, _E_TOTAL.code, _E_TOTAL.word | 16)
_GSU_SSU = (_E_GSU.code, _E_GSU.word | 24, _E_SSU.code, _E_SSU.word | 16)
_GSU_TIME = (_E_GSU.code, _E_GSU.word | 20, _E_TIME.code, _E_TIME.word | 12)
assert not (_E_GSU.vendor or _E_TOTAL.vendor or _E_SSU.vendor or _E_TIME.vendor or _E_RG.vendor or _E_SI.vendor)


def _mscc_body(u: UnitAnswer, currency: str | None) -> bytes:
    """The children of one Multiple-Services-Credit-Control of a CCA (as `AnswerEncoder.cca` builds them)."""
    result = RESULT_CODES.get(u.result, UNABLE_TO_COMPLY)
    parts = [_RESULT_AVPS[result]]
    if u.rating_group != NO_RATING_GROUP:
        parts.append(_pack_avp_u32(RATING_GROUP, _E_RG.word | 12, u.rating_group))
    if u.service_id is not None:
        parts.append(_pack_avp_u32(SERVICE_IDENTIFIER, _E_SI.word | 12, u.service_id))
    granted = u.granted
    if granted:
        unit = u.unit
        if unit == "bytes":
            parts.append(_GSU_U64(*_GSU_TOTAL, granted))
        elif unit == "seconds":
            parts.append(_GSU_U32(*_GSU_TIME, granted))
        elif unit == "events":
            parts.append(_GSU_U64(*_GSU_SSU, granted))
        else:
            parts.append(_granted(unit, granted, currency))
    if u.validity_time and u.result in (SUCCESS, CREDIT_LIMIT_REACHED):
        parts.append(_E_VALIDITY.u32(u.validity_time))
    if u.volume_threshold:
        parts.append(_E_VQT.u32(u.volume_threshold))
    if u.time_threshold:
        parts.append(_E_TQT.u32(u.time_threshold))
    if u.quota_holding_time:
        parts.append(_E_QHT.u32(u.quota_holding_time))
    if u.final is not None:
        parts.append(final_unit_avp(u.final))
    return b"".join(parts)


def _mscc_avp(u: UnitAnswer, currency: str | None) -> bytes:
    body = _mscc_body(u, currency)
    return _pack_avp_header(MSCC, _MSCC_WORD | (8 + len(body))) + body


_MSCC_CACHE = 4096  # distinct encoded MSCCs kept; beyond, the cache starts again (bounded memory)


class AnswerEncoder:
    """Encodes CCAs; Origin-Host, Origin-Realm, Auth-Application-Id and the failure-handling AVPs are encoded
    once and reused in every answer."""

    def __init__(self, identity: list[bytes], ccfh: int | None, session_failover: int | None) -> None:
        self.identity = b"".join(identity)
        tail = [E("Auth-Application-Id").u32(APP_CREDIT_CONTROL)]
        self.identity_app = self.identity + b"".join(tail)
        fh = []
        if ccfh is not None:
            fh.append(E("Credit-Control-Failure-Handling").i32(ccfh))
        if session_failover is not None:
            fh.append(E("CC-Session-Failover").i32(session_failover))
        self.failure_handling = b"".join(fh)
        self._heads: dict[tuple[int, int], bytes] = {}
        self._msccs: dict[tuple[object, ...], bytes] = {}  # encoded MSCCs without Final-Unit-Indication

    def encode_cca(self, msg: Message, ccr: ParsedCCR, answer: ChargingAnswer) -> bytes:
        """The whole CCA message; the same bytes as `encode_message` over `cca()`, with the constant runs
        (Result-Code + identity + Auth-Application-Id + CC-Request-Type, the GSU shapes) pre-encoded."""
        result = RESULT_CODES.get(answer.result, UNABLE_TO_COMPLY)
        request_type = ccr.request_type
        head = self._heads.get((result, request_type))
        if head is None:
            head = self._heads[(result, request_type)] = b"".join(
                (_E_RESULT.u32(result), self.identity_app, _E_TYPE.i32(request_type))
            )
        session = ccr.session_id.encode()
        size = len(session)
        parts = [
            _pack_avp_header(SESSION_ID, _SESSION_WORD | (8 + size)),
            session,
            _PAD[size & 3],
            head,
            _pack_avp_u32(CC_REQUEST_NUMBER, _NUMBER_WORD, ccr.request.number),
        ]
        if request_type != 4:
            parts.append(self.failure_handling)
        currency = answer.currency
        if ccr.uses_mscc:
            msccs = self._msccs
            for u in answer.units:
                if u.final is None:
                    # The same grant goes to many sessions (a quantum per rating group): its MSCC is encoded once.
                    key = (u.result, u.rating_group, u.service_id, u.unit, u.granted, u.validity_time,
                           u.volume_threshold, u.time_threshold, u.quota_holding_time, currency)  # fmt: skip
                    mscc = msccs.get(key)
                    if mscc is None:
                        if len(msccs) >= _MSCC_CACHE:
                            msccs.clear()
                        mscc = msccs[key] = _mscc_avp(u, currency)
                    parts.append(mscc)
                else:
                    parts.append(_mscc_avp(u, currency))
        elif answer.units:
            parts.extend(unit_avps(answer.units[0], currency))
        if ccr.requested_action is not None and answer.result == SUCCESS:
            action = ccr.request.action
            if action == CHECK_BALANCE and answer.enough_credit is not None:
                parts.append(_E_CHECK_BALANCE.i32(0 if answer.enough_credit else 1))
            elif action == PRICE_ENQUIRY and answer.cost is not None:
                parts.append(_E_COST.grouped(money_avp(answer.cost, currency)))
        if result == RATING_FAILED_CODE:
            parts.append(rating_failed_avp(ccr, answer))
        body = b"".join(parts)
        return _pack_header(
            (1 << 24) | (HEADER_LEN + len(body)), ((msg.flags & FLAG_PROXIABLE) << 24) | msg.code, msg.app, msg.hbh,
            msg.e2e,
        ) + body  # fmt: skip

    def cca(self, ccr: ParsedCCR, answer: ChargingAnswer) -> list[bytes]:
        """The CCA's AVPs, one by one: the reference for `encode_cca`."""
        result = RESULT_CODES.get(answer.result, UNABLE_TO_COMPLY)
        out = [
            _E_SESSION.text(ccr.session_id),
            _E_RESULT.u32(result),
            self.identity_app,
            _E_TYPE.i32(ccr.request_type),
            _E_NUMBER.u32(ccr.request.number),
        ]
        if ccr.request_type != 4:
            out.append(self.failure_handling)
        currency = answer.currency
        if ccr.uses_mscc:
            for u in answer.units:
                parts = [_E_RESULT.u32(RESULT_CODES.get(u.result, UNABLE_TO_COMPLY))]
                if u.rating_group != NO_RATING_GROUP:
                    parts.append(_E_RG.u32(u.rating_group))
                if u.service_id is not None:
                    parts.append(_E_SI.u32(u.service_id))
                parts.extend(unit_avps(u, currency))
                out.append(_E_MSCC.grouped(parts))
        elif answer.units:
            out.extend(unit_avps(answer.units[0], currency))
        if ccr.requested_action is not None and answer.result == SUCCESS:
            action = ccr.request.action
            if action == CHECK_BALANCE and answer.enough_credit is not None:
                out.append(_E_CHECK_BALANCE.i32(0 if answer.enough_credit else 1))
            elif action == PRICE_ENQUIRY and answer.cost is not None:
                out.append(_E_COST.grouped(money_avp(answer.cost, currency)))
        if result == RATING_FAILED_CODE:
            out.append(rating_failed_avp(ccr, answer))
        return out

    def failure(
        self, msg: Message, result_code: int, failed_avp: bytes | None, error_message: str | None
    ) -> list[bytes]:
        """The answer to a CCR we refuse before the core sees it (5xxx, with Failed-AVP), echoing what we can."""
        out: list[bytes] = []
        session = find(msg.avps, SESSION_ID) if _avps_ok(msg) else None
        if session is not None:
            out.append(_E_SESSION.octets(session.data))
        out.append(_E_RESULT.u32(result_code))
        out.append(self.identity_app if msg.code == CMD_CC else self.identity)
        if msg.code == CMD_CC and _avps_ok(msg):
            for code, enc in ((CC_REQUEST_TYPE, _E_TYPE), (CC_REQUEST_NUMBER, _E_NUMBER)):
                a = find(msg.avps, code)
                if a is not None and a.end - a.start == 4:
                    out.append(enc.octets(a.data))
        if error_message:
            out.append(_E_ERROR_MESSAGE.text(error_message[:200]))
        if failed_avp is not None:
            out.append(_E_FAILED.octets(failed_avp))
        return out


def _avps_ok(msg: Message) -> bool:
    try:
        msg.avps  # noqa: B018 - parsing is the check
    except DecodeError:
        return False
    return True
