"""The state one charging or provisioning operation reads and changes, loaded once and written back once.

A `Context` holds a line (or an account-level pseudo-line), its account, the line's and the account's balance
sets, and the events the operation produces. Session charging (`chf.core.engine`), one-shot events
(`chf.core.events`), period renewals (`chf.core.renewals`) and provisioning all work on one, and `flush` writes
what they marked dirty into the store transaction. The balance queries they share (the buckets usable for a
rating group, a reserved bucket by its source) live here with it.
"""

from __future__ import annotations

from typing import Any

from chf.core.catalogue import Catalogue, TaxProfile
from chf.core.zones import admits
from store.interface import Txn
from store.schema import SRC_ACCOUNT, SRC_LINE, Account, BalanceSet, Bucket, Subscriber


def line_owner(line_id: int) -> str:
    return f"line:{line_id}"


def account_owner(account_id: str) -> str:
    return f"account:{account_id}"


def bucket_impact(owner: str, bucket: Bucket, delta: int) -> dict[str, Any]:
    """An event's record of a change to a bucket: its balance name, the change and what is left after it."""
    return {
        "balance": f"{owner}:bucket:{bucket.id}",
        "name": bucket.name,
        "unit": bucket.unit,
        "delta": delta,
        "after": bucket.remaining,
    }


def funds(account: Account) -> int:
    """Money a grant or debit may take: the wallet, then the credit limit (postpaid and hybrid; a prepaid account
    has none). A hybrid account differs from a postpaid one in being topped up, not in this."""
    return account.available()


# Outside Context: chf/core/context.pxd compiles its methods as cpdef methods, which cannot hold closures.
def _priority_order(found: tuple[int, int, Bucket, int, str]) -> tuple[int, int]:
    return (found[0], found[1])


class Context:
    """The state one operation reads and changes, loaded once and written back once."""

    __slots__ = (
        "account",
        "account_dirty",
        "acct_bs",
        "acct_bs_dirty",
        "catalogue",
        "events",
        "line_bs",
        "line_bs_dirty",
        "now",
        "payers",
        "sub",
        "tax",
        "txn",
        "upline",
        "versions",
    )

    def __init__(self, txn: Txn, catalogue: Catalogue, now: int, sub: Subscriber, account: Account) -> None:
        self.txn = txn
        self.catalogue = catalogue
        self.now = now
        self.sub = sub
        self.account = account
        self.account_dirty = False
        self.line_bs: BalanceSet | None = None
        self.line_bs_dirty = False
        self.acct_bs: BalanceSet | None = None
        self.acct_bs_dirty = False
        self.events: list[dict[str, Any]] = []
        # Accounts above this one charged in this operation (chf.core.wholesale), by id; None: none read.
        self.upline: dict[str, Account] | None = None
        # The account's tax profile (chf.core.tax), set by the engine when the catalogue has any; None: untaxed.
        self.tax: TaxProfile | None = None
        # Contexts of the other accounts split-billing rules made pay for this operation (chf/core/split.py), by
        # account id: flushed with this one.
        self.payers: dict[str, Context] = {}
        # Every version of the catalogue (chf.core.versions), when the engine made this context: a period that
        # started before `now` is priced by the version in force when it started. None: `catalogue` alone.
        self.versions: Any = None

    def catalogue_at(self, at: int) -> Catalogue:
        """The version of the catalogue in force at `at` (not after `now`): `catalogue` unless another was."""
        versions = self.versions
        if versions is None or len(versions.versions) == 1:
            return self.catalogue
        found: Catalogue = versions.at(at)[0]
        return found

    def flush(self) -> None:
        txn = self.txn
        if self.payers:
            for payer in self.payers.values():
                payer.flush()
        if self.account_dirty:
            txn.put_account(self.account)
        if self.line_bs_dirty and self.line_bs is not None:
            txn.put_line_balances(self.sub.id, self.line_bs)
        if self.acct_bs_dirty and self.acct_bs is not None:
            txn.put_account_balances(self.account.id, self.acct_bs)
        if self.upline:
            for account in self.upline.values():
                txn.put_account(account)
            self.upline = None
        for event in self.events:
            txn.append_event(event)
        self.events.clear()

    def base_event(self, kind: str, actor: str, reason: str | None) -> dict[str, Any]:
        sub = self.sub
        line = sub.id or None  # 0: an account-level operation, no line
        return {
            "kind": kind,
            "time": self.now,
            "actor": actor,
            "reason": reason,
            "tenant": sub.tenant,
            "account": self.account.id,
            "subscriber": line,
            "imsi": sub.imsi if line else None,
            "msisdn": sub.msisdn if line else None,
            "currency": self.account.currency,
            "impacts": [],
            # The version of the catalogue that priced it (chf.core.versions); usage names its grant's version.
            "catalogue": self.catalogue.version,
        }

    def wallet_impact(self, delta: int) -> dict[str, Any]:
        return {
            "balance": f"{account_owner(self.account.id)}:wallet",
            "unit": "money",
            "delta": delta,
            "after": self.account.balance,
        }

    # -- balances -----------------------------------------------------------------------------------------------------
    def bucket(self, src: int, bucket_id: int) -> tuple[Bucket | None, str]:
        """A bucket a reservation holds units of, by its source (line or account balance set), and its owner."""
        if src == SRC_LINE:
            bs = self.line_bs
            owner = line_owner(self.sub.id)
        else:
            bs = self.acct_bs
            owner = account_owner(self.account.id)
        return (bs.bucket(bucket_id) if bs is not None else None), owner

    def mark(self, src: int) -> None:
        """Mark the record a change from source `src` lands in as dirty, to be written on `flush`."""
        if src == SRC_LINE:
            self.line_bs_dirty = True
        elif src == SRC_ACCOUNT:
            self.acct_bs_dirty = True
        else:
            self.account_dirty = True

    def usable_buckets(self, unit: str, rg: int, zone: str | None = None) -> list[tuple[Bucket, int, str]]:
        """The buckets, the line's and the account's, that can pay `unit`s of rating group `rg` used in `zone` now
        and have units left, in consumption order (priority, then the soonest to expire): (bucket, source, owner).
        A bucket that names its zones pays only there (chf/core/zones.py); `zone` None: any bucket. What a bucket
        may give to usage in `zone` is `chf.core.zones.room`."""
        now = self.now
        found: list[tuple[int, int, Bucket, int, str]] = []
        if self.line_bs is not None:
            owner = line_owner(self.sub.id)
            for b in self.line_bs.buckets:
                if b.usable(unit, rg, now) and b.available() > 0 and (b.zones is None or admits(b, zone)):
                    found.append((b.priority, b.valid_to, b, SRC_LINE, owner))
        if self.acct_bs is not None:
            owner = account_owner(self.account.id)
            for b in self.acct_bs.buckets:
                if b.usable(unit, rg, now) and b.available() > 0 and (b.zones is None or admits(b, zone)):
                    found.append((b.priority, b.valid_to, b, SRC_ACCOUNT, owner))
        if len(found) > 1:
            found.sort(key=_priority_order)
        return [(f[2], f[3], f[4]) for f in found]
