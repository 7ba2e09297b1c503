"""The management API: provisioning, balances, sessions, events and catalogue reload over HTTP (aiohttp).

Listens on 127.0.0.1:8081 by default (`[api]` in conf/chf.toml). Every change goes through
`ChargingService.operate`, so it is durable before it is answered and its signals (re-authorise after a
top-up or plan change, abort after a suspension, termination or move) reach the Gy and Nchf front-ends.
This module is the server: start and stop, authentication, and one middleware that turns every refusal into
problem+json. The routes live by concern beside it (tenants, accounts, lines, events, catalogue, health), the
request types in chf/api/bodies.py, the OpenAPI document generated from them in chf/api/openapi.py.

Conventions (also in the OpenAPI document served at /openapi.json):
- Money is an integer number of micro-units of the account's currency (1 EUR = 1_000_000); units are
  integers of their type (bytes, seconds, events). A float or a string where an integer is expected is refused.
  Every amount and integer has a documented bound (chf/api/bodies.py): at most 10^15 per request, and a wallet
  or bucket stays within +-10^18, far inside the store's signed 64-bit values.
- Times are integer UNIX seconds (UTC).
- Authentication: `Authorization: Bearer <token>` with a token from `[api.tokens]` (name = token); the token's
  name becomes the actor recorded in audit events ("api:<name>"). /healthz, /readyz, /metrics and
  /openapi.json are open.
- Errors are `application/problem+json` (RFC 9457, the shape of 3GPP TS 29.571 ProblemDetails): status,
  title, detail, and `invalidParams: [{param, reason}]` naming every offending field. A refused request
  changes nothing.
- `Idempotency-Key` on top-up and adjustment: a repeat with the same body within the idempotency window
  returns the first answer (with `Idempotency-Replayed: true`) and changes nothing; the same key with another
  body is refused with 422, naming the header.
- The `Server` header names the product only, not the versions of aiohttp and Python.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from chf.api import accounts, catalogue, events, health, lines, tenants
from chf.api.bodies import MAX_BODY
from chf.api.config import ApiConfig, parse_api_config
from chf.api.context import ACTOR, CONTEXT, ApiContext
from chf.api.problems import ApiProblem, from_problem, problem_response
from chf.core import provisioning
from chf.core.model import RequestError
from chf.runtime import metrics
from chf.runtime.service import ChargingService
from store.interface import StoreBusy, StoreClosed, StoreError

__all__ = ["ApiConfig", "ApiServer", "api_components", "parse_api_config"]

log = logging.getLogger("chf.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SERVER = "chf"
UNMETERED = frozenset({"metrics", "healthz", "readyz"})  # probes: not counted as API requests


class ApiServer:
    """The management API as a `chf serve` component."""

    name = "api"

    def __init__(self, service: ChargingService, config: ApiConfig) -> None:
        self.service = service
        self.config = config
        self._tokens = [(name, token.encode()) for name, token in config.tokens.items()]
        self._runner: web.AppRunner | None = None
        self.port: int = config.port  # the bound port (differs when config.port is 0)
        self.context = ApiContext(service)
        self.app = self._build_app()
        if metrics.observe_commit not in service.store.on_commit:
            service.store.on_commit.append(metrics.observe_commit)

    @property
    def started(self) -> bool:
        return self.context.started

    # -- lifecycle --------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, logger=_HttpLog(log, {}))
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.listen, self.config.port, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        self.context.started = True
        log.info("event=api_listening address=%s port=%d", self.config.listen, self.port)

    async def stop(self) -> None:
        self.context.started = False
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- wiring -----------------------------------------------------------------------------------------------------
    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY)
        app[CONTEXT] = self.context
        app.on_response_prepare.append(_server_header)
        for module in (health, tenants, accounts, lines, events, catalogue):
            app.add_routes(module.routes)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        operation = request.match_info.route.name or "unknown"
        try:
            request[ACTOR] = self._authenticate(request)
            response = await handler(request)
        except web.HTTPException as exc:  # aiohttp's own: unknown route, wrong method, body too large
            response = problem_response(exc.status, exc.reason, exc.text or exc.reason)
            if exc.status == 405:
                response.headers["Allow"] = exc.headers.get("Allow", "")
            operation = "unknown"
        except Exception as exc:
            response = _refusal(exc, operation)
        _account(operation, response, started)
        return response

    def _authenticate(self, request: web.Request) -> str:
        if request.path in health.OPEN_PATHS:
            return "anonymous"
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("a bearer token is required")
        # aiohttp hands header bytes that are not UTF-8 over as lone surrogates: surrogateescape gives back the
        # bytes sent, which match no configured token (a 401, not an encoding error).
        presented = token.strip().encode("utf-8", "surrogateescape")
        found = None
        for name, expected in self._tokens:  # compare with every token, in constant time each
            if hmac.compare_digest(presented, expected):
                found = name
        if found is None:
            raise _unauthorized("the bearer token is not valid")
        return f"api:{found}"


def _refusal(exc: Exception, operation: str) -> web.Response:
    """The answer to a request that raised: a problem+json naming the field, never a traceback."""
    if isinstance(exc, ApiProblem):
        return from_problem(exc)
    if isinstance(exc, provisioning.NotFound):
        return problem_response(404, "Not Found", exc.message, exc.field)
    if isinstance(exc, provisioning.Conflict):
        return problem_response(409, "Conflict", exc.message, exc.field)
    if isinstance(exc, RequestError):
        return problem_response(400, "Bad Request", exc.message, exc.field)
    if isinstance(exc, StoreBusy):
        metrics.OVERLOAD.labels("api").inc()
        return problem_response(503, "Service Unavailable", "the write queue is full; retry shortly")
    if isinstance(exc, StoreClosed | StoreError):
        log.error("event=api_store_error operation=%s error=%r", operation, exc)
        return problem_response(503, "Service Unavailable", "the store is not available")
    log.error("event=api_internal_error operation=%s", operation, exc_info=exc)
    return problem_response(500, "Internal Server Error", "an internal error was logged")


def _account(operation: str, response: web.StreamResponse, started: float) -> None:
    """Headers, log line and metrics of an answer."""
    status = response.status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="chf"'
    if 400 <= status < 500:
        metrics.PROTOCOL_ERRORS.labels("api", str(status)).inc()
    if status >= 400:
        log.info(
            "event=api_refused operation=%s status=%d detail=%s",
            operation,
            status,
            json.dumps(getattr(response, "text", "")),
        )
    if operation not in UNMETERED:
        metrics.REQUESTS.labels("api", operation, str(status)).inc()
        metrics.REQUEST_LATENCY.labels("api", operation).observe(time.perf_counter() - started)


class _HttpLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's HTTP layer logs a request it cannot parse (a control character in a header, a malformed request
    line) at ERROR with a traceback, before the application sees it. That is the client's fault: one INFO line
    and a counted protocol error instead. Anything else keeps its traceback."""

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            metrics.PROTOCOL_ERRORS.labels("api", str(exc_info.code)).inc()
            self.info("event=api_unparsable_request status=%d error=%s", exc_info.code, json.dumps(str(exc_info)))
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    """The product, not aiohttp's and Python's versions (RFC 9110 section 10.2.4 allows any detail; less tells an
    attacker less)."""
    response.headers["Server"] = SERVER


def _unauthorized(detail: str) -> ApiProblem:
    return ApiProblem(401, "Unauthorized", detail, "Authorization")


def api_components(config: Any, service: ChargingService) -> list[Any]:
    """`chf serve` factory: the API server when `[api]` is present and enabled."""
    if "api" not in config.raw:
        return []
    api_config = parse_api_config(config.section("api"), config.source)
    return [ApiServer(service, api_config)] if api_config.enabled else []
