"""The configured balance store: opened here for `chf serve` and every `chf` command.

The tools reach the store only through chf/ (the floors: tools -> chf -> store): this module opens the backend
that the [store] section of the configuration describes, or a store named on the command line (`open_store_at`),
backs the LMDB store up and restores it (store.lmdbbackup), and passes on the names of the store interface that
its callers handle (the store, its transaction view, its errors).
"""

from __future__ import annotations

import os
from typing import Any

from chf.runtime.config import Config, ConfigError, load_config
from store import lmdbbackup
from store.interface import Store, StoreBusy, StoreClosed, StoreError, Txn
from store.lmdbstore import Store as LmdbStore
from store.lmdbstore import StoreLocked

__all__ = [
    "Store",
    "StoreBusy",
    "StoreClosed",
    "StoreError",
    "StoreLocked",
    "Txn",
    "backup_store",
    "open_store",
    "open_store_at",
    "restore_store",
    "store_exists",
    "verify_backup",
]


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


def _backend(config: Config) -> str:
    return str(getattr(config.store, "backend", "lmdb"))


def store_exists(config: Config) -> bool:
    """Whether the configured store has been created (a store on a cluster is taken to exist: opening it says)."""
    if _backend(config) != "lmdb":
        return True
    return os.path.isfile(os.path.join(config.store.path, lmdbbackup.DATA_FILE))


STORE_FORMS = "lmdb:PATH, an LMDB store directory, or a configuration file (its [store])"


def open_store_at(spec: str, *, create: bool = False) -> tuple[Store, str]:
    """A store named on the command line, and how to name it in messages:
    - `lmdb:PATH` (also `lmdb://PATH`): the LMDB store in directory PATH, created when `create`;
    - an existing directory holding an LMDB store;
    - a configuration file: the store its [store] section describes.
    Raises ConfigError for a name that is none of these."""
    if spec.startswith("lmdb:"):
        path = spec[len("lmdb:") :]
        path = path[2:] if path.startswith("//") else path
        if not path:
            raise ConfigError([f"{spec}: no path after lmdb:"])
        return _open_lmdb(spec, path, create), f"lmdb:{path}"
    if os.path.isdir(spec):
        return _open_lmdb(spec, spec, create=False), f"lmdb:{spec}"
    if os.path.isfile(spec):
        config = load_config(spec)
        if not create and not store_exists(config):
            raise ConfigError([f"{spec}: its store {config.store.path} does not exist"])
        return open_store(config), f"{spec} (lmdb:{config.store.path})"
    raise ConfigError([f"{spec}: no such store or configuration file; name a store as {STORE_FORMS}"])


def _open_lmdb(spec: str, path: str, create: bool) -> Store:
    if not create and not os.path.isfile(os.path.join(path, lmdbbackup.DATA_FILE)):
        raise ConfigError([f"{spec}: no LMDB store in {path}"])
    return LmdbStore(path)


def _lmdb_path(config: Config) -> str:
    """The configured store's directory; backup and restore are for the LMDB store."""
    if _backend(config) != "lmdb":
        raise StoreError(
            f"chf backup and chf restore are for the LMDB store; [store] backend is {_backend(config)!r} "
            "(copy it into an LMDB store with chf store copy, or use the backend's own tools)"
        )
    return config.store.path


def backup_store(config: Config, dest: str) -> dict[str, Any]:
    """A hot, compacted, verified copy of the configured store in the new directory `dest` (store.lmdbbackup)."""
    path = _lmdb_path(config)
    if not store_exists(config):
        raise StoreError(f"no store at {path}: nothing to back up")
    store = open_store(config)
    try:
        assert isinstance(store, LmdbStore)
        return lmdbbackup.backup(store, dest)
    finally:
        store.close()


def verify_backup(path: str) -> tuple[dict[str, Any], list[str]]:
    """The summary of the backup at `path` and what is wrong with it (nothing: it is good)."""
    return lmdbbackup.verify_backup(path)


def restore_store(config: Config, source: str, *, keep_id: bool = False) -> dict[str, Any]:
    """Put the backup `source` in place of the configured store (no process may have it open); the previous one
    is kept aside."""
    return lmdbbackup.restore(source, _lmdb_path(config), keep_id=keep_id)
