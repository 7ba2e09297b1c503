"""`chf serve`: wire every part into one process and run it until SIGTERM or SIGINT.

Start-up order: store (with its group-commit writer), catalogue, charging service, then the front-ends and
services configured in conf/chf.toml. SIGHUP reloads the catalogue (an invalid file is reported and the
running one kept). Shutdown runs in reverse: front-ends stop taking requests and drain, then the writer
commits what is queued, then the store closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from chf.api import api_components
from chf.catalogue import CatalogueError, load_catalogue
from chf.config import Config, ConfigError
from chf.engine import EngineConfig
from chf.export import export_components
from chf.service import ChargingService, tune_collector
from store.lmdbstore import Store

log = logging.getLogger("chf.serve")


class Component(Protocol):
    """A front-end or service started by `chf serve` (Gy, Nchf, management API, exporters)."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


# Factories add components for the sections present in the configuration. Each front-end issue registers its
# own here, so `chf serve` stays the one place that knows every part.
ComponentFactory = Callable[[Config, ChargingService], list[Component]]
COMPONENT_FACTORIES: list[ComponentFactory] = []
COMPONENT_FACTORIES.append(api_components)
COMPONENT_FACTORIES.append(export_components)

from gy.server import gy_components  # noqa: E402 - front-ends register below the list they extend
from nchf.component import nchf_components  # noqa: E402

COMPONENT_FACTORIES.append(gy_components)
COMPONENT_FACTORIES.append(nchf_components)


class KeyValueFormatter(logging.Formatter):
    """One line per event: time, level, logger, then the message's own key=value pairs."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        line = f"ts={ts} level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        if record.exc_info:
            line += " exception=" + json.dumps(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def open_store(config: Config) -> Store:
    sc = config.store
    return Store(
        sc.path,
        durability=sc.durability,
        map_size=sc.map_size,
        max_batch=sc.max_batch,
        max_queue=sc.max_queue,
        sync_interval=sc.sync_interval,
        writer=sc.writer,
    )


def build_service(config: Config, store: Store) -> ChargingService:
    catalogue = load_catalogue(config.catalogue)
    ec = config.engine
    engine_config = EngineConfig(
        idempotency_window=ec.idempotency_window, reap_factor=ec.reap_factor, answers_kept=ec.answers_kept
    )
    return ChargingService(store, catalogue, catalogue_path=config.catalogue, engine_config=engine_config)


async def run(config: Config, *, started: Callable[[ChargingService], Awaitable[None] | None] | None = None) -> None:
    store = open_store(config)
    try:
        service = build_service(config, store)
        # Every section is checked before anything starts: a bad one stops start-up with its errors.
        components: list[Component] = []
        for factory in COMPONENT_FACTORIES:
            components.extend(factory(config, service))
    except BaseException:
        store.close()
        raise
    await service.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def reload() -> None:
        try:
            service.reload_catalogue()
        except CatalogueError as exc:
            log.error("event=catalogue_reload_rejected errors=%s", json.dumps(exc.errors))
        except OSError as exc:
            log.error("event=catalogue_reload_rejected error=%s", json.dumps(str(exc)))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    pid_path = os.path.join(config.data_dir, "chf.pid")
    try:
        for component in components:
            await component.start()
            log.info("event=component_started name=%s", component.name)
        os.makedirs(config.data_dir, exist_ok=True)
        with open(pid_path, "w", encoding="ascii") as f:
            f.write(f"{os.getpid()}\n")
        log.info(
            "event=ready store=%s durability=%s catalogue=%s digest=%s components=%s",
            config.store.path,
            config.store.durability,
            config.catalogue,
            service.catalogue.digest[:12],
            ",".join(c.name for c in components) or "-",
        )
        if started is not None:
            res = started(service)
            if res is not None:
                await res
        await stop.wait()
        log.info("event=stopping")
    finally:
        for component in reversed(components):
            try:
                await component.stop()
            except Exception:
                log.exception("event=component_stop_failed name=%s", component.name)
        await service.stop()
        store.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_path)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        log.info("event=stopped")


def serve(config: Config) -> int:
    setup_logging(config.log_level, config.log_format)
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:  # uvloop is optional where it does not build
        runner = asyncio.run
    tune_collector()
    try:
        runner(run(config))
    except CatalogueError as exc:
        log.error("event=catalogue_invalid errors=%s", json.dumps(exc.errors))
        return 2
    except ConfigError as exc:
        log.error("event=config_invalid errors=%s", json.dumps(exc.errors))
        return 2
    return 0
