"""`chf backup` and `chf restore` (README "Backup and restore", store/lmdbbackup.py).

In-process: a backup holds every record of the snapshot and its manifest, passes its check, and a damaged one is
refused; a restore swaps the backup in, keeps the previous store aside, gives it a new store id (or keeps it) and
refuses while the store is open. Under load: a real `chf serve` answering Gy CCRs while `chf backup` runs twice;
each backup opens, passes its check and conservation (every balance is its opening value plus its events), its
spool is a prefix of the live one, and restoring it gives a store that `chf serve` charges on again.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chf.core import provisioning
from chf.core.engine import EngineConfig
from gy.client import DiameterClient, Mscc, ccr_avps
from gy.codec import find
from store import lmdbbackup
from store.lmdbstore import LOCK_FILE, Store, StoreError, StoreLocked, lock_store_dir
from tests.corekit import World, check_invariants, fill_every_kind, initial
from tests.serve_process import PEER, Ports, Serve, cli, environment, init_demo, write_config

DAY = 86_400


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path / "store", config=EngineConfig(refund_window=30 * DAY))
    fill_every_kind(w)
    return w


def pairs(path: Path) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every key and value of every sub-database of the store at `path`."""
    store = Store(path)
    try:
        with store.env.begin() as txn:
            out = {}
            for name, db in store._db.items():
                with txn.cursor(db=db) as cur:
                    out[name.decode()] = [(bytes(k), bytes(v)) for k, v in cur]
            return out
    finally:
        store.close()


def test_a_backup_holds_every_record_of_the_store_and_its_manifest(world: World, tmp_path: Path) -> None:
    result = lmdbbackup.backup(world.store, str(tmp_path / "b1"))
    assert result["verified"] and result["path"] == str(tmp_path / "b1")
    assert result["store_id"] == world.store.store_id
    assert result["last_event_seq"] == world.last_seq()
    counts = result["counts"]
    for db in (
        "tenants",
        "accounts",
        "subscribers",
        "idx_msisdn",
        "idx_iccid",
        "sessions",
        "idem",
        "debits",
        "cursors",
    ):
        assert counts[db] > 0, db  # the store of fill_every_kind has records of every kind
    assert sorted(os.listdir(tmp_path / "b1")) == [lmdbbackup.MANIFEST, "data.mdb"]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]
    manifest = json.loads((tmp_path / "b1" / lmdbbackup.MANIFEST).read_text())
    assert manifest["counts"] == counts and manifest["digests"] == result["digests"]
    world.close()
    assert pairs(tmp_path / "b1") == pairs(world.path)  # compaction renumbers pages, never records
    summary, problems = lmdbbackup.verify_backup(str(tmp_path / "b1"))
    assert problems == [] and summary["counts"] == counts
    backup = Store(tmp_path / "b1")
    try:
        with backup.read() as txn:
            check_invariants(txn)
    finally:
        backup.close()


def test_a_backup_of_an_account_with_many_active_lines(world: World, tmp_path: Path) -> None:
    """account_active is DUPFIXED: 600 active lines of one account spill its duplicates out of the page, which
    crashed LMDB's own compacting copy (MDB_CP_COMPACT)."""

    def add_lines(txn: Any) -> None:
        for n in range(600):
            provisioning.add_line(txn, world.engine, account="a", imsi=str(208017000000000 + n), now=world.now)

    world.write(add_lines)
    result = lmdbbackup.backup(world.store, str(tmp_path / "b1"))
    assert result["verified"] and result["counts"]["account_active"] >= 600
    with world.store.read() as txn:
        assert txn.active_line_count("a") >= 600
    world.close()
    assert pairs(tmp_path / "b1") == pairs(world.path)


def test_a_backup_never_overwrites(world: World, tmp_path: Path) -> None:
    (tmp_path / "b1").mkdir()
    with pytest.raises(StoreError, match="exists"):
        lmdbbackup.backup(world.store, str(tmp_path / "b1"))
    assert os.listdir(tmp_path / "b1") == []


def flip_a_byte_of_a_record(path: Path) -> None:
    """Damage a stored value in place (a bit flip of the disk): the account record of account "fam"."""
    data = path / "data.mdb"
    raw = bytearray(data.read_bytes())
    at = raw.find(b"fam")
    assert at > 0
    raw[at + 2] ^= 0x20  # "fam" -> "faM" inside the record
    data.write_bytes(bytes(raw))


def test_a_damaged_backup_is_refused(world: World, tmp_path: Path) -> None:
    lmdbbackup.backup(world.store, str(tmp_path / "b1"))
    flip_a_byte_of_a_record(tmp_path / "b1")
    _, problems = lmdbbackup.verify_backup(str(tmp_path / "b1"))
    assert problems and any("digest" in p or "differ" in p for p in problems), problems
    world.close()
    before = pairs(world.path)
    with pytest.raises(StoreError, match="failed its check"):
        lmdbbackup.restore(str(tmp_path / "b1"), str(world.path))
    assert pairs(world.path) == before  # nothing was touched


def test_the_check_finds_records_that_disagree(world: World) -> None:
    store = world.store
    dbs = store._db
    last = world.last_seq()
    with store.env.begin(write=True) as txn:
        txn.delete(b"208010000000002", db=dbs[b"idx_imsi"])  # a line its IMSI no longer finds
        txn.put(b"stray", b"L" + (99).to_bytes(8, "big"), db=dbs[b"sessions"])  # an index entry of no session
        txn.delete(last.to_bytes(8, "big"), db=dbs[b"events"])  # the last event lost
    _, problems = lmdbbackup.read_environment(store.env, check=True)
    text = "\n".join(problems.as_list())
    assert "subscribers" in text and "imsi neither indexed nor released" in text
    assert "idx_imsi: 6 entries, the records need 7" in text
    assert "sessions: 5 entries, the records need 4" in text
    assert f"events: the last is {last - 1}, the counter says {last}" in text


def test_restore_swaps_the_backup_in_and_keeps_the_previous_store(world: World, tmp_path: Path) -> None:
    lmdbbackup.backup(world.store, str(tmp_path / "b1"))
    backup_id = world.store.store_id
    world.close()
    at_backup = pairs(world.path)
    world.reopen()
    _, imsi = world.line("a", plan="pre")  # written after the backup: gone after the restore
    world.charge(initial("s-late", imsi))
    with pytest.raises(StoreLocked, match="stop it first"):
        lmdbbackup.restore(str(tmp_path / "b1"), str(world.path))  # the store is open
    world.close()
    after_backup = pairs(world.path)
    result = lmdbbackup.restore(str(tmp_path / "b1"), str(world.path))
    aside = Path(result["previous_store"])
    assert aside.parent == tmp_path and aside.name.startswith("store.pre-restore-")
    assert pairs(aside) == after_backup
    assert result["store_id"] != backup_id and result["backup_store_id"] == backup_id
    restored = pairs(world.path)
    assert restored.pop("meta") != at_backup.pop("meta")  # the new store id
    assert restored == at_backup
    world.reopen()
    assert world.store.store_id == result["store_id"]
    with world.store.read() as txn:
        check_invariants(txn)
        assert txn.subscriber_id_by("imsi", imsi) is None
    assert world.charge(initial("s-after", imsi="208010000000002")).result == "success"

    world.close()
    kept = lmdbbackup.restore(str(tmp_path / "b1"), str(world.path), keep_id=True)
    assert kept["store_id"] == backup_id
    assert len([p for p in os.listdir(tmp_path) if ".pre-restore-" in p]) >= 1


def test_restore_into_a_new_place(world: World, tmp_path: Path) -> None:
    lmdbbackup.backup(world.store, str(tmp_path / "b1"))
    result = lmdbbackup.restore(str(tmp_path / "b1"), str(tmp_path / "fresh" / "chf.lmdb"))
    assert result["previous_store"] is None
    assert sorted(os.listdir(tmp_path / "fresh")) == ["chf.lmdb"]
    world.close()
    assert {k: v for k, v in pairs(tmp_path / "fresh" / "chf.lmdb").items() if k != "meta"} == {
        k: v for k, v in pairs(world.path).items() if k != "meta"
    }


def test_an_opener_waits_for_a_restore_and_a_restore_for_openers(tmp_path: Path) -> None:
    path = tmp_path / "store"
    path.mkdir()
    held = lock_store_dir(str(path), exclusive=True, wait=0)
    try:
        started = time.monotonic()
        with pytest.raises(StoreLocked, match="a restore is swapping it"):
            lock_store_dir(str(path), exclusive=False, wait=0.3)
        assert time.monotonic() - started >= 0.3
    finally:
        os.close(held)
    store = Store(path)
    try:
        with pytest.raises(StoreLocked, match="open in another process"):
            lock_store_dir(str(path), exclusive=True, wait=0)
    finally:
        store.close()
    assert (path / LOCK_FILE).exists()
    os.close(lock_store_dir(str(path), exclusive=True, wait=0))  # closed: free again


# ----------------------------------------------------------------------------------------------------------------------
# Under load: a real chf serve, Gy traffic, chf backup beside it
# ----------------------------------------------------------------------------------------------------------------------
LINES = ["208019000000001", "208019000000002", "208019000000003", "208019000000011", "208019000000012"]
IMPORTED = 5_000  # lines without a plan, so that a backup has something to copy


def run_cli(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli(home), *args], cwd=home, env=environment(), capture_output=True, text=True, timeout=timeout
    )


class GyLoad:
    """Sessions doing CCR-I, CCR-U x 5, CCR-T in a loop on the demo lines, from a thread, until stopped."""

    def __init__(self, port: int, sessions: int = 20) -> None:
        self.port = port
        self.sessions = sessions
        self.answers = 0
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> GyLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the Gy load did not stop"

    def wait_answers(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.answers < count:
            assert not self.failures, self.failures[:5]
            assert time.monotonic() < deadline, f"only {self.answers} Gy answers"
            time.sleep(0.05)

    async def _run(self) -> None:
        client, _ = await DiameterClient.connect("127.0.0.1", self.port, PEER, "test")
        try:
            await asyncio.gather(*(self._session_loop(client, n) for n in range(self.sessions)))
        finally:
            client.close()

    async def _session_loop(self, client: DiameterClient, n: int) -> None:
        imsi = LINES[n % len(LINES)]
        round_ = 0
        while not self.stopping.is_set():
            round_ += 1
            session = f"backup-load;{n};{round_}"
            steps: list[list[bytes]] = [self._ccr(session, 1, 0, imsi=imsi, mscc=[Mscc(10, {})])]
            steps += [self._ccr(session, 2, k, mscc=[Mscc(10, {}, used=[{"bytes": 10_000}])]) for k in range(1, 6)]
            steps.append(self._ccr(session, 3, 6, mscc=[Mscc(10, None, used=[{"bytes": 10_000}])]))
            for avps in steps:
                answer = await client.ccr(avps)
                code = find(answer.avps, 268)
                result = code.u32() if code is not None else None
                self.answers += 1
                if result != 2001:
                    if result not in (4010, 4012):  # a line out of credit or allowance ends its session
                        self.failures.append(f"{session}: {result}")
                    break

    @staticmethod
    def _ccr(session: str, rtype: int, number: int, **kw: Any) -> list[bytes]:
        return ccr_avps(session, rtype, number, origin_host=PEER, origin_realm="test", **kw)


def events_of(path: Path) -> tuple[str, list[dict[str, Any]]]:
    store = Store(path)
    try:
        with store.read() as txn:
            check_invariants(txn)  # conservation, reservations, a gap-free spool
            return store.store_id, list(txn.events())
    finally:
        store.close()


def home_with_lines(tmp_path: Path) -> Ports:
    """A chf home with the demo data and IMPORTED lines more; returns its ports."""
    ports = Ports()
    write_config(tmp_path, ports)
    init_demo(tmp_path)
    rows = "imsi\n" + "".join(f"{208018000000000 + n}\n" for n in range(IMPORTED))
    (tmp_path / "lines.csv").write_text(rows)
    done = run_cli(tmp_path, "subscriber", "import", "lines.csv", "--account", "alice")
    assert done.returncode == 0, done.stderr
    return ports


def back_up_under_load(home: Path, ports: Ports) -> list[dict[str, Any]]:
    """`chf serve` under Gy load; two `chf backup`s meanwhile, and a `chf restore` refused. Returns the backups."""
    serve = Serve(home)
    backups: list[dict[str, Any]] = []
    try:
        serve.wait_for("event=ready")
        with GyLoad(ports.gy) as load:
            load.wait_answers(300)
            for name in ("b1", "b2"):
                answered = load.answers
                done = run_cli(home, "--json", "backup", str(home / name))
                assert done.returncode == 0, done.stderr
                backups.append(json.loads(done.stdout))
                assert load.answers > answered, "charging stood still while the backup ran"
            load.wait_answers(load.answers + 300)
            refused = run_cli(home, "restore", str(home / "b1"))
        assert refused.returncode == 1 and "is running on this store" in refused.stderr, refused.stderr
        assert load.answers > 1000 and not load.failures
    finally:
        assert serve.stop() == 0
    return backups


async def one_session(port: int) -> list[int]:
    """CCR-I and CCR-T with usage on a demo line; the Result-Codes."""
    client, _ = await DiameterClient.connect("127.0.0.1", port, PEER, "test")
    try:
        codes = []
        for avps in (
            GyLoad._ccr("after-restore;1", 1, 0, imsi=LINES[1], mscc=[Mscc(10, {})]),
            GyLoad._ccr("after-restore;1", 3, 1, mscc=[Mscc(10, None, used=[{"bytes": 1000}])]),
        ):
            code = find((await client.ccr(avps)).avps, 268)
            codes.append(code.u32() if code else 0)
        return codes
    finally:
        client.close()


def test_backup_while_chf_serve_charges_then_restore(tmp_path: Path) -> None:
    home = tmp_path
    ports = home_with_lines(home)
    store_dir = home / "var" / "chf.lmdb"
    backups = back_up_under_load(home, ports)

    live_id, live_events = events_of(store_dir)
    for b in backups:
        assert b["verified"] and b["store_id"] == live_id and b["counts"]["subscribers"] >= IMPORTED
        backup_id, events = events_of(Path(b["path"]))
        assert backup_id == live_id and len(events) == b["last_event_seq"]
        assert events == live_events[: len(events)]  # a moment of the live spool, nothing torn or reordered
    assert backups[0]["last_event_seq"] < backups[1]["last_event_seq"] < len(live_events)

    done = run_cli(home, "--json", "restore", str(home / "b2"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["store_id"] != live_id and Path(result["previous_store"]).exists()
    restored_id, events = events_of(store_dir)
    assert restored_id == result["store_id"] and len(events) == backups[1]["last_event_seq"]

    serve = Serve(home)
    try:
        serve.wait_for("event=ready")
        assert asyncio.run(one_session(ports.gy)) == [2001, 2001]
    finally:
        assert serve.stop() == 0
    _, after = events_of(store_dir)
    assert after[: len(events)] == events and len(after) > len(events)
    assert after[-1]["id"] == f"{result['store_id']}-{after[-1]['seq']}"  # new events: the new store id
