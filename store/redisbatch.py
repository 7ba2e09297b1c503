"""The Redis Cluster store's operations in batches: a few round trips per batch instead of two per operation.

A worker takes what is queued for it (up to `max_batch` operations) and runs them together:

1. Reads. Each operation runs against the records fetched so far for the batch. A read of a record not fetched
   yet stops the operation (`Miss`); the keys every stopped operation asked for are fetched in one pipeline per
   primary (one MGET per slot), and the stopped operations run again from their start. A session's requests
   need one such round: its account, line and session records are known from the session's hint before the
   first run. Runs are deterministic functions of what they read (a conflict re-runs them anyway), so a stopped
   run leaves nothing behind. After `MAX_ROUNDS` rounds an operation runs alone, with plain reads.
2. Commits. The commit script of every operation that wrote one partition goes down one pipeline per primary,
   followed by one `WAIT` there: the WAIT confirms every write the connection sent before it, so the whole
   batch on that primary is replicated or none of it is answered. Pointers an operation writes ahead of its
   commit go first, in a pipeline of their own with their own WAIT. An operation writing several partitions
   (provisioning) commits alone, by the two-phase commit.
3. Answers: every operation of the batch is answered in one call onto the event loop.

The optimistic concurrency is the one of single operations: the script checks every version read. Within a
batch, an operation runs on the records as the operations before it in the batch leave them (their writes with
the version stamps their commits give them), and the commits go in that order: many requests of one shared
wallet are charged in one batch, each checking the stamps the previous one wrote, so if one fails its commit the
ones built on it fail theirs and run again. An operation whose outcome would rest on such writes without its
commit checking them (it writes nothing, so its answer would leave without that commit; or it read them in a
partition it does not write; or it read a sorted set or a hash straight from Redis, which does not show them)
waits for the next batch instead. An operation that met a conflict, or whose commit answer was a redirection,
runs again in a later batch (or, for a redirection, alone through the single-operation path, which follows ASK
and MOVED).
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError

from store.interface import StoreBusy, StoreError
from store.redisstore import Miss, RedisTxn, Retry, _lua_pack, _reason
from store.schema import SchemaError

if TYPE_CHECKING:
    from store.redisstore import RedisStore, _Pending

log = logging.getLogger("chf.store.redis")

MAX_ROUNDS = 6  # read rounds before an operation runs alone (a session's request needs one)


class _Job:
    """One queued operation while its batch runs."""

    __slots__ = ("attempt", "by_part", "deadline", "direct", "pending", "result", "started", "txn")

    def __init__(self, pending: _Pending, op_timeout: float) -> None:
        self.pending = pending
        self.started = time.perf_counter()
        self.deadline = time.monotonic() + op_timeout
        self.attempt = 0
        self.txn: RedisTxn | None = None
        self.by_part: dict[int, Any] = {}
        self.direct = False  # it read something from Redis directly (a sorted set, a hash), not from the batch
        self.result: Any = None


class BatchWorker:
    """One worker thread's loop: its queue's operations, in batches (see the module docstring)."""

    def __init__(self, store: RedisStore, q: queue.SimpleQueue[_Pending | None], max_batch: int) -> None:
        self.store = store
        self.queue = q
        self.max_batch = max_batch
        self.carry: deque[_Job] = deque()  # operations waiting for the next batch (conflicts, a busy account)

    def run(self) -> None:
        stopping = False
        while not stopping or self.carry:
            jobs = list(self.carry)
            self.carry.clear()
            if not jobs and not stopping:
                first = self.queue.get()
                if first is None:
                    return
                jobs.append(_Job(first, self.store.op_timeout))
            while len(jobs) < self.max_batch and not stopping:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                jobs.append(_Job(item, self.store.op_timeout))
            if all(job.attempt for job in jobs):
                time.sleep(0.002)  # only operations that met a conflict or a lock: let the other side finish
            done = self.run_batch(jobs)
            self.store.finished(done)

    # -- one batch -------------------------------------------------------------------------------------------------
    def run_batch(self, jobs: list[_Job]) -> list[_Pending]:
        store = self.store
        # What the batch has read, then, over it, what its operations write in the order they will commit: an
        # operation runs on the records as the earlier ones of its batch leave them (one shared wallet charged by
        # many requests of one batch), and its commit checks their version stamps, so it fails if they fail.
        view: dict[str, bytes | None] = {}
        pending_writes: dict[str, int] = {}  # key written by an operation of the batch -> its partition
        finished: list[_Pending] = []
        ready = self._prefetch(jobs, view)
        to_commit: list[_Job] = []
        for _ in range(MAX_ROUNDS):
            wanted: dict[int, set[str]] = {}
            again: list[_Job] = []
            for job in ready:
                outcome = self._run(job, view, wanted)
                if outcome == "miss":
                    again.append(job)
                elif outcome in ("commit", "done") and job.txn is not None and _leans_on(job, pending_writes):
                    job.txn = None
                    self.carry.append(job)  # its answer would rest on writes not committed yet: the next batch
                elif outcome == "commit":
                    _write_over(job, view, pending_writes)
                    to_commit.append(job)
                elif outcome == "done":
                    finished.append(self._answer(job))
            ready = again
            if not ready:
                break
            self._fetch(wanted, view)
        for job in ready:  # still reading after MAX_ROUNDS: alone, with plain reads
            job.result = store.apply(job.pending.fn)
            finished.append(self._answer(job, counted=True))
        finished.extend(self._commit(to_commit))
        return finished

    def _prefetch(self, jobs: list[_Job], fetched: dict[str, bytes | None]) -> list[_Job]:
        """The records of the sessions whose home is known, in one pipeline."""
        store = self.store
        wanted: dict[int, set[str]] = {}
        for job in jobs:
            session = job.pending.affinity
            home = store.hints.get(("sx", session)) if session is not None else None
            if home is None:
                continue
            acct, line = home
            p = store.account_part(acct)
            tag = store.tag(p)
            keys = wanted.setdefault(store._slots[p], set())
            keys.update(
                (
                    f"{{{tag}}}:a:{acct}",
                    f"{{{tag}}}:ab:{acct}",
                    f"{{{tag}}}:l:{line}",
                    f"{{{tag}}}:lb:{line}",
                    f"{{{tag}}}:s:{session}",
                    f"{{{tag}}}:lock",
                )
            )
        if wanted:
            self._fetch(wanted, fetched)
        return jobs

    def _fetch(self, wanted: dict[int, set[str]], fetched: dict[str, bytes | None]) -> None:
        """One MGET per slot, pipelined per primary, all primaries at once. What could not be read (a redirection,
        a lost connection) stays unfetched: its operations ask again, then run alone."""
        store = self.store
        per_node: dict[str, tuple[Any, list[tuple[Any, ...]], list[list[str]]]] = {}
        for slot, keys in wanted.items():
            node = store.node_of_slot(slot)
            if node is None:
                continue
            ordered = [k for k in keys if k not in fetched]
            if not ordered:
                continue
            entry = per_node.setdefault(node.name, (node, [], []))
            entry[1].append(("MGET", *ordered))
            entry[2].append(ordered)
        answers = store.raw_pipelines({name: (node, cmds) for name, (node, cmds, _) in per_node.items()})
        failed = False
        for name, (_, _, key_lists) in per_node.items():
            got = answers[name]
            if isinstance(got, BaseException):
                failed = True
                continue
            for asked, values in zip(key_lists, got, strict=True):
                if isinstance(values, BaseException):
                    failed = True
                    continue
                fetched.update(zip(asked, values, strict=True))
        if failed:
            store.refresh()

    def _run(self, job: _Job, fetched: dict[str, bytes | None], wanted: dict[int, set[str]]) -> str:
        """Run the operation on what the batch has read: "miss" (it needs more), "commit" (it wrote), "done"
        (nothing to write, or it failed, or it must run again later: carried)."""
        store = self.store
        txn = RedisTxn(store, True)
        txn._seed = fetched
        job.txn = txn
        job.by_part = {}
        store.direct_reads(reset=True)
        try:
            job.result = job.pending.fn(txn)
            job.by_part = txn._writes() if (txn.wrote or txn._ahead) else {}
        except Miss as miss:
            wanted.setdefault(miss.slot, set()).update(miss.keys)
            return "miss"
        except Retry as exc:
            return self._retry(job, exc)
        except (StoreError, SchemaError) as exc:
            job.result = exc
            return "done"
        except Exception as exc:  # the operation's own failure: nothing was written
            job.result = exc
            return "done"
        job.direct = store.direct_reads()
        if not job.by_part and not txn._ahead:
            store.commits += 1
            return "done"
        return "commit"

    def _retry(self, job: _Job, exc: Retry) -> str:
        """A conflict: the operation runs again in the next batch, or is answered busy past its deadline."""
        store = self.store
        store.conflicts += 1
        job.attempt += 1
        job.txn = None
        if time.monotonic() > job.deadline or job.attempt >= store.max_attempts:
            job.result = StoreBusy(f"redis-cluster: gave up after {job.attempt} attempts: {exc}")
            return "done"
        self.carry.append(job)
        return "carried"

    def _answer(self, job: _Job, counted: bool = False) -> _Pending:
        store = self.store
        if not counted and not isinstance(job.result, BaseException):
            for observer in store.on_commit:
                observer(1, time.perf_counter() - job.started)
        job.pending.result = job.result
        return job.pending

    # -- commits ---------------------------------------------------------------------------------------------------
    def _commit(self, jobs: list[_Job]) -> list[_Pending]:
        store = self.store
        finished: list[_Pending] = []
        single: list[_Job] = []
        for job in jobs:
            if len(job.by_part) > 1:  # several partitions: the two-phase commit, alone
                finished.extend(self._alone(job))
            else:
                single.append(job)
        single = self._point_ahead(single, finished)
        per_node: dict[str, tuple[Any, list[tuple[Any, ...]], list[_Job]]] = {}
        for job in single:
            if not job.by_part:  # only pointers (written above)
                finished.append(self._succeeded(job))
                continue
            ((p, ws),) = job.by_part.items()
            assert job.txn is not None
            node = store.node_of_partition(p)
            keys = [store.lock_key(p), *sorted(ws.keys)]
            arg = _lua_pack([job.txn.checks_of(p), ws.payload(store.tag(p), store.partitions, p)])
            entry = per_node.setdefault(node.name, (node, [], []))
            entry[1].append(("EVALSHA", store.script_sha("commit"), len(keys), *keys, arg))
            entry[2].append(job)
        for _, cmds, _ in per_node.values():
            if store.min_replicas_acked:
                cmds.append(("WAIT", store.min_replicas_acked, store.wait_timeout_ms))
        answers = store.raw_pipelines({name: (node, cmds) for name, (node, cmds, _) in per_node.items()})
        for name, (_, _, node_jobs) in per_node.items():
            finished.extend(self._committed(node_jobs, answers[name]))
        return finished

    def _point_ahead(self, jobs: list[_Job], finished: list[_Pending]) -> list[_Job]:
        """Pointers of the batch, durably, before the commits they lead to; the operations whose pointers could not
        be written are answered busy."""
        store = self.store
        with_pointers = [job for job in jobs if job.txn is not None and job.txn._ahead]
        if not with_pointers:
            return jobs
        per_node: dict[str, tuple[Any, list[tuple[Any, ...]], list[_Job]]] = {}
        for job in with_pointers:
            assert job.txn is not None
            for key, value in job.txn._ahead.items():
                node = store.node_of_key(key)
                entry = per_node.setdefault(node.name, (node, [], []))
                entry[1].append(("SET", key, value))
                if job not in entry[2]:
                    entry[2].append(job)
        for _, cmds, _ in per_node.values():
            if store.min_replicas_acked:
                cmds.append(("WAIT", store.min_replicas_acked, store.wait_timeout_ms))
        answers = store.raw_pipelines({name: (node, cmds) for name, (node, cmds, _) in per_node.items()})
        failed: dict[int, str] = {}
        for name, (_, _, node_jobs) in per_node.items():
            problem = _pipeline_problem(answers[name], store.min_replicas_acked)
            if problem is not None:
                for job in node_jobs:
                    failed[id(job)] = problem
        if failed:
            store.refresh()
        out = []
        for job in jobs:
            problem = failed.get(id(job))
            if problem is None:
                out.append(job)
                continue
            job.result = StoreBusy(f"redis-cluster: pointers not written: {problem}")
            finished.append(self._answer(job))
        return out

    def _committed(self, jobs: list[_Job], answers: list[Any] | BaseException) -> list[_Pending]:
        store = self.store
        finished: list[_Pending] = []
        if isinstance(answers, BaseException):
            # Sent, maybe applied: unknown. Answered busy; a client's retry finds its stored answer.
            store.refresh()
            for job in jobs:
                job.result = StoreBusy(f"redis-cluster: commit outcome unknown: {_reason(answers)}")
                finished.append(self._answer(job))
            return finished
        replicated: str | None = None
        if store.min_replicas_acked:
            acked = answers[-1]
            if isinstance(acked, BaseException) or int(acked) < store.min_replicas_acked:
                replicated = (
                    f"redis-cluster: {store.min_replicas_acked} replica(s) did not confirm the commit within "
                    f"{store.wait_timeout_ms} ms (got {acked})"
                )
        for job, answer in zip(jobs, answers, strict=False):
            if isinstance(answer, BaseException):
                # Not applied (a redirection, a script the node does not know, the cluster down): alone, through
                # the single-operation path that follows redirections and loads scripts.
                if not _not_run(answer):
                    job.result = StoreError(f"redis-cluster: commit script failed: {answer}")
                    finished.append(self._answer(job))
                    continue
                finished.extend(self._alone(job))
                continue
            status = answer[0].decode() if isinstance(answer[0], bytes) else str(answer[0])
            if status != "OK":
                p = next(iter(job.by_part))
                try:
                    if status == "LOCKED":
                        store.locked(p, answer[1])
                    raise Retry(f"{status} {answer[1]!r}")
                except Retry as exc:
                    if self._retry(job, exc) == "done":
                        finished.append(self._answer(job))
                continue
            if replicated is not None:
                job.result = StoreBusy(replicated)
                finished.append(self._answer(job))
                continue
            finished.append(self._succeeded(job))
        return finished

    def _succeeded(self, job: _Job) -> _Pending:
        self.store.commits += 1
        return self._answer(job)

    def _alone(self, job: _Job) -> list[_Pending]:
        """Commit one operation by the single-operation path; a conflict carries it to the next batch."""
        assert job.txn is not None
        try:
            self.store.commit_parts(job.txn, job.by_part)
        except Retry as exc:
            if self._retry(job, exc) == "done":
                return [self._answer(job)]
            return []
        except (StoreError, SchemaError) as exc:
            job.result = exc
            return [self._answer(job)]
        return [self._succeeded(job)]


def _leans_on(job: _Job, pending_writes: dict[str, int]) -> bool:
    """Whether an operation's outcome rests on writes of its batch that its own commit does not check: a record
    written earlier in the batch read in a partition it does not write (or it writes nothing: its answer would
    leave without that commit), or anything read directly from Redis (which does not show the batch's writes) in
    a partition the batch writes."""
    txn = job.txn
    assert txn is not None
    if not pending_writes:
        return False
    mine = set(job.by_part)
    if job.direct and not mine.isdisjoint(pending_writes.values()):
        return True
    for key in txn._versions:  # a handful of keys; the batch's writes are many
        p = pending_writes.get(key)
        if p is not None and p not in mine:
            return True
    return False


def _write_over(job: _Job, view: dict[str, bytes | None], pending_writes: dict[str, int]) -> None:
    """Lay an operation's writes over the batch's view (values with the version stamp its commit gives them)."""
    for p, ws in job.by_part.items():
        sets = ws.sets
        for i in range(0, len(sets), 3):
            view[sets[i]] = sets[i + 1]
            pending_writes[sets[i]] = p
        for key in ws.dels:
            view[key] = None
            pending_writes[key] = p


def _not_run(answer: BaseException) -> bool:
    """An error answer that says the script did not run: a redirection, a script the node does not hold, the
    cluster or the node not ready. Anything else may have run part way and is not sent again."""
    if isinstance(answer, (MovedError, AskError, TryAgainError, ClusterDownError, NoScriptError)):
        return True
    if isinstance(answer, RedisConnectionError):  # LOADING: a node still reading its data
        return True
    return str(answer).startswith(("NOSCRIPT", "MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"))


def _pipeline_problem(answers: list[Any] | BaseException, min_acked: int) -> str | None:
    if isinstance(answers, BaseException):
        return _reason(answers)
    for answer in answers[:-1] if min_acked else answers:
        if isinstance(answer, BaseException):
            return _reason(answer)
    if min_acked:
        acked = answers[-1]
        if isinstance(acked, BaseException) or int(acked) < min_acked:
            return f"{min_acked} replica(s) did not confirm (got {acked})"
    return None
