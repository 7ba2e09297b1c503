"""The Nchf HTTP server: one port, HTTP/2 and HTTP/1.1, on our own asyncio transport.

Cleartext connections start with the HTTP/2 connection preface (h2c with prior knowledge, what SMFs send) or
an HTTP/1.1 request line (curl, schemathesis, health probes); the first bytes decide. TLS connections follow
the ALPN result ("h2" or "http/1.1"). From then on the connection hands its bytes to the session of that
version (nchf/http2.py, nchf/http1.py); this module keeps what does not depend on it: the connection count,
the sweep that applies the time limits, the hand-over of requests to the handler, and shutdown.
Connections are never closed after N requests, only when idle; what a client may make the server hold, and for
how long, is bounded (Limits); refusals and cut-offs are counted and logged as a summary (chf/runtime/ratelog.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from typing import Any

from chf.runtime.ratelog import RateLog
from nchf.http1 import Http1Session
from nchf.http2 import Http2Session
from nchf.messages import (
    CallbackHandler,
    ErrorResponder,
    Handler,
    Limits,
    Request,
    Respond,
    Response,
    plain_error,
)

__all__ = [
    "CallbackHandler",
    "ErrorResponder",
    "Handler",
    "HttpConnection",
    "HttpServer",
    "Limits",
    "Request",
    "Respond",
    "Response",
    "server_ssl_context",
]

log = logging.getLogger("nchf.http")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Bytes the kernel may hold of a connection's answers (SO_SNDBUF; Linux doubles it for its bookkeeping).
SOCKET_BUFFER = 262144


class HttpConnection(asyncio.Protocol):
    """One client connection; HTTP/2 or HTTP/1.1, decided by its first bytes (or by ALPN under TLS)."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()  # connections exist only inside the running server
        self.transport: asyncio.Transport | None = None
        self.scheme = "http"
        self.session: Http1Session | Http2Session | None = None
        self.preface = b""  # the first bytes, until they tell the HTTP version
        self.opened = self.loop.time()
        self.closed = False
        self.holds: set[str] = set()  # why reading is paused (none: reading)

    # -- asyncio.Protocol -------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.opened = self.loop.time()
        self.server.connections.add(self)
        if len(self.server.connections) > self.server.limits.max_connections:
            self.server.refusals.note("too_many_connections")
            transport.close()
            return
        # The kernel's buffers, autotuned, grow to megabytes for a client that does not read: its answers would pile
        # up there, out of pause_writing's sight, while its requests are still read and charged.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.scheme = "https"
            h2 = ssl_object.selected_alpn_protocol() == "h2"
            self.session = Http2Session(self) if h2 else Http1Session(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self.session is not None:
            self.session.lost()

    def pause_writing(self) -> None:
        self.hold_reading("client_not_reading", True)  # its answers pile up: take no more requests from it

    def resume_writing(self) -> None:
        self.hold_reading("client_not_reading", False)

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is not None:
            session.received(data)
            return
        preface = self.preface = self.preface + data
        if len(preface) < len(H2_PREFACE) and H2_PREFACE.startswith(preface):
            return  # could still be the preface: wait for more
        self.preface = b""
        if preface.startswith(H2_PREFACE):
            session = self.session = Http2Session(self)
        else:
            session = self.session = Http1Session(self)
        session.received(preface)

    def hold_reading(self, reason: str, hold: bool) -> None:
        """Pause reading for `reason` (hold) or lift that reason; reading resumes once no reason is left."""
        holds = self.holds
        if self.closed or self.transport is None or (reason in holds) == hold:
            return
        if hold:
            holds.add(reason)
            if len(holds) == 1:
                self.transport.pause_reading()
        else:
            holds.discard(reason)
            if not holds:
                self.transport.resume_reading()

    def pause_for(self, reason: str, seconds: float) -> None:
        """Hold reading for `reason` during `seconds` (once at a time per reason)."""
        if reason not in self.holds and not self.closed:
            self.hold_reading(reason, True)
            self.loop.call_later(seconds, self.hold_reading, reason, False)

    # -- timers (HttpServer's sweep) --------------------------------------------------------------------------------
    def sweep(self, now: float) -> None:
        """Close the connection, or refuse its requests, where a time limit has passed: the first bytes must tell
        the HTTP version within request_timeout (a silent socket does not hold a connection slot for ever);
        after that the session's own limits apply (a request arrives whole within request_timeout; a connection
        with nothing to serve for idle_timeout is closed)."""
        if self.closed or self.transport is None:
            return
        session = self.session
        if session is None:
            if now - self.opened > self.server.limits.request_timeout:
                self.server.refusals.note("request_timeout")
                self.transport.close()
            return
        reason = session.overdue(now)
        if reason is not None:
            session.expire(reason)

    # -- shutdown ---------------------------------------------------------------------------------------------------
    def goaway(self) -> None:
        """Tell the client no new requests will be served (graceful shutdown)."""
        if self.session is not None and not self.closed:
            self.session.goaway()

    def close(self) -> None:
        if self.session is not None:
            self.session.write_now()
        if self.transport is not None:
            self.transport.close()


class HttpServer:
    def __init__(
        self,
        handler: Handler | None = None,
        *,
        on_request: CallbackHandler | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
        ssl_context: ssl.SSLContext | None = None,
        limits: Limits | None = None,
        error_responder: ErrorResponder = plain_error,
        reuse_port: bool = False,
    ) -> None:
        if (handler is None) == (on_request is None):
            raise ValueError("HttpServer takes either an async handler or an on_request callback")
        self.handler = handler
        self.on_request = on_request
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.limits = limits = limits or Limits()
        # Stream windows never need reopening (see Http2Session._give_back): a body fits in one window; the
        # connection's holds at least one body, and RFC 9113 starts it at 65,535 bytes (it cannot shrink).
        limits.stream_window = max(limits.stream_window, limits.max_body_bytes + 16384)
        limits.connection_window = max(limits.connection_window, limits.max_body_bytes + 16384, 65535)
        self.error_responder = error_responder
        self.reuse_port = reuse_port  # several processes serve the port (SO_REUSEPORT)
        self.connections: set[HttpConnection] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.in_flight = 0  # requests handed to the handler and not answered yet
        # Connections and requests refused or cut off by a limit, counted and logged as a summary.
        self.refusals = RateLog(log, "http_refusals", quiet=frozenset({"idle_timeout"}))
        # A coarse clock (loop time, updated by the sweep) for what is stamped per request: a clock call each
        # would show in the per-request CPU, and the limits it serves are seconds long.
        self.now = 0.0
        self._sweeper: asyncio.Task[None] | None = None
        self._server: asyncio.AbstractServer | None = None

    def dispatch(self, request: Request, respond: Respond) -> None:
        """Hand a complete request to the handler; `respond` answers it once (the sessions count it back)."""
        self.in_flight += 1
        on_request = self.on_request
        if on_request is None:
            task = asyncio.get_running_loop().create_task(self._run(request, respond))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        try:
            on_request(request, respond)
        except Exception:
            log.exception("event=handler_failed path=%s", request.path)
            respond(self.error_responder(500, "internal error"))  # ignored if the handler had answered

    async def _run(self, request: Request, respond: Respond) -> None:
        handler = self.handler
        assert handler is not None
        try:
            response = await handler(request)
        except Exception:
            log.exception("event=handler_failed path=%s", request.path)
            response = self.error_responder(500, "internal error")
        respond(response)

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            lambda: HttpConnection(self),
            self.host,
            self.port,
            ssl=self.ssl_context,
            backlog=1024,
            reuse_port=self.reuse_port or None,
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        self.now = asyncio.get_running_loop().time()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="nchf-http-sweep")

    async def _sweep(self) -> None:
        """Every fraction of the shortest time limit: advance the coarse clock and let each connection apply its
        time limits (HttpConnection.sweep). One task for all connections instead of a timer per request."""
        limits = self.limits
        interval = min(1.0, max(0.01, min(limits.request_timeout, limits.idle_timeout) / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = self.now = loop.time()
            for connection in list(self.connections):
                connection.sweep(now)
            self.refusals.flush_due()

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Stop accepting, tell clients (GOAWAY), let in-flight requests finish, then close the connections."""
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for conn in list(self.connections):
            conn.goaway()
        deadline = time.monotonic() + drain_seconds
        while self.in_flight and time.monotonic() < deadline:  # Tasks (async handler) or callbacks still due
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # let scheduled flushes write the last responses
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """TLS 1.2+ with ALPN: "h2" for SMFs, "http/1.1" for ordinary tools."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx
