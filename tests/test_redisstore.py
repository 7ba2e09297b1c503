"""The Redis Cluster store on a real cluster: what the LMDB-and-Redis suites (test_engine, test_service, Gy,
Nchf) do not show by themselves. Several "nodes" (stores opened twice on one namespace, as two `chf serve`
processes would) charging one shared account, cross-partition commits and the recovery of one whose holder
died, exporters taking over each other's partitions, and the cluster's bad states: a node unreachable at start,
a wrong password, CLUSTERDOWN (answered "too busy", never a wrong grant)."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import queue
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from chf.core import provisioning
from chf.core.model import SUCCESS
from chf.export import Exporter, FileSink
from chf.runtime.port import OVERLOAD, refusal
from store import interface
from store.interface import StoreBusy, StoreError
from store.redisstore import RedisStore, RedisTxn, _lua_pack
from tests.corekit import World, check_invariants, initial, terminate, update
from tests.redis_cluster import RedisCluster
from tests.support import REPO, require_tool

pytestmark = pytest.mark.interop


def rs(world: World) -> RedisStore:
    return cast(RedisStore, world.store)


@pytest.fixture
def world(redis_cluster: RedisCluster, tmp_path: Path) -> Iterator[World]:
    namespace = "w" + secrets.token_hex(5)
    w = World(tmp_path, opener=lambda: redis_cluster.store(namespace=namespace))
    w.tenant()
    yield w
    w.close()


def test_redis_classes_have_everything_the_interface_names() -> None:
    for protocol, implementation in ((interface.Txn, RedisTxn), (interface.Store, RedisStore)):
        for name, member in vars(protocol).items():
            if name.startswith("_") or not callable(member):
                continue
            assert hasattr(implementation, name), f"{implementation.__name__} lacks {name}"
            ours = inspect.signature(getattr(implementation, name))
            theirs = inspect.signature(member)
            assert list(ours.parameters) == list(theirs.parameters), name


def test_one_request_is_one_partition_and_keys_share_its_tag(world: World) -> None:
    world.account("a", balance=10_000)
    line, imsi = world.line("a", plan="payg")
    store = rs(world)
    assert world.charge(initial("s1", imsi)).result == SUCCESS
    txn = RedisTxn(store, True)
    assert txn.get_session("s1") is not None and txn.get_subscriber(line) is not None
    txn.get_account("a")
    txn.get_line_balances(line)
    slots = {store.rc.keyslot(k) for k in txn._versions}
    assert len(slots) == 1, txn._versions  # session, line, balances, account: one slot


def _charge_from(world: World, store: RedisStore, sessions: list[tuple[str, str]], rounds: int) -> None:
    def charge(request: Any) -> None:
        store.write(lambda txn: world.engine.charge(txn, request, world.now))

    for key, imsi in sessions:
        charge(initial(key, imsi))
        for n in range(1, rounds + 1):
            charge(update(key, n, imsi, used=700))
        charge(terminate(key, rounds + 1, imsi, used=300))


def test_two_nodes_charging_one_shared_account_never_overspend(world: World, redis_cluster: RedisCluster) -> None:
    """Two stores on one namespace (two chf nodes), four threads each, lines of one prepaid account: optimistic
    commits serialise them; the wallet never goes below what was reported used beyond grants, every balance is
    its events, and reservations are exactly what open sessions hold."""
    world.account("fam", balance=30_000)
    lines = [world.line("fam", plan="payg") for _ in range(8)]
    other = redis_cluster.store(namespace=rs(world).namespace)
    try:
        threads = []
        for i, (_, imsi) in enumerate(lines):
            store = rs(world) if i % 2 else other
            sessions = [(f"c{i}-{j}", imsi) for j in range(3)]
            threads.append(threading.Thread(target=_charge_from, args=(world, store, sessions, 4)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        other.close()
    with world.store.read() as txn:
        check_invariants(txn)
        account = txn.get_account("fam")
        assert account is not None and account.reserved == 0
        # Grants are never more than the wallet holds; usage inside grants cannot overdraw it.
        assert account.balance >= 0


def test_batches_of_two_nodes_charging_one_shared_account_lose_and_double_nothing(
    world: World, redis_cluster: RedisCluster
) -> None:
    """The batched path (store.redisbatch) the servers take: two stores on one namespace, each with two batch
    workers, every session's requests submitted at once on the event loop. Requests of one wallet meet in one
    batch (the later ones wait for the next) and across the two nodes (optimistic commits, conflicts). Every
    answer is a success, every balance is its events, and the wallet is charged exactly what the same sessions
    cost one after the other: no acknowledged debit lost, none twice."""
    world.account("ref", balance=20_000)
    _, ref_imsi = world.line("ref", plan="payg")
    for request in _session_requests("ref-0", ref_imsi, 5):
        assert world.charge(request).result == SUCCESS
    one_session = 20_000 - world.acct("ref").balance
    world.account("fam", balance=20_000)
    lines = [world.line("fam", plan="payg") for _ in range(8)]
    stores = [redis_cluster.store(namespace=rs(world).namespace, workers=2) for _ in range(2)]

    async def session(store: RedisStore, key: str, imsi: str) -> list[str]:
        results = []
        for request in _session_requests(key, imsi, 5):
            answer = await store.submit(lambda txn, r=request: world.engine.charge(txn, r, world.now), affinity=key)
            results.append(answer.result)
        return results

    async def run() -> list[list[str]]:
        loop = asyncio.get_running_loop()
        for store in stores:
            store.start(loop)
        try:
            keys = [(f"b{i}-{j}", imsi) for i, (_, imsi) in enumerate(lines) for j in range(3)]
            return await asyncio.gather(*[session(stores[n % 2], key, imsi) for n, (key, imsi) in enumerate(keys)])
        finally:
            for store in stores:
                await store.stop()

    try:
        answers = asyncio.run(run())
    finally:
        for store in stores:
            store.close()
    assert {r for a in answers for r in a} == {SUCCESS}
    assert all(store.commits > 0 for store in stores) and sum(store.conflicts for store in stores) > 0
    with world.store.read() as txn:
        check_invariants(txn)
        account = txn.get_account("fam")
        assert account is not None and account.reserved == 0
        assert account.balance == 20_000 - len(answers) * one_session


def test_a_retransmission_in_the_batch_of_its_original_waits_for_the_commit(world: World) -> None:
    """A request and its retransmission in one batch: the retransmission would be answered from the original's
    stored answer, which is not committed yet (its commit could fail): it waits for the next batch and is then
    answered from the committed answer, charged once."""
    from store.redisbatch import BatchWorker, _Job
    from store.redisstore import _Pending

    world.account("a", balance=10_000)
    _, imsi = world.line("a", plan="payg")
    assert world.charge(initial("s1", imsi)).result == SUCCESS
    store = rs(world)
    worker = BatchWorker(store, queue.SimpleQueue(), 256)
    request = update("s1", 1, imsi, used=700)

    def job() -> Any:
        return _Job(_Pending(lambda txn: world.engine.charge(txn, request, world.now), None, None, "s1"), 5.0)

    original, again = job(), job()
    done = worker.run_batch([original, again])
    assert done == [original.pending] and list(worker.carry) == [again]
    worker.carry.clear()
    assert worker.run_batch([again]) == [again.pending]
    assert again.pending.result.result == original.pending.result.result == SUCCESS
    usage = [e for e in world.events() if e["kind"] == "usage" and e.get("session") == "s1"]
    assert [e["used"] for e in usage] == [700]
    with world.store.read() as txn:
        check_invariants(txn)


def _session_requests(key: str, imsi: str, rounds: int) -> list[Any]:
    return [
        initial(key, imsi),
        *[update(key, n, imsi, used=700) for n in range(1, rounds + 1)],
        terminate(key, rounds + 1, imsi, used=300),
    ]


def test_cross_partition_commit_is_atomic(world: World) -> None:
    """A new line writes its account's partition, its identity indexes' and the global line counter: one
    two-phase commit. A second line with the same IMSI is refused, even from another node."""
    world.account("a", balance=0)
    world.account("b", balance=0)
    line, imsi = world.line("a")
    with pytest.raises(provisioning.Conflict):
        world.admin(provisioning.add_line, account="b", imsi=imsi)
    with world.store.read() as txn:
        assert txn.subscriber_by("imsi", imsi).id == line  # type: ignore[union-attr]
        assert list(txn.lines_of_account("b")) == []
        check_invariants(txn)


def _prepare_and_maybe_decide(store: RedisStore, fn: Any, decide: bool, lease_ms: int) -> bytes:
    """What a node does before it dies in the middle of a cross-partition commit: lock every partition (and
    record the decision when `decide`), with a deadline `lease_ms` away. Returns the lock."""
    txn = RedisTxn(store, True)
    fn(txn)
    by_part = txn._writes()
    if txn._ahead:
        store._point_ahead(txn._ahead)
    order = sorted(by_part)
    assert len(order) > 1
    txid = secrets.token_hex(8)
    deadline = int(time.time() * 1000) + lease_ms
    lock = f"{txid}|{order[0]}|{deadline}|{','.join(map(str, order))}".encode()
    for p in order:
        assert store._script(p, "prepare", [store.lock_key(p)], [_lua_pack(txn.checks_of(p)), lock])[0] == b"OK"
    if decide:
        intent = [
            [p, [[store.lock_key(p), *sorted(by_part[p].keys)], by_part[p].payload(store.tag(p), store.partitions, p)]]
            for p in order
        ]
        key = f"{{{store.tag(order[0])}}}:tx:{txid}"
        assert store._script(order[0], "decide", [store.lock_key(order[0]), key], [lock, _lua_pack(intent)])[0] == b"OK"
    return lock


@pytest.mark.parametrize("decided", [True, False])
def test_a_dead_holders_commit_is_rolled_forward_or_released(world: World, decided: bool) -> None:
    world.account("a", balance=0)
    engine, now = world.engine, world.now

    def add(txn: Any) -> Any:
        return provisioning.add_line(txn, engine, account="a", imsi="208099999999999", now=now)

    _prepare_and_maybe_decide(rs(world), add, decided, lease_ms=300)
    # Meanwhile the partitions are held: a request on them waits (and retries) until the deadline passes and
    # the lock is resolved, then goes through.
    started = time.monotonic()
    result = world.admin(provisioning.topup, "a", 500, actor="t", reason="after the crash")
    assert result.value["balance"] == 500
    assert time.monotonic() - started >= 0.2
    with world.store.read() as txn:
        found = txn.subscriber_by("imsi", "208099999999999")
        assert (found is not None) == decided
        assert len(list(txn.lines_of_account("a"))) == (1 if decided else 0)
        check_invariants(txn)


def test_exporters_on_two_nodes_deliver_every_event_in_account_order(
    world: World, redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    """Two exporters of one sink (on two nodes) share the partitions by lease; one stops mid-way and the other
    takes over its partitions, pending entries first: every event is delivered, each account's in order."""
    for a in ("a", "b", "c", "d"):
        world.account(a, balance=100_000)
        for _ in range(2):
            world.line(a, plan="payg")
    for i in range(40):
        world.admin(provisioning.topup, "abcd"[i % 4], 10, actor="t", reason=f"r{i}")
    out = tmp_path / "export"
    other = redis_cluster.store(namespace=rs(world).namespace)

    async def run() -> None:
        first = Exporter(world.store, FileSink(str(out / "node1"), max_age=0.05), batch=7)
        await first.sink.open()
        delivered = 0
        for _ in range(3):
            delivered += await first.step()
        assert delivered > 0
        # The first node "dies" holding its leases: they lapse; the second takes the partitions over.
        await first.sink.close()
        rs(world)._leases.clear()
        for key in redis_cluster_keys(other, "lease:export:files"):
            other.rc.delete(key)
        second = Exporter(other, FileSink(str(out / "node2"), max_age=0.05), batch=7)
        await second.sink.open()
        while await second.step():
            pass
        await second.sink.close()

    asyncio.run(run())
    other.close()
    records = []
    for path in sorted(out.glob("node1/*.jsonl")) + sorted(out.glob("node2/*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    with world.store.read() as txn:
        committed = list(txn.events())
    by_id = {r["recordId"]: r for r in records}
    assert set(by_id) == {e["id"] for e in committed}
    per_account: dict[str, list[int]] = {}
    seen: set[str] = set()
    for r in records:
        if r["recordId"] in seen:
            continue  # at least once: a batch pending at the takeover may come twice
        seen.add(r["recordId"])
        per_account.setdefault(str(r.get("account") or r.get("accountId")), []).append(r["recordSequenceNumber"])
    for seqs in per_account.values():
        assert seqs == sorted(seqs)


def redis_cluster_keys(store: RedisStore, suffix: str) -> list[str]:
    return [f"{{{store.tag(p)}}}:{suffix}" for p in range(store.partitions)]


# -- bad cluster states -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fragile_cluster() -> Iterator[RedisCluster]:
    """A cluster of its own for the tests that break it: 3 primaries, 3 replicas, a password."""
    require_tool("redis-server")
    cluster = RedisCluster(password="s3cret-" + secrets.token_hex(4)).start()
    yield cluster
    cluster.stop()


def test_unreachable_nodes_at_start_are_a_clear_error() -> None:
    with pytest.raises(StoreError, match="cannot reach the cluster"):
        RedisStore(["127.0.0.1:1"], op_timeout=0.5)


def test_wrong_password_is_a_clear_error(fragile_cluster: RedisCluster) -> None:
    with pytest.raises(StoreError, match=r"authentication failed|invalid username-password|WRONGPASS"):
        RedisStore(fragile_cluster.addresses, password="wrong", op_timeout=0.5)


def test_clusterdown_answers_busy_never_a_wrong_grant(fragile_cluster: RedisCluster, tmp_path: Path) -> None:
    namespace = "f" + secrets.token_hex(4)
    w = World(tmp_path, opener=lambda: fragile_cluster.store(namespace=namespace, op_timeout=1.5))
    w.tenant()
    w.account("a", balance=10_000)
    _, imsi = w.line("a", plan="payg")
    assert w.charge(initial("s1", imsi)).result == SUCCESS
    with w.store.read() as txn:
        before = txn.get_account("a").reserved  # type: ignore[union-attr]
    # The primary of the account's partition and its replica die: those slots are down (CLUSTERDOWN).
    store = rs(w)
    p = RedisTxn(store, False)._acct_part("a")
    slot = store.rc.keyslot(store.lock_key(p))
    primary = fragile_cluster.primary_of_slot(slot)
    replica = next(
        n
        for n in fragile_cluster.nodes
        if n is not primary and f"master_port:{primary.port}" in fragile_cluster.redis_cli(n, "INFO", "replication")
    )
    # Stopped, not killed: both come back unchanged (SIGCONT), so no failover happens meanwhile.
    stopped = [n.proc.pid for n in (primary, replica) if n.proc is not None]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(2.5)  # past cluster-node-timeout: the cluster marks them failed
        with pytest.raises(StoreBusy) as caught:
            w.charge(update("s1", 1, imsi, used=100))
        assert refusal(caught.value) is OVERLOAD  # Gy 3004 DIAMETER_TOO_BUSY, Nchf 503 with Retry-After
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    fragile_cluster.wait_ok(replicas=False)
    # Back: nothing was granted or charged while it was down; the session goes on.
    answer = None
    for _ in range(50):
        try:
            answer = w.charge(update("s1", 1, imsi, used=100))
            break
        except StoreBusy:
            time.sleep(0.2)
    assert answer is not None and answer.result == SUCCESS
    with w.store.read() as txn:
        assert txn.get_account("a").reserved == before  # type: ignore[union-attr]
        check_invariants(txn)
    w.close()


def test_the_cli_works_unchanged_on_the_cluster(
    redis_cluster: RedisCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`chf init --demo`, a line, a top-up, the event tail and a revenue report, on [store] backend =
    "redis-cluster": the commands reach the store through the same interface."""
    from tools.cli import main

    nodes = ", ".join(f'"{a}"' for a in redis_cluster.addresses)
    (tmp_path / "chf.toml").write_text(
        f'[chf]\ndata_dir = "var"\ncatalogue = "{REPO / "conf" / "catalogue.toml"}"\n\n'
        f'[store]\nbackend = "redis-cluster"\nnodes = [{nodes}]\nnamespace = "cli{secrets.token_hex(4)}"\n'
        "partitions = 8\n"
    )
    monkeypatch.chdir(tmp_path)

    def chf(*args: str) -> Any:
        status = main(["--config", "chf.toml", *args])
        out = capsys.readouterr()
        assert status == 0, out.err
        if "--json" not in args:
            return out.out
        try:
            return json.loads(out.out)
        except json.JSONDecodeError:  # JSON Lines (events tail)
            return [json.loads(x) for x in out.out.strip().splitlines()]

    assert chf("init", "--demo", "--demo-file", str(REPO / "conf" / "demo.toml"), "--json")["demo"]
    line = chf("subscriber", "show", "208019000000001", "--json")
    assert line["account"] == "alice" and line["state"] == "active"
    before = chf("account", "show", "alice", "--json")["balance"]
    chf("account", "topup", "alice", "10.00", "--reason", "shop", "--json")
    assert chf("account", "show", "alice", "--json")["balance"] == before + 10_000_000
    events = chf("events", "tail", "-n", "3", "--json")
    assert events and events[-1]["kind"] == "topup"
    assert "alice" in chf("account", "list")
    report = chf("report", "revenue", "--from", "2000-01-01", "--to", "2100-01-01", "--json")
    assert report is not None


def test_a_partition_moving_to_another_primary_keeps_charging(world: World, redis_cluster: RedisCluster) -> None:
    """The slot of an account's partition migrates (CLUSTER SETSLOT MIGRATING/IMPORTING, MIGRATE, SETSLOT NODE)
    while its sessions are charged: requests meet ASK/TRYAGAIN during the move and MOVED after it, and are
    retried; every one is answered, charged once."""
    world.account("mv", balance=10**9)
    _, imsi = world.line("mv", plan="payg")
    store = rs(world)
    p = RedisTxn(store, False)._acct_part("mv")
    slot = store.rc.keyslot(store.lock_key(p))
    src = redis_cluster.primary_of_slot(slot)
    dst = next(n for n in redis_cluster.primaries() if n is not src)
    src_id = redis_cluster.redis_cli(src, "CLUSTER", "MYID").strip()
    dst_id = redis_cluster.redis_cli(dst, "CLUSTER", "MYID").strip()
    assert world.charge(initial("mv1", imsi)).result == SUCCESS
    answers: list[Any] = []
    done = threading.Event()

    def charge() -> None:
        n = 1
        while not done.is_set() or n < 20:
            answers.append(world.charge(update("mv1", n, imsi, used=100)))
            n += 1

    worker = threading.Thread(target=charge)
    worker.start()
    try:
        time.sleep(0.2)
        redis_cluster.redis_cli(dst, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", src_id)
        redis_cluster.redis_cli(src, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", dst_id)
        time.sleep(0.2)
        while True:
            keys = redis_cluster.redis_cli(src, "CLUSTER", "GETKEYSINSLOT", str(slot), "100").split()
            if not keys:
                break
            redis_cluster.redis_cli(src, "MIGRATE", "127.0.0.1", str(dst.port), "", "0", "5000", "KEYS", *keys)
        for node in redis_cluster.primaries():
            redis_cluster.redis_cli(node, "CLUSTER", "SETSLOT", str(slot), "NODE", dst_id)
    finally:
        done.set()
        worker.join()
    assert redis_cluster.primary_of_slot(slot) is dst
    assert answers and all(a.result == SUCCESS for a in answers)
    with store.read() as txn:
        session = txn.get_session("mv1")
        assert session is not None and session.last_request == len(answers)
        check_invariants(cast(Any, txn))


def test_chf_store_copy_lmdb_to_the_cluster_and_back(redis_cluster: RedisCluster, tmp_path: Path) -> None:
    """`chf store copy` (chf/runtime/storecopy.py) from LMDB into the cluster and back: every record, the events
    with their own numbers and ids, the line counter and the store id; the verification finds nothing different.
    The cluster copy then charges on: its new events number above every copied one."""
    from chf.core.engine import EngineConfig
    from chf.runtime import storecopy
    from store.lmdbstore import Store as LmdbStore
    from tests.corekit import fill_every_kind

    source = World(tmp_path / "source", config=EngineConfig(refund_window=30 * 86_400))
    imsis = fill_every_kind(source)
    cluster_store = redis_cluster.store(namespace="cp" + secrets.token_hex(4))
    report = storecopy.copy_store(source.store, cluster_store, batch=7)
    assert report["ok"], report["differences"]
    assert cluster_store.store_id == source.store.store_id
    back = LmdbStore(tmp_path / "back")
    again = storecopy.copy_store(cluster_store, back, batch=5)
    assert again["ok"], again["differences"]
    back.close()
    # The moved store goes on charging: a new event gets a number above every copied one, a new line the next id.
    last = source.last_seq()
    moved = World(tmp_path / "moved", opener=lambda: cluster_store, config=EngineConfig(refund_window=30 * 86_400))
    moved.now, moved._imsi = source.now, source._imsi
    imsi = next(iter(imsis.values()))
    before = {e["id"] for e in moved.events()}
    moved.charge(initial("after-the-move", imsi))
    new = [e for e in moved.events() if e["id"] not in before]
    assert new and all(e["seq"] > last for e in new)
    line, _ = moved.line(_accounts(cluster_store)[0].id)
    assert line == source.store.write(lambda txn: txn.new_subscriber_id())
    source.close()
    cluster_store.close()


def _accounts(store: RedisStore) -> list[Any]:
    with store.read() as txn:
        return list(txn.accounts())
