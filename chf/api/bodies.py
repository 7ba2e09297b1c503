"""What the management API accepts: the request bodies as strict Structs, query parameters and headers.

The same Structs validate each request (chf.core.validation: every field at fault is named in `invalidParams`,
unknown fields are refused, so a typo never silently drops a setting) and give the OpenAPI document its request
body schemas (chf/api/openapi.py). A JSON `null` is the same as an absent field. Checks that need the store
(does the account exist, is the identity free) stay in chf.core.provisioning, which the CLI shares.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec
from aiohttp import web
from msgspec import Meta

from chf.api.problems import ApiProblem, bad_request
from chf.core.validation import BODY, Invalid, NonEmptyStr, decode, expected, invalid_params

T = TypeVar("T")

MAX_BODY = 64 * 1024  # bytes; provisioning bodies are small, anything larger is refused with 413

# ------------------------------------------------------------------------------------------------------------------
# Field types
# ------------------------------------------------------------------------------------------------------------------
_INT64 = {"format": "int64"}
Money = Annotated[
    int,
    Meta(
        description="Money in micro-units of the account's currency (1 EUR = 1000000). Never a float.",
        extra_json_schema=_INT64,
    ),
]
PositiveMoney = Annotated[
    int,
    Meta(
        ge=1,
        description="Money in micro-units of the account's currency (1 EUR = 1000000). Never a float.",
        extra_json_schema=_INT64,
        extra=expected("a positive integer number of micro-units"),
    ),
]
Time = Annotated[int, Meta(description="UNIX time in seconds (UTC).", extra_json_schema=_INT64)]
Reason = Annotated[str, Meta(min_length=1, description="Why; recorded in the audit event.")]
Currency = Annotated[str, Meta(pattern="^[A-Z]{3}$", extra=expected("an ISO 4217 code such as EUR"))]
Imsi = Annotated[str, Meta(pattern="^[0-9]{6,15}$", extra=expected("6 to 15 digits"))]
Msisdn = Annotated[str, Meta(pattern="^[0-9]{6,15}$", extra=expected("6 to 15 digits in international format, no '+'"))]
Iccid = Annotated[str, Meta(pattern="^[0-9]{18,21}[0-9Ff]?$", extra=expected("18 to 22 digits"))]
Eid = Annotated[str, Meta(pattern="^[0-9]{32}$", extra=expected("32 digits"))]
LineState = Literal["provisioned", "active", "suspended", "terminated"]  # store.schema.LINE_STATES
Unit = Annotated[
    Literal["bytes", "seconds", "events", "money"], Meta(extra=expected("bytes, seconds, events or money"))
]


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A request body: a JSON object with exactly these fields."""


# ------------------------------------------------------------------------------------------------------------------
# Request bodies (the Struct's name is its schema's name in the OpenAPI document)
# ------------------------------------------------------------------------------------------------------------------
class TenantCreate(_Body, kw_only=True):
    id: NonEmptyStr
    name: NonEmptyStr | None = None  # default: the id
    currency: Currency


class AccountCreate(_Body, kw_only=True):
    id: NonEmptyStr
    tenant: NonEmptyStr
    payment: Literal["prepaid", "postpaid", "hybrid"]
    currency: Currency | None = None  # default: the tenant's
    balance: Money = 0
    credit_limit: Money = 0
    cycle_day: Annotated[int, Meta(ge=1, le=28, extra=expected("a day of the month from 1 to 28"))] = 1
    parent: NonEmptyStr | None = None
    plan: NonEmptyStr | None = None


class PlanAssignment(_Body, kw_only=True):
    plan: NonEmptyStr
    reason: Reason = "plan assigned"


class TopUp(_Body, kw_only=True):
    amount: PositiveMoney
    reason: Reason


class Adjustment(_Body, kw_only=True):
    amount: Annotated[int, Meta(description="Micro-units for the wallet; units for a bucket.")]
    reason: Reason
    line: Annotated[NonEmptyStr | int, Meta(description="The line owning the bucket")] | None = None
    bucket: int | None = None


class LineCreate(_Body, kw_only=True):
    account: NonEmptyStr
    imsi: Imsi
    msisdn: Msisdn | None = None
    iccid: Iccid | None = None
    eid: Eid | None = None
    plan: NonEmptyStr | None = None
    state: Annotated[Literal["provisioned", "active"], Meta(extra=expected("provisioned or active"))] = "active"


class LineStateChange(_Body, kw_only=True):
    state: LineState
    reason: Reason


class LineMove(_Body, kw_only=True):
    account: NonEmptyStr
    reason: Reason


class BucketGrant(_Body, kw_only=True):
    name: NonEmptyStr
    unit: Unit
    amount: Annotated[int, Meta(ge=1, extra=expected("a positive integer"))]
    valid_to: Time
    reason: Reason
    rating_groups: list[int] | None = None
    priority: int = 50


BODIES: tuple[type[_Body], ...] = (
    TenantCreate,
    AccountCreate,
    PlanAssignment,
    TopUp,
    Adjustment,
    LineCreate,
    LineStateChange,
    LineMove,
    BucketGrant,
)


# ------------------------------------------------------------------------------------------------------------------
# Reading a request
# ------------------------------------------------------------------------------------------------------------------
async def read_body(request: web.Request, type_: type[T]) -> T:
    """The body as a `type_`, or a 400/413 problem naming every field at fault."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiProblem(413, "Payload Too Large", f"the body is limited to {MAX_BODY} bytes", "body")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ApiProblem(413, "Payload Too Large", f"the body is limited to {MAX_BODY} bytes", "body")
    data: Any = {}
    if raw:
        try:
            data = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise bad_request("body", f"is not valid JSON: {exc}") from exc
    if isinstance(data, dict):
        data = {key: value for key, value in data.items() if value is not None}
    try:
        return decode(type_, data, BODY)
    except Invalid as exc:
        params = invalid_params(exc.problems)
        raise ApiProblem(400, "Bad Request", params[0]["reason"], invalid=params) from None


def query_int(request: web.Request, name: str, default: int | None, minimum: int = 0) -> Any:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(name, f"must be an integer, got {raw!r}") from None
    if value < minimum:
        raise bad_request(name, f"must be >= {minimum}, got {value}")
    return value


def idempotency_key(request: web.Request, actor: str) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= 200 or not key.isprintable():
        raise bad_request("Idempotency-Key", "must be 1-200 printable characters")
    # Keys are per caller: two clients choosing the same key never see each other's answers.
    return f"{actor}:{request.path}:{key}"
