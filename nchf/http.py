"""An HTTP/2 server on our own asyncio transport (the sans-IO `h2` library), with HTTP/1.1 on the same port.

Cleartext connections start with the HTTP/2 connection preface (h2c with prior knowledge, what SMFs send) or
an HTTP/1.1 request line (curl, schemathesis, health probes); the first bytes decide. TLS connections follow
the ALPN result ("h2" or "http/1.1"). Each connection writes once per event-loop iteration, whatever number of
responses became ready in it (DESIGN.md section 8). Connections are never closed after N requests; PINGs are
answered by h2 itself; stream count, header and body sizes are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack.hpack

from nchf import huffman
from nchf.h2connection import ServerH2Connection

log = logging.getLogger("nchf.http")


class _NoDebugLog:
    """hpack logs every header it encodes or decodes at DEBUG level (about 24 calls per request, each paying
    the logging level check). Nobody debugs HPACK in a charging function; on this hot path they are dropped."""

    def debug(self, *args: object, **kwargs: object) -> None:
        return None


hpack.hpack.log = _NoDebugLog()  # type: ignore[assignment]
# The same results and errors, a byte per step instead of a nibble (nchf/huffman.py).
hpack.hpack.decode_huffman = huffman.decode_huffman

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(slots=True)
class Limits:
    max_concurrent_streams: int = 256  # per HTTP/2 connection
    max_header_bytes: int = 16384  # header list (HTTP/2) or header block (HTTP/1.1)
    max_body_bytes: int = 65536
    stream_window: int = 1 << 20  # flow-control windows we grant peers: large, so uploads never stall
    connection_window: int = 16 << 20
    max_connections: int = 1024
    request_timeout: float = 10.0  # seconds for a started HTTP/1.1 request (or the HTTP/2 preface) to arrive


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    scheme: str = "http"
    authority: str = ""
    http2: bool = True


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]
# The callback form: `on_request(request, respond)` calls `respond(response)` exactly once, now or later. No
# coroutine and no Task per request: on this path they cost more than the HTTP/2 bookkeeping of the request.
Respond = Callable[[Response], None]
CallbackHandler = Callable[[Request, Respond], None]
# What the server answers when it cannot hand a request to the handler (too big, malformed framing).
ErrorResponder = Callable[[int, str], Response]


def _plain_error(status: int, detail: str) -> Response:
    return Response(status, detail.encode(), [("content-type", "text/plain")])


_REQUEST_LINE_START = re.compile(rb"^[A-Z]{1,16}( |$)")


def _looks_like_http1(buf: bytearray) -> bool:
    """Whether the bytes so far can begin an HTTP/1.1 request (so waiting for the rest makes sense): a TLS
    ClientHello or binary noise on the cleartext port is refused at once instead of held open."""
    return _REQUEST_LINE_START.match(bytes(buf[:17])) is not None


def server_h2_config() -> h2.config.H2Configuration:
    """The h2 settings of our server side (also what the CPU benchmarks measure h2 with)."""
    return h2.config.H2Configuration(
        client_side=False,
        header_encoding=None,
        # Validation costs ~20 % of the h2 CPU per request; h2 still enforces framing and HPACK rules.
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )


class _H2Stream:
    __slots__ = ("body", "cancelled", "chunks", "headers", "pending", "too_big")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.body = b""  # the first DATA frame's bytes; later ones go to `chunks` (a body is nearly always one frame)
        self.chunks: list[bytes] | None = None
        self.too_big = False
        self.cancelled = False
        self.pending = b""  # response data still waiting for flow-control window

    def size(self) -> int:
        return len(self.body) + (sum(len(c) for c in self.chunks) if self.chunks else 0)

    def whole_body(self) -> bytes:
        return self.body if self.chunks is None else self.body + b"".join(self.chunks)


class _Reply:
    """The `respond` of one request: answers once, whatever the handler does after (a second call is ignored)."""

    __slots__ = ("connection", "stream", "stream_id")

    def __init__(self, connection: HttpConnection, stream_id: int, stream: _H2Stream | None) -> None:
        self.connection: HttpConnection | None = connection
        self.stream_id = stream_id
        self.stream = stream

    def __call__(self, response: Response) -> None:
        connection = self.connection
        if connection is not None:
            self.connection = None
            connection._answer(self.stream_id, self.stream, response)


# :status values as bytes, the common ones ready made (h2 would encode a str on every response).
_STATUS = {code: str(code).encode() for code in range(100, 600)}


class HttpConnection(asyncio.Protocol):
    """One client connection; HTTP/2 or HTTP/1.1, decided by its first bytes (or by ALPN under TLS)."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()  # connections exist only inside the running server
        self.transport: asyncio.Transport | None = None
        self.mode: str | None = None  # "h2" | "http1"
        self.scheme = "http"
        self.buffer = bytearray()
        self.h2: h2.connection.H2Connection | None = None
        self.streams: dict[int, _H2Stream] = {}
        self.waiting_window: dict[int, _H2Stream] = {}  # streams whose response waits for flow-control window
        self.flush_scheduled = False
        self.closed = False
        self.in_flight = 0
        self.unacknowledged = 0  # received DATA bytes not yet given back to the connection's window
        # HTTP/1.1: one request at a time; pipelined ones wait in the buffer.
        self.h1_busy = False
        self.h1_close_after = False
        self.h1_continued = False
        self.partial_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.server.connections.add(self)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.scheme = "https"
            self.mode = "h2" if ssl_object.selected_alpn_protocol() == "h2" else "http1"
            if self.mode == "h2":
                self._start_h2()
        if len(self.server.connections) > self.server.limits.max_connections:
            log.warning("event=connection_refused reason=too_many_connections")
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.partial_timer is not None:
            self.partial_timer.cancel()
            self.partial_timer = None
        self.server.connections.discard(self)
        for stream in self.streams.values():
            stream.cancelled = True
        self.streams.clear()
        self.waiting_window.clear()

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.mode == "h2":
            self._h2_received(data)
            return
        if self.mode == "http1":
            self.buffer += data
            self._h1_process()
            self._watch_partial_request()
            return
        self.buffer += data
        head = bytes(self.buffer[: len(H2_PREFACE)])
        if H2_PREFACE.startswith(head) and len(head) < len(H2_PREFACE):
            self._watch_partial_request()
            return  # could still be the preface: wait for more
        if head == H2_PREFACE:
            self.mode = "h2"
            self._start_h2()
            data, self.buffer = bytes(self.buffer), bytearray()
            self._h2_received(data)
        else:
            self.mode = "http1"
            self._h1_process()
            self._watch_partial_request()

    def _watch_partial_request(self) -> None:
        """A request (or preface) that started must complete within request_timeout: a peer that trickles bytes
        or stops half-way is not allowed to hold a connection slot for ever."""
        waiting = bool(self.buffer) and not self.h1_busy and not self.closed
        if waiting and self.partial_timer is None:
            self.partial_timer = self.loop.call_later(self.server.limits.request_timeout, self._partial_expired)
        elif not waiting and self.partial_timer is not None:
            self.partial_timer.cancel()
            self.partial_timer = None

    def _partial_expired(self) -> None:
        self.partial_timer = None
        if self.buffer and not self.h1_busy and not self.closed and self.transport is not None:
            log.info("event=request_timeout mode=%s buffered=%d", self.mode or "undecided", len(self.buffer))
            self.transport.close()

    # -- HTTP/2 -----------------------------------------------------------------------------------------------------
    def _start_h2(self) -> None:
        limits = self.server.limits
        conn = ServerH2Connection(config=server_h2_config())
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.stream_window,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
            },
        )
        conn.initiate_connection()
        conn.increment_flow_control_window(limits.connection_window - 65535)
        self.h2 = conn
        self._write_now()

    def _h2_received(self, data: bytes) -> None:
        conn = self.h2
        assert conn is not None
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.info("event=h2_protocol_error error=%r", exc)
            self._write_now()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            kind = type(event)
            if kind is h2.events.RequestReceived:
                self._h2_request(event)  # type: ignore[arg-type]
            elif kind is h2.events.DataReceived:
                self._h2_data(event)  # type: ignore[arg-type]
            elif kind is h2.events.StreamEnded:
                self._h2_stream_ended(event.stream_id)  # type: ignore[attr-defined]
            elif kind is h2.events.StreamReset:
                stream = self.streams.pop(event.stream_id, None)  # type: ignore[attr-defined]
                self.waiting_window.pop(event.stream_id, None)  # type: ignore[attr-defined]
                if stream is not None:
                    stream.cancelled = True
            elif kind is h2.events.WindowUpdated:
                self._h2_resume_pending()
            elif kind is h2.events.ConnectionTerminated:
                self._write_now()
                if self.transport is not None:
                    self.transport.close()
                return
        self._write_now()

    def _h2_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        headers = event.headers or []
        stream = self.streams[stream_id] = _H2Stream(headers)
        # h2 applies our SETTINGS_MAX_HEADER_LIST_SIZE only once the client acknowledged it (64 KiB before):
        # the limit is checked here, sized as RFC 9113 counts it (name + value + 32 per field).
        if sum(len(n) + len(v) + 32 for n, v in headers) > self.server.limits.max_header_bytes:
            stream.too_big = True
            self._h2_send(stream_id, self.server.error_responder(431, "the request headers exceed the size limit"))
            self.streams.pop(stream_id, None)
            return
        if event.stream_ended is not None:
            self._h2_stream_ended(stream_id)

    def _h2_data(self, event: h2.events.DataReceived) -> None:
        conn = self.h2
        assert conn is not None
        stream = self.streams.get(event.stream_id)
        if event.flow_controlled_length:
            # A stream's window is larger than the largest body we accept (HttpServer makes it so), so only the
            # connection's window needs opening again, in bulk: per-frame acknowledgements cost h2 CPU per request.
            self.unacknowledged += event.flow_controlled_length
            if self.unacknowledged >= self.server.limits.connection_window // 2:
                conn.increment_flow_control_window(self.unacknowledged)
                self.unacknowledged = 0
        if stream is None or stream.too_big:
            return
        data = event.data or b""
        if not stream.body:
            stream.body = data
        elif stream.chunks is None:
            stream.chunks = [data]
        else:
            stream.chunks.append(data)
        if stream.size() > self.server.limits.max_body_bytes:
            stream.too_big = True
            stream.body, stream.chunks = b"", None
            self._h2_send(event.stream_id, self.server.error_responder(413, "the request body exceeds the size limit"))
            stream_gone = self.streams.pop(event.stream_id, None)
            if stream_gone is not None:
                with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                    conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)

    def _h2_stream_ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.too_big:
            return
        method = path = authority = ""
        headers: dict[str, str] = {}
        for name, value in stream.headers:  # bytes: the connection is configured with header_encoding=None
            n = name.decode("latin-1")
            v = value.decode("latin-1")
            if n[:1] == ":":
                if n == ":method":
                    method = v
                elif n == ":path":
                    path = v
                elif n == ":authority":
                    authority = v
                continue
            n = n.lower()
            headers[n] = headers[n] + ", " + v if n in headers else v
        request = Request(method, path, headers, stream.whole_body(), self.scheme, authority or headers.get("host", ""))
        stream.body, stream.chunks = b"", None
        self._dispatch(request, stream_id, stream)

    def _h2_send(self, stream_id: int, response: Response) -> None:
        conn = self.h2
        if conn is None or self.closed:
            return
        headers: list[tuple[bytes | str, bytes | str]] = [(b":status", _STATUS.get(response.status) or b"500")]
        headers.extend(response.headers)
        body = response.body
        if body:
            headers.append((b"content-length", b"%d" % len(body)))
        try:
            conn.send_headers(stream_id, headers, end_stream=not body)
            if body:
                window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
                if len(body) <= window:
                    conn.send_data(stream_id, body, end_stream=True)
                else:
                    stream = self.streams.setdefault(stream_id, _H2Stream([]))
                    stream.pending = body
                    self.waiting_window[stream_id] = stream
                    self._h2_resume_pending()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return  # the client reset the stream meanwhile: nobody to answer
        self._schedule_flush()

    def _h2_resume_pending(self) -> None:
        conn = self.h2
        if conn is None or not self.waiting_window:
            return  # (a WINDOW_UPDATE with no response waiting for window, the usual case)
        for stream_id, stream in list(self.waiting_window.items()):
            while stream.pending:
                try:
                    window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
                    stream.pending = b""
                    break
                if window <= 0:
                    break
                chunk, stream.pending = stream.pending[:window], stream.pending[window:]
                conn.send_data(stream_id, chunk, end_stream=not stream.pending)
            if not stream.pending:
                self.waiting_window.pop(stream_id, None)
                self.streams.pop(stream_id, None)
        self._schedule_flush()

    # -- HTTP/1.1 ---------------------------------------------------------------------------------------------------
    def _h1_process(self) -> None:
        if self.h1_busy or self.closed:
            return
        buf = self.buffer
        end = buf.find(b"\r\n\r\n")
        limits = self.server.limits
        if end < 0:
            if not _looks_like_http1(buf):
                self._h1_fail(400, "not an HTTP/1.1 request (nor the HTTP/2 preface)")
            elif len(buf) > limits.max_header_bytes:
                self._h1_fail(431, "the request headers exceed the size limit")
            return
        if end > limits.max_header_bytes:
            self._h1_fail(431, "the request headers exceed the size limit")
            return
        head = bytes(buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._h1_fail(400, "malformed request line")
            return
        method, path, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                self._h1_fail(400, "malformed header line")
                return
            n = name.lower()
            v = value.strip()
            headers[n] = headers[n] + ", " + v if n in headers else v
        if "transfer-encoding" in headers:
            self._h1_fail(411, "chunked request bodies are not supported: send Content-Length")
            return
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            self._h1_fail(400, "Content-Length must be a number")
            return
        length = int(length_text)
        if length > limits.max_body_bytes:
            self._h1_fail(413, "the request body exceeds the size limit")
            return
        if len(buf) < end + 4 + length:
            if headers.get("expect", "").lower() == "100-continue" and not self.h1_continued and self.transport:
                self.h1_continued = True  # curl waits a second for this before sending a body over 1 KiB
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        self.h1_continued = False
        body = bytes(buf[end + 4 : end + 4 + length])
        del buf[: end + 4 + length]
        connection = headers.get("connection", "").lower()
        self.h1_close_after = (version == "HTTP/1.0" and "keep-alive" not in connection) or "close" in connection
        self.h1_busy = True
        request = Request(method, path, headers, body, self.scheme, headers.get("host", ""), http2=False)
        self._dispatch(request, 0, None)

    def _h1_send(self, response: Response) -> None:
        if self.closed or self.transport is None:
            return
        lines = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Status')}"]
        lines.extend(f"{n}: {v}" for n, v in response.headers)
        if response.status != 204:
            lines.append(f"content-length: {len(response.body)}")
        if self.h1_close_after:
            lines.append("connection: close")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body)
        self.h1_busy = False
        if self.h1_close_after:
            self.transport.close()
            return
        if self.buffer:
            self._h1_process()
        self._watch_partial_request()

    def _h1_fail(self, status: int, detail: str) -> None:
        self.h1_close_after = True
        self.buffer.clear()
        self._h1_send(self.server.error_responder(status, detail))

    # -- both -------------------------------------------------------------------------------------------------------
    def _dispatch(self, request: Request, stream_id: int, stream: _H2Stream | None) -> None:
        self.in_flight += 1
        server = self.server
        server.in_flight += 1
        on_request = server.on_request
        if on_request is None:
            task = self.loop.create_task(self._run(request, stream_id, stream))
            server.tasks.add(task)
            task.add_done_callback(server.tasks.discard)
            return
        reply = _Reply(self, stream_id, stream)
        try:
            on_request(request, reply)
        except Exception:
            log.exception("event=handler_failed path=%s", request.path)
            reply(server.error_responder(500, "internal error"))  # ignored if the handler had answered

    async def _run(self, request: Request, stream_id: int, stream: _H2Stream | None) -> None:
        handler = self.server.handler
        assert handler is not None
        try:
            response = await handler(request)
        except Exception:
            log.exception("event=handler_failed path=%s", request.path)
            response = self.server.error_responder(500, "internal error")
        self._answer(stream_id, stream, response)

    def _answer(self, stream_id: int, stream: _H2Stream | None, response: Response) -> None:
        self.in_flight -= 1
        self.server.in_flight -= 1
        if stream is None:
            self._h1_send(response)
        elif not stream.cancelled:
            if not stream.pending:
                self.streams.pop(stream_id, None)
            self._h2_send(stream_id, response)

    def _schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        self._write_now()

    def _write_now(self) -> None:
        conn = self.h2
        if conn is None or self.transport is None or self.closed:
            return
        data = conn.data_to_send()
        if data:
            self.transport.write(data)

    def goaway(self) -> None:
        """Tell the client no new streams will be served (graceful shutdown)."""
        if self.h2 is not None and not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection()
            self._write_now()
        elif self.mode == "http1" and not self.h1_busy and self.transport is not None:
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
        error_responder: ErrorResponder = _plain_error,
    ) -> None:
        if (handler is None) == (on_request is None):
            raise ValueError("HttpServer takes either an async handler or an on_request callback")
        self.handler = handler
        self.on_request = on_request
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.limits = limits or Limits()
        # Stream windows never need reopening (see HttpConnection._h2_data): a body fits in one window.
        self.limits.stream_window = max(self.limits.stream_window, self.limits.max_body_bytes + 16384)
        self.error_responder = error_responder
        self.connections: set[HttpConnection] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.in_flight = 0
        self._server: asyncio.AbstractServer | None = None
        self.reuse_port = False  # front-end workers share the port (SO_REUSEPORT)

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

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Stop accepting, tell clients (GOAWAY), let in-flight requests finish, then close the connections."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.goaway()
        deadline = time.monotonic() + drain_seconds
        while self.in_flight and time.monotonic() < deadline:  # Tasks (async handler) or callbacks still due
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # let scheduled flushes write the last responses
        for conn in list(self.connections):
            conn._write_now()
            if conn.transport is not None:
                conn.transport.close()
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
