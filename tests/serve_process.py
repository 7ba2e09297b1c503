"""A real `chf serve` in a subprocess, as an operator runs it: the repository's catalogue and demo data, its own
configuration in a temporary directory, free loopback ports. Used by the deployment tests (systemd notification,
Prometheus scraping), which need a process of their own: its environment, its signals, a metrics registry that
only their own traffic fills."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import REPO, free_port

TOKEN = "deploy-test-token-0123456789"
PEER = "pgw.test"
# Lines of conf/demo.toml (`chf init --demo`): alice (prepaid-s) has data on rating group 10.
IMSI = "208019000000001"


@dataclass
class Ports:
    gy: int = field(default_factory=free_port)
    nchf: int = field(default_factory=free_port)
    api: int = field(default_factory=free_port)


def write_config(home: Path, ports: Ports, *, workers: int = 0, gy: str = "") -> Path:
    var = home / "var"
    path = home / "chf.toml"
    path.write_text(
        f"""
[chf]
data_dir = "{var}"
catalogue = "{REPO / "conf" / "catalogue.toml"}"
log_level = "info"

[server]
frontend_workers = {workers}

[store]
path = "{var / "chf.lmdb"}"
durability = "os"
map_size_mb = 64

[api]
listen = "127.0.0.1"
port = {ports.api}
tokens = {{ test = "{TOKEN}" }}

[export]
poll_interval = 0.05

[export.files]
directory = "{var / "export"}"
max_age = 1

[gy]
listen = "127.0.0.1"
port = {ports.gy}
origin_host = "chf.test"
origin_realm = "test"
peers = [{{ host = "{PEER}", realm = "test" }}]
{gy}

[nchf]
listen = "127.0.0.1"
port = {ports.nchf}
""",
        encoding="utf-8",
    )
    return path


def cli(home: Path) -> list[str]:
    return [sys.executable, "-m", "tools.cli", "--config", str(home / "chf.toml")]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def init_demo(home: Path) -> None:
    done = subprocess.run(
        [*cli(home), "init", "--demo", "--demo-file", str(REPO / "conf" / "demo.toml")],
        cwd=home,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


class Serve:
    """`chf serve` with its stderr collected line by line (a reader thread), stopped by SIGTERM."""

    def __init__(self, home: Path, **env: str) -> None:
        self.home = home
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [*cli(home), "serve"], cwd=home, env=environment(**env), stderr=subprocess.PIPE, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        """The first log line matching `pattern` (waiting for it); fails with the log if the process exits."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if re.search(pattern, line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"{pattern!r} not logged; log:\n{''.join(self.lines)}")
                self._changed.wait(min(left, 0.2))

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"chf serve did not stop on SIGTERM; log:\n{''.join(self.lines)}") from None
        finally:
            self._reader.join(5)
