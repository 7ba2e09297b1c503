"""A real store filled through the engine, for the reconciliation and report tests.

Everything goes through chf.core.provisioning and Engine.charge inside Store.write (durable LMDB transactions on disk);
`now` is passed explicitly so usage lands on known UTC days.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chf.core import provisioning
from chf.core.catalogue_loader import load_catalogue
from chf.core.engine import Engine
from chf.core.model import INITIAL, SUCCESS, TERMINATE, ChargingRequest, UnitRequest, UsageReport
from store.lmdbstore import Store

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = REPO / "conf" / "catalogue.toml"

_sessions = itertools.count(1)


def at(text: str) -> int:
    """Epoch seconds of an ISO 8601 UTC time."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


class Charging:
    def __init__(self, path: Path) -> None:
        self.store = Store(path)
        self.engine = Engine(load_catalogue(CATALOGUE))

    def close(self) -> None:
        self.store.close()

    def tenant(self, tenant: str, now: int, currency: str = "EUR") -> None:
        self.store.write(lambda txn: provisioning.create_tenant(txn, tenant, tenant, currency, now))

    def account(self, account: str, tenant: str, payment: str, now: int, **kw: Any) -> None:
        self.store.write(
            lambda txn: provisioning.create_account(
                txn, self.engine, account_id=account, tenant=tenant, payment=payment, now=now, **kw
            )
        )

    def line(self, account: str, imsi: str, now: int, plan: str | None = None) -> int:
        result = self.store.write(
            lambda txn: provisioning.add_line(txn, self.engine, account=account, imsi=imsi, plan=plan, now=now)
        )
        return int(result.value["id"])

    def use(self, imsi: str, rating_group: int, unit: str, amount: int, when: int) -> int:
        """One session: a grant at `when`, then the final report of `amount` units at `when`. Returns the charge."""
        key = f"gy:test;{next(_sessions)}"
        ids = [("imsi", imsi)]
        first = ChargingRequest(INITIAL, key, 0, ids, [UnitRequest(rating_group, requested={})])
        answer = self.store.write(lambda txn: self.engine.charge(txn, first, when))
        assert answer.result == SUCCESS, answer
        last = ChargingRequest(
            TERMINATE, key, 1, ids, [UnitRequest(rating_group, used=[UsageReport({unit: amount}, "final")])]
        )
        answer = self.store.write(lambda txn: self.engine.charge(txn, last, when))
        assert answer.result == SUCCESS, answer
        return answer.units[0].charged
