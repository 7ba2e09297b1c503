"""Nchf_ConvergedCharging operations (create, update, release) on the charging service.

A translator only: route, check the bearer token, decode JSON, map it to a ChargingRequest, await the service
(which answers after the group commit), map the answer back. Everything a client sent that is wrong ends in a
ProblemDetails with the TS 32.291 cause, a log line and a metric; a 500 only ever means our own bug.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
import re
import time
from typing import Any

from chf import metrics
from chf.model import INITIAL, SUCCESS, TERMINATE, UPDATE, ChargingAnswer, RequestError
from chf.service import ChargingService, StoreBusy, StoreClosed
from nchf.auth import BearerAuth, Unauthorized
from nchf.http import Request, Response
from nchf.mapping import (
    SESSION_RESULT,
    InvalidRequest,
    ParsedRequest,
    charging_data_response,
    parse_request,
    problem,
    to_charging_request,
)

log = logging.getLogger("nchf")

API_ROOT = "/nchf-convergedcharging/v3"
COLLECTION = API_ROOT + "/chargingdata"
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
        service: ChargingService,
        *,
        auth: BearerAuth | None = None,
        max_in_flight: int = 8192,
    ) -> None:
        self.service = service
        self.auth = auth
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        # Requests that carry invocationSequenceNumber 0 after the create (free5GC's SMF never numbers them) are
        # each a new request: they get a number no client can send (above Uint32) and that never repeats, even
        # across restarts (microseconds since the epoch).
        self._unnumbered = itertools.count(2**32 + time.time_ns() // 1000)
        self._ref_key = ("nchf-ref:" + service.store.store_id).encode()
        # (operation, result) -> bound counter: label lookups off the hot path
        self._requests: dict[tuple[str, str], Any] = {}
        self._latency = {op: metrics.REQUEST_LATENCY.labels("nchf", op) for op in ("create", "update", "release")}

    # -- entry point ------------------------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        path = request.path.split("?", 1)[0]
        if path == COLLECTION:
            operation, ref = "create", None
        elif path.startswith(COLLECTION + "/"):
            ref, _, action = path[len(COLLECTION) + 1 :].partition("/")
            if action not in ("update", "release") or not ref:
                return self._refuse("unknown", None, 404, "RESOURCE_URI_STRUCTURE_NOT_FOUND", f"no resource at {path}")
            operation = action
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
        if self.in_flight >= self.max_in_flight:
            metrics.OVERLOAD.labels("nchf").inc()
            return self._refuse(operation, ref, 503, "NF_CONGESTION", "too many requests in progress; retry later")
        if ref is not None and not _REF_RE.match(ref):
            return self._refuse(
                operation, ref, 404, "CONTEXT_NOT_FOUND", "no charging data resource with this reference"
            )
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("application/json"):
            return self._refuse(
                operation,
                ref,
                400,
                "INVALID_MSG_FORMAT",
                "the body must be application/json",
                [{"param": "header content-type", "reason": "must be application/json"}],
            )
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._refuse(
                operation,
                ref,
                400,
                "INVALID_MSG_FORMAT",
                "the body is not valid JSON",
                [{"param": "/", "reason": str(exc)}],
            )
        try:
            parsed = parse_request(body, creating=ref is None)
        except InvalidRequest as exc:
            return self._refuse(
                operation, ref, 400, "CHARGING_FAILED", "the ChargingDataRequest is invalid", exc.params
            )
        self.in_flight += 1
        try:
            response = await self._charge(operation, ref, parsed, request)
        finally:
            self.in_flight -= 1
        self._latency[operation].observe(time.perf_counter() - started)
        return response

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
    async def _charge(self, operation: str, ref: str | None, parsed: ParsedRequest, request: Request) -> Response:
        if ref is None:
            ref = self._resource_ref(request.body)
            kind = INITIAL
            number = parsed.sequence_number
        else:
            kind = UPDATE if operation == "update" else TERMINATE
            number = parsed.sequence_number or next(self._unnumbered)
        session = SESSION_PREFIX + ref
        charging_request = to_charging_request(parsed, kind, session, number, notify=parsed.notify_uri)
        try:
            answer: ChargingAnswer = await self.service.charge(charging_request)
        except RequestError as exc:
            log.info(
                "event=nchf_request_error session=%s field=%s detail=%s", session, exc.field, json.dumps(exc.message)
            )
            self._count(operation, "CHARGING_FAILED")
            param = CORE_FIELDS.get(exc.field, exc.field)
            return problem_response(400, "CHARGING_FAILED", exc.message, [{"param": param, "reason": exc.message}])
        except (StoreBusy, StoreClosed) as exc:
            metrics.OVERLOAD.labels("nchf").inc()
            log.warning("event=nchf_overload session=%s error=%s", session, json.dumps(str(exc)))
            self._count(operation, "NF_CONGESTION")
            return problem_response(503, "NF_CONGESTION", "the charging function is busy; retry later")
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
        body = _dumps(charging_data_response(answer, parsed.sequence_number))
        if kind == INITIAL:
            authority = request.authority or "localhost"
            location = f"{request.scheme}://{authority}{COLLECTION}/{ref}"
            return Response(201, body, [("content-type", "application/json"), ("location", location)])
        return Response(200, body, _JSON)
