"""Tenants: the MVNO brands, each with its currency."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from chf.api.bodies import TenantCreate, read_body
from chf.api.context import context
from chf.core import provisioning
from store.interface import Txn

routes = web.RouteTableDef()


@routes.get("/v1/tenants", name="list_tenants")
async def list_tenants(request: web.Request) -> web.Response:
    return web.json_response({"tenants": context(request).read(lambda txn: [t.as_dict() for t in txn.tenants()])})


@routes.post("/v1/tenants", name="create_tenant")
async def create_tenant(request: web.Request) -> web.Response:
    body = await read_body(request, TenantCreate)
    name = body.name or body.id
    result = await context(request).operate(
        lambda txn, engine, now: provisioning.create_tenant(
            txn,
            body.id,
            name,
            body.currency,
            now,
            parent=body.parent,
            tax_profile=body.tax_profile,
            catalogue=engine.catalogue,
        )
    )
    return web.json_response(result.value, status=201)


@routes.get("/v1/tenants/{tenant}", name="get_tenant")
async def get_tenant(request: web.Request) -> web.Response:
    tenant_id = request.match_info["tenant"]

    def read(txn: Txn) -> Any:
        tenant = txn.get_tenant(tenant_id)
        if tenant is None:
            raise provisioning.NotFound("tenant", f"no tenant {tenant_id!r}")
        return tenant.as_dict()

    return web.json_response(context(request).read(read))
