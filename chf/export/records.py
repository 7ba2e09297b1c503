"""The export record: a spool event as billing, finance and analytics receive it, one JSON object per event.

Export record (JSON, one object per event). Names follow the TS 32.298 charging record vocabulary where one
exists; the rest are the rating fields of this charging function:

    recordId             unique event id "<store id>-<sequence>" (de-duplication key)
    recordSequenceNumber spool sequence number (monotonic, no gaps within one store)
    recordType           event kind: usage | refund | topup | adjustment | renewal | renewal_failed | expiry |
                         bonus | bucket_grant | plan_change | lifecycle | line_move | release | pool_resize |
                         pool_topoff | pool_tier (an adaptive pool's close: tier, pool_used, why) | addon |
                         wholesale
    timeOfReport         ISO 8601 UTC time of the event; `time` the same in UNIX seconds
    tenant, account      the MVNO brand and the paying account (for usage a split-billing rule sent to another
                         account, that payer; the line's own account is then details.lineAccount)
    subscriberId         internal line id; servedIMSI, servedMSISDN its identities (null for account events)
    chargingSessionId    the session (usage, refund, release)
    ratingGroup, serviceIdentifier
    usedUnits            {datavolumeUplink, datavolumeDownlink, totalVolume (bytes), timeUsage (seconds),
                          serviceSpecificUnits (events), money} - only the types reported; CC-Input-Octets
                          (octets from the user) are uplink, CC-Output-Octets downlink
    ratedUnit, ratedQuantity
                         the unit type that was rated and how many
    causeForRecClosing   the reporting reason the client gave (final, quota exhausted, validity time...)
    zone, tariff, charge, currency
                         rating: the tariff applied, the money charged (integer micro-units, negative for a
                         refund) in the account's currency
    catalogueVersion     the version of the catalogue that priced the event (README, "Effective-dated
                         catalogue"): the first 12 hex digits of its file's sha256, kept by `chf serve` in
                         <data_dir>/catalogues/<version>.toml
    balanceImpacts       [{balance, unit, delta, after}] every balance the event changed, with its value after
    overGrant            units reported beyond the grant (still charged)
    netAmount, taxAmount, grossAmount, taxRate, taxProfile
                         the charge's split under the paying account's tax profile (chf.core.tax): net + tax =
                         gross = charge, the rate in parts per million; absent without a tax profile (tax 0,
                         net = gross = charge)
    customer, customerTenant, hierarchyLevel, priceList
                         a wholesale charge (B2B2B, chf.core.wholesale): the account one level below on whose
                         behalf the paying account is charged, its tenant, the payer's level above the line's
                         account (1, 2, ...) and the price list that priced it
    actor, reason        who or what caused the event and why (audit)
    details              the remaining fields of the event (amount, state, from, plan, released, ...)

    recordOpeningTime, duration
                         for usage: the start of the container this report closes (the session's previous
                         request, when the units were granted) and the seconds from then to timeOfReport
    sessionStartTime     for usage: when the charging session began

The spool records each report, not whole-session records: a session's records share chargingSessionId and
together cover it from sessionStartTime; timeUsage is the reported duration of one report.
"""

from __future__ import annotations

import json
import time
from typing import Any

# Event fields that are mapped to a record field of their own (everything else goes to `details`).
_MAPPED = frozenset(
    {
        "opened",
        "session_started",
        "id",
        "seq",
        "kind",
        "time",
        "tenant",
        "account",
        "subscriber",
        "imsi",
        "msisdn",
        "session",
        "rating_group",
        "service_id",
        "units",
        "unit",
        "used",
        "reason",
        "zone",
        "tariff",
        "catalogue",
        "charge",
        "currency",
        "impacts",
        "over_grant",
        "actor",
        "net",
        "tax",
        "gross",
        "tax_rate",
        "tax_profile",
        "customer",
        "customer_tenant",
        "level",
        "price_list",
        "payer",
    }
)
_UNIT_NAMES = {
    "bytes_in": "datavolumeUplink",
    "bytes_out": "datavolumeDownlink",
    "bytes": "totalVolume",
    "seconds": "timeUsage",
    "events": "serviceSpecificUnits",
    "money": "money",
}


def iso_time(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def to_record(event: dict[str, Any]) -> dict[str, Any]:
    """Map a spool event to an export record (vocabulary in the module docstring)."""
    units = event.get("units") or {}
    record: dict[str, Any] = {
        "recordId": event["id"],
        "recordSequenceNumber": event["seq"],
        "recordType": event["kind"],
        "timeOfReport": iso_time(int(event["time"])),
        "time": event["time"],
        "tenant": event.get("tenant"),
        "account": event.get("account"),
        "subscriberId": event.get("subscriber"),
        "servedIMSI": event.get("imsi"),
        "servedMSISDN": event.get("msisdn"),
        "chargingSessionId": event.get("session"),
        "ratingGroup": event.get("rating_group"),
        "serviceIdentifier": event.get("service_id"),
        "usedUnits": {_UNIT_NAMES.get(k, k): v for k, v in units.items()} or None,
        "ratedUnit": event.get("unit"),
        "ratedQuantity": event.get("used"),
        "causeForRecClosing": event.get("reason") if event["kind"] == "usage" else None,
        "zone": event.get("zone"),
        "tariff": event.get("tariff"),
        "charge": event.get("charge"),
        "currency": event.get("currency"),
        "catalogueVersion": event.get("catalogue"),
        "balanceImpacts": event.get("impacts", []),
        "overGrant": event.get("over_grant"),
        "netAmount": event.get("net"),
        "taxAmount": event.get("tax"),
        "grossAmount": event.get("gross"),
        "taxRate": event.get("tax_rate"),
        "taxProfile": event.get("tax_profile"),
        "customer": event.get("customer"),
        "customerTenant": event.get("customer_tenant"),
        "hierarchyLevel": event.get("level"),
        "priceList": event.get("price_list"),
        "recordOpeningTime": iso_time(int(event["opened"])) if event.get("opened") is not None else None,
        "duration": int(event["time"]) - int(event["opened"]) if event.get("opened") is not None else None,
        "sessionStartTime": iso_time(int(event["session_started"]))
        if event.get("session_started") is not None
        else None,
        "actor": event.get("actor"),
        "reason": event.get("reason"),
    }
    details = {k: v for k, v in event.items() if k not in _MAPPED}
    payer = event.get("payer")
    if payer is not None:  # split billing (chf/core/split.py): the payer is the paying account
        record["account"] = payer
        details["lineAccount"] = event.get("account")
    if details:
        record["details"] = details
    return {k: v for k, v in record.items() if v is not None}


def encode_record(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
