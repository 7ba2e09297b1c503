"""The export stream against real sinks: JSON Lines files on disk and a real nats-server with JetStream.

The exporter runs in its own process (tests/export_worker.py) so it can be killed with SIGKILL mid-stream; the
broker is a real nats-server started here on an ephemeral port with a temporary store directory, killed with
SIGKILL mid-stream in its own test. Afterwards every committed event is downstream exactly once after
de-duplication on recordId, in spool order, with no gap in sequence numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chf.core import provisioning
from chf.core.catalogue_loader import load_catalogue
from chf.core.engine import Engine
from chf.export import parse_export_config
from chf.export.exporter import Exporter
from chf.export.files import FileSink
from chf.export.records import to_record
from chf.runtime.config import ConfigError
from store.lmdbstore import Store
from tests.support import free_port, require_tool

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = ROOT / "conf" / "catalogue.toml"
MAP_SIZE = 1 << 30


# ------------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------------
class Spool:
    """A store with one account; `produce(n)` commits n top-up events in small batches."""

    def __init__(self, path: Path) -> None:
        self.store = Store(path, map_size=MAP_SIZE)
        self.engine = Engine(load_catalogue(CATALOGUE))
        now = int(time.time())
        self.store.write(lambda txn: provisioning.create_tenant(txn, "mvno", "MVNO", "EUR", now))
        self.store.write(
            lambda txn: provisioning.create_account(
                txn, self.engine, account_id="acct", tenant="mvno", payment="prepaid", now=now
            )
        )

    def produce(self, count: int, batch: int = 25, pace: float = 0.0) -> None:
        now = int(time.time())
        op = lambda txn: provisioning.topup(txn, self.engine, "acct", 1_000, now=now, actor="test", reason="load")  # noqa: E731
        for start in range(0, count, batch):
            for result in self.store.run_batch([op] * min(batch, count - start)):
                assert not isinstance(result, BaseException), result
            if pace:
                time.sleep(pace)  # a steady stream rather than one burst

    def last(self) -> int:
        with self.store.read() as txn:
            return txn.last_event_seq()

    def cursor(self, name: str) -> int:
        with self.store.read() as txn:
            return txn.get_cursor("export:" + name)

    def ids(self) -> list[str]:
        with self.store.read() as txn:
            return [e["id"] for e in txn.events()]


class Producer:
    """Commits events from a thread while the test kills things, so every kill lands mid-stream."""

    def __init__(self, spool: Spool, count: int) -> None:
        self.thread = threading.Thread(target=spool.produce, args=(count, 25, 0.01), daemon=True)
        self.thread.start()

    def running(self) -> bool:
        return self.thread.is_alive()

    def join(self) -> None:
        self.thread.join(60)
        assert not self.thread.is_alive()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def start_worker(*args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.export_worker", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == b"started", proc.stderr.read() if proc.stderr else line
    return proc


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def terminate(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else None


def assert_exactly_once_in_order(delivered_ids: list[str], committed_ids: list[str]) -> int:
    """De-duplicate on recordId, keeping first appearances; that must be the committed spool, in order."""
    seen: set[str] = set()
    unique = []
    for rid in delivered_ids:
        if rid not in seen:
            seen.add(rid)
            unique.append(rid)
    assert unique == committed_ids
    seqs = [int(rid.rsplit("-", 1)[1]) for rid in unique]
    assert seqs == list(range(1, len(seqs) + 1)), "a gap or reordering in sequence numbers"
    return len(delivered_ids) - len(unique)


# ------------------------------------------------------------------------------------------------------------------
# record mapping and configuration
# ------------------------------------------------------------------------------------------------------------------
def test_usage_event_maps_to_ts32298_vocabulary() -> None:
    event = {
        "id": "ab12-7",
        "seq": 7,
        "kind": "usage",
        "time": 1_700_000_000,
        "actor": "network:gy",
        "reason": "final",
        "tenant": "mvno",
        "account": "alice",
        "subscriber": 3,
        "imsi": "001010000000001",
        "msisdn": "33600000001",
        "currency": "EUR",
        "session": "gy:s1",
        "rating_group": 10,
        "service_id": None,
        "units": {"bytes": 300, "bytes_in": 100, "bytes_out": 200},
        "unit": "bytes",
        "used": 300,
        "zone": "home",
        "tariff": "data-payg",
        "charge": 1500,
        "impacts": [{"balance": "account:alice:wallet", "unit": "money", "delta": -1500, "after": 8500}],
        "over_grant": 20,
    }
    record = to_record(event)
    assert record["recordId"] == "ab12-7" and record["recordSequenceNumber"] == 7
    assert record["timeOfReport"] == "2023-11-14T22:13:20Z"
    assert record["servedIMSI"] == "001010000000001" and record["servedMSISDN"] == "33600000001"
    assert record["ratingGroup"] == 10 and record["chargingSessionId"] == "gy:s1"
    assert record["usedUnits"] == {"totalVolume": 300, "datavolumeUplink": 100, "datavolumeDownlink": 200}
    assert record["causeForRecClosing"] == "final"
    assert (record["tariff"], record["charge"], record["currency"]) == ("data-payg", 1500, "EUR")
    assert record["balanceImpacts"][0]["after"] == 8500 and record["overGrant"] == 20
    assert "serviceIdentifier" not in record and "details" not in record
    # Fields without a record field of their own are kept under details.
    lifecycle = to_record({"id": "x-1", "seq": 1, "kind": "lifecycle", "time": 0, "state": "active", "from": "x"})
    assert lifecycle["details"] == {"state": "active", "from": "x"}


def test_export_config_errors_name_the_field() -> None:
    cfg = parse_export_config({"batch": 10, "files": {"max_bytes": 1000}, "nats": {}}, "var")
    assert cfg.batch == 10 and cfg.files is not None and cfg.files["directory"] == os.path.join("var", "export")
    assert cfg.nats is not None and cfg.nats["servers"] == ["nats://127.0.0.1:4222"]
    with pytest.raises(ConfigError) as exc:
        parse_export_config({"batch": 0, "files": {"max_age": "soon", "colour": 1}, "nats": {"servers": "x"}}, "var")
    text = str(exc.value)
    assert "[export] batch" in text and "[export.files] max_age" in text and "[export.files] colour" in text
    assert "[export.nats] servers" in text


# ------------------------------------------------------------------------------------------------------------------
# file sink
# ------------------------------------------------------------------------------------------------------------------
def read_export_dir(directory: Path) -> list[str]:
    ids = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            ids.append(json.loads(line)["recordId"])  # a torn line would fail here
    return ids


def test_file_sink_survives_a_killed_exporter_and_restarts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "chf.lmdb")
    out = tmp_path / "export"
    worker = start_worker(str(tmp_path / "chf.lmdb"), "files", str(out), "20000")
    try:
        producer = Producer(spool, 1500)
        wait_for(lambda: spool.cursor("files") >= 300, 30, "the exporter to pass 300 events")
        kill(worker)
        cursor_at_kill = spool.cursor("files")
        assert producer.running(), "killed mid-stream: events are still being committed"
        producer.join()
        worker = start_worker(str(tmp_path / "chf.lmdb"), "files", str(out), "20000")
        wait_for(lambda: spool.cursor("files") == spool.last(), 30, "the exporter to catch up")
        assert spool.cursor("files") > cursor_at_kill
        terminate(worker)
    finally:
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            kill(worker)
    assert not list(out.glob("*.tmp")), "a clean stop closes the open file"
    assert len(list(out.glob("*.jsonl"))) > 3, "files were rolled by size"
    duplicates = assert_exactly_once_in_order(read_export_dir(out), spool.ids())
    assert duplicates <= 50  # at most the one batch between acknowledgement and cursor commit
    spool.store.close()


async def test_file_sink_rolls_by_time_and_recovers_a_torn_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "chf.lmdb")
    out = tmp_path / "export"
    out.mkdir()
    # A file left by a crash in the middle of a line.
    (out / "chf-events-20260101T000000Z-000000000001.jsonl.tmp").write_bytes(b'{"recordId":"old-1"}\n{"recor')
    now = [1000.0]
    sink = FileSink(str(out), max_age=60, clock=lambda: now[0])
    spool.store.start(asyncio.get_running_loop())
    exporter = Exporter(spool.store, sink, batch=1000)
    try:
        await sink.open()
        recovered = (out / "chf-events-20260101T000000Z-000000000001.jsonl").read_bytes()
        assert recovered == b'{"recordId":"old-1"}\n'
        spool.produce(10)
        assert await exporter.step() == 10
        assert len(list(out.glob("*.jsonl.tmp"))) == 1
        now[0] += 61
        assert await exporter.step() == 0  # idle: the file is older than max_age and is closed
        assert not list(out.glob("*.jsonl.tmp"))
        assert len(list(out.glob("*.jsonl"))) == 2
    finally:
        await exporter.stop()
        await spool.store.stop()
        spool.store.close()


async def test_dead_sink_never_blocks_charging_and_backlog_is_reported(tmp_path: Path) -> None:
    class DeadSink:
        name = "dead"

        async def open(self) -> None:
            return None

        async def deliver(self, records: list[dict[str, Any]]) -> None:
            raise ConnectionError("sink down")

        async def idle(self) -> None:
            return None

        async def close(self) -> None:
            return None

    from chf import export
    from chf.runtime import metrics

    spool = Spool(tmp_path / "chf.lmdb")
    spool.store.start(asyncio.get_running_loop())
    exporter = Exporter(
        spool.store, DeadSink(), backlog_limit=5, poll_interval=0.01, retry_initial=0.01, retry_max=0.02
    )
    await exporter.start()
    try:
        failures_before = metrics.EXPORT_FAILED.labels("dead")._value.get()
        started = time.perf_counter()
        for _ in range(20):  # charging-side writes go through while the sink is dead
            await spool.store.submit(
                lambda txn: provisioning.topup(txn, spool.engine, "acct", 1, now=0, actor="t", reason="r")
            )
        assert time.perf_counter() - started < 5
        await asyncio.sleep(0.1)
        assert spool.cursor("dead") == 0
        assert export.backlogs(spool.store)["dead"] == (20, 5)
        assert metrics.EXPORT_FAILED.labels("dead")._value.get() > failures_before
        for _ in range(200):  # the gauge is refreshed at each retry
            if metrics.EXPORT_BACKLOG.labels("dead")._value.get() == 20:
                break
            await asyncio.sleep(0.01)
        assert metrics.EXPORT_BACKLOG.labels("dead")._value.get() == 20
    finally:
        await exporter.stop()
        await spool.store.stop()
        spool.store.close()


# ------------------------------------------------------------------------------------------------------------------
# NATS JetStream sink against a real nats-server
# ------------------------------------------------------------------------------------------------------------------
class NatsServer:
    def __init__(self, binary: str, store_dir: Path) -> None:
        self.binary = binary
        self.store_dir = store_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def accepting() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(accepting, 10, "nats-server to listen")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(require_tool("nats-server"), tmp_path / "jetstream")
    server.start()
    yield server
    server.kill()


async def stream_ids(url: str, stream: str = "CHF_EVENTS") -> list[str]:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        sub = await js.pull_subscribe("chf.events.>", stream=stream)
        ids: list[str] = []
        while len(ids) < info.state.messages:
            for msg in await sub.fetch(500, timeout=5):
                ids.append(json.loads(msg.data)["recordId"])
                assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == ids[-1]
                await msg.ack()
        return ids
    finally:
        await nc.close()


def test_nats_sink_survives_a_killed_exporter(tmp_path: Path, nats_server: NatsServer) -> None:
    spool = Spool(tmp_path / "chf.lmdb")
    worker = start_worker(str(tmp_path / "chf.lmdb"), "nats", nats_server.url)
    try:
        producer = Producer(spool, 2000)
        wait_for(lambda: spool.cursor("nats") >= 200, 30, "the exporter to pass 200 events")
        kill(worker)
        assert producer.running(), "killed mid-stream: events are still being committed"
        producer.join()
        worker = start_worker(str(tmp_path / "chf.lmdb"), "nats", nats_server.url)
        wait_for(lambda: spool.cursor("nats") == spool.last(), 60, "the exporter to catch up")
        terminate(worker)
    finally:
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            kill(worker)
    ids = asyncio.run(stream_ids(nats_server.url))
    assert assert_exactly_once_in_order(ids, spool.ids()) == 0, "JetStream de-duplicated on Nats-Msg-Id"
    spool.store.close()


def test_nats_sink_survives_a_killed_broker(tmp_path: Path, nats_server: NatsServer) -> None:
    spool = Spool(tmp_path / "chf.lmdb")
    worker = start_worker(str(tmp_path / "chf.lmdb"), "nats", nats_server.url)
    try:
        producer = Producer(spool, 2000)
        wait_for(lambda: spool.cursor("nats") >= 200, 30, "the exporter to pass 200 events")
        nats_server.kill()
        at_kill = spool.cursor("nats")
        assert producer.running(), "broker killed mid-stream: events are still being committed"
        producer.join()
        time.sleep(0.5)  # the exporter keeps failing and retrying meanwhile
        assert spool.cursor("nats") <= at_kill + 50, "nothing is acknowledged while the broker is down"
        nats_server.start()  # same port, same JetStream store directory
        wait_for(lambda: spool.cursor("nats") == spool.last(), 60, "the exporter to catch up")
        terminate(worker)
    finally:
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            kill(worker)
    ids = asyncio.run(stream_ids(nats_server.url))
    assert_exactly_once_in_order(ids, spool.ids())
    spool.store.close()


def test_usage_record_has_its_container_times() -> None:
    record = to_record(
        {
            "id": "x-9",
            "seq": 9,
            "kind": "usage",
            "time": 1_790_000_600,
            "opened": 1_790_000_000,
            "session_started": 1_789_999_000,
            "session": "gy:s",
            "used": 5,
            "unit": "bytes",
            "reason": "final",
        }
    )
    assert record["recordOpeningTime"] == "2026-09-21T14:13:20Z"
    assert record["duration"] == 600
    assert record["sessionStartTime"] == "2026-09-21T13:56:40Z"
    assert "details" not in record
