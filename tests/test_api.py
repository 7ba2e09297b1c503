"""The management API over real HTTP against a real server, a real service and an LMDB store on disk.

Every endpoint is exercised, with bad input for each change (a 4xx problem+json naming the field, and the store
unchanged), idempotent top-up replay, signals to the front-ends, /metrics parsed with prometheus-client's
parser, and the OpenAPI document validated and checked against the server's routes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import msgspec
import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from chf.api import bodies
from chf.api.bodies import MAX_BALANCE
from chf.api.openapi import OPENAPI, openapi30
from chf.api.server import ApiConfig, ApiServer, parse_api_config
from chf.core.catalogue_loader import load_catalogue
from chf.core.model import INITIAL, UPDATE, ChargingRequest, OpResult, Signal, UnitRequest, UsageReport
from chf.runtime.config import ConfigError
from chf.runtime.service import ChargingService
from store.lmdbstore import Store
from store.schema import LINE_STATES, PAYMENT_TYPES

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = ROOT / "conf" / "catalogue.toml"
TOKEN = "test-token-0123456789abcdef"
PARIS = ZoneInfo("Europe/Paris")


class Api:
    def __init__(self, server: ApiServer, http: aiohttp.ClientSession, service: ChargingService) -> None:
        self.server = server
        self.http = http
        self.service = service
        self.base = f"http://127.0.0.1:{server.port}"
        self.signals: list[Signal] = []
        self.auth = {"Authorization": f"Bearer {TOKEN}"}

    async def call(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None, auth: bool = True
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        hdrs = dict(self.auth) if auth else {}
        hdrs.update(headers or {})
        kwargs: dict[str, Any] = {"headers": hdrs}
        if isinstance(body, bytes | str):
            kwargs["data"] = body
        elif body is not None:
            kwargs["json"] = body
        async with self.http.request(method, self.base + path, **kwargs) as resp:
            if resp.content_type in ("application/json", "application/problem+json"):
                data = await resp.json(content_type=None)
            else:
                data = await resp.text()
            return resp.status, data, resp

    def snapshot(self) -> tuple[int, dict[str, int]]:
        """What a refused request must leave unchanged: the last event sequence and every entry count."""
        with self.service.read() as txn:
            seq = txn.last_event_seq()
        return seq, self.service.store.stat()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    store = Store(tmp_path / "chf.lmdb")
    service = ChargingService(store, load_catalogue(CATALOGUE), catalogue_path=str(CATALOGUE))
    await service.start()
    server = ApiServer(service, ApiConfig(port=0, tokens={"crm": TOKEN}))
    await server.start()
    async with aiohttp.ClientSession() as http:
        client = Api(server, http, service)
        service.bus.subscribe("*", client.signals.append)
        yield client
    await server.stop()
    await service.stop()
    store.close()


async def provision(api: Api) -> int:
    """A tenant, a prepaid account with 5 EUR and one active line on prepaid-s; returns the line id."""
    status, _, _ = await api.call("POST", "/v1/tenants", {"id": "mvno", "name": "MVNO", "currency": "EUR"})
    assert status == 201
    status, acct, _ = await api.call(
        "POST", "/v1/accounts", {"id": "alice", "tenant": "mvno", "payment": "prepaid", "balance": 5_000_000}
    )
    assert status == 201, acct
    assert acct["balance"] == 5_000_000
    status, line, _ = await api.call(
        "POST",
        "/v1/lines",
        {"account": "alice", "imsi": "001010000000001", "msisdn": "33600000001", "plan": "prepaid-s"},
    )
    assert status == 201, line
    return int(line["id"])


async def open_session(api: Api, key: str = "gy:sess-1") -> None:
    answer = await api.service.charge(
        ChargingRequest(INITIAL, key, 0, [("imsi", "001010000000001")], [UnitRequest(rating_group=10, requested={})])
    )
    assert answer.result == "success", answer


def assert_problem(status: int, data: Any, resp: aiohttp.ClientResponse, expected: int, field: str) -> None:
    assert status == expected, data
    assert resp.content_type == "application/problem+json"
    assert data["status"] == expected
    assert data["invalidParams"][0]["param"] == field, data


async def test_provisioning_reads_and_lifecycle_with_signals(api: Api) -> None:
    line_id = await provision(api)
    status, tenants, _ = await api.call("GET", "/v1/tenants")
    assert status == 200 and [t["id"] for t in tenants["tenants"]] == ["mvno"]
    status, tenant, _ = await api.call("GET", "/v1/tenants/mvno")
    assert status == 200 and tenant["currency"] == "EUR"
    status, accounts, _ = await api.call("GET", "/v1/accounts?tenant=mvno")
    assert status == 200 and [a["id"] for a in accounts["accounts"]] == ["alice"]
    status, acct, _ = await api.call("GET", "/v1/accounts/alice")
    assert status == 200 and acct["payment"] == "prepaid"
    status, lines, _ = await api.call("GET", "/v1/accounts/alice/lines")
    assert status == 200 and [x["id"] for x in lines["lines"]] == [line_id]
    for ref in (str(line_id), "001010000000001", "33600000001"):
        status, line, _ = await api.call("GET", f"/v1/lines/{ref}")
        assert status == 200 and line["id"] == line_id and line["plan"] == "prepaid-s"
    status, bal, _ = await api.call("GET", f"/v1/lines/{line_id}/balances")
    assert status == 200 and {b["name"] for b in bal["buckets"]} >= {"data", "voice", "sms"}

    await open_session(api)
    status, sessions, _ = await api.call("GET", "/v1/sessions")
    assert status == 200 and [s["key"] for s in sessions["sessions"]] == ["gy:sess-1"]
    status, sessions, _ = await api.call("GET", f"/v1/lines/{line_id}/sessions")
    assert status == 200 and len(sessions["sessions"]) == 1

    # A top-up re-authorises the open session once it is durable.
    status, acct, _ = await api.call("POST", "/v1/accounts/alice/topups", {"amount": 2_000_000, "reason": "shop"})
    assert status == 200 and acct["balance"] < 7_000_000 + 1
    assert [(s.kind, s.session) for s in api.signals] == [("reauth", "gy:sess-1")]
    # Suspension aborts it.
    status, line, _ = await api.call("POST", f"/v1/lines/{line_id}/state", {"state": "suspended", "reason": "lost SIM"})
    assert status == 200 and line["state"] == "suspended"
    assert [(s.kind, s.session) for s in api.signals][-1] == ("abort", "gy:sess-1")
    status, line, _ = await api.call("POST", f"/v1/lines/{line_id}/state", {"state": "active", "reason": "found"})
    assert status == 200 and line["state"] == "active"

    # Plans on lines and accounts, a goodwill bucket, a bucket adjustment.
    status, line, _ = await api.call("PUT", f"/v1/lines/{line_id}/plan", {"plan": "payg", "reason": "downgrade"})
    assert status == 200 and line["plan"] == "payg"
    status, bucket, _ = await api.call(
        "POST",
        f"/v1/lines/{line_id}/buckets",
        {"name": "goodwill", "unit": "bytes", "amount": 1000, "valid_to": int(time.time()) + 3600, "reason": "sorry"},
    )
    assert status == 201 and bucket["remaining"] == 1000
    status, adjusted, _ = await api.call(
        "POST",
        "/v1/accounts/alice/adjustments",
        {"amount": -400, "reason": "correction", "line": str(line_id), "bucket": bucket["id"]},
    )
    assert status == 200 and adjusted["remaining"] == 600
    status, acct, _ = await api.call(
        "POST", "/v1/accounts", {"id": "fam", "tenant": "mvno", "payment": "postpaid", "credit_limit": 10_000_000}
    )
    assert status == 201
    status, acct, _ = await api.call("PUT", "/v1/accounts/fam/plan", {"plan": "family-50g", "reason": "new family"})
    assert status == 200 and acct["plan"] == "family-50g"
    status, bal, _ = await api.call("GET", "/v1/accounts/fam/balances")
    assert status == 200 and bal["buckets"] and bal["wallet"]["credit_limit"] == 10_000_000

    # Move the line, then read its events by time range.
    status, _, _ = await api.call("POST", "/v1/accounts", {"id": "alice2", "tenant": "mvno", "payment": "prepaid"})
    assert status == 201
    status, line, _ = await api.call("POST", f"/v1/lines/{line_id}/move", {"account": "alice2", "reason": "split"})
    assert status == 200 and line["account"] == "alice2"
    status, events, _ = await api.call("GET", f"/v1/lines/{line_id}/events?from=0&limit=1000")
    assert status == 200
    kinds = [e["kind"] for e in events["events"]]
    assert "lifecycle" in kinds and "plan_change" in kinds and "line_move" in kinds
    assert all(e["subscriber"] == line_id for e in events["events"])
    seqs = [e["seq"] for e in events["events"]]
    assert seqs == sorted(seqs)
    status, page, _ = await api.call("GET", f"/v1/lines/{line_id}/events?limit=2")
    assert status == 200 and [e["seq"] for e in page["events"]] == seqs[:2] and page["next_after"] == seqs[1]
    status, page2, _ = await api.call("GET", f"/v1/lines/{line_id}/events?limit=2&after={page['next_after']}")
    assert [e["seq"] for e in page2["events"]] == seqs[2:4]
    future = int(time.time()) + 86400 * 400
    status, none, _ = await api.call("GET", f"/v1/lines/{line_id}/events?from={future}")
    assert status == 200 and none["events"] == [] and none["next_after"] is None

    status, cat, _ = await api.call("POST", "/v1/catalogue/reload")
    assert status == 200 and "prepaid-s" in cat["plans"]
    [version] = cat["versions"]  # one file: one version, in force from the start
    assert version == {"version": cat["digest"][:12], "file": "catalogue.toml", "effective": None, "in_force": True}


async def test_idempotent_topup_replay(api: Api) -> None:
    await provision(api)
    key = {"Idempotency-Key": "order-42"}
    status, first, resp = await api.call(
        "POST", "/v1/accounts/alice/topups", {"amount": 1_500_000, "reason": "web"}, headers=key
    )
    assert status == 200 and "Idempotency-Replayed" not in resp.headers
    before = api.snapshot()
    status, again, resp = await api.call(
        "POST", "/v1/accounts/alice/topups", {"amount": 1_500_000, "reason": "web"}, headers=key
    )
    assert status == 200 and resp.headers["Idempotency-Replayed"] == "true"
    assert again == first
    assert api.snapshot() == before
    status, acct, _ = await api.call("GET", "/v1/accounts/alice")
    # 5.00 EUR opening balance - 4.99 EUR first (promotional) fee of prepaid-s + 1.50 EUR
    assert acct["balance"] == first["balance"] == 1_510_000
    # An adjustment with its own key is applied once as well.
    adj = {"Idempotency-Key": "adj-1"}
    for _ in range(2):
        status, _, _ = await api.call(
            "POST", "/v1/accounts/alice/adjustments", {"amount": -500_000, "reason": "fee"}, headers=adj
        )
        assert status == 200
    status, acct, _ = await api.call("GET", "/v1/accounts/alice")
    assert acct["balance"] == 1_010_000
    # A goodwill bucket with a key is granted once: the client that timed out and posts again gets the first one.
    grant = {"name": "goodwill", "unit": "money", "amount": 700_000, "valid_to": int(time.time()) + 3600}
    answers = []
    for _ in range(2):
        status, bucket, resp = await api.call(
            "POST", "/v1/lines/1/buckets", {**grant, "reason": "sorry"}, headers={"Idempotency-Key": "gw-1"}
        )
        assert status == 201, bucket
        answers.append((bucket, resp.headers.get("Idempotency-Replayed")))
    assert answers[1] == (answers[0][0], "true") and answers[0][1] is None
    status, bal, _ = await api.call("GET", "/v1/lines/1/balances")
    assert [b["remaining"] for b in bal["buckets"] if b["name"] == "goodwill"] == [700_000]


BAD_REQUESTS: list[tuple[str, str, Any, int, str]] = [
    ("POST", "/v1/tenants", {"id": "x y", "currency": "EUR"}, 400, "tenant"),
    ("POST", "/v1/tenants", {"id": "t2", "currency": "euro"}, 400, "currency"),
    ("POST", "/v1/tenants", {"id": "t2"}, 400, "currency"),
    ("POST", "/v1/tenants", {"id": "mvno", "currency": "EUR"}, 409, "tenant"),
    ("POST", "/v1/tenants", {"id": "t2", "currency": "EUR", "colour": "red"}, 400, "colour"),
    ("POST", "/v1/tenants", b"{not json", 400, "body"),
    ("POST", "/v1/tenants", b"[1, 2]", 400, "body"),
    ("POST", "/v1/accounts", {"id": "b", "tenant": "nope", "payment": "prepaid"}, 404, "tenant"),
    ("POST", "/v1/accounts", {"id": "b", "tenant": "mvno", "payment": "cash"}, 400, "payment"),
    ("POST", "/v1/accounts", {"id": "b", "tenant": "mvno", "payment": "prepaid", "balance": 1.5}, 400, "balance"),
    ("POST", "/v1/accounts", {"id": "b", "tenant": "mvno", "payment": "postpaid", "cycle_day": 31}, 400, "cycle_day"),
    ("POST", "/v1/accounts/alice/topups", {"amount": 10.0, "reason": "x"}, 400, "amount"),
    ("POST", "/v1/accounts/alice/topups", {"amount": "10", "reason": "x"}, 400, "amount"),
    ("POST", "/v1/accounts/alice/topups", {"amount": -5, "reason": "x"}, 400, "amount"),
    ("POST", "/v1/accounts/alice/topups", {"amount": 5}, 400, "reason"),
    ("POST", "/v1/accounts/nobody/topups", {"amount": 5, "reason": "x"}, 404, "account"),
    ("POST", "/v1/accounts/alice/adjustments", {"amount": 0, "reason": "x"}, 400, "amount"),
    ("POST", "/v1/accounts/alice/adjustments", {"amount": 5, "reason": "x", "bucket": 999, "line": "1"}, 404, "bucket"),
    ("PUT", "/v1/accounts/alice/plan", {"plan": "no-such-plan"}, 404, "plan"),
    ("PUT", "/v1/accounts/alice/plan", {"plan": "postpaid-l"}, 409, "plan"),
    ("POST", "/v1/lines", {"account": "alice", "imsi": "12ab"}, 400, "imsi"),
    ("POST", "/v1/lines", {"account": "alice", "imsi": "001010000000001"}, 409, "imsi"),
    ("POST", "/v1/lines", {"account": "alice", "imsi": "001010000000002", "msisdn": "+33"}, 400, "msisdn"),
    ("POST", "/v1/lines", {"account": "ghost", "imsi": "001010000000002"}, 404, "account"),
    ("POST", "/v1/lines", {"account": "alice", "imsi": "001010000000002", "state": "suspended"}, 400, "state"),
    ("POST", "/v1/lines/1/state", {"state": "sleeping", "reason": "x"}, 400, "state"),
    ("POST", "/v1/lines/1/state", {"state": "provisioned", "reason": "x"}, 409, "state"),
    ("POST", "/v1/lines/1/state", {"state": "active"}, 400, "reason"),
    ("POST", "/v1/lines/999999/state", {"state": "active", "reason": "x"}, 404, "line"),
    ("POST", "/v1/lines/1/move", {"account": "ghost", "reason": "x"}, 404, "account"),
    ("PUT", "/v1/lines/1/plan", {"plan": "postpaid-l"}, 409, "plan"),
    (
        "POST",
        "/v1/lines/1/buckets",
        {"name": "g", "unit": "litres", "amount": 1, "valid_to": 2**40, "reason": "x"},
        400,
        "unit",
    ),
    (
        "POST",
        "/v1/lines/1/buckets",
        {"name": "g", "unit": "bytes", "amount": 1, "valid_to": 5, "reason": "x"},
        400,
        "valid_to",
    ),
    ("GET", "/v1/lines/1/events?from=abc", None, 400, "from"),
    ("GET", "/v1/lines/1/events?from=10&to=5", None, 400, "to"),
    ("GET", "/v1/lines/1/events?limit=0", None, 400, "limit"),
    ("GET", "/v1/lines/nobody", None, 404, "line"),
    ("GET", "/v1/accounts/ghost", None, 404, "account"),
    ("GET", "/v1/tenants/ghost", None, 404, "tenant"),
]


async def test_bad_input_names_the_field_and_changes_nothing(api: Api) -> None:
    await provision(api)
    for method, path, body, expected, field in BAD_REQUESTS:
        before = api.snapshot()
        status, data, resp = await api.call(method, path, body)
        assert_problem(status, data, resp, expected, field)
        assert api.snapshot() == before, (method, path, body)
    # Auth: missing or wrong token.
    before = api.snapshot()
    status, data, resp = await api.call("POST", "/v1/tenants", {"id": "t9", "currency": "EUR"}, auth=False)
    assert_problem(status, data, resp, 401, "Authorization")
    status, data, resp = await api.call(
        "GET", "/v1/tenants", auth=False, headers={"Authorization": "Bearer wrong-token-0000000000"}
    )
    assert_problem(status, data, resp, 401, "Authorization")
    assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert api.snapshot() == before
    # Unknown route and method: still problem+json.
    status, data, resp = await api.call("GET", "/v1/nothing-here")
    assert status == 404 and resp.content_type == "application/problem+json"
    status, data, resp = await api.call("DELETE", "/v1/tenants")
    assert status == 405 and resp.content_type == "application/problem+json"
    # A body over the limit.
    status, data, resp = await api.call("POST", "/v1/tenants", b"{" + b" " * 100_000 + b"}")
    assert status == 413 and data["invalidParams"][0]["param"] == "body"


async def test_catalogue_reload_rejects_an_invalid_file(api: Api, tmp_path: Path) -> None:
    bad = tmp_path / "catalogue.toml"
    bad.write_text(CATALOGUE.read_text() + '\n[plans.broken]\npayment = "cash"\n')
    api.service.catalogue_path = str(bad)
    digest = api.service.catalogue.digest
    status, data, resp = await api.call("POST", "/v1/catalogue/reload")
    assert_problem(status, data, resp, 422, "catalogue")
    assert data["errors"] and api.service.catalogue.digest == digest


async def test_metrics_health_and_readiness(api: Api) -> None:
    from chf.runtime import metrics

    await provision(api)
    granted_before = metrics.UNITS_GRANTED.labels("bytes")._value.get()
    consumed_before = metrics.UNITS_CONSUMED.labels("bytes")._value.get()
    await open_session(api)
    update = ChargingRequest(
        UPDATE,
        "gy:sess-1",
        1,
        [("imsi", "001010000000001")],
        [UnitRequest(rating_group=10, requested={}, used=[UsageReport({"bytes_in": 1000, "bytes_out": 234})])],
    )
    assert (await api.service.charge(update)).result == "success"
    status, _, _ = await api.call("GET", "/v1/tenants", auth=False)
    assert status == 401
    status, body, resp = await api.call("GET", "/healthz", auth=False)
    assert status == 200 and body == {"status": "ok"}
    status, body, resp = await api.call("GET", "/readyz", auth=False)
    assert status == 200 and body["status"] == "ready"
    status, text, resp = await api.call("GET", "/metrics", auth=False)
    assert status == 200 and resp.content_type == "text/plain"
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("chf_open_sessions", ())] == 1
    assert samples[("chf_consumed_units_total", (("unit", "bytes"),))] - consumed_before == 1234
    assert samples[("chf_granted_units_total", (("unit", "bytes"),))] > granted_before
    assert ("chf_store_write_queue_operations", ()) in samples
    assert samples[("chf_store_commit_duration_seconds_count", ())] >= 4
    assert samples[("chf_store_batch_size_operations_count", ())] >= 4
    created = [
        v
        for (name, labels), v in samples.items()
        if name == "chf_requests_total"
        and dict(labels) == {"interface": "api", "operation": "create_line", "result": "201"}
    ]
    assert created and created[0] >= 1
    assert any(name == "chf_request_duration_seconds_bucket" for name, _ in samples)
    assert samples[("chf_protocol_errors_total", (("error", "401"), ("interface", "api")))] >= 1
    for family in families.values():
        assert family.name.startswith("chf_"), family.name
        for sample in family.samples:
            for value in sample.labels.values():
                assert "001010000000001" not in value and "sess-1" not in value
    # The store hook is registered once however many servers share the store.
    assert api.service.store.on_commit.count(metrics.observe_commit) == 1
    # Not ready once the writer has stopped.
    await api.service.store.stop()
    status, body, _ = await api.call("GET", "/readyz", auth=False)
    assert status == 503 and body["checks"]["writer"] is False
    api.service.store.start()


async def test_readyz_with_the_inline_writer_and_extra_checks(tmp_path: Path) -> None:
    """The inline writer has no thread: it is running once started. Checks registered by parts started around the
    service (front-end workers) count too."""
    store = Store(tmp_path / "chf.lmdb", writer="inline")
    service = ChargingService(store, load_catalogue(CATALOGUE), catalogue_path=str(CATALOGUE))
    await service.start()
    server = ApiServer(service, ApiConfig(port=0, tokens={"crm": TOKEN}))
    await server.start()
    workers_up = [True]
    service.readiness_checks["frontend_workers"] = lambda: workers_up[0]
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(server, http, service)
            status, body, _ = await api.call("GET", "/readyz", auth=False)
            assert status == 200 and body["checks"]["writer"] is True and body["checks"]["frontend_workers"] is True
            workers_up[0] = False
            status, body, _ = await api.call("GET", "/readyz", auth=False)
            assert status == 503 and body["checks"]["frontend_workers"] is False
    finally:
        await server.stop()
        await service.stop()
        store.close()


async def test_openapi_document_is_valid_and_matches_the_routes(api: Api) -> None:
    status, doc, _ = await api.call("GET", "/openapi.json", auth=False)
    assert status == 200 and doc == OPENAPI
    validate(doc)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {
        (r.method, r.resource.canonical)
        for r in api.server.app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    assert documented == served
    op_ids = {op["operationId"] for ops in doc["paths"].values() for op in ops.values()}
    assert op_ids == {r.name for r in api.server.app.router.routes() if r.name}


async def test_every_field_at_fault_is_named_at_once(api: Api) -> None:
    await provision(api)
    before = api.snapshot()
    status, data, resp = await api.call(
        "POST", "/v1/lines", {"account": "alice", "imsi": "12ab", "msisdn": "+33", "colour": "red", "state": None}
    )
    assert_problem(status, data, resp, 400, "colour")
    reasons = {p["param"]: p["reason"] for p in data["invalidParams"]}
    assert reasons == {
        "colour": "unknown field (known: account, eid, iccid, imsi, msisdn, plan, state)",
        "imsi": "must be 6 to 15 digits, got '12ab'",
        "msisdn": "must be 6 to 15 digits in international format, no '+', got '+33'",
    }
    status, data, resp = await api.call("POST", "/v1/lines/1/buckets", {"name": "g", "rating_groups": [10, "x"]})
    assert_problem(status, data, resp, 400, "unit")  # in the order of the fields
    assert [p["param"] for p in data["invalidParams"]] == ["unit", "amount", "valid_to", "reason", "rating_groups[1]"]
    assert api.snapshot() == before


def test_the_documented_request_bodies_are_the_validating_structs() -> None:
    """Each request body of the document is the schema of the Struct the server decodes it with."""
    _, generated = msgspec.json.schema_components(bodies.BODIES, ref_template="#/components/schemas/{name}")
    schemas = OPENAPI["components"]["schemas"]
    refs = {
        op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        for ops in OPENAPI["paths"].values()
        for op in ops.values()
        if "requestBody" in op
    }
    assert refs == {struct.__name__ for struct in bodies.BODIES}
    for name in refs:
        assert schemas[name] == openapi30(generated[name])
    assert schemas["LineStateChange"]["properties"]["state"]["enum"] == sorted(LINE_STATES)
    assert schemas["AccountCreate"]["properties"]["payment"]["enum"] == sorted(PAYMENT_TYPES)
    nullable = {"anyOf": [{"type": "integer", "exclusiveMinimum": 0}, {"type": "null"}], "default": None}
    assert openapi30(nullable) == {"type": "integer", "minimum": 0, "exclusiveMinimum": True, "nullable": True}


def test_api_config_errors_name_the_field() -> None:
    cfg = parse_api_config({"port": 9000, "tokens": {"crm": TOKEN}})
    assert cfg.port == 9000 and cfg.tokens == {"crm": TOKEN}
    with pytest.raises(ConfigError) as exc:
        parse_api_config({"port": "x", "tokens": {"crm": "short"}, "colour": 1})
    text = str(exc.value)
    assert "[api] port" in text and "[api.tokens] crm" in text and "[api] colour" in text


# ------------------------------------------------------------------------------------------------------------------
# Hostile input and money at the edges (issue 11 item 13, issue 12 items 7 and 8)
# ------------------------------------------------------------------------------------------------------------------
async def raw_request(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Bytes a well-behaved client library would not send (a non-ASCII token), over a plain socket."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


async def test_an_idempotency_key_reused_with_another_body_is_refused(api: Api) -> None:
    """A key names one request: another body under it is a client error (IETF Idempotency-Key header draft,
    section 2.7: 422), never a replay that credits nothing while saying it did."""
    await provision(api)
    key = {"Idempotency-Key": "order-7"}
    status, first, _ = await api.call(
        "POST", "/v1/accounts/alice/topups", {"amount": 1000, "reason": "web"}, headers=key
    )
    assert status == 200
    before = api.snapshot()
    for body in ({"amount": 5_000_000, "reason": "web"}, {"amount": 1000, "reason": "shop"}):
        status, data, resp = await api.call("POST", "/v1/accounts/alice/topups", body, headers=key)
        assert_problem(status, data, resp, 422, "Idempotency-Key")
        assert "Idempotency-Replayed" not in resp.headers
    assert api.snapshot() == before
    # The same body under the same key (fields in another order) is still the replay of the first answer.
    status, again, resp = await api.call(
        "POST", "/v1/accounts/alice/topups", {"reason": "web", "amount": 1000}, headers=key
    )
    assert status == 200 and resp.headers["Idempotency-Replayed"] == "true" and again == first
    assert api.snapshot() == before
    # Adjustments likewise; a key used on one route is free on another.
    adj = {"Idempotency-Key": "order-7"}
    status, _, _ = await api.call("POST", "/v1/accounts/alice/adjustments", {"amount": -10, "reason": "x"}, headers=adj)
    assert status == 200
    status, data, resp = await api.call(
        "POST", "/v1/accounts/alice/adjustments", {"amount": -20, "reason": "x"}, headers=adj
    )
    assert_problem(status, data, resp, 422, "Idempotency-Key")
    # A first attempt that was refused leaves the key free for a corrected request.
    key = {"Idempotency-Key": "order-8"}
    status, _, _ = await api.call("POST", "/v1/accounts/nobody/topups", {"amount": 1, "reason": "x"}, headers=key)
    assert status == 404
    status, _, _ = await api.call("POST", "/v1/accounts/alice/topups", {"amount": 2, "reason": "x"}, headers=key)
    assert status == 200


HUGE = 2**64
OUT_OF_BOUNDS: list[tuple[str, str, Any, str]] = [
    ("POST", "/v1/accounts/alice/topups", {"amount": 2**63, "reason": "x"}, "amount"),
    ("POST", "/v1/accounts/alice/topups", {"amount": HUGE, "reason": "x"}, "amount"),
    ("POST", "/v1/accounts/alice/topups", {"amount": 10**15 + 1, "reason": "x"}, "amount"),
    ("POST", "/v1/accounts/alice/adjustments", {"amount": -HUGE, "reason": "x"}, "amount"),
    ("POST", "/v1/accounts/alice/adjustments", {"amount": 5, "reason": "x", "line": "1", "bucket": HUGE}, "bucket"),
    ("POST", "/v1/accounts/alice/adjustments", {"amount": 5, "reason": "x", "line": HUGE, "bucket": 1}, "line"),
    ("POST", "/v1/accounts", {"id": "b", "tenant": "mvno", "payment": "prepaid", "balance": HUGE}, "balance"),
    ("POST", "/v1/accounts", {"id": "b", "tenant": "mvno", "payment": "prepaid", "balance": -HUGE}, "balance"),
    (
        "POST",
        "/v1/accounts",
        {"id": "b", "tenant": "mvno", "payment": "postpaid", "credit_limit": HUGE},
        "credit_limit",
    ),
    ("POST", "/v1/accounts", {"id": "b", "tenant": "mvno", "payment": "postpaid", "cycle_day": HUGE}, "cycle_day"),
    (
        "POST",
        "/v1/lines/1/buckets",
        {"name": "g", "unit": "bytes", "amount": HUGE, "valid_to": 2**40, "reason": "x"},
        "amount",
    ),
    (
        "POST",
        "/v1/lines/1/buckets",
        {"name": "g", "unit": "bytes", "amount": 1, "valid_to": HUGE, "reason": "x"},
        "valid_to",
    ),
    (
        "POST",
        "/v1/lines/1/buckets",
        {"name": "g", "unit": "bytes", "amount": 1, "valid_to": 2**33, "reason": "x", "rating_groups": [2**32]},
        "rating_groups[0]",
    ),
    (
        "POST",
        "/v1/lines/1/buckets",
        {"name": "g", "unit": "bytes", "amount": 1, "valid_to": 2**33, "reason": "x", "priority": HUGE},
        "priority",
    ),
    ("GET", "/v1/lines/1/events?after=18446744073709551615", None, "after"),
    ("GET", "/v1/lines/1/events?from=18446744073709551616", None, "from"),
    ("GET", "/v1/lines/1/events?to=99999999999999999999999", None, "to"),
    ("GET", "/v1/lines/1/events?limit=99999999999999999999999", None, "limit"),
    ("GET", "/v1/sessions?limit=99999999999999999999999", None, "limit"),
    ("GET", "/v1/accounts?limit=99999999999999999999999", None, "limit"),
    ("GET", "/v1/lines/%2318446744073709551616", None, "line"),
    ("POST", "/v1/tenants", b"[" * 20_000 + b"]" * 20_000, "body"),  # within the 64 KiB limit
    ("POST", "/v1/tenants", b'{"id":' + b"[" * 20_000 + b"]" * 20_000 + b"}", "body"),
]


async def test_amounts_and_integers_beyond_their_bounds_are_refused(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """Every amount and integer has a documented maximum (what fits the store's signed 64-bit values with room to
    spare); beyond it, and for input built to exhaust the parser, a 4xx naming the field, and nothing logged as
    an error."""
    await provision(api)
    for method, path, body, field in OUT_OF_BOUNDS:
        before = api.snapshot()
        status, data, resp = await api.call(method, path, body)
        assert 400 <= status < 500, (path, body, data)
        assert_problem(status, data, resp, status, field)
        assert api.snapshot() == before, (path, body)
    no_tracebacks(caplog)


async def test_a_wallet_cannot_be_topped_up_beyond_its_ceiling(api: Api) -> None:
    """Each amount is bounded, and so is the sum: a wallet stays within +-MAX_BALANCE, far inside what the store's
    signed 64-bit values hold, whatever the number of top-ups."""
    await provision(api)

    def near_ceiling(txn: Any, _engine: Any, _now: int) -> OpResult:
        account = txn.get_account("alice")
        account.balance = MAX_BALANCE - 10
        txn.put_account(account)
        return OpResult(None)

    await api.service.operate(near_ceiling)
    before = api.snapshot()
    for path in ("/v1/accounts/alice/topups", "/v1/accounts/alice/adjustments"):
        status, data, resp = await api.call("POST", path, {"amount": 11, "reason": "x"})
        assert_problem(status, data, resp, 400, "amount")
        assert api.snapshot() == before
    status, acct, _ = await api.call("POST", "/v1/accounts/alice/topups", {"amount": 10, "reason": "x"})
    assert status == 200 and acct["balance"] == MAX_BALANCE


async def test_a_bearer_token_that_is_not_ascii_is_refused_before_anything_else(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    for token in (b"\xff", b"\xc3\xa9t\xc3\xa9-token-0123456789", b"a b"):
        request = (
            b"GET /v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + b"\r\nConnection: close\r\n\r\n"
        )
        status, headers, body = await raw_request(api.server.port, request)
        assert status == 401, (token, status, body)
        assert headers["content-type"].startswith("application/problem+json"), headers
        assert json.loads(body)["invalidParams"][0]["param"] == "Authorization"
    # A control character is refused by aiohttp's HTTP parser before the application sees the request: a 400,
    # logged as one line, without a traceback.
    request = b"GET /v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \x00\r\nConnection: close\r\n\r\n"
    status, _, _ = await raw_request(api.server.port, request)
    assert status == 400
    no_tracebacks(caplog)


async def test_the_server_header_names_no_versions(api: Api) -> None:
    for path, auth in (("/healthz", False), ("/v1/tenants", True), ("/v1/tenants", False), ("/nothing", True)):
        _, _, resp = await api.call("GET", path, auth=auth)
        assert resp.headers["Server"] == "chf", resp.headers
    _, _, resp = await api.call("DELETE", "/v1/tenants")
    assert resp.status == 405 and resp.headers["Server"] == "chf"
    _, _, resp = await api.call("POST", "/v1/tenants", b"{" + b" " * 100_000 + b"}")
    assert resp.status == 413 and resp.headers["Server"] == "chf"


# ------------------------------------------------------------------------------------------------------------------
# Schemathesis: requests generated from the served OpenAPI document
# ------------------------------------------------------------------------------------------------------------------
EXAMPLES_PER_OPERATION = 25


@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_every_answer_is_documented(tmp_path: Path) -> None:
    """Valid and invalid requests generated from /openapi.json (the document built from the request Structs), with
    a valid token, against a provisioned store: no 5xx, every status code and content type one the document
    names, every answer schema-valid."""
    import requests
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.result import Ok
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    loop = asyncio.new_event_loop()
    store = Store(tmp_path / "chf.lmdb", durability="os")
    service = ChargingService(store, load_catalogue(CATALOGUE), catalogue_path=str(CATALOGUE))
    server = ApiServer(service, ApiConfig(port=0, tokens={"crm": TOKEN}))

    async def start() -> None:
        await service.start()
        await server.start()
        async with aiohttp.ClientSession() as http:
            await provision(Api(server, http, service))

    loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, name="api-under-test", daemon=True)
    thread.start()
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    seen: dict[str, dict[int, int]] = {}
    try:
        schema = schemathesis.openapi.from_dict(OPENAPI)
        base_url = f"http://127.0.0.1:{server.port}"
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result
            operation = result.ok()
            statuses = seen.setdefault(f"{operation.method.upper()} {operation.path}", {})
            _explore(operation, base_url, session, checks, statuses)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        asyncio.run_coroutine_threadsafe(service.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        store.close()
    print(seen)
    assert len(seen) == len(list(api_routes())), seen
    assert all(sum(s.values()) >= 1 for s in seen.values()), seen
    assert any(status < 300 for s in seen.values() for status in s if s), seen


def _explore(operation: Any, base_url: str, session: Any, checks: list[Any], statuses: dict[int, int]) -> None:
    from hypothesis import HealthCheck, given, settings

    counter = [0]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def exercise(case: Any) -> None:
        counter[0] += 1
        if counter[0] % 2 and case.path_parameters:
            # Every other request names the provisioned account or line, so that generated bodies reach
            # provisioning instead of stopping at "no such resource".
            for name, value in (("line", "001010000000001"), ("account", "alice"), ("tenant", "mvno")):
                if name in case.path_parameters:
                    case.path_parameters[name] = value
        response = case.call(base_url=base_url, session=session, timeout=10)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        case.validate_response(response, checks=checks)

    exercise()


def api_routes() -> list[tuple[str, str]]:
    return [(m, p) for p, ops in OPENAPI["paths"].items() for m in ops]


# ----------------------------------------------------------------------------------------------------------------------
# Money and the line lifecycle (issue 11, items 3 and 4)
# ----------------------------------------------------------------------------------------------------------------------
class Clock:
    """The service's injected clock: it moves only when the test moves it."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> float:
        return float(self.now)


@pytest.fixture
async def clocked(tmp_path: Path) -> AsyncIterator[tuple[Api, Clock]]:
    """An API whose service runs its sweeper on an injected clock (4 March 2026, noon in Paris)."""
    clock = Clock(int(datetime(2026, 3, 4, 12, tzinfo=PARIS).timestamp()))
    store = Store(tmp_path / "chf.lmdb")
    service = ChargingService(
        store, load_catalogue(CATALOGUE), catalogue_path=str(CATALOGUE), clock=clock, sweep_interval=0.01
    )
    await service.start()
    server = ApiServer(service, ApiConfig(port=0, tokens={"crm": TOKEN}))
    await server.start()
    async with aiohttp.ClientSession() as http:
        yield Api(server, http, service), clock
    await server.stop()
    await service.stop()
    store.close()


async def add_line(api: Api, account: str, imsi: str, plan: str | None, state: str = "active") -> int:
    body: dict[str, Any] = {"account": account, "imsi": imsi, "state": state}
    if plan is not None:
        body["plan"] = plan
    status, line, _ = await api.call("POST", "/v1/lines", body)
    assert status == 201, line
    return int(line["id"])


async def set_state(api: Api, line: int, state: str) -> None:
    status, answer, _ = await api.call("POST", f"/v1/lines/{line}/state", {"state": state, "reason": "audit"})
    assert status == 200 and answer["state"] == state, answer


async def fees_of(api: Api, line: int) -> list[int]:
    """The line's period fees as the API shows its events: the money each renewal took from the wallet."""
    status, page, _ = await api.call("GET", f"/v1/lines/{line}/events?limit=1000")
    assert status == 200
    return [
        -sum(i["delta"] for i in e["impacts"] if i["balance"].endswith(":wallet"))
        for e in page["events"]
        if e["kind"] == "renewal"
    ]


async def swept(api: Api, until: Callable[[], Awaitable[bool]]) -> None:
    """Wait for the service's sweeper to bring the store up to date with the clock, then for one pass more."""
    for _ in range(500):
        if await until():
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the sweeper did not renew the active line")
    passes = api.service.sweeps
    while api.service.sweeps < passes + 2:
        await asyncio.sleep(0.02)


async def test_fees_follow_the_line_state_when_the_clock_moves_on(clocked: tuple[Api, Clock]) -> None:
    """The audit's path: lines on a monthly plan, then the clock moves on four months and the sweeper renews every
    line. The terminated and the provisioned line pay nothing; the suspended ones pay what their plan says
    (prepaid-s: the full fee; postpaid-l: its suspended fee of 4.99)."""
    api, clock = clocked
    assert (await api.call("POST", "/v1/tenants", {"id": "mvno", "name": "MVNO", "currency": "EUR"}))[0] == 201
    body = {"id": "shop", "tenant": "mvno", "payment": "prepaid", "balance": 200_000_000}
    assert (await api.call("POST", "/v1/accounts", body))[0] == 201
    body = {"id": "corp", "tenant": "mvno", "payment": "postpaid", "credit_limit": 500_000_000}
    assert (await api.call("POST", "/v1/accounts", body))[0] == 201
    terminated = await add_line(api, "shop", "001010000000201", "prepaid-s")
    suspended = await add_line(api, "shop", "001010000000202", "prepaid-s")
    provisioned = await add_line(api, "shop", "001010000000203", "prepaid-s", state="provisioned")
    active = await add_line(api, "shop", "001010000000204", "prepaid-s")
    kept = await add_line(api, "corp", "001010000000205", "postpaid-l")
    clock.now += 3600
    await set_state(api, terminated, "terminated")
    await set_state(api, suspended, "suspended")
    await set_state(api, kept, "suspended")

    clock.now = int(datetime(2026, 7, 15, 12, tzinfo=PARIS).timestamp())  # 1 April, May, June, July: 4 periods

    async def renewed() -> bool:
        return len(await fees_of(api, active)) == 5

    await swept(api, renewed)
    # prepaid-s: 4.99 for the first three periods, then 9.99.
    assert await fees_of(api, active) == [4_990_000] * 3 + [9_990_000] * 2
    assert await fees_of(api, suspended) == [4_990_000] * 3 + [9_990_000] * 2
    assert await fees_of(api, terminated) == [4_990_000]  # the period it was terminated in, paid while active
    assert await fees_of(api, provisioned) == []
    assert await fees_of(api, kept) == [24_990_000] + [4_990_000] * 4
    status, shop, _ = await api.call("GET", "/v1/accounts/shop")
    assert status == 200 and shop["balance"] == 200_000_000 - 3 * 4_990_000 - 2 * (2 * 4_990_000 + 2 * 9_990_000)
    status, corp, _ = await api.call("GET", "/v1/accounts/corp")
    assert corp["balance"] == -(24_990_000 + 4 * 4_990_000)
    status, bal, _ = await api.call("GET", f"/v1/lines/{kept}/balances")
    assert status == 200 and bal["buckets"] == []  # suspended on postpaid-l: no bundle while suspended
    status, gone, _ = await api.call("GET", f"/v1/lines/{terminated}")
    assert gone["period"] is None  # its periods stopped
    before = api.snapshot()
    status, data, resp = await api.call("PUT", f"/v1/lines/{terminated}/plan", {"plan": "payg"})
    assert_problem(status, data, resp, 409, "line")
    assert api.snapshot() == before


async def test_flexible_pool_follows_its_lines_through_the_api(api: Api) -> None:
    """The audit: suspending and re-activating a line of the acme-trackers pool (iot-flex-50m, 50 MB per active
    line) three times took it to 250 MB with 2 active lines."""
    assert (await api.call("POST", "/v1/tenants", {"id": "demo", "name": "Demo", "currency": "EUR"}))[0] == 201
    body = {
        "id": "acme-trackers",
        "tenant": "demo",
        "payment": "postpaid",
        "credit_limit": 500_000_000,
        "plan": "iot-flex-50m",
    }
    assert (await api.call("POST", "/v1/accounts", body))[0] == 201
    tracker = await add_line(api, "acme-trackers", "208019000000201", "iot-flex-50m")
    await add_line(api, "acme-trackers", "208019000000202", "iot-flex-50m")
    for _ in range(3):
        await set_state(api, tracker, "suspended")
        await set_state(api, tracker, "active")
    status, bal, _ = await api.call("GET", "/v1/accounts/acme-trackers/balances")
    (pool,) = [b for b in bal["buckets"] if b["kind"] == "pool"]
    assert (pool["initial"], pool["remaining"]) == (100_000_000, 100_000_000)
    status, account, _ = await api.call("GET", "/v1/accounts/acme-trackers")
    assert status == 200 and account["active_lines"] == 2
    status, page, _ = await api.call("GET", f"/v1/lines/{tracker}/events?limit=1000")
    assert status == 200
    resized = [e for e in page["events"] if e["kind"] == "pool_resize"]
    # The line's own: added (+50 MB), then three times suspended and re-activated.
    assert [e["impacts"][0]["delta"] for e in resized] == [50_000_000] + [-50_000_000, 50_000_000] * 3


async def test_addon_through_the_api_is_one_purchase_or_nothing(api: Api) -> None:
    """Issue 15 item 8: POST /v1/lines/{line}/addons debits the wallet and grants the bucket in one transaction;
    a wallet that cannot pay gets 409 naming `wallet` and nothing changes; an Idempotency-Key replays."""
    assert (await api.call("POST", "/v1/tenants", {"id": "demo", "name": "Demo", "currency": "EUR"}))[0] == 201
    body = {"id": "ann", "tenant": "demo", "payment": "prepaid", "balance": 7_000_000}
    assert (await api.call("POST", "/v1/accounts", body))[0] == 201
    line = await add_line(api, "ann", "208019000000901", "prepaid-s")  # 4.99 EUR intro fee: 2.01 EUR left
    key = {"Idempotency-Key": "buy-1"}
    status, bought, resp = await api.call("POST", f"/v1/lines/{line}/addons", {"addon": "roam-eu-500m"}, headers=key)
    assert status == 409 and bought["invalidParams"][0]["param"] == "wallet", bought
    before = api.snapshot()
    status, bought, resp = await api.call("POST", f"/v1/lines/{line}/addons", {"addon": "data-1g-7d"}, headers=key)
    assert_problem(status, bought, resp, 409, "wallet")
    assert api.snapshot() == before
    assert (await api.call("POST", "/v1/accounts/ann/topups", {"amount": 5_000_000, "reason": "shop"}))[0] == 200
    status, bought, resp = await api.call("POST", f"/v1/lines/{line}/addons", {"addon": "data-1g-7d"}, headers=key)
    assert status == 200 and bought["price"] == 2_990_000 and bought["account"]["balance"] == 4_020_000
    assert bought["bucket"]["kind"] == "addon" and bought["bucket"]["remaining"] == 1_000_000_000
    status, again, resp = await api.call("POST", f"/v1/lines/{line}/addons", {"addon": "data-1g-7d"}, headers=key)
    assert status == 200 and again == bought and resp.headers.get("Idempotency-Replayed") == "true"
    status, problem, resp = await api.call("POST", f"/v1/lines/{line}/addons", {"addon": "none"})
    assert_problem(status, problem, resp, 404, "addon")
    status, problem, resp = await api.call("POST", f"/v1/lines/{line}/addons", {"addon": 5})
    assert_problem(status, problem, resp, 400, "addon")
    status, page, _ = await api.call("GET", f"/v1/lines/{line}/events?limit=100")
    (purchase,) = [e for e in page["events"] if e["kind"] == "addon"]
    assert [i["delta"] for i in purchase["impacts"]] == [-2_990_000, 1_000_000_000]
