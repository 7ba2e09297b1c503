"""The Gy server: asyncio transport over the sans-IO peer state machine (gy/peer.py) and the socket-free Gy
application (gy/application.py).

One `GyProtocol` per TCP connection: it feeds received bytes and the clock to the peer state machine, hands the
application requests and answers that come out to `GyApplication`, and writes what both produce; the answers of one
loop iteration leave in one `write()` per connection. `GyServer` listens, drives the peers' timers, and stops
gracefully (DPR to every peer, in-flight requests answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import Any

from chf.core.model import Signal
from chf.runtime.peers import DIAMETER_PEERS
from chf.runtime.port import ChargingPort
from gy.application import GyApplication
from gy.config import GyConfig
from gy.peer import (
    AnswerReceived,
    LocalIdentity,
    PeerClosed,
    PeerConnection,
    PeerOpened,
    PeerPolicy,
    RequestReceived,
)

log = logging.getLogger("gy.server")

CCFH_VALUES = {"terminate": 0, "continue": 1, "retry_and_terminate": 2}


class GyProtocol(asyncio.Protocol):
    """One TCP connection: bytes in and out, and the application's `Link` to its peer."""

    def __init__(self, server: GyServer) -> None:
        self.server = server
        self.app = server.app
        self.peer = PeerConnection(server.local, server.policy, time.monotonic())
        self.transport: asyncio.Transport | None = None
        self.connected = False  # the application's view: answers to a lost connection are dropped
        self.inflight = 0
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.write_paused_at: float | None = None  # the peer stopped reading: we stopped reading it
        self.opened = False
        self.stats = DIAMETER_PEERS.connection()  # counts for the Diameter peer table (chf/runtime/peers.py)

    # -- transport ------------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        limit = self.server.config.output_buffer
        self.transport.set_write_buffer_limits(high=limit, low=limit // 4)  # type: ignore[union-attr]
        # The kernel's buffers too: autotuned, a socket's grow to megabytes for a peer that does not read (or
        # floods), beyond what the process holds.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limit)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, limit)
        self.connected = True
        self.server.connections.add(self)
        self.stats = DIAMETER_PEERS.connection(transport.get_extra_info("peername"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.stats.closed()
        if self.opened:
            self.opened = False
            self.app.peer_closed(self)
            log.info("event=peer_disconnected peer=%s", self.peer.peer_host)
        self.transport = None
        self.connected = False

    def pause_writing(self) -> None:
        """Answers pile up for a peer that does not read: read nothing more from it (its requests wait in TCP, in
        its own buffers) until it has read; closed if it does not within write_timeout (`on_timer`)."""
        self.write_paused_at = time.monotonic()
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused_at = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.stats.received(data)
        for event in self.peer.receive(data, time.monotonic()):
            self._event(event)
        self.stats.set_suspect(self.peer.suspect)
        self.flush()

    def _event(self, event: object) -> None:
        if type(event) is RequestReceived:
            self.app.request(self, event.message)
        elif type(event) is AnswerReceived:
            self.app.answer(event.message)
        elif type(event) is PeerOpened:
            self.opened = True
            self.app.peer_opened(self, event.origin_host)
            self.stats.opened(event.origin_host, event.origin_realm)
            log.info("event=peer_open peer=%s realm=%s", event.origin_host, event.origin_realm)
        elif type(event) is PeerClosed:
            log.info("event=peer_closing peer=%s reason=%s", self.peer.peer_host or "-", event.reason)

    def flush(self) -> None:
        """Write what the state machine queued; close when it has closed (once no answer is due)."""
        transport = self.transport
        if transport is None:
            return
        data = self.peer.data_to_send()
        if data:
            self.stats.sent(data)
            transport.write(data)
        if self.peer.close_after_flush and self.inflight == 0:
            transport.close()

    def on_timer(self, now: float) -> None:
        paused = self.write_paused_at
        if paused is not None and now - paused > self.server.config.write_timeout and self.transport is not None:
            log.info("event=peer_closing peer=%s reason=not_reading", self.peer.peer_host or "-")
            self.server.app.refusals.note("not_reading")
            self.transport.abort()  # what it did not read is dropped with it
            return
        for event in self.peer.on_timer(now):
            self._event(event)
        self.stats.set_suspect(self.peer.suspect)
        self.flush()

    def write_answer(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._write_answers)

    def _write_answers(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None:
            data = b"".join(self._out)
            self.stats.sent(data)
            self.transport.write(data)
        self._out.clear()
        if self.peer.close_after_flush and self.inflight == 0 and self.transport is not None:
            self.flush()


class GyServer:
    """The Gy front-end: a Diameter server for the credit-control application on `config.listen`:`config.port`.

    `shared_port`: the port is shared with other processes through SO_REUSEPORT (chf serve's front-end workers;
    the kernel spreads the connections among them). Every process then gets every signal of the core, and only the
    one holding the peer's connection acts on it and counts it."""

    name = "gy"

    def __init__(self, config: GyConfig, port: ChargingPort, *, shared_port: bool = False) -> None:
        self.config = config
        self.charging = port
        self.shared_port = shared_port
        self.local = LocalIdentity(
            origin_host=config.origin_host,
            origin_realm=config.origin_realm,
            host_ip=config.listen if config.listen not in ("0.0.0.0", "::", "localhost") else "127.0.0.1",
            vendor_id=config.vendor_id,
            product_name=config.product_name,
            origin_state_id=int(time.time()) & 0xFFFFFFFF,
        )
        self.policy = PeerPolicy(
            dict(config.peers),
            config.allow_unknown_peers,
            config.tw,
            max_message=config.max_message,
            message_timeout=config.message_timeout,
        )
        self.app = GyApplication(
            port,
            PeerConnection(self.local, self.policy, 0.0).identity_avps,
            ccfh=CCFH_VALUES[config.ccfh],
            session_failover=1 if config.session_failover else 0,
            max_inflight_per_peer=config.max_inflight_per_peer,
            max_inflight=config.max_inflight,
            latency_budget=config.latency_budget_ms / 1000,
            duplicate_cache=config.duplicate_cache,
            duplicate_window=config.duplicate_window,
            shared_port=shared_port,
        )
        self.connections: set[GyProtocol] = set()
        self._server: asyncio.base_events.Server | None = None
        self._timer: asyncio.Task[None] | None = None
        self.port = config.port

    # The application's state, as tests and operators look at it.
    @property
    def by_host(self) -> dict[str, Any]:
        return self.app.by_host

    @property
    def pending_signals(self) -> dict[int, tuple[str, str]]:
        return self.app.pending_signals

    @property
    def inflight(self) -> int:
        return self.app.inflight

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: GyProtocol(self),
            self.config.listen,
            self.config.port,
            reuse_address=True,
            reuse_port=self.shared_port or None,
            backlog=1024,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.charging.subscribe("gy", self.signal)
        self._timer = asyncio.create_task(self._tick(), name="gy-watchdog")
        log.info(
            "event=gy_listening address=%s port=%d origin_host=%s",
            self.config.listen,
            self.port,
            self.config.origin_host,
        )

    def signal(self, sig: Signal) -> None:
        """A signal of the core (re-auth, abort): the application sends RAR or ASR."""
        self.app.signal(sig)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.config.tw / 4))
            now = time.monotonic()
            for conn in list(self.connections):
                try:
                    conn.on_timer(now)
                except Exception:
                    log.exception("event=watchdog_failed peer=%s", conn.peer.peer_host)
            self.app.refusals.flush_due()

    async def stop(self) -> None:
        """Stop accepting, send DPR to every peer, let in-flight requests finish and peers answer, then close."""
        if self._server is not None:
            self._server.close()
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        now = time.monotonic()
        for conn in list(self.connections):
            conn.peer.disconnect(now)
            conn.flush()
        deadline = time.monotonic() + self.config.drain_timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
        log.info("event=gy_stopped")
