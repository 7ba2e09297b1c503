"""Accounts: creation, reads, the wallet and shared buckets, plans, top-ups and adjustments."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from chf.api.bodies import AccountCreate, Adjustment, PlanAssignment, TopUp, idempotency_key, query_int, read_body
from chf.api.context import ACTOR, context
from chf.core import provisioning
from chf.core.engine import Engine
from chf.core.model import OpResult
from store.lmdbstore import Txn

routes = web.RouteTableDef()


@routes.get("/v1/accounts", name="list_accounts")
async def list_accounts(request: web.Request) -> web.Response:
    tenant = request.query.get("tenant")
    limit = query_int(request, "limit", 1000, 1)

    def read(txn: Txn) -> Any:
        out = []
        for account in txn.accounts():
            if tenant is None or account.tenant == tenant:
                out.append(account.as_dict())
                if len(out) >= limit:
                    break
        return out

    return web.json_response({"accounts": context(request).read(read)})


@routes.post("/v1/accounts", name="create_account")
async def create_account(request: web.Request) -> web.Response:
    body = await read_body(request, AccountCreate)
    actor = request[ACTOR]
    result = await context(request).operate(
        lambda txn, engine, now: provisioning.create_account(
            txn,
            engine,
            account_id=body.id,
            tenant=body.tenant,
            payment=body.payment,
            currency=body.currency,
            balance=body.balance,
            credit_limit=body.credit_limit,
            cycle_day=body.cycle_day,
            parent=body.parent,
            plan=body.plan,
            actor=actor,
            now=now,
        )
    )
    return web.json_response(result.value, status=201)


def get_account(txn: Txn, account_id: str) -> Any:
    provisioning.check_id("account", account_id)
    account = txn.get_account(account_id)
    if account is None:
        raise provisioning.NotFound("account", f"no account {account_id!r}")
    return account


@routes.get("/v1/accounts/{account}", name="get_account")
async def get_account_route(request: web.Request) -> web.Response:
    account_id = request.match_info["account"]
    return web.json_response(context(request).read(lambda txn: get_account(txn, account_id).as_dict()))


@routes.get("/v1/accounts/{account}/balances", name="account_balances")
async def account_balances(request: web.Request) -> web.Response:
    account_id = request.match_info["account"]

    def read(txn: Txn) -> Any:
        account = get_account(txn, account_id)
        bs = txn.get_account_balances(account_id)
        return {
            "account": account_id,
            "currency": account.currency,
            "wallet": {
                "balance": account.balance,
                "reserved": account.reserved,
                "credit_limit": account.credit_limit,
                "available": account.available(),
            },
            "plan": account.plan,
            "buckets": [b.as_dict() for b in bs.buckets] if bs is not None else [],
        }

    return web.json_response(context(request).read(read))


@routes.get("/v1/accounts/{account}/lines", name="account_lines")
async def account_lines(request: web.Request) -> web.Response:
    account_id = request.match_info["account"]

    def read(txn: Txn) -> Any:
        get_account(txn, account_id)
        lines = (txn.get_subscriber(i) for i in txn.lines_of_account(account_id))
        return [s.as_dict() for s in lines if s is not None]

    return web.json_response({"lines": context(request).read(read)})


@routes.put("/v1/accounts/{account}/plan", name="account_plan")
async def account_plan(request: web.Request) -> web.Response:
    return await assign_plan(request, account_id=request.match_info["account"])


async def assign_plan(request: web.Request, **owner: str) -> web.Response:
    """A plan for an account (`account_id=`) or a line (`line_ref=`)."""
    body = await read_body(request, PlanAssignment)
    actor = request[ACTOR]
    result = await context(request).operate(
        lambda txn, engine, now: provisioning.assign_plan(
            txn, engine, body.plan, now=now, actor=actor, reason=body.reason, **owner
        )
    )
    return web.json_response(result.value)


@routes.post("/v1/accounts/{account}/topups", name="topup")
async def topup(request: web.Request) -> web.Response:
    account_id = request.match_info["account"]
    body = await read_body(request, TopUp)
    actor = request[ACTOR]
    key = idempotency_key(request, actor)
    result = await context(request).operate(
        lambda txn, engine, now: provisioning.topup(
            txn, engine, account_id, body.amount, now=now, actor=actor, reason=body.reason, idempotency_key=key
        )
    )
    return replayable(result)


@routes.post("/v1/accounts/{account}/adjustments", name="adjust")
async def adjust(request: web.Request) -> web.Response:
    account_id = request.match_info["account"]
    body = await read_body(request, Adjustment)
    line_ref = str(body.line) if body.line is not None else None
    actor = request[ACTOR]
    key = idempotency_key(request, actor)

    def op(txn: Txn, engine: Engine, now: int) -> OpResult:
        line_id = provisioning.get_line(txn, line_ref).id if line_ref is not None else None
        return provisioning.adjust(
            txn,
            engine,
            account_id,
            body.amount,
            now=now,
            actor=actor,
            reason=body.reason,
            line_id=line_id,
            bucket_id=body.bucket,
            idempotency_key=key,
        )

    return replayable(await context(request).operate(op))


def replayable(result: OpResult) -> web.Response:
    headers = {"Idempotency-Replayed": "true"} if result.duplicate else None
    return web.json_response(result.value, headers=headers)
