"""Wholesale reconciliation against a store charged through the real engine, with planted discrepancies.

Every planted discrepancy must be found with its class and numbers, and nothing else may be reported.
"""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import pytest

from tests.charging_fixture import CATALOGUE, Charging, at
from tools import cli
from tools.reconcile import Options, ReconcileError, parse_day, parse_timestamp, reconcile

IMSI_1 = "001010000000001"
IMSI_2 = "001010000000002"
IMSI_3 = "001010000000003"
IMSI_STRANGER = "001019999999999"  # never provisioned

HEADER = "imsi,start,end,apn,rating_group,bytes_up,bytes_down,seconds,events"


@pytest.fixture(scope="module")
def charged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with rated usage on 2026-11-02 and 2026-11-03 (plus some outside the window)."""
    path = tmp_path_factory.mktemp("recon") / "chf.lmdb"
    c = Charging(path)
    t0 = at("2026-11-01T00:00:00")
    c.tenant("mvno", t0)
    c.account("wholesale", "mvno", "postpaid", t0, credit_limit=1_000_000_000)
    for imsi in (IMSI_1, IMSI_2, IMSI_3):
        c.line("wholesale", imsi, t0, plan="postpaid-l")
    # matched exactly: two sessions on our side, two MNO rows (that also carry session seconds, not compared)
    c.use(IMSI_1, 10, "bytes", 2_000_000, at("2026-11-02T08:00:00"))
    c.use(IMSI_1, 10, "bytes", 3_000_000, at("2026-11-02T09:00:00"))
    # voice, matched exactly
    c.use(IMSI_1, 20, "seconds", 120, at("2026-11-02T10:00:00"))
    # within the absolute byte tolerance (MNO +500 bytes, tolerance 1000)
    c.use(IMSI_2, 10, "bytes", 1_000_000, at("2026-11-02T11:00:00"))
    # beyond tolerance: MNO +200,000 bytes
    c.use(IMSI_2, 10, "bytes", 1_000_000, at("2026-11-03T11:00:00"))
    # within the percent tolerance: MNO +0.5 % (tolerance 1 %)
    c.use(IMSI_2, 11, "bytes", 10_000_000, at("2026-11-03T12:00:00"))
    # rated by us, never reported by the MNO
    c.use(IMSI_3, 10, "bytes", 7_000_000, at("2026-11-02T13:00:00"))
    # SMS: we rated 2, the MNO bills 3
    c.use(IMSI_3, 40, "events", 1, at("2026-11-02T14:00:00"))
    c.use(IMSI_3, 40, "events", 1, at("2026-11-02T15:00:00"))
    # outside the window on our side: must not show up as unreported
    c.use(IMSI_3, 10, "bytes", 9_000_000, at("2026-11-12T13:00:00"))
    c.close()
    return path


def wholesale_lines() -> tuple[list[str], dict[str, int]]:
    """The MNO file and the line numbers of the planted rows (line 1 is the header)."""
    rows = [
        HEADER,
        # IMSI_1 data: 1,000,000 + 1,000,000 + 3,000,000 = our 5,000,000 (split differently, seconds ignored)
        f"{IMSI_1},2026-11-02T07:30:00Z,2026-11-02T08:00:00Z,,10,400000,600000,1800,0",
        f"{IMSI_1},1793606400,1793608200,,10,100000,900000,1800,0",  # epoch: 2026-11-02T08:00Z .. 08:30Z
        f"{IMSI_1},2026-11-02T08:30:00+01:00,2026-11-02T09:00:00+00:00,,10,1000000,2000000,,",
        # voice via APN? no: voice by rating group, 120 s
        f"{IMSI_1},2026-11-02T09:58:00,2026-11-02T10:00:00,,20,0,0,120,0",
        # duplicate of the voice row above
        f"{IMSI_1},2026-11-02T09:58:00,2026-11-02T10:00:00,,20,0,0,120,0",
        # IMSI_2 day 1: +500 bytes, within 1000
        f"{IMSI_2},2026-11-02T10:00:00Z,2026-11-02T11:00:00Z,,10,500,1000000,3600,0",
        # IMSI_2 day 2: +200,000 bytes, by APN with operator identifier
        f"{IMSI_2},2026-11-03T10:00:00Z,2026-11-03T11:00:00Z,Internet.mnc001.mcc001.gprs,,200000,1000000,0,0",
        # IMSI_2 video day 2: +50,000 on 10,050,000 = 0.4975 % (within 1 %)
        f"{IMSI_2},2026-11-03T11:00:00Z,2026-11-03T12:00:00Z,,11,50000,10000000,0,0",
        # IMSI_3 SMS: 3 events against our 2
        f"{IMSI_3},2026-11-02T14:00:00Z,2026-11-02T15:00:00Z,,40,0,0,0,3",
        # leakage: IMSI_1 data on day 2 we never rated (by APN)
        f"{IMSI_1},2026-11-03T20:00:00Z,2026-11-03T21:00:00Z,internet,,1000000,2000000,3600,0",
        # a line that is not ours
        f"{IMSI_STRANGER},2026-11-02T20:00:00Z,2026-11-02T20:05:00Z,,10,200,300,300,0",
        # outside the window: counted, not compared
        f"{IMSI_3},2026-10-28T20:00:00Z,2026-10-28T21:00:00Z,,10,5,5,0,0",
        # malformed rows
        "12AB,2026-11-02T20:00:00Z,2026-11-02T21:00:00Z,,10,1,1,0,0",
        f"{IMSI_1},yesterday,2026-11-02T21:00:00Z,,10,1,1,0,0",
        f"{IMSI_1},2026-11-02T20:00:00Z,2026-11-02T21:00:00Z,,10,-5,1,0,0",
        f"{IMSI_1},2026-11-02T20:00:00Z,2026-11-02T21:00:00Z,corporate,,1,1,0,0",
        f"{IMSI_1},2026-11-02T22:00:00Z,2026-11-02T21:00:00Z,,10,1,1,0,0",
        f"{IMSI_1},2026-11-02T20:00:00Z,2026-11-02T21:00:00Z,,10,1,1",
    ]
    numbers = {
        "voice": 5,
        "duplicate": 6,
        "difference_bytes": 8,
        "sms": 10,
        "leakage": 11,
        "stranger": 12,
        "bad_imsi": 14,
        "bad_start": 15,
        "bad_bytes": 16,
        "bad_apn": 17,
        "bad_end": 18,
        "bad_width": 19,
    }
    return rows, numbers


def options(**kw: object) -> Options:
    base: dict[str, object] = {
        "day_from": parse_day("2026-11-02", "--from"),
        "day_to": parse_day("2026-11-03", "--to"),
        "tolerance_bytes": 1000,
        "tolerance_percent": Fraction(1),
        "apn_map": {"internet": 10},
    }
    base.update(kw)
    return Options(**base)  # type: ignore[arg-type]


def read_csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_every_planted_discrepancy_is_found_and_nothing_else(charged: Path, tmp_path: Path) -> None:
    from chf.core.catalogue_loader import load_catalogue
    from store.lmdbstore import Store

    rows, line = wholesale_lines()
    wholesale = tmp_path / "mno.csv"
    wholesale.write_text("\n".join(rows) + "\n", encoding="utf-8")
    store = Store(charged)
    try:
        result = reconcile(store, load_catalogue(CATALOGUE), str(wholesale), options(), str(tmp_path / "out"))
    finally:
        store.close()
    found = {
        (r["class"], r["imsi"], r["day"], r["rating_group"], r["unit"]): r for r in read_csv(result.discrepancies_path)
    }
    expected = {
        ("duplicate", IMSI_1, "2026-11-02", "20", "seconds"): ("120", "", "120", str(line["duplicate"])),
        ("difference", IMSI_2, "2026-11-03", "10", "bytes"): (
            "1200000",
            "1000000",
            "200000",
            str(line["difference_bytes"]),
        ),
        ("difference", IMSI_3, "2026-11-02", "40", "events"): ("3", "2", "1", str(line["sms"])),
        ("unreported", IMSI_3, "2026-11-02", "10", "bytes"): ("0", "7000000", "-7000000", ""),
        ("leakage", IMSI_1, "2026-11-03", "10", "bytes"): ("3000000", "0", "3000000", str(line["leakage"])),
        ("unknown_line", IMSI_STRANGER, "2026-11-02", "10", "bytes"): ("500", "0", "500", str(line["stranger"])),
    }
    assert set(found) == set(expected)
    for key, (mno, ours, diff, first_line) in expected.items():
        r = found[key]
        assert (r["mno"], r["ours"], r["difference"], r["mno_first_line"]) == (mno, ours, diff, first_line), key
    assert "line 5" in found[("duplicate", IMSI_1, "2026-11-02", "20", "seconds")]["detail"]

    bad = {int(r["line"]): r["field"] for r in read_csv(result.malformed_path)}
    assert bad == {
        line["bad_imsi"]: "imsi",
        line["bad_start"]: "start",
        line["bad_bytes"]: "bytes_up",
        line["bad_apn"]: "apn",
        line["bad_end"]: "end",
        line["bad_width"]: "row",
    }

    s = result.summary
    assert s.rows == 19 - 1
    assert s.malformed == 6
    assert s.rows_outside_window == 1
    assert s.rows_in_window == 18 - 6 - 1
    assert s.duplicates == 1
    assert s.classes == {"leakage": 1, "unknown_line": 1, "unreported": 1, "difference": 2, "duplicate": 1}
    assert s.within_tolerance == 2
    assert s.matched == 2  # IMSI_1 data and voice on 2026-11-02
    assert s.amounts["leakage"]["bytes"] == 3_000_000
    assert s.amounts["unreported"]["bytes"] == 7_000_000
    assert s.amounts["difference"] == {"bytes": 200_000, "seconds": 0, "events": 1}
    # our side: only the window (the 9 MB of 2026-11-12 is out)
    assert s.our_totals == {"bytes": 5_000_000 + 2_000_000 + 10_000_000 + 7_000_000, "seconds": 120, "events": 2}
    assert s.discrepancies() == 6 + 6


def test_tolerance_zero_reports_the_small_differences(charged: Path, tmp_path: Path) -> None:
    from store.lmdbstore import Store

    rows, _ = wholesale_lines()
    wholesale = tmp_path / "mno.csv"
    wholesale.write_text("\n".join(rows[:9]) + "\n", encoding="utf-8")
    store = Store(charged)
    try:
        result = reconcile(
            store, None, str(wholesale), options(tolerance_bytes=0, tolerance_percent=Fraction(0)), str(tmp_path)
        )
    finally:
        store.close()
    diffs = sorted(
        (r["imsi"], r["day"], r["rating_group"], r["difference"])
        for r in read_csv(result.discrepancies_path)
        if r["class"] == "difference"
    )
    assert diffs == [
        (IMSI_2, "2026-11-02", "10", "500"),
        (IMSI_2, "2026-11-03", "10", "200000"),
        (IMSI_2, "2026-11-03", "11", "50000"),
    ]


def write_config(tmp_path: Path, store: Path) -> Path:
    config = tmp_path / "chf.toml"
    config.write_text(
        f'[chf]\ndata_dir = "{tmp_path}"\ncatalogue = "{CATALOGUE}"\n[store]\npath = "{store}"\n'
        '[reconcile.apn]\n"internet" = 10\n',
        encoding="utf-8",
    )
    return config


def test_cli_exit_status_follows_the_threshold(
    charged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows, line = wholesale_lines()
    wholesale = tmp_path / "mno.csv"
    wholesale.write_text("\n".join(rows) + "\n", encoding="utf-8")
    config = write_config(tmp_path, charged)
    argv = [
        "reconcile",
        "--config",
        str(config),
        "--wholesale",
        str(wholesale),
        "--from",
        "2026-11-02",
        "--to",
        "2026-11-03",
        "--tolerance-bytes",
        "1000",
        "--tolerance-percent",
        "1",
        "--out",
        str(tmp_path / "out"),
    ]
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    assert "leakage" in out and "beyond threshold 0" in out
    assert f"mno.csv:{line['bad_imsi']}: imsi:" in err
    assert f"mno.csv:{line['bad_apn']}: apn:" in err
    assert cli.main([*argv, "--threshold", "12", "--json"]) == 0
    out, _ = capsys.readouterr()
    summary = json.loads(out)
    assert summary["discrepancies"] == 12
    assert summary["classes"]["leakage"] == 1
    assert cli.main([*argv, "--threshold", "11"]) == 1
    capsys.readouterr()


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("imsi,start,bytes_up\n", [], "header lacks column(s): end, rating_group or apn"),
        ("", [], "empty file"),
        (HEADER + "\n", ["--apn", "internet"], "--apn: expected NAME=RATING_GROUP"),
        (HEADER + "\n", ["--to", "2026-10-01"], "--to: 2026-10-01 is before --from"),
        (HEADER + "\n", ["--from", "2026-13-01"], "--from: not a date"),
    ],
)
def test_cli_refuses_bad_input_naming_the_field(
    charged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, extra: list[str], message: str
) -> None:
    wholesale = tmp_path / "mno.csv"
    wholesale.write_text(content, encoding="utf-8")
    config = write_config(tmp_path, charged)
    argv = ["reconcile", "--config", str(config), "--wholesale", str(wholesale)]
    argv += ["--from", "2026-11-02", "--to", "2026-11-03", "--out", str(tmp_path / "out"), *extra]
    assert cli.main(argv) == 2
    _, err = capsys.readouterr()
    assert message in err


def test_missing_file_is_a_usage_error(charged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, charged)
    argv = ["reconcile", "--config", str(config), "--wholesale", str(tmp_path / "absent.csv")]
    assert cli.main([*argv, "--from", "2026-11-02", "--to", "2026-11-03", "--out", str(tmp_path)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_timestamps() -> None:
    assert parse_timestamp("1793606400") == at_utc("2026-11-02T08:00:00")
    assert parse_timestamp("1793606400.9") == 1793606400
    assert parse_timestamp("2026-11-02T08:00:00Z") == 1793606400
    assert parse_timestamp("2026-11-02T09:00:00+01:00") == 1793606400
    assert parse_timestamp("2026-11-02 08:00:00") == 1793606400
    for bad in ("", "soon", "2026-11-02T25:00:00", "-5"):
        with pytest.raises(ValueError):
            parse_timestamp(bad)
    with pytest.raises(ReconcileError):
        parse_day("02/11/2026", "--from")


def at_utc(text: str) -> int:
    return at(text)
