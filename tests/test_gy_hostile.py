"""The Gy server against hostile and overloaded peers, over real TCP (issue 12, the Gy items): what a peer may make
it buffer in either direction and for how long, how overload is refused, and what a malformed or repeated CER gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from pathlib import Path

import pytest

from gy.client import DiameterClient
from gy.codec import E, Message, decode_header, encode_message, find
from tests.gy_sansio import ccr
from tests.gy_support import provision, running_server

HOST, REALM = "pgw.test", "test"
ACTIVE = "208010000000001"


def dwr(hbh: int, version: int = 1) -> bytes:
    raw = encode_message(
        280, 0x80, 0, hbh, hbh, [E("Origin-Host").octets(HOST.encode()), E("Origin-Realm").text(REALM)]
    )
    return bytes([version]) + raw[1:]


def cer(*avps: bytes) -> bytes:
    return encode_message(257, 0x80, 0, 1, 1, list(avps))


CER_AVPS = [
    E("Origin-Host").octets(HOST.encode()),
    E("Origin-Realm").octets(REALM.encode()),
    E("Host-IP-Address").address("127.0.0.1"),
    E("Vendor-Id").u32(0),
    E("Product-Name").text("hostile"),
    E("Auth-Application-Id").u32(4),
]


async def raw_connection(port: int, rcvbuf: int = 4096) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def read_message(reader: asyncio.StreamReader, timeout: float = 5.0) -> Message:
    head = await asyncio.wait_for(reader.readexactly(4), timeout)
    rest = await asyncio.wait_for(reader.readexactly(int.from_bytes(head[1:4], "big") - 4), timeout)
    return decode_header(head + rest)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
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


async def flood_without_reading(writer: asyncio.StreamWriter, chunk: bytes, seconds: float, server: object) -> int:
    """Write `chunk` again and again for `seconds`, never reading; the most bytes the server held for this peer's
    answers meanwhile (its transports' write buffers)."""
    most = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not writer.is_closing():
        writer.write(chunk)
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(writer.drain(), 0.05)
        buffered = [c.transport.get_write_buffer_size() for c in server.connections if c.transport is not None]  # type: ignore[attr-defined]
        most = max(most, *buffered, 0)
    return most


# -- item 2: answers for a peer that never reads --------------------------------------------------------------------
@pytest.mark.parametrize("open_first", [False, True], ids=["before-cer", "after-cer"])
async def test_answers_for_a_peer_that_never_reads_are_bounded_and_the_peer_closed(
    tmp_path: Path, open_first: bool
) -> None:
    """Before CER, version-2 frames (each answered 5011); after it, DWRs (each answered with a DWA): the old server
    queued the answers without limit for a peer that never read them (200 such peers: RSS 755 -> 1,510 MB). Past
    [gy] output_buffer it reads nothing more from the peer, and closes it after write_timeout."""
    async with running_server(tmp_path, gy="output_buffer = 16384\nwrite_timeout = 1.0\ntw = 4.0") as srv:
        reader, writer = await raw_connection(srv.port)
        if open_first:
            writer.write(cer(*CER_AVPS))
            cea = await read_message(reader)
            assert find(cea.avps, 268).u32() == 2001  # type: ignore[union-attr]
        frames = b"".join(dwr(n, version=1 if open_first else 2) for n in range(200))
        most = await flood_without_reading(writer, frames, 2.5, srv.gy)
        assert most < 16384 + 64 * 1024, f"{most} bytes of answers held for a peer that does not read"
        assert await closed_within(reader, 3.0), "the peer that never reads was not closed"
        writer.close()
        # The server still serves everyone else.
        client = await srv.client()
        await srv.op(provision(imsi=ACTIVE))
        answer = await client.ccr(ccr("ok;1", 1, 0, imsi=ACTIVE))
        assert find(answer.avps, 268).u32() == 2001  # type: ignore[union-attr]


# -- item 1 for Gy: what a peer may make the server buffer on the way in -------------------------------------------
async def test_a_message_that_never_completes_is_cut_off(tmp_path: Path) -> None:
    async with running_server(tmp_path, gy="message_timeout = 0.5\ntw = 4.0") as srv:
        reader, writer = await raw_connection(srv.port)
        writer.write(cer(*CER_AVPS))
        await read_message(reader)
        writer.write(dwr(7)[:1] + (4096).to_bytes(3, "big") + dwr(7)[4:] + b"\0" * 100)  # 4 KiB announced, 0.1 sent
        started = time.monotonic()
        assert await closed_within(reader, 3.0), "a message left incomplete kept its connection open"
        assert time.monotonic() - started < 2.5
        writer.close()


async def test_a_message_longer_than_max_message_closes_at_once(tmp_path: Path) -> None:
    async with running_server(tmp_path, gy="tw = 4.0") as srv:  # the default max_message: 64 KiB
        reader, writer = await raw_connection(srv.port)
        writer.write(cer(*CER_AVPS))
        await read_message(reader)
        writer.write(b"\x01" + (512 * 1024).to_bytes(3, "big") + dwr(8)[4:20])
        assert await closed_within(reader, 1.0), "a 512 KiB message was awaited (the old bound: 1 MiB per peer)"
        writer.close()


# -- item 4: overload -----------------------------------------------------------------------------------------------
@pytest.mark.slow
async def test_overload_is_refused_at_once_past_the_latency_budget(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In flight is bounded by the time the requests are expected to take ([gy] latency_budget_ms at the measured
    answer rate), not by 16,384: a burst past it gets 3004 at once, each counted, none logged on its own line
    (each 3004 was a WARNING: 78 MB of log in 20 s)."""
    async with running_server(tmp_path, gy="latency_budget_ms = 20\nmax_inflight_per_peer = 100000") as srv:
        for n in range(20):
            await srv.op(provision(account=f"a{n}", imsi=str(208010000000100 + n), msisdn=None))
        client = await srv.client()

        async def timed(n: int, sid: str) -> tuple[int, float]:
            started = time.perf_counter()
            answer = await client.ccr(ccr(sid, 1, 0, imsi=str(208010000000100 + n % 20)), timeout=30)
            return find(answer.avps, 268).u32(), time.perf_counter() - started  # type: ignore[union-attr]

        warm = await asyncio.gather(*[timed(n, f"w;{n}") for n in range(300)])  # the answer rate gets measured
        assert {code for code, _ in warm} <= {2001, 3004}
        assert srv.gy.app.admission.rate > 0
        with caplog.at_level(logging.INFO, logger="gy"):
            burst = await asyncio.gather(*[timed(n, f"b;{n}") for n in range(3000)])
        refused = sorted(t for code, t in burst if code == 3004)
        accepted = sorted(t for code, t in burst if code != 3004)
        assert refused, "3,000 requests at once were all taken"
        assert accepted and len(accepted) < 1500
        assert refused[len(refused) // 2] < accepted[-1]  # refusals do not wait behind the accepted
        per_refusal = [r for r in caplog.records if "3004" in r.getMessage() and "gy_refusals" not in r.getMessage()]
        assert not per_refusal, per_refusal[:3]
        srv.gy.app.refusals.flush()
        summaries = [r.getMessage() for r in caplog.records if "event=gy_refusals" in r.getMessage()]
        assert summaries and len(summaries) <= 3, summaries


# -- item 8, and RFC 6733 7.5 for the CER ------------------------------------------------------------------------------
async def test_a_second_cer_on_an_open_connection_is_3010_with_the_e_bit(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        reader, writer = await raw_connection(srv.port, rcvbuf=65536)
        writer.write(cer(*CER_AVPS))
        assert find((await read_message(reader)).avps, 268).u32() == 2001  # type: ignore[union-attr]
        writer.write(cer(*CER_AVPS))
        again = await read_message(reader)
        assert find(again.avps, 268).u32() == 3010 and again.flags & 0x20  # type: ignore[union-attr]
        writer.write(dwr(9))  # the connection is still open
        assert find((await read_message(reader)).avps, 268).u32() == 2001  # type: ignore[union-attr]
        writer.close()


@pytest.mark.parametrize(
    ("avps", "code"),
    [
        (CER_AVPS[:1] + CER_AVPS[2:], 5005),  # no Origin-Realm
        ([E("Origin-Host").octets(HOST.encode())[:4] + b"\x40\x00\x00\x05" + b"\0" * 4, *CER_AVPS[1:]], 5014),
    ],
    ids=["missing-origin-realm", "bad-avp-length"],
)
async def test_a_malformed_cer_is_answered_with_failed_avp(tmp_path: Path, avps: list[bytes], code: int) -> None:
    """Found by make bench-chaos's Gy fuzzer: a CEA of 5005 or 5014 carried no Failed-AVP (RFC 6733 7.5)."""
    async with running_server(tmp_path) as srv:
        reader, writer = await raw_connection(srv.port, rcvbuf=65536)
        writer.write(cer(*avps))
        cea = await read_message(reader)
        assert find(cea.avps, 268).u32() == code  # type: ignore[union-attr]
        assert find(cea.avps, 279) is not None, "no Failed-AVP"
        writer.close()


async def test_a_load_client_with_two_connections_is_served(tmp_path: Path) -> None:
    """The bounds leave an ordinary peer alone: two connections, requests pipelined, all answered 2001."""
    async with running_server(tmp_path) as srv:
        await srv.op(provision(imsi=ACTIVE))
        one, _ = await DiameterClient.connect("127.0.0.1", srv.port, HOST, REALM)
        answers = await asyncio.gather(
            *[one.ccr(ccr(f"p;{n}", 4, 0, imsi=ACTIVE, requested_action=2)) for n in range(50)]
        )
        assert all(find(a.avps, 268).u32() == 2001 for a in answers)  # type: ignore[union-attr]
        one.close()
