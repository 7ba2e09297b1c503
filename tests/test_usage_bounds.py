"""Implausible usage (issue 11 item 12): a report over [engine] max_report_* is refused whole before anything is
written (Gy 5004 with Failed-AVP, Nchf 400 naming the JSON pointer), and the line keeps working."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gy.client import Mscc, ccr_avps
from gy.codec import Message, find
from tests.gy_support import balance_of, provision, running_server

HOST, REALM = "pgw.test", "test"
U64_MAX = (1 << 64) - 1


def ccr(session: str, rtype: int, number: int, **kw: Any) -> list[bytes]:
    return ccr_avps(session, rtype, number, origin_host=HOST, origin_realm=REALM, **kw)


def rc(msg: Message) -> int:
    result = find(msg.avps, 268)
    assert result is not None
    return result.u32()


def failed_usu_octets(msg: Message) -> int:
    failed = find(msg.avps, 279)
    assert failed is not None, "no Failed-AVP"
    usu = find(failed.children, 446)
    assert usu is not None, "Failed-AVP does not hold the Used-Service-Unit"
    octets = find(usu.children, 421)
    assert octets is not None
    return octets.u64()


async def test_gy_implausible_usage_is_refused_and_the_line_keeps_working(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        await srv.op(provision())
        client = await srv.client()
        sid = "pgw.test;ub;1"
        cca = await client.ccr(ccr(sid, 1, 0, imsi="208010000000001", mscc=[Mscc(10, {})]))
        assert rc(cca) == 2001
        before = balance_of(srv, "a1")
        cca = await client.ccr(ccr(sid, 2, 1, mscc=[Mscc(10, {}, used=[{"bytes": U64_MAX}])]))
        assert rc(cca) == 5004
        assert failed_usu_octets(cca) == U64_MAX
        assert balance_of(srv, "a1") == before
        cca = await client.ccr(ccr(sid, 2, 2, mscc=[Mscc(10, {}, used=[{"bytes": 1 << 63}, {"bytes": 1 << 63}])]))
        assert rc(cca) == 5004
        assert failed_usu_octets(cca) == 1 << 63
        assert balance_of(srv, "a1") == before
        cca = await client.ccr(ccr(sid, 2, 3, mscc=[Mscc(10, {}, used=[{"bytes": 1_000}])]))
        assert rc(cca) == 2001
        assert balance_of(srv, "a1") == before - 10_000  # one started MB at 0.01 EUR


async def test_nchf_implausible_usage_is_refused_naming_the_pointer(tmp_path: Path) -> None:
    from tests.nchf_harness import IMSI, request_body, start_chf, stop_chf, usage

    chf = await start_chf(tmp_path)
    try:
        client = await chf.client()
        created = await chf.call(client, "create", request_body(1, units=[usage(10)]))
        assert created.status == 201
        before = (chf.bucket(IMSI), chf.wallet("acct-a"))

        def twice(volume: int) -> dict[str, Any]:
            item = usage(10, {"totalVolume": volume})
            item["usedUnitContainer"].append({"localSequenceNumber": 2, "totalVolume": volume})
            return item

        pointer = "/multipleUnitUsage/0/usedUnitContainer/{}/totalVolume"
        for n, (volume, culprit) in enumerate([(U64_MAX, 0), (1 << 40, 1)], start=2):
            refused = await chf.call(client, "update", request_body(n, units=[twice(volume)]), created.ref)
            assert refused.status == 400, refused.body
            assert [p["param"] for p in refused.body["invalidParams"]] == [pointer.format(culprit)]
            assert (chf.bucket(IMSI), chf.wallet("acct-a")) == before
        updated = await chf.call(
            client, "update", request_body(4, units=[usage(10, {"totalVolume": 1_000})]), created.ref
        )
        assert updated.status == 200, updated.body
        assert chf.bucket(IMSI) != before[0]
        await client.close()
    finally:
        await stop_chf(chf)
