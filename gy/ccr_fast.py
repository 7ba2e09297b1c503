"""The fast CCR decoder, and `parse_ccr`: the fast path for well-formed CCRs, the reference for everything else.

`parse_ccr_reference` (gy/ccr_reference.py) builds an `Avp` object per AVP and scans the AVP lists once per field
it looks for: about 200 µs for a PGW's CCR-U. The fast path walks each AVP list once with precompiled structs,
keeps only the (start, end) offsets of what the mapping needs, and checks everything the reference checks. It
never decides an error: on anything unusual (a malformed or unexpected AVP, a repeat, CC-Money, ...) it gives up
and the reference parses the message, so errors and rare shapes behave exactly as the reference says.
tests/test_gy_fastpath.py compares the two on valid and mutated CCRs.

It works in two steps. `_walk` reads only AVP headers (codes, flags, lengths, vendors) and returns a `_Layout`:
where the data of every AVP the mapping needs lies, with every check that depends on headers alone made. `_build`
reads the values at those offsets, makes the checks that depend on values, and builds the request. The walk is
most of the work and a client sends the same shape over and over (a session's CCR-Us differ only in values), so
layouts are cached: a CCR of the same length whose headers at the walked offsets are byte for byte those of a
cached layout has that layout, since the walk saw nothing else (one `itemgetter` of slices and a tuple comparison
instead of the walk).
"""

from __future__ import annotations

import struct
from operator import itemgetter
from typing import Any

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
)
from gy.ccr_reference import parse_ccr_reference
from gy.codec import AVP_MANDATORY, AVP_RESERVED_BITS, AVP_VENDOR, HEADER_LEN, AvpHeader, DecodeError, Message, frame
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
    USED_SERVICE_UNIT,
    USER_NAME,
)
from gy.dictionary import BY_KEY, VENDOR_3GPP
from gy.grammar import APP_CREDIT_CONTROL


class _Fallback(Exception):
    pass


_FALLBACK = _Fallback()
_unpack_u32 = struct.Struct("!I").unpack_from
_unpack_i32 = struct.Struct("!i").unpack_from
_unpack_u64 = struct.Struct("!Q").unpack_from
_KNOWN = frozenset(BY_KEY)
_KNOWN_BASE_CODES = frozenset(code for code, vendor in BY_KEY if vendor == 0)
_REQUIRED_SET = frozenset(REQUIRED)
_FLAG_RESERVED = AVP_RESERVED_BITS << 24
_FLAG_MANDATORY = AVP_MANDATORY << 24
_FLAG_VENDOR = AVP_VENDOR << 24

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
    CC_SERVICE_SPECIFIC_UNITS: ("events", True),
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


def _fast_u32(buf: bytes, start: int, end: int) -> int:
    if end - start != 4:
        raise _FALLBACK
    return _unpack_u32(buf, start)[0]


def _fast_i32(buf: bytes, start: int, end: int) -> int:
    if end - start != 4:
        raise _FALLBACK
    return _unpack_i32(buf, start)[0]


def _fast_u64(buf: bytes, start: int, end: int) -> int:
    if end - start != 8:
        raise _FALLBACK
    return _unpack_u64(buf, start)[0]


def _reason_name(value: int | None) -> str | None:
    return None if value is None else REPORTING_REASONS.get(value, str(value))


# -- the walk: headers only. The group walkers check flags and repeats in one pass over the children; the order in
# which they notice a problem does not matter, since any problem sends the message to the reference.
def _walk_units(children: list[AvpHeader]) -> tuple[UnitSpan, ...]:
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


def _walk_reason(code: int, vendor: int, word: int, span: Span, reason: Span | None) -> Span | None:
    """A vendor AVP of an MSCC or USU: the 3GPP-Reporting-Reason (once), else nothing unknown with the M bit."""
    if code == REPORTING_REASON and vendor == VENDOR_3GPP:
        if reason is not None:
            raise _FALLBACK
        return span
    if word & _FLAG_MANDATORY and (code, vendor) not in _KNOWN:
        raise _FALLBACK
    return reason


def _walk_usage(buf: bytes, start: int, end: int, heads: list[slice]) -> UsageLayout:
    units = []
    reason = tariff_change = None
    for code, vendor, word, s, e in frame(buf, start, end, heads):
        if word & _FLAG_RESERVED:
            raise _FALLBACK
        if vendor:
            reason = _walk_reason(code, vendor, word, (s, e), reason)
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
    for code, vendor, word, s, e in frame(buf, start, end, heads):
        if word & _FLAG_RESERVED:
            raise _FALLBACK
        if vendor:
            reason = _walk_reason(code, vendor, word, (s, e), reason)
        elif code == USED_SERVICE_UNIT:
            used.append(_walk_usage(buf, s, e, heads))
        elif code == RATING_GROUP:
            if rating_group is not None:
                raise _FALLBACK
            rating_group = (s, e)
        elif code == REQUESTED_SERVICE_UNIT:
            if requested is not None:
                raise _FALLBACK
            requested = _walk_units(frame(buf, s, e, heads))
        elif code == SERVICE_IDENTIFIER:
            if service_id is None:  # the first one counts (the reference uses `find`)
                service_id = (s, e)
        elif word & _FLAG_MANDATORY and code not in _KNOWN_BASE_CODES:
            raise _FALLBACK
    return rating_group, service_id, requested, tuple(used), reason


def _fast_once(children: list[AvpHeader], code: int, vendor: int) -> Span | None:
    found = None
    for c, v, _w, s, e in children:
        if c == code and v == vendor:
            if found is not None:
                raise _FALLBACK
            found = (s, e)
    return found


def _walk_ps_information(children: list[AvpHeader]) -> tuple[Span | None, ...]:
    """(3GPP-SGSN-MCC-MNC, 3GPP-RAT-Type, Called-Station-Id) of a PS-Information, each at most once. A PGW sends
    a dozen more children on every request: walked for the framing and the repeats only."""
    mcc_mnc = rat = apn = None
    for code, vendor, _w, s, e in children:
        if vendor == VENDOR_3GPP:
            if code == SGSN_MCC_MNC_3GPP:
                if mcc_mnc is not None:
                    raise _FALLBACK
                mcc_mnc = (s, e)
            elif code == RAT_TYPE_3GPP:
                if rat is not None:
                    raise _FALLBACK
                rat = (s, e)
        elif code == CALLED_STATION_ID and not vendor:
            if apn is not None:
                raise _FALLBACK
            apn = (s, e)
    return mcc_mnc, rat, apn


class _TopLevel:
    """What one pass over a CCR's top-level AVPs found, by kind (spans of the AVPs' data)."""

    __slots__ = ("msccs", "service_info", "subscription_ids", "top_usus")

    def __init__(self) -> None:
        self.subscription_ids: list[Span] = []
        self.msccs: list[Span] = []
        self.top_usus: list[Span] = []
        self.service_info: list[Span] = []


def _walk_top_level(buf: bytes, once: dict[int, Span], heads: list[slice]) -> _TopLevel:
    """The checks of the reference's first loop (flags, unknown mandatory AVPs, repeats, AVPs not allowed) and where
    the AVPs the mapping needs are."""
    top = _TopLevel()
    for code, vendor, word, s, e in frame(buf, HEADER_LEN, len(buf), heads):
        if word & _FLAG_RESERVED:
            raise _FALLBACK
        if vendor:
            if code == SERVICE_INFORMATION and vendor == VENDOR_3GPP:
                top.service_info.append((s, e))
            elif word & _FLAG_MANDATORY and (code, vendor) not in _KNOWN:
                raise _FALLBACK
        elif code in AT_MOST_ONCE:
            if code in once:
                raise _FALLBACK
            once[code] = (s, e)
        elif code == MULTIPLE_SERVICES_CREDIT_CONTROL:
            top.msccs.append((s, e))
        elif code == SUBSCRIPTION_ID:
            top.subscription_ids.append((s, e))
        elif code == USED_SERVICE_UNIT:
            top.top_usus.append((s, e))
        elif code in NOT_ALLOWED_IN_CCR or (word & _FLAG_MANDATORY and code not in _KNOWN_BASE_CODES):
            raise _FALLBACK
    if not once.keys() >= _REQUIRED_SET:
        raise _FALLBACK
    return top


def _walk_service_information(buf: bytes, spans: list[Span], heads: list[slice]) -> tuple[Any, bool]:
    """(`_Layout.ps`, whether the layout may be cached) for the Service-Information AVPs of a CCR."""
    if len(spans) > 1:
        return _PS_UNUSABLE, True
    try:
        ps = _fast_once(frame(buf, spans[0][0], spans[0][1], heads), PS_INFORMATION, VENDOR_3GPP)
        return (() if ps is None else _walk_ps_information(frame(buf, ps[0], ps[1], heads))), True
    except (_Fallback, DecodeError):
        return _PS_UNUSABLE, False  # the walk stopped half-way: its headers were not all seen, not cacheable


def _walk(buf: bytes) -> _Layout:
    """The layout of a CCR; raises _FALLBACK (or DecodeError, from the framing) on anything its headers make
    unusual."""
    layout = _Layout()
    heads: list[slice] = []
    top = _walk_top_level(buf, layout.once, heads)
    for start, stop in top.subscription_ids:
        children = frame(buf, start, stop, heads)
        id_type = _fast_once(children, SUBSCRIPTION_ID_TYPE, 0)
        id_data = _fast_once(children, SUBSCRIPTION_ID_DATA, 0)
        if id_type is None or id_data is None:
            raise _FALLBACK
        layout.subscription_ids.append((id_type, id_data))
    layout.msccs = [_walk_mscc(buf, start, stop, heads) for start, stop in top.msccs]
    top_rsu = layout.once.get(REQUESTED_SERVICE_UNIT)
    if top_rsu is not None or top.top_usus:
        if top.msccs:
            raise _FALLBACK
        if top_rsu is not None:
            layout.top_rsu = _walk_units(frame(buf, top_rsu[0], top_rsu[1], heads))
        layout.top_usus = [_walk_usage(buf, start, stop, heads) for start, stop in top.top_usus]
    cacheable = True
    if top.service_info:
        layout.ps, cacheable = _walk_service_information(buf, top.service_info, heads)
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


def _requested_action(buf: bytes, once: dict[int, Span], request: ChargingRequest) -> int:
    action_at = once.get(REQUESTED_ACTION)
    requested_action = _fast_i32(buf, *action_at) if action_at is not None else 0
    action = REQUESTED_ACTIONS.get(requested_action)
    if action is None:
        raise _FALLBACK
    request.action = action
    return requested_action


def _top_level_units(buf: bytes, layout: _Layout) -> UnitRequest:
    top_si = layout.once.get(SERVICE_IDENTIFIER)
    top_rsu = layout.top_rsu
    return UnitRequest(
        service_id=_fast_u32(buf, *top_si) if top_si is not None else None,
        requested=_units(buf, top_rsu) if top_rsu is not None else None,
        used=[_usage(buf, u) for u in layout.top_usus],
    )


def _ps_information(buf: bytes, ps: tuple[Span | None, ...], request: ChargingRequest) -> None:
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
    requested_action = _requested_action(buf, once, request) if kind == EVENT else None
    units = request.units
    for mscc in layout.msccs:
        units.append(_unit_request(buf, mscc))
    top_level_units = layout.top_rsu is not None or bool(layout.top_usus)
    if top_level_units:
        units.append(_top_level_units(buf, layout))
    if layout.ps is not None and context.endswith(GY_CONTEXT_SUFFIX):
        _ps_information(buf, layout.ps, request)
    return ParsedCCR(
        request,
        request_type,
        session_id,
        host,
        realm,
        uses_mscc=bool(layout.msccs),
        top_level_units=top_level_units,
        requested_action=requested_action,
    )


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
    try:
        layout = _walk(buf)
    except DecodeError:  # a framing error: the reference decides it
        raise _FALLBACK from None
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
