"""Duplicate detection never answers another request (issue 11 items 1, 9, 10, 11; issue 12 item 5), over the Gy
wire of a real server: the answer kept for a retransmission belongs to the request (same Origin-Host AVP,
End-to-End-Id, Session-Id, CC-Request-Number and command), for the duplicate window at most; refusals are not kept;
a small cache never stalls the server; a CCR-INITIAL on an open session keeps its replay state across a restart;
the test client's End-to-End-Ids follow RFC 6733 section 3."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chf.core.model import ChargingRequest
from gy.client import DiameterClient, Mscc, ccr_avps
from gy.codec import FLAG_PROXIABLE, FLAG_REQUEST, FLAG_RETRANSMIT, Message, find
from tests.gy_support import balance_of, provision, running_server

HOST, REALM = "pgw.test", "test"
ACTIVE, PROVISIONED, UNKNOWN = "208010000000001", "208010000000002", "208010000000009"
T_FLAG = FLAG_REQUEST | FLAG_PROXIABLE | FLAG_RETRANSMIT


def ccr(session: str, rtype: int, number: int, host: str = HOST, **kw: Any) -> list[bytes]:
    kw.setdefault("mscc", [Mscc(10, {})])
    return ccr_avps(session, rtype, number, origin_host=host, origin_realm=REALM, **kw)


def rc(msg: Message) -> int:
    return find(msg.avps, 268).u32()  # type: ignore[union-attr]


def session_of(msg: Message) -> str:
    return find(msg.avps, 263).text()  # type: ignore[union-attr]


def number_of(msg: Message) -> int:
    return find(msg.avps, 415).u32()  # type: ignore[union-attr]


async def test_a_reused_end_to_end_id_never_answers_another_request(tmp_path: Path) -> None:
    """The audit's case: a CCR-I for session B of a provisioned line, on a new connection with the End-to-End-Id
    of session A's CCR-I (the client restarted its ids at every connection), got A's 2001 and A's grant."""
    async with running_server(tmp_path) as srv:
        await srv.op(provision(imsi=ACTIVE))
        await srv.op(provision(account="b", imsi=PROVISIONED, msisdn=None, state="provisioned"))
        first = await srv.client()
        a = await first.ccr(ccr("A;1", 1, 0, imsi=ACTIVE), e2e=0x10000)
        assert rc(a) == 2001 and session_of(a) == "A;1"
        second = await srv.client()
        b = await second.ccr(ccr("B;1", 1, 0, imsi=PROVISIONED), e2e=0x10000)
        assert session_of(b) == "B;1" and rc(b) == 4010  # the line is not active: no grant
        assert find(b.avps, 456) is None or find(find(b.avps, 456).children, 431) is None  # type: ignore[union-attr]
        # the same session, another request number, the same id: a new request too
        u = await first.ccr(ccr("A;1", 2, 1, mscc=[Mscc(10, {}, used=[{"bytes": 1000}])]), e2e=0x10000)
        assert session_of(u) == "A;1" and number_of(u) == 1 and rc(u) == 2001
        # and a true retransmission still gets the first answer, without the core
        again = await second.ccr(ccr("B;1", 1, 0, imsi=PROVISIONED), e2e=0x10000, flags=T_FLAG)
        assert again.buf[16:] == b.buf[16:]


async def test_duplicates_are_keyed_on_the_request_origin_host(tmp_path: Path) -> None:
    """Two PGWs behind one relay (one Diameter connection) using the same End-to-End-Id are two requests; a PGW's
    retransmission through another relay connection (failover, T flag) is the same request."""
    async with running_server(tmp_path, gy="allow_unknown_peers = true") as srv:
        await srv.op(provision(imsi=ACTIVE))
        relay = await srv.client("dra1.test", REALM)
        one = await relay.ccr(ccr("pgw1;1", 1, 0, "pgw1.test", imsi=ACTIVE), e2e=42)
        two = await relay.ccr(ccr("pgw2;1", 1, 0, "pgw2.test", imsi=ACTIVE), e2e=42)
        assert (session_of(one), rc(one)) == ("pgw1;1", 2001)
        assert (session_of(two), rc(two)) == ("pgw2;1", 2001)
        # a CCR-I for a line not provisioned yet: 5030; provisioned meanwhile, the retransmission through another
        # relay is still the request that got 5030, not a new session
        refused = await relay.ccr(ccr("pgw1;2", 1, 0, "pgw1.test", imsi=UNKNOWN), e2e=43)
        assert rc(refused) == 5030
        await srv.op(provision(account="late", imsi=UNKNOWN, msisdn=None))
        other_relay = await srv.client("dra2.test", REALM)
        again = await other_relay.ccr(ccr("pgw1;2", 1, 0, "pgw1.test", imsi=UNKNOWN), e2e=43, flags=T_FLAG)
        assert rc(again) == 5030 and again.buf[16:] == refused.buf[16:]


async def test_the_duplicate_window_bounds_how_long_an_answer_is_kept(tmp_path: Path) -> None:
    """RFC 6733 6.1.4: an answer is kept for the window ([gy] duplicate_window, 240 s by default) and no longer."""
    async with running_server(tmp_path, gy="duplicate_window = 0.5") as srv:
        client = await srv.client()
        request = ccr("w;1", 1, 0, imsi=UNKNOWN)
        assert rc(await client.ccr(request, e2e=7)) == 5030
        await srv.op(provision(imsi=UNKNOWN))
        assert rc(await client.ccr(request, e2e=7, flags=T_FLAG)) == 5030  # within the window: the same answer
        await asyncio.sleep(0.7)
        assert rc(await client.ccr(request, e2e=7, flags=T_FLAG)) == 2001  # after it: the core decides
        assert len(srv.gy.app.duplicates.answers) == 1  # the expired answer is gone, the new one kept


async def test_refusals_are_not_remembered(tmp_path: Path) -> None:
    """3004 (the core busy or out of reach) and 5012 are not answers to keep: a retransmission once the core can
    answer gets the core's answer (the audit saw 3004 again, 42 times of 42, on an idle server)."""
    async with running_server(tmp_path) as srv:
        await srv.op(provision(imsi=ACTIVE))
        client = await srv.client()
        await srv.service.store.stop()
        busy = await client.ccr(ccr("r;1", 1, 0, imsi=ACTIVE), e2e=11)
        assert rc(busy) == 3004 and busy.flags & 0x20
        srv.service.store.start()
        ok = await client.ccr(ccr("r;1", 1, 0, imsi=ACTIVE), e2e=11, flags=T_FLAG)
        assert rc(ok) == 2001

        class FailsOnce:
            def __init__(self, core: Any) -> None:
                self.core, self.failed = core, False

            def charge_then(self, request: ChargingRequest, done: Any) -> None:
                if not self.failed:
                    self.failed = True
                    raise RuntimeError("a fault of the core")
                self.core.charge_then(request, done)

        srv.gy.app.port = FailsOnce(srv.gy.app.port)  # type: ignore[assignment]
        failed = await client.ccr(ccr("r;2", 1, 0, imsi=ACTIVE), e2e=12)
        assert rc(failed) == 5012
        assert rc(await client.ccr(ccr("r;2", 1, 0, imsi=ACTIVE), e2e=12, flags=T_FLAG)) == 2001


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Interrupts a server stuck in a loop every `seconds` (the test and the server share this thread and event
    loop: without it a stuck server hangs the test run instead of failing the test)."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError("the server stalled")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


async def test_a_duplicate_cache_smaller_than_the_requests_in_flight(tmp_path: Path) -> None:
    """[gy] duplicate_cache = 0 or 1 with several requests in flight: every request answered (remember() used to
    spin forever, moving in-flight entries around: nothing answered, SIGTERM ignored)."""
    for size in (0, 1):
        (tmp_path / str(size)).mkdir()
        with alarm(5):
            async with running_server(tmp_path / str(size), gy=f"duplicate_cache = {size}") as srv:
                await srv.op(provision(imsi=ACTIVE))
                client = await srv.client()
                answers = await asyncio.wait_for(
                    asyncio.gather(*[client.ccr(ccr(f"c;{n}", 1, 0, imsi=ACTIVE)) for n in range(8)]), 20
                )
                assert [rc(a) for a in answers] == [2001] * 8
                assert len(srv.gy.app.duplicates.answers) == size


async def test_an_initial_on_an_open_session_keeps_its_replay_state(tmp_path: Path) -> None:
    """I#0, U#1 (3 MB), I#2, restart, U#1 retransmitted with the T flag: the stored answer, not a second debit."""
    update = ccr("s;1", 2, 1, mscc=[Mscc(10, {}, used=[{"bytes": 3_000_000}])])
    async with running_server(tmp_path) as srv:
        await srv.op(provision(imsi=ACTIVE))
        client = await srv.client()
        assert rc(await client.ccr(ccr("s;1", 1, 0, imsi=ACTIVE))) == 2001
        first = await client.ccr(update)
        assert rc(first) == 2001
        assert rc(await client.ccr(ccr("s;1", 1, 2, imsi=ACTIVE))) == 2001
        balance = balance_of(srv, "a1")
        assert balance == 10_000_000 - 30_000  # 3 MB at 0.01 EUR
    async with running_server(tmp_path) as srv:
        client = await srv.client()
        again = await client.ccr(update, flags=T_FLAG)
        assert rc(again) == 2001 and number_of(again) == 1
        assert find(again.avps, 456).buf[find(again.avps, 456).start :] == first.buf[find(first.avps, 456).start :]  # type: ignore[union-attr]
        assert balance_of(srv, "a1") == balance


async def test_client_end_to_end_ids_follow_rfc_6733(tmp_path: Path) -> None:
    """RFC 6733 3: high 12 bits from the clock, low 20 random; not 0x10000 again on every connection."""
    async with running_server(tmp_path) as srv:
        await srv.op(provision(imsi=ACTIVE))
        ids = []
        for n in range(3):
            client: DiameterClient = await srv.client()
            answer = await client.ccr(ccr(f"e;{n}", 1, 0, imsi=ACTIVE))
            assert rc(answer) == 2001
            ids.append(answer.e2e)  # the server echoes the request's id
        clock = int(time.time()) & 0xFFF
        assert all(i >> 20 in (clock, (clock - 1) & 0xFFF) for i in ids), [hex(i) for i in ids]
        assert len(set(ids)) == 3 and 0x10000 not in ids
