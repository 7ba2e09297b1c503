"""Numbers by the names the specifications give them: the AVP codes the Gy front-end reads or writes, and the
Result-Code values it answers with (RFC 6733 section 7.1, RFC 4006 section 9). Command codes and application ids
are defined by the message formats in gy/grammar.py.
"""

from __future__ import annotations

from gy.dictionary import VENDOR_3GPP, avp


def _code(name: str, vendor: int = 0) -> int:
    d = avp(name)
    assert d.vendor == vendor, f"{name} is an AVP of vendor {d.vendor}"
    return d.code


# -- AVP codes: base protocol (RFC 6733) -----------------------------------------------------------------------
USER_NAME = _code("User-Name")
AUTH_APPLICATION_ID = _code("Auth-Application-Id")
ACCT_APPLICATION_ID = _code("Acct-Application-Id")
VENDOR_SPECIFIC_APPLICATION_ID = _code("Vendor-Specific-Application-Id")
SESSION_ID = _code("Session-Id")
ORIGIN_HOST = _code("Origin-Host")
RESULT_CODE = _code("Result-Code")
ORIGIN_REALM = _code("Origin-Realm")
# -- credit control (RFC 4006) and NASREQ (RFC 7155) -------------------------------------------------------------
CALLED_STATION_ID = _code("Called-Station-Id")
CC_INPUT_OCTETS = _code("CC-Input-Octets")
CC_MONEY = _code("CC-Money")
CC_OUTPUT_OCTETS = _code("CC-Output-Octets")
CC_REQUEST_NUMBER = _code("CC-Request-Number")
CC_REQUEST_TYPE = _code("CC-Request-Type")
CC_SERVICE_SPECIFIC_UNITS = _code("CC-Service-Specific-Units")
CC_TIME = _code("CC-Time")
CC_TOTAL_OCTETS = _code("CC-Total-Octets")
CURRENCY_CODE = _code("Currency-Code")
EXPONENT = _code("Exponent")
MULTIPLE_SERVICES_CREDIT_CONTROL = _code("Multiple-Services-Credit-Control")
RATING_GROUP = _code("Rating-Group")
REQUESTED_ACTION = _code("Requested-Action")
REQUESTED_SERVICE_UNIT = _code("Requested-Service-Unit")
SERVICE_CONTEXT_ID = _code("Service-Context-Id")
SERVICE_IDENTIFIER = _code("Service-Identifier")
SUBSCRIPTION_ID = _code("Subscription-Id")
SUBSCRIPTION_ID_DATA = _code("Subscription-Id-Data")
SUBSCRIPTION_ID_TYPE = _code("Subscription-Id-Type")
TARIFF_CHANGE_USAGE = _code("Tariff-Change-Usage")
UNIT_VALUE = _code("Unit-Value")
USED_SERVICE_UNIT = _code("Used-Service-Unit")
VALUE_DIGITS = _code("Value-Digits")
# -- 3GPP (TS 32.299, TS 29.061), vendor VENDOR_3GPP ------------------------------------------------------------
REPORTING_REASON = _code("Reporting-Reason", VENDOR_3GPP)
SERVICE_INFORMATION = _code("Service-Information", VENDOR_3GPP)
PS_INFORMATION = _code("PS-Information", VENDOR_3GPP)
SGSN_MCC_MNC_3GPP = _code("3GPP-SGSN-MCC-MNC", VENDOR_3GPP)
RAT_TYPE_3GPP = _code("3GPP-RAT-Type", VENDOR_3GPP)

# -- Result-Code values ----------------------------------------------------------------------------------------
DIAMETER_SUCCESS = 2001
DIAMETER_LIMITED_SUCCESS = 2002
DIAMETER_COMMAND_UNSUPPORTED = 3001
DIAMETER_TOO_BUSY = 3004
DIAMETER_APPLICATION_UNSUPPORTED = 3007
DIAMETER_INVALID_HDR_BITS = 3008
DIAMETER_INVALID_AVP_BITS = 3009
DIAMETER_UNKNOWN_PEER = 3010
DIAMETER_END_USER_SERVICE_DENIED = 4010
DIAMETER_CREDIT_CONTROL_NOT_APPLICABLE = 4011
DIAMETER_CREDIT_LIMIT_REACHED = 4012
DIAMETER_AVP_UNSUPPORTED = 5001
DIAMETER_UNKNOWN_SESSION_ID = 5002
DIAMETER_INVALID_AVP_VALUE = 5004
DIAMETER_MISSING_AVP = 5005
DIAMETER_AVP_NOT_ALLOWED = 5008
DIAMETER_AVP_OCCURS_TOO_MANY_TIMES = 5009
DIAMETER_NO_COMMON_APPLICATION = 5010
DIAMETER_UNSUPPORTED_VERSION = 5011
DIAMETER_UNABLE_TO_COMPLY = 5012
DIAMETER_INVALID_AVP_LENGTH = 5014
DIAMETER_USER_UNKNOWN = 5030
DIAMETER_RATING_FAILED = 5031


def is_protocol_error(result_code: int) -> bool:
    """3xxx: answered with the E bit (RFC 6733 section 7.1.3)."""
    return 3000 <= result_code < 4000
