"""Gy load generator: sessions over several Diameter connections doing CCR-I, k x CCR-U, CCR-T.

By default it starts its own `chf serve` core in a child process (a fresh store in a temporary directory,
the demo catalogue, lines provisioned for every session) and reports the server's CPU alongside the
generator's; `--connect HOST:PORT` drives a server that is already running, with lines 208990000000000 + n that
`--provision-only CONFIG` writes into the store of that configuration beforehand (the server stopped: it opens the
store itself).

Examples:
    python -m loadtest.gy --duration 20 --sessions 2000 --updates 20          # maximum rate, fsync on
    python -m loadtest.gy --durability os --duration 20                        # fsync off
    python -m loadtest.gy --rate 5000 --duration 30                            # a target rate of CCR-U/s
Prints: requests/s by kind, p50/p99/p999 latency, result-code counts, server and generator CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from gy.client import DiameterClient, Mscc, ccr_avps
from gy.codec import FLAG_PROXIABLE, FLAG_REQUEST, Message, encode_message
from gy.grammar import CMD_CC

REPO = Path(__file__).resolve().parents[1]
IMSI_BASE = 208990000000000


def server_config(
    tmp: Path,
    port: int,
    durability: str,
    writer: str = "inline",
    workers: int = 0,
    redis: str = "",
    namespace: str = "",
    redis_workers: int = 4,
) -> Path:
    """A `chf serve` configuration in `tmp`: LMDB there, or the Redis cluster `redis` ("host:port,...") under
    `namespace` (every node of a multi-node run gets the same store, each its own directory and Gy port)."""
    path = tmp / "chf.toml"
    if redis:
        nodes = ", ".join(f'"{a}"' for a in redis.split(","))
        store = f'''backend = "redis-cluster"
nodes = [{nodes}]
namespace = "{namespace}"
workers = {redis_workers}
'''
    else:
        store = f'''path = "{tmp / "chf.lmdb"}"
durability = "{durability}"
writer = "{writer}"
map_size_mb = 4096
'''
    path.write_text(
        f"""
[chf]
data_dir = "{tmp}"
catalogue = "{REPO / "conf" / "catalogue.toml"}"
log_level = "warning"

[server]
frontend_workers = {workers}

[store]
{store}
[gy]
listen = "127.0.0.1"
port = {port}
origin_host = "chf.localdomain"
origin_realm = "localdomain"
allow_unknown_peers = true
max_inflight_per_peer = 100000
max_inflight = 100000
latency_budget_ms = 0  # no refusals: the rate at --sessions in flight is measured (admission: loadtest.chaos)
"""
    )
    return path


def provision(config: Path, lines: int, plan_on: str = "account", accounts: int = 1) -> None:
    """Lines of one postpaid account with a large credit limit, straight into the store. plan_on "account":
    the account holds plan postpaid-l and every line rates with it, so each request charges the one shared
    wallet (an IoT fleet's shape: one record written by every request). plan_on "line": every line has
    postpaid-l itself and spends its own allowance (a consumer base's shape)."""
    from chf.core import provisioning
    from chf.runtime.config import load_config
    from tools.serve import build_service, open_store

    cfg = load_config(str(config))
    store = open_store(cfg)
    service = build_service(cfg, store)
    engine = service.engine
    now = int(time.time())

    names = ["load"] if accounts <= 1 else [f"load-{i}" for i in range(accounts)]

    def setup(txn: Any) -> None:
        provisioning.create_tenant(txn, "load", "load", "EUR", now)

    def account(name: str) -> Callable[[Any], Any]:
        return lambda txn: provisioning.create_account(
            txn,
            engine,
            account_id=name,
            tenant="load",
            payment="postpaid",
            now=now,
            credit_limit=10**15,
            plan="postpaid-l" if plan_on == "account" else None,
        )

    store.write(setup)
    for r in store.run_batch([account(name) for name in names]):
        if isinstance(r, BaseException):
            raise r
    for start in range(0, lines, 2000):
        ops: list[Callable[[Any], Any]] = [
            partial(_add_line, engine, now, n, plan_on, names[n % len(names)])
            for n in range(start, min(lines, start + 2000))
        ]
        for r in store.run_batch(ops):
            if isinstance(r, BaseException):
                raise r
    store.close()


def _add_line(engine: Any, now: int, n: int, plan_on: str, account: str, txn: Any) -> Any:
    from chf.core import provisioning

    plan = "postpaid-l" if plan_on == "line" else None
    return provisioning.add_line(txn, engine, account=account, imsi=str(IMSI_BASE + n), now=now, plan=plan)


class Stats:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = {"I": [], "U": [], "T": []}
        self.codes: Counter[int] = Counter()
        self.errors = 0


_IDS = struct.Struct("!II")
_U32 = struct.Struct("!I")


class LoadClient(DiameterClient):
    """The generator's client, lean so that the generator leaves the CPU to the server on a 2-core machine:
    requests are pre-encoded per session and patched in place (CC-Request-Number, Hop-by-Hop, End-to-End),
    the writes of one loop iteration leave in one `write()`, and there is no timer per request (the run's end
    cancels whatever is still waiting)."""

    def __init__(self, origin_host: str, origin_realm: str) -> None:
        super().__init__(origin_host, origin_realm)
        self._out: list[bytes] = []
        # End-to-End ids as RFC 6733 3 has them start (the time's low 12 bits, then 20 random bits): a second run
        # from the same Origin-Host is not taken for retransmissions of the first.
        start = ((int(time.time()) & 0xFFF) << 20) | random.getrandbits(20)
        self._e2e = itertools.count(start)  # taken modulo 2^32 in send_ccr

    def send_raw(self, data: bytes) -> None:
        self._out.append(data)
        if len(self._out) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        if self.transport is not None:
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def send_ccr(self, template: bytearray, number_at: int, number: int) -> asyncio.Future[Message]:
        hbh = next(self._hbh)
        _IDS.pack_into(template, 12, hbh, next(self._e2e) & 0xFFFFFFFF)
        _U32.pack_into(template, number_at, number)
        future = self.expect(hbh)
        self.send_raw(bytes(template))
        return future


def data_offset(raw: bytes | bytearray, code: int) -> int:
    """Where the data of the first top-level AVP `code` (not vendor-specific) starts."""
    pos = 20
    while pos < len(raw):
        avp_code, flags_len = _IDS.unpack_from(raw, pos)
        if avp_code == code and not flags_len >> 31:
            return pos + 8
        pos += ((flags_len & 0xFFFFFF) + 3) & ~3
    raise ValueError(f"no AVP {code}")


def result_code(answer: Message) -> int:
    return int(_U32.unpack_from(answer.buf, data_offset(answer.buf, 268))[0])


def ccr_template(avps: list[bytes]) -> tuple[bytearray, int]:
    raw = encode_message(CMD_CC, FLAG_REQUEST | FLAG_PROXIABLE, 4, 0, 0, avps)
    return bytearray(raw), data_offset(raw, 415)


async def session_loop(
    n: int,
    client: LoadClient,
    stats: Stats,
    updates: int,
    stop_at: float,
    pace: asyncio.Semaphore | None,
    session_counter: itertools.count[int],
) -> None:
    host = client.origin_host
    # Session n's first session is cut short to n mod (updates + 1) updates: session ends and starts (CCR-T,
    # CCR-I, which --rate does not pace) then spread over time instead of all sessions turning over at once,
    # which measured a burst of 2,000 unpaced requests, and a p99 of 50-100 ms from it, every cycle.
    session_updates = n % (updates + 1)
    while time.monotonic() < stop_at:
        sid = f"{host};{n};{next(session_counter)}"
        imsi = str(IMSI_BASE + n)
        templates = {
            "I": ccr_template(
                ccr_avps(sid, 1, 0, origin_host=host, origin_realm="localdomain", imsi=imsi, mscc=[Mscc(10, {})])
            ),
            "U": ccr_template(
                ccr_avps(
                    sid,
                    2,
                    0,
                    origin_host=host,
                    origin_realm="localdomain",
                    mscc=[Mscc(10, {}, used=[{"bytes": 500_000, "reason": 3}])],
                )
            ),
            "T": ccr_template(
                ccr_avps(
                    sid,
                    3,
                    0,
                    origin_host=host,
                    origin_realm="localdomain",
                    mscc=[Mscc(10, used=[{"bytes": 1000, "reason": 2}])],
                )
            ),
        }
        kinds = ["I"] + ["U"] * session_updates + ["T"]
        session_updates = updates
        for number, kind in enumerate(kinds):
            if kind == "U" and pace is not None:
                await pace.acquire()
            template, number_at = templates[kind]
            started = time.perf_counter()
            try:
                answer = await client.send_ccr(template, number_at, number)
            except ConnectionError:
                stats.errors += 1
                return
            stats.latencies[kind].append(time.perf_counter() - started)
            stats.codes[result_code(answer)] += 1
            if time.monotonic() >= stop_at and kind != "T":
                break


async def pacer(sem: asyncio.Semaphore, rate: float, stop_at: float) -> None:
    """Releases `rate` CCR-U tokens per second in 1 ms steps."""
    step = 0.001
    credit = 0.0
    last = time.monotonic()
    while time.monotonic() < stop_at:
        await asyncio.sleep(step)
        now = time.monotonic()
        credit += (now - last) * rate
        last = now
        whole = int(credit)
        credit -= whole
        for _ in range(whole):
            sem.release()


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))] * 1000


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (chf serve's front-end workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return out


def tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of `pid` (the core) and of its children (front-end workers), which live the whole run."""
    workers = 0.0
    for child in children(pid):
        with contextlib.suppress(OSError):
            workers += proc_cpu(child)
    return {"core": proc_cpu(pid), "workers": workers}


def wait_ready(data_dir: Path, server: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """`chf serve` writes its pid file once it is ready, with every front-end worker listening."""
    deadline = time.monotonic() + timeout
    while not (data_dir / "chf.pid").exists():
        if time.monotonic() > deadline or server.poll() is not None:
            raise SystemExit("server did not start")
        time.sleep(0.1)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the server's event-loop thread (the main thread) and of all its other threads together
    (the store writer runs the engine there)."""
    out = {"loop": 0.0, "other": 0.0}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        out["loop" if int(tid) == pid else "other"] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def _cpu(pids: list[int]) -> float:
    return sum(sum(tree_cpu(pid).values()) for pid in pids)


async def drive(
    args: argparse.Namespace,
    host: str,
    port: int,
    server_pid: int | None,
    first_session: int = 0,
    *,
    addresses: list[tuple[str, int]] | None = None,
    other_pids: list[int] | None = None,
) -> dict[str, object]:
    """Run the load; `first_session` numbers the Session-Ids of a second run against the same server (the same
    ids again would be answered from the stored answers, charging nothing). With `addresses` the connections are
    spread over several chf nodes (connection i to node i mod n); `other_pids` are those nodes' other processes,
    whose CPU counts with the server's."""
    addresses = addresses or [(host, port)]
    others = other_pids or []
    clients = [
        (await LoadClient.connect(*addresses[i % len(addresses)], f"load{i}.localdomain", "localdomain"))[0]
        for i in range(args.connections)
    ]
    extra0 = _cpu(others)
    stats = Stats()
    warm_until = time.monotonic() + args.warmup
    stop_at = warm_until + args.duration
    pace = asyncio.Semaphore(0) if args.rate else None
    counter = itertools.count(first_session)
    tasks = [
        asyncio.create_task(session_loop(n, clients[n % len(clients)], stats, args.updates, stop_at, pace, counter))
        for n in range(args.sessions)
    ]
    if pace is not None:
        tasks.append(asyncio.create_task(pacer(pace, args.rate, stop_at)))
    await asyncio.sleep(args.warmup)
    stats.latencies = {"I": [], "U": [], "T": []}
    stats.codes.clear()
    tree0 = tree_cpu(server_pid) if server_pid else {}
    cpu0 = sum(tree0.values())
    threads0 = thread_cpu(server_pid) if server_pid else {}
    own0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    await asyncio.sleep(args.duration)
    elapsed = time.monotonic() - t0
    tree1 = tree_cpu(server_pid) if server_pid else {}
    cpu1 = sum(tree1.values()) + _cpu(others) - extra0
    threads1 = thread_cpu(server_pid) if server_pid else {}
    # With front-end workers the core's threads are "loop" and "other", the workers' processes "workers".
    threads0["workers"], threads1["workers"] = tree0.get("workers", 0.0), tree1.get("workers", 0.0)
    own1 = resource.getrusage(resource.RUSAGE_SELF)
    counts = {k: len(v) for k, v in stats.latencies.items()}
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in clients:
        c.close()
    every = [x for v in stats.latencies.values() for x in v]
    return {
        "duration_s": round(elapsed, 2),
        "requests_per_s": round(len(every) / elapsed),
        "ccr_u_per_s": round(counts["U"] / elapsed),
        "by_kind": counts,
        "latency_ms": {
            "p50": round(pct(every, 0.5), 2),
            "p99": round(pct(every, 0.99), 2),
            "p999": round(pct(every, 0.999), 2),
        },
        "ccr_u_latency_ms": {
            "p50": round(pct(stats.latencies["U"], 0.5), 2),
            "p99": round(pct(stats.latencies["U"], 0.99), 2),
            "p999": round(pct(stats.latencies["U"], 0.999), 2),
        },
        "result_codes": dict(stats.codes),
        "errors": stats.errors,
        "server_cpu_percent": round(100 * (cpu1 - cpu0) / elapsed) if server_pid else None,
        # CPU per answered request: the robust number on a shared machine (throughput depends on the neighbours).
        "server_cpu_us_per_request": (
            {
                "total": round(1e6 * (cpu1 - cpu0) / max(1, len(every))),
                **{k: round(1e6 * (threads1[k] - threads0[k]) / max(1, len(every))) for k in threads1},
            }
            if server_pid
            else None
        ),
        "generator_cpu_percent": round(
            100 * ((own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)) / elapsed
        ),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="loadtest.gy", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--sessions", type=int, default=1000, help="concurrent sessions (one request in flight each)")
    p.add_argument("--updates", type=int, default=20, help="CCR-U per session between CCR-I and CCR-T")
    p.add_argument("--rate", type=float, default=0, help="target CCR-U per second (0 = as fast as possible)")
    p.add_argument("--duration", type=float, default=20)
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--durability", choices=("fsync", "os"), default="fsync")
    p.add_argument("--connect", help="HOST:PORT[,HOST:PORT...] of running servers instead of starting one")
    p.add_argument("--redis", default="", help="host:port,... of a Redis cluster: the servers' store (redis-cluster)")
    p.add_argument("--nodes", type=int, default=1, help="chf serve nodes to start (with --redis; LMDB: 1)")
    p.add_argument("--accounts", type=int, default=1, help="accounts the lines are spread over (default: one)")
    p.add_argument("--redis-workers", type=int, default=4, help="[store] workers of the nodes (with --redis)")
    p.add_argument(
        "--provision-only",
        metavar="CONFIG",
        help="write the --sessions lines (and their account) into the store of CONFIG's chf.toml, then exit",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--writer", choices=("thread", "inline"), default="inline", help="the store's [store] writer")
    p.add_argument("--workers", type=int, default=0, help="the server's [server] frontend_workers")
    p.add_argument(
        "--plan-on",
        choices=("account", "line"),
        default="account",
        help="account: every request charges one shared wallet; line: each line spends its own allowance",
    )
    args = p.parse_args(argv)
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    if args.provision_only:
        provision(Path(args.provision_only), args.sessions, args.plan_on, args.accounts)
        print(f"provisioned {args.sessions} lines from {IMSI_BASE} into the store of {args.provision_only}")
        return 0
    if args.connect:
        addresses = [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in args.connect.split(",")]
        result = runner(drive(args, *addresses[0], None, addresses=addresses))
    else:
        result = run_servers(args, runner)
        result["durability"] = "redis-cluster" if args.redis else args.durability
    keys = ("connections", "sessions", "updates", "rate", "workers", "nodes", "accounts")
    result["settings"] = {k: getattr(args, k) for k in keys}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")
    return 0


def run_servers(args: argparse.Namespace, runner: Any) -> dict[str, object]:
    """Start `--nodes` chf serve processes (one store), provision, drive them, stop them."""
    from tests.support import free_port

    if args.nodes > 1 and not args.redis:
        raise SystemExit("--nodes > 1 needs --redis (LMDB is one process's store)")
    namespace = f"bench{os.getpid()}x{int(time.time())}"
    with tempfile.TemporaryDirectory(prefix="chf-bench-gy-") as tmp:
        dirs = [Path(tmp) / f"node{i}" for i in range(args.nodes)]
        ports = [free_port() for _ in dirs]
        configs = []
        for d, port in zip(dirs, ports, strict=True):
            d.mkdir()
            configs.append(
                server_config(
                    d, port, args.durability, args.writer, args.workers, args.redis, namespace, args.redis_workers
                )
            )
        provision(configs[0], args.sessions, args.plan_on, args.accounts)
        command = [sys.executable, "-c", "from tools.cli import main; raise SystemExit(main())", "serve", "--config"]
        servers = [subprocess.Popen([*command, str(c)], cwd=REPO) for c in configs]
        try:
            for d, server in zip(dirs, servers, strict=True):
                wait_ready(d, server)
            addresses = [("127.0.0.1", port) for port in ports]
            pids = [s.pid for s in servers]
            return runner(drive(args, *addresses[0], pids[0], addresses=addresses, other_pids=pids[1:]))
        finally:
            for server in servers:
                server.send_signal(signal.SIGTERM)
            for server in servers:
                server.wait(30)


if __name__ == "__main__":
    raise SystemExit(main())
