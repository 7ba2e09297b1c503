"""The configured balance store: opened here for `chf serve` and every `chf` command.

The tools reach the store only through chf/ (the floors: tools -> chf -> store): this module opens the backend
that the [store] section of the configuration describes, and passes on the names of the store interface that
its callers handle (the store, its transaction view, its errors).
"""

from __future__ import annotations

from chf.runtime.config import Config
from store.interface import Store, StoreBusy, StoreClosed, StoreError, Txn
from store.lmdbstore import Store as LmdbStore
from store.redisstore import RedisStore

__all__ = ["Store", "StoreBusy", "StoreClosed", "StoreError", "Txn", "open_store"]


def open_store(config: Config) -> Store:
    """The store of the configuration, created if it does not exist yet; its writer is not started. A cluster
    that cannot be reached, or refuses the credentials, raises StoreError saying so."""
    settings = config.store
    if settings.backend == "redis-cluster":
        return RedisStore(
            settings.nodes,
            namespace=settings.namespace,
            partitions=settings.partitions,
            username=settings.username,
            password=settings.password,
            tls=settings.tls,
            tls_ca=settings.tls_ca,
            tls_cert=settings.tls_cert,
            tls_key=settings.tls_key,
            min_replicas_acked=settings.min_replicas_acked,
            wait_timeout=settings.wait_timeout,
            workers=settings.workers,
            max_queue=settings.max_queue,
            op_timeout=settings.op_timeout,
        )
    return LmdbStore(
        settings.path,
        durability=settings.durability,
        map_size=settings.map_size,
        max_batch=settings.max_batch,
        max_queue=settings.max_queue,
        sync_interval=settings.sync_interval,
        writer=settings.writer,
    )
