"""Overload at a multiple of the server's capacity, the server and the generator pinned apart.

1. Capacity: a closed loop (each session one request in flight) measures the successful answers per second of the
   pinned server.
2. Overload: an open loop offers `factor` x that rate (arrivals on a 1 ms clock, whatever the answers): Gy
   sessions (CCR-I, CCR-U..., CCR-T) over several connections, or Nchf creates / updates / releases over HTTP/2.
   The generator's own maximum may be below the target: the rate it offered is reported.
3. Figures: goodput (successful answers per second) as a share of the capacity, refusal latency (3004 / 503)
   p50/p99, the latency of accepted requests, the server's RSS, and recovery: the time from the end of the load
   until a new peer's CER and first request are answered normally (2001 within a second; Nchf: 201).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import resource
import struct
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import h2.exceptions

from gy.client import DiameterClient, Mscc, ccr_avps
from gy.codec import encode_message
from loadtest.chaos import gyfuzz, nchffuzz
from loadtest.chaos.server import IMSI_BASE, RssSampler, Server, cpu_seconds
from nchf.client import ClientError, H2Client

CMD_CC = 272
_IDS = struct.Struct("!II")
_U32 = struct.Struct("!I")
MAX_OUTSTANDING = 200_000
_CREATES = itertools.count()
# End-to-End ids unique per Origin-Host across every run of the process (RFC 6733 3: the server's duplicate
# detection keys on them); Hop-by-Hop ids per connection.
_E2E = itertools.count((int(time.time()) & 0xFFF) << 20)


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


def data_offset(raw: bytes | bytearray, code: int) -> int:
    pos = 20
    while pos + 8 <= len(raw):
        avp_code, flags_len = _IDS.unpack_from(raw, pos)
        if avp_code == code and not flags_len >> 31:
            return pos + 8
        pos += ((flags_len & 0xFFFFFF) + 3) & ~3
    return -1


@dataclass
class LoadStats:
    sent: int = 0
    ok: int = 0
    busy: int = 0
    other: int = 0
    lost: int = 0  # unanswered: the connection closed, or still waiting at the end of the run
    ok_latency: list[float] = field(default_factory=list)
    busy_latency: list[float] = field(default_factory=list)
    other_codes: collections.Counter[int] = field(default_factory=collections.Counter)


# -- Gy ------------------------------------------------------------------------------------------------------------
class GySession:
    __slots__ = ("conn", "kinds", "n", "number", "templates")

    counter = itertools.count()

    def __init__(self, conn: int, lines: int, updates: int) -> None:
        """A session of the generator's connection `conn` (whose Origin-Host is load<conn>.chaos)."""
        self.n = next(GySession.counter)
        self.conn = conn
        host = f"load{conn}.chaos"
        sid = f"{host};ovl;{self.n}"
        imsi = str(IMSI_BASE + self.n % lines)
        kw: dict[str, Any] = {"origin_host": host, "origin_realm": "chaos"}
        self.templates = {
            1: self._template(ccr_avps(sid, 1, 0, imsi=imsi, mscc=[Mscc(10, {})], **kw)),
            2: self._template(ccr_avps(sid, 2, 0, mscc=[Mscc(10, {}, used=[{"bytes": 500_000, "reason": 3}])], **kw)),
            3: self._template(ccr_avps(sid, 3, 0, mscc=[Mscc(10, used=[{"bytes": 1000, "reason": 2}])], **kw)),
        }
        self.kinds = [1] + [2] * updates + [3]
        self.number = 0

    @staticmethod
    def _template(avps: list[bytes]) -> tuple[bytearray, int]:
        raw = encode_message(CMD_CC, 0xC0, 4, 0, 0, avps)
        return bytearray(raw), data_offset(raw, 415)

    def next_request(self, hbh: int) -> bytes:
        template, at = self.templates[self.kinds[self.number]]
        _IDS.pack_into(template, 12, hbh, next(_E2E) & 0xFFFFFFFF)
        _U32.pack_into(template, at, self.number)
        return bytes(template)

    def answered(self, code: int) -> bool:
        """Advance on an answer; True when the session is over."""
        if code == 3004:
            return False  # not processed: the same request again
        self.number += 1
        return self.number >= len(self.kinds)


class GyEvent:
    """One CCR-Event DIRECT_DEBITING (an SMS, rating group 40) of its own Session-Id: a request without session state,
    so that the generator can offer a multiple of the server's capacity from one core (a template per connection,
    patched: Session-Id counter, Hop-by-Hop, End-to-End)."""

    __slots__ = ("conn", "template")

    counter = itertools.count()
    templates: ClassVar[dict[tuple[int, int], tuple[bytearray, int]]] = {}

    def __init__(self, conn: int, lines: int) -> None:
        self.conn = conn
        key = (conn, lines)
        template = GyEvent.templates.get(key)
        if template is None:
            host = f"load{conn}.chaos"
            sid = f"{host};ev;{0:010d}"
            imsi = str(IMSI_BASE + conn % lines)
            avps = ccr_avps(
                sid,
                4,
                0,
                origin_host=host,
                origin_realm="chaos",
                imsi=imsi,
                requested_action=0,
                mscc=[Mscc(40, {"events": 1})],
            )
            raw = encode_message(CMD_CC, 0xC0, 4, 0, 0, avps)
            template = GyEvent.templates[key] = (bytearray(raw), 28 + len(sid) - 10)  # where the counter's digits are
        self.template = template

    def next_request(self, hbh: int) -> bytes:
        buf, at = self.template
        _IDS.pack_into(buf, 12, hbh, next(_E2E) & 0xFFFFFFFF)
        buf[at : at + 10] = b"%010d" % (next(GyEvent.counter) % 10**10)
        return bytes(buf)

    def answered(self, code: int) -> bool:
        return True  # one request; a refused one is not sent again (an open loop: the next arrival is new)


class GyLoad(asyncio.Protocol):
    """One generator connection: requests written in one write per loop iteration, answers matched by Hop-by-Hop."""

    def __init__(self, stats: LoadStats, done: collections.deque[Any]) -> None:
        self.stats = stats
        self.idle = done
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.pending: dict[int, tuple[float, Any]] = {}
        self.hbh = itertools.count(1)
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.stats.lost += len(self.pending)
        self.pending.clear()

    def send(self, session: Any, now: float) -> None:
        hbh = next(self.hbh) & 0xFFFFFFFF
        self.pending[hbh] = (now, session)
        self.out.append(session.next_request(hbh))
        self.stats.sent += 1

    def flush(self) -> None:
        if self.out and self.transport is not None:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        now = time.perf_counter()
        pos = 0
        while len(buf) - pos >= 20:
            length = int.from_bytes(buf[pos + 1 : pos + 4], "big")
            if len(buf) - pos < length:
                break
            msg = bytes(buf[pos : pos + length])
            pos += length
            if msg[4] & 0x80:
                self._server_request(msg)
                continue
            entry = self.pending.pop(_U32.unpack_from(msg, 12)[0], None)
            if entry is None:
                continue
            at = data_offset(msg, 268)
            code = _U32.unpack_from(msg, at)[0] if at > 0 else 0
            self._count(code, now - entry[0])
            session = entry[1]
            if session.answered(code) is False:
                self.idle.append(session)
        del buf[:pos]

    def _count(self, code: int, latency: float) -> None:
        stats = self.stats
        if code == 2001:
            stats.ok += 1
            stats.ok_latency.append(latency)
        elif code == 3004:
            stats.busy += 1
            stats.busy_latency.append(latency)
        else:
            stats.other += 1
            stats.other_codes[code] += 1

    def _server_request(self, msg: bytes) -> None:
        code = int.from_bytes(msg[5:8], "big")
        if code == 280 and self.transport is not None:  # DWR: answered, or the server gives up on us
            avps = [gyfuzz.E("Result-Code").u32(2001), *gyfuzz.host_avps("load.chaos", "chaos")]
            hbh, e2e = _IDS.unpack_from(msg, 12)
            self.transport.write(encode_message(280, 0, 0, hbh, e2e, avps))


async def gy_connections(port: int, count: int, stats: LoadStats, idle: collections.deque[Any]) -> list[GyLoad]:
    loop = asyncio.get_running_loop()
    out = []
    for i in range(count):
        _, proto = await loop.create_connection(lambda: GyLoad(stats, idle), "127.0.0.1", port)
        proto.transport.write(gyfuzz.cer(f"load{i}.chaos", "chaos"))  # type: ignore[union-attr]
        out.append(proto)
    await asyncio.sleep(0.3)  # the CEAs (their Hop-by-Hop ids match nothing pending)
    return out


async def gy_run(
    port: int,
    *,
    lines: int,
    seconds: float,
    rate: float = 0,
    sessions: int = 0,
    connections: int = 8,
    updates: int = 8,
    events: bool = True,
) -> tuple[LoadStats, float]:
    """Closed loop (`sessions` concurrent) when rate is 0, else open loop at `rate` requests per second: one-shot
    debits (`events`, the default: light enough for the generator to offer 3x) or sessions (CCR-I, `updates` x
    CCR-U, CCR-T). Returns the stats and the rate actually offered."""
    stats = LoadStats()
    idle: collections.deque[Any] = collections.deque()
    conns = await gy_connections(port, connections, stats, idle)
    spread = itertools.cycle(range(len(conns)))

    def conn_of(session: Any) -> GyLoad:
        return conns[session.conn]

    def new_session() -> Any:
        return GyEvent(next(spread), lines) if events else GySession(next(spread), lines, updates)

    started = time.perf_counter()
    stop = started + seconds
    credit = 0.0
    last = started
    if not rate:
        for _ in range(sessions):
            idle.append(new_session())
    while (now := time.perf_counter()) < stop:
        if rate:
            credit += (now - last) * rate
            last = now
            arrivals = int(credit)
            credit -= arrivals
            outstanding = stats.sent - stats.ok - stats.busy - stats.other - stats.lost
            for _ in range(min(arrivals, MAX_OUTSTANDING - outstanding)):
                session = idle.popleft() if idle else new_session()
                conn_of(session).send(session, now)
        else:
            while idle:
                session = idle.popleft()
                conn_of(session).send(session, now)
        for c in conns:
            c.flush()
        await asyncio.sleep(0.001)
        # sessions that ended are replaced (closed loop: the concurrency stays)
        if not rate:
            while len(idle) < sessions - (stats.sent - stats.ok - stats.busy - stats.other - stats.lost):
                idle.append(new_session())
    offered = stats.sent / (time.perf_counter() - started)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return stats, offered


async def gy_new_peer_cer(port: int, timeout: float = 1.0) -> float | None:
    """Seconds for a new peer's CER to be answered 2001 (during overload its requests may well get 3004), or
    None."""
    started = time.perf_counter()
    try:
        client, cea = await asyncio.wait_for(DiameterClient.connect("127.0.0.1", port, "probe.chaos", "chaos"), timeout)
    except (OSError, TimeoutError):
        return None
    client.close()
    code = cea.find(268) if cea is not None else None
    return time.perf_counter() - started if code is not None and code.u32() == 2001 else None


async def gy_new_peer(port: int, timeout: float = 1.0) -> float | None:
    """Seconds for a new peer's CER and first request (an SMS debit) to be answered 2001, or None."""
    started = time.perf_counter()
    try:
        client, cea = await asyncio.wait_for(DiameterClient.connect("127.0.0.1", port, "probe.chaos", "chaos"), timeout)
    except (OSError, TimeoutError):
        return None
    try:
        code = cea.find(268) if cea is not None else None
        if code is None or code.u32() != 2001:
            return None
        sid = f"probe.chaos;{time.monotonic_ns()}"
        avps = ccr_avps(
            sid,
            4,
            0,
            origin_host="probe.chaos",
            origin_realm="chaos",
            imsi=str(IMSI_BASE),
            requested_action=0,
            mscc=[Mscc(40, {"events": 1})],
        )
        answer = await client.ccr(avps, timeout=max(1, round(timeout)))
        result = answer.find(268)
        if result is None or result.u32() != 2001:
            return None
        return time.perf_counter() - started
    except (OSError, TimeoutError, ConnectionError):
        return None
    finally:
        client.close()


# -- Nchf ----------------------------------------------------------------------------------------------------------
class NchfLoad:
    """Open or closed loop of Nchf creates (one-time IEC events: one request each) over H2Client connections."""

    def __init__(self, port: int, stats: LoadStats, connections: int) -> None:
        self.port = port
        self.stats = stats
        self.count = connections
        self.clients: list[H2Client] = []
        # HTTP/2 lets a connection carry max_concurrent_streams requests at once: the others wait here, client-side
        # (their latency counts from their arrival).
        self.slots = [asyncio.Semaphore(250) for _ in range(connections)]
        self.stamp = itertools.count()
        self.tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self.clients = [await H2Client.connect("127.0.0.1", self.port) for _ in range(self.count)]

    def body(self) -> bytes:
        n = next(self.stamp)
        stamp = f"2026-11-22T10:{n // 60 % 60:02d}:{n % 60:02d}.{n:09d}Z"
        return json.dumps(nchffuzz.one_time("IEC", str(IMSI_BASE + n % 50), stamp)).encode()

    async def one(self, n: int, sent: float) -> None:
        i = n % len(self.clients)
        stats = self.stats
        try:
            async with self.slots[i]:
                if not self.clients[i].usable:
                    self.clients[i] = await H2Client.connect("127.0.0.1", self.port)
                response = await self.clients[i].post_json(nchffuzz.API, self.body(), timeout=30)
        except (ClientError, TimeoutError, OSError, h2.exceptions.H2Error):
            stats.lost += 1
            return
        latency = time.perf_counter() - sent
        if response.status == 201:
            stats.ok += 1
            stats.ok_latency.append(latency)
        elif response.status == 503:
            stats.busy += 1
            stats.busy_latency.append(latency)
        else:
            stats.other += 1
            stats.other_codes[response.status] += 1

    def launch(self, n: int, now: float) -> None:
        self.stats.sent += 1
        task = asyncio.create_task(self.one(n, now))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for c in self.clients:
            with contextlib.suppress(Exception):
                await c.close()


def update_body() -> bytes:
    """An update of rating group 10 with usage, invocationSequenceNumber 0: a new request every time."""
    used = {"localSequenceNumber": 1, "totalVolume": 1000, "uplinkVolume": 500, "downlinkVolume": 500}
    doc = nchffuzz.body(0, "0", units=[{"ratingGroup": 10, "requestedUnit": {}, "usedUnitContainer": [used]}])
    del doc["subscriberIdentifier"]
    return json.dumps(doc).encode()


async def nchf_h2load(
    port: int,
    *,
    lines: int,
    seconds: float,
    rate: float = 0,
    clients: int = 16,
    streams: int = 128,
    sessions: int = 200,
) -> tuple[LoadStats, float]:
    """Nchf updates from h2load (nghttp2, C: the generator must not be the bottleneck): `clients` connections of
    up to `streams` requests each, cycling over `sessions` charging sessions created first; `rate` requests per
    second in all (0: as fast as the streams allow). Latency per request from h2load's --log-file (from the
    request's send: one held back by the streams limit waits uncounted)."""
    import shutil
    import tempfile
    from pathlib import Path

    h2load = shutil.which("h2load")
    if h2load is None:
        raise RuntimeError("h2load is not installed (Debian nghttp2-client)")
    client = await H2Client.connect("127.0.0.1", port)
    refs = []
    statuses: collections.Counter[int] = collections.Counter()
    for n in range(sessions):
        stamp = f"2026-11-22T12:00:00.{next(_CREATES):09d}Z"  # each run its own sessions
        doc = nchffuzz.body(0, str(IMSI_BASE + n % lines), stamp=stamp)
        created = await client.post_json(nchffuzz.API, json.dumps(doc).encode())
        if created.status == 201:
            refs.append(created.headers["location"].rsplit("/", 1)[1])
        else:
            statuses[created.status] += 1
    await client.close()
    if not refs:
        raise RuntimeError(f"no charging session could be created: {dict(statuses)}")
    with tempfile.TemporaryDirectory(prefix="chf-chaos-h2load-") as tmp:
        uris, body, log_file = Path(tmp, "uris"), Path(tmp, "body.json"), Path(tmp, "h2load.log")
        uris.write_text("".join(f"http://127.0.0.1:{port}{nchffuzz.API}/{ref}/update\n" for ref in refs))
        body.write_bytes(update_body())
        command = [
            *(h2load, "-c", str(clients), "-m", str(streams), "-t", "1", "-D", str(max(1, round(seconds)))),
            *("-i", str(uris), "-d", str(body), "-H", "content-type: application/json", "--log-file", str(log_file)),
        ]
        if rate:
            command += ["--rps", str(max(1, round(rate / clients)))]
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        if not log_file.exists():
            raise RuntimeError(f"h2load failed ({proc.returncode}): {err.decode()[-500:]} {out.decode()[-500:]}")
        stats = LoadStats()
        for line in log_file.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            status, latency = int(parts[1]), int(parts[2]) / 1e6
            stats.sent += 1
            if status == 200:
                stats.ok += 1
                stats.ok_latency.append(latency)
            elif status == 503:
                stats.busy += 1
                stats.busy_latency.append(latency)
            elif status <= 0:
                stats.lost += 1
            else:
                stats.other += 1
                stats.other_codes[status] += 1
    return stats, stats.sent / seconds


async def nchf_run(
    port: int, *, seconds: float, rate: float = 0, concurrency: int = 0, connections: int = 8
) -> tuple[LoadStats, float]:
    stats = LoadStats()
    load = NchfLoad(port, stats, connections)
    await load.open()
    started = time.perf_counter()
    stop = started + seconds
    credit = 0.0
    last = started
    n = 0
    while (now := time.perf_counter()) < stop:
        if rate:
            credit += (now - last) * rate
            last = now
            arrivals = int(credit)
            credit -= arrivals
        else:
            arrivals = concurrency - len(load.tasks)
        for _ in range(min(arrivals, MAX_OUTSTANDING - len(load.tasks))):
            load.launch(n, now)
            n += 1
        await asyncio.sleep(0.001)
    offered = stats.sent / (time.perf_counter() - started)
    await load.close()
    return stats, offered


async def nchf_new_peer(port: int, timeout: float = 1.0, *, answered: tuple[int, ...] = (201,)) -> float | None:
    """Seconds for a new client's first request to get a status of `answered` (201: served; during overload a
    503 is an answer too), or None."""
    started = time.perf_counter()
    try:
        client = await H2Client.connect("127.0.0.1", port, timeout=timeout)
        n = time.monotonic_ns() % 10**9
        stamp = f"2026-11-23T10:00:00.{n:09d}Z"
        body = json.dumps(nchffuzz.one_time("IEC", str(IMSI_BASE), stamp)).encode()
        response = await client.post_json(nchffuzz.API, body, timeout=timeout)
        await client.close()
    except (OSError, TimeoutError, ClientError):
        return None
    return time.perf_counter() - started if response.status in answered else None


# -- the scenario ----------------------------------------------------------------------------------------------------
@dataclass
class OverloadResult:
    interface: str
    capacity_per_s: float
    target_per_s: float
    offered_per_s: float
    goodput_per_s: float
    refused: int
    refusal_p50_ms: float
    refusal_p99_ms: float
    accepted_p50_ms: float
    accepted_p99_ms: float
    other_answers: dict[int, int]
    lost: int
    new_peer_during_s: float | None
    recovery_s: float | None
    rss_before_kb: int
    rss_peak_kb: int
    rss_after_kb: int
    server_cpu_percent: float
    tracebacks: int = 0
    generator_cpu_percent: float = 0.0  # near 100: the generator, not the server, set the pace (and the latencies)
    # The server's CPU while its capacity was measured: on a shared machine its core is shared too, and a capacity
    # measured with more of it than the overload then got is not the capacity the overload met.
    capacity_cpu_percent: float = 0.0

    @property
    def goodput_per_cpu_share(self) -> float:
        """Goodput per CPU second of the server as a share of the capacity's: what the overload cost the server,
        whatever share of its core the machine gave it in each phase."""
        if not (self.capacity_per_s and self.server_cpu_percent and self.capacity_cpu_percent):
            return 0.0
        per_cpu = self.goodput_per_s / self.server_cpu_percent
        return per_cpu / (self.capacity_per_s / self.capacity_cpu_percent)

    @property
    def goodput_share(self) -> float:
        return self.goodput_per_s / self.capacity_per_s if self.capacity_per_s else 0.0


async def recovery(interface: str, port: int, limit: float) -> float | None:
    """Seconds from now until a new peer is served normally, polling every 50 ms, or None past `limit`."""
    started = time.perf_counter()
    probe = gy_new_peer if interface == "gy" else nchf_new_peer
    while time.perf_counter() - started < limit:
        if await probe(port) is not None:
            return time.perf_counter() - started
        await asyncio.sleep(0.05)
    return None


async def run(
    server: Server,
    interface: str,
    *,
    lines: int,
    factor: float = 3.0,
    capacity_seconds: float = 5.0,
    seconds: float = 10.0,
    recovery_limit: float = 30.0,
    pause: float = 1.0,
) -> OverloadResult:
    port = server.ports.gy if interface == "gy" else server.ports.nchf
    tracebacks = server.tracebacks()

    async def load(seconds: float, rate: float = 0) -> tuple[LoadStats, float]:
        if interface == "gy":
            return await gy_run(port, lines=lines, seconds=seconds, rate=rate, sessions=0 if rate else 512)
        if rate:
            return await nchf_h2load(port, lines=lines, seconds=seconds, rate=rate)
        return await nchf_h2load(port, lines=lines, seconds=seconds, streams=16)

    await load(pause)  # warm up
    capacity_cpu0 = server.cpu_seconds()
    capacity_stats, _ = await load(capacity_seconds)
    capacity_cpu = (server.cpu_seconds() - capacity_cpu0) / capacity_seconds
    capacity = capacity_stats.ok / capacity_seconds
    await asyncio.sleep(pause)
    before = server.rss_kb()
    target = factor * capacity
    cpu0 = server.cpu_seconds()
    own0 = _own_cpu()
    with RssSampler(server.pid) as sampler:
        overload = asyncio.create_task(load(seconds, target))
        await asyncio.sleep(seconds / 2)
        if interface == "gy":
            during = await gy_new_peer_cer(port, 2.0)
        else:
            during = await nchf_new_peer(port, 2.0, answered=(201, 503))
        stats, offered = await overload
        cpu = (server.cpu_seconds() - cpu0) / seconds
        own = (_own_cpu() - own0) / seconds
        recovered = await recovery(interface, port, recovery_limit)
    await asyncio.sleep(2 * pause)
    return OverloadResult(
        interface,
        round(capacity),
        round(target),
        round(offered),
        round(stats.ok / seconds),
        stats.busy,
        round(pct(stats.busy_latency, 0.5), 1),
        round(pct(stats.busy_latency, 0.99), 1),
        round(pct(stats.ok_latency, 0.5), 1),
        round(pct(stats.ok_latency, 0.99), 1),
        dict(stats.other_codes),
        stats.lost,
        None if during is None else round(during, 3),
        None if recovered is None else round(recovered, 2),
        before,
        sampler.peak,
        server.rss_kb(),
        round(100 * cpu),
        server.tracebacks() - tracebacks,
        round(100 * own),
        round(100 * capacity_cpu),
    )


def _own_cpu() -> float:
    """CPU seconds of this process and of its ended children (h2load)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


__all__ = ["OverloadResult", "cpu_seconds", "run"]
