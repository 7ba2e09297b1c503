"""`chf reconcile --wholesale FILE --from DATE --to DATE`: check the host network's wholesale bill against our rating.

An MVNO pays its host MNO for the usage of its lines. This command compares the MNO's usage records with the
usage we rated (the `usage` events of the store's event spool) and lists every discrepancy:

* ``leakage``: the MNO billed usage of one of our lines that we never rated (we pay for it and bill nobody);
* ``unknown_line``: the MNO billed usage of an IMSI that is not a line of ours at all;
* ``unreported``: we rated usage the MNO never reported;
* ``difference``: both sides saw usage, but they differ by more than the tolerance;
* ``duplicate``: the MNO file holds the same record twice (the copy is left out of the comparison, so the
  double billing shows up once, here, and not again as a difference).

Both sides are aggregated per line (IMSI), UTC day and service (rating group) before they are compared.

Wholesale file (CSV, UTF-8, first line is a header; column names are case-insensitive, order is free, unknown
columns are ignored):

    imsi          the line's IMSI, 6 to 15 digits                                             (required)
    start, end    start and end of the usage, ISO 8601 (2026-11-02T10:00:00Z, an offset, or no offset
                  meaning UTC) or epoch seconds                                               (required)
    rating_group  the service's rating group (integer)                       (this or apn, per row)
    apn           the APN; mapped to a rating group by --apn NAME=RG or the [reconcile.apn] table of
                  conf/chf.toml (case-insensitive; an operator identifier ".mncXXX.mccYYY.gprs" is ignored)
    bytes_up, bytes_down, seconds, events
                  usage (non-negative integers; an absent column or empty cell is 0)

A record counts on the UTC day of its ``end``: our rated events carry the time the usage was reported, which is
when it ended. Records whose end falls outside --from .. --to (both inclusive, UTC days) are counted and left out.

What is compared: each service is compared in the unit type we rate it in (bytes = bytes_up + bytes_down,
seconds, events), learnt from our usage events of that rating group, else from the catalogue's tariffs; a
service neither side knows is compared in every unit type. A difference is within tolerance when its absolute
value is at most --tolerance-bytes (bytes only) or at most --tolerance-percent of the MNO's figure. Leakage,
unreported usage and duplicates are always reported: tolerance is for measurement differences, not for usage
one side never saw.

Malformed rows (bad IMSI, timestamp, number, unmapped APN, end before start, wrong field count) are reported
on stderr and in malformed.csv with their line number and field, skipped, and each counts as one discrepancy
(its usage could not be checked).

Outputs in --out (default <data_dir>/reconcile): discrepancies.csv (class, imsi, day, rating_group, unit, mno,
ours, difference, mno_rows, mno_first_line, detail) and malformed.csv (line, field, value, message). A summary
table goes to stdout (JSON with --json). Exit status: 0 when discrepancies plus malformed rows are at most
--threshold (default 0), 1 when they exceed it, 2 for bad arguments or an unreadable file.

Progress: on a terminal, and without --json, one bar per phase on stderr (our usage events, the wholesale file,
the comparison); --progress draws them anyway.

Scale: rows are streamed; memory holds one aggregate per (line, day, service) per side and a 12-byte
fingerprint per record (for duplicates).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any, TextIO

from chf.core.catalogue import Catalogue
from chf.runtime.storage import Store
from tools.cli_env import Env
from tools.progress import Progress, file_position, wanted

MEASURES = ("bytes", "seconds", "events")
MEASURE_INDEX = {m: i for i, m in enumerate(MEASURES)}
DAY = 86_400
MAX_RATING_GROUP = 2**32 - 1

CLASSES = ("leakage", "unknown_line", "unreported", "difference", "duplicate")
DISCREPANCY_COLUMNS = (
    "class",
    "imsi",
    "day",
    "rating_group",
    "unit",
    "mno",
    "ours",
    "difference",
    "mno_rows",
    "mno_first_line",
    "detail",
)
MALFORMED_COLUMNS = ("line", "field", "value", "message")

EXIT_OK = 0
EXIT_DISCREPANCIES = 1
EXIT_USAGE = 2


class ReconcileError(Exception):
    """Bad arguments or an unreadable wholesale file: nothing can be compared."""


@dataclass(slots=True)
class Options:
    day_from: int  # first UTC day (days since the epoch), inclusive
    day_to: int  # last UTC day, inclusive
    tolerance_bytes: int = 0
    tolerance_percent: Fraction = Fraction(0)
    threshold: int = 0
    apn_map: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Malformed:
    line: int
    field: str
    value: str
    message: str


@dataclass(slots=True)
class Summary:
    rows: int = 0
    rows_in_window: int = 0
    rows_outside_window: int = 0
    malformed: int = 0
    duplicates: int = 0
    keys: int = 0
    matched: int = 0
    within_tolerance: int = 0
    classes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))
    # per class and unit: sum of |mno - ours|
    amounts: dict[str, dict[str, int]] = field(default_factory=lambda: {c: dict.fromkeys(MEASURES, 0) for c in CLASSES})
    mno_totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MEASURES, 0))
    our_totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MEASURES, 0))
    our_events: int = 0

    def discrepancies(self) -> int:
        return sum(self.classes.values()) + self.malformed

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "rows_in_window": self.rows_in_window,
            "rows_outside_window": self.rows_outside_window,
            "malformed": self.malformed,
            "duplicates": self.duplicates,
            "keys_compared": self.keys,
            "matched": self.matched,
            "within_tolerance": self.within_tolerance,
            "classes": dict(self.classes),
            "amounts": {c: dict(v) for c, v in self.amounts.items()},
            "mno_totals": dict(self.mno_totals),
            "our_totals": dict(self.our_totals),
            "our_usage_events": self.our_events,
            "discrepancies": self.discrepancies(),
        }


# ----------------------------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------------------------
def parse_timestamp(text: str) -> int:
    """Epoch seconds from ISO 8601 (no offset = UTC) or from epoch seconds (a fraction is truncated)."""
    text = text.strip()
    if not text:
        raise ValueError("empty")
    head = text.split(".", 1)
    if head[0].isdigit() and (len(head) == 1 or head[1].isdigit()):
        return int(head[0])
    stamp = datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp())


def parse_day(text: str, option: str) -> int:
    """A UTC day (YYYY-MM-DD) as days since the epoch."""
    try:
        day = (date.fromisoformat(text.strip()) - date(1970, 1, 1)).days
    except ValueError as exc:
        raise ReconcileError(f"{option}: not a date (YYYY-MM-DD): {text!r}") from exc
    if day < 0:
        raise ReconcileError(f"{option}: {text} is before 1970-01-01")
    return day


def day_text(day: int) -> str:
    return (date(1970, 1, 1) + timedelta(days=day)).isoformat()


def normalise_apn(apn: str) -> str:
    """APN network identifier, lower case: "Internet.mnc001.mcc208.gprs" -> "internet"."""
    apn = apn.strip().lower()
    cut = apn.find(".mnc")
    return apn[:cut] if cut > 0 else apn


def parse_apn_map(entries: list[str], table: Any) -> dict[str, int]:
    """APN -> rating group from the config table [reconcile.apn] and --apn NAME=RG options (options win)."""
    out: dict[str, int] = {}
    if table is not None:
        if not isinstance(table, dict):
            raise ReconcileError("[reconcile] apn: must be a table of APN = rating group")
        for name, rg in table.items():
            if isinstance(rg, bool) or not isinstance(rg, int) or not 0 <= rg <= MAX_RATING_GROUP:
                raise ReconcileError(f"[reconcile.apn] {name}: rating group must be an integer, got {rg!r}")
            out[normalise_apn(name)] = rg
    for entry in entries:
        name, sep, rg_text = entry.partition("=")
        if not sep or not name.strip() or not rg_text.strip().isdigit() or int(rg_text) > MAX_RATING_GROUP:
            raise ReconcileError(f"--apn: expected NAME=RATING_GROUP, got {entry!r}")
        out[normalise_apn(name)] = int(rg_text)
    return out


def _count(row: list[str], column: int | None, name: str) -> int:
    if column is None:
        return 0
    text = row[column].strip()
    if not text:
        return 0
    if not text.isdigit():
        raise _FieldError(name, text, "must be a non-negative integer")
    return int(text)


class _FieldError(Exception):
    def __init__(self, field: str, value: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.value = value
        self.message = message


@dataclass(slots=True)
class Record:
    line: int
    imsi: str
    start: int
    end: int
    rating_group: int
    bytes_up: int
    bytes_down: int
    seconds: int
    events: int

    def fingerprint(self) -> bytes:
        raw = (
            f"{self.imsi}|{self.start}|{self.end}|{self.rating_group}|{self.bytes_up}|{self.bytes_down}|"
            f"{self.seconds}|{self.events}"
        )
        return hashlib.blake2b(raw.encode(), digest_size=12).digest()


@dataclass(slots=True)
class _Columns:
    """Where each field sits in the rows of a wholesale file (None: the file has no such column)."""

    width: int
    imsi: int
    start: int
    end: int
    rating_group: int | None
    apn: int | None
    bytes_up: int | None
    bytes_down: int | None
    seconds: int | None
    events: int | None


def _read_header(reader: Any, source: str) -> _Columns:
    try:
        header = next(reader)
    except StopIteration:
        raise ReconcileError(f"{source}: empty file, expected a header line") from None
    except csv.Error as exc:
        raise ReconcileError(f"{source}: line 1: {exc}") from exc
    names = [h.strip().lower() for h in header]
    column = {name: i for i, name in enumerate(names) if name}
    missing = [c for c in ("imsi", "start", "end") if c not in column]
    if "rating_group" not in column and "apn" not in column:
        missing.append("rating_group or apn")
    if missing:
        raise ReconcileError(f"{source}: line 1: header lacks column(s): {', '.join(missing)}")
    optional = ("rating_group", "apn", "bytes_up", "bytes_down", "seconds", "events")
    return _Columns(
        len(names), column["imsi"], column["start"], column["end"], *(column.get(name) for name in optional)
    )


def _row_reader(columns: _Columns, apn_map: dict[str, int]) -> Callable[[list[str], int], Record]:
    """The reader of one data row into a Record; _FieldError names the first field that is wrong. The column
    positions are bound once (a month of wholesale records is millions of rows)."""
    c_imsi, c_start, c_end, c_rg, c_apn = columns.imsi, columns.start, columns.end, columns.rating_group, columns.apn
    c_up, c_down, c_sec, c_ev = columns.bytes_up, columns.bytes_down, columns.seconds, columns.events

    def read(row: list[str], line: int) -> Record:
        imsi = row[c_imsi].strip()
        if not (imsi.isdigit() and 6 <= len(imsi) <= 15):
            raise _FieldError("imsi", imsi, "must be 6 to 15 digits")
        try:
            start = parse_timestamp(row[c_start])
        except ValueError:
            raise _FieldError("start", row[c_start], "not an ISO 8601 time or epoch seconds") from None
        try:
            end = parse_timestamp(row[c_end])
        except ValueError:
            raise _FieldError("end", row[c_end], "not an ISO 8601 time or epoch seconds") from None
        if end < start:
            raise _FieldError("end", row[c_end], "is before start")
        rg_text = row[c_rg].strip() if c_rg is not None else ""
        if rg_text:
            if not rg_text.isdigit() or int(rg_text) > MAX_RATING_GROUP:
                raise _FieldError("rating_group", rg_text, "must be an integer from 0 to 4294967295")
            rating_group = int(rg_text)
        else:
            rating_group = _apn_rating_group(row[c_apn].strip() if c_apn is not None else "", apn_map)
        return Record(
            line,
            imsi,
            start,
            end,
            rating_group,
            _count(row, c_up, "bytes_up"),
            _count(row, c_down, "bytes_down"),
            _count(row, c_sec, "seconds"),
            _count(row, c_ev, "events"),
        )

    return read


def _apn_rating_group(apn: str, apn_map: dict[str, int]) -> int:
    if not apn:
        raise _FieldError("rating_group", "", "neither rating_group nor apn is given")
    mapped = apn_map.get(normalise_apn(apn))
    if mapped is None:
        raise _FieldError("apn", apn, "no rating group mapped to this APN (use --apn NAME=RG)")
    return mapped


def read_wholesale(stream: TextIO, apn_map: dict[str, int], source: str) -> Iterator[Record | Malformed]:
    """Every data row of the file as a Record, or as a Malformed naming its line and field."""
    reader = csv.reader(stream)
    columns = _read_header(reader, source)
    read_row = _row_reader(columns, apn_map)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Malformed(reader.line_num, "row", "", f"not valid CSV: {exc}")
            continue
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # a blank line carries no usage
        if len(row) != columns.width:
            yield Malformed(line, "row", str(len(row)), f"has {len(row)} fields, the header has {columns.width}")
            continue
        try:
            record = read_row(row, line)
        except _FieldError as exc:
            yield Malformed(line, exc.field, exc.value, exc.message)
            continue
        yield record


# ----------------------------------------------------------------------------------------------------------------------
# Reconciliation
# ----------------------------------------------------------------------------------------------------------------------
class Table:
    """Both sides' aggregates in one dict, keyed by one int per (line, day, service).

    A key packs the IMSI's index (in order of first sight), the UTC day and the rating group + 1 (our side
    rates requests without a rating group as -1) into one int, which costs a fraction of a tuple; the value
    holds [our bytes, seconds, events, MNO bytes, seconds, events, MNO rows, first MNO line]. One table for
    both sides keeps the data in memory once.
    """

    DAY_SHIFT = 34
    IMSI_SHIFT = 50

    def __init__(self) -> None:
        self.rows: dict[int, list[int]] = {}
        self.imsi_index: dict[str, int] = {}
        self.imsis: list[str] = []

    def key(self, imsi: str, day: int, rating_group: int) -> int:
        index = self.imsi_index.get(imsi)
        if index is None:
            index = self.imsi_index[imsi] = len(self.imsis)
            self.imsis.append(imsi)
        return (index << self.IMSI_SHIFT) | (day << self.DAY_SHIFT) | (rating_group + 1)

    def entry(self, key: int) -> list[int]:
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = [0, 0, 0, 0, 0, 0, 0, 0]
        return row

    def sorted_keys(self) -> list[int]:
        """Keys in (IMSI, day, rating group) order."""
        rank = [0] * len(self.imsis)
        for position, index in enumerate(sorted(range(len(self.imsis)), key=self.imsis.__getitem__)):
            rank[index] = position
        low = (1 << self.IMSI_SHIFT) - 1
        shift = self.IMSI_SHIFT
        return sorted(self.rows, key=lambda k: (rank[k >> shift] << shift) | (k & low))

    def split(self, key: int) -> tuple[str, int, int]:
        return (
            self.imsis[key >> self.IMSI_SHIFT],
            (key >> self.DAY_SHIFT) & ((1 << (self.IMSI_SHIFT - self.DAY_SHIFT)) - 1),
            (key & ((1 << self.DAY_SHIFT) - 1)) - 1,
        )


@dataclass(slots=True)
class Result:
    summary: Summary
    discrepancies_path: str
    malformed_path: str
    malformed_sample: list[Malformed]


def catalogue_units(catalogue: Catalogue | None) -> tuple[dict[int, set[str]], set[str]]:
    """Unit types the catalogue rates each rating group in, and those of `default` tariffs."""
    by_rg: dict[int, set[str]] = {}
    default: set[str] = set()
    if catalogue is None:
        return by_rg, default
    for plan in catalogue.plans.values():
        for rg, tariff in plan.rating.items():
            by_rg.setdefault(rg, set()).add(tariff.unit)
        if plan.default_tariff is not None:
            default.add(plan.default_tariff.unit)
    return by_rg, default


def aggregate_ours(
    store: Store, options: Options, summary: Summary, table: Table, show_progress: bool = False
) -> dict[int, set[str]]:
    """Add our rated usage per (imsi, day, rating group) to `table`, in the unit each event was rated in;
    returns the unit types seen per rating group."""
    first = options.day_from * DAY
    stop = (options.day_to + 1) * DAY
    units: dict[int, set[str]] = {}
    with store.read() as txn:
        last = txn.last_event_seq()
        progress = Progress(last, show_progress, unit="events", label="our usage")
        scanned = 0
        for event in txn.events():
            scanned += 1
            if not scanned & 4095:
                progress.update(event.get("seq", 0), scanned)
            if event.get("kind") != "usage":
                continue
            when = event.get("time")
            imsi = event.get("imsi")
            if not isinstance(when, int) or not first <= when < stop or not imsi:
                continue
            rg = event.get("rating_group", -1)
            unit: str = event.get("unit") or ""
            units.setdefault(rg, set()).add(unit)
            index = MEASURE_INDEX.get(unit)
            if index is None:
                continue  # money-rated services have no counterpart in a wholesale file
            used = int(event.get("used", 0))
            table.entry(table.key(imsi, when // DAY, rg))[index] += used
            summary.our_totals[unit] += used
            summary.our_events += 1
    progress.update(last, scanned, final=True)
    return units


def _within(diff: int, mno: int, unit: str, options: Options) -> bool:
    size = abs(diff)
    if unit == "bytes" and size <= options.tolerance_bytes:
        return True
    return size * 100 <= options.tolerance_percent * mno


def reconcile(
    store: Store,
    catalogue: Catalogue | None,
    wholesale: str,
    options: Options,
    out_dir: str,
    *,
    malformed_sample_size: int = 20,
    show_progress: bool = False,
) -> Result:
    summary = Summary()
    table = Table()
    our_units = aggregate_ours(store, options, summary, table, show_progress)
    cat_units, default_units = catalogue_units(catalogue)

    compared_cache: dict[int, tuple[str, ...]] = {}

    def compared(rg: int) -> tuple[str, ...]:
        chosen = compared_cache.get(rg)
        if chosen is None:
            units = our_units.get(rg) or cat_units.get(rg) or default_units
            chosen = compared_cache[rg] = tuple(m for m in MEASURES if m in units) or MEASURES
        return chosen

    os.makedirs(out_dir, exist_ok=True)
    disc_path = os.path.join(out_dir, "discrepancies.csv")
    bad_path = os.path.join(out_dir, "malformed.csv")
    sample: list[Malformed] = []
    seen: dict[bytes, int] = {}  # record fingerprint -> line where it was first seen
    try:
        source = open(wholesale, encoding="utf-8-sig", newline="")  # noqa: SIM115 (closed below, errors mapped)
    except OSError as exc:
        raise ReconcileError(f"{wholesale}: cannot read: {exc.strerror}") from exc
    with (
        source,
        open(disc_path, "w", encoding="utf-8", newline="") as disc_file,
        open(bad_path, "w", encoding="utf-8", newline="") as bad_file,
    ):
        disc = csv.writer(disc_file)
        disc.writerow(DISCREPANCY_COLUMNS)
        bad = csv.writer(bad_file)
        bad.writerow(MALFORMED_COLUMNS)
        progress = Progress(os.fstat(source.fileno()).st_size, show_progress, label="wholesale")
        try:
            for item in read_wholesale(source, options.apn_map, wholesale):
                if not summary.rows & 4095:
                    progress.update(file_position(source), summary.rows, summary.malformed)
                if isinstance(item, Malformed):
                    summary.rows += 1
                    summary.malformed += 1
                    bad.writerow((item.line, item.field, item.value, item.message))
                    if len(sample) < malformed_sample_size:
                        sample.append(item)
                    continue
                summary.rows += 1
                day = item.end // DAY
                if not options.day_from <= day <= options.day_to:
                    summary.rows_outside_window += 1
                    continue
                summary.rows_in_window += 1
                amounts = (item.bytes_up + item.bytes_down, item.seconds, item.events)
                fingerprint = item.fingerprint()
                first_line = seen.get(fingerprint)
                if first_line is not None:
                    summary.duplicates += 1
                    units = compared(item.rating_group)
                    shown = [m for m in units if amounts[MEASURE_INDEX[m]]] or [units[0]]
                    for unit in shown:
                        amount = amounts[MEASURE_INDEX[unit]]
                        summary.classes["duplicate"] += 1
                        summary.amounts["duplicate"][unit] += amount
                        disc.writerow(
                            (
                                "duplicate",
                                item.imsi,
                                day_text(day),
                                item.rating_group,
                                unit,
                                amount,
                                "",
                                amount,
                                1,
                                item.line,
                                f"same record as line {first_line}; left out of the comparison",
                            )
                        )
                    continue
                seen[fingerprint] = item.line
                totals = table.entry(table.key(item.imsi, day, item.rating_group))
                totals[3] += amounts[0]
                totals[4] += amounts[1]
                totals[5] += amounts[2]
                totals[6] += 1
                if not totals[7]:
                    totals[7] = item.line
                for i, m in enumerate(MEASURES):
                    summary.mno_totals[m] += amounts[i]
        except UnicodeDecodeError as exc:
            progress.clear()
            raise ReconcileError(f"{wholesale}: not UTF-8 text: {exc.reason}") from exc
        progress.update(progress.total, summary.rows, summary.malformed, final=True)
        seen.clear()
        _compare(
            store,
            table,
            compared,
            options,
            summary,
            disc,
            Progress(len(table.rows), show_progress, unit="keys", label="compare"),
        )
    return Result(summary, disc_path, bad_path, sample)


def _compare(
    store: Store,
    table: Table,
    compared: Any,
    options: Options,
    summary: Summary,
    disc: Any,
    progress: Progress,
) -> None:
    known: dict[str, bool] = {}
    keys = table.sorted_keys()
    summary.keys = len(keys)
    rows = table.rows
    with store.read() as txn:
        for done, key in enumerate(keys):
            if not done & 4095:
                progress.update(done, done)
            imsi, day, rg = table.split(key)
            entry = rows[key]
            for unit in compared(rg):
                i = MEASURE_INDEX[unit]
                o, t = entry[i], entry[3 + i]
                if o == t:
                    if o or entry[6]:
                        summary.matched += 1
                    continue
                diff = t - o
                detail = ""
                if o == 0:
                    line_known = known.get(imsi)
                    if line_known is None:
                        line_known = known[imsi] = txn.subscriber_id_by("imsi", imsi) is not None
                    kind = "leakage" if line_known else "unknown_line"
                    detail = "no rated usage" if line_known else "IMSI is not a line in the store"
                elif t == 0:
                    kind = "unreported"
                    detail = "the MNO reported no usage"
                elif _within(diff, t, unit, options):
                    summary.within_tolerance += 1
                    continue
                else:
                    kind = "difference"
                    detail = "MNO reports more" if diff > 0 else "MNO reports less"
                summary.classes[kind] += 1
                summary.amounts[kind][unit] += abs(diff)
                disc.writerow(
                    (
                        kind,
                        imsi,
                        day_text(day),
                        rg,
                        unit,
                        t,
                        o,
                        diff,
                        entry[6],
                        entry[7] or "",
                        detail,
                    )
                )
    progress.update(len(keys), len(keys), final=True)


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------
def summary_text(result: Result, options: Options) -> str:
    s = result.summary
    lines = [
        f"wholesale reconciliation {day_text(options.day_from)} .. {day_text(options.day_to)} (UTC days)",
        f"  rows read {s.rows}: in window {s.rows_in_window}, outside window {s.rows_outside_window}, "
        f"malformed {s.malformed}, duplicates {s.duplicates}",
        f"  our usage events {s.our_events}; line-day-services compared {s.keys}: matched {s.matched}, "
        f"within tolerance {s.within_tolerance}",
        "",
        f"  {'class':<14} {'count':>8} {'bytes':>16} {'seconds':>12} {'events':>10}",
    ]
    for c in CLASSES:
        a = s.amounts[c]
        lines.append(f"  {c:<14} {s.classes[c]:>8} {a['bytes']:>16} {a['seconds']:>12} {a['events']:>10}")
    lines.append(f"  {'malformed':<14} {s.malformed:>8}")
    t, o = s.mno_totals, s.our_totals
    lines.append(f"  {'total MNO':<14} {'':>8} {t['bytes']:>16} {t['seconds']:>12} {t['events']:>10}")
    lines.append(f"  {'total ours':<14} {'':>8} {o['bytes']:>16} {o['seconds']:>12} {o['events']:>10}")
    lines.append("")
    verdict = "beyond" if s.discrepancies() > options.threshold else "within"
    lines.append(f"  discrepancies {s.discrepancies()} ({verdict} threshold {options.threshold})")
    lines.append(f"  details: {result.discrepancies_path}, malformed rows: {result.malformed_path}")
    return "\n".join(lines)


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return int(text)


def _percent(text: str) -> Fraction:
    try:
        value = Fraction(text.strip())  # exact: "0.5" is 1/2, never a binary float
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"must be a number such as 0.5, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text!r}")
    return value


def cmd_reconcile(env: Env) -> int:
    import json

    args = env.args
    try:
        day_from = parse_day(args.date_from, "--from")
        day_to = parse_day(args.date_to, "--to")
        if day_to < day_from:
            raise ReconcileError(f"--to: {args.date_to} is before --from {args.date_from}")
        section = env.config.section("reconcile")
        options = Options(
            day_from,
            day_to,
            tolerance_bytes=args.tolerance_bytes,
            tolerance_percent=args.tolerance_percent,
            threshold=args.threshold,
            apn_map=parse_apn_map(args.apn or [], section.get("apn")),
        )
        out_dir = args.out or os.path.join(env.config.data_dir, "reconcile")
        show_progress = wanted(env.json, args.progress)
        result = reconcile(
            env.store, env.engine.catalogue, args.wholesale, options, out_dir, show_progress=show_progress
        )
    except ReconcileError as exc:
        print(f"chf: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for bad in result.malformed_sample:
        print(f"chf: {args.wholesale}:{bad.line}: {bad.field}: {bad.message} ({bad.value!r}); skipped", file=sys.stderr)
    hidden = result.summary.malformed - len(result.malformed_sample)
    if hidden > 0:
        print(f"chf: ... and {hidden} more malformed rows, see {result.malformed_path}", file=sys.stderr)
    if env.json:
        out = result.summary.as_dict()
        out["threshold"] = options.threshold
        out["discrepancies_csv"] = result.discrepancies_path
        out["malformed_csv"] = result.malformed_path
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(summary_text(result, options))
    return EXIT_DISCREPANCIES if result.summary.discrepancies() > options.threshold else EXIT_OK


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    description = (__doc__ or "").partition("\n\n")[2]
    p = sub.add_parser(
        "reconcile",
        parents=[common],
        help="compare the host MNO's wholesale usage records with our rated usage",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--wholesale", required=True, metavar="FILE", help="the MNO's usage records (CSV, see above)")
    p.add_argument("--from", dest="date_from", required=True, metavar="DATE", help="first UTC day, YYYY-MM-DD")
    p.add_argument("--to", dest="date_to", required=True, metavar="DATE", help="last UTC day (inclusive)")
    p.add_argument("--tolerance-bytes", type=_non_negative, default=0, metavar="N", help="absolute (default 0)")
    p.add_argument("--tolerance-percent", type=_percent, default=Fraction(0), metavar="P", help="of the MNO figure")
    p.add_argument("--threshold", type=_non_negative, default=0, metavar="N", help="discrepancies tolerated")
    p.add_argument("--apn", action="append", metavar="NAME=RG", help="map an APN to a rating group (repeatable)")
    p.add_argument("--out", metavar="DIR", help="where the CSV files go (default <data_dir>/reconcile)")
    p.add_argument("--progress", action="store_true", help="progress bars on stderr even when it is not a terminal")
    p.set_defaults(func=cmd_reconcile)
