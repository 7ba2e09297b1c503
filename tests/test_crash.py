"""Durable before answered (docs/architecture.md), checked by killing the writer's process.

tests/crash_worker.py applies random operations through the real group-commit writer and prints each one
only after its commit was acknowledged. We SIGKILL it at random moments, many times over the same store, and
after every kill reopen the store and check that every acknowledged operation is there and that the
invariants (conservation, reservations, gap-free events) hold.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from chf.core.model import ChargingAnswer
from store.lmdbstore import Store
from tests.corekit import check_invariants

REPO = Path(__file__).resolve().parents[1]
KILLS = 20


def run_and_kill(store_dir: Path, run: int, rng: random.Random) -> list[dict[str, Any]]:
    """Start the worker, let it work for a random moment after it is ready, SIGKILL it; return its acks."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_worker", str(store_dir), str(run), str(rng.randrange(1 << 30))],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    received = bytearray()
    ready = b'{"op": "ready"}\n'
    deadline: float | None = None
    give_up = time.monotonic() + 20
    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        assert now < give_up, "the worker never became ready"
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            chunk = None
        if chunk:
            received += chunk
        elif chunk == b"" or proc.poll() is not None:
            break  # the worker ended on its own: reported below
        if deadline is None and received.startswith(ready):
            deadline = time.monotonic() + rng.uniform(0.05, 0.6)
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    os.set_blocking(fd, True)
    received += proc.stdout.read()
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"worker ended on its own: {stderr}"
    assert received.startswith(ready), f"worker did not start: {bytes(received[:200])!r} {stderr}"
    text = received.decode()
    # A line cut in the middle by the kill was never fully printed: the operation may or may not be durable.
    complete = text.split("\n")[:-1]
    return [json.loads(line) for line in complete]


def verify(store_dir: Path, acks: list[dict[str, Any]]) -> int:
    store = Store(store_dir)
    try:
        with store.read() as txn:
            check_invariants(txn)
            now = int(time.time())
            events_by_reason = {e["reason"] for e in txn.events() if e["kind"] == "topup"}
            for ack in acks:
                if ack["op"] == "session":
                    session = txn.get_session(ack["key"])
                    answer = ChargingAnswer.unpack(ack["answer"])
                    if session is None:
                        # Only an initial that reserved nothing and was refused leaves no session behind.
                        assert ack["kind"] == "initial" and answer.result != "success", ack
                        continue
                    assert session.last_request >= ack["number"], (ack, session.last_request)
                    stored = session.answer_for(ack["number"])
                    if stored is not None:
                        assert stored == ack["answer"], ack
                    if ack["kind"] == "terminate":
                        assert session.closed, ack
                elif ack["op"] == "topup":
                    assert txn.get_idem("api:" + ack["key"], now) == ack["value"], ack
                    assert ack["key"] in events_by_reason, ack
                elif ack["op"] == "event":
                    # Without an idempotency key an event is remembered by session + request number.
                    assert txn.get_idem(ack["key"] + "#0", now) == ack["answer"], ack
    finally:
        store.close()
    return len(acks)


def test_acknowledged_operations_survive_sigkill(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CRASH_SEED", "20261122")))
    store_dir = tmp_path / "store"
    acknowledged = 0
    started = time.monotonic()
    for run in range(KILLS):
        acks = [a for a in run_and_kill(store_dir, run, rng) if a["op"] != "ready"]
        acknowledged += verify(store_dir, acks)
    assert acknowledged > KILLS * 5, f"too little work was acknowledged to prove anything ({acknowledged})"
    print(f"{KILLS} kills, {acknowledged} acknowledged operations, {time.monotonic() - started:.1f}s")
