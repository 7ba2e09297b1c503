"""The Nchf server against hostile and overloaded clients, over real sockets (issue 12, the Nchf items): what a client
may make it buffer, for how long, how often it may reset streams or send SETTINGS and PINGs, and how bad bodies,
media types, replayed creates and overload are answered."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from nchf.config import NchfSettings
from nchf.http import HttpServer, Request, Response
from store.interface import StoreBusy
from tests.nchf_harness import API, IMSI, Chf, request_body, start_chf, stop_chf, usage
from tests.nchf_openapi import check_response, specs_or_skip

MB = 1_000_000
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture
async def chf(tmp_path: Path) -> AsyncIterator[Chf]:
    specs_or_skip()
    running = await start_chf(tmp_path)
    try:
        yield running
    finally:
        await stop_chf(running)


async def chf_with(tmp_path: Path, **limits: Any) -> Chf:
    specs_or_skip()
    settings = NchfSettings(port=0)
    for name, value in limits.items():
        setattr(settings.limits, name, value)
    return await start_chf(tmp_path, settings)


class RawH2:
    """An HTTP/2 client that writes what it is told, frames h2 would never send included, and reads the server's
    frames through h2's client side."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.events: list[h2.events.Event] = []
        self.closed = False

    @classmethod
    async def connect(cls, port: int, *, handshake: bool = False) -> RawH2:
        """`handshake`: wait for the server's SETTINGS and connection window first."""
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        client.conn.initiate_connection()
        client.writer.write(client.conn.data_to_send())
        await client.writer.drain()
        if handshake:
            await client.read_until(lambda: client.conn.outbound_flow_control_window > 65535)
        return client

    def headers(self, stream_id: int, path: str, *, end_stream: bool = False) -> None:
        hdrs = [(":method", "POST"), (":scheme", "http"), (":authority", "chf"), (":path", path)]
        self.conn.send_headers(stream_id, [*hdrs, ("content-type", "application/json")], end_stream=end_stream)

    async def flush(self, extra: bytes = b"") -> None:
        self.writer.write(self.conn.data_to_send() + extra)
        await self.writer.drain()

    async def read_until(self, done: Callable[[], bool], seconds: float = 5.0) -> None:
        """Read the server's frames until `done()` or the server closes; fails after `seconds`."""
        deadline = time.monotonic() + seconds
        while not done() and not self.closed:
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; events so far: {self.events[-5:]}"
            data = await asyncio.wait_for(self.reader.read(65536), left)
            if not data:
                self.closed = True
                break
            self.events.extend(self.conn.receive_data(data))
            self.writer.write(self.conn.data_to_send())

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        return next((e for e in self.events if isinstance(e, h2.events.ConnectionTerminated)), None)

    def status(self, stream_id: int) -> int | None:
        for e in self.events:
            if isinstance(e, h2.events.ResponseReceived) and e.stream_id == stream_id:
                return next(int(v) for n, v in e.headers or [] if n in (":status", b":status"))
        return None

    def ended(self, stream_id: int) -> bool:
        return any(isinstance(e, h2.events.StreamEnded) and e.stream_id == stream_id for e in self.events)

    def response(self, stream_id: int) -> tuple[int, dict[str, str], bytes]:
        """The response on a stream, once it ended: status, headers, body."""
        headers: dict[str, str] = {}
        body = b""
        for e in self.events:
            if getattr(e, "stream_id", None) != stream_id:
                continue
            if isinstance(e, h2.events.ResponseReceived):
                headers = {str(n): str(v) for n, v in e.headers or []}
            elif isinstance(e, h2.events.DataReceived):
                body += e.data or b""
        return int(headers.pop(":status")), headers, body

    def close(self) -> None:
        self.writer.close()


def frame(kind: int, stream_id: int, payload: bytes, *, length: int | None = None, flags: int = 0) -> bytes:
    """A raw frame; `length` may announce more than the payload (RFC 9113 section 4.1)."""
    size = len(payload) if length is None else length
    return size.to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big") + payload


async def assert_still_serving(chf: Chf) -> None:
    client = await chf.client()
    created = await chf.call(client, "create", request_body(1, units=[usage(10)]))
    assert created.status == 201
    await client.close()


# -- item 1: what a client may make the server buffer ------------------------------------------------------------------
async def test_a_frame_announcing_16_mib_is_refused_from_its_header(chf: Chf) -> None:
    """h2 buffers a frame until it is whole and only then checks its length: the server checks the 9-byte header
    and answers GOAWAY FRAME_SIZE_ERROR at once."""
    client = await RawH2.connect(chf.port)
    client.headers(1, f"{API}/chargingdata")
    await client.flush(frame(0x0, 1, b"x" * 1000, length=(16 << 20) - 1))
    await client.read_until(lambda: client.goaway() is not None, 3)
    goaway = client.goaway()
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.FRAME_SIZE_ERROR
    await client.read_until(lambda: False, 3)  # then the server closes the connection
    assert client.closed
    await assert_still_serving(chf)


async def test_a_header_block_of_endless_continuations_is_refused(chf: Chf) -> None:
    """h2 keeps up to 64 CONTINUATION frames (1 MiB) of a header block that never ends; the server refuses a block
    past twice max_header_bytes."""
    client = await RawH2.connect(chf.port, handshake=True)
    block = frame(0x1, 1, b"\x82", flags=0)  # HEADERS without END_HEADERS, then CONTINUATIONs that never end
    await client.flush(block + b"".join(frame(0x9, 1, b"\x40" + b"\x00" * 16000) for _ in range(8)))
    await client.read_until(lambda: client.goaway() is not None, 3)
    goaway = client.goaway()
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


async def test_a_body_announced_past_the_limit_is_refused_from_its_headers(chf: Chf) -> None:
    """A content-length over max_body_bytes is a 413 at once: waiting for the body waited for bytes the
    flow-control window never let through, and the client got a 408 after request_timeout (found by make
    bench-chaos's JSON fuzzer: a 120 KB body, 9.8 s)."""
    client = await RawH2.connect(chf.port, handshake=True)
    hdrs = [(":method", "POST"), (":scheme", "http"), (":authority", "chf"), (":path", f"{API}/chargingdata")]
    client.conn.send_headers(1, [*hdrs, ("content-type", "application/json"), ("content-length", "120001")])
    client.conn.send_data(1, b"{" * 1000)
    await client.flush()
    await client.read_until(lambda: client.ended(1), 3)
    assert client.status(1) == 413
    client.close()
    await assert_still_serving(chf)


@pytest.mark.slow
async def test_request_bodies_buffered_per_connection_stay_within_the_connection_window(tmp_path: Path) -> None:
    """Streams that never end hold their bytes: the server gives the connection's flow-control window back only as
    requests complete, so a client can make it buffer no more than that window (the old server reopened it as
    soon as bytes arrived, whatever held them)."""
    window = 256 * 1024
    chf = await chf_with(tmp_path, connection_window=window, max_body_bytes=60_000, request_timeout=60.0)
    try:
        client = await RawH2.connect(chf.port, handshake=True)
        sent = 0
        for stream_id in range(1, 400, 2):  # 200 streams of 50 KB that never end: 10 MB offered
            client.headers(stream_id, f"{API}/chargingdata")
            for _ in range(4):
                room = min(12_500, client.conn.local_flow_control_window(stream_id))
                if room:
                    client.conn.send_data(stream_id, b" " * room)
                    sent += room
            await client.flush()
            with_timeout = asyncio.wait_for(client.reader.read(65536), 0.01)
            try:
                data = await with_timeout
            except TimeoutError:
                continue
            client.events.extend(client.conn.receive_data(data))
        assert sent <= window, f"the server let {sent} bytes of unfinished requests in, over its {window} window"
        client.close()
        await assert_still_serving(chf)
    finally:
        await stop_chf(chf)


@pytest.mark.slow
async def test_http1_reads_nothing_more_while_a_request_is_with_the_handler() -> None:
    """A pipelining client whose first answer is slow cannot make the server buffer what it sends meanwhile."""
    held: list[Any] = []

    def on_request(request: Request, respond: Any) -> None:
        held.append(respond)  # answered at the end of the test

    server = HttpServer(on_request=on_request, port=0)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        await asyncio.sleep(0.1)
        assert len(held) == 1
        chunk = b"POST /next HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" * 20_000  # 1 MB of pipelined requests
        offered = accepted = 0
        started = time.monotonic()
        while offered < 96 * MB and time.monotonic() - started < 5:
            writer.write(chunk)
            offered += len(chunk)
            try:
                await asyncio.wait_for(writer.drain(), 0.2)
            except TimeoutError:
                break  # the server stopped reading: the kernel's buffers are full
            accepted = offered
        assert accepted < 64 * MB, f"{accepted} bytes accepted while the first request was unanswered"
        held[0](Response(200, b"done"))
        assert (await asyncio.wait_for(reader.readuntil(b"done"), 5)).startswith(b"HTTP/1.1 200 ")
        writer.transport.abort()
    finally:
        for respond in held:
            respond(Response(200))
        await server.stop()


@pytest.mark.slow
async def test_a_request_must_arrive_whole_in_time_over_h2(tmp_path: Path) -> None:
    """A stream whose body never comes is answered 408 and reset after request_timeout; the connection lives on.
    A frame left unfinished for as long ends the connection (GOAWAY): nothing else can follow it."""
    chf = await chf_with(tmp_path, request_timeout=0.4)
    try:
        client = await RawH2.connect(chf.port)
        client.headers(1, f"{API}/chargingdata")
        await client.flush()
        started = time.monotonic()
        await client.read_until(lambda: client.ended(1), 5)
        status, headers, payload = client.response(1)
        assert status == 408 and 0.3 < time.monotonic() - started < 3
        assert check_response("create", status, headers, payload)["cause"] == "TIMED_OUT_REQUEST"
        body = json.dumps(request_body(1, units=[usage(10)])).encode()
        client.headers(3, f"{API}/chargingdata")
        client.conn.send_data(3, body, end_stream=True)
        await client.flush()
        await client.read_until(lambda: client.status(3) is not None, 5)
        assert client.status(3) == 201
        await client.flush(frame(0x0, 5, b"x" * 10, length=1000))  # 10 bytes of a 1000-byte frame, then nothing
        await client.read_until(lambda: client.goaway() is not None, 5)
        await client.read_until(lambda: False, 3)
        assert client.closed
    finally:
        await stop_chf(chf)


# -- item 3: idle and silent connections ------------------------------------------------------------------------------
@pytest.mark.slow
async def test_silent_and_idle_connections_are_closed(tmp_path: Path) -> None:
    chf = await chf_with(tmp_path, request_timeout=0.3, idle_timeout=0.6)
    try:
        # A socket that never says anything: closed once the first bytes are request_timeout late.
        reader, writer = await asyncio.open_connection("127.0.0.1", chf.port)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert 0.25 < time.monotonic() - started < 3
        writer.close()
        # HTTP/2 with nothing to serve: GOAWAY (NO_ERROR), then closed.
        client = await RawH2.connect(chf.port)
        started = time.monotonic()
        await client.read_until(lambda: client.goaway() is not None, 5)
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
        assert 0.5 < time.monotonic() - started < 4
        await client.read_until(lambda: False, 3)
        assert client.closed
        # HTTP/1.1 keep-alive after an answer: closed after idle_timeout.
        reader, writer = await asyncio.open_connection("127.0.0.1", chf.port)
        writer.write(b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 404 ")
        writer.close()
        # A connection that keeps serving is never cut.
        h2client = await chf.client()
        created = await chf.call(h2client, "create", request_body(1, units=[usage(10)]))
        for n in range(2, 6):
            await asyncio.sleep(0.3)
            updated = await chf.call(h2client, "update", request_body(n, units=[usage(10)]), created.ref)
            assert updated.status == 200
        await h2client.close()
    finally:
        await stop_chf(chf)


# -- item 6: floods ----------------------------------------------------------------------------------------------------
async def test_rapid_reset_flood_gets_goaway_enhance_your_calm(tmp_path: Path) -> None:
    """CVE-2023-44487: HEADERS + DATA + RST_STREAM, over and over. Past the reset budget: GOAWAY
    ENHANCE_YOUR_CALM and the connection is closed; other clients are served."""
    chf = await chf_with(tmp_path, stream_reset_burst=100, stream_reset_rate=10.0)
    try:
        client = await RawH2.connect(chf.port, handshake=True)
        body = json.dumps(request_body(1, units=[usage(10)])).encode()
        for stream_id in range(1, 2 * 1000, 2):  # 1,000 streams: within the connection window we were granted
            client.headers(stream_id, f"{API}/chargingdata/nothing/update")
            client.conn.send_data(stream_id, body)
            client.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            if stream_id % 200 == 1:
                try:
                    await client.flush()
                except ConnectionError:
                    break
        await client.read_until(lambda: client.goaway() is not None, 5)
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert chf.component.server.refusals.totals.get("stream_reset_flood") == 1
        await assert_still_serving(chf)
    finally:
        await stop_chf(chf)


async def test_frames_repeated_on_a_reset_stream_spend_the_reset_budget(tmp_path: Path) -> None:
    """The same create (HEADERS + DATA) over and over on one stream: h2 resets the stream, then answers each repeat
    with RST_STREAM, without an event, after decoding its header block. make bench-chaos's no-read peers repeated
    their batches so, megabytes a second, and the server spent its turns decoding them (a new client waited
    seconds). Each such reset spends from the reset budget: past it, GOAWAY ENHANCE_YOUR_CALM; others are served."""
    chf = await chf_with(tmp_path, stream_reset_burst=100, stream_reset_rate=10.0)
    try:
        client = await RawH2.connect(chf.port, handshake=True)
        client.headers(1, f"{API}/chargingdata")
        client.conn.send_data(1, json.dumps(request_body(1, units=[usage(10)])).encode(), end_stream=True)
        create = client.conn.data_to_send()
        with contextlib.suppress(ConnectionError):
            # Again while it is with the handler: h2 resets the stream; the repeats after are on a reset stream.
            await client.flush(create * 300)
        await client.read_until(lambda: client.goaway() is not None, 5)
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert chf.component.server.refusals.totals.get("stream_reset_flood") == 1
        await assert_still_serving(chf)
    finally:
        await stop_chf(chf)


@pytest.mark.parametrize("control", ["settings", "ping"])
async def test_settings_and_ping_floods_get_goaway_enhance_your_calm(tmp_path: Path, control: str) -> None:
    chf = await chf_with(tmp_path, control_frame_burst=50, control_frame_rate=5.0)
    try:
        client = await RawH2.connect(chf.port)
        for i in range(5000):
            if control == "settings":
                client.conn.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
            else:
                client.conn.ping(i.to_bytes(8, "big"))
        with contextlib.suppress(ConnectionError):  # the server may close before it has read them all
            await client.flush()
        await client.read_until(lambda: client.goaway() is not None, 5)
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        await assert_still_serving(chf)
    finally:
        await stop_chf(chf)


# -- items 7 and 8: bodies, media types, replayed creates -------------------------------------------------------------
async def test_deeply_nested_json_is_a_400_without_a_traceback(chf: Chf, caplog: pytest.LogCaptureFixture) -> None:
    client = await chf.client()
    deep = b"[" * 20_000 + b"]" * 20_000
    with caplog.at_level(logging.INFO):
        result = await chf.call(client, "create", None, raw=deep)
    assert result.status == 400 and result.body["cause"] == "INVALID_MSG_FORMAT"
    assert result.body["invalidParams"] == [{"param": "/", "reason": "nested too deeply"}]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    await client.close()


async def test_only_json_media_types_are_json(chf: Chf) -> None:
    client = await chf.client()
    body = json.dumps(request_body(1, units=[usage(10)])).encode()
    for content_type in ("application/jsonx", "application/json-seq", "application/json5", "text/json"):
        refused = await client.request("POST", f"{API}/chargingdata", body, [("content-type", content_type)])
        assert refused.status == 400, content_type
        assert json.loads(refused.body)["invalidParams"][0]["param"] == "header content-type"
    for content_type in ("application/json; charset=utf-8", "Application/JSON", "application/json ;charset=UTF-8"):
        body = json.dumps(request_body(1, units=[usage(10)], supi="imsi-999990000000001")).encode()
        accepted = await client.request("POST", f"{API}/chargingdata", body, [("content-type", content_type)])
        assert accepted.status == 404 and json.loads(accepted.body)["cause"] == "USER_UNKNOWN", content_type
    await client.close()


async def test_a_create_repeated_after_release_is_a_new_resource(chf: Chf) -> None:
    """TS 32.291: a create makes a new ChargingDataRef. The same bytes after the resource was released are not
    a retransmission (the SMF retransmits only while it has no answer, so before it could release), and are not
    answered with the released resource's grant: they make a new resource, whose own retransmissions find it."""
    client = await chf.client()
    body = request_body(1, units=[usage(10)])
    first = await chf.call(client, "create", body)
    assert first.status == 201 and chf.bucket(IMSI) == (100 * MB, 10 * MB)
    released = await chf.call(client, "release", request_body(2, units=[usage(10, {"totalVolume": MB})]), first.ref)
    assert released.status == 204 and chf.bucket(IMSI) == (99 * MB, 0)
    again = await chf.call(client, "create", body)
    assert again.status == 201 and again.ref != first.ref
    assert again.body["multipleUnitInformation"][0]["grantedUnit"] == {"totalVolume": 10 * MB}
    assert chf.bucket(IMSI) == (99 * MB, 10 * MB)  # a new reservation for the new resource
    retransmitted = await chf.call(client, "create", body)  # its own retransmission: the same resource, once
    assert retransmitted.status == 201 and retransmitted.ref == again.ref
    assert chf.bucket(IMSI) == (99 * MB, 10 * MB)
    updated = await chf.call(client, "update", request_body(2, units=[usage(10, {"totalVolume": MB})]), again.ref)
    assert updated.status == 200
    gone = await chf.call(client, "update", request_body(3, units=[usage(10)]), first.ref)
    assert gone.status == 404 and gone.body["cause"] == "CONTEXT_NOT_FOUND"
    await client.close()


# -- item 4: overload refusals are counted, not logged one by one ------------------------------------------------------
async def test_overload_refusals_are_counted_and_logged_as_a_summary(
    chf: Chf, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await chf.client()
    created = await chf.call(client, "create", request_body(1, units=[usage(10)]))

    def busy(request: Any, done: Any) -> None:
        raise StoreBusy("the write queue is full")

    monkeypatch.setattr(chf.service, "charge_then", busy)
    # The store's refusals alone: the latency budget would otherwise refuse part of the burst before the store
    # is asked, as soon as it has measured a rate (its own summary, tested with the admission).
    monkeypatch.setattr(chf.component.app.admission, "budget", 0)
    with caplog.at_level(logging.INFO):
        results = await asyncio.gather(
            *[chf.call(client, "update", request_body(n, units=[usage(10)]), created.ref) for n in range(2, 202)]
        )
    assert all(r.status == 503 and r.body["cause"] == "NF_CONGESTION" for r in results)
    assert all(r.headers["retry-after"] == "1" for r in results)
    lines = [r for r in caplog.records if "overload" in r.getMessage() or "NF_CONGESTION" in r.getMessage()]
    assert len(lines) <= 2, [r.getMessage() for r in lines]
    assert chf.component.app.overload_log.totals == {"StoreBusy": 200}
    await client.close()


@pytest.mark.slow
async def test_overload_is_refused_at_once_past_the_latency_budget(chf: Chf) -> None:
    """In-flight requests are bounded by the time they are expected to take, not by a count: once those in flight
    would take longer than [nchf] latency_budget_ms at the measured answer rate, a new request gets 503 at once
    (the old bound, 8,192 in flight, let a burst queue for seconds and refused nothing)."""
    app = chf.component.app
    app.admission.budget = 0.05
    clients = [await chf.client() for _ in range(12)]

    async def timed(n: int) -> tuple[int, float]:
        started = time.perf_counter()
        result = await chf.call(clients[n % len(clients)], "create", request_body(n, units=[usage(10)]))
        return result.status, time.perf_counter() - started

    warm = await asyncio.gather(*[timed(n) for n in range(1, 301)])  # the answer rate gets measured
    assert all(status < 500 or status == 503 for status, _ in warm)  # 201, or 403 once the wallet is spent
    assert app.admission.rate > 0
    burst = await asyncio.gather(*[timed(n) for n in range(1000, 4000)])
    refused = sorted(t for status, t in burst if status == 503)
    accepted = sorted(t for status, t in burst if status != 503)
    assert refused, "3,000 requests at once were all taken"
    assert accepted and len(accepted) < 1500
    assert refused[len(refused) // 2] < accepted[-1]  # refusals do not wait behind the accepted
    for client in clients:
        await client.close()


def test_the_limits_are_settings_with_safe_defaults() -> None:
    from nchf.config import parse_settings

    defaults = parse_settings({}).limits
    assert (defaults.idle_timeout, defaults.connection_window) == (120.0, 1 << 20)
    assert (defaults.stream_reset_burst, defaults.stream_reset_rate) == (1000, 33.0)
    assert (defaults.control_frame_burst, defaults.control_frame_rate) == (100, 10.0)
    given = {
        "idle_timeout": 30,
        "connection_window": 262_144,
        "stream_reset_burst": 10,
        "stream_reset_rate": 0.5,
        "control_frame_burst": 20,
        "control_frame_rate": 2,
    }
    limits = parse_settings(given).limits
    assert {key: getattr(limits, key) for key in given} == given
    with pytest.raises(Exception) as info:
        parse_settings({"idle_timeout": 0, "stream_reset_rate": "fast", "connection_window": 1000})
    for key in ("idle_timeout", "stream_reset_rate", "connection_window"):
        assert f"[nchf] {key}:" in str(info.value)


@pytest.mark.slow
def test_the_frame_guard_follows_frames_across_any_split() -> None:
    """The guard reads frame headers wherever reads cut the bytes: valid frames pass in any split, a frame over
    the maximum size is refused as soon as its header is whole, and the state tells whether a read ended inside
    a frame."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from nchf.http2 import _FrameGuard

    frames = st.lists(
        st.tuples(st.sampled_from([0x0, 0x1, 0x4, 0x6, 0x8]), st.integers(0, 16384)), min_size=1, max_size=6
    )

    @settings(max_examples=300, deadline=None, database=None)
    @given(frames=frames, cuts=st.lists(st.integers(0, 200_000), max_size=6), oversized=st.booleans())
    def check(frames: list[tuple[int, int]], cuts: list[int], oversized: bool) -> None:
        wire = PREFACE + b"".join(frame(kind, 1, b"\x00" * length, flags=0x4) for kind, length in frames)
        if oversized:
            wire += frame(0x0, 1, b"", length=16385)
        guard = _FrameGuard(32768)
        points = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
        reasons = [guard.check(wire[a:b]) for a, b in itertools.pairwise(points)]
        refused = [r for r in reasons if r is not None]
        assert refused == (["frame_too_large"] if oversized else [])
        if not oversized:
            assert not guard.skip and not guard.head  # the last read ended on a frame boundary

    check()
