"""The open endpoints: liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from chf import export
from chf.api.context import context
from chf.api.openapi import OPENAPI
from chf.runtime import metrics

log = logging.getLogger("chf.api")

routes = web.RouteTableDef()
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})  # no bearer token needed


@routes.get("/healthz", name="healthz")
async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


@routes.get("/readyz", name="readyz")
async def readyz(request: web.Request) -> web.Response:
    """Readiness: the store writer runs and the store can be read. A large export backlog is reported but does
    not make the charging function unready: billing export must never take charging out of service."""
    ctx = context(request)
    store = ctx.service.store
    checks: dict[str, Any] = {"writer": store.running}

    def read() -> None:
        with store.read() as txn:
            txn.last_event_seq()

    try:
        # In a thread: on a Redis store a read is a network round trip the event loop must not wait for.
        await asyncio.to_thread(read)
        checks["store"] = True
    except Exception as exc:
        log.error("event=readyz_store_failed error=%r", exc)
        checks["store"] = False
    checks["export"] = {
        name: {"backlog": backlog, "limit": limit, "over_limit": backlog > limit}
        for name, (backlog, limit) in export.backlogs(store).items()
    }
    extra_ready = True
    for name, check in ctx.service.readiness_checks.items():
        try:
            checks[name] = bool(check())
        except Exception as exc:
            log.error("event=readyz_check_failed check=%s error=%r", name, exc)
            checks[name] = False
        extra_ready = extra_ready and checks[name]
    ready = checks["writer"] and checks["store"] and ctx.started and extra_ready
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503
    )


@routes.get("/metrics", name="metrics")
async def metrics_page(request: web.Request) -> web.Response:
    store = context(request).service.store

    def read() -> tuple[int, dict[str, int]]:
        with store.read() as txn:
            return txn.session_count(), store.stat()

    sessions, sizes = await asyncio.to_thread(read)  # off the event loop (a Redis store reads over the network)
    metrics.OPEN_SESSIONS.set(sessions)
    metrics.WRITE_QUEUE.set(store.queued())
    metrics.STORE_USED.set(sizes["used_bytes"])
    metrics.STORE_MAP_SIZE.set(sizes["map_size"])
    for name, (backlog, _limit) in export.backlogs(store).items():
        metrics.EXPORT_BACKLOG.labels(name).set(backlog)
    body = generate_latest(metrics.exposition())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/openapi.json", name="openapi")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)
