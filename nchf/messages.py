"""HTTP messages as a handler sees them, whatever the HTTP version that carried them (RFC 9110 semantics), and the
limits the server puts on them.

A handler gets a `Request` and answers one `Response`; nothing here knows about frames, streams or sockets.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Limits:
    """What one client may make the server hold, and for how long (every setting of [nchf] of the same name)."""

    max_concurrent_streams: int = 256  # per HTTP/2 connection
    max_header_bytes: int = 16384  # header list (HTTP/2) or header block (HTTP/1.1)
    max_body_bytes: int = 65536
    stream_window: int = 1 << 20  # flow-control window we grant a stream: larger than any body, never reopened
    # Bytes of request bodies one connection may have buffered and not yet handed to the handler: the HTTP/2
    # connection flow-control window, given back only as requests complete (HTTP/1.1 reads one request at a time).
    connection_window: int = 1 << 20
    max_connections: int = 1024
    request_timeout: float = 10.0  # seconds for a request (or the HTTP/2 preface) to arrive whole once started
    idle_timeout: float = 120.0  # seconds a connection may stay without a request to serve before it is closed
    # HTTP/2 floods (CVE-2023-44487 rapid reset; SETTINGS and PING floods): token buckets per connection, a burst
    # and a rate per second; a connection that empties one gets GOAWAY ENHANCE_YOUR_CALM and is closed.
    stream_reset_burst: int = 1000  # streams the client may reset (nghttp2's defaults)
    stream_reset_rate: float = 33.0
    control_frame_burst: int = 100  # SETTINGS and PING frames
    control_frame_rate: float = 10.0
    # Seconds an HTTP/2 connection is not read after one of its requests got 503 for overload: a 503 costs nearly
    # what a served request does (h2 framing and HPACK are most of both), so refusing 2 of every 3 requests at 3x
    # capacity leaves nothing to serve with. Paused, the client's next requests wait in TCP, the server serves what
    # it admitted, and new connections are read as usual. 0: never paused. Measured at 3x (make bench-chaos, h2load):
    # goodput 9 % of capacity without a pause, 25 % with 0.05 s, 71 % with 0.3 s.
    overload_pause: float = 0.25


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


def plain_error(status: int, detail: str) -> Response:
    return Response(status, detail.encode(), [("content-type", "text/plain")])


# Reason phrases (RFC 9110 section 15) of the statuses we send; HTTP/1.1 puts them on the status line.
REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Payload Too Large",  # RFC 9110 now says "Content Too Large"; the phrase we have always sent
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
