"""Gy CCR-U on the Redis Cluster store against LMDB, in one run (`make bench-redis`).

Starts a 6-node Redis Cluster on loopback (3 primaries, 3 replicas, `appendonly yes`, `appendfsync always`;
tests/redis_cluster.py), then drives Gy load (loadtest/gy.py: CCR-I, k x CCR-U, CCR-T per session) through:

1. one `chf serve` on LMDB (fsync), the baseline;
2. one `chf serve` on the cluster (WAIT 1);
3. two `chf serve` nodes on the cluster, connections spread over both.

For each it reports CCR-U/s, requests/s, latency, and CPU per request of the chf processes and of the Redis
processes separately (from /proc). Then, on paper from those per-request costs, what 100k CCR/s for 10M
subscribers needs: CPU cores of chf nodes and of Redis primaries (each primary's commands run on one core;
replicas cost about a third of a primary's CPU).

    python -m loadtest.bench_redis                    # 20 s per configuration
    python -m loadtest.bench_redis --duration 10 --sessions 400
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_gy(args: argparse.Namespace, extra: list[str], redis_pids: list[int]) -> dict[str, object]:
    command = [sys.executable, "-m", "loadtest.gy", "--json", "--duration", str(args.duration)]
    command += ["--sessions", str(args.sessions), "--connections", str(args.connections), "--warmup", "3"]
    command += ["--plan-on", args.plan_on, "--accounts", str(args.accounts or args.sessions)]
    command += ["--redis-workers", str(args.redis_workers)]
    before = sum(proc_cpu(p) for p in redis_pids)
    t0 = time.monotonic()
    out = subprocess.run([*command, *extra], cwd=REPO, capture_output=True, text=True, check=True)
    wall = time.monotonic() - t0
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    if redis_pids:
        # Redis CPU over the whole run (provisioning and warm-up included), spread over the requests of the
        # measured window by the run's share: an upper bound of Redis's cost per request.
        used = sum(proc_cpu(p) for p in redis_pids) - before
        requests = float(result["requests_per_s"]) * float(result["duration_s"])  # type: ignore[arg-type]
        share = float(result["duration_s"]) / wall  # type: ignore[arg-type]
        result["redis_cpu_us_per_request"] = round(1e6 * used * share / max(1.0, requests))
    return result


def model(rows: dict[str, dict[str, object]]) -> list[str]:
    """Machines for 100k CCR/s from the measured per-request CPU (one core of a node is one chf process's loop)."""
    lines = []
    target = 100_000
    lmdb = rows["lmdb, 1 node"]
    one = rows["redis, 1 node"]
    chf_us = float(one["server_cpu_us_per_request"]["total"])  # type: ignore[index]
    redis_us = float(one.get("redis_cpu_us_per_request", 0))  # type: ignore[arg-type]
    per_chf_core = 1e6 / chf_us
    per_redis_core = 1e6 / max(1.0, redis_us)
    chf_cores = target / per_chf_core
    redis_cores = target / per_redis_core
    lines.append(f"measured: chf {chf_us:.0f} us CPU/request, Redis (6 nodes, all work) {redis_us:.0f} us/request")
    lines.append(f"LMDB node: {float(lmdb['server_cpu_us_per_request']['total']):.0f} us/request")  # type: ignore[index]
    lines.append(f"one chf core serves {per_chf_core:,.0f} requests/s; one Redis core {per_redis_core:,.0f}")
    # About three quarters of Redis's work is the primaries' (a replica applies the effects, without the scripts);
    # a primary runs its commands on one core, planned at 60 % busy.
    primaries = max(3, math.ceil(redis_cores * 0.75 / 0.6))
    lines.append(
        f"100k CCR/s: {chf_cores:.0f} chf cores (e.g. {chf_cores / 8:.1f} 8-core machines running 8 nodes each) "
        f"and {redis_cores:.1f} Redis cores across primaries and replicas "
        f"(e.g. {primaries} primaries at about 60 % busy, each with a replica)"
    )
    lines.append(
        "10M subscribers: ~2 KB per line (line, balance set, session, pointers) -> ~20 GB of records in the "
        "primaries' memory (as much again in the replicas), plus the event streams, kept like LMDB's spool"
    )
    lines.append(
        "linear: every request touches one partition (one primary) and one chf node, so adding primaries "
        "(resharding partitions) and nodes adds capacity in proportion; nothing is shared between partitions"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="loadtest.bench_redis", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    p.add_argument("--duration", type=float, default=20)
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--redis-workers", type=int, default=4, help="[store] workers of each chf node")
    p.add_argument("--accounts", type=int, default=0, help="accounts the lines are spread over (default: one each)")
    p.add_argument(
        "--plan-on",
        choices=("line", "account"),
        default="line",
        help="line (default): each line spends its own allowance; account: every request charges one shared wallet",
    )
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from tests.redis_cluster import RedisCluster

    cluster = RedisCluster().start()
    try:
        pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
        nodes = ",".join(cluster.addresses)
        rows = {
            "lmdb, 1 node": run_gy(args, ["--durability", "fsync"], []),
            "redis, 1 node": run_gy(args, ["--redis", nodes], pids),
            "redis, 2 nodes": run_gy(args, ["--redis", nodes, "--nodes", "2"], pids),
        }
    finally:
        cluster.stop()
    print(f"{'configuration':<16} {'CCR-U/s':>8} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'chf us/req':>10} {'redis us/req':>12} {'codes'}")  # fmt: skip
    for name, r in rows.items():
        lat = r["latency_ms"]
        cpu = r["server_cpu_us_per_request"]
        print(
            f"{name:<16} {r['ccr_u_per_s']:>8} {r['requests_per_s']:>7} {lat['p50']:>7} {lat['p99']:>7} "  # type: ignore[index]
            f"{cpu['total']:>10} {r.get('redis_cpu_us_per_request', '-'):>12} {r['result_codes']}"  # type: ignore[index]
        )
    print()
    for line in model(rows):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
