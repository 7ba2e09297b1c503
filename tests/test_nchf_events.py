"""Nchf one-time events over the wire (TS 32.290, TS 32.291 oneTimeEvent / oneTimeEventType; README "Nchf").

IEC (Immediate Event Charging): the create is the debit; PEC (Post Event Charging): the create reports units
delivered, charged once; neither leaves a charging data resource open for the reaper to free. Event charging with
unit reservation (ECUR) is a create without oneTimeEvent that reserves and a release that debits. Every response
is checked against the 3GPP OpenAPI (tests/nchf_harness.py). An SMS (rating group 40) costs 0.08 EUR on "basic".
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import nchf_harness
from tests.nchf_harness import IMSI, IMSI_SUSPENDED, Chf, request_body, start_chf, stop_chf, usage
from tests.nchf_openapi import specs_or_skip


@pytest.fixture(autouse=True)
def store_backend(open_store: Any) -> Iterator[None]:
    """Every test here runs on LMDB and on the Redis cluster (tests/conftest.py: open_store)."""
    nchf_harness.STORE_OPENER = open_store
    yield
    nchf_harness.STORE_OPENER = None


SMS = 80_000
WALLET = 5_000_000


@pytest.fixture
async def chf(tmp_path: Path) -> AsyncIterator[Chf]:
    specs_or_skip()
    running = await start_chf(tmp_path)
    try:
        yield running
    finally:
        await stop_chf(running)


def one_time(kind: str | None, units: list[dict[str, Any]], *, imsi: str = IMSI, number: int = 0) -> dict[str, Any]:
    """A create of an SMSF for a one-time event of `kind` (None: oneTimeEvent without a type)."""
    body = request_body(number, supi="imsi-" + imsi, units=units, plmn=None)
    body["nfConsumerIdentification"]["nodeFunctionality"] = "SMSF"
    body["oneTimeEvent"] = True
    if kind is not None:
        body["oneTimeEventType"] = kind
    return body


def sms_requested(count: int = 1) -> dict[str, Any]:
    return {"ratingGroup": 40, "requestedUnit": {"serviceSpecificUnits": count}}


def sms_delivered(count: int = 1) -> dict[str, Any]:
    return usage(40, {"serviceSpecificUnits": count}, request=False)


def session_of(chf: Chf, ref: str) -> Any:
    with chf.store.read() as txn:
        return txn.get_session("nchf:" + ref)


async def test_iec_debits_once_and_leaves_nothing_to_reap(chf: Chf) -> None:
    client = await chf.client()
    body = one_time("IEC", [sms_requested()])
    created = await chf.call(client, "create", body)
    assert created.status == 201, created.body
    [mui] = created.body["multipleUnitInformation"]
    assert (mui["resultCode"], mui["grantedUnit"]) == ("SUCCESS", {"serviceSpecificUnits": 1})
    assert chf.wallet("acct-a") == (WALLET - SMS, 0)  # debited, nothing held
    assert session_of(chf, created.ref) is None  # no charging session stays open
    # A retransmission, byte for byte or flagged as one: the same answer, no second debit.
    again = await chf.call(client, "create", body)
    flagged = await chf.call(client, "create", {**body, "retransmissionIndicator": True})
    for response in (again, flagged):
        assert response.status == 201 and response.ref == created.ref
        assert response.body["multipleUnitInformation"] == created.body["multipleUnitInformation"]
    assert chf.wallet("acct-a") == (WALLET - SMS, 0)
    # Nothing to update, release or reap: the reaper, long after, finds nothing and frees nothing.
    for operation in ("update", "release"):
        answer = await chf.call(client, operation, request_body(1, units=[sms_requested()]), created.ref)
        assert answer.status == 404 and answer.body["cause"] == "CONTEXT_NOT_FOUND"
    later = chf.service.now() + 365 * 86_400
    expired, _ = chf.service.sweep_slice_once(later)
    assert "nchf:" + created.ref not in expired
    engine = chf.service.engine
    assert not await chf.store.submit(lambda txn: engine.reap(txn, "nchf:" + created.ref, later))
    assert chf.wallet("acct-a") == (WALLET - SMS, 0)
    # Each IEC is its own debit: another SMS (another invocationTimeStamp) is charged again.
    other = await chf.call(client, "create", {**body, "invocationTimeStamp": "2026-11-22T10:00:01Z"})
    assert other.status == 201 and other.ref != created.ref
    assert chf.wallet("acct-a") == (WALLET - 2 * SMS, 0)
    await client.close()


async def test_iec_refusals_change_nothing(chf: Chf) -> None:
    client = await chf.client()
    # 100 SMS cost 8 EUR, the wallet holds 5: refused whole.
    broke = await chf.call(client, "create", one_time("IEC", [sms_requested(100)]))
    assert broke.status == 403 and broke.body["cause"] == "QUOTA_LIMIT_REACHED"
    suspended = await chf.call(client, "create", one_time("IEC", [sms_requested()], imsi=IMSI_SUSPENDED))
    assert suspended.status == 403 and suspended.body["cause"] == "END_USER_REQUEST_DENIED"
    assert chf.wallet("acct-a") == (WALLET, 0) and chf.wallet("acct-s") == (WALLET, 0)
    await client.close()


async def test_pec_charges_the_delivered_units_once(chf: Chf) -> None:
    client = await chf.client()
    body = one_time("PEC", [sms_delivered(2)])
    created = await chf.call(client, "create", body)
    assert created.status == 201, created.body
    assert created.body["multipleUnitInformation"][0]["resultCode"] == "SUCCESS"
    assert chf.wallet("acct-a") == (WALLET - 2 * SMS, 0)
    assert session_of(chf, created.ref) is None
    again = await chf.call(client, "create", body)
    assert again.status == 201 and again.ref == created.ref
    assert chf.wallet("acct-a") == (WALLET - 2 * SMS, 0)
    await client.close()


async def test_one_time_events_the_spec_does_not_allow_are_refused_naming_the_field(chf: Chf) -> None:
    client = await chf.client()
    cases = [
        (one_time(None, [sms_requested()]), "/oneTimeEventType"),
        (one_time("XYZ", [sms_requested()]), "/oneTimeEventType"),
        # A PEC reports what was delivered: a request for units is not one.
        (one_time("PEC", [sms_requested()]), "/multipleUnitUsage/0/usedUnitContainer"),
        ({**request_body(0, units=[sms_requested()]), "oneTimeEventType": "IEC"}, "/oneTimeEventType"),
    ]
    for body, pointer in cases:
        refused = await chf.call(client, "create", body)
        assert refused.status == 400 and refused.body["cause"] == "CHARGING_FAILED", refused.body
        assert [p["param"] for p in refused.body["invalidParams"]] == [pointer]
    assert chf.wallet("acct-a") == (WALLET, 0)
    await client.close()


async def test_event_charging_with_unit_reservation_reserves_then_debits_on_release(chf: Chf) -> None:
    """ECUR (TS 32.290): a create without oneTimeEvent reserves the SMS, the release debits what was delivered."""
    client = await chf.client()
    created = await chf.call(client, "create", request_body(0, units=[sms_requested()], plmn=None))
    assert created.status == 201
    assert created.body["multipleUnitInformation"][0]["grantedUnit"] == {"serviceSpecificUnits": 1}
    assert chf.wallet("acct-a") == (WALLET, SMS)  # held, not debited
    released = await chf.call(client, "release", request_body(1, units=[sms_delivered()], plmn=None), created.ref)
    assert released.status == 204
    assert chf.wallet("acct-a") == (WALLET - SMS, 0)
    await client.close()
