"""Nchf update throughput over real HTTP/2: h2load (nghttp2) against the Nchf front-end, fsync on.

The benchmark preloads L lines with an open Nchf charging session each (a prepaid plan with a large data
allowance), starts the charging service and the Nchf server in this process (uvloop, as `chf serve` does),
then runs h2load: C connections with M concurrent streams each, cycling over the sessions' update URIs with one
ChargingDataRequest body (rating group 10: 1000 bytes used, a new grant requested, invocationSequenceNumber 0 so
every request is a real update, never a retransmission). Latency percentiles come from h2load's per-request log.
At the end the committed usage is checked against the number of successful updates.

    python -m loadtest.bench_nchf                            # 10,000 lines, 4 x 8 streams, 15 s, fsync
    python -m loadtest.bench_nchf --connections 8 --streams 16 --duration 20
    python -m loadtest.bench_nchf --rps 3000                 # fixed offered load instead of as fast as possible
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from chf.core import provisioning
from chf.core.catalogue_loader import parse_catalogue
from chf.core.engine import Engine
from chf.core.model import INITIAL, ChargingRequest, UnitRequest
from chf.runtime.service import ChargingService, tune_collector

# The engine benchmark's catalogue and lines: one prepaid plan with a large data allowance.
from loadtest.bench_engine import CATALOGUE, IMSI_BASE, RATING_GROUP
from loadtest.gy import REPO, tree_cpu, wait_ready
from nchf.component import NchfComponent
from nchf.config import NchfSettings
from store.lmdbstore import Store, Txn
from tests.support import free_port

USED_PER_UPDATE = 1000
API = "/nchf-convergedcharging/v3/chargingdata"

UPDATE_BODY = {
    "nfConsumerIdentification": {"nodeFunctionality": "SMF", "nFName": "8bd2d3b4-5c7a-4a7a-9f3c-1c2d3e4f5a6b"},
    "invocationTimeStamp": "2026-11-22T10:00:00Z",
    "invocationSequenceNumber": 0,
    "multipleUnitUsage": [
        {
            "ratingGroup": RATING_GROUP,
            "requestedUnit": {},
            "usedUnitContainer": [
                {
                    "localSequenceNumber": 1,
                    "totalVolume": USED_PER_UPDATE,
                    "uplinkVolume": USED_PER_UPDATE // 2,
                    "downlinkVolume": USED_PER_UPDATE // 2,
                    "triggers": [{"triggerType": "QUOTA_THRESHOLD", "triggerCategory": "IMMEDIATE_REPORT"}],
                }
            ],
        }
    ],
    "pDUSessionChargingInformation": {
        "pduSessionInformation": {
            "pduSessionID": 1,
            "dnnId": "internet",
            "ratType": "NR",
            "servingCNPlmnId": {"mcc": "208", "mnc": "01"},
        }
    },
}


def preload(store: Store, engine: Engine, lines: int, now: int) -> None:
    store.write(lambda t: provisioning.create_tenant(t, "bench", "Bench", "EUR", now))
    chunk = 5000
    for first in range(0, lines, chunk):
        last = min(lines, first + chunk)

        def load(txn: Txn, first: int = first, last: int = last) -> None:
            for i in range(first, last):
                account = f"b{i}"
                imsi = str(IMSI_BASE + i)
                provisioning.create_account(
                    txn, engine, account_id=account, tenant="bench", payment="prepaid", now=now, balance=10_000_000
                )
                provisioning.add_line(txn, engine, account=account, imsi=imsi, plan="bench", now=now)
                request = ChargingRequest(
                    INITIAL, f"nchf:b{i}", 0, [("imsi", imsi)], [UnitRequest(RATING_GROUP, requested={})], "nchf"
                )
                engine.charge(txn, request, now)

        store.write(load)


def consumed(store: Store, lines: int) -> int:
    total = 0
    with store.read() as txn:
        for i in range(lines):
            bs = txn.get_line_balances(i + 1)
            if bs is not None:
                total += sum(b.initial - b.remaining for b in bs.buckets)
    return total


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    catalogue = parse_catalogue(CATALOGUE, "bench-catalogue.toml")
    store = Store(workdir / "chf.lmdb", durability="fsync", writer=args.writer)
    engine = Engine(catalogue)
    now = int(time.time())
    started = time.perf_counter()
    preload(store, engine, args.lines, now)
    print(f"preloaded {args.lines} lines with open sessions in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    server: subprocess.Popen[bytes] | None = None
    split: dict[str, float] = {}
    if args.workers is None:
        service = ChargingService(
            store, catalogue, **({"sweep_interval": args.sweep_interval} if args.sweep_interval else {})
        )
        await service.start()
        component: NchfComponent | None = NchfComponent(service, NchfSettings(port=0))
        assert component is not None
        await component.start()
        tune_collector()  # as `chf serve` does once it is up
        port = component.port
    else:  # a real `chf serve` child on the preloaded store, with [server] frontend_workers = args.workers
        store.close()
        component = None
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "--config", str(serve_config(args, workdir, port)), "serve"],
            cwd=REPO,
        )
        wait_ready(workdir, server)
    uris = workdir / "uris.txt"
    uris.write_text("".join(f"http://127.0.0.1:{port}{API}/b{i}/update\n" for i in range(args.lines)))
    body = workdir / "update.json"
    body.write_text(json.dumps(UPDATE_BODY))
    log_file = workdir / "h2load.log"
    options = {
        "-c": str(args.connections),
        "-m": str(args.streams),
        "-t": "1",
        "-D": str(args.duration),
        "--warm-up-time": str(args.warmup),
        "-i": str(uris),
        "-d": str(body),
        "-H": "content-type: application/json",
        "--log-file": str(log_file),
    }
    cmd = [args.h2load, *(word for option in options.items() for word in option)]
    if args.rps:
        cmd += ["--rps", str(max(1, args.rps // args.connections))]
    commits0, ops0 = store.commits, store.committed_ops
    cpu0 = time.process_time()
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    if server is not None:
        # h2load counts the requests after its warm-up only: measure the child's CPU over the same window.
        await asyncio.sleep(args.warmup)
        tree0 = tree_cpu(server.pid)
    out, err = await proc.communicate()
    if server is None:
        assert component is not None
        cpu = time.process_time() - cpu0
        commits, ops = store.commits - commits0, store.committed_ops - ops0
        await component.stop()
        await service.stop()
    else:
        # CPU of the core and its workers over the whole h2load run (warm-up included), per request sent.
        tree1 = tree_cpu(server.pid)
        cpu = sum(tree1.values()) - sum(tree0.values())
        split = {k: tree1[k] - tree0[k] for k in tree1}
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        store = Store(workdir / "chf.lmdb", durability="fsync")
        commits = ops = 0  # the store is in the child: its batch size is not seen from here
    text = out.decode()
    if proc.returncode != 0:
        raise SystemExit(f"h2load failed ({proc.returncode}): {err.decode()}\n{text}")
    durations, statuses = h2load_log(log_file)
    match = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    rate = float(match.group(3)) if match else 0.0
    ok = statuses.get("200", 0)
    # Every successful update charged its 1000 bytes exactly once (warm-up requests included).
    charged = consumed(store, args.lines)
    store.close()
    return {
        "h2load": " ".join(cmd[1:]).replace(str(workdir), "<tmp>"),
        "rate": rate,
        "requests_logged": len(durations),
        "statuses": statuses,
        **latencies_ms(durations),
        "batch": ops / commits if commits else 0,
        "server_cpu_us_per_request": (cpu / ops * 1e6 if ops else 0) if server is None else cpu_per_request(cpu, text),
        "usage_charged_bytes": charged,
        "server_cpu_split_us": {k: round(v / max(1, len(durations)) * 1e6) for k, v in split.items()} if split else {},
        "usage_expected_min_bytes": ok * USED_PER_UPDATE,
        "h2load_summary": h2load_summary(text),
    }


def h2load_log(log_file: Path) -> tuple[list[int], dict[str, int]]:
    """Request durations (µs, sorted) and the count of each status from h2load's --log-file."""
    durations: list[int] = []
    statuses: dict[str, int] = {}
    for line in log_file.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            statuses[parts[1]] = statuses.get(parts[1], 0) + 1
            durations.append(int(parts[2]))
    durations.sort()
    return durations, statuses


def h2load_summary(output: str) -> str:
    """h2load's own totals: elapsed time and rate, requests, status codes."""
    totals = ("finished", "requests:", "status codes:")
    return "\n".join(line for line in output.splitlines() if line.startswith(totals))


def latencies_ms(durations: list[int]) -> dict[str, float]:
    """Percentiles, maximum and mean of sorted durations in µs, in ms."""
    if not durations:
        return dict.fromkeys(("p50_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms"), 0.0)

    def pct(p: float) -> float:
        return durations[min(len(durations) - 1, int(p * len(durations)))] / 1000

    return {
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "p999_ms": pct(0.999),
        "max_ms": durations[-1] / 1000,
        "mean_ms": statistics.fmean(durations) / 1000,
    }


def serve_config(args: argparse.Namespace, workdir: Path, port: int) -> Path:
    """conf for the `chf serve` child (--workers): the preloaded store, fsync, Nchf on `port`."""
    (workdir / "catalogue.toml").write_text(CATALOGUE)
    path = workdir / "chf.toml"
    path.write_text(
        f"""
[chf]
data_dir = "{workdir}"
catalogue = "{workdir / "catalogue.toml"}"
log_level = "warning"

[server]
frontend_workers = {args.workers}

[store]
path = "{workdir / "chf.lmdb"}"
durability = "fsync"
writer = "{args.writer}"

[nchf]
listen = "127.0.0.1"
port = {port}
"""
    )
    return path


def cpu_per_request(cpu: float, h2load_output: str) -> float:
    """Server CPU µs per request when the server is a child: its CPU (core and workers) over h2load's measured
    window divided by the requests h2load completed in it."""
    match = re.search(r"requests: \d+ total, \d+ started, (\d+) done", h2load_output)
    done = int(match.group(1)) if match else 0
    return cpu / done * 1e6 if done else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=10_000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--streams", type=int, default=8, help="concurrent streams per connection")
    ap.add_argument("--duration", type=int, default=15, help="measured seconds")
    ap.add_argument("--warmup", type=int, default=2, help="seconds before measuring")
    ap.add_argument("--rps", type=int, default=0, help="offered requests/s in total (0: as fast as possible)")
    ap.add_argument("--writer", choices=["thread", "inline"], default="inline", help="[store] writer")
    ap.add_argument(
        "--sweep-interval", type=float, default=0.0, help="seconds between sweeper slices (0: the service default)"
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="run a real `chf serve` child with [server] frontend_workers = N (0: chf serve in one process) "
        "instead of the in-process server",
    )
    ap.add_argument("--h2load", default=shutil.which("h2load") or "h2load")
    args = ap.parse_args(argv)
    if shutil.which(args.h2load) is None:
        print("h2load is missing: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    workdir = Path(tempfile.mkdtemp(prefix="chf-bench-nchf-"))
    try:
        res = runner(run(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(res["h2load_summary"])
    print(
        f"nchf update (fsync, {args.writer} writer): {res['rate']:,.0f} req/s  p50 {res['p50_ms']:.1f} ms  "
        f"p99 {res['p99_ms']:.1f} ms  "
        f"p99.9 {res['p999_ms']:.1f} ms  max {res['max_ms']:.1f} ms  batch {res['batch']:.0f}  "
        f"server cpu {res['server_cpu_us_per_request']:.0f} us/request {res['server_cpu_split_us'] or ''}  "
        f"statuses {res['statuses']}"
    )
    print(f"  h2load {res['h2load']}")
    if res["usage_charged_bytes"] < res["usage_expected_min_bytes"]:
        print(f"  USAGE MISMATCH: charged {res['usage_charged_bytes']} < {res['usage_expected_min_bytes']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
