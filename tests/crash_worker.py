"""Child process of tests/test_crash.py: random charging work through the real group-commit writer.

    python -m tests.crash_worker STORE_DIR RUN SEED

Opens the store (provisioning the lines on first use), then several asyncio tasks submit sessions, top-ups and
direct debits concurrently with `Store.submit`, so they share commits. Each operation is printed as one JSON
line on stdout only after its future resolved, i.e. after the commit holding it was fsync'd. The parent kills
this process with SIGKILL at a random moment and checks that every printed operation survived.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any

from chf.core import provisioning
from chf.core.engine import Engine
from chf.core.model import DIRECT_DEBITING
from store.lmdbstore import Store, Txn
from tests.corekit import TENANT, event, initial, terminate, test_catalogue, update

# (account, payment, plan of the account, credit limit, opening balance); lines are added per LINES below.
ACCOUNTS = [
    ("pre", "prepaid", None, 0, 50_000_000),
    ("post", "postpaid", None, 50_000_000, 0),
    ("fam", "postpaid", "fam", 50_000_000, 0),
]
LINES = [("pre", "payg"), ("pre", "pre"), ("post", "post"), ("fam", None), ("fam", None)]
FIRST_IMSI = 208015550000001
TASKS = 6


def imsi_of(index: int) -> str:
    return str(FIRST_IMSI + index)


def provision(store: Store, engine: Engine, now: int) -> None:
    def apply(txn: Txn) -> None:
        if txn.get_tenant(TENANT) is not None:
            return
        provisioning.create_tenant(txn, TENANT, TENANT, "EUR", now)
        for account_id, payment, plan, credit_limit, balance in ACCOUNTS:
            provisioning.create_account(
                txn,
                engine,
                account_id=account_id,
                tenant=TENANT,
                payment=payment,
                now=now,
                balance=balance,
                credit_limit=credit_limit,
                plan=plan,
            )
        for n, (account_id, plan) in enumerate(LINES):
            provisioning.add_line(txn, engine, account=account_id, imsi=imsi_of(n), plan=plan, now=now)

    store.write(apply)


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def worker(store: Store, engine: Engine, run: int, task: int, rng: random.Random) -> None:
    def now() -> int:
        return int(time.time())

    async def charge(req: Any) -> Any:
        return await store.submit(lambda txn: engine.charge(txn, req, now()))

    session_no = 0
    op_no = 0
    while True:
        choice = rng.random()
        line = rng.randrange(len(LINES))
        imsi = imsi_of(line)
        if choice < 0.6:
            session_no += 1
            key = f"crash:{run}:{task}:{session_no}"
            ans = await charge(initial(key, imsi))
            emit({"op": "session", "key": key, "number": 0, "kind": "initial", "answer": ans.pack()})
            if ans.result != "success":
                continue
            number = 0
            for _ in range(rng.randrange(0, 4)):
                number += 1
                ans = await charge(update(key, number, imsi, used=rng.randrange(0, 1500)))
                emit({"op": "session", "key": key, "number": number, "kind": "update", "answer": ans.pack()})
            number += 1
            ans = await charge(terminate(key, number, imsi, used=rng.randrange(0, 1500)))
            emit({"op": "session", "key": key, "number": number, "kind": "terminate", "answer": ans.pack()})
        elif choice < 0.8:
            op_no += 1
            key = f"topup:{run}:{task}:{op_no}"
            account = rng.choice(ACCOUNTS)[0]
            amount = rng.randrange(1, 5000)

            def do_topup(txn: Txn, account: str = account, amount: int = amount, key: str = key) -> Any:
                return provisioning.topup(
                    txn, engine, account, amount, now=now(), actor="crash", reason=key, idempotency_key=key
                ).value

            value = await store.submit(do_topup)
            emit({"op": "topup", "key": key, "account": account, "amount": amount, "value": value})
        else:
            op_no += 1
            key = f"debit:{run}:{task}:{op_no}"
            ans = await charge(event(key, imsi, DIRECT_DEBITING, amount={"events": rng.randrange(1, 4)}))
            emit({"op": "event", "key": key, "answer": ans.pack()})


async def main(path: str, run: int, seed: int) -> None:
    catalogue = test_catalogue()
    engine = Engine(catalogue)
    store = Store(path)
    provision(store, engine, int(time.time()))
    emit({"op": "ready"})
    store.start(asyncio.get_running_loop())
    rngs = [random.Random(seed * 100 + t) for t in range(TASKS)]
    await asyncio.gather(*(worker(store, engine, run, t, rngs[t]) for t in range(TASKS)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
