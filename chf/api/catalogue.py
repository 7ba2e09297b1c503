"""The catalogue: load and validate the file (or the directory of its versions) again; an invalid one keeps the
running catalogue."""

from __future__ import annotations

import asyncio

from aiohttp import web

from chf.api.context import context
from chf.api.problems import problem_response
from chf.core.catalogue import CatalogueError

routes = web.RouteTableDef()


@routes.post("/v1/catalogue/reload", name="reload_catalogue")
async def reload_catalogue(request: web.Request) -> web.Response:
    try:
        catalogue = await asyncio.to_thread(context(request).service.reload_catalogue)
    except CatalogueError as exc:
        return problem_response(
            422,
            "Unprocessable Content",
            "the catalogue is invalid; the running one is kept",
            "catalogue",
            errors=exc.errors,
        )
    except (OSError, RuntimeError) as exc:
        return problem_response(422, "Unprocessable Content", f"cannot load the catalogue: {exc}", "catalogue")
    service = context(request).service
    now = service.now()
    # The versions of the catalogue (chf.core.versions): each with its effective time and whether it is in force.
    in_force = service.engine.versions.at(now)[0]
    versions = [
        {"version": c.version, "file": c.source, "effective": c.effective, "in_force": c is in_force}
        for c in service.engine.versions.versions
    ]
    return web.json_response({"digest": catalogue.digest, "plans": sorted(catalogue.plans), "versions": versions})
