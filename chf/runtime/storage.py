"""The configured balance store: opened here for `chf serve` and every `chf` command.

The tools reach the store only through chf/ (the floors: tools -> chf -> store): this module opens the backend
that the [store] section of the configuration describes, and passes on the names of the store interface that
its callers handle (the store, its transaction view, its errors).
"""

from __future__ import annotations

from chf.runtime.config import Config
from store.interface import Store, StoreBusy, StoreClosed, StoreError, Txn
from store.lmdbstore import Store as LmdbStore

__all__ = ["Store", "StoreBusy", "StoreClosed", "StoreError", "Txn", "open_store"]


def open_store(config: Config) -> Store:
    """The store of the configuration, created if it does not exist yet; its writer is not started."""
    settings = config.store
    return LmdbStore(
        settings.path,
        durability=settings.durability,
        map_size=settings.map_size,
        max_batch=settings.max_batch,
        max_queue=settings.max_queue,
        sync_interval=settings.sync_interval,
        writer=settings.writer,
    )
