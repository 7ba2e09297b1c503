"""Wholesale reconciliation at scale: a month of records for 100,000 lines.

Builds a store with N lines and one rated data event per line and day (usage events shaped like the engine's,
appended straight to the spool so that building 3M events takes seconds, not an hour of charging), and an MNO
file with one record per line and day, with planted leakage, differences, duplicates and malformed rows. Then
runs `reconcile()` in a fresh process and reports its wall time, rows per second and peak memory, and checks
that exactly the planted discrepancies were found.

    python -m loadtest.bench_reconcile                     # 100,000 lines x 30 days
    python -m loadtest.bench_reconcile --lines 10000 --days 7
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from fractions import Fraction

from chf.core import provisioning
from chf.core.catalogue_loader import parse_catalogue
from chf.core.engine import Engine
from loadtest.bench_engine import CATALOGUE
from store.lmdbstore import Store, Txn

START = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())
DAY = 86_400


def imsi_of(n: int) -> str:
    return f"00101{n:010d}"


def build(directory: str, lines: int, days: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    store = Store(os.path.join(directory, "chf.lmdb"), durability="os")
    engine = Engine(parse_catalogue(CATALOGUE, "bench.toml"))
    store.write(lambda txn: provisioning.create_tenant(txn, "bench", "bench", "EUR", START))
    store.write(
        lambda txn: provisioning.create_account(
            txn, engine, account_id="fleet", tenant="bench", payment="postpaid", now=START, credit_limit=10**12
        )
    )
    for first in range(0, lines, 5000):

        def add(txn: Txn, first: int = first) -> None:
            for n in range(first, min(first + 5000, lines)):
                provisioning.add_line(txn, engine, account="fleet", imsi=imsi_of(n), now=START, plan="fleet")

        store.write(add)
    planted = {"leakage": 0, "unreported": 0, "difference": 0, "duplicate": 0, "malformed": 0}
    path = os.path.join(directory, "mno.csv")
    with open(path, "w", encoding="utf-8") as mno:
        mno.write("imsi,start,end,rating_group,bytes_up,bytes_down,seconds,events\n")
        for day in range(days):

            def rate(txn: Txn, day: int = day) -> None:
                when = START + day * DAY + 12 * 3600
                for n in range(lines):
                    imsi = imsi_of(n)
                    used = rng.randrange(1_000, 50_000_000)
                    fate = rng.random()
                    ours = used
                    if fate < 0.001:  # the MNO bills it, we never rated it
                        planted["leakage"] += 1
                        ours = 0
                    elif fate < 0.002:  # we rated about half of it
                        planted["difference"] += 1
                        ours = used // 2 + 1
                    if ours:
                        txn.append_event(
                            {
                                "kind": "usage",
                                "time": when,
                                "imsi": imsi,
                                "subscriber": n + 1,
                                "rating_group": 10,
                                "unit": "bytes",
                                "used": ours,
                                "charge": 0,
                            }
                        )
                    if 0.002 <= fate < 0.003:
                        planted["unreported"] += 1
                        continue
                    up = used // 10
                    row = f"{imsi},{when - 3600},{when},10,{up},{used - up},3600,0\n"
                    mno.write(row)
                    if 0.003 <= fate < 0.0035:
                        planted["duplicate"] += 1
                        mno.write(row)
                    elif 0.0035 <= fate < 0.0036:
                        planted["malformed"] += 1
                        mno.write(f"{imsi},{when - 3600},not-a-time,10,1,1,0,0\n")

            store.write(rate)
    store.close()  # durability "os": closing flushes
    return planted


def run_reconcile(directory: str, days: int) -> None:
    """The measured part, alone in its process so peak memory is its own."""
    from tools.reconcile import Options, reconcile

    store = Store(os.path.join(directory, "chf.lmdb"), durability="os")
    options = Options(START // DAY, START // DAY + days - 1, tolerance_percent=Fraction(1))
    started = time.perf_counter()
    result = reconcile(store, None, os.path.join(directory, "mno.csv"), options, os.path.join(directory, "out"))
    seconds = time.perf_counter() - started
    store.close()
    s = result.summary
    print(
        json.dumps(
            {
                "seconds": round(seconds, 2),
                "rows": s.rows,
                "our_events": s.our_events,
                "rows_per_second": int(s.rows / seconds),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                "found": {**s.classes, "malformed": s.malformed},
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", help="work directory (default: a temporary one, removed afterwards)")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        run_reconcile(args.dir, args.days)
        return 0
    directory = args.dir or tempfile.mkdtemp(prefix="bench-reconcile-")
    try:
        started = time.perf_counter()
        planted = build(directory, args.lines, args.days, args.seed)
        print(
            f"built {args.lines} lines x {args.days} days in {time.perf_counter() - started:.1f} s; planted {planted}"
        )
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "loadtest.bench_reconcile",
                "--measure",
                "--dir",
                directory,
                "--days",
                str(args.days),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        measured = json.loads(child.stdout)
        print(json.dumps(measured, indent=2))
        expected = dict(planted)
        found = {k: measured["found"].get(k, 0) for k in expected}
        extra = {k: v for k, v in measured["found"].items() if k not in expected and v}
        ok = found == expected and not extra
        print("planted discrepancies found exactly" if ok else f"MISMATCH: planted {expected}, found {found} {extra}")
        return 0 if ok else 1
    finally:
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
