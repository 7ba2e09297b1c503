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

from chf.core.engine import USAGE_BOUND_FIELD
from chf.core.model import (
    EVENT,
    INITIAL,
    SESSION_UNKNOWN,
    SUCCESS,
    TERMINATE,
    UPDATE,
    ChargingAnswer,
    ChargingRequest,
    RequestError,
)
from chf.runtime import metrics
from chf.runtime.admission import Admission
from chf.runtime.port import OVERLOAD, ChargingPort, Refusal, refusal
from chf.runtime.ratelog import RateLog
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
# The JSON field of a usedUnitContainer that carried each unit type (nchf/mapping.py).
_USED_FIELD = {
    "bytes": "totalVolume",
    "bytes_in": "uplinkVolume",
    "bytes_out": "downlinkVolume",
    "seconds": "time",
    "events": "serviceSpecificUnits",
}


def _core_param(field: str) -> str:
    """The JSON pointer of the core's culprit; implausible usage ("usage/i/j/unit", chf.core.engine
    check_usage_bounds) names the container's field."""
    parts = field.split("/")
    if len(parts) == 4 and parts[0] == USAGE_BOUND_FIELD:
        _, i, j, unit = parts
        return f"/multipleUnitUsage/{i}/usedUnitContainer/{j}/{_USED_FIELD.get(unit, unit)}"
    return CORE_FIELDS.get(field, field)


_PROBLEM = [("content-type", "application/problem+json")]
# References made from one create body at most (NchfApp._resource_ref): beyond, the create is refused.
_MAX_GENERATIONS = 8
_BUSY_DETAIL = {
    "in_flight": "the requests in progress would not be answered in time; retry later",
    "core": "the charging function is busy; retry later",
}


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


def is_json(content_type: str) -> bool:
    """Whether a Content-Type names JSON: the media type application/json exactly (any case, RFC 9110 section
    8.3.1), with or without parameters; not application/jsonx nor application/json-seq."""
    return content_type.partition(";")[0].strip().lower() == "application/json"


def transport_error(status: int, detail: str) -> Response:
    """Errors the HTTP layer answers by itself (size limits, malformed framing)."""
    cause = {
        408: "TIMED_OUT_REQUEST",  # TS 29.500's name for a request that timed out
        411: "LENGTH_REQUIRED",
        413: "REQUEST_TOO_LARGE",
        431: "REQUEST_TOO_LARGE",
        500: "SYSTEM_FAILURE",
    }
    return problem_response(status, cause.get(status, "INVALID_MSG_FORMAT"), detail)


class NchfApp:
    def __init__(
        self,
        service: ChargingPort,
        *,
        auth: BearerAuth | None = None,
        max_in_flight: int = 8192,
        latency_budget: float = 0.25,
        request_numbers: Iterator[int] | None = None,
    ) -> None:
        """`request_numbers`: the numbers given to requests that carry invocationSequenceNumber 0 after the create
        (free5GC's SMF never numbers them), so that each is a new request. By default a local counter above
        Uint32 (no client can send such a number) from microseconds since the epoch (it never repeats, even
        across restarts); where several processes serve one core, the core must number them instead (one
        counter: the engine needs them to grow per session, and one session's updates may come through
        different processes).

        `latency_budget`: seconds a request may expect to wait for its answer; past it, 503 at once
        (chf.runtime.admission). `max_in_flight` stays the bound by count."""
        self.service = service
        self.auth = auth
        self.admission = Admission(latency_budget, max_in_flight)
        if request_numbers is None:
            request_numbers = itertools.count(2**32 + time.time_ns() // 1000)
        self._unnumbered = request_numbers
        self._ref_key = ("nchf-ref:" + service.store_id).encode()
        # (operation, result) -> bound counter: label lookups off the hot path
        self._requests: dict[tuple[str, str], Any] = {}
        self._latency = {op: metrics.REQUEST_LATENCY.labels("nchf", op) for op in ("create", "update", "release")}
        self._to_submit: list[tuple[ChargingRequest, _Exchange]] = []  # parsed in this loop iteration
        self._overload_counter = metrics.OVERLOAD.labels("nchf")
        self._busy_errors = metrics.PROTOCOL_ERRORS.labels("nchf", "503")
        self._busy: dict[tuple[Refusal, str], Response] = {}  # the 503s, made once: they are all alike
        self.overload_log = RateLog(log, "nchf_overload")

    @property
    def in_flight(self) -> int:
        return self.admission.in_flight

    @property
    def max_in_flight(self) -> int:
        return self.admission.limit

    @max_in_flight.setter
    def max_in_flight(self, value: int) -> None:
        self.admission.limit = value

    # -- entry point ------------------------------------------------------------------------------------------------
    def handle_soon(self, request: Request, respond: Respond) -> None:
        """Answer `request` through `respond(response)`, exactly once: at once when it is refused, or from the
        service's callback once the change is durable. No coroutine or Task per request (see nchf.messages)."""
        started = time.perf_counter()
        route = self._route(request)
        if isinstance(route, Response):
            respond(route)
            return
        operation, ref = route
        if not self.admission.admit():
            self._busy_errors.inc()
            respond(self._overloaded(operation, "in_flight"))
            return
        if ref is not None and not _REF_RE.match(ref):
            respond(
                self._refuse(operation, ref, 404, "CONTEXT_NOT_FOUND", "no charging data resource with this reference")
            )
            return
        body = self._json_body(operation, ref, request)
        if isinstance(body, Response):
            respond(body)
            return
        try:
            parsed = parse_request(body, creating=ref is None)
        except InvalidRequest as exc:
            respond(
                self._refuse(operation, ref, 400, "CHARGING_FAILED", "the ChargingDataRequest is invalid", exc.params)
            )
            return
        self._charge(operation, ref, parsed, body, request, started, respond)

    def _route(self, request: Request) -> tuple[str, str | None] | Response:
        """(operation, ChargingDataRef or None for a create), or the refusal: no such resource (404), not a POST
        (405), no valid bearer token (401)."""
        path = request.path
        if "?" in path:
            path = path.split("?", 1)[0]
        if path == COLLECTION:
            operation, ref = "create", None
        elif path.startswith(_REF_START):
            ref, _, operation = path[len(_REF_START) :].partition("/")
            if operation not in ("update", "release") or not ref:
                return self._refuse("unknown", None, 404, "RESOURCE_URI_STRUCTURE_NOT_FOUND", f"no resource at {path}")
        else:
            return self._refuse("unknown", None, 404, "RESOURCE_URI_STRUCTURE_NOT_FOUND", f"no resource at {path}")
        if request.method != "POST":
            return self._refuse(
                operation, ref, 405, "METHOD_NOT_ALLOWED", f"{request.method} is not allowed here: POST"
            )
        if self.auth is not None:
            try:
                self.auth.check(request.headers.get("authorization"))
            except Unauthorized as exc:
                return self._refuse(operation, ref, 401, "UNAUTHORIZED", str(exc))
        return operation, ref

    def _json_body(self, operation: str, ref: str | None, request: Request) -> Any:
        """The decoded JSON body, or the refusal (400 INVALID_MSG_FORMAT): not application/json, not JSON, or
        nested deeper than the decoder goes (a RecursionError, which must not become a 500)."""
        content_type = request.headers.get("content-type", "")
        if content_type != "application/json" and not is_json(content_type):
            return self._refuse(
                operation,
                ref,
                400,
                "INVALID_MSG_FORMAT",
                "the body must be application/json",
                [{"param": "header content-type", "reason": "must be application/json"}],
            )
        try:
            return json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            reason = str(exc)
        except RecursionError:
            reason = "nested too deeply"
        return self._refuse(
            operation, ref, 400, "INVALID_MSG_FORMAT", "the body is not valid JSON", [{"param": "/", "reason": reason}]
        )

    def _resource_ref(self, body: dict[str, Any], generation: int = 0) -> str:
        """The ChargingDataRef of a create: a keyed hash of the request, without its retransmissionIndicator. A
        retransmitted create (the same message again after a timeout, flagged or not) names the same resource with
        the same invocationSequenceNumber, so the core answers it from the stored answer and reserves or debits
        nothing twice. Any other create differs at least in its invocationTimeStamp. The key is the store's own
        id, so two stores never hand out the same reference.

        A create is a new resource (TS 32.291 5.2.2.2: the CHF creates a ChargingDataRef), and an SMF retransmits
        one only while it has no answer, so before it could use the reference: the same body after the resource
        was released is a new create, not a retransmission (the core will not answer it from the closed session,
        chf.core.engine.SESSIONS_NAMED_BY_US). It gets the next `generation` of references from the same body:
        still one reference per message, so its own retransmissions still find it."""
        if "retransmissionIndicator" in body:
            body = {k: v for k, v in body.items() if k != "retransmissionIndicator"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        if generation:
            canonical += b"\x00%d" % generation
        return hmac.new(self._ref_key, canonical, hashlib.blake2b).hexdigest()[:32]

    def _create_anew(self, exchange: _Exchange) -> bool:
        """Submit again, under the next reference, a create whose reference names a released resource (the core
        answered SESSION_UNKNOWN). False once _MAX_GENERATIONS references of this body are all released."""
        if exchange.generation >= _MAX_GENERATIONS:
            return False
        exchange.generation += 1
        exchange.ref = self._resource_ref(json.loads(exchange.request.body), exchange.generation)
        charging_request = exchange.charging_request
        charging_request.session = SESSION_PREFIX + exchange.ref
        log.info("event=nchf_create_anew session=%s generation=%d", charging_request.session, exchange.generation)
        try:
            self.service.charge_then(charging_request, exchange.charged)
        except Exception as exc:  # refused at once: answered as any refusal
            exchange.charged(exc)
        return True

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

    def _overloaded(self, operation: str, reason: str, refused: Refusal = OVERLOAD) -> Response:
        """The answer to a request refused for overload (`reason`: our in-flight bound, or the core's refusal):
        counted in the metrics and in the overload summary, never a log line of its own. Under overload they come
        by the thousand per second, and each must cost a small fraction of a served request."""
        self._overload_counter.inc()
        self._count(operation, refused.cause)
        self.overload_log.note(reason)
        response = self._busy.get((refused, reason))
        if response is None:
            detail = _BUSY_DETAIL.get(reason, _BUSY_DETAIL["core"])
            response = self._busy[(refused, reason)] = problem_response(refused.status, refused.cause, detail)
        return response

    # -- operations -------------------------------------------------------------------------------------------------
    def _charge(
        self,
        operation: str,
        ref: str | None,
        parsed: ParsedRequest,
        body: Any,
        request: Request,
        started: float,
        respond: Respond,
    ) -> None:
        if ref is None:
            ref = self._resource_ref(body)
            # A one-time event (IEC, PEC) is one-shot in the core: charged once under this reference and number,
            # no session kept, nothing left for the reaper to free.
            kind = INITIAL if parsed.one_time_event is None else EVENT
            number = parsed.sequence_number
        else:
            kind = UPDATE if operation == "update" else TERMINATE
            number = parsed.sequence_number or next(self._unnumbered)
        session = SESSION_PREFIX + ref
        charging_request = to_charging_request(
            parsed, kind, session, number, notify=parsed.notify_uri, action=parsed.one_time_event
        )
        exchange = _Exchange(self, operation, ref, charging_request, parsed.sequence_number, request, started, respond)
        self.admission.started(started)
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
            param = _core_param(exc.field)
            return problem_response(400, "CHARGING_FAILED", exc.message, [{"param": param, "reason": exc.message}])
        refused = refusal(exc) if exc is not None else None
        if refused is not None and refused.transient:
            return self._overloaded(operation, type(exc).__name__, refused)
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
        if kind == INITIAL and answer.result == SESSION_UNKNOWN:  # every reference of this body is released
            detail = f"{_MAX_GENERATIONS + 1} charging data resources made from this very request are released"
            reason = "a new create must differ from them (at least in its invocationTimeStamp)"
            self._count(operation, "CHARGING_FAILED")
            return problem_response(
                400, "CHARGING_FAILED", detail, [{"param": "/invocationTimeStamp", "reason": reason}]
            )
        if answer.result != SUCCESS and not unit_level:
            status, cause = SESSION_RESULT.get(answer.result, (400, "CHARGING_FAILED"))
            if answer.result == SESSION_UNKNOWN:
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
        if kind in (INITIAL, EVENT):
            request = exchange.request
            authority = request.authority or "localhost"
            location = f"{request.scheme}://{authority}{COLLECTION}/{ref}"
            return Response(201, body, [("content-type", "application/json"), ("location", location)])
        return Response(200, body, _JSON)


class _Exchange:
    """One charging request between its submission and its answer (the service's done-callback)."""

    __slots__ = (
        "app",
        "charging_request",
        "generation",
        "kind",
        "operation",
        "ref",
        "request",
        "respond",
        "sequence_number",
        "started",
    )

    def __init__(
        self,
        app: NchfApp,
        operation: str,
        ref: str,
        charging_request: ChargingRequest,
        sequence_number: int,
        request: Request,
        started: float,
        respond: Respond,
    ) -> None:
        self.app = app
        self.operation = operation
        self.ref = ref
        self.charging_request = charging_request
        self.kind = charging_request.kind
        self.sequence_number = sequence_number
        self.request = request
        self.started = started
        self.respond = respond
        self.generation = 0  # of the reference of a create (NchfApp._resource_ref)

    def charged(self, outcome: ChargingAnswer | BaseException) -> None:
        app = self.app
        if (
            self.kind == INITIAL
            and type(outcome) is ChargingAnswer
            and outcome.result == SESSION_UNKNOWN
            and app._create_anew(self)
        ):
            return
        app.admission.finished(time.perf_counter())
        try:
            response = app._answer(self, outcome)
        except Exception:  # a bug of ours in the mapping: never a hung stream
            log.exception("event=nchf_answer_failed session=%s operation=%s", SESSION_PREFIX + self.ref, self.operation)
            response = transport_error(500, "internal error")
        self.respond(response)
        app._latency[self.operation].observe(time.perf_counter() - self.started)
