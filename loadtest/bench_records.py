"""Stored records: encode and decode of one record of each kind (store.schema), in microseconds.

Every charging update decodes and re-encodes a session and a balance set (and an account when money moves), so
these figures are part of every request's cost. The records are shaped like the engine benchmark's: a session
with one reservation and two kept answers, a balance set with three buckets.

    python -m loadtest.bench_records              # best of 7 rounds of 50,000 calls each
    python -m loadtest.bench_records --calls 200000

Compare two checkouts by running it in each (PYTHONPATH=<checkout>): it reports whether store.schema runs
compiled or as plain Python.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from typing import Any

from store import schema
from store.schema import Account, BalanceSet, Bucket, Reservation, Session, Subscriber, Tenant

T, T2 = 1_700_000_000, 1_702_592_000


def samples() -> dict[str, Any]:
    buckets = [
        Bucket(i, f"data-{i}", "plan", "bytes", None if i else [10, 20], 10 + i, 10**10, 9 * 10**9 - i, 10**6, T, T2)
        for i in range(3)
    ]
    unit = [10, 2001, None, "bytes", 10**6, 3600, None, None, None, None, 0, 0]
    answers = [[n, schema.pack([2001, "sess", n, [unit], "EUR", 1, 0, True, None])] for n in (5, 6)]
    reservations = {10: Reservation(10, "bytes", 10**6, [[0, 1, 10**6]], 0, "data", "home")}
    history = [["provisioned", "active", T, "cli:x", None]]
    return {
        "session": Session(
            "pgw1.example;1234;5678",
            123456,
            "acct-000123",
            "gy",
            T,
            T + 100,
            T + 10_000,
            6,
            False,
            reservations,
            answers,
            "20801",
            ["pgw1.example", "example"],
            63,
        ),
        "balance set": BalanceSet("bench", T, T2, 3, buckets, {10: 123_456_789, 20: 5_000}, 4, False),
        "account": Account("acct-000123", "mvno1", "prepaid", "EUR", 12_500_000, 250_000, 0, 1, None, "bench", T, 42),
        "subscriber": Subscriber(
            123456, "mvno1", "acct-000123", "208010000123456", "33612345678", None, None, "active", T, "b", T, history
        ),
        "tenant": Tenant("mvno1", "MVNO One", "EUR", T),
    }


def best(fn: Callable[[], Any], calls: int, rounds: int) -> float:
    """Microseconds per call, best round: the least disturbed by whatever else runs on the machine."""
    fastest = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        fastest = min(fastest, (time.perf_counter() - started) / calls)
    return fastest * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=7)
    a = parser.parse_args()
    compiled = not (schema.__file__ or "").endswith(".py")
    print(f"store.schema: {'compiled' if compiled else 'plain Python'}")
    total_encode = total_decode = 0.0
    for name, record in samples().items():
        data = record.encode()
        encode = best(record.encode, a.calls, a.rounds)
        decode = best(functools.partial(type(record).decode, data), a.calls, a.rounds)
        total_encode += encode
        total_decode += decode
        print(f"{name:12s} {len(data):4d} B   encode {encode:6.3f} us   decode {decode:6.3f} us")
    print(f"{'all':12s}          encode {total_encode:6.3f} us   decode {total_decode:6.3f} us")


if __name__ == "__main__":
    main()
