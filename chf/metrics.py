"""Prometheus metrics of the whole process, in one registry (DESIGN.md section 9).

Names carry the `chf_` prefix, units and `_total` suffixes. Labels never carry an IMSI, MSISDN or session id:
only interface, operation, result, unit type, sink and the like, whose values are few.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

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

# -- export --
EXPORT_BACKLOG = Gauge(
    "chf_export_backlog_events", "Committed events not yet acknowledged by a sink", ["sink"], registry=REGISTRY
)
EXPORT_DELIVERED = Counter(
    "chf_export_delivered_events_total", "Events acknowledged by a sink", ["sink"], registry=REGISTRY
)
EXPORT_FAILED = Counter("chf_export_failures_total", "Failed deliveries to a sink", ["sink"], registry=REGISTRY)


def observe_commit(batch: int, seconds: float) -> None:
    """Store hook: `store.on_commit.append(observe_commit)`."""
    COMMIT_BATCH.observe(batch)
    COMMIT_LATENCY.observe(seconds)


def observe_charge(request: Any, answer: Any) -> None:
    """Service hook after each durable charging answer: units granted (reserved) and reported used, by unit type.
    A retransmission answered from the stored answer counts nothing: its units were counted the first time."""
    if answer.duplicate:
        return
    for unit_answer in answer.units:
        if unit_answer.granted and unit_answer.unit:
            _granted(unit_answer.unit).inc(unit_answer.granted)
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
