"""The Gy server over real TCP: peers, credit control, results, duplicates, signals, overload."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from chf.core import provisioning
from gy.client import Mscc, ccr_avps
from gy.codec import E, find, find_all
from tests import gy_support
from tests.gy_support import balance_of, provision, running_server

HOST, REALM = "pgw.test", "test"


@pytest.fixture(autouse=True)
def store_backend(backend: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test here runs on LMDB and on the Redis cluster."""
    if backend == "redis":
        gy_support.STORE_SECTION = gy_support.redis_section(request.getfixturevalue("redis_cluster"))
    yield backend
    gy_support.STORE_SECTION = None


def ccr(session: str, rtype: int, number: int, **kw):  # type: ignore[no-untyped-def]
    return ccr_avps(session, rtype, number, origin_host=HOST, origin_realm=REALM, **kw)


def rc(msg) -> int:  # type: ignore[no-untyped-def]
    return find(msg.avps, 268).u32()


def msccs(msg) -> dict[int, dict[str, object]]:  # type: ignore[no-untyped-def]
    out = {}
    for m in find_all(msg.avps, 456):
        ch = m.children
        rg = find(ch, 432)
        entry: dict[str, object] = {"rc": find(ch, 268).u32()}
        gsu = find(ch, 431)
        if gsu is not None:
            for a in gsu.children:
                entry[{421: "bytes", 420: "seconds", 417: "events"}.get(a.code, str(a.code))] = (
                    a.value() if a.code != 413 else "money"
                )
        vt = find(ch, 448)
        if vt is not None:
            entry["validity"] = vt.u32()
        fui = find(ch, 430)
        if fui is not None:
            entry["fua"] = find(fui.children, 449).i32()
            entry["fui"] = fui.children
        vqt = find(ch, 869, 10415)
        if vqt is not None:
            entry["vqt"] = vqt.u32()
        out[rg.u32() if rg is not None else -1] = entry
    return out


async def test_cer_and_basic_session(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        await srv.op(provision())
        client = await srv.client()
        sid = "pgw.test;1;1"
        cca = await client.ccr(ccr(sid, 1, 0, imsi="208010000000001", mscc=[Mscc(10, {}), Mscc(20, {})]))
        assert rc(cca) == 2001
        m = msccs(cca)
        assert m[10]["rc"] == 2001 and m[10]["bytes"] == 1_000_000 and m[10]["validity"] == 600
        assert m[10]["vqt"] == 200_000
        assert m[20]["seconds"] == 600
        assert find(cca.avps, 415).u32() == 0 and find(cca.avps, 416).i32() == 1
        assert find(cca.avps, 427).i32() == 2  # CCFH RETRY_AND_TERMINATE
        cca = await client.ccr(ccr(sid, 2, 1, mscc=[Mscc(10, {}, used=[{"bytes": 1_500_000, "reason": 3}])]))
        assert rc(cca) == 2001
        cca = await client.ccr(ccr(sid, 3, 2, mscc=[Mscc(10, used=[{"bytes": 10, "reason": 2}])]))
        assert rc(cca) == 2001
        # 0.01 EUR per started MB, each report rounded on its own: 1.5 MB -> 2 MB, 10 bytes -> 1 MB
        assert balance_of(srv, "a1") == 10_000_000 - 30_000
        cca = await client.ccr(ccr(sid, 2, 3, mscc=[Mscc(10, {})]))
        assert rc(cca) == 5002


async def test_result_codes(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        await srv.op(provision(plan="data-only"))
        await srv.op(provision(account="broke", imsi="208010000000002", msisdn=None, balance=0))
        await srv.op(provision(account="s", imsi="208010000000003", msisdn=None, state="provisioned"))
        client = await srv.client()
        cca = await client.ccr(ccr("s;1", 1, 0, imsi="208010000000001", mscc=[Mscc(10, {}), Mscc(99, {})]))
        assert rc(cca) == 2001
        assert {rg: m["rc"] for rg, m in msccs(cca).items()} == {10: 2001, 99: 5031}
        cca = await client.ccr(ccr("s;2", 1, 0, imsi="208010000000002", mscc=[Mscc(10, {})]))
        assert rc(cca) == 4012 and msccs(cca)[10]["rc"] == 4012 and msccs(cca)[10]["fua"] == 0
        cca = await client.ccr(ccr("s;3", 1, 0, imsi="999990000000000", mscc=[Mscc(10, {})]))
        assert rc(cca) == 5030
        cca = await client.ccr(ccr("s;4", 1, 0, imsi="208010000000003", mscc=[Mscc(10, {})]))
        assert rc(cca) == 4010
        # roaming in a zone the data tariff bars: 4010 for that rating group
        cca = await client.ccr(ccr("s;5", 1, 0, imsi="208010000000001", mscc=[Mscc(10, {})], mcc_mnc="310260"))
        assert msccs(cca)[10]["rc"] == 4010
        cca = await client.ccr(ccr("s;6", 2, 1, mscc=[Mscc(10, {})]))
        assert rc(cca) == 5002


async def test_roaming_draws_only_on_allowances_of_its_zone(tmp_path: Path) -> None:
    """3GPP-SGSN-MCC-MNC picks the zone (chf/core/zones.py): the home-and-EU bundle pays nothing in the US, the EU
    takes at most its fair use of it, and a plan may refuse roaming beyond its allowances."""
    async with running_server(tmp_path) as srv:
        await srv.op(provision(plan="rlah"))
        await srv.op(provision(account="a2", imsi="208010000000002", msisdn=None, plan="rlah-deny"))
        client = await srv.client()
        us = "pgw.test;z;1"
        cca = await client.ccr(ccr(us, 1, 0, imsi="208010000000001", mscc=[Mscc(10, {})], mcc_mnc="310260"))
        assert msccs(cca)[10]["bytes"] == 1_000_000
        cca = await client.ccr(ccr(us, 3, 1, mscc=[Mscc(10, used=[{"bytes": 1_000_000}])]))
        assert rc(cca) == 2001
        assert balance_of(srv, "a1") == 10_000_000 - 200_000  # the world price, not the bundle
        eu = "pgw.test;z;2"
        cca = await client.ccr(ccr(eu, 1, 0, imsi="208010000000001", mscc=[Mscc(10, {})], mcc_mnc="26201"))
        assert msccs(cca)[10]["bytes"] == 1_000_000  # the fair use
        cca = await client.ccr(ccr(eu, 2, 1, mscc=[Mscc(10, {}, used=[{"bytes": 1_000_000}])]))
        assert msccs(cca)[10]["bytes"] == 1_000_000  # from the wallet now, at the (home) price
        cca = await client.ccr(ccr(eu, 3, 2, mscc=[Mscc(10, used=[{"bytes": 1_000_000}])]))
        assert balance_of(srv, "a1") == 10_000_000 - 200_000 - 10_000
        cca = await client.ccr(ccr("pgw.test;z;3", 1, 0, imsi="208010000000002", mscc=[Mscc(10, {})], mcc_mnc="310260"))
        assert rc(cca) == 4010 and msccs(cca)[10]["rc"] == 4010


def _car_accounts(txn, engine, now):  # type: ignore[no-untyped-def]
    """A car maker (postpaid) and a driver (prepaid, 10 EUR) whose account's parent it is, with a line on `car`."""
    provisioning.create_tenant(txn, "t1", "t1", "EUR", now)
    provisioning.create_account(
        txn, engine, account_id="oem", tenant="t1", payment="postpaid", now=now, credit_limit=100_000_000
    )
    provisioning.create_account(
        txn, engine, account_id="drv", tenant="t1", payment="prepaid", now=now, balance=10_000_000, parent="oem"
    )
    return provisioning.add_line(txn, engine, account="drv", imsi="208010000000001", plan="car", now=now)


def _ps_information(apn: str) -> bytes:
    return E("Service-Information").grouped([E("PS-Information").grouped([E("Called-Station-Id").text(apn)])])


async def test_split_billing_routes_usage_to_the_payer_by_apn_and_rating_group(tmp_path: Path) -> None:
    """Called-Station-Id and the rating group pick the payer (chf/core/split.py): one CCR whose rating groups go
    to the driver and to the car maker is reserved and charged against both."""
    async with running_server(tmp_path) as srv:
        await srv.op(_car_accounts)
        client = await srv.client()
        imsi = "208010000000001"
        tele = "pgw.test;car;1"
        extra = [_ps_information("telematics.oem.mnc001.mcc208.gprs")]
        cca = await client.ccr(ccr(tele, 1, 0, imsi=imsi, mscc=[Mscc(10, {})], extra=extra))
        assert msccs(cca)[10]["bytes"] == 1_000_000
        cca = await client.ccr(ccr(tele, 3, 1, mscc=[Mscc(10, used=[{"bytes": 2_000_000}])]))
        assert rc(cca) == 2001
        assert (balance_of(srv, "oem"), balance_of(srv, "drv")) == (-20_000, 10_000_000)
        both = "pgw.test;car;2"
        extra = [_ps_information("internet")]
        cca = await client.ccr(ccr(both, 1, 0, imsi=imsi, mscc=[Mscc(10, {}), Mscc(50, {})], extra=extra))
        assert {rg: m["bytes"] for rg, m in msccs(cca).items()} == {10: 1_000_000, 50: 1_000_000}
        used = [Mscc(10, used=[{"bytes": 1_000_000}]), Mscc(50, used=[{"bytes": 3_000_000}])]
        cca = await client.ccr(ccr(both, 3, 1, mscc=used))
        assert rc(cca) == 2001
        assert (balance_of(srv, "oem"), balance_of(srv, "drv")) == (-50_000, 9_990_000)


@pytest.mark.parametrize(
    ("plan", "action"),
    [("capped", 0), ("redirect", 1), ("restrict", 2)],
)
async def test_final_unit_indication(tmp_path: Path, plan: str, action: int) -> None:
    async with running_server(tmp_path) as srv:
        await srv.op(provision(plan=plan, balance=0))
        client = await srv.client()
        cca = await client.ccr(ccr("f;1", 1, 0, imsi="208010000000001", mscc=[Mscc(10, {})]))
        assert msccs(cca)[10]["bytes"] == 1_000_000 and "fua" not in msccs(cca)[10]
        cca = await client.ccr(ccr("f;1", 2, 1, mscc=[Mscc(10, {}, used=[{"bytes": 1_000_000}])]))
        m = msccs(cca)[10]
        left = 2_500_000 if plan == "capped" else 1_500_000
        assert m["bytes"] == min(1_000_000, left - 1_000_000)
        if plan == "capped":
            assert "fua" not in m
            cca = await client.ccr(ccr("f;1", 2, 2, mscc=[Mscc(10, {}, used=[{"bytes": 1_000_000}])]))
            m = msccs(cca)[10]
            assert m["bytes"] == 500_000
        assert m["fua"] == action
        fui = {a.code: a for a in m["fui"]}  # type: ignore[attr-defined]
        if action == 1:
            server = {a.code: a for a in fui[434].children}
            assert server[433].i32() == 2 and server[435].text() == "https://topup.example.net/"
        if action == 2:
            assert fui[11].text() == "throttle-64k"
            assert fui[438].data == b"permit out ip from any to 192.0.2.1"


async def test_events(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        await srv.op(provision(balance=1_000_000))
        client = await srv.client()
        imsi = "208010000000001"
        # PRICE_ENQUIRY: 2 SMS at 0.08 EUR
        cca = await client.ccr(ccr("e;1", 4, 0, imsi=imsi, requested_action=3, mscc=[Mscc(40, {"events": 2})]))
        assert rc(cca) == 2001
        cost = find(cca.avps, 423).children
        uv = find(cost, 445).children
        assert find(uv, 447).i64() == 160_000 and find(uv, 429).i32() == -6
        assert find(cost, 425).u32() == 978
        # CHECK_BALANCE
        cca = await client.ccr(ccr("e;2", 4, 0, imsi=imsi, requested_action=2, mscc=[Mscc(40, {"events": 1})]))
        assert find(cca.avps, 422).i32() == 0
        # DIRECT_DEBITING one SMS, then a retransmission (same Session-Id + number): charged once
        for _ in range(2):
            cca = await client.ccr(ccr("e;3", 4, 0, imsi=imsi, requested_action=0, mscc=[Mscc(40, {"events": 1})]))
            assert rc(cca) == 2001 and msccs(cca)[40]["events"] == 1
        assert balance_of(srv, "a1") == 1_000_000 - 80_000
        # REFUND_ACCOUNT
        cca = await client.ccr(ccr("e;4", 4, 0, imsi=imsi, requested_action=1, mscc=[Mscc(40, {"events": 1})]))
        assert rc(cca) == 2001
        assert balance_of(srv, "a1") == 1_000_000
        # not enough money for 20 SMS: CHECK_BALANCE says NO_CREDIT, a debit is refused with 4012
        cca = await client.ccr(ccr("e;5", 4, 0, imsi=imsi, requested_action=2, mscc=[Mscc(40, {"events": 20})]))
        assert find(cca.avps, 422).i32() == 1
        cca = await client.ccr(ccr("e;6", 4, 0, imsi=imsi, requested_action=0, mscc=[Mscc(40, {"events": 20})]))
        assert rc(cca) == 4012


def money_of(avps) -> tuple[int, int | None]:  # type: ignore[no-untyped-def]
    """(micro-units, Currency-Code) of the CC-Money among `avps`."""
    money = find(avps, 413).children
    uv = find(money, 445).children
    currency = find(money, 425)
    return find(uv, 447).i64() * 10 ** (find(uv, 429).i32() + 6), currency.u32() if currency is not None else None


def failed_currency(msg) -> int:  # type: ignore[no-untyped-def]
    return find(find(msg.avps, 279).children, 425).u32()


async def test_money_in_another_currency_is_refused_never_charged(tmp_path: Path) -> None:
    """CC-Money's Currency-Code (RFC 4006 8.22, 8.11): money in the account's currency is charged, and the CCA
    names that currency; money in another is refused with 5031 and the Currency-Code as Failed-AVP, and changes
    nothing (no rule converts currencies), whether reported, requested, debited or mixed in one CCR."""
    eur, usd = 978, 840
    async with running_server(tmp_path) as srv:
        await srv.op(provision(plan="wallet"))
        client = await srv.client()
        imsi = "208010000000001"
        cca = await client.ccr(ccr("m;1", 1, 0, imsi=imsi, mscc=[Mscc(7, {"money": 1_000_000, "currency": eur})]))
        assert rc(cca) == 2001
        [mscc] = find_all(cca.avps, 456)
        assert money_of(find(mscc.children, 431).children) == (1_000_000, eur)

        def reserved() -> int:
            with srv.service.read() as txn:
                return int(txn.get_account("a1").reserved)  # type: ignore[union-attr]

        assert (balance_of(srv, "a1"), reserved()) == (10_000_000, 1_000_000)
        with srv.service.read() as txn:
            events = len(list(txn.events()))
        refused = [
            ccr("m;1", 2, 1, mscc=[Mscc(7, {}, used=[{"money": 500_000, "currency": usd}])]),
            ccr("m;1", 2, 1, mscc=[Mscc(7, {"money": 500_000, "currency": usd})]),
            ccr("m;2", 4, 0, imsi=imsi, requested_action=0, mscc=[Mscc(7, {"money": 500_000, "currency": usd})]),
            ccr("m;3", 4, 0, imsi=imsi, requested_action=1, mscc=[Mscc(7, {"money": 500_000, "currency": usd})]),
            ccr("m;4", 4, 0, imsi=imsi, requested_action=3, mscc=[Mscc(7, {"money": 500_000, "currency": usd})]),
            ccr(
                "m;5",
                4,
                0,
                imsi=imsi,
                requested_action=0,
                mscc=[Mscc(7, {"money": 1, "currency": eur}), Mscc(8, {"money": 1, "currency": usd})],
            ),
        ]
        for request in refused:
            cca = await client.ccr(request)
            assert rc(cca) == 5031 and failed_currency(cca) == usd
        unassigned = ccr("m;6", 4, 0, imsi=imsi, requested_action=0, mscc=[Mscc(7, {"money": 1, "currency": 1})])
        cca = await client.ccr(unassigned)
        assert rc(cca) == 5031 and failed_currency(cca) == 1
        assert (balance_of(srv, "a1"), reserved()) == (10_000_000, 1_000_000)
        with srv.service.read() as txn:
            assert len(list(txn.events())) == events
        # The session goes on in the account's currency, named or not.
        used = [{"money": 400_000, "currency": eur}, {"money": 100_000}]
        cca = await client.ccr(ccr("m;1", 2, 1, mscc=[Mscc(7, {"money": 1_000_000}, used=used)]))
        assert rc(cca) == 2001
        [mscc] = find_all(cca.avps, 456)
        assert money_of(find(mscc.children, 431).children) == (1_000_000, eur)
        assert (balance_of(srv, "a1"), reserved()) == (9_500_000, 1_000_000)


async def test_duplicates_by_end_to_end_id_and_after_restart(tmp_path: Path) -> None:
    imsi = "208010000000001"
    async with running_server(tmp_path) as srv:
        await srv.op(provision())
        client = await srv.client()
        await client.ccr(ccr("d;1", 1, 0, imsi=imsi, mscc=[Mscc(10, {})]))
        update = ccr("d;1", 2, 1, mscc=[Mscc(10, {}, used=[{"bytes": 1_000_000}])])
        first = await client.ccr(update, e2e=777)
        # the same End-to-End id with the T flag, twice at once and once after: one charge
        answers = await asyncio.gather(
            client.ccr(update, e2e=777, flags=0x80 | 0x40 | 0x10), client.ccr(update, e2e=777, flags=0xD0)
        )
        for a in answers:
            assert a.buf[20:] == first.buf[20:]
        # the same Session-Id + CC-Request-Number with a new End-to-End id: the core's stored answer
        again = await client.ccr(update)
        assert msccs(again) == msccs(first)
        assert balance_of(srv, "a1") == 10_000_000 - 10_000
    async with running_server(tmp_path) as srv:
        client = await srv.client()
        again = await client.ccr(update)
        assert rc(again) == 2001 and msccs(again)[10]["bytes"] == msccs(first)[10]["bytes"]
        assert balance_of(srv, "a1") == 10_000_000 - 10_000


async def test_concurrent_updates_of_one_session(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        await srv.op(provision())
        client = await srv.client()
        await client.ccr(ccr("c;1", 1, 0, imsi="208010000000001", mscc=[Mscc(10, {}), Mscc(11, {}), Mscc(12, {})]))
        # after a re-auth the PGW reports every rating group at once, each in its own CCR-U
        answers = await asyncio.gather(
            *[client.ccr(ccr("c;1", 2, n, mscc=[Mscc(9 + n, {}, used=[{"bytes": 1000}])])) for n in (1, 2, 3)]
        )
        for n, a in zip((1, 2, 3), answers, strict=True):
            assert rc(a) == 2001 and msccs(a)[9 + n]["rc"] == 2001
        assert balance_of(srv, "a1") == 10_000_000 - 3 * 10_000


async def test_reauth_after_topup_and_abort_after_suspension(tmp_path: Path) -> None:
    from chf.core import provisioning

    async with running_server(tmp_path) as srv:
        await srv.op(provision(balance=15_000))
        client = await srv.client()
        cca = await client.ccr(ccr("r;1", 1, 0, imsi="208010000000001", mscc=[Mscc(10, {})]))
        assert rc(cca) == 2001 and msccs(cca)[10]["bytes"] == 1_000_000
        cca = await client.ccr(ccr("r;1", 2, 1, mscc=[Mscc(10, {}, used=[{"bytes": 1_000_000}])]))
        assert msccs(cca)[10]["rc"] == 4012 and msccs(cca)[10]["fua"] == 0  # 5,000 left: not a whole MB
        await srv.service.operate(
            lambda txn, engine, now: provisioning.topup(txn, engine, "a1", 5_000_000, now=now, actor="t", reason="shop")
        )
        rar = await asyncio.wait_for(client.server_requests.get(), 5)
        assert rar.code == 258 and rar.is_request
        assert find(rar.avps, 285).i32() == 0 and find(rar.avps, 258).u32() == 4
        assert find(rar.avps, 293).data == b"pgw.test" and find(rar.avps, 283).data == b"test"
        # the client asks again and now gets quota
        session = find(rar.avps, 263).text()
        assert session == "r;1"
        cca = await client.ccr(ccr(session, 2, 2, mscc=[Mscc(10, {})]))
        assert rc(cca) == 2001 and msccs(cca)[10]["bytes"] == 1_000_000
        await srv.service.operate(
            lambda txn, engine, now: provisioning.set_state(
                txn, engine, "208010000000001", "suspended", now=now, actor="t", reason="fraud"
            )
        )
        asr = await asyncio.wait_for(client.server_requests.get(), 5)
        assert asr.code == 274 and find(asr.avps, 263).text() == session
        await asyncio.sleep(0.1)
        assert srv.gy.pending_signals == {}  # both answers were matched
