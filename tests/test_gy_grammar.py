"""The Gy grammar table (gy/grammar.py): the same as tests/erlang/gy_test.dia (OTP's copy), the source of the CCR
checks, and obeyed by everything we send: every AVP of every message the front-end emits (CEA, DWA, DPA, DWR, DPR,
the CCA of each request type with each result and each refusal, RAR, ASR, protocol errors) carries the flags its
rule gives it, and every message has the format its command's grammar gives it. No sockets: the peer state machine
and the Gy application are driven as GyProtocol drives them (tests/gy_sansio.py).

tests/test_gy_erlang.py also holds the table to OTP's compiled dictionaries (RFC 6733 base, rfc4006_cc).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chf.core.model import (
    CREDIT_CONTROL_NOT_APPLICABLE,
    CREDIT_LIMIT_REACHED,
    END_USER_SERVICE_DENIED,
    FUA_REDIRECT,
    FUA_RESTRICT,
    NO_RATING_GROUP,
    RATING_FAILED,
    SESSION_UNKNOWN,
    USER_UNKNOWN,
    ChargingAnswer,
    ChargingRequest,
    FinalUnit,
    RequestError,
    Signal,
    UnitAnswer,
)
from gy import grammar
from gy.ccr import AT_MOST_ONCE, NOT_ALLOWED_IN_CCR, REQUIRED
from gy.client import Mscc
from gy.codec import AVP_VENDOR, FLAG_ERROR, FLAG_REQUEST, Avp, E, Message, encode_raw, find
from gy.dictionary import lookup
from gy.grammar import ERROR_ANSWER, FLAG_RULES, MESSAGES, Command, flags_ok, parse_messages
from gy.peer import PeerPolicy
from store.lmdbstore import StoreBusy
from tests.gy_sansio import HOST, REALM, Pipe, StubCore, ccr, ccr_bytes, make_app

DIA = Path(__file__).parent / "erlang" / "gy_test.dia"


def _names(codes: object) -> list[str]:
    return [lookup(code).name for code in codes]  # type: ignore[attr-defined, union-attr]


def _rules(cmd: Command) -> dict[str, tuple[int, int, bool]]:
    return {r.name: (r.min, r.max, r.fixed) for r in cmd.rules}


def test_the_table_is_otp_s_gy_dictionary() -> None:
    """gy_test.dia (what the Erlang/OTP peer compiles) and the table say the same of every credit-control message;
    the table adds only the 3GPP AVPs (OTP ships no 3GPP dictionary)."""
    text = DIA.read_text()
    app = int(text.split("@id", 1)[1].split()[0])
    theirs = parse_messages(text.split("@messages", 1)[1], app)
    ours = {name: cmd for name, cmd in MESSAGES.items() if cmd.app == grammar.APP_CREDIT_CONTROL}
    assert theirs.keys() == ours.keys() == {"CCR", "CCA", "RAR", "RAA", "ASR", "ASA"}
    for name, cmd in ours.items():
        other = theirs[name]
        assert (other.code, other.app, other.request, other.proxiable) == (
            cmd.code,
            cmd.app,
            cmd.request,
            cmd.proxiable,
        )
        ietf = {k: v for k, v in _rules(cmd).items() if k == grammar.ANY or not cmd.rule(k).definition.vendor}  # type: ignore[union-attr]
        assert _rules(other) == ietf, name
    assert [r.name for r in MESSAGES["CCR"].rules if r.name != grammar.ANY and r.definition.vendor] == [
        "Service-Information"
    ]


def test_the_ccr_checks_derive_from_the_grammar() -> None:
    assert _names(REQUIRED) == [
        "Session-Id",
        "Origin-Host",
        "Origin-Realm",
        "Destination-Realm",
        "Auth-Application-Id",
        "Service-Context-Id",
        "CC-Request-Type",
        "CC-Request-Number",
    ]
    assert set(_names(NOT_ALLOWED_IN_CCR)) == {
        "Result-Code",
        "Experimental-Result",
        "Error-Reporting-Host",
        "Granted-Service-Unit",
        "Final-Unit-Indication",
        "Cost-Information",
        "Check-Balance-Result",
        "Validity-Time",
    }
    assert set(_names(AT_MOST_ONCE)) == set(_names(REQUIRED)) | {
        "Destination-Host",
        "User-Name",
        "CC-Sub-Session-Id",
        "Accounting-Multi-Session-Id",
        "Origin-State-Id",
        "Event-Timestamp",
        "Service-Identifier",
        "Termination-Cause",
        "Requested-Service-Unit",
        "Requested-Action",
        "Multiple-Services-Indicator",
        "CC-Correlation-Id",
        "User-Equipment-Info",
    }
    assert (grammar.CMD_CE, grammar.CMD_DW, grammar.CMD_DP) == (257, 280, 282)
    assert (grammar.CMD_CC, grammar.CMD_RA, grammar.CMD_AS) == (272, 258, 274)


def test_the_flag_rules_of_rfc_6733_section_4_5() -> None:
    """python-diameter marks these mandatory; RFC 6733 4.5 says the M bit MUST NOT be set."""
    for name in ("Product-Name", "Firmware-Revision", "Error-Message", "Error-Reporting-Host"):
        assert FLAG_RULES[name] == grammar.NOT_M and lookup(*_key(name)).mandatory  # type: ignore[union-attr]
        assert not E(name).flags & 0x40, name
    assert E("Volume-Quota-Threshold").flags == AVP_VENDOR | 0x40  # TS 32.299 table 7.2.0.1: V and M
    assert E("Origin-Host").flags == 0x40


def _key(name: str) -> tuple[int, int]:
    d = grammar.avp(name)
    return d.code, d.vendor


# -- everything we send ---------------------------------------------------------------------------------------------
def _walk_flags(avps: list[Avp], where: str) -> list[str]:
    """Every AVP whose flags are not what its rule says (Failed-AVP's content is the peer's, not ours)."""
    bad = []
    for a in avps:
        d = lookup(a.code, a.vendor)
        if d is None or not flags_ok(d, a.flags):
            bad.append(f"{where}/{d.name if d else a.code}: flags {a.flags:#04x}")
            continue
        if d.type == "grouped" and d.name != "Failed-AVP":
            bad += _walk_flags(a.children, f"{where}/{d.name}")
    return bad


# Answers to a refused CCR echo what the request had; when the request lacked it (or had it malformed), they cannot.
_ECHOED = {"Session-Id", "CC-Request-Type", "CC-Request-Number"}


def _format_errors(msg: Message, *, lenient: bool, cmd: Command | None = None) -> list[str]:
    if cmd is None:
        cmd = ERROR_ANSWER if msg.flags & FLAG_ERROR else grammar.message(msg.code, request=msg.is_request)
    assert cmd is not None, msg
    counts: dict[str, int] = {}
    for a in msg.avps:
        d = lookup(a.code, a.vendor)
        assert d is not None
        counts[d.name] = counts.get(d.name, 0) + 1
    errors = []
    for rule in cmd.rules:
        if rule.name == grammar.ANY:
            continue
        n = counts.get(rule.definition.name, 0)
        if n < rule.min and not (lenient and rule.name in _ECHOED):
            errors.append(f"{cmd.name}: {rule.name} missing")
        if rule.max != grammar.MANY and n > rule.max:
            errors.append(f"{cmd.name}: {rule.name} {n} times")
        if rule.fixed and n and msg.avps[0].code != rule.definition.code:
            errors.append(f"{cmd.name}: {rule.name} not first")
    return errors


def _check(messages: list[Message], label: str, *, lenient: bool = False, cmd: Command | None = None) -> int:
    assert messages, label
    for msg in messages:
        assert _walk_flags(msg.avps, f"{label} {msg!r}") == []
        assert _format_errors(msg, lenient=lenient, cmd=cmd) == [], f"{label} {msg!r}"
    return len(messages)


def _answers(request: ChargingRequest) -> list[ChargingAnswer]:
    s, n = request.session, request.number
    fui_redirect = FinalUnit(FUA_REDIRECT, "https://top.up/")
    fui_restrict = FinalUnit(FUA_RESTRICT, filter_id="walled", restriction_rules=["permit out ip from any to any"])
    units = [
        UnitAnswer(10, unit="bytes", granted=1_000_000, validity_time=600, volume_threshold=200_000),
        UnitAnswer(20, unit="seconds", granted=600, time_threshold=120, quota_holding_time=30, service_id=4),
        UnitAnswer(NO_RATING_GROUP, unit="events", granted=1),
        UnitAnswer(5, unit="money", granted=2_000_000),
        UnitAnswer(11, CREDIT_LIMIT_REACHED, unit="bytes", granted=500, validity_time=60, final=fui_redirect),
        UnitAnswer(12, unit="bytes", granted=5, final=fui_restrict),
        UnitAnswer(13, RATING_FAILED),
    ]
    out = [ChargingAnswer("success", s, n, units, currency="EUR")]
    for result in (
        END_USER_SERVICE_DENIED,
        CREDIT_CONTROL_NOT_APPLICABLE,
        CREDIT_LIMIT_REACHED,
        SESSION_UNKNOWN,
        USER_UNKNOWN,
        RATING_FAILED,
        "something_new",
    ):
        out.append(ChargingAnswer(result, s, n, [UnitAnswer(10, result, validity_time=30)]))
    out.append(ChargingAnswer("success", s, n, [], enough_credit=True, cost=1_230_000, currency="EUR"))
    out.append(ChargingAnswer("success", s, n, [], enough_credit=False, cost=5, currency="USD"))
    return out


def test_every_cca_we_send_has_the_flags_and_format_of_its_rules() -> None:
    core = StubCore()
    app = make_app(core)
    pipe = Pipe(app)
    checked = _check([pipe.open()], "CEA")
    requests: list[dict[str, Any]] = [
        dict(rtype=1, imsi="208010000000001", mscc=[Mscc(10, {}), Mscc(20, {})]),
        dict(rtype=2, number=1, mscc=[Mscc(10, {}, used=[{"bytes": 10, "reason": 3}])]),
        dict(rtype=3, number=2, mscc=[Mscc(10, used=[{"bytes": 10}])]),
        dict(rtype=4, imsi="208010000000001", requested_action=2, mscc=[Mscc(40, {"events": 1})]),
        dict(rtype=4, imsi="208010000000001", requested_action=3, mscc=[Mscc(40, {"events": 1})]),
        dict(rtype=2, number=3, mscc=[], extra=[E("Requested-Service-Unit").grouped([E("CC-Time").u32(60)])]),
    ]
    for i, kw in enumerate(requests):
        for j in range(len(_answers(ChargingRequest("initial", "x", 0, [])))):
            pipe.receive(ccr_bytes(pipe, f"s;{i};{j}", **kw))
            core.answer_all(lambda request, j=j: _answers(request)[j])  # type: ignore[misc]
            checked += _check(pipe.messages(), f"CCA {kw} answer {j}")
    # the core refuses: busy (3004, E bit), a request error and a failure (5012)
    for k, refused in enumerate((StoreBusy("full"), RequestError("units", "bad"), RuntimeError("boom"))):
        pipe.receive(ccr_bytes(pipe, f"r;{k}"))
        core.answer_all(lambda request, refused=refused: refused)  # type: ignore[misc]
        checked += _check(pipe.messages(), f"refused by the core: {refused!r}")
    assert checked == 1 + len(requests) * 10 + 3


PROTOCOL_ERRORS = {
    "3001": (271, 4, 0xC0, ccr("x;3001")),
    "3007": (272, 16777238, 0xC0, ccr("x;3007")),
    "3008": (272, 4, 0xE0, ccr("x;3008")),
    "3009": (272, 4, 0xC0, [*ccr("x;3009"), encode_raw(55, 0x41, 0, b"\0\0\0\0")]),
    "5001": (272, 4, 0xC0, [*ccr("x;5001"), encode_raw(65000, 0x40, 0, b"abcd")]),
    "5004": (
        272,
        4,
        0xC0,
        [a for a in ccr("x;5004") if a[:4] != E("CC-Request-Type").octets(b"")[:4]] + [E("CC-Request-Type").i32(9)],
    ),
    "5005": (272, 4, 0xC0, [a for a in ccr("x;5005") if a[:4] != E("CC-Request-Number").octets(b"")[:4]]),
    "5005 no Session-Id": (272, 4, 0xC0, ccr("x;5005b")[1:]),
    "5008": (272, 4, 0xC0, [*ccr("x;5008"), E("Result-Code").u32(2001)]),
    "5009": (272, 4, 0xC0, [*ccr("x;5009"), E("CC-Request-Type").i32(1)]),
    "5014": (
        272,
        4,
        0xC0,
        [a for a in ccr("x;5014") if a[:4] != E("CC-Request-Number").octets(b"")[:4]]
        + [encode_raw(415, 0x40, 0, b"\0\0\0\0\1")],
    ),
}


@pytest.mark.parametrize("case", list(PROTOCOL_ERRORS))
def test_every_refusal_we_send_has_the_flags_and_format_of_its_rules(case: str) -> None:
    code, app_id, flags, avps = PROTOCOL_ERRORS[case]
    pipe = Pipe(make_app())
    pipe.open()
    pipe.receive(pipe.request(code, app_id, avps, flags=flags))
    (answer,) = pipe.messages()
    assert find(answer.avps, 268).u32() == int(case[:4])  # type: ignore[union-attr]
    assert bool(answer.flags & FLAG_ERROR) == case.startswith("3")
    _check([answer], case, lenient=True)


def test_too_busy_has_the_flags_and_format_of_its_rules() -> None:
    pipe = Pipe(make_app(max_inflight_per_peer=0))
    pipe.open()
    pipe.receive(ccr_bytes(pipe, "busy;1"))
    (answer,) = pipe.messages()
    assert find(answer.avps, 268).u32() == 3004 and answer.flags & FLAG_ERROR  # type: ignore[union-attr]
    _check([answer], "3004")


def test_every_base_message_we_send_has_the_flags_and_format_of_its_rules() -> None:
    def host(h: str = HOST) -> list[bytes]:
        return [E("Origin-Host").octets(h.encode()), E("Origin-Realm").octets(REALM.encode())]

    cer = [
        *host(),
        E("Host-IP-Address").address("127.0.0.1"),
        E("Vendor-Id").u32(0),
        E("Product-Name").text("t"),
        E("Auth-Application-Id").u32(4),
    ]
    refusals = {
        "3010 unknown peer": [*host("evil.test"), *cer[2:]],
        "5010 no common application": [*host(), *cer[2:5], E("Auth-Application-Id").u32(16777238)],
        "5005 no Origin-Host": cer[1:],
        "5014 malformed": [*cer, encode_raw(258, 0x40, 0, b"\0\0\0\0\0")],
    }
    for label, avps in refusals.items():
        pipe = Pipe(make_app())
        pipe.receive(pipe.request(257, 0, avps, flags=FLAG_REQUEST))
        (cea,) = pipe.messages()
        assert find(cea.avps, 268).u32() == int(label[:4]), label  # type: ignore[union-attr]
        assert bool(cea.flags & FLAG_ERROR) == label.startswith("3"), label
        _check([cea], label)
    pipe = Pipe(make_app())
    _check([pipe.open()], "CEA")
    pipe.receive(pipe.request(280, 0, host(), flags=FLAG_REQUEST))
    _check(pipe.messages(), "DWA")
    pipe.receive(pipe.request(257, 0, cer, flags=FLAG_REQUEST))  # a CER on an open connection
    _check(pipe.messages(), "CEA 3010 (election lost)")
    pipe.receive(pipe.request(272, 4, ccr("e;1"), flags=0xE0))  # the E bit in a request
    _check(pipe.messages(), "3008")
    version_2 = bytearray(pipe.request(272, 4, ccr("v;2")))
    version_2[0] = 2
    pipe.receive(bytes(version_2))
    # a message of another version cannot be read: its answer has the base AVPs of every answer, no more
    _check(pipe.messages(), "5011", cmd=ERROR_ANSWER)
    pipe.peer.on_timer(100.0)  # idle for longer than Tw: DWR
    pipe.flush()
    _check(pipe.messages(), "DWR")
    pipe.peer.disconnect(101.0)
    pipe.flush()
    _check(pipe.messages(), "DPR")
    pipe = Pipe(make_app())
    pipe.open()
    pipe.receive(pipe.request(282, 0, [*host(), E("Disconnect-Cause").i32(0)], flags=FLAG_REQUEST))
    _check(pipe.messages(), "DPA")


def test_every_rar_and_asr_we_send_has_the_flags_and_format_of_its_rules() -> None:
    app = make_app()
    pipe = Pipe(app, policy=PeerPolicy(allow_unknown=True))
    pipe.open()
    for sig in (
        Signal("reauth", "gy:s;1", "gy", [HOST, REALM], (10,)),
        Signal("reauth", "gy:s;2", "gy", [HOST, REALM], (10, 20)),
        Signal("abort", "gy:s;3", "gy", [HOST, REALM], ()),
    ):
        app.signal(sig)
        (request,) = pipe.messages()
        assert request.is_request and request.code == (258 if sig.kind == "reauth" else 274)
        _check([request], sig.kind)


def test_the_grammar_rejects_what_it_does_not_read() -> None:
    with pytest.raises(ValueError, match="not an AVP rule"):
        parse_messages("X ::= < Diameter Header: 1, REQ >\n  ( Session-Id )", 0)
    with pytest.raises(ValueError, match="outside a message"):
        parse_messages("{ Session-Id }", 0)
