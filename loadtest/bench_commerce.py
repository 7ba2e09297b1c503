"""What B2B2B and tax profiles cost a session update: engine CPU per update, side by side in one process.

Four kinds of lines, on the benchmark plan (tests/fixtures/bench.toml: its allowance pays, as in bench_engine):

    single      an account without a parent or a tax profile (what every line was before issue 15)
    taxed       its account has a tax profile (net prices); the usage is paid by the allowance, so only the
                profile lookup (the tenant record) is added
    two-level   its account's parent is an enterprise's account with a reseller, whose parent is the reseller's
                account with the operator: each update is also rated at both price lists (two wholesale events,
                two more accounts written)
    two-level+tax
                the same, each payer with a tax profile (net prices: each wholesale charge split and grossed up)

Each kind gets its own lines, each with an open data session; updates (commit 700 kB used, reserve the next
grant) are then sent in write transactions of `--batch` requests (group commit sized), the kinds taking turns
batch by batch so that a busy machine slows them alike. Reported: CPU microseconds per update (process time of
the transactions, commit included, durability "os"), median over the rounds.

    python -m loadtest.bench_commerce                     # 2,000 lines per kind, 20 rounds of 250 updates
    python -m loadtest.bench_commerce --lines 500 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

from chf.core import provisioning
from chf.core.catalogue_loader import parse_catalogue
from chf.core.engine import Engine
from chf.core.model import INITIAL, UPDATE, ChargingRequest, UnitRequest, UsageReport
from store.lmdbstore import Store
from tests.support import fixture_text

COMMERCE = """
[tariffs.wholesale-data]
unit = "bytes"
block = 1_000_000
price = 4_000

[price_lists.operator]
  [price_lists.operator.rating]
  default = "wholesale-data"

[price_lists.reseller]
  [price_lists.reseller.rating]
  default = "data"

[tax_profiles.vat]
prices = "net"
rate = "20%"
"""
KINDS = ("single", "taxed", "two-level", "two-level+tax")
USED = 700_000
NOW = 1_780_000_000


def provision(store: Store, engine: Engine, lines: int) -> dict[str, list[str]]:
    """The tenants, accounts and lines of every kind; returns the IMSIs per kind."""

    def op(fn: Any, **kw: Any) -> Any:
        return store.write(lambda txn: fn(txn, engine, now=NOW, **kw))

    store.write(lambda txn: provisioning.create_tenant(txn, "op", "op", "EUR", NOW))
    store.write(lambda txn: provisioning.create_tenant(txn, "resl", "resl", "EUR", NOW, parent="op"))
    store.write(lambda txn: provisioning.create_tenant(txn, "ent", "ent", "EUR", NOW, parent="resl"))
    for taxed in ("", "-tax"):
        profile = "vat" if taxed else None
        common = {"payment": "postpaid", "credit_limit": 10**15, "tax_profile": profile}
        op(provisioning.create_account, account_id="resl-at-op" + taxed, tenant="op", price_list="operator", **common)
        op(
            provisioning.create_account,
            account_id="ent-at-resl" + taxed,
            tenant="resl",
            parent="resl-at-op" + taxed,
            price_list="reseller",
            **common,
        )
    accounts = {
        "single": ("ent", None, None),
        "taxed": ("ent", None, "vat"),
        "two-level": ("ent", "ent-at-resl", None),
        "two-level+tax": ("ent", "ent-at-resl-tax", None),
    }
    imsis: dict[str, list[str]] = {}
    for n, (kind, (tenant, parent, profile)) in enumerate(accounts.items()):
        account = f"fleet-{n}"
        op(
            provisioning.create_account,
            account_id=account,
            tenant=tenant,
            payment="prepaid",
            balance=10**12,
            parent=parent,
            tax_profile=profile,
        )
        imsis[kind] = [f"2080199{n}{i:07d}" for i in range(lines)]
        rows = [{"account": account, "imsi": imsi, "plan": "bench"} for imsi in imsis[kind]]
        for first in range(0, lines, 500):
            chunk = rows[first : first + 500]

            def add(txn: Any, chunk: list[dict[str, Any]] = chunk) -> None:
                provisioning.add_lines(txn, engine, chunk, now=NOW, actor="bench")

            store.write(add)
    return imsis


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=2_000, help="lines per kind")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=250, help="updates per write transaction")
    args = parser.parse_args(argv)
    catalogue = parse_catalogue(fixture_text("bench.toml") + COMMERCE, "bench-commerce.toml")
    engine = Engine(catalogue)
    with tempfile.TemporaryDirectory(prefix="chf-bench-commerce-") as tmp:
        store = Store(tmp, durability="os", map_size=1 << 30)
        imsis = provision(store, engine, args.lines)
        numbers: dict[str, int] = {}
        for kind in KINDS:
            for imsi in imsis[kind]:
                request = ChargingRequest(INITIAL, f"s-{imsi}", 0, [("imsi", imsi)], [UnitRequest(10, requested={})])

                def open_session(txn: Any, request: ChargingRequest = request) -> None:
                    engine.charge(txn, request, NOW)

                store.write(open_session)
                numbers[imsi] = 0
        cpu: dict[str, list[float]] = {kind: [] for kind in KINDS}
        cursor = dict.fromkeys(KINDS, 0)
        for _ in range(args.rounds):
            for kind in KINDS:
                batch = []
                for _ in range(args.batch):
                    imsi = imsis[kind][cursor[kind] % args.lines]
                    cursor[kind] += 1
                    numbers[imsi] += 1
                    used = [UsageReport({"bytes": USED})]
                    unit = UnitRequest(10, requested={}, used=used)
                    batch.append(ChargingRequest(UPDATE, f"s-{imsi}", numbers[imsi], [("imsi", imsi)], [unit]))

                def run(txn: Any, batch: list[ChargingRequest] = batch) -> None:
                    for request in batch:
                        engine.charge(txn, request, NOW + 60)

                start = time.process_time()
                store.write(run)
                cpu[kind].append((time.process_time() - start) / args.batch * 1e6)
        store.close()
    base = statistics.median(cpu["single"])
    print(f"engine CPU per session update ({args.lines} lines per kind, {args.rounds} x {args.batch} updates each)")
    for kind in KINDS:
        median = statistics.median(cpu[kind])
        print(f"  {kind:14s} {median:7.1f} us/update   {median / base:5.2f} x single")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
