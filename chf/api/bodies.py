"""What the management API accepts: the request bodies as strict Structs, query parameters and headers.

The same Structs validate each request (chf.core.validation: every field at fault is named in `invalidParams`,
unknown fields are refused, so a typo never silently drops a setting) and give the OpenAPI document its request
body schemas (chf/api/openapi.py). A JSON `null` is the same as an absent field. Checks that need the store
(does the account exist, is the identity free) stay in chf.core.provisioning, which the CLI shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from aiohttp import web
from msgspec import Meta

from chf.api.problems import ApiProblem, bad_request
from chf.core.validation import BODY, Invalid, NonEmptyStr, decode, expected, invalid_params

T = TypeVar("T")

MAX_BODY = 64 * 1024  # bytes; provisioning bodies are small, anything larger is refused with 413

# ------------------------------------------------------------------------------------------------------------------
# Bounds. The store holds money and units as signed 64-bit integers (9.2e18). One request moves at most
# MAX_AMOUNT (1e15: a billion EUR in micro-units, a petabyte, 31 million years of seconds), and a top-up or an
# adjustment may not take a wallet or bucket beyond +-MAX_BALANCE (1e18), which leaves room for every charge and
# reservation on top. Times are UNIX seconds up to the end of year 9999; other integers fit the 32- or 64-bit
# field that holds them.
# ------------------------------------------------------------------------------------------------------------------
MAX_AMOUNT = 10**15
MAX_BALANCE = 10**18
MAX_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z
INT64_MAX = 2**63 - 1
UINT32_MAX = 2**32 - 1

# ------------------------------------------------------------------------------------------------------------------
# Field types
# ------------------------------------------------------------------------------------------------------------------
_INT64 = {"format": "int64"}
_MONEY = "Money in micro-units of the account's currency (1 EUR = 1000000). Never a float."
Money = Annotated[
    int,
    Meta(
        ge=-MAX_AMOUNT,
        le=MAX_AMOUNT,
        description=_MONEY,
        extra_json_schema=_INT64,
        extra=expected(f"an integer number of micro-units from -{MAX_AMOUNT} to {MAX_AMOUNT}"),
    ),
]
PositiveMoney = Annotated[
    int,
    Meta(
        ge=1,
        le=MAX_AMOUNT,
        description=_MONEY,
        extra_json_schema=_INT64,
        extra=expected(f"a positive integer number of micro-units up to {MAX_AMOUNT}"),
    ),
]
CreditLimit = Annotated[
    int,
    Meta(
        ge=0,
        le=MAX_AMOUNT,
        description=_MONEY,
        extra_json_schema=_INT64,
        extra=expected(f"an integer number of micro-units from 0 to {MAX_AMOUNT}"),
    ),
]
Time = Annotated[
    int,
    Meta(ge=0, le=MAX_TIME, description="UNIX time in seconds (UTC).", extra_json_schema=_INT64),
]
Id64 = Annotated[int, Meta(ge=0, le=INT64_MAX, extra_json_schema=_INT64)]
RatingGroup = Annotated[int, Meta(ge=0, le=UINT32_MAX, description="RFC 4006 Rating-Group (Unsigned32).")]
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
    parent: NonEmptyStr | None = None  # the tenant above (chf.core.wholesale)
    tax_profile: NonEmptyStr | None = None  # its accounts' tax profile, unless they name one (chf.core.tax)


class AccountCreate(_Body, kw_only=True):
    id: NonEmptyStr
    tenant: NonEmptyStr
    payment: Literal["prepaid", "postpaid", "hybrid"]
    currency: Currency | None = None  # default: the tenant's
    balance: Money = 0
    credit_limit: CreditLimit = 0
    cycle_day: Annotated[int, Meta(ge=1, le=28, extra=expected("a day of the month from 1 to 28"))] = 1
    parent: NonEmptyStr | None = None
    plan: NonEmptyStr | None = None
    price_list: NonEmptyStr | None = None  # what it pays for the lines below it, as a parent (chf.core.wholesale)
    tax_profile: NonEmptyStr | None = None  # default: its tenant's (chf.core.tax)


class PlanAssignment(_Body, kw_only=True):
    plan: NonEmptyStr
    reason: Reason = "plan assigned"


class TopUp(_Body, kw_only=True):
    amount: PositiveMoney
    reason: Reason


class Adjustment(_Body, kw_only=True):
    amount: Annotated[
        int,
        Meta(
            ge=-MAX_AMOUNT,
            le=MAX_AMOUNT,
            description="Micro-units for the wallet; units for a bucket.",
            extra_json_schema=_INT64,
            extra=expected(f"an integer from -{MAX_AMOUNT} to {MAX_AMOUNT}"),
        ),
    ]
    reason: Reason
    line: Annotated[NonEmptyStr | Id64, Meta(description="The line owning the bucket")] | None = None
    bucket: Id64 | None = None


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
    amount: Annotated[
        int, Meta(ge=1, le=MAX_AMOUNT, extra_json_schema=_INT64, extra=expected(f"an integer from 1 to {MAX_AMOUNT}"))
    ]
    valid_to: Time
    reason: Reason
    rating_groups: list[RatingGroup] | None = None
    priority: Annotated[int, Meta(ge=-(2**31), le=2**31 - 1, description="Lower is used first.")] = 50


class AddOnPurchase(_Body, kw_only=True):
    addon: Annotated[NonEmptyStr, Meta(description="An add-on of the catalogue ([addons.<name>])")]
    reason: Reason = "add-on bought"


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
    AddOnPurchase,
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
            raise bad_request("body", f"is not valid JSON: {exc}") from None
        except RecursionError:  # nesting built to exhaust the parser: no traceback, no 500
            raise bad_request("body", "is nested too deeply") from None
    if isinstance(data, dict):
        data = {key: value for key, value in data.items() if value is not None}
    try:
        return decode(type_, data, BODY)
    except Invalid as exc:
        params = invalid_params(exc.problems)
        raise ApiProblem(400, "Bad Request", params[0]["reason"], invalid=params) from None


@dataclass(frozen=True, slots=True)
class QueryInt:
    """An integer query parameter: read from a request, and documented in the OpenAPI document, from here."""

    name: str
    description: str
    minimum: int = 0
    maximum: int = INT64_MAX

    def read(self, request: web.Request, default: int | None) -> Any:
        raw = request.query.get(self.name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw) if len(raw) <= 20 else None  # an int64 has 19 digits: longer is out of range anyway
        except ValueError:
            raise bad_request(self.name, f"must be an integer, got {_clip(raw)!r}") from None
        if value is None or not self.minimum <= value <= self.maximum:
            raise bad_request(self.name, f"must be an integer from {self.minimum} to {self.maximum}, got {_clip(raw)}")
        return value

    def parameter(self, description: str | None = None) -> dict[str, Any]:
        """The OpenAPI parameter object."""
        schema = {"type": "integer", "format": "int64", "minimum": self.minimum, "maximum": self.maximum}
        text = description or self.description
        return {"name": self.name, "in": "query", "required": False, "description": text, "schema": schema}


def _clip(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


LIMIT = QueryInt("limit", "At most this many", minimum=1)
FROM = QueryInt("from", "From this time (UNIX seconds, inclusive)", maximum=MAX_TIME)
TO = QueryInt("to", "Up to this time (exclusive)", maximum=MAX_TIME)
AFTER = QueryInt("after", "Only events after this sequence number")


def idempotency_key(request: web.Request, actor: str) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= 200 or not key.isprintable():
        raise bad_request("Idempotency-Key", "must be 1-200 printable characters")
    # Keys are per caller: two clients choosing the same key never see each other's answers.
    return f"{actor}:{request.path}:{key}"
