"""Engine throughput: session updates per second through the real group-commit store.

An update is what a CCR-U / Nchf update asks of the core: commit the units used since the last report, release
the rest of the grant and reserve the next one, remember the answer for replay, write the rated event. The
benchmark preloads N lines (default 1,000,000, each on a prepaid plan with allowances, 1000 lines per
account, each with an open data session), then keeps C requests in flight on random lines for D seconds
through the group-commit writer, the way the front-ends do (`Store.submit_then`: each answer's callback sends
that client's next request), and reports updates/s and latency percentiles. It runs R times per durability
mode and prints the median.

    python -m loadtest.bench_engine                      # 1M lines, fsync and os durability, 3 runs each
    python -m loadtest.bench_engine --lines 100000 --runs 1 --duration 5
    python -m loadtest.bench_engine --store /tmp/bench.lmdb --keep   # reuse a preloaded store next time

Preloading 1M lines takes a couple of minutes (it is done with durability "os" and synced once at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

from chf.core import provisioning
from chf.core.catalogue_loader import parse_catalogue
from chf.core.engine import Engine
from chf.core.model import INITIAL, UPDATE, ChargingRequest, UnitRequest, UsageReport
from chf.core.versions import CatalogueVersions
from chf.runtime.service import tune_collector
from store.lmdbstore import Store, Txn
from tests.support import fixture_text

# Plan "bench": enough allowance that a benchmark run never exhausts it, and a wallet tariff behind it. The
# benchmarks run from a checkout, so they share the tests' fixture files.
CATALOGUE = fixture_text("bench.toml")

IMSI_BASE = 208_019_000_000_000
RATING_GROUP = 10
USED_PER_UPDATE = 700_000


def imsi(i: int) -> str:
    return str(IMSI_BASE + i)


def session_key(i: int) -> str:
    return f"bench:{i}"


def preload(path: str, lines: int, engine: Engine, now: int) -> None:
    store = Store(path, durability="os", sync_interval=3600)
    try:
        with store.read() as txn:
            have = txn.subscriber_count()
        if have >= lines:
            print(f"preload: store already holds {have} lines", file=sys.stderr)
            return
        accounts = max(1, lines // 1000)  # 1000 lines per account, as an MVNO's bulk import would have
        if have == 0:
            store.write(lambda t: provisioning.create_tenant(t, "bench", "Bench", "EUR", now))
            for a in range(accounts):

                def account(t: Txn, a: int = a) -> None:
                    provisioning.create_account(
                        t, engine, account_id=f"b{a}", tenant="bench", payment="prepaid", now=now, balance=10**9
                    )

                store.write(account)
        chunk = 20_000
        started = time.perf_counter()
        for first in range(have, lines, chunk):
            last = min(lines, first + chunk)

            def load(txn: Txn, first: int = first, last: int = last) -> None:
                rows = [{"account": f"b{i % accounts}", "imsi": imsi(i), "plan": "bench"} for i in range(first, last)]
                for result in provisioning.add_lines(txn, engine, rows, now=now):
                    if isinstance(result, Exception):
                        raise result
                for i in range(first, last):
                    req = ChargingRequest(
                        INITIAL, session_key(i), 0, [("imsi", imsi(i))], [UnitRequest(RATING_GROUP, requested={})]
                    )
                    engine.charge(txn, req, now)

            store.write(load)
            done = last
            rate = (done - have) / (time.perf_counter() - started)
            print(f"\rpreload: {done}/{lines} lines ({rate:,.0f}/s)", end="", file=sys.stderr)
        print(file=sys.stderr)
        store.env.sync(True)
    finally:
        store.close()


async def drive(
    store: Store, engine: Engine, lines: int, concurrency: int, duration: float, now: int
) -> dict[str, Any]:
    store.start(asyncio.get_running_loop())
    # Request numbers continue from earlier runs on a kept store (a repeated number would be answered as a
    # retransmission, which is much cheaper than a real update): start above anything used before.
    base = int(time.time() * 1000)
    numbers: dict[int, int] = {}
    latencies: list[float] = []
    done = 0
    failures = 0
    stop_at = time.perf_counter() + duration
    rand = random.Random(42)

    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    idle_clients = 0

    def issue() -> None:
        """Send the next request of one client, as a front-end does: from the previous answer's callback."""
        nonlocal idle_clients, failures
        if time.perf_counter() >= stop_at:
            idle_clients += 1
            if idle_clients == concurrency and not finished.done():
                finished.set_result(None)
            return
        i = rand.randrange(lines)
        n = numbers.get(i, base) + 1
        numbers[i] = n
        req = ChargingRequest(
            UPDATE,
            session_key(i),
            n,
            [],
            [UnitRequest(RATING_GROUP, requested={}, used=[UsageReport({"bytes": USED_PER_UPDATE})])],
        )
        t0 = time.perf_counter()

        def answered(answer: Any) -> None:
            nonlocal done, failures
            if isinstance(answer, BaseException) or answer.result != "success":
                failures += 1
            else:
                latencies.append(time.perf_counter() - t0)
                done += 1
            issue()

        try:
            store.submit_then(lambda txn: engine.charge(txn, req, now), answered, nested=False)
        except Exception:
            failures += 1
            loop.call_later(0.001, issue)

    commits0 = store.commits
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for _ in range(concurrency):
        issue()
    await finished
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    commits = store.commits - commits0
    await store.stop()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0.0

    return {
        "updates": done,
        "rate": done / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "failures": failures,
        "batch": done / commits if commits else 0,
        "cpu_us_per_update": cpu / done * 1e6 if done else 0,
    }


def bench_versions(count: int, now: int) -> CatalogueVersions:
    """The bench catalogue in `count` versions, an hour apart, the last taking effect an hour before `now`."""
    versions = [parse_catalogue(CATALOGUE, "bench-catalogue.toml")]
    for k in range(1, count):
        at = datetime.fromtimestamp(now - (count - k) * 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = CATALOGUE.replace("[settings]\n", f"[settings]\neffective = {at}\n", 1)
        versions.append(parse_catalogue(text, f"bench-catalogue-{k}.toml"))
    return CatalogueVersions(versions)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--concurrency", type=int, default=4000, help="requests in flight")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--durability", choices=["fsync", "os", "both"], default="both")
    ap.add_argument("--store", default=None, help="store directory (default: a temporary one)")
    ap.add_argument("--writer", choices=["thread", "inline"], default="inline")
    ap.add_argument("--keep", action="store_true", help="keep the store for the next run")
    ap.add_argument(
        "--versions",
        type=int,
        default=1,
        help="the catalogue in this many versions, the last in force from an hour ago (chf.core.versions)",
    )
    args = ap.parse_args(argv)

    now = int(time.time())
    engine = Engine(bench_versions(args.versions, now))
    path = args.store or tempfile.mkdtemp(prefix="chf-bench-")
    preload(path, args.lines, engine, now)
    modes = ["fsync", "os"] if args.durability == "both" else [args.durability]
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    tune_collector()  # as `chf serve` does
    print(f"lines={args.lines} concurrency={args.concurrency} duration={args.duration}s runs={args.runs}")
    for mode in modes:
        rates = []
        for run in range(args.runs):
            store = Store(path, durability=mode, writer=args.writer)
            try:
                res = runner(drive(store, engine, args.lines, args.concurrency, args.duration, now))
            finally:
                store.close()
            rates.append(res["rate"])
            print(
                f"  {mode:5} run {run + 1}: {res['rate']:8,.0f} updates/s  p50 {res['p50_ms']:6.1f} ms  "
                f"p99 {res['p99_ms']:6.1f} ms  batch {res['batch']:6.0f}  cpu {res['cpu_us_per_update']:5.0f} us/update"
                f"  failures {res['failures']}"
            )
        print(f"{mode}: median {statistics.median(rates):,.0f} updates/s over {len(rates)} runs")
    if not args.keep and args.store is None:
        shutil.rmtree(path, ignore_errors=True)
    elif args.keep:
        print(f"store kept at {os.path.abspath(path)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
