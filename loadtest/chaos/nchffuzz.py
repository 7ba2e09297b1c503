"""Nchf over the wire: JSON bodies mutated, and HTTP/2 frames mutated, against a real `chf serve`.

JSON: valid ChargingDataRequests (a data session's create, update and release, an IEC and a PEC one-time event)
are mutated as trees (keys dropped or added, values replaced by other types, integers at and beyond 64 bits,
strings long or with NUL and lone surrogates, objects nested thousands deep) and as text (bytes flipped, cut short,
invalid UTF-8), sent with the right media type or a wrong one, to create, update and release. A crash is a 5xx
other than 503, a traceback in the server's log, or a dead server.

HTTP/2: after the preface, sequences of frames h2 would never send: each a valid client's frame mutated (type,
flags, stream id, length, payload bytes) or made up (unknown types, PRIORITY on stream 0, WINDOW_UPDATE of 0,
SETTINGS with odd lengths, CONTINUATION without HEADERS, a HEADERS block of random HPACK). After each connection
a fresh one must still get an answer; a crash is a traceback in the log, a dead server, or a server that no longer
answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection

from nchf.client import ClientError, H2Client

API = "/nchf-convergedcharging/v3/chargingdata"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def body(
    number: int, imsi: str, *, units: list[dict[str, Any]] | None = None, stamp: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "nfConsumerIdentification": {"nodeFunctionality": "SMF", "nFName": "8bd2d3b4-5c7a-4a7a-9f3c-1c2d3e4f5a6b"},
        "invocationTimeStamp": stamp or "2026-11-22T10:00:00Z",
        "invocationSequenceNumber": number,
        "subscriberIdentifier": "imsi-" + imsi,
        "multipleUnitUsage": units if units is not None else [{"ratingGroup": 10, "requestedUnit": {}}],
        "pDUSessionChargingInformation": {
            "pduSessionInformation": {
                "pduSessionID": 1,
                "dnnId": "internet",
                "ratType": "NR",
                "servingCNPlmnId": {"mcc": "208", "mnc": "01"},
            }
        },
    }
    return out


def one_time(kind: str, imsi: str, stamp: str, count: int = 1) -> dict[str, Any]:
    units = (
        [{"ratingGroup": 40, "requestedUnit": {"serviceSpecificUnits": count}}]
        if kind == "IEC"
        else [{"ratingGroup": 40, "usedUnitContainer": [{"localSequenceNumber": 1, "serviceSpecificUnits": count}]}]
    )
    out = body(0, imsi, units=units, stamp=stamp)
    del out["pDUSessionChargingInformation"]
    out["nfConsumerIdentification"]["nodeFunctionality"] = "SMSF"
    out["oneTimeEvent"] = True
    out["oneTimeEventType"] = kind
    return out


def seeds(imsi: str) -> list[dict[str, Any]]:
    used = {"localSequenceNumber": 1, "totalVolume": 5000, "uplinkVolume": 2000, "downlinkVolume": 3000, "time": 30}
    return [
        body(0, imsi),
        body(1, imsi, units=[{"ratingGroup": 10, "requestedUnit": {"totalVolume": 1000}, "usedUnitContainer": [used]}]),
        body(
            2,
            imsi,
            units=[{"ratingGroup": 10, "usedUnitContainer": [{**used, "triggers": [{"triggerType": "FINAL"}]}]}],
        ),
        one_time("IEC", imsi, "2026-11-22T10:00:00Z"),
        one_time("PEC", imsi, "2026-11-22T10:00:01Z"),
    ]


ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    -1e308,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**40,
    "",
    "x" * 10_000,
    "\u0000",
    "\ud800",
    "imsi-" + "9" * 300,
    [],
    {},
    [[[]]],
    {"": {}},
    "2026-13-45T99:99:99Z",
    "NaN",
    "-0",
]


class JsonMutator:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def _path(self, doc: Any) -> tuple[Any, ...]:
        """A random path to a node below the root: a walk down that stops at random (never enumerates a tree a
        mutation made wide)."""
        path: tuple[Any, ...] = ()
        node = doc
        while True:
            keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
            if not keys or (path and self.rng.random() < 0.35):
                return path
            key = self.rng.choice(list(keys)[:50])
            path, node = (*path, key), node[key]

    def _nested(self) -> Any:
        depth = self.rng.choice([50, 500, 5000, 50_000])
        opener, closer = ("[", "]") if self.rng.random() < 0.5 else ('{"a":', "}")
        return json.loads("[]") if depth > 900 else json.loads(opener * depth + "1" + closer * depth)

    def tree(self, doc: dict[str, Any]) -> Any:
        rng = self.rng
        doc = copy.deepcopy(doc)
        for _ in range(rng.randint(1, 4)):
            path = self._path(doc)
            if not path:
                continue
            parent = doc
            for key in path[:-1]:
                parent = parent[key]
            key = path[-1]
            op = rng.randrange(6)
            if op == 0:
                parent[key] = rng.choice(ODD_VALUES)
            elif op == 1:
                del parent[key]
            elif op == 2 and isinstance(parent, dict):
                parent[
                    rng.choice(
                        [
                            "unknownKey",
                            "oneTimeEvent",
                            "oneTimeEventType",
                            "retransmissionIndicator",
                            "notifyUri",
                            "tenantIdentifier",
                        ]
                    )
                ] = rng.choice(ODD_VALUES)
            elif op == 3:
                parent[key] = [parent[key]] * rng.choice([2, 100, 3000])
            elif op == 4:
                parent[key] = {"nested": parent[key]}
            else:
                parent[key] = self._nested()
        return doc

    def text(self, raw: bytes) -> bytes:
        rng = self.rng
        buf = bytearray(raw)
        op = rng.randrange(5)
        if op == 0:
            for _ in range(rng.randint(1, 6)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 1:
            del buf[rng.randrange(len(buf)) :]
        elif op == 2:
            at = rng.randrange(len(buf))
            buf[at:at] = rng.choice([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\\ud800", b"1e99999", b"-"])
        elif op == 3:
            depth = rng.choice([1000, 100_000])
            buf = bytearray(b"[" * depth + b"]" * depth)
        else:
            buf = bytearray(b'{"a":' * 20_000 + b"1" + b"}" * 20_000)
        return bytes(buf)


@dataclass
class NchfFuzzResult:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: int = 0  # 5xx other than 503
    no_answer: int = 0  # the stream was reset or the connection lost without a response
    slow: int = 0  # answered after more than a second
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def note(self, text: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(text[:400])


CONTENT_TYPES = [
    "application/json",
    "application/json",
    "application/json",
    "application/jsonx",
    "text/plain",
    "application/problem+json",
    "application/json; charset=latin-1",
    "",
]


async def _send(client: H2Client, path: str, data: bytes, ctype: str) -> int:
    headers = [("content-type", ctype)] if ctype else []
    response = await client.request("POST", path, data, headers, timeout=10.0)
    return response.status


async def fuzz_json(port: int, requests: int, *, seed: int, imsi: str) -> NchfFuzzResult:
    rng = random.Random(seed)
    mutator = JsonMutator(rng)
    pool = seeds(imsi)
    result = NchfFuzzResult()
    started = time.monotonic()
    client = await H2Client.connect("127.0.0.1", port)
    created = await client.post_json(API, json.dumps(pool[0]).encode())
    ref = created.headers.get("location", "/none").rsplit("/", 1)[1]
    for _ in range(requests):
        if not client.usable:
            await client.close()
            client = await H2Client.connect("127.0.0.1", port)
        doc = rng.choice(pool)
        if rng.random() < 0.7:
            data = json.dumps(mutator.tree(doc), ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        else:
            data = mutator.text(json.dumps(doc).encode())
        path = rng.choice([API, f"{API}/{ref}/update", f"{API}/{ref}/release", f"{API}/{rng.randrange(10**9)}/update"])
        ctype = rng.choice(CONTENT_TYPES)
        result.requests += 1
        sent = time.monotonic()
        try:
            status = await _send(client, path, data, ctype)
            if time.monotonic() - sent > 1:
                result.slow += 1
                result.note(f"{time.monotonic() - sent:.1f} s for {status} to {path} {ctype!r}: {data[:200]!r}")
        except (ClientError, TimeoutError) as exc:
            result.no_answer += 1
            result.note(f"no answer ({exc}) to {path} {ctype!r}: {data[:200]!r}")
            continue
        result.statuses[status] += 1
        if status >= 500 and status != 503:
            result.server_errors += 1
            result.note(f"{status} to {path} {ctype!r}: {data[:300]!r}")
    await client.close()
    result.seconds = time.monotonic() - started
    return result


# -- HTTP/2 frames -------------------------------------------------------------------------------------------------
def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return (
        (size & 0xFFFFFF).to_bytes(3, "big")
        + bytes([kind & 0xFF, flags & 0xFF])
        + (stream_id & 0xFFFFFFFF).to_bytes(4, "big")
        + payload
    )


def split_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out = []
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        out.append(
            (
                data[pos + 3],
                data[pos + 4],
                int.from_bytes(data[pos + 5 : pos + 9], "big"),
                data[pos + 9 : pos + 9 + length],
            )
        )
        pos += 9 + length
    return out


def valid_client_frames(imsi: str) -> list[tuple[int, int, int, bytes]]:
    """What h2's client sends for a create and an update: the frames mutations start from."""
    return split_frames(client_bytes(imsi)[len(PREFACE) :])


def client_bytes(imsi: str) -> bytes:
    """The bytes h2's client sends for a create and an update (the preface first)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    for stream_id, doc in ((1, body(0, imsi)), (3, body(1, imsi))):
        data = json.dumps(doc).encode()
        conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "chf"),
                (":path", API),
                ("content-type", "application/json"),
                ("content-length", str(len(data))),
            ],
        )
        conn.send_data(stream_id, data, end_stream=True)
    conn.ping(b"12345678")
    return conn.data_to_send()


class FrameMutator:
    def __init__(self, rng: random.Random, imsi: str) -> None:
        self.rng = rng
        self.valid = valid_client_frames(imsi)

    def made_up(self) -> bytes:
        rng = self.rng
        kind = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0x10, 0xFF])
        stream = rng.choice([0, 1, 2, 3, 5, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(1 << 31)])
        payload = rng.choice(
            [
                b"",
                b"\0" * 4,
                b"\0\0\0\0\0\0",
                b"\xff" * 8,
                rng.randbytes(rng.randrange(64)),
                bytes([0x3F, 0xE1, 0xFF, 0xFF, 0xFF, 0x0F]),
            ]
        )
        length = None if rng.random() < 0.9 else rng.choice([0, 1, len(payload) + 1])
        return raw_frame(kind, rng.randrange(256), stream, payload, length)

    def mutated(self) -> bytes:
        rng = self.rng
        kind, flags, stream, payload = rng.choice(self.valid)
        op = rng.randrange(5)
        if op == 0:
            kind = rng.randrange(11)
        elif op == 1:
            flags ^= 1 << rng.randrange(8)
        elif op == 2:
            stream = rng.choice([0, stream + 2, stream ^ 0x80000000, 2])
        elif op == 3 and payload:
            buf = bytearray(payload)
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            payload = bytes(buf)
        else:
            payload = payload[: rng.randrange(len(payload) + 1)]
        return raw_frame(kind, flags, stream, payload)

    def connection(self) -> bytes:
        """The bytes of one fuzzed connection: the preface, the client's SETTINGS, then 1-12 frames."""
        settings = raw_frame(4, 0, 0, b"")
        frames = [self.mutated() if self.rng.random() < 0.6 else self.made_up() for _ in range(self.rng.randint(1, 12))]
        return PREFACE + settings + b"".join(frames)


@dataclass
class H2FuzzResult:
    connections: int = 0
    frames: int = 0
    closed_by_server: int = 0
    unanswered_probes: int = 0
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def _one_connection(port: int, data: bytes) -> bool:
    """Send the bytes, read for a moment; True if the server closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        deadline = time.monotonic() + 0.05
        while (left := deadline - time.monotonic()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                return False
            if not chunk:
                return True
        return False
    except ConnectionError:
        return True
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def probe(port: int, imsi: str) -> bool:
    """A fresh connection still gets an answer."""
    try:
        client = await H2Client.connect("127.0.0.1", port)
        response = await client.post_json(API, json.dumps(body(0, imsi)).encode(), timeout=5)
        await client.close()
    except (ClientError, TimeoutError, OSError):
        return False
    return response.status < 500


async def fuzz_frames(port: int, connections: int, *, seed: int, imsi: str) -> H2FuzzResult:
    rng = random.Random(seed)
    mutator = FrameMutator(rng, imsi)
    result = H2FuzzResult()
    started = time.monotonic()
    for n in range(connections):
        data = mutator.connection()
        result.connections += 1
        result.frames += len(split_frames(data[len(PREFACE) :]))
        try:
            result.closed_by_server += await _one_connection(port, data)
        except OSError as exc:
            result.examples.append(f"connect failed: {exc}")
        if n % 25 == 24 and not await probe(port, imsi):
            result.unanswered_probes += 1
            if len(result.examples) < 5:
                result.examples.append(f"no answer after connection {n}: {data.hex()[:400]}")
    if not await probe(port, imsi):
        result.unanswered_probes += 1
    result.seconds = time.monotonic() - started
    return result
