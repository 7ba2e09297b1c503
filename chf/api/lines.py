"""Lines (SIMs and eSIMs): creation, reads, lifecycle, moves, plans, balances and one-off buckets.

A line is named in the path by its internal id, IMSI, MSISDN or ICCID."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from chf.api.accounts import assign_plan, claim_key, replayable, within_ceiling
from chf.api.bodies import AddOnPurchase, BucketGrant, LineCreate, LineMove, LineStateChange, idempotency_key, read_body
from chf.api.context import ACTOR, context
from chf.core import provisioning
from chf.core.addons import buy_addon
from chf.core.engine import Engine
from chf.core.model import OpResult, RequestError
from store.interface import Txn

routes = web.RouteTableDef()


@routes.post("/v1/lines", name="create_line")
async def create_line(request: web.Request) -> web.Response:
    body = await read_body(request, LineCreate)
    actor = request[ACTOR]
    result = await context(request).operate(
        lambda txn, engine, now: provisioning.add_line(
            txn,
            engine,
            account=body.account,
            imsi=body.imsi,
            msisdn=body.msisdn,
            iccid=body.iccid,
            eid=body.eid,
            plan=body.plan,
            state=body.state,
            actor=actor,
            now=now,
        )
    )
    return web.json_response(result.value, status=201)


@routes.get("/v1/lines/{line}", name="get_line")
async def get_line(request: web.Request) -> web.Response:
    ref = request.match_info["line"]
    ctx = context(request)
    engine = ctx.service.engine
    now = ctx.service.now()
    return web.json_response(
        ctx.read(lambda txn: provisioning.line_view(txn, engine, provisioning.get_line(txn, ref), now))
    )


@routes.get("/v1/identities/{identity}", name="identity_lines")
async def identity_lines(request: web.Request) -> web.Response:
    """A number's history: the lines that held it before (terminated, then released) and the one holding it."""
    identity = request.match_info["identity"]
    lines = context(request).read(lambda txn: provisioning.identity_lines(txn, identity))
    return web.json_response({"identity": identity, "lines": lines})


@routes.post("/v1/lines/{line}/state", name="line_state")
async def line_state(request: web.Request) -> web.Response:
    ref = request.match_info["line"]
    body = await read_body(request, LineStateChange)
    actor = request[ACTOR]
    result = await context(request).operate(
        lambda txn, engine, now: provisioning.set_state(
            txn, engine, ref, body.state, now=now, actor=actor, reason=body.reason
        )
    )
    return web.json_response(result.value)


@routes.post("/v1/lines/{line}/move", name="move_line")
async def move_line(request: web.Request) -> web.Response:
    ref = request.match_info["line"]
    body = await read_body(request, LineMove)
    actor = request[ACTOR]
    result = await context(request).operate(
        lambda txn, engine, now: provisioning.move_line(
            txn, engine, ref, body.account, now=now, actor=actor, reason=body.reason
        )
    )
    return web.json_response(result.value)


@routes.put("/v1/lines/{line}/plan", name="line_plan")
async def line_plan(request: web.Request) -> web.Response:
    return await assign_plan(request, line_ref=request.match_info["line"])


@routes.get("/v1/lines/{line}/balances", name="line_balances")
async def line_balances(request: web.Request) -> web.Response:
    ref = request.match_info["line"]
    ctx = context(request)
    engine = ctx.service.engine
    now = ctx.service.now()

    def read(txn: Txn) -> Any:
        view = provisioning.line_view(txn, engine, provisioning.get_line(txn, ref), now)
        account = view["account_detail"] or {}
        return {
            "line": view["id"],
            "account": view["account"],
            "currency": account.get("currency"),
            "wallet": {k: account.get(k) for k in ("balance", "reserved", "credit_limit", "available")},
            "buckets": view["buckets"],
            "shared_buckets": view.get("shared_buckets", []),
            "period": view["period"],
        }

    return web.json_response(ctx.read(read))


@routes.post("/v1/lines/{line}/buckets", name="grant_bucket")
async def grant_bucket(request: web.Request) -> web.Response:
    ref = request.match_info["line"]
    body = await read_body(request, BucketGrant)
    actor = request[ACTOR]
    key = idempotency_key(request, actor)

    def op(txn: Txn, engine: Engine, now: int) -> OpResult:
        claim_key(txn, key, body, now, engine.config.idempotency_window)
        if body.valid_to <= now:
            raise RequestError("valid_to", f"must be in the future, got {body.valid_to}")
        return provisioning.grant_bucket(
            txn,
            engine,
            provisioning.get_line(txn, ref).id,
            name=body.name,
            unit=body.unit,
            amount=body.amount,
            valid_to=body.valid_to,
            now=now,
            actor=actor,
            reason=body.reason,
            rating_groups=body.rating_groups,
            priority=body.priority,
            idempotency_key=key,
        )

    result = await context(request).operate(op)
    headers = {"Idempotency-Replayed": "true"} if result.duplicate else None
    return web.json_response(result.value, status=201, headers=headers)


@routes.post("/v1/lines/{line}/addons", name="buy_addon")
async def buy_addon_route(request: web.Request) -> web.Response:
    """A catalogue add-on for the line: its price from the wallet and its bucket in one transaction, or nothing
    (409 with `wallet` when the wallet cannot pay)."""
    ref = request.match_info["line"]
    body = await read_body(request, AddOnPurchase)
    actor = request[ACTOR]
    key = idempotency_key(request, actor)

    def op(txn: Txn, engine: Engine, now: int) -> OpResult:
        claim_key(txn, key, body, now, engine.config.idempotency_window)
        result = buy_addon(txn, engine, ref, body.addon, now=now, actor=actor, reason=body.reason, idempotency_key=key)
        return within_ceiling(result)

    return replayable(await context(request).operate(op))
