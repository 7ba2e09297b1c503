"""ChargingNotifyRequest to the SMF: REAUTHORIZATION after a top-up or plan change, ABORT_CHARGING when the line
is suspended or terminated (TS 32.290 5.2.2.4, TS 32.291 6.1.6.2.1.3).

The core publishes a Signal after the change is durable; `Notifier.on_signal` only queues it (never blocks the
commit path). A worker pool posts each notification to the session's notifyUri over HTTP/2 with a timeout and a
bounded number of retries; connections are reused per authority. A full queue drops the notification, logged
and counted: the SMF learns of the change at its next update anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import h2.exceptions

from chf.core.model import Signal
from chf.runtime import metrics
from nchf.client import ClientError, H2Client

log = logging.getLogger("nchf.notify")

NOTIFICATION_TYPE = {"reauth": "REAUTHORIZATION", "abort": "ABORT_CHARGING"}


@dataclass(slots=True)
class NotifySettings:
    timeout: float = 2.0  # per attempt: connect and answer
    retries: int = 2  # attempts after the first
    backoff: float = 0.2  # seconds before the first retry, doubled each time
    queue_size: int = 10000
    workers: int = 4


def notify_body(signal: Signal) -> bytes:
    body: dict[str, object] = {"notificationType": NOTIFICATION_TYPE[signal.kind]}
    if signal.kind == "reauth" and signal.rating_groups:
        body["reauthorizationDetails"] = [{"ratingGroup": rg} for rg in signal.rating_groups]
    return json.dumps(body, separators=(",", ":")).encode()


class Notifier:
    def __init__(self, settings: NotifySettings | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.settings = settings or NotifySettings()
        self.tls = tls
        self.queue: asyncio.Queue[Signal] = asyncio.Queue(self.settings.queue_size)
        self.clients: dict[str, H2Client] = {}
        self._connecting: dict[str, asyncio.Lock] = {}
        self._workers: list[asyncio.Task[None]] = []
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def on_signal(self, signal: Signal) -> None:
        """SignalBus handler: queue and return at once."""
        if signal.kind not in NOTIFICATION_TYPE:
            return
        if not isinstance(signal.notify, str) or not signal.notify:
            metrics.SIGNALS.labels("nchf", signal.kind, "no_notify_uri").inc()
            log.info("event=notify_skipped session=%s kind=%s reason=no_notify_uri", signal.session, signal.kind)
            return
        try:
            self.queue.put_nowait(signal)
        except asyncio.QueueFull:
            self.dropped += 1
            metrics.SIGNALS.labels("nchf", signal.kind, "dropped").inc()
            log.warning("event=notify_dropped session=%s kind=%s reason=queue_full", signal.session, signal.kind)

    async def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._worker(), name=f"nchf-notify-{i}") for i in range(self.settings.workers)
        ]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        for client in list(self.clients.values()):
            with contextlib.suppress(Exception):
                await client.close()
        self.clients.clear()

    async def _worker(self) -> None:
        while True:
            signal = await self.queue.get()
            try:
                await self.deliver(signal)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event=notify_failed session=%s kind=%s", signal.session, signal.kind)

    async def deliver(self, signal: Signal) -> bool:
        uri = str(signal.notify)
        body = notify_body(signal)
        settings = self.settings
        delay = settings.backoff
        last_error = ""
        for attempt in range(settings.retries + 1):
            if attempt:
                await asyncio.sleep(delay)
                delay *= 2
            try:
                client = await self._client(uri)
                parts = urlsplit(uri)
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                response = await client.post_json(path, body, timeout=settings.timeout)
            except (TimeoutError, ClientError, OSError, h2.exceptions.H2Error) as exc:
                last_error = repr(exc)
                self._forget(uri)
                continue
            if 200 <= response.status < 300:
                self.delivered += 1
                metrics.SIGNALS.labels("nchf", signal.kind, "delivered").inc()
                log.info(
                    "event=notify_delivered session=%s kind=%s status=%d attempts=%d",
                    signal.session,
                    signal.kind,
                    response.status,
                    attempt + 1,
                )
                return True
            last_error = f"HTTP {response.status}"
            if 400 <= response.status < 500 and response.status not in (408, 429):
                break  # the SMF refused this notification: repeating it will not help
        self.failed += 1
        metrics.SIGNALS.labels("nchf", signal.kind, "failed").inc()
        log.warning(
            "event=notify_failed session=%s kind=%s error=%s", signal.session, signal.kind, json.dumps(last_error)
        )
        return False

    async def _client(self, uri: str) -> H2Client:
        parts = urlsplit(uri)
        key = f"{parts.scheme}://{parts.netloc}"
        client = self.clients.get(key)
        if client is not None and client.usable:
            return client
        lock = self._connecting.setdefault(key, asyncio.Lock())
        async with lock:
            client = self.clients.get(key)
            if client is None or not client.usable:
                client = await H2Client.connect_uri(uri, tls=self.tls, timeout=self.settings.timeout)
                self.clients[key] = client
        return client

    def _forget(self, uri: str) -> None:
        parts = urlsplit(uri)
        client = self.clients.pop(f"{parts.scheme}://{parts.netloc}", None)
        if client is not None and client.transport is not None:
            client.transport.close()
