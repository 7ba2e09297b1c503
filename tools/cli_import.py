"""`chf subscriber import FILE`: bulk-load lines from CSV or JSON Lines (an MVNO migrating its base).

Rows are added in large transactions (`--batch` rows each, one durable commit per batch) through
chf.provisioning.add_lines, which applies exactly the checks and writes exactly the records and audit events of
`chf subscriber add`. A bad row is reported with its line number and field and skipped; the others go in.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import io
import json
import os
import sys
import time
from array import array
from collections.abc import Iterator
from typing import Any

from chf.core import provisioning
from chf.core.model import RequestError
from chf.runtime.storage import StoreError, Txn
from tools.cli_env import Env, actor
from tools.progress import Progress
from tools.progress import file_position as _position

COLUMNS = provisioning.LINE_FIELDS  # account, imsi, msisdn, iccid, eid, plan, state
DEFAULT_BATCH = 20_000
MAX_ERRORS_PRINTED = 1000  # all bad rows are counted; beyond this many the text output only counts them

IMPORT_HELP = """\
CSV: a header row naming the columns, in any order: imsi (required), msisdn, iccid, eid, account, plan, state
(provisioned or active, default active). An empty cell means "not set"; account and plan fall back to
--account and --plan. JSON Lines: one object per line with the same keys.

Every bad row (malformed identity, unknown account or plan, identity already in use in the store or earlier
in the file, ...) is reported as `LINE: FIELD: message` and skipped; the other rows are imported. Exit status:
0 all rows imported, 1 some rows skipped, 2 the file itself is unusable (nothing imported).

Each batch is one durable transaction; committed batches stay if the import is interrupted, and running the
same file again skips the rows already imported (as duplicates). While a batch is being written, a running
`chf serve` waits for the store's write lock: into a live store, use a smaller --batch (e.g. 1000) so charging
answers are not held back by more than a few tens of milliseconds.
"""


class ImportFileError(RequestError):
    """The file as a whole cannot be imported (unreadable, bad header): nothing is written."""


class ImportStopped(RequestError):
    """A batch could not be committed: the import stops; the batches committed before it stay."""


Row = tuple[int, dict[str, Any] | RequestError]


def csv_rows(stream: io.TextIOBase, source: str) -> Iterator[Row]:
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        raise ImportFileError("file", f"{source}: empty file, expected a header row") from None
    except csv.Error as exc:
        raise ImportFileError("file", f"{source}: line 1: {exc}") from None
    names = [h.strip().lower() for h in header]
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        known = ", ".join(COLUMNS)
        raise ImportFileError("header", f"{source}: line 1: unknown column(s) {', '.join(unknown)} (known: {known})")
    if "imsi" not in names:
        raise ImportFileError("header", f"{source}: line 1: the imsi column is required")
    if len(set(names)) != len(names):
        raise ImportFileError("header", f"{source}: line 1: a column is named twice")
    width = len(names)
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, RequestError("row", str(exc))
            continue
        line_no = reader.line_num
        if not cells:
            continue  # a blank line
        if len(cells) != width:
            yield line_no, RequestError("row", f"has {len(cells)} cells, the header has {width}")
            continue
        # C loops: ~1 µs a row less than a comprehension
        row: dict[str, str | None] = dict(zip(names, map(str.strip, cells), strict=True))
        if "" in row.values():
            for name, value in row.items():
                if not value:
                    row[name] = None  # an empty cell means "not set"
        yield line_no, row


def jsonl_rows(stream: io.TextIOBase) -> Iterator[Row]:
    for line_no, text in enumerate(stream, 1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield line_no, RequestError("row", f"not valid JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(obj, dict):
            yield line_no, RequestError("row", "must be a JSON object")
            continue
        unknown = [k for k in obj if k not in COLUMNS]
        if unknown:
            yield line_no, RequestError(unknown[0], f"unknown field (known: {', '.join(COLUMNS)})")
            continue
        row: dict[str, Any] = {}
        for key, value in obj.items():
            if value is None or value == "":
                continue
            if not isinstance(value, str):  # identities are strings: 0-prefixed digits must not become numbers
                yield line_no, RequestError(key, f"must be a string, got {type(value).__name__} {value!r}")
                break
            row[key] = value.strip()
        else:
            yield line_no, row


def cmd_subscriber_import(env: Env) -> int:
    a = env.args
    fmt = a.format or ("jsonl" if a.file.endswith((".jsonl", ".ndjson", ".json")) else "csv")
    if a.batch < 1:
        raise RequestError("batch", f"must be at least 1, got {a.batch}")
    if a.account is not None:
        provisioning.check_id("account", a.account)
    try:
        handle = open(a.file, encoding="utf-8", newline="")  # noqa: SIM115 (closed in finally)
    except OSError as exc:
        raise ImportFileError("file", f"{a.file}: {exc.strerror}") from None
    try:
        size = os.fstat(handle.fileno()).st_size
        rows = csv_rows(handle, a.file) if fmt == "csv" else jsonl_rows(handle)
        with _batched_collection():
            return run_import(env, rows, handle, size, fmt)
    except UnicodeDecodeError as exc:
        raise ImportFileError("file", f"{a.file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    finally:
        handle.close()


def run_import(env: Env, rows: Iterator[Row], handle: Any, size: int, fmt: str) -> int:
    importer = _Import(env, handle, size)
    stopped: str | None = None
    try:
        importer.feed(rows)
    except ImportStopped as exc:
        importer.emit()
        stopped = f"{exc.field}: {exc.message}"
        print(f"chf: {stopped}", file=sys.stderr)
    importer.progress.update(size, importer.read, len(importer.errors), final=True)
    importer.conclude(fmt, stopped)
    return 0 if not importer.errors and not stopped else 1


class _Import:
    """One run of `chf subscriber import`: rows go in batches, each batch one durable transaction; bad rows are
    reported with their file line, in line order, as each batch ends."""

    def __init__(self, env: Env, handle: Any, size: int) -> None:
        self.env = env
        self.args = env.args
        self.engine = env.engine
        self.store = env.store
        self.now = env.now()
        self.who = actor()
        self.handle = handle
        self.show_progress = bool(self.args.progress or (sys.stderr.isatty() and not env.json))
        self.progress = Progress(size, self.show_progress)
        self.started = time.perf_counter()
        self.read = self.imported = 0
        self.errors: list[tuple[int, str, str]] = []
        self.pending: list[tuple[int, str, str]] = []  # bad rows of the current batch, reported at its end
        self.batch: list[tuple[int, dict[str, Any]]] = []
        self.first_line_id: int | None = None
        # The file line of each line created, by (line id - first id): 8 bytes a line.
        self.file_line_of = array("Q")
        self.templates = provisioning.LineTemplates()  # kept across batches: traced once per account, plan, state

    def feed(self, rows: Iterator[Row]) -> None:
        a = self.args
        batch = self.batch
        for line_no, row in rows:
            self.read += 1
            if isinstance(row, RequestError):
                self.report(line_no, row)
            else:
                if a.account is not None and not row.get("account"):
                    row["account"] = a.account
                if a.plan is not None and not row.get("plan"):
                    row["plan"] = a.plan
                if row.get("account") is None:
                    self.report(line_no, RequestError("account", "no account in the row and no --account default"))
                else:
                    batch.append((line_no, row))
                    if len(batch) >= a.batch:
                        self.flush()
                        gc.collect()  # the cycles of this batch (refused rows' tracebacks), see _batched_collection
            if self.read % 4096 == 0:
                self.progress.update(_position(self.handle), self.read, len(self.errors) + len(self.pending))
        self.flush()

    def report(self, line_no: int, exc: RequestError) -> None:
        self.pending.append((line_no, exc.field, exc.message))

    def emit(self) -> None:
        """Report the bad rows of the batch just written, in line order."""
        self.pending.sort()
        for line_no, field, message in self.pending:
            self.errors.append((line_no, field, message))
            if not self.env.json and len(self.errors) <= MAX_ERRORS_PRINTED:
                if self.show_progress:
                    sys.stderr.write("\r\x1b[K")  # clear the progress line first
                sys.stderr.write(f"{self.args.file}:{line_no}: {field}: {message}\n")
        self.pending.clear()

    def flush(self) -> None:
        """Write the batch in one durable transaction."""
        batch = self.batch
        if not batch:
            self.emit()
            return
        payload = [r for _, r in batch]
        try:
            results = self.store.write(lambda txn: self._add(txn, payload))
        except StoreError as exc:  # e.g. the store is full: this batch left no trace
            first, last = batch[0][0], batch[-1][0]
            raise ImportStopped(
                "store", f"lines {first}-{last} not imported ({exc}); {self.imported:,} lines of earlier batches were"
            ) from None
        for (line_no, row), result in zip(batch, results, strict=True):
            if isinstance(result, RequestError):
                self.report(line_no, self.explain_duplicate(result, row))
            else:
                self.created(line_no, result)
        batch.clear()
        self.emit()

    def _add(self, txn: Txn, payload: list[dict[str, Any]]) -> list[int | RequestError]:
        return provisioning.add_lines(txn, self.engine, payload, now=self.now, actor=self.who, templates=self.templates)

    def created(self, line_no: int, line_id: int) -> None:
        if self.first_line_id is None:
            self.first_line_id = line_id
        index = line_id - self.first_line_id
        file_line_of = self.file_line_of
        if index == len(file_line_of):  # ids are consecutive unless another writer added lines meanwhile
            file_line_of.append(line_no)
        else:
            file_line_of.extend([0] * (index + 1 - len(file_line_of)))
            file_line_of[index] = line_no
        self.imported += 1

    def explain_duplicate(self, exc: RequestError, row: dict[str, Any]) -> RequestError:
        """A duplicate within the file names the earlier line of the file, not just "in use"."""
        first = self.first_line_id
        if not isinstance(exc, provisioning.Conflict) or exc.field not in ("imsi", "msisdn", "iccid") or first is None:
            return exc
        with self.store.read() as txn:
            line_id = txn.subscriber_id_by(exc.field, row[exc.field])
        if line_id is not None and 0 <= line_id - first < len(self.file_line_of):
            earlier = self.file_line_of[line_id - first]
            return provisioning.Conflict(exc.field, f"{row[exc.field]} duplicates line {earlier} of this file")
        return exc

    def conclude(self, fmt: str, stopped: str | None) -> None:
        """The summary: JSON with --json, else a line (and how many bad rows were not printed)."""
        seconds = time.perf_counter() - self.started
        read, errors = self.read, self.errors
        summary = {
            "file": self.args.file,
            "format": fmt,
            "read": read,
            "imported": self.imported,
            "skipped": len(errors),
            "stopped": stopped,
            "seconds": round(seconds, 3),
            "lines_per_second": round(read / seconds) if seconds > 0 else None,
            "errors": [{"line": n, "field": f, "message": m} for n, f, m in errors],
        }
        if self.env.json:
            self.env.out(summary)
            return
        if len(errors) > MAX_ERRORS_PRINTED:
            hidden = len(errors) - MAX_ERRORS_PRINTED
            print(f"chf: ... {hidden} more bad rows not shown (--json lists all)", file=sys.stderr)
        print(
            f"read {read:,}, imported {self.imported:,}, skipped {len(errors):,} in {seconds:.1f} s "
            f"({summary['lines_per_second'] or 0:,} lines/s)" + (" - stopped early" if stopped else "")
        )


@contextlib.contextmanager
def _batched_collection() -> Iterator[None]:
    """Garbage collection once per batch instead of every few hundred allocations.

    A batch allocates hundreds of thousands of short-lived objects, which reference counting frees; the cycle
    collector, triggered by the allocation count, would only walk the batch's rows again and again (~15 % of
    the import's CPU). The objects that exist before the import (modules, catalogue) are frozen out of the
    collections, and `run_import` collects after each batch (the only cycles are refused rows' tracebacks)."""
    was_enabled = gc.isenabled()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def register_import(g: Any, common: argparse.ArgumentParser) -> None:
    p = g.add_parser(
        "import",
        parents=[common],
        help="bulk-load lines from CSV or JSON Lines",
        description=IMPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="CSV (header row) or JSON Lines file")
    p.add_argument("--format", choices=("csv", "jsonl"), help="default: jsonl for .jsonl/.ndjson/.json, else csv")
    p.add_argument("--account", help="account of rows whose account cell is empty")
    p.add_argument("--plan", help="plan of rows whose plan cell is empty")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help=f"rows per transaction (default {DEFAULT_BATCH})")
    p.add_argument("--progress", action="store_true", help="progress bar on stderr even when it is not a terminal")
    p.set_defaults(func=cmd_subscriber_import)
