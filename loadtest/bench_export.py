"""Export throughput: how fast the exporters drain a spool of N events into each sink.

    python -m loadtest.bench_export [--events 50000] [--batch 500] [--nats-server PATH]

Preloads N usage events into a temporary store (fsync durability): Gy data sessions of 1000 lines on the payg
plan of conf/catalogue.toml, each update reporting uplink and downlink octets, charged by the engine. Then times
one exporter per sink from cursor 0 to the end: the file sink (JSON Lines, fsync per batch), the CDR sink
(TS 32.298 CHF-CDRs in TS 32.297 files, fsync per batch) and, when nats-server is installed, the JetStream sink
against a nats-server started here on an ephemeral port (publish acknowledgements awaited one by one, which keeps
stream order across broker restarts). Prints events/s per sink.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chf.core import provisioning
from chf.core.catalogue_loader import load_catalogue
from chf.core.engine import Engine
from chf.core.model import INITIAL, UPDATE, ChargingRequest, UnitRequest, UsageReport
from chf.export.cdr import CdrSink
from chf.export.exporter import Exporter, Sink
from chf.export.files import FileSink
from chf.export.nats import NatsSink
from store.lmdbstore import Store, Txn
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[1]


LINES = 1000


def preload(store: Store, events: int) -> None:
    """About `events` usage events: an initial request per line, then rounds of one update per line."""
    engine = Engine(load_catalogue(ROOT / "conf" / "catalogue.toml"))
    now = int(time.time())
    store.write(lambda txn: provisioning.create_tenant(txn, "bench", "Bench", "EUR", now))
    store.write(
        lambda txn: provisioning.create_account(txn, engine, account_id="a", tenant="bench", payment="prepaid", now=now)
    )
    store.write(lambda txn: provisioning.topup(txn, engine, "a", 10**15, now=now, actor="bench", reason="bench"))
    imsis = [f"20801{i:010d}" for i in range(LINES)]

    def add_line(imsi: str) -> Callable[[Txn], Any]:
        return lambda txn: provisioning.add_line(txn, engine, account="a", imsi=imsi, plan="payg", now=now)

    def charge(kind: str, imsi: str, number: int, used: list[UsageReport]) -> Callable[[Txn], Any]:
        units = [UnitRequest(10, requested={}, used=used)]
        request = ChargingRequest(kind, f"gy:bench;{imsi}", number, [("imsi", imsi)], units)
        return lambda txn: engine.charge(txn, request, now + number)

    store.run_batch([add_line(imsi) for imsi in imsis])
    store.run_batch([charge(INITIAL, imsi, 0, []) for imsi in imsis])
    for number in range(1, events // LINES + 1):
        report = UsageReport({"bytes_in": 1000 + number, "bytes_out": 9000 + number}, "quota_exhausted")
        store.run_batch([charge(UPDATE, imsi, number, [report]) for imsi in imsis])


async def drain(store: Store, sink: Sink, batch: int) -> tuple[int, float]:
    exporter = Exporter(store, sink, batch=batch)
    await sink.open()
    started = time.perf_counter()
    total = 0
    while n := await exporter.step():
        total += n
    elapsed = time.perf_counter() - started
    await sink.close()
    return total, elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--nats-server", default=shutil.which("nats-server") or "/usr/sbin/nats-server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chf-bench-export-") as tmp:
        store = Store(Path(tmp) / "chf.lmdb", map_size=4 << 30)
        t0 = time.perf_counter()
        preload(store, args.events)
        print(f"preloaded {args.events} events in {time.perf_counter() - t0:.1f}s")
        store.start(asyncio.get_running_loop())
        n, s = await drain(store, FileSink(str(Path(tmp) / "export"), name="files", max_bytes=16 << 20), args.batch)
        print(f"files: {n} events in {s:.2f}s = {n / s:,.0f} events/s (batch {args.batch}, fsync per batch)")
        cdr = CdrSink(str(Path(tmp) / "cdr"), name="cdr", node_id="bench", max_bytes=16 << 20)
        n, s = await drain(store, cdr, args.batch)
        print(
            f"cdr: {n} events in {s:.2f}s = {n / s:,.0f} events/s; {cdr.written:,} CHF-CDRs in {cdr.closed_files} "
            f"TS 32.297 files = {cdr.written / s:,.0f} CDRs/s (batch {args.batch}, fsync per batch)"
        )
        if Path(args.nats_server).exists():
            port = free_port()
            proc = subprocess.Popen(
                [args.nats_server, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(Path(tmp) / "js")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                await asyncio.sleep(0.5)
                sink = NatsSink([f"nats://127.0.0.1:{port}"], name="nats")
                n, s = await drain(store, sink, args.batch)
                print(f"nats: {n} events in {s:.2f}s = {n / s:,.0f} events/s (acknowledged one by one)")
            finally:
                proc.terminate()
                proc.wait(10)
        else:
            print("nats: skipped (nats-server not installed)")
        await store.stop()
        store.close()


if __name__ == "__main__":
    asyncio.run(main())
