"""The Credit-Control-Answer (RFC 4006 section 3.2, TS 32.299 Gy): ChargingAnswer -> CCA bytes, and the answers to
CCRs refused before the core sees them.

`AnswerEncoder.encode_cca` is the hot path: it builds the CCA from pre-encoded runs (the identity, the Result-Code
heads, the MSCCs of the common grants); `AnswerEncoder.cca` is its reference, AVP by AVP, and
tests/test_gy_fastpath.py holds the two to the same bytes. Every AVP gets the flags gy/grammar.py gives it.
"""

from __future__ import annotations

import struct

from chf.core.model import (
    CHECK_BALANCE,
    CREDIT_CONTROL_NOT_APPLICABLE,
    CREDIT_LIMIT_REACHED,
    END_USER_SERVICE_DENIED,
    FUA_REDIRECT,
    FUA_RESTRICT,
    NO_RATING_GROUP,
    PRICE_ENQUIRY,
    RATING_FAILED,
    REFUND_ACCOUNT,
    SESSION_UNKNOWN,
    SUCCESS,
    USER_UNKNOWN,
    ChargingAnswer,
    FinalUnit,
    UnitAnswer,
)
from gy.ccr import EVENT_REQUEST, ParsedCCR, example_avp
from gy.codec import FLAG_ERROR, FLAG_PROXIABLE, HEADER_LEN, DecodeError, E, Message, find
from gy.codes import (
    CC_REQUEST_NUMBER,
    CC_REQUEST_TYPE,
    DIAMETER_CREDIT_CONTROL_NOT_APPLICABLE,
    DIAMETER_CREDIT_LIMIT_REACHED,
    DIAMETER_END_USER_SERVICE_DENIED,
    DIAMETER_RATING_FAILED,
    DIAMETER_SUCCESS,
    DIAMETER_TOO_BUSY,
    DIAMETER_UNABLE_TO_COMPLY,
    DIAMETER_UNKNOWN_SESSION_ID,
    DIAMETER_USER_UNKNOWN,
    MULTIPLE_SERVICES_CREDIT_CONTROL,
    RATING_GROUP,
    SERVICE_IDENTIFIER,
    SESSION_ID,
)
from gy.currencies import CURRENCIES
from gy.grammar import APP_CREDIT_CONTROL, CMD_CC

# The core's results (chf/core/model.py) as Result-Codes; anything else is DIAMETER_UNABLE_TO_COMPLY.
RESULT_CODES = {
    SUCCESS: DIAMETER_SUCCESS,
    END_USER_SERVICE_DENIED: DIAMETER_END_USER_SERVICE_DENIED,
    CREDIT_CONTROL_NOT_APPLICABLE: DIAMETER_CREDIT_CONTROL_NOT_APPLICABLE,
    CREDIT_LIMIT_REACHED: DIAMETER_CREDIT_LIMIT_REACHED,
    SESSION_UNKNOWN: DIAMETER_UNKNOWN_SESSION_ID,
    USER_UNKNOWN: DIAMETER_USER_UNKNOWN,
    RATING_FAILED: DIAMETER_RATING_FAILED,
}
UNABLE_TO_COMPLY = DIAMETER_UNABLE_TO_COMPLY
FINAL_UNIT_ACTIONS = {"terminate": 0, FUA_REDIRECT: 1, FUA_RESTRICT: 2}  # RFC 4006 8.35 Final-Unit-Action

_E_SESSION = E("Session-Id")
_E_USU = E("Used-Service-Unit")
# The AVP of a Used-Service-Unit that carried each unit type (Failed-AVP of a report over [engine] max_report_*).
_USED_AVP = {
    "bytes": (E("CC-Total-Octets"), 64),
    "bytes_in": (E("CC-Input-Octets"), 64),
    "bytes_out": (E("CC-Output-Octets"), 64),
    "seconds": (E("CC-Time"), 32),
    "events": (E("CC-Service-Specific-Units"), 64),
}


def used_unit_failed_avp(ccr: ParsedCCR, field: str) -> bytes | None:
    """Failed-AVP for the core's refusal of implausible usage (RequestError field "usage/i/j/unit", see
    chf.core.engine.check_usage_bounds): the Used-Service-Unit holding the offending AVP and its value."""
    parts = field.split("/")
    try:
        _, i, j, unit = parts
        value = ccr.request.units[int(i)].used[int(j)].units[unit]
    except (ValueError, IndexError, KeyError):
        return None
    enc = _USED_AVP.get(unit)
    if enc is None:
        return None
    avp, bits = enc
    value = max(0, min(value, (1 << bits) - 1))
    return _E_USU.octets(avp.u64(value) if bits == 64 else avp.u32(value))


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
        address = final.redirect_address
        parts.append(
            _E_REDIRECT.grouped((_E_REDIRECT_TYPE.i32(_redirect_type(address)), _E_REDIRECT_ADDRESS.text(address)))
        )
    elif final.action == FUA_RESTRICT:
        parts.extend(_E_RESTRICTION.octets(rule.encode()) for rule in final.restriction_rules or ())
        if final.filter_id:
            parts.append(_E_FILTER_ID.text(final.filter_id))
    return _E_FUI.grouped(parts)


_E_ACTION = E("Requested-Action")


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
    return _E_FAILED.octets(example_avp(RATING_GROUP))


def unit_avps(u: UnitAnswer, currency: str | None) -> list[bytes]:
    """GSU, Validity-Time, thresholds, QHT and FUI of one rating group (inside MSCC or at top level)."""
    out: list[bytes] = []
    if u.granted:
        out.append(_granted(u.unit, u.granted, currency))
    _append_grant_terms(out, u)
    return out


def _append_grant_terms(out: list[bytes], u: UnitAnswer) -> None:
    """Validity-Time, the thresholds, Quota-Holding-Time and Final-Unit-Indication of a rating group, in the
    order of the MSCC grammar (after Granted-Service-Unit); shared by both encoders."""
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


_pack_header = struct.Struct("!IIIII").pack
_pack_avp_header = struct.Struct("!II").pack
_SESSION_CODE = SESSION_ID.to_bytes(4, "big")
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
    _append_grant_terms(parts, u)
    return b"".join(parts)


def _mscc_avp(u: UnitAnswer, currency: str | None) -> bytes:
    body = _mscc_body(u, currency)
    return _pack_avp_header(MULTIPLE_SERVICES_CREDIT_CONTROL, _MSCC_WORD | (8 + len(body))) + body


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
        self._busy_tail = _E_RESULT.u32(DIAMETER_TOO_BUSY) + self.identity_app
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
        if request_type != EVENT_REQUEST:  # RFC 4006 8.14, 8.18: not in an event's answer
            parts.append(self.failure_handling)
        currency = answer.currency
        if ccr.uses_mscc:
            msccs = self._msccs
            for u in answer.units:
                if u.final is None:
                    # The same grant goes to many sessions (a quantum per rating group): its MSCC is encoded once.
                    key = (
                        u.result,
                        u.rating_group,
                        u.service_id,
                        u.unit,
                        u.granted,
                        u.validity_time,
                        u.volume_threshold,
                        u.time_threshold,
                        u.quota_holding_time,
                        currency,
                    )
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
        if result == DIAMETER_RATING_FAILED:
            parts.append(rating_failed_avp(ccr, answer))
        body = b"".join(parts)
        flags_code = ((msg.flags & FLAG_PROXIABLE) << 24) | msg.code
        return _pack_header((1 << 24) | (HEADER_LEN + len(body)), flags_code, msg.app, msg.hbh, msg.e2e) + body

    def too_busy(self, msg: Message) -> bytes | None:
        """The 3004 answer (E bit) to a CCR refused before it is decoded, from the request's raw Session-Id: the
        refusals of an overload must cost a small fraction of a served request. None when the CCR does not begin
        with a well-framed Session-Id (RFC 4006 3.1 places it first): the caller then takes the general path."""
        buf = msg.buf
        if len(buf) < 28 or buf[20:24] != _SESSION_CODE:
            return None
        length = (buf[25] << 16) | (buf[26] << 8) | buf[27]
        end = 20 + ((length + 3) & ~3)
        if length <= 8 or end > len(buf):
            return None
        body = buf[20:end] + self._busy_tail
        flags_code = (((msg.flags & FLAG_PROXIABLE) | FLAG_ERROR) << 24) | msg.code
        return _pack_header((1 << 24) | (HEADER_LEN + len(body)), flags_code, msg.app, msg.hbh, msg.e2e) + body

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
        if ccr.request_type != EVENT_REQUEST:
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
        if result == DIAMETER_RATING_FAILED:
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
