"""The exporter: rated and audit events leave the spool for one sink, in order, at least once.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from chf.export.records import to_record
from chf.runtime import metrics
from store.interface import Store, StoreBusy, Txn

log = logging.getLogger("chf.export")


class Sink(Protocol):
    """Where an exporter delivers. `deliver` returns only once the records are durable at the sink (that is the
    acknowledgement) and raises otherwise; `idle` lets a sink do time-based work (rolling files)."""

    name: str

    async def open(self) -> None: ...

    async def deliver(self, records: list[dict[str, Any]]) -> None: ...

    async def idle(self) -> None: ...

    async def close(self) -> None: ...


_RUNNING: weakref.WeakSet[Exporter] = weakref.WeakSet()


def backlogs(store: Store) -> dict[str, tuple[int, int]]:
    """(backlog, limit) of every running exporter of `store`, by sink name; read from the store, so it is what
    the cursors say durably."""
    out: dict[str, tuple[int, int]] = {}
    exporters = [e for e in _RUNNING if e.store is store]
    if not exporters:
        return out
    if exporters[0].feed is not None:  # a store with an event feed: the backlog of the last step
        return {e.name: (e.backlog, e.backlog_limit) for e in exporters}
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
        # A store whose events are not one sequence (the Redis store: one stream per partition) gives a feed
        # with consumer groups instead of the cursor: `take` a batch, `ack` it once the sink acknowledged.
        feed = getattr(store, "event_feed", None)
        self.feed: Any = feed(self.name) if feed is not None else None
        self.backlog = 0
        self._backlog_read = -math.inf

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
        if self.feed is not None:
            return await self._feed_step()
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

    async def _feed_step(self) -> int:
        """`step` on an event feed: its reads and acknowledgements are round trips, made in a thread."""
        feed = self.feed
        events, token = await asyncio.to_thread(feed.take, self.batch)
        if not events:
            now = time.monotonic()
            if now - self._backlog_read >= 5.0:  # a few commands per partition: not at every poll
                self._backlog_read = now
                self.backlog = await asyncio.to_thread(feed.backlog)
            metrics.EXPORT_BACKLOG.labels(self.name).set(self.backlog)
            self._check_limit(self.backlog)
            await self.sink.idle()
            return 0
        records = [self.mapper(e) for e in events]
        await self.sink.deliver(records)  # raises unless acknowledged
        await asyncio.to_thread(feed.ack, token)
        self.delivered += len(events)
        metrics.EXPORT_DELIVERED.labels(self.name).inc(len(events))
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
