"""Gy codec micro-benchmark: decode + map a CCR-U, encode the CCA-U, in one process (no sockets, no store).

Two CCR-Us: the load generator's (MSCC with an empty RSU and one USU) and a PGW-like one that also carries
what a real PGW sends on every update (two Subscription-Ids, User-Equipment-Info, Service-Information with a
full PS-Information). The answer grants one rating group (GSU, Validity-Time, Volume-Quota-Threshold).

Examples:
    python -m loadtest.bench_gy_codec                 # both messages, ~2 s each
    python -m loadtest.bench_gy_codec --seconds 5 --profile
Prints CPU µs per decode (header, AVP walk, CCR -> ChargingRequest), per encode (ChargingAnswer -> CCA bytes),
and the sum, as the median of --repeat runs; then the CPU µs per request of GyServer's event-loop side with the
store stubbed out (framing, decoding, submitting, resolving, encoding, metrics, writing).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import statistics
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chf.core.model import ChargingAnswer, UnitAnswer
from gy.cca import AnswerEncoder
from gy.ccr_fast import parse_ccr
from gy.client import Mscc, ccr_avps
from gy.codec import FLAG_PROXIABLE, FLAG_REQUEST, E, decode_header, encode_message
from gy.peer import LocalIdentity, PeerConnection, PeerPolicy

REPO = Path(__file__).resolve().parents[1]
SESSION = "pgw1.operator.example;1700000000;4242;ab12"


def loadtest_ccr_u() -> bytes:
    avps = ccr_avps(
        SESSION,
        2,
        7,
        origin_host="pgw1.operator.example",
        origin_realm="operator.example",
        mscc=[Mscc(10, {}, used=[{"bytes": 500_000, "reason": 3}])],
    )
    return encode_message(272, FLAG_REQUEST | FLAG_PROXIABLE, 4, 0x1234, 0x5678, avps)


def pgw_ccr_u() -> bytes:
    ps = E("PS-Information").grouped(
        [
            E("3GPP-Charging-Id").octets(b"\x12\x34\x56\x78"),
            E("3GPP-PDP-Type").octets(b"\0\0\0\0"),
            E("PDP-Address").address("10.45.0.7"),
            E("SGSN-Address").address("192.0.2.10"),
            E("GGSN-Address").address("192.0.2.20"),
            E("3GPP-IMSI-MCC-MNC").text("20899"),
            E("3GPP-GGSN-MCC-MNC").text("20899"),
            E("3GPP-NSAPI").text("5"),
            E("Called-Station-Id").text("internet"),
            E("3GPP-Selection-Mode").text("0"),
            E("3GPP-Charging-Characteristics").text("0800"),
            E("3GPP-SGSN-MCC-MNC").text("20801"),
            E("3GPP-MS-TimeZone").octets(b"\x40\x00"),
            E("3GPP-User-Location-Info").octets(bytes(13)),
            E("3GPP-RAT-Type").octets(b"\x06"),
        ]
    )
    extra = [
        E("Origin-State-Id").u32(1700000000),
        E("Event-Timestamp").u32(3900000000),
        E("Multiple-Services-Indicator").i32(1),
        E("User-Equipment-Info").grouped(
            [E("User-Equipment-Info-Type").i32(0), E("User-Equipment-Info-Value").octets(b"3534560123456789")]
        ),
        E("Service-Information").grouped([ps]),
    ]
    avps = ccr_avps(
        SESSION,
        2,
        7,
        origin_host="pgw1.operator.example",
        origin_realm="operator.example",
        msisdn="33612345678",
        imsi="208990000000001",
        mscc=[Mscc(10, {}, used=[{"bytes": 500_000, "bytes_in": 100_000, "bytes_out": 400_000, "reason": 3}])],
        extra=extra,
    )
    return encode_message(272, FLAG_REQUEST | FLAG_PROXIABLE, 4, 0x1234, 0x5678, avps)


def answer_for(number: int) -> ChargingAnswer:
    unit = UnitAnswer(10, unit="bytes", granted=1_000_000, validity_time=600, volume_threshold=200_000)
    return ChargingAnswer("success", "gy:" + SESSION, number, [unit], currency="EUR")


def make_encoder() -> tuple[Callable[..., bytes], PeerConnection]:
    peer = PeerConnection(LocalIdentity(), PeerPolicy(allow_unknown=True), 0.0)
    return AnswerEncoder(peer.identity_avps, 2, 0).encode_cca, peer


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    """CPU µs per call (process time, not wall clock: the machine is shared and wall time counts the neighbours)."""
    n = 0
    batch = 1000
    started = time.process_time()
    deadline = started + seconds
    while True:
        for _ in range(batch):
            fn()
        n += batch
        now = time.process_time()
        if now >= deadline:
            return (now - started) / n * 1e6


def bench(raw: bytes, seconds: float, repeat: int) -> dict[str, float]:
    encode_cca, _peer = make_encoder()
    msg = decode_header(raw)
    ccr = parse_ccr(msg)
    answer = answer_for(ccr.request.number)
    cca = encode_cca(msg, ccr, answer)
    result_code = decode_header(cca).find(268)
    assert result_code is not None and result_code.u32() == 2001

    def decode() -> object:
        return parse_ccr(decode_header(raw))

    def encode() -> object:
        return encode_cca(msg, ccr, answer)

    dec = statistics.median(per_call_us(decode, seconds / repeat) for _ in range(repeat))
    enc = statistics.median(per_call_us(encode, seconds / repeat) for _ in range(repeat))
    return {
        "ccr_bytes": len(raw),
        "cca_bytes": len(cca),
        "decode_us": round(dec, 2),
        "encode_us": round(enc, 2),
        "total_us": round(dec + enc, 2),
        "messages_per_s": round(1e6 / (dec + enc)),
    }


class StubStore:
    """Stands in for the LMDB store: keeps the callbacks `submit_then` receives, answered by the benchmark
    (here and in bench_nchf_cpu)."""

    store_id = "bench"

    def __init__(self) -> None:
        self.pending: list[Callable[[Any], None]] = []

    def submit_then(self, fn: Callable[..., Any], done: Callable[[Any], None], *, nested: bool = True) -> None:
        """The store's signature (chf/runtime/service.py's `charge_then` passes `nested=False`)."""
        self.pending.append(done)


class _Transport:
    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


async def _pipeline(raw: bytes, requests: int, batch: int) -> float:
    """CPU µs per request of the event-loop side of `GyServer` (framing, peer state machine, decoding, the
    duplicate cache, submitting to the store, resolving, encoding, metrics, one write per loop iteration), with
    the store and engine stubbed out: what the event-loop thread spends beyond the engine."""
    from chf.core.catalogue_loader import load_catalogue
    from chf.runtime.service import ChargingService
    from gy.grammar import CMD_CE
    from gy.server import GyConfig, GyProtocol, GyServer

    store = StubStore()
    service = ChargingService(store, load_catalogue(str(REPO / "conf" / "catalogue.toml")))  # type: ignore[arg-type]
    server = GyServer(GyConfig(allow_unknown_peers=True), service)
    protocol = GyProtocol(server)
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    cer = [
        E("Origin-Host").octets(b"pgw.bench"),
        E("Origin-Realm").octets(b"bench"),
        E("Host-IP-Address").address("127.0.0.1"),
        E("Vendor-Id").u32(0),
        E("Product-Name").text("bench"),
        E("Auth-Application-Id").u32(4),
    ]
    protocol.data_received(encode_message(CMD_CE, FLAG_REQUEST, 0, 1, 1, cer))
    answer = answer_for(7)
    set_ids = struct.Struct("!II").pack_into
    chunk = bytearray(raw * batch)
    e2e = 0
    spent = 0.0
    for _ in range(requests // batch):
        for i in range(batch):  # fresh End-to-End ids: no duplicate-cache hits
            e2e += 1
            set_ids(chunk, i * len(raw) + 12, e2e, e2e)
        data = bytes(chunk)
        started = time.process_time()
        protocol.data_received(data)
        while server.inflight:  # resolve what reached the store
            pending, store.pending = store.pending, []
            for done in pending:
                done(answer)
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # the flush
        spent += time.process_time() - started
    assert transport.writes >= requests // batch and not server.inflight
    return spent / requests * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="loadtest.bench_gy_codec", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=2.0, help="time per message and direction")
    p.add_argument("--repeat", type=int, default=5, help="runs per measurement; the median is reported")
    p.add_argument("--profile", action="store_true", help="cProfile the PGW-like decode + encode instead")
    p.add_argument("--profile-loop", action="store_true", help="cProfile the event-loop side (loadtest CCR-U) instead")
    p.add_argument("--no-pipeline", action="store_true", help="skip the event-loop side of GyServer")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.profile:
        raw = pgw_ccr_u()
        encode_cca, _ = make_encoder()
        msg = decode_header(raw)
        ccr = parse_ccr(msg)
        answer = answer_for(ccr.request.number)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(100_000):
            encode_cca(msg, parse_ccr(decode_header(raw)), answer)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
        return 0
    if args.profile_loop:
        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(_pipeline(loadtest_ccr_u(), 50_000, 100))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(40)
        return 0
    results = {
        name: bench(make(), args.seconds, args.repeat)
        for name, make in (("loadtest_ccr_u", loadtest_ccr_u), ("pgw_ccr_u", pgw_ccr_u))
    }
    if not args.no_pipeline:
        for name, make in (("loadtest_ccr_u", loadtest_ccr_u), ("pgw_ccr_u", pgw_ccr_u)):
            runs = [asyncio.run(_pipeline(make(), 20_000, 100)) for _ in range(args.repeat)]
            results[name]["event_loop_us_per_request"] = round(statistics.median(runs), 2)
    if args.json:
        print(json.dumps(results))
    else:
        for name, r in results.items():
            print(f"{name:>16}: " + "  ".join(f"{k}={v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
