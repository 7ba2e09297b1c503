"""Gy frame mutation over a real TCP connection, before and after the capabilities exchange.

Seeds are well-formed messages: CER, DWR, the CCRs the tests send (Initial, Update, Terminate, Event, with
Multiple-Services-Credit-Control, Subscription-Id, Service-Information) and answers the server does not expect.
Each fuzzed frame is one of the seeds after a few mutations: structure-aware (AVPs dropped, repeated, reordered,
their data replaced, flags flipped, unknown mandatory AVPs, grouped AVPs nested hundreds deep, integers at their
extremes), of the header (version, flags, command code, application), raw bytes flipped with the framing kept,
or the framing itself broken (a length shorter or longer than the frame, under 20 bytes, the frame truncated).

After each frame a DWR (the probe) follows on the same connection. What the suite calls a crash:
- a traceback in the server's log, or a server that died;
- a non-answer where an answer is due: a request whose framing is intact must get an answer carrying its
  Hop-by-Hop id (or a close), and the probe behind it too. A frame whose length lies (longer than what follows)
  legitimately leaves the server waiting for the rest: the connection is dropped and a new one opened.
It also checks RFC 6733 section 7.5: an answer with a Result-Code that names an AVP at fault (5001, 5004, 5005,
5008, 5009, 5014) carries Failed-AVP.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gy.client import Mscc, ccr_avps
from gy.codec import E, encode_message

CMD_CE, CMD_DW, CMD_DP, CMD_CC, CMD_RA, CMD_AS = 257, 280, 282, 272, 258, 274
FLAG_R, FLAG_P, FLAG_E = 0x80, 0x40, 0x20
PROBE_HBH = 0x7FFF0000
# Result-Codes after which RFC 6733 section 7.5 requires Failed-AVP.
NEEDS_FAILED_AVP = {5001, 5004, 5005, 5008, 5009, 5014}
_U32 = struct.Struct("!I")


def host_avps(host: str, realm: str) -> list[bytes]:
    return [E("Origin-Host").octets(host.encode()), E("Origin-Realm").octets(realm.encode())]


def cer(host: str, realm: str, hbh: int = 1) -> bytes:
    avps = [
        *host_avps(host, realm),
        E("Host-IP-Address").address("127.0.0.1"),
        E("Vendor-Id").u32(10415),
        E("Product-Name").text("chf-chaos"),
        E("Auth-Application-Id").u32(4),
    ]
    return encode_message(CMD_CE, FLAG_R, 0, hbh, hbh, avps)


def dwr(host: str, realm: str, hbh: int) -> bytes:
    return encode_message(CMD_DW, FLAG_R, 0, hbh, hbh, host_avps(host, realm))


def seeds(host: str, realm: str, imsi: str) -> list[bytes]:
    """The well-formed messages mutations start from."""
    data = Mscc(10, {"bytes": 1_000_000}, used=[{"bytes": 5000, "bytes_in": 2000, "bytes_out": 3000, "reason": 2}])
    money = Mscc(40, {"money": 500_000}, used=[{"events": 1, "seconds": 30}])
    kw: dict[str, Any] = {"origin_host": host, "origin_realm": realm}
    ccrs = [
        ccr_avps("s;1", 1, 0, imsi=imsi, msisdn="33600000001", mscc=[Mscc(10, {})], mcc_mnc="20801", **kw),
        ccr_avps("s;1", 2, 1, mscc=[data, money, Mscc(11, {"seconds": 60})], **kw),
        ccr_avps("s;1", 3, 2, mscc=[Mscc(10, used=[{"bytes": 100, "reason": 2}])], **kw),
        ccr_avps("s;2", 4, 0, imsi=imsi, requested_action=0, mscc=[Mscc(40, {"events": 1})], **kw),
        ccr_avps("s;3", 4, 0, imsi=imsi, requested_action=1, mscc=[Mscc(40, {"events": 1})], **kw),
        ccr_avps("s;4", 4, 0, imsi=imsi, requested_action=2, mscc=[Mscc(40, {"events": 1})], **kw),
    ]
    out = [cer(host, realm), dwr(host, realm, 2)]
    out += [encode_message(CMD_CC, FLAG_R | FLAG_P, 4, 10 + i, 10 + i, avps) for i, avps in enumerate(ccrs)]
    out.append(encode_message(CMD_DP, FLAG_R, 0, 30, 30, [*host_avps(host, realm), E("Disconnect-Cause").i32(0)]))
    answer = [E("Session-Id").text("s;1"), E("Result-Code").u32(2001), *host_avps(host, realm)]
    out.append(encode_message(CMD_RA, FLAG_P, 4, 31, 31, answer))
    out.append(encode_message(CMD_AS, FLAG_P, 4, 32, 32, answer))
    return out


# -- AVP-level view of a message -------------------------------------------------------------------------------------
@dataclass
class Avp:
    code: int
    flags: int
    vendor: int | None
    data: bytes

    def encode(self, length_delta: int = 0) -> bytes:
        head = 12 if self.vendor is not None else 8
        length = head + len(self.data) + length_delta
        out = _U32.pack(self.code) + bytes([self.flags]) + (max(0, length) & 0xFFFFFF).to_bytes(3, "big")
        if self.vendor is not None:
            out += _U32.pack(self.vendor)
        return out + self.data + b"\0" * (-len(self.data) % 4)


def parse(buf: bytes, pos: int = 0, end: int | None = None) -> list[Avp] | None:
    """The AVPs of buf[pos:end], or None when they do not frame (a mutated grouped AVP, say)."""
    end = len(buf) if end is None else end
    out = []
    while pos < end:
        if end - pos < 8:
            return None
        code, flags_len = struct.unpack_from("!II", buf, pos)
        flags, length = flags_len >> 24, flags_len & 0xFFFFFF
        head = 12 if flags & 0x80 else 8
        if length < head or pos + length > end:
            return None
        vendor = _U32.unpack_from(buf, pos + 8)[0] if flags & 0x80 else None
        out.append(Avp(code, flags, vendor, buf[pos + head : pos + length]))
        pos += (length + 3) & ~3
    return out


def message(header: bytes, avps: list[bytes]) -> bytes:
    body = b"".join(avps)
    length = 20 + len(body)
    return header[:1] + length.to_bytes(3, "big") + header[4:20] + body


GROUPED = {443, 456, 437, 446, 413, 445, 873, 874, 260, 279, 284, 297, 430, 440, 458, 20, 1264}
EXTREMES = [
    b"",
    b"\0",
    b"\0\0\0\0",
    b"\xff\xff\xff\xff",
    b"\x80\0\0\0",
    b"\x7f\xff\xff\xff",
    b"\xff" * 8,
    b"\x7f" + b"\xff" * 7,
    b"\x80" + b"\0" * 7,
    b"\0" * 8,
    b"\xff" * 3,
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"%s%n" * 4,
    b"\0" * 300,
    b"A" * 5000,
]


class Mutator:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def random_avp(self) -> Avp:
        rng = self.rng
        code = rng.choice([rng.randrange(1 << 32), rng.randrange(2000), 263, 264, 268, 415, 416, 456, 443, 873])
        flags = rng.choice([0x40, 0x00, 0xC0, 0x80, 0x20, 0x1F, 0xFF])
        vendor = rng.choice([None, 10415, rng.randrange(1 << 32)]) if flags & 0x80 else None
        return Avp(
            code, flags, vendor, rng.choice(EXTREMES) if rng.random() < 0.5 else rng.randbytes(rng.randrange(16))
        )

    def nested(self, depth: int) -> Avp:
        inner = Avp(443, 0x40, None, Avp(450, 0x40, None, b"\0\0\0\1").encode())
        for _ in range(depth):
            inner = Avp(
                self.rng.choice([456, 443, 873, 874]),
                0xC0 if self.rng.random() < 0.3 else 0x40,
                10415 if self.rng.random() < 0.3 else None,
                inner.encode(),
            )
        return inner

    def mutate_avps(self, avps: list[Avp]) -> list[bytes]:
        """One to three structure-aware changes; lengths stay consistent unless the change is to a length."""
        rng = self.rng
        avps = list(avps)
        length_delta: dict[int, int] = {}
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(11)
            i = rng.randrange(len(avps)) if avps else 0
            if not avps or op == 0:
                avps.insert(i, self.random_avp())
            elif op == 1:
                del avps[i]
            elif op == 2:
                avps.insert(i, avps[i])
            elif op == 3:
                rng.shuffle(avps)
            elif op == 4:
                avps[i] = Avp(avps[i].code, avps[i].flags, avps[i].vendor, rng.choice(EXTREMES))
            elif op == 5:
                avps[i] = Avp(avps[i].code, avps[i].flags ^ (1 << rng.randrange(8)), avps[i].vendor, avps[i].data)
            elif op == 6:
                avps.insert(i, self.nested(rng.choice([2, 20, 100, 400])))
            elif op == 7 and avps[i].code in GROUPED:
                children = parse(avps[i].data)
                if children:
                    data = b"".join(self.mutate_avps(children))
                    avps[i] = Avp(avps[i].code, avps[i].flags, avps[i].vendor, data)
            elif op == 8:
                length_delta[i] = rng.choice([-8, -4, -1, 1, 3, 4, 1 << 20])
            elif op == 9:
                changed = bytearray(avps[i].data or b"\0")
                changed[rng.randrange(len(changed))] = rng.randrange(256)
                avps[i] = Avp(avps[i].code, avps[i].flags, avps[i].vendor, bytes(changed))
            else:
                avps[i] = Avp(
                    avps[i].code, avps[i].flags, avps[i].vendor, avps[i].data[: rng.randrange(len(avps[i].data) + 1)]
                )
        return [a.encode(length_delta.get(n, 0)) for n, a in enumerate(avps)]

    def mutate(self, seed: bytes) -> tuple[bytes, bool]:
        """A mutated frame and whether its framing is intact (its length field tells the truth)."""
        rng = self.rng
        kind = rng.random()
        header, avps = seed[:20], parse(seed, 20)
        if kind < 0.55 and avps is not None:
            return message(header, self.mutate_avps(avps)), True
        if kind < 0.7:
            h = bytearray(header)
            field_at = rng.choice([0, 4, 5, 6, 7, 8, 9, 10, 11, 12, 16])  # version, flags, command, app, ids
            h[field_at] = rng.randrange(256)
            return bytes(h) + seed[20:], True
        if kind < 0.9:
            buf = bytearray(seed)
            for _ in range(rng.randint(1, 8)):
                at = rng.randrange(4, len(buf))  # the length field (bytes 1-3) is kept
                buf[at] ^= 1 << rng.randrange(8)
            return bytes(buf), True
        # Framing broken: the length field lies.
        choice = rng.randrange(4)
        buf = bytearray(seed)
        if choice == 0:
            length = rng.choice([0, 1, 19, 20, len(seed) - 4])
        elif choice == 1:
            length = len(seed) + rng.choice([4, 100, 1 << 20, (1 << 24) - 1])
        elif choice == 2:
            length = len(seed)
            buf = buf[: rng.randrange(20, len(buf))]
        else:
            length = len(seed) + 3
        length = min(length, (1 << 24) - 1)
        buf[1:4] = length.to_bytes(3, "big")
        return bytes(buf), length == len(buf)


# -- the wire ------------------------------------------------------------------------------------------------------
@dataclass
class GyFuzzResult:
    frames: int = 0
    answered: int = 0
    closed: int = 0
    waiting: int = 0  # a lying length left the server waiting for the rest (legitimate)
    hangs: int = 0  # no answer where one was due
    no_failed_avp: int = 0
    examples: list[str] = field(default_factory=list)  # the first findings, for the report
    result_codes: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0

    def note(self, text: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(text[:400])


class Reader:
    """Whole Diameter messages off a stream."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buf = bytearray()

    async def next(self, timeout: float) -> bytes | None:
        """The next message, None on EOF; TimeoutError past `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 20:
                length = int.from_bytes(self.buf[1:4], "big")
                if length < 20:
                    return None
                if len(self.buf) >= length:
                    msg = bytes(self.buf[:length])
                    del self.buf[:length]
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            data = await asyncio.wait_for(self.reader.read(65536), left)
            if not data:
                return None
            self.buf += data


def result_code_and_failed(msg: bytes) -> tuple[int | None, bool]:
    avps = parse(msg, 20) or []
    code = next((_U32.unpack(a.data[:4])[0] for a in avps if a.code == 268 and len(a.data) >= 4), None)
    return code, any(a.code == 279 for a in avps)


class Connection:
    def __init__(self, port: int, host: str, realm: str, after_cer: bool) -> None:
        self.port, self.host, self.realm, self.after_cer = port, host, realm, after_cer
        self.reader: Reader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", self.port)
        self.reader, self.writer = Reader(r), w
        if self.after_cer:
            w.write(cer(self.host, self.realm, hbh=0x7FFE0000))
            answer = await self.reader.next(5)
            code = result_code_and_failed(answer)[0] if answer else None
            if code != 2001:
                raise RuntimeError(f"CER answered {code}")

    def drop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _command(frame: bytes) -> int:
    return int.from_bytes(frame[5:8], "big") if len(frame) >= 8 else -1


def _hbh(frame: bytes) -> int:
    return _U32.unpack_from(frame, 12)[0] if len(frame) >= 16 else -1


def answer_due(frame: bytes, intact: bool) -> bool:
    return intact and len(frame) >= 20 and frame[0] == 1 and bool(frame[4] & FLAG_R) and _hbh(frame) != PROBE_HBH


async def exchange(conn: Connection, frame: bytes, intact: bool, n: int, result: GyFuzzResult, timeout: float) -> None:
    """Send one fuzzed frame and the probe behind it; classify what comes back."""
    if conn.writer is None:
        await conn.open()
    assert conn.reader is not None and conn.writer is not None
    probe_hbh = PROBE_HBH + (n & 0xFFFF)
    due = answer_due(frame, intact)
    conn.writer.write(frame + dwr(conn.host, conn.realm, probe_hbh))
    want = {probe_hbh} | ({_hbh(frame)} if due else set())
    try:
        while want:
            msg = await conn.reader.next(timeout if intact else 0.05)
            if msg is None:
                result.closed += 1
                conn.drop()
                return
            hbh = _hbh(msg)
            if msg[4] & FLAG_R:  # a request of the server's (DWR, DPR): not what we wait for
                continue
            if hbh in want:
                want.discard(hbh)
                code, failed = result_code_and_failed(msg)
                if hbh != probe_hbh and code is not None:
                    result.result_codes[code] += 1
                    if code in NEEDS_FAILED_AVP and not failed:
                        result.no_failed_avp += 1
                        result.note(f"no Failed-AVP: command {_command(frame)} answered {code}: {frame.hex()}")
        result.answered += 1
    except (TimeoutError, ConnectionError):
        if intact:
            result.hangs += 1
            result.note(f"no answer to command {_command(frame)} (due: {due}): {frame.hex()}")
        else:
            result.waiting += 1
        conn.drop()


async def fuzz(port: int, frames: int, *, seed: int, after_cer: bool, timeout: float = 3.0) -> GyFuzzResult:
    """Send `frames` fuzzed frames to the Gy server on `port` (after CER or without one)."""
    rng = random.Random(seed)
    host = f"fuzz{seed}.chaos"
    pool = seeds(host, "chaos", "208990000000001")
    mutator = Mutator(rng)
    conn = Connection(port, host, "chaos", after_cer)
    result = GyFuzzResult()
    started = time.monotonic()
    for n in range(frames):
        frame, intact = mutator.mutate(rng.choice(pool))
        result.frames += 1
        try:
            await exchange(conn, frame, intact, n, result, timeout)
        except (ConnectionError, RuntimeError, TimeoutError):
            result.closed += 1
            conn.drop()
            await asyncio.sleep(0)
    conn.drop()
    with contextlib.suppress(Exception):
        await asyncio.sleep(0)
    result.seconds = time.monotonic() - started
    return result
