"""Peer state machine and protocol errors over real TCP: each error provoked by a crafted message gets its
Result-Code (with Failed-AVP where RFC 6733 asks for it), and the connection and other peers keep working."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gy.client import DiameterClient, Mscc, ccr_avps
from gy.codec import E, encode_raw, find
from tests.gy_support import provision, running_server

HOST, REALM, IMSI = "pgw.test", "test", "208010000000001"


def base(session: str = "p;1", rtype: int = 1, number: int = 0) -> list[bytes]:
    return ccr_avps(session, rtype, number, origin_host=HOST, origin_realm=REALM, imsi=IMSI, mscc=[Mscc(10, {})])


def without(avps: list[bytes], name: str) -> list[bytes]:
    prefix = E(name).octets(b"")[:4]
    return [a for a in avps if a[:4] != prefix]


async def works(client: DiameterClient, session: str) -> None:
    cca = await client.ccr(base(session))
    assert find(cca.avps, 268).u32() == 2001


CASES = {
    "3001 command unsupported": (271, 4, 0xC0, base("x;3001"), 3001),
    "3007 application unsupported": (272, 16777238, 0xC0, base("x;3007"), 3007),
    "3008 E bit in a request": (272, 4, 0xE0, base("x;3008"), 3008),
    "3009 reserved AVP flag bits": (272, 4, 0xC0, [*base("x;3009"), encode_raw(55, 0x41, 0, b"\0\0\0\0")], 3009),
    "5001 unknown mandatory AVP": (272, 4, 0xC0, [*base("x;5001"), encode_raw(65000, 0x40, 0, b"abcd")], 5001),
    "5004 bad CC-Request-Type": (
        272,
        4,
        0xC0,
        [*without(base("x;5004"), "CC-Request-Type"), E("CC-Request-Type").i32(9)],
        5004,
    ),
    "5005 missing CC-Request-Number": (272, 4, 0xC0, without(base("x;5005"), "CC-Request-Number"), 5005),
    "5008 Result-Code in a request": (272, 4, 0xC0, [*base("x;5008"), E("Result-Code").u32(2001)], 5008),
    "5009 CC-Request-Type twice": (272, 4, 0xC0, [*base("x;5009"), E("CC-Request-Type").i32(1)], 5009),
    "5014 Unsigned32 of 5 bytes": (
        272,
        4,
        0xC0,
        [*without(base("x;5014"), "CC-Request-Number"), encode_raw(415, 0x40, 0, b"\0\0\0\0\1")],
        5014,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_protocol_errors(tmp_path: Path, case: str) -> None:
    code, app, flags, avps, expected = CASES[case]
    async with running_server(tmp_path) as srv:
        await srv.op(provision())
        client = await srv.client()
        bystander = await srv.client()
        answer = await client.request(code, app, avps, flags=flags)
        assert find(answer.avps, 268).u32() == expected
        assert bool(answer.flags & 0x20) == (expected < 4000)  # E bit on protocol errors only
        if expected >= 5000:
            failed = find(answer.avps, 279)
            assert failed is not None and failed.children
        await works(client, "after;" + case)
        await works(bystander, "bystander;" + case)
        assert srv.service.store.stat()["sessions"] >= 1


async def test_avp_length_past_the_message_and_unsupported_version(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        await srv.op(provision())
        client = await srv.client()
        # an AVP whose length runs past the end of the message: 5014, the stream stays framed
        good = b"".join(base("len;1"))
        bad_avp = bytes.fromhex("000001b7") + bytes([0x40, 0, 0, 200]) + b"\0" * 8
        hbh, data = client.request_bytes(272, 4, [good, bad_avp])
        fut = client.expect(hbh)
        client.send_raw(data)
        answer = await asyncio.wait_for(fut, 5)
        assert find(answer.avps, 268).u32() == 5014
        # version 2: 5011, and the connection goes on
        hbh, data = client.request_bytes(272, 4, base("v;2"))
        fut = client.expect(hbh)
        client.send_raw(b"\x02" + data[1:])
        answer = await asyncio.wait_for(fut, 5)
        assert find(answer.avps, 268).u32() == 5011
        await works(client, "after;version")


async def test_too_busy(tmp_path: Path) -> None:
    async with running_server(tmp_path, gy="max_inflight_per_peer = 0") as srv:
        await srv.op(provision())
        client = await srv.client()
        answer = await client.ccr(base("busy;1"))
        assert find(answer.avps, 268).u32() == 3004 and answer.flags & 0x20


async def test_peers(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        await srv.op(provision())
        # unknown Origin-Host: 3010 and closed
        stranger, _ = await DiameterClient.connect("127.0.0.1", srv.port, "evil.test", REALM, cer=False)
        cea = await stranger.capabilities()
        assert find(cea.avps, 268).u32() == 3010
        await asyncio.wait_for(stranger.closed, 5)
        # known host in the wrong realm is unknown too
        wrong, _ = await DiameterClient.connect("127.0.0.1", srv.port, HOST, "elsewhere", cer=False)
        assert find((await wrong.capabilities()).avps, 268).u32() == 3010
        # no common application: 5010 and closed
        gx, _ = await DiameterClient.connect("127.0.0.1", srv.port, HOST, REALM, cer=False)
        cea = await gx.capabilities(apps=(16777238,))
        assert find(cea.avps, 268).u32() == 5010
        await asyncio.wait_for(gx.closed, 5)
        # nothing is processed before CEA: a CCR first closes the connection unanswered
        early, _ = await DiameterClient.connect("127.0.0.1", srv.port, HOST, REALM, cer=False)
        with pytest.raises(ConnectionError):
            await early.ccr(base("early;1"))
        # a good peer: CEA carries our capabilities; DWR/DWA; then DPR/DPA closes
        client = await srv.client()
        dwa = await client.request(
            280, 0, [E("Origin-Host").octets(HOST.encode()), E("Origin-Realm").octets(b"test")], flags=0x80
        )
        assert find(dwa.avps, 268).u32() == 2001
        dpa = await client.request(
            282,
            0,
            [E("Origin-Host").octets(HOST.encode()), E("Origin-Realm").octets(b"test"), E("Disconnect-Cause").i32(2)],
            flags=0x80,
        )
        assert find(dpa.avps, 268).u32() == 2001
        await asyncio.wait_for(client.closed, 5)
        # many peers at once
        clients = [await srv.client(HOST) for _ in range(20)]
        await asyncio.gather(*[works(c, f"many;{i}") for i, c in enumerate(clients)])


async def test_cea_content(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        client, cea = await DiameterClient.connect("127.0.0.1", srv.port, HOST, REALM)
        srv.clients.append(client)
        assert cea is not None
        assert find(cea.avps, 268).u32() == 2001
        assert find(cea.avps, 264).data == b"chf.test" and find(cea.avps, 296).data == b"test"
        assert find(cea.avps, 258).u32() == 4 and find(cea.avps, 265).u32() == 10415
        assert find(cea.avps, 257).address() == "127.0.0.1"
        assert find(cea.avps, 269).text() and find(cea.avps, 278) is not None and find(cea.avps, 266) is not None


async def test_unknown_peers_allowed(tmp_path: Path) -> None:
    async with running_server(tmp_path, gy="allow_unknown_peers = true") as srv:
        await srv.op(provision())
        client = await srv.client("anyone.example", "example")
        cca = await client.ccr(
            ccr_avps("u;1", 1, 0, origin_host="anyone.example", origin_realm="example", imsi=IMSI, mscc=[Mscc(10, {})])
        )
        assert find(cca.avps, 268).u32() == 2001


async def test_watchdog_and_graceful_shutdown(tmp_path: Path) -> None:
    async with running_server(tmp_path, gy="tw = 1.0") as srv:
        client = await srv.client()
        silent = await srv.client()
        silent.answer_watchdog = False
        started = time.monotonic()
        await asyncio.wait_for(silent.closed, 10)  # DWR unanswered: suspect after Tw, down after another
        assert time.monotonic() - started >= 1.5
        assert silent.received.get(280, 0) >= 1
        assert client.received.get(280, 0) >= 1 and client.transport is not None
    assert client.received.get(282) == 1  # DPR on shutdown
    await asyncio.wait_for(client.closed, 5)


async def test_message_not_multiple_of_four_closes_only_that_connection(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        await srv.op(provision())
        bad = await srv.client()
        good = await srv.client()
        bad.send_raw(b"\x01\x00\x00\x17" + b"\0" * 19)  # length 23: not a multiple of 4
        await asyncio.wait_for(bad.closed, 5)
        await works(good, "frame;2")


async def test_core_out_of_reach_is_transient(tmp_path: Path) -> None:
    """A store that stopped (or a lost core link) refuses with 3004 and the E bit, as overload does: the PGW
    retries at another CHF (RFC 6733 section 7.1.3) instead of failing the session with a permanent 5012."""
    async with running_server(tmp_path) as srv:
        await srv.op(provision())
        client = await srv.client()
        await works(client, "before;stop")
        await srv.service.store.stop()
        answer = await client.ccr(base("stopped;1"))
        assert find(answer.avps, 268).u32() == 3004 and answer.flags & 0x20
        srv.service.store.start()
        await works(client, "after;restart")
