"""`chf store copy` and `chf store verify` (chf/runtime/storecopy.py): through the store interface only.

A copy holds every record of its source's snapshot (LMDB -> LMDB: byte for byte, counters and store id included),
carries on numbering lines and events where the source stopped, and ignores what the source commits while it
runs; the verification finds and names what differs between two stores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chf.core import provisioning
from chf.core.engine import EngineConfig
from chf.runtime import storecopy
from store.lmdbstore import Store, StoreError
from tests.corekit import World, check_invariants, fill_every_kind, initial, update
from tests.support import REPO

DAY = 86_400


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path / "source", config=EngineConfig(refund_window=30 * DAY))
    fill_every_kind(w)
    return w


def pairs(store: Store) -> dict[str, list[tuple[bytes, bytes]]]:
    with store.env.begin() as txn:
        out = {}
        for name, db in store._db.items():
            with txn.cursor(db=db) as cur:
                out[name.decode()] = [(bytes(k), bytes(v)) for k, v in cur]
        return out


def test_a_copy_holds_every_record_and_carries_on_where_the_source_stopped(world: World, tmp_path: Path) -> None:
    dest = Store(tmp_path / "dest")
    report = storecopy.copy_store(world.store, dest, batch=3)  # small batches: many writes, the same result
    assert report["ok"], report["differences"]
    assert report["differences"] == []
    for kind in storecopy.KINDS:
        counts = report["counts"][kind.name]
        assert counts["equal"] and counts["source"] == counts["destination"] > 0, kind.name
    assert report["copied"]["events"] == world.last_seq()
    assert dest.store_id == world.store.store_id
    assert pairs(dest) == pairs(world.store)  # LMDB to LMDB: the same keys and values, counters included
    with dest.read() as txn:
        check_invariants(txn)
    line = dest.write(lambda txn: txn.new_subscriber_id())
    assert line == world.store.write(lambda txn: txn.new_subscriber_id())  # no line id is handed out twice
    dest.close()
    after = World(tmp_path / "dest")
    assert after.charge(initial("s-copy", "208010000000002")).result == "success"  # the "pre" line
    after.admin(provisioning.topup, account_id="a", amount=1, reason="after the copy", actor="test")
    [event] = after.events(world.last_seq())
    assert event["seq"] == world.last_seq() + 1 and event["id"] == f"{world.store.store_id}-{event['seq']}"
    after.close()


def test_the_copy_is_of_one_moment_while_the_source_charges(world: World, tmp_path: Path) -> None:
    """The source commits while the copy reads it (from the progress callback): the copy is its snapshot."""
    dest = Store(tmp_path / "dest")
    pre = "208010000000002"
    written: list[int] = []

    def progress(kind: str, done: int, expected: int, final: bool) -> None:
        if kind == "lines" and not written:  # mid-copy: a new line, a top-up and usage on the source
            world.line("a", plan="pre")
            world.admin(provisioning.topup, account_id="a", amount=5_000_000, reason="mid-copy", actor="test")
            world.charge(update("s-open", 2, pre, 300))
            written.append(world.last_seq())

    before = world.last_seq()
    report = storecopy.copy_store(world.store, dest, progress=progress)
    assert written and written[0] > before
    assert report["ok"], report["differences"]
    assert report["last_event_seq"] == {"source": before, "destination": before}
    with dest.read() as txn:
        check_invariants(txn)
        assert txn.last_event_seq() == before
    later = storecopy.verify_stores(world.store, dest)  # the source now: it moved on
    assert not later["ok"]
    text = "\n".join(later["differences"])
    assert f"last event: source {written[0]}, destination {before}" in text
    assert "accounts: 1 different: a" in text
    assert "lines: 1 missing: #" in text
    assert f"events: {written[0] - before} missing" in text
    dest.close()


def test_verify_names_what_differs(world: World, tmp_path: Path) -> None:
    dest = Store(tmp_path / "dest")
    assert storecopy.copy_store(world.store, dest)["ok"]

    def damage(txn: Any) -> None:
        account = txn.get_account("a")
        account.balance += 1  # money out of nowhere, without an event
        txn.put_account(account)
        session = txn.get_session("s-closed")
        txn.delete_session(session)
        txn.put_cursor("cdr", 7)

    dest.write(damage)
    report = storecopy.verify_stores(world.store, dest)
    assert not report["ok"]
    text = "\n".join(report["differences"])
    assert "accounts: 1 different: a" in text
    assert "sessions: 1 missing: s-closed" in text
    assert "cursors: 1 extra: cdr" in text
    assert "balances: source" in text  # the wallet totals differ
    assert not report["counts"]["accounts"]["equal"] and report["counts"]["lines"]["equal"]
    dest.close()


def test_a_copy_goes_only_into_an_empty_store(world: World, tmp_path: Path) -> None:
    dest = Store(tmp_path / "dest")
    assert storecopy.copy_store(world.store, dest)["ok"]
    with pytest.raises(StoreError, match="not empty"):
        storecopy.copy_store(world.store, dest)
    dest.close()


def test_copied_events_keep_their_numbers_in_order(tmp_path: Path) -> None:
    """A spool copied from the Redis store (numbered per partition) keeps its gaps; order is required."""
    store = Store(tmp_path / "s")

    def copy(seq: int) -> None:
        store.write(lambda txn: txn.put_copied_event({"seq": seq, "id": f"x-{seq}", "kind": "topup"}))

    copy(3)
    copy(258)
    for seq in (258, 100):
        with pytest.raises(StoreError, match="does not come after event 258"):
            copy(seq)
    with store.read() as txn:
        assert txn.last_event_seq() == 258 and [e["id"] for e in txn.events()] == ["x-3", "x-258"]
    assert store.write(lambda txn: txn.append_event({"kind": "topup"})) == 259
    store.close()


# ----------------------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------------------
def chf(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_chf_store_copy_and_verify(world: World, tmp_path: Path) -> None:
    world.close()
    config = tmp_path / "chf.toml"
    config.write_text(f'[chf]\ndata_dir = "{tmp_path}"\n[store]\npath = "{tmp_path / "source"}"\n')
    done = chf(tmp_path, "--config", str(config), "store", "copy", "--to", "lmdb:copy", "--json")
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["ok"] and report["to"] == "lmdb:copy" and str(config) in report["from"]
    assert done.stderr == ""  # no progress bar into a pipe

    done = chf(tmp_path, "store", "verify", "--from", str(tmp_path / "source"), "--to", "copy", "--progress")
    assert done.returncode == 0, done.stderr
    assert "verified: identical" in done.stdout
    assert "events" in done.stderr and "records/s" in done.stderr  # the bars, asked for

    done = chf(tmp_path, "store", "copy", "--from", "lmdb:source", "--to", "lmdb:copy")
    assert done.returncode == 1 and "not empty" in done.stderr
    done = chf(tmp_path, "store", "copy", "--from", "nowhere", "--to", "lmdb:copy2")
    assert done.returncode == 2 and "lmdb:PATH" in done.stderr

    copy = Store(tmp_path / "copy")
    copy.write(lambda txn: txn.put_cursor("files", 9))
    copy.close()
    done = chf(tmp_path, "store", "verify", "--from", "lmdb:source", "--to", "lmdb:copy", "--json")
    assert done.returncode == 1
    assert "cursors: 1 different: files" in json.loads(done.stdout)["differences"]
