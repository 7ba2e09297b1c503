"""The server under test: a real `chf serve` in a child process, with Gy, Nchf and the management API on free
loopback ports, a fresh store in a temporary directory, lines provisioned before it starts, its log in a file,
optionally pinned to one CPU (taskset), and what the chaos suite reads from outside: RSS, tracebacks, liveness.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import REPO, free_port

TOKEN = "chaos-test-token-0123456789"
ORIGIN_HOST = "chf.chaos"
REALM = "chaos"
# Lines 208990000000000 + n of one prepaid account on plan "payg" (conf/catalogue.toml): rating group 10 data
# (tiered), 40 SMS at 80,000 micro-units each: a one-shot debit of one event costs exactly that.
IMSI_BASE = 208990000000000
ACCOUNT = "chaos"
OPENING = 10**13
SMS_RATING_GROUP = 40
SMS_PRICE = 80_000


@dataclass
class Ports:
    gy: int = field(default_factory=free_port)
    nchf: int = field(default_factory=free_port)
    api: int = field(default_factory=free_port)


def config_text(
    home: Path, ports: Ports, *, durability: str = "os", gy: str = "", nchf: str = "", log_level: str = "warning"
) -> str:
    var = home / "var"
    return f"""
[chf]
data_dir = "{var}"
catalogue = "{REPO / "conf" / "catalogue.toml"}"
log_level = "{log_level}"

[store]
path = "{var / "chf.lmdb"}"
durability = "{durability}"
map_size_mb = 2048

[api]
listen = "127.0.0.1"
port = {ports.api}
tokens = {{ chaos = "{TOKEN}" }}

[gy]
listen = "127.0.0.1"
port = {ports.gy}
origin_host = "{ORIGIN_HOST}"
origin_realm = "{REALM}"
allow_unknown_peers = true
{gy}

[nchf]
listen = "127.0.0.1"
port = {ports.nchf}
{nchf}
"""


def provision(config: Path, lines: int) -> None:
    """One prepaid account holding OPENING micro-units and `lines` lines on plan payg, straight into the store
    (before the server opens it)."""
    from chf.core import provisioning
    from chf.runtime.config import load_config
    from tools.serve import build_service, open_store

    cfg = load_config(str(config))
    store = open_store(cfg)
    try:
        engine = build_service(cfg, store).engine
        now = int(time.time())

        def setup(txn: Any) -> None:
            provisioning.create_tenant(txn, "chaos", "chaos", "EUR", now)
            provisioning.create_account(
                txn, engine, account_id=ACCOUNT, tenant="chaos", payment="prepaid", now=now, balance=OPENING
            )
            for n in range(lines):
                provisioning.add_line(txn, engine, account=ACCOUNT, imsi=str(IMSI_BASE + n), plan="payg", now=now)

        store.write(setup)
    finally:
        store.close()


def rss_kb(pid: int) -> int:
    """Resident set size of a process in KiB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pin_self(cpu: int | None) -> None:
    """Pin this process (the generator) to one CPU, apart from the server's."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


class Server:
    """`chf serve` in a child process. `cpu`: the CPU it is pinned to (taskset), None for no pinning."""

    def __init__(
        self,
        home: Path,
        *,
        lines: int = 100,
        cpu: int | None = None,
        durability: str = "os",
        gy: str = "",
        nchf: str = "",
        ports: Ports | None = None,
        log_level: str = "warning",
    ) -> None:
        self.home = home
        self.ports = ports or Ports()
        self.cpu = cpu
        self.config = home / "chf.toml"
        self.log_path = home / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        home.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            config_text(home, self.ports, durability=durability, gy=gy, nchf=nchf, log_level=log_level)
        )
        if lines:
            provision(self.config, lines)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> None:
        pid_file = self.home / "var" / "chf.pid"
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
        command = [sys.executable, "-m", "tools.cli", "--config", str(self.config), "serve"]
        taskset = shutil.which("taskset")
        if self.cpu is not None and taskset:
            command = [taskset, "-c", str(self.cpu), *command]
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["PYTHONPATH"] = str(REPO)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, cwd=self.home, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not pid_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chf serve did not start; log:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kb(self) -> int:
        return rss_kb(self.pid) if self.alive() else 0

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid) if self.alive() else 0.0

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_bytes(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def tracebacks(self) -> int:
        """Tracebacks in the log so far: each is a crash the suite counts."""
        return self.log().count("Traceback (most recent call last)")

    def kill(self) -> None:
        """SIGKILL: no drain, no last commit; what was acknowledged must be on disk already."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.restarts += 1

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("chf serve did not stop on SIGTERM") from None
        return self.proc.returncode

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class RssSampler:
    """Samples a process's RSS every `interval` seconds in a thread: the peak between start() and stop()."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kb(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = rss_kb(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.peak = max(self.peak, rss_kb(self.pid))
