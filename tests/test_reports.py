"""Usage and revenue reports on a store charged through the real engine, checked against hand-computed numbers.

Prices come from conf/catalogue.toml: prepaid-s costs 4.99 EUR in its first (introductory) month; postpaid-l
24.99 EUR; on payg an SMS is 0.08 EUR, daytime voice 0.002 EUR per second, data 0.01 EUR per started MB.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chf.core import provisioning
from chf.core.model import DIRECT_DEBITING, EVENT, REFUND_ACCOUNT, SUCCESS, ChargingRequest, UnitRequest
from store.lmdbstore import Store
from tests.charging_fixture import CATALOGUE, Charging, at
from tools import cli
from tools.reconcile import parse_day
from tools.reports import build_report, divide_half_even, money, percent

LINE_A = "001010000000011"  # prepaid-s
LINE_P = "001010000000012"  # payg
LINE_C = "001010000000013"  # postpaid-l, tenant t2

FROM, TO = "2026-11-02", "2026-11-08"


@pytest.fixture(scope="module")
def charged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The store, and the sequence number the "file" exporter cursor was left at."""
    path = tmp_path_factory.mktemp("reports") / "chf.lmdb"
    c = Charging(path)
    t0 = at("2026-11-02T00:00:00")
    c.tenant("t1", t0)
    c.tenant("t2", t0)
    c.account("pre", "t1", "prepaid", t0, balance=100_000_000)
    c.account("paygacct", "t1", "prepaid", t0, balance=50_000_000)
    c.account("post", "t2", "postpaid", t0, credit_limit=1_000_000_000)
    c.line("pre", LINE_A, t0, plan="prepaid-s")
    c.line("paygacct", LINE_P, t0, plan="payg")
    c.line("post", LINE_C, t0, plan="postpaid-l")
    # A: 1.5 GB: the 1 GB welcome bonus first, then 0.5 GB of the monthly 5 GB; 10 minutes of voice. No charge.
    assert c.use(LINE_A, 10, "bytes", 1_500_000_000, at("2026-11-03T10:00:00")) == 0
    assert c.use(LINE_A, 20, "seconds", 600, at("2026-11-03T11:00:00")) == 0
    # P on payg (Wednesday 11:00 in Paris, daytime): one SMS (a direct debit, refunded below), two minutes,
    # 2.5 MB (3 started MB)
    sms = ChargingRequest(
        EVENT, "gy:sms;1", 0, [("imsi", LINE_P)], [UnitRequest(40, requested={"events": 1})], action=DIRECT_DEBITING
    )
    answer = c.store.write(lambda txn: c.engine.charge(txn, sms, at("2026-11-04T10:00:00")))
    assert answer.result == SUCCESS and answer.cost == 80_000
    assert c.use(LINE_P, 20, "seconds", 120, at("2026-11-04T10:00:00")) == 240_000
    assert c.use(LINE_P, 10, "bytes", 2_500_000, at("2026-11-04T10:00:00")) == 30_000
    refund = ChargingRequest(
        EVENT, "gy:refund;1", 0, [("imsi", LINE_P)], [UnitRequest(40, requested={"events": 1})], action=REFUND_ACCOUNT
    )
    answer = c.store.write(lambda txn: c.engine.charge(txn, refund, at("2026-11-05T10:00:00")))
    assert answer.result == SUCCESS and answer.cost == 80_000
    c.store.write(
        lambda txn: provisioning.adjust(
            txn, c.engine, "pre", 5_000_000, now=at("2026-11-05T12:00:00"), actor="test", reason="goodwill"
        )
    )
    with c.store.read() as txn:
        cursor = txn.last_event_seq()
    c.store.write(lambda txn: txn.put_cursor("file", cursor))
    c.store.write(lambda txn: txn.put_cursor("nats", 0))
    # C: 4 MB inside the window from the 100 GB allowance, 9 MB after it
    assert c.use(LINE_C, 10, "bytes", 4_000_000, at("2026-11-06T10:00:00")) == 0
    assert c.use(LINE_C, 10, "bytes", 9_000_000, at("2026-11-20T10:00:00")) == 0
    c.close()
    return path, cursor


def report(path: Path, by: str) -> dict:
    store = Store(path)
    try:
        return build_report(store, parse_day(FROM, "--from"), parse_day(TO, "--to"), by)
    finally:
        store.close()


def test_by_tenant(charged: tuple[Path, int]) -> None:
    r = report(charged[0], "tenant")
    groups = {g["group"]: g for g in r["groups"]}
    assert set(groups) == {"t1", "t2"}
    t1, t2 = groups["t1"], groups["t2"]
    assert t1["usage"]["bytes"] == {"used": 1_502_500_000, "events": 2}
    assert t1["usage"]["seconds"] == {"used": 720, "events": 2}
    assert t1["usage"]["events"] == {"used": 1, "events": 1}
    assert t1["usage_lines"] == 2
    assert t1["charges"] == {"EUR": 350_000}
    assert t1["fees"] == {"EUR": 4_990_000}
    assert t1["refunds"] == {"EUR": -80_000}
    assert t1["adjustments"] == {"EUR": 5_000_000}
    assert t1["revenue"] == {"EUR": 350_000 + 4_990_000 - 80_000}
    assert t1["active_lines"] == {"EUR": 2}
    assert t1["arpu"] == {"EUR": 2_630_000}
    allowances = {
        a["name"]: (a["unit"], a["granted"], a["consumed"], a["utilisation_percent"]) for a in t1["allowances"]
    }
    assert allowances == {
        "welcome-data": ("bytes", 1_000_000_000, 1_000_000_000, "100.00"),
        "data": ("bytes", 5_000_000_000, 500_000_000, "10.00"),
        "voice": ("seconds", 7_200, 600, "8.33"),
        "sms": ("events", 500, 0, "0.00"),
    }
    # t2: the usage of 2026-11-20 is outside the window
    assert t2["usage"]["bytes"] == {"used": 4_000_000, "events": 1}
    assert t2["revenue"] == {"EUR": 24_990_000}
    assert t2["arpu"] == {"EUR": 24_990_000}
    data = next(a for a in t2["allowances"] if a["name"] == "data")
    assert (data["granted"], data["consumed"], data["utilisation_percent"]) == (100_000_000_000, 4_000_000, "0.00")


def test_by_plan_and_account(charged: tuple[Path, int]) -> None:
    plans = {g["group"]: g for g in report(charged[0], "plan")["groups"]}
    assert plans["prepaid-s"]["revenue"] == {"EUR": 4_990_000}
    assert plans["payg"]["revenue"] == {"EUR": 270_000}
    assert plans["payg"]["arpu"] == {"EUR": 270_000}
    assert plans["postpaid-l"]["revenue"] == {"EUR": 24_990_000}
    assert plans["prepaid-s"]["usage"]["bytes"]["used"] == 1_500_000_000
    # the account-level goodwill adjustment names no line, and the account has no plan of its own
    assert plans["(no plan)"]["adjustments"] == {"EUR": 5_000_000}
    accounts = {g["group"]: g for g in report(charged[0], "account")["groups"]}
    assert set(accounts) == {"pre", "paygacct", "post"}
    assert accounts["paygacct"]["charges"] == {"EUR": 350_000}
    assert accounts["paygacct"]["refunds"] == {"EUR": -80_000}


def test_unexported_usage_follows_the_cursors(charged: tuple[Path, int]) -> None:
    path, cursor = charged
    r = report(path, "tenant")["unexported"]
    assert r["note"] is None
    cursors = {c["name"]: c for c in r["cursors"]}
    last = r["last_event"]
    assert cursors["file"]["cursor"] == cursor
    assert cursors["file"]["pending_events"] == last - cursor
    assert cursors["file"]["pending_usage_events"] == 2  # both of C's sessions, whatever their day
    assert cursors["file"]["pending_used"]["bytes"] == 13_000_000
    assert cursors["nats"]["pending_events"] == last
    assert cursors["nats"]["pending_usage_events"] == 7
    assert cursors["nats"]["pending_charges"] == {"EUR": 350_000}


def test_no_cursor_is_said(tmp_path: Path) -> None:
    c = Charging(tmp_path / "chf.lmdb")
    c.tenant("t1", at("2026-11-02T00:00:00"))
    c.close()
    r = report(tmp_path / "chf.lmdb", "tenant")
    assert r["unexported"]["cursors"] == []
    assert "no exporter cursor" in r["unexported"]["note"]


def write_config(tmp_path: Path, store: Path) -> Path:
    config = tmp_path / "chf.toml"
    config.write_text(f'[chf]\ncatalogue = "{CATALOGUE}"\n[store]\npath = "{store}"\n', encoding="utf-8")
    return config


def test_cli(charged: tuple[Path, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(write_config(tmp_path, charged[0]))
    assert cli.main(["report", "revenue", "--config", config, "--from", FROM, "--to", TO]) == 0
    out = capsys.readouterr().out
    assert "t1" in out and "5.26" in out and "2.63" in out and "24.99" in out
    assert cli.main(["report", "usage", "--config", config, "--from", FROM, "--to", TO, "--by", "plan"]) == 0
    out = capsys.readouterr().out
    assert "welcome-data" in out and "100.00" in out and "file" in out
    assert cli.main(["report", "revenue", "--config", config, "--from", FROM, "--to", TO, "--by", "plan"]) == 0
    out = capsys.readouterr().out
    assert "(no plan)" in out and "5.00" in out  # the goodwill adjustment, shown apart from revenue
    assert cli.main(["report", "usage", "--json", "--config", config, "--from", FROM, "--to", TO]) == 0
    assert json.loads(capsys.readouterr().out)["report"] == "usage"
    assert cli.main(["report", "usage", "--config", config, "--from", TO, "--to", FROM]) == 2
    assert "--to: 2026-11-02 is before --from" in capsys.readouterr().err
    assert cli.main(["report", "usage", "--config", config, "--from", "11/02/2026", "--to", TO]) == 2
    assert "--from: not a date" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", "usage", "--config", config, "--from", FROM, "--to", TO, "--by", "region"])
    assert exc.value.code == 2
    assert "--by" in capsys.readouterr().err


def test_formatting_is_exact() -> None:
    assert money(24_990_000) == "24.99"
    assert money(1) == "0.000001"
    assert money(-80_000, "EUR") == "-0.08 EUR"
    assert percent(600, 7_200) == "8.33"
    assert percent(2, 3) == "66.67"
    assert percent(1, 0) is None
    assert divide_half_even(5, 2) == 2 and divide_half_even(7, 2) == 4 and divide_half_even(-5, 2) == -2
