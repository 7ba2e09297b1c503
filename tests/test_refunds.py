"""REFUND_ACCOUNT returns what a debit took, once, where it came from (README "Refunds", chf/core/events.py).

Over the Gy wire (where the audit found refunds creating money) and on the engine with the small catalogue of
tests/corekit.py: an SMS costs 50 micro-units on "payg"; "fam" has 5 SMS a month in the line's allowance.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chf.core import provisioning
from chf.core.engine import EngineConfig
from chf.core.model import DIRECT_DEBITING, PRICE_ENQUIRY, RATING_FAILED, REFUND_ACCOUNT, SUCCESS, ChargingAnswer
from gy.client import Mscc, ccr_avps
from gy.codec import Avp, Message, find, find_all
from tests.corekit import World, check_invariants, event, snapshot
from tests.gy_support import Running, balance_of, line_buckets, provision, running_server

DAY = 86_400
IMSI = "208010000000001"
IMSI_TERMINATED = "208010000000002"


# ------------------------------------------------------------------------------------------------------------------
# Over the Gy wire
# ------------------------------------------------------------------------------------------------------------------
def ccr(session: str, imsi: str, action: int, rating_group: int = 40) -> list[bytes]:
    """A CCR-Event with Requested-Action `action` (0 DIRECT_DEBITING, 1 REFUND_ACCOUNT) for one SMS."""
    return ccr_avps(
        session,
        4,
        0,
        origin_host="pgw.test",
        origin_realm="test",
        imsi=imsi,
        requested_action=action,
        mscc=[Mscc(rating_group, {"events": 1})],
    )


def avp(avps: list[Avp], code: int) -> Avp:
    found = find(avps, code)
    assert found is not None, f"no AVP {code}"
    return found


def result(msg: Message) -> tuple[int, int, int | None]:
    """(Result-Code, the MSCC's Result-Code, its granted CC-Service-Specific-Units)."""
    [mscc] = find_all(msg.avps, 456)
    gsu = find(mscc.children, 431)
    granted = avp(gsu.children, 417).u64() if gsu is not None else None
    return avp(msg.avps, 268).u32(), avp(mscc.children, 268).u32(), granted


def sms_left(srv: Running, imsi: str) -> int:
    [bucket] = [b for b in line_buckets(srv, imsi) if b.name == "sms"]
    return int(bucket.remaining)


async def test_refund_account_over_gy_returns_the_debited_sms_once(tmp_path: Path) -> None:
    """One SMS debited from the allowance (0 EUR), then three REFUND_ACCOUNT: the allowance gets its SMS back
    once and the wallet never rises; the same on a line terminated after the debit. The second and third refund
    get 5031 DIAMETER_RATING_FAILED with the rating group in Failed-AVP, and change nothing."""
    async with running_server(tmp_path) as srv:
        await srv.op(provision(plan="sms-bundle", balance=1_000_000))
        await srv.op(
            provision(account="a2", imsi=IMSI_TERMINATED, msisdn="33600000002", plan="sms-bundle", balance=1_000_000)
        )
        client = await srv.client()
        lines = ((IMSI, "a1"), (IMSI_TERMINATED, "a2"))
        for imsi, account in lines:
            debit = await client.ccr(ccr(f"debit;{imsi}", imsi, 0))
            assert result(debit) == (2001, 2001, 1)
            assert (sms_left(srv, imsi), balance_of(srv, account)) == (9, 1_000_000)
        await srv.op(
            lambda txn, engine, now: provisioning.set_state(
                txn, engine, IMSI_TERMINATED, "terminated", now=now, actor="test", reason="test"
            )
        )
        for imsi, account in lines:
            first = await client.ccr(ccr(f"refund;{imsi};1", imsi, 1))
            assert result(first) == (2001, 2001, 1)
            again = await client.ccr(ccr(f"refund;{imsi};1", imsi, 1))  # a retransmission: the same answer
            assert result(again) == (2001, 2001, 1)
            for n in (2, 3):
                refused = await client.ccr(ccr(f"refund;{imsi};{n}", imsi, 1))
                assert result(refused) == (5031, 5031, None)
                [failed] = avp(refused.avps, 279).children
                assert failed.code == 456 and avp(failed.children, 432).u32() == 40
            assert (sms_left(srv, imsi), balance_of(srv, account)) == (10, 1_000_000)
        # Each refund is an event naming the debit it reverses.
        with srv.service.read() as txn:
            events = list(txn.events())
        debits = {e["id"] for e in events if e["kind"] == "usage"}
        refunds = [e for e in events if e["kind"] == "refund"]
        assert len(debits) == 2 and {e["reverses"] for e in refunds} == debits and len(refunds) == 2
        for e in refunds:
            [impact] = e["impacts"]
            assert impact["balance"].endswith(":bucket:1") and impact["delta"] == 1
        # A line never debited has nothing to refund; a rating group never debited neither.
        cca = await client.ccr(ccr("refund;other-rg", IMSI, 1, rating_group=20))
        assert result(cca)[:2] == (5031, 5031)
        assert balance_of(srv, "a1") == 1_000_000


# ------------------------------------------------------------------------------------------------------------------
# On the engine
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "store", config=EngineConfig(refund_window=30 * DAY))
    w.tenant()
    yield w
    w.close()


def refund(world: World, key: str, imsi: str, units: int) -> ChargingAnswer:
    return world.charge(event(key, imsi, REFUND_ACCOUNT, amount={"events": units}))


def granted(answer: ChargingAnswer) -> tuple[str, int | None]:
    return answer.result, answer.units[0].granted


def last_events(world: World, seq: int) -> list[dict[str, Any]]:
    return world.events(seq)


def test_money_goes_back_newest_debit_first_never_more_than_was_taken(world: World) -> None:
    world.account("a", balance=10_000)
    _, imsi = world.line("a", plan="payg")
    d1 = world.charge(event("d1", imsi, DIRECT_DEBITING, amount={"events": 3}))
    d2 = world.charge(event("d2", imsi, DIRECT_DEBITING, amount={"events": 1}))
    assert (d1.cost, d2.cost, world.acct("a").balance) == (150, 50, 9_800)
    debit_ids = [e["id"] for e in world.events() if e["kind"] == "usage"]
    seq = world.last_seq()
    # Two SMS back: the newest debit's one (50), then one of the first debit's three (150 / 3).
    back = refund(world, "r1", imsi, 2)
    assert granted(back) == (SUCCESS, 2) and back.cost == 100 and world.acct("a").balance == 9_900
    assert [(e["reverses"], e["used"], e["charge"]) for e in last_events(world, seq)] == [
        (debit_ids[1], -1, -50),
        (debit_ids[0], -1, -50),
    ]
    # Five asked, two left to refund: two granted, exactly the rest of the money.
    back = refund(world, "r2", imsi, 5)
    assert granted(back) == (SUCCESS, 2) and back.cost == 100 and world.acct("a").balance == 10_000
    # Nothing left: RATING_FAILED, and nothing changes (an answer kept for replay aside).
    with world.store.read() as txn:
        before = snapshot(txn)
    back = refund(world, "r3", imsi, 1)
    assert (
        back.result == RATING_FAILED
        and back.units[0].result == RATING_FAILED
        and "nothing to refund" in (back.detail or "")
    )
    with world.store.read() as txn:
        assert snapshot(txn) == before
        check_invariants(txn)


def test_units_go_back_to_their_allowance_and_the_wallet_share_first(world: World) -> None:
    world.account("f", payment="postpaid", credit_limit=100_000)
    line, imsi = world.line("f", plan="fam")
    [sms] = [b for b in world.line_buckets(line) if b.name == "sms"]
    balance = world.acct("f").balance
    # Seven SMS: five from the allowance, two from the wallet.
    debit = world.charge(event("d1", imsi, DIRECT_DEBITING, amount={"events": 7}))
    assert debit.cost == 100 and world.acct("f").balance == balance - 100
    # Three back: the wallet's two first (the last taken), then one to the allowance.
    back = refund(world, "r1", imsi, 3)
    assert granted(back) == (SUCCESS, 3) and world.acct("f").balance == balance
    [after] = [b for b in world.line_buckets(line) if b.id == sms.id]
    assert after.remaining == 1
    with world.store.read() as txn:
        bs = txn.get_line_balances(line)
        assert bs is not None and bs.usage[40] == 4  # the tiers count what is still used
        check_invariants(txn)


def test_an_expired_allowance_or_an_old_debit_is_not_refunded(world: World) -> None:
    world.account("f", payment="postpaid", credit_limit=100_000)
    line, imsi = world.line("f", plan="fam")
    assert world.charge(event("d1", imsi, DIRECT_DEBITING)).cost == 0  # from the allowance
    # The period ends: that allowance expired with it, a new one is granted. The SMS is not refunded, in units
    # or in money.
    world.now += 31 * DAY
    world.charge(event("p1", imsi, PRICE_ENQUIRY))  # the line is brought up to date: the new period's fee
    balance = world.acct("f").balance
    assert refund(world, "r1", imsi, 1).result == RATING_FAILED
    assert world.acct("f").balance == balance
    assert [b.remaining for b in world.line_buckets(line) if b.name == "sms"] == [5]
    # A debit older than the refund window is not refunded either.
    world.account("a", balance=10_000)
    _, payg = world.line("a", plan="payg")
    world.charge(event("d2", payg, DIRECT_DEBITING))
    world.now += 30 * DAY + 1
    assert refund(world, "r2", payg, 1).result == RATING_FAILED
    assert world.acct("a").balance == 10_000 - 50


def test_no_refund_after_the_line_moved_or_with_the_window_off(world: World, tmp_path: Path) -> None:
    world.account("a", balance=10_000)
    world.account("b", balance=10_000)
    _, imsi = world.line("a", plan="payg")
    world.charge(event("d1", imsi, DIRECT_DEBITING))
    world.admin(provisioning.move_line, imsi, "b", actor="test", reason="test")
    # The money went to account a's wallet: it is not credited to b, nor taken back by a refund on b.
    assert refund(world, "r1", imsi, 1).result == RATING_FAILED
    assert (world.acct("a").balance, world.acct("b").balance) == (9_950, 10_000)
    off = World(tmp_path / "off", config=EngineConfig(refund_window=0))
    off.tenant()
    off.account("a", balance=10_000)
    _, imsi = off.line("a", plan="payg")
    off.charge(event("d1", imsi, DIRECT_DEBITING))
    assert refund(off, "r1", imsi, 1).result == RATING_FAILED
    assert off.acct("a").balance == 9_950
    off.close()


def test_debits_out_of_the_window_are_deleted(world: World) -> None:
    world.account("a", balance=10_000)
    line, imsi = world.line("a", plan="payg")
    world.charge(event("d1", imsi, DIRECT_DEBITING))
    world.now += 31 * DAY
    world.charge(event("d2", imsi, DIRECT_DEBITING))  # drops the first, out of the window
    with world.store.read() as txn:
        assert [d.time for d in txn.debits(line, 40)] == [world.now]
    world.now += 31 * DAY
    assert world.write(lambda txn: txn.purge_debits(world.now - 30 * DAY, 100)) == 1
    with world.store.read() as txn:
        assert txn.debits(line, 40) == []
