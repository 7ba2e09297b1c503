"""Plans meet accounts, and numbers are reused (issue 11, items 5, 7 and 8), through the CLI and the API.

- A price has a currency: a plan is priced in its own `currency` (default the catalogue's), and only an account of
  that currency takes it, wherever a plan meets an account: a new line, a plan change of a line or an account, a
  new account on a plan, a move, an import. Never relabelled: the engine does not apply a plan of another currency
  that got into the store anyway, and a reload cannot change the currency of a plan.
- One rule (payment type and currency) in one place, chf.core.provisioning.check_plan_fits: `subscriber move`
  obeys it as `set-plan` does.
- A terminated line's IMSI, MSISDN and ICCID go to a new line once their quarantine ([engine]
  <kind>_quarantine_days) is over; the old line keeps them in its record and events and is found by them in
  history.

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


def test_cli_a_terminated_number_is_reused_after_its_quarantine(cli: Cli) -> None:
    home = cli.home
    old = cli.ok("subscriber", "show", "33700000001")
    cli.ok("subscriber", "set-state", "33700000001", "terminated", "--reason", "contract ended")
    terminated_at = cli.now
    add = ["subscriber", "add", "--account", "dave", "--imsi", "208019000000001", "--msisdn", "33700000001"]
    r = refused(cli, home, add, "imsi", status=1)
    assert f"line #{old['id']}" in r.err and "quarantine until" in r.err
    refused(cli, home, [*add[:4], "--imsi", "208019000000098", "--msisdn", "33700000001"], "msisdn", status=1)
    refused(cli, home, [*add[:4], "--imsi", "208019000000098", "--msisdn", "33700000002"], "msisdn", status=1)  # bob's
    (home / "lines.csv").write_text("imsi,msisdn\n208019000000097,33700000001\n")
    r = cli("subscriber", "import", "lines.csv", "--account", "dave")
    assert r.status == 1 and "lines.csv:2: msisdn:" in r.err and "quarantine" in r.err

    cli.now = terminated_at + 90 * DAY  # the default quarantine, 90 days, is over
    new = cli.ok(*add)
    assert new["id"] != old["id"] and new["msisdn"] == "33700000001" and new["account"] == "dave"
    # The number reaches the new line; the old one is still shown by its id, with the identities it gave up.
    assert cli.ok("subscriber", "show", "33700000001")["id"] == new["id"]
    shown = cli.ok("subscriber", "show", f"#{old['id']}")
    assert shown["state"] == "terminated" and shown["msisdn"] == "33700000001"
    assert shown["released"] == {"imsi": cli.now, "msisdn": cli.now}  # its ICCID stays its own
    assert "released:" in cli("subscriber", "show", f"#{old['id']}").out
    text = cli("subscriber", "show", "33700000001").out
    assert f"was line #{old['id']}'s until" in text
    # A search by the old number finds both lines, the old one in history; its events keep its identities.
    found = cli.ok("subscriber", "find", "33700000001")
    assert [(x["line"], x["state"], x["until"]) for x in found] == [
        (old["id"], "terminated", cli.now),
        (new["id"], "active", None),
    ]
    assert f"#{old['id']}" in cli("subscriber", "find", "33700000001").out
    assert all(e["msisdn"] == "33700000001" for e in events_of(cli, f"#{old['id']}") if "msisdn" in e)
    assert {e["kind"] for e in events_of(cli, f"#{old['id']}")} >= {"lifecycle", "plan_change"}
    refused(cli, home, ["subscriber", "find", "999999999"], "identity", status=1)
    # The ICCID is free too, for the import's rows as well.
    (home / "lines.csv").write_text("imsi,iccid\n208019000000097,8933019000000000001\n")
    r = cli("subscriber", "import", "lines.csv", "--account", "dave")
    assert r.status == 0, r.err
    assert cli.ok("subscriber", "show", "8933019000000000001")["imsi"] == "208019000000097"


def test_cli_quarantine_is_a_setting(cli: Cli) -> None:
    config = cli.home / "chf.toml"
    config.write_text(config.read_text() + "\n[engine]\nmsisdn_quarantine_days = 0\nimsi_quarantine_days = 365\n")
    cli.ok("subscriber", "set-state", "33700000003", "terminated", "--reason", "ported out")
    line = cli.ok("subscriber", "add", "--account", "dave", "--imsi", "208019000000096", "--msisdn", "33700000003")
    assert cli.ok("subscriber", "show", "33700000003")["id"] == line["id"]
    cli.now += 364 * DAY
    refused(cli, cli.home, ["subscriber", "add", "--account", "dave", "--imsi", "208019000000003"], "imsi", status=1)
    config.write_text(config.read_text() + "iccid_quarantine_days = -1\n")
    r = cli("subscriber", "show", "33700000003")
    assert r.status == 2 and "[engine] iccid_quarantine_days" in r.err, r.err


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


async def test_activation_never_starts_a_plan_of_another_currency(api: tuple[Api, Clock]) -> None:
    """A provisioned USD line on a euro plan (stored before the check existed): activating it starts no period of
    that plan, so no euro fee is taken from the dollar wallet (chf.core.renewals.start_line_plan)."""
    client, _ = api
    body = {"account": "uma", "imsi": "310150000000001", "plan": "prepaid-usd", "state": "provisioned"}
    line = await new_line(client, body)

    def forge(txn: Any, _engine: Any, _now: int) -> Any:
        sub = txn.get_subscriber(line["id"])
        previous = Subscriber.decode(sub.encode())
        sub.plan = "prepaid-s"
        txn.put_subscriber(sub, previous)
        return OpResult(None)

    await client.service.operate(forge)
    status, _, _ = await client.call("POST", f"/v1/lines/{line['id']}/state", {"state": "active", "reason": "x"})
    assert status == 200
    _, acct, _ = await client.call("GET", "/v1/accounts/uma")
    assert acct["balance"] == 20_000_000  # nothing charged: no USD plan runs, the euro one is never applied
    status, page, _ = await client.call("GET", f"/v1/lines/{line['id']}/events?limit=1000")
    assert status == 200
    assert [e for e in page["events"] if e["kind"] in ("renewal", "plan_change", "bonus")] == []


async def test_api_putting_the_plan_a_line_or_account_is_on_again_charges_nothing(api: tuple[Api, Clock]) -> None:
    """PUT is idempotent (RFC 9110 9.2.2): a client that retries a plan change after a timeout, or sets the plan
    already running, must not pay the period's fee again nor get its allowances again."""
    client, clock = api
    line = await new_line(client, {"account": "alice", "imsi": "208010000000001", "plan": "prepaid-s"})
    status, _, _ = await client.call("PUT", "/v1/accounts/bob/plan", {"plan": "family-50g", "reason": "new"})
    assert status == 200
    before = client.snapshot()
    wallets = [(await client.call("GET", f"/v1/accounts/{a}"))[1]["balance"] for a in ("alice", "bob")]
    clock.now += 3600
    for _ in range(2):
        status, got, _ = await client.call("PUT", f"/v1/lines/{line['id']}/plan", {"plan": "prepaid-s", "reason": "x"})
        assert status == 200 and got["plan"] == "prepaid-s"
        status, got, _ = await client.call("PUT", "/v1/accounts/bob/plan", {"plan": "family-50g", "reason": "x"})
        assert status == 200 and got["plan"] == "family-50g"
    assert client.snapshot() == before
    assert [(await client.call("GET", f"/v1/accounts/{a}"))[1]["balance"] for a in ("alice", "bob")] == wallets
    status, changed, _ = await client.call("PUT", f"/v1/lines/{line['id']}/plan", {"plan": "payg", "reason": "x"})
    assert status == 200 and changed["plan"] == "payg" and client.snapshot() != before  # a change still changes


async def test_api_a_terminated_number_is_reused_after_its_quarantine(api: tuple[Api, Clock]) -> None:
    client, clock = api
    body = {"account": "alice", "imsi": "208010000000001", "msisdn": "33600000001", "iccid": "8933010000000000001"}
    old = await new_line(client, {**body, "plan": "prepaid-s"})
    status, _, _ = await client.call("POST", f"/v1/lines/{old['id']}/state", {"state": "terminated", "reason": "end"})
    assert status == 200
    retry = {**body, "account": "bob", "imsi": "208010000000002", "iccid": None, "plan": "postpaid-l"}
    problem = await refused_by_api(client, "POST", "/v1/lines", retry, 409, "msisdn")
    assert "quarantine until" in problem["detail"]
    clock.now += 90 * DAY - 1
    await refused_by_api(client, "POST", "/v1/lines", retry, 409, "msisdn")
    clock.now += 1
    new = await new_line(client, retry)
    assert new["msisdn"] == "33600000001"
    # Charging by the number reaches the new line.
    request = ChargingRequest(INITIAL, "gy:s2", 0, [("msisdn", "33600000001")], [UnitRequest(10, requested={})])
    answer = await client.service.charge(request)
    with client.service.read() as txn:
        session = txn.get_session("gy:s2")
    assert answer.result == "success" and session is not None and session.subscriber == new["id"], answer
    status, shown, _ = await client.call("GET", "/v1/lines/33600000001")
    assert status == 200 and shown["id"] == new["id"]
    assert shown["former_holders"] == [{"kind": "msisdn", "line": old["id"], "until": clock.now}]
    status, gone, _ = await client.call("GET", f"/v1/lines/{old['id']}")
    assert status == 200 and gone["state"] == "terminated" and gone["msisdn"] == "33600000001"
    assert gone["released"] == {"msisdn": clock.now}  # its IMSI and ICCID were not asked for: still its own
    status, found, _ = await client.call("GET", "/v1/identities/33600000001")
    assert status == 200 and [(x["line"], x["until"]) for x in found["lines"]] == [
        (old["id"], clock.now),
        (new["id"], None),
    ]
    status, found, _ = await client.call("GET", "/v1/identities/8933010000000000001")
    assert status == 200 and [(x["kind"], x["line"], x["until"]) for x in found["lines"]] == [
        ("iccid", old["id"], None)
    ]
    status, problem, resp = await client.call("GET", "/v1/identities/000")
    assert_problem(status, problem, resp, 404, "identity")
    status, page, _ = await client.call("GET", f"/v1/lines/{old['id']}/events?limit=1000")
    assert status == 200 and page["events"] and all(e["subscriber"] == old["id"] for e in page["events"])
