"""The export stream: rated and audit events leave the spool for billing, finance and analytics.

An `Exporter` reads the event spool (`Txn.events(after=cursor)`) in sequence order, hands a batch to its sink,
and only after the sink has acknowledged it (file fsync'd; JetStream publish acknowledged) advances its
durable cursor (`Txn.put_cursor`) through the group-commit writer. Delivery is therefore at least once: a
crash between the acknowledgement and the cursor commit re-delivers that batch, and every record carries its
unique `recordId` so downstream de-duplicates (JetStream does it itself: `Nats-Msg-Id` = recordId).

Charging never waits for export: exporters only read the spool, and a slow or dead sink makes the spool grow.
`backlog_limit` (events) bounds how far behind an exporter may fall before it is reported: beyond it the
exporter logs `event=export_backlog_over_limit`, `chf_export_backlog_events` shows it, and /readyz lists it.
Rated events are never dropped to honour the limit (they are money); the hard bound on the spool is the store's
`map_size_mb`, so alert on the backlog metric well before that.

Export record (JSON, one object per event). Names follow the TS 32.298 charging record vocabulary where one
exists; the rest are the rating fields of this charging function:

    recordId             unique event id "<store id>-<sequence>" (de-duplication key)
    recordSequenceNumber spool sequence number (monotonic, no gaps within one store)
    recordType           event kind: usage | refund | topup | adjustment | renewal | renewal_failed | expiry |
                         bonus | bucket_grant | plan_change | lifecycle | line_move | release | pool_resize
    timeOfReport         ISO 8601 UTC time of the event; `time` the same in UNIX seconds
    tenant, account      the MVNO brand and the paying account
    subscriberId         internal line id; servedIMSI, servedMSISDN its identities (null for account events)
    chargingSessionId    the session (usage, refund, release)
    ratingGroup, serviceIdentifier
    usedUnits            {datavolumeUplink, datavolumeDownlink, totalVolume (bytes), timeUsage (seconds),
                          serviceSpecificUnits (events), money} - only the types reported; CC-Input-Octets
                          (octets from the user) are uplink, CC-Output-Octets downlink
    ratedUnit, ratedQuantity
                         the unit type that was rated and how many
    causeForRecClosing   the reporting reason the client gave (final, quota exhausted, validity time...)
    zone, tariff, charge, currency
                         rating: the tariff applied, the money charged (integer micro-units, negative for a
                         refund) in the account's currency
    balanceImpacts       [{balance, unit, delta, after}] every balance the event changed, with its value after
    overGrant            units reported beyond the grant (still charged)
    actor, reason        who or what caused the event and why (audit)
    details              the remaining fields of the event (amount, state, from, plan, released, ...)

    recordOpeningTime, duration
                         for usage: the start of the container this report closes (the session's previous
                         request, when the units were granted) and the seconds from then to timeOfReport
    sessionStartTime     for usage: when the charging session began

The spool records each report, not whole-session records: a session's records share chargingSessionId and
together cover it from sessionStartTime; timeUsage is the reported duration of one report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from chf.runtime import metrics
from store.interface import Store, StoreBusy, Txn

log = logging.getLogger("chf.export")

# Event fields that are mapped to a record field of their own (everything else goes to `details`).
_MAPPED = frozenset(
    {
        "opened",
        "session_started",
        "id",
        "seq",
        "kind",
        "time",
        "tenant",
        "account",
        "subscriber",
        "imsi",
        "msisdn",
        "session",
        "rating_group",
        "service_id",
        "units",
        "unit",
        "used",
        "reason",
        "zone",
        "tariff",
        "charge",
        "currency",
        "impacts",
        "over_grant",
        "actor",
    }
)
_UNIT_NAMES = {
    "bytes_in": "datavolumeUplink",
    "bytes_out": "datavolumeDownlink",
    "bytes": "totalVolume",
    "seconds": "timeUsage",
    "events": "serviceSpecificUnits",
    "money": "money",
}


def iso_time(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def to_record(event: dict[str, Any]) -> dict[str, Any]:
    """Map a spool event to an export record (vocabulary in the module docstring)."""
    units = event.get("units") or {}
    record: dict[str, Any] = {
        "recordId": event["id"],
        "recordSequenceNumber": event["seq"],
        "recordType": event["kind"],
        "timeOfReport": iso_time(int(event["time"])),
        "time": event["time"],
        "tenant": event.get("tenant"),
        "account": event.get("account"),
        "subscriberId": event.get("subscriber"),
        "servedIMSI": event.get("imsi"),
        "servedMSISDN": event.get("msisdn"),
        "chargingSessionId": event.get("session"),
        "ratingGroup": event.get("rating_group"),
        "serviceIdentifier": event.get("service_id"),
        "usedUnits": {_UNIT_NAMES.get(k, k): v for k, v in units.items()} or None,
        "ratedUnit": event.get("unit"),
        "ratedQuantity": event.get("used"),
        "causeForRecClosing": event.get("reason") if event["kind"] == "usage" else None,
        "zone": event.get("zone"),
        "tariff": event.get("tariff"),
        "charge": event.get("charge"),
        "currency": event.get("currency"),
        "balanceImpacts": event.get("impacts", []),
        "overGrant": event.get("over_grant"),
        "recordOpeningTime": iso_time(int(event["opened"])) if event.get("opened") is not None else None,
        "duration": int(event["time"]) - int(event["opened"]) if event.get("opened") is not None else None,
        "sessionStartTime": iso_time(int(event["session_started"]))
        if event.get("session_started") is not None
        else None,
        "actor": event.get("actor"),
        "reason": event.get("reason"),
    }
    details = {k: v for k, v in event.items() if k not in _MAPPED}
    if details:
        record["details"] = details
    return {k: v for k, v in record.items() if v is not None}


def encode_record(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()


class Sink(Protocol):
    """Where an exporter delivers. `deliver` returns only once the records are durable at the sink (that is the
    acknowledgement) and raises otherwise; `idle` lets a sink do time-based work (rolling files)."""

    name: str

    async def open(self) -> None: ...

    async def deliver(self, records: list[dict[str, Any]]) -> None: ...

    async def idle(self) -> None: ...

    async def close(self) -> None: ...


# ------------------------------------------------------------------------------------------------------------------
# The exporter
# ------------------------------------------------------------------------------------------------------------------
_RUNNING: weakref.WeakSet[Exporter] = weakref.WeakSet()


def backlogs(store: Store) -> dict[str, tuple[int, int]]:
    """(backlog, limit) of every running exporter of `store`, by sink name; read from the store, so it is what
    the cursors say durably."""
    out: dict[str, tuple[int, int]] = {}
    exporters = [e for e in _RUNNING if e.store is store]
    if not exporters:
        return out
    with store.read() as txn:
        last = txn.last_event_seq()
        for e in exporters:
            out[e.name] = (last - txn.get_cursor(e.cursor_name), e.backlog_limit)
    return out


class Exporter:
    """Moves events from the spool to one sink, in order, at least once, resuming from its durable cursor."""

    def __init__(
        self,
        store: Store,
        sink: Sink,
        *,
        batch: int = 500,
        poll_interval: float = 0.2,
        backlog_limit: int = 10_000_000,
        retry_initial: float = 0.2,
        retry_max: float = 5.0,
        mapper: Callable[[dict[str, Any]], dict[str, Any]] = to_record,
    ) -> None:
        self.store = store
        self.sink = sink
        self.name = sink.name
        self.cursor_name = "export:" + sink.name
        self.batch = batch
        self.poll_interval = poll_interval
        self.backlog_limit = backlog_limit
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.mapper = mapper
        self.delivered = 0
        self._task: asyncio.Task[None] | None = None
        self._over_limit = False

    # -- one step, usable without the loop (tests, a catch-up command) ----------------------------------------------
    def pending(self) -> tuple[int, list[dict[str, Any]], int]:
        """(cursor, next batch of events, last committed sequence)."""
        with self.store.read() as txn:
            cursor = txn.get_cursor(self.cursor_name)
            events = list(txn.events(after=cursor, limit=self.batch))
            last = txn.last_event_seq()
        return cursor, events, last

    async def step(self) -> int:
        """Deliver the next batch; returns how many events were delivered (0: the sink is up to date)."""
        cursor, events, last = self.pending()
        metrics.EXPORT_BACKLOG.labels(self.name).set(last - cursor)
        self._check_limit(last - cursor)
        if not events:
            await self.sink.idle()
            return 0
        records = [self.mapper(e) for e in events]
        await self.sink.deliver(records)  # raises unless acknowledged
        upto = events[-1]["seq"]
        await self._advance(upto)
        self.delivered += len(events)
        metrics.EXPORT_DELIVERED.labels(self.name).inc(len(events))
        metrics.EXPORT_BACKLOG.labels(self.name).set(max(0, last - upto))
        return len(events)

    async def _advance(self, upto: int) -> None:
        name = self.cursor_name

        def put(txn: Txn) -> None:
            # Never move backwards: two exporters of one sink name (a misconfiguration) must not re-deliver.
            if txn.get_cursor(name) < upto:
                txn.put_cursor(name, upto)

        delay = 0.01
        while True:
            try:
                await self.store.submit(put)
                return
            except StoreBusy:  # charging has priority; wait for room in the write queue
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _check_limit(self, backlog: int) -> None:
        over = backlog > self.backlog_limit
        if over and not self._over_limit:
            log.error(
                "event=export_backlog_over_limit sink=%s backlog=%d limit=%d", self.name, backlog, self.backlog_limit
            )
        elif self._over_limit and not over:
            log.info("event=export_backlog_recovered sink=%s backlog=%d", self.name, backlog)
        self._over_limit = over

    # -- as a `chf serve` component ---------------------------------------------------------------------------------
    async def start(self) -> None:
        _RUNNING.add(self)
        self._task = asyncio.create_task(self._run(), name=f"chf-export-{self.name}")

    async def stop(self) -> None:
        task = self._task
        self._task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        _RUNNING.discard(self)
        with contextlib.suppress(Exception):
            await self.sink.close()

    async def _run(self) -> None:
        delay = self.retry_initial
        opened = False
        while True:
            try:
                if not opened:
                    await self.sink.open()
                    opened = True
                    log.info("event=export_sink_open sink=%s", self.name)
                while await self.step():
                    await asyncio.sleep(0)  # let charging run between batches
                delay = self.retry_initial
                await asyncio.sleep(self.poll_interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.EXPORT_FAILED.labels(self.name).inc()
                log.warning("event=export_failed sink=%s retry_in=%.2f error=%r", self.name, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)


# ------------------------------------------------------------------------------------------------------------------
# File sink: JSON Lines, rolled by size and by time
# ------------------------------------------------------------------------------------------------------------------
class FileSink:
    """Writes `<prefix>-<UTC time>-<first sequence>.jsonl.tmp`, fsyncs each batch (the acknowledgement), and
    renames the file to `.jsonl` once it reaches `max_bytes` or `max_age` seconds: a billing system pulls only
    closed `.jsonl` files. A `.tmp` file left by a crash is closed on the next start (a torn last line is cut),
    so it is never lost; events after the durable cursor are delivered again in the next file (de-duplicate on
    recordId)."""

    def __init__(
        self,
        directory: str,
        *,
        name: str = "files",
        prefix: str = "chf-events",
        max_bytes: int = 64 << 20,
        max_age: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.directory = directory
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.clock = clock
        self._file: Any = None
        self._path: str | None = None
        self._opened_at = 0.0
        self._size = 0
        self.closed_files = 0

    async def open(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        for entry in sorted(os.listdir(self.directory)):
            if entry.startswith(self.prefix) and entry.endswith(".jsonl.tmp"):
                self._recover(os.path.join(self.directory, entry))

    def _recover(self, path: str) -> None:
        with open(path, "rb+") as f:
            data = f.read()
            keep = data.rfind(b"\n") + 1
            if keep != len(data):
                log.warning(
                    "event=export_file_torn_line_cut file=%s bytes=%d", os.path.basename(path), len(data) - keep
                )
                f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        if keep == 0:
            os.unlink(path)
        else:
            self._publish(path)

    def _publish(self, tmp_path: str) -> None:
        os.rename(tmp_path, tmp_path[: -len(".tmp")])
        self._sync_dir()
        self.closed_files += 1
        log.info("event=export_file_closed file=%s", os.path.basename(tmp_path[: -len(".tmp")]))

    def _sync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _new_file(self, first_seq: int) -> None:
        now = self.clock()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        base = os.path.join(self.directory, f"{self.prefix}-{stamp}-{first_seq:012d}")
        path, n = base + ".jsonl.tmp", 1
        while os.path.exists(path) or os.path.exists(path[: -len(".tmp")]):  # a re-delivery after a crash
            path, n = f"{base}.{n}.jsonl.tmp", n + 1
        self._file = open(path, "ab")  # noqa: SIM115 - kept open across batches until rolled
        self._path = path
        self._opened_at = now
        self._size = 0
        self._sync_dir()

    def _roll(self) -> None:
        if self._file is None or self._path is None:
            return
        self._file.close()
        self._file = None
        self._publish(self._path)
        self._path = None

    async def deliver(self, records: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(self._write, records)

    def _write(self, records: list[dict[str, Any]]) -> None:
        if self._file is not None and self.clock() - self._opened_at >= self.max_age:
            self._roll()
        if self._file is None:
            self._new_file(records[0]["recordSequenceNumber"])
        data = b"".join(encode_record(r) + b"\n" for r in records)
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._size += len(data)
        if self._size >= self.max_bytes:
            self._roll()

    async def idle(self) -> None:
        if self._file is not None and self.clock() - self._opened_at >= self.max_age:
            await asyncio.to_thread(self._roll)

    async def close(self) -> None:
        await asyncio.to_thread(self._roll)


# ------------------------------------------------------------------------------------------------------------------
# NATS JetStream sink
# ------------------------------------------------------------------------------------------------------------------
class NatsSink:
    """Publishes each record to `<subject>.<recordType>` on a JetStream stream (created when absent) with
    `Nats-Msg-Id` = recordId, and awaits each publish acknowledgement before the next: the stream keeps spool
    order even when the broker restarts mid-batch, and its duplicate window drops re-deliveries."""

    def __init__(
        self,
        servers: list[str],
        *,
        name: str = "nats",
        stream: str = "CHF_EVENTS",
        subject: str = "chf.events",
        ack_timeout: float = 5.0,
        duplicate_window: float = 120.0,
    ) -> None:
        self.name = name
        self.servers = servers
        self.stream = stream
        self.subject = subject
        self.ack_timeout = ack_timeout
        self.duplicate_window = duplicate_window
        self._nc: Any = None
        self._js: Any = None
        self._stream_ready = False

    async def open(self) -> None:
        import nats

        async def on_error(exc: Exception) -> None:
            log.warning("event=nats_error sink=%s error=%r", self.name, exc)

        self._nc = await nats.connect(
            servers=self.servers,
            name="chf-exporter",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            connect_timeout=2,
            error_cb=on_error,
            allow_reconnect=True,
        )
        self._js = self._nc.jetstream(timeout=self.ack_timeout)
        await self._ensure_stream()

    async def _ensure_stream(self) -> None:
        from nats.js.api import StreamConfig
        from nats.js.errors import NotFoundError

        try:
            await self._js.stream_info(self.stream)
        except NotFoundError:
            await self._js.add_stream(
                StreamConfig(name=self.stream, subjects=[self.subject + ".>"], duplicate_window=self.duplicate_window)
            )
            log.info("event=nats_stream_created sink=%s stream=%s", self.name, self.stream)
        self._stream_ready = True

    async def deliver(self, records: list[dict[str, Any]]) -> None:
        if self._js is None:
            raise ConnectionError("not connected to NATS")
        if not self._stream_ready:
            await self._ensure_stream()
        for record in records:
            ack = await self._js.publish(
                f"{self.subject}.{record['recordType']}",
                encode_record(record),
                timeout=self.ack_timeout,
                stream=self.stream,
                headers={"Nats-Msg-Id": record["recordId"]},
            )
            if ack.stream != self.stream:
                raise ConnectionError(f"acknowledged by stream {ack.stream!r}, expected {self.stream!r}")

    async def idle(self) -> None:
        return None

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None
            self._js = None


# ------------------------------------------------------------------------------------------------------------------
# Configuration and `chf serve` wiring
# ------------------------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class ExportConfig:
    batch: int = 500
    poll_interval: float = 0.2
    backlog_limit: int = 10_000_000
    files: dict[str, Any] | None = None  # [export.files]
    nats: dict[str, Any] | None = None  # [export.nats]
    errors: list[str] = field(default_factory=list)


def parse_export_config(section: dict[str, Any], data_dir: str, source: str = "conf/chf.toml") -> ExportConfig:
    from chf.runtime.config import ConfigError

    errors: list[str] = []
    cfg = ExportConfig()

    def number(table: dict[str, Any], where: str, key: str, default: Any, minimum: float, kind: type) -> Any:
        value = table.get(key, default)
        ok = not isinstance(value, bool) and isinstance(value, int | float if kind is float else int)
        if not ok or value < minimum:
            what = "a number" if kind is float else "an integer"
            errors.append(f"{source}: [{where}] {key}: must be {what} >= {minimum}, got {value!r}")
            return default
        return kind(value)

    def unknown(table: dict[str, Any], where: str, known: set[str]) -> None:
        for key in table:
            if key not in known:
                errors.append(f"{source}: [{where}] {key}: unknown setting (known: {', '.join(sorted(known))})")

    unknown(section, "export", {"batch", "poll_interval", "backlog_limit", "files", "nats"})
    cfg.batch = number(section, "export", "batch", cfg.batch, 1, int)
    cfg.poll_interval = number(section, "export", "poll_interval", cfg.poll_interval, 0.001, float)
    cfg.backlog_limit = number(section, "export", "backlog_limit", cfg.backlog_limit, 1, int)
    files = section.get("files")
    if isinstance(files, dict) and files.get("enabled", True):
        unknown(files, "export.files", {"enabled", "directory", "prefix", "max_bytes", "max_age"})
        directory = files.get("directory", os.path.join(data_dir, "export"))
        if not isinstance(directory, str) or not directory:
            errors.append(f"{source}: [export.files] directory: must be a path, got {directory!r}")
        cfg.files = {
            "directory": directory,
            "prefix": files.get("prefix", "chf-events"),
            "max_bytes": number(files, "export.files", "max_bytes", 64 << 20, 1, int),
            "max_age": number(files, "export.files", "max_age", 300.0, 0.01, float),
        }
    nats_table = section.get("nats")
    if isinstance(nats_table, dict) and nats_table.get("enabled", True):
        unknown(nats_table, "export.nats", {"enabled", "servers", "stream", "subject", "ack_timeout"})
        servers = nats_table.get("servers", ["nats://127.0.0.1:4222"])
        if not isinstance(servers, list) or not servers or not all(isinstance(s, str) for s in servers):
            errors.append(f"{source}: [export.nats] servers: must be a list of URLs such as nats://127.0.0.1:4222")
        cfg.nats = {
            "servers": servers,
            "stream": nats_table.get("stream", "CHF_EVENTS"),
            "subject": nats_table.get("subject", "chf.events"),
            "ack_timeout": number(nats_table, "export.nats", "ack_timeout", 5.0, 0.01, float),
        }
    if errors:
        raise ConfigError(errors)
    return cfg


def export_components(config: Any, service: Any) -> list[Any]:
    """`chf serve` factory: one exporter per sink configured under `[export]`."""
    if "export" not in config.raw:
        return []
    cfg = parse_export_config(config.section("export"), config.data_dir, config.source)
    sinks: list[Sink] = []
    if cfg.files is not None:
        sinks.append(FileSink(**cfg.files))
    if cfg.nats is not None:
        sinks.append(NatsSink(**cfg.nats))
    return [
        Exporter(service.store, sink, batch=cfg.batch, poll_interval=cfg.poll_interval, backlog_limit=cfg.backlog_limit)
        for sink in sinks
    ]
