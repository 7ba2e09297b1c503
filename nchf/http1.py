"""HTTP/1.1 (RFC 9112) on one server connection, through the sans-IO `h11` library: health probes, curl and
schemathesis speak it; SMFs speak HTTP/2.

One request at a time: pipelined requests wait in h11's buffer until the answer before them is sent. Bodies must
come with Content-Length (a chunked upload is refused with 411, as RFC 9112 section 6.3 allows), no larger than
the body limit (413, before the body arrives); the header block is bounded (431).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import h11

from nchf.messages import REASONS, Request, Response

if TYPE_CHECKING:
    from nchf.http import HttpConnection

log = logging.getLogger("nchf.http")

_REQUEST_LINE_START = re.compile(rb"^[A-Z]{1,16}( |$)")


def looks_like_http1(head: bytes) -> bool:
    """Whether the bytes so far can begin an HTTP/1.1 request (so waiting for the rest makes sense): a TLS
    ClientHello or binary noise on the cleartext port is refused at once instead of held open."""
    return _REQUEST_LINE_START.match(head[:17]) is not None


class _Reply:
    """The `respond` of one request: answers once, whatever the handler does after (a second call is ignored)."""

    __slots__ = ("session",)

    def __init__(self, session: Http1Session) -> None:
        self.session: Http1Session | None = session

    def __call__(self, response: Response) -> None:
        session = self.session
        if session is not None:
            self.session = None
            session.answer(response)


def _request(event: h11.Request, body: bytes, scheme: str) -> Request:
    headers: dict[str, str] = {}
    for name, value in event.headers:  # names lower-cased by h11
        n = name.decode("latin-1")
        v = value.decode("latin-1")
        headers[n] = headers[n] + ", " + v if n in headers else v
    method = event.method.decode("ascii")
    target = event.target.decode("latin-1")
    return Request(method, target, headers, body, scheme, headers.get("host", ""), http2=False)


class Http1Session:
    """The HTTP/1.1 side of one `HttpConnection`."""

    mode = "http1"

    def __init__(self, connection: HttpConnection) -> None:
        self.connection = connection
        self.server = connection.server
        self.limits = self.server.limits
        transport = connection.transport
        assert transport is not None
        self.transport = transport
        self.scheme = connection.scheme
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        self.head: h11.Request | None = None  # the request whose body is arriving
        self.body: list[bytes] = []
        self.busy = False  # a request is with the handler: the next one waits in h11's buffer
        self.closed = False
        self.clock = connection.loop.time
        self.active = self.clock()  # when a request was last handed over or answered
        self.partial_since = 0.0  # when the request arriving now began (0: none is arriving)

    # -- from the connection ----------------------------------------------------------------------------------------
    def received(self, data: bytes) -> None:
        self.h11.receive_data(data)
        if self.busy:
            # One request at a time: what comes meanwhile waits in h11's buffer, and no more is read until the
            # answer is sent (so a client cannot make us buffer without bound).
            self.connection.hold_reading("http1_busy", True)
            return
        self._process()
        self._note_partial()

    def _note_partial(self) -> None:
        """Start (or stop) the clock of a request that has begun to arrive and is not complete yet."""
        if self.busy or self.closed:
            self.partial_since = 0.0
        elif self.h11.their_state is h11.SEND_BODY or self.h11.trailing_data[0]:
            if not self.partial_since:
                self.partial_since = self.clock()
        else:
            self.partial_since = 0.0

    def overdue(self, now: float) -> str | None:
        """What is overdue at `now`: request_timeout (a request began longer ago and is not complete), idle_timeout
        (no request for that long), or None; never while a request is with the handler."""
        if self.busy or self.closed:
            return None
        if self.partial_since:
            return "request_timeout" if now - self.partial_since > self.limits.request_timeout else None
        return "idle_timeout" if now - self.active > self.limits.idle_timeout else None

    def expire(self, reason: str) -> None:
        """Close the connection: HTTP/1.1 has no way to refuse a request that has only partly arrived."""
        self.server.refusals.note(reason)
        self.transport.close()
        self.closed = True

    def lost(self) -> None:
        self.closed = True

    def goaway(self) -> None:
        if not self.busy:
            self.transport.close()

    def write_now(self) -> None:
        return None  # every answer is written when it is sent

    # -- requests ---------------------------------------------------------------------------------------------------
    def _process(self) -> None:
        conn = self.h11
        while not self.busy and not self.closed:
            if conn.their_state is h11.IDLE and not self._may_begin_request():
                return
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                if status == 431:
                    self._fail(431, "the request headers exceed the size limit")
                else:
                    self._fail(status, f"malformed HTTP/1.1 request: {exc}")
                return
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    # curl waits a second for this before sending a body over 1 KiB
                    self.transport.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                return
            if event is h11.PAUSED or type(event) is h11.ConnectionClosed:
                return
            if type(event) is h11.Request:
                self._head(event)
            elif type(event) is h11.Data:
                self._data(event.data)
            elif type(event) is h11.EndOfMessage:
                self._complete()

    def _may_begin_request(self) -> bool:
        """Refuse what cannot be a request head within the limit before h11 parses it (h11 bounds only a head that
        is still incomplete; one that arrived whole in a single read it parses whatever its size)."""
        pending = self.h11.trailing_data[0]
        if not pending:
            return True
        if not looks_like_http1(pending):
            self._fail(400, "not an HTTP/1.1 request (nor the HTTP/2 preface)")
            return False
        end = pending.find(b"\r\n\r\n")
        if end > self.limits.max_header_bytes or (end < 0 and len(pending) > self.limits.max_header_bytes):
            self._fail(431, "the request headers exceed the size limit")
            return False
        return True

    def _head(self, event: h11.Request) -> None:
        length = 0
        for name, value in event.headers:
            if name == b"transfer-encoding":
                self._fail(411, "chunked request bodies are not supported: send Content-Length")
                return
            if name == b"content-length":
                length = int(value)  # h11 has checked it is a number
        if length > self.limits.max_body_bytes:
            self._fail(413, "the request body exceeds the size limit")
            return
        self.head = event
        self.body = []

    def _data(self, data: bytes) -> None:
        self.body.append(data)

    def _complete(self) -> None:
        head = self.head
        if head is None:  # refused at its head: the connection is closing
            return
        self.head = None
        body, self.body = b"".join(self.body), []
        self.busy = True
        self.partial_since = 0.0
        self.active = self.clock()
        self.server.dispatch(_request(head, body, self.scheme), _Reply(self))

    def _fail(self, status: int, detail: str) -> None:
        """Answer a request the handler never sees, then close: what follows on the connection cannot be trusted
        to start where this request ends."""
        self.head = None
        self._send(self.server.error_responder(status, detail), close=True)
        self.transport.close()
        self.closed = True

    # -- responses --------------------------------------------------------------------------------------------------
    def answer(self, response: Response) -> None:
        self.server.in_flight -= 1
        self.busy = False
        self.active = self.clock()
        if self.closed:
            return
        self._send(response)
        if self.closed:
            return
        if self.h11.our_state is h11.MUST_CLOSE:
            self.transport.close()
            self.closed = True
            return
        self.h11.start_next_cycle()
        self._process()  # a pipelined request may be waiting
        self._note_partial()
        if not self.busy:
            self.connection.hold_reading("http1_busy", False)

    def _send(self, response: Response, *, close: bool = False) -> None:
        headers = list(response.headers)
        if response.status != 204:
            headers.append(("content-length", str(len(response.body))))
        if close:
            headers.append(("connection", "close"))
        conn = self.h11
        reason = REASONS.get(response.status, "Status")
        try:
            out = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
            if response.body and response.status != 204:
                out += conn.send(h11.Data(data=response.body))
            out += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:  # a response h11 will not write (a bug of ours): drop the connection
            log.error("event=http1_response_refused status=%d error=%r", response.status, exc)
            self.transport.close()
            self.closed = True
            return
        self.transport.write(out)
