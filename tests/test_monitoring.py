"""The Grafana dashboard and the Prometheus alerting rules of deploy/: promtool checks and unit-tests the rules; a
real Prometheus scrapes a real `chf serve` and every query of the dashboard must return data, so that a renamed
metric or label breaks a test here and not a NOC's screen."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import yaml

from chf.core.model import ChargingAnswer, UnitAnswer
from chf.runtime import metrics
from gy.client import DiameterClient, Mscc, ccr_avps
from gy.codec import find
from tests.serve_process import IMSI, PEER, TOKEN, Ports, Serve, init_demo, write_config
from tests.support import REPO, free_port, require_tool

DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "chf-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "chf-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "chf-dashboard.json"
# What Grafana puts in place of the dashboard's variables, for a query sent to Prometheus directly.
VARIABLES = {"$__rate_interval": "1m", "$instance": ".+"}
METRIC = re.compile(r"\bchf_[a-z0-9_]+")


@pytest.fixture
def home() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="chf-mon-") as name:
        yield Path(name)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the dashboard, variables replaced."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", ()):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"{panel['title']}: a dashboard variable the test does not know: {expr}"
            out.append((panel["title"], expr))
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":  # label_values(METRIC, label): the metric must exist
            metric = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["query"]["query"])
            assert metric is not None, variable
            out.append((f"variable {variable['name']}", metric[1]))
    return out


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def exported_names() -> set[str]:
    """Every sample name chf's /metrics can show (the registry of chf/runtime/metrics.py)."""
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for family in metrics.REGISTRY.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


# ----------------------------------------------------------------------------------------------------------------------
# static checks
# ----------------------------------------------------------------------------------------------------------------------
def test_dashboard_and_rules_name_only_exported_metrics() -> None:
    """Also the series a short test run cannot produce (export failures, Nchf notifications, ...)."""
    exported = exported_names()
    used = {name for _, expr in dashboard_queries() for name in METRIC.findall(expr)}
    used |= {name for expr in rule_expressions().values() for name in METRIC.findall(expr)}
    assert used - exported == set()
    assert len(used) >= 15


def test_every_alert_has_a_runbook_and_a_promtool_test() -> None:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert len(rule["annotations"]["runbook"].splitlines()) >= 1, rule["alert"]
    tested = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    firing = {case["alertname"] for test in tested for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert firing == {rule["alert"] for rule in rules}


def test_grants_denials_and_store_fill_are_counted() -> None:
    def count(outcome: str, result: str) -> float:
        return metrics.REGISTRY.get_sample_value("chf_quota_answers_total", {"outcome": outcome, "result": result}) or 0

    before = count("granted", "success"), count("denied", "credit_limit_reached"), count("denied", "user_unknown")
    request = SimpleNamespace(units=[])
    units = [UnitAnswer(10, granted=1000, unit="bytes"), UnitAnswer(20, "credit_limit_reached"), UnitAnswer(30)]
    metrics.observe_charge(request, ChargingAnswer("success", "s", 1, units))
    metrics.observe_charge(request, ChargingAnswer("user_unknown", "s", 1))
    metrics.observe_charge(request, ChargingAnswer("success", "s", 1, units, duplicate=True))  # counted once
    after = count("granted", "success"), count("denied", "credit_limit_reached"), count("denied", "user_unknown")
    # Rating group 30 answered success without a grant (a final report): neither.
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]


def test_promtool_check_and_test_rules() -> None:
    promtool = require_tool("promtool")
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in done.stdout
    done = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ----------------------------------------------------------------------------------------------------------------------
# a real Prometheus scraping a real chf serve
# ----------------------------------------------------------------------------------------------------------------------
class Prometheus:
    def __init__(self, home: Path, target: int) -> None:
        self.port = free_port()
        config = home / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [{"job_name": "chf", "static_configs": [{"targets": [f"127.0.0.1:{target}"]}]}],
                }
            ),
            encoding="utf-8",
        )
        self.log = (home / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                require_tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={home / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.log.flush()
        raise AssertionError(f"prometheus not ready:\n{Path(self.log.name).read_text()[-3000:]}")

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def traffic(ports: Ports) -> DiameterClient:
    """Requests that make every series of the dashboard exist: grants, a denial, a retransmission, a 'too busy'
    (two CCRs in one segment with max_inflight_per_peer = 1), Nchf answers and a refusal, API calls, exports.
    Returns the Gy client, still connected (a peer up)."""
    client, _ = await DiameterClient.connect("127.0.0.1", ports.gy, PEER, "test")

    def ccr(session: str, rtype: int, number: int, **kw: Any) -> list[bytes]:
        return ccr_avps(session, rtype, number, origin_host=PEER, origin_realm="test", **kw)

    def result(answer: Any) -> int:
        code = find(answer.avps, 268)
        assert code is not None
        return int(code.u32())

    assert result(await client.ccr(ccr("m;1", 1, 0, imsi=IMSI, mscc=[Mscc(10, {})]))) == 2001
    update = ccr("m;1", 2, 1, mscc=[Mscc(10, {}, used=[{"bytes": 1000}])])
    assert result(await client.ccr(update)) == 2001
    assert result(await client.ccr(update)) == 2001  # a retransmission: the stored answer
    assert result(await client.ccr(ccr("m;2", 1, 0, imsi="208019999999999", mscc=[Mscc(10, {})]))) == 5030
    first, one = client.request_bytes(272, 4, ccr("m;3", 1, 0, imsi=IMSI, mscc=[Mscc(10, {})]))
    second, two = client.request_bytes(272, 4, ccr("m;4", 1, 0, imsi=IMSI, mscc=[Mscc(10, {})]))
    answers = [client.expect(first), client.expect(second)]
    client.send_raw(one + two)
    assert sorted(result(a) for a in await asyncio.gather(*answers)) == [2001, 3004]

    body = {
        "nfConsumerIdentification": {"nodeFunctionality": "SMF"},
        "invocationTimeStamp": "2026-01-01T00:00:00Z",
        "invocationSequenceNumber": 0,
        "subscriberIdentifier": f"imsi-{IMSI}",
        "multipleUnitUsage": [{"ratingGroup": 10, "requestedUnit": {}}],
    }
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        nchf = f"http://127.0.0.1:{ports.nchf}/nchf-convergedcharging/v3/chargingdata"
        async with http.post(nchf, json=body) as response:
            assert response.status == 201, await response.text()
        async with http.post(nchf, data=b"{not json", headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400
        async with http.get(f"http://127.0.0.1:{ports.api}/v1/lines/{IMSI}", headers=auth) as response:
            assert response.status == 200, await response.text()
    return client


def wait_for_data(prometheus: Prometheus, queries: list[tuple[str, str]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        empty = [(title, expr) for title, expr in queries if not prometheus.query(expr)]
        if not empty:
            return
        if time.monotonic() > deadline:
            raise AssertionError("dashboard queries without data:\n" + "\n".join(f"  {t}: {e}" for t, e in empty))
        time.sleep(0.5)


async def test_prometheus_scrapes_chf_serve_and_every_dashboard_query_has_data(home: Path) -> None:
    require_tool("prometheus")
    ports = Ports()
    write_config(home, ports, gy="max_inflight_per_peer = 1")
    init_demo(home)
    serve = Serve(home)
    prometheus: Prometheus | None = None
    client: DiameterClient | None = None
    try:
        serve.wait_for(r"event=ready")
        prometheus = Prometheus(home, ports.api)
        client = await traffic(ports)
        await asyncio.to_thread(prometheus.wait_ready)
        await asyncio.to_thread(wait_for_data, prometheus, dashboard_queries())

        assert [float(s["value"][1]) for s in prometheus.query('up{job="chf"}')] == [1.0]
        fill = prometheus.query("chf_store_used_bytes / chf_store_map_size_bytes")
        assert 0 < float(fill[0]["value"][1]) < 1
        assert prometheus.query('chf_peers_up{interface="gy"} == 1')
        assert prometheus.query('chf_quota_answers_total{outcome="denied", result="user_unknown"} == 1')
        # The alerting rules load into a real Prometheus and evaluate against real series without error.
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        assert len(rules) == len(rule_expressions())
        deadline = time.monotonic() + 10
        while any(r["health"] != "ok" for r in rules) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        assert {r["name"]: r["health"] for r in rules if r["health"] != "ok"} == {}
    finally:
        if client is not None:
            client.close()
        if prometheus is not None:
            prometheus.stop()
        assert serve.stop() == 0
