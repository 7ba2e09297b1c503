"""`chf serve`: wire every part into one process and run it until SIGTERM or SIGINT.

Start-up order: store (with its group-commit writer), catalogue, charging service, then the front-ends and
services configured in conf/chf.toml. SIGHUP reloads the catalogue (an invalid file is reported and the
running one kept). Shutdown runs in reverse: front-ends stop taking requests and drain, then the writer
commits what is queued, then the store closes.

The process topology is decided here and nowhere else (`process_role`): everything in one process, or, with
`[server] frontend_workers = N` (N > 0), a core (store, engine, sweeper, API, exporters, Nchf notifications) and
N worker processes (`chf serve --worker I`) that run the Gy and Nchf servers on the same ports (SO_REUSEPORT),
reaching the core over the core link (chf.runtime.corelink). A worker that exits is restarted. The core is ready
once every worker listens; on shutdown the workers drain first (Gy DPR, HTTP/2 GOAWAY, answers still due from
the core), then the core stops as above. The front-ends receive a `ChargingPort` (the service, or the core link
in a worker) and the role, and build what the role runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

from chf.api.server import api_components
from chf.core.catalogue import CatalogueError
from chf.core.versions import load_versions
from chf.export import export_components
from chf.runtime import metrics
from chf.runtime.catalogues import ARCHIVE_DIR
from chf.runtime.config import Config, ConfigError
from chf.runtime.corelink import ASSIGN_NUMBER, CoreLinkServer, RemoteService, link_path
from chf.runtime.port import ChargingPort
from chf.runtime.service import ChargingService, tune_collector
from chf.runtime.storage import Store, open_store
from chf.snmp import snmp_components
from tools.sdnotify import Notifier

log = logging.getLogger("chf.serve")

# What a process runs:
# - "all": everything, in one process;
# - "core" ([server] frontend_workers > 0): the store, engine, sweeper, management API, exporters, the core link
#   and the workers' supervisor; the front-ends only check their sections (a worker must not fail to start);
# - "worker" (`chf serve --worker I`): the Gy and Nchf front-ends, on the core link.
Role = Literal["all", "core", "worker"]


def process_role(config: Config, worker: int | None = None) -> Role:
    """The role of this process; no other part of the code decides it."""
    if worker is not None:
        return "worker"
    return "core" if config.frontend_workers > 0 else "all"


class Component(Protocol):
    """A front-end or service started by `chf serve` (Gy, Nchf, management API, exporters)."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


# Factories add components for the sections present in the configuration, so that `chf serve` stays the one
# place that knows every part. Beside the store (roles "all" and "core"):
CoreFactory = Callable[[Config, ChargingService], list[Component]]
CORE_FACTORIES: list[CoreFactory] = [api_components, export_components]

from gy.config import GyConfig, GyConfigError  # noqa: E402 - front-ends register below the list they extend
from gy.server import GyServer  # noqa: E402
from nchf.component import NchfComponent, NchfNotifierComponent  # noqa: E402
from nchf.config import parse_settings as parse_nchf_settings  # noqa: E402


def _gy_frontend(config: Config, port: ChargingPort, role: Role) -> list[Component]:
    """The Gy front-end of a process role, when conf/chf.toml has a [gy] section (CHF_GY_PORT overrides the port):
    "all" runs it here; "core" runs none (its front-end workers do: the section is only checked, and must give a
    fixed port); "worker" runs it on the port it shares with the other workers (SO_REUSEPORT)."""
    if "gy" not in config.raw:
        return []
    section = dict(config.section("gy"))
    if os.environ.get("CHF_GY_PORT"):
        section["port"] = int(os.environ["CHF_GY_PORT"])
    gy_config = GyConfig.from_section(section, config.source)
    if role == "core":
        if gy_config.port == 0:  # each worker would listen on a port of its own
            raise GyConfigError([f"{config.source}: [gy] port: must be a fixed port with [server] frontend_workers"])
        return []
    return [GyServer(gy_config, port, shared_port=role == "worker")]


def _nchf_frontend(config: Config, port: ChargingPort, role: Role) -> list[Component]:
    """The Nchf front-end for a process role, when conf/chf.toml has an enabled [nchf] section: in one process
    ("all") the server with its notifier; with front-end workers, the workers share the port and leave the
    numbering of unnumbered requests to the core (one counter for all workers: the engine needs the numbers to
    grow per session, and the updates of one session may arrive through different workers), and the core sends
    the notifications (each once, whatever the number of workers)."""
    if "nchf" not in config.raw:
        return []
    settings = parse_nchf_settings(config.section("nchf"), config.source)
    if not settings.enabled:
        return []
    if role == "core":
        if settings.port == 0:  # each worker would listen on a port of its own
            raise ConfigError([f"{config.source}: [nchf] port: must be a fixed port with [server] frontend_workers"])
        return [NchfNotifierComponent(port, settings)]
    if role == "worker":
        numbers = itertools.repeat(ASSIGN_NUMBER)  # the core numbers them
        return [NchfComponent(port, settings, reuse_port=True, send_notifications=False, request_numbers=numbers)]
    return [NchfComponent(port, settings)]


# The front-ends, in every role: each builds what `role` runs of it (nothing, in a core that has workers, once its
# section is checked).
FrontendFactory = Callable[[Config, ChargingPort, Role], list[Component]]
FRONTEND_FACTORIES: list[FrontendFactory] = [_gy_frontend, _nchf_frontend]


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


def build_service(config: Config, store: Store) -> ChargingService:
    versions = load_versions(config.catalogue)
    engine_config = config.engine.engine_config()
    archive = os.path.join(config.data_dir, ARCHIVE_DIR)
    return ChargingService(
        store, versions, catalogue_path=config.catalogue, catalogue_archive=archive, engine_config=engine_config
    )


WORKER_START_TIMEOUT = 60.0  # seconds for every worker to listen before start-up fails
WORKER_STOP_TIMEOUT = 30.0  # seconds a worker gets to drain after SIGTERM before SIGKILL
WORKER_RESTART_DELAY = 1.0  # seconds between a worker's exit and its restart (no tight crash loop)


class WorkerPool:
    """The core's front-end workers: spawned, restarted when they exit, stopped (drained) before the core."""

    name = "frontend-workers"

    def __init__(self, config: Config, link: CoreLinkServer) -> None:
        self.config = config
        self.link = link
        self.count = config.frontend_workers
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        metrics.watch_workers(self.count, link.ready_workers.__contains__)

    def command(self, worker_id: int) -> list[str]:
        cmd = [sys.executable, "-m", "tools.cli"]
        if self.config.source != "<defaults>":
            cmd += ["--config", self.config.source]
        return [*cmd, "serve", "--worker", str(worker_id)]

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._supervise(i), name=f"chf-worker-{i}") for i in range(self.count)]

    async def wait_ready(self, stop: asyncio.Event) -> bool:
        """True once every worker listens; False when told to stop first. Raises after WORKER_START_TIMEOUT."""
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while len(self.link.ready_workers) < self.count:
            if stop.is_set():
                return False
            if time.monotonic() > deadline:
                raise RuntimeError(f"front-end workers not ready after {WORKER_START_TIMEOUT:.0f} s")
            self.link.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.link.changed.wait(), 0.2)
        return True

    async def _supervise(self, worker_id: int) -> None:
        while not self._stopping:
            proc = await asyncio.create_subprocess_exec(*self.command(worker_id))
            self.procs[worker_id] = proc
            log.info("event=worker_started worker=%d pid=%d", worker_id, proc.pid)
            rc = await proc.wait()
            if self._stopping:
                return
            metrics.FRONTEND_WORKER_EXITS.labels(str(worker_id)).inc()
            log.error(
                "event=worker_exited worker=%d pid=%d returncode=%d restart_in=%.1f",
                worker_id,
                proc.pid,
                rc,
                WORKER_RESTART_DELAY,
            )
            await asyncio.sleep(WORKER_RESTART_DELAY)

    async def stop(self) -> None:
        self._stopping = True
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for worker_id, proc in self.procs.items():
            try:
                await asyncio.wait_for(proc.wait(), WORKER_STOP_TIMEOUT)
            except TimeoutError:
                log.error("event=worker_kill worker=%d pid=%d reason=drain_timeout", worker_id, proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def run(config: Config, *, started: Callable[[ChargingService], Awaitable[None] | None] | None = None) -> None:
    """The single process, or the core of front-end workers (see process_role)."""
    role = process_role(config)
    # systemd (deploy/chf.service, Type=notify): READY=1 once everything listens, the watchdog pinged from this
    # loop, STOPPING=1 when the drain begins. Taken from the environment before any worker is started.
    notifier = Notifier.from_environment()
    store = open_store(config)
    # Store size and commit times for /metrics and SNMP, whichever of them is configured.
    metrics.watch_store(store.stat)
    if metrics.observe_commit not in store.on_commit:
        store.on_commit.append(metrics.observe_commit)
    try:
        service = build_service(config, store)
        # Every section is checked before anything starts: a bad one stops start-up with its errors.
        components: list[Component] = []
        for factory in CORE_FACTORIES:
            components.extend(factory(config, service))
        for frontend in FRONTEND_FACTORIES:
            components.extend(frontend(config, service, role))
        # The SNMP agent last: started once the front-ends listen, stopped before they drain (a stopping chf sends
        # no peer-down notifications for the peers it disconnects itself).
        components.extend(snmp_components(config, service))
    except BaseException:
        store.close()
        raise
    await service.start()
    notifier.start_watchdog(lambda: store.running)
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
    pool: WorkerPool | None = None
    try:
        for component in components:
            await component.start()
            log.info("event=component_started name=%s", component.name)
        os.makedirs(config.data_dir, exist_ok=True)
        if role == "core":
            link = CoreLinkServer(service, link_path(config.data_dir))
            await link.start()
            # Stopped first (reverse order): the workers drain while the link still answers them.
            components.append(link)
            pool = WorkerPool(config, link)
            # Not ready while a worker is down (restarting): the load balancer should see it.
            workers = pool.count
            service.readiness_checks["frontend_workers"] = lambda: len(link.ready_workers) >= workers
            await pool.start()
            components.append(pool)
            if not await pool.wait_ready(stop):
                return
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
        if pool is not None:
            log.info("event=frontend_workers_ready workers=%d", pool.count)
        notifier.ready("serving: " + (",".join(c.name for c in components) or "-"))
        if started is not None:
            res = started(service)
            if res is not None:
                await res
        await stop.wait()
        log.info("event=stopping")
    finally:
        notifier.stopping()
        for component in reversed(components):
            try:
                await component.stop()
            except Exception:
                log.exception("event=component_stop_failed name=%s", component.name)
        await notifier.close()  # the watchdog pings until the front-ends have drained
        await service.stop()
        metrics.watch_store(None)
        store.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_path)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        log.info("event=stopped")


async def run_worker(config: Config, worker_id: int) -> None:
    """A front-end worker: the Gy and Nchf servers of the configuration on a RemoteService (the core link)."""
    remote = RemoteService(link_path(config.data_dir), worker_id)
    await remote.connect()
    components: list[Component] = []
    for frontend in FRONTEND_FACTORIES:
        components.extend(frontend(config, remote, process_role(config, worker_id)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP goes to the core (catalogue reload); a worker has nothing to reload.
    loop.add_signal_handler(signal.SIGHUP, lambda: None)

    async def ship_metrics() -> None:
        while True:
            remote.send_metrics()
            await asyncio.sleep(1.0)

    shipper = asyncio.create_task(ship_metrics(), name="chf-worker-metrics")
    started: list[Component] = []
    try:
        for component in components:
            await component.start()
            started.append(component)
        remote.ready()
        log.info(
            "event=worker_ready worker=%d pid=%d components=%s",
            worker_id,
            os.getpid(),
            ",".join(c.name for c in components) or "-",
        )
        closed = asyncio.create_task(remote.closed.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([closed, stopping], return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        stopping.cancel()
        if remote.closed.is_set() and not stop.is_set():
            log.error("event=worker_core_lost worker=%d", worker_id)
    finally:
        for component in reversed(started):
            try:
                await component.stop()
            except Exception:
                log.exception("event=component_stop_failed name=%s", component.name)
        shipper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await shipper
        remote.send_metrics()  # the last counts, so the core's totals include this worker's final requests
        await asyncio.sleep(0)
        await remote.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        log.info("event=worker_stopped worker=%d", worker_id)


def serve(config: Config, worker: int | None = None) -> int:
    setup_logging(config.log_level, config.log_format)
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:  # uvloop is optional where it does not build
        runner = asyncio.run
    tune_collector()
    try:
        runner(run(config) if worker is None else run_worker(config, worker))
    except CatalogueError as exc:
        log.error("event=catalogue_invalid errors=%s", json.dumps(exc.errors))
        return 2
    except ConfigError as exc:
        log.error("event=config_invalid errors=%s", json.dumps(exc.errors))
        return 2
    return 0
