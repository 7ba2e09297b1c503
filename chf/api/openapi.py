"""The OpenAPI 3.0 document of the management API (chf/api/server.py), served at /openapi.json.

The request body schemas are generated from the Structs that validate the requests (chf/api/bodies.py), so the
document and the server cannot disagree on what a body may hold; `openapi30` turns msgspec's JSON Schema into
the OpenAPI 3.0 dialect (nullable instead of a null type). Paths, parameters and responses are written here,
with the conventions of money in integer micro-units, bearer tokens and problem+json errors naming the field.
tests/test_api.py validates the document with openapi-spec-validator, checks that every route of the server
is documented and vice versa, and runs schemathesis against the server with it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from chf.api import bodies

_MONEY = {
    "type": "integer",
    "format": "int64",
    "description": "Money in micro-units of the account's currency (1 EUR = 1000000). Never a float.",
}
_TIME = {"type": "integer", "format": "int64", "description": "UNIX time in seconds (UTC)."}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": _ref("ProblemDetails")}}}


_ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "404": {"$ref": "#/components/responses/NotFound"},
    "503": {"$ref": "#/components/responses/Busy"},
}
_CHANGE_ERRORS = {**_ERRORS, "409": {"$ref": "#/components/responses/Conflict"}}


def _op(
    op_id: str,
    summary: str,
    ok: dict[str, Any],
    *,
    status: str = "200",
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    change: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "responses": {status: ok, **(_CHANGE_ERRORS if change else _ERRORS)},
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        op["responses"]["413"] = {"$ref": "#/components/responses/TooLarge"}
    if params:
        op["parameters"] = params
        if _IDEMPOTENCY in params:
            op["responses"]["422"] = {"$ref": "#/components/responses/KeyReused"}
    return op


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "A repeat with the same key (per token) and the same body within the idempotency window returns "
    "the first answer with `Idempotency-Replayed: true` and changes nothing; the same key with another body is "
    "refused with 422.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
}
_LINE = _path_param("line", "The line: internal id, IMSI, MSISDN or ICCID.")
_ACCOUNT = _path_param("account", "The account id.")


def _body(struct: type[msgspec.Struct]) -> dict[str, Any]:
    return _ref(struct.__name__)


def openapi30(schema: Any) -> Any:
    """msgspec's JSON Schema (2020-12) in the OpenAPI 3.0 dialect: `anyOf: [X, {type: null}]` becomes X with
    `nullable: true`, a numeric exclusive bound becomes a boolean beside minimum/maximum, an enum of strings
    states its type, and what 3.0 does not have (an empty `required`, a `null` default) is left out."""
    if isinstance(schema, list):
        return [openapi30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {  # a `properties` table maps names to schemas: it is not a schema itself
        key: {name: openapi30(v) for name, v in value.items()} if key == "properties" else openapi30(value)
        for key, value in schema.items()
    }
    _nullable(out)
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), int | float) and not isinstance(out[bound], bool):
            out[plain], out[bound] = out[bound], True
    if "enum" in out and "type" not in out and all(isinstance(v, str) for v in out["enum"]):
        out["type"] = "string"
    if out.get("required") == []:
        del out["required"]
    if "default" in out and out["default"] is None:
        del out["default"]
    return out


def _nullable(schema: dict[str, Any]) -> None:
    variants = schema.get("anyOf")
    if isinstance(variants, list) and {"type": "null"} in variants:
        rest = [v for v in variants if v != {"type": "null"}]
        del schema["anyOf"]
        schema.update(rest[0] if len(rest) == 1 else {"anyOf": rest})
        schema["nullable"] = True


def _body_schemas() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(bodies.BODIES, ref_template="#/components/schemas/{name}")
    return {name: openapi30(schema) for name, schema in components.items()}


_STR = {"type": "string"}
_INT = {"type": "integer"}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "chf management API",
        "version": "1",
        "description": "Provisioning, balances, sessions, events and catalogue of the charging function. Money is "
        "always an integer number of micro-units of the currency (1 EUR = 1000000); times are UNIX seconds. "
        "Errors are application/problem+json whose invalidParams name the field at fault; a refused request "
        "changes nothing. Lifecycle, plan and top-up changes re-authorise or abort the line's open sessions on "
        "Gy and Nchf once durable.",
    },
    "servers": [{"url": "http://127.0.0.1:8081"}],
    "security": [{"bearer": []}],
    "paths": {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "The process answers")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: the store writer runs; export backlogs are reported",
                "security": [],
                "responses": {
                    "200": _json({"type": "object"}, "Ready"),
                    "503": _json({"type": "object"}, "Not ready"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format)",
                "security": [],
                "responses": {"200": {"description": "Metrics", "content": {"text/plain": {"schema": _STR}}}},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document")},
            }
        },
        "/v1/tenants": {
            "get": _op("list_tenants", "List tenants", _json({"type": "object"}, "Tenants")),
            "post": _op(
                "create_tenant",
                "Create a tenant (an MVNO brand)",
                _json(_ref("Tenant"), "Created"),
                status="201",
                change=True,
                body=_body(bodies.TenantCreate),
            ),
        },
        "/v1/tenants/{tenant}": {
            "get": _op(
                "get_tenant",
                "A tenant",
                _json(_ref("Tenant"), "The tenant"),
                params=[_path_param("tenant", "Tenant id")],
            )
        },
        "/v1/accounts": {
            "get": _op(
                "list_accounts",
                "List accounts",
                _json({"type": "object"}, "Accounts"),
                params=[
                    {
                        "name": "tenant",
                        "in": "query",
                        "required": False,
                        "description": "Only this tenant's",
                        "schema": {"type": "string"},
                    },
                    bodies.LIMIT.parameter(),
                ],
            ),
            "post": _op(
                "create_account",
                "Create an account",
                _json(_ref("Account"), "Created"),
                status="201",
                change=True,
                body=_body(bodies.AccountCreate),
            ),
        },
        "/v1/accounts/{account}": {
            "get": _op(
                "get_account", "An account with its wallet", _json(_ref("Account"), "The account"), params=[_ACCOUNT]
            )
        },
        "/v1/accounts/{account}/balances": {
            "get": _op(
                "account_balances",
                "Wallet and shared buckets (family allowances, IoT pools)",
                _json({"type": "object"}, "Balances"),
                params=[_ACCOUNT],
            )
        },
        "/v1/accounts/{account}/lines": {
            "get": _op("account_lines", "Lines of an account", _json({"type": "object"}, "Lines"), params=[_ACCOUNT])
        },
        "/v1/accounts/{account}/plan": {
            "put": _op(
                "account_plan",
                "Put an account on a plan (shared allowances, pools); re-authorises its lines' sessions",
                _json(_ref("Account"), "The account"),
                params=[_ACCOUNT],
                change=True,
                body=_body(bodies.PlanAssignment),
            )
        },
        "/v1/accounts/{account}/topups": {
            "post": _op(
                "topup",
                "Credit the wallet; re-authorises the account's open sessions",
                _json(_ref("Account"), "The account after the top-up"),
                params=[_ACCOUNT, _IDEMPOTENCY],
                change=True,
                body=_body(bodies.TopUp),
            )
        },
        "/v1/accounts/{account}/adjustments": {
            "post": _op(
                "adjust",
                "A signed correction of the wallet, or of one bucket of a line (units of the bucket)",
                _json({"type": "object"}, "The account or the bucket after the adjustment"),
                params=[_ACCOUNT, _IDEMPOTENCY],
                change=True,
                body=_body(bodies.Adjustment),
            )
        },
        "/v1/lines": {
            "post": _op(
                "create_line",
                "Create a line (SIM or eSIM)",
                _json(_ref("Line"), "Created"),
                status="201",
                change=True,
                body=_body(bodies.LineCreate),
            )
        },
        "/v1/lines/{line}": {
            "get": _op(
                "get_line",
                "A line with its account, buckets and open sessions",
                _json(_ref("Line"), "The line"),
                params=[_LINE],
            )
        },
        "/v1/lines/{line}/state": {
            "post": _op(
                "line_state",
                "Lifecycle transition; suspending or terminating aborts the line's open sessions",
                _json(_ref("Line"), "The line"),
                params=[_LINE],
                change=True,
                body=_body(bodies.LineStateChange),
            )
        },
        "/v1/lines/{line}/move": {
            "post": _op(
                "move_line",
                "Move a line to another account of its tenant; its open sessions are released and aborted",
                _json(_ref("Line"), "The line"),
                params=[_LINE],
                change=True,
                body=_body(bodies.LineMove),
            )
        },
        "/v1/lines/{line}/plan": {
            "put": _op(
                "line_plan",
                "Put a line on a plan from now; re-authorises its sessions",
                _json(_ref("Line"), "The line"),
                params=[_LINE],
                change=True,
                body=_body(bodies.PlanAssignment),
            )
        },
        "/v1/lines/{line}/balances": {
            "get": _op(
                "line_balances",
                "Wallet, buckets, shared buckets and period of a line",
                _json({"type": "object"}, "Balances"),
                params=[_LINE],
            )
        },
        "/v1/lines/{line}/buckets": {
            "post": _op(
                "grant_bucket",
                "Add a one-off bucket (goodwill, add-on) to a line",
                _json(_ref("Bucket"), "Created"),
                status="201",
                params=[_LINE, _IDEMPOTENCY],
                change=True,
                body=_body(bodies.BucketGrant),
            )
        },
        "/v1/lines/{line}/addons": {
            "post": _op(
                "buy_addon",
                "Buy a catalogue add-on for a line: the price from the wallet and the bucket, in one transaction",
                _json({"type": "object"}, "The add-on, its bucket and the account after the purchase"),
                params=[_LINE, _IDEMPOTENCY],
                change=True,
                body=_body(bodies.AddOnPurchase),
            )
        },
        "/v1/lines/{line}/sessions": {
            "get": _op(
                "line_sessions", "Open sessions of a line", _json({"type": "object"}, "Sessions"), params=[_LINE]
            )
        },
        "/v1/lines/{line}/events": {
            "get": _op(
                "line_events",
                "Rated and audit events of a line in [from, to), in sequence order; page with after=next_after",
                _json({"type": "object"}, "Events and next_after (null when the spool was read to its end)"),
                params=[
                    _LINE,
                    bodies.FROM.parameter(),
                    bodies.TO.parameter(),
                    bodies.AFTER.parameter(),
                    bodies.LIMIT.parameter("At most this many (a larger limit is served as 1000)"),
                ],
            )
        },
        "/v1/identities/{identity}": {
            "get": _op(
                "identity_lines",
                "Every line that holds or held an IMSI, MSISDN or ICCID: those that gave it up at their termination "
                "(until: when), then its holder now (until: null)",
                _json({"type": "object"}, "The identity and its lines"),
                params=[_path_param("identity", "An IMSI, MSISDN or ICCID.")],
            )
        },
        "/v1/sessions": {
            "get": _op(
                "list_sessions",
                "Open charging sessions",
                _json({"type": "object"}, "Sessions"),
                params=[bodies.LIMIT.parameter("At most this many (a larger limit is served as 10000)")],
            )
        },
        "/v1/catalogue/reload": {
            "post": {
                "operationId": "reload_catalogue",
                "summary": "Load and validate the catalogue (its file or its directory of versions) again; an invalid "
                "one keeps the running catalogue",
                "responses": {
                    "200": _json(
                        {"type": "object"},
                        "The digest and plans of the version that takes effect last, and every version: its name "
                        "(events' catalogue field), file, effective time (UNIX seconds, null: from the start) and "
                        "whether it is in force now",
                    ),
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "422": _problem("The file is invalid; errors lists every problem"),
                },
            }
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A token of [api.tokens]"}},
        "responses": {
            "BadRequest": _problem("Invalid input; invalidParams names the field. Nothing was changed."),
            "Unauthorized": _problem("Missing or invalid bearer token"),
            "NotFound": _problem("The named tenant, account, line, plan or bucket does not exist"),
            "Conflict": _problem("The change contradicts the stored state (identity in use, forbidden transition)"),
            "Busy": _problem("Too busy (write queue full); retry after Retry-After seconds"),
            "TooLarge": _problem(f"The body is over {bodies.MAX_BODY} bytes"),
            "KeyReused": _problem("The Idempotency-Key was used with another request body; nothing was changed"),
        },
        "schemas": {
            **_body_schemas(),
            "ProblemDetails": {
                "type": "object",
                "required": ["title", "status"],
                "properties": {
                    "type": _STR,
                    "title": _STR,
                    "status": _INT,
                    "detail": _STR,
                    "invalidParams": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["param"],
                            "properties": {"param": _STR, "reason": _STR},
                        },
                    },
                },
            },
            "Tenant": {
                "type": "object",
                "properties": {
                    "id": _STR,
                    "name": _STR,
                    "currency": _STR,
                    "created": _TIME,
                    "parent": {"type": "string", "nullable": True},
                    "tax_profile": {"type": "string", "nullable": True},
                },
            },
            "Account": {
                "type": "object",
                "properties": {
                    "id": _STR,
                    "tenant": _STR,
                    "payment": _STR,
                    "currency": _STR,
                    "balance": _MONEY,
                    "reserved": _MONEY,
                    "available": _MONEY,
                    "credit_limit": _MONEY,
                    "cycle_day": _INT,
                    "parent": {"type": "string", "nullable": True},
                    "plan": {"type": "string", "nullable": True},
                    "active_lines": _INT,
                    "created": _TIME,
                    "price_list": {"type": "string", "nullable": True},
                    "tax_profile": {"type": "string", "nullable": True},
                },
            },
            "Line": {
                "type": "object",
                "properties": {
                    "id": _INT,
                    "tenant": _STR,
                    "account": _STR,
                    "imsi": _STR,
                    "msisdn": {"type": "string", "nullable": True},
                    "iccid": {"type": "string", "nullable": True},
                    "eid": {"type": "string", "nullable": True},
                    "state": _STR,
                    "state_since": _TIME,
                    "plan": {"type": "string", "nullable": True},
                    "created": _TIME,
                    "history": {"type": "array", "items": {"type": "object"}},
                    "released": {
                        "type": "object",
                        "description": "Identities the line gave up after its termination (kind: UNIX time); "
                        "shown with a line's details",
                    },
                    "former_holders": {
                        "type": "array",
                        "items": {"type": "object"},
                        "description": "Terminated lines that gave this line's identities up to it; shown with a "
                        "line's details",
                    },
                },
            },
            "Bucket": {
                "type": "object",
                "properties": {
                    "id": _INT,
                    "name": _STR,
                    "kind": _STR,
                    "unit": _STR,
                    "rating_groups": {"type": "array", "items": _INT, "nullable": True},
                    "priority": _INT,
                    "initial": _INT,
                    "remaining": _INT,
                    "reserved": _INT,
                    "available": _INT,
                    "valid_from": _TIME,
                    "valid_to": _TIME,
                    "zones": {
                        "type": "array",
                        "items": _STR,
                        "nullable": True,
                        "description": "The catalogue zones whose usage the bucket pays; null: every zone",
                    },
                    "fair_use_left": {
                        **_INT,
                        "nullable": True,
                        "description": "Units usage outside the home zone may still take of it this period (fair "
                        "use); null: no limit",
                    },
                },
            },
        },
    },
}
