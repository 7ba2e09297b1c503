"""Prometheus metrics of the whole process, in one registry (docs/architecture.md).

Names carry the `chf_` prefix, units and `_total` suffixes. Labels never carry an IMSI, MSISDN or session id:
only interface, operation, result, unit type, sink and the like, whose values are few.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.samples import Sample

REGISTRY = CollectorRegistry(auto_describe=True)


class Tally:
    """A counter by label values for the per-request path, kept in a plain dict and rendered as a counter family
    at scrape. Counting grants this way added 1,300 instructions to observe_charge, a prometheus_client child's
    inc() 4,600 (its lock and value object; callgrind, pure Python). Only the event loop's thread counts (the
    store resolves on the loop), so the dict needs no lock."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.counts: dict[tuple[str, ...], int] = {}
        registry.register(self)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def describe(self) -> list[CounterMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = self._family()
        for labels, value in list(self.counts.items()):
            family.add_metric(labels, value)
        yield family


LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# -- requests, by interface (gy | nchf | api), operation (CCR-I, CCR-U, create, update, topup, ...) and result --
REQUESTS = Counter(
    "chf_requests_total",
    "Requests answered, by interface, operation and result",
    ["interface", "operation", "result"],
    registry=REGISTRY,
)
REQUEST_LATENCY = Histogram(
    "chf_request_duration_seconds",
    "Time from a request's arrival to its answer being written, by interface and operation",
    ["interface", "operation"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
DUPLICATES = Counter(
    "chf_duplicate_requests_total",
    "Retransmitted requests answered from the stored first answer",
    ["interface"],
    registry=REGISTRY,
)
PROTOCOL_ERRORS = Counter(
    "chf_protocol_errors_total",
    "Malformed or refused requests, by interface and error (Diameter result code, HTTP status)",
    ["interface", "error"],
    registry=REGISTRY,
)
OVERLOAD = Counter(
    "chf_overload_rejections_total",
    "Requests refused as too busy (Diameter 3004, HTTP 503)",
    ["interface"],
    registry=REGISTRY,
)
PEERS_UP = Gauge("chf_peers_up", "Connected peers in the open state, by interface", ["interface"], registry=REGISTRY)
SIGNALS = Counter(
    "chf_signals_total",
    "Server-initiated messages (re-auth, abort) by protocol, kind and outcome",
    ["protocol", "kind", "outcome"],
    registry=REGISTRY,
)

# -- charging --
UNITS_GRANTED = Counter("chf_granted_units_total", "Units granted, by unit type", ["unit"], registry=REGISTRY)
UNITS_CONSUMED = Counter(
    "chf_consumed_units_total", "Units reported used and charged, by unit type", ["unit"], registry=REGISTRY
)
# Per rating group of a charging answer: "granted" (quota given) or "denied" (a result other than success: credit
# limit reached, user unknown, rating failed, ...); a request refused as a whole (no rating group answered) counts
# once, denied with its result. What the dashboard's "grants vs denials" and the rating-failure alert read.
QUOTA_ANSWERS = Tally(
    "chf_quota_answers_total",
    "Quota decisions per rating group of charging answers, by outcome (granted, denied) and result",
    ("outcome", "result"),
    REGISTRY,
)
QUOTA_ANSWERS.counts[("granted", "success")] = 0  # shown from the start
OPEN_SESSIONS = Gauge(
    "chf_open_sessions", "Charging sessions in the store, open or in their replay window", registry=REGISTRY
)

# -- store --
COMMIT_LATENCY = Histogram(
    "chf_store_commit_duration_seconds",
    "Time to apply and durably commit one group-commit batch",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
COMMIT_BATCH = Histogram(
    "chf_store_batch_size_operations",
    "Operations applied in one group-commit batch",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 4096),
    registry=REGISTRY,
)
WRITE_QUEUE = Gauge("chf_store_write_queue_operations", "Operations waiting for the next commit", registry=REGISTRY)
# The store is full (writes refused) when the used size reaches the map size ([store] map_size_mb). Freed pages
# are reused before the store grows, so the used size is a high-water mark.
STORE_USED = Gauge("chf_store_used_bytes", "Store pages in use up to the highest, in bytes", registry=REGISTRY)
STORE_MAP_SIZE = Gauge(
    "chf_store_map_size_bytes", "Size of the store map, the most it can hold ([store] map_size_mb)", registry=REGISTRY
)

# -- catalogue --
CATALOGUE_RELOADS = Counter(
    "chf_catalogue_reloads_total",
    "Catalogue reloads (SIGHUP, API), by result: ok or failed",
    ["result"],
    registry=REGISTRY,
)
CATALOGUE_RELOAD_FAILED = Gauge(
    "chf_catalogue_reload_failed",
    "1 when the last catalogue reload failed (the previous catalogue runs)",
    registry=REGISTRY,
)

# -- front-end worker processes, seen from the core --
FRONTEND_WORKERS = Gauge("chf_frontend_workers", "Front-end worker processes configured", registry=REGISTRY)
FRONTEND_WORKER_UP = Gauge(
    "chf_frontend_worker_up",
    "1 while a front-end worker is up (listening, linked to the core)",
    ["worker"],
    registry=REGISTRY,
)
FRONTEND_WORKER_EXITS = Counter(
    "chf_frontend_worker_exits_total", "Front-end worker exits (each is restarted)", ["worker"], registry=REGISTRY
)

# -- export --
EXPORT_BACKLOG = Gauge(
    "chf_export_backlog_events", "Committed events not yet acknowledged by a sink", ["sink"], registry=REGISTRY
)
EXPORT_DELIVERED = Counter(
    "chf_export_delivered_events_total", "Events acknowledged by a sink", ["sink"], registry=REGISTRY
)
EXPORT_FAILED = Counter("chf_export_failures_total", "Failed deliveries to a sink", ["sink"], registry=REGISTRY)


def watch_store(stat: Callable[[], dict[str, int]] | None, max_age: float = 0.5) -> None:
    """Store size and map size, read from `stat()` (Store.stat: used_bytes, map_size) when collected, at most every
    `max_age` seconds; `None` once the store is closed (the last values stay)."""
    cache: list[Any] = [-math.inf, 0, 0]  # when read, size, map size

    def read(field: int) -> float:
        now = time.monotonic()
        if stat is not None and now - cache[0] > max_age:
            try:
                info = stat()
            except Exception:  # the store is closing: the values of the last reading
                info = {"used_bytes": cache[1], "map_size": cache[2]}
            cache[:] = [now, info["used_bytes"], info["map_size"]]
        return float(cache[field])

    STORE_USED.set_function(lambda: read(1))
    STORE_MAP_SIZE.set_function(lambda: read(2))


def watch_workers(count: int, is_up: Callable[[int], bool]) -> None:
    """The core's front-end workers: how many, and each one's state from `is_up(worker)` when collected."""
    FRONTEND_WORKERS.set(count)
    for worker in range(count):
        FRONTEND_WORKER_UP.labels(str(worker)).set_function(functools.partial(_flag, is_up, worker))
        FRONTEND_WORKER_EXITS.labels(str(worker))


def _flag(predicate: Callable[[int], bool], value: int) -> float:
    return 1.0 if predicate(value) else 0.0


def observe_catalogue_reload(ok: bool) -> None:
    CATALOGUE_RELOADS.labels("ok" if ok else "failed").inc()
    CATALOGUE_RELOAD_FAILED.set(0 if ok else 1)


def observe_commit(batch: int, seconds: float) -> None:
    """Store hook: `store.on_commit.append(observe_commit)`."""
    COMMIT_BATCH.observe(batch)
    COMMIT_LATENCY.observe(seconds)


def observe_charge(request: Any, answer: Any) -> None:
    """Service hook after each durable charging answer: units granted (reserved) and reported used, by unit type.
    A retransmission answered from the stored answer counts nothing: its units were counted the first time."""
    if answer.duplicate:
        return
    quota = QUOTA_ANSWERS.counts
    for unit_answer in answer.units:
        if unit_answer.granted and unit_answer.unit:
            _granted(unit_answer.unit).inc(unit_answer.granted)
        if unit_answer.result != "success":
            key = ("denied", unit_answer.result)
            quota[key] = quota.get(key, 0) + 1
        elif unit_answer.granted:
            quota[_GRANTED] += 1
    if not answer.units and answer.result != "success":
        key = ("denied", answer.result)
        quota[key] = quota.get(key, 0) + 1
    for unit_request in request.units:
        for report in unit_request.used:
            units = report.units
            # bytes_in / bytes_out split the total; the engine rates their sum when no total is given.
            total_bytes = units.get("bytes") or units.get("bytes_in", 0) + units.get("bytes_out", 0)
            if total_bytes > 0:
                _consumed("bytes").inc(total_bytes)
            for unit in ("seconds", "events", "money"):
                value = units.get(unit, 0)
                if value > 0:
                    _consumed(unit).inc(value)


def labelled(metric: Any) -> Any:
    """A cached `metric.labels(*values)` for per-request paths, where `.labels()` (which validates and joins the
    values under a lock, several µs) showed in profiles: `requests = labelled(REQUESTS); requests("gy", ...)`."""
    cache: dict[tuple[str, ...], Any] = {}

    def get(*values: str) -> Any:
        child = cache.get(values)
        if child is None:
            child = cache[values] = metric.labels(*values)
        return child

    return get


_granted = labelled(UNITS_GRANTED)
_consumed = labelled(UNITS_CONSUMED)
_GRANTED = ("granted", "success")


# -- front-end worker processes (chf.corelink) --
# Each worker ships its samples to the core; the core's /metrics adds them to its own, so one scrape shows the
# whole function. Sources return snapshots: [[family name, type, [[sample name, labels, value], ...]], ...].
REMOTE_SAMPLES: list[Callable[[], list[list[Any]]]] = []


def snapshot(registry: CollectorRegistry = REGISTRY) -> list[list[Any]]:
    """This process's samples, msgpack-friendly. `_created` timestamps are left out: they cannot be summed."""
    out: list[list[Any]] = []
    for family in registry.collect():
        samples = [[s.name, s.labels, s.value] for s in family.samples if not s.name.endswith("_created")]
        if samples:
            out.append([family.name, family.type, samples])
    return out


class _Merged:
    """The registry with the workers' samples summed in (same family, same labels: one series)."""

    def __init__(self, snapshots: list[list[list[Any]]]) -> None:
        self.snapshots = snapshots

    def collect(self) -> Any:
        # family -> (sample name, sorted labels) -> [labels as the worker wrote them, summed value]
        extra: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[Any]]] = {}
        for snap in self.snapshots:
            for name, _kind, samples in snap:
                by_key = extra.setdefault(name, {})
                for sample_name, labels, value in samples:
                    key = (sample_name, tuple(sorted(labels.items())))
                    entry = by_key.get(key)
                    if entry is None:
                        by_key[key] = [labels, value]
                    else:
                        entry[1] += value
        for family in REGISTRY.collect():
            more = extra.pop(family.name, None)
            if more:
                merged = []
                for s in family.samples:
                    entry = more.pop((s.name, tuple(sorted(s.labels.items()))), None)
                    if entry is not None:
                        s = Sample(s.name, s.labels, s.value + entry[1], s.timestamp, s.exemplar)
                    merged.append(s)
                merged.extend(Sample(name, labels, value) for (name, _), (labels, value) in more.items())
                family.samples = merged
            yield family


def exposition() -> Any:
    """What /metrics renders: the registry, plus the front-end workers' samples when there are workers."""
    if not REMOTE_SAMPLES:
        return REGISTRY
    return _Merged([snap for source in REMOTE_SAMPLES for snap in source()])
