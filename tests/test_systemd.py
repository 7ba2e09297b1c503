"""`chf serve` under systemd (deploy/chf.service, Type=notify): the notification protocol against a real Unix
datagram socket as $NOTIFY_SOCKET (READY=1 once every listener is up, WATCHDOG=1 pings, STOPPING=1 and a drain on
SIGTERM), the unit file itself (`systemd-analyze verify`, the hardening it promises)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gy.client import DiameterClient
from tests.serve_process import PEER, Ports, Serve, init_demo, write_config
from tests.support import REPO, require_tool
from tools.sdnotify import Notifier

UNIT = REPO / "deploy" / "chf.service"
WATCHDOG_USEC = 200_000  # pings every 0.1 s


@pytest.fixture
def home() -> Iterator[Path]:
    # Not tmp_path: a Unix socket path must stay under 108 bytes, and pytest's can be longer.
    with tempfile.TemporaryDirectory(prefix="chf-sd-") as name:
        yield Path(name)


@pytest.fixture
def notify_socket(home: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(home / "notify.sock"))
    sock.setblocking(False)
    yield sock
    sock.close()


async def datagram(sock: socket.socket, timeout: float) -> dict[str, str]:
    data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 4096), timeout)
    return dict(line.split("=", 1) for line in data.decode().splitlines())


async def until(sock: socket.socket, key: str, timeout: float = 30.0) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The first message with `key`, and the messages received before it."""
    before: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while True:
        message = await datagram(sock, max(deadline - time.monotonic(), 0.01))
        if key in message:
            return message, before
        before.append(message)


async def listening(port: int) -> bool:
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        return True
    return False


# ----------------------------------------------------------------------------------------------------------------------
# the protocol, against a real chf serve
# ----------------------------------------------------------------------------------------------------------------------
async def test_ready_after_the_listeners_watchdog_pings_stopping_and_drain(
    home: Path, notify_socket: socket.socket
) -> None:
    ports = Ports()
    write_config(home, ports)
    init_demo(home)
    serve = Serve(home, NOTIFY_SOCKET=str(home / "notify.sock"), WATCHDOG_USEC=str(WATCHDOG_USEC))
    client: DiameterClient | None = None
    try:
        ready, before = await until(notify_socket, "READY")
        # Every listener accepts once READY=1 is sent: Gy, Nchf and the management API.
        assert [await listening(p) for p in (ports.gy, ports.nchf, ports.api)] == [True, True, True]
        assert ready["READY"] == "1" and "gy" in ready["STATUS"] and "nchf" in ready["STATUS"], ready
        assert all(m == {"WATCHDOG": "1"} for m in before), before  # pings may start while the store opens
        serve.wait_for(r"event=ready")

        started = time.monotonic()
        pings = 0
        while time.monotonic() - started < 1.0:
            message = await datagram(notify_socket, 1.0)
            assert message == {"WATCHDOG": "1"}, message
            pings += 1
        assert 3 <= pings <= 15, pings  # every WATCHDOG_USEC / 2 (10 in a second), a loaded machine fewer

        client, _ = await DiameterClient.connect("127.0.0.1", ports.gy, PEER, "test")
        serve.proc.terminate()  # SIGTERM, what systemd sends on stop
        stopping, _ = await until(notify_socket, "STOPPING", timeout=10)
        assert stopping["STOPPING"] == "1" and "drain" in stopping["STATUS"]
        await asyncio.wait_for(client.closed, 15)
        assert client.received.get(282) == 1  # Gy DPR before the connection closed
        assert await asyncio.to_thread(serve.stop) == 0
        serve.wait_for(r"event=stopped")
    finally:
        if client is not None:
            client.close()
        serve.stop()


async def test_ready_waits_for_the_frontend_workers(home: Path, notify_socket: socket.socket) -> None:
    ports = Ports()
    write_config(home, ports, workers=1)
    init_demo(home)
    serve = Serve(home, NOTIFY_SOCKET=str(home / "notify.sock"), WATCHDOG_USEC=str(WATCHDOG_USEC))
    try:
        await until(notify_socket, "READY")
        # Only the worker listens on the Gy and Nchf ports: they accept, so the worker was up before READY=1.
        assert await listening(ports.gy) and await listening(ports.nchf)
        started = re.search(r"pid=(\d+)", serve.wait_for(r"event=worker_started worker=0"))
        assert started is not None
        environ = Path(f"/proc/{started[1]}/environ").read_bytes().split(b"\0")
        # systemd hears the core only: the worker inherits none of its variables.
        assert not [v for v in environ if v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_"))]
        serve.proc.terminate()
        await until(notify_socket, "STOPPING", timeout=10)
        assert await asyncio.to_thread(serve.stop) == 0
    finally:
        serve.stop()


# ----------------------------------------------------------------------------------------------------------------------
# the notifier on its own
# ----------------------------------------------------------------------------------------------------------------------
def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier.from_environment()
    assert not notifier.enabled and notifier.send("READY=1") is False


def test_environment_is_taken_and_the_watchdog_must_be_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier.from_environment()
    assert notifier.watchdog_interval == 30.0
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)  # the workers inherit none
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert Notifier.from_environment().watchdog_interval is None


def test_abstract_socket_and_an_absent_listener() -> None:
    name = f"chf-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        notifier = Notifier("@" + name)
        assert notifier.send("READY=1", "STATUS=x")
        assert sock.recv(100) == b"READY=1\nSTATUS=x"
    assert notifier.send("WATCHDOG=1") is False  # nobody listens any more: logged, never raised


# ----------------------------------------------------------------------------------------------------------------------
# the unit file
# ----------------------------------------------------------------------------------------------------------------------
def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_unit_is_notify_with_watchdog_graceful_stop_and_hardened() -> None:
    d = directives()
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "KillMode": ["mixed"],
        "KillSignal": ["SIGTERM"],
        "NoNewPrivileges": ["yes"],
        "PrivateTmp": ["yes"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "ReadWritePaths": ["/var/lib/chf"],  # the data directory, the only writable path
        "StateDirectory": ["chf"],
        "CapabilityBoundingSet": [""],
        "User": ["chf"],
    }
    assert {k: d.get(k) for k in expected} == expected
    assert int(d["WatchdogSec"][0]) > 0 and int(d["TimeoutStopSec"][0]) >= 30 + 5 + 5  # workers, Gy, HTTP/2
    exec_start = d["ExecStart"][0].split()
    assert exec_start[1:] == ["--config", "/etc/chf/chf.toml", "serve"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # SIGHUP: catalogue reload
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "deploy/chf.service" in readme and exec_start[0].rsplit("/bin/", 1)[0] in readme  # the install steps


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    # verify checks that ExecStart's program exists: the copy starts one that does (the unit's own is installed by
    # the README's steps).
    unit = tmp_path / "chf.service"
    true = shutil.which("true") or "/bin/true"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace("/opt/chf/bin/chf", true), encoding="utf-8")
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify warns about unknown keys or values and still exits 0: any output is a failure.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
