"""Slow, no-read and idle peers on Gy and Nchf, with the server's RSS before, at its peak and after.

Each scenario opens many connections that each misbehave one way, for a while, then go away; the server's RSS is
sampled throughout (baseline: after ordinary traffic warmed it up; after: once the abusers left and the server had
a moment). During the abuse a well-behaved peer must still get its answers (`served`: answered / tried; for Nchf a
503 is an answer: requests of no-read peers can overload the server, a new client must still get through).

  gy-noread-precer   Gy peers that never read, sending version-2 frames (answered 5011) without a CER
  gy-noread-dwr      Gy peers that never read, sending DWRs after CER (each answered with a DWA)
  gy-slow-frame      Gy peers announcing a large message and sending it a few bytes at a time
  gy-idle            Gy peers that connect and say nothing
  nchf-slow-frame    HTTP/2 peers announcing a 16 MiB frame and sending it slowly
  nchf-noread        HTTP/2 peers sending requests and never reading the answers
  nchf-idle          HTTP/2 and TCP peers that connect and say nothing (up to [nchf] max_connections)
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from gy.client import DiameterClient
from loadtest.chaos import gyfuzz, nchffuzz
from loadtest.chaos.server import IMSI_BASE, RssSampler, Server, rss_kb
from nchf.client import ClientError, H2Client

MB = 1 << 20


@dataclass
class AbuseResult:
    scenario: str
    connections: int
    seconds: float
    rss_before_kb: int
    rss_peak_kb: int
    rss_after_kb: int
    served: int
    tried: int
    closed_by_server: int = 0
    alive: bool = True
    tracebacks: int = 0


async def open_raw(port: int, rcvbuf: int = 4096) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection with a small receive buffer: a peer that does not read fills it fast."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def push(writer: asyncio.StreamWriter, chunk: bytes, until: float, pause: float = 0.0) -> bool:
    """Write `chunk` over and over without reading, until `until`; False once the server closed the connection.
    A drain that does not finish means the server stopped reading: the writer waits, as a real peer would."""
    while time.monotonic() < until:
        if writer.is_closing():
            return False
        writer.write(chunk)
        try:
            await asyncio.wait_for(writer.drain(), max(0.01, until - time.monotonic()))
        except TimeoutError:
            return True
        except ConnectionError:
            return False
        if pause:
            await asyncio.sleep(pause)
    return True


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True if the server closes the connection (EOF or reset) within `seconds`; reads and drops what comes."""
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            if not await asyncio.wait_for(reader.read(65536), left):
                return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return False


# -- the misbehaving peers --------------------------------------------------------------------------------------
def version2_frames(n: int) -> bytes:
    dwr = gyfuzz.dwr("abuse.chaos", "chaos", 1)
    return b"".join(b"\x02" + dwr[1:12] + i.to_bytes(4, "big") + dwr[16:] for i in range(n))


async def gy_noread_precer(port: int, until: float) -> bool:
    _, writer = await open_raw(port)
    try:
        return await push(writer, version2_frames(64), until)
    finally:
        writer.close()


async def gy_noread_dwr(port: int, until: float, n: int) -> bool:
    reader, writer = await open_raw(port, rcvbuf=65536)
    try:
        writer.write(gyfuzz.cer(f"abuse{n}.chaos", "chaos"))
        await reader.read(4096)  # the CEA; nothing is read after it
        dwrs = b"".join(gyfuzz.dwr(f"abuse{n}.chaos", "chaos", i) for i in range(64))
        return await push(writer, dwrs, until)
    finally:
        writer.close()


async def gy_slow_frame(port: int, until: float) -> bool:
    reader, writer = await open_raw(port)
    try:
        header = b"\x01" + (MB - 4).to_bytes(3, "big") + b"\x80\x00\x01\x01" + b"\0" * 12
        writer.write(header)
        chunk = b"\0" * 4096
        while time.monotonic() < until:
            writer.write(chunk)
            if await closed_within(reader, 0.05):
                return False
        return True
    finally:
        writer.close()


async def gy_idle(port: int, until: float) -> bool:
    reader, writer = await open_raw(port)
    try:
        return not await closed_within(reader, until - time.monotonic())
    finally:
        writer.close()


async def nchf_slow_frame(port: int, until: float) -> bool:
    reader, writer = await open_raw(port)
    try:
        writer.write(nchffuzz.PREFACE + nchffuzz.raw_frame(4, 0, 0, b""))
        hdrs = nchffuzz.client_bytes("1")[len(nchffuzz.PREFACE) :]
        writer.write(hdrs[: 9 + int.from_bytes(hdrs[:3], "big")])  # the client's SETTINGS, then a 16 MiB frame
        writer.write(nchffuzz.raw_frame(0, 0, 1, b"", length=(16 * MB) - 1))
        while time.monotonic() < until:
            writer.write(b"\0" * 16384)
            if await closed_within(reader, 0.05):
                return False
        return True
    finally:
        writer.close()


async def nchf_noread(port: int, until: float, n: int, every: float = 0.01) -> bool:
    """Creates pipelined on ever new streams, 16 each `every` seconds, the answers never read."""
    _, writer = await open_raw(port)
    data = nchffuzz.client_bytes(str(IMSI_BASE + n % 50))
    frames = nchffuzz.split_frames(data[len(nchffuzz.PREFACE) :])
    # Requests on ever new streams (HEADERS + DATA of a create), never reading what comes back.
    headers = next(f for f in frames if f[0] == 1 and f[2] == 1)
    body = next(f for f in frames if f[0] == 0 and f[2] == 1)
    try:
        writer.write(nchffuzz.PREFACE + nchffuzz.raw_frame(4, 0, 0, b""))
        stream = 1
        while time.monotonic() < until:
            batch = b""
            for _ in range(16):
                batch += nchffuzz.raw_frame(1, headers[1], stream, headers[3])
                batch += nchffuzz.raw_frame(0, body[1], stream, body[3])
                stream += 2
            if not await push(writer, batch, min(until, time.monotonic() + 0.2)):
                return False
            await asyncio.sleep(every)
        return True
    finally:
        writer.close()


async def nchf_idle(port: int, until: float) -> bool:
    reader, writer = await open_raw(port)
    try:
        return not await closed_within(reader, until - time.monotonic())
    finally:
        writer.close()


# -- a well-behaved peer meanwhile --------------------------------------------------------------------------------
async def gy_citizen(port: int, until: float) -> tuple[int, int]:
    served = tried = 0
    while time.monotonic() < until:
        tried += 1
        try:
            client, cea = await asyncio.wait_for(DiameterClient.connect("127.0.0.1", port, "citizen.chaos", "chaos"), 2)
            answer = await client.request(280, 0, gyfuzz.host_avps("citizen.chaos", "chaos"), timeout=2)
            served += answer is not None and cea is not None
            client.close()
        except (OSError, TimeoutError, ConnectionError):
            pass
        await asyncio.sleep(0.25)
    return served, tried


async def nchf_citizen(port: int, until: float) -> tuple[int, int]:
    served = tried = 0
    body = json.dumps(nchffuzz.body(0, str(IMSI_BASE))).encode()
    while time.monotonic() < until:
        tried += 1
        try:
            client = await H2Client.connect("127.0.0.1", port, timeout=2)
            response = await client.post_json(nchffuzz.API, body, timeout=2)
            served += response.status in (201, 503)  # an answer: during an overload, 503 is one
            await client.close()
        except (OSError, TimeoutError, ClientError):
            pass
        await asyncio.sleep(0.25)
    return served, tried


Peer = Callable[[int, float, int, int], Coroutine[Any, Any, bool]]  # (port, until, peer number, peers)
SCENARIOS: dict[str, tuple[str, Peer]] = {
    "gy-noread-precer": ("gy", lambda port, until, n, peers: gy_noread_precer(port, until)),
    "gy-noread-dwr": ("gy", lambda port, until, n, peers: gy_noread_dwr(port, until, n)),
    "gy-slow-frame": ("gy", lambda port, until, n, peers: gy_slow_frame(port, until)),
    "gy-idle": ("gy", lambda port, until, n, peers: gy_idle(port, until)),
    "nchf-slow-frame": ("nchf", lambda port, until, n, peers: nchf_slow_frame(port, until)),
    # 16 requests per connection every peers x 10 ms: 1,600/s in all, whatever the number of peers (about what this
    # server serves: more is the overload section's matter)
    "nchf-noread": ("nchf", lambda port, until, n, peers: nchf_noread(port, until, n, every=peers * 0.01)),
    "nchf-idle": ("nchf", lambda port, until, n, peers: nchf_idle(port, until)),
}


async def warm_up(server: Server, seconds: float = 1.0) -> None:
    """Ordinary traffic on both interfaces, so that the baseline RSS includes what serving costs."""
    until = time.monotonic() + seconds
    await asyncio.gather(gy_citizen(server.ports.gy, until), nchf_citizen(server.ports.nchf, until))


async def settle(pid: int, seconds: float) -> int:
    """The RSS once it stopped falling (or after `seconds`)."""
    deadline = time.monotonic() + seconds
    last = rss_kb(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = rss_kb(pid)
        if now >= last - 256:
            return now
        last = now
    return last


async def run_scenario(
    server: Server, name: str, connections: int, seconds: float, *, warm: float = 1.0, settle_for: float = 10.0
) -> AbuseResult:
    interface, peer = SCENARIOS[name]
    port = server.ports.gy if interface == "gy" else server.ports.nchf
    citizen = gy_citizen if interface == "gy" else nchf_citizen
    await warm_up(server, warm)
    before = await settle(server.pid, min(3.0, settle_for))
    tracebacks = server.tracebacks()
    started = time.monotonic()
    until = started + seconds
    with RssSampler(server.pid) as sampler:
        abusers = [asyncio.create_task(peer(port, until, n, connections)) for n in range(connections)]
        served, tried = await citizen(port, until)
        outcomes = await asyncio.gather(*abusers, return_exceptions=True)
    closed = sum(1 for o in outcomes if o is False or isinstance(o, ConnectionError))
    after = await settle(server.pid, settle_for)
    return AbuseResult(
        name,
        connections,
        round(time.monotonic() - started, 1),
        before,
        sampler.peak,
        after,
        served,
        tried,
        closed,
        server.alive(),
        server.tracebacks() - tracebacks,
    )
