"""What happens on lines: open charging sessions, and the rated and audit events of a line by time."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from chf.api.bodies import AFTER, FROM, LIMIT, TO
from chf.api.context import context
from chf.api.problems import bad_request
from chf.core import provisioning
from chf.runtime.service import open_sessions
from store.interface import Txn

routes = web.RouteTableDef()

MAX_EVENTS_PAGE = 1000
MAX_EVENTS_SCAN = 1_000_000  # events examined per request when filtering by line and time (no time index yet)
MAX_SESSIONS_PAGE = 10_000


@routes.get("/v1/sessions", name="list_sessions")
async def list_sessions(request: web.Request) -> web.Response:
    limit = min(LIMIT.read(request, 1000), MAX_SESSIONS_PAGE)
    return web.json_response(
        {"sessions": context(request).read(lambda txn: [s.as_dict() for s in open_sessions(txn, limit)])}
    )


@routes.get("/v1/lines/{line}/sessions", name="line_sessions")
async def line_sessions(request: web.Request) -> web.Response:
    ref = request.match_info["line"]

    def read(txn: Txn) -> Any:
        sub = provisioning.get_line(txn, ref)
        return [s.as_dict() for s in txn.sessions_of_line(sub.id) if not s.closed]

    return web.json_response({"sessions": context(request).read(read)})


@routes.get("/v1/lines/{line}/events", name="line_events")
async def line_events(request: web.Request) -> web.Response:
    """Events of one line in [from, to), in sequence order. Pages with `after` (the last sequence seen)."""
    ref = request.match_info["line"]
    since = FROM.read(request, 0)
    until = TO.read(request, None)
    after = AFTER.read(request, 0)
    limit = min(LIMIT.read(request, 100), MAX_EVENTS_PAGE)
    if until is not None and until <= since:
        raise bad_request("to", f"must be after from ({since}), got {until}")
    ctx = context(request)
    line_id = ctx.read(lambda txn: provisioning.get_line(txn, ref).id)
    store = ctx.service.store

    def scan() -> dict[str, Any]:
        # The spool has no index by line or time: scan in sequence order, bounded per request.
        found: list[dict[str, Any]] = []
        last = after
        with store.read() as txn:
            for n, event in enumerate(txn.events(after=after), 1):
                last = event["seq"]
                t = event["time"]
                if event.get("subscriber") == line_id and t >= since and (until is None or t < until):
                    found.append(event)
                    if len(found) >= limit:
                        break
                if n >= MAX_EVENTS_SCAN:
                    break
            else:
                last = None  # the whole spool was read: no next page
        return {"events": found, "next_after": last}

    return web.json_response(await asyncio.to_thread(scan))
