"""The management API: provisioning, balances, sessions, events and catalogue reload over HTTP (aiohttp).

Listens on 127.0.0.1:8081 by default (`[api]` in conf/chf.toml). Every change goes through
`ChargingService.operate`, so it is durable before it is answered and its signals (re-authorise after a
top-up or plan change, abort after a suspension, termination or move) reach the Gy and Nchf front-ends.

Conventions (also in the OpenAPI document served at /openapi.json):
- Money is an integer number of micro-units of the account's currency (1 EUR = 1_000_000); units are
  integers of their type (bytes, seconds, events). A float or a string where an integer is expected is refused.
- Times are integer UNIX seconds (UTC).
- Authentication: `Authorization: Bearer <token>` with a token from `[api.tokens]` (name = token); the token's
  name becomes the actor recorded in audit events ("api:<name>"). /healthz, /readyz, /metrics and
  /openapi.json are open.
- Errors are `application/problem+json` (RFC 9457, the shape of 3GPP TS 29.571 ProblemDetails): status,
  title, detail, and `invalidParams: [{param, reason}]` naming the offending field. A refused request changes
  nothing.
- `Idempotency-Key` on top-up and adjustment: a repeat within the idempotency window returns the first answer
  (with `Idempotency-Replayed: true`) and changes nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from chf import export
from chf.api.openapi import OPENAPI
from chf.core import provisioning
from chf.core.catalogue import CatalogueError
from chf.core.engine import Engine
from chf.core.model import OpResult, RequestError
from chf.runtime import metrics
from chf.runtime.service import ChargingService
from store.interface import StoreBusy, StoreClosed, StoreError, Txn

log = logging.getLogger("chf.api")

PROBLEM = "application/problem+json"
MAX_BODY = 64 * 1024  # bytes; provisioning bodies are small, anything larger is refused with 413
MAX_EVENTS_PAGE = 1000
MAX_EVENTS_SCAN = 1_000_000  # events examined per request when filtering by line and time (no time index yet)
ACTOR = web.RequestKey("actor", str)  # who is calling: "api:<token name>", recorded in audit events
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})


@dataclass(slots=True)
class ApiConfig:
    listen: str = "127.0.0.1"
    port: int = 8081
    tokens: dict[str, str] = field(default_factory=dict)  # name -> token
    enabled: bool = True


def parse_api_config(section: dict[str, Any], source: str = "conf/chf.toml") -> ApiConfig:
    """Validate the `[api]` section; errors name the file, section and field."""
    from chf.runtime.config import ConfigError

    errors: list[str] = []
    cfg = ApiConfig()
    known = {"listen", "port", "tokens", "enabled"}
    for key in section:
        if key not in known:
            errors.append(f"{source}: [api] {key}: unknown setting (known: {', '.join(sorted(known))})")
    listen = section.get("listen", cfg.listen)
    if not isinstance(listen, str) or not listen:
        errors.append(f"{source}: [api] listen: must be an address such as 127.0.0.1, got {listen!r}")
    else:
        cfg.listen = listen
    port = section.get("port", cfg.port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        errors.append(f"{source}: [api] port: must be an integer from 0 to 65535, got {port!r}")
    else:
        cfg.port = port
    enabled = section.get("enabled", True)
    if not isinstance(enabled, bool):
        errors.append(f"{source}: [api] enabled: must be true or false, got {enabled!r}")
    else:
        cfg.enabled = enabled
    tokens = section.get("tokens", {})
    if not isinstance(tokens, dict):
        errors.append(f'{source}: [api] tokens: must be a table of name = "token"')
    else:
        for name, token in tokens.items():
            if not isinstance(token, str) or len(token) < 16:
                errors.append(f"{source}: [api.tokens] {name}: must be a string of at least 16 characters")
            else:
                cfg.tokens[name] = token
    if errors:
        raise ConfigError(errors)
    return cfg


class ApiProblem(Exception):
    """An HTTP problem answer; `param` names the field at fault."""

    def __init__(self, status: int, title: str, detail: str, param: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.param = param


def problem_response(status: int, title: str, detail: str, param: str | None = None, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if param is not None:
        body["invalidParams"] = [{"param": param, "reason": detail}]
    body.update(extra)
    headers = {"Retry-After": "1"} if status == 503 else None
    return web.Response(status=status, text=json.dumps(body), content_type=PROBLEM, headers=headers)


# ------------------------------------------------------------------------------------------------------------------
# Request body validation: every field is named in the error; unknown fields are refused (a typo never silently
# drops a setting).
# ------------------------------------------------------------------------------------------------------------------
class Body:
    def __init__(self, data: dict[str, Any], allowed: set[str]) -> None:
        for key in data:
            if key not in allowed:
                raise ApiProblem(400, "Bad Request", f"unknown field (known: {', '.join(sorted(allowed))})", key)
        self.data = data

    def _get(self, name: str, required: bool, default: Any) -> Any:
        if name not in self.data or self.data[name] is None:
            if required:
                raise ApiProblem(400, "Bad Request", "is required", name)
            return default
        return self.data[name]

    def str(self, name: str, *, required: bool = False, default: str | None = None) -> Any:
        value = self._get(name, required, default)
        if value is not None and (not isinstance(value, str) or not value):
            raise ApiProblem(400, "Bad Request", f"must be a non-empty string, got {value!r}", name)
        return value

    def int(self, name: str, *, required: bool = False, default: int | None = None) -> Any:
        value = self._get(name, required, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ApiProblem(400, "Bad Request", f"must be an integer, got {value!r}", name)
        return value

    def int_list(self, name: str) -> list[int] | None:
        value = self._get(name, False, None)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise ApiProblem(400, "Bad Request", f"must be a list of integers, got {value!r}", name)
        return value


async def read_body(request: web.Request, allowed: set[str]) -> Body:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiProblem(413, "Payload Too Large", f"the body is limited to {MAX_BODY} bytes", "body")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ApiProblem(413, "Payload Too Large", f"the body is limited to {MAX_BODY} bytes", "body")
    if not raw:
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiProblem(400, "Bad Request", f"is not valid JSON: {exc}", "body") from exc
    if not isinstance(data, dict):
        raise ApiProblem(400, "Bad Request", "must be a JSON object", "body")
    return Body(data, allowed)


def query_int(request: web.Request, name: str, default: int | None, minimum: int = 0) -> Any:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiProblem(400, "Bad Request", f"must be an integer, got {raw!r}", name) from None
    if value < minimum:
        raise ApiProblem(400, "Bad Request", f"must be >= {minimum}, got {value}", name)
    return value


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= 200 or not key.isprintable():
        raise ApiProblem(400, "Bad Request", "must be 1-200 printable characters", "Idempotency-Key")
    # Keys are per caller: two clients choosing the same key never see each other's answers.
    return f"{request[ACTOR]}:{request.path}:{key}"


# ------------------------------------------------------------------------------------------------------------------
# The server
# ------------------------------------------------------------------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiServer:
    """The management API as a `chf serve` component."""

    name = "api"

    def __init__(self, service: ChargingService, config: ApiConfig) -> None:
        self.service = service
        self.config = config
        self._tokens = [(name, token.encode()) for name, token in config.tokens.items()]
        self._runner: web.AppRunner | None = None
        self.port: int = config.port  # the bound port (differs when config.port is 0)
        self.app = self._build_app()
        self.started = False
        if metrics.observe_commit not in service.store.on_commit:
            service.store.on_commit.append(metrics.observe_commit)

    # -- lifecycle --------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.listen, self.config.port, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        self.started = True
        log.info("event=api_listening address=%s port=%d", self.config.listen, self.port)

    async def stop(self) -> None:
        self.started = False
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- wiring -----------------------------------------------------------------------------------------------------
    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY)
        r = app.router
        r.add_get("/healthz", self.healthz, name="healthz")
        r.add_get("/readyz", self.readyz, name="readyz")
        r.add_get("/metrics", self.metrics, name="metrics")
        r.add_get("/openapi.json", self.openapi, name="openapi")
        r.add_get("/v1/tenants", self.list_tenants, name="list_tenants")
        r.add_post("/v1/tenants", self.create_tenant, name="create_tenant")
        r.add_get("/v1/tenants/{tenant}", self.get_tenant, name="get_tenant")
        r.add_get("/v1/accounts", self.list_accounts, name="list_accounts")
        r.add_post("/v1/accounts", self.create_account, name="create_account")
        r.add_get("/v1/accounts/{account}", self.get_account, name="get_account")
        r.add_get("/v1/accounts/{account}/balances", self.account_balances, name="account_balances")
        r.add_get("/v1/accounts/{account}/lines", self.account_lines, name="account_lines")
        r.add_put("/v1/accounts/{account}/plan", self.account_plan, name="account_plan")
        r.add_post("/v1/accounts/{account}/topups", self.topup, name="topup")
        r.add_post("/v1/accounts/{account}/adjustments", self.adjust, name="adjust")
        r.add_post("/v1/lines", self.create_line, name="create_line")
        r.add_get("/v1/lines/{line}", self.get_line, name="get_line")
        r.add_post("/v1/lines/{line}/state", self.line_state, name="line_state")
        r.add_post("/v1/lines/{line}/move", self.move_line, name="move_line")
        r.add_put("/v1/lines/{line}/plan", self.line_plan, name="line_plan")
        r.add_get("/v1/lines/{line}/balances", self.line_balances, name="line_balances")
        r.add_post("/v1/lines/{line}/buckets", self.grant_bucket, name="grant_bucket")
        r.add_get("/v1/lines/{line}/sessions", self.line_sessions, name="line_sessions")
        r.add_get("/v1/lines/{line}/events", self.line_events, name="line_events")
        r.add_get("/v1/sessions", self.list_sessions, name="list_sessions")
        r.add_post("/v1/catalogue/reload", self.reload_catalogue, name="reload_catalogue")
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        route = request.match_info.route
        operation = route.name or "unknown"
        response: web.StreamResponse
        try:
            request[ACTOR] = self._authenticate(request)
            response = await handler(request)
        except ApiProblem as exc:
            response = problem_response(exc.status, exc.title, exc.detail, exc.param)
        except provisioning.NotFound as exc:
            response = problem_response(404, "Not Found", exc.message, exc.field)
        except provisioning.Conflict as exc:
            response = problem_response(409, "Conflict", exc.message, exc.field)
        except RequestError as exc:
            response = problem_response(400, "Bad Request", exc.message, exc.field)
        except StoreBusy:
            metrics.OVERLOAD.labels("api").inc()
            response = problem_response(503, "Service Unavailable", "the write queue is full; retry shortly")
        except (StoreClosed, StoreError) as exc:
            log.error("event=api_store_error operation=%s error=%r", operation, exc)
            response = problem_response(503, "Service Unavailable", "the store is not available")
        except web.HTTPException as exc:  # aiohttp's own: unknown route, wrong method, body too large
            response = problem_response(exc.status, exc.reason, exc.text or exc.reason)
            if exc.status == 405:
                response.headers["Allow"] = exc.headers.get("Allow", "")
            operation = "unknown"
        except Exception:  # never a traceback to a client
            log.exception("event=api_internal_error operation=%s", operation)
            response = problem_response(500, "Internal Server Error", "an internal error was logged")
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
        if operation not in ("metrics", "healthz", "readyz"):
            metrics.REQUESTS.labels("api", operation, str(status)).inc()
            metrics.REQUEST_LATENCY.labels("api", operation).observe(time.perf_counter() - started)
        return response

    def _authenticate(self, request: web.Request) -> str:
        if request.path in OPEN_PATHS:
            return "anonymous"
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("a bearer token is required")
        presented = token.strip().encode()
        found = None
        for name, expected in self._tokens:  # compare with every token, in constant time each
            if hmac.compare_digest(presented, expected):
                found = name
        if found is None:
            raise _unauthorized("the bearer token is not valid")
        return f"api:{found}"

    # -- operations through the service -----------------------------------------------------------------------------
    async def _operate(self, fn: Callable[[Txn, Engine, int], OpResult]) -> OpResult:
        return await self.service.operate(fn)

    def _read(self, fn: Callable[[Txn], Any]) -> Any:
        with self.service.read() as txn:
            return fn(txn)

    # -- open endpoints ---------------------------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: the process answers."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness: the store writer runs and the store can be read. A large export backlog is reported but
        does not make the charging function unready: billing export must never take charging out of service."""
        store = self.service.store
        checks: dict[str, Any] = {"writer": store.running}
        try:
            with store.read() as txn:
                txn.last_event_seq()
            checks["store"] = True
        except Exception as exc:
            log.error("event=readyz_store_failed error=%r", exc)
            checks["store"] = False
        backlogs = export.backlogs(store)
        checks["export"] = {
            name: {"backlog": backlog, "limit": limit, "over_limit": backlog > limit}
            for name, (backlog, limit) in backlogs.items()
        }
        extra_ready = True
        for name, check in self.service.readiness_checks.items():
            try:
                checks[name] = bool(check())
            except Exception as exc:
                log.error("event=readyz_check_failed check=%s error=%r", name, exc)
                checks[name] = False
            extra_ready = extra_ready and checks[name]
        ready = checks["writer"] and checks["store"] and self.started and extra_ready
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503
        )

    async def metrics(self, request: web.Request) -> web.Response:
        store = self.service.store
        with store.read() as txn:
            metrics.OPEN_SESSIONS.set(txn.session_count())
        metrics.WRITE_QUEUE.set(store.queued())
        for name, (backlog, _limit) in export.backlogs(store).items():
            metrics.EXPORT_BACKLOG.labels(name).set(backlog)
        body = generate_latest(metrics.exposition())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    # -- tenants ----------------------------------------------------------------------------------------------------
    async def list_tenants(self, request: web.Request) -> web.Response:
        return web.json_response({"tenants": self._read(lambda txn: [t.as_dict() for t in txn.tenants()])})

    async def create_tenant(self, request: web.Request) -> web.Response:
        body = await read_body(request, {"id", "name", "currency"})
        tenant_id = body.str("id", required=True)
        name = body.str("name", default=tenant_id)
        currency = body.str("currency", required=True)
        result = await self._operate(
            lambda txn, _e, now: provisioning.create_tenant(txn, tenant_id, name, currency, now)
        )
        return web.json_response(result.value, status=201)

    async def get_tenant(self, request: web.Request) -> web.Response:
        tenant_id = request.match_info["tenant"]

        def read(txn: Txn) -> Any:
            tenant = txn.get_tenant(tenant_id)
            if tenant is None:
                raise provisioning.NotFound("tenant", f"no tenant {tenant_id!r}")
            return tenant.as_dict()

        return web.json_response(self._read(read))

    # -- accounts ---------------------------------------------------------------------------------------------------
    async def list_accounts(self, request: web.Request) -> web.Response:
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

        return web.json_response({"accounts": self._read(read)})

    async def create_account(self, request: web.Request) -> web.Response:
        body = await read_body(
            request, {"id", "tenant", "payment", "currency", "balance", "credit_limit", "cycle_day", "parent", "plan"}
        )
        kwargs = {
            "account_id": body.str("id", required=True),
            "tenant": body.str("tenant", required=True),
            "payment": body.str("payment", required=True),
            "currency": body.str("currency"),
            "balance": body.int("balance", default=0),
            "credit_limit": body.int("credit_limit", default=0),
            "cycle_day": body.int("cycle_day", default=1),
            "parent": body.str("parent"),
            "plan": body.str("plan"),
            "actor": request[ACTOR],
        }
        result = await self._operate(
            lambda txn, engine, now: provisioning.create_account(txn, engine, now=now, **kwargs)
        )
        return web.json_response(result.value, status=201)

    def _account(self, txn: Txn, account_id: str) -> Any:
        provisioning.check_id("account", account_id)
        account = txn.get_account(account_id)
        if account is None:
            raise provisioning.NotFound("account", f"no account {account_id!r}")
        return account

    async def get_account(self, request: web.Request) -> web.Response:
        account_id = request.match_info["account"]
        return web.json_response(self._read(lambda txn: self._account(txn, account_id).as_dict()))

    async def account_balances(self, request: web.Request) -> web.Response:
        account_id = request.match_info["account"]

        def read(txn: Txn) -> Any:
            account = self._account(txn, account_id)
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

        return web.json_response(self._read(read))

    async def account_lines(self, request: web.Request) -> web.Response:
        account_id = request.match_info["account"]

        def read(txn: Txn) -> Any:
            self._account(txn, account_id)
            lines = (txn.get_subscriber(i) for i in txn.lines_of_account(account_id))
            return [s.as_dict() for s in lines if s is not None]

        return web.json_response({"lines": self._read(read)})

    async def account_plan(self, request: web.Request) -> web.Response:
        return await self._assign_plan(request, account_id=request.match_info["account"])

    async def _assign_plan(self, request: web.Request, **owner: str) -> web.Response:
        """A plan for an account (`account_id=`) or a line (`line_ref=`)."""
        body = await read_body(request, {"plan", "reason"})
        plan = body.str("plan", required=True)
        reason = body.str("reason", default="plan assigned")
        actor = request[ACTOR]
        result = await self._operate(
            lambda txn, engine, now: provisioning.assign_plan(
                txn, engine, plan, now=now, actor=actor, reason=reason, **owner
            )
        )
        return web.json_response(result.value)

    async def topup(self, request: web.Request) -> web.Response:
        account_id = request.match_info["account"]
        body = await read_body(request, {"amount", "reason"})
        amount = body.int("amount", required=True)
        reason = body.str("reason", required=True)
        key = idempotency_key(request)
        actor = request[ACTOR]
        result = await self._operate(
            lambda txn, engine, now: provisioning.topup(
                txn, engine, account_id, amount, now=now, actor=actor, reason=reason, idempotency_key=key
            )
        )
        return _replayable(result)

    async def adjust(self, request: web.Request) -> web.Response:
        account_id = request.match_info["account"]
        body = await read_body(request, {"amount", "reason", "line", "bucket"})
        amount = body.int("amount", required=True)
        reason = body.str("reason", required=True)
        line_ref = body.str("line") if not isinstance(body.data.get("line"), int) else str(body.data["line"])
        bucket_id = body.int("bucket")
        key = idempotency_key(request)
        actor = request[ACTOR]

        def op(txn: Txn, engine: Engine, now: int) -> OpResult:
            line_id = provisioning.get_line(txn, line_ref).id if line_ref is not None else None
            return provisioning.adjust(
                txn,
                engine,
                account_id,
                amount,
                now=now,
                actor=actor,
                reason=reason,
                line_id=line_id,
                bucket_id=bucket_id,
                idempotency_key=key,
            )

        return _replayable(await self._operate(op))

    # -- lines ------------------------------------------------------------------------------------------------------
    async def create_line(self, request: web.Request) -> web.Response:
        body = await read_body(request, {"account", "imsi", "msisdn", "iccid", "eid", "plan", "state"})
        kwargs = {
            "account": body.str("account", required=True),
            "imsi": body.str("imsi", required=True),
            "msisdn": body.str("msisdn"),
            "iccid": body.str("iccid"),
            "eid": body.str("eid"),
            "plan": body.str("plan"),
            "state": body.str("state", default="active"),
            "actor": request[ACTOR],
        }
        result = await self._operate(lambda txn, engine, now: provisioning.add_line(txn, engine, now=now, **kwargs))
        return web.json_response(result.value, status=201)

    async def get_line(self, request: web.Request) -> web.Response:
        ref = request.match_info["line"]
        engine = self.service.engine
        now = self.service.now()
        return web.json_response(
            self._read(lambda txn: provisioning.line_view(txn, engine, provisioning.get_line(txn, ref), now))
        )

    async def line_state(self, request: web.Request) -> web.Response:
        ref = request.match_info["line"]
        body = await read_body(request, {"state", "reason"})
        state = body.str("state", required=True)
        reason = body.str("reason", required=True)
        actor = request[ACTOR]
        result = await self._operate(
            lambda txn, engine, now: provisioning.set_state(
                txn, engine, ref, state, now=now, actor=actor, reason=reason
            )
        )
        return web.json_response(result.value)

    async def move_line(self, request: web.Request) -> web.Response:
        ref = request.match_info["line"]
        body = await read_body(request, {"account", "reason"})
        account = body.str("account", required=True)
        reason = body.str("reason", required=True)
        actor = request[ACTOR]
        result = await self._operate(
            lambda txn, engine, now: provisioning.move_line(
                txn, engine, ref, account, now=now, actor=actor, reason=reason
            )
        )
        return web.json_response(result.value)

    async def line_plan(self, request: web.Request) -> web.Response:
        return await self._assign_plan(request, line_ref=request.match_info["line"])

    async def line_balances(self, request: web.Request) -> web.Response:
        ref = request.match_info["line"]
        engine = self.service.engine
        now = self.service.now()

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

        return web.json_response(self._read(read))

    async def grant_bucket(self, request: web.Request) -> web.Response:
        ref = request.match_info["line"]
        body = await read_body(request, {"name", "unit", "amount", "valid_to", "reason", "rating_groups", "priority"})
        name = body.str("name", required=True)
        unit = body.str("unit", required=True)
        amount = body.int("amount", required=True)
        valid_to = body.int("valid_to", required=True)
        reason = body.str("reason", required=True)
        rating_groups = body.int_list("rating_groups")
        priority = body.int("priority", default=50)
        actor = request[ACTOR]

        def op(txn: Txn, engine: Engine, now: int) -> OpResult:
            if valid_to <= now:
                raise RequestError("valid_to", f"must be in the future, got {valid_to}")
            return provisioning.grant_bucket(
                txn,
                engine,
                provisioning.get_line(txn, ref).id,
                name=name,
                unit=unit,
                amount=amount,
                valid_to=valid_to,
                now=now,
                actor=actor,
                reason=reason,
                rating_groups=rating_groups,
                priority=priority,
            )

        result = await self._operate(op)
        return web.json_response(result.value, status=201)

    async def line_sessions(self, request: web.Request) -> web.Response:
        ref = request.match_info["line"]

        def read(txn: Txn) -> Any:
            sub = provisioning.get_line(txn, ref)
            return [s.as_dict() for s in txn.sessions_of_line(sub.id) if not s.closed]

        return web.json_response({"sessions": self._read(read)})

    async def line_events(self, request: web.Request) -> web.Response:
        """Events of one line in [from, to), in sequence order. Pages with `after` (the last sequence seen)."""
        ref = request.match_info["line"]
        since = query_int(request, "from", 0)
        until = query_int(request, "to", None)
        after = query_int(request, "after", 0)
        limit = min(query_int(request, "limit", 100, 1), MAX_EVENTS_PAGE)
        if until is not None and until <= since:
            raise ApiProblem(400, "Bad Request", f"must be after from ({since}), got {until}", "to")
        with self.service.read() as txn:
            line_id = provisioning.get_line(txn, ref).id
        store = self.service.store

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

    async def list_sessions(self, request: web.Request) -> web.Response:
        limit = min(query_int(request, "limit", 1000, 1), 10_000)
        from chf.runtime.service import open_sessions

        return web.json_response({"sessions": self._read(lambda txn: [s.as_dict() for s in open_sessions(txn, limit)])})

    async def reload_catalogue(self, request: web.Request) -> web.Response:
        try:
            catalogue = await asyncio.to_thread(self.service.reload_catalogue)
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
        return web.json_response({"digest": catalogue.digest, "plans": sorted(catalogue.plans)})


def _unauthorized(detail: str) -> ApiProblem:
    return ApiProblem(401, "Unauthorized", detail, "Authorization")


def _replayable(result: OpResult) -> web.Response:
    headers = {"Idempotency-Replayed": "true"} if result.duplicate else None
    return web.json_response(result.value, headers=headers)


def api_components(config: Any, service: ChargingService) -> list[Any]:
    """`chf serve` factory: the API server when `[api]` is present and enabled."""
    if "api" not in config.raw:
        return []
    api_config = parse_api_config(config.section("api"), config.source)
    return [ApiServer(service, api_config)] if api_config.enabled else []
