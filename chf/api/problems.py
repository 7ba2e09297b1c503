"""Error answers of the management API: `application/problem+json` (RFC 9457, the shape of 3GPP TS 29.571
ProblemDetails) with `invalidParams: [{param, reason}]` naming every field at fault."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

PROBLEM = "application/problem+json"


class ApiProblem(Exception):
    """An HTTP problem answer; `param` names the field at fault, `invalid` lists several."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        param: str | None = None,
        *,
        invalid: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.invalid = invalid if invalid is not None else ([{"param": param, "reason": detail}] if param else None)


def bad_request(param: str, reason: str) -> ApiProblem:
    return ApiProblem(400, "Bad Request", reason, param)


def problem_response(
    status: int,
    title: str,
    detail: str,
    param: str | None = None,
    *,
    invalid: list[dict[str, str]] | None = None,
    **extra: Any,
) -> web.Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if invalid is None and param is not None:
        invalid = [{"param": param, "reason": detail}]
    if invalid:
        body["invalidParams"] = invalid
    body.update(extra)
    headers = {"Retry-After": "1"} if status == 503 else None
    return web.Response(status=status, text=json.dumps(body), content_type=PROBLEM, headers=headers)


def from_problem(exc: ApiProblem) -> web.Response:
    return problem_response(exc.status, exc.title, exc.detail, invalid=exc.invalid)
