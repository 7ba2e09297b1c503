"""The wire format against independent implementations: python-diameter (round trips both ways on generated
CCR/CCA) and Wireshark's dissector (tshark on a capture of a test run: zero malformed packets, zero expert
errors)."""

from __future__ import annotations

import struct
import subprocess
import time
from pathlib import Path

from diameter.message import Message as PdMessage
from diameter.message.avp import Avp as PdAvp
from hypothesis import given, settings
from hypothesis import strategies as st

from chf.core.model import ChargingAnswer, FinalUnit, UnitAnswer
from gy.cca import AnswerEncoder
from gy.ccr_fast import parse_ccr
from gy.client import Mscc, ccr_avps
from gy.codec import E, decode_header, encode_message, find, find_all
from tests.gy_support import provision, running_server
from tests.support import require_tool

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
units = st.fixed_dictionaries(
    {},
    optional={
        "bytes": u64,
        "bytes_in": u64,
        "bytes_out": u64,
        "seconds": u32,
        "events": u64,
        "money": st.integers(0, 2**62),
    },
)
msccs = st.lists(
    st.builds(
        Mscc,
        rating_group=st.one_of(st.none(), u32),
        requested=st.one_of(st.none(), units),
        used=st.lists(units, max_size=3),
        reason=st.one_of(st.none(), st.integers(0, 9)),
        service_id=st.one_of(st.none(), u32),
    ),
    max_size=4,
)
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(session=text, rtype=st.integers(1, 4), number=u32, imsi=st.from_regex(r"\A[0-9]{15}\Z"), mscc=msccs)
def test_ours_encode_python_diameter_decodes(
    session: str, rtype: int, number: int, imsi: str, mscc: list[Mscc]
) -> None:
    avps = ccr_avps(
        session, rtype, number, origin_host="pgw.test", origin_realm="test", imsi=imsi, mscc=mscc, mcc_mnc="20801"
    )
    raw = encode_message(272, 0xC0, 4, 7, 9, avps)
    theirs = PdMessage.from_bytes(raw)
    top = theirs.avps
    assert len(top) == len(avps)  # every AVP found where our lengths and padding say it is
    assert next(a.value for a in top if a.code == 263) == session
    assert next(a.value for a in top if a.code == 415) == number
    got = [a for a in top if a.code == 456]
    assert len(got) == len(mscc)
    for ours, their in zip(mscc, got, strict=True):
        _same_mscc(ours, their)
    # and our decoder reads back what we wrote
    ccr = parse_ccr(decode_header(raw))
    assert ccr.session_id == session and ccr.request.number == number
    assert [u.rating_group for u in ccr.request.units] == [
        -1 if m.rating_group is None else m.rating_group for m in mscc
    ]
    for m, u in zip(mscc, ccr.request.units, strict=True):
        for used, report in zip(m.used, u.used, strict=True):
            for key in ("seconds", "events", "money"):
                if key in used:
                    assert report.units[key] == used[key]


def _same_mscc(ours: Mscc, their: PdAvp) -> None:
    """python-diameter's reading of one Multiple-Services-Credit-Control we encoded."""
    rg = [a.value for a in their.value if a.code == 432]
    assert rg == ([] if ours.rating_group is None else [ours.rating_group])
    usus = [a for a in their.value if a.code == 446]
    assert len(usus) == len(ours.used)
    for used, usu in zip(ours.used, usus, strict=True):
        by_code = {a.code: a.value for a in usu.value}
        if "bytes" in used:
            assert by_code[421] == used["bytes"]
        if "seconds" in used:
            assert by_code[420] == used["seconds"]


def _pd(code: int, value: object, vendor: int = 0) -> PdAvp:
    avp = PdAvp.new(code, vendor)
    avp.value = value
    return avp


@settings(max_examples=60, deadline=None)
@given(
    session=text,
    number=u32,
    rg=u32,
    total=u64,
    seconds=u32,
    reason=st.integers(0, 9),
    msisdn=st.from_regex(r"\A[0-9]{6,15}\Z"),
)
def test_python_diameter_encodes_ours_decodes(
    session: str, number: int, rg: int, total: int, seconds: int, reason: int, msisdn: str
) -> None:
    msg = PdMessage()
    msg.header.command_code = 272
    msg.header.application_id = 4
    msg.header.is_request = True
    usu = _pd(446, [_pd(421, total), _pd(420, seconds), _pd(872, reason, 10415)])
    msg.avps = [
        _pd(263, session),
        _pd(264, b"pgw.test"),
        _pd(296, b"test"),
        _pd(283, b"test"),
        _pd(258, 4),
        _pd(461, "32251@3gpp.org"),
        _pd(416, 2),
        _pd(415, number),
        _pd(443, [_pd(450, 0), _pd(444, msisdn)]),
        _pd(456, [_pd(432, rg), _pd(437, []), usu]),
    ]
    ccr = parse_ccr(decode_header(msg.as_bytes()))
    assert ccr.session_id == session and ccr.request.number == number
    assert ccr.request.identities == [("msisdn", msisdn)]
    (unit,) = ccr.request.units
    assert unit.rating_group == rg and unit.requested == {}
    (report,) = unit.used
    assert report.units == {"bytes": total, "seconds": seconds}
    from gy.ccr import REPORTING_REASONS

    assert report.reason == REPORTING_REASONS[reason]


@settings(max_examples=60, deadline=None)
@given(
    rg=u32,
    granted=st.integers(1, 2**62),
    unit=st.sampled_from(["bytes", "seconds", "events", "money"]),
    validity=st.integers(0, 2**31),
    fua=st.sampled_from([None, "terminate", "redirect", "restrict_access"]),
)
def test_cca_decodes_in_python_diameter(rg: int, granted: int, unit: str, validity: int, fua: str | None) -> None:
    if unit == "seconds":
        granted = granted % 2**32 or 1  # 2**32 would wrap to 0, which grants nothing (no GSU)
    enc = AnswerEncoder([E("Origin-Host").octets(b"chf.test"), E("Origin-Realm").octets(b"test")], 2, 0)
    raw_ccr = encode_message(
        272, 0xC0, 4, 1, 2, ccr_avps("s;1", 2, 5, origin_host="p", origin_realm="r", mscc=[Mscc(rg, {})])
    )
    ccr = parse_ccr(decode_header(raw_ccr))
    final = FinalUnit(fua, "https://x.example/", "f1", ["permit out ip from any to 192.0.2.1"]) if fua else None
    answer = ChargingAnswer(
        "success",
        "gy:s;1",
        5,
        [UnitAnswer(rg, unit=unit, granted=granted, validity_time=validity, final=final)],
        currency="EUR",
    )
    raw = encode_message(272, 0x40, 4, 1, 2, enc.cca(ccr, answer))
    theirs = PdMessage.from_bytes(raw)
    (mscc,) = [a for a in theirs.avps if a.code == 456]
    by_code = {a.code: a for a in mscc.value}
    assert by_code[432].value == rg and by_code[268].value == 2001
    gsu = {a.code: a for a in by_code[431].value}
    if unit == "bytes":
        assert gsu[421].value == granted
    elif unit == "seconds":
        assert gsu[420].value == granted
    elif unit == "events":
        assert gsu[417].value == granted
    else:
        uv = {a.code: a.value for a in {a.code: a for a in gsu[413].value}[445].value}
        assert uv[447] * 10 ** (uv[429] + 6) == granted
    if fua:
        assert {a.code: a.value for a in by_code[430].value}[449] == {
            "terminate": 0,
            "redirect": 1,
            "restrict_access": 2,
        }[fua]


def _pcap(path: Path, messages: list[tuple[bool, bytes]]) -> None:
    """A classic pcap of the exchange as IPv4/TCP on port 3868 (client 127.0.0.1:40000 -> server)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    seq = {True: 1000, False: 5000}
    for n, (from_client, data) in enumerate(messages):
        src, dst = (40000, 3868) if from_client else (3868, 40000)
        tcp = struct.pack("!HHIIBBHHH", src, dst, seq[from_client], seq[not from_client], 0x50, 0x18, 65535, 0, 0)
        ip_len = 20 + len(tcp) + len(data)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, n, 0, 64, 6, 0, bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
        seq[from_client] += len(data)
        frame = b"\0" * 12 + b"\x08\x00" + ip + tcp + data
        out.append(struct.pack("<IIII", n, 0, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


async def test_tshark_dissects_a_test_run(tmp_path: Path) -> None:
    tshark = require_tool("tshark")
    exchange: list[tuple[bool, bytes]] = []
    async with running_server(tmp_path) as srv:
        await srv.op(provision(plan="redirect", balance=0))
        client = await srv.client()
        # record what goes over the wire: every request and its answer, in order
        base = {"origin_host": "pgw.test", "origin_realm": "test"}
        script = [
            ccr_avps("t;1", 1, 0, imsi="208010000000001", mscc=[Mscc(10, {}), Mscc(11, {})], mcc_mnc="20801", **base),
            ccr_avps("t;1", 2, 1, mscc=[Mscc(10, {}, used=[{"bytes": 1_000_000, "reason": 3}])], **base),
            ccr_avps(
                "t;1", 3, 2, mscc=[Mscc(10, used=[{"bytes": 5, "reason": 2}]), Mscc(11, used=[{"bytes": 0}])], **base
            ),
            ccr_avps("t;2", 4, 0, imsi="208010000000001", requested_action=3, mscc=[Mscc(10, {"bytes": 10})], **base),
            ccr_avps("t;3", 1, 0, imsi="208010000000001", **base)[:-1],  # no Subscription-Id... and 5005 below
            [a for a in ccr_avps("t;4", 1, 0, **base) if a[:4] != E("CC-Request-Number").octets(b"")[:4]],
        ]
        for avps in script:
            hbh, data = client.request_bytes(272, 4, avps)
            fut = client.expect(hbh)
            client.send_raw(data)
            answer = await fut
            exchange += [(True, data), (False, answer.buf)]
    pcap = tmp_path / "gy.pcap"
    _pcap(pcap, exchange)
    started = time.monotonic()
    out = subprocess.run(
        [tshark, "-r", str(pcap), "-o", "tcp.analyze_sequence_numbers:FALSE", "-z", "expert,error", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "Errors" not in out.stdout, out.stdout
    detail = subprocess.run([tshark, "-r", str(pcap), "-V"], capture_output=True, text=True, timeout=120).stdout
    assert detail.count("Diameter Protocol") == len(exchange)
    assert "Malformed" not in detail and "malformed" not in detail
    assert "Final-Unit-Action: REDIRECT" in detail or "Final-Unit-Action: REDIRECT (1)" in detail
    assert time.monotonic() - started < 60
    assert find(decode_header(exchange[-1][1]).avps, 268).u32() == 5005
    assert len(find_all(decode_header(exchange[1][1]).avps, 456)) == 2
