"""The reference CCR decoder: a CCR's AVPs -> ParsedCCR, or DecodeError with the Result-Code and Failed-AVP.

Written for clarity over `Avp` objects. Every check RFC 6733 / RFC 4006 ask of a receiver is made here, before
the request reaches the core, so a malformed CCR changes nothing and gets a precise Result-Code with Failed-AVP.
The fast decoder (gy/ccr_fast.py) comes here for anything but a well-formed CCR, so every error (its Result-Code,
Failed-AVP and text) is decided by this code.
"""

from __future__ import annotations

from chf.core.model import EVENT, NO_RATING_GROUP, ChargingRequest, UnitRequest, UsageReport
from gy.ccr import (
    AT_MOST_ONCE,
    GY_CONTEXT_SUFFIX,
    NOT_ALLOWED_IN_CCR,
    RAT_TYPES,
    REPORTING_REASONS,
    REQUEST_TYPES,
    REQUESTED_ACTIONS,
    REQUIRED,
    SUBSCRIPTION_ID_TYPES,
    ParsedCCR,
    example_avp,
)
from gy.codec import AVP_MANDATORY, AVP_RESERVED_BITS, Avp, DecodeError, Message, find
from gy.codes import (
    AUTH_APPLICATION_ID,
    CALLED_STATION_ID,
    CC_INPUT_OCTETS,
    CC_MONEY,
    CC_OUTPUT_OCTETS,
    CC_REQUEST_NUMBER,
    CC_REQUEST_TYPE,
    CC_SERVICE_SPECIFIC_UNITS,
    CC_TIME,
    CC_TOTAL_OCTETS,
    CURRENCY_CODE,
    DIAMETER_AVP_NOT_ALLOWED,
    DIAMETER_AVP_OCCURS_TOO_MANY_TIMES,
    DIAMETER_AVP_UNSUPPORTED,
    DIAMETER_INVALID_AVP_BITS,
    DIAMETER_INVALID_AVP_VALUE,
    DIAMETER_MISSING_AVP,
    DIAMETER_RATING_FAILED,
    EXPONENT,
    MULTIPLE_SERVICES_CREDIT_CONTROL,
    ORIGIN_HOST,
    ORIGIN_REALM,
    PS_INFORMATION,
    RAT_TYPE_3GPP,
    RATING_GROUP,
    REPORTING_REASON,
    REQUESTED_ACTION,
    REQUESTED_SERVICE_UNIT,
    SERVICE_CONTEXT_ID,
    SERVICE_IDENTIFIER,
    SERVICE_INFORMATION,
    SESSION_ID,
    SGSN_MCC_MNC_3GPP,
    SUBSCRIPTION_ID,
    SUBSCRIPTION_ID_DATA,
    SUBSCRIPTION_ID_TYPE,
    TARIFF_CHANGE_USAGE,
    UNIT_VALUE,
    USED_SERVICE_UNIT,
    USER_NAME,
    VALUE_DIGITS,
)
from gy.currencies import alphabetic
from gy.dictionary import VENDOR_3GPP, lookup
from gy.grammar import APP_CREDIT_CONTROL

_KNOWN_BASE = frozenset(code for code in range(1, 2**16) if lookup(code, 0) is not None)


def parse_ccr_reference(msg: Message) -> ParsedCCR:
    """A CCR's AVPs -> ParsedCCR, or DecodeError with the Result-Code and Failed-AVP."""
    avps = msg.avps
    _check_top_level(avps)
    ccr, context = _header(avps)
    request = ccr.request
    _identities(avps, request.identities)
    if request.kind == EVENT:
        _requested_action(avps, ccr)
    _units(avps, ccr)
    if context.endswith(GY_CONTEXT_SUFFIX):
        _service_information(avps, request)
    return ccr


def _check_top_level(avps: list[Avp]) -> None:
    """One pass over the top level: flag bits, unknown mandatory AVPs, AVPs a CCR must not carry, repeats; then
    the required AVPs, in grammar order."""
    seen: set[int] = set()
    for a in avps:
        flags = a.flags
        if flags & AVP_RESERVED_BITS:
            raise DecodeError(DIAMETER_INVALID_AVP_BITS, f"{a!r}: reserved flag bits set", a.raw())
        if a.vendor:
            if flags & AVP_MANDATORY and lookup(a.code, a.vendor) is None:
                raise _unsupported(a)
            continue
        code = a.code
        if code in AT_MOST_ONCE:
            if code in seen:
                raise DecodeError(DIAMETER_AVP_OCCURS_TOO_MANY_TIMES, f"{a!r} occurs more than once", a.raw())
            seen.add(code)
        elif code in NOT_ALLOWED_IN_CCR:
            raise DecodeError(DIAMETER_AVP_NOT_ALLOWED, f"{a!r} is not allowed in a CCR", a.raw())
        elif flags & AVP_MANDATORY and code not in _KNOWN_BASE:
            raise DecodeError(DIAMETER_AVP_UNSUPPORTED, f"AVP {code} with the M bit is not supported", a.raw())
    for code in REQUIRED:
        if code not in seen:
            raise _missing(f"missing AVP {lookup(code).name}", code)  # type: ignore[union-attr]


def _header(avps: list[Avp]) -> tuple[ParsedCCR, str]:
    """The values of the required AVPs, checked: a ParsedCCR without units yet, and the Service-Context-Id."""
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
    number = find(avps, CC_REQUEST_NUMBER).u32()  # type: ignore[union-attr]
    context = find(avps, SERVICE_CONTEXT_ID).text()  # type: ignore[union-attr]
    host = find(avps, ORIGIN_HOST).data.decode("utf-8", "replace")  # type: ignore[union-attr]
    realm = find(avps, ORIGIN_REALM).data.decode("utf-8", "replace")  # type: ignore[union-attr]
    request = ChargingRequest(kind, "gy:" + session_id, number, [], notify=[host, realm])
    return ParsedCCR(request, request_type, session_id, host, realm), context


def _identities(avps: list[Avp], identities: list[tuple[str, str]]) -> None:
    """Subscription-Ids (RFC 4006 8.46), then User-Name as an NAI."""
    for sid in avps:
        if sid.code != SUBSCRIPTION_ID or sid.vendor:
            continue
        children = sid.children
        id_type = _once(children, SUBSCRIPTION_ID_TYPE)
        id_data = _once(children, SUBSCRIPTION_ID_DATA)
        if id_type is None:
            raise _missing("Subscription-Id without Subscription-Id-Type", SUBSCRIPTION_ID_TYPE)
        if id_data is None:
            raise _missing("Subscription-Id without Subscription-Id-Data", SUBSCRIPTION_ID_DATA)
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


def _requested_action(avps: list[Avp], ccr: ParsedCCR) -> None:
    action_avp = find(avps, REQUESTED_ACTION)
    action = action_avp.i32() if action_avp is not None else 0  # RFC 4006 8.41: default DIRECT_DEBITING
    if action not in REQUESTED_ACTIONS:
        raise _invalid(action_avp, f"Requested-Action {action} is not 0 to 3")  # type: ignore[arg-type]
    ccr.request.action = REQUESTED_ACTIONS[action]
    ccr.requested_action = action


def _units(avps: list[Avp], ccr: ParsedCCR) -> None:
    """Multiple-Services-Credit-Control, or (never beside it) the top-level RSU and USUs of one service."""
    request = ccr.request
    top_si = find(avps, SERVICE_IDENTIFIER)
    for a in avps:
        if a.code == MULTIPLE_SERVICES_CREDIT_CONTROL and not a.vendor:
            request.units.append(parse_mscc(a, ccr))
            ccr.uses_mscc = True
    top_rsu = find(avps, REQUESTED_SERVICE_UNIT)
    top_usu = [a for a in avps if a.code == USED_SERVICE_UNIT and not a.vendor]
    if top_rsu is None and not top_usu:
        return
    if ccr.uses_mscc:
        culprit = top_rsu if top_rsu is not None else top_usu[0]
        raise DecodeError(DIAMETER_AVP_NOT_ALLOWED, "RSU/USU beside Multiple-Services-Credit-Control", culprit.raw())
    ccr.top_level_units = True
    request.units.append(
        UnitRequest(
            service_id=top_si.u32() if top_si is not None else None,
            requested=parse_units(top_rsu, ccr) if top_rsu is not None else None,
            used=[parse_usage(u, ccr) for u in top_usu],
        )
    )


def parse_mscc(mscc: Avp, ccr: ParsedCCR) -> UnitRequest:
    children = mscc.children
    _check_flags(children)
    rg = _once(children, RATING_GROUP)
    si = find(children, SERVICE_IDENTIFIER)
    rsu = _once(children, REQUESTED_SERVICE_UNIT)
    return UnitRequest(
        rating_group=rg.u32() if rg is not None else NO_RATING_GROUP,
        service_id=si.u32() if si is not None else None,
        requested=parse_units(rsu, ccr) if rsu is not None else None,
        used=[parse_usage(u, ccr) for u in children if u.code == USED_SERVICE_UNIT and not u.vendor],
        reason=_reason(children),
    )


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


_UNIT_KEYS = {
    CC_TOTAL_OCTETS: "bytes",
    CC_INPUT_OCTETS: "bytes_in",
    CC_OUTPUT_OCTETS: "bytes_out",
    CC_TIME: "seconds",
    CC_SERVICE_SPECIFIC_UNITS: "events",
}


def parse_units(group: Avp, ccr: ParsedCCR) -> dict[str, int]:
    """The unit AVPs of a Requested- or Used-Service-Unit (RFC 4006 8.18, 8.19); bytes = in + out when only those."""
    units: dict[str, int] = {}
    for a in group.children:
        if a.vendor:
            continue
        key = _UNIT_KEYS.get(a.code)
        if key is not None:
            units[key] = a.u32() if a.code == CC_TIME else a.u64()
        elif a.code == CC_MONEY:
            units["money"], currency = money_micro(a)
            if currency is not None:
                _money_currency(ccr, currency)
    if "bytes" not in units and ("bytes_in" in units or "bytes_out" in units):
        units["bytes"] = units.get("bytes_in", 0) + units.get("bytes_out", 0)
    return units


def _money_currency(ccr: ParsedCCR, currency: Avp) -> None:
    """The currency a CC-Money names (RFC 4006 8.22, 8.11; without one, the account's): the request's money must
    all be in one, which the core holds to the account's (chf/core/currency.py). Two currencies in one CCR:
    5031 DIAMETER_RATING_FAILED (no rule converts between them), Failed-AVP the second Currency-Code."""
    code = alphabetic(currency.u32())
    if ccr.request.currency is None:
        ccr.request.currency = code
        ccr.currency_avp = currency.raw()
    elif ccr.request.currency != code:
        raise DecodeError(
            DIAMETER_RATING_FAILED, f"CC-Money in {ccr.request.currency} and in {code} in one request", currency.raw()
        )


def money_micro(cc_money: Avp) -> tuple[int, Avp | None]:
    """CC-Money -> (integer micro-units, its Currency-Code AVP). Unit-Value = Value-Digits x 10^Exponent, exactly."""
    children = cc_money.children
    unit_value = _once(children, UNIT_VALUE)
    if unit_value is None:
        raise _missing("CC-Money without Unit-Value", UNIT_VALUE)
    digits_avp = _once(unit_value.children, VALUE_DIGITS)
    if digits_avp is None:
        raise _missing("Unit-Value without Value-Digits", VALUE_DIGITS)
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
    return micro, _once(children, CURRENCY_CODE)


def _service_information(avps: list[Avp], request: ChargingRequest) -> None:
    """TS 32.299 Service-Information / PS-Information: serving network (3GPP-SGSN-MCC-MNC), RAT, APN."""
    si = _once(avps, SERVICE_INFORMATION, VENDOR_3GPP)
    if si is None:
        return
    ps = _once(si.children, PS_INFORMATION, VENDOR_3GPP)
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


def _reason(avps: list[Avp]) -> str | None:
    a = _once(avps, REPORTING_REASON, VENDOR_3GPP)
    if a is None:
        return None
    value = a.i32()
    return REPORTING_REASONS.get(value, str(value))


def _once(avps: list[Avp], code: int, vendor: int = 0) -> Avp | None:
    found = None
    for a in avps:
        if a.code == code and a.vendor == vendor:
            if found is not None:
                raise DecodeError(DIAMETER_AVP_OCCURS_TOO_MANY_TIMES, f"AVP {code} occurs more than once", a.raw())
            found = a
    return found


def _check_flags(avps: list[Avp]) -> None:
    for a in avps:
        if a.flags & AVP_RESERVED_BITS:
            raise DecodeError(DIAMETER_INVALID_AVP_BITS, f"{a!r}: reserved flag bits set", a.raw())
        if a.flags & AVP_MANDATORY and lookup(a.code, a.vendor) is None:
            raise _unsupported(a)


def _unsupported(a: Avp) -> DecodeError:
    return DecodeError(
        DIAMETER_AVP_UNSUPPORTED, f"AVP {a.code} (vendor {a.vendor}) with the M bit is not supported", a.raw()
    )


def _invalid(a: Avp, why: str) -> DecodeError:
    return DecodeError(DIAMETER_INVALID_AVP_VALUE, f"{a!r}: {why}", a.raw())


def _missing(why: str, code: int) -> DecodeError:
    return DecodeError(DIAMETER_MISSING_AVP, why, example_avp(code))
