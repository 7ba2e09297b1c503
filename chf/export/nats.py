"""The NATS JetStream sink: one message per record, de-duplicated by the stream on recordId."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from chf.export.records import encode_record

log = logging.getLogger("chf.export")


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
