"""Nchf JSON <-> the core's ChargingRequest / ChargingAnswer (TS 32.291), sans-IO.

Validation is hand-written for the fields we read (and the simple top-level ones), so a bad request is refused
with `invalidParams` naming every bad field as a JSON pointer, without a schema engine on the hot path. Fields we
do not use are accepted as the spec allows and ignored.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from chf.core.model import (
    CREDIT_CONTROL_NOT_APPLICABLE,
    CREDIT_LIMIT_REACHED,
    DIRECT_DEBITING,
    END_USER_SERVICE_DENIED,
    FUA_REDIRECT,
    FUA_RESTRICT,
    POST_EVENT,
    RATING_FAILED,
    REASON_FINAL,
    SESSION_UNKNOWN,
    SUCCESS,
    USER_UNKNOWN,
    ChargingAnswer,
    ChargingRequest,
    UnitAnswer,
    UnitRequest,
    UsageReport,
)

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1

# Nchf unit fields -> the core's unit types, and back.
REQUESTED_FIELDS = (
    ("time", "seconds", UINT32_MAX),
    ("totalVolume", "bytes", UINT64_MAX),
    ("serviceSpecificUnits", "events", UINT64_MAX),
)
DIRECTION_FIELDS = (("uplinkVolume", UINT64_MAX), ("downlinkVolume", UINT64_MAX))
GRANTED_FIELD = {"bytes": "totalVolume", "seconds": "time", "events": "serviceSpecificUnits"}

# The core's results -> (HTTP status, TS 32.291 application error cause) when the request as a whole failed.
SESSION_RESULT = {
    USER_UNKNOWN: (404, "USER_UNKNOWN"),
    SESSION_UNKNOWN: (404, "CONTEXT_NOT_FOUND"),
    END_USER_SERVICE_DENIED: (403, "END_USER_REQUEST_DENIED"),
    CREDIT_CONTROL_NOT_APPLICABLE: (403, "CHARGING_NOT_APPLICABLE"),
    CREDIT_LIMIT_REACHED: (403, "QUOTA_LIMIT_REACHED"),
    RATING_FAILED: (400, "CHARGING_FAILED"),
}
# ... and per rating group (MultipleUnitInformation.resultCode, TS 32.291 ResultCode).
UNIT_RESULT = {
    SUCCESS: "SUCCESS",
    END_USER_SERVICE_DENIED: "END_USER_SERVICE_DENIED",
    CREDIT_CONTROL_NOT_APPLICABLE: "QUOTA_MANAGEMENT_NOT_APPLICABLE",
    CREDIT_LIMIT_REACHED: "QUOTA_LIMIT_REACHED",
    USER_UNKNOWN: "USER_UNKNOWN",
    RATING_FAILED: "RATING_FAILED",
}
FINAL_UNIT_ACTION = {FUA_REDIRECT: "REDIRECT", FUA_RESTRICT: "RESTRICT_ACCESS"}
# One-time events (TS 32.290, TS 32.291 oneTimeEventType) -> the core's one-shot actions. IEC, Immediate Event
# Charging: the create is the debit, before the service (as a Gy CCR-Event DIRECT_DEBITING). PEC, Post Event
# Charging: the create reports units delivered already, charged once. Neither leaves a charging session open.
ONE_TIME_EVENTS = {"IEC": DIRECT_DEBITING, "PEC": POST_EVENT}

_PLMN_MCC = re.compile(r"^\d{3}$")
_PLMN_MNC = re.compile(r"^\d{2,3}$")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")
_DIGITS = re.compile(r"^[0-9]{5,15}$")

# Simple top-level properties of ChargingDataRequest we do not use but whose type we still check.
_TOP_LEVEL_TYPES: dict[str, tuple[type, ...]] = {
    "tenantIdentifier": (str,),
    "mnSConsumerIdentifier": (str,),
    "retransmissionIndicator": (bool,),
    "oneTimeEvent": (bool,),
    "oneTimeEventType": (str,),
    "serviceSpecificationInfo": (str,),
    "supportedFeatures": (str,),
    "easid": (str,),
    "ednid": (str,),
    "eASProviderIdentifier": (str,),
    "aMFId": (str,),
}


class InvalidRequest(Exception):
    """The request breaks the schema: `params` are TS 29.571 InvalidParam objects (JSON pointer + reason)."""

    def __init__(self, params: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{p['param']}: {p['reason']}" for p in params))
        self.params = params


@dataclass(slots=True)
class ParsedRequest:
    """What a ChargingDataRequest asks of the core, plus what the answer must echo."""

    sequence_number: int
    identities: list[tuple[str, str]] = field(default_factory=list)
    units: list[UnitRequest] = field(default_factory=list)
    notify_uri: str | None = None
    serving_network: str | None = None
    rat: str | None = None
    dnn: str | None = None
    one_time_event: str | None = None  # the core action of a one-time event create (ONE_TIME_EVENTS), else None


class _Checker:
    __slots__ = ("problems",)

    def __init__(self) -> None:
        self.problems: list[dict[str, str]] = []

    def bad(self, pointer: str, reason: str) -> None:
        self.problems.append({"param": pointer, "reason": reason})

    def obj(self, value: Any, pointer: str) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.bad(pointer, "must be an object")
            return None
        return value

    def array(self, value: Any, pointer: str) -> list[Any]:
        if not isinstance(value, list):
            self.bad(pointer, "must be an array")
            return []
        return value

    def uint(self, value: Any, pointer: str, maximum: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(pointer, "must be an integer")
            return None
        if not 0 <= value <= maximum:
            self.bad(pointer, f"must be from 0 to {maximum}")
            return None
        return value

    def string(self, value: Any, pointer: str) -> str | None:
        if not isinstance(value, str):
            self.bad(pointer, "must be a string")
            return None
        return value

    def triggers(self, value: Any, pointer: str) -> list[str]:
        """Trigger array; returns the trigger types, lower-cased (the core's reporting reasons)."""
        reasons: list[str] = []
        for i, trig in enumerate(self.array(value, pointer)):
            t = self.obj(trig, f"{pointer}/{i}")
            if t is None:
                continue
            if "triggerCategory" not in t:
                self.bad(f"{pointer}/{i}/triggerCategory", "is required")
            else:
                self.string(t["triggerCategory"], f"{pointer}/{i}/triggerCategory")
            if "triggerType" in t:
                kind = self.string(t["triggerType"], f"{pointer}/{i}/triggerType")
                if kind:
                    reasons.append(kind.lower())
        return reasons


def _plmn(check: _Checker, value: Any, pointer: str) -> str | None:
    plmn = check.obj(value, pointer)
    if plmn is None:
        return None
    mcc, mnc = plmn.get("mcc"), plmn.get("mnc")
    if not isinstance(mcc, str) or not _PLMN_MCC.match(mcc):
        check.bad(f"{pointer}/mcc", "must be 3 digits")
        return None
    if not isinstance(mnc, str) or not _PLMN_MNC.match(mnc):
        check.bad(f"{pointer}/mnc", "must be 2 or 3 digits")
        return None
    return mcc + mnc


def _identity(check: _Checker, value: Any, pointer: str) -> tuple[str, str] | None:
    text = check.string(value, pointer)
    if text is None:
        return None
    prefix, _, rest = text.partition("-")
    if prefix in ("imsi", "msisdn"):
        if not _DIGITS.match(rest):
            check.bad(pointer, f"{prefix}- must be followed by 5 to 15 digits")
            return None
        return prefix, rest
    if prefix == "nai" and rest:
        return "nai", rest
    if not text:
        check.bad(pointer, "must not be empty")
        return None
    # Other forms (extid-, gci-, gli-, or none the spec names) are valid identifiers no line is known by: the
    # core answers USER_UNKNOWN.
    return "other", text


def _unit_request(check: _Checker, value: Any, pointer: str) -> dict[str, int]:
    ru = check.obj(value, pointer)
    requested: dict[str, int] = {}
    if ru is None:
        return requested
    for name, unit, maximum in REQUESTED_FIELDS:
        if name in ru:
            n = check.uint(ru[name], f"{pointer}/{name}", maximum)
            if n:
                requested[unit] = n
    up_down = 0
    for name, maximum in DIRECTION_FIELDS:
        if name in ru:
            up_down += check.uint(ru[name], f"{pointer}/{name}", maximum) or 0
    if up_down and "bytes" not in requested:
        requested["bytes"] = up_down
    return requested


def _usage(check: _Checker, value: Any, pointer: str) -> UsageReport | None:
    uc = check.obj(value, pointer)
    if uc is None:
        return None
    if "localSequenceNumber" not in uc:
        check.bad(f"{pointer}/localSequenceNumber", "is required")
    elif isinstance(uc["localSequenceNumber"], bool) or not isinstance(uc["localSequenceNumber"], int):
        check.bad(f"{pointer}/localSequenceNumber", "must be an integer")
    if "serviceId" in uc:
        check.uint(uc["serviceId"], f"{pointer}/serviceId", UINT32_MAX)
    units: dict[str, int] = {}
    for name, unit, maximum in REQUESTED_FIELDS:
        if name in uc:
            n = check.uint(uc[name], f"{pointer}/{name}", maximum)
            if n:
                units[unit] = n
    up = check.uint(uc["uplinkVolume"], f"{pointer}/uplinkVolume", UINT64_MAX) if "uplinkVolume" in uc else None
    down = check.uint(uc["downlinkVolume"], f"{pointer}/downlinkVolume", UINT64_MAX) if "downlinkVolume" in uc else None
    # The core's bytes_in / bytes_out are Gy's CC-Input-Octets / CC-Output-Octets (RFC 4006 8.24, 8.25): octets
    # received from / sent to the end user. Uplink is what the UE sends (TS 32.291 uplinkVolume): bytes_in.
    if up:
        units["bytes_in"] = up
    if down:
        units["bytes_out"] = down
    reasons = check.triggers(uc["triggers"], f"{pointer}/triggers") if "triggers" in uc else []
    reason = REASON_FINAL if REASON_FINAL in reasons else (reasons[0] if reasons else None)
    return UsageReport(units, reason)


def parse_request(body: Any, *, creating: bool) -> ParsedRequest:
    """Check a decoded ChargingDataRequest and translate it. Raises InvalidRequest naming every bad field."""
    check = _Checker()
    if not isinstance(body, dict):
        raise InvalidRequest([{"param": "/", "reason": "the body must be a ChargingDataRequest JSON object"}])
    nf = body.get("nfConsumerIdentification")
    _consumer(check, nf)
    parsed = ParsedRequest(_invocation(check, body))
    _unused_fields(check, body)
    if "subscriberIdentifier" in body:
        ident = _identity(check, body["subscriberIdentifier"], "/subscriberIdentifier")
        if ident is not None:
            parsed.identities.append(ident)
    if "notifyUri" in body:
        parsed.notify_uri = _notify_uri(check, body["notifyUri"])
    if "pDUSessionChargingInformation" in body:
        _pdu_session(check, body["pDUSessionChargingInformation"], parsed)
    if parsed.serving_network is None and isinstance(nf, dict) and "nFPLMNID" in nf:
        parsed.serving_network = _plmn(check, nf["nFPLMNID"], "/nfConsumerIdentification/nFPLMNID")
    if "multipleUnitUsage" in body:
        seen: set[int] = set()
        for i, item in enumerate(check.array(body["multipleUnitUsage"], "/multipleUnitUsage")):
            _unit_usage(check, item, f"/multipleUnitUsage/{i}", parsed, seen)
    parsed.one_time_event = _one_time_event(check, body, creating)
    if creating and not parsed.identities and not check.problems:
        check.bad("/subscriberIdentifier", "a SUPI (imsi-...) or a GPSI (msisdn-...) is needed to open a session")
    if check.problems:
        raise InvalidRequest(check.problems)
    return parsed


def _one_time_event(check: _Checker, body: dict[str, Any], creating: bool) -> str | None:
    """The core action of a create that is a one-time event (ONE_TIME_EVENTS), or None for a session (and for
    an update or release, where the two fields are only type-checked). A PEC reports what was delivered: each of
    its rating groups needs a usedUnitContainer."""
    if not creating:
        return None
    kind = body.get("oneTimeEventType")
    if body.get("oneTimeEvent") is not True:
        if isinstance(kind, str):
            check.bad("/oneTimeEventType", "only for a one-time event (oneTimeEvent true)")
        return None
    if kind is None:
        check.bad("/oneTimeEventType", "is required when oneTimeEvent is true: IEC or PEC")
        return None
    if not isinstance(kind, str):
        return None  # named by the type check of the top-level properties
    action = ONE_TIME_EVENTS.get(kind)
    if action is None:
        check.bad("/oneTimeEventType", f"must be IEC or PEC, got {kind!r}")
    elif action == POST_EVENT and isinstance(usages := body.get("multipleUnitUsage"), list):
        for i, usage in enumerate(usages):
            if isinstance(usage, dict) and not usage.get("usedUnitContainer"):
                check.bad(
                    f"/multipleUnitUsage/{i}/usedUnitContainer",
                    "is required in a PEC one-time event (Post Event Charging reports the units delivered)",
                )
    return action


def _consumer(check: _Checker, nf: Any) -> None:
    """nfConsumerIdentification: required, with its nodeFunctionality."""
    if nf is None:
        check.bad("/nfConsumerIdentification", "is required")
    elif (nf_obj := check.obj(nf, "/nfConsumerIdentification")) is not None:
        if "nodeFunctionality" not in nf_obj:
            check.bad("/nfConsumerIdentification/nodeFunctionality", "is required")
        else:
            check.string(nf_obj["nodeFunctionality"], "/nfConsumerIdentification/nodeFunctionality")


def _invocation(check: _Checker, body: dict[str, Any]) -> int:
    """invocationTimeStamp and invocationSequenceNumber, both required; returns the number (0 when invalid)."""
    stamp = body.get("invocationTimeStamp")
    if stamp is None:
        check.bad("/invocationTimeStamp", "is required")
    elif not isinstance(stamp, str) or not _DATE_TIME.match(stamp):
        check.bad("/invocationTimeStamp", "must be an RFC 3339 date-time")
    if "invocationSequenceNumber" not in body:
        check.bad("/invocationSequenceNumber", "is required")
        return 0
    return check.uint(body["invocationSequenceNumber"], "/invocationSequenceNumber", UINT32_MAX) or 0


def _unused_fields(check: _Checker, body: dict[str, Any]) -> None:
    """Top-level fields we do not use, checked for their type only."""
    for name, types in _TOP_LEVEL_TYPES.items():
        if name in body and not isinstance(body[name], types):
            check.bad(f"/{name}", f"must be a {'boolean' if types == (bool,) else 'string'}")
    if "chargingId" in body:
        check.uint(body["chargingId"], "/chargingId", UINT32_MAX)
    if "triggers" in body:
        check.triggers(body["triggers"], "/triggers")


def _notify_uri(check: _Checker, value: Any) -> str | None:
    uri = check.string(value, "/notifyUri")
    if uri is None:
        return None
    if not uri.startswith(("http://", "https://")) or len(uri.split("/", 3)[2]) == 0:
        check.bad("/notifyUri", "must be an absolute http or https URI")
        return None
    return uri


def _pdu_session(check: _Checker, value: Any, parsed: ParsedRequest) -> None:
    base = "/pDUSessionChargingInformation"
    pdu = check.obj(value, base)
    if pdu is None:
        return
    ui = check.obj(pdu["userInformation"], f"{base}/userInformation") if "userInformation" in pdu else None
    if ui is not None and "servedGPSI" in ui:
        gpsi = _identity(check, ui["servedGPSI"], f"{base}/userInformation/servedGPSI")
        if gpsi is not None and gpsi[0] == "msisdn":
            parsed.identities.append(gpsi)
    if "pduSessionInformation" not in pdu:
        return
    info = check.obj(pdu["pduSessionInformation"], f"{base}/pduSessionInformation")
    if info is None:
        return
    p = f"{base}/pduSessionInformation"
    if "servingCNPlmnId" in info:
        parsed.serving_network = _plmn(check, info["servingCNPlmnId"], f"{p}/servingCNPlmnId")
    if "ratType" in info:
        parsed.rat = check.string(info["ratType"], f"{p}/ratType")
    if "dnnId" in info:
        parsed.dnn = check.string(info["dnnId"], f"{p}/dnnId")


def _unit_usage(check: _Checker, value: Any, pointer: str, parsed: ParsedRequest, seen: set[int]) -> None:
    mu = check.obj(value, pointer)
    if mu is None:
        return
    if "ratingGroup" not in mu:
        check.bad(f"{pointer}/ratingGroup", "is required")
        return
    rg = check.uint(mu["ratingGroup"], f"{pointer}/ratingGroup", UINT32_MAX)
    if rg is None:
        return
    if rg in seen:
        check.bad(f"{pointer}/ratingGroup", f"rating group {rg} appears twice")
        return
    seen.add(rg)
    unit = UnitRequest(rg)
    if "requestedUnit" in mu:
        unit.requested = _unit_request(check, mu["requestedUnit"], f"{pointer}/requestedUnit")
    if "usedUnitContainer" in mu:
        for j, uc in enumerate(check.array(mu["usedUnitContainer"], f"{pointer}/usedUnitContainer")):
            report = _usage(check, uc, f"{pointer}/usedUnitContainer/{j}")
            if report is not None:
                unit.used.append(report)
        if any(r.reason == REASON_FINAL for r in unit.used):
            unit.reason = REASON_FINAL
    parsed.units.append(unit)


def to_charging_request(
    parsed: ParsedRequest, kind: str, session: str, number: int, *, notify: Any = None, action: str | None = None
) -> ChargingRequest:
    return ChargingRequest(
        kind,
        session,
        number,
        parsed.identities,
        parsed.units,
        protocol="nchf",
        action=action,
        serving_network=parsed.serving_network,
        rat=parsed.rat,
        apn=parsed.dnn,
        notify=notify,
    )


# The formatted second of the last timestamp: every answer carries one, and strftime per answer showed in profiles.
_stamp_second: list[Any] = [None, ""]


def now_rfc3339(now: float | None = None) -> str:
    t = time.time() if now is None else now
    second = int(t)
    if second != _stamp_second[0]:
        _stamp_second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamp_second[0] = second
    return f"{_stamp_second[1]}.{int(t * 1000) % 1000:03d}Z"


_TRIGGER_CATEGORY = "IMMEDIATE_REPORT"


def unit_information(ua: UnitAnswer) -> dict[str, Any]:
    """One MultipleUnitInformation from the core's answer for a rating group."""
    out: dict[str, Any] = {"resultCode": UNIT_RESULT.get(ua.result, "RATING_FAILED"), "ratingGroup": ua.rating_group}
    if ua.unit is not None and ua.granted is not None and (name := GRANTED_FIELD.get(ua.unit)) is not None:
        # time is a Uint32 on the wire; a larger grant (only from an absurd catalogue quantum) is capped, never
        # sent out of range.
        out["grantedUnit"] = {name: min(ua.granted, UINT32_MAX) if name == "time" else ua.granted}
    triggers: list[dict[str, str]] = []
    if ua.validity_time:
        out["validityTime"] = ua.validity_time
        triggers.append({"triggerType": "VALIDITY_TIME", "triggerCategory": _TRIGGER_CATEGORY})
    if ua.quota_holding_time:
        out["quotaHoldingTime"] = ua.quota_holding_time
        triggers.append({"triggerType": "QHT", "triggerCategory": _TRIGGER_CATEGORY})
    if ua.volume_threshold is not None:
        out["volumeQuotaThreshold"] = ua.volume_threshold
    if ua.time_threshold is not None:
        out["timeQuotaThreshold"] = min(ua.time_threshold, UINT32_MAX)
    if ua.volume_threshold is not None or ua.time_threshold is not None:
        triggers.append({"triggerType": "QUOTA_THRESHOLD", "triggerCategory": _TRIGGER_CATEGORY})
    if ua.granted:
        triggers.append({"triggerType": "QUOTA_EXHAUSTED", "triggerCategory": _TRIGGER_CATEGORY})
    if triggers:
        out["triggers"] = triggers
    if ua.final is not None:
        fui: dict[str, Any] = {"finalUnitAction": FINAL_UNIT_ACTION.get(ua.final.action, "TERMINATE")}
        if ua.final.redirect_address:
            address = ua.final.redirect_address
            kind = "URL" if "://" in address else ("IPV6" if ":" in address else "IPV4")
            fui["redirectServer"] = {"redirectAddressType": kind, "redirectServerAddress": address}
        if ua.final.filter_id:
            fui["filterId"] = ua.final.filter_id
        if ua.final.restriction_rules:
            fui["restrictionFilterRuleList"] = list(ua.final.restriction_rules)
        out["finalUnitIndication"] = fui
    return out


def charging_data_response(answer: ChargingAnswer, sequence_number: int, now: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"invocationTimeStamp": now_rfc3339(now), "invocationSequenceNumber": sequence_number}
    if answer.units:
        out["multipleUnitInformation"] = [unit_information(u) for u in answer.units]
    return out


_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _unit_information_json(ua: UnitAnswer) -> str:
    """`unit_information(ua)` as compact JSON, written directly for the usual answer (a grant with validity time,
    thresholds and no Final-Unit-Indication): the same text json.dumps gives, at a fraction of its cost."""
    name = GRANTED_FIELD.get(ua.unit) if ua.unit is not None and ua.granted is not None else None
    if (
        ua.final is not None
        or name is None
        or ua.quota_holding_time
        or ua.time_threshold is not None
        or type(ua.granted) is not int
        or type(ua.validity_time) not in (int, type(None))
        or type(ua.volume_threshold) not in (int, type(None))
    ):
        return _JSON_ENCODER.encode(unit_information(ua))
    granted = min(ua.granted, UINT32_MAX) if name == "time" else ua.granted
    text = (
        f'{{"resultCode":"{UNIT_RESULT.get(ua.result, "RATING_FAILED")}","ratingGroup":{ua.rating_group:d},'
        f'"grantedUnit":{{"{name}":{granted:d}}}'
    )
    triggers = []
    if ua.validity_time:
        text += f',"validityTime":{ua.validity_time:d}'
        triggers.append(_TRIGGER_JSON["VALIDITY_TIME"])
    if ua.volume_threshold is not None:
        text += f',"volumeQuotaThreshold":{ua.volume_threshold:d}'
        triggers.append(_TRIGGER_JSON["QUOTA_THRESHOLD"])
    if ua.granted:
        triggers.append(_TRIGGER_JSON["QUOTA_EXHAUSTED"])
    if triggers:
        text += ',"triggers":[' + ",".join(triggers) + "]"
    return text + "}"


_TRIGGER_JSON = {
    kind: f'{{"triggerType":"{kind}","triggerCategory":"{_TRIGGER_CATEGORY}"}}'
    for kind in ("VALIDITY_TIME", "QHT", "QUOTA_THRESHOLD", "QUOTA_EXHAUSTED")
}


def charging_data_response_json(answer: ChargingAnswer, sequence_number: int, now: float | None = None) -> bytes:
    """`charging_data_response` encoded as compact JSON (the response body), without the dict in between."""
    text = f'{{"invocationTimeStamp":"{now_rfc3339(now)}","invocationSequenceNumber":{int(sequence_number):d}'
    if answer.units:
        text += ',"multipleUnitInformation":[' + ",".join(_unit_information_json(u) for u in answer.units) + "]"
    return (text + "}").encode()


def problem(status: int, cause: str, detail: str, invalid: list[dict[str, str]] | None = None) -> dict[str, Any]:
    titles = {
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        405: "Method Not Allowed",
        408: "Request Timeout",
        411: "Length Required",
        413: "Payload Too Large",
        415: "Unsupported Media Type",
        503: "Service Unavailable",
    }
    out: dict[str, Any] = {"title": titles.get(status, "Error"), "status": status, "detail": detail, "cause": cause}
    if invalid:
        out["invalidParams"] = invalid
    return out
