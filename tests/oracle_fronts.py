"""The charging function as the oracle (tests/test_properties.py) drives it: the charging service on a store of its
own with a clock the test moves, and requests as the front-ends make them (Nchf through nchf.mapping)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from chf.core.catalogue import Catalogue
from chf.core.engine import EngineConfig
from chf.core.model import (
    EVENT,
    INITIAL,
    TERMINATE,
    ChargingAnswer,
    ChargingRequest,
    OpResult,
    RequestError,
    UnitRequest,
    UsageReport,
)
from chf.core.versions import CatalogueVersions
from chf.runtime.service import ChargingService
from nchf.mapping import parse_request, to_charging_request
from store.lmdbstore import Store
from tests.corekit import T0

UNIT_OF = {10: "bytes", 11: "bytes", 20: "seconds", 30: "bytes", 40: "events"}
NCHF_FIELD = {
    "bytes": "totalVolume",
    "bytes_in": "uplinkVolume",  # from the UE: Gy's CC-Input-Octets
    "bytes_out": "downlinkVolume",  # to the UE: Gy's CC-Output-Octets
    "seconds": "time",
    "events": "serviceSpecificUnits",
}
# Stores live in memory where there is a tmpfs: these tests never lose power, and a sync per example costs more
# than the example's own work.
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class System:
    """The charging service on a store in a temporary directory, on an event loop of its own, with a clock that
    moves only when the test moves it. Requests go through `ChargingService.charge_then` (the front-ends' port,
    group commit included); management operations through `ChargingService.operate`."""

    def __init__(self, path: Path, catalogue: Catalogue | CatalogueVersions) -> None:
        self.now = T0
        self.loop = asyncio.new_event_loop()
        # Durability "os": these tests never lose power, and fsync per step would make shrinking crawl. Two kept
        # answers per session (default 4): retransmissions older than the kept answers come up often.
        self.store = Store(path, durability="os", sync_interval=3600, map_size=256 << 20)
        self.service = ChargingService(
            self.store, catalogue, engine_config=EngineConfig(answers_kept=2), clock=lambda: self.now, sweep_slice=5
        )
        self.store.start(self.loop)

    def close(self) -> None:
        self.loop.run_until_complete(self.store.stop())
        self.store.close()
        self.loop.close()

    @property
    def engine(self) -> Any:
        return self.service.engine

    def charge(self, requests: list[ChargingRequest]) -> list[ChargingAnswer | BaseException]:
        """Submit requests together (one group commit) and wait for their answers (or the errors refusing them)."""
        futures = []
        for request in requests:
            future: asyncio.Future[Any] = self.loop.create_future()
            self.service.charge_then(request, future.set_result)
            futures.append(future)
        return list(self.loop.run_until_complete(asyncio.gather(*futures)))

    def operate(self, fn: Any, *args: Any, **kwargs: Any) -> OpResult | RequestError:
        """A chf.core.provisioning function (txn, engine, ..., now=...), durably; its refusal is returned."""

        def op(txn: Any, engine: Any, now: int) -> OpResult:
            result: OpResult = fn(txn, engine, *args, now=now, **kwargs)
            return result

        try:
            return self.loop.run_until_complete(self.service.operate(op))
        except RequestError as exc:
            return exc

    def sweep(self) -> None:
        """One whole pass of the service's sweeper: renewals of idle owners, reaper, purge of closed sessions."""
        passes = self.service.sweeps
        for _ in range(10_000):
            self.loop.run_until_complete(self.service._sweep_step())
            if self.service.sweeps > passes:
                return


def gy_request(kind: str, key: str, number: int, imsi: str, units: list[UnitRequest], **kw: Any) -> ChargingRequest:
    return ChargingRequest(kind, "gy:" + key, number, [("imsi", imsi)], units, notify=["pgw.test", "test"], **kw)


def nchf_request(
    kind: str, ref: str, number: int, imsi: str, units: list[UnitRequest], network: str | None = None
) -> ChargingRequest:
    """The ChargingRequest nchf/ makes of a ChargingDataRequest with these units (through its own mapping)."""
    usage = []
    for u in units:
        item: dict[str, Any] = {"ratingGroup": u.rating_group}
        if u.requested is not None:
            item["requestedUnit"] = {NCHF_FIELD[k]: v for k, v in u.requested.items()}
        containers = []
        for n, report in enumerate(u.used):
            container: dict[str, Any] = {NCHF_FIELD[k]: v for k, v in report.units.items()}
            container["localSequenceNumber"] = n
            if report.reason == "final" or kind == TERMINATE:
                container["triggers"] = [{"triggerType": "FINAL", "triggerCategory": "IMMEDIATE_REPORT"}]
            containers.append(container)
        if containers:
            item["usedUnitContainer"] = containers
        usage.append(item)
    body: dict[str, Any] = {
        "nfConsumerIdentification": {"nodeFunctionality": "SMF"},
        "invocationTimeStamp": "2026-03-04T12:00:00Z",
        "invocationSequenceNumber": number,
        "subscriberIdentifier": f"imsi-{imsi}",
        "multipleUnitUsage": usage,
        "notifyUri": "http://smf.test/notify",
    }
    if network is not None:
        body["pDUSessionChargingInformation"] = {
            "pduSessionInformation": {"servingCNPlmnId": {"mcc": network[:3], "mnc": network[3:]}}
        }
    parsed = parse_request(body, creating=kind == INITIAL)
    return to_charging_request(parsed, kind, "nchf:" + ref, number, notify=parsed.notify_uri)


def nchf_event(ref: str, imsi: str, kind: str, rg: int, amount: dict[str, int]) -> ChargingRequest:
    """An Nchf one-time event create (IEC: the units asked for; PEC: the units delivered), as nchf/ maps it."""
    units = {NCHF_FIELD[k]: v for k, v in amount.items()}
    usage: dict[str, Any] = {"ratingGroup": rg}
    if kind == "IEC":
        usage["requestedUnit"] = units
    else:
        usage["usedUnitContainer"] = [{**units, "localSequenceNumber": 1}]
    body = {
        "nfConsumerIdentification": {"nodeFunctionality": "SMSF"},
        "invocationTimeStamp": "2026-03-04T12:00:00Z",
        "invocationSequenceNumber": 0,
        "subscriberIdentifier": f"imsi-{imsi}",
        "oneTimeEvent": True,
        "oneTimeEventType": kind,
        "multipleUnitUsage": [usage],
    }
    parsed = parse_request(body, creating=True)
    return to_charging_request(parsed, EVENT, "nchf:" + ref, 0, action=parsed.one_time_event)


def unit_request(rg: int, requested: bool, used: int, *, uplink: int | None = None) -> UnitRequest:
    """`uplink`: octets reported as uplink and downlink only (Gy CC-Input- and CC-Output-Octets, Nchf uplinkVolume
    and downlinkVolume), `uplink` of `used` from the UE."""
    unit = UNIT_OF.get(rg, "bytes")
    if unit == "seconds":
        used = min(used, 2**32 - 1)  # CC-Time and Nchf's time are 32-bit: no client can say more
    units = {unit: used}
    if unit == "bytes" and uplink is not None and 0 < uplink < used:
        units = {"bytes_in": uplink, "bytes_out": used - uplink}
    reports = [UsageReport(units)] if used else []
    return UnitRequest(rg, requested={} if requested else None, used=reports)
