"""A small HTTP/2 client on asyncio (h2c with prior knowledge, or TLS with ALPN h2).

Used by the notifier (ChargingNotifyRequest to the SMF), by the tests and by the load tools. Requests on one
connection are multiplexed as concurrent streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions


class ClientError(Exception):
    """The connection failed or was closed before the answer arrived."""


@dataclass(slots=True)
class ClientResponse:
    status: int
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> object:
        import json

        return json.loads(self.body)


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[ClientResponse]
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 0
    body: bytearray = field(default_factory=bytearray)
    to_send: bytes = b""


class H2Client(asyncio.Protocol):
    def __init__(self, authority: str, scheme: str = "http") -> None:
        self.authority = authority
        self.scheme = scheme
        self.transport: asyncio.Transport | None = None
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.pending: dict[int, _Pending] = {}
        self.closed = asyncio.Event()
        self.error: Exception | None = None
        self.pings_acknowledged = 0
        self._on_event: dict[type, Callable[[Any], None]] = {
            h2.events.ResponseReceived: self._response_received,
            h2.events.DataReceived: self._data_received,
            h2.events.StreamEnded: self._stream_ended,
            h2.events.StreamReset: self._stream_reset,
            h2.events.WindowUpdated: self._window_updated,
            h2.events.PingAckReceived: self._ping_acknowledged,
            h2.events.ConnectionTerminated: self._terminated,
        }

    @classmethod
    async def connect(
        cls, host: str, port: int, *, tls: ssl.SSLContext | None = None, timeout: float = 5.0
    ) -> H2Client:
        loop = asyncio.get_running_loop()
        authority = f"{host}:{port}"
        scheme = "https" if tls is not None else "http"
        if tls is not None:
            tls.set_alpn_protocols(["h2"])
        _, protocol = await asyncio.wait_for(
            loop.create_connection(lambda: cls(authority, scheme), host, port, ssl=tls), timeout
        )
        return protocol

    @classmethod
    async def connect_uri(cls, uri: str, *, tls: ssl.SSLContext | None = None, timeout: float = 5.0) -> H2Client:
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(f"not an http(s) URI: {uri!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if parts.scheme == "https" and tls is None:
            tls = ssl.create_default_context()
        return await cls.connect(parts.hostname, port, tls=tls if parts.scheme == "https" else None, timeout=timeout)

    # -- asyncio.Protocol -------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(1 << 24)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(ClientError(f"connection lost: {exc!r}" if exc else "connection closed"))
        self.closed.set()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail_all(ClientError(f"HTTP/2 protocol error: {exc!r}"))
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            handler = self._on_event.get(type(event))
            if handler is not None:
                handler(event)
        self._flush()

    def _response_received(self, event: h2.events.ResponseReceived) -> None:
        p = self.pending.get(event.stream_id)
        if p is None:
            return
        for name, value in event.headers or []:
            n, v = str(name), str(value)
            if n == ":status":
                p.status = int(v)
            else:
                p.headers[n] = v

    def _data_received(self, event: h2.events.DataReceived) -> None:
        p = self.pending.get(event.stream_id)
        if p is not None:
            p.body += event.data or b""
        if event.flow_controlled_length:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)

    def _stream_ended(self, event: h2.events.StreamEnded) -> None:
        p = self.pending.pop(event.stream_id, None)
        if p is not None and not p.future.done():
            p.future.set_result(ClientResponse(p.status, p.headers, bytes(p.body)))

    def _stream_reset(self, event: h2.events.StreamReset) -> None:
        p = self.pending.pop(event.stream_id, None)
        if p is not None and not p.future.done():
            p.future.set_exception(ClientError(f"stream reset by the server (error {event.error_code})"))

    def _window_updated(self, event: h2.events.WindowUpdated) -> None:
        self._send_pending_data()

    def _ping_acknowledged(self, event: h2.events.PingAckReceived) -> None:
        self.pings_acknowledged += 1

    def _terminated(self, event: h2.events.ConnectionTerminated) -> None:
        """GOAWAY: the streams above its last stream id will not be answered; the others may still be."""
        self.error = ClientError(f"GOAWAY (error {event.error_code})")
        for stream_id, p in list(self.pending.items()):
            if event.last_stream_id is not None and stream_id > event.last_stream_id:
                self.pending.pop(stream_id)
                if not p.future.done():
                    p.future.set_exception(ClientError("stream refused by GOAWAY"))

    # -- requests ---------------------------------------------------------------------------------------------------
    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        timeout: float = 10.0,
    ) -> ClientResponse:
        if self.transport is None or self.closed.is_set() or self.error is not None:
            raise ClientError("connection is closed")
        stream_id = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", self.scheme), (":authority", self.authority), (":path", path)]
        hdrs.extend(headers or [])
        if body:
            hdrs.append(("content-length", str(len(body))))
        future: asyncio.Future[ClientResponse] = asyncio.get_running_loop().create_future()
        pending = _Pending(future, to_send=body)
        self.pending[stream_id] = pending
        self.conn.send_headers(stream_id, hdrs, end_stream=not body)
        if body:
            self._send_pending_data()
        self._flush()
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self.pending.pop(stream_id, None)

    async def post_json(
        self, path: str, body: bytes, headers: list[tuple[str, str]] | None = None, timeout: float = 10.0
    ) -> ClientResponse:
        return await self.request("POST", path, body, [("content-type", "application/json"), *(headers or [])], timeout)

    def _send_pending_data(self) -> None:
        for stream_id, p in self.pending.items():
            while p.to_send:
                try:
                    window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                    p.to_send = b""
                    break
                if window <= 0:
                    break
                chunk, p.to_send = p.to_send[:window], p.to_send[window:]
                try:
                    self.conn.send_data(stream_id, chunk, end_stream=not p.to_send)
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                    p.to_send = b""  # the server answered (413, say) or reset the stream before the body was sent
                    break

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _fail_all(self, exc: Exception) -> None:
        self.error = self.error or exc
        for p in self.pending.values():
            if not p.future.done():
                p.future.set_exception(exc)
        self.pending.clear()

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.closed.is_set() and self.error is None

    async def close(self) -> None:
        if self.transport is not None and not self.closed.is_set():
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.close_connection()
                self._flush()
            self.transport.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.closed.wait(), 2)
