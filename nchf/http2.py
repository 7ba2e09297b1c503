"""HTTP/2 (RFC 9113) on one server connection, through the sans-IO `h2` library: streams to requests, responses
to frames, flow control and the limits one client is held to.

Each connection writes once per event-loop iteration, whatever number of responses became ready in it
(docs/architecture.md). PINGs are answered by h2 itself.

What a client may make the server hold (Limits): a frame no larger than SETTINGS_MAX_FRAME_SIZE, checked from its
9-byte header before h2 buffers it (h2 itself checks only once the whole frame has arrived, so a header announcing
16 MiB would be buffered until 16 MiB came); a header block of bounded size; a body up to max_body_bytes per
stream (413); request bodies up to connection_window per connection, since the connection's flow-control window
is given back only as requests complete; a request arrives whole within request_timeout (408, stream reset) and
a frame within the same time (GOAWAY); stream resets, SETTINGS and PINGs within their budgets (GOAWAY
ENHANCE_YOUR_CALM, as h2 servers do since CVE-2023-44487).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from nchf.h2connection import ServerH2Connection, server_h2_config
from nchf.messages import Request, Response

if TYPE_CHECKING:
    from nchf.http import HttpConnection

log = logging.getLogger("nchf.http")

# :status values as bytes, the common ones ready made (h2 would encode a str on every response).
_STATUS = {code: str(code).encode() for code in range(100, 600)}
_PREFACE_LENGTH = 24  # the client connection preface precedes the first frame
_MAX_FRAME_SIZE = 16384  # SETTINGS_MAX_FRAME_SIZE: we never raise it from its initial value
_HEADERS, _CONTINUATION, _END_HEADERS = 0x1, 0x9, 0x4


class _Stream:
    __slots__ = ("body", "cancelled", "chunks", "dispatched", "headers", "held", "pending", "started", "too_big")

    def __init__(self, headers: list[tuple[bytes, bytes]], started: float = 0.0) -> None:
        self.headers = headers
        self.body = b""  # the first DATA frame's bytes; later ones go to `chunks` (a body is nearly always one frame)
        self.chunks: list[bytes] | None = None
        self.too_big = False
        self.cancelled = False
        self.dispatched = False  # complete and with the handler
        self.started = started  # when its HEADERS came (the server's coarse clock)
        self.held = 0  # flow-controlled bytes of its body the connection's window has not got back yet
        self.pending = b""  # response data still waiting for flow-control window

    def size(self) -> int:
        return len(self.body) + (sum(len(c) for c in self.chunks) if self.chunks else 0)

    def whole_body(self) -> bytes:
        return self.body if self.chunks is None else self.body + b"".join(self.chunks)


class _Reply:
    """The `respond` of one request: answers once, whatever the handler does after (a second call is ignored)."""

    __slots__ = ("session", "stream", "stream_id")

    def __init__(self, session: Http2Session, stream_id: int, stream: _Stream) -> None:
        self.session: Http2Session | None = session
        self.stream_id = stream_id
        self.stream = stream

    def __call__(self, response: Response) -> None:
        session = self.session
        if session is not None:
            self.session = None
            session.answer(self.stream_id, self.stream, response)


class _Budget:
    """A token bucket: `burst` events at once, `rate` more per second."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, burst: int, rate: float, now: float) -> None:
        self.burst = float(burst)
        self.rate = rate
        self.tokens = float(burst)
        self.updated = now

    def spend(self, now: float, count: int = 1) -> bool:
        """Take `count` tokens; False when there are not enough (the client is flooding)."""
        tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if tokens < count:
            self.tokens = tokens
            return False
        self.tokens = tokens - count
        return True


class _FrameGuard:
    """Reads the frame headers in the bytes going to h2 (without copying them), to refuse a frame larger than
    SETTINGS_MAX_FRAME_SIZE or a header block (HEADERS + CONTINUATION) larger than `max_block` before h2 buffers
    them. The bytes so far end inside a frame when `skip` or `head` is set."""

    __slots__ = ("block", "head", "max_block", "skip")

    def __init__(self, max_block: int) -> None:
        self.skip = _PREFACE_LENGTH  # bytes before the next frame header: the preface, then each frame's payload
        self.head = b""  # the start of a frame header cut by the end of a read
        self.block = 0  # bytes of the header block being received (0: none open)
        self.max_block = max_block

    def check(self, data: bytes) -> str | None:
        """The reason to refuse the connection, or None. Every byte of `data` goes to h2 either way."""
        if self.head:  # a frame header cut by the end of the last read
            need = 9 - len(self.head)
            if len(data) < need:
                self.head += data
                return None
            header, self.head = self.head + data[:need], b""
            reason = self._frame(header, 0)
            if reason is not None:
                return reason
            pos = need + (header[0] << 16 | header[1] << 8 | header[2])
        else:
            pos = self.skip
        size = len(data)
        while pos + 9 <= size:
            length = data[pos] << 16 | data[pos + 1] << 8 | data[pos + 2]
            kind = data[pos + 3]
            # The usual frames (within the size, and no header block left open) need nothing more.
            if (
                length > _MAX_FRAME_SIZE
                or kind == _CONTINUATION
                or (kind == _HEADERS and not data[pos + 4] & _END_HEADERS)
            ):
                reason = self._frame(data, pos)
                if reason is not None:
                    return reason
            pos += 9 + length
        if pos < size:
            self.head = data[pos:]
            self.skip = 0
        else:
            self.skip = pos - size
        return None

    def _frame(self, data: bytes, pos: int) -> str | None:
        length = data[pos] << 16 | data[pos + 1] << 8 | data[pos + 2]
        if length > _MAX_FRAME_SIZE:
            return "frame_too_large"
        if data[pos + 3] in (_HEADERS, _CONTINUATION):
            block = self.block + length
            if block > self.max_block:
                return "header_block_too_large"
            self.block = 0 if data[pos + 4] & _END_HEADERS else block
        return None


def _announced_length(headers: list[tuple[bytes, bytes]]) -> int:
    """The request's content-length (0 when absent or not a number: the body's own size is checked as it comes)."""
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit():
                return 0
            return int(value) if len(value) < 19 else 1 << 63
    return 0


def _request(stream: _Stream, scheme: str) -> Request:
    """The Request a complete stream carries (its header names and values are bytes: header_encoding=None)."""
    method = path = authority = ""
    headers: dict[str, str] = {}
    for name, value in stream.headers:
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
    return Request(method, path, headers, stream.whole_body(), scheme, authority or headers.get("host", ""))


class Http2Session:
    """The HTTP/2 side of one `HttpConnection`, from the client's connection preface on."""

    mode = "h2"

    def __init__(self, connection: HttpConnection) -> None:
        self.connection = connection
        self.server = server = connection.server
        self.limits = limits = server.limits
        transport = connection.transport
        assert transport is not None
        self.transport = transport
        self.scheme = connection.scheme
        self.streams: dict[int, _Stream] = {}
        self.waiting_window: dict[int, _Stream] = {}  # streams whose response waits for flow-control window
        self.flush_scheduled = False
        self.closed = False
        self.unacknowledged = 0  # bytes no longer held, not yet given back to the connection's window
        self.in_flight = 0  # requests with the handler
        now = server.now
        self.active = now  # when a request was last handed over or answered (idle since then when none is in flight)
        self.partial_since = 0.0  # when the bytes received began to end inside a frame (0: they do not)
        self.guard = _FrameGuard(2 * limits.max_header_bytes)
        self.resets = _Budget(limits.stream_reset_burst, limits.stream_reset_rate, now)
        self.control_frames = _Budget(limits.control_frame_burst, limits.control_frame_rate, now)
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
        self.h2: ServerH2Connection = conn
        self.write_now()

    # -- from the connection ----------------------------------------------------------------------------------------
    def received(self, data: bytes) -> None:
        if self.closed or not self._frames_allowed(data):
            return
        conn = self.h2
        errors = conn.stream_errors
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.info("event=h2_protocol_error error=%r", exc)
            self.close()
            return
        errors = conn.stream_errors - errors
        if errors and not self.resets.spend(self.server.now, errors):  # frames on streams already reset
            self._refuse("stream_reset_flood", h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            return
        for event in events:
            kind = type(event)
            if kind is h2.events.RequestReceived:
                self._request_received(event)  # type: ignore[arg-type]
            elif kind is h2.events.DataReceived:
                self._data_received(event)  # type: ignore[arg-type]
            elif kind is h2.events.StreamEnded:
                self._stream_ended(event.stream_id)  # type: ignore[attr-defined]
            elif kind is h2.events.StreamReset:
                if not self._stream_reset(event):  # type: ignore[arg-type]
                    return
            elif kind is h2.events.WindowUpdated:
                self._resume_pending()
            elif kind is h2.events.RemoteSettingsChanged or kind is h2.events.PingReceived:
                if not self.control_frames.spend(self.server.now):
                    self._refuse("control_frame_flood", h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                    return
            elif kind is h2.events.ConnectionTerminated:
                self.close()
                return
        self.write_now()

    def _frames_allowed(self, data: bytes) -> bool:
        """Check the frames `data` carries before h2 buffers them (_FrameGuard); False: the connection is ended."""
        guard = self.guard
        refused = guard.check(data)
        if refused is not None:
            too_large = refused == "frame_too_large"
            code = h2.errors.ErrorCodes.FRAME_SIZE_ERROR if too_large else h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
            self._refuse(refused, code)
            return False
        if guard.skip or guard.head:  # the bytes so far end inside a frame: its time runs
            if not self.partial_since:
                self.partial_since = self.server.now
        elif self.partial_since:
            self.partial_since = 0.0
        return True

    def lost(self) -> None:
        self.closed = True
        for stream in self.streams.values():
            stream.cancelled = True
        self.streams.clear()
        self.waiting_window.clear()

    def goaway(self) -> None:
        """Tell the client no new streams will be served (graceful shutdown)."""
        if not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection()
            self.write_now()

    def close(self) -> None:
        """Send what h2 has queued (a GOAWAY after a protocol error) and close the connection."""
        self.write_now()
        self.transport.close()

    def _refuse(self, reason: str, error_code: h2.errors.ErrorCodes) -> None:
        """End a connection whose client broke a limit: GOAWAY with `error_code`, then close."""
        self.server.refusals.note(reason)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection(error_code=error_code)
        self.close()
        self.closed = True

    # -- timers (the server's sweep) --------------------------------------------------------------------------------
    def overdue(self, now: float) -> str | None:
        """What is overdue at `now`: "request_timeout" (a frame left unfinished), "idle_timeout" (nothing to serve for
        idle_timeout), or None. Requests left unfinished for request_timeout are answered 408 here."""
        limits = self.limits
        if self.partial_since and now - self.partial_since > limits.request_timeout:
            return "request_timeout"
        if self.streams:
            self._time_out_streams(now - limits.request_timeout)
        if not self.in_flight and now - self.active > limits.idle_timeout:
            return "idle_timeout"
        return None

    def expire(self, reason: str) -> None:
        if not self.closed:
            self._refuse(reason, h2.errors.ErrorCodes.NO_ERROR)

    def _time_out_streams(self, started_before: float) -> None:
        late = [
            sid for sid, s in self.streams.items() if not s.dispatched and not s.pending and s.started < started_before
        ]
        for stream_id in late:
            stream = self.streams[stream_id]
            self.server.refusals.note("request_timeout")
            self._drop(stream_id, stream, self.server.error_responder(408, "the request did not arrive in time"))
        if late:
            self.write_now()

    # -- requests ---------------------------------------------------------------------------------------------------
    def _request_received(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        headers = event.headers or []
        stream = self.streams[stream_id] = _Stream(headers, self.server.now)
        # h2 applies our SETTINGS_MAX_HEADER_LIST_SIZE only once the client acknowledged it (64 KiB before):
        # the limit is checked here, sized as RFC 9113 counts it (name + value + 32 per field).
        if sum(len(n) + len(v) + 32 for n, v in headers) > self.limits.max_header_bytes:
            stream.too_big = True
            self.send(stream_id, self.server.error_responder(431, "the request headers exceed the size limit"))
            self.streams.pop(stream_id, None)
            return
        if _announced_length(headers) > self.limits.max_body_bytes:
            # Refused from its content-length: waiting for the body would wait for bytes the flow-control window may
            # never let through (a body past the connection's window stalls until request_timeout, then 408).
            stream.too_big = True
            self.send(stream_id, self.server.error_responder(413, "the request body exceeds the size limit"))
            self.streams.pop(stream_id, None)
            return
        if event.stream_ended is not None:
            self._stream_ended(stream_id)

    def _data_received(self, event: h2.events.DataReceived) -> None:
        stream_id = event.stream_id
        stream = self.streams.get(stream_id)
        if stream is None or stream.too_big or stream.dispatched:
            self._give_back(event.flow_controlled_length or 0)  # nothing of it is kept
            return
        stream.held += event.flow_controlled_length or 0
        data = event.data or b""
        if not stream.body:
            stream.body = data
        elif stream.chunks is None:
            stream.chunks = [data]
        else:
            stream.chunks.append(data)
        if stream.size() > self.limits.max_body_bytes:
            self._drop(stream_id, stream, self.server.error_responder(413, "the request body exceeds the size limit"))

    def _stream_ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.too_big:
            return
        request = _request(stream, self.scheme)
        stream.body, stream.chunks = b"", None
        stream.dispatched = True
        if stream.held:
            self._give_back(stream.held)
            stream.held = 0
        self.in_flight += 1
        self.active = self.server.now
        self.server.dispatch(request, _Reply(self, stream_id, stream))

    def _stream_reset(self, event: h2.events.StreamReset) -> bool:
        """The client reset a stream, or h2 did for a stream error of the client's (HEADERS again on a stream still
        being answered): forget it. False when that was one reset too many (the connection is ended)."""
        stream = self.streams.pop(event.stream_id, None)
        self.waiting_window.pop(event.stream_id, None)
        if stream is not None:
            stream.cancelled = True
            if stream.held:
                self._give_back(stream.held)
                stream.held = 0
        if not self.resets.spend(self.server.now):
            self._refuse("stream_reset_flood", h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            return False
        return True

    def _drop(self, stream_id: int, stream: _Stream, response: Response) -> None:
        """Answer a request the handler will not see (too large, too slow) and tell the client to stop sending it."""
        stream.too_big = True
        stream.body, stream.chunks = b"", None
        if stream.held:
            self._give_back(stream.held)
            stream.held = 0
        self.send(stream_id, response)
        if self.streams.pop(stream_id, None) is not None:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)

    def _give_back(self, length: int) -> None:
        """Return received bytes to the connection's window once nothing holds them. In bulk: per-frame
        acknowledgements cost h2 CPU per request. (Stream windows are larger than the largest body we accept,
        HttpServer makes it so, and are never reopened.)"""
        self.unacknowledged += length
        if self.unacknowledged >= self.limits.connection_window // 2:
            # The client may have ended the connection (GOAWAY) earlier in the same read: nothing to give back then
            # (found by make bench-chaos: h2load closing its connections under overload).
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.increment_flow_control_window(self.unacknowledged)
            self.unacknowledged = 0

    # -- responses --------------------------------------------------------------------------------------------------
    def answer(self, stream_id: int, stream: _Stream, response: Response) -> None:
        self.server.in_flight -= 1
        self.in_flight -= 1
        self.active = self.server.now
        if response.status == 503 and self.limits.overload_pause:
            self.connection.pause_for("overload", self.limits.overload_pause)
        if not stream.cancelled:
            if not stream.pending:
                self.streams.pop(stream_id, None)
            self.send(stream_id, response)

    def send(self, stream_id: int, response: Response) -> None:
        if self.closed:
            return
        conn = self.h2
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
                    stream = self.streams.setdefault(stream_id, _Stream([]))
                    stream.pending = body
                    self.waiting_window[stream_id] = stream
                    self._resume_pending()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return  # the client reset the stream meanwhile: nobody to answer
        self._schedule_flush()

    def _resume_pending(self) -> None:
        if not self.waiting_window:
            return  # (a WINDOW_UPDATE with no response waiting for window, the usual case)
        conn = self.h2
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

    def _schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.connection.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        self.write_now()

    def write_now(self) -> None:
        if self.closed:
            return
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)
