"""HTTP/2 (RFC 9113) on one server connection, through the sans-IO `h2` library: streams to requests, responses
to frames, flow control and the per-stream limits.

Each connection writes once per event-loop iteration, whatever number of responses became ready in it
(docs/architecture.md). PINGs are answered by h2 itself.
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


class _Stream:
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
        self.unacknowledged = 0  # received DATA bytes not yet given back to the connection's window
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
        self.h2: h2.connection.H2Connection = conn
        self.write_now()

    # -- from the connection ----------------------------------------------------------------------------------------
    def received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.info("event=h2_protocol_error error=%r", exc)
            self.close()
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
                self._stream_reset(event.stream_id)  # type: ignore[attr-defined]
            elif kind is h2.events.WindowUpdated:
                self._resume_pending()
            elif kind is h2.events.ConnectionTerminated:
                self.close()
                return
        self.write_now()

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

    # -- requests ---------------------------------------------------------------------------------------------------
    def _request_received(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        headers = event.headers or []
        stream = self.streams[stream_id] = _Stream(headers)
        # h2 applies our SETTINGS_MAX_HEADER_LIST_SIZE only once the client acknowledged it (64 KiB before):
        # the limit is checked here, sized as RFC 9113 counts it (name + value + 32 per field).
        if sum(len(n) + len(v) + 32 for n, v in headers) > self.limits.max_header_bytes:
            stream.too_big = True
            self.send(stream_id, self.server.error_responder(431, "the request headers exceed the size limit"))
            self.streams.pop(stream_id, None)
            return
        if event.stream_ended is not None:
            self._stream_ended(stream_id)

    def _data_received(self, event: h2.events.DataReceived) -> None:
        stream_id = event.stream_id
        stream = self.streams.get(stream_id)
        if event.flow_controlled_length:
            # A stream's window is larger than the largest body we accept (HttpServer makes it so), so only the
            # connection's window needs opening again, in bulk: per-frame acknowledgements cost h2 CPU per request.
            self.unacknowledged += event.flow_controlled_length
            if self.unacknowledged >= self.limits.connection_window // 2:
                self.h2.increment_flow_control_window(self.unacknowledged)
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
        if stream.size() > self.limits.max_body_bytes:
            stream.too_big = True
            stream.body, stream.chunks = b"", None
            self.send(stream_id, self.server.error_responder(413, "the request body exceeds the size limit"))
            if self.streams.pop(stream_id, None) is not None:
                with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                    self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)

    def _stream_ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.too_big:
            return
        request = _request(stream, self.scheme)
        stream.body, stream.chunks = b"", None
        self.server.dispatch(request, _Reply(self, stream_id, stream))

    def _stream_reset(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        self.waiting_window.pop(stream_id, None)
        if stream is not None:
            stream.cancelled = True

    # -- responses --------------------------------------------------------------------------------------------------
    def answer(self, stream_id: int, stream: _Stream, response: Response) -> None:
        self.server.in_flight -= 1
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
