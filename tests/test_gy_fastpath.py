"""The fast CCR decoder and CCA encoder against their reference implementations.

`parse_ccr` takes a fast path that must either give up (the reference then decides, errors included) or return
exactly what `parse_ccr_reference` returns. `AnswerEncoder.encode_cca` must give the bytes of `encode_message`
over `AnswerEncoder.cca`. Valid CCRs of many shapes are checked as they are and after thousands of seeded random
mutations (bit flips in flags, lengths and values; AVPs repeated, dropped or truncated).
"""

from __future__ import annotations

import random
import struct

import pytest

from chf.core.model import (
    CREDIT_LIMIT_REACHED,
    FUA_REDIRECT,
    FUA_RESTRICT,
    NO_RATING_GROUP,
    ChargingAnswer,
    FinalUnit,
    UnitAnswer,
)
from gy.cca import AnswerEncoder
from gy.ccr_fast import _Fallback, _parse_ccr_fast, parse_ccr
from gy.ccr_reference import parse_ccr_reference
from gy.client import Mscc, ccr_avps
from gy.codec import FLAG_PROXIABLE, FLAG_REQUEST, DecodeError, E, decode_header, encode_message
from gy.peer import LocalIdentity, PeerConnection, PeerPolicy


def _ps_information(mcc_mnc: str = "20801", *, rat: bytes = b"\x06", apn: str = "internet") -> bytes:
    return E("Service-Information").grouped(
        [
            E("PS-Information").grouped(
                [
                    E("3GPP-Charging-Id").octets(b"\x12\x34\x56\x78"),
                    E("PDP-Address").address("10.45.0.7"),
                    E("3GPP-SGSN-MCC-MNC").text(mcc_mnc),
                    E("Called-Station-Id").text(apn),
                    E("3GPP-RAT-Type").octets(rat),
                ]
            )
        ]
    )


def _message(avps: list[bytes]) -> bytes:
    return encode_message(272, FLAG_REQUEST | FLAG_PROXIABLE, 4, 7, 9, avps)


def _valid_ccrs() -> list[bytes]:
    host = {"origin_host": "pgw.example", "origin_realm": "example"}
    used = [{"bytes": 5000, "reason": 3}, {"bytes_in": 10, "bytes_out": 20, "tariff_change": 1}]
    return [
        _message(ccr_avps("s;1", 1, 0, imsi="208990000000001", mscc=[Mscc(10, {})], **host)),
        _message(ccr_avps("s;1", 2, 1, mscc=[Mscc(10, {}, used=used, reason=4)], **host)),
        _message(
            ccr_avps("s;1", 3, 2, mscc=[Mscc(10, used=[{"seconds": 30}]), Mscc(20, used=[{"events": 2}])], **host)
        ),
        _message(
            ccr_avps(
                "s;2",
                1,
                0,
                msisdn="+33612345678",
                imsi="208990000000002",
                mscc=[Mscc(service_id=7, requested={"seconds": 60})],
                mcc_mnc="20801",
                **host,
            )
        ),
        _message(ccr_avps("s;3", 2, 4, mscc=[Mscc(1, {"money": 1_500_000}, used=[{"money": 250}])], **host)),
        _message(
            ccr_avps("s;4", 4, 0, imsi="208990000000003", requested_action=2, mscc=[Mscc(30, {"events": 1})], **host)
        ),
        _message(
            ccr_avps("s;4", 4, 0, imsi="208990000000003", requested_action=3, mscc=[Mscc(30, {"events": 1})], **host)
        ),
        _message(ccr_avps("s;5", 4, 0, imsi="208990000000003", mscc=[Mscc(30, {"events": 1})], **host)),
        _message(
            ccr_avps(
                "s;6",
                2,
                3,
                extra=[
                    E("Requested-Service-Unit").grouped([E("CC-Time").u32(60)]),
                    E("Used-Service-Unit").grouped([E("CC-Time").u32(55)]),
                    E("Service-Identifier").u32(3),
                ],
                **host,
            )
        ),
        _message(
            ccr_avps(
                "s;7",
                2,
                5,
                imsi="208990000000004",
                mscc=[Mscc(10, {}, used=used)],
                extra=[
                    _ps_information(),
                    E("User-Name").text("user@example"),
                    E("Event-Timestamp").u32(3900000000),
                    E("User-Equipment-Info").grouped(
                        [E("User-Equipment-Info-Type").i32(0), E("User-Equipment-Info-Value").octets(b"35")]
                    ),
                ],
                **host,
            )
        ),
        _message(ccr_avps("s;8", 2, 6, mscc=[Mscc(10, {})], extra=[_ps_information("208015", rat=b"")], **host)),
        _message(
            ccr_avps(
                "s;9",
                2,
                6,
                mscc=[Mscc(10, {})],
                context="other@example.org",
                extra=[_ps_information(), _ps_information()],
                **host,
            )
        ),
    ]


def _outcome(fn, raw: bytes) -> object:  # type: ignore[no-untyped-def]
    try:
        return fn(decode_header(raw))
    except DecodeError as exc:
        return ("error", exc.result_code, exc.failed_avp, str(exc))


def _avp_offsets(raw: bytes) -> list[tuple[int, int]]:
    """(offset, padded length) of every AVP, nested ones included, found by walking as far as framing allows."""
    out: list[tuple[int, int]] = []

    def walk(pos: int, end: int, depth: int) -> None:
        while pos + 8 <= end:
            flags_len = struct.unpack_from("!I", raw, pos + 4)[0]
            length = flags_len & 0xFFFFFF
            header = 12 if flags_len >> 31 else 8
            if length < header or pos + length > end:
                return
            out.append((pos, (length + 3) & ~3))
            if depth < 4 and length - header >= 8:
                walk(pos + header, pos + length, depth + 1)
            pos += (length + 3) & ~3

    walk(20, len(raw), 0)
    return out


def _mutate(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    offsets = _avp_offsets(raw)
    if not offsets:  # an earlier mutation broke the first AVP: flip a bit anywhere
        if len(data) > 20:
            data[rng.randrange(20, len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    pos, size = rng.choice(offsets)
    kind = rng.randrange(7)
    if kind == 0:  # a flag bit of one AVP (reserved, mandatory, vendor)
        data[pos + 4] ^= 1 << rng.randrange(8)
    elif kind == 1:  # its length, a little
        length = int.from_bytes(data[pos + 5 : pos + 8], "big") + rng.choice((-8, -4, -1, 1, 4, 8))
        data[pos + 5 : pos + 8] = max(0, length).to_bytes(3, "big")
    elif kind == 2:  # a byte of its data
        if size > 8:
            data[pos + rng.randrange(8, size)] ^= 1 << rng.randrange(8)
    elif kind == 3:  # its code
        data[pos + 3] ^= 1 << rng.randrange(8)
    elif kind in (4, 5):  # repeated in place (a top-level repeat keeps the framing; a nested one does not)
        data[pos:pos] = raw[pos : pos + size]
        if kind == 5:
            return bytes(data)
    else:  # dropped
        del data[pos : pos + size]
    return bytes(data)


def test_fast_path_takes_the_valid_ccrs_and_agrees() -> None:
    fast = 0
    for raw in _valid_ccrs():
        reference = parse_ccr_reference(decode_header(raw))
        assert parse_ccr(decode_header(raw)) == reference
        try:
            assert _parse_ccr_fast(raw) == reference
            fast += 1
        except _Fallback:
            pass
    assert fast == len(_valid_ccrs()) - 1  # all but the money CCR


@pytest.mark.parametrize("seed", range(4))
def test_fast_path_agrees_with_the_reference_on_mutants(seed: int) -> None:
    rng = random.Random(seed)
    bases = _valid_ccrs()
    taken = refused = 0
    for _ in range(2500):
        raw = rng.choice(bases)
        for _ in range(rng.choice((1, 1, 2, 3))):
            raw = _mutate(raw, rng)
        reference = _outcome(parse_ccr_reference, raw)
        assert _outcome(parse_ccr, raw) == reference, raw.hex()
        try:
            fast = _parse_ccr_fast(raw)
        except (_Fallback, UnicodeDecodeError):
            refused += 1
            continue
        taken += 1
        assert fast == reference, raw.hex()
    assert taken > 100 and refused > 100  # both sides of the fast path were exercised


def test_cached_layouts_check_values_like_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CCR whose AVP headers are those of one walked before takes the cached layout without a walk; its values
    (Session-Id, CC-Request-Type, Subscription-Id-Type, Tariff-Change-Usage, UTF-8, ...) are still checked like
    the reference checks them. Mutants here change data bytes only, never a header."""
    import gy.ccr_fast as ccr_fast

    bases = []
    for raw in _valid_ccrs():
        try:
            _parse_ccr_fast(raw)
        except _Fallback:
            continue  # the money CCR: never cached
        bases.append(raw)
    assert all(any(layout.check(raw) == layout.headers for layout in ccr_fast._LAYOUTS[len(raw)]) for raw in bases)

    def no_walk(buf: bytes) -> None:
        raise AssertionError("walked a CCR whose headers were cached")

    monkeypatch.setattr(ccr_fast, "_walk", no_walk)
    rng = random.Random(7)
    taken = refused = 0
    for _ in range(3000):
        raw = rng.choice(bases)
        headers = set()
        for pos, _size in _avp_offsets(raw):
            header = 12 if raw[pos + 4] & 0x80 else 8
            headers.update(range(pos, pos + header))
        data = [i for i in range(20, len(raw)) if i not in headers]
        mutant = bytearray(raw)
        for _ in range(rng.choice((1, 2, 3))):
            mutant[rng.choice(data)] ^= 1 << rng.randrange(8)
        mutant_bytes = bytes(mutant)
        reference = _outcome(parse_ccr_reference, mutant_bytes)
        assert _outcome(parse_ccr, mutant_bytes) == reference, mutant_bytes.hex()
        try:
            fast = _parse_ccr_fast(mutant_bytes)
        except (_Fallback, UnicodeDecodeError):
            refused += 1
            continue
        taken += 1
        assert fast == reference, mutant_bytes.hex()
    assert taken > 100 and refused > 100


def _answers() -> list[ChargingAnswer]:
    return [
        ChargingAnswer(
            "success",
            "gy:s",
            1,
            [UnitAnswer(10, unit="bytes", granted=1_000_000, validity_time=600, volume_threshold=200_000)],
            currency="EUR",
        ),
        ChargingAnswer(
            "success",
            "gy:s",
            1,
            [UnitAnswer(20, unit="seconds", granted=600, time_threshold=120, quota_holding_time=30, service_id=4)],
        ),
        ChargingAnswer(
            "success",
            "gy:s",
            1,
            [UnitAnswer(NO_RATING_GROUP, unit="events", granted=1), UnitAnswer(5, unit="money", granted=2_000_000)],
            currency="EUR",
        ),
        ChargingAnswer(
            "success",
            "gy:s",
            1,
            [
                UnitAnswer(
                    10,
                    CREDIT_LIMIT_REACHED,
                    unit="bytes",
                    granted=500,
                    validity_time=60,
                    final=FinalUnit(FUA_REDIRECT, "http://top.up"),
                )
            ],
        ),
        ChargingAnswer(
            "success",
            "gy:s",
            1,
            [
                UnitAnswer(
                    10,
                    unit="bytes",
                    granted=5,
                    final=FinalUnit(FUA_RESTRICT, filter_id="walled", restriction_rules=["permit out ip"]),
                )
            ],
        ),
        ChargingAnswer("credit_limit_reached", "gy:s", 1, [UnitAnswer(10, "credit_limit_reached", validity_time=9)]),
        ChargingAnswer("user_unknown", "gy:s", 1, []),
        ChargingAnswer("something_new", "gy:s", 1, [UnitAnswer(10, "something_new")]),
        ChargingAnswer("success", "gy:s", 1, [], enough_credit=True, cost=1_230_000, currency="EUR"),
        ChargingAnswer("success", "gy:s", 1, [], enough_credit=False, cost=1_230_000, currency="USD"),
    ]


@pytest.mark.parametrize("ccfh, failover", [(2, 0), (None, None)])
def test_encode_cca_gives_the_reference_bytes(ccfh: int | None, failover: int | None) -> None:
    peer = PeerConnection(LocalIdentity(), PeerPolicy(allow_unknown=True), 0.0)
    encoder = AnswerEncoder(peer.identity_avps, ccfh, failover)
    checked = 0
    for raw in _valid_ccrs():
        for flags in (FLAG_REQUEST | FLAG_PROXIABLE, FLAG_REQUEST):
            msg = decode_header(raw[:4] + bytes([flags]) + raw[5:])
            ccr = parse_ccr(msg)
            for answer in _answers():
                assert encoder.encode_cca(msg, ccr, answer) == peer.answer(msg, encoder.cca(ccr, answer))
                checked += 1
    assert checked == len(_valid_ccrs()) * 2 * len(_answers())


def test_encoded_msccs_are_reused_only_for_the_same_grant() -> None:
    """MSCCs are encoded once per distinct grant: answers that differ in any one field still get their own bytes."""
    peer = PeerConnection(LocalIdentity(), PeerPolicy(allow_unknown=True), 0.0)
    encoder = AnswerEncoder(peer.identity_avps, 2, 0)
    msg = decode_header(_valid_ccrs()[1])
    ccr = parse_ccr(msg)
    base = {"unit": "bytes", "granted": 1000, "validity_time": 600, "volume_threshold": 100}
    variants = [
        {},
        {"granted": 1001},
        {"unit": "seconds"},
        {"unit": "events"},
        {"unit": "money"},
        {"validity_time": 601},
        {"volume_threshold": 101},
        {"time_threshold": 5},
        {"quota_holding_time": 7},
        {"service_id": 3},
        {"final": FinalUnit(FUA_RESTRICT, filter_id="f")},
        {"final": FinalUnit(FUA_RESTRICT, filter_id="g")},
    ]
    seen = set()
    for _round in range(2):
        for rating_group in (10, 11):
            for result in ("success", CREDIT_LIMIT_REACHED):
                for currency in ("EUR", "USD"):
                    for variant in variants:
                        unit = UnitAnswer(rating_group, result, **{**base, **variant})  # type: ignore[arg-type]
                        answer = ChargingAnswer("success", "gy:s", 1, [unit], currency=currency)
                        data = encoder.encode_cca(msg, ccr, answer)
                        assert data == peer.answer(msg, encoder.cca(ccr, answer))
                        seen.add(data)
    assert len(seen) == 2 * 2 * (len(variants) + 1)  # money answers differ by currency too


def test_peer_frames_messages_split_anywhere() -> None:
    """The receive path cuts messages by offset and keeps the remainder: any split of the stream gives the same
    requests, in order, with the same bytes."""
    cer = encode_message(
        257,
        FLAG_REQUEST,
        0,
        1,
        1,
        [
            E("Origin-Host").octets(b"pgw.example"),
            E("Origin-Realm").octets(b"example"),
            E("Auth-Application-Id").u32(4),
        ],
    )
    ccrs = _valid_ccrs()
    stream = cer + b"".join(ccrs)
    rng = random.Random(7)
    for _ in range(50):
        peer = PeerConnection(LocalIdentity(), PeerPolicy(allow_unknown=True), 0.0)
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randrange(1, 40)))
        received: list[bytes] = []
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            for event in peer.receive(stream[start:end], 1.0):
                message = getattr(event, "message", None)
                if message is not None:
                    received.append(message.buf)
        assert received == ccrs
        assert peer.state == "open" and not peer._buf
