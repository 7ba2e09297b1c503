"""A real charging function for the Nchf tests: LMDB on disk, the charging service with its group-commit writer,
the Nchf server on an ephemeral port of 127.0.0.1, provisioned through chf.provisioning."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chf.core import provisioning
from chf.core.catalogue_loader import parse_catalogue
from chf.runtime.service import ChargingService
from nchf.client import H2Client
from nchf.component import NchfComponent
from nchf.config import NchfSettings
from store.lmdbstore import Store
from tests.nchf_openapi import check_response
from tests.support import fixture_text

API = "/nchf-convergedcharging/v3"

CATALOGUE = fixture_text("nchf.toml")

IMSI = "001010000000001"
MSISDN = "33600000001"
IMSI_CAPPED = "001010000000002"
IMSI_BROKE = "001010000000003"
IMSI_SUSPENDED = "001010000000004"


def request_body(
    number: int,
    *,
    supi: str | None = "imsi-" + IMSI,
    units: list[dict[str, Any]] | None = None,
    notify_uri: str | None = None,
    plmn: tuple[str, str] | None = ("208", "01"),
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "nfConsumerIdentification": {"nodeFunctionality": "SMF", "nFName": "8bd2d3b4-5c7a-4a7a-9f3c-1c2d3e4f5a6b"},
        "invocationTimeStamp": "2026-11-22T10:00:00Z",
        "invocationSequenceNumber": number,
    }
    if supi is not None:
        body["subscriberIdentifier"] = supi
    if notify_uri is not None:
        body["notifyUri"] = notify_uri
    if units is not None:
        body["multipleUnitUsage"] = units
    if plmn is not None:
        body["pDUSessionChargingInformation"] = {
            "pduSessionInformation": {
                "pduSessionID": 1,
                "dnnId": "internet",
                "ratType": "NR",
                "servingCNPlmnId": {"mcc": plmn[0], "mnc": plmn[1]},
            }
        }
    return body


def usage(
    rating_group: int, used: dict[str, int] | None = None, *, request: bool = True, final: bool = False, seq: int = 1
) -> dict[str, Any]:
    item: dict[str, Any] = {"ratingGroup": rating_group}
    if request:
        item["requestedUnit"] = {}
    if used is not None:
        container: dict[str, Any] = {"localSequenceNumber": seq, **used}
        if final:
            container["triggers"] = [{"triggerType": "FINAL", "triggerCategory": "IMMEDIATE_REPORT"}]
        item["usedUnitContainer"] = [container]
    return item


@dataclass
class Result:
    status: int
    headers: dict[str, str]
    body: Any
    raw: bytes

    @property
    def ref(self) -> str:
        return self.headers["location"].rsplit("/", 1)[1]


@dataclass
class Chf:
    store: Store
    service: ChargingService
    component: NchfComponent
    lines: dict[str, int] = field(default_factory=dict)
    loop: Any = None  # the server's event loop, when it runs in another thread

    @property
    def port(self) -> int:
        return self.component.port

    async def client(self) -> H2Client:
        return await H2Client.connect("127.0.0.1", self.port)

    async def call(
        self,
        client: H2Client,
        operation: str,
        body: Any,
        ref: str | None = None,
        *,
        headers: list[tuple[str, str]] | None = None,
        raw: bytes | None = None,
    ) -> Result:
        path = f"{API}/chargingdata" if operation == "create" else f"{API}/chargingdata/{ref}/{operation}"
        payload = raw if raw is not None else json.dumps(body).encode()
        response = await client.post_json(path, payload, headers)
        decoded = check_response(operation, response.status, response.headers, response.body)
        return Result(response.status, response.headers, decoded, response.body)

    def bucket(self, imsi: str, name: str = "data") -> tuple[int, int]:
        """(remaining, reserved) of a line's bucket."""
        with self.store.read() as txn:
            bs = txn.get_line_balances(self.lines[imsi])
            assert bs is not None
            b = next(b for b in bs.buckets if b.name == name)
            return b.remaining, b.reserved

    def wallet(self, account: str) -> tuple[int, int]:
        with self.store.read() as txn:
            acct = txn.get_account(account)
            assert acct is not None
            return acct.balance, acct.reserved


# Opens the store of `start_chf` when set (a test module running on the Redis cluster too); else LMDB.
STORE_OPENER: Any = None


async def start_chf(tmp_path: Path, settings: NchfSettings | None = None) -> Chf:
    store = STORE_OPENER("chf") if STORE_OPENER is not None else Store(tmp_path / "chf.lmdb", map_size=64 << 20)
    service = ChargingService(store, parse_catalogue(CATALOGUE, "test-catalogue.toml"))
    await service.start()

    def op(fn: Any) -> Any:
        return service.operate(fn)

    await op(lambda txn, engine, now: provisioning.create_tenant(txn, "mvno", "Test MVNO", "EUR", now))
    accounts = [
        ("acct-a", 5_000_000, "basic"),
        ("acct-capped", 0, "capped"),
        ("acct-broke", 0, "basic"),
        ("acct-s", 5_000_000, "basic"),
    ]
    for account, balance, _plan in accounts:
        await op(
            lambda txn, engine, now, a=account, b=balance: provisioning.create_account(
                txn, engine, account_id=a, tenant="mvno", payment="prepaid", now=now, balance=b
            )
        )
    chf_lines: dict[str, int] = {}
    for imsi, account, plan, msisdn in [
        (IMSI, "acct-a", "basic", MSISDN),
        (IMSI_CAPPED, "acct-capped", "capped", None),
        (IMSI_BROKE, "acct-broke", "capped", None),
        (IMSI_SUSPENDED, "acct-s", "basic", None),
    ]:
        result = await op(
            lambda txn, engine, now, i=imsi, a=account, p=plan, m=msisdn: provisioning.add_line(
                txn, engine, account=a, imsi=i, now=now, msisdn=m, plan=p
            )
        )
        chf_lines[imsi] = result.value["id"]
    # The broke line has used its whole allowance (an audited adjustment of its bucket): nothing to grant.
    broke = chf_lines[IMSI_BROKE]
    with store.read() as txn:
        bs = txn.get_line_balances(broke)
    assert bs is not None
    bucket = bs.buckets[0].id
    await op(
        lambda txn, engine, now: provisioning.adjust(
            txn,
            engine,
            "acct-broke",
            -15_000_000,
            now=now,
            actor="test",
            reason="used up",
            line_id=broke,
            bucket_id=bucket,
        )
    )
    await op(
        lambda txn, engine, now: provisioning.set_state(
            txn, engine, IMSI_SUSPENDED, "suspended", now=now, actor="test", reason="test"
        )
    )
    component = NchfComponent(service, settings or NchfSettings(port=0))
    await component.start()
    return Chf(store, service, component, chf_lines)


async def stop_chf(chf: Chf) -> None:
    await chf.component.stop()
    await chf.service.stop()
    chf.store.close()
