"""The `chf` command line, run through its real entry point against a real LMDB store in a temp directory.

Most commands run in-process (`tools.cli.main`), which is the console script's own function; the entry point
as a process (`python -m tools.cli`), `chf serve` with catalogue reload, and `events tail --follow` run as
subprocesses. Bad input must exit non-zero with a message naming the field and leave the store byte-for-byte
unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import lmdb
import pytest

from chf.core.model import RequestError
from chf.core.periods import period_end
from tests.support import require_tool
from tools.cli import main
from tools.cli_format import money, parse_money

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = REPO / "conf" / "catalogue.toml"
DEMO = REPO / "conf" / "demo.toml"


@dataclass
class Result:
    status: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def home() -> Iterator[Path]:
    """A working directory with its own configuration, catalogue copy and store.

    Not pytest's tmp_path: concurrent pytest runs of the same user prune each other's numbered base
    directories, which deleted files under a running test here."""
    with tempfile.TemporaryDirectory(prefix="chf-cli-") as name:
        path = Path(name)
        shutil.copy(CATALOGUE, path / "catalogue.toml")
        (path / "chf.toml").write_text(
            '[chf]\ndata_dir = "var"\ncatalogue = "catalogue.toml"\n\n'
            '[store]\npath = "var/chf.lmdb"\nmap_size_mb = 256\n'
        )
        yield path


@pytest.fixture
def chf(home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.chdir(home)

    def run(*args: str) -> Result:
        try:
            status = main(["--config", "chf.toml", *args])
        except SystemExit as exc:  # argparse refuses bad usage with SystemExit(2)
            status = int(exc.code or 0)
        captured = capsys.readouterr()
        return Result(status, captured.out, captured.err)

    return run


@pytest.fixture
def demo(chf: Any) -> Any:
    r = chf("init", "--demo", "--demo-file", str(DEMO))
    assert r.status == 0, r.err
    return chf


def dump(home: Path) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Every key and value of every sub-database: two dumps are equal iff nothing was written."""
    env = lmdb.open(str(home / "var" / "chf.lmdb"), max_dbs=32, readonly=True, lock=False)
    try:
        out: dict[bytes, list[tuple[bytes, bytes]]] = {}
        with env.begin() as txn:
            names = [k for k, _ in txn.cursor()]
            for name in names:
                db = env.open_db(name, txn=txn, create=False)
                out[name] = list(txn.cursor(db=db))
        return out
    finally:
        env.close()


def refused(chf: Any, home: Path, args: list[str], field: str, status: int = 2) -> Result:
    """Run a command that must be refused: exit status, a message naming `field`, and no write at all."""
    before = dump(home)
    r = chf(*args)
    assert r.status == status, (r.status, r.out, r.err)
    assert field in r.err, r.err
    assert "Traceback" not in r.err
    assert dump(home) == before
    return r


# ----------------------------------------------------------------------------------------------------------------------
# money on the command line
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("10.50", 10_500_000),
        ("0.000001", 1),
        ("-3", -3_000_000),
        ("1e3", 1_000_000_000),
        ("0.1", 100_000),
        ("1_000.25", 1_000_250_000),
        ("10.5000000", 10_500_000),
    ],
)
def test_money_is_parsed_exactly(text: str, micro: int) -> None:
    assert parse_money("amount", text, allow_negative=True) == micro
    assert Decimal(money(micro)) == Decimal(text.replace("_", ""))


@pytest.mark.parametrize("text", ["0.0000001", "ten", "", "nan", "inf", "1e30", "1,5", "0x10"])
def test_bad_money_names_the_field(text: str) -> None:
    with pytest.raises(RequestError, match=r"^balance: "):
        parse_money("balance", text)


# ----------------------------------------------------------------------------------------------------------------------
# tenants and accounts
# ----------------------------------------------------------------------------------------------------------------------
def test_tenant_and_account_lifecycle(chf: Any, home: Path) -> None:
    assert chf("tenant", "create", "acme", "--name", "Acme Mobile", "--currency", "EUR").status == 0
    r = chf("--json", "tenant", "list")
    assert [t["id"] for t in r.json()] == ["acme"]
    r = chf("account", "create", "a1", "--tenant", "acme", "--payment", "prepaid", "--balance", "10.50")
    assert r.status == 0, r.err
    assert "10.50 EUR" in r.out
    postpaid = ["account", "create", "p1", "--tenant", "acme", "--payment", "postpaid"]
    r = chf(*postpaid, "--credit-limit", "100", "--cycle-day", "5", "--parent", "a1")
    assert r.status == 0, r.err
    r = chf("--json", "account", "show", "p1")
    shown = r.json()
    assert shown["credit_limit"] == 100_000_000 and shown["available"] == 100_000_000
    assert shown["cycle_day"] == 5 and shown["parent"] == "a1"
    r = chf("account", "show", "a1")
    for label in ("wallet:", "reserved:", "available:", "credit limit:", "plan:", "lines:"):
        assert label in r.out
    assert "wallet:       10.50 EUR" in r.out


def test_account_create_refusals(chf: Any, home: Path) -> None:
    chf("tenant", "create", "acme", "--currency", "EUR")
    base = ["account", "create", "a1", "--tenant", "acme", "--payment", "prepaid"]
    refused(chf, home, [*base, "--balance", "10.1234567"], "balance")
    refused(chf, home, [*base, "--balance", "ten"], "balance")
    refused(
        chf,
        home,
        ["account", "create", "p1", "--tenant", "acme", "--payment", "postpaid", "--credit-limit", "-5"],
        "credit_limit",
    )
    refused(chf, home, [*base, "--credit-limit", "5"], "credit_limit")  # prepaid has no credit limit
    refused(chf, home, [*base, "--cycle-day", "40"], "cycle_day")
    refused(chf, home, [*base, "--cycle-day", "x"], "--cycle-day")
    refused(chf, home, [*base, "--currency", "euro"], "currency")
    refused(chf, home, [*base, "--plan", "no-such-plan"], "plan", status=1)
    refused(chf, home, [*base, "--plan", "postpaid-l"], "plan", status=1)  # payment type mismatch
    refused(chf, home, ["account", "create", "a1", "--tenant", "nobody", "--payment", "prepaid"], "tenant", 1)
    refused(chf, home, ["account", "create", "a1", "--tenant", "acme", "--payment", "credit"], "--payment")
    refused(chf, home, ["account", "create", "bad id", "--tenant", "acme", "--payment", "prepaid"], "account")
    refused(chf, home, ["tenant", "create", "t2", "--currency", "eur"], "currency")
    refused(chf, home, ["tenant", "create", "acme", "--currency", "EUR"], "tenant", status=1)
    assert chf(*base).status == 0
    refused(chf, home, base, "account", status=1)  # already exists


def test_topup_adjust_and_idempotency(demo: Any, home: Path) -> None:
    before = demo("--json", "account", "show", "dave").json()["balance"]
    r = demo("--json", "account", "topup", "dave", "5.25", "--reason", "shop", "--idempotency-key", "k1")
    assert r.status == 0 and r.json()["account"]["balance"] == before + 5_250_000 and not r.json()["duplicate"]
    snapshot = dump(home)
    r = demo("--json", "account", "topup", "dave", "5.25", "--reason", "shop", "--idempotency-key", "k1")
    assert r.json()["duplicate"] is True and r.json()["account"]["balance"] == before + 5_250_000
    assert dump(home) == snapshot  # a repeated key changes nothing
    r = demo("account", "adjust", "dave", "--reason", "goodwill correction", "--", "-0.25")
    assert r.status == 0, r.err
    assert demo("--json", "account", "show", "dave").json()["balance"] == before + 5_000_000
    topup = json.loads(demo("--json", "events", "tail", "-n", "1", "--kind", "topup").out)
    assert topup["amount"] == 5_250_000 and topup["reason"] == "shop" and topup["actor"].startswith("cli:")
    adjustment = json.loads(demo("--json", "events", "tail", "-n", "1", "--kind", "adjustment").out)
    assert adjustment["reason"] == "goodwill correction" and adjustment["amount"] == -250_000
    assert adjustment["impacts"][0]["after"] == before + 5_000_000

    refused(demo, home, ["account", "topup", "dave", "0", "--reason", "x"], "amount")
    refused(demo, home, ["account", "topup", "dave", "-1", "--reason", "x"], "amount")
    refused(demo, home, ["account", "topup", "dave", "1.0000001", "--reason", "x"], "amount")
    refused(demo, home, ["account", "topup", "dave", "1"], "--reason")
    refused(demo, home, ["account", "topup", "dave", "1", "--reason", " "], "reason")
    refused(demo, home, ["account", "topup", "nobody", "1", "--reason", "x"], "account", status=1)
    refused(demo, home, ["account", "adjust", "dave", "0", "--reason", "x"], "amount")
    refused(demo, home, ["account", "adjust", "dave", "1", "--reason", "x", "--line", "208019000000004"], "bucket")


def test_bucket_adjustment_is_in_the_bucket_unit(demo: Any, home: Path) -> None:
    line = demo("--json", "subscriber", "show", "208019000000002").json()
    data = next(b for b in line["buckets"] if b["unit"] == "bytes")
    args = ["account", "adjust", "bob", "--reason", "network outage", "--line", "208019000000002"]
    args += ["--bucket", str(data["id"])]
    r = demo("--json", *args, "1000000")
    assert r.status == 0, r.err
    assert r.json()["remaining"] == data["remaining"] + 1_000_000
    refused(demo, home, [*args, "1.5"], "amount")  # bytes are whole units
    refused(
        demo,
        home,
        ["account", "adjust", "bob", "--reason", "x", "--line", "208019000000002", "--bucket", "99", "5"],
        "bucket",
        status=1,
    )
    refused(
        demo,
        home,
        ["account", "adjust", "alice", "--reason", "x", "--line", "208019000000002", "--bucket", str(data["id"]), "5"],
        "line",
        status=1,
    )  # the line is not alice's


def test_account_plan_and_shared_buckets(demo: Any, home: Path) -> None:
    r = demo("account", "show", "family-martin")
    assert "shared buckets:" in r.out and "lines:" in r.out and "208019000000011" in r.out
    shown = demo("--json", "account", "show", "family-martin").json()
    assert shown["shared_buckets"] and shown["line_count"] == 2 and shown["plan"] == "family-50g"
    demo("account", "create", "fam2", "--tenant", "demo", "--payment", "postpaid", "--credit-limit", "50")
    r = demo("--json", "account", "set-plan", "fam2", "family-50g")
    assert r.status == 0 and r.json()["plan"] == "family-50g"
    refused(demo, home, ["account", "set-plan", "fam2", "prepaid-s"], "plan", status=1)
    refused(demo, home, ["account", "set-plan", "fam2", "nope"], "plan", status=1)
    refused(demo, home, ["account", "show", "nobody"], "account", status=1)


# ----------------------------------------------------------------------------------------------------------------------
# subscribers
# ----------------------------------------------------------------------------------------------------------------------
def test_subscriber_add_show_by_every_reference(demo: Any, home: Path) -> None:
    identities = f"--imsi 001010000000077 --msisdn 990000000077 --iccid 8900101000000000077 --eid {'8' * 32}"
    r = demo("--json", "subscriber", "add", "--account", "alice", *identities.split(), "--plan", "payg")
    assert r.status == 0, r.err
    line_id = r.json()["id"]
    for ref in ("001010000000077", "990000000077", "8900101000000000077", f"#{line_id}"):
        shown = demo("--json", "subscriber", "show", ref).json()
        assert shown["id"] == line_id and shown["plan"] == "payg"
        assert {"buckets", "period", "sessions", "shared_buckets"} <= set(shown)
    text = demo("subscriber", "show", "001010000000077").out
    assert "state:" in text and "period:" in text and "open sessions: 0" in text
    text = demo("subscriber", "show", "208019000000001").out
    assert "buckets:" in text and "GB" in text

    add = ["subscriber", "add", "--account", "alice"]
    refused(demo, home, [*add, "--imsi", "12ab"], "imsi")
    refused(demo, home, [*add, "--imsi", "001010000000078", "--msisdn", "+33"], "msisdn")
    refused(demo, home, [*add, "--imsi", "001010000000078", "--iccid", "123"], "iccid")
    refused(demo, home, [*add, "--imsi", "001010000000078", "--eid", "1"], "eid")
    refused(demo, home, [*add, "--imsi", "001010000000078", "--state", "suspended"], "--state")
    refused(demo, home, [*add, "--imsi", "001010000000077"], "imsi", status=1)  # in use
    refused(demo, home, [*add, "--imsi", "001010000000078", "--msisdn", "990000000077"], "msisdn", status=1)
    refused(demo, home, ["subscriber", "add", "--account", "nobody", "--imsi", "001010000000078"], "account", 1)
    refused(demo, home, ["subscriber", "add", "--account", "alice"], "--imsi")
    refused(demo, home, ["subscriber", "show", "999"], "line", status=1)


def test_lifecycle_move_and_plan(demo: Any, home: Path) -> None:
    r = demo("subscriber", "set-state", "208019000000005", "active", "--reason", "sold")
    assert r.status == 0 and "active" in r.out
    r = demo("--json", "subscriber", "set-state", "208019000000005", "suspended", "--reason", "unpaid")
    assert r.json()["line"]["state"] == "suspended"
    refused(demo, home, ["subscriber", "set-state", "208019000000005", "provisioned", "--reason", "x"], "state", 1)
    refused(demo, home, ["subscriber", "set-state", "208019000000005", "asleep", "--reason", "x"], "state")
    refused(demo, home, ["subscriber", "set-state", "208019000000005", "active"], "--reason")

    r = demo("--json", "subscriber", "move", "208019000000005", "dave", "--reason", "family change")
    assert r.status == 0 and r.json()["line"]["account"] == "dave"
    refused(demo, home, ["subscriber", "move", "208019000000005", "nobody", "--reason", "x"], "account", 1)

    r = demo("--json", "subscriber", "set-plan", "208019000000005", "data-only-10g", "--reason", "upsell")
    assert r.status == 0 and r.json()["plan"] == "data-only-10g"
    refused(demo, home, ["subscriber", "set-plan", "208019000000005", "postpaid-l"], "plan", status=1)
    refused(demo, home, ["subscriber", "set-plan", "208019000000005", "no-plan"], "plan", status=1)
    out = demo("--json", "events", "tail", "--line", "208019000000005").out
    kinds = [json.loads(x)["kind"] for x in out.splitlines()]
    assert kinds.count("lifecycle") >= 3 and "line_move" in kinds and "plan_change" in kinds


# ----------------------------------------------------------------------------------------------------------------------
# bulk import
# ----------------------------------------------------------------------------------------------------------------------
PLANTED = """imsi,msisdn,iccid,account,plan,state
001010000000101,990000000101,8900101000000000101,alice,payg,active
not-an-imsi,990000000102,,alice,,
001010000000103,990000000101,,alice,,
001010000000104,,,nobody,,
001010000000105,,,,prepaid-s,provisioned
001010000000101,,,dave,,
208019000000001,,,dave,,
001010000000108,,,dave,no-such-plan,
001010000000109
001010000000110,,,bob,prepaid-s,
001010000000111,,,dave,,suspended

001010000000113,990000000113,,dave,,
"""


def test_import_reports_bad_rows_by_line_and_imports_the_rest(demo: Any, home: Path) -> None:
    (home / "lines.csv").write_text(PLANTED)
    r = demo("subscriber", "import", "lines.csv", "--account", "dave", "--batch", "3")
    assert r.status == 1, r.err
    bad = {int(m.group(1)): m.group(2) for m in re.finditer(r"lines\.csv:(\d+): (\w+):", r.err)}
    assert bad == {
        3: "imsi",
        4: "msisdn",
        5: "account",
        7: "imsi",
        8: "imsi",
        9: "plan",
        10: "row",
        11: "plan",
        12: "state",
    }
    assert "duplicates line 2 of this file" in r.err
    assert "read 12, imported 3, skipped 9" in r.out
    assert demo("--json", "subscriber", "show", "001010000000105").json()["account"] == "dave"  # --account default
    imported = demo("--json", "subscriber", "show", "001010000000101").json()
    assert imported["plan"] == "payg" and imported["account"] == "alice" and imported["period"] is not None
    # The same events as `subscriber add`: one line each way, compared kind by kind.
    demo("subscriber", "add", "--account", "alice", "--imsi", "001010000000999", "--plan", "payg")
    kinds = {}
    for ref in ("001010000000101", "001010000000999"):
        out = demo("--json", "events", "tail", "-n", "50", "--line", ref).out.split("\n")
        kinds[ref] = [json.loads(x)["kind"] for x in out if x]
    assert kinds["001010000000101"] == kinds["001010000000999"] == ["lifecycle", "plan_change", "renewal"]


def test_import_json_lines_and_json_summary(demo: Any, home: Path) -> None:
    rows = [
        {"imsi": "001010000000201", "account": "dave", "msisdn": "990000000201"},
        {"imsi": "001010000000202", "account": "dave", "extra": 1},
        {"imsi": 1010000000203, "account": "dave"},
        "not an object",
        {"imsi": "001010000000204"},
    ]
    text = "\n".join(json.dumps(r) for r in rows) + "\n{broken\n"
    (home / "lines.jsonl").write_text(text)
    r = demo("--json", "subscriber", "import", "lines.jsonl")
    assert r.status == 1
    summary = r.json()
    assert summary["read"] == 6 and summary["imported"] == 1 and summary["skipped"] == 5
    assert [(e["line"], e["field"]) for e in summary["errors"]] == [
        (2, "extra"),
        (3, "imsi"),
        (4, "row"),
        (5, "account"),
        (6, "row"),
    ]
    assert {"seconds", "lines_per_second"} <= set(summary)


def test_import_refuses_an_unusable_file_and_writes_nothing(demo: Any, home: Path) -> None:
    (home / "bad-header.csv").write_text("imsi,colour\n001010000000301,red\n")
    refused(demo, home, ["subscriber", "import", "bad-header.csv", "--account", "dave"], "colour")
    (home / "no-imsi.csv").write_text("msisdn\n990000000301\n")
    refused(demo, home, ["subscriber", "import", "no-imsi.csv", "--account", "dave"], "imsi")
    (home / "empty.csv").write_text("")
    refused(demo, home, ["subscriber", "import", "empty.csv"], "header row")
    (home / "latin1.csv").write_bytes("imsi,account\n001010000000301,d\xe9\n".encode("latin-1"))
    refused(demo, home, ["subscriber", "import", "latin1.csv"], "UTF-8")
    refused(demo, home, ["subscriber", "import", "missing.csv"], "missing.csv")
    refused(demo, home, ["subscriber", "import", "empty.csv", "--batch", "0"], "batch")


def test_import_of_many_lines_in_several_batches(demo: Any, home: Path) -> None:
    from loadtest.gen_import import generate

    generate(str(home / "many.csv"), 5000, 2, "payg", "csv", "mig-")
    for i in range(2):
        demo("account", "create", f"mig-{i}", "--tenant", "demo", "--payment", "prepaid", "--balance", "100")
    r = demo("--json", "subscriber", "import", "many.csv", "--batch", "2000", "--progress")
    assert r.status == 0, r.err
    assert r.json()["imported"] == 5000
    assert "rows/s" in r.err  # the progress bar
    shown = demo("--json", "account", "show", "mig-1", "--lines", "3").json()
    assert shown["line_count"] == 2500 and len(shown["lines"]) == 3 and shown["active_lines"] == 2500
    r = demo("--json", "subscriber", "import", "many.csv", "--batch", "2000")  # again: every row a duplicate
    assert r.status == 1 and r.json()["imported"] == 0 and r.json()["skipped"] == 5000
    generate(str(home / "more.csv"), 100, 2, "", "csv", "mig-", start=5000)
    r = demo("subscriber", "import", "more.csv")
    assert r.status == 0 and r.err == ""  # no progress bar when stderr is not a terminal and no --progress
    assert re.fullmatch(r"read 100, imported 100, skipped 0 in [0-9.]+ s \([0-9,]+ lines/s\)\n", r.out)


# ----------------------------------------------------------------------------------------------------------------------
# catalogue
# ----------------------------------------------------------------------------------------------------------------------
BROKEN_PLAN = """
[plans.broken]
payment = "prepaid"
fee = 1.5
overage = "maybe"
  [plans.broken.rating]
  "10" = "no-tariff"
"""


def test_catalogue_check_and_show(chf: Any, home: Path) -> None:
    r = chf("catalogue", "check")
    assert r.status == 0 and "valid" in r.out
    assert chf("--json", "catalogue", "check").json()["valid"] is True
    bad = home / "bad.toml"
    bad.write_text(CATALOGUE.read_text() + BROKEN_PLAN)
    r = chf("catalogue", "check", str(bad))
    assert r.status == 2
    lines = [x for x in r.err.splitlines() if "broken" in x]
    assert len(lines) >= 3  # every error, each naming the file, the plan and the field
    assert all("bad.toml" in x for x in lines)
    assert any("fee" in x for x in lines) and any("overage" in x for x in lines) and any("rating" in x for x in lines)
    r = chf("--json", "catalogue", "check", str(bad))
    assert r.status == 2 and r.json()["valid"] is False and len(r.json()["errors"]) >= 3

    r = chf("catalogue", "show")
    assert "prepaid-s" in r.out and "9.99 EUR" in r.out
    r = chf("--json", "catalogue", "show", "prepaid-s")
    detail = r.json()
    assert detail["fee"] == 9_990_000 and {a["name"] for a in detail["allowances"]} >= {"data", "voice", "sms"}
    assert chf("catalogue", "show", "iot-flex-50m").status == 0
    shown = chf("catalogue", "show", "postpaid-l").out
    assert "4.99 EUR per period, allowances held back" in shown and "prorated:" in shown
    detail = chf("--json", "catalogue", "show", "hybrid-m").json()
    assert (detail["suspended_fee"], detail["prorate"]) == (0, True)
    r = chf("catalogue", "show", "nope")
    assert r.status == 1 and "plan" in r.err


def test_catalogue_check_against_the_store(demo: Any, home: Path) -> None:
    text = CATALOGUE.read_text()
    start = text.index("[plans.payg]")
    (home / "without-payg.toml").write_text(text[:start])
    assert demo("catalogue", "check", "without-payg.toml").status == 0  # valid on its own
    r = demo("catalogue", "check", "without-payg.toml", "--store")
    assert r.status == 2 and "payg" in r.err and "missing" in r.err


def test_catalogue_versions_check_and_show(chf: Any, home: Path) -> None:
    """The README's recipe for new prices on a date (README, "Effective-dated catalogue"): a directory of versions,
    each a whole catalogue with its `effective` time; `chf catalogue check` shows what changes at each date."""
    text = CATALOGUE.read_text()
    versions = home / "catalogue.d"
    versions.mkdir()

    def version(name: str, effective: str | None, fee: str = "9_990_000") -> None:
        body = text.replace("fee = 9_990_000 ", f"fee = {fee} ", 1)
        if effective is not None:
            body = body.replace('home_zone = "home"\n', f'home_zone = "home"\neffective = {effective}\n', 1)
        (versions / name).write_text(body)

    version("2019.toml", None)
    version("2020-01.toml", "2020-01-01T00:00:00+01:00", "8_990_000")
    version("2099-01.toml", "2099-01-01", "10_990_000")
    r = chf("catalogue", "check", "catalogue.d")
    assert r.status == 0, r.err
    assert "catalogue.d: valid, 3 versions" in r.out
    assert "2020-01-01 00:00 CET: version" in r.out and "(2020-01.toml) (in force now)" in r.out
    assert "2099-01-01 00:00 CET: version" in r.out and "(replaced)" in r.out
    assert "plan 'prepaid-s' changed: fee 8990000 -> 10990000" in r.out
    listed = chf("--json", "catalogue", "check", "catalogue.d").json()["versions"]
    assert [(v["file"], v["in_force"], v["effective"]) for v in listed] == [
        ("2019.toml", False, None),
        ("2020-01.toml", True, 1577833200),
        ("2099-01.toml", False, 4070905200),
    ]
    assert listed[1]["changes"] == ["plan 'prepaid-s' changed: fee 9990000 -> 8990000"]
    version("2099-02.toml", "2099-01-01", "11_990_000")
    r = chf("catalogue", "check", "catalogue.d")
    assert r.status == 2 and "2099-02.toml: settings: effective: the same effective time as 2099-01.toml" in r.err
    (versions / "2099-02.toml").unlink()
    (versions / "2019.toml").unlink()  # the first version is in force before its effective time too
    r = chf("catalogue", "check", "catalogue.d")
    assert "from the start (effective 2020-01-01 00:00 CET, the first version): version" in r.out

    (home / "chf.toml").write_text((home / "chf.toml").read_text().replace('"catalogue.toml"', '"catalogue.d"'))
    assert "8.99 EUR" in chf("catalogue", "show", "prepaid-s").out  # the version in force now


@pytest.mark.interop
def test_catalogue_show_in_the_future(chf: Any, home: Path) -> None:
    """`chf catalogue show` under faketime in 2099: the version that takes effect in 2099 is the one in force."""
    versions = home / "catalogue.d"
    versions.mkdir()
    text = CATALOGUE.read_text()
    (versions / "now.toml").write_text(text)
    later_text = text.replace("fee = 9_990_000 ", "fee = 10_990_000 ", 1)
    later_text = later_text.replace('home_zone = "home"\n', 'home_zone = "home"\neffective = 2099-01-01\n', 1)
    (versions / "2099-01.toml").write_text(later_text)
    (home / "chf.toml").write_text((home / "chf.toml").read_text().replace('"catalogue.toml"', '"catalogue.d"'))
    assert "9.99 EUR" in chf("catalogue", "show", "prepaid-s").out
    faketime = require_tool("faketime")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    later = [faketime, "2099-06-01 12:00:00", sys.executable, "-m", "tools.cli", "--config", "chf.toml"]
    shown = subprocess.run(
        [*later, "catalogue", "show", "prepaid-s"], cwd=home, env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0 and "10.99 EUR" in shown.stdout, shown.stderr


def test_catalogue_reload_without_a_server(chf: Any, home: Path) -> None:
    r = chf("catalogue", "reload")
    assert r.status == 1 and "no chf serve is running" in r.err
    (home / "var").mkdir(exist_ok=True)
    (home / "var" / "chf.pid").write_text("999999999\n")
    r = chf("catalogue", "reload")
    assert r.status == 1 and "stale pid file" in r.err
    other = subprocess.Popen(["sleep", "30"])  # a live process that is not chf: never signalled
    try:
        (home / "var" / "chf.pid").write_text(f"{other.pid}\n")
        r = chf("catalogue", "reload")
        assert r.status == 1 and "is not chf serve" in r.err
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def _wait_for(proc: subprocess.Popen[str], log: list[str], pattern: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if line:
            log.append(line)
            if re.search(pattern, line):
                return line
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not logged; log so far:\n{''.join(log)}")


def test_catalogue_reload_signals_the_running_server(home: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "tools.cli", "--config", "chf.toml"]
    subprocess.run([*cli, "init"], cwd=home, env=env, check=True, capture_output=True)
    server = subprocess.Popen([*cli, "serve"], cwd=home, env=env, stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    try:
        ready = _wait_for(server, log, r"event=ready")
        old_digest = re.search(r"digest=(\w+)", ready).group(1)  # type: ignore[union-attr]
        assert (home / "var" / "chf.pid").read_text().strip() == str(server.pid)

        catalogue = home / "catalogue.toml"
        good = catalogue.read_text()
        catalogue.write_text(good.replace("Prepaid S: 5 GB", "Prepaid S (new): 5 GB"))
        r = subprocess.run([*cli, "catalogue", "reload"], cwd=home, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert f"pid {server.pid}" in r.stdout
        reloaded = _wait_for(server, log, r"event=catalogue_reloaded")
        new_digest = re.search(r"digest=(\w+)", reloaded).group(1)  # type: ignore[union-attr]
        assert new_digest != old_digest

        # An invalid file is refused by the CLI before the server is signalled...
        catalogue.write_text(good + BROKEN_PLAN)
        r = subprocess.run([*cli, "catalogue", "reload"], cwd=home, env=env, capture_output=True, text=True)
        assert r.returncode == 2 and "broken" in r.stderr and "Traceback" not in r.stderr
        # ...and rejected by the server if it gets a SIGHUP anyway: the running catalogue stays.
        os.kill(server.pid, signal.SIGHUP)
        _wait_for(server, log, r"event=catalogue_reload_rejected")
        catalogue.write_text(good.replace("Prepaid S: 5 GB", "Prepaid S (new): 5 GB"))
        os.kill(server.pid, signal.SIGHUP)
        again = _wait_for(server, log, r"event=catalogue_reloaded")
        assert re.search(r"digest=(\w+)", again).group(1) == new_digest  # type: ignore[union-attr]
        assert server.poll() is None
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert not (home / "var" / "chf.pid").exists()
    r = subprocess.run([*cli, "catalogue", "reload"], cwd=home, env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "no chf serve is running" in r.stderr


# ----------------------------------------------------------------------------------------------------------------------
# events and the entry point
# ----------------------------------------------------------------------------------------------------------------------
def test_events_tail_filters_and_json(demo: Any, home: Path) -> None:
    r = demo("events", "tail", "-n", "3")
    assert r.status == 0 and len(r.out.splitlines()) == 3
    parsed = [json.loads(x) for x in demo("--json", "events", "tail", "-n", "500").out.splitlines()]
    seqs = [e["seq"] for e in parsed]
    assert seqs == sorted(seqs) and len(set(e["id"] for e in parsed)) == len(parsed)
    topups = [
        json.loads(x) for x in demo("--json", "events", "tail", "-n", "2", "--kind", "topup").out.split("\n") if x
    ]
    assert len(topups) == 2 and all(e["kind"] == "topup" for e in topups)
    r = demo("--json", "events", "tail", "--line", "#1", "-n", "100")
    assert all(json.loads(x)["subscriber"] == 1 for x in r.out.splitlines())
    refused(demo, home, ["events", "tail", "--line", "nobody"], "line", status=1)
    refused(demo, home, ["events", "tail", "-n", "-1"], "n")
    refused(demo, home, ["events", "tail", "-n", "many"], "-n")


def test_events_follow_and_entry_point(home: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "tools.cli", "--config", "chf.toml"]
    r = subprocess.run([*cli, "--help"], cwd=home, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and all(g in r.stdout for g in ("tenant", "account", "subscriber", "catalogue", "events"))
    r = subprocess.run([*cli, "subscriber", "import", "--help"], cwd=home, env=env, capture_output=True, text=True)
    assert "imsi (required), msisdn, iccid, eid, account, plan, state" in r.stdout
    subprocess.run(
        [*cli, "init", "--demo", "--demo-file", str(DEMO)], cwd=home, env=env, check=True, capture_output=True
    )
    follower = subprocess.Popen(
        [*cli, "--json", "events", "tail", "-n", "1", "--follow", "--kind", "topup", "--follow-for", "60"],
        cwd=home,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        # The last existing top-up comes first: once it is printed, the follower is past its starting point.
        assert json.loads(follower.stdout.readline())["reason"] == "opening balance"
        for _ in range(2):
            done = subprocess.run(
                [*cli, "account", "topup", "alice", "1.25", "--reason", "follow test"],
                cwd=home,
                env=env,
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, done.stderr
        seen = [json.loads(follower.stdout.readline()) for _ in range(2)]
        assert [e["amount"] for e in seen] == [1_250_000, 1_250_000]
        assert all(e["reason"] == "follow test" for e in seen)
    finally:
        follower.terminate()
        follower.wait(timeout=10)


def test_import_stops_cleanly_when_the_store_is_full(demo: Any, home: Path) -> None:
    from loadtest.gen_import import generate

    text = (home / "chf.toml").read_text().replace("map_size_mb = 256", "map_size_mb = 16")
    (home / "chf.toml").write_text(text)
    demo("account", "create", "mig-0", "--tenant", "demo", "--payment", "prepaid", "--balance", "1000000")
    generate(str(home / "big.csv"), 40_000, 1, "prepaid-s", "csv", "mig-")
    r = demo("--json", "subscriber", "import", "big.csv", "--batch", "2000")
    assert r.status == 1 and "Traceback" not in r.err
    summary = r.json()
    assert summary["stopped"] and "not imported" in summary["stopped"]
    assert 0 < summary["imported"] < 40_000 and summary["imported"] % 2000 == 0  # whole batches only
    shown = demo("--json", "account", "show", "mig-0", "--lines", "0").json()
    assert shown["line_count"] == summary["imported"]


# ----------------------------------------------------------------------------------------------------------------------
# money and the line lifecycle (issue 11, items 3 and 4)
# ----------------------------------------------------------------------------------------------------------------------
def test_flexible_pool_follows_set_state(demo: Any, home: Path) -> None:
    """The audit: suspending and re-activating a line of the acme-trackers pool three times took it to 250 MB with
    2 active lines. Its size is derived from its active lines at every change."""
    for _ in range(3):
        for state in ("suspended", "active"):
            r = demo("subscriber", "set-state", "208019000000201", state, "--reason", "audit")
            assert r.status == 0, r.err
    shown = demo("--json", "account", "show", "acme-trackers").json()
    (pool,) = [b for b in shown["shared_buckets"] if b["kind"] == "pool"]
    assert (pool["initial"], pool["remaining"], shown["active_lines"]) == (100_000_000, 100_000_000, 2)
    demo("subscriber", "set-state", "208019000000202", "terminated", "--reason", "scrapped")
    shown = demo("--json", "account", "show", "acme-trackers").json()
    (pool,) = [b for b in shown["shared_buckets"] if b["kind"] == "pool"]
    assert (pool["initial"], shown["active_lines"]) == (50_000_000, 1)
    resized = [json.loads(x) for x in demo("--json", "events", "tail", "--kind", "pool_resize").out.splitlines()]
    assert [e["impacts"][0]["delta"] for e in resized][-7:] == [-50_000_000, 50_000_000] * 3 + [-50_000_000]


def _months_ended(start: int, end: int) -> int:
    """How many monthly renewal dates (cycle day 1, the demo catalogue's time zone) fall in (start, end]."""
    tz = ZoneInfo("Europe/Paris")
    count, boundary = 0, period_end("month", start, 1, tz)
    while boundary <= end:
        count += 1
        boundary = period_end("month", boundary, 1, tz)
    return count


def _stop_group(leader: subprocess.Popen[str], pid_file: Path) -> None:
    """Stop a process group started with start_new_session (a wrapper and the chf serve it started): SIGTERM,
    then wait for chf serve to remove its pid file on its way out; SIGKILL if it does not within 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        if pid_file.exists():
            os.killpg(leader.pid, signal.SIGKILL)
    leader.wait(timeout=20)


def test_no_fee_for_terminated_or_provisioned_lines_when_the_clock_moves_on(chf: Any, home: Path) -> None:
    """The audit's path: three lines (terminated, suspended, provisioned) on a monthly plan, then `chf serve` with
    the clock 125 days on (faketime): its sweeper renews every line. The terminated and the provisioned line pay
    nothing; the suspended one pays its plan's suspended fee (postpaid-l: 4.99 a month)."""
    faketime = require_tool("faketime")
    assert chf("init").status == 0
    assert chf("tenant", "create", "mvno", "--currency", "EUR").status == 0
    r = chf("account", "create", "corp", "--tenant", "mvno", "--payment", "postpaid", "--credit-limit", "500")
    assert r.status == 0, r.err
    lines = {}
    states = {"terminated": "active", "suspended": "active", "provisioned": "provisioned", "active": "active"}
    for n, (name, state) in enumerate(states.items()):
        imsi = f"00101000000030{n}"
        r = chf("subscriber", "add", "--account", "corp", "--imsi", imsi, "--plan", "postpaid-l", "--state", state)
        assert r.status == 0, r.err
        lines[name] = imsi
    assert chf("subscriber", "set-state", lines["terminated"], "terminated", "--reason", "churn").status == 0
    assert chf("subscriber", "set-state", lines["suspended"], "suspended", "--reason", "unpaid").status == 0
    started = int(time.time())
    months = _months_ended(started, started + 125 * 86400)

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "tools.cli", "--config", "chf.toml"]
    later = [faketime, "-f", "+125d", *cli, "serve"]
    # Its own process group: faketime runs chf serve as its child, and both must go at the end.
    server = subprocess.Popen(later, cwd=home, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log: list[str] = []
    try:
        _wait_for(server, log, r"event=ready")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            period = chf("--json", "subscriber", "show", lines["active"]).json()["period"]
            if period["index"] == months:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the sweeper did not renew the active line {months} times; log:\n{''.join(log)}")
        time.sleep(1.0)  # the sweeper's pass over four lines ends well within this
    finally:
        _stop_group(server, home / "var" / "chf.pid")

    def fees(imsi: str) -> list[int]:
        out = chf("--json", "events", "tail", "--line", imsi, "--kind", "renewal", "-n", "100").out
        renewals = [json.loads(x) for x in out.splitlines()]
        return [-sum(i["delta"] for i in e["impacts"] if i["balance"].endswith(":wallet")) for e in renewals]

    assert fees(lines["active"]) == [24_990_000] * (1 + months)
    assert fees(lines["suspended"]) == [24_990_000] + [4_990_000] * months
    assert fees(lines["terminated"]) == [24_990_000]  # its first period, paid while active; nothing since
    assert fees(lines["provisioned"]) == []
    shown = chf("--json", "account", "show", "corp").json()
    assert shown["balance"] == -(3 * 24_990_000 + months * (24_990_000 + 4_990_000))
    assert chf("--json", "subscriber", "show", lines["terminated"]).json()["period"] is None


def test_a_terminated_line_cannot_change_plan_and_a_provisioned_one_pays_from_activation(demo: Any, home: Path) -> None:
    # 208019000000005: alice's SIM in stock (provisioned, plan payg). Its plan can change; nothing is charged.
    wallet = demo("--json", "account", "show", "alice").json()["balance"]
    r = demo("--json", "subscriber", "set-plan", "208019000000005", "prepaid-s", "--reason", "upsell")
    assert r.status == 0 and r.json()["plan"] == "prepaid-s"
    shown = demo("--json", "subscriber", "show", "208019000000005").json()
    assert shown["period"] is None and shown["buckets"] == []
    assert demo("--json", "account", "show", "alice").json()["balance"] == wallet
    demo("subscriber", "set-state", "208019000000005", "terminated", "--reason", "never sold")
    refused(demo, home, ["subscriber", "set-plan", "208019000000005", "payg"], "line", status=1)


def test_stacked_pool_and_addons_on_the_command_line(demo: Any, home: Path) -> None:
    """Issue 15 items 1 and 8 with the demo data: globex-fleet's stacked pool (2 x 100 MB + 1 x 1 GB) follows its
    lines; `subscriber buy-addon` sells an add-on whole or refuses it naming the wallet and writes nothing."""
    shown = demo("--json", "account", "show", "globex-fleet").json()
    (pool,) = [b for b in shown["shared_buckets"] if b["kind"] == "pool"]
    assert pool["initial"] == 1_200_000_000
    demo("subscriber", "set-state", "208019000000303", "suspended", "--reason", "parked")  # iot-fleet-1g: "none"
    shown = demo("--json", "account", "show", "globex-fleet").json()
    (pool,) = [b for b in shown["shared_buckets"] if b["kind"] == "pool"]
    assert pool["initial"] == 200_000_000
    (resize,) = [
        json.loads(x) for x in demo("--json", "events", "tail", "-n", "1", "--kind", "pool_resize").out.splitlines()
    ]
    assert resize["members"] == {"iot-fleet-100m": [2, 200_000_000]}

    refused(demo, home, ["subscriber", "buy-addon", "208019000000004", "data-1g-7d"], "wallet", status=1)  # 1 EUR
    refused(demo, home, ["subscriber", "buy-addon", "208019000000004", "no-such"], "addon", status=1)
    demo("account", "topup", "dave", "5", "--reason", "shop")
    r = demo("subscriber", "buy-addon", "208019000000004", "data-1g-7d", "--idempotency-key", "b1")
    assert r.status == 0 and "bought data-1g-7d for 2.99 EUR" in r.out, r.err
    r = demo("--json", "subscriber", "buy-addon", "208019000000004", "data-1g-7d", "--idempotency-key", "b1")
    assert r.json()["duplicate"] and demo("--json", "account", "show", "dave").json()["balance"] == 3_010_000
    listing = demo("--json", "catalogue", "show").json()
    assert {a["name"]: a["price"] for a in listing["addons"]} == {"data-1g-7d": 2_990_000, "roam-eu-500m": 4_990_000}
    shown = demo("--json", "catalogue", "show", "iot-topoff").json()
    assert shown["pool_topoff"] and [t["amount"] for t in shown["pool_tiers"]] == [10**10, 5 * 10**10, 10**11]
    assert "pool tier 2: 50.00 GB for 200.00 EUR" in demo("catalogue", "show", "iot-topoff").out
    (bought,) = [json.loads(x) for x in demo("--json", "events", "tail", "--kind", "addon").out.splitlines()]
    assert (bought["addon"], bought["charge"], bought["actor"][:4]) == ("data-1g-7d", 2_990_000, "cli:")


def test_extra_plan_on_the_command_line(demo: Any, home: Path) -> None:
    """Issue 15 item 9: `subscriber add-plan` starts an extra plan (its fee from the wallet, its buckets) or refuses
    it whole naming the field; `remove-plan` ends it, refunding nothing."""
    refused(demo, home, ["subscriber", "add-plan", "208019000000004", "video-pass"], "wallet", status=1)  # 1 EUR
    refused(demo, home, ["subscriber", "add-plan", "208019000000004", "no-such"], "plan", status=1)
    refused(demo, home, ["subscriber", "add-plan", "208019000000004", "data-only-10g"], "plan", status=1)  # its own
    demo("account", "topup", "dave", "5", "--reason", "shop")
    r = demo("subscriber", "add-plan", "208019000000004", "video-pass")
    assert r.status == 0 and "extra plans video-pass" in r.out, r.err
    shown = demo("--json", "subscriber", "show", "208019000000004").json()
    (video,) = [b for b in shown["buckets"] if b["kind"] == "extra"]
    assert (video["name"], video["remaining"], video["priority"]) == ("video-pass:video", 20_000_000_000, 20)
    assert demo("--json", "account", "show", "dave").json()["balance"] == 6_000_000 - 2_990_000
    r = demo("--json", "subscriber", "remove-plan", "208019000000004", "video-pass")
    assert r.status == 0 and r.json()["extra_plans"] == []
    assert demo("--json", "account", "show", "dave").json()["balance"] == 3_010_000
    refused(demo, home, ["subscriber", "remove-plan", "208019000000004", "video-pass"], "plan", status=1)
