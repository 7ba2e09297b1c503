"""Plans meet accounts (issue 11, items 5 and 7), through the CLI and the API.

- A price has a currency: a plan is priced in its own `currency` (default the catalogue's), and only an account of
  that currency takes it, wherever a plan meets an account: a new line, a plan change of a line or an account, a
  new account on a plan, a move, an import. Never relabelled: the engine does not apply a plan of another currency
  that got into the store anyway, and a reload cannot change the currency of a plan.
- One rule (payment type and currency) in one place, chf.core.provisioning.check_plan_fits: `subscriber move`
  obeys it as `set-plan` does.

The CLI runs through its real entry point (tests/test_cli.py's fixtures), the API over real HTTP against a real
service (tests/test_api.py's).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chf.api.server import ApiConfig, ApiServer
from chf.core.catalogue_loader import load_catalogue
from chf.core.engine import EngineConfig
from chf.core.model import INITIAL, ChargingRequest, OpResult, UnitRequest
from chf.runtime.service import ChargingService
from store.lmdbstore import Store
from store.schema import Subscriber
from tests.test_api import CATALOGUE, TOKEN, Api, assert_problem
from tests.test_cli import DEMO, Result, refused
from tools.cli import main
from tools.cli_env import Env

DAY = 86400

# A plan priced in US dollars beside the demo catalogue's euro plans: the same tariffs, in the plan's currency.
USD_PLAN = """
[plans.prepaid-usd]
description = "Prepaid in US dollars"
payment = "prepaid"
currency = "USD"
fee = 4_000_000
  [plans.prepaid-usd.rating]
  "10" = "data-payg"
  "40" = "sms-payg"
  [[plans.prepaid-usd.allowances]]
  name = "data"
  unit = "bytes"
  amount = 1_000_000_000
  rating_groups = [10]
"""


# ----------------------------------------------------------------------------------------------------------------------
# the CLI
# ----------------------------------------------------------------------------------------------------------------------
class Cli:
    """`chf` in a directory of its own (configuration, catalogue with the USD plan, store), at a clock the test
    sets: `chf` commands take their time from `Env.now`."""

    def __init__(self, home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.home = home
        self.capsys = capsys
        self.now = 1_780_000_000  # 2026-05-28
        monkeypatch.chdir(home)
        monkeypatch.setattr(Env, "now", lambda _env: self.now)

    def __call__(self, *args: str) -> Result:
        try:
            status = main(["--config", "chf.toml", *args])
        except SystemExit as exc:
            status = int(exc.code or 0)
        captured = self.capsys.readouterr()
        return Result(status, captured.out, captured.err)

    def ok(self, *args: str) -> Any:
        r = self("--json", *args)
        assert r.status == 0, r.err
        return r.json()


@pytest.fixture
def home() -> Iterator[Path]:
    """Not pytest's tmp_path, which concurrent pytest runs of one user prune (tests/test_cli.py says more)."""
    with tempfile.TemporaryDirectory(prefix="chf-money-") as name:
        yield Path(name)


@pytest.fixture
def cli(home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    (home / "catalogue.toml").write_text(CATALOGUE.read_text() + USD_PLAN)
    (home / "chf.toml").write_text(
        '[chf]\ndata_dir = "var"\ncatalogue = "catalogue.toml"\n\n[store]\npath = "var/chf.lmdb"\nmap_size_mb = 256\n'
    )
    run = Cli(home, capsys, monkeypatch)
    r = run("init", "--demo", "--demo-file", str(DEMO))  # the demo data take the demo catalogue's plans
    assert r.status == 0, r.err
    run.ok("tenant", "create", "us", "--currency", "USD")
    run.ok("account", "create", "uma", "--tenant", "us", "--payment", "prepaid", "--balance", "20")
    run.ok("account", "create", "ulf", "--tenant", "us", "--payment", "postpaid", "--credit-limit", "50")
    return run


def events_of(cli: Cli, ref: str) -> list[dict[str, Any]]:
    r = cli("--json", "events", "tail", "-n", "1000", "--line", ref)
    assert r.status == 0, r.err
    return [json.loads(x) for x in r.out.splitlines() if x]


def test_cli_a_plan_is_taken_only_by_accounts_of_its_currency(cli: Cli) -> None:
    home = cli.home
    add = ["subscriber", "add", "--account", "uma", "--imsi", "310150000000001", "--msisdn", "12025550101"]
    # The audit's case: a USD account on prepaid-s (4.99 EUR the first months) was charged "4.99 USD".
    r = refused(cli, home, [*add, "--plan", "prepaid-s"], "plan", status=1)
    assert "prepaid-s" in r.err and "EUR" in r.err and "USD" in r.err
    line = cli.ok(*add, "--plan", "prepaid-usd")
    assert cli.ok("account", "show", "uma")["balance"] == 16_000_000  # 20 USD - the plan's 4 USD fee
    refused(cli, home, ["subscriber", "set-plan", f"#{line['id']}", "payg"], "plan", status=1)
    refused(cli, home, ["subscriber", "set-plan", "208019000000001", "prepaid-usd"], "plan", status=1)  # alice: EUR
    refused(cli, home, ["account", "set-plan", "ulf", "family-50g"], "plan", status=1)
    create = ["account", "create", "ula", "--tenant", "us", "--payment", "postpaid", "--credit-limit", "9"]
    refused(cli, home, [*create, "--plan", "family-50g"], "plan", status=1)
    # Moves (within a tenant, whose accounts may hold other currencies than the tenant's: `--currency`): a
    # USD-priced line into a euro account, a euro-priced line into a dollar account.
    cli.ok("account", "create", "eve", "--tenant", "us", "--payment", "prepaid", "--currency", "EUR")
    cli.ok("subscriber", "add", "--account", "eve", "--imsi", "310150000000002", "--plan", "prepaid-s")
    r = refused(cli, home, ["subscriber", "move", f"#{line['id']}", "eve", "--reason", "x"], "account", status=1)
    assert "USD" in r.err and "EUR" in r.err
    refused(cli, home, ["subscriber", "move", "310150000000002", "uma", "--reason", "x"], "account", status=1)
    # Import: the row naming the field, the others in.
    (home / "lines.csv").write_text(
        "imsi,account,plan\n310150000000003,uma,prepaid-s\n310150000000004,uma,prepaid-usd\n310150000000005,uma,\n"
    )
    r = cli("subscriber", "import", "lines.csv")
    assert r.status == 1 and "lines.csv:2: plan:" in r.err and "USD" in r.err, r.err
    assert "imported 2, skipped 1" in r.out
    # Nothing anywhere was priced in a currency other than its plan's.
    for ref in (f"#{line['id']}", "310150000000004"):
        charged = [e for e in events_of(cli, ref) if e.get("charge")]
        assert charged and all(e["currency"] == "USD" and e["plan"] == "prepaid-usd" for e in charged)
    shown = cli.ok("catalogue", "show")
    assert {p["name"]: p["currency"] for p in shown["plans"]}["prepaid-usd"] == "USD"
    assert "4.00 USD" in cli("catalogue", "show", "prepaid-usd").out


def test_cli_catalogue_check_names_plans_whose_currency_no_longer_fits(cli: Cli) -> None:
    cli.ok("subscriber", "add", "--account", "uma", "--imsi", "310150000000001", "--plan", "prepaid-usd")
    edited = (cli.home / "catalogue.toml").read_text().replace('currency = "USD"', 'currency = "CAD"')
    (cli.home / "edited.toml").write_text(edited)
    assert cli("catalogue", "check", "edited.toml").status == 0  # valid on its own
    r = cli("catalogue", "check", "edited.toml", "--store")
    assert r.status == 2 and "prepaid-usd" in r.err and "currency" in r.err and "USD" in r.err, r.err
    (cli.home / "bad.toml").write_text(edited.replace('currency = "CAD"', 'currency = "usd"'))
    r = cli("catalogue", "check", "bad.toml")
    assert r.status == 2 and "plan 'prepaid-usd': currency: must be an ISO 4217 code" in r.err, r.err


def test_cli_move_obeys_the_payment_type_rule_of_set_plan(cli: Cli) -> None:
    """The audit moved a prepaid-plan line into a postpaid account: `set-plan` refused the same pairing."""
    home = cli.home
    refused(cli, home, ["subscriber", "set-plan", "208019000000002", "prepaid-s"], "plan", status=1)  # bob: postpaid
    r = refused(cli, home, ["subscriber", "move", "208019000000001", "bob", "--reason", "merge"], "account", status=1)
    assert "prepaid" in r.err and "postpaid" in r.err
    # A line without a plan of its own goes anywhere; so does one whose plan fits the new account.
    cli.ok("subscriber", "add", "--account", "alice", "--imsi", "208019000000099")
    assert cli.ok("subscriber", "move", "208019000000099", "bob", "--reason", "merge")["line"]["account"] == "bob"
    assert cli.ok("subscriber", "move", "208019000000001", "dave", "--reason", "x")["line"]["account"] == "dave"


# ----------------------------------------------------------------------------------------------------------------------
# the API
# ----------------------------------------------------------------------------------------------------------------------
class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> float:
        return float(self.now)


@pytest.fixture
async def api(home: Path) -> AsyncIterator[tuple[Api, Clock]]:
    """A service on an injected clock, its catalogue a copy with the USD plan (a file the test may edit)."""
    catalogue = home / "catalogue.toml"
    catalogue.write_text(CATALOGUE.read_text() + USD_PLAN)
    clock = Clock(1_780_000_000)
    store = Store(home / "chf.lmdb")
    service = ChargingService(
        store, load_catalogue(catalogue), catalogue_path=str(catalogue), clock=clock, engine_config=EngineConfig()
    )
    await service.start()
    server = ApiServer(service, ApiConfig(port=0, tokens={"crm": TOKEN}))
    await server.start()
    async with aiohttp.ClientSession() as http:
        client = Api(server, http, service)
        for tenant in ({"id": "eu", "currency": "EUR"}, {"id": "us", "currency": "USD"}):
            assert (await client.call("POST", "/v1/tenants", tenant))[0] == 201
        for body in (
            {"id": "alice", "tenant": "eu", "payment": "prepaid", "balance": 20_000_000},
            {"id": "bob", "tenant": "eu", "payment": "postpaid", "credit_limit": 50_000_000},
            {"id": "uma", "tenant": "us", "payment": "prepaid", "balance": 20_000_000},
            {"id": "ulf", "tenant": "us", "payment": "postpaid", "credit_limit": 50_000_000},
        ):
            assert (await client.call("POST", "/v1/accounts", body))[0] == 201
        yield client, clock
    await server.stop()
    await service.stop()
    store.close()


async def refused_by_api(api: Api, method: str, path: str, body: Any, status: int, field: str) -> dict[str, Any]:
    before = api.snapshot()
    got, data, resp = await api.call(method, path, body)
    assert_problem(got, data, resp, status, field)
    assert api.snapshot() == before
    return dict(data)


async def new_line(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    status, line, _ = await api.call("POST", "/v1/lines", body)
    assert status == 201, line
    return dict(line)


async def test_api_a_plan_is_taken_only_by_accounts_of_its_currency(api: tuple[Api, Clock]) -> None:
    client, _ = api
    line = {"account": "uma", "imsi": "310150000000001", "msisdn": "12025550101"}
    problem = await refused_by_api(client, "POST", "/v1/lines", {**line, "plan": "prepaid-s"}, 409, "plan")
    assert "EUR" in problem["detail"] and "USD" in problem["detail"]
    usd = await new_line(client, {**line, "plan": "prepaid-usd"})
    eur = await new_line(client, {"account": "alice", "imsi": "208010000000001", "plan": "prepaid-s"})
    await refused_by_api(client, "PUT", f"/v1/lines/{usd['id']}/plan", {"plan": "payg", "reason": "x"}, 409, "plan")
    await refused_by_api(client, "PUT", f"/v1/lines/{eur['id']}/plan", {"plan": "prepaid-usd"}, 409, "plan")
    await refused_by_api(client, "PUT", "/v1/accounts/ulf/plan", {"plan": "family-50g"}, 409, "plan")
    body = {"id": "ula", "tenant": "us", "payment": "postpaid", "credit_limit": 1, "plan": "iot-flex-50m"}
    await refused_by_api(client, "POST", "/v1/accounts", body, 409, "plan")
    move = {"account": "alice", "reason": "x"}
    await refused_by_api(client, "POST", f"/v1/lines/{usd['id']}/move", move, 409, "account")
    await refused_by_api(client, "POST", f"/v1/lines/{eur['id']}/move", {**move, "account": "uma"}, 409, "account")
    status, acct, _ = await client.call("GET", "/v1/accounts/uma")
    assert status == 200 and acct["balance"] == 16_000_000  # 20 USD - 4 USD: the USD plan's fee, in USD


async def test_api_move_obeys_the_payment_type_rule(api: tuple[Api, Clock]) -> None:
    client, _ = api
    line = await new_line(client, {"account": "alice", "imsi": "208010000000001", "plan": "prepaid-s"})
    await refused_by_api(client, "PUT", f"/v1/lines/{line['id']}/plan", {"plan": "postpaid-l"}, 409, "plan")
    problem = await refused_by_api(
        client, "POST", f"/v1/lines/{line['id']}/move", {"account": "bob", "reason": "merge"}, 409, "account"
    )
    assert "prepaid" in problem["detail"] and "postpaid" in problem["detail"]
    bare = await new_line(client, {"account": "alice", "imsi": "208010000000002"})
    status, moved, _ = await client.call("POST", f"/v1/lines/{bare['id']}/move", {"account": "bob", "reason": "x"})
    assert status == 200 and moved["account"] == "bob"


async def test_api_a_plan_keeps_its_currency_across_reloads(api: tuple[Api, Clock]) -> None:
    client, _ = api
    catalogue = Path(client.service.catalogue_path or "")
    text = catalogue.read_text()
    catalogue.write_text(text.replace('currency = "USD"', 'currency = "CAD"'))
    status, problem, _ = await client.call("POST", "/v1/catalogue/reload")
    assert status == 422 and any("prepaid-usd" in e and "currency" in e for e in problem["errors"]), problem
    assert client.service.catalogue.plans["prepaid-usd"].currency == "USD"  # the running catalogue is kept
    catalogue.write_text(text.replace("Prepaid in US dollars", "Prepaid, in US dollars"))
    assert (await client.call("POST", "/v1/catalogue/reload"))[0] == 200


async def test_engine_never_applies_a_plan_of_another_currency(api: tuple[Api, Clock]) -> None:
    """A USD line on a euro plan that got into the store without the check (stored before it existed): nothing is
    granted at the plan's prices and no period fee is taken from the dollar wallet."""
    client, clock = api
    line = await new_line(client, {"account": "uma", "imsi": "310150000000001", "plan": "prepaid-usd"})

    def forge(txn: Any, _engine: Any, _now: int) -> Any:
        sub = txn.get_subscriber(line["id"])
        previous = Subscriber.decode(sub.encode())
        sub.plan = "prepaid-s"
        txn.put_subscriber(sub, previous)
        bs = txn.get_line_balances(sub.id)
        bs.plan = "prepaid-s"
        txn.put_line_balances(sub.id, bs)
        return OpResult(None)

    await client.service.operate(forge)
    request = ChargingRequest(INITIAL, "gy:s1", 0, [("imsi", "310150000000001")], [UnitRequest(10, requested={})])
    answer = await client.service.charge(request)
    assert answer.result != "success" and not answer.units[0].granted, answer
    clock.now += 70 * DAY  # two period ends: the next request brings the line's periods up to date
    request = ChargingRequest(INITIAL, "gy:s2", 0, [("imsi", "310150000000001")], [UnitRequest(10, requested={})])
    assert not (await client.service.charge(request)).units[0].granted
    status, page, _ = await client.call("GET", f"/v1/lines/{line['id']}/events?limit=1000")
    assert status == 200
    renewals = [e for e in page["events"] if e["kind"] == "renewal" and e.get("plan") == "prepaid-s"]
    assert renewals == []
    _, acct, _ = await client.call("GET", "/v1/accounts/uma")
    assert acct["balance"] == 16_000_000  # the first USD fee, nothing since
