"""The charging service: group-committed requests, the sweeper (reaper, renewals), signals, catalogue reload."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from chf.core import provisioning
from chf.core.catalogue import CatalogueError
from chf.core.catalogue_loader import load_catalogue
from chf.core.model import INITIAL, SUCCESS, UPDATE, ChargingRequest, Signal, UnitRequest, UsageReport
from chf.runtime.service import ChargingService

REPO = Path(__file__).resolve().parents[1]
T0 = 1_790_000_000  # 2026-09-21T14:13:20Z


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> float:
        return float(self.now)


@pytest.fixture
def service(tmp_path: Path, open_store):
    catalogue_path = tmp_path / "catalogue.toml"
    shutil.copy(REPO / "conf" / "catalogue.toml", catalogue_path)
    store = open_store("db")
    clock = Clock(T0)
    svc = ChargingService(
        store, load_catalogue(catalogue_path), catalogue_path=str(catalogue_path), clock=clock, sweep_interval=0.01
    )
    svc.test_clock = clock  # type: ignore[attr-defined]
    yield svc
    store.close()


def _provision(svc: ChargingService, imsi: str = "208019000000001", balance: int = 20_000_000) -> None:
    now = svc.now()
    svc.store.write(lambda t: provisioning.create_tenant(t, "demo", "Demo", "EUR", now))
    svc.store.write(
        lambda t: provisioning.create_account(
            t, svc.engine, account_id="alice", tenant="demo", payment="prepaid", now=now, balance=balance
        )
    )
    svc.store.write(
        lambda t: provisioning.add_line(t, svc.engine, account="alice", imsi=imsi, plan="prepaid-s", now=now)
    )


def _data_request(kind: str, number: int, used: int = 0) -> ChargingRequest:
    unit = UnitRequest(10, requested={}, used=[UsageReport({"bytes": used})] if used else [])
    return ChargingRequest(kind, "gy:svc-1", number, [("imsi", "208019000000001")], [unit], notify={"peer": "pgw"})


async def test_charge_through_group_commit(service: ChargingService) -> None:
    _provision(service)
    await service.start()
    try:
        first = await service.charge(_data_request(INITIAL, 0))
        assert first.result == SUCCESS and first.units[0].granted == 10_000_000
        again = await service.charge(_data_request(INITIAL, 0))
        assert again.duplicate and again.units[0].granted == 10_000_000
        upd = await service.charge(_data_request(UPDATE, 1, used=4_000_000))
        assert upd.result == SUCCESS
    finally:
        await service.stop()
    with service.store.read() as txn:
        usage = [e for e in txn.events() if e["kind"] == "usage"]
    assert [e["used"] for e in usage] == [4_000_000]


async def test_sweeper_reaps_silent_session(service: ChargingService) -> None:
    _provision(service)
    await service.start()
    try:
        answer = await service.charge(_data_request(INITIAL, 0))
        validity = answer.units[0].validity_time
        assert validity
        with service.store.read() as txn:
            bucket = txn.get_line_balances(1).buckets  # type: ignore[union-attr]
            assert sum(b.reserved for b in bucket) == 10_000_000
        service.test_clock.now = T0 + 2 * validity  # type: ignore[attr-defined]
        for _ in range(200):
            await asyncio.sleep(0.02)
            if service.reaped:
                break
        assert service.reaped == 1
    finally:
        await service.stop()
    with service.store.read() as txn:
        assert sum(b.reserved for b in txn.get_line_balances(1).buckets) == 0  # type: ignore[union-attr]
        releases = [e for e in txn.events() if e["kind"] == "release"]
        session = txn.get_session("gy:svc-1")
    assert len(releases) == 1 and releases[0]["reason"].startswith("reservation timeout")
    assert session is not None and session.closed


async def test_sweeper_renews_idle_line_at_the_boundary(service: ChargingService) -> None:
    _provision(service)
    with service.store.read() as txn:
        bs = txn.get_line_balances(1)
        assert bs is not None
        boundary = bs.period_end
    await service.start()
    try:
        service.test_clock.now = boundary + 3600  # type: ignore[attr-defined]
        for _ in range(200):
            await asyncio.sleep(0.02)
            if service.renewed:
                break
    finally:
        await service.stop()
    with service.store.read() as txn:
        renewals = [e for e in txn.events() if e["kind"] in ("renewal", "renewal_failed") and e["time"] == boundary]
        bs = txn.get_line_balances(1)
    assert renewals, "the renewal is recorded at the period boundary, not when the sweeper saw it"
    assert bs is not None and bs.period_start == boundary and bs.period_index == 1


async def test_suspension_signals_abort_to_the_front_end(service: ChargingService) -> None:
    _provision(service)
    received: list[Signal] = []
    service.bus.subscribe("gy", received.append)
    await service.start()
    try:
        await service.charge(_data_request(INITIAL, 0))
        await service.operate(
            lambda txn, engine, now: provisioning.set_state(
                txn, engine, "208019000000001", "suspended", now=now, actor="test", reason="fraud"
            )
        )
        topup = await service.operate(
            lambda txn, engine, now: provisioning.topup(txn, engine, "alice", 1_000_000, now=now, actor="t", reason="x")
        )
    finally:
        await service.stop()
    assert [(s.kind, s.session, s.notify) for s in received] == [
        ("abort", "gy:svc-1", {"peer": "pgw"}),
        ("reauth", "gy:svc-1", {"peer": "pgw"}),
    ]
    assert topup.value["balance"] == 20_000_000 - 4_990_000 + 1_000_000


def test_reload_rejects_an_invalid_catalogue_and_keeps_the_running_one(service: ChargingService) -> None:
    path = Path(service.catalogue_path or "")
    digest = service.catalogue.digest
    path.write_text(path.read_text().replace('unit = "bytes"', 'unit = "bites"', 1))
    with pytest.raises(CatalogueError) as err:
        service.reload_catalogue()
    assert "bites" in str(err.value)
    assert service.catalogue.digest == digest
    path.write_text(path.read_text().replace('unit = "bites"', 'unit = "bytes"', 1) + "\n# changed\n")
    assert service.reload_catalogue().digest != digest


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ('[gy]\nport = "abc"\n', "[gy] port"),
        ("[nchf]\nport = -1\n", "[nchf] port"),
        ("[api]\nport = 99999\n", "[api] port"),
    ],
)
def test_serve_refuses_a_bad_section_without_a_traceback(tmp_path: Path, section: str, field: str) -> None:
    import subprocess
    import sys

    shutil.copy(REPO / "conf" / "catalogue.toml", tmp_path / "catalogue.toml")
    config = tmp_path / "chf.toml"
    config.write_text(
        f'[chf]\ndata_dir = "{tmp_path}"\ncatalogue = "{tmp_path / "catalogue.toml"}"\n'
        f'[store]\npath = "{tmp_path / "db"}"\n{section}'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tools.cli", "serve", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert field in proc.stderr
    assert "Traceback" not in proc.stderr
