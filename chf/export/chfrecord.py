"""An export record (chf/export/records.py) as a 3GPP CHF charging data record: TS 32.298 `CHFRecord`
(chargingFunctionRecord), BER-encoded.

The ASN.1 is chf/export/asn1/chf-cdr.asn (TS 32.298 V16.11.0, cut to what is written here); the module uses
IMPLICIT TAGS, so every field is its context tag and the value's contents. The encoder is written by hand for
this one record: a generic ASN.1 library (asn1tools) took 170 µs per record, a tenth of what charging spends on
the request the record comes from, and the exporter shares the process with charging. The tests decode every
written file with two independent decoders built from chf-cdr.asn (asn1tools and pycrate's compiler) and compare
with the JSON record of the same event.

One CDR per rated report: `usage` (a client reported used units, or a one-shot DIRECT_DEBITING or POST_EVENT)
and `refund` (REFUND_ACCOUNT) records. Every other record type (top-ups, adjustments, renewals, releases of unused
reservations...) is account management, not network usage, and stays in the JSON Lines and NATS streams.

Fields written (JSON record field -> CHFRecord field):

    recordType                  200 (chargingFunctionRecord)
    recordingNetworkFunctionID  this CHF's NF instance id (a UUID, [export.cdr] nf_instance_id)
    subscriberIdentifier        servedIMSI as END_USER_IMSI, else servedMSISDN as END_USER_E164
    nFunctionConsumerInformation
                                networkFunctionality: sMF for Nchf requests, pGWCSMF for Gy (the PGW-C / GGSN
                                side; TS 32.298 has no value of its own for a Gy client)
    listOfMultipleUnitUsage     one MultipleUnitUsage: ratingGroup (-1 when the client named none) with one
                                UsedUnitContainer:
        serviceIdentifier       serviceIdentifier
        dataTotalVolume         usedUnits.totalVolume (else uplink + downlink when both were reported)
        dataVolumeUplink        usedUnits.datavolumeUplink
        dataVolumeDownlink      usedUnits.datavolumeDownlink
        time                    usedUnits.timeUsage
        serviceSpecificUnits    usedUnits.serviceSpecificUnits
                                (a one-shot event or a refund reports no usedUnits: its ratedQuantity goes to the
                                field of its ratedUnit; a refund's quantity is negative)
        triggers, triggerTimeStamp
                                the reporting reason (causeForRecClosing of the JSON record) as an SMFTrigger
                                (TRIGGERS below), at timeOfReport; none for a reason without one
        eventTimeStamp          timeOfReport, for one-shot events and refunds
        ratingIndicator         TRUE when a tariff rated the units
    recordOpeningTime           recordOpeningTime (one-shot events and refunds: timeOfReport)
    duration                    duration (one-shot events and refunds: 0)
    causeForRecClosing          CAUSES below: normalRelease for the final report, partialRecord for the reports
                                before it
    localRecordSequenceNumber   recordSequenceNumber modulo 2^32 (the spool sequence)
    chargingSessionIdentifier   chargingSessionId without its protocol prefix: the ChargingDataRef (Nchf) or the
                                Diameter Session-Id (Gy)
    tenantIdentifier            tenant (UTF-8)

Not written: chargingID (the PGW/SMF Charging-Id is not kept with the events), recordSequenceNumber (partial
record numbering per session; the spool sequence is localRecordSequenceNumber), the money charged (CHFRecord has
no field for it; it is in the JSON record), the catalogue version that priced it (catalogueVersion of the JSON
record; CHFRecord has none). Times are UTC, written with offset +0000.
"""

from __future__ import annotations

import time
from typing import Any

CHARGING_FUNCTION_RECORD = 200
NO_RATING_GROUP = -1

# NetworkFunctionality (TS 32.298 CHFChargingDataTypes)
NF_SMF = 1
NF_PGW_C_SMF = 9
# SubscriptionIDType (GenericChargingDataTypes)
END_USER_E164 = 0
END_USER_IMSI = 1
# CauseForRecClosing (GenericChargingDataTypes)
NORMAL_RELEASE = 0
PARTIAL_RECORD = 1

# Reporting reason (Gy Reporting-Reason names, Nchf triggerType lower-cased) -> CauseForRecClosing. A report not
# named here closes a partial record: the session goes on.
CAUSES = {
    "final": NORMAL_RELEASE,
    "abnormal_release": 4,  # abnormalRelease
    "volume_limit": 16,  # volumeLimit
    "time_limit": 17,  # timeLimit
    "serving_node_change": 18,  # servingNodeChange
    "max_number_of_changes_in_charging_conditions": 19,  # maxChangeCond
    "management_intervention": 20,  # managementIntervention
    "rat_change": 22,  # rATChange
    "ue_timezone_change": 23,  # mSTimeZoneChange
    "DIRECT_DEBITING": NORMAL_RELEASE,  # a one-shot event is complete in itself
    "POST_EVENT": NORMAL_RELEASE,  # so is an Nchf PEC one-time event
    "REFUND_ACCOUNT": NORMAL_RELEASE,
}

# Reporting reason -> SMFTrigger (CHFChargingDataTypes). Quota reasons depend on the unit that was rated:
# (bytes, seconds, anything else).
_QUOTA_TRIGGERS = {
    "threshold": (401, 400, 402),  # volume / time / unit ThresholdReached
    "quota_threshold": (401, 400, 402),
    "quota_exhausted": (404, 403, 405),  # volume / time / unit QuotaExhausted
}
TRIGGERS = {
    "qht": 410,  # expiryOfQuotaHoldingTime
    "final": 503,  # endOfPDUSession
    "validity_time": 406,  # expiryOfQuotaValidityTime
    "other_quota_type": 409,  # otherQuotaType
    "forced_reauthorisation": 407,  # reAuthorizationRequest
    "unused_quota_timer": 502,  # unitCountInactivityTime
    "abnormal_release": 506,  # abnormalRelease
    "management_intervention": 501,  # managementIntervention
    "qos_change": 100,  # qoSChange
    "user_location_change": 101,  # userLocationChange
    "serving_node_change": 102,  # servingNodeChange
    "change_of_ue_presence_in_presence_reporting_area": 103,  # presenceReportingAreaChange
    "change_of_3gpp_ps_data_off_status": 104,  # threeGPPPSDataOffStatusChange
    "tariff_time_change": 105,  # tariffTimeChange
    "ue_timezone_change": 106,  # uETimeZoneChange
    "plmn_change": 107,  # pLMNChange
    "rat_change": 108,  # rATTypeChange
    "session_ambr_change": 109,  # sessionAMBRChange
    "addition_of_upf": 110,  # additionOfUPF
    "removal_of_upf": 111,  # removalOfUPF
    "max_number_of_changes_in_charging_conditions": 203,  # pDUSessionExpiryChargingConditionChanges
    "time_limit": 300,  # ratingGroupDataTimeLimit
    "volume_limit": 301,  # ratingGroupDataVolumeLimit
    "event_limit": 302,  # ratingGroupDataEventLimit
}

# usedUnits (JSON record) -> UsedUnitContainer field tag; "money" has no field.
_UNIT_TAGS = {
    "timeUsage": 0x81,  # time [1]
    "totalVolume": 0x84,  # dataTotalVolume [4]
    "datavolumeUplink": 0x85,  # dataVolumeUplink [5]
    "datavolumeDownlink": 0x86,  # dataVolumeDownlink [6]
    "serviceSpecificUnits": 0x87,  # serviceSpecificUnits [7]
}
_RATED_UNIT_TAGS = {"bytes": 0x84, "seconds": 0x81, "events": 0x87}


# ------------------------------------------------------------------------------------------------------------------
# BER (X.690): definite lengths, tags below 31 in one octet
# ------------------------------------------------------------------------------------------------------------------
def length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    return bytes((tag,)) + length(n) + content


def integer(tag: int, value: int) -> bytes:
    """INTEGER (or ENUMERATED) contents in the fewest octets of two's complement."""
    if 0 <= value < 0x80:
        return bytes((tag, 1, value))
    size = (value + (value < 0)).bit_length() // 8 + 1
    return bytes((tag, size)) + value.to_bytes(size, "big", signed=True)


def bcd(n: int) -> int:
    return (n // 10) << 4 | n % 10


_STAMPS: dict[int, bytes] = {}


def timestamp(epoch: int) -> bytes:
    """TimeStamp (GenericChargingDataTypes): YYMMDDhhmmss in BCD, the sign "+" in ASCII, hhmm of the offset in BCD;
    UTC, so the offset is +0000."""
    stamp = _STAMPS.get(epoch)
    if stamp is None:
        t = time.gmtime(epoch)
        stamp = (
            bytes((bcd(t.tm_year % 100), bcd(t.tm_mon), bcd(t.tm_mday), bcd(t.tm_hour), bcd(t.tm_min), bcd(t.tm_sec)))
            + b"+\x00\x00"
        )
        if len(_STAMPS) >= 4096:
            _STAMPS.clear()
        _STAMPS[epoch] = stamp
    return stamp


# ------------------------------------------------------------------------------------------------------------------
# The record
# ------------------------------------------------------------------------------------------------------------------
class ChfRecordEncoder:
    """Encodes export records as CHFRecord BER for one CHF (its NF instance id goes into every record)."""

    def __init__(self, nf_instance_id: str) -> None:
        if not 1 <= len(nf_instance_id) <= 36 or not nf_instance_id.isascii():
            raise ValueError("the NF instance id must be 1 to 36 ASCII characters (a UUID)")
        # recordType [0] and recordingNetworkFunctionID [1] are the same in every record.
        self._head = integer(0x80, CHARGING_FUNCTION_RECORD) + tlv(0x81, nf_instance_id.encode())
        # nFunctionConsumerInformation [3] NetworkFunctionInformation { networkFunctionality [0] }
        self._consumer = {
            "nchf": tlv(0xA3, integer(0x80, NF_SMF)),
            "gy": tlv(0xA3, integer(0x80, NF_PGW_C_SMF)),
        }

    def encode(self, record: dict[str, Any]) -> bytes | None:
        """The CHFRecord of `record`, or None for a record type that is not a CDR (module docstring)."""
        kind = record.get("recordType")
        if kind != "usage" and kind != "refund":
            return None
        report_time = int(record["time"])
        opened = report_time - int(record.get("duration") or 0)
        reason = record.get("reason")
        one_shot = kind == "refund" or reason == "DIRECT_DEBITING" or reason == "POST_EVENT"
        protocol, _, session = (record.get("chargingSessionId") or "").partition(":")
        parts = [self._head]
        subscriber = _subscriber(record)
        if subscriber:
            parts.append(subscriber)
        parts.append(self._consumer.get(protocol) or self._consumer["nchf"])
        parts.append(tlv(0xA5, tlv(0x30, _unit_usage(record, report_time, one_shot))))  # listOfMultipleUnitUsage
        parts.append(tlv(0x86, timestamp(opened)))  # recordOpeningTime [6]
        parts.append(integer(0x87, report_time - opened))  # duration [7]
        parts.append(integer(0x89, CAUSES.get(reason or "", PARTIAL_RECORD)))  # causeForRecClosing [9]
        parts.append(integer(0x8B, record["recordSequenceNumber"] & 0xFFFFFFFF))  # localRecordSequenceNumber [11]
        if session:
            parts.append(tlv(0x90, session.encode()))  # chargingSessionIdentifier [16]
        tenant = record.get("tenant")
        if tenant:
            parts.append(tlv(0x97, tenant.encode()))  # tenantIdentifier [23]
        body = b"".join(parts)
        return b"\xbf\x81\x48" + length(len(body)) + body  # CHFRecord: chargingFunctionRecord [200], constructed


def _subscriber(record: dict[str, Any]) -> bytes:
    """subscriberIdentifier [2] SubscriptionID { subscriptionIDType [0], subscriptionIDData [1] UTF8String }."""
    imsi = record.get("servedIMSI")
    if imsi:
        return tlv(0xA2, integer(0x80, END_USER_IMSI) + tlv(0x81, str(imsi).encode()))
    msisdn = record.get("servedMSISDN")
    if msisdn:
        return tlv(0xA2, integer(0x80, END_USER_E164) + tlv(0x81, str(msisdn).encode()))
    return b""


def _unit_usage(record: dict[str, Any], report_time: int, one_shot: bool) -> bytes:
    """MultipleUnitUsage contents: ratingGroup [0], usedUnitContainers [1] with one UsedUnitContainer."""
    rating_group = record.get("ratingGroup")
    container = _container(record, report_time, one_shot)
    return integer(0x80, NO_RATING_GROUP if rating_group is None else rating_group) + tlv(0xA1, tlv(0x30, container))


def _container(record: dict[str, Any], report_time: int, one_shot: bool) -> bytes:
    parts = []
    service = record.get("serviceIdentifier")
    if service is not None:
        parts.append(integer(0x80, service))  # serviceIdentifier [0]
    units = _units(record)
    trigger = _trigger(record.get("reason"), record.get("ratedUnit"))
    if trigger is not None:
        # triggers [2] SEQUENCE OF Trigger; Trigger is a CHOICE: its alternative sMFTrigger [0] stands alone.
        units[0x82] = tlv(0xA2, integer(0x80, trigger))
        units[0x83] = tlv(0x83, timestamp(report_time))  # triggerTimeStamp [3]
    if one_shot:
        units[0x88] = tlv(0x88, timestamp(report_time))  # eventTimeStamp [8]
    if record.get("tariff"):
        units[0x8A] = b"\x8a\x01\xff"  # ratingIndicator [10] TRUE
    parts.extend(units[tag] for tag in sorted(units))  # a SEQUENCE: components in their order
    return b"".join(parts)


def _units(record: dict[str, Any]) -> dict[int, bytes]:
    """The unit fields of the container by tag (their order in UsedUnitContainer)."""
    out: dict[int, bytes] = {}
    used = record.get("usedUnits")
    if used:
        for name, value in used.items():
            tag = _UNIT_TAGS.get(name)
            if tag is not None:
                out[tag] = integer(tag, value)
        if 0x84 not in out and "datavolumeUplink" in used and "datavolumeDownlink" in used:
            out[0x84] = integer(0x84, used["datavolumeUplink"] + used["datavolumeDownlink"])
        return out
    tag = _RATED_UNIT_TAGS.get(record.get("ratedUnit") or "")
    quantity = record.get("ratedQuantity")
    if tag is not None and quantity is not None:
        out[tag] = integer(tag, quantity)
    return out


def _trigger(reason: str | None, unit: str | None) -> int | None:
    if reason is None:
        return None
    quota = _QUOTA_TRIGGERS.get(reason)
    if quota is not None:
        return quota[0] if unit == "bytes" else quota[1] if unit == "seconds" else quota[2]
    return TRIGGERS.get(reason)
