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
from typing import TYPE_CHECKING, Any

import lmdb

from chf.core import provisioning
from chf.core.model import RequestError
from store.lmdbstore import StoreError, Txn
from tools.progress import Progress
from tools.progress import file_position as _position

if TYPE_CHECKING:
    from tools.cli import Env

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
    reader = csv.reader(stream)  # type: ignore[arg-type]
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
        row = dict(zip(names, map(str.strip, cells), strict=True))  # C loops: ~1 µs a row less than a comprehension
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
    a = env.args
    engine = env.engine
    store = env.store
    now = env.now()
    from tools.cli_admin import actor

    who = actor()
    show_progress = a.progress or (sys.stderr.isatty() and not env.json)
    progress = Progress(size, show_progress)
    started = time.perf_counter()
    read = imported = 0
    errors: list[tuple[int, str, str]] = []
    first_line_id: int | None = None
    file_line_of = array("Q")  # file line number of each line created, by (line id - first id): 8 bytes a line

    pending: list[tuple[int, str, str]] = []  # bad rows of the current batch, reported in line order at its end

    def report(line_no: int, exc: RequestError) -> None:
        pending.append((line_no, exc.field, exc.message))

    def emit() -> None:
        pending.sort()
        for line_no, field, message in pending:
            errors.append((line_no, field, message))
            if not env.json and len(errors) <= MAX_ERRORS_PRINTED:
                if show_progress:
                    sys.stderr.write("\r\x1b[K")  # clear the progress line first
                sys.stderr.write(f"{a.file}:{line_no}: {field}: {message}\n")
        pending.clear()

    def explain_duplicate(exc: RequestError, row: dict[str, Any]) -> RequestError:
        """A duplicate within the file names the earlier line of the file, not just "in use"."""
        if (
            not isinstance(exc, provisioning.Conflict)
            or exc.field not in ("imsi", "msisdn", "iccid")
            or first_line_id is None
        ):
            return exc
        with store.read() as txn:
            line_id = txn.subscriber_id_by(exc.field, row[exc.field])
        if line_id is not None and 0 <= line_id - first_line_id < len(file_line_of):
            earlier = file_line_of[line_id - first_line_id]
            return provisioning.Conflict(exc.field, f"{row[exc.field]} duplicates line {earlier} of this file")
        return exc

    batch: list[tuple[int, dict[str, Any]]] = []

    def flush() -> None:
        nonlocal imported, first_line_id
        if not batch:
            emit()
            return
        payload = [r for _, r in batch]
        try:
            results = store.write(lambda txn: _add(txn, payload))
        except (StoreError, lmdb.Error) as exc:  # e.g. the store's map is full: this batch left no trace
            first, last = batch[0][0], batch[-1][0]
            raise ImportStopped(
                "store", f"lines {first}-{last} not imported ({exc}); {imported:,} lines of earlier batches were"
            ) from None
        for (line_no, row), result in zip(batch, results, strict=True):
            if isinstance(result, RequestError):
                report(line_no, explain_duplicate(result, row))
            else:
                if first_line_id is None:
                    first_line_id = result
                index = result - first_line_id
                if index == len(file_line_of):  # ids are consecutive unless another writer added lines meanwhile
                    file_line_of.append(line_no)
                else:
                    file_line_of.extend([0] * (index + 1 - len(file_line_of)))
                    file_line_of[index] = line_no
                imported += 1
        batch.clear()
        emit()

    templates = provisioning.LineTemplates()  # kept across batches: traced once per account, plan and state

    def _add(txn: Txn, payload: list[dict[str, Any]]) -> list[int | RequestError]:
        return provisioning.add_lines(txn, engine, payload, now=now, actor=who, templates=templates)

    stopped: str | None = None
    try:
        for line_no, row in rows:
            read += 1
            if isinstance(row, RequestError):
                report(line_no, row)
            else:
                if a.account is not None and not row.get("account"):
                    row["account"] = a.account
                if a.plan is not None and not row.get("plan"):
                    row["plan"] = a.plan
                if row.get("account") is None:
                    report(line_no, RequestError("account", "no account in the row and no --account default"))
                else:
                    batch.append((line_no, row))
                    if len(batch) >= a.batch:
                        flush()
                        gc.collect()  # the cycles of this batch (refused rows' tracebacks), see _batched_collection
            if read % 4096 == 0:
                progress.update(_position(handle), read, len(errors) + len(pending))
        flush()
    except ImportStopped as exc:
        emit()
        stopped = f"{exc.field}: {exc.message}"
        print(f"chf: {stopped}", file=sys.stderr)
    progress.update(size, read, len(errors), final=True)
    seconds = time.perf_counter() - started
    summary = {
        "file": a.file,
        "format": fmt,
        "read": read,
        "imported": imported,
        "skipped": len(errors),
        "stopped": stopped,
        "seconds": round(seconds, 3),
        "lines_per_second": round(read / seconds) if seconds > 0 else None,
        "errors": [{"line": n, "field": f, "message": m} for n, f, m in errors],
    }
    if env.json:
        env.out(summary)
    else:
        if len(errors) > MAX_ERRORS_PRINTED:
            hidden = len(errors) - MAX_ERRORS_PRINTED
            print(f"chf: ... {hidden} more bad rows not shown (--json lists all)", file=sys.stderr)
        print(
            f"read {read:,}, imported {imported:,}, skipped {len(errors):,} in {seconds:.1f} s "
            f"({summary['lines_per_second'] or 0:,} lines/s)" + (" - stopped early" if stopped else "")
        )
    return 0 if not errors and not stopped else 1


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
