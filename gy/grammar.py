"""The Gy grammar as data: the commands we speak, the AVPs each may carry, and the flag rules of every AVP.

The message formats are written in the specifications' own notation (RFC 6733 section 3.2, the notation OTP's
diameter dictionaries use too): `< X >` a fixed AVP, `{ X }` a required one, `[ X ]` an optional one, a leading
`min*max` qualifier for repeats (`*` any number, `0*0` not allowed). They are RFC 6733 section 5 (CER/CEA,
DWR/DWA, DPR/DPA) and 8.3/8.5 (RAR/RAA, ASR/ASA, with the credit-control additions of RFC 4006 section 5.5),
RFC 4006 section 3 (CCR/CCA), and TS 32.299 section 6.4 (Service-Information in the CCR). Two additions of ours,
both allowed by the specifications: the CCR lists as `0*0` the answer-only AVPs a request must not carry (RFC 6733
section 7.1.5 DIAMETER_AVP_NOT_ALLOWED), and the CCA lists Error-Message (RFC 6733 section 7.3).
tests/erlang/gy_test.dia holds the same credit-control grammar for OTP, and tests/test_gy_grammar.py holds the two
to each other (and, where Erlang is installed, this whole table to OTP's compiled dictionaries).

The checks the CCR decoders make (required, at most once, not allowed) derive from `MESSAGES["CCR"]`; command
codes are defined here once; the M bit of every AVP we encode comes from `FLAG_RULES`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from gy.dictionary import AvpDef, avp

APP_BASE = 0
APP_CREDIT_CONTROL = 4
APP_RELAY = 0xFFFFFFFF

_BASE_MESSAGES = """
CER ::= < Diameter Header: 257, REQ >
        { Origin-Host }
        { Origin-Realm }
     1* { Host-IP-Address }
        { Vendor-Id }
        { Product-Name }
        [ Origin-State-Id ]
      * [ Supported-Vendor-Id ]
      * [ Auth-Application-Id ]
      * [ Inband-Security-Id ]
      * [ Acct-Application-Id ]
      * [ Vendor-Specific-Application-Id ]
        [ Firmware-Revision ]
      * [ AVP ]

CEA ::= < Diameter Header: 257 >
        { Result-Code }
        { Origin-Host }
        { Origin-Realm }
     1* { Host-IP-Address }
        { Vendor-Id }
        { Product-Name }
        [ Origin-State-Id ]
        [ Error-Message ]
        [ Failed-AVP ]
      * [ Supported-Vendor-Id ]
      * [ Auth-Application-Id ]
      * [ Inband-Security-Id ]
      * [ Acct-Application-Id ]
      * [ Vendor-Specific-Application-Id ]
        [ Firmware-Revision ]
      * [ AVP ]

DWR ::= < Diameter Header: 280, REQ >
        { Origin-Host }
        { Origin-Realm }
        [ Origin-State-Id ]
      * [ AVP ]

DWA ::= < Diameter Header: 280 >
        { Result-Code }
        { Origin-Host }
        { Origin-Realm }
        [ Error-Message ]
        [ Failed-AVP ]
        [ Origin-State-Id ]
      * [ AVP ]

DPR ::= < Diameter Header: 282, REQ >
        { Origin-Host }
        { Origin-Realm }
        { Disconnect-Cause }
      * [ AVP ]

DPA ::= < Diameter Header: 282 >
        { Result-Code }
        { Origin-Host }
        { Origin-Realm }
        [ Error-Message ]
        [ Failed-AVP ]
      * [ AVP ]
"""

_CREDIT_CONTROL_MESSAGES = """
CCR ::= < Diameter Header: 272, REQ, PXY >
        < Session-Id >
        { Origin-Host }
        { Origin-Realm }
        { Destination-Realm }
        { Auth-Application-Id }
        { Service-Context-Id }
        { CC-Request-Type }
        { CC-Request-Number }
        [ Destination-Host ]
        [ User-Name ]
        [ CC-Sub-Session-Id ]
        [ Acct-Multi-Session-Id ]
        [ Origin-State-Id ]
        [ Event-Timestamp ]
      * [ Subscription-Id ]
        [ Service-Identifier ]
        [ Termination-Cause ]
        [ Requested-Service-Unit ]
        [ Requested-Action ]
      * [ Used-Service-Unit ]
        [ Multiple-Services-Indicator ]
      * [ Multiple-Services-Credit-Control ]
      * [ Service-Parameter-Info ]
        [ CC-Correlation-Id ]
        [ User-Equipment-Info ]
      * [ Proxy-Info ]
      * [ Route-Record ]
        [ Service-Information ]
    0*0 [ Result-Code ]
    0*0 [ Experimental-Result ]
    0*0 [ Error-Reporting-Host ]
    0*0 [ Granted-Service-Unit ]
    0*0 [ Final-Unit-Indication ]
    0*0 [ Cost-Information ]
    0*0 [ Check-Balance-Result ]
    0*0 [ Validity-Time ]
      * [ AVP ]

CCA ::= < Diameter Header: 272, PXY >
        < Session-Id >
        { Result-Code }
        { Origin-Host }
        { Origin-Realm }
        { Auth-Application-Id }
        { CC-Request-Type }
        { CC-Request-Number }
        [ User-Name ]
        [ CC-Session-Failover ]
        [ CC-Sub-Session-Id ]
        [ Acct-Multi-Session-Id ]
        [ Origin-State-Id ]
        [ Event-Timestamp ]
        [ Granted-Service-Unit ]
      * [ Multiple-Services-Credit-Control ]
        [ Cost-Information ]
        [ Final-Unit-Indication ]
        [ Check-Balance-Result ]
        [ Credit-Control-Failure-Handling ]
        [ Direct-Debiting-Failure-Handling ]
        [ Validity-Time ]
      * [ Redirect-Host ]
        [ Redirect-Host-Usage ]
        [ Redirect-Max-Cache-Time ]
      * [ Proxy-Info ]
      * [ Route-Record ]
        [ Error-Message ]
      * [ Failed-AVP ]
      * [ AVP ]

RAR ::= < Diameter Header: 258, REQ, PXY >
        < Session-Id >
        { Origin-Host }
        { Origin-Realm }
        { Destination-Realm }
        { Destination-Host }
        { Auth-Application-Id }
        { Re-Auth-Request-Type }
        [ User-Name ]
        [ Origin-State-Id ]
      * [ Proxy-Info ]
      * [ Route-Record ]
        [ CC-Sub-Session-Id ]
        [ G-S-U-Pool-Identifier ]
        [ Service-Identifier ]
        [ Rating-Group ]
      * [ AVP ]

RAA ::= < Diameter Header: 258, PXY >
        < Session-Id >
        { Result-Code }
        { Origin-Host }
        { Origin-Realm }
        [ User-Name ]
        [ Origin-State-Id ]
        [ Error-Message ]
        [ Error-Reporting-Host ]
        [ Failed-AVP ]
      * [ Redirect-Host ]
        [ Redirect-Host-Usage ]
        [ Redirect-Max-Cache-Time ]
      * [ Proxy-Info ]
      * [ AVP ]

ASR ::= < Diameter Header: 274, REQ, PXY >
        < Session-Id >
        { Origin-Host }
        { Origin-Realm }
        { Destination-Realm }
        { Destination-Host }
        { Auth-Application-Id }
        [ User-Name ]
        [ Origin-State-Id ]
      * [ Proxy-Info ]
      * [ Route-Record ]
      * [ AVP ]

ASA ::= < Diameter Header: 274, PXY >
        < Session-Id >
        { Result-Code }
        { Origin-Host }
        { Origin-Realm }
        [ User-Name ]
        [ Origin-State-Id ]
        [ Error-Message ]
        [ Error-Reporting-Host ]
        [ Failed-AVP ]
      * [ Redirect-Host ]
        [ Redirect-Host-Usage ]
        [ Redirect-Max-Cache-Time ]
      * [ Proxy-Info ]
      * [ AVP ]
"""

# RFC 6733 section 7.2: the format of every answer with the E bit (3xxx protocol errors), whatever its command.
_ERROR_ANSWER = """
answer-message ::= < Diameter Header: code, ERR, PXY >
    0*1 < Session-Id >
        { Origin-Host }
        { Origin-Realm }
        { Result-Code }
        [ Origin-State-Id ]
        [ Error-Message ]
        [ Error-Reporting-Host ]
        [ Failed-AVP ]
        [ Experimental-Result ]
      * [ Proxy-Info ]
      * [ AVP ]
"""

ANY = "AVP"  # the `* [ AVP ]` of a grammar: any other AVP may follow
ANY_COMMAND = -1  # the code of the answer-message format: the command of the request it answers
MANY = -1  # the max of a rule without an upper bound


@dataclass(frozen=True, slots=True)
class Rule:
    """One AVP of a message format: how often it may occur (`max` is MANY without bound, 0 when not allowed)."""

    name: str
    min: int
    max: int
    fixed: bool = False  # `< X >`: at a fixed position (Session-Id first)

    @property
    def definition(self) -> AvpDef:
        return avp(self.name)


@dataclass(frozen=True, slots=True)
class Command:
    """One message format: a request or an answer of a command."""

    name: str  # the specification's abbreviation: "CCR", "CEA", ...
    code: int
    app: int
    request: bool
    proxiable: bool
    rules: tuple[Rule, ...]

    def rule(self, name: str) -> Rule | None:
        for r in self.rules:
            if r.name == name:
                return r
        return None

    def _codes(self, keep: Callable[[Rule], bool], vendor: int) -> tuple[int, ...]:
        return tuple(
            r.definition.code for r in self.rules if r.name != ANY and r.definition.vendor == vendor and keep(r)
        )

    def required(self, vendor: int = 0) -> tuple[int, ...]:
        """The codes of the AVPs that must be present, in grammar order (which decides which one a 5005 names)."""
        return self._codes(lambda r: r.min > 0, vendor)

    def at_most_once(self, vendor: int = 0) -> frozenset[int]:
        """The codes of the AVPs that may occur once at most (5009 DIAMETER_AVP_OCCURS_TOO_MANY_TIMES beyond)."""
        return frozenset(self._codes(lambda r: r.max == 1, vendor))

    def not_allowed(self, vendor: int = 0) -> frozenset[int]:
        """The codes of the AVPs that must not be present (5008 DIAMETER_AVP_NOT_ALLOWED)."""
        return frozenset(self._codes(lambda r: r.max == 0, vendor))


_HEADER = re.compile(
    r"^(?P<name>[\w-]+)\s*::=\s*<\s*Diameter Header:\s*(?P<code>\d+|code)(?P<flags>(\s*,\s*\w+)*)\s*>$"
)
_RULE = re.compile(r"^(?P<qual>(\d*)\*(\d*))?\s*(?P<open>[<{\[])\s*(?P<name>[\w-]+)\s*[>}\]]$")


def parse_messages(text: str, app: int) -> dict[str, Command]:
    """Message formats in the notation of RFC 6733 section 3.2 (one AVP per line; `;;` comments) -> commands."""
    out: dict[str, Command] = {}
    head: re.Match[str] | None = None
    rules: list[Rule] = []
    for raw in [*text.splitlines(), ""]:
        line = raw.split(";;")[0].strip()
        match = _HEADER.match(line)
        if (match or not line) and head is not None:
            out[head["name"]] = _command(head, app, rules)
            head, rules = None, []
        if match:
            head = match
        elif line:
            if head is None:
                raise ValueError(f"AVP rule outside a message: {raw!r}")
            rules.append(_rule(line))
    return out


def _command(head: re.Match[str], app: int, rules: list[Rule]) -> Command:
    flags = {f.strip() for f in head["flags"].split(",") if f.strip()}
    code = ANY_COMMAND if head["code"] == "code" else int(head["code"])
    return Command(head["name"], code, app, "REQ" in flags, "PXY" in flags, tuple(rules))


def _rule(line: str) -> Rule:
    match = _RULE.match(line)
    if match is None:
        raise ValueError(f"not an AVP rule: {line!r}")
    kind = match["open"]
    low, high = (1, 1) if kind in "<{" else (0, 1)
    if match["qual"]:
        low = int(match[2]) if match[2] else (1 if kind == "{" else 0)
        high = int(match[3]) if match[3] else MANY
    return Rule(match["name"], low, high, fixed=kind == "<")


MESSAGES: dict[str, Command] = {
    **parse_messages(_BASE_MESSAGES, APP_BASE),
    **parse_messages(_CREDIT_CONTROL_MESSAGES, APP_CREDIT_CONTROL),
}

ERROR_ANSWER = parse_messages(_ERROR_ANSWER, APP_BASE)["answer-message"]

# Command codes, each defined once (by the message formats above).
CMD_CE = MESSAGES["CER"].code  # Capabilities-Exchange
CMD_DW = MESSAGES["DWR"].code  # Device-Watchdog
CMD_DP = MESSAGES["DPR"].code  # Disconnect-Peer
CMD_CC = MESSAGES["CCR"].code  # Credit-Control
CMD_RA = MESSAGES["RAR"].code  # Re-Auth
CMD_AS = MESSAGES["ASR"].code  # Abort-Session
BASE_COMMANDS = frozenset((CMD_CE, CMD_DW, CMD_DP))  # answered by the peer state machine itself


def message(code: int, *, request: bool) -> Command | None:
    """The format of a command's request or answer; None for a command we do not speak."""
    for cmd in MESSAGES.values():
        if cmd.code == code and cmd.request == request:
            return cmd
    return None


# -- AVP flag rules -------------------------------------------------------------------------------------------------
# "M": the M bit MUST be set; "-": it MUST NOT be; "m": it MAY be (we send it clear, as OTP does). The V bit is set
# exactly on vendor-specific (3GPP) AVPs; the P bit is never set. They override python-diameter's dictionary, which
# marks every AVP mandatory (Product-Name and Firmware-Revision went out with the M bit in our CEA).
M, NOT_M, MAY_M = "M", "-", "m"
FLAG_RULES: dict[str, str] = {
    # RFC 6733 section 4.5, base protocol AVPs
    "Acct-Interim-Interval": M,
    "Accounting-Realtime-Required": M,
    "Acct-Multi-Session-Id": M,
    "Accounting-Record-Number": M,
    "Accounting-Record-Type": M,
    "Acct-Session-Id": M,
    "Accounting-Sub-Session-Id": M,
    "Acct-Application-Id": M,
    "Auth-Application-Id": M,
    "Auth-Request-Type": M,
    "Authorization-Lifetime": M,
    "Auth-Grace-Period": M,
    "Auth-Session-State": M,
    "Re-Auth-Request-Type": M,
    "Class": M,
    "Destination-Host": M,
    "Destination-Realm": M,
    "Disconnect-Cause": M,
    "Error-Message": NOT_M,
    "Error-Reporting-Host": NOT_M,
    "Event-Timestamp": M,
    "Experimental-Result": M,
    "Experimental-Result-Code": M,
    "Failed-AVP": M,
    "Firmware-Revision": NOT_M,
    "Host-IP-Address": M,
    "Inband-Security-Id": M,
    "Multi-Round-Time-Out": M,
    "Origin-Host": M,
    "Origin-Realm": M,
    "Origin-State-Id": M,
    "Product-Name": NOT_M,
    "Proxy-Host": M,
    "Proxy-Info": M,
    "Proxy-State": M,
    "Redirect-Host": M,
    "Redirect-Host-Usage": M,
    "Redirect-Max-Cache-Time": M,
    "Result-Code": M,
    "Route-Record": M,
    "Session-Id": M,
    "Session-Timeout": M,
    "Session-Binding": M,
    "Session-Server-Failover": M,
    "Supported-Vendor-Id": M,
    "Termination-Cause": M,
    "User-Name": M,
    "Vendor-Id": M,
    "Vendor-Specific-Application-Id": M,
    # RFC 4006 section 12, credit-control AVPs
    "CC-Correlation-Id": MAY_M,
    "CC-Input-Octets": M,
    "CC-Money": M,
    "CC-Output-Octets": M,
    "CC-Request-Number": M,
    "CC-Request-Type": M,
    "CC-Service-Specific-Units": M,
    "CC-Session-Failover": M,
    "CC-Sub-Session-Id": M,
    "CC-Time": M,
    "CC-Total-Octets": M,
    "CC-Unit-Type": M,
    "Check-Balance-Result": M,
    "Cost-Information": M,
    "Cost-Unit": M,
    "Credit-Control": M,
    "Credit-Control-Failure-Handling": M,
    "Currency-Code": M,
    "Direct-Debiting-Failure-Handling": M,
    "Exponent": M,
    "Final-Unit-Action": M,
    "Final-Unit-Indication": M,
    "Granted-Service-Unit": M,
    "G-S-U-Pool-Identifier": M,
    "G-S-U-Pool-Reference": M,
    "Multiple-Services-Credit-Control": M,
    "Multiple-Services-Indicator": M,
    "Rating-Group": M,
    "Redirect-Address-Type": M,
    "Redirect-Server": M,
    "Redirect-Server-Address": M,
    "Requested-Action": M,
    "Requested-Service-Unit": M,
    "Restriction-Filter-Rule": M,
    "Service-Context-Id": M,
    "Service-Identifier": M,
    "Service-Parameter-Info": MAY_M,
    "Service-Parameter-Type": MAY_M,
    "Service-Parameter-Value": MAY_M,
    "Subscription-Id": M,
    "Subscription-Id-Data": M,
    "Subscription-Id-Type": M,
    "Tariff-Change-Usage": M,
    "Tariff-Time-Change": M,
    "Unit-Value": M,
    "Used-Service-Unit": M,
    "User-Equipment-Info": MAY_M,
    "User-Equipment-Info-Type": MAY_M,
    "User-Equipment-Info-Value": MAY_M,
    "Value-Digits": M,
    "Validity-Time": M,
    # RFC 7155 (NASREQ), used by RFC 4006 (Filter-Id in Final-Unit-Indication) and TS 32.299 (in PS-Information)
    "Filter-Id": M,
    "Called-Station-Id": M,
    # TS 32.299 table 7.2.0.1 (V and M both MUST, as that table gives them for these Gy AVPs; freeDiameter's
    # dict_dcca_3gpp and Wireshark's dictionary agree) and TS 29.061 for the 3GPP-* AVPs of PS-Information
    "Time-Quota-Threshold": M,
    "Volume-Quota-Threshold": M,
    "Quota-Holding-Time": M,
    "Reporting-Reason": M,
    "Service-Information": M,
    "PS-Information": M,
    "3GPP-SGSN-MCC-MNC": M,
    "3GPP-RAT-Type": M,
}

_RULE_OF: dict[tuple[int, int], str] = {(avp(name).code, avp(name).vendor): rule for name, rule in FLAG_RULES.items()}


def m_bit(d: AvpDef) -> bool:
    """Whether we set the M bit on this AVP: by FLAG_RULES, else by python-diameter's dictionary (AVPs that only
    the test client sends)."""
    rule = _RULE_OF.get((d.code, d.vendor))
    return d.mandatory if rule is None else rule == M


def flags_ok(d: AvpDef, flags: int) -> bool:
    """Whether an AVP's flag bits (the byte after its code) are what its rule allows: V exactly on vendor AVPs, M as
    FLAG_RULES says, P and the reserved bits clear. False for an AVP without a rule."""
    rule = _RULE_OF.get((d.code, d.vendor))
    if rule is None or bool(flags & 0x80) != bool(d.vendor) or flags & 0x3F:
        return False
    return rule == MAY_M or bool(flags & 0x40) == (rule == M)
