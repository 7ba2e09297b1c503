"""Accounts: creation, reads, the wallet and shared buckets, plans, top-ups and adjustments."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from aiohttp import web

from chf.api.bodies import (
    LIMIT,
    MAX_BALANCE,
    AccountCreate,
    Adjustment,
    PlanAssignment,
    TopUp,
    idempotency_key,
    read_body,
)
from chf.api.context import ACTOR, context
from chf.api.problems import ApiProblem
from chf.core import provisioning
from chf.core.engine import Engine
from chf.core.model import OpResult, RequestError
from store.interface import Txn

routes = web.RouteTableDef()


@routes.get("/v1/accounts", name="list_accounts")
async def list_accounts(request: web.Request) -> web.Response:
    tenant = request.query.get("tenant")
    limit = LIMIT.read(request, 1000)

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
            price_list=body.price_list,
            tax_profile=body.tax_profile,
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

    def op(txn: Txn, engine: Engine, now: int) -> OpResult:
        claim_key(txn, key, body, now, engine.config.idempotency_window)
        result = provisioning.topup(
            txn, engine, account_id, body.amount, now=now, actor=actor, reason=body.reason, idempotency_key=key
        )
        return within_ceiling(result)

    return replayable(await context(request).operate(op))


@routes.post("/v1/accounts/{account}/adjustments", name="adjust")
async def adjust(request: web.Request) -> web.Response:
    account_id = request.match_info["account"]
    body = await read_body(request, Adjustment)
    line_ref = str(body.line) if body.line is not None else None
    actor = request[ACTOR]
    key = idempotency_key(request, actor)

    def op(txn: Txn, engine: Engine, now: int) -> OpResult:
        claim_key(txn, key, body, now, engine.config.idempotency_window)
        line_id = provisioning.get_line(txn, line_ref).id if line_ref is not None else None
        result = provisioning.adjust(
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
        return within_ceiling(result)

    return replayable(await context(request).operate(op))


def claim_key(txn: Txn, key: str | None, body: msgspec.Struct, now: int, window: int) -> None:
    """An Idempotency-Key names one request (IETF httpapi Idempotency-Key header draft): the first use records a
    digest of its body beside the stored answer, for as long; a later use with another body is refused with
    422 instead of being answered as a replay of a request it is not. Runs inside the operation, so the digest
    is written only with the change it guards (a refused first attempt leaves the key free)."""
    if key is None:
        return
    digest = hashlib.sha256(msgspec.json.encode(body)).hexdigest()  # canonical: fields in declaration order
    stored_key = "api-body:" + key
    stored = txn.get_idem(stored_key, now)
    if stored is None:
        txn.put_idem(stored_key, now + window, digest)
    elif stored != digest:
        raise ApiProblem(
            422,
            "Unprocessable Content",
            "this key was used with another request body; a key names one request",
            "Idempotency-Key",
        )


def within_ceiling(result: OpResult) -> OpResult:
    """Refuse (and so roll back) a change that would take a wallet or bucket beyond +-MAX_BALANCE."""
    value = result.value if isinstance(result.value, dict) else {}
    for name in ("balance", "remaining"):
        after = value.get(name)
        if isinstance(after, int) and abs(after) > MAX_BALANCE:
            raise RequestError("amount", f"would take the {name} to {after}, beyond +-{MAX_BALANCE}")
    return result


def replayable(result: OpResult) -> web.Response:
    headers = {"Idempotency-Replayed": "true"} if result.duplicate else None
    return web.json_response(result.value, headers=headers)
