"""Nchf_ConvergedCharging operations (create, update, release) on the charging service.

A translator only: route, check the bearer token, decode JSON, map it to a ChargingRequest, await the service
(which answers after the group commit), map the answer back. Everything a client sent that is wrong ends in a
ProblemDetails with the TS 32.291 cause, a log line and a metric; a 500 only ever means our own bug.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

from chf.core.model import INITIAL, SUCCESS, TERMINATE, UPDATE, ChargingAnswer, ChargingRequest, RequestError
from chf.runtime import metrics
from chf.runtime.port import ChargingPort, refusal
from nchf.auth import BearerAuth, Unauthorized
from nchf.mapping import (
    SESSION_RESULT,
    InvalidRequest,
    ParsedRequest,
    charging_data_response_json,
    parse_request,
    problem,
    to_charging_request,
)
from nchf.messages import Request, Respond, Response

log = logging.getLogger("nchf")

API_ROOT = "/nchf-convergedcharging/v3"
COLLECTION = API_ROOT + "/chargingdata"
_REF_START = COLLECTION + "/"
SESSION_PREFIX = "nchf:"
_REF_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_JSON = [("content-type", "application/json")]
# The core names the culprit of a RequestError in its own words; the client gets the JSON pointer.
CORE_FIELDS = {
    "request number": "/invocationSequenceNumber",
    "used units": "/multipleUnitUsage",
    "session": "{ChargingDataRef}",
}
_PROBLEM = [("content-type", "application/problem+json")]


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def problem_response(status: int, cause: str, detail: str, invalid: list[dict[str, str]] | None = None) -> Response:
    if status == 405:  # TS 29.571 defines 405 without a body
        return Response(405, b"", [("allow", "POST")])
    headers = list(_PROBLEM)
    if status == 503:
        headers.append(("retry-after", "1"))
    elif status == 401:
        headers.append(("www-authenticate", 'Bearer scope="nchf-convergedcharging"'))
    return Response(status, _dumps(problem(status, cause, detail, invalid)), headers)


def transport_error(status: int, detail: str) -> Response:
    """Errors the HTTP layer answers by itself (size limits, malformed framing)."""
    cause = {413: "REQUEST_TOO_LARGE", 431: "REQUEST_TOO_LARGE", 411: "LENGTH_REQUIRED", 500: "SYSTEM_FAILURE"}
    return problem_response(status, cause.get(status, "INVALID_MSG_FORMAT"), detail)


class NchfApp:
    def __init__(
        self,
        service: ChargingPort,
        *,
        auth: BearerAuth | None = None,
        max_in_flight: int = 8192,
        request_numbers: Iterator[int] | None = None,
    ) -> None:
        """`request_numbers`: the numbers given to requests that carry invocationSequenceNumber 0 after the create
        (free5GC's SMF never numbers them), so that each is a new request. By default a local counter above
        Uint32 (no client can send such a number) from microseconds since the epoch (it never repeats, even
        across restarts); where several processes serve one core, the core must number them instead (one
        counter: the engine needs them to grow per session, and one session's updates may come through
        different processes)."""
        self.service = service
        self.auth = auth
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        if request_numbers is None:
            request_numbers = itertools.count(2**32 + time.time_ns() // 1000)
        self._unnumbered = request_numbers
        self._ref_key = ("nchf-ref:" + service.store_id).encode()
        # (operation, result) -> bound counter: label lookups off the hot path
        self._requests: dict[tuple[str, str], Any] = {}
        self._latency = {op: metrics.REQUEST_LATENCY.labels("nchf", op) for op in ("create", "update", "release")}
        self._to_submit: list[tuple[ChargingRequest, _Exchange]] = []  # parsed in this loop iteration

    # -- entry point ------------------------------------------------------------------------------------------------
    def handle_soon(self, request: Request, respond: Respond) -> None:
        """Answer `request` through `respond(response)`, exactly once: at once when it is refused, or from the
        service's callback once the change is durable. No coroutine or Task per request (see nchf.messages)."""
        started = time.perf_counter()
        path = request.path
        if "?" in path:
            path = path.split("?", 1)[0]
        if path == COLLECTION:
            operation, ref = "create", None
        elif path.startswith(_REF_START):
            ref, _, action = path[len(_REF_START) :].partition("/")
            if action not in ("update", "release") or not ref:
                respond(
                    self._refuse("unknown", None, 404, "RESOURCE_URI_STRUCTURE_NOT_FOUND", f"no resource at {path}")
                )
                return
            operation = action
        else:
            respond(self._refuse("unknown", None, 404, "RESOURCE_URI_STRUCTURE_NOT_FOUND", f"no resource at {path}"))
            return
        if request.method != "POST":
            respond(
                self._refuse(operation, ref, 405, "METHOD_NOT_ALLOWED", f"{request.method} is not allowed here: POST")
            )
            return
        headers = request.headers
        if self.auth is not None:
            try:
                self.auth.check(headers.get("authorization"))
            except Unauthorized as exc:
                respond(self._refuse(operation, ref, 401, "UNAUTHORIZED", str(exc)))
                return
        if self.in_flight >= self.max_in_flight:
            metrics.OVERLOAD.labels("nchf").inc()
            respond(self._refuse(operation, ref, 503, "NF_CONGESTION", "too many requests in progress; retry later"))
            return
        if ref is not None and not _REF_RE.match(ref):
            respond(
                self._refuse(operation, ref, 404, "CONTEXT_NOT_FOUND", "no charging data resource with this reference")
            )
            return
        content_type = headers.get("content-type", "")
        if content_type != "application/json" and not content_type.lower().startswith("application/json"):
            respond(
                self._refuse(
                    operation,
                    ref,
                    400,
                    "INVALID_MSG_FORMAT",
                    "the body must be application/json",
                    [{"param": "header content-type", "reason": "must be application/json"}],
                )
            )
            return
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            respond(
                self._refuse(
                    operation,
                    ref,
                    400,
                    "INVALID_MSG_FORMAT",
                    "the body is not valid JSON",
                    [{"param": "/", "reason": str(exc)}],
                )
            )
            return
        try:
            parsed = parse_request(body, creating=ref is None)
        except InvalidRequest as exc:
            respond(
                self._refuse(operation, ref, 400, "CHARGING_FAILED", "the ChargingDataRequest is invalid", exc.params)
            )
            return
        self._charge(operation, ref, parsed, request, started, respond)

    def _resource_ref(self, body: bytes) -> str:
        """The ChargingDataRef of a create: a keyed hash of the request body. A retransmitted create (the same
        message again, after a timeout) names the same resource with the same invocationSequenceNumber, so the
        core answers it from the stored answer and reserves nothing twice. Any other create differs at least in
        its invocationTimeStamp. The key is the store's own id, so two stores never hand out the same reference."""
        return hmac.new(self._ref_key, body, hashlib.blake2b).hexdigest()[:32]

    def _refuse(
        self,
        operation: str,
        ref: str | None,
        status: int,
        cause: str,
        detail: str,
        invalid: list[dict[str, str]] | None = None,
    ) -> Response:
        metrics.PROTOCOL_ERRORS.labels("nchf", str(status)).inc()
        self._count(operation, cause)
        log.info(
            "event=nchf_refused session=%s operation=%s status=%d cause=%s detail=%s",
            SESSION_PREFIX + ref if ref and _REF_RE.match(ref) else "-",
            operation,
            status,
            cause,
            json.dumps(detail if not invalid else f"{detail}: {invalid}"),
        )
        return problem_response(status, cause, detail, invalid)

    def _count(self, operation: str, result: str) -> None:
        key = (operation, result)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = metrics.REQUESTS.labels("nchf", operation, result)
        counter.inc()

    # -- operations -------------------------------------------------------------------------------------------------
    def _charge(
        self,
        operation: str,
        ref: str | None,
        parsed: ParsedRequest,
        request: Request,
        started: float,
        respond: Respond,
    ) -> None:
        if ref is None:
            ref = self._resource_ref(request.body)
            kind = INITIAL
            number = parsed.sequence_number
        else:
            kind = UPDATE if operation == "update" else TERMINATE
            number = parsed.sequence_number or next(self._unnumbered)
        session = SESSION_PREFIX + ref
        charging_request = to_charging_request(parsed, kind, session, number, notify=parsed.notify_uri)
        exchange = _Exchange(self, operation, ref, kind, parsed.sequence_number, request, started, respond)
        self.in_flight += 1
        # Submitted together once the whole read is parsed (as Tasks did, which started on the next iteration): a
        # writer thread woken by the first request of a read would commit it alone and fight the parsing of the
        # others for the GIL (smaller batches, more fsyncs, measured 30 % fewer requests/s with the thread writer).
        self._to_submit.append((charging_request, exchange))
        if len(self._to_submit) == 1:
            asyncio.get_running_loop().call_soon(self._submit)

    def _submit(self) -> None:
        to_submit, self._to_submit = self._to_submit, []
        charge_then = self.service.charge_then
        for charging_request, exchange in to_submit:
            try:
                charge_then(charging_request, exchange.charged)
            except Exception as exc:  # the core cannot take it now (chf/runtime/port.py): answered as refused
                exchange.charged(exc)

    def _answer(self, exchange: _Exchange, outcome: ChargingAnswer | BaseException) -> Response:
        """The response to a charged request: the core's answer (or its refusal) in Nchf terms."""
        operation, ref, kind = exchange.operation, exchange.ref, exchange.kind
        session = SESSION_PREFIX + ref
        exc = outcome if isinstance(outcome, BaseException) else None
        if isinstance(exc, RequestError):
            log.info(
                "event=nchf_request_error session=%s field=%s detail=%s", session, exc.field, json.dumps(exc.message)
            )
            self._count(operation, "CHARGING_FAILED")
            param = CORE_FIELDS.get(exc.field, exc.field)
            return problem_response(400, "CHARGING_FAILED", exc.message, [{"param": param, "reason": exc.message}])
        refused = refusal(exc) if exc is not None else None
        if refused is not None and refused.transient:
            metrics.OVERLOAD.labels("nchf").inc()
            log.warning("event=nchf_overload session=%s error=%s", session, json.dumps(str(exc)))
            self._count(operation, refused.cause)
            return problem_response(refused.status, refused.cause, "the charging function is busy; retry later")
        if isinstance(outcome, BaseException):  # our own bug (or a failed commit): a 500, with its traceback
            log.error("event=nchf_charge_failed session=%s operation=%s", session, operation, exc_info=exc)
            self._count(operation, "SYSTEM_FAILURE")
            return transport_error(500, "internal error")
        answer = outcome
        if answer.duplicate:
            metrics.DUPLICATES.labels("nchf").inc()
        # On an update the resource stays open whatever the rating groups got: their results (with the Final-Unit-
        # Indication the SMF must apply) go back per rating group in a 200, as a CCA carries them in its MSCCs.
        # A 403 would drop them. The request as a whole fails only when nothing was rated (unknown resource) or
        # on create (no resource was made).
        unit_level = kind == UPDATE and bool(answer.units)
        if answer.result != SUCCESS and not unit_level:
            status, cause = SESSION_RESULT.get(answer.result, (400, "CHARGING_FAILED"))
            if answer.result == "session_unknown":
                detail = f"no open charging data resource {ref}"
            else:
                detail = answer.detail or answer.result.replace("_", " ")
            log.info(
                "event=nchf_denied session=%s operation=%s cause=%s detail=%s",
                session,
                operation,
                cause,
                json.dumps(detail),
            )
            self._count(operation, cause)
            return problem_response(status, cause, detail)
        result = "SUCCESS" if answer.result == SUCCESS else SESSION_RESULT.get(answer.result, (0, "CHARGING_FAILED"))[1]
        self._count(operation, result)
        if kind == TERMINATE:
            return Response(204)
        body = charging_data_response_json(answer, exchange.sequence_number)
        if kind == INITIAL:
            request = exchange.request
            authority = request.authority or "localhost"
            location = f"{request.scheme}://{authority}{COLLECTION}/{ref}"
            return Response(201, body, [("content-type", "application/json"), ("location", location)])
        return Response(200, body, _JSON)


class _Exchange:
    """One charging request between its submission and its answer (the service's done-callback)."""

    __slots__ = ("app", "kind", "operation", "ref", "request", "respond", "sequence_number", "started")

    def __init__(
        self,
        app: NchfApp,
        operation: str,
        ref: str,
        kind: str,
        sequence_number: int,
        request: Request,
        started: float,
        respond: Respond,
    ) -> None:
        self.app = app
        self.operation = operation
        self.ref = ref
        self.kind = kind
        self.sequence_number = sequence_number
        self.request = request
        self.started = started
        self.respond = respond

    def charged(self, outcome: ChargingAnswer | BaseException) -> None:
        app = self.app
        app.in_flight -= 1
        try:
            response = app._answer(self, outcome)
        except Exception:  # a bug of ours in the mapping: never a hung stream
            log.exception("event=nchf_answer_failed session=%s operation=%s", SESSION_PREFIX + self.ref, self.operation)
            response = transport_error(500, "internal error")
        self.respond(response)
        app._latency[self.operation].observe(time.perf_counter() - self.started)
