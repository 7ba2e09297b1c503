"""What every route handler of the management API reaches through its request: the charging service (changes
go through `ChargingService.operate`, so they are durable before they are answered and their signals reach the
front-ends) and who is calling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from chf.core.engine import Engine
from chf.core.model import OpResult
from chf.runtime.service import ChargingService
from store.interface import Txn

ACTOR = web.RequestKey("actor", str)  # who is calling: "api:<token name>", recorded in audit events


@dataclass(slots=True)
class ApiContext:
    service: ChargingService
    started: bool = False  # listening (readiness)

    async def operate(self, fn: Callable[[Txn, Engine, int], OpResult]) -> OpResult:
        return await self.service.operate(fn)

    def read(self, fn: Callable[[Txn], Any]) -> Any:
        with self.service.read() as txn:
            return fn(txn)


CONTEXT = web.AppKey("context", ApiContext)


def context(request: web.Request) -> ApiContext:
    return request.app[CONTEXT]
