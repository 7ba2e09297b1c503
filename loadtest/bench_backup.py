"""Charging while `chf backup` runs: Gy throughput and latency with and without a backup in progress.

    python -m loadtest.bench_backup [--lines 100000] [--rate 2000] [--duration 15] [--durability fsync]

Starts `chf serve` (Gy) on a temporary store of --lines lines (each on its own plan, as `loadtest.gy --plan-on
line` provisions them), then drives loadtest.gy's Gy load for --duration seconds, --rounds times alone and then while
`chf backup` runs back to back in another process (each backup removed once it is done). Prints each run's
CCR-U/s, latency percentiles and server CPU per request, and the backups' timings (copy and digest, verify).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from loadtest.gy import REPO, drive, provision, server_config, wait_ready
from tests.support import free_port


class Backups:
    """`chf backup` back to back, in a thread, until stopped."""

    def __init__(self, config: Path, work: Path) -> None:
        self.config = config
        self.work = work
        self.done: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            dest = self.work / f"backup-{n}"
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "tools.cli", "--config", str(self.config), "--json", "backup", str(dest)],
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise SystemExit(f"chf backup failed: {done.stderr}")
            result = json.loads(done.stdout)
            self.done.append(
                {
                    "wall_s": round(time.monotonic() - started, 2),
                    "bytes": result["bytes"],
                    "events": result["last_event_seq"],
                    **result["seconds"],
                }
            )
            shutil.rmtree(dest)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="loadtest.bench_backup", description=__doc__)
    p.add_argument("--lines", type=int, default=100_000, help="lines in the store (the first --sessions carry load)")
    p.add_argument("--sessions", type=int, default=400)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--updates", type=int, default=20)
    p.add_argument("--rate", type=float, default=2000, help="target CCR-U/s (0 = as fast as possible)")
    p.add_argument("--duration", type=float, default=15)
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--durability", choices=("fsync", "os"), default="fsync")
    p.add_argument("--rounds", type=int, default=2, help="pairs of runs: without, then with backups running")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="chf-bench-backup-") as tmp:
        work = Path(tmp)
        port = free_port()
        config = server_config(work, port, args.durability)
        started = time.monotonic()
        provision(config, max(args.lines, args.sessions), "line")
        provisioned = round(time.monotonic() - started, 1)
        server = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "--config", str(config), "serve"], cwd=REPO, stderr=subprocess.DEVNULL
        )
        keys = ("ccr_u_per_s", "requests_per_s", "ccr_u_latency_ms", "server_cpu_us_per_request", "result_codes")
        runs: list[dict[str, Any]] = []
        backups = Backups(config, work)
        try:
            wait_ready(work, server)
            # Alternating runs: this machine's speed drifts with its neighbours, so compare neighbouring runs.
            for n in range(2 * args.rounds):
                with_backups = n % 2 == 1
                if with_backups:
                    backups = Backups(config, work)
                    backups.thread.start()
                try:
                    measured = asyncio.run(drive(args, "127.0.0.1", port, server.pid, first_session=n * 10**8))
                finally:
                    backups.stopping.set()
                    if with_backups:
                        backups.thread.join()
                runs.append({"backups_running": with_backups, **{k: measured[k] for k in keys}})
                if with_backups:
                    runs[-1]["backups"] = backups.done
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    result = {"lines": args.lines, "provisioned_s": provisioned, "runs": runs}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.lines:,} lines (provisioned in {provisioned} s), target {args.rate:g} CCR-U/s, {args.durability}")
    for run in runs:
        cpu = run["server_cpu_us_per_request"]["total"]
        lat = run["ccr_u_latency_ms"]
        label = "with backups" if run["backups_running"] else "no backup"
        print(
            f"  {label:<13} {run['ccr_u_per_s']:>6,} CCR-U/s  p50 {lat['p50']:7.2f} ms  p99 {lat['p99']:7.2f} ms"
            f"  server {cpu} us/request  codes {run['result_codes']}"
        )
        for b in run.get("backups", []):
            print(
                f"      backup of {b['events']:,} events, {b['bytes']:,} bytes: {b['wall_s']} s"
                f" (copy and digest {b['copy']}, verify {b['verify']})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
